"""Config composition: every YAML under conf/ composes against its typed schema; typos and
bad cross-field settings fail at once with a message naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from rlhf.cli import CONFIG_DIR
from rlhf.config import validate
from rlhf.errors import ConfigError

CONF = Path(CONFIG_DIR)
GROUPS = ["stage", "model", "data", "distributed", "logger", "debug", "experiment"]


def all_options() -> list[tuple[str, str]]:
    """(group, option) for every YAML below conf/, recursively (hydra/ is Hydra's own)."""
    options = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if rel.parts[0] in ("hydra",) or len(rel.parts) == 1:
            continue
        options.append(("/".join(rel.parts[:-1]), rel.stem))
    return options


def test_every_group_has_options():
    groups = {g for g, _ in all_options()}
    assert set(GROUPS) <= groups


@pytest.mark.parametrize("group,option", all_options())
def test_every_yaml_composes(group, option):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"{group}={option}"])
    OmegaConf.resolve(cfg)  # every interpolation resolves
    assert OmegaConf.missing_keys(cfg) == set()
    if group == "stage":
        assert cfg.stage.name == option
    if group == "stage" and option in ("grpo", "rloo"):  # a reward must be named
        with pytest.raises(ConfigError, match="needs a reward: set stage.reward_model"):
            validate(cfg)
    elif not (group == "stage" and option == "pipeline"):  # a bare pipeline has no steps
        validate(cfg)


def test_experiment_demo_is_a_pipeline_of_existing_stages():
    from rlhf.cli import STAGES
    from rlhf.stages.pipeline import substitute_dirs
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["experiment=demo"])
        steps = cfg.pipeline.steps
        assert cfg.stage.name == "pipeline" and len(steps) >= 3
        for step in steps:
            assert step.stage in STAGES
            # each step's overrides compose too
            child = compose(config_name="config", overrides=[
                "experiment=demo", f"stage={step.stage}",
                *[substitute_dirs(o, {"sft": "/tmp/sft", "rm": "/tmp/rm"})
                  for o in step.overrides]])
            assert child.stage.name == step.stage
            validate(child)


def test_typed_schema_rejects_wrong_type():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        with pytest.raises(Exception, match="learning_rate"):
            compose(config_name="config", overrides=["stage.learning_rate=fast"])
        with pytest.raises(Exception, match="precision"):
            compose(config_name="config", overrides=["distributed.precision=fp8"])


def test_batch_not_divisible_is_a_clear_config_error():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=[
            "stage.global_batch_size=30", "stage.per_device_batch_size=8"])
    with pytest.raises(ConfigError, match="stage.global_batch_size=30 .* multiple of 8"):
        validate(cfg)


def test_typo_fails_before_any_model_is_loaded(run_cli, tmp_path):
    result = run_cli(["stage=sft", "stage.learnig_rate=1e-4"], cwd=tmp_path)
    assert result.returncode != 0
    assert "Key 'learnig_rate' not in 'SFTStageConfig'" in result.output
    assert "Loading weights" not in result.output and "Traceback" not in result.output
    assert not (tmp_path / "outputs").exists()  # nothing ran


def test_help_and_cfg_job(run_cli, tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path).output
    assert "rlhf experiment=demo" in help_text and "stage: " in help_text
    result = run_cli(["stage=sft", "stage.learning_rate=1e-4", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0
    cfg = OmegaConf.create(result.output[result.output.index("stage:"):])
    assert cfg.stage.learning_rate == 1e-4 and cfg.model.name == "demo_tiny"
