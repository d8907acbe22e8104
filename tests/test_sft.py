"""SFT end to end on the tiny model (the stage's run(cfg) in this process, on a composed
config), with W&B offline tracking."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from omegaconf import OmegaConf

from rlhf.evaluation.wandb_runs import offline_run as run_summary

SECRET_TAG = "hf_abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture(scope="module")
def sft_run(run_stage, tmp_path_factory):
    """20 steps (the loss falls from 6.9 to 4.6) with W&B in offline mode (no key:
    WANDB_API_KEY unset, no netrc); returns the run directory and what the stage printed."""
    cwd = tmp_path_factory.mktemp("sft")
    run_dir = cwd / "run"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        run_stage(["stage=sft", "logger=wandb",
                   "stage.learning_rate=2e-3", "stage.max_steps=20",
                   "stage.global_batch_size=16", "stage.per_device_batch_size=8",
                   "stage.logging_steps=4", "stage.max_length=128",
                   "experiment_name=sft_test", f"logger.tags=[ci,{SECRET_TAG}]"], run_dir,
                  env={"WANDB_API_KEY": "", "WANDB_MODE": "", "NETRC": str(cwd / "no_netrc")})
    return run_dir, printed.getvalue()


def test_loss_finite_and_decreasing(sft_run):
    run_dir, _ = sft_run
    history = json.loads((run_dir / "log_history.json").read_text())
    losses = [h["loss"] for h in history if "loss" in h]
    assert len(losses) >= 5 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.75 * losses[0] and losses[-1] < min(losses[:2])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert math.isfinite(metrics["eval/loss"])
    assert metrics["eval/perplexity"] == pytest.approx(math.exp(metrics["eval/loss"]))
    assert metrics["train/steps"] == 20


def test_parameters_changed_and_checkpoint_reloads_and_generates(sft_run, cache_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir, _ = sft_run
    base = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny")
    tuned = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert (run_dir / "model" / "model.safetensors").exists()
    changed = [not torch.equal(a, b) for a, b in
               zip(base.state_dict().values(), tuned.state_dict().values())]
    assert all(changed)
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    assert "{% generation %}" in tokenizer.chat_template
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "How much is the Orbit Fan?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = tuned.generate(**prompt, max_new_tokens=12, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_run_dir_records_where_it_ran(sft_run):
    run_dir, _ = sft_run
    env = json.loads((run_dir / "environment.json").read_text())
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert (env["device"], env["world_size"], env["precision"]) == (expected, 1, "fp32")
    assert env["versions"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert env["versions"]["trl"] and env["versions"]["transformers"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert ("memory/peak_gpu_bytes" in metrics) == torch.cuda.is_available()


def test_steady_step_time_leaves_out_the_first_step(sft_run):
    run_dir, _ = sft_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    # (comparing it with the mean step time raced on a busy machine: 0.149 s against 0.149 s;
    # what it leaves out is checked on fixed step times below)
    assert 0 < metrics["train/step_s"] < metrics["train_runtime_s"]
    run = run_summary(next(run_dir.glob("wandb/offline-run-*/run-*.wandb")))
    logged = [row["time/step_s"] for row in run["history"] if "time/step_s" in row]
    assert len(logged) == 6 and all(t > 0 for t in logged)  # step 1, then every 4th of 20


def test_the_steady_step_time_is_the_median_without_the_first_step():
    from rlhf.tracking.callback import TrackerCallback

    timer = TrackerCallback(tracker=None)
    assert timer.steady_step_seconds() is None
    timer.step_seconds = [9.7, 0.1, 0.3, 0.2]  # a GPU's first step carries its warm-up
    assert timer.steady_step_seconds() == 0.2
    timer.step_seconds = [9.7]
    assert timer.steady_step_seconds() is None


def test_run_dir_has_resolved_config(sft_run):
    run_dir, _ = sft_run
    cfg = OmegaConf.load(run_dir / "config.yaml")
    assert cfg.stage.learning_rate == 2e-3 and "${" not in (run_dir / "config.yaml").read_text()


def test_model_dir_holds_what_users_share_with_the_users_file_modes(sft_run):
    """model/ held the trainer's pickled arguments; config.yaml, metrics.json and the
    safetensors files were written 0600 (mkstemp, safetensors) whatever the umask."""
    import os

    run_dir, _ = sft_run
    assert not (run_dir / "model" / "training_args.bin").exists()
    assert (run_dir / "trainer" / "training_args.bin").exists()  # kept with the trainer state
    umask = os.umask(0)
    os.umask(umask)
    written = [run_dir / "config.yaml", run_dir / "metrics.json", run_dir / "log_history.json",
               *(run_dir / "model").rglob("*"), *(run_dir / "trainer").rglob("*")]
    assert run_dir / "model" / "model.safetensors" in written
    modes = {str(p.relative_to(run_dir)): oct(p.stat().st_mode & 0o777)
             for p in written if p.is_file()}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_wandb_offline_run_has_metrics_and_config_without_secrets(sft_run):
    run_dir, output = sft_run
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, "one W&B run per stage"
    assert "wandb sync" in output  # offline: the user is told how to upload
    run = run_summary(files[0])
    assert run["run"]["project"] == "rlhf" and run["run"]["group"] == "sft_test"
    assert run["run"]["job_type"] == "sft"
    assert run["config"]["stage"]["learning_rate"] == 2e-3
    assert run["config"]["model"]["name"] == "demo_tiny"
    assert run["config"]["environment"] == json.loads((run_dir / "environment.json").read_text())
    logged = {k for row in run["history"] for k in row}
    assert {"train/loss", "train/lr", "train/grad_norm", "eval/loss"} <= logged
    assert run["summary"]["eval/perplexity"] > 1
    text = files[0].read_bytes()
    assert SECRET_TAG.encode() not in text and b"ci" in text


def test_redaction_of_configs_and_command_lines():
    from rlhf.tracking.secrets import redact, redact_arg

    cfg = {"hf_token": "abc", "wandb_api_key": "xyz", "max_new_tokens": 64,
           "tokenizer_path": "/m", "nested": [{"password": "p", "note": SECRET_TAG}]}
    assert redact(cfg) == {"hf_token": "***", "wandb_api_key": "***", "max_new_tokens": 64,
                           "tokenizer_path": "/m", "nested": [{"password": "***", "note": "***"}]}
    assert redact_arg("+model.hf_token=abc") == "+model.hf_token=***"
    assert redact_arg(f"logger.tags=[ci,{SECRET_TAG}]") == "logger.tags=[ci,***]"
    assert redact_arg("stage.max_new_tokens=64") == "stage.max_new_tokens=64"


def test_lora_sft_saves_merged_model_and_adapter(run_stage, tmp_path):
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    run_stage(["stage=sft", "debug=tiny", "model.lora.enabled=true", "model.lora.r=4",
               "stage.learning_rate=1e-2"], run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0 < metrics["num_trainable_parameters"] < 0.2 * metrics["num_parameters"]
    assert (run_dir / "model" / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    assert not any("lora" in name for name in merged.state_dict())


def test_the_lm_head_scores_only_labelled_tokens_with_the_same_loss(sft_run, cache_dir,
                                                                     monkeypatch):
    """TRL's fused LM head on CPU scores every position unless rlhf.compat tells it to score
    only the labelled ones (a quarter of an SFT step on the demo): the stage turns that on,
    and the loss, log-probs and gradients stay those of scoring every position."""
    import trl.trainer.utils as trl_utils
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from rlhf.compat import score_only_labelled_tokens_on_cpu

    # the in-process SFT run above went through rlhf.stages.common.train
    assert getattr(trl_utils._use_triton, "rlhf_compact_on_cpu", False)

    scored_rows = []

    class RowCounter(trl_utils._ChunkedLogProbFunction):
        @classmethod
        def apply(cls, hidden, *args):
            scored_rows.append(hidden.shape[0])
            return super().apply(hidden, *args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", RowCounter)
    model = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny")
    add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))
    torch.manual_seed(0)
    input_ids = torch.randint(5, 200, (3, 12))
    attention_mask = torch.ones_like(input_ids)
    attention_mask[0, 9:] = 0
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, :6] = -100  # the prompt
    labelled = int((labels[:, 1:] != -100).sum())

    def loss_and_grads():
        model.zero_grad()
        out = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels,
                    fused_lm_head=True)
        out.loss.backward()
        return out, [p.grad.clone() for p in model.parameters()]

    monkeypatch.setattr(trl_utils, "_use_triton", lambda device: False)  # TRL's CPU way
    every, every_grads = loss_and_grads()
    score_only_labelled_tokens_on_cpu()
    only, only_grads = loss_and_grads()
    assert scored_rows == [3 * 11, labelled] and labelled < 3 * 11
    torch.testing.assert_close(only.loss, every.loss)
    for field in ("log_probs", "entropy", "is_top1"):
        torch.testing.assert_close(getattr(only, field), getattr(every, field))
    for a, b in zip(only_grads, every_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_batch_rebalance_sorts_each_steps_rows_into_micro_batches(run_stage, tmp_path,
                                                                  monkeypatch):
    """stage.train_sampling=batch_rebalance (transformers' BatchRebalanceSampler): each
    optimizer step still takes global_batch_size rows, and its micro-batches are contiguous
    slices of those rows sorted by length (no two overlap in length), so each carries little
    padding. Random micro-batches of varied conversations overlap almost surely."""
    from transformers import Trainer

    seen = []  # (step, rows, shortest, longest) of every micro-batch the trainer computed
    original = Trainer.training_step

    def recording(self, model, inputs, *args, **kwargs):
        lengths = inputs["attention_mask"].sum(-1).tolist()
        seen.append((self.state.global_step, len(lengths), min(lengths), max(lengths)))
        return original(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(Trainer, "training_step", recording)
    run_stage(["stage=sft", "stage.train_sampling=batch_rebalance", "stage.max_steps=3",
               "stage.global_batch_size=16", "stage.per_device_batch_size=4",
               "stage.max_length=128", "stage.logging_steps=1"], tmp_path / "run")
    steps = sorted({s for s, *_ in seen})
    assert len(steps) == 3
    for step in steps:
        micro = [m for m in seen if m[0] == step]
        assert sum(rows for _, rows, _, _ in micro) == 16 and len(micro) == 4
        for _, _, low_a, high_a in micro:
            for _, _, low_b, high_b in micro:
                assert high_a <= low_b or high_b <= low_a or (low_a, high_a) == (low_b, high_b)


def test_padding_free_note_names_the_slow_attention():
    from types import SimpleNamespace

    from rlhf.stages.sft import padding_free_note

    stage = SimpleNamespace(packing=True, padding_free=False, per_device_batch_size=8)
    assert "model.attn_implementation=sdpa" in padding_free_note(stage, "sdpa")
    assert padding_free_note(stage, "flash_attention_2") is None
    assert padding_free_note(SimpleNamespace(packing=False, padding_free=False), "sdpa") is None


def test_flattened_rows_stay_apart_only_without_the_kv_cache(cache_dir):
    """The transformers 5.23 fact that padding-free SFT relies on (docs/notes.md, "On a GPU"):
    a row flattened from several examples, position ids restarting at each, gives each
    example's own logits under sdpa only when the forward pass builds no cache (TRL's SFT
    loss passes use_cache=False); with the cache the examples attend to each other."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny").eval()
    rows = torch.randint(5, 700, (3, 12), generator=torch.Generator().manual_seed(0))
    flat, positions = rows.reshape(1, -1), torch.arange(12).repeat(3).unsqueeze(0)
    with torch.no_grad():
        apart = model(input_ids=rows, use_cache=False).logits.reshape(1, 36, -1)
        no_cache = model(input_ids=flat, position_ids=positions, use_cache=False).logits
        cached = model(input_ids=flat, position_ids=positions, use_cache=True).logits
    assert torch.allclose(apart, no_cache, atol=1e-5)
    assert not torch.allclose(apart[:, 12:], cached[:, 12:], atol=1e-3)
