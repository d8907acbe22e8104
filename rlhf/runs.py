"""The run directory of a stage and what every stage writes into it.

rlhf_run_dir/
  model/          Hugging Face checkpoint (safetensors + tokenizer with chat template)
  metrics.json    final metrics, flat `{"eval/loss": 1.23, ...}`
  environment.json  where it ran: cpu or cuda (and which GPU), ranks, precision, library versions
  config.yaml     the resolved config (secrets redacted)
  .hydra/         Hydra's record of the run (config, hydra.yaml, overrides), secrets redacted
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import OmegaConf

from data_tools.io import atomic_write_text
from rlhf.tracking.secrets import redact, redact_saved

# set by a parent process (pipeline, launcher) so children and ranks share one directory
RUN_DIR_ENV = "RLHF_RUN_DIR"


def run_dir() -> Path:
    path = os.environ.get(RUN_DIR_ENV) or HydraConfig.get().runtime.output_dir
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


def resolved_config(cfg) -> dict:
    return redact(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))


def save_config(cfg, out: Path) -> None:
    atomic_write_text(out / "config.yaml", OmegaConf.to_yaml(resolved_config(cfg)))


def environment(cfg) -> dict:
    """Where a run ran, for comparing runs later: the device (and which GPU), the number of
    ranks, the precision and the versions of the libraries that did the work."""
    import importlib.metadata
    import platform

    import torch

    from rlhf.distributed import world_size

    on_gpu = torch.cuda.is_available()
    versions = {}
    for name in ("torch", "transformers", "trl", "deepspeed", "peft", "datasets", "accelerate"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {"device": "cuda" if on_gpu else "cpu",
            "device_name": torch.cuda.get_device_name() if on_gpu else platform.processor(),
            "cuda": torch.version.cuda if on_gpu else None,
            "world_size": world_size(),
            "distributed": cfg.distributed.name,
            "precision": getattr(cfg.distributed.precision, "value", cfg.distributed.precision),
            "python": platform.python_version(), "versions": versions}


def save_environment(cfg, out: Path) -> None:
    atomic_write_text(out / "environment.json", json.dumps(environment(cfg), indent=2) + "\n")


def sweep_dir(out: Path) -> Path | None:
    """The sweep (`rlhf -m`) that a run directory belongs to: the nearest directory above it
    holding Hydra's multirun.yaml. Found from the directory, so that a sweep's ranks (started
    as plain runs) and its pipelines' steps know it too."""
    return next((p for p in Path(out).resolve().parents if (p / "multirun.yaml").exists()), None)


def swept_overrides(out: Path, sweep: Path) -> list[str]:
    """(`sweep` as sweep_dir gives it.) The overrides that set this job of a sweep apart (`stage.learning_rate=0.001`): its own
    (.hydra/overrides.yaml of its job directory) that the sweep's command line lacks."""
    job = sweep / Path(out).resolve().relative_to(sweep).parts[0]
    own = job / ".hydra" / "overrides.yaml"
    if not own.exists():  # hydra.output_subdir=null
        return []
    shared = OmegaConf.load(sweep / "multirun.yaml").hydra.overrides.task
    return [o for o in OmegaConf.load(own) if o not in shared]


def hydra_files() -> list[Path]:
    """What Hydra wrote for this job before running it: .hydra/{config,hydra,overrides}.yaml
    (none in ranks, started with hydra.output_subdir=null) and a sweep's multirun.yaml."""
    hydra_cfg = HydraConfig.get()
    files = []
    if hydra_cfg.output_subdir is not None:
        subdir = Path(hydra_cfg.runtime.output_dir) / hydra_cfg.output_subdir
        files += [subdir / name for name in ("config.yaml", "hydra.yaml", "overrides.yaml")]
    if hydra_cfg.mode == RunMode.MULTIRUN:
        files.append(Path(hydra_cfg.sweep.dir) / "multirun.yaml")
    return [f for f in files if f.exists()]


def redact_hydra_files() -> None:
    """Rewrite Hydra's own files with secrets redacted, as config.yaml is: Hydra saves the
    config and the command line as given (an api_key, an hf_ token in logger.tags) before
    the job starts, and offers no hook in between."""
    for path in hydra_files():
        tree = redact_saved(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
        atomic_write_text(path, OmegaConf.to_yaml(OmegaConf.create(tree)))


def write_metrics(out: Path, metrics: dict) -> None:
    # NaN/inf are not JSON: write them as strings, so a diverged run is still reported
    clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else str(v))
             for k, v in metrics.items()}
    atomic_write_text(out / "metrics.json", json.dumps(clean, indent=1, sort_keys=True) + "\n")


def read_metrics(out: Path) -> dict:
    return json.loads((Path(out) / "metrics.json").read_text())
