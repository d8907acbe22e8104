"""Reward model on ranked responses: pairwise (Bradley-Terry) or K-wise (InstructGPT).

    rlhf stage=rm model.path=outputs/demo/<run>/sft                  # K-wise on data.rankings_*
    rlhf stage=rm stage.objective=pairwise                            # rankings expanded to pairs
    rlhf stage=rm stage.data_format=pairs data.pairs_train=pairs.jsonl

K-wise (our RankingTrainer): all C(K,2) comparisons of a prompt are one batch element computed
from K forward passes (rlhf/algorithms/reward_losses.py). Pairwise runs on TRL's RewardTrainer
(Bradley-Terry, margin, centering), fed pre-tokenized pairs truncated like the K-wise ones so
that TRL's max_length filter drops nothing. `model.lora.enabled=true` trains LoRA adapters
plus the new score head and saves the merged model. Evaluation on held-out rankings: pairwise
accuracy (overall and per rank distance), Kendall tau, top-1 accuracy, reward mean/std.
Writes `model/` (an AutoModelForSequenceClassification checkpoint), `reward_stats.json`
(mean/std of rewards on training prompts, for reward normalisation) and `metrics.json`.
"""

from __future__ import annotations

import json
from statistics import mean, pstdev

import torch
from transformers import Trainer
from trl import RewardTrainer

from data_tools.ranking import ranked_pairs
from rlhf.algorithms.ranking_metrics import ranking_metrics
from rlhf.algorithms.reward_losses import kwise_ranking_loss
from rlhf.data.loading import require
from rlhf.data.rankings import (RankingCollator, load_pairs, load_rankings,
                                tokenize_ranking)
from rlhf.compat import collator_swapped, prepare_inputs
from rlhf.config import PreferenceFormat, RMObjective
from rlhf.distributed import is_main_process
from rlhf.models.shared_prompt import (SharedPromptCollator, shared_prompt_rewards,
                                       split_prompt)
from rlhf.models.loading import (load_tokenizer, peft_config, resolve_model_path,
                                 torch_dtype)
from rlhf.stages.common import (StageRun, save_final_model, train, train_summary,
                                training_arguments, write_log_history)


def ranking_rewards(model, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of a ranking batch: (B, K) with zeros at padding, and the (sum K,) flat."""
    if "ends" in inputs:  # one sequence per ranking (rlhf/models/shared_prompt.py)
        return shared_prompt_rewards(model, inputs)
    valid = inputs["valid"]  # (B, K)
    flat = model(input_ids=inputs["input_ids"],
                 attention_mask=inputs["attention_mask"]).logits[:, 0]  # (sum K,)
    # back to (B, K): the collator flattened prompt by prompt, response by response
    return flat.new_zeros(valid.shape, dtype=flat.dtype).masked_scatter(valid, flat), flat


def ranking_prediction_step(trainer, model, inputs):
    """(loss, (B, K) rewards, None) for Trainer.predict on ranking batches."""
    inputs = prepare_inputs(trainer, inputs)
    with torch.no_grad():
        rewards, _ = ranking_rewards(model, inputs)
        loss = kwise_ranking_loss(rewards, inputs["ranks"], inputs["valid"])
    return loss.detach(), rewards.detach(), None


class RankingTrainer(Trainer):
    """transformers' Trainer with the K-wise loss; a pair is a ranking with K = 2."""

    def __init__(self, *args, use_margin: bool, center_coef: float, **kwargs):
        super().__init__(*args, **kwargs)
        self.use_margin, self.center_coef = use_margin, center_coef

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        rewards, flat = ranking_rewards(model, inputs)
        scores = inputs["scores"] if self.use_margin and bool(inputs["use_scores"]) else None
        loss = kwise_ranking_loss(rewards, inputs["ranks"], inputs["valid"], scores)
        if self.center_coef:
            loss = loss + self.center_coef * flat.pow(2).mean()
        return (loss, {"rewards": rewards}) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        return ranking_prediction_step(self, model, inputs)


class PairwiseRewardTrainer(RewardTrainer):
    """TRL's RewardTrainer, which also scores ranking batches for our held-out evaluation."""

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        if "valid" in inputs:
            return ranking_prediction_step(self, model, inputs)
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)


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


def ranking_collator(dataset, pad_token_id: int):
    """One sequence per ranking when its rows carry their shared `prompt_ids`, else one per
    response."""
    if "prompt_ids" in dataset.column_names:
        return SharedPromptCollator(pad_token_id)
    return RankingCollator(pad_token_id)


def predict_rewards(trainer, rows, dataset) -> list[list[float]]:
    """The reward of every response of every row (a collective under DeepSpeed)."""
    with collator_swapped(trainer, ranking_collator(dataset,
                                                    trainer.processing_class.pad_token_id)):
        predictions = trainer.predict(dataset).predictions  # (N, K_max), padded
    return [list(map(float, predictions[i][:len(r["responses"])])) for i, r in enumerate(rows)]


def reward_stats(rewards: list[list[float]]) -> dict:
    """Mean and std of the rewards of training responses: PPO normalises rewards with them."""
    flat = [x for row in rewards for x in row]
    return {"mean": mean(flat), "std": pstdev(flat), "count": len(flat)}


def pair_dataset(rankings: list[dict], tokenized: list[dict], use_margin: bool):
    """TRL's pre-tokenized preference columns: every non-tied pair of each ranking (the
    classic way, one example per pair), built from the responses tokenized once."""
    import datasets

    chosen, rejected, margins = [], [], []
    for row, tok in zip(rankings, tokenized):
        for a, b in ranked_pairs(row["ranks"]):
            chosen.append(tok["input_ids"][a])
            rejected.append(tok["input_ids"][b])
            if row["scores"] is not None:
                margins.append(row["scores"][a] - row["scores"][b])
    columns = {"chosen_ids": chosen, "rejected_ids": rejected}
    if use_margin and len(margins) == len(chosen):
        columns["margin"] = margins
    return datasets.Dataset.from_dict(columns)


