"""What the TRL-based stages share: mapping our stage config onto TRL's TrainingArguments
fields, and the start and end of every stage (config, tracker, metrics.json)."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

from data_tools.io import user_umask
from rlhf import runs, stage_cache
from rlhf.config import Precision
from rlhf.distributed import is_main_process, mean_over_ranks, world_size
from rlhf.distributed.deepspeed_config import deepspeed_config
from rlhf.models.loading import CHECKPOINT_SUBDIR
from rlhf.stages import preemption
from rlhf.tracking import make_tracker


def max_steps(cfg) -> int:
    """stage.max_steps, capped by debug.max_steps (debug=tiny)."""
    steps, cap = cfg.stage.max_steps, cfg.debug.max_steps
    if cap is None:
        return steps
    return cap if steps < 0 else min(steps, cap)


def rows_reached(rows: list, cfg) -> list:
    """The training rows a run can reach. With stage.max_steps, at most max_steps x
    global_batch_size rows are ever drawn: keep a seeded random sample of that many, so that
    the rest is never tokenized (TRL tokenizes the whole dataset first; the demo's DPO spent
    15 s on 22,785 pairs to use 1,600). With epochs, every row."""
    import random

    steps = max_steps(cfg)
    needed = steps * cfg.stage.global_batch_size if steps > 0 else len(rows)
    if needed >= len(rows):
        return rows
    return random.Random(cfg.stage.seed).sample(rows, needed)


def gradient_accumulation_steps(cfg) -> int:
    """The global batch is fixed by config; ranks and micro batches divide it."""
    stage = cfg.stage
    return stage.global_batch_size // (stage.per_device_batch_size * world_size())


def training_arguments(cfg, out: Path) -> dict:
    """Keyword arguments for any TRL config class (SFTConfig, DPOConfig, RewardConfig, ...)."""
    import torch

    stage = cfg.stage
    precision = cfg.distributed.precision
    on_gpu = torch.cuda.is_available()
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
        # resumable checkpoints (optimizer, scheduler, RNG and, under DeepSpeed, its sharded
        # state) in <run dir>/trainer; with "steps" the trainer also saves at the end
        save_strategy="steps",
        save_steps=stage.save_every_steps or 1_000_000_000,
        # stage.keep_checkpoints is applied by rlhf.stages.preemption once the new checkpoint
        # is complete (the Trainer's rotation would delete the old one first)
        save_total_limit=None,
        deepspeed=deepspeed_config(cfg.distributed, stage, world_size(), on_gpu),
        ddp_backend=(cfg.distributed.dist_backend or (None if on_gpu else "gloo"))
        if world_size() > 1 else None,
        # our TrackerCallback logs under the shared metric names; no second W&B run from HF
        report_to="none",
        bf16=precision == Precision.bf16,
        fp16=precision == Precision.fp16,
        activation_checkpointing=stage.gradient_checkpointing,
        # without it, TRL computes "auto" batch sizes for one process on CPU (docs/notes.md)
        use_cpu=not on_gpu,
        dataloader_num_workers=0,
    )


class StageRun:
    """Start of a stage (run dir, resolved config, tracker) and its end (metrics.json)."""

    def __init__(self, cfg):
        self.cfg = cfg
        preemption.resolve_resume(cfg)  # stage.resume=auto: true inside a Slurm job
        preemption.install()  # USR2/TERM inside a Slurm job: checkpoint, requeue, exit
        self.out = runs.run_dir()
        self.started = time.time()
        if is_main_process():
            runs.save_config(cfg, self.out)
            runs.save_environment(cfg, self.out)
        self.tracker = make_tracker(cfg, self.out)
        # the key under which a later run of the same work reuses this one
        # (rlhf/stage_cache.py): worked out before training, from the inputs as this run
        # reads them, on rank 0 only; recorded by finish()
        self.cache_key = stage_cache.key(cfg) if stage_cache.cacheable(cfg) and \
            is_main_process() else None

    def finish(self, metrics: dict) -> dict:
        metrics = {**metrics, "runtime_s": round(time.time() - self.started, 2),
                   **peak_gpu_memory()}
        if is_main_process():
            runs.write_metrics(self.out, metrics)
            if (self.out / "trainer").is_dir():  # checkpoints: safetensors writes 0600 too
                with_user_umask(self.out / "trainer")
            if self.cache_key:
                stage_cache.record(self.cfg, self.out, self.cache_key)
        self.tracker.finish(summary=metrics)
        return metrics


def peak_gpu_memory() -> dict:
    """This rank's peak of allocated GPU memory over the whole stage (nothing on CPU)."""
    import torch

    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    return {"memory/peak_gpu_bytes": torch.cuda.max_memory_allocated()}


