"""Weights & Biases tracking: project, group = experiment (or the sweep's directory), job_type =
stage, the resolved config (secrets redacted) as the run config, the same run id on resume."""

from __future__ import annotations

import netrc
import os
import sys
import uuid
from pathlib import Path

from rlhf.config import WandbMode
from rlhf.runs import environment, resolved_config, sweep_dir, swept_overrides
from rlhf.tracking.secrets import redact, redact_arg

RUN_ID_FILE = "wandb_run_id"


def has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def resolve_mode(mode: WandbMode) -> str:
    if mode != WandbMode.auto:
        return mode.value
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if has_api_key() else "offline"


def run_group_and_name(cfg, out: Path) -> tuple[str, str]:
    """logger.group, else the experiment; a job of a local sweep (`rlhf -m`) is grouped by its
    sweep directory instead, so that a sweep shares its group with no other run, and named
    by what sets it apart: `1_sft stage.learning_rate=0.002`."""
    sweep = sweep_dir(out)
    if sweep is None:
        return (cfg.logger.group or cfg.experiment_name,
                f"{cfg.experiment_name}-{cfg.stage.name}-{out.name}")
    where = Path(out).resolve().relative_to(sweep).as_posix()
    name = " ".join([where, *swept_overrides(out, sweep)])
    return cfg.logger.group or sweep.name, name


class WandbTracker:
    def __init__(self, cfg, out: Path):
        self.mode = resolve_mode(cfg.logger.mode)
        id_file = out / RUN_ID_FILE
        # a resumed job finds the id it wrote before and continues the same W&B run
        run_id = id_file.read_text().strip() if id_file.exists() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
        # W&B records the command line in the run's metadata: hide secrets given there
        argv, sys.argv = sys.argv, [sys.argv[0], *map(redact_arg, sys.argv[1:])]
        try:
            self.run = self._init(cfg, out, run_id)
        finally:
            sys.argv = argv

    def _init(self, cfg, out: Path, run_id: str):
        import wandb

        group, name = run_group_and_name(cfg, out)
        return wandb.init(
            project=cfg.logger.project, entity=cfg.logger.entity,
            group=group, job_type=cfg.stage.name, name=name,
            tags=redact(list(cfg.logger.tags)),
            # environment: filter and group runs by GPU, precision, ranks, library versions
            config={**resolved_config(cfg), "environment": environment(cfg)},
            dir=str(out), mode=self.mode, id=run_id,
            # a pipeline's steps may run in its process, each with its own run beside the
            # pipeline's: runs are independent objects, none finishes another
            resume="allow", reinit="create_new")

    def log(self, metrics: dict, step: int | None = None) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        import wandb
        self.run.log({name: wandb.Table(columns=columns, data=rows)})

    def finish(self, summary: dict | None = None) -> None:
        for key, value in (summary or {}).items():
            self.run.summary[key] = value
        run_dir = Path(self.run.dir).parent
        self.run.finish()
        if self.mode == "offline":
            print(f"W&B run saved offline in {run_dir}\n  upload it with: wandb sync {run_dir}")
