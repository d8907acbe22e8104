"""The plan behind slurm/pipeline.sh: an experiment's pipeline steps as Slurm jobs.

    python -m rlhf.slurm_pipeline plan <pipeline dir> <rlhf overrides...>
        one line per step to submit, tab-separated: name, tasks, rlhf arguments (shell-quoted)
    python -m rlhf.slurm_pipeline summary <pipeline dir> <rlhf overrides...>
        after the last job: summary.json, floors.json and metrics.json, as `stage=pipeline`
        writes them, with the summary table and the floors printed

Each step runs as `rlhf stage=<stage> <the pipeline's overrides> <the step's overrides>
hydra.run.dir=<pipeline dir>/<name>`, as the in-process pipeline runs it (rlhf/stages/
pipeline.py); `{name}` in a step's overrides is the run directory of the earlier step `name`,
known before any job starts, because slurm/pipeline.sh chooses it. A step's ranks are Slurm
tasks: its `distributed.nproc_per_node` becomes the job's task count. A step whose directory
already holds a finished run (metrics.json) of the same resolved config is not submitted
again: rerunning slurm/pipeline.sh with the same hydra.run.dir restarts at the step that
failed.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

from omegaconf import OmegaConf

_NOT_INHERITED = re.compile(r"^[+~]*(stage|experiment|pipeline|hydra)([./=]|$)")


def pipeline_config(overrides: list[str]):
    from rlhf.cli import compose_checked
    from rlhf.errors import ConfigError

    cfg = compose_checked("config", overrides)
    if cfg.stage.name != "pipeline" or not cfg.pipeline.steps:
        raise ConfigError("slurm/pipeline.sh runs pipeline steps: give an experiment that "
                          "defines them (e.g. experiment=demo) or pipeline.steps=[...]")
    return cfg


def inherited(overrides: list[str]) -> list[str]:
    """The pipeline's command-line overrides that every step gets (as rlhf/stages/pipeline.py
    passes them): the experiment and the rest, minus the stage, the steps and hydra.*."""
    experiment = [o for o in overrides if re.match(r"^[+]*experiment=", o)]
    return [o.lstrip("+") for o in experiment[-1:]] + \
        [o for o in overrides if not _NOT_INHERITED.match(o)]


def step_args(step, base: Path, overrides: list[str]) -> list[str]:
    from rlhf.stages.pipeline import own_overrides

    cfg = pipeline_config(overrides)
    dirs = {s.name: str(base / s.name) for s in cfg.pipeline.steps}
    return [f"stage={step.stage}", *inherited(overrides), *own_overrides(cfg, step, dirs)]


def comparable(cfg: dict) -> dict:
    """A resolved config without what differs between two runs of the same work."""
    cfg = json.loads(json.dumps(cfg))
    cfg.get("stage", {}).pop("resume", None)
    return cfg


def finished_same(step_dir: Path, args: list[str]) -> bool:
    """The step's directory holds a finished run (metrics.json) of this very config."""
    from rlhf.cli import compose_checked
    from rlhf.runs import resolved_config

    if not (step_dir / "metrics.json").exists() or not (step_dir / "config.yaml").exists():
        return False
    now = resolved_config(compose_checked("config", args))
    before = OmegaConf.to_container(OmegaConf.load(step_dir / "config.yaml"))
    return comparable(now) == comparable(before)


def plan(base: Path, overrides: list[str]) -> list[str]:
    from rlhf.cli import compose_checked

    from rlhf.stages.pipeline import check_step_overrides

    lines, earlier_changed = [], False
    cfg = pipeline_config(overrides)
    check_step_overrides(cfg)
    for step in cfg.pipeline.steps:
        args = step_args(step, base, overrides)
        step_dir = base / step.name
        if not earlier_changed and finished_same(step_dir, args):
            print(f"pipeline: step {step.name} already finished in {step_dir}; not submitted",
                  file=sys.stderr)
            continue
        earlier_changed = True  # a later step depends on this one's new output
        step_cfg = compose_checked("config", args)
        tasks = 1 if step_cfg.stage.name in ("eval", "pipeline") else \
            step_cfg.distributed.nproc_per_node
        lines.append("\t".join([step.name, str(tasks),
                                shlex.join([*args, f"hydra.run.dir={step_dir}"])]))
    return lines


def summary(base: Path, overrides: list[str]) -> None:
    from rlhf.runs import read_metrics, write_metrics
    from rlhf.cli import compose_checked
    from rlhf.stages.pipeline import (check_floors, final_models_table, floors_report,
                                      summary_table)

    cfg = pipeline_config(overrides)
    results = {s.name: read_metrics(base / s.name) for s in cfg.pipeline.steps}
    print(f"=== summary ({base})\n{summary_table(results, dict(cfg.pipeline.summary_columns))}")
    if cfg.pipeline.final_table:
        step = next(s for s in cfg.pipeline.steps if s.name == cfg.pipeline.final_table)
        eval_cfg = compose_checked("config", step_args(step, base, overrides)).stage
        print(f"\n=== {step.name}\n{final_models_table(eval_cfg, results[step.name])}")
    floors = check_floors(results, cfg.pipeline.floors)
    if floors:
        print(f"\n=== quality floors\n{floors_report(floors)}")
    (base / "summary.json").write_text(json.dumps(results, indent=1))
    (base / "floors.json").write_text(json.dumps(floors, indent=1))
    write_metrics(base, {f"{step}/{k}": v for step, m in results.items() for k, v in m.items()})


def main(argv: list[str]) -> int:
    from rlhf.errors import UserError

    if len(argv) < 2 or argv[0] not in ("plan", "summary"):
        print(__doc__, file=sys.stderr)
        return 2
    base = Path(argv[1]).resolve()
    try:
        if argv[0] == "plan":
            print("\n".join(plan(base, argv[2:])))
        else:
            summary(base, argv[2:])
    except UserError as err:
        print(f"rlhf: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
