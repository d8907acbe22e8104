"""The pieces of the policy stages' evaluation and rewards: KL math against hand-worked
numbers, answer log-probs under padding, the normalised reward-model reward, and reward
functions named by `_target_`."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.algorithms.kl import sequence_kl
from rlhf.errors import ConfigError


def test_sequence_kl_by_hand():
    policy = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.8, 0.1, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.25, 0.1], [0.4, 0.2, 0.7]]))
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # the 0.9 / 0.1 is padding
    # row 0: log 2 + 0; row 1: log 2 + log 0.5 + log(1/7)
    expected = torch.tensor([math.log(2), math.log(2) + math.log(0.5) + math.log(1 / 7)])
    assert torch.allclose(sequence_kl(policy, ref, mask), expected)


def test_answer_logprobs_do_not_depend_on_padding(cache_dir):
    from transformers import AutoModelForCausalLM

    from rlhf.models.generation import answer_logprobs

    model = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny")
    prompts, answers = [[5, 6, 7, 8, 9], [5, 6]], [[10, 11], [12, 13, 14, 15]]
    batched, mask = answer_logprobs(model, prompts, answers, batch_size=2, pad_token_id=0)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    for i, (p, a) in enumerate(zip(prompts, answers)):
        logits = model(input_ids=torch.tensor([p + a])).logits[0]  # no padding at all
        logps = torch.log_softmax(logits, -1)
        direct = torch.stack([logps[len(p) - 1 + t, tok] for t, tok in enumerate(a)])
        assert torch.allclose(batched[i, :len(a)], direct, atol=1e-5)


def test_reward_model_reward_is_normalised_with_reward_stats(rm_run):
    from rlhf.models import reward
    from rlhf.rewards.reward_model import RewardModelReward

    stats = json.loads((rm_run / "reward_stats.json").read_text())
    func = RewardModelReward(str(rm_run))
    prompts = [[{"role": "user", "content": "How much is the Orbit Fan?"}]] * 2
    completions = [[{"role": "assistant", "content": "It costs $42. Happy to help!"}],
                   [{"role": "assistant", "content": "Obviously $42."}]]
    model, tokenizer = reward.load(str(rm_run))
    raw = reward.score(model, tokenizer, [p + c for p, c in zip(prompts, completions)])
    expected = [(r - stats["mean"]) / stats["std"] for r in raw]
    assert func(prompts, completions) == pytest.approx(expected, abs=1e-5)


def test_reward_functions_by_target():
    from rlhf.rewards import build_reward_func

    penalty, weight = build_reward_func({"_target_": "rlhf.rewards.length.LengthPenalty",
                                         "max_words": 2, "per_word": 0.5, "weight": 2}, "f")
    assert weight == 2.0 and penalty(None, ["one two three four"]) == [-1.0]
    func, _ = build_reward_func({"_target_": "rlhf.rewards.completion_text"}, "f")
    assert func([{"role": "assistant", "content": "x"}]) == "x"  # a plain function, as is
    with pytest.raises(ConfigError, match="f needs `_target_"):
        build_reward_func({"weight": 1}, "f")


def test_several_samples_per_prompt_are_kept_and_averaged(run_stage, cache_dir, tmp_path):
    """stage.samples_per_prompt=3: every draw is in samples.jsonl, and the sampled figures
    are the means over all of them (the greedy figures over one answer per prompt)."""
    from statistics import mean

    run_dir = tmp_path / "eval"
    metrics = run_stage(["stage=eval", f"model.path={cache_dir / 'demo_tiny'}",
                         "stage.samples_per_prompt=3", "stage.max_prompts=8",
                         f"stage.reference_path={cache_dir / 'demo_tiny'}"], run_dir)
    rows = [json.loads(line) for line in open(run_dir / "samples.jsonl")]
    draws = ["sampled", "sampled_2", "sampled_3"]
    assert len(rows) == 8 and all(set(r["answers"]) == {"greedy", *draws} for r in rows)
    # the draws are different samples, not one answer copied
    assert len({r["answers"][d] for r in rows for d in draws}) > 8
    for key in ("total", "fact", "polite"):
        name = "eval/oracle_sampled" if key == "total" else f"eval/oracle_{key}_sampled"
        assert metrics[name] == pytest.approx(mean(r["scores"][d][key] for r in rows
                                                   for d in draws))
    # answer lengths vary even where the untrained model's oracle scores do not
    assert metrics["eval/answer_words_sampled"] == pytest.approx(
        mean(len(r["answers"][d].split()) for r in rows for d in draws))
    assert metrics["eval/oracle_greedy"] == pytest.approx(mean(r["scores"]["greedy"]["total"]
                                                               for r in rows))
    assert metrics["eval/samples_per_prompt"] == 3
    assert metrics["eval/kl_to_reference"] == pytest.approx(0.0, abs=1e-6)  # policy = reference

