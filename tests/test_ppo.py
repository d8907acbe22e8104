"""stage=ppo (rlhf/stages/ppo.py): the rollout layout (position ids under left padding, stop
tokens, the missing-EOS penalty), a run whose reward rises on an easy synthetic reward, a run
against the demo's reward model (critic from it), resume, PPO-ptx, and 2 ZeRO-3 ranks."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch

from tests.conftest import max_weight_change

# 16 answers per rollout of at most 8 tokens, one micro batch, no held-out evaluation
FAST = ["stage=ppo", "stage.per_device_batch_size=16", "stage.max_new_tokens=8",
        "debug.max_train_rows=64", "data.eval_prompts=null"]
# shorter answers score higher: -0.25 per word beyond the first
SHORT = "{_target_: rlhf.rewards.length.LengthPenalty, max_words: 1, per_word: 0.25}"
# the share of digits in the answer (digit_share below), with the adaptive KL controller;
# 32 answers x 4 epochs per step: the score rose 0.151 -> 0.279 in 8 steps when tuned
SYNTHETIC = [*FAST, "stage.global_batch_size=32", "stage.ppo_epochs=4",
             "stage.critic_init=policy", "stage.reward_funcs=[{_target_: tests.test_ppo.digit_share}]",
             "stage.learning_rate=1e-3", "stage.critic_learning_rate=3e-3",
             "stage.kl_coef=0.01", "stage.adaptive_kl=true", "stage.kl_target=0.5",
             "stage.kl_horizon=100"]


def _history(run_dir):
    return json.loads((run_dir / "log_history.json").read_text())


# ---------------------------------------------------------------- rollout layout


@pytest.fixture(scope="module")
def tiny(cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = cache_dir / "demo_tiny"
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def _answer_logps(model, batch, with_positions: bool = True):
    from rlhf.models.rollout import token_logprobs

    inputs = batch.model_inputs()
    if not with_positions:
        inputs.pop("position_ids")
    with torch.no_grad():
        logits = batch.answer_slice(model(**inputs).logits).float()
    return token_logprobs(logits, batch.response_ids, 1.0)


def test_position_ids_under_left_padding(tiny):
    """An answer's log-probs are the same whether its prompt is padded on the left (beside a
    longer prompt) or not: positions count from each row's first real token. RoPE (the demo's
    Llama) only sees relative positions; a model with absolute position embeddings (GPT-2)
    shows what counting from the left edge, padding included, would do."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from rlhf.models.rollout import ResponseBatch

    llama, tokenizer = tiny
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2,
                                      n_head=2)).eval()
    short, long = [5, 6, 7], [8, 9, 10, 11, 12, 13, 14]
    answers = [[20, 21, 22, 1], [23, 24]]
    pad = 0
    alone = ResponseBatch.build([short], answers[:1], pad)
    together = ResponseBatch.build([short, long], answers, pad)
    assert together.prompt_width == 7
    assert together.position_ids[0].tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6]
    assert together.position_ids[1, :9].tolist() == list(range(9))
    assert together.response_mask.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]
    for model in (llama, gpt2):
        expected = _answer_logps(model, alone)[0]
        assert torch.allclose(expected, _answer_logps(model, together)[0], atol=1e-5)
    # without our position ids, GPT-2 reads the padded row at the wrong positions
    assert not torch.allclose(_answer_logps(gpt2, alone)[0],
                              _answer_logps(gpt2, together, with_positions=False)[0], atol=1e-3)


