"""Helpers for data_tools tests: a typed config and a runner over small hand-made inputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from data_tools.config import DataToolsConfig


@pytest.fixture
def make_cfg(tmp_path):
    def make(**overrides):
        cfg = OmegaConf.structured(DataToolsConfig(out_dir=str(tmp_path / "out")))
        cfg.num_proc = 1
        cfg.save_datasets = False
        for key, value in overrides.items():
            OmegaConf.update(cfg, key, value, merge=True)
        return cfg
    return make


def write_jsonl(path: Path, rows, gz: bool = False) -> Path:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list:
    return [json.loads(line) for line in open(path, encoding="utf-8")] if path.exists() else []


def conv(q: str, a: str) -> dict:
    return {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
