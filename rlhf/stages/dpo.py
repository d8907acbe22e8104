"""Direct preference optimisation and its variants, on TRL's DPOTrainer (CPO/ORPO trainers for
the reference-free SimPO and ORPO).

    rlhf stage=dpo model.path=outputs/demo/<run>/sft                 # demo rankings -> pairs
    rlhf stage=dpo stage.loss_type=ipo stage.beta=0.5
    rlhf stage=dpo stage.loss_type=simpo stage.beta=2.0              # no reference model
    rlhf stage=dpo stage.ld_alpha=0 stage.pairs=best                 # LD-DPO on best-vs-rest
    rlhf stage=dpo stage.ld_alpha=0 stage.entropy_coef=-1            # + entropy minimisation
    rlhf stage=dpo model.lora.enabled=true stage.reference=lora_base  # adapters off = reference
    rlhf stage=dpo data=custom stage.data_format=pairs data.pairs_train=pairs.jsonl

The reference is a frozen copy of the SFT checkpoint (`stage.reference=model`, from
`stage.reference_path`, default `model.path`), the policy with its LoRA adapters disabled
(`lora_base`), or log-probs computed once before training (`precomputed`). Rankings are
expanded into their non-tied pairs. Logs `rewards/chosen`, `rewards/rejected`,
`rewards/margin`, `rewards/accuracy` and `train/loss`, and ends with the held-out evaluation
of stage=eval (oracle on the demo, reward-model score, KL to the reference).
"""

from __future__ import annotations

from rlhf.compat import cpo_classes, orpo_classes
from rlhf.config import REFERENCE_FREE_LOSSES, DPOReference, PreferenceFormat
from rlhf.data.loading import require
from rlhf.data.rankings import expand_to_pairs, load_pairs, load_rankings
from rlhf.models.loading import (load_causal_lm, load_tokenizer, peft_config,
                                 resolve_model_path)
from rlhf.stages.common import (StageRun, last_train_log, rows_reached, save_final_model,
                                train, train_summary, training_arguments,
                                write_log_history)
from rlhf.stages.eval import evaluate_trained_policy


def load_preferences(cfg, out, split: str) -> list[dict] | None:
    """Pairs from data.pairs_<split>, or data.rankings_<split> expanded to its pairs."""
    data, debug = cfg.data, cfg.debug
    cap = debug.max_train_rows if split == "train" else debug.max_eval_rows
    if cfg.stage.data_format == PreferenceFormat.pairs:
        path = getattr(data, f"pairs_{split}")
        load = load_pairs
    else:
        path = getattr(data, f"rankings_{split}")
        load = load_rankings
    if split == "train":
        require(path, f"data.{cfg.stage.data_format.value}_train", "dpo")
    elif not path:
        return None
    rows = load(path, cap, out)
    if cfg.stage.data_format == PreferenceFormat.pairs:
        return rows
    return expand_to_pairs(rows, cfg.stage.pairs.value)


def to_dataset(rows: list[dict]):
    """TRL's conversational preference format (docs/data.md)."""
    import datasets

    answer = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return datasets.Dataset.from_list([{"prompt": r["prompt"], "chosen": answer(r["responses"][0]),
                                        "rejected": answer(r["responses"][1])} for r in rows])


