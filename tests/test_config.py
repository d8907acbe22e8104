"""Config composition: every YAML under conf/ composes against its typed schema; typos and
bad cross-field settings fail at once with a message naming the key."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from rlhf.cli import CONFIG_DIR
from rlhf.config import (DPO_LOSSES, REFERENCE_FREE_LOSSES, DPOStageConfig, EvalStageConfig,
                         ModelConfig, OnlineRLStageConfig, RMStageConfig, SFTStageConfig,
                         check_declared, validate)
from rlhf.errors import ConfigError

CONF = Path(CONFIG_DIR)
REPO = Path(__file__).resolve().parent.parent
GROUPS = ["stage", "model", "data", "distributed", "logger", "debug", "experiment"]
REWARD = "stage.reward_funcs=[{_target_: rlhf.rewards.length.LengthPenalty}]"


def composed(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


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
    if group == "stage" and option in ("grpo", "rloo", "ppo"):  # a reward must be named
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
        earlier = {}
        for step in steps:
            assert step.stage in STAGES
            # each step's overrides compose too, with the earlier steps' run directories
            child = compose(config_name="config", overrides=[
                "experiment=demo", f"stage={step.stage}",
                *[substitute_dirs(o, earlier) for o in step.overrides]])
            earlier[step.name] = f"/tmp/{step.name}"
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


# ---------------------------------------------------------------- keys no schema declares
@pytest.mark.parametrize("override,message", [
    # Hydra's own hint for a typo ("To append to your config use +...") ran at the default
    ("+stage.learnig_rate=1e-4", "stage.learnig_rate is not a setting; did you mean "
                                 "stage.learning_rate?"),
    ("+stage.dtype=bfloat16", "stage.dtype is not a setting; did you mean model.dtype?"),
    ("+stage.heldout.max_prompts=5", "stage.heldout is not a setting; stage has name, seed, "),
    ("+logger.api_key=abc123", "logger.api_key is not a setting: secrets are read from the "
                               "environment"),
    ("+learnig=3", "learnig is not a setting; the top level has stage, model, "),
    ("++model.lora.rank=8", "model.lora.rank is not a setting; did you mean model.lora.r?"),
])
def test_undeclared_key_is_rejected_naming_the_nearest(override, message):
    cfg = composed(["stage=sft", override])
    with pytest.raises(ConfigError) as err:
        validate(cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert "abc123" not in str(err.value)  # the value is never echoed


def test_free_form_keys_are_the_users_own():
    """reward_funcs' kwargs and summary_columns are not schema fields: any key passes."""
    cfg = composed(["stage=grpo", "stage.reward_funcs=[{_target_: a.b, any_kwarg: 1}]",
                    "+pipeline.summary_columns.loss=eval/loss"])
    check_declared(cfg)  # raises ConfigError if it took them for misspelled settings
    validate(cfg)
    assert cfg.stage.reward_funcs[0].any_kwarg == 1
    assert cfg.pipeline.summary_columns.loss == "eval/loss"


def _error_line(result) -> str:
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert len(lines) == 1, result.output
    assert result.returncode == 2 and lines[0].startswith("rlhf: error: "), result.output
    return lines[0][len("rlhf: error: "):]


@pytest.mark.parametrize("args,expected", [
    # with and without +: the same one line naming the nearest declared key
    (["stage.learnig_rate=1e-4"], "stage.learnig_rate is not a setting; did you mean "
                                  "stage.learning_rate?"),
    (["+stage.learnig_rate=1e-4"], "stage.learnig_rate is not a setting; did you mean "
                                   "stage.learning_rate?"),
    (["+logger.api_key=abc123"], "logger.api_key is not a setting: secrets are read from the "
                                 "environment"),
    # only real options, never the *_schema entries behind them
    (["stage=fooo"], "stage=fooo: no such option; choose one of "
                     + ", ".join(sorted(p.stem for p in (CONF / "stage").glob("*.yaml")))),
    (["model=qwen"], "model=qwen: no such option; choose one of demo_tiny, qwen2_5_0_5b"),
    (["stage.learning_rate=fast"], "stage.learning_rate=fast: Value 'fast' of type 'str' could "
                                   "not be converted to Float; e.g. stage.learning_rate=2e-05"),
    (["distributed.precision=fp8"], "distributed.precision=fp8: Invalid value 'fp8', expected "
                                    "one of [fp32, bf16, fp16]"),
    (["stage.learning_rate=1e-4,3e-4"], "Ambiguous value for argument "),
    # a sweep checks every value of every swept key, before its first run
    (["-m", "stage.learning_rate=1e-4,fast", "stage.seed=1,2"],
     "stage.learning_rate=fast: Value 'fast'"),
    (["-m", "stage=sft,fooo"], "stage=fooo: no such option"),
    (["stage=sft", "+stage.learnig_rate=1e-4", "--cfg", "job"], "stage.learnig_rate is not"),
    # checked before Hydra makes the run directory (and builds no demo model there)
    (["model.path=/nonexistent/typo", "debug=tiny"], "model.path=/nonexistent/typo: no such "
                                                     "directory"),
])
def test_config_error_is_one_line(run_cli, tmp_path, args, expected):
    """The real `rlhf`: one line naming the key and the fix, exit code 2, nothing written."""
    line = _error_line(run_cli(args, cwd=tmp_path))
    assert line.startswith(expected), line
    assert "_schema" not in line and "abc123" not in line
    assert list(tmp_path.iterdir()) == []  # no outputs/ or multirun/: nothing ran


