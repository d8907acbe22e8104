"""Supervised fine-tuning on conversations, on TRL's SFTTrainer.

    rlhf stage=sft                                   # the demo data on the tiny model
    rlhf stage=sft model.path=Qwen/Qwen2.5-0.5B-Instruct model.lora.enabled=true \
        data=custom data.sft_train=train.jsonl data.sft_eval=eval.jsonl

The loss is on the assistant's tokens only (`stage.assistant_only_loss`), optionally with
packing or padding-free batches and LoRA. Writes `model/` (safetensors + tokenizer with chat
template), `metrics.json` (eval loss and perplexity) and `config.yaml` to the run directory.
"""

from __future__ import annotations

import math

from rlhf.compat import full_numel
from rlhf.data.loading import load_conversations, require
from rlhf.distributed import is_main_process
from rlhf.models.loading import (load_causal_lm, load_tokenizer, peft_config,
                                 resolve_model_path)
from rlhf.stages.common import (StageRun, save_final_model, train, train_summary,
                                training_arguments, write_log_history)
from rlhf.tracking import hf_log_to_metrics


def load_data(cfg, out):
    """Check every row before anything heavy is imported or loaded."""
    train_path = require(cfg.data.sft_train, "data.sft_train", "sft")
    train = load_conversations(train_path, cfg.debug.max_train_rows, bad_rows_dir=out)
    eval_rows = None
    if cfg.data.sft_eval:
        eval_rows = load_conversations(cfg.data.sft_eval, cfg.debug.max_eval_rows, out)
    return train, eval_rows


def parameter_counts(model) -> dict:
    # under ZeRO-3 a rank holds only a shard of each parameter
    return {"num_parameters": sum(full_numel(p) for p in model.parameters()),
            "num_trainable_parameters": sum(full_numel(p) for p in model.parameters()
                                            if p.requires_grad)}


# TRL 1.16 reports these as a mean over evaluation steps, each step token-weighted over one
# micro batch per rank: their value depends on the number of ranks (the same model scored
# 0.1626 token accuracy on 1 rank, 0.1615 on 2). The summary (metrics.json, the W&B summary)
# holds only what means the same on any number of ranks; log_history.json keeps TRL's values.
RANK_DEPENDENT_EVAL = ("eval/entropy", "eval/mean_token_accuracy")


def summary_eval_metrics(logged: dict) -> dict:
    return {k: v for k, v in logged.items() if k not in RANK_DEPENDENT_EVAL}


def padding_free_note(stage, attn_implementation: str | None) -> str | None:
    """A line for the user when padding-free batches meet an attention without a varlen kernel.

    TRL 1.16's packing (strategy bfd) and padding_free flatten each micro-batch into one row,
    with position ids restarting at every example. Flash attention runs that row as separate
    sequences; sdpa and eager get a block-diagonal mask over the whole row from transformers
    5.23 instead, so attention costs (micro-batch tokens)^2: 16 x 256 tokens flattened took 3.2x
    the time of the same 16 rows (docs/notes.md, "On a GPU")."""
    if not (stage.packing or stage.padding_free) or "flash" in (attn_implementation or ""):
        return None
    return (f"rlhf: stage.packing flattens each micro-batch of {stage.per_device_batch_size} "
            f"rows into one row; with model.attn_implementation={attn_implementation} attention "
            "spans the whole row (correct, but quadratic in the micro-batch's tokens). Use "
            "flash attention (e.g. model.attn_implementation=flash_attention_2), or "
            "stage.packing=false with stage.train_sampling=batch_rebalance")


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    train_rows, eval_rows = load_data(cfg, out)
    resolve_model_path(cfg.model.path)  # a wrong path fails here, before the slow imports

    import datasets
    from trl import SFTConfig, SFTTrainer

    from rlhf.distributed.memory import StateMemoryCallback, memory_metrics
    from rlhf.tracking.callback import TrackerCallback

    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model)
    note = padding_free_note(stage, model.config._attn_implementation)
    if note and is_main_process():
        print(note, flush=True)
    train_ds = datasets.Dataset.from_list(train_rows)
    eval_ds = datasets.Dataset.from_list(eval_rows) if eval_rows else None

    args = SFTConfig(**training_arguments(cfg, out), max_length=stage.max_length,
                     assistant_only_loss=stage.assistant_only_loss, packing=stage.packing,
                     padding_free=stage.padding_free, dataset_num_proc=cfg.data.num_proc,
                     train_sampling_strategy=stage.train_sampling.value)
    memory = StateMemoryCallback()
    trainer = SFTTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                         processing_class=tokenizer, peft_config=peft_config(cfg.model),
                         callbacks=[TrackerCallback(stage_run.tracker), memory])
    train_result = train(trainer, cfg, out)

    metrics = {**train_summary(trainer, train_result), **parameter_counts(trainer.model),
               **memory_metrics(memory)}
    if eval_ds is not None:
        eval_metrics = summary_eval_metrics(hf_log_to_metrics(trainer.evaluate()))
        eval_metrics["eval/perplexity"] = math.exp(min(eval_metrics["eval/loss"], 50.0))
        stage_run.tracker.log(eval_metrics, step=trainer.state.global_step)
        metrics.update(eval_metrics)

    save_final_model(trainer, tokenizer, cfg, out)
    write_log_history(trainer, out)
    return stage_run.finish(metrics)
