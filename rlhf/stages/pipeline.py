"""Runs an experiment's `pipeline.steps` in order, each as its own `rlhf stage=...` process.

    rlhf experiment=demo

Each step runs in `<run dir>/<step name>` with the same experiment and command-line overrides
as the pipeline, plus its own overrides, in which `{name}` stands for the run directory of an
earlier step (e.g. `model.path={sft}`). A separate process per step keeps the stages
independent: each can be launched on its own ranks, and a failed step names its log.
At the end a summary table of the chosen metrics is printed and written to `summary.json`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from hydra.core.hydra_config import HydraConfig

from rlhf.errors import UserError
from rlhf.runs import RUN_DIR_ENV, read_metrics
from rlhf.stages.common import StageRun


def inherited_overrides() -> list[str]:
    """The pipeline's own command-line overrides and experiment, minus its stage choice."""
    hydra_cfg = HydraConfig.get()
    kept = [o for o in hydra_cfg.overrides.task
            if not re.match(r"^[+~]*(stage|experiment)([.=]|$)", o)]
    experiment = hydra_cfg.runtime.choices.get("experiment")
    return ([f"experiment={experiment}"] if experiment else []) + kept


def substitute_dirs(override: str, step_dirs: dict[str, str]) -> str:
    def repl(match):
        if match.group(1) not in step_dirs:
            raise UserError(f"pipeline override {override!r} names step {{{match.group(1)}}}, "
                            f"which has not run before it; earlier steps: {list(step_dirs)}")
        return step_dirs[match.group(1)]
    return re.sub(r"(?<!\$)\{(\w+)\}", repl, override)


def run_step(step, step_dirs: dict[str, str], out) -> dict:
    step_dir = out / step.name
    overrides = [substitute_dirs(o, step_dirs) for o in step.overrides]
    cmd = [sys.executable, "-m", "rlhf.cli", f"stage={step.stage}", f"hydra.run.dir={step_dir}",
           *inherited_overrides(), *overrides]
    print(f"\n=== pipeline step {step.name}: rlhf {' '.join(cmd[3:])}", flush=True)
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    step_dir.mkdir(parents=True, exist_ok=True)
    with open(step_dir / "step.log", "w", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, bufsize=1)
        for line in proc.stdout:  # show the step's progress and keep it in step.log
            sys.stdout.write(line)
            log.write(line)
    if proc.wait() != 0:
        raise UserError(f"pipeline step {step.name!r} (stage={step.stage}) failed with exit code "
                        f"{proc.returncode}; its output is in {step_dir / 'step.log'}")
    step_dirs[step.name] = str(step_dir)
    return read_metrics(step_dir)


def summary_table(results: dict[str, dict], columns: list[str]) -> str:
    columns = [c for c in columns if any(c in m for m in results.values())]
    width = max(len(s) for s in results) + 2
    lines = ["step".ljust(width) + "".join(c.split("/")[-1].rjust(22) for c in columns)]
    for step, metrics in results.items():
        cells = [metrics.get(c) for c in columns]
        lines.append(step.ljust(width) + "".join(
            ("-" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)).rjust(22)
            for v in cells))
    return "\n".join(lines)


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    step_dirs: dict[str, str] = {}
    results = {step.name: run_step(step, step_dirs, stage_run.out) for step in cfg.pipeline.steps}
    table = summary_table(results, list(cfg.pipeline.summary_metrics))
    print(f"\n=== summary ({stage_run.out})\n{table}")
    (stage_run.out / "summary.json").write_text(json.dumps(results, indent=1))
    return stage_run.finish({f"{step}/{k}": v for step, m in results.items()
                             for k, v in m.items()})
