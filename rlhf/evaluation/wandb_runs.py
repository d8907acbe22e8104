"""Runs read back from W&B: online through the public API (`wandb.Api`), or from the files an
offline run writes (`<run dir>/wandb/offline-run-*/run-<id>.wandb`), for `rlhf-compare`.

The offline file (wandb 0.31; docs/notes.md) is a LevelDB-style log: a 7-byte header
(":W&B", 0xBEE1, version), 32 KiB blocks, and 7-byte record headers (crc32 u32, length u16,
type u8: 1 full, 2 first, 3 middle, 4 last), each record a serialized
`wandb_internal_pb2.Record` (run, config, history, summary, ...).
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
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    records, pending, pos = [], b"", HEADER
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:  # the tail of a block too small for a header: padding
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


def offline_run(path: str | Path) -> dict:
    """{"run": {project, group, job_type, name, id}, "config", "history": [...], "summary"}."""
    out: dict = {"run": {}, "config": {}, "history": [], "summary": {}}
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


def offline_runs(root: str | Path) -> list[dict]:
    """Every offline run file below `root`, once per run id (the newest file of a resumed
    run), with the path it came from."""
    newest: dict[str, Path] = {}
    for path in sorted(Path(root).rglob("run-*.wandb")):
        if "latest-run" in path.parts:
            continue  # a link to one of the offline-run-* directories
        run_id = path.stem[len("run-"):]
        if run_id not in newest or path.stat().st_mtime >= newest[run_id].stat().st_mtime:
            newest[run_id] = path
    runs = []
    for path in sorted(newest.values()):
        run = offline_run(path)
        run["path"] = str(path)
        runs.append(run)
    return runs


def online_runs(project_path: str, group: str | None) -> list[dict]:
    """Runs of `entity/project` (or `project`, with the default entity) in `group`, through the
    W&B public API; the same shape as offline_run."""
    import wandb

    api = wandb.Api(timeout=30)
    filters = {"group": group} if group else {}
    runs = []
    for run in api.runs(project_path, filters=filters):
        history = [dict(row) for row in run.scan_history()]
        runs.append({"run": {"project": run.project, "group": run.group,
                             "job_type": run.job_type, "name": run.name, "id": run.id},
                     "config": dict(run.config), "history": history,
                     "summary": dict(run.summary), "path": run.url})
    return runs
