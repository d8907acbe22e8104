"""Hydra multirun (two SFT runs, two directories) and the pipeline behind `experiment=demo`."""

from __future__ import annotations

import json
import sys

from omegaconf import OmegaConf


def test_multirun_two_learning_rates_land_in_separate_dirs(run_cli, tmp_path):
    result = run_cli(["-m", "stage=sft", "debug=tiny", "stage.learning_rate=1e-3,2e-3",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    runs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in runs] == ["0_sft", "1_sft"]
    rates = [OmegaConf.load(p / "config.yaml").stage.learning_rate for p in runs]
    assert rates == [1e-3, 2e-3]
    for p in runs:
        assert (p / "model" / "model.safetensors").exists()
        assert json.loads((p / "metrics.json").read_text())["train/steps"] == 4


def test_demo_pipeline_runs_every_step_and_summarises(run_cli, tmp_path):
    """The demo's plumbing with debug=tiny (a few steps); the full demo is test_demo.py.
    Each step is its own `rlhf` process: most of the ~40 s is their six start-ups (imports),
    the 8 held-out prompts instead of debug=tiny's 16 save ~1.5 s."""
    run_dir = tmp_path / "demo"
    result = run_cli(["experiment=demo", "debug=tiny", "debug.max_eval_rows=8",
                      f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert list(summary) == ["base_eval", "sft", "rm", "sft_eval", "dpo", "ppo", "final_eval",
                             "export"]
    assert summary["sft"]["train/steps"] == summary["rm"]["train/steps"] == \
        summary["dpo"]["train/steps"] == summary["ppo"]["train/steps"] == 4
    # the step overrides reached the child; {sft} became the SFT run directory
    assert OmegaConf.load(run_dir / "sft" / "config.yaml").stage.learning_rate == 2e-3
    sft_eval = OmegaConf.load(run_dir / "sft_eval" / "config.yaml")
    assert sft_eval.model.path == str(run_dir / "sft")
    assert sft_eval.stage.reward_model == str(run_dir / "rm")
    assert OmegaConf.load(run_dir / "dpo" / "config.yaml").model.path == str(run_dir / "sft")
    # the pipeline's own override (debug.max_eval_rows) capped every step's held-out prompts;
    # DPO ends with the same evaluation, plus KL to SFT
    assert summary["sft_eval"]["eval/num_prompts"] == summary["dpo"]["eval/num_prompts"] == 8
    assert "eval/reward_model_greedy" in summary["sft_eval"]
    assert "eval/kl_to_reference" in summary["dpo"]
    assert "=== summary" in result.output and "oracle_greedy" in result.output
    samples = [json.loads(l) for l in open(run_dir / "sft_eval" / "samples.jsonl")]
    assert {"greedy", "sampled"} <= set(samples[0]["answers"])
    assert 0.0 <= samples[0]["scores"]["greedy"]["total"] <= 1.0
    # the models side by side end the summary; the training curves are plotted; the best of
    # SFT, DPO and PPO by the sampled oracle score is exported
    final = result.output.split("=== final_eval")[1]
    assert all(name in final for name in ("untrained", "sft", "dpo", "ppo"))
    assert {p.name for p in (run_dir / "compare").glob("*.png")} >= {"train_loss.png",
                                                                  "ppo_score_mean.png"}
    assert (run_dir / "export" / "model" / "README.md").exists()


class _FakeWandb:
    """Records what `wandb.init` is given (in sys.modules instead of wandb)."""

    def __init__(self):
        self.inits = []

    def init(self, **kwargs):
        self.inits.append(kwargs)


def _sweep_job(sweep, job: str, own: list[str], shared: list[str]):
    """A job directory of a sweep, with the files Hydra writes (multirun.yaml, overrides)."""
    sweep.mkdir(exist_ok=True)
    OmegaConf.save({"hydra": {"overrides": {"task": shared}}}, sweep / "multirun.yaml")
    (sweep / job / ".hydra").mkdir(parents=True)
    OmegaConf.save(own, sweep / job / ".hydra" / "overrides.yaml")
    return sweep / job


def test_each_sweep_is_its_own_wandb_group(run_stage, tmp_path, monkeypatch):
    """`rlhf -m` runs share no W&B group with other sweeps or with plain runs (all were
    'default'), and each is named by its swept overrides."""
    from rlhf.tracking.wandb_tracker import WandbTracker

    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    shared = ["stage=sft", "debug=tiny", "stage.learning_rate=1e-3,2e-3"]
    job = _sweep_job(tmp_path / "2025-01-02_03-04-05", "1_sft",
                     ["stage=sft", "debug=tiny", "stage.learning_rate=2e-3"], shared)
    for out, extra in [(job, []), (job, ["logger.group=mine"]), (job / "sft", []),
                       (tmp_path / "plain", [])]:
        out.mkdir(exist_ok=True)
        WandbTracker(run_stage.compose(["logger=wandb", "logger.mode=offline", *extra]), out)
    sweep_run, named_group, pipeline_step, plain = fake.inits
    assert sweep_run["group"] == "2025-01-02_03-04-05"
    assert sweep_run["name"] == "1_sft stage.learning_rate=2e-3"
    assert named_group["group"] == "mine"
    # a pipeline's step (or a rank) below a sweep's job belongs to the sweep too
    assert pipeline_step["group"] == "2025-01-02_03-04-05"
    assert pipeline_step["name"] == "1_sft/sft stage.learning_rate=2e-3"
    assert plain["group"] == "default" and plain["name"] == "default-sft-plain"