def test_full_hydra_error_on_request(run_cli, tmp_path):
    result = run_cli(["stage=fooo"], cwd=tmp_path, env={"HYDRA_FULL_ERROR": "1"})
    assert result.returncode != 0 and "Traceback" in result.output
    assert "Could not find 'stage/fooo'" in result.output


def test_help_and_cfg_job(run_cli, tmp_path):
    help_text = run_cli(["--help"], cwd=tmp_path).output
    assert "rlhf experiment=demo" in help_text and "stage: " in help_text
    result = run_cli(["stage=sft", "stage.learning_rate=1e-4", "--cfg", "job"], cwd=tmp_path)
    assert result.returncode == 0
    cfg = OmegaConf.create(result.output[result.output.index("stage:"):])
    assert cfg.stage.learning_rate == 1e-4 and cfg.model.name == "demo_tiny"


# ---------------------------------------------------------------- options as deltas
def _body(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _base(group: str, path: Path) -> DictConfig:
    """What a YAML file is written on top of: its schema, or the option it extends (the
    string entries of its defaults list before _self_)."""
    base = None  # the first node keeps its schema's types (e.g. Optional dataclasses)
    for entry in _body(path).get("defaults", []):
        if entry == "_self_":
            break
        if not isinstance(entry, str):
            continue
        option = CONF / group / f"{entry}.yaml"
        if option.exists():  # another option of the same group, e.g. rloo -> grpo
            parent = {k: v for k, v in _body(option).items() if k != "defaults"}
            node = OmegaConf.merge(_base(group, option), parent)
        else:
            node = ConfigStore.instance().load(f"{group}/{entry}.yaml".lstrip("/")).node
        base = node if base is None else OmegaConf.merge(base, node)
    return OmegaConf.create() if base is None else base


def _repeats(body: dict, base: DictConfig, prefix: str = "") -> list[str]:
    """Keys of `body` whose value equals the one in `base` (recursing into mappings; an
    Optional dataclass left at None counts with its own defaults)."""
    plain = OmegaConf.to_container(base, resolve=False, enum_to_str=True)
    found = []
    for key, value in body.items():
        if key not in plain:  # defaults, hydra, ...
            continue
        if isinstance(value, dict):
            child = base[key] if plain[key] is not None else OmegaConf.merge(base, {key: {}})[key]
            found += _repeats(value, child, f"{prefix}{key}.")
        elif plain[key] == value:
            found.append(f"{prefix}{key}: {value}")
    return found


def yaml_files() -> list:
    """Every YAML under conf/ but Hydra's own and the experiments (global deltas)."""
    params = []
    for path in sorted(CONF.rglob("*.yaml")):
        rel = path.relative_to(CONF)
        if rel.parts[0] in ("hydra", "experiment"):
            continue
        params.append(pytest.param(path, id=str(rel)))
    return params


@pytest.mark.parametrize("path", yaml_files())
def test_no_yaml_line_repeats_a_default(path):
    group = "/".join(path.relative_to(CONF).parts[:-1])
    repeated = _repeats({k: v for k, v in _body(path).items() if k != "defaults"},
                        _base(group, path))
    assert not repeated, f"{path.relative_to(CONF)} restates defaults: {repeated}"


def test_the_repeat_finder_finds_repeats():
    base = OmegaConf.structured(SFTStageConfig)
    assert _repeats({"learning_rate": 2e-5, "warmup_ratio": 0.5, "packing": False},
                    base) == ["learning_rate: 2e-05", "packing: False"]
    # a dataclass field that defaults to None compares with the dataclass's own defaults
    model = OmegaConf.structured(ModelConfig)
    assert _repeats({"dtype": "float32", "demo": {"seed": 0, "hidden_size": 7}}, model) == \
        ["dtype: float32", "demo.seed: 0"]
    assert _repeats({"name": "grpo"}, _base("stage", CONF / "stage" / "rloo.yaml")) == \
        ["name: grpo"]


def test_zero3_offload_is_zero3_plus_the_offload_flags():
    zero3 = OmegaConf.to_container(composed(["distributed=zero3"]).distributed)
    offload = OmegaConf.to_container(composed(["distributed=zero3_offload"]).distributed)
    changed = {k for k in zero3["zero"] if zero3["zero"][k] != offload["zero"][k]}
    assert changed == {"offload_optimizer", "offload_params"}
    assert offload["zero"]["offload_optimizer"] and offload["zero"]["offload_params"]
    assert {k for k in zero3 if zero3[k] != offload[k]} == {"name", "zero"}


def test_rloo_is_grpo_under_another_name():
    grpo = OmegaConf.to_container(composed(["stage=grpo"]).stage)
    rloo = OmegaConf.to_container(composed(["stage=rloo"]).stage)
    assert (grpo.pop("name"), rloo.pop("name")) == ("grpo", "rloo")
    assert grpo == rloo


# ---------------------------------------------------------------- fields a stage uses
def test_online_rl_offers_no_max_length():
    """grpo/rloo sample their answers (stage.max_new_tokens) and TRL's GRPO/RLOO do not
    truncate prompts: a max_length would do nothing, so the schema has none."""
    with pytest.raises(Exception, match="max_length"):
        composed(["stage=grpo", "stage.max_length=128"])
    assert "max_length" in composed(["stage=dpo"]).stage


STAGE_SOURCES = {  # where each stage reads its config (plus rlhf/stages/common.py)
    SFTStageConfig: ["rlhf/stages/sft.py"],
    RMStageConfig: ["rlhf/stages/rm.py"],
    DPOStageConfig: ["rlhf/stages/dpo.py"],
    OnlineRLStageConfig: ["rlhf/stages/online_rl.py", "rlhf/rewards/__init__.py"],
    EvalStageConfig: ["rlhf/stages/eval.py", "rlhf/evaluation/compare_models.py"],
}


def _unread_fields(schema) -> list[str]:
    sources = "".join((REPO / f).read_text() for f in [
        *STAGE_SOURCES[schema], "rlhf/stages/common.py", "rlhf/distributed/deepspeed_config.py",
        "rlhf/stage_cache.py"])
    return [f.name for f in dataclasses.fields(schema)
            if f.name != "name" and not re.search(rf"\.{f.name}\b", sources)]


@pytest.mark.parametrize("schema", list(STAGE_SOURCES), ids=lambda s: s.__name__)
def test_every_stage_field_is_read_by_the_stage(schema):
    """A field that no code of the stage reads does nothing: it should not be offered.
    (`stage.heldout` is a HeldOutEvalConfig, read as stage=eval reads its own fields.)"""
    unread = _unread_fields(schema)
    assert not unread, f"{schema.__name__} offers fields its stage never reads: {unread}"


# ---------------------------------------------------------------- cross-field checks
@pytest.mark.parametrize("overrides,message", [
    # eval_steps > 0 without held-out data: transformers' Trainer would stop once loaded
    (["stage=sft", "stage.eval_steps=10", "data.sft_eval=null"],
     "stage.eval_steps=10 evaluates on data.sft_eval, which is not set"),
    (["stage=rm", "stage.eval_steps=10", "data.rankings_eval=null"],
     "evaluates on data.rankings_eval, which is not set"),
    (["stage=dpo", "stage.data_format=pairs", "data.pairs_train=p.jsonl", "stage.eval_steps=5"],
     "evaluates on data.pairs_eval, which is not set"),
    (["stage=grpo", REWARD, "stage.eval_steps=5"],
     "stage=grpo has no held-out split to evaluate during training"),
    # reference settings that do nothing
    (["stage=dpo", "stage.loss_type=simpo", "stage.reference=precomputed"],
     "loss_type=simpo is reference-free, so stage.reference=precomputed would do nothing"),
    (["stage=dpo", "stage.loss_type=orpo", "stage.reference_path=/models/sft"],
     "loss_type=orpo is reference-free, so stage.reference_path would do nothing"),
    (["stage=dpo", "stage.reference=lora_base"],
     "stage.reference=lora_base uses the policy with its adapters disabled"),
    (["stage=dpo", "model.lora.enabled=true", "stage.reference=lora_base",
      "stage.reference_path=/models/sft"], "stage.reference_path is unused"),
    # DPO losses and their parameters
    (["stage=dpo", "stage.loss_type=dpo"], "stage.loss_type='dpo' is not a known loss"),
    (["stage=dpo", "stage.beta=0"], "stage.beta=0.0 must be positive"),
    (["stage=dpo", "stage.label_smoothing=0.1"],
     "stage.label_smoothing=0.1 is ignored by loss_type=sigmoid"),
    (["stage=dpo", "stage.loss_type=robust", "stage.label_smoothing=0.5"],
     "robust DPO reads it as the chance a label is flipped"),
    (["stage=dpo", "stage.loss_type=exo_pair"], "exo_pair takes log\\(label_smoothing\\)"),
    (["stage=dpo", "stage.loss_type=simpo", "stage.sft_weight=1"],
     "stage.sft_weight=1.0 adds an NLL term to a preference loss; loss_type=simpo"),
    (["stage=dpo", "stage.loss_type=sft", "stage.sft_weight=1"], "loss_type=sft has none"),
    (["stage=dpo", "stage.data_format=pairs", "stage.pairs=best"],
     "stage.pairs=best chooses among a ranking's pairs"),
    (["stage=sft", "stage.train_sampling=batch_rebalance", "stage.packing=true"],
     "stage.packing=true makes every row stage.max_length long"),
    (["stage=sft", "stage.train_sampling=batch_rebalance", "stage.global_batch_size=8",
      "stage.per_device_batch_size=8"], "takes them all at once; lower"),
    (["stage=dpo", "stage.ld_alpha=1.5"], "stage.ld_alpha=1.5 weighs the tokens"),
    (["stage=dpo", "stage.loss_type=simpo", "stage.ld_alpha=0.5"],
     "stage.ld_alpha is read by TRL's DPOTrainer only; loss_type=simpo"),
    # online RL
    (["stage=grpo", REWARD, "stage.num_generations=1"], "sample at least 2 per prompt"),
    (["stage=rloo", REWARD, "stage.num_generations=6"],
     "stage.global_batch_size=32 counts completions and must be a multiple of "
     "stage.num_generations=6"),
    (["stage=grpo", REWARD, "stage.temperature=0"], "stage.temperature=0.0: .* positive"),
    (["stage=grpo", REWARD, "stage.beta=-0.1"], "stage.beta=-0.1 must be >= 0"),
    # held-out evaluation
    (["stage=eval", "stage.greedy=false", "stage.sample_temperature=0"], "answer nothing"),
    (["stage=eval", "stage.reference_path=/models/sft", "stage.sample_temperature=0"],
     "stage.reference_path is set, but the KL to it is estimated on sampled answers"),
    (["stage=dpo", "stage.heldout.reference_path=/models/sft",
      "stage.heldout.sample_temperature=0"], "stage.heldout.reference_path is set"),
    (["stage=dpo", "stage.heldout.samples_per_prompt=0"],
     "stage.heldout.samples_per_prompt=0: sample at least 1"),
    (["stage=eval", "stage.models={a: x, b: y}", "stage.baseline=a",
      "stage.samples_per_prompt=4"], "stage.samples_per_prompt=4 is for one model"),
    (["stage=rm", "stage.reward_stats_rows=0"], "stage.reward_stats_rows=0"),
])
def test_cross_field_error_is_one_line_naming_the_field(overrides, message):
    cfg = composed(overrides)
    with pytest.raises(ConfigError, match=message) as err:
        validate(cfg)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides", [
    ["stage=sft", "stage.eval_steps=10"],  # the demo has data.sft_eval
    ["stage=rm", "stage.eval_steps=10"],
    ["stage=dpo", "stage.loss_type=robust", "stage.label_smoothing=0.1"],
    ["stage=dpo", "stage.loss_type=exo_pair", "stage.label_smoothing=1e-3"],
    ["stage=dpo", "stage.loss_type=simpo", "stage.label_smoothing=0.1"],
    ["stage=dpo", "stage.loss_type=simpo", "stage.heldout.reference_path=/models/sft"],
    ["stage=dpo", "stage.reference=precomputed", "stage.reference_path=/models/sft"],
    ["stage=dpo", "model.lora.enabled=true", "stage.reference=lora_base"],
    ["stage=dpo", "stage.sft_weight=1.0"],  # RPO: sigmoid + the chosen answer's NLL
    ["stage=sft", "stage.train_sampling=batch_rebalance"],  # 32 rows, micro-batches of 8
    ["stage=dpo", "stage.ld_alpha=0.0"],  # LD-DPO, length tails not counted
    ["stage=eval", "stage.samples_per_prompt=4"],
    ["stage=grpo", REWARD, "stage.beta=0"],
    ["stage=eval", "stage.greedy=false"],
])
def test_valid_neighbours_pass(overrides):
    """Each case sits next to a rejected one: validate() must let it through unchanged."""
    cfg = composed(overrides)
    validate(cfg)  # raises ConfigError on a rejected combination
    for key, value in (o.split("=", 1) for o in overrides if "." in o.split("=", 1)[0]):
        if value.startswith("["):
            continue
        got = OmegaConf.select(cfg, key)
        got = getattr(got, "value", got)  # enums
        try:
            assert float(got) == float(value), (key, got)
        except (TypeError, ValueError):
            assert str(got).lower() == value.lower(), (key, got)


