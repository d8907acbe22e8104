"""Time the test suite of two checkouts, one after the other on this machine, and print the
wall times and their ratios: the base's suite, this checkout's whole `make test`, and this
checkout's `make test` restricted to the tests the base had ("the same tests").

    python benchmarks/suite_time.py                  # main before issue 10 vs this checkout
    python benchmarks/suite_time.py --tests same     # only the same-tests run of this checkout
    python benchmarks/suite_time.py --base <git ref> --tests whole

Later issues add tests (issue 10's suite had 149, this one several hundred), so the whole
suites compare a different amount of work; the same-tests run is the like-for-like figure.
Its demo test still runs today's whole demo, with the steps later issues added (PPO, the
final evaluation, the export); the script also prints the same-tests time less those steps'
run times, read from that demo's metrics.json. A test is "the same" when a test function of
that name is in the same file in both checkouts (every parametrisation it has today runs), or
when RENAMED below says where it went.

The base runs `pytest` in a temporary `git worktree` with this venv (the base's Makefile
would build a venv of its own); this checkout runs `make test`, as CI does. Run it alone:
two heavy jobs on a 2-core machine slow each other ~3x, and two machines of the same kind
differ ~2x, so only figures from one machine, one run after the other, compare.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# main as it was when issue 10 was opened, and its worktree (benchmarks/demo_time.py)
from demo_time import DEFAULT_BASE, REPO, base_worktree  # benchmarks/ is sys.path[0]

# tests of DEFAULT_BASE that moved or were renamed since: old function -> today's functions
RENAMED = {
    "tests/data_tools/test_prepare.py::test_prepared_data_trains_with_rlhf_sft":
        ["tests/data_tools/test_prepared_data_trains_every_stage.py::"
         "test_rlhf_data_output_trains_sft_rm_dpo_and_grpo"],
    "tests/test_config.py::test_typo_fails_before_any_model_is_loaded":
        ["tests/test_config.py::test_undeclared_key_is_rejected_naming_the_nearest"],
    # the tiny demo pipeline's checks were merged into the real demo's test (issue 12)
    "tests/test_multirun_and_pipeline.py::test_demo_pipeline_runs_every_step_and_summarises":
        ["tests/test_demo.py::test_demo_end_to_end"],
}


def collect(checkout: Path, env: dict) -> list[str]:
    """The node ids pytest collects in `checkout`."""
    out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                          "-p", "no:cacheprovider"], cwd=checkout, env=env, text=True,
                         capture_output=True)
    return [line for line in out.stdout.splitlines() if "::" in line]


def function(node_id: str) -> str:
    return node_id.split("[", 1)[0]


def same_tests(base_ids: list[str], this_ids: list[str]) -> list[str]:
    """This checkout's node ids for the base's test functions (see the module docstring)."""
    wanted = set()
    for name in map(function, base_ids):
        wanted.update(RENAMED.get(name, [name]))
    missing = wanted - set(map(function, this_ids))
    if missing:
        sys.exit(f"tests of the base not found here (add them to RENAMED): {sorted(missing)}")
    return [i for i in this_ids if function(i) in wanted]


def demo_steps(checkout: Path) -> list[str]:
    """The step names of `checkout`'s demo pipeline (conf/experiment/demo.yaml)."""
    import yaml

    conf = yaml.safe_load((checkout / "conf/experiment/demo.yaml").read_text())
    return [step["name"] for step in conf["pipeline"]["steps"]]


def later_demo_steps_s(base_steps: list[str], since: float) -> dict[str, float]:
    """Run seconds of the demo steps the base did not have, from the metrics.json of the demo
    test that ran after `since` (pytest keeps its temporary directories under
    <tmp>/pytest-of-<user>)."""
    root = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
    found = [p for p in root.glob("pytest-*/test_demo_end_to_end*/demo/metrics.json")
             if p.stat().st_mtime > since]
    if not found:
        return {}
    metrics = json.loads(max(found, key=lambda p: p.stat().st_mtime).read_text())
    return {key.split("/")[0]: value for key, value in metrics.items()
            if key.endswith("/runtime_s") and key.count("/") == 1
            and key.split("/")[0] not in base_steps}


def timed(cmd: list[str], cwd: Path, env: dict, log: Path) -> float:
    started = time.time()
    with open(log, "w", encoding="utf-8") as out:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT).returncode
    took = time.time() - started
    # a failing test still took its time (issue 10's base fails its demo test); say so
    print(f"  {took:.0f} s, exit code {rc}, log {log}", flush=True)
    return took


def pytest_lines(log: Path) -> list[str]:
    """pytest's closing lines ('N passed ... in S s'), one per pytest run in the log."""
    return re.findall(r"^=+ (.* in [\d.]+s.*?) =+$", log.read_text(), flags=re.M)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="git ref of the suite to beat")
    parser.add_argument("--tests", choices=("both", "whole", "same"), default="both",
                        help="which runs of this checkout's suite to time")
    parser.add_argument("--logs", type=Path, default=None, help="keep the logs here")
    args = parser.parse_args()
    logs = args.logs or Path(tempfile.mkdtemp(prefix="suite_time_"))
    logs.mkdir(parents=True, exist_ok=True)
    times, later = {}, {}
    with tempfile.TemporaryDirectory(prefix="suite_time_") as tmp, \
            base_worktree(args.base, Path(tmp)) as base_tree:
        base_env = {**os.environ, "PYTHONPATH": str(base_tree)}
        this_ids = collect(REPO, dict(os.environ))
        base_ids = collect(base_tree, base_env)
        same = same_tests(base_ids, this_ids)
        base_steps = demo_steps(base_tree)
        print(f"tests: base {len(base_ids)}, this {len(this_ids)}, of them the same tests "
              f"{len(same)}", flush=True)
        print(f"running the base's suite ({args.base}) ...", flush=True)
        times["base"] = timed([sys.executable, "-m", "pytest", "-p", "no:cacheprovider"],
                              base_tree, base_env, logs / "base.log")
    if args.tests in ("both", "whole"):
        print("running this checkout's whole `make test` ...", flush=True)
        times["whole"] = timed(["make", "test"], REPO, dict(os.environ), logs / "whole.log")
    if args.tests in ("both", "same"):
        selection = logs / "same_tests.txt"
        selection.write_text("\n".join(same) + "\n")
        print("running this checkout's `make test` on the same tests ...", flush=True)
        started = time.time()
        times["same"] = timed(["make", "test", f"PYTEST_ARGS=@{selection}"], REPO,
                              dict(os.environ), logs / "same.log")
        later = later_demo_steps_s(base_steps, started)
    print(f"\nwall seconds (base = {args.base}; logs in {logs})")
    for name, took in times.items():
        ratio = "" if name == "base" else f"  ratio to base {took / times['base']:.2f}"
        print(f"{name:<6}{took:8.0f}{ratio}")
        for line in pytest_lines(logs / f"{name}.log"):
            print(f"        {line}")
    if later:
        rest = times["same"] - sum(later.values())
        steps = ", ".join(f"{k} {v:.0f} s" for k, v in later.items())
        print(f"same, less the demo steps the base did not have ({steps}): {rest:.0f} s, "
              f"ratio to base {rest / times['base']:.2f}")


if __name__ == "__main__":
    main()
