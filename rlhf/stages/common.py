"""What the TRL-based stages share: mapping our stage config onto TRL's TrainingArguments
fields, and the start and end of every stage (config, tracker, metrics.json)."""

from __future__ import annotations

import time
from pathlib import Path

from rlhf import runs
from rlhf.config import Precision
from rlhf.distributed import is_main_process, world_size
from rlhf.tracking import make_tracker


def max_steps(cfg) -> int:
    """stage.max_steps, capped by debug.max_steps (debug=tiny)."""
    steps, cap = cfg.stage.max_steps, cfg.debug.max_steps
    if cap is None:
        return steps
    return cap if steps < 0 else min(steps, cap)


def gradient_accumulation_steps(cfg) -> int:
    """The global batch is fixed by config; ranks and micro batches divide it."""
    stage = cfg.stage
    return stage.global_batch_size // (stage.per_device_batch_size * world_size())


def training_arguments(cfg, out: Path) -> dict:
    """Keyword arguments for any TRL config class (SFTConfig, DPOConfig, RewardConfig, ...)."""
    import torch

    stage = cfg.stage
    precision = cfg.distributed.precision
    return dict(
        output_dir=str(out / "trainer"),
        seed=stage.seed,
        learning_rate=stage.learning_rate,
        lr_scheduler_type=stage.lr_scheduler,
        # a float below 1 is a share of the total steps
        warmup_steps=stage.warmup_ratio,
        weight_decay=stage.weight_decay,
        max_grad_norm=stage.max_grad_norm,
        max_steps=max_steps(cfg),
        num_train_epochs=stage.num_epochs,
        per_device_train_batch_size=stage.per_device_batch_size,
        per_device_eval_batch_size=stage.per_device_batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps(cfg),
        logging_steps=stage.logging_steps,
        logging_first_step=True,
        eval_strategy="steps" if stage.eval_steps > 0 else "no",
        eval_steps=stage.eval_steps if stage.eval_steps > 0 else None,
        save_strategy="no",
        # our TrackerCallback logs under the shared metric names; no second W&B run from HF
        report_to="none",
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        activation_checkpointing=stage.gradient_checkpointing,
        # without it, TRL computes "auto" batch sizes for one process on CPU (DESIGN.md 8)
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


class StageRun:
    """Start of a stage (run dir, resolved config, tracker) and its end (metrics.json)."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.out = runs.run_dir()
        self.started = time.time()
        if is_main_process():
            runs.save_config(cfg, self.out)
        self.tracker = make_tracker(cfg, self.out)

    def finish(self, metrics: dict) -> dict:
        metrics = {**metrics, "runtime_s": round(time.time() - self.started, 2)}
        if is_main_process():
            runs.write_metrics(self.out, metrics)
        self.tracker.finish(summary=metrics)
        return metrics
