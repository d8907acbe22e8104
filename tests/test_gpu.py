"""Every training stage on a CUDA GPU under DeepSpeed in bf16, through the real CLI (torchrun,
nccl), one after the other as a user's pipeline runs them: SFT (ZeRO-2), reward model and DPO
(ZeRO-3), PPO (ZeRO-3, weights gathered once per rollout) and GRPO (ZeRO-2); then SFT with the
optimizer and weights offloaded to the CPU (zero3_offload), SFT with LoRA in one process, and
the held-out evaluation of the DPO model on the GPU.

Skipped without CUDA, so CI (CPU only) never runs them. Run on a GPU machine with
`pytest -m gpu`; docs/notes.md has what they found and the figures measured there."""

from __future__ import annotations

import json
import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

BF16 = ["debug=tiny", "distributed.precision=bf16", "stage.cache=false"]


def _weights_dtypes(model_dir) -> set[str]:
    from safetensors import safe_open

    dtypes = set()
    for path in model_dir.glob("*.safetensors"):
        with safe_open(str(path), framework="pt") as f:
            dtypes |= {str(f.get_slice(name).get_dtype()) for name in f.keys()}
    return dtypes


def _losses(run_dir, key="loss") -> list[float]:
    history = json.loads((run_dir / "log_history.json").read_text())
    return [h[key] for h in history if key in h]


@pytest.fixture(scope="module")
def runs(run_cli, tmp_path_factory):
    """The five stages, each from the one before as the demo chains them; returns their run
    directories, and fails with the stage's output when one fails."""
    cwd = tmp_path_factory.mktemp("gpu")
    jobs = {
        "sft": ["stage=sft", "distributed=zero2", "stage.max_steps=8",
                "stage.learning_rate=2e-3", "stage.logging_steps=1"],
        "rm": ["stage=rm", "distributed=zero3", "model.path={sft}", "stage.max_steps=8",
               "stage.logging_steps=1"],
        "dpo": ["stage=dpo", "distributed=zero3", "model.path={sft}", "stage.max_steps=8",
                "stage.learning_rate=1e-4", "stage.logging_steps=1"],
        "ppo": ["stage=ppo", "distributed=zero3", "model.path={sft}",
                "stage.reward_model={rm}", "stage.max_steps=3"],
        "grpo": ["stage=grpo", "distributed=zero2", "model.path={sft}",
                 "stage.reward_model={rm}", "stage.max_steps=3"],
        # DeepSpeed's CPU Adam, a C++ extension compiled on first use (ninja)
        "sft_offload": ["stage=sft", "distributed=zero3_offload", "stage.max_steps=4"],
        "sft_lora": ["stage=sft", "distributed=single", "model.lora.enabled=true",
                     "stage.max_steps=4"],
        "eval": ["stage=eval", "model.path={dpo}", "stage.reward_model={rm}"],
    }
    out = {}
    for name, args in jobs.items():
        run_dir = cwd / name
        args = [a.format(**{k: str(v) for k, v in out.items()}) for a in args]
        result = run_cli([*args, *BF16, f"hydra.run.dir={run_dir}"], cwd=cwd)
        assert result.returncode == 0, f"{name}:\n{result.output[-4000:]}"
        out[name] = run_dir
    return out


@pytest.mark.parametrize("name", ["sft", "rm", "dpo", "ppo", "grpo"])
def test_stage_ran_on_the_gpu_in_bf16(runs, name):
    env = json.loads((runs[name] / "environment.json").read_text())
    assert (env["device"], env["precision"], env["world_size"]) == ("cuda", "bf16", 1), env
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    assert metrics["memory/peak_gpu_bytes"] > 0
    # DeepSpeed's bf16 engine holds (and saves) the weights in bf16, ZeRO-3's gathered too
    assert _weights_dtypes(runs[name] / "model") == {"BF16"}


@pytest.mark.parametrize("name", ["sft_offload", "sft_lora", "eval"])
def test_offload_lora_and_evaluation_ran_on_the_gpu(runs, name):
    env = json.loads((runs[name] / "environment.json").read_text())
    assert (env["device"], env["precision"]) == ("cuda", "bf16"), env
    metrics = json.loads((runs[name] / "metrics.json").read_text())
    if name == "eval":
        assert 0.0 <= metrics["eval/oracle_greedy"] <= 1.0
    else:
        assert math.isfinite(metrics["train/loss"])


def test_sft_and_dpo_losses_fall_in_bf16(runs):
    sft = _losses(runs["sft"])
    assert all(math.isfinite(x) for x in sft) and sft[-1] < sft[0], sft
    dpo = _losses(runs["dpo"])
    # DPO starts at log 2 (policy == reference); on its own training pairs it must go below
    assert all(math.isfinite(x) for x in dpo) and min(dpo[1:]) < math.log(2), dpo


def test_reward_model_and_rl_stages_report_finite_figures(runs):
    rm = json.loads((runs["rm"] / "metrics.json").read_text())
    assert 0.0 <= rm["eval/reward_accuracy"] <= 1.0
    ppo = _losses(runs["ppo"], "ppo/kl")
    assert len(ppo) >= 1 and all(math.isfinite(x) for x in ppo)
    assert all(x > 0 for x in _losses(runs["ppo"], "ppo/response_length"))
    grpo = json.loads((runs["grpo"] / "metrics.json").read_text())
    assert math.isfinite(grpo["train/loss"])
