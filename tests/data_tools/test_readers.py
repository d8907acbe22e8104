"""Every reader on small hand-made files, including encodings and compression."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from data_tools.detect import resolve_format
from data_tools.readers import read_file
from data_tools.records import CONVERSATION, PAIR, RANKING, Record, Rejected, UnreadableFile
from tests.data_tools.conftest import conv, write_jsonl


def read(path: Path, cfg, fmt="auto"):
    items = list(read_file(path, resolve_format(path, fmt, cfg), cfg))
    return [i for i in items if isinstance(i, Record)], [i for i in items if isinstance(i, Rejected)]


def test_openai_messages_jsonl_gzip(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "a.jsonl.gz", [conv("hi", "hello"), conv("q", "a")], gz=True)
    records, rejected = read(path, make_cfg())
    assert resolve_format(path, "auto", make_cfg()).name == "messages"
    assert [r.kind for r in records] == [CONVERSATION] * 2 and not rejected
    assert records[1].lines == [2] and records[1].data["messages"][0]["content"] == "q"


def test_sharegpt_json_and_jsonl(tmp_path, make_cfg):
    row = {"conversations": [{"from": "human", "value": "hey"}, {"from": "gpt", "value": "yo"}]}
    (tmp_path / "s.json").write_text(json.dumps([row, row]))
    write_jsonl(tmp_path / "s.jsonl", [row])
    for name, n in (("s.json", 2), ("s.jsonl", 1)):
        records, _ = read(tmp_path / name, make_cfg())
        assert len(records) == n
        assert records[0].data["messages"] == [{"role": "user", "content": "hey"},
                                               {"role": "assistant", "content": "yo"}]


def test_support_csv_grouped_in_timestamp_order_with_roles(tmp_path, make_cfg):
    # interleaved conversations, out of order, custom column names, CRLF and a BOM
    text = ("\ufeffcid;when;who;msg\r\n".replace(";", ",")
            + "A,2024-01-01T10:00:05Z,agent,second\r\n"
            + "B,2024-01-01T09:00:00Z,customer,other\r\n"
            + "A,2024-01-01T10:00:01Z,customer,first\r\n"
            + "B,2024-01-01T09:00:09Z,support,reply\r\n")
    path = tmp_path / "log.csv"
    path.write_bytes(text.encode("utf-8"))
    cfg = make_cfg(**{"formats.support_csv.conversation_id": "cid",
                      "formats.support_csv.timestamp": "when",
                      "formats.support_csv.speaker": "who", "formats.support_csv.text": "msg"})
    assert resolve_format(path, "auto", cfg).name == "support_csv"
    records, rejected = read(path, cfg)
    assert not rejected and len(records) == 2
    a = next(r for r in records if r.data["id"] == "A")
    assert a.data["messages"] == [{"role": "user", "content": "first"},
                                  {"role": "assistant", "content": "second"}]
    assert sorted(a.lines) == [2, 4]


def test_prompt_response_csv_and_jsonl(tmp_path, make_cfg):
    (tmp_path / "pr.csv").write_text('prompt,response\n"Hi, you",Hello\n')
    write_jsonl(tmp_path / "pr.jsonl", [{"prompt": "Q", "response": "A"}])
    for name in ("pr.csv", "pr.jsonl"):
        records, _ = read(tmp_path / name, make_cfg())
        assert records[0].data["messages"][1] == {"role": "assistant",
                                                  "content": "Hello" if name.endswith("csv") else "A"}
    assert read(tmp_path / "pr.csv", make_cfg())[0][0].data["messages"][0]["content"] == "Hi, you"


def test_ranking_with_scores_ranks_and_ties(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "r.jsonl", [
        {"prompt": "q", "responses": ["a", "b", "c"], "scores": [0.9, 0.1, 0.9]},
        {"prompt": [{"role": "user", "content": "q2"}],
         "responses": [{"role": "assistant", "content": "x"}, "y"], "ranks": [2, 1]},
        {"prompt": "q3", "responses": ["only one"]},
    ])
    records, rejected = read(path, make_cfg())
    assert [r.kind for r in records] == [RANKING, RANKING]
    assert records[0].data["ranks"] == [1, 2, 1]  # equal scores tie
    assert records[1].data["ranks"] == [2, 1]
    assert rejected[0].lines == [3] and "K >= 2" in rejected[0].reason


def test_pairwise(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "q", "chosen": "good",
                                                "rejected": [{"role": "assistant", "content": "bad"}],
                                                "margin": 2}])
    (record,), _ = read(path, make_cfg())
    assert record.kind == PAIR and record.data["rejected"]["content"] == "bad"
    assert record.data["margin"] == 2.0


def test_invalid_utf8_is_replaced_not_fatal(tmp_path, make_cfg):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"messages": [{"role": "user", "content": "caf\xe9"}, '
                     b'{"role": "assistant", "content": "ok"}]}\r\n')
    (record,), rejected = read(path, make_cfg())
    assert record.data["messages"][0]["content"] == "caf\ufffd" and not rejected


def test_bad_rows_are_rejected_with_precise_reasons(tmp_path, make_cfg):
    path = write_jsonl(tmp_path / "m.jsonl", [
        '{"messages": [',                                              # malformed JSON
        {"messages": [{"role": "user", "content": 7}]},                # wrong type
        {"messages": [{"role": "wizard", "content": "x"}]},           # unknown role
        {"text": "no messages"},                                       # missing field
        conv("fine", "yes"),
    ])
    records, rejected = read(path, make_cfg(), fmt="messages")
    assert len(records) == 1
    reasons = {r.lines[0]: (r.category, r.reason) for r in rejected}
    assert reasons[1][0] == "invalid_json"
    assert reasons[2] == ("wrong_type", "`messages[0].content` must be text, not int")
    assert reasons[3][0] == "unknown_role" and "roles.wizard=" in reasons[3][1]
    assert reasons[4] == ("missing_field", "no `messages` field")


def test_csv_with_missing_column_quarantines_every_row(tmp_path, make_cfg):
    path = tmp_path / "log.csv"
    path.write_text("conversation_id,speaker,text\nA,customer,hi\nA,agent,yo\n")
    records, rejected = read(path, make_cfg(), fmt="support_csv")
    assert not records and [r.lines for r in rejected] == [[2], [3]]
    assert "column(s) timestamp missing" in rejected[0].reason


def test_a_cut_off_line_is_reported_where_it_ends_not_at_column_1(tmp_path, make_cfg):
    cut = '{"messages": [{"role": "user", "content": "hi"'
    path = write_jsonl(tmp_path / "cut.jsonl", [conv("q", "a"), cut])
    _, (bad,) = read(path, make_cfg())
    assert bad.lines == [2] and bad.category == "invalid_json"
    assert f"the line ends at column {len(cut)}" in bad.reason and "column 1)" not in bad.reason
    assert bad.raw == cut  # the text itself goes to quarantine.jsonl, not null


SUPPORT_LOG = ("ticket,ts,who,message\n"
               "T1,2024-05-01T10:00:00Z,customer,Where is my order?\n"
               "T2,2024-05-01T10:00:30Z,Customer,Can I pay by invoice?\n"
               "T1,2024-05-01T10:01:10Z,agent,\"It ships tomorrow, from Oslo.\"\n"
               "T2,2024-05-01T10:02:00Z,agent,Yes: choose Invoice at checkout.\n")


EPOCH_LOG = ("message,who,ts,ticket,channel\n"  # numeric ids and times, one more column
             "Where is my order?,customer,1714557600,1001,chat\n"
             "Can I pay by invoice?,customer,1714557630,1002,chat\n"
             "\"It ships tomorrow, from Oslo.\",agent,1714557670,1001,chat\n"
             "Yes: choose Invoice at checkout.,agent,1714557720,1002,chat\n")


@pytest.mark.parametrize("log", [SUPPORT_LOG, EPOCH_LOG])
def test_a_support_log_with_other_column_names_is_detected_by_its_content(tmp_path, make_cfg,
                                                                          log):
    path = tmp_path / "tickets.csv"
    path.write_text(log)
    found = resolve_format(path, "auto", make_cfg())
    assert (found.name, found.chosen_by) == ("support_csv", "content")
    assert found.columns == {"conversation_id": "ticket", "timestamp": "ts", "speaker": "who",
                             "text": "message"}
    records, rejected = read(path, make_cfg())
    assert not rejected and [r.data["messages"][1]["content"] for r in records] == \
        ["It ships tomorrow, from Oslo.", "Yes: choose Invoice at checkout."]


@pytest.mark.parametrize("drop,missing", [("ts", "timestamp"), ("who", "speaker")])
def test_a_csv_of_unsure_shape_stops_with_the_support_csv_keys(tmp_path, make_cfg, drop,
                                                                missing):
    header = SUPPORT_LOG.splitlines()[0].split(",")
    keep = [i for i, col in enumerate(header) if col != drop]
    path = tmp_path / "tickets.csv"
    path.write_text("".join(",".join(row[i] for i in keep) + "\n" for row in
                            (line.split(",", 3) for line in SUPPORT_LOG.splitlines())))
    with pytest.raises(UnreadableFile) as err:
        resolve_format(path, "auto", make_cfg())
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "format: support_csv" in message
    assert f"formats.support_csv.{missing}=<column>" in message
    assert "formats.support_csv.text=message" in message  # what could be told is filled in
