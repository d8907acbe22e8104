"""Loading the training formats of DESIGN.md section 4, with errors that name file and line.

Every row is checked before training starts. Bad rows are all written to
`<run dir>/bad_rows.jsonl` with their reasons, and the stage stops with one message naming the
first of them and the fix: nothing is dropped silently and no traceback comes from inside TRL.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from rlhf.errors import DataError

ROLES = ("system", "user", "assistant")


def iter_rows(path: str) -> Iterator[tuple[str, object]]:
    """Yield (where, row) for a JSONL file (optionally .gz) or a `datasets` directory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{path}: no such file or directory; point the data.* field at a JSONL "
                        "file or a `datasets` directory (prepare raw data with `rlhf-data`)")
    if p.is_dir():
        import datasets
        try:
            ds = datasets.load_from_disk(str(p))
        except FileNotFoundError as err:
            raise DataError(f"{path}: a directory, but not a `datasets` directory saved with "
                            f"save_to_disk ({err})") from None
        for i, row in enumerate(ds):
            yield f"{path} row {i}", row
        return
    opener = gzip.open if p.suffix == ".gz" else open
    seen_any = False
    with opener(p, "rt", encoding="utf-8-sig", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            seen_any = True
            where = f"{path}:{line_no}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as err:
                yield where, DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno});"
                                       " each line must be one JSON object")
    if not seen_any:
        raise DataError(f"{path}: the file is empty; it must hold one JSON object per line")


def check_messages(messages, where: str, field: str, final_role: str | None) -> None:
    """Raise DataError unless `messages` is a non-empty list of {role, content} turns."""
    if not isinstance(messages, list):
        raise DataError(f"{where}: `{field}` must be a list of {{role, content}} messages, "
                        f"not {type(messages).__name__}")
    if not messages:
        raise DataError(f"{where}: `{field}` is empty; a conversation needs at least one user "
                        "turn" + (" and an assistant answer" if final_role == "assistant" else ""))
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise DataError(f"{where}: `{field}[{i}]` must be an object with `role` and `content`")
        if msg["role"] not in ROLES:
            raise DataError(f"{where}: `{field}[{i}].role` is {msg['role']!r}; use one of "
                            f"{', '.join(ROLES)} (`rlhf-data` maps other speaker names)")
        if not isinstance(msg["content"], str):
            raise DataError(f"{where}: `{field}[{i}].content` must be text, not "
                            f"{type(msg['content']).__name__}")
    if final_role and messages[-1]["role"] != final_role:
        raise DataError(f"{where}: `{field}` ends with a {messages[-1]['role']!r} turn; it must end "
                        f"with {final_role!r}")


def load_checked(path: str, check, max_rows: int | None, bad_rows_dir: Path | None) -> list:
    """Check every row with `check(row, where) -> row`; stop on bad rows, listing all of them."""
    rows, bad = [], []
    for where, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            if not isinstance(row, dict):
                raise DataError(f"{where}: a row must be a JSON object, not {type(row).__name__}")
            rows.append(check(row, where))
        except DataError as err:
            bad.append({"where": where, "reason": str(err), "row": row if isinstance(row, dict)
                        else repr(row)})
        if max_rows is not None and len(rows) >= max_rows:
            break
    if bad:
        listed = ""
        if bad_rows_dir is not None:
            bad_file = Path(bad_rows_dir) / "bad_rows.jsonl"
            with open(bad_file, "w", encoding="utf-8") as f:
                for item in bad:
                    f.write(json.dumps(item, ensure_ascii=False, default=str) + "\n")
            listed = f"; all {len(bad)} bad row(s) are listed in {bad_file}"
        raise DataError(f"{bad[0]['reason']}{listed}")
    return rows


def load_conversations(path: str, max_rows: int | None = None,
                       bad_rows_dir: Path | None = None) -> list[dict]:
    """SFT rows: `{"messages": [...]}` ending with an assistant turn. Other fields are dropped."""
    def check(row, where):
        if "messages" not in row:
            raise DataError(f"{where}: no `messages` field; an SFT row is "
                            '{"messages": [{"role": "user", ...}, {"role": "assistant", ...}]}')
        check_messages(row["messages"], where, "messages", final_role="assistant")
        return {"messages": [{"role": m["role"], "content": m["content"]}
                             for m in row["messages"]]}
    return load_checked(path, check, max_rows, bad_rows_dir)


def load_prompts(path: str, max_rows: int | None = None,
                 bad_rows_dir: Path | None = None) -> list[dict]:
    """Prompt rows: `{"prompt": [...]}` ending with a user turn; other fields are kept
    (the demo's `product` and `intent` reach the oracle and reward functions)."""
    def check(row, where):
        if "prompt" not in row:
            raise DataError(f"{where}: no `prompt` field; a prompt row is "
                            '{"prompt": [{"role": "user", "content": ...}]}')
        check_messages(row["prompt"], where, "prompt", final_role="user")
        return row
    return load_checked(path, check, max_rows, bad_rows_dir)


def require(value: str | None, field: str, stage: str) -> str:
    if not value:
        raise DataError(f"stage={stage} needs {field}; set {field}=/path/to/file.jsonl "
                        "(or use data=demo)")
    return value
