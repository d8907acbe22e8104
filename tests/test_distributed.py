"""Real multi-process training on CPU: 2 ranks, gloo, DeepSpeed ZeRO-2/3 (DS_ACCELERATOR=cpu).

The same seed and global batch must give the same loss curve as one process; a ZeRO-3
checkpoint must load in one process; ranks must share one run directory and one W&B run.
The tests that start ranks are marked `distributed`; the checks that stop a launch before
any rank starts, and the config/environment helpers, are not (they start no ranks)."""

from __future__ import annotations

import json
import math

import pytest

from rlhf.evaluation.wandb_runs import offline_run as run_summary

COMMON = ["stage=sft", "debug=tiny", "debug.max_steps=6", "stage.logging_steps=1",
          "stage.learning_rate=2e-3", "stage.global_batch_size=16",
          "stage.per_device_batch_size=4"]


# the runs compared below: 8 steps logged every 3 (steps 1, 2-3, 4-6), so steps 7-8 reach
# train/loss without a log of their own; that remainder was one rank's share on 2 ranks
RUNS = [*COMMON[:2], "debug.max_steps=8", "stage.logging_steps=3", *COMMON[4:]]


def _losses(run_dir):
    history = json.loads((run_dir / "log_history.json").read_text())
    return [h["loss"] for h in history if "loss" in h]


@pytest.fixture(scope="module")
def runs(run_cli, run_stage, tmp_path_factory):
    """One single-process run (in this process), 2-rank DDP, ZeRO-2 and ZeRO-3 runs and a
    one-process ZeRO-3 run (the real CLI, which starts the ranks) of the same job."""
    cwd = tmp_path_factory.mktemp("dist")
    run_stage([*RUNS, "distributed=single"], cwd / "single")
    out = {"single": (cwd / "single", None)}
    for name, extra in {"ddp": ["distributed=ddp", "distributed.nproc_per_node=2"],
                        "zero2": ["distributed=zero2", "distributed.nproc_per_node=2"],
                        "zero3": ["distributed=zero3", "distributed.nproc_per_node=2",
                                  "logger=wandb"],
                        # one process under ZeRO: a world of one (it needed mpi4py before)
                        "zero3_one": ["distributed=zero3"]}.items():
        run_dir = cwd / name
        result = run_cli([*RUNS, *extra, f"hydra.run.dir={run_dir}"], cwd=cwd,
                         env={"WANDB_API_KEY": "", "NETRC": str(cwd / "none")})
        assert result.returncode == 0, result.output[-4000:]
        out[name] = (run_dir, result.output)
    return out


@pytest.mark.distributed
@pytest.mark.parametrize("name", ["zero2", "zero3"])
def test_zero_loss_curve_matches_single_process(runs, name):
    single, sharded = _losses(runs["single"][0]), _losses(runs[name][0])
    assert len(single) == len(sharded) == 3
    assert single[-1] < single[0]  # it trained
    for a, b in zip(single, sharded):
        assert math.isclose(a, b, rel_tol=1e-3), (single, sharded)
    assert "starting 2 ranks" in runs[name][1]


# metrics.json keys that may differ between runs of one job: how long things took (and rates
# over that time), and what each rank holds in memory (one key per rank; ZeRO shards it)
DIFFERS_BY_DESIGN = ("runtime_s", "train_runtime_s", "train/samples_per_second",
                     "train/step_s", "eval/runtime", "eval/samples_per_second",
                     "eval/steps_per_second", "memory/")


def _comparable_metrics(run_dir) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(DIFFERS_BY_DESIGN)}


@pytest.mark.distributed
def test_every_metric_means_the_same_on_any_number_of_ranks(runs):
    """train/loss was rank 0's share of the batches since the last log on 2 ZeRO-3 ranks."""
    single = _comparable_metrics(runs["single"][0])
    assert {"train/loss", "eval/loss", "num_parameters", "train/steps"} <= single.keys()
    for name in ("ddp", "zero2", "zero3", "zero3_one"):
        other = _comparable_metrics(runs[name][0])
        assert other.keys() == single.keys(), name
        for key, value in single.items():
            assert math.isclose(other[key], value, rel_tol=1e-3), (name, key, other[key], value)