def train_summary(trainer, result) -> dict:
    """The shared training metrics of a finished `trainer.train()`.

    Every rank calls this (the loss is averaged over ranks, a collective)."""
    # transformers 5.23's `training_loss` adds this rank's own losses since the last logging
    # step to the logged ones (which are means over ranks): on 2 ranks (ddp, zero2, zero3
    # alike) it counted rank 0's micro batches only for those steps, 6.337 against 6.261 on
    # one process. The logged part is the same on every rank, so the mean over ranks is right.
    from rlhf.tracking.callback import TrackerCallback

    summary = {"train/loss": mean_over_ranks(result.training_loss),
               "train_runtime_s": result.metrics["train_runtime"],
               "train/samples_per_second": result.metrics["train_samples_per_second"],
               "train/steps": trainer.state.global_step}
    # train_runtime_s / steps includes the first step's warm-up; a steady figure beside it
    tracker = next((c for c in trainer.callback_handler.callbacks
                    if isinstance(c, TrackerCallback)), None)
    steady = tracker.steady_step_seconds() if tracker is not None else None
    if steady is not None:
        summary["train/step_s"] = steady
    return summary


def last_train_log(trainer, prefix: str | tuple[str, ...]) -> dict:
    """The newest logged training values whose shared name starts with `prefix`, e.g. the
    `rewards/*` of a preference trainer (TRL logs them averaged since the previous log)."""
    from rlhf.tracking import hf_log_to_metrics

    for entry in reversed(trainer.state.log_history):
        found = {k: v for k, v in hf_log_to_metrics(entry).items() if k.startswith(prefix)}
        if found:
            return found
    return {}


def write_log_history(trainer, out: Path) -> None:
    """Every logged step (loss curve, eval) as `log_history.json`, on rank 0."""
    if is_main_process():
        (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))


def train(trainer, cfg, out: Path):
    """trainer.train(), resuming from the newest complete checkpoint in <run dir>/trainer when
    stage.resume says so (auto: inside a Slurm job). Checkpoints are marked complete and
    rotated, and a USR2/TERM inside a Slurm job saves, requeues and exits, by
    rlhf.stages.preemption's callback."""
    from rlhf.compat import score_only_labelled_tokens_on_cpu

    score_only_labelled_tokens_on_cpu()  # TRL's LM head on CPU: a quarter of an SFT step
    trainer.add_callback(preemption.trainer_callback(cfg.stage.keep_checkpoints))
    last = preemption.resume_from(cfg, out / "trainer")
    return trainer.train(resume_from_checkpoint=str(last) if last else None)


def save_final_model(trainer, tokenizer, cfg, out: Path) -> Path:
    """Write the Hugging Face checkpoint `<run dir>/model` (written aside, then renamed).

    Every rank calls this: under ZeRO-3 saving gathers the parameter shards, a collective.
    `model/` is what users share: weights, config and tokenizer, with the user's file modes;
    LoRA adapters are merged into a plain checkpoint (the adapter alone goes to
    model/adapter), under ZeRO-3 too; the pickled training arguments stay in `trainer/`."""
    import torch.distributed as dist

    final, tmp = out / CHECKPOINT_SUBDIR, out / ".tmp-model"
    if is_main_process() and tmp.exists():
        shutil.rmtree(tmp)
    if hasattr(trainer.model, "merge_and_unload"):
        save_merged_lora(trainer, cfg, tmp)
    else:
        trainer.save_model(str(tmp))
    return publish_model_dir(tmp, tokenizer, out)


