"""Rank environment: torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or Slurm's srun (SLURM_PROCID/
SLURM_NTASKS/SLURM_LOCALID). One process per device; rank 0 writes shared files and logs."""

from __future__ import annotations

import os
import re
import subprocess


def export_slurm_env(environ=os.environ) -> None:
    """Under `srun` (one task per device) there is no torchrun: translate Slurm's variables
    into the ones torch.distributed reads. Does nothing outside a multi-task Slurm step."""
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) <= 1 \
            or "SLURM_PROCID" not in environ:
        return
    environ["RANK"] = environ["SLURM_PROCID"]
    environ["WORLD_SIZE"] = environ["SLURM_NTASKS"]
    environ["LOCAL_RANK"] = environ.get("SLURM_LOCALID", "0")
    environ.setdefault("MASTER_ADDR", first_slurm_host(environ.get("SLURM_JOB_NODELIST",
                                                                   "127.0.0.1")))
    # the same port on every task of the job, different across jobs sharing a node
    environ.setdefault("MASTER_PORT", str(20000 + int(environ.get("SLURM_JOB_ID", "0")) % 20000))
    if "DS_ACCELERATOR" not in environ and not _has_cuda():
        environ["DS_ACCELERATOR"] = "cpu"  # DeepSpeed on CPU (gloo), as launch_ranks does


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def first_slurm_host(nodelist: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True).stdout
        return out.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        # "node[01-04],other" -> "node01" without scontrol
        match = re.match(r"([^\[,]+)(?:\[(\d+))?", nodelist)
        return match.group(1) + (match.group(2) or "") if match else "127.0.0.1"


def inside_distributed() -> bool:
    """Already started by torchrun or srun (after export_slurm_env)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    """Rank 0 writes shared files and logs; the other ranks only compute."""
    return rank() == 0


def mean_over_ranks(value: float) -> float:
    """The mean of a per-rank number over all ranks (the number itself on one process), so that
    a reported metric means the same on any number of ranks."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return value
    # nccl reduces CUDA tensors only; gloo CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.item() / dist.get_world_size()