def make_trainer(cfg, out, model, tokenizer, train_ds, eval_ds, callbacks):
    stage = cfg.stage
    common = dict(**training_arguments(cfg, out), beta=stage.beta, max_length=stage.max_length,
                  dataset_num_proc=cfg.data.num_proc)
    data = dict(train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
                callbacks=callbacks, peft_config=peft_config(cfg.model))
    if stage.loss_type == "simpo":  # SimPO (arXiv 2405.14734) = CPO's loss without its SFT term
        CPOConfig, CPOTrainer = cpo_classes()
        args = CPOConfig(**common, loss_type="simpo", cpo_alpha=0.0,
                         simpo_gamma=stage.simpo_gamma, label_smoothing=stage.label_smoothing)
        return CPOTrainer(model=model, args=args, **data)
    if stage.loss_type == "orpo":  # ORPO (arXiv 2403.07691): beta is its lambda
        ORPOConfig, ORPOTrainer = orpo_classes()
        return ORPOTrainer(model=model, args=ORPOConfig(**common), **data)

    from trl import DPOConfig, DPOTrainer
    # lora_base: TRL disables the adapters for reference log-probs; precomputed without a
    # reference_path: TRL computes them with the policy before its first step (= the SFT
    # model), so no second model is loaded
    ref_model = None
    if stage.reference == DPOReference.model or (stage.reference == DPOReference.precomputed
                                                 and stage.reference_path):
        ref_model = load_causal_lm(cfg.model, stage.reference_path or cfg.model.path)
    # TRL sums the listed losses with their weights; "sft" is the NLL of the chosen answer
    losses = [stage.loss_type] + (["sft"] if stage.sft_weight > 0 else [])
    args = DPOConfig(**common, loss_type=losses, loss_weights=[1.0, stage.sft_weight][:len(losses)],
                     label_smoothing=stage.label_smoothing, ld_alpha=stage.ld_alpha,
                     precompute_ref_log_probs=stage.reference == DPOReference.precomputed)
    if stage.entropy_coef:
        return dpo_with_entropy(DPOTrainer)(model=model, ref_model=ref_model, args=args,
                                            entropy_coef=stage.entropy_coef, **data)
    return DPOTrainer(model=model, ref_model=ref_model, args=args, **data)


def chosen_answer_entropy(entropy, label_mask):
    """Mean next-token entropy over the chosen answers' tokens. TRL's DPO batches stack the
    chosen answers on the rejected ones ([chosen; rejected], rows 2i and 2i+1 not paired)."""
    from rlhf.algorithms.ppo import masked_mean

    entropy = entropy[:, -label_mask.size(1):]  # PEFT prompt tuning prepends virtual tokens
    half = entropy.size(0) // 2
    return masked_mean(entropy[:half], label_mask[:half].to(entropy.dtype))


def dpo_with_entropy(DPOTrainer):
    """TRL's DPOTrainer whose loss also subtracts entropy_coef x the policy's entropy on the
    chosen answers (stage.entropy_coef), from the entropy TRL's fused LM head computed in the
    same forward pass (rlhf.compat.keep_fused_head_entropy)."""
    from rlhf.compat import keep_fused_head_entropy

    class DPOWithEntropy(DPOTrainer):
        def __init__(self, *args, entropy_coef: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.entropy_coef = entropy_coef
            self._entropies = keep_fused_head_entropy(self.model)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if not self._entropies:  # evaluation: no forward with gradients
                return loss
            # the last training forward is this loss's; nothing older may keep its graph alive
            entropy = chosen_answer_entropy(*self._entropies.pop())
            self._entropies.clear()
            if return_outputs:
                return loss[0] - self.entropy_coef * entropy, loss[1]
            return loss - self.entropy_coef * entropy

    return DPOWithEntropy


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    all_pairs = load_preferences(cfg, out, "train")
    train_rows = rows_reached(all_pairs, cfg)
    eval_rows = load_preferences(cfg, out, "eval")
    resolve_model_path(cfg.model.path)  # a wrong path fails here, before the slow imports
    reference_free = stage.loss_type in REFERENCE_FREE_LOSSES
    if stage.reference_path and not reference_free:
        resolve_model_path(stage.reference_path, "stage.reference_path")

    from rlhf.tracking.callback import TrackerCallback

    tokenizer = load_tokenizer(cfg.model)
    trainer = make_trainer(cfg, out, load_causal_lm(cfg.model), tokenizer,
                           to_dataset(train_rows), to_dataset(eval_rows) if eval_rows else None,
                           [TrackerCallback(stage_run.tracker)])
    result = train(trainer, cfg, out)
    metrics = {**train_summary(trainer, result), "train/pairs": len(train_rows),
               "train/pairs_available": len(all_pairs),
               **last_train_log(trainer, "rewards/")}
    if eval_rows:
        from rlhf.tracking import hf_log_to_metrics
        eval_metrics = hf_log_to_metrics(trainer.evaluate())
        stage_run.tracker.log(eval_metrics, step=trainer.state.global_step)
        metrics.update(eval_metrics)
    save_final_model(trainer, tokenizer, cfg, out)
    write_log_history(trainer, out)
    # KL to what the policy started from: the reference, or the model itself if reference-free
    reference = stage.heldout.reference_path or stage.reference_path or cfg.model.path
    metrics.update(evaluate_trained_policy(cfg, stage_run, stage.heldout.reward_model,
                                           reference))
    return stage_run.finish(metrics)
