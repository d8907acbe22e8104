"""Reward model on ranked responses: pairwise (Bradley-Terry) or K-wise (InstructGPT).

    rlhf stage=rm model.path=outputs/demo/<run>/sft                  # K-wise on data.rankings_*
    rlhf stage=rm stage.objective=pairwise                            # rankings expanded to pairs
    rlhf stage=rm stage.data_format=pairs data.pairs_train=pairs.jsonl

K-wise: all C(K,2) comparisons of a prompt are one batch element computed from K forward
passes (rlhf/algorithms/reward_losses.py). Evaluation on held-out rankings: pairwise accuracy
(overall and per rank distance), Kendall tau, top-1 accuracy, reward mean/std. Writes `model/`
(an AutoModelForSequenceClassification checkpoint), `reward_stats.json` (mean/std of rewards
on training prompts, for reward normalisation in PPO) and `metrics.json`.
"""

from __future__ import annotations

import json
from statistics import mean, pstdev

import torch
from transformers import Trainer

from rlhf.algorithms.ranking_metrics import ranking_metrics
from rlhf.algorithms.reward_losses import kwise_ranking_loss
from rlhf.data.loading import require
from rlhf.data.rankings import (RankingCollator, expand_to_pairs, load_pairs, load_rankings,
                                tokenize_ranking)
from rlhf.config import PreferenceFormat, RMObjective
from rlhf.distributed import is_main_process
from rlhf.models.loading import load_tokenizer, resolve_model_path, torch_dtype
from rlhf.stages.common import (StageRun, save_final_model, train, train_summary,
                                training_arguments, write_log_history)


class RankingTrainer(Trainer):
    """transformers' Trainer with the K-wise loss; a pair is a ranking with K = 2."""

    def __init__(self, *args, use_margin: bool, center_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_margin, self.center_coef = use_margin, center_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        valid = inputs["valid"]  # (B, K)
        flat = model(input_ids=inputs["input_ids"],
                     attention_mask=inputs["attention_mask"]).logits[:, 0]  # (sum K,)
        # back to (B, K): the collator flattened prompt by prompt, response by response
        rewards = flat.new_zeros(valid.shape, dtype=flat.dtype).masked_scatter(valid, flat)
        scores = inputs["scores"] if self.use_margin and bool(inputs["use_scores"]) else None
        loss = kwise_ranking_loss(rewards, inputs["ranks"], valid, scores)
        if self.center_coef:
            loss = loss + self.center_coef * flat.pow(2).mean()
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        return loss.detach(), outputs["rewards"].detach(), None


def load_data(cfg, out) -> tuple[list, list | None]:
    stage, data = cfg.stage, cfg.data
    if stage.data_format == PreferenceFormat.rankings:
        train_rows = load_rankings(require(data.rankings_train, "data.rankings_train", "rm"),
                                   cfg.debug.max_train_rows, out)
        eval_rows = load_rankings(data.rankings_eval, cfg.debug.max_eval_rows, out) \
            if data.rankings_eval else None
    else:
        train_rows = load_pairs(require(data.pairs_train, "data.pairs_train", "rm"),
                                cfg.debug.max_train_rows, out)
        eval_rows = load_pairs(data.pairs_eval, cfg.debug.max_eval_rows, out) \
            if data.pairs_eval else None
    return train_rows, eval_rows


def predict_rewards(trainer, rows, dataset) -> list[list[float]]:
    """The reward of every response of every row (a collective under DeepSpeed)."""
    predictions = trainer.predict(dataset).predictions  # (N, K_max), padded
    return [list(map(float, predictions[i][:len(r["responses"])])) for i, r in enumerate(rows)]


def reward_stats(rewards: list[list[float]]) -> dict:
    """Mean and std of the rewards of training responses: PPO normalises rewards with them."""
    flat = [x for row in rewards for x in row]
    return {"mean": mean(flat), "std": pstdev(flat), "count": len(flat)}


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    train_rows, eval_rows = load_data(cfg, out)
    if stage.objective == RMObjective.pairwise:  # the classic way: every pair its own example
        train_rows = expand_to_pairs(train_rows)
    model_path = resolve_model_path(cfg.model.path)  # fails before the slow imports

    import datasets
    from transformers import AutoModelForSequenceClassification, TrainingArguments

    tokenizer = load_tokenizer(cfg.model)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=torch_dtype(cfg.model),
        trust_remote_code=cfg.model.trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    tokenize = lambda rows: datasets.Dataset.from_list(  # noqa: E731
        [tokenize_ranking(r, tokenizer, stage.max_length) for r in rows])
    train_ds = tokenize(train_rows)
    eval_ds = tokenize(eval_rows) if eval_rows else None

    from rlhf.tracking.callback import TrackerCallback
    args = TrainingArguments(**training_arguments(cfg, out), remove_unused_columns=False,
                             label_names=[])
    trainer = RankingTrainer(model=model, args=args, train_dataset=train_ds,
                             eval_dataset=eval_ds, data_collator=RankingCollator(
                                 tokenizer.pad_token_id), processing_class=tokenizer,
                             callbacks=[TrackerCallback(stage_run.tracker)],
                             use_margin=stage.use_margin, center_coef=stage.center_coef)
    result = train(trainer, cfg, out)
    forward_tokens = sum(len(s) for row in train_ds["input_ids"] for s in row)
    metrics = {**train_summary(trainer, result), "train/examples": len(train_ds),
        # tokens through the model per pass over the data, per prompt
        "train/forward_tokens_per_prompt": forward_tokens / max(1, len(set(
            json.dumps(r["prompt"]) for r in train_rows)))}
    if eval_rows:
        eval_metrics = ranking_metrics(predict_rewards(trainer, eval_rows, eval_ds),
                                       [r["ranks"] for r in eval_rows])
        stage_run.tracker.log(eval_metrics, step=trainer.state.global_step)
        metrics.update(eval_metrics)
    n_stats = min(stage.reward_stats_rows, len(train_rows))
    stats = reward_stats(predict_rewards(trainer, train_rows[:n_stats],
                                         train_ds.select(range(n_stats))))
    save_final_model(trainer, tokenizer, cfg, out)
    write_log_history(trainer, out)
    if is_main_process():
        (out / "reward_stats.json").write_text(json.dumps(stats, indent=1))
    return stage_run.finish({**metrics, **{f"reward_stats/{k}": v for k, v in stats.items()}})


