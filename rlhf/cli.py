"""`rlhf`: the Hydra app behind every stage.

    rlhf experiment=demo                         # the built-in demo, end to end
    rlhf stage=sft model.path=<dir or hub id> data=custom data.sft_train=train.jsonl
    rlhf -m stage=sft stage.learning_rate=1e-4,3e-4

Hydra composes and type-checks the config (conf/ + the schemas in rlhf/config.py); we run
the cross-field checks and hand the config to `STAGES[cfg.stage.name].run(cfg)`
(rlhf/stages/__init__.py).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf.config import register_configs
from rlhf.distributed import export_slurm_env, inside_distributed, world_size
from rlhf.distributed.launch import launch_ranks, needs_launch
from rlhf.errors import UserError
from rlhf.runs import read_metrics, run_dir
from rlhf.stages import STAGES, check, run_here  # noqa: F401  (STAGES: the registry)

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
