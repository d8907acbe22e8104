"""The whole `rlhf-data` run: a mixed folder in, training sets out, nothing lost."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from data_tools.prepare import PrepareError, prepare
from tests.data_tools.conftest import conv, read_jsonl, write_jsonl


def _head(src, dst, n: int) -> None:
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(itertools.islice(f, n)), encoding="utf-8")


@pytest.fixture
def mixed_folder(tmp_path, cache_dir):
    raw = tmp_path / "raw"
    raw.mkdir()
    demo = cache_dir / "demo_data"
    # a few hundred rows of the demo data (all of it, 7,000 rows, took 3-4 s per prepare)
    _head(demo / "sft_train.jsonl", raw / "demo_sft.jsonl", 400)
    _head(demo / "rankings_train.jsonl", raw / "demo_rankings.jsonl", 300)
    write_jsonl(raw / "extra.jsonl", [
        conv("Where is my order?", "Mail orders@shop.example for help."),
        conv("Where is my order?", "Mail orders@shop.example for help."),     # exact duplicate
        conv("where is my  order?", "Mail  orders@shop.example for help."),   # same once normalised
        '{"messages": [}',                                                     # malformed
        {"messages": []},                                                      # empty
        # good rows, so that the file stays within max_bad_share (0.5, per file too)
        *(conv(f"Can I return item {i}?", f"Yes, within {i + 10} days.") for i in range(4)),
    ])
    (raw / "log.csv").write_text(
        "conversation_id,timestamp,speaker,text\n"
        "c1,1,customer,My card 4111 1111 1111 1111 was charged twice\n"
        "c1,2,agent,Sorry! I refunded it. Call +1-202-555-0143 if not.\n"
        "c2,1,customer,hello\nc2,2,operator,hi\n")
    write_jsonl(raw / "pairs.jsonl", [{"prompt": "Hi", "chosen": "Hello!", "rejected": "What."},
                                      {"prompt": "Hi", "chosen": "Same", "rejected": "Same"}])
    (raw / "empty.jsonl").write_text("")
    return raw


def test_mixed_folder_to_training_sets(mixed_folder, make_cfg, tmp_path):
    cfg = make_cfg(inputs=[{"path": str(mixed_folder), "format": "auto"}], save_datasets=True,
                   num_proc=2)
    summary = prepare(cfg)
    out = tmp_path / "out"
    assert summary["rows_read"] == summary["rows_kept"] + summary["rows_quarantined"]
    quarantined = read_jsonl(out / "quarantine.jsonl")
    assert sum(len(q["line"]) if isinstance(q["line"], list) else 1 for q in quarantined) == \
        summary["rows_quarantined"]
    by_reason = summary["dropped_by_reason"]
    assert by_reason["invalid_json"] == 1 and by_reason["empty"] == 1
    assert by_reason["unknown_role"] == 2  # both rows of conversation c2 ("operator")
    assert by_reason["pair_identical"] == 1 and by_reason["duplicate_exact"] >= 2
    assert summary["pii_replaced"] == {"email": 1, "card": 1, "phone": 1}
    sft = read_jsonl(out / "sft" / "train.jsonl") + read_jsonl(out / "sft" / "eval.jsonl")
    assert any("<CARD>" in m["content"] for row in sft for m in row["messages"])
    # rankings kept as they are and expanded into pairs (K=4, ties skipped)
    rankings = read_jsonl(out / "rankings" / "train.jsonl")
    assert rankings and all(len(r["responses"]) == 4 for r in rankings)
    assert summary["outputs"]["pairs"]["train"] >= 5 * len(rankings)
    assert (out / "datasets" / "sft").is_dir() and (out / "report.json").exists()
    assert summary["files"][str(mixed_folder / "empty.jsonl")]["rows_read"] == 0


def test_outputs_load_in_our_stages_and_trl(mixed_folder, make_cfg, tmp_path, cache_dir):
    import datasets
    from transformers import AutoTokenizer
    from trl.data_utils import apply_chat_template, is_conversational

    from rlhf.data.loading import load_conversations, load_prompts

    prepare(make_cfg(inputs=[{"path": str(mixed_folder), "format": "auto"}],
                     save_datasets=True))
    out = tmp_path / "out"
    assert len(load_conversations(str(out / "sft" / "train.jsonl"))) > 100
    assert len(load_prompts(str(out / "prompts" / "train.jsonl"))) > 100
    assert len(load_conversations(str(out / "datasets" / "sft" / "train"))) > 100
    tokenizer = AutoTokenizer.from_pretrained(cache_dir / "demo_tiny")
    pair = datasets.load_from_disk(str(out / "datasets" / "pairs"))["train"][0]
    assert is_conversational(pair)
    rendered = apply_chat_template(pair, tokenizer)  # TRL's own preference-format handling
    assert rendered["prompt"].endswith("<|assistant|>\n") and rendered["chosen"].endswith("\n")


def test_split_is_deterministic_and_no_prompt_crosses_splits(mixed_folder, make_cfg, tmp_path):
    cfg = make_cfg(inputs=[{"path": str(mixed_folder), "format": "auto"}],
                   **{"split.eval": 0.2, "split.test": 0.1})
    prepare(cfg)
    first = {s: (tmp_path / "out" / "sft" / f"{s}.jsonl").read_text()
             for s in ("train", "eval", "test")}
    prepare(cfg)  # a re-run gives the same split
    assert first == {s: (tmp_path / "out" / "sft" / f"{s}.jsonl").read_text() for s in first}
    seen = {}
    for name in ("sft", "rankings", "pairs", "prompts"):
        for split in ("train", "eval", "test"):
            for row in read_jsonl(tmp_path / "out" / name / f"{split}.jsonl"):
                msgs = row["messages"] if name == "sft" else row["prompt"]
                key = next(m["content"] for m in msgs if m["role"] == "user").lower()
                assert seen.setdefault(key, split) == split, key
    assert {"train", "eval", "test"} == set(seen.values())


def test_near_duplicates_are_caught(make_cfg, tmp_path):
    base = ("Our premium kettle boils water quickly and quietly and it keeps the water hot for "
            "two hours after boiling, which customers love in winter.")
    raw = write_jsonl(tmp_path / "n.jsonl", [conv("Tell me about the kettle", base),
                                             conv("Tell me about the kettle", base + " Really."),
                                             conv("What about the lamp?", "It is bright.")])
    summary = prepare(make_cfg(inputs=[{"path": str(raw)}], **{"dedup.threshold": 0.8}))
    assert summary["dropped_by_reason"] == {"duplicate_near": 1}
    (q,) = read_jsonl(tmp_path / "out" / "quarantine.jsonl")
    assert q["line"] == 2 and f"{raw}:1" in q["reason"]


def test_too_many_bad_rows_fails_in_one_line_after_writing_everything(make_cfg, tmp_path):
    raw = write_jsonl(tmp_path / "bad.jsonl", ["nope", "nope", conv("q", "a")])
    with pytest.raises(PrepareError, match=r"bad.jsonl: 67% of its 3 rows were quarantined, "
                                           r"more than max_bad_share=0.5; the first, line 1: "):
        prepare(make_cfg(inputs=[{"path": str(raw)}]))
    assert len(read_jsonl(tmp_path / "out" / "quarantine.jsonl")) == 2


def test_unreadable_file_stops_the_run(make_cfg, tmp_path, run_cli):
    (tmp_path / "broken.json").write_text("{ this is not json")
    result = run_cli([f"inputs=[{{path: {tmp_path}/broken.json}}]", f"out_dir={tmp_path}/o",
                      f"hydra.run.dir={tmp_path}/run"], cwd=tmp_path, module="data_tools.cli")
    assert result.returncode == 1
    assert result.output.strip().splitlines()[-1].startswith(
        f"rlhf-data: error: {tmp_path}/broken.json: not valid JSON")
    assert not (tmp_path / "o").exists()  # nothing half-written


def test_cli_prints_the_summary(make_cfg, tmp_path, run_cli):
    raw = write_jsonl(tmp_path / "a.jsonl", [conv("q", "a"), conv("q", "a")])
    result = run_cli([f"inputs=[{{path: {raw}}}]", f"out_dir={tmp_path}/o",
                      f"hydra.run.dir={tmp_path}/run", "save_datasets=false"],
                     cwd=tmp_path, module="data_tools.cli")
    assert result.returncode == 0, result.output
    assert "rows read 2, kept 1, quarantined 1" in result.output
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["dropped_by_reason"] == {"duplicate_exact": 1}



def test_report_counts_rows_read_kept_and_quarantined_per_file(make_cfg, tmp_path):
    a = write_jsonl(tmp_path / "a.jsonl", [conv("q1", "a1"), conv("q2", "a2"), "nope"])
    b = write_jsonl(tmp_path / "b.jsonl", [conv("q1", "a1"), conv("q3", "a3")])  # 1 dup of a
    summary = prepare(make_cfg(inputs=[{"path": str(a)}, {"path": str(b)}]))
    files = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    counts = {Path(f).name: (v["rows_read"], v["rows_kept"], v["rows_quarantined"])
              for f, v in files.items()}
    assert counts == {"a.jsonl": (3, 2, 1), "b.jsonl": (2, 1, 1)}
    assert sum(c[0] for c in counts.values()) == summary["rows_read"]


def test_quarantined_rows_are_scrubbed_of_pii_like_kept_rows(make_cfg, tmp_path):
    email, card, ip = "jane.doe@example.com", "4111 1111 1111 1111", "192.168.0.12"
    raw = write_jsonl(tmp_path / "pii.jsonl", [
        conv("q", "a"),
        f'{{"messages": [{{"role": "user", "content": "I am {email}"',           # cut off
        {"messages": [{"role": "wizard", "content": f"card {card}"}]},          # unknown role
        {"messages": [{"role": "assistant", "content": f"from {ip}"},           # role order
                      {"role": "user", "content": email}]},
    ])
    (tmp_path / "log.csv").write_text("conversation_id,timestamp,speaker,text\n"
                                      f"c1,1,{email},my card is {card}\n")     # speaker unknown
    prepare(make_cfg(inputs=[{"path": str(raw)}, {"path": str(tmp_path / "log.csv")}],
                     max_bad_share=1.0))
    text = (tmp_path / "out" / "quarantine.jsonl").read_text()
    assert email not in text and card not in text and ip not in text
    assert "<EMAIL>" in text and "<CARD>" in text and "<IP>" in text
    rows = read_jsonl(tmp_path / "out" / "quarantine.jsonl")
    # where and why stay exact: source, line, field, category, and the position in the reason
    assert [(q["line"], q["category"], q["field"]) for q in rows] == [
        (2, "invalid_json", None), (3, "unknown_role", "messages[0].role"),
        (4, "role_order", "messages"), (2, "unknown_role", None)]
    cut = (tmp_path / "pii.jsonl").read_text().splitlines()[1]
    assert f"the line ends at column {len(cut)}" in rows[0]["reason"]
    assert rows[0]["row"] == cut.replace(email, "<EMAIL>")


def test_a_support_log_is_read_by_content_and_report_names_format_and_columns(make_cfg,
                                                                               tmp_path):
    from tests.data_tools.test_readers import SUPPORT_LOG

    (tmp_path / "tickets.csv").write_text(SUPPORT_LOG)
    good = write_jsonl(tmp_path / "good.jsonl", [conv(f"q{i}", f"a{i}") for i in range(20)])
    summary = prepare(make_cfg(inputs=[{"path": str(tmp_path / "tickets.csv")},
                                       {"path": str(good)}]))
    assert summary["rows_quarantined"] == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())["files"]
    assert report[str(tmp_path / "tickets.csv")] == {
        "format": "support_csv", "chosen_by": "content",
        "columns": {"conversation_id": "ticket", "timestamp": "ts", "speaker": "who",
                    "text": "message"},
        "rows_read": 4, "rows_kept": 4, "rows_quarantined": 0}
    assert report[str(good)]["format"] == "messages"


def test_max_bad_share_applies_to_each_file_as_well_as_overall(make_cfg, tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [conv(f"q{i}", f"a{i}") for i in range(20)])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "answer": "a"}] * 3)
    with pytest.raises(PrepareError) as err:  # 3 of 23 rows overall, but all of bad.jsonl
        prepare(make_cfg(inputs=[{"path": str(good)}, {"path": str(bad)}]))
    message = str(err.value)
    assert message.startswith(f"{bad}: 100% of its 3 rows were quarantined, more than "
                              "max_bad_share=0.5; the first, line 1: no `prompt` field")
    assert len(read_jsonl(tmp_path / "out" / "quarantine.jsonl")) == 3  # written all the same


def test_near_duplicates_by_spacing_and_punctuation_are_caught_at_the_default_threshold(
        make_cfg, tmp_path):
    answer = ("Sure, the kettle ships in 4 days, and returns are free for 30 days. Anything "
              "else I can help with today?")
    respaced = answer.replace(",", " ,").replace(".", " .").replace("?", " ?")
    unpunctuated = answer.replace(",", "").replace(".", ";")
    raw = write_jsonl(tmp_path / "n.jsonl", [conv("When does the kettle ship?", answer),
                                             conv("When does the kettle ship ?", respaced),
                                             conv("When does the kettle ship", unpunctuated),
                                             conv("What about the lamp?", "It ships in 6 days.")])
    summary = prepare(make_cfg(inputs=[{"path": str(raw)}]))
    assert summary["dropped_by_reason"] == {"duplicate_near": 2}
    assert [q["line"] for q in read_jsonl(tmp_path / "out" / "quarantine.jsonl")] == [2, 3]


def test_dedup_benchmark_catches_every_spacing_and_punctuation_copy(tmp_path, make_cfg):
    from benchmarks.dedup_threshold import generated_rows, measure

    threshold = make_cfg().dedup.threshold
    result = measure(generated_rows(200), 0.2, [threshold], tmp_path)[threshold]
    assert result["copies"] == int(0.2 * result["distinct_rows"])
    # only spacing and punctuation changed: the same words, so the same shingles
    assert result["recall_by_kind"]["spacing"] == result["recall_by_kind"]["punctuation"] == 1.0
    assert 0.0 <= result["precision"] <= 1.0 and 0.0 <= result["recall"] <= 1.0