@pytest.mark.distributed
def test_one_process_under_zero_runs_as_a_world_of_one(runs):
    run_dir, output = runs["zero3_one"]
    assert "starting 1 rank:" in output and "mpi4py" not in output
    assert _losses(run_dir) == pytest.approx(_losses(runs["single"][0]), rel=1e-3)
    # ZeRO-3 on one rank still partitions (its memory figures come from the shard)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["memory/rank0_param_bytes"] > 0 and "memory/rank1_param_bytes" not in metrics


@pytest.mark.distributed
def test_zero3_checkpoint_reloads_single_process_and_generates(runs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run_dir = runs["zero3"][0]
    model = AutoModelForCausalLM.from_pretrained(run_dir / "model")
    single = AutoModelForCausalLM.from_pretrained(runs["single"][0] / "model")
    for (name, a), b in zip(model.state_dict().items(), single.state_dict().values()):
        assert a.shape == b.shape and a.abs().sum() > 0, name  # consolidated, not a shard
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "model")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Price of the Orbit Fan?"}],
                                        add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)
    assert model.generate(**ids, max_new_tokens=5).shape[1] > ids["input_ids"].shape[1]
    # DeepSpeed's sharded state is kept beside it, one file per rank, for exact resume
    shards = list((run_dir / "trainer").glob("checkpoint-*/global_step*/*optim_states.pt"))
    assert len(shards) == 2


