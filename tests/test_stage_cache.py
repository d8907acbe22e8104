"""Stage caching (rlhf/stage_cache.py): a run whose config and inputs match a finished run
reuses its outputs; a pipeline rerun restarts at the step that failed; a sweep over one
step of a pipeline trains the steps before it once. The Slurm side is test_slurm.py (f)."""

from __future__ import annotations

import json
import shutil

from omegaconf import OmegaConf

from rlhf import stage_cache

REUSED_LINE = "reusing the finished run"


def test_the_key_ignores_where_a_run_is_written_and_sees_what_it_reads(run_stage, tmp_path):
    data = tmp_path / "sft_train.jsonl"
    shutil.copy(run_stage.compose([]).data.sft_train, data)
    base = ["stage=sft", "debug=tiny", f"data.sft_train={data}"]
    key = stage_cache.key(run_stage.compose(base))
    # where it is written and logged, and whether it resumes, change nothing it produces
    same = [["logger=wandb", "logger.mode=offline", "experiment_name=other"],
            ["stage.resume=true", "stage.logging_steps=1", "stage.cache=false"],
            ["+pipeline.step_overrides.dpo.stage.beta=0.3"]]
    for extra in same:
        assert stage_cache.key(run_stage.compose([*base, *extra])) == key, extra
    # the training config does, and the data by content: one line more in the file
    assert stage_cache.key(run_stage.compose([*base, "stage.learning_rate=1e-3"])) != key
    moved = tmp_path / "moved.jsonl"
    shutil.copy(data, moved)
    assert stage_cache.key(run_stage.compose([*base, f"data.sft_train={moved}"])) == key
    with open(moved, "a", encoding="utf-8") as f:
        f.write(data.read_text().splitlines()[0] + "\n")
    assert stage_cache.key(run_stage.compose([*base, f"data.sft_train={moved}"])) != key


def test_a_rerun_reuses_the_finished_run_and_says_so_in_one_line(run_cli, tmp_path):
    args = ["stage=sft", "debug=tiny"]
    first = run_cli([*args, f"hydra.run.dir={tmp_path / 'a'}"], cwd=tmp_path)
    assert first.returncode == 0, first.output[-3000:]
    assert REUSED_LINE not in first.output
    # the same work, written elsewhere and logged differently: reused
    again = run_cli([*args, "stage.logging_steps=1", f"hydra.run.dir={tmp_path / 'b'}"],
                    cwd=tmp_path)
    assert again.returncode == 0, again.output[-3000:]
    (line,) = [l for l in again.output.splitlines() if REUSED_LINE in l]
    assert str(tmp_path / "a") in line and "Writing model shards" not in again.output
    a, b = tmp_path / "a", tmp_path / "b"
    assert json.loads((b / "metrics.json").read_text()) == \
        json.loads((a / "metrics.json").read_text())
    # the weights are the finished run's file (a hard link), not a copy; its checkpoints stay
    assert (b / "model" / "model.safetensors").stat().st_ino == \
        (a / "model" / "model.safetensors").stat().st_ino
    assert (a / "trainer").is_dir() and not (b / "trainer").exists()
    assert OmegaConf.load(b / "config.yaml").stage.logging_steps == 1  # its own config
    assert json.loads((b / "cached_from.json").read_text())["run_dir"] == str(a)
    # stage.cache=false trains again
    fresh = run_cli([*args, "stage.cache=false", f"hydra.run.dir={tmp_path / 'c'}"],
                    cwd=tmp_path)
    assert fresh.returncode == 0, fresh.output[-3000:]
    assert REUSED_LINE not in fresh.output and (tmp_path / "c" / "trainer").is_dir()


def test_a_pipeline_without_the_cache_passes_it_to_every_cached_step(run_stage):
    from rlhf.stages.pipeline import own_overrides

    cfg = run_stage.compose(["experiment=demo", "stage.cache=false"])
    dirs = {s.name: f"/runs/{s.name}" for s in cfg.pipeline.steps}
    for step in cfg.pipeline.steps:
        extra = "stage.cache=false" in own_overrides(cfg, step, dirs)
        assert extra == (step.stage != "export"), step.name  # export has nothing to reuse


PIPELINE = ('pipeline.steps=[{name:sft,stage:sft},'
            '{name:dpo,stage:dpo,overrides:["model.path={sft}","debug.max_eval_rows=4"]}]')


def test_a_pipeline_rerun_restarts_at_the_step_that_failed(run_cli, tmp_path):
    """A pipeline whose DPO step failed, run again (in a new directory, with the fix): SFT is
    reused, DPO trains. (A sweep over DPO's beta reusing SFT and DPO: test_slurm.py (f).)"""
    args = ["stage=pipeline", "debug=tiny", PIPELINE]
    failed = run_cli([*args, "+pipeline.step_overrides.dpo.data.rankings_train=/no/such.jsonl",
                      f"hydra.run.dir={tmp_path / 'failed'}"], cwd=tmp_path)
    assert failed.returncode == 2 and "pipeline step 'dpo'" in failed.output, failed.output[-3000:]
    trained_sft = tmp_path / "failed" / "sft"
    assert (trained_sft / "metrics.json").exists()

    rerun = run_cli([*args, "+pipeline.step_overrides.dpo.stage.beta=0.3",
                     f"hydra.run.dir={tmp_path / 'rerun'}"], cwd=tmp_path)
    assert rerun.returncode == 0, rerun.output[-3000:]
    sft_part, dpo_part = rerun.output.split("=== pipeline step dpo")
    assert f"{REUSED_LINE} {trained_sft}" in sft_part and REUSED_LINE not in dpo_part
    job = tmp_path / "rerun"
    assert json.loads((job / "sft" / "cached_from.json").read_text())["run_dir"] == \
        str(trained_sft)
    assert OmegaConf.load(job / "dpo" / "config.yaml").stage.beta == 0.3
    assert json.loads((job / "dpo" / "metrics.json").read_text())["train/steps"] == 4


def test_step_overrides_must_name_a_step(run_cli, tmp_path):
    done = run_cli(["stage=pipeline", "debug=tiny", PIPELINE,
                    "+pipeline.step_overrides.dop.stage.beta=0.3",
                    f"hydra.run.dir={tmp_path / 'p'}"], cwd=tmp_path)
    assert done.returncode == 2
    assert "pipeline.step_overrides.dop: no step is named 'dop'; the steps are sft, dpo" \
        in done.output
