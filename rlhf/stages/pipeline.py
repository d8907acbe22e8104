"""Runs an experiment's `pipeline.steps` in order, each as `rlhf stage=...` would run it.

    rlhf experiment=demo

Each step runs in `<run dir>/<step name>` with the same experiment and command-line overrides
as the pipeline, plus its own overrides, in which `{name}` stands for the run directory of an
earlier step (e.g. `model.path={sft}`). A step on one process without DeepSpeed runs in the
pipeline's process; one with several ranks or DeepSpeed gets its own `rlhf` process (which
starts its ranks). Each step's output is also kept in its `step.log`, and a failed step names
it. At the end a summary table of the chosen metrics and the quality floors are printed, and
written to `summary.json` and `floors.json`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from rlhf.errors import UserError, one_line
from rlhf.runs import RUN_DIR_ENV, read_metrics
from rlhf.stage_cache import STAGES as CACHED_STAGES
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


def own_overrides(cfg, step, step_dirs: dict[str, str]) -> list[str]:
    """The step's overrides: those of its definition, then pipeline.step_overrides.<name>
    (nested keys flattened: {stage: {beta: 0.1}} -> stage.beta=0.1), then stage.cache=false
    when the pipeline's stage.cache is false; `{name}` -> that step's run directory."""
    extra = _flatten((cfg.pipeline.step_overrides or {}).get(step.name) or {})
    if not cfg.stage.cache and step.stage in CACHED_STAGES:
        extra.append("stage.cache=false")
    return [substitute_dirs(o, step_dirs) for o in [*step.overrides, *extra]]


def _flatten(node, prefix: str = "") -> list[str]:
    if OmegaConf.is_dict(node) or isinstance(node, dict):
        return [o for k, v in node.items() for o in _flatten(v, f"{prefix}{k}.")]
    value = OmegaConf.to_container(node) if OmegaConf.is_config(node) else node
    return [f"{prefix[:-1]}={value if isinstance(value, str) else json.dumps(value)}"]


def check_step_overrides(cfg) -> None:
    names = [s.name for s in cfg.pipeline.steps]
    for name in cfg.pipeline.step_overrides or {}:
        if name not in names:
            raise UserError(f"pipeline.step_overrides.{name}: no step is named {name!r}; the "
                            f"steps are {', '.join(names)}")


def step_config(step, overrides: list[str]):
    """The step's config, composed as `rlhf stage=<stage> <pipeline overrides> <its own>`
    would compose it (Hydra's own `hydra.*` settings aside)."""
    from hydra import compose

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    task = [o for o in [f"stage={step.stage}", *inherited_overrides(), *overrides]
            if not re.match(r"^[+~]*hydra[.=/]", o)]
    try:
        return compose(config_name="config", overrides=task)
    except (HydraException, OmegaConfBaseException) as err:
        raise UserError(f"pipeline step {step.name!r} (stage={step.stage}): its config does not "
                        f"compose: {one_line(err)}") from err


def runs_in_process(step_cfg) -> bool:
    """Steps that need no ranks or DeepSpeed run in the pipeline's own process: a process per
    step paid ~4 s of imports (torch, transformers, TRL) each time. The others (several ranks,
    DeepSpeed's process-wide state) get their own `rlhf` process."""
    from rlhf.config import Backend

    dist = step_cfg.distributed
    return dist.nproc_per_node == 1 and dist.backend == Backend.none


class _Tee:
    """Writes to the console and to the step's log."""

    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()

    def isatty(self) -> bool:
        return False

    def close(self) -> None:
        """The console and the log belong to others; a library that took this stream as its
        own (absl's logging handler, imported by rouge-score) closes it at exit."""


def run_in_process(step_cfg, step_dir, log) -> None:
    from rlhf.stages import check, reuse_finished_run, run_here

    saved = sys.stdout, sys.stderr, os.environ.get(RUN_DIR_ENV)
    sys.stdout, sys.stderr = _Tee(saved[0], log), _Tee(saved[1], log)
    os.environ[RUN_DIR_ENV] = str(step_dir)
    try:
        check(step_cfg)
        if reuse_finished_run(step_cfg) is None:
            run_here(step_cfg)
    finally:
        sys.stdout, sys.stderr = saved[:2]
        # set on os.environ as it is now: datasets' map() may have replaced the object
        if saved[2] is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = saved[2]


def run_in_subprocess(cmd: list[str], log) -> int:
    env = {k: v for k, v in os.environ.items() if k != RUN_DIR_ENV}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    for line in proc.stdout:  # show the step's progress and keep it in step.log
        sys.stdout.write(line)
        log.write(line)
    return proc.wait()


def run_step(cfg, step, step_dirs: dict[str, str], out) -> dict:
    step_dir = out / step.name
    overrides = own_overrides(cfg, step, step_dirs)
    cmd = [sys.executable, "-m", "rlhf.cli", f"stage={step.stage}", f"hydra.run.dir={step_dir}",
           *inherited_overrides(), *overrides]
    print(f"\n=== pipeline step {step.name}: rlhf {' '.join(cmd[3:])}", flush=True)
    step_cfg = step_config(step, overrides)
    step_dir.mkdir(parents=True, exist_ok=True)
    with open(step_dir / "step.log", "w", encoding="utf-8") as log:
        if runs_in_process(step_cfg):
            try:
                run_in_process(step_cfg, step_dir, log)
            except UserError as err:
                log.write(f"rlhf: error: {err}\n")
                raise UserError(f"pipeline step {step.name!r} (stage={step.stage}): {err}") \
                    from err
            code = 0
        else:
            code = run_in_subprocess(cmd, log)
    if code != 0:
        raise UserError(f"pipeline step {step.name!r} (stage={step.stage}) failed with exit code "
                        f"{code}; its output is in {step_dir / 'step.log'}")
    step_dirs[step.name] = str(step_dir)
    return read_metrics(step_dir)


def _cell(value) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def summary_table(results: dict[str, dict], columns: dict[str, str]) -> str:
    """One row per step, one column per metric (short header -> metric name); columns no
    step reported, and steps that reported none of them, are left out. Cells are 3 significant figures, to fit a 100-column terminal."""
    columns = {h: m for h, m in columns.items() if any(m in r for r in results.values())}
    step_width = max(map(len, results)) + 1
    widths = {h: max(len(h), 5) + 1 for h in columns}
    lines = ["step".ljust(step_width) + "".join(h.rjust(widths[h]) for h in columns)]
    for step, metrics in results.items():
        if not any(m in metrics for m in columns.values()):
            continue  # e.g. the final evaluation over several models: its own table follows
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


def final_models_table(eval_cfg, metrics: dict) -> str:
    """The models of the `final_table` eval step (its stage config) side by side, its
    baseline first."""
    from rlhf.evaluation.compare_models import models_table

    names = list(eval_cfg.models)
    order = [eval_cfg.baseline] + [n for n in names if n != eval_cfg.baseline]
    return models_table(metrics, order, eval_cfg.baseline, ["greedy", "sampled"],
                        eval_cfg.confidence)


def final_eval_config(cfg, step_dirs: dict[str, str]):
    step = next(s for s in cfg.pipeline.steps if s.name == cfg.pipeline.final_table)
    return step_config(step, own_overrides(cfg, step, step_dirs)).stage


def plot_training_curves(step_dirs: dict[str, str], metrics: list[str], out: Path) -> None:
    """rlhf-compare over the steps that logged a training curve."""
    from rlhf.compare import compare, local_runs

    trained = [Path(d) for d in step_dirs.values() if (Path(d) / "log_history.json").exists()]
    _, written = compare(local_runs(trained), metrics=metrics, plots=metrics, out=out)
    print(f"\ntraining curves: {', '.join(p.name for p in written)} in {out}")


def run(cfg) -> dict:
    check_step_overrides(cfg)
    stage_run = StageRun(cfg)
    step_dirs: dict[str, str] = {}
    results = {step.name: run_step(cfg, step, step_dirs, stage_run.out)
               for step in cfg.pipeline.steps}
    table = summary_table(results, dict(cfg.pipeline.summary_columns))
    print(f"\n=== summary ({stage_run.out})\n{table}")
    if cfg.pipeline.final_table:
        table = final_models_table(final_eval_config(cfg, step_dirs),
                                   results[cfg.pipeline.final_table])
        print(f"\n=== {cfg.pipeline.final_table}\n{table}")
    if cfg.pipeline.plots:
        plot_training_curves(step_dirs, cfg.pipeline.plots, stage_run.out / "compare")
    floors = check_floors(results, cfg.pipeline.floors)
    if floors:
        print(f"\n=== quality floors\n{floors_report(floors)}")
    (stage_run.out / "summary.json").write_text(json.dumps(results, indent=1))
    (stage_run.out / "floors.json").write_text(json.dumps(floors, indent=1))
    return stage_run.finish({f"{step}/{k}": v for step, m in results.items()
                             for k, v in m.items()})
