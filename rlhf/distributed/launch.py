"""Starting ranks and bringing them together.

- `rlhf ... distributed=zero2 distributed.nproc_per_node=2` outside torchrun/srun: the `rlhf`
  process starts the ranks itself with torchrun (as `accelerate launch` does), passing its own
  overrides and one run directory, and waits for them. A DeepSpeed run on one process is
  started the same way, as a world of one.
- Inside torchrun (`torchrun -m rlhf.cli ...`) or srun (one task per device): every rank
  joins the process group first thing, and all ranks take rank 0's run directory.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig

from rlhf.config import Backend
from rlhf.distributed import inside_distributed, is_main_process, local_rank
from rlhf.runs import RUN_DIR_ENV


def needs_launch(cfg) -> bool:
    """Several ranks, or DeepSpeed on any number: DeepSpeed needs a process group even for one
    process (without RANK/WORLD_SIZE it looks for MPI and dies on `No module named 'mpi4py'`),
    so one process under ZeRO is started as a torchrun world of one, like N (docs/notes.md)."""
    if inside_distributed():
        return False
    return cfg.distributed.nproc_per_node > 1 or cfg.distributed.backend == Backend.deepspeed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(cfg) -> int:
    """Run this same command on `nproc_per_node` ranks with torchrun; return its exit code."""
    import torch

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    env = {**os.environ, RUN_DIR_ENV: str(run_dir)}
    if not torch.cuda.is_available():
        env.setdefault("DS_ACCELERATOR", "cpu")  # DeepSpeed on CPU (gloo), as in the tests
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nproc_per_node={cfg.distributed.nproc_per_node}",
           "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
           "-m", "rlhf.cli", *HydraConfig.get().overrides.task,
           # the ranks reuse this run directory; its .hydra/ and log are this process's
           f"hydra.run.dir={run_dir}", "hydra.output_subdir=null", "hydra/job_logging=none"]
    n = cfg.distributed.nproc_per_node
    print(f"rlhf: starting {n} rank{'s' if n > 1 else ''}: {' '.join(cmd[2:])}", flush=True)
    return subprocess.call(cmd, env=env)


def setup_distributed(cfg) -> None:
    """Join the process group (gloo on CPU) and agree on rank 0's run directory.

    Done before any trainer exists: TRL builds reference models under ZeRO-3 before DeepSpeed
    would initialise communication itself (docs/notes.md)."""
    import torch
    import torch.distributed as dist

    on_gpu = torch.cuda.is_available()
    backend = cfg.distributed.dist_backend or ("nccl" if on_gpu else "gloo")
    if on_gpu:
        torch.cuda.set_device(local_rank())
    if not dist.is_initialized():
        if cfg.distributed.backend == Backend.deepspeed:
            import deepspeed
            deepspeed.init_distributed(dist_backend=backend)
        else:
            dist.init_process_group(backend=backend)
    agree_on_run_dir()


def agree_on_run_dir() -> None:
    """Ranks started by torchrun/srun directly each got their own Hydra directory (timestamps
    differ): take rank 0's, and remove a rank's own if Hydra left nothing else in it."""
    import torch.distributed as dist

    own = os.environ.get(RUN_DIR_ENV) or HydraConfig.get().runtime.output_dir
    shared = [own]
    dist.broadcast_object_list(shared, src=0)
    os.environ[RUN_DIR_ENV] = shared[0]
    if not is_main_process() and Path(own).resolve() != Path(shared[0]).resolve():
        leftovers = {p.name for p in Path(own).iterdir()} if Path(own).exists() else set()
        if leftovers <= {".hydra", "cli.log"}:
            shutil.rmtree(own, ignore_errors=True)
