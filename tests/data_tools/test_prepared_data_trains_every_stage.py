"""What `rlhf-data` writes, every stage trains on: a mixed folder (six input formats) with ties,
K = 1 and all-tied rankings and bad rows goes through `rlhf-data`; the bad rows land in
quarantine.jsonl with their reasons, and stage=sft, rm (K-wise and pairwise), dpo and grpo
train on the output for a few steps each, in this process (`run_stage` in tests/conftest.py:
a composed config and the stage's `run(cfg)`, as `rlhf` does after composing)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest

from data_tools.prepare import prepare
from tests.data_tools.conftest import conv, read_jsonl, write_jsonl

Q = [{"role": "user", "content": "Which plan suits a small team?"}]


def _head(src: Path, dst: Path, n: int) -> None:
    with open(src, encoding="utf-8") as f:
        dst.write_text("".join(itertools.islice(f, n)), encoding="utf-8")


@pytest.fixture
def mixed_folder(tmp_path, cache_dir) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    demo = cache_dir / "demo_data"
    _head(demo / "sft_train.jsonl", raw / "demo_sft.jsonl", 120)             # messages
    _head(demo / "rankings_train.jsonl", raw / "demo_rankings.jsonl", 120)   # K = 4, scores
    (raw / "chats.json").write_text(json.dumps([                              # sharegpt
        {"conversations": [{"from": "human", "value": "Do you ship to Norway?"},
                           {"from": "gpt", "value": "Yes, within five working days."}]}]))
    (raw / "log.csv").write_text(                                             # support_csv
        "conversation_id,timestamp,speaker,text\n"
        "c1,1,customer,Can I change my delivery address?\n"
        "c1,2,agent,Yes: open the order and choose Edit address.\n"
        "c2,1,customer,hello\nc2,2,operator,hi\n")                           # unknown role
    (raw / "faq.csv").write_text("prompt,response\n"                          # prompt_response
                                 "How do I reset my password?,Use the link on the login page.\n")
    write_jsonl(raw / "pairs.jsonl", [                                        # pairwise
        {"prompt": "Is the lamp dimmable?", "chosen": "Yes, in three steps.",
         "rejected": "Lamps are lamps.", "margin": 1.5},
        {"prompt": "Is the lamp dimmable?", "chosen": "Same", "rejected": "Same"}])
    write_jsonl(raw / "rankings.jsonl", [                                     # ranking
        {"prompt": Q, "responses": ["Team plan.", "The team plan, $5 a seat.", "Dunno."],
         "ranks": [1, 1, 2]},                                                 # ties: kept
        {"prompt": "Can I pay by invoice?", "responses": ["Yes."]},           # K = 1
        {"prompt": "Do you have a student discount?",
         "responses": ["Yes, 20%.", "Yes, twenty percent."], "ranks": [1, 1]},  # all tied
        {"prompt": "Is there a free trial?",
         "responses": ["Yes, 14 days.", "Yes: two weeks."], "scores": [0.5, 0.5]},  # all tied
        {"prompt": "Can I cancel any time?", "responses": ["Yes.", "No."],
         "ranks": [1, 2], "scores": [0.1, 0.9]},                             # contradiction
        '{"prompt": "broken", "responses": [',                                # not JSON
    ])
    write_jsonl(raw / "extra.jsonl", [conv("Where is my order?", "It left today."),
                                      {"messages": [{"role": "user", "content": "Hello?"}]}])
    return raw


# debug=tiny's 4 steps, on a few short rows each: the point is that every stage accepts the data
SMALL = ["debug=tiny", "debug.max_eval_rows=8", "stage.global_batch_size=4",
         "stage.per_device_batch_size=4"]


def test_rlhf_data_output_trains_sft_rm_dpo_and_grpo(mixed_folder, make_cfg, tmp_path,
                                                     run_stage):
    from rlhf.data.loading import load_conversations, load_prompts
    from rlhf.data.rankings import load_pairs, load_rankings

    out = tmp_path / "out"
    # rankings.jsonl is bad rows but one, on purpose: max_bad_share (per file too) is not the
    # point here
    summary = prepare(make_cfg(inputs=[{"path": str(mixed_folder)}], num_proc=0,
                               max_bad_share=1.0, **{"split.eval": 0.25}))
    assert summary["rows_read"] == summary["rows_kept"] + summary["rows_quarantined"]
    dropped = summary["dropped_by_reason"]
    assert dropped["ranking_needs_two_responses"] == 1 and dropped["ranking_all_tied"] == 2
    assert dropped["ranking_ranks_contradict_scores"] == 1 and dropped["pair_identical"] == 1
    assert dropped["invalid_json"] == 1 and dropped["role_order"] == 1
    assert dropped["unknown_role"] == 2  # both rows of conversation c2
    quarantined = read_jsonl(out / "quarantine.jsonl")
    tied = [q for q in quarantined if q["category"] == "ranking_all_tied"]
    assert [(Path(q["source"]).name, q["line"], q["field"]) for q in tied] == \
        [("rankings.jsonl", 3, "ranks"), ("rankings.jsonl", 4, "ranks")]
    assert "all 2 responses tie" in tied[0]["reason"]
    # the partial tie is kept as it is, and gives its two non-tied pairs
    rankings = read_jsonl(out / "rankings" / "train.jsonl") + \
        read_jsonl(out / "rankings" / "eval.jsonl")
    assert [r["ranks"] for r in rankings if r["prompt"] == Q] == [[1, 1, 2]]
    pairs = read_jsonl(out / "pairs" / "train.jsonl") + read_jsonl(out / "pairs" / "eval.jsonl")
    assert sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs
                  if p["prompt"] == Q) == [("Team plan.", "Dunno."),
                                           ("The team plan, $5 a seat.", "Dunno.")]

    # every file written loads with the stages' own checks, without one bad row
    for split in ("train", "eval"):
        assert load_conversations(str(out / "sft" / f"{split}.jsonl"))
        assert load_prompts(str(out / "prompts" / f"{split}.jsonl"))
        assert load_rankings(str(out / "rankings" / f"{split}.jsonl"))
        assert load_pairs(str(out / "pairs" / f"{split}.jsonl"))

    data = ["data=prepared", f"data.dir={out}"]
    sft = tmp_path / "sft"
    metrics = {"sft": run_stage(["stage=sft", *data, *SMALL, "stage.max_length=256"], sft)}
    rm = tmp_path / "rm"
    metrics["rm"] = run_stage(["stage=rm", *data, *SMALL, "stage.max_length=256",
                               "stage.reward_stats_rows=16"], rm)
    metrics["rm_pairwise"] = run_stage(
        ["stage=rm", *data, *SMALL, "stage.objective=pairwise", "stage.data_format=pairs",
         "stage.max_length=256", "stage.reward_stats_rows=16"], tmp_path / "rm_pairwise")
    heldout = ["stage.heldout.max_prompts=4", "stage.heldout.max_new_tokens=16"]
    metrics["dpo"] = run_stage(["stage=dpo", *data, *SMALL, f"model.path={sft}",
                                "stage.max_length=256", *heldout], tmp_path / "dpo")
    metrics["grpo"] = run_stage(["stage=grpo", *data, *SMALL, f"model.path={sft}",
                                 f"stage.reward_model={rm}", "stage.num_generations=2",
                                 "stage.max_new_tokens=16", *heldout], tmp_path / "grpo")
    for name, m in metrics.items():
        assert m["train/steps"] == 4 and math.isfinite(m["train/loss"]), (name, m)
    assert metrics["rm"]["train/examples"] == 64  # debug=tiny's 64 rankings, K-wise
    assert metrics["rm_pairwise"]["train/examples"] >= 64  # pairs, one example each
    assert "eval/reward_accuracy" in metrics["rm"]
    assert "rewards/reward_model/mean" in metrics["grpo"]
    assert metrics["dpo"]["eval/num_prompts"] == 4
