"""The stages: one module per stage, each with `run(cfg) -> dict` of final metrics.

`rlhf` (rlhf/cli.py) and the pipeline's in-process steps run a composed config the same way:
`check(cfg)`, then `run_here(cfg)`.
"""

from __future__ import annotations

import importlib

from rlhf import runs, stage_cache
from rlhf.config import validate
from rlhf.distributed import inside_distributed, is_main_process
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


def reuse_finished_run(cfg) -> dict | None:
    """stage.cache: when a finished run did the same work (rlhf/stage_cache.py), link its
    outputs into this run's directory and return its metrics; None: this run trains. Called
    before any rank starts: by `rlhf` (and so by a pipeline's steps in their own process, and
    by every Slurm task of a stage) and by the pipeline for its steps in its process."""
    if not stage_cache.enabled(cfg):
        return None
    prepare_inputs(cfg)  # the demo data and model are part of the work: build them first
    out = runs.run_dir()
    cache_key = stage_cache.key(cfg)
    found = stage_cache.find(cfg, cache_key, out)
    if found is None:
        return None
    if not is_main_process():  # another Slurm task of this stage: rank 0 links
        return runs.read_metrics(found)
    print(f"rlhf: stage {cfg.stage.name}: reusing the finished run {found} (same config and "
          f"inputs; stage.cache=false trains again); nothing is trained", flush=True)
    runs.save_config(cfg, out)
    return stage_cache.reuse(found, out, cache_key)