def forward_tokens(dataset) -> int:
    """Tokens through the model in one pass over a K-wise or a pair dataset."""
    if "prompt_ids" in dataset.column_names:  # the prompt once, then each response
        return sum(len(s) - len(p) for p, row in zip(dataset["prompt_ids"], dataset["input_ids"])
                   for s in row) + sum(map(len, dataset["prompt_ids"]))
    if "input_ids" in dataset.column_names:
        return sum(len(s) for row in dataset["input_ids"] for s in row)
    return sum(map(len, dataset["chosen_ids"])) + sum(map(len, dataset["rejected_ids"]))


def add_shared_prompts(tokenizer, *sets: tuple) -> None:
    """Give every tokenized ranking its `prompt_ids`, so that it is scored as one sequence;
    if the chat template renders a prompt differently once an answer follows it, no row is."""
    pairs = [(row, tok) for rows, toks in sets if rows for row, tok in zip(rows, toks)]
    prompts = [split_prompt(tokenizer, row["prompt"], tok["input_ids"]) for row, tok in pairs]
    if any(p is None for p in prompts):
        print("rlhf: stage.share_prompt: the chat template renders some prompts differently "
              "once an answer follows; every response is scored as its own sequence")
        return
    for (_, tok), prompt_ids in zip(pairs, prompts):
        tok["prompt_ids"] = prompt_ids


def make_trainer(cfg, out, model, tokenizer, train: tuple, held_out: tuple, callbacks):
    """K-wise on our RankingTrainer, pairwise on TRL's RewardTrainer. train and held_out
    are (rankings, their tokenized rows); held_out may be (None, None)."""
    import datasets
    from transformers import TrainingArguments
    from trl import RewardConfig

    stage = cfg.stage
    args = {**training_arguments(cfg, out), "remove_unused_columns": False}
    if stage.objective == RMObjective.kwise:
        train_ds = datasets.Dataset.from_list(train[1])
        return RankingTrainer(
            model=model, args=TrainingArguments(**args, label_names=[]),
            train_dataset=train_ds,
            eval_dataset=datasets.Dataset.from_list(held_out[1]) if held_out[0] else None,
            data_collator=ranking_collator(train_ds, tokenizer.pad_token_id),
            processing_class=tokenizer,
            callbacks=callbacks, use_margin=stage.use_margin, center_coef=stage.center_coef)
    # TRL's defaults differ from ours: dropout off, centering as coef * mean((r_c + r_r)^2)
    config = RewardConfig(**args, max_length=stage.max_length, disable_dropout=False,
                          center_rewards_coefficient=stage.center_coef or None)
    return PairwiseRewardTrainer(
        model=model, args=config, processing_class=tokenizer, callbacks=callbacks,
        train_dataset=pair_dataset(*train, stage.use_margin),
        eval_dataset=pair_dataset(*held_out, stage.use_margin) if held_out[0] else None)


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    rankings, eval_rows = load_data(cfg, out)
    model_path = resolve_model_path(cfg.model.path)  # fails before the slow imports

    import datasets
    from transformers import AutoModelForSequenceClassification, set_seed

    tokenizer = load_tokenizer(cfg.model)
    # the score head (and LoRA) start from random weights: seed them, or every run differs
    # (the Trainer seeds only after the model exists)
    set_seed(stage.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        model_path, num_labels=1, dtype=torch_dtype(cfg.model),
        trust_remote_code=cfg.model.trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    lora = peft_config(cfg.model, task_type="SEQ_CLS")
    if lora is not None:  # peft also trains and saves the new score head (modules_to_save)
        from peft import get_peft_model
        model = get_peft_model(model, lora)

    from rlhf.tracking.callback import TrackerCallback
    tokenize = lambda rows: [tokenize_ranking(r, tokenizer, stage.max_length)  # noqa: E731
                             for r in rows] if rows else None
    train_tok, eval_tok = tokenize(rankings), tokenize(eval_rows)  # each response once
    if stage.share_prompt:
        add_shared_prompts(tokenizer, (rankings, train_tok), (eval_rows, eval_tok))
    trainer = make_trainer(cfg, out, model, tokenizer, (rankings, train_tok),
                           (eval_rows, eval_tok), [TrackerCallback(stage_run.tracker)])
    result = train(trainer, cfg, out)
    prompts = len(set(json.dumps(r["prompt"]) for r in rankings))
    metrics = {**train_summary(trainer, result), "train/examples": len(trainer.train_dataset),
               # tokens through the model per pass over the data, per prompt
               "train/forward_tokens_per_prompt":
                   forward_tokens(trainer.train_dataset) / max(1, prompts)}
    if eval_rows:
        eval_metrics = ranking_metrics(predict_rewards(trainer, eval_rows,
                                                       datasets.Dataset.from_list(eval_tok)),
                                       [r["ranks"] for r in eval_rows])
        stage_run.tracker.log(eval_metrics, step=trainer.state.global_step)
        metrics.update(eval_metrics)
    stats_rows = rankings[:stage.reward_stats_rows]  # each response once, also when pairwise
    stats = reward_stats(predict_rewards(trainer, stats_rows,
                                         datasets.Dataset.from_list(train_tok[:len(stats_rows)])))
    save_final_model(trainer, tokenizer, cfg, out)
    write_log_history(trainer, out)
    if is_main_process():
        (out / "reward_stats.json").write_text(json.dumps(stats, indent=1))
    return stage_run.finish({**metrics, **{f"reward_stats/{k}": v for k, v in stats.items()}})
