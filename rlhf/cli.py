"""`rlhf`: the Hydra app behind every stage.

    rlhf experiment=demo                         # the built-in demo, end to end
    rlhf stage=sft model.path=<dir or hub id> data=custom data.sft_train=train.jsonl
    rlhf -m stage=sft stage.learning_rate=1e-4,3e-4

Hydra composes and type-checks the config (conf/ + the schemas in rlhf/config.py); we run
the cross-field checks and hand the config to `STAGES[cfg.stage.name].run(cfg)`
(rlhf/stages/__init__.py). The command line is composed and checked once before Hydra runs,
so that a config error is one line and leaves no run directory (docs/bad_input.md).
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from rlhf.config import check_declared, is_schema_option, register_configs
from rlhf.distributed import export_slurm_env, inside_distributed, world_size
from rlhf.distributed.launch import launch_ranks, needs_launch
from rlhf.errors import ConfigError, UserError, one_line
from rlhf.models.loading import check_model_path
from rlhf.runs import read_metrics, redact_hydra_files, run_dir
from rlhf.stages import STAGES, check, reuse_finished_run, run_here  # noqa: F401  (STAGES)
from rlhf.tracking.secrets import redact_text

# stages that run in one process whatever distributed.nproc_per_node says (the pipeline's
# steps start their own ranks; evaluation generates on one device)
SINGLE_PROCESS_STAGES = {"pipeline", "eval"}

# The config lives in conf/ at the top of the repository. A wheel (`pip install .`) carries a
# copy inside the package, rlhf/conf, made by setup.py at build time; a checkout or an editable
# install (`make venv`) has none there and reads the repository's conf/ itself, so edits take
# effect without reinstalling. An absolute path works whether Hydra sees us as a script, a
# module or a console script.
_PACKAGED_CONF = Path(__file__).resolve().parent / "conf"
CONFIG_DIR = str(_PACKAGED_CONF if _PACKAGED_CONF.is_dir()
                 else Path(__file__).resolve().parent.parent / "conf")
CONFIG_NAME = "config"

register_configs()


def main() -> None:
    """`rlhf`: the command line is composed and checked before Hydra runs the app, so that a
    config error is one line (exit code 2) and nothing is written. HYDRA_FULL_ERROR=1 leaves
    the errors to Hydra, with its full text and traceback."""
    if os.environ.get("HYDRA_FULL_ERROR") != "1":
        try:
            check_command_line(sys.argv[1:])
        except UserError as err:
            exit_with(err)
    app()
    for sweep in LOCAL_SWEEPS:  # a local sweep ended: its runs side by side (rlhf-compare)
        print_sweep_table(sweep)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name=CONFIG_NAME)
def app(cfg: DictConfig) -> dict:
    redact_hydra_files()  # first: whatever happens next, they hold no secret
    export_slurm_env()  # under srun, speak torchrun's variables from here on
    note_local_sweep()
    try:
        check(cfg, world_size() if inside_distributed() else None)
        reused = reuse_finished_run(cfg)
        if reused is not None:
            return reused
        if not single_process(cfg) and needs_launch(cfg):
            code = launch_ranks(cfg)
            if code:
                sys.exit(code)
            return read_metrics(run_dir())
        return run_here(cfg)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the user asked for tracebacks
        exit_with(err)


def single_process(cfg) -> bool:
    """SINGLE_PROCESS_STAGES, except stage=eval over several models (stage.models), whose
    held-out prompts the ranks split."""
    if cfg.stage.name == "eval" and cfg.stage.models:
        return False
    return cfg.stage.name in SINGLE_PROCESS_STAGES


# the sweeps (`rlhf -m`) whose jobs ran in this process, for their table at the end
LOCAL_SWEEPS: list[str] = []


def note_local_sweep() -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN and hydra_cfg.sweep.dir not in LOCAL_SWEEPS:
        LOCAL_SWEEPS.append(hydra_cfg.sweep.dir)


def print_sweep_table(sweep: str) -> None:
    from rlhf.compare import sweep_summary

    try:
        print(sweep_summary(sweep))
    except Exception as err:  # noqa: BLE001  (the sweep itself succeeded)
        print(f"rlhf: no comparison table for {sweep} ({one_line(err)}); "
              f"try `rlhf-compare {sweep}`")


def exit_with(err: UserError) -> None:
    # one clear line instead of a traceback from deep inside a library
    print(f"rlhf: error: {err}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- the command line, checked
def check_command_line(argv: list[str]) -> None:
    """Compose every job's config as Hydra will, reject keys no schema declares and a model.path
    that does not exist."""
    from rlhf.compat import hydra_args_parser

    args = hydra_args_parser().parse_args(argv)
    if args.help or args.hydra_help or args.shell_completion or args.experimental_rerun \
            or args.config_path or args.config_dir:
        return  # no job config to check, or one from elsewhere: Hydra's own handling
    name = args.config_name or CONFIG_NAME
    for overrides in job_overrides(args.overrides, args.multirun):
        cfg = compose_checked(name, overrides)
        check_declared(cfg)
        if not (args.cfg or args.info):  # a job will run: stop before Hydra makes its directory
            check_paths(cfg)


def check_paths(cfg) -> None:
    """A model.path that does not exist; resolving it may fail too (an unset ${oc.env:...})."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        check_model_path(cfg)
    except OmegaConfBaseException as err:
        raise ConfigError(one_line(err)) from None


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override lists to compose: the run's own; for a sweep, each value of each swept key
    once, with the first value of the others (every value is checked, without composing every
    combination)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    if not multirun:
        return [overrides]
    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        try:
            choices.append([f"{key}={v}" for v in override.sweep_string_iterator()]
                           if override.is_sweep_override() else [override.input_line])
        except HydraException:
            continue  # glob(...) and interval(...) need the sweeper: Hydra checks those
    first = [values[0] for values in choices]
    return [first] + [first[:i] + [value] + first[i + 1:]
                      for i, values in enumerate(choices) for value in values[1:]]


