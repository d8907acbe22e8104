"""Reads an offline W&B run file (`run-<id>.wandb`) back into its records, for the tests.

wandb 0.31 writes only this file in offline mode. Its format (docs/notes.md) is a
LevelDB-style log: a 7-byte header (":W&B", 0xBEE1, version), 32 KiB blocks, and 7-byte record
headers (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each record a
serialized `wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32 * 1024
HEADER = 7


def read_records(path: str | Path) -> list:
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the tail of a block too small for a header is padding
            pos += BLOCK - pos % BLOCK
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == 1:
            records.append(chunk)
        elif kind == 2:
            pending = chunk
        elif kind == 3:
            pending += chunk
        elif kind == 4:
            records.append(pending + chunk)
    parsed = []
    for raw in records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        parsed.append(record)
    return parsed


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


def run_summary(path: str | Path) -> dict:
    """{"run": run record fields, "config": {...}, "history": [{...}], "summary": {...}}."""
    out = {"run": {}, "config": {}, "history": [], "summary": {}}
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            out["run"] = {"project": record.run.project, "group": record.run.run_group,
                          "job_type": record.run.job_type, "name": record.run.display_name,
                          "id": record.run.run_id}
            for item in record.run.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                out["config"][_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            out["history"].append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                out["summary"][_key(item)] = json.loads(item.value_json)
    return out
