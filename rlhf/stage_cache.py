"""Stage caching: a stage whose work matches a finished run reuses that run's outputs instead of
training again (`stage.cache=true`, the default; docs/slurm.md, "Cached stages").

The work of a run is its cache key, the sha256 of
  - its resolved config, without what does not change the result: where things are written
    and logged (logger, experiment_name, cache_dir, stage_cache_dir, the pipeline around it),
    stage.resume, stage.cache, stage.logging_steps and stage.sample_every;
  - every file or directory the config names (model.path, data files, stage.reward_model, ...)
    by its content: a directory inside a finished run by that run's key (a chain of stages
    hashes no weights), anything else by the sha256 of its files (remembered by path, size
    and modification time, so a large local model is read once);
  - the versions of rlhf and of the libraries that train (torch, transformers, trl, peft,
    deepspeed).
A string that is not an existing path (a hub id such as Qwen/Qwen2.5-0.5B) counts as written.

A finished run (metrics.json written) records its key in `<run dir>/stage_cache.json` and in
the index `<stage_cache_dir>/<key>.json`. A later run with the same key gets that run's outputs
hard-linked (copied across file systems) into its own directory, minus its resumable
checkpoints (trainer/) and W&B files, and says so in one line; no W&B run is made for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path

from omegaconf import OmegaConf

from data_tools.io import atomic_write_text

RECORD = "stage_cache.json"  # in a finished run's directory: its key
REUSED = "cached_from.json"  # in a run that reused another: which one
STAGES = ("sft", "rm", "dpo", "grpo", "rloo", "ppo", "eval")  # export and pipeline: never
# top-level keys and stage keys that do not change what a run produces
IGNORED = ("logger", "experiment_name", "cache_dir", "stage_cache_dir", "pipeline")
IGNORED_STAGE = ("resume", "cache", "logging_steps", "sample_every")
LIBRARIES = ("rlhf", "torch", "transformers", "trl", "peft", "deepspeed")
# what a reused run does not get from the finished one: its checkpoints for resuming, its W&B
# files, its own records (Hydra's, logs) and the config (written anew)
NOT_LINKED = {"trainer", "wandb", ".hydra", "config.yaml", RECORD, REUSED}


def cacheable(cfg) -> bool:
    return cfg.stage.name in STAGES


def enabled(cfg) -> bool:
    return cacheable(cfg) and cfg.stage.cache


def key(cfg) -> str:
    """The cache key of a run of this config, as described above."""
    tree = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    for name in IGNORED:
        tree.pop(name, None)
    for name in IGNORED_STAGE:
        tree["stage"].pop(name, None)
    hashes = _FileHashes(Path(cfg.stage_cache_dir))
    work = {"config": _with_contents(tree, hashes), "versions": _versions()}
    hashes.save()
    return hashlib.sha256(json.dumps(work, sort_keys=True).encode()).hexdigest()


def find(cfg, cache_key: str, out: Path) -> Path | None:
    """A finished run of the same work (`cache_key`), other than `out` itself, or None."""
    entry = Path(cfg.stage_cache_dir) / f"{cache_key}.json"
    if not entry.exists():
        return None
    found = Path(json.loads(entry.read_text())["run_dir"])
    if found.resolve() == Path(out).resolve() or not _finished_with(found, entry.stem):
        return None  # the run itself (a rerun in place), or one deleted or overwritten since
    return found


def reuse(found: Path, out: Path, cache_key: str) -> dict:
    """Link the finished run's outputs into `out`; return its metrics."""
    out.mkdir(parents=True, exist_ok=True)
    for item in found.iterdir():
        if item.name not in NOT_LINKED and not item.name.startswith(".tmp-") \
                and item.suffix != ".log":  # logs: this run's own (Hydra's cli.log)
            _link_tree(item, out / item.name)
    atomic_write_text(out / REUSED, json.dumps({"run_dir": str(found), "key": cache_key}) + "\n")
    atomic_write_text(out / RECORD, json.dumps({"key": cache_key}) + "\n")
    return json.loads((out / "metrics.json").read_text())


def record(cfg, out: Path, cache_key: str) -> None:
    """A run finished: remember it under its key (called after metrics.json is written)."""
    atomic_write_text(out / RECORD, json.dumps({"key": cache_key}) + "\n")
    atomic_write_text(Path(cfg.stage_cache_dir) / f"{cache_key}.json",
                      json.dumps({"run_dir": str(Path(out).resolve()),
                                  "stage": cfg.stage.name}) + "\n")


def _finished_with(run_dir: Path, cache_key: str) -> bool:
    try:
        recorded = json.loads((run_dir / RECORD).read_text())["key"]
    except (OSError, ValueError, KeyError):
        return False
    return recorded == cache_key and (run_dir / "metrics.json").exists()


def _link_tree(src: Path, dst: Path) -> None:
    if src.is_dir():
        dst.mkdir(exist_ok=True)
        for item in src.iterdir():
            _link_tree(item, dst / item.name)
        return
    if dst.exists():
        dst.unlink()
    try:
        os.link(src, dst)  # no copy of the weights; nothing writes a finished run's files
    except OSError:
        shutil.copy2(src, dst)


def _versions() -> dict:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _with_contents(node, hashes: "_FileHashes"):
    """The config tree with each string that names an existing path replaced by its content."""
    if isinstance(node, dict):
        return {k: _with_contents(v, hashes) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_contents(v, hashes) for v in node]
    if isinstance(node, str) and node and os.path.exists(os.path.expanduser(node)):
        return {"content": _identity(Path(node).expanduser().resolve(), hashes)}
    return node


def _identity(path: Path, hashes: "_FileHashes") -> str:
    """A path inside a finished run: the run's key and the path below it. Otherwise the
    sha256 of the file, or of a directory's file names and contents."""
    for parent in [path, *path.parents]:
        if (parent / RECORD).is_file() and (parent / "metrics.json").is_file():
            try:
                run_key = json.loads((parent / RECORD).read_text())["key"]
            except (OSError, ValueError, KeyError):
                break
            return f"run:{run_key}/{path.relative_to(parent).as_posix()}"
    if path.is_file():
        return hashes.of(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{file.relative_to(path).as_posix()}\0{hashes.of(file)}\n".encode())
    return digest.hexdigest()


class _FileHashes:
    """sha256 of files, remembered in <stage_cache_dir>/file_hashes.json by path, size and
    modification time: the second run on a local 15 GB model reads none of it."""

    def __init__(self, cache: Path):
        self.path = cache / "file_hashes.json"
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def of(self, file: Path) -> str:
        stat = file.stat()
        stamp = [stat.st_size, stat.st_mtime_ns]
        name = str(file)
        if name in self.known and self.known[name][:2] == stamp:
            return self.known[name][2]
        digest = hashlib.sha256()
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        self.known[name] = [*stamp, digest.hexdigest()]
        self.changed = True
        return digest.hexdigest()

    def save(self) -> None:
        if self.changed:
            atomic_write_text(self.path, json.dumps(self.known))
