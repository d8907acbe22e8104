"""Which format a file is, and which of its columns hold what: decided once per file, before
anything is read, and written to report.json (`files.<path>.format`, `.columns`, `.chosen_by`).

  inputs[].format given   that format, with the columns configured in `formats.*`
  .csv                    the configured support_csv columns, else the configured prompt_response
                          columns, else a support log recognised by its content: a speaker column
                          of names that map to roles, a timestamp column, a repeating id column
                          and a text column. When that is not clear, the run stops before reading
                          anything, with the `formats.support_csv.*` keys to set.
  JSON / JSONL            the keys of the first row that parses
"""

from __future__ import annotations

import csv
import itertools
from dataclasses import dataclass
from pathlib import Path

from data_tools.readers import (FORMATS, base_suffix, iter_json_rows, open_text,
                                parse_timestamp, role_of)
from data_tools.records import BadRow, UnreadableFile

SUPPORT_FIELDS = ("conversation_id", "timestamp", "speaker", "text")
SAMPLE_ROWS = 1000  # rows a CSV's content is judged on
MAX_SPEAKERS = 20  # a speaker column has few distinct values


@dataclass(frozen=True)
class FileFormat:
    name: str
    # field -> the file's column, for the formats that have columns (else None)
    columns: dict | None
    # inputs (given), header, content or first row
    chosen_by: str


def configured_columns(fmt: str, cfg) -> dict | None:
    if fmt == "support_csv":
        return {f: getattr(cfg.formats.support_csv, f) for f in SUPPORT_FIELDS}
    if fmt == "prompt_response":
        return {"prompt": cfg.formats.prompt_response.prompt,
                "response": cfg.formats.prompt_response.response}
    return None


def resolve_format(path: Path, fmt: str, cfg) -> FileFormat:
    if fmt != "auto":
        if fmt not in FORMATS:
            raise UnreadableFile(f"{path}: unknown format {fmt!r}; use one of auto, "
                                 + ", ".join(FORMATS))
        return FileFormat(fmt, configured_columns(fmt, cfg), "inputs")
    try:
        if base_suffix(path) == ".csv":
            return _detect_csv(path, cfg)
        first = _first_json_object(path)
    except (OSError, EOFError, csv.Error) as err:  # gzip.BadGzipFile is an OSError
        raise UnreadableFile(f"{path}: cannot be read ({err})") from None
    keys = set(first) if isinstance(first, dict) else set()
    for name, needed in (("messages", {"messages"}), ("sharegpt", {"conversations"}),
                         ("ranking", {"responses"}), ("pairwise", {"chosen", "rejected"})):
        if needed <= keys:
            return FileFormat(name, None, "first row")
    return FileFormat("prompt_response", configured_columns("prompt_response", cfg),
                      "first row")


def _first_json_object(path: Path):
    """The first row that parses decides the format (a malformed first line is a bad row)."""
    for _, obj in itertools.islice(iter_json_rows(path), 1000):
        if not isinstance(obj, BadRow):
            return obj
    return None


# ----------------------------------------------------------------- CSV
def _detect_csv(path: Path, cfg) -> FileFormat:
    with open_text(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, [])
        rows = list(itertools.islice(reader, SAMPLE_ROWS))
    for fmt in ("support_csv", "prompt_response"):
        columns = configured_columns(fmt, cfg)
        if set(columns.values()) <= set(header):
            return FileFormat(fmt, columns, "header")
    guess = support_columns_by_content(header, rows, cfg.roles)
    if len(guess) == len(SUPPORT_FIELDS):
        return FileFormat("support_csv", guess, "content")
    raise UnreadableFile(_unsure_hint(path, header, guess))


def support_columns_by_content(header: list[str], rows: list[list[str]], role_map) -> dict:
    """field -> column for each support-log field the sample shows clearly; a field it does
    not (none fits, or two fit equally) is left out. Each step takes its column out of the
    running, so a repeating speaker column is never also taken for the id."""
    values = {col: [r[i].strip() for r in rows if i < len(r) and r[i].strip()]
              for i, col in enumerate(header)}
    found: dict = {}
    left = [c for c in header if values[c]]

    def take(field: str, candidates: list[str]) -> None:
        if len(candidates) == 1:
            found[field] = candidates[0]
            left.remove(candidates[0])

    # names that map to roles (customer, agent, ...), few of them
    take("speaker", [c for c in left if len(set(values[c])) <= MAX_SPEAKERS
                     and _share(values[c], lambda v: _is_role(v, role_map)) >= 0.8])
    # every value a number or an ISO date. A numeric id parses too: ISO dates beat numbers,
    # and among numbers the column with most distinct values (ids repeat, times hardly)
    times = [c for c in left if _share(values[c], _is_time) == 1.0]
    iso = [c for c in times if _share(values[c], _is_number) == 0.0]
    take("timestamp", _most_distinct(iso or times, values))
    # the longest text on average, clearly longer than the next
    lengths = sorted(((_mean_length(values[c]), c) for c in left), reverse=True)
    if lengths and (len(lengths) == 1 or lengths[0][0] > 1.5 * lengths[1][0]):
        take("text", [lengths[0][1]])
    # a value on several rows, on every row; the one with most distinct values (a constant
    # column such as a channel has fewer)
    ids = [c for c in left if len(values[c]) == len(rows) and len(set(values[c])) < len(rows)]
    take("conversation_id", _most_distinct(ids, values))
    return found


def _most_distinct(columns: list[str], values: dict) -> list[str]:
    """The columns with the most distinct values (one, unless tied)."""
    most = max((len(set(values[c])) for c in columns), default=0)
    return [c for c in columns if len(set(values[c])) == most]


def _share(values: list[str], test) -> float:
    return sum(map(test, values)) / len(values)


def _is_role(value: str, role_map) -> bool:
    try:
        role_of(value, role_map)
        return True
    except BadRow:
        return False


def _is_number(value: str) -> bool:
    try:
        float(value)
        return True
    except ValueError:
        return False


def _is_time(value: str) -> bool:
    try:
        parse_timestamp(value)
        return True
    except (ValueError, TypeError):
        return False


def _mean_length(values: list[str]) -> float:
    return sum(map(len, values)) / len(values)


def _unsure_hint(path: Path, header: list[str], guess: dict) -> str:
    keys = " ".join(f"formats.support_csv.{f}={guess.get(f, '<column>')}"
                    for f in SUPPORT_FIELDS)
    unclear = ", ".join(f for f in SUPPORT_FIELDS if f not in guess)
    return (f"{path}: cannot tell this CSV's format (columns: {', '.join(header) or 'none'}; "
            f"as a support log, unclear: {unclear}); name it, e.g. inputs='[{{path: {path}, "
            f"format: support_csv}}]' {keys} (speaker names other than customer/agent need "
            "roles.<name>=user|assistant), or for question/answer columns "
            "formats.prompt_response.prompt=<column> formats.prompt_response.response=<column>")