def test_answer_logits_through_the_lm_head_only_where_answers_are(tiny):
    """answer_logits sends only the answer positions through the LM head (logits_to_keep):
    the same logits as slicing the whole sequence's; a model whose forward has no
    logits_to_keep takes the slicing path."""
    from rlhf.models.rollout import ResponseBatch, answer_logits, keeps_logits

    llama, _ = tiny

    class NoKeep(torch.nn.Module):  # an architecture without logits_to_keep
        def forward(self, input_ids, attention_mask, position_ids):
            return llama(input_ids=input_ids, attention_mask=attention_mask,
                         position_ids=position_ids)

    batch = ResponseBatch.build([[5, 6, 7], [8, 9, 10, 11, 12]], [[20, 21, 1], [23]], pad=0)
    assert keeps_logits(llama) and not keeps_logits(NoKeep())
    with torch.no_grad():
        whole = batch.answer_slice(llama(**batch.model_inputs()).logits)
        for model in (llama, NoKeep()):
            got = answer_logits(model, batch)
            assert got.shape == whole.shape == (2, 3, llama.vocab_size)
            assert torch.allclose(got, whole, atol=1e-5)


def test_stop_tokens_pad_and_cut(tiny):
    from rlhf.models.rollout import cut_after_stop, safe_pad_id, stop_token_ids

    _, tokenizer = tiny
    stops = stop_token_ids(tokenizer)
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    assert stops == [end]  # the demo's EOS is its end-of-turn token
    assert safe_pad_id(tokenizer, stops) == tokenizer.pad_token_id != end
    # a tokenizer padding with EOS (Llama-style) gets another pad id
    assert safe_pad_id(tokenizer, stops + [tokenizer.pad_token_id]) not in stops + [
        tokenizer.pad_token_id]
    assert cut_after_stop([4, 5, end, 6, end], stops) == ([4, 5, end], True)
    assert cut_after_stop([4, 5, 6], stops) == ([4, 5, 6], False)


def test_missing_eos_penalty():
    from rlhf.algorithms.ppo import sequence_scores

    raw = torch.tensor([0.5, 0.5, 9.0, -9.0])
    stopped = torch.tensor([1.0, 0.0, 1.0, 0.0])
    # clipped to +-5 first, then the penalty for the answers that never stopped
    assert sequence_scores(raw, stopped, 5.0, 1.5).tolist() == [0.5, -1.0, 5.0, -6.5]
    assert sequence_scores(raw, stopped, 5.0, None).tolist() == [0.5, 0.5, 5.0, -5.0]


def test_rollout_generates_answers_that_stop(tiny):
    """HFRollout: sampled answers, each cut after its first stop token, none longer than
    max_new_tokens; an answer without a stop token is one that ran out of tokens."""
    from rlhf.models.generation import prompt_token_ids
    from rlhf.models.rollout import HFRollout, plain_context, stop_token_ids

    model, tokenizer = tiny
    stops = stop_token_ids(tokenizer)
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}])
               for q in ("Price of the Orbit Fan?", "Hi, what colour is the Nimbus Camera?")]
    torch.manual_seed(0)
    answers = HFRollout(plain_context(model), tokenizer.pad_token_id, stops, 6, 1.0, 1.0,
                        batch_size=2).generate(prompts).tokens
    assert len(answers) == 2
    for answer in answers:
        assert 1 <= len(answer) <= 6
        assert all(t not in stops for t in answer[:-1])
        assert answer[-1] in stops or len(answer) == 6


def test_rollout_logprobs_match_a_full_forward_pass(tiny):
    """stage.rollout_logprobs: the log-probs taken from generation's logits (KV cache, left
    padding, temperature 0.7) are the ones a full forward pass over prompt + answer gives."""
    from rlhf.models.generation import prompt_token_ids
    from rlhf.models.rollout import (HFRollout, ResponseBatch, answer_logits, plain_context,
                                     stop_token_ids, token_logprobs)

    model, tokenizer = tiny
    stops = stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id
    prompts = [prompt_token_ids(tokenizer, [{"role": "user", "content": q}])
               for q in ("Price?", "Hi, what colour is the Nimbus Camera? Thanks.", "Ship?")]
    torch.manual_seed(0)
    got = HFRollout(plain_context(model), pad, stops, 8, 0.7, 1.0,
                    batch_size=3).generate(prompts, logprobs=True)
    assert [len(lp) for lp in got.logprobs] == [len(t) for t in got.tokens]
    batch = ResponseBatch.build(prompts, got.tokens, pad)
    with torch.no_grad():
        full = token_logprobs(answer_logits(model, batch), batch.response_ids, 0.7)
    for row, logps in enumerate(got.logprobs):
        assert torch.allclose(torch.tensor(logps), full[row, :len(logps)], atol=1e-4), row


