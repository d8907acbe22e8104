"""Rank environment: torchrun (RANK/WORLD_SIZE) or Slurm (SLURM_PROCID/SLURM_NTASKS)."""

from __future__ import annotations

import os


def rank() -> int:
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", "1")))


def is_main_process() -> bool:
    """Rank 0 writes shared files and logs; the other ranks only compute."""
    return rank() == 0
