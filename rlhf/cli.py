"""`rlhf`: the Hydra app behind every stage.

    rlhf experiment=demo                         # the built-in demo, end to end
    rlhf stage=sft model.path=<dir or hub id> data=custom data.sft_train=train.jsonl
    rlhf -m stage=sft stage.learning_rate=1e-4,3e-4

Hydra composes and type-checks the config (conf/ + the schemas in rlhf/config.py); we run
the cross-field checks and hand the config to `STAGES[cfg.stage.name].run(cfg)`.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf.config import register_configs, validate
from rlhf.distributed import export_slurm_env, inside_distributed, world_size
from rlhf.distributed.launch import launch_ranks, needs_launch, setup_distributed
from rlhf.errors import UserError
from rlhf.models.loading import prepare_inputs
from rlhf.runs import read_metrics, run_dir

# stage name -> module with `run(cfg) -> dict`; imported lazily (TRL takes seconds to import)
STAGES = {
    "sft": "rlhf.stages.sft",
    "rm": "rlhf.stages.rm",
    "eval": "rlhf.stages.eval",
    "dpo": "rlhf.stages.dpo",
    "grpo": "rlhf.stages.online_rl",
    "rloo": "rlhf.stages.online_rl",
    "pipeline": "rlhf.stages.pipeline",
}
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

register_configs()


def check(cfg, world: int | None = None) -> None:
    """Every check, before any rank starts or any model loads."""
    validate(cfg, world)
    if cfg.stage.name not in STAGES:
        raise UserError(f"stage.name={cfg.stage.name!r} has no implementation; "
                        f"known stages: {', '.join(STAGES)}")


def run_here(cfg) -> dict:
    """Run a checked config's stage in this process: the only rank, or this rank of
    torchrun/srun. The demo data and tiny model are built before the process group exists:
    transformers only writes files on rank 0 once it does."""
    prepare_inputs(cfg)
    if inside_distributed():
        setup_distributed(cfg)
    return importlib.import_module(STAGES[cfg.stage.name]).run(cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    export_slurm_env()  # under srun, speak torchrun's variables from here on
    try:
        check(cfg, world_size() if inside_distributed() else None)
        if cfg.stage.name not in SINGLE_PROCESS_STAGES and needs_launch(cfg):
            code = launch_ranks(cfg)
            if code:
                sys.exit(code)
            return read_metrics(run_dir())
        return run_here(cfg)
    except UserError as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise  # the user asked for tracebacks
        # one clear line instead of a traceback from deep inside a library
        print(f"rlhf: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
