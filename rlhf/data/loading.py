"""Loading the training formats, with errors that name file, line and field.

The rules of each format are data_tools/formats.py's, the code `rlhf-data` checks what it
writes with: whatever `rlhf-data` writes, every stage accepts. Every row is checked before
training starts. Bad rows are all written to `<run dir>/bad_rows.jsonl` (where, field,
category, reason, row), and the stage stops with one message naming the first of them and the
fix: nothing is dropped silently and no traceback comes from inside TRL.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from data_tools import formats
from data_tools.formats import BadRow
from rlhf.errors import DataError

ROLES = formats.ROLES


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
            # without its line end: json would place a cut-off line's error at "line 2
            # column 1", the start of the next line
            text = line.rstrip("\r\n")
            try:
                yield where, json.loads(text)
            except json.JSONDecodeError as err:
                yield where, invalid_json(where, text, err)
    if not seen_any:
        raise DataError(f"{path}: the file is empty; it must hold one JSON object per line")


def invalid_json(where: str, text: str, err: json.JSONDecodeError) -> DataError:
    """The reason names the real position; a line cut off mid-object (a copy or a write that
    stopped) fails where its text ends, said as such (as data_tools/readers.py says it)."""
    if err.pos >= len(text.rstrip()):
        return DataError(f"{where}: not valid JSON: the line ends at column {len(text)} before "
                         "the JSON value is complete (cut off?); each line must be one whole "
                         "JSON object")
    return DataError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); each line "
                     "must be one JSON object")


def load_checked(path: str, check, max_rows: int | None, bad_rows_dir: Path | None) -> list:
    """Check every row with `check(row) -> row` (raising formats.BadRow); stop on bad rows,
    listing all of them."""
    rows, bad = [], []
    for where, row in iter_rows(path):
        try:
            if isinstance(row, Exception):
                raise row
            rows.append(check(row))
        except BadRow as err:
            bad.append({"where": where, "field": err.field, "category": err.category,
                        "reason": f"{where}: {err}", "row": row})
        except DataError as err:  # not valid JSON
            bad.append({"where": where, "field": None, "category": "invalid_json",
                        "reason": str(err), "row": None})
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
    return load_checked(path, formats.sft_row, max_rows, bad_rows_dir)


def load_prompts(path: str, max_rows: int | None = None,
                 bad_rows_dir: Path | None = None) -> list[dict]:
    """Prompt rows: `{"prompt": [...]}` ending with a user turn; other fields are kept
    (the demo's `product` and `intent` reach the oracle and reward functions)."""
    return load_checked(path, formats.prompt_row, max_rows, bad_rows_dir)


def require(value: str | None, field: str, stage: str) -> str:
    if not value:
        raise DataError(f"stage={stage} needs {field}; set {field}=/path/to/file.jsonl "
                        "(or use data=demo)")
    return value
