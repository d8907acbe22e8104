"""The wheel stands on its own: built from the sources, installed without the checkout on the
path, it composes configs (rlhf/conf and data_tools/conf ship inside it) from any directory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.conftest import REPO


def _copy_sources(dst: Path) -> None:
    """What a build reads: the top-level files, the packages and conf/. A copy, so the build
    neither writes build/ or *.egg-info into the checkout nor packs stale files from there,
    and the checkout's other folders (outputs, .venv, ...) are not copied."""
    dst.mkdir()
    for path in REPO.iterdir():
        if path.is_file():
            shutil.copy2(path, dst / path.name)
    for name in ("rlhf", "data_tools", "conf"):
        shutil.copytree(REPO / name, dst / name,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _run(args: list, cwd: Path, site: Path) -> subprocess.CompletedProcess:
    # PYTHONPATH holds only the installed wheel; the venv's editable finder comes after it
    # on the path, and cwd is outside the checkout
    env = {**os.environ, "PYTHONPATH": str(site), "RLHF_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=120)


def test_wheel_installs_and_composes_outside_the_checkout(tmp_path):
    tmp_path = tmp_path.resolve()  # compared below with resolved paths
    src, dist, site, work = (tmp_path / d for d in ("src", "dist", "site", "work"))
    _copy_sources(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(dist), str(src)], check=True, timeout=300)
    (wheel,) = dist.glob("rlhf-*.whl")

    # every config file of conf/ and data_tools/conf, at its place inside the packages
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {f"rlhf/conf/{p.relative_to(REPO / 'conf').as_posix()}"
            for p in (REPO / "conf").rglob("*.yaml")}
    assert "rlhf/conf/config.yaml" in conf and "rlhf/conf/stage/dpo.yaml" in conf
    assert conf <= names, sorted(conf - names)
    assert not {n for n in names if n.startswith("rlhf/conf/")} - conf  # no stale files
    assert "data_tools/conf/config.yaml" in names

    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q",
                    "--target", str(site), str(wheel)], check=True, timeout=300)
    work.mkdir()

    where = _run([sys.executable, "-c", "import rlhf, data_tools, rlhf.cli; "
                  "print(rlhf.__file__, data_tools.__file__, rlhf.cli.CONFIG_DIR, sep='\\n')"],
                 work, site)
    assert where.returncode == 0, where.stdout
    rlhf_file, data_tools_file, config_dir = where.stdout.split()
    for path in (rlhf_file, data_tools_file, config_dir):
        assert Path(path).is_relative_to(site), where.stdout  # not the checkout's copy
    assert Path(config_dir) == site / "rlhf" / "conf"

    # the console scripts the wheel declares
    help_ = _run([str(site / "bin" / "rlhf"), "--help"], work, site)
    assert help_.returncode == 0, help_.stdout
    assert "== Config groups ==" in help_.stdout and "stage: dpo, " in help_.stdout

    dpo = _run([str(site / "bin" / "rlhf"), "--cfg", "job", "stage=dpo"], work, site)
    assert dpo.returncode == 0, dpo.stdout
    assert "  name: dpo\n" in dpo.stdout and "  beta: " in dpo.stdout

    data_help = _run([str(site / "bin" / "rlhf-data"), "--help"], work, site)
    assert data_help.returncode == 0, data_help.stdout
    assert "out_dir: " in data_help.stdout and "dedup:" in data_help.stdout

    assert not any(work.iterdir()), list(work.iterdir())  # composing wrote nothing there