# ---------------------------------------------------------------- TRL's lists
def test_dpo_losses_are_trls():
    """config.py lists TRL's DPO losses so that composing a config stays free of TRL's slow
    import; this fails when an upgrade of TRL adds or drops one."""
    from trl import DPOConfig

    help_text = {f.name: f for f in dataclasses.fields(DPOConfig)}["loss_type"].metadata["help"]
    listed = re.search(r"Possible values are:(.*?)\.\s", help_text, re.S)
    assert listed, f"TRL's DPOConfig.loss_type help no longer lists the losses: {help_text}"
    trl_losses = re.findall(r"'(\w+)'", listed.group(1))
    assert sorted(trl_losses) == sorted(DPO_LOSSES), \
        f"TRL's DPO losses {sorted(trl_losses)} != rlhf.config.DPO_LOSSES {sorted(DPO_LOSSES)}"


def test_reference_free_losses_have_their_trl_trainers():
    from rlhf.compat import cpo_classes, orpo_classes

    cpo_config, _ = cpo_classes()
    assert "simpo" in {f.name: f for f in dataclasses.fields(cpo_config)}["loss_type"] \
        .metadata["choices"]
    assert orpo_classes() and set(REFERENCE_FREE_LOSSES) == {"simpo", "orpo"}


# ---------------------------------------------------------------- secrets in Hydra's files
HF_TOKEN = "hf_" + "a1B2c3D4e5F6g7H8i9J0k1L2"  # credential-shaped
API_KEY = "s3cret-api-key-value"  # secret by its key only
SECRET_RUN = ["stage=grpo", f"logger.tags=[ci,{HF_TOKEN}]",
              f"stage.reward_funcs=[{{_target_: rlhf.rewards.length.LengthPenalty, "
              f"api_key: {API_KEY}}}]",
              "stage.num_generations=1"]  # rejected by validate(), after Hydra wrote its files


@pytest.mark.parametrize("args,env", [
    (["hydra.run.dir=run", *SECRET_RUN], {}),
    (["-m", "hydra.sweep.dir=sweep", "stage.seed=1,2", *SECRET_RUN], {}),
    # the check of undeclared keys left to the app: Hydra has written the key first
    (["hydra.run.dir=run", "+logger.api_key=" + API_KEY, *SECRET_RUN],
     {"HYDRA_FULL_ERROR": "1"}),
])
def test_no_file_holds_a_secret(run_cli, tmp_path, args, env):
    """.hydra/{config,hydra,overrides}.yaml and a sweep's multirun.yaml are redacted like
    config.yaml, even when the run stops at once."""
    result = run_cli(args, cwd=tmp_path, env=env)
    assert result.returncode != 0, result.output
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"} <= \
        {n.split("/", 1)[1].removeprefix("0_grpo/") for n in names}, names
    for path in written:
        text = path.read_text()
        assert HF_TOKEN not in text and API_KEY not in text, path
    overrides = OmegaConf.load(next(p for p in written if p.name == "overrides.yaml"))
    assert "logger.tags=[ci,***]" in overrides and "stage.num_generations=1" in overrides
