"""Experiment tracking: `logger=wandb` or `logger=none`, one run per stage, rank 0 only.

    rlhf stage=sft logger=wandb logger.project=my-chatbot

Metric names are shared across stages (docs/architecture.md): `train/loss`, `train/lr`,
`eval/loss`, `eval/oracle_greedy`, ...
"""

from __future__ import annotations

from pathlib import Path

from rlhf.config import LoggerBackend
from rlhf.distributed import is_main_process


class NoTracker:
    """Used for logger=none and on every rank but 0."""

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def log_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        pass

    def finish(self, summary: dict | None = None) -> None:
        pass


def make_tracker(cfg, out: Path):
    if cfg.logger.backend == LoggerBackend.none or not is_main_process():
        return NoTracker()
    from rlhf.tracking.wandb_tracker import WandbTracker
    return WandbTracker(cfg, out)


# TRL's preference-trainer names -> ours (the same for dpo, simpo and orpo runs)
TRL_RENAMES = {"rewards/accuracies": "rewards/accuracy", "rewards/margins": "rewards/margin"}


def hf_log_to_metrics(logs: dict) -> dict:
    """Rename a transformers/TRL log dict to our shared metric names."""
    renamed = {}
    for key, value in logs.items():
        if not isinstance(value, (int, float)):
            continue
        if key.startswith("eval_"):
            key = key[len("eval_"):]
            renamed["eval/" + TRL_RENAMES.get(key, key)] = value
        elif key == "learning_rate":
            renamed["train/lr"] = value
        elif "/" in key:
            renamed[TRL_RENAMES.get(key, key)] = value
        else:
            renamed["train/" + key] = value
    return renamed
