"""Readers: raw files in, normalised `Record`s or `Rejected` rows out, one per input row.

Formats (`format: auto` detects them: data_tools/detect.py):
  messages         JSONL/JSON, OpenAI style  {"messages": [{"role", "content"}, ...]}
  sharegpt         JSON/JSONL  {"conversations": [{"from": "human", "value": ...}, ...]}
  support_csv      CSV, one row per utterance: conversation id, timestamp, speaker, text
  prompt_response  CSV or JSONL  {"prompt": ..., "response": ...}
  ranking          JSONL  {"prompt", "responses": [...], "ranks" | "scores"}  (best first if neither)
  pairwise         JSONL  {"prompt", "chosen", "rejected"}
Files may be gzip-compressed (.gz). A BOM, CRLF line ends and invalid UTF-8 bytes (replaced by
U+FFFD and counted) do not stop a run.

Readers only turn each input format into the training formats (speaker names to roles, column
names, prompts given as text); the rules of those formats (answers, ranks, scores, ties, K) are
data_tools/formats.py's, the same code the stages check their input with.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sqlite3
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Iterator

from data_tools import formats
from data_tools.records import (CONVERSATION, PAIR, RANKING, BadRow, Record, Rejected,
                                UnreadableFile)

FORMATS = ("messages", "sharegpt", "support_csv", "prompt_response", "ranking", "pairwise")
ROLES = formats.ROLES


def open_text(path: Path, newline: str | None = None):
    """Text with BOM stripped and bad bytes replaced; gzip by extension."""
    raw = gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace", newline=newline)


def base_suffix(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    return suffixes[-1].lower() if suffixes else ""


# ----------------------------------------------------------------- JSON / JSONL rows
def iter_json_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(line number, object or BadRow) per row; for a .json array, the item's position."""
    with open_text(path) as f:
        if base_suffix(path) == ".json":
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise UnreadableFile(f"{path}: not valid JSON ({err.msg}, line {err.lineno})")
            yield from enumerate(data if isinstance(data, list) else [data], start=1)
            return
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            text = line.rstrip("\r\n")
            try:
                yield line_no, json.loads(text)
            except json.JSONDecodeError as err:
                yield line_no, _invalid_json(text, err)


class InvalidJson(BadRow):
    """A line that does not parse; it carries the line's text, so quarantine.jsonl keeps it."""

    def __init__(self, message: str, text: str):
        super().__init__(message, "invalid_json")
        self.text = text


def _invalid_json(text: str, err: json.JSONDecodeError) -> InvalidJson:
    """The reason names the real position. A line cut off mid-object fails where the text
    ends; parsed with its line end, json would call that "line 2 column 1"."""
    if err.pos >= len(text.rstrip()):
        return InvalidJson(f"not valid JSON: the line ends at column {len(text)} before the "
                           "JSON value is complete (cut off?); each line must be one whole "
                           "JSON object", text)
    return InvalidJson(f"not valid JSON ({err.msg} at column {err.colno})", text)


def role_of(name, role_map, field: str | None = None) -> str:
    where = f"`{field}`: " if field else ""
    if not isinstance(name, str):
        raise BadRow(f"{where}role {name!r} is not text", "wrong_type", field)
    role = role_map.get(name.strip().lower(), name.strip().lower())
    if role not in ROLES:
        raise BadRow(f"{where}unknown role {name!r}; map it with roles.{name.strip().lower()}="
                     "user|assistant|system", "unknown_role", field)
    return role


def messages_of(turns, where: str, role_key: str, text_key: str, role_map) -> list[dict]:
    """Turns with speaker names mapped to roles; the format's own rules come later."""
    if not isinstance(turns, list):
        raise BadRow(f"`{where}` must be a list of turns", "wrong_type", where)
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or role_key not in turn:
            raise BadRow(f"`{where}[{i}]` has no `{role_key}`", "missing_field", f"{where}[{i}]")
        out.append({"role": role_of(turn[role_key], role_map, f"{where}[{i}].{role_key}"),
                    "content": formats.check_text(turn.get(text_key),
                                                  f"{where}[{i}].{text_key}")})
    return out


def with_mapped_prompt(obj: dict, role_map) -> dict:
    """A ranking or pairwise row whose prompt messages use speaker names mapped to roles (a
    prompt given as text is one user turn: formats.check_prompt)."""
    if isinstance(obj.get("prompt"), list):
        return {**obj, "prompt": messages_of(obj["prompt"], "prompt", "role", "content",
                                             role_map)}
    return obj


def convert_json_row(fmt: str, obj, cfg) -> tuple[str, dict]:
    formats.check_object(obj)
    roles = cfg.roles
    if fmt == "messages":
        if "messages" not in obj:
            raise BadRow("no `messages` field", "missing_field", "messages")
        return CONVERSATION, {"messages": messages_of(obj["messages"], "messages", "role",
                                                      "content", roles)}
    if fmt == "sharegpt":
        if "conversations" not in obj:
            raise BadRow("no `conversations` field", "missing_field", "conversations")
        return CONVERSATION, {"messages": messages_of(obj["conversations"], "conversations",
                                                      "from", "value", roles)}
    if fmt == "prompt_response":
        cols = cfg.formats.prompt_response
        for col in (cols.prompt, cols.response):
            if col not in obj:
                raise BadRow(f"no `{col}` field", "missing_field", col)
        return CONVERSATION, {"messages": [
            {"role": "user", "content": formats.check_text(obj[cols.prompt], cols.prompt)},
            {"role": "assistant",
             "content": formats.check_text(obj[cols.response], cols.response)}]}
    if fmt == "ranking":
        return RANKING, formats.ranking_row(with_mapped_prompt(obj, roles))
    if fmt == "pairwise":
        return PAIR, formats.pair_row(with_mapped_prompt(obj, roles))
    raise ValueError(f"unknown format {fmt!r}")


