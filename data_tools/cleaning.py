"""Per-record cleaning, each step switchable in config (`clean.*`, `pii.*`) and counted:
unicode/whitespace normalisation, HTML cleanup, merging consecutive same-role turns,
dropping empty turns, role-order checks, token-length limits and PII scrubbing.

The last check of every record is its training format's (data_tools/formats.py, the same code
the stages load their data with), after every rewrite: cleaning or PII scrubbing can make an
answer blank or two answers the same, and such a record is quarantined here, not in a stage.

`clean_record` is a pure function of one record, so the pipeline runs it in worker processes.
"""

from __future__ import annotations

import html
import re
import unicodedata
from collections import Counter

from data_tools import formats
from data_tools.pii import scrub
from data_tools.records import CONVERSATION, PAIR, RANKING, BadRow, Record, Rejected

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SPACES = re.compile(r"[ \t\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>")
_BREAK_TAG = re.compile(r"<br\s*/?>|</p\s*>", re.I)


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text)
    text = "\n".join(_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


def strip_html(text: str) -> str:
    text = _BREAK_TAG.sub("\n", text)
    return html.unescape(_TAG.sub("", text))


def _texts(record: Record) -> list[dict]:
    """The message dicts of a record whose `content` cleaning may rewrite."""
    d = record.data
    if record.kind == CONVERSATION:
        return d["messages"]
    if record.kind == RANKING:
        return d["prompt"] + d["responses"]
    return d["prompt"] + [d["chosen"], d["rejected"]]


def _rewrite(record: Record, fn, counter: Counter, step: str) -> None:
    changed = False
    for msg in _texts(record):
        new = fn(msg["content"])
        if new != msg["content"]:
            msg["content"], changed = new, True
    if changed:
        counter[step] += 1


def merge_same_role(messages: list[dict]) -> tuple[list[dict], int]:
    merged: list[dict] = []
    for msg in messages:
        if merged and merged[-1]["role"] == msg["role"]:
            merged[-1] = {"role": msg["role"],
                          "content": f"{merged[-1]['content']}\n\n{msg['content']}".strip()}
        else:
            merged.append(dict(msg))
    return merged, len(messages) - len(merged)


def check_role_order(messages: list[dict]) -> None:
    """system? then user/assistant alternating, starting with user. (How a conversation must
    end is the format's rule: `check_format`.)"""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    if not turns:
        raise BadRow("the conversation has no user or assistant turn", "empty", "messages")
    for i, msg in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if msg["role"] != expected:
            raise BadRow(f"turn {i + 1} is {msg['role']!r} where {expected!r} was expected "
                         "(turns must alternate user/assistant, starting with the user)",
                         "role_order", "messages")


def clean_conversation(record: Record, cfg, counter: Counter) -> None:
    messages = record.data["messages"]
    if cfg.clean.drop_empty_turns:
        kept = [m for m in messages if m["content"].strip()]
        if len(kept) != len(messages):
            counter["empty_turns_dropped"] += len(messages) - len(kept)
        messages = kept
    if cfg.clean.merge_same_role:
        messages, merged = merge_same_role(messages)
        counter["turns_merged"] += merged
    record.data["messages"] = messages
    if cfg.clean.check_role_order:
        check_role_order(messages)


def check_format(record: Record, cfg) -> None:
    """The record in its training format's normal form, or BadRow: formats.py's rules, the
    ones every stage applies. A conversation ending with a user turn (kept only with
    clean.require_final_assistant=false) must be a valid prompt: it is written to prompts/
    but not to sft/."""
    d = record.data
    if record.kind == CONVERSATION:
        messages = d["messages"]
        if messages and messages[-1]["role"] != "assistant" and \
                not cfg.clean.require_final_assistant:
            d["messages"] = formats.check_prompt(messages, "messages")
        else:
            d["messages"] = formats.sft_row(d)["messages"]
    elif record.kind == RANKING:
        record.data = formats.ranking_row(d)
    elif record.kind == PAIR:
        record.data = formats.pair_row(d)


def pii_kinds(cfg) -> tuple[str, ...]:
    """The PII kinds `pii.*` switches on (none when pii.enabled is false)."""
    if not cfg.pii.enabled:
        return ()
    return tuple(k for k in ("email", "card", "ip", "phone") if getattr(cfg.pii, k))


def scrub_value(value, kinds: tuple[str, ...]):
    """Every string in a JSON-like value scrubbed, keys included: a rejected row may be any
    shape (a CSV row, a half-cleaned record, the text of a line that does not parse)."""
    if isinstance(value, str):
        return scrub(value, kinds)[0]
    if isinstance(value, dict):
        return {scrub_value(k, kinds): scrub_value(v, kinds) for k, v in value.items()}
    if isinstance(value, list):
        return [scrub_value(v, kinds) for v in value]
    return value


def scrub_rejected(rejected: Rejected, cfg) -> Rejected:
    """A rejected row as scrubbed as a kept one before it is written to quarantine.jsonl: its
    row, and the values its reason quotes (a speaker name can be an e-mail address). Source,
    line and field are left as they are, so the row can still be found in its file; the
    positions a reason gives are the source file's."""
    if kinds := pii_kinds(cfg):
        rejected.raw = scrub_value(rejected.raw, kinds)
        rejected.reason = scrub(rejected.reason, kinds)[0]
    return rejected


def token_count(record: Record, tokenizer) -> int:
    return sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"])
               for m in _texts(record))


def clean_record(record: Record, cfg, tokenizer=None) -> tuple[Record | Rejected, Counter]:
    """Clean one record; a record that cannot be used comes back as Rejected."""
    counter: Counter = Counter()
    try:
        if cfg.clean.html:
            _rewrite(record, strip_html, counter, "html_cleaned")
        if cfg.clean.unicode:
            _rewrite(record, normalise_text, counter, "unicode_normalised")
        if record.kind == CONVERSATION:
            clean_conversation(record, cfg, counter)
        if kinds := pii_kinds(cfg):
            for msg in _texts(record):
                msg["content"], found = scrub(msg["content"], kinds)
                record.pii.update(found)
        check_format(record, cfg)  # last: after every rewrite of the texts
        if tokenizer is not None and cfg.clean.max_tokens:
            n = token_count(record, tokenizer)
            record.data["num_tokens"] = n
            if n > cfg.clean.max_tokens:
                raise BadRow(f"{n} tokens, more than clean.max_tokens={cfg.clean.max_tokens}",
                             "too_long")
        return record, counter
    except BadRow as err:
        return Rejected(record.source, record.lines, str(err), record.data, err.category,
                        err.field), counter


def record_text(record: Record) -> str:
    """The whole record as one normalised string: what duplicates are judged on."""
    parts = [f"{m['role']}: {m['content']}" for m in _texts(record)]
    return re.sub(r"\s+", " ", "\n".join(parts).lower()).strip()


def first_user_text(record: Record) -> str:
    """The split key: the first user message, so a prompt never lands in two splits."""
    messages = record.data["messages"] if record.kind == CONVERSATION else record.data["prompt"]
    for m in messages:
        if m["role"] == "user":
            return re.sub(r"\s+", " ", m["content"].lower()).strip()
    return ""