# ---------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def synthetic_run(run_stage, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("ppo") / "synthetic"
    metrics = run_stage([*SYNTHETIC, "stage.max_steps=8"], run_dir)
    return run_dir, metrics


def test_reward_rises_on_an_easy_synthetic_reward(synthetic_run, cache_dir):
    run_dir, metrics = synthetic_run
    history = _history(run_dir)
    assert [h["train/step"] for h in history] == list(range(1, 9))
    scores = [h["ppo/score_mean"] for h in history]
    first, last = sum(scores[:2]) / 2, sum(scores[-2:]) / 2
    assert last > first + 0.04, scores
    for name in ("ppo/reward_mean", "ppo/score_mean", "ppo/kl", "ppo/kl_coef",
                 "ppo/policy_loss", "ppo/value_loss", "ppo/clipfrac", "ppo/value_clipfrac",
                 "ppo/approx_kl", "ppo/entropy", "ppo/explained_variance",
                 "ppo/response_length", "ppo/no_eos_share", "time/rollout_s", "time/score_s",
                 "time/update_s"):
        assert math.isfinite(metrics[name]), name
    assert metrics["train/steps"] == 8
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0
    # the adaptive controller moved the coefficient
    assert history[-1]["ppo/kl_coef"] != history[0]["ppo/kl_coef"]


def test_resume_continues_at_the_next_step_with_the_same_kl_coefficient(
        synthetic_run, run_stage, tmp_path):
    run_dir = tmp_path / "resumed"
    shutil.copytree(synthetic_run[0], run_dir)
    saved = json.loads((run_dir / "trainer" / "checkpoint-8" / "ppo_state.json").read_text())
    assert saved["step"] == 8
    before = _history(run_dir)
    run_stage([*SYNTHETIC, "stage.max_steps=9", "stage.resume=true"], run_dir)
    history = _history(run_dir)
    # the log goes on from the checkpoint: steps 1-8 as they were (their timings too, so
    # nothing before step 9 ran again), then step 9
    assert [h["train/step"] for h in history] == list(range(1, 10))
    assert history[:8] == before and saved["history"] == before
    history = history[8:]
    # the coefficient step 9 used is the one the controller held after step 8
    assert history[0]["ppo/kl_coef"] == pytest.approx(saved["kl_controller"]["value"])
    assert history[0]["ppo/kl_coef"] != 0.01
    assert (run_dir / "trainer" / "checkpoint-9" / "ppo_state.json").exists()
    assert not (run_dir / "trainer" / "checkpoint-8").exists()  # keep_checkpoints=1


def test_ppo_with_the_demo_reward_model(run_stage, rm_run, tmp_path):
    """The reward model of stage=rm as the reward and the critic's start; held-out
    evaluation with the reward model's score beside the oracle's, and KL to the start model."""
    run_dir = tmp_path / "run"
    metrics = run_stage([*FAST, "stage.global_batch_size=16", "stage.ppo_epochs=2",
                         f"stage.reward_model={rm_run}", "stage.max_steps=2",
                         "stage.learning_rate=1e-3", "stage.missing_eos_penalty=1.0",
                         "data.eval_prompts=${data.dir}/eval_prompts.jsonl",
                         "stage.heldout.max_prompts=8", "stage.heldout.max_new_tokens=8"],
                        run_dir)
    assert metrics["train/steps"] == 2
    # a critic from the reward model predicts something from the first step on
    assert metrics["ppo/value_mean"] != 0
    assert {"eval/reward_model_greedy", "eval/oracle_sampled", "eval/kl_to_reference"} <= \
        set(metrics)
    # answers of at most 8 tokens mostly never stop: the penalty shows in the score
    assert metrics["ppo/no_eos_share"] > 0