def publish_model_dir(tmp: Path, tokenizer, out: Path) -> Path:
    """The weights written to `tmp` become `<run dir>/model`: with the tokenizer, without the
    pickled training arguments, with the user's file modes, renamed into place by rank 0
    (every rank calls this and waits for it)."""
    import torch.distributed as dist

    final = out / CHECKPOINT_SUBDIR
    if is_main_process():
        keep_with_trainer_state(tmp, out)
        tokenizer.save_pretrained(tmp)
        with_user_umask(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    if dist.is_initialized():
        dist.barrier()
    return final


def save_merged_lora(trainer, cfg, tmp: Path) -> None:
    """The adapter to `tmp/adapter` and base + adapter, merged, to `tmp` (rank 0 writes).

    Under ZeRO-3 every rank holds a shard of every weight: all ranks gather the whole state
    dict to rank 0 (the trainer's own ZeRO-3 save does the same), which merges it into a copy
    built on the meta device, so the trained model is left as it is and no second random
    copy of the model is allocated."""
    from rlhf.models.trainable import is_zero3

    model = trainer.model
    if is_zero3(cfg.distributed):
        if not cfg.distributed.zero.stage3_gather_16bit_weights_on_model_save:
            # the user turned gathering off: nothing to merge from, DeepSpeed's shards it is
            trainer.save_model(str(tmp))
            return
        # a collective; the whole state dict only on rank 0
        state = trainer.accelerator.get_state_dict(trainer.deepspeed)
        if not is_main_process():
            return
        model = lora_copy(model, state)
    if is_main_process():
        model.save_pretrained(tmp / "adapter")
        model.merge_and_unload().save_pretrained(tmp, safe_serialization=True)


def lora_copy(peft_model, state: dict):
    """A PeftModel like `peft_model` (same class, config and adapter) holding `state`.

    Built on the meta device and given the tensors of `state` themselves (assign=True)."""
    import torch
    from peft import get_peft_model

    from rlhf.compat import forget_deepspeed_zero3_init

    # transformers would build the copy as a partitioned ZeRO-3 model (a collective) while
    # the run's DeepSpeed config is registered; rank 0 is alone here
    forget_deepspeed_zero3_init()
    base = peft_model.get_base_model()
    adapter = peft_model.active_adapter
    with torch.device("meta"):
        copy = get_peft_model(type(base)(base.config), peft_model.peft_config[adapter],
                              adapter_name=adapter)
    copy.load_state_dict(state, strict=True, assign=True)
    copy.get_base_model().tie_weights()  # assign=True gave tied weights a tensor each
    return copy


# written by the Trainer into the model's folder; a pickle, which users are told not to load
# from strangers, so it is kept with the resumable state (every checkpoint-* has one too)
TRAINING_ARGS = "training_args.bin"


def keep_with_trainer_state(model_dir: Path, out: Path) -> None:
    if (model_dir / TRAINING_ARGS).exists():
        (out / "trainer").mkdir(exist_ok=True)
        os.replace(model_dir / TRAINING_ARGS, out / "trainer" / TRAINING_ARGS)


def with_user_umask(path: Path) -> None:
    """Give `path` and what it holds the modes the user's umask asks for.

    safetensors 0.8 (model.safetensors, checkpoints) creates files readable by their owner
    only (0600), whatever the umask. (config.yaml and metrics.json go through
    data_tools.io.atomic_write_text, which applies the umask itself.)"""
    umask = user_umask()
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in paths:
        if p.is_file() or p.is_dir():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~umask)
