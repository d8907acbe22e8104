"""stage=grpo with the reward model of stage=rm as its reward, stage=rloo with a rule-based
reward named by `_target_`, and bad prompt rows."""

from __future__ import annotations

import json
import math

from tests.conftest import max_weight_change
from tests.data_tools.conftest import write_jsonl

# 2 prompts x 4 answers per step, 24 new tokens, the held-out evaluation on 8 prompts
QUICK = ["stage.learning_rate=1e-4", "stage.max_steps=3", "stage.global_batch_size=8",
         "stage.per_device_batch_size=8", "stage.num_generations=4", "stage.max_new_tokens=24",
         "stage.logging_steps=1", "debug.max_train_rows=32", "debug.max_eval_rows=8",
         "stage.heldout.max_prompts=8", "stage.heldout.max_new_tokens=24"]


def test_grpo_with_the_reward_model_checkpoint(run_stage, cache_dir, rm_run, tmp_path):
    run_dir = tmp_path / "run"
    run_stage(["stage=grpo", *QUICK, f"stage.reward_model={rm_run}"], run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and metrics["train/steps"] == 3
    assert "rewards/reward_model/mean" in metrics and math.isfinite(metrics["train/reward"])
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0
    # held-out: the reward model's score beside the oracle's, and KL to the start model
    assert {"eval/reward_model_greedy", "eval/oracle_greedy", "eval/kl_to_reference"} <= \
        set(metrics)


def test_rloo_with_a_rule_based_reward_function(run_stage, cache_dir, tmp_path):
    run_dir = tmp_path / "run"
    penalty = "{_target_: rlhf.rewards.length.LengthPenalty, max_words: 3, per_word: 0.1}"
    run_stage(["stage=rloo", *QUICK, f"stage.reward_funcs=[{penalty}]"], run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["train/loss"]) and metrics["train/steps"] == 3
    assert metrics["rewards/length_penalty/mean"] < 0  # untrained answers ramble
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0


def test_empty_prompt_names_the_row(run_stage, tmp_path):
    path = write_jsonl(tmp_path / "prompts.jsonl", [
        {"prompt": [{"role": "user", "content": "Price of the Orbit Fan?"}]}, {"prompt": []}])
    error = run_stage.fails(["stage=grpo", "data=custom", f"data.prompts_train={path}",
                             "stage.reward_funcs=[{_target_: rlhf.rewards.length.LengthPenalty}]"],
                            tmp_path / "run")
    assert f"{path}:2: `prompt` is empty" in error, error


def test_unknown_reward_function_is_named(run_stage, tmp_path):
    error = run_stage.fails(["stage=grpo", "stage.reward_funcs=[{_target_: rlhf.rewards.nope}]"],
                            tmp_path / "run")
    assert "stage.reward_funcs[0]._target_=rlhf.rewards.nope: cannot import it" in error, error
