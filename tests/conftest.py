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