def read_json_file(path: Path, fmt: str, cfg) -> Iterator[Record | Rejected]:
    source = sys.intern(str(path))  # one string shared by every record of the file
    for line_no, obj in iter_json_rows(path):
        try:
            if isinstance(obj, BadRow):
                raise obj
            kind, data = convert_json_row(fmt, obj, cfg)
            yield Record(kind, source, [line_no], data)
        except BadRow as err:
            raw = obj.text if isinstance(obj, InvalidJson) else obj
            yield Rejected(source, [line_no], str(err), raw, err.category, err.field)


# ----------------------------------------------------------------- CSV
def _csv_rows(path: Path) -> Iterator[tuple[int, dict]]:
    with open_text(path, newline="") as f:
        reader = csv.DictReader(f)
        for row in reader:
            yield reader.line_num, row


def _missing_columns(path: Path, needed: list[str]) -> tuple[list[str], list[str]]:
    with open_text(path, newline="") as f:
        header = next(csv.reader(f), [])
    return [c for c in needed if c not in header], header


def read_prompt_response_csv(path: Path, cols: dict) -> Iterator[Record | Rejected]:
    missing, header = _missing_columns(path, list(cols.values()))
    for line_no, row in _csv_rows(path):
        if missing:
            yield Rejected(str(path), [line_no], _missing_reason(missing, header,
                                                                 "prompt_response"), row,
                           "missing_column")
            continue
        yield Record(CONVERSATION, str(path), [line_no], {"messages": [
            {"role": "user", "content": row[cols["prompt"]] or ""},
            {"role": "assistant", "content": row[cols["response"]] or ""}]})


def _missing_reason(missing, header, fmt) -> str:
    return (f"column(s) {', '.join(missing)} missing (the file has: {', '.join(header)}); "
            f"name the right ones with formats.{fmt}.<field>=<column>")


def parse_timestamp(value: str) -> float:
    value = (value or "").strip()
    try:
        return float(value)
    except ValueError:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def read_support_csv(path: Path, cols: dict, cfg) -> Iterator[Record | Rejected]:
    """Utterance rows grouped into conversations in timestamp order (`cols`: field -> column).
    Grouping goes through an on-disk SQLite table, so memory stays bounded however large and
    interleaved the file is."""
    missing, header = _missing_columns(path, list(cols.values()))
    with tempfile.NamedTemporaryFile(suffix=".sqlite") as tmp:
        db = sqlite3.connect(tmp.name)
        db.execute("CREATE TABLE u (conv TEXT, ts REAL, line INT, speaker TEXT, text TEXT, "
                   "problem TEXT)")
        batch = []
        for line_no, row in _csv_rows(path):
            if missing:
                yield Rejected(str(path), [line_no], _missing_reason(missing, header,
                                                                     "support_csv"), row,
                               "missing_column")
                continue
            problem, ts = None, 0.0
            try:
                ts = parse_timestamp(row[cols["timestamp"]])
            except (ValueError, TypeError):
                problem = f"line {line_no}: timestamp {row[cols['timestamp']]!r} is not a " \
                          "number or an ISO date"
            batch.append((row[cols["conversation_id"]], ts, line_no, row[cols["speaker"]],
                           row[cols["text"]], problem))
            if len(batch) >= 10_000:
                db.executemany("INSERT INTO u VALUES (?,?,?,?,?,?)", batch)
                batch = []
        db.executemany("INSERT INTO u VALUES (?,?,?,?,?,?)", batch)
        db.execute("CREATE INDEX i ON u (conv, ts, line)")
        yield from _group_conversations(db, path, cfg)
        db.close()


def _group_conversations(db, path: Path, cfg) -> Iterator[Record | Rejected]:
    conv, turns = None, []
    rows = db.execute("SELECT conv, ts, line, speaker, text, problem FROM u "
                      "ORDER BY conv, ts, line")
    for row in rows:
        if row[0] != conv and turns:
            yield _conversation(conv, turns, path, cfg)
            turns = []
        conv = row[0]
        turns.append(row)
    if turns:
        yield _conversation(conv, turns, path, cfg)


def _conversation(conv, turns, path: Path, cfg) -> Record | Rejected:
    lines = [t[2] for t in turns]
    try:
        problems = [t[5] for t in turns if t[5]]
        if problems:
            raise BadRow(problems[0], "bad_timestamp")
        messages = []
        for _, _, line, speaker, text, _ in turns:
            try:
                messages.append({"role": role_of(speaker, cfg.roles), "content": text or ""})
            except BadRow as err:
                raise BadRow(f"line {line}: {err}", err.category, err.field) from None
        return Record(CONVERSATION, str(path), lines, {"messages": messages, "id": conv})
    except BadRow as err:
        return Rejected(str(path), lines, f"conversation {conv!r}: {err}",
                        [{"line": t[2], "speaker": t[3], "text": t[4]} for t in turns],
                        err.category, err.field)


# ----------------------------------------------------------------- dispatch
def read_file(path: Path, fmt, cfg) -> Iterator[Record | Rejected]:
    """The records of one file, read as `fmt` (a data_tools.detect.FileFormat: the format's
    name and, for CSV formats, the file's column for each field)."""
    try:
        if fmt.name == "support_csv":
            yield from read_support_csv(path, fmt.columns, cfg)
        elif fmt.name == "prompt_response" and base_suffix(path) == ".csv":
            yield from read_prompt_response_csv(path, fmt.columns)
        else:
            yield from read_json_file(path, fmt.name, cfg)
    except (OSError, EOFError, gzip.BadGzipFile, csv.Error) as err:
        raise UnreadableFile(f"{path}: cannot be read as {fmt.name} ({err})") from None
