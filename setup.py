"""Build hook: ships the repository's conf/ inside the wheel as rlhf/conf.

conf/ stays at the top of the repository, where the README and users expect it, but an
installed package only has what is inside it. So build_py copies conf/*.yaml to
<build_lib>/rlhf/conf, and rlhf/cli.py reads that copy when it exists. An editable install
(`pip install -e .`, as `make venv` does) skips the copy: rlhf/cli.py then reads the live
conf/ of the checkout, and edits take effect without reinstalling.

Everything else about the package is in pyproject.toml; MANIFEST.in puts conf/ in the sdist.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CONF = Path(__file__).resolve().parent / "conf"


class build_py_with_conf(build_py):
    def run(self):
        super().run()
        if self.editable_mode:
            return
        if not (CONF / "config.yaml").is_file():
            raise FileNotFoundError(f"{CONF}/config.yaml not found: a wheel without its "
                                    "config cannot compose one")
        target = Path(self.build_lib) / "rlhf" / "conf"
        shutil.rmtree(target, ignore_errors=True)  # no stale file from an earlier build
        for src in sorted(CONF.rglob("*.yaml")):
            dst = target / src.relative_to(CONF)
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)


setup(cmdclass={"build_py": build_py_with_conf})
