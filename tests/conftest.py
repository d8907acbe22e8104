"""Shared fixtures: one cache (demo data + tiny model) built once per test session, and a
helper that drives the real `rlhf` CLI in a subprocess, the way users run it."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """RLHF_CACHE_DIR with the demo data and the tiny model, built once for all tests."""
    from data_tools.demo.generate import DemoSpec, ensure_demo_data
    from rlhf.models.demo_tiny import DemoModelSpec, ensure_demo_model

    path = tmp_path_factory.mktemp("rlhf_cache")
    ensure_demo_data(path / "demo_data", DemoSpec())
    ensure_demo_model(path / "demo_tiny", DemoModelSpec())
    return path


@dataclass
class CliResult:
    returncode: int
    output: str


@pytest.fixture(scope="session")
def run_cli(cache_dir):
    """Run `python -m rlhf.cli <args>`; returns exit code and combined output."""
    def run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600,
            module: str = "rlhf.cli") -> CliResult:
        full_env = {**os.environ, "RLHF_CACHE_DIR": str(cache_dir), "WANDB_MODE": "",
                    "HYDRA_FULL_ERROR": "", **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v != ""}
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return CliResult(proc.returncode, proc.stdout)
    return run


@pytest.fixture(scope="session")
def rm_run(run_cli, tmp_path_factory):
    """K-wise RM on 256 demo rankings (politeness and relevance are easy to learn); the
    reward model of the grpo/rloo tests too."""
    cwd = tmp_path_factory.mktemp("rm")
    run_dir = cwd / "run"
    result = run_cli(["stage=rm", f"hydra.run.dir={run_dir}", "stage.learning_rate=1e-3",
                      "stage.max_steps=24", "stage.global_batch_size=16",
                      "stage.per_device_batch_size=16", "stage.max_length=128",
                      "stage.logging_steps=4", "debug.max_train_rows=256",
                      "debug.max_eval_rows=64", "stage.reward_stats_rows=64"], cwd=cwd)
    assert result.returncode == 0, result.output[-3000:]
    return run_dir


def max_weight_change(run_dir: Path, start_dir: Path) -> float:
    """Largest absolute difference between the saved model and the model it started from."""
    from safetensors.torch import load_file

    after = load_file(str(run_dir / "model" / "model.safetensors"))
    before = load_file(str(start_dir / "model.safetensors"))
    return max((after[k] - before[k]).abs().max().item() for k in after.keys() & before.keys())
