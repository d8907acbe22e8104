"""Hydra multirun (two SFT runs, two directories; each sweep its own W&B group). The pipeline
behind `experiment=demo` is checked on the real demo (test_demo.py) and, with debug=tiny, by
the stage-cache tests (test_stage_cache.py)."""

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