def compose(name: str, overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name=name, overrides=overrides)


def compose_checked(name: str, overrides: list[str]):
    """The composed config, or a ConfigError of one line naming the key and the fix."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(name, overrides)
    except (HydraException, OmegaConfBaseException) as err:
        raise ConfigError(redact_text(compose_error(err, name, overrides))) from None


def compose_error(err: Exception, name: str, overrides: list[str]) -> str:
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ValidationError

    typo = re.match(r"Could not override '([^']+)'", str(err))
    if isinstance(err, MissingConfigException) and err.options is not None:
        return unknown_option(err.missing_cfg_file, err.options)
    if typo:
        return undeclared_override(typo.group(1), name, overrides) or one_line(err)
    if isinstance(err.__cause__, ValidationError) and str(err).startswith("Error merging override"):
        return wrong_value(err.__cause__, name, overrides)
    return one_line(err)


def unknown_option(missing: str, options: list[str]) -> str:
    group, _, option = missing.rpartition("/")
    real = [o for o in options if not is_schema_option(o)]
    near = difflib.get_close_matches(option, real, n=1)
    hint = f"; did you mean {group}={near[0]}?" if near else ""
    return f"{group}={option}: no such option; choose one of {', '.join(real)}{hint}"


def _key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def undeclared_override(key: str, name: str, overrides: list[str]) -> str | None:
    """`stage.learnig_rate=1e-4`: composed as `+stage.learnig_rate=1e-4` would be, it gets the
    same message naming the nearest declared key."""
    appended = [f"+{o}" if _key(o) == key and not o.startswith(("+", "~")) else o
                for o in overrides]
    try:
        check_declared(compose(name, appended))
    except ConfigError as err:
        return str(err)
    except Exception:  # noqa: BLE001  (another error as well: report Hydra's)
        return None
    return None


def wrong_value(err, name: str, overrides: list[str]) -> str:
    """A value of the wrong type: OmegaConf's reason, and the key's value without it."""
    line = f"{err.full_key}={err.value}: {err.msg.splitlines()[0]}"
    try:
        current = OmegaConf.select(compose(name, [o for o in overrides
                                                  if _key(o) != err.full_key]), err.full_key)
    except Exception:  # noqa: BLE001  (the example is a courtesy)
        return line
    current = getattr(current, "value", current)  # enums
    return line if current is None else f"{line}; e.g. {err.full_key}={current}"


if __name__ == "__main__":
    main()
