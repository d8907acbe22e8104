"""Time the demo (`rlhf experiment=demo`, every step) of two checkouts, one after the other on
this machine, and print the per-step wall times of both, their ratio and the demo's figures.

    python benchmarks/demo_time.py                       # main before issue 10 vs this checkout
    python benchmarks/demo_time.py --base <git ref> --runs 1

Each run starts from an empty cache (demo data and tiny model built inside the run, as on a
fresh clone). Run it alone: two heavy jobs on a 2-core machine slow each other ~3x, and two
machines of the same kind differ ~2x, so only figures from one machine, one run after the
other, compare. The base checkout is a temporary `git worktree`; it runs with this venv.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# main as it was when issue 10 was opened (the demo this issue had to halve)
DEFAULT_BASE = "ea69d6e"
FIGURES = {"SFT fact (greedy)": ("sft_eval", "eval/oracle_fact_greedy"),
           "SFT oracle (sampled)": ("sft_eval", "eval/oracle_sampled"),
           "RM agreement": ("rm", "eval/reward_accuracy"),
           "DPO oracle (sampled)": ("dpo", "eval/oracle_sampled"),
           "DPO fact (greedy)": ("dpo", "eval/oracle_fact_greedy")}


def run_demo(checkout: Path, work: Path) -> dict:
    """Run the demo of `checkout`; returns wall seconds per step, total and the summary."""
    # a fresh cache each: the demo data and model are built, and no stage reuses an earlier
    # run (stage caching, which the base may predate)
    env = {**os.environ, "PYTHONPATH": str(checkout), "RLHF_CACHE_DIR": str(work / "cache"),
           "RLHF_STAGE_CACHE_DIR": str(work / "stage_cache"), "WANDB_MODE": "disabled"}
    cmd = [sys.executable, "-m", "rlhf.cli", "experiment=demo", f"hydra.run.dir={work / 'demo'}"]
    started = last = time.time()
    steps, current = {}, "setup"
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    with open(work / "demo.log", "w", encoding="utf-8") as log:
        for line in proc.stdout:
            log.write(line)
            step = re.match(r"=== pipeline step (\w+):", line)
            if step or line.startswith("=== summary"):
                now = time.time()
                steps[current] = now - last
                current, last = (step.group(1) if step else "summary"), now
    if proc.wait() != 0:
        sys.exit(f"demo of {checkout} failed; see {work / 'demo.log'}")
    steps[current] = time.time() - last
    summary = json.loads((work / "demo" / "summary.json").read_text())
    return {"steps": steps, "total": time.time() - started, "summary": summary}


@contextlib.contextmanager
def base_worktree(ref: str, parent: Path):
    """A detached `git worktree` of `ref` under `parent`, removed afterwards (also used by
    benchmarks/suite_time.py)."""
    tree = parent / "base_tree"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
                   check=True, capture_output=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=DEFAULT_BASE, help="git ref of the checkout to beat")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="demo_time_") as tmp:
        tmp = Path(tmp)
        with base_worktree(args.base, tmp) as base_tree:
            results = {}
            for name, checkout in (("base", base_tree), ("this", REPO)):
                (tmp / name).mkdir()
                print(f"running the demo of {name} ({checkout}) ...", flush=True)
                results[name] = run_demo(checkout, tmp / name)
    report(results, args.base)


def report(results: dict, base_ref: str) -> None:
    base, this = results["base"], results["this"]
    print(f"\nwall seconds per step (base = {base_ref}, this = working tree)")
    print(f"{'step':<12}{'base':>9}{'this':>9}")
    for step in dict.fromkeys([*base["steps"], *this["steps"]]):
        cells = [results[k]["steps"].get(step) for k in ("base", "this")]
        print(f"{step:<12}" + "".join("-".rjust(9) if c is None else f"{c:9.1f}" for c in cells))
    print(f"{'total':<12}{base['total']:9.1f}{this['total']:9.1f}")
    print(f"ratio this/base: {this['total'] / base['total']:.2f}")
    # the steps both demos have (issue 10's target: at most half); later issues added steps
    shared = [s for s in this["steps"] if s in base["steps"]]
    base_shared = sum(base["steps"][s] for s in shared)
    this_shared = sum(this["steps"][s] for s in shared)
    print(f"the steps both have ({', '.join(shared)}): {base_shared:.1f} s -> {this_shared:.1f} s,"
          f" ratio {this_shared / base_shared:.3f}")
    print(f"\n{'figure':<24}{'base':>8}{'this':>8}")
    for label, (step, metric) in FIGURES.items():
        cells = [results[k]["summary"].get(step, {}).get(metric) for k in ("base", "this")]
        print(f"{label:<24}" + "".join("-".rjust(8) if c is None else f"{c:8.3f}"
                                        for c in cells))


if __name__ == "__main__":
    main()
