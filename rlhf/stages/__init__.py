"""The stages: one module per stage, each with `run(cfg) -> dict` of final metrics.

`rlhf` (rlhf/cli.py) and the pipeline's in-process steps run a composed config the same way:
`check(cfg)`, then `run_here(cfg)`.
"""

from __future__ import annotations

import importlib

from rlhf.config import validate
from rlhf.distributed import inside_distributed
from rlhf.distributed.launch import setup_distributed
from rlhf.errors import UserError
from rlhf.models.loading import prepare_inputs

# stage name -> module with `run(cfg) -> dict`; imported lazily (TRL takes seconds to import)
STAGES = {
    "sft": "rlhf.stages.sft",
    "rm": "rlhf.stages.rm",
    "eval": "rlhf.stages.eval",
    "dpo": "rlhf.stages.dpo",
    "grpo": "rlhf.stages.online_rl",
    "rloo": "rlhf.stages.online_rl",
    "ppo": "rlhf.stages.ppo",
    "export": "rlhf.stages.export",
    "pipeline": "rlhf.stages.pipeline",
}


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