@pytest.mark.distributed
def test_ranks_share_one_run_dir_one_metrics_one_wandb_run(runs):
    run_dir, output = runs["zero3"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/steps"] == 8
    wandb_files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(wandb_files) == 1
    run = run_summary(wandb_files[0])
    assert run["config"]["distributed"]["zero"]["stage"] == 3
    assert len({k for row in run["history"] for k in row if k == "train/loss"}) == 1
    assert output.count("upload it with: wandb sync") == 1  # one tracker, on rank 0
    # nothing else appeared beside the run directory
    assert sorted(p.name for p in run_dir.parent.iterdir()) == ["ddp", "single", "zero2",
                                                                  "zero3", "zero3_one"]


@pytest.mark.distributed
def test_zero3_holds_a_shard_of_the_model_state_per_rank(runs):
    single = json.loads((runs["single"][0] / "metrics.json").read_text())
    zero3 = json.loads((runs["zero3"][0] / "metrics.json").read_text())
    full = single["memory/rank0_param_bytes"] + single["memory/rank0_optimizer_bytes"]
    for r in (0, 1):
        shard = zero3[f"memory/rank{r}_param_bytes"] + zero3[f"memory/rank{r}_optimizer_bytes"]
        assert shard < 0.75 * full, (shard, full)


@pytest.mark.distributed
def test_torchrun_started_by_the_user(run_cli, tmp_path):
    """`torchrun -m rlhf.cli ...` without hydra.run.dir: the ranks still agree on one dir."""
    result = run_cli(["--nproc_per_node=2", "-m", "rlhf.cli", *COMMON, "distributed=zero2"],
                     cwd=tmp_path, module="torch.distributed.run",
                     env={"DS_ACCELERATOR": "cpu"})
    assert result.returncode == 0, result.output[-4000:]
    run_dirs = list((tmp_path / "outputs" / "default").iterdir())
    assert len(run_dirs) == 1 and (run_dirs[0] / "metrics.json").exists()


@pytest.mark.parametrize("overrides,message", [
    (["distributed=zero2", "distributed.nproc_per_node=2", "stage.global_batch_size=20",
      "stage.per_device_batch_size=4"],
     "stage.global_batch_size=20 is not divisible by stage.per_device_batch_size=4 x 2 rank(s)"),
    (["distributed=zero1", "distributed.nproc_per_node=2", "distributed.zero.offload_optimizer=true"],
     "distributed.zero.offload_optimizer=true needs ZeRO stage 2 or 3"),
    (["distributed=single", "distributed.nproc_per_node=2"],
     "distributed=single runs one process"),
    (["stage=nonsense", "distributed=zero2", "distributed.nproc_per_node=2"],
     "stage=nonsense: no such option"),
])
def test_wrong_settings_stop_before_any_rank_starts(run_cli, tmp_path, overrides, message):
    result = run_cli([*overrides, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.output, result.output[-2000:]
    assert "starting 2 ranks" not in result.output and "Traceback" not in result.output


def test_deepspeed_config_is_derived_from_the_stage():
    from omegaconf import OmegaConf

    from rlhf.config import DistributedConfig, SFTStageConfig
    from rlhf.distributed.deepspeed_config import deepspeed_config

    dist = OmegaConf.structured(DistributedConfig(name="zero3_offload", backend="deepspeed"))
    dist.zero.stage, dist.zero.offload_optimizer, dist.zero.offload_params = 3, True, True
    stage = OmegaConf.structured(SFTStageConfig(global_batch_size=64, per_device_batch_size=4,
                                                max_grad_norm=0.5))
    ds = deepspeed_config(dist, stage, world=8, on_gpu=False)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"],
            ds["gradient_accumulation_steps"]) == (64, 4, 2)
    assert ds["gradient_clipping"] == 0.5
    zero = ds["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"]["device"] == zero["offload_param"]["device"] == "cpu"
    assert ds["optimizer"]["type"] == "AdamW"  # ZeRO-Offload steps DeepSpeed's CPU Adam
    dist.backend = "ddp"
    assert deepspeed_config(dist, stage, world=8, on_gpu=False) is None


def test_slurm_environment_becomes_torch_environment():
    from rlhf.distributed import export_slurm_env

    env = {"SLURM_PROCID": "3", "SLURM_NTASKS": "4", "SLURM_LOCALID": "1",
           "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
    export_slurm_env(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "1")
    assert env["MASTER_ADDR"] == "gpu07" and env["MASTER_PORT"] == str(20000 + 1234)
    single = {"SLURM_PROCID": "0", "SLURM_NTASKS": "1"}
    export_slurm_env(single)
    assert "RANK" not in single


@pytest.mark.distributed
def test_zero2_resume_continues_from_the_sharded_checkpoint(run_cli, tmp_path):
    run_dir = tmp_path / "resume"
    base = [*COMMON, "distributed=zero2", "distributed.nproc_per_node=2",
            f"hydra.run.dir={run_dir}", "stage.lr_scheduler=constant"]
    first = run_cli([*base, "debug.max_steps=3"], cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    assert (run_dir / "trainer" / "checkpoint-3").is_dir()
    again = run_cli([*base, "debug.max_steps=6", "stage.resume=true"], cwd=tmp_path)
    assert again.returncode == 0, again.output[-3000:]
    history = json.loads((run_dir / "log_history.json").read_text())
    assert [h["step"] for h in history if "loss" in h] == [1, 2, 3, 4, 5, 6]
    # only steps 4-6 were trained again; 1-3 came back with the checkpoint's state
    assert again.output.count("{'loss'") == 3 and first.output.count("{'loss'") == 3
    assert json.loads((run_dir / "metrics.json").read_text())["train/steps"] == 6


@pytest.mark.distributed
def test_zero3_lora_saves_the_merged_model_and_the_adapter(run_cli, cache_dir, tmp_path):
    """Under ZeRO-3 every rank holds a shard of every weight; model/ held the adapter alone."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir = tmp_path / "lora"
    result = run_cli([*COMMON, "debug.max_steps=3", "distributed=zero3",
                      "distributed.nproc_per_node=2", "model.lora.enabled=true",
                      "model.lora.r=4", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.output[-4000:]
    model_dir = run_dir / "model"
    assert not (model_dir / "adapter_config.json").exists()
    assert (model_dir / "adapter" / "adapter_config.json").exists()
    assert not (model_dir / "training_args.bin").exists()
    merged = load_file(str(model_dir / "model.safetensors"))
    assert not any("lora" in name for name in merged)
    # what PEFT's own merge of base + saved adapter gives, in one process
    base = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny")
    before = {k: v.clone() for k, v in base.state_dict().items()}
    expected = PeftModel.from_pretrained(base, model_dir / "adapter").merge_and_unload()
    expected = expected.state_dict()
    assert merged.keys() <= expected.keys() and "model.embed_tokens.weight" in merged
    for name, weight in merged.items():
        torch.testing.assert_close(weight, expected[name], msg=name)
    changed = [n for n in merged if not torch.equal(merged[n], before[n])]
    assert changed and all("proj" in n for n in changed)  # LoRA's target modules moved
