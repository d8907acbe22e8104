"""PII scrubbing: e-mail addresses, payment card numbers (Luhn-checked), IP addresses and
phone numbers in common international formats become typed placeholders (<EMAIL>, <CARD>,
<IP>, <PHONE>), counted per type.

Near misses stay: a 16-digit order number that fails the Luhn check, a plain run of digits
without phone punctuation, a date, a price or a version number.
"""

from __future__ import annotations

import re
from collections import Counter

EMAIL = re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
# 13-19 digits, optionally grouped by single spaces or dashes
CARD = re.compile(r"(?<![\d+-])\d(?:[ -]?\d){12,18}(?![\d-])")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
IPV4 = re.compile(rf"(?<![\d.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\d.])")
# full or "::"-compressed IPv6 with at least four groups (so clock times never match)
IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){3,7}[0-9A-Fa-f]{1,4}(?![\w:])|"
                  r"(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){1,6}:(?:[0-9A-Fa-f]{1,4}:?){1,6}(?![\w:])")
# a phone number needs an international prefix (+ or 00), a bracketed area code, or
# separators between digit groups; 7 to 15 digits in all (E.164)
PHONE = re.compile(
    r"(?<![\w+])(?:(?:\+|00)\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,8}){1,4}"
    r"(?![\w-])|(?<![\w+])\+\d{7,15}(?!\w)")
_DATE = re.compile(r"^\d{4}[-./]\d{1,2}[-./]\d{1,2}$|^\d{1,2}[-./]\d{1,2}[-./]\d{2,4}$")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum every payment card number satisfies (ISO/IEC 7812)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _is_phone(match: str) -> bool:
    digits = re.sub(r"\D", "", match)
    if not 7 <= len(digits) <= 15 or _DATE.match(match.strip()):
        return False
    has_prefix = match.startswith(("+", "00")) or "(" in match
    separators = len(re.findall(r"[ .-]", match))
    # "1.5 2.5" or "10 20" are numbers, not phones: ask for a prefix or 2+ separators
    return has_prefix or separators >= 2


def scrub(text: str, kinds: tuple[str, ...] = ("email", "card", "ip", "phone")
          ) -> tuple[str, Counter]:
    """Replace PII in `text`; returns the new text and the count per type."""
    counts: Counter = Counter()

    def sub(pattern, placeholder, kind, accept=lambda m: True):
        nonlocal text

        def repl(m):
            if accept(m.group(0)):
                counts[kind] += 1
                return placeholder
            return m.group(0)
        text = pattern.sub(repl, text)

    if "email" in kinds:
        sub(EMAIL, "<EMAIL>", "email")
    if "card" in kinds:
        sub(CARD, "<CARD>", "card", lambda m: luhn_valid(re.sub(r"\D", "", m)))
    if "ip" in kinds:
        sub(IPV4, "<IP>", "ip")
        sub(IPV6, "<IP>", "ip")
    if "phone" in kinds:
        sub(PHONE, "<PHONE>", "phone", _is_phone)
    return text, counts
