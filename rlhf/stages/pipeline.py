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
import textwrap

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


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary_table(results: dict[str, dict], columns: dict[str, str]) -> str:
    """One row per step, one column per metric (short header -> metric name); columns no
    step reported are left out. Cells are 3 significant figures, to fit a 100-column terminal."""
    columns = {h: m for h, m in columns.items() if any(m in r for r in results.values())}
    step_width = max(map(len, results)) + 1
    widths = {h: max(len(h), 5) + 1 for h in columns}
    lines = ["step".ljust(step_width) + "".join(h.rjust(widths[h]) for h in columns)]
    for step, metrics in results.items():
        lines.append(step.ljust(step_width) + "".join(
            _cell(metrics.get(m)).rjust(widths[h]) for h, m in columns.items()))
    legend = ", ".join(f"{h} = {m}" for h, m in columns.items())
    return "\n".join(lines + textwrap.wrap(legend, 100))


def lookup(results: dict[str, dict], name: str):
    """"<step>/<metric>" in the steps' results (metric names contain slashes too)."""
    step, _, metric = name.partition("/")
    return results.get(step, {}).get(metric)


def check_floors(results: dict[str, dict], floors) -> list[dict]:
    """Each quality floor with the measured value, the bar it had to reach and whether it did."""
    checked = []
    for floor in floors:
        value = lookup(results, floor.metric)
        base = lookup(results, floor.relative_to) if floor.relative_to else 1.0
        bar = None if base is None else floor.min * base
        checked.append({"metric": floor.metric, "value": value, "bar": bar,
                        "relative_to": floor.relative_to, "min": floor.min,
                        "met": value is not None and bar is not None and value >= bar})
    return checked


def floors_report(checked: list[dict]) -> str:
    lines = []
    for c in checked:
        rule = f">= {c['min']:g} x {c['relative_to']}" if c["relative_to"] else f">= {c['min']:g}"
        bar = "" if not c["relative_to"] or c["bar"] is None else f" = {c['bar']:.3f}"
        lines.append(f"{'met   ' if c['met'] else 'MISSED'} {c['metric']} {_cell(c['value'])} "
                     f"{rule}{bar}")
    return "\n".join(lines)


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    step_dirs: dict[str, str] = {}
    results = {step.name: run_step(step, step_dirs, stage_run.out) for step in cfg.pipeline.steps}
    table = summary_table(results, dict(cfg.pipeline.summary_columns))
    print(f"\n=== summary ({stage_run.out})\n{table}")
    floors = check_floors(results, cfg.pipeline.floors)
    if floors:
        print(f"\n=== quality floors\n{floors_report(floors)}")
    (stage_run.out / "summary.json").write_text(json.dumps(results, indent=1))
    (stage_run.out / "floors.json").write_text(json.dumps(floors, indent=1))
    return stage_run.finish({f"{step}/{k}": v for step, m in results.items()
                             for k, v in m.items()})