def test_a_negative_entropy_coefficient_sharpens_the_actor(run_stage, tmp_path):
    """stage.entropy_coef > 0 is an entropy bonus, < 0 entropy minimisation (the demo's PPO
    step): from the same start, seed and reward, the second rollout's entropy is lower with
    -1 than with +1. A dropped term or a flipped sign makes them equal or the other way."""
    entropy = {}
    for coef in (-1.0, 1.0):
        run_dir = tmp_path / f"coef{coef}"
        run_stage([*FAST, "stage.global_batch_size=16", "stage.ppo_epochs=4",
                   f"stage.reward_funcs=[{SHORT}]", "stage.max_steps=2",
                   "stage.critic_init=policy", "stage.learning_rate=1e-3",
                   f"stage.entropy_coef={coef}"], run_dir)
        entropy[coef] = _history(run_dir)[-1]["ppo/entropy"]
    assert entropy[-1.0] < entropy[1.0] - 0.01, entropy


def test_ptx_splits_a_conversation_as_a_rollout(tiny, cache_dir):
    """PPO-ptx lays an SFT conversation out as a rollout: its prompt is exactly what the
    rollout would generate from (chat template with the generation prompt), its answer the
    rest of the conversation's template (the reply and its end-of-turn token), and a cut keeps
    the answer's start and the prompt's end."""
    from rlhf.models.generation import prompt_token_ids
    from rlhf.models.ptx import split_conversation

    _, tokenizer = tiny
    messages = json.loads((cache_dir / "demo_data" / "sft_train.jsonl").open().readline())[
        "messages"]
    prompt, answer = split_conversation(tokenizer, messages, 10_000)
    assert prompt == prompt_token_ids(tokenizer, messages[:-1])
    full = tokenizer(tokenizer.apply_chat_template(messages, tokenize=False),
                     add_special_tokens=False)["input_ids"]
    assert prompt + answer == full
    assert tokenizer.decode(answer, skip_special_tokens=True).strip() == \
        messages[-1]["content"]
    short_prompt, short_answer = split_conversation(tokenizer, messages, len(answer) + 5)
    assert short_answer == answer and short_prompt == prompt[-5:]
    cut_prompt, cut_answer = split_conversation(tokenizer, messages, 4)
    assert cut_answer == answer[:3] and cut_prompt == prompt[-1:]


def test_ptx_on_rankings_takes_the_best_answer_of_each():
    """stage.ptx_data=rankings: the prompt and the answer of the best rank (lowest number);
    answers tied for it give the first of them."""
    from rlhf.data.rankings import best_answer_conversations

    prompt = [{"role": "user", "content": "q"}]
    rows = [{"prompt": prompt, "responses": ["a", "b", "c"], "ranks": [2, 1, 3]},
            {"prompt": prompt, "responses": ["d", "e", "f"], "ranks": [2, 1, 1]}]
    assert best_answer_conversations(rows) == [
        {"messages": prompt + [{"role": "assistant", "content": "b"}]},
        {"messages": prompt + [{"role": "assistant", "content": "e"}]}]


