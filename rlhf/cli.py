"""`rlhf`: the Hydra app behind every stage.

    rlhf experiment=demo                         # the built-in demo, end to end
    rlhf stage=sft model.path=<dir or hub id> data=custom data.sft_train=train.jsonl
    rlhf -m stage=sft stage.learning_rate=1e-4,3e-4

Hydra composes and type-checks the config (conf/ + the schemas in rlhf/config.py); we run
the cross-field checks and hand the config to `STAGES[cfg.stage.name].run(cfg)`.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from rlhf.config import register_configs, validate
from rlhf.errors import UserError

# stage name -> module with `run(cfg) -> dict`; imported lazily (TRL takes seconds to import)
STAGES = {
    "sft": "rlhf.stages.sft",
    "eval": "rlhf.stages.eval",
    "pipeline": "rlhf.stages.pipeline",
}

# conf/ sits beside the package in the repository (installed with `pip install -e .`); an
# absolute path works whether Hydra sees us as a script, a module or a console script
CONFIG_DIR = str(Path(__file__).resolve().parent.parent / "conf")

register_configs()


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def main(cfg: DictConfig) -> dict:
    try:
        validate(cfg)
        if cfg.stage.name not in STAGES:
            raise UserError(f"stage.name={cfg.stage.name!r} has no implementation; "
                            f"known stages: {', '.join(STAGES)}")
        return importlib.import_module(STAGES[cfg.stage.name]).run(cfg)
    except UserError as err:
        # one clear line instead of a traceback from deep inside a library
        print(f"rlhf: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
