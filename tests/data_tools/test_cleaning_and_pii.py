"""Each cleaning step and the PII scrubber on small hand-made inputs, with hand-checked
outputs (including near misses that must not be scrubbed)."""

from __future__ import annotations

import pytest

from data_tools.cleaning import clean_record, normalise_text, strip_html
from data_tools.convert import ranking_pairs
from data_tools.pii import luhn_valid, scrub
from data_tools.records import CONVERSATION, Record, Rejected


def record(*turns, kind=CONVERSATION):
    return Record(kind, "f.jsonl", [1], {"messages": [{"role": r, "content": c} for r, c in turns]})


def test_unicode_and_whitespace():
    assert normalise_text("ﬁne\u00a0 thing\t\tok\r\n\n\n\nnext\x07") == "fine thing ok\n\nnext"


def test_html_entities_and_tags():
    assert strip_html("Tom &amp; Jerry<br/><b>bold</b> &lt;3 a < b") == "Tom & Jerry\nbold <3 a < b"


def test_merge_same_role_and_drop_empty_turns(make_cfg):
    rec = record(("user", "Hi"), ("user", "anyone?"), ("assistant", "  "), ("assistant", "Yes"))
    out, counts = clean_record(rec, make_cfg())
    assert out.data["messages"] == [{"role": "user", "content": "Hi\n\nanyone?"},
                                    {"role": "assistant", "content": "Yes"}]
    assert counts["turns_merged"] == 1 and counts["empty_turns_dropped"] == 1


def test_steps_can_be_switched_off(make_cfg):
    rec = record(("user", "a &amp; b"), ("user", "c"), ("assistant", "d"))
    out, _ = clean_record(rec, make_cfg(**{"clean.html": False, "clean.merge_same_role": False,
                                           "clean.check_role_order": False}))
    assert [m["content"] for m in out.data["messages"]] == ["a &amp; b", "c", "d"]


@pytest.mark.parametrize("turns,reason", [
    ([("assistant", "Hello"), ("user", "hi")], "turn 1 is 'assistant' where 'user'"),
    ([("user", "Hi")], "`messages` ends with a 'user' turn"),
    ([("user", "   ")], "no user or assistant turn"),
])
def test_role_order(make_cfg, turns, reason):
    out, _ = clean_record(record(*turns), make_cfg())
    assert isinstance(out, Rejected) and reason in out.reason


def test_token_length_limit_uses_the_model_tokenizer(make_cfg, cache_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(cache_dir / "demo_tiny")
    cfg = make_cfg(**{"clean.max_tokens": 12})
    short, _ = clean_record(record(("user", "How much is it?"), ("assistant", "It costs $49.")),
                            cfg, tokenizer)
    assert isinstance(short, Record) and short.data["num_tokens"] <= 12
    long, _ = clean_record(record(("user", "How much is it? " * 5), ("assistant", "ok")),
                           cfg, tokenizer)
    assert isinstance(long, Rejected) and long.category == "too_long"


@pytest.mark.parametrize("text,expected,kind", [
    ("write to jane.doe@example.com now", "write to <EMAIL> now", "email"),
    ("card 4111 1111 1111 1111", "card <CARD>", "card"),
    ("card 5500-0000-0000-0004", "card <CARD>", "card"),
    ("call +44 20 7946 0958", "call <PHONE>", "phone"),
    ("call (555) 123-4567", "call <PHONE>", "phone"),
    ("call 0049 30 1234567", "call <PHONE>", "phone"),
    ("call +4915112345678", "call <PHONE>", "phone"),
    ("from 192.168.0.12 today", "from <IP> today", "ip"),
    ("from 2001:db8::8a2e:370:7334", "from <IP>", "ip"),
])
def test_pii_is_scrubbed(text, expected, kind):
    out, counts = scrub(text)
    assert out == expected and counts == {kind: 1}


@pytest.mark.parametrize("text", [
    "order 4111111111111112 is on its way",   # 16 digits, fails Luhn: an order number
    "order number 1234567812345678",
    "ref 5551234567",                          # a bare digit run is not a phone
    "on 2024-01-15 at 12:30:45",               # a date and a time
    "version 1.2.3 costs $49 for 2 years",
    "ip 999.1.1.1 is not an address",
    "scores 10 20 30",
])
def test_near_misses_are_not_scrubbed(text):
    assert scrub(text) == (text, {})


def test_luhn():
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")


def test_ranking_to_pairs_all_and_adjacent_with_ties_and_margins():
    msg = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    ranking = {"prompt": [{"role": "user", "content": "q"}],
               "responses": [msg("a"), msg("b"), msg("c"), msg("d")],
               "ranks": [1, 2, 2, 3], "scores": [1.0, 0.5, 0.5, 0.25]}
    pairs = ranking_pairs(ranking, "all")
    # C(4,2) = 6 pairs minus the b/c tie
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == \
        [("a", "b"), ("a", "c"), ("a", "d"), ("b", "d"), ("c", "d")]
    assert [p["margin"] for p in pairs] == [0.5, 0.5, 0.75, 0.25, 0.25]
    adjacent = ranking_pairs(ranking, "adjacent")
    assert [(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in adjacent] == \
        [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]


def test_pii_counts_add_up_over_the_messages_of_a_record(make_cfg):
    # the same kind in two messages: 2 e-mails, not 1 (a dict.update overwrote the count)
    rec = record(("user", "I am a@x.example, cc b@x.example"), ("assistant", "Mail c@x.example"))
    out, _ = clean_record(rec, make_cfg())
    assert isinstance(out, Record) and out.pii == {"email": 3}