def _sft_nll(model_dir, cache_dir, rows: int = 64) -> float:
    """The mean per-token loss of a model on the answers of the first SFT conversations."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlhf.algorithms.ppo import masked_mean
    from rlhf.models.ptx import split_conversation
    from rlhf.models.rollout import ResponseBatch, answer_logits, token_logprobs

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lines = (cache_dir / "demo_data" / "sft_train.jsonl").read_text().splitlines()[:rows]
    pairs = [split_conversation(tokenizer, json.loads(x)["messages"], 512) for x in lines]
    batch = ResponseBatch.build([p for p, _ in pairs], [a for _, a in pairs],
                                tokenizer.pad_token_id, None)
    with torch.no_grad():
        logps = token_logprobs(answer_logits(model, batch), batch.response_ids, 1.0)
    return -masked_mean(logps, batch.response_mask).item()


def test_ptx_keeps_the_actor_near_the_sft_answers(run_stage, cache_dir, tmp_path):
    """stage.ptx_coef (InstructGPT's PPO-ptx) adds the SFT loss on data.sft_train to the
    actor's: from the same start, seed and a reward for short answers, the actor trained with
    it has a lower loss on SFT conversations than the one trained without, and reports the
    mixed-in loss as ppo/ptx_loss (only then)."""
    nll, last = {}, {}
    for coef in (0.0, 2.0):
        run_dir = tmp_path / f"ptx{coef}"
        run_stage([*FAST, "stage.global_batch_size=16", "stage.ppo_epochs=4",
                   f"stage.reward_funcs=[{SHORT}]", "stage.max_steps=2",
                   "stage.critic_init=policy", "stage.learning_rate=1e-3",
                   f"stage.ptx_coef={coef}", "stage.ptx_batch_size=4",
                   "stage.ptx_max_length=96"], run_dir)
        nll[coef], last[coef] = _sft_nll(run_dir / "model", cache_dir), _history(run_dir)[-1]
    assert nll[2.0] < nll[0.0] - 0.05, nll
    assert "ppo/ptx_loss" not in last[0.0]
    assert 0 < last[2.0]["ppo/ptx_loss"] < 20


@pytest.mark.parametrize("rollout_logprobs", ["true", "false"])
def test_first_update_starts_at_the_rollout_policy(run_stage, tmp_path, rollout_logprobs):
    """One epoch over one minibatch: the update's policy is the rollout's, so the ratio is 1
    (approximate KL 0, nothing clipped) whether the old log-probs come from generation
    (stage.rollout_logprobs=true) or from a full forward pass. Misaligned old log-probs (a
    shifted position, the wrong temperature, padding read as tokens) would show here. Also
    runs without gradient clipping (stage.max_grad_norm=0)."""
    metrics = run_stage([*FAST, "stage.global_batch_size=16", "stage.ppo_epochs=1",
                         f"stage.reward_funcs=[{SHORT}]", "stage.max_steps=1",
                         "stage.critic_init=policy", "stage.temperature=0.7",
                         "stage.max_grad_norm=0",
                         f"stage.rollout_logprobs={rollout_logprobs}"], tmp_path / "run")
    assert abs(metrics["ppo/approx_kl"]) < 1e-5
    assert metrics["ppo/clipfrac"] == 0


@pytest.mark.distributed
def test_zero3_two_ranks_generate_and_update(run_cli, cache_dir, tmp_path):
    run_dir = tmp_path / "zero3"
    result = run_cli(["stage=ppo", "stage.max_new_tokens=8", "debug.max_train_rows=64",
                      "data.eval_prompts=null", "stage.global_batch_size=16",
                      "stage.ppo_epochs=2", "stage.critic_init=policy",
                      f"stage.reward_funcs=[{SHORT}]", "stage.max_steps=2",
                      "stage.per_device_batch_size=4",
                      "stage.learning_rate=1e-3", "distributed=zero3",
                      # PPO-ptx: a second forward pass through the engine before each backward
                      "stage.ptx_coef=0.5", "stage.ptx_data=rankings", "stage.ptx_batch_size=2",
                      "distributed.nproc_per_node=2", f"hydra.run.dir={run_dir}"],
                     cwd=tmp_path)
    assert result.returncode == 0, result.output[-4000:]
    assert "starting 2 ranks" in result.output
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 2 and math.isfinite(metrics["ppo/value_loss"])
    assert 0 < metrics["ppo/ptx_loss"] < 20
    assert metrics["ppo/response_length"] > 0
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0
    # DeepSpeed's sharded state of both ranks, for actor and critic
    shards = sorted(p.name for p in (run_dir / "trainer" / "checkpoint-2" / "actor" / "state")
                    .glob("*optim_states.pt"))
    assert len(shards) == 2, shards
    assert (run_dir / "trainer" / "checkpoint-2" / "critic" / "state").is_dir()


def digit_share(prompts, completions, **kwargs) -> list[float]:
    """A synthetic reward for the tests: the share of an answer's characters that are digits
    (dense: every sampled token moves it; the untrained model's answers score about 0.1)."""
    from rlhf.rewards import completion_text

    texts = [completion_text(c).replace(" ", "") for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(1, len(t)) for t in texts]


# ---------------------------------------------------------------- config


def test_every_ppo_field_is_read():
    """A field nothing reads does nothing: stage=ppo must not offer it."""
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    from rlhf import config

    repo = Path(__file__).resolve().parent.parent
    sources = "".join((repo / f).read_text() for f in [
        "rlhf/stages/ppo.py", "rlhf/rewards/__init__.py", "rlhf/stages/common.py",
        "rlhf/models/trainable.py", "rlhf/distributed/deepspeed_config.py",
        "rlhf/stage_cache.py"])
    sources += inspect.getsource(config.validate_ppo) + \
        inspect.getsource(config.validate_eval_data)
    unread = [f.name for f in dataclasses.fields(config.PPOStageConfig)
              if f.name != "name" and not re.search(rf"\.{f.name}\b", sources)]
    assert not unread


@pytest.mark.parametrize("overrides,message", [
    (["stage.global_batch_size=24", "stage.num_minibatches=2", "stage.per_device_batch_size=8"],
     "must split into stage.num_minibatches=2 x 1 rank(s) x stage.per_device_batch_size=8"),
    (["stage.reward_funcs=[]", "stage.reward_model=null"], "stage=ppo needs a reward"),
    (["stage.critic_init=reward_model"], "stage.critic_init=reward_model starts the critic"),
    (["stage.kl_estimator=k2"], "stage.kl_estimator='k2'; use one of k1, k3"),
    (["stage.kl_in_reward=false"], "k1's gradient there is zero in expectation"),
    (["stage.adaptive_kl=true", "stage.kl_coef=0"], "which is 0 and would stay 0"),
    (["stage.reference=lora_base"], "set model.lora.enabled=true"),
    (["stage.critic_warmup_steps=5", "stage.max_steps=5"], "leaves no step"),
    (["stage.num_epochs=2"], "stage=ppo counts rollouts, not epochs"),
    (["model.lora.enabled=true", "distributed=zero3"], "LoRA under ZeRO-3 is not supported"),
    (["stage.top_p=0"], "must be > 0 and stage.top_p=0.0 in (0, 1]"),
    (["stage.ptx_coef=-0.1"], "stage.ptx_coef=-0.1 must be >= 0"),
    (["stage.ptx_coef=0.5", "data.sft_train=null"], "and data.sft_train is not set"),
    (["stage.ptx_coef=0.5", "stage.ptx_data=rankings", "data.rankings_train=null"],
     "(stage.ptx_data=rankings) into the actor's, and data.rankings_train is not set"),
])
def test_ppo_config_checks(run_stage, overrides, message):
    from rlhf.config import validate
    from rlhf.errors import ConfigError

    cfg = run_stage.compose(["stage=ppo", f"stage.reward_funcs=[{SHORT}]",
                             "stage.critic_init=policy", *overrides])
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(cfg)


def test_critic_from_the_reward_model_predicts_normalised_scores(rm_run):
    """The rewards are the reward model's scores normalised with reward_stats.json (and
    weighted): the critic taken from it starts on that scale."""
    from types import SimpleNamespace

    from rlhf.models.value import load_sequence_classifier, score_head
    from rlhf.rewards.reward_model import find_reward_stats
    from rlhf.stages.ppo import rescale_value_head

    stats = find_reward_stats(str(rm_run))
    assert stats["std"] != 1.0
    raw, critic = load_sequence_classifier(str(rm_run)), load_sequence_classifier(str(rm_run))
    rescale_value_head(critic, SimpleNamespace(reward_model=str(rm_run), reward_model_weight=2.0))
    assert torch.allclose(score_head(critic).weight,
                          score_head(raw).weight * 2.0 / stats["std"])
