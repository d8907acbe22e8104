"""Group-based online RL on TRL's trainers: GRPO (arXiv 2402.03300) and RLOO (arXiv 2402.14740).

    rlhf stage=grpo model.path=<sft run> stage.reward_model=<rm run>
    rlhf stage=rloo model.path=<sft run> stage.reward_model=<rm run> stage.num_generations=4
    rlhf stage=grpo model.path=<sft run> \
        'stage.reward_funcs=[{_target_: rlhf.rewards.demo_oracle.OracleReward, catalogue: ...}]'

For each prompt (data.prompts_train; extra columns reach the reward functions) the policy
samples `num_generations` answers; each is scored by the reward model of stage=rm (normalised
with its reward_stats.json) plus any `reward_funcs`, and advantages are taken within the group
(GRPO: reward minus the group mean, over its std; RLOO: minus the mean of the other answers).
`beta` is the KL coefficient towards the starting model. Ends with the held-out evaluation of
stage=eval, scored by the oracle (demo), the reward model, and KL to the starting model.
"""

from __future__ import annotations

from rlhf.data.loading import load_prompts, require
from rlhf.models.loading import (load_causal_lm, load_tokenizer, peft_config,
                                 resolve_model_path)
from rlhf.rewards import build_reward_funcs
from rlhf.stages.common import (StageRun, last_train_log, save_final_model, train,
                                train_summary, training_arguments, write_log_history)
from rlhf.stages.eval import evaluate_trained_policy


def trainer_classes(name: str):
    if name == "grpo":
        from trl import GRPOConfig, GRPOTrainer
        return GRPOConfig, GRPOTrainer
    from trl import RLOOConfig, RLOOTrainer
    return RLOOConfig, RLOOTrainer


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    rows = load_prompts(require(cfg.data.prompts_train, "data.prompts_train", stage.name),
                        cfg.debug.max_train_rows, bad_rows_dir=out)
    resolve_model_path(cfg.model.path)  # a wrong path fails here, before the slow imports
    reward_funcs, reward_weights = build_reward_funcs(stage)

    import datasets

    from rlhf.tracking.callback import TrackerCallback

    config_cls, trainer_cls = trainer_classes(stage.name)
    args = config_cls(**training_arguments(cfg, out), num_generations=stage.num_generations,
                      max_completion_length=stage.max_new_tokens, temperature=stage.temperature,
                      beta=stage.beta, reward_weights=reward_weights, log_completions=False)
    tokenizer = load_tokenizer(cfg.model)
    trainer = trainer_cls(model=load_causal_lm(cfg.model), reward_funcs=reward_funcs, args=args,
                          train_dataset=datasets.Dataset.from_list(rows),
                          processing_class=tokenizer, peft_config=peft_config(cfg.model),
                          callbacks=[TrackerCallback(stage_run.tracker)])
    result = train(trainer, cfg, out)
    metrics = {**train_summary(trainer, result), "train/prompts": len(rows),
               **last_train_log(trainer, ("train/reward", "rewards/", "train/kl"))}
    save_final_model(trainer, tokenizer, cfg, out)
    write_log_history(trainer, out)
    metrics.update(evaluate_trained_policy(
        cfg, stage_run, stage.heldout.reward_model or stage.reward_model,
        stage.heldout.reference_path or cfg.model.path))
    return stage_run.finish(metrics)
