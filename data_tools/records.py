"""What readers produce and the pipeline passes along: normalised records and rejections.

Every input row ends up in exactly one of them, so `rows read = rows kept + rows
quarantined` can be checked for every run. A record built from several input rows (a
conversation from a support-log CSV) carries all their line numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# a row that cannot be used, with its reason (raised by the format checks too)
from data_tools.formats import BadRow  # noqa: F401

# record kinds
CONVERSATION = "conversation"  # messages: [{role, content}, ...]
RANKING = "ranking"  # prompt: messages, responses: [assistant message], ranks / scores
PAIR = "pair"  # prompt: messages, chosen / rejected: assistant message, margin


@dataclass
class Record:
    kind: str
    source: str
    lines: list[int]
    data: dict
    # set by cleaning: counts of the PII placeholders put in, summed over the messages (a
    # Counter: its update() adds, where a dict's would keep only the last message's count)
    pii: Counter = field(default_factory=Counter)

    @property
    def rows(self) -> int:
        return len(self.lines)


@dataclass
class Rejected:
    source: str
    lines: list[int]
    reason: str
    raw: object = None
    # short key for the report's "dropped by reason" table
    category: str = "invalid_row"
    # the field at fault (e.g. `ranks`), when one is
    field: str | None = None

    @property
    def rows(self) -> int:
        return len(self.lines)

    def as_dict(self) -> dict:
        return {"source": self.source, "line": self.lines[0] if len(self.lines) == 1
                else self.lines, "category": self.category, "field": self.field,
                "reason": self.reason, "row": self.raw}


class UnreadableFile(Exception):
    """A whole file cannot be read (not the format it claims, corrupt gzip, ...)."""
