"""Shared fixtures: one cache (demo data + tiny model) built once per test session; `run_stage`,
which runs a stage in this process as `rlhf` does after composing (most tests); and `run_cli`,
which drives the real CLI in a subprocess, for the tests where the CLI or the process itself
is the point (--help, --cfg job, compose errors, one UserError -> exit code 2, multirun, the
pipeline, torchrun/DeepSpeed ranks, the demo)."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def pytest_addoption(parser):
    parser.addoption(
        "--suite-part", choices=("slow", "rest"), default=None,
        help="run only the `slow` tests (the demo) or the rest: `make test` runs the demo alone "
             "on both cores, then the rest in two one-thread workers (docs/notes.md)")


def pytest_collection_modifyitems(config, items):
    """--suite-part keeps the slow tests or the others. The rest run heaviest files first
    (those with multi-rank or Slurm tests), so that two workers that each take whole files
    (`--dist loadfile`) do not end waiting for one of them."""
    part = config.getoption("--suite-part")
    if part:
        keep, drop = [], []
        for item in items:
            is_slow = item.get_closest_marker("slow") is not None
            (keep if is_slow == (part == "slow") else drop).append(item)
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    heavy = ("distributed", "slurm")
    heavy_files = {item.path for item in items
                   if any(item.get_closest_marker(name) for name in heavy)}
    items.sort(key=lambda item: item.path not in heavy_files)


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
    """Run `python -m rlhf.cli <args>`; returns exit code and combined output. The process
    starts without RLHF_RUN_DIR (it would override hydra.run.dir), whatever this one holds."""
    def run(args: list[str], cwd: Path, env: dict | None = None, timeout: int = 600,
            module: str = "rlhf.cli") -> CliResult:
        full_env = {**os.environ, "RLHF_CACHE_DIR": str(cache_dir), "WANDB_MODE": "",
                    "HYDRA_FULL_ERROR": "", "RLHF_RUN_DIR": "", **(env or {})}
        full_env = {k: v for k, v in full_env.items() if v != ""}
        proc = subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=full_env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=timeout)
        return CliResult(proc.returncode, proc.stdout)
    return run


class StageRunner:
    """Compose the `rlhf` config from conf/ with these overrides (Hydra's compose API) and run
    the stage in this process, in the order `rlhf.cli.main` does: validate, build the demo
    data and tiny model if needed, `STAGES[name].run(cfg)`. The run directory is given as
    RLHF_RUN_DIR, as the launcher and the pipeline give it to their children.

    Environment variables (`env`; "" removes one) are set for the run only (`environment`).
    What a run leaves in the process is cleared after it: transformers' global DeepSpeed
    config, an open W&B run.
    """

    def __init__(self, cache_dir: Path):
        self.cache_dir = cache_dir

    def compose(self, overrides: list[str]):
        from hydra import compose, initialize_config_dir

        from rlhf.cli import CONFIG_DIR

        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose("config", overrides=[f"cache_dir={self.cache_dir}", *overrides])

    def __call__(self, overrides: list[str], run_dir: Path, env: dict | None = None) -> dict:
        from rlhf.cli import STAGES
        from rlhf.compat import forget_deepspeed_zero3_init
        from rlhf.config import validate
        from rlhf.errors import UserError
        from rlhf.models.loading import prepare_inputs
        from rlhf.runs import RUN_DIR_ENV

        with environment({**(env or {}), RUN_DIR_ENV: str(run_dir)}):
            try:
                cfg = self.compose(overrides)
                validate(cfg)
                if cfg.stage.name not in STAGES:
                    raise UserError(f"stage.name={cfg.stage.name!r} has no implementation")
                prepare_inputs(cfg)
                return importlib.import_module(STAGES[cfg.stage.name]).run(cfg)
            finally:
                forget_deepspeed_zero3_init()
                _finish_wandb()

    def fails(self, overrides: list[str], run_dir: Path, env: dict | None = None) -> str:
        """The message of the UserError that the run stops with (what `rlhf` prints as its
        one `rlhf: error:` line with exit code 2); any other exception fails the test."""
        from rlhf.errors import UserError

        with pytest.raises(UserError) as err:
            self(overrides, run_dir, env)
        return str(err.value)


@contextlib.contextmanager
def environment(changes: dict):
    """Set these environment variables ("" removes one) and put back what was there before.

    Not pytest's monkeypatch: it undoes its changes on the `os.environ` object it saw, and
    datasets 5.2's `Dataset.map(num_proc>=1)` (TRL tokenizes with it) replaces `os.environ`
    with a copy, so a variable set for one run (RLHF_RUN_DIR) outlived it and sent a later
    torchrun test's ranks into that run's directory."""
    saved = {key: os.environ.get(key) for key in changes}
    try:
        for key, value in changes.items():
            if value == "":
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        yield
    finally:
        for key, value in saved.items():  # on os.environ as it is now
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _finish_wandb() -> None:
    """A stage that stopped half way leaves its W&B run open; close it for the next test."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()


@pytest.fixture(autouse=True)
def _run_dir_not_left_behind():
    """RLHF_RUN_DIR overrides hydra.run.dir: one left set by an in-process run would send
    later runs into that run's directory."""
    before = os.environ.get("RLHF_RUN_DIR")
    yield
    assert os.environ.get("RLHF_RUN_DIR") == before, "the test left RLHF_RUN_DIR changed"


@pytest.fixture(autouse=True)
def _own_stage_cache(tmp_path):
    """Each test its own index of finished runs (stage caching, rlhf/stage_cache.py): a run
    of one test is never reused by another, which would then train nothing. A test that runs
    the same work twice sees the second reuse the first, as a user would."""
    with environment({"RLHF_STAGE_CACHE_DIR": str(tmp_path / "stage_cache")}):
        yield


@pytest.fixture(scope="session")
def run_stage(cache_dir) -> StageRunner:
    return StageRunner(cache_dir)


@pytest.fixture(scope="session")
def rm_run(run_stage, tmp_path_factory):
    """K-wise RM on 256 demo rankings (politeness and relevance are easy to learn); the
    reward model of the grpo/rloo tests too. At 3e-3 for 32 steps it also learns to put the
    good answer above the rambling one (ranked second) on most held-out prompts: top-1
    0.47-0.67 and pairwise accuracy 0.80-0.86 over seeds 0-4 (at 1e-3 for 24 steps: top-1
    0.09, below chance, and accuracy 0.77)."""
    run_dir = tmp_path_factory.mktemp("rm") / "run"
    run_stage(["stage=rm", "stage.learning_rate=3e-3",
               "stage.max_steps=32", "stage.global_batch_size=16",
               "stage.per_device_batch_size=16", "stage.max_length=128",
               "stage.logging_steps=4", "debug.max_train_rows=256",
               "debug.max_eval_rows=64", "stage.reward_stats_rows=64"], run_dir)
    return run_dir


def max_weight_change(run_dir: Path, start_dir: Path) -> float:
    """Largest absolute difference between the saved model and the model it started from."""
    from safetensors.torch import load_file

    after = load_file(str(run_dir / "model" / "model.safetensors"))
    before = load_file(str(start_dir / "model.safetensors"))
    return max((after[k] - before[k]).abs().max().item() for k in after.keys() & before.keys())
