"""data_tools/formats.py, the one definition of each training format: every rule with a row
that passes and one that fails (with its reason and field), and the proof that `rlhf-data` and
the stages apply the same rules: they reject the same rows for the same reasons, and what
`rlhf-data` writes loads in the stages."""

from __future__ import annotations

import json

import pytest

from data_tools import formats
from data_tools.formats import BadRow

U = {"role": "user", "content": "How much is the Orbit Fan?"}
S = {"role": "system", "content": "The Orbit Fan costs $42."}
A = {"role": "assistant", "content": "It costs $42."}


def sft(*messages):
    return {"messages": list(messages)}


def pair(**fields):
    return {"prompt": [U], "chosen": "It costs $42.", "rejected": "No idea.", **fields}


def ranking(responses=("It costs $42.", "About forty.", "No idea."), **fields):
    return {"prompt": [U], "responses": responses if isinstance(responses, str)
            else list(responses), **fields}


# (check, row, the reason it fails for or None when it passes, the field named)
CASES = {
    # a row is a JSON object
    "row is an object": (formats.sft_row, sft(U, A), None, None),
    "row is a list": (formats.sft_row, [U, A], "wrong_type", None),
    # messages
    "messages with a system turn": (formats.sft_row, sft(S, U, A), None, None),
    "no messages field": (formats.sft_row, {"text": "hi"}, "missing_field", "messages"),
    "messages not a list": (formats.sft_row, {"messages": "hi"}, "wrong_type", "messages"),
    "messages empty": (formats.sft_row, sft(), "empty", "messages"),
    "turn without content": (formats.sft_row, sft({"role": "user"}, A), "missing_field",
                             "messages[0]"),
    "unknown role": (formats.sft_row, sft({"role": "bot", "content": "x"}, A), "unknown_role",
                     "messages[0].role"),
    "content not text": (formats.sft_row, sft({"role": "user", "content": 7}, A), "wrong_type",
                         "messages[0].content"),
    # sft: ends with an assistant answer that is not blank
    "sft ends with a user turn": (formats.sft_row, sft(U), "role_order", "messages"),
    "sft answer blank": (formats.sft_row, sft(U, {"role": "assistant", "content": " \n"}),
                         "empty_answer", "messages[1].content"),
    # prompt: messages or a string, ending with a user turn that is not blank
    "prompt as messages": (formats.prompt_row, {"prompt": [S, U], "product": "fan"}, None, None),
    "prompt as a string": (formats.prompt_row, {"prompt": "Price?"}, None, None),
    "no prompt field": (formats.prompt_row, {"question": "Price?"}, "missing_field", "prompt"),
    "prompt empty": (formats.prompt_row, {"prompt": []}, "empty", "prompt"),
    "prompt ends with the answer": (formats.prompt_row, {"prompt": [U, A]}, "role_order",
                                    "prompt"),
    "prompt blank": (formats.prompt_row, {"prompt": "  "}, "empty_prompt", "prompt[0].content"),
    # answers: text, an assistant message or a list of one; not blank
    "answers in three shapes": (formats.pair_row, pair(chosen=[A], rejected={"content": "No."}),
                                None, None),
    "answer list of two": (formats.pair_row, pair(chosen=[A, A]), "wrong_type", "chosen"),
    "answer from the user": (formats.pair_row, pair(chosen=U), "role_order", "chosen.role"),
    "answer blank": (formats.pair_row, pair(rejected=""), "empty_answer", "rejected"),
    "answer not text": (formats.pair_row, pair(rejected=3), "wrong_type", "rejected"),
    # pairs
    "pair with a margin": (formats.pair_row, pair(margin=2), None, None),
    "pair missing rejected": (formats.pair_row, {"prompt": [U], "chosen": "a"}, "missing_field",
                              "rejected"),
    "pair identical": (formats.pair_row, pair(rejected="It costs $42. "), "pair_identical",
                       "rejected"),
    "margin not a number": (formats.pair_row, pair(margin="big"), "wrong_type", "margin"),
    "margin not finite": (formats.pair_row, pair(margin=float("nan")), "wrong_type", "margin"),
    # rankings: K >= 2
    "ranking K = 2": (formats.ranking_row, ranking(["Yes.", "No."]), None, None),
    "ranking K = 1": (formats.ranking_row, ranking(["Yes."]), "ranking_needs_two_responses",
                      "responses"),
    "ranking K = 0": (formats.ranking_row, ranking([]), "ranking_needs_two_responses",
                      "responses"),
    "responses not a list": (formats.ranking_row, ranking("Yes."), "wrong_type", "responses"),
    # no answer twice
    "same answer twice": (formats.ranking_row, ranking(["Yes.", "No.", "Yes."]),
                          "ranking_duplicate_response", "responses[2]"),
    # ranks: one integer per answer; ties allowed
    "ranks with a tie": (formats.ranking_row, ranking(ranks=[1, 1, 2]), None, None),
    "ranks as whole floats": (formats.ranking_row, ranking(ranks=[2.0, 1.0, 3.0]), None, None),
    "ranks too short": (formats.ranking_row, ranking(ranks=[1, 2]), "ranking_bad_ranks", "ranks"),
    "rank not whole": (formats.ranking_row, ranking(ranks=[1, 1.5, 2]), "ranking_bad_ranks",
                       "ranks"),
    "rank a boolean": (formats.ranking_row, ranking(ranks=[True, 2, 3]), "ranking_bad_ranks",
                       "ranks"),
    # scores: one finite number per answer
    "scores only": (formats.ranking_row, ranking(scores=[0.2, 0.9, 0.2]), None, None),
    "scores too long": (formats.ranking_row, ranking(scores=[1, 2, 3, 4]), "ranking_bad_scores",
                        "scores"),
    "score not a number": (formats.ranking_row, ranking(scores=[1, "high", 0]),
                           "ranking_bad_scores", "scores[1]"),
    # ranks and scores agree
    "ranks and scores agree": (formats.ranking_row, ranking(ranks=[1, 1, 2],
                                                            scores=[0.9, 0.8, 0.1]), None, None),
    "ranks contradict scores": (formats.ranking_row, ranking(ranks=[1, 2, 3],
                                                             scores=[0.9, 0.1, 0.5]),
                                "ranking_ranks_contradict_scores", "scores"),
    # at least two different ranks
    "all tied by ranks": (formats.ranking_row, ranking(ranks=[2, 2, 2]), "ranking_all_tied",
                          "ranks"),
    "all tied by scores": (formats.ranking_row, ranking(scores=[0.5, 0.5, 0.5]),
                           "ranking_all_tied", "ranks"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_rule(name):
    check, row, reason, field = CASES[name]
    if reason is None:
        check(row)
        return
    with pytest.raises(BadRow) as info:
        check(row)
    assert (info.value.category, info.value.field) == (reason, field), str(info.value)
    if field:  # the message names the field
        assert field.split(".")[0].split("[")[0] in str(info.value)


@pytest.mark.parametrize("name", [n for n, case in CASES.items() if case[2] is None])
def test_normal_form_passes_again_unchanged(name):
    """What rlhf-data writes (the normal form) is what the stages read: checking it again
    changes nothing."""
    check, row, _, _ = CASES[name]
    normal = check(row)
    assert check(json.loads(json.dumps(normal))) == normal


def test_normal_forms():
    assert formats.prompt_row({"prompt": "Price?", "product": "fan"}) == \
        {"prompt": [{"role": "user", "content": "Price?"}], "product": "fan"}
    assert formats.pair_row(pair(chosen=[A], margin=1)) == {
        "prompt": [U], "chosen": A, "rejected": {"role": "assistant", "content": "No idea."},
        "margin": 1.0}
    r = formats.ranking_row(ranking(scores=[0.2, 0.9, 0.2]))
    assert r["ranks"] == [2, 1, 2] and r["scores"] == [0.2, 0.9, 0.2]  # higher score is better
    assert formats.ranking_row(ranking())["ranks"] == [1, 2, 3]  # neither: best first
    assert formats.ranking_row(ranking(ranks=[2.0, 1.0, 3.0]))["ranks"] == [2, 1, 3]
    assert formats.sft_row({"messages": [{**U, "name": "x"}, A], "id": 3}) == sft(U, A)


# ------------------------------------------------------------ both sides, the same rules
RAW = {  # file -> rows, each as a stage would read it and as rlhf-data would take it in
    "sft": [sft(U, A), sft(U), sft(U, {"role": "assistant", "content": " "}),
            sft({"role": "wizard", "content": "x"}, A), {"messages": []},
            sft({"role": "user", "content": 7}, A), [U, A], '{"messages": ['],
    "rankings": [ranking(), ranking(["Yes."]), ranking(ranks=[1, 1, 1]),
                 ranking(scores=[0.5, 0.5, 0.5]), ranking(ranks=[1, 2, 2]),
                 ranking(["Yes.", "No.", "Yes."]), ranking(ranks=[1, 2, 3], scores=[0, 1, 2]),
                 ranking(ranks=[1, "a", 2]), {"prompt": [U, A], "responses": ["a", "b"]},
                 {"prompt": [U], "responses": ["Yes.", ""]}],
    "pairs": [pair(), pair(rejected="It costs $42."), pair(margin="x"), pair(chosen=""),
              {"prompt": [], "chosen": "a", "rejected": "b"}, pair(margin=0.5)],
}
FORMAT_OF_FILE = {"sft": "messages", "rankings": "ranking", "pairs": "pairwise"}


def _stage_rejects(name: str, path, run_dir) -> dict[int, str]:
    """line -> reason key of every row the stage's loader rejects (from bad_rows.jsonl)."""
    from rlhf.data.loading import load_conversations
    from rlhf.data.rankings import load_pairs, load_rankings
    from rlhf.errors import DataError

    load = {"sft": load_conversations, "rankings": load_rankings, "pairs": load_pairs}[name]
    with pytest.raises(DataError) as info:
        load(str(path), bad_rows_dir=run_dir)
    assert str(info.value).startswith(f"{path}:")  # file and line
    bad = [json.loads(line) for line in open(run_dir / "bad_rows.jsonl")]
    return {int(b["where"].rsplit(":", 1)[1]): b["category"] for b in bad}


@pytest.mark.parametrize("name", list(RAW))
def test_rlhf_data_and_the_stages_reject_the_same_rows(name, tmp_path):
    from omegaconf import OmegaConf

    from data_tools.config import DataToolsConfig, InputSpec
    from data_tools.prepare import prepare
    from tests.data_tools.conftest import read_jsonl, write_jsonl

    path = write_jsonl(tmp_path / f"{name}.jsonl", RAW[name])
    (tmp_path / "run").mkdir()
    stage = _stage_rejects(name, path, tmp_path / "run")
    # cleaning policies that may drop more rows (empty turns, alternation, duplicates) off:
    # what remains is reading + formats.py
    policies = {"clean.drop_empty_turns": False, "clean.merge_same_role": False,
                "clean.check_role_order": False, "dedup.exact": False, "dedup.near": False}
    cfg = OmegaConf.structured(DataToolsConfig(
        out_dir=str(tmp_path / "out"), inputs=[InputSpec(str(path), FORMAT_OF_FILE[name])],
        num_proc=0, max_bad_share=1.0, save_datasets=False))
    for key, value in policies.items():
        OmegaConf.update(cfg, key, value)
    summary = prepare(cfg)
    quarantine = {q["line"]: q["category"] for q in read_jsonl(tmp_path / "out" /
                                                                "quarantine.jsonl")}
    assert quarantine == stage  # the same rows, for the same reasons
    assert summary["rows_kept"] == len(RAW[name]) - len(stage) > 0


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_cut_off_line_is_reported_where_it_ends(newline, tmp_path):
    """Parsed with its line end, a truncated line was "column 1" (of the next line)."""
    from rlhf.data.loading import load_conversations
    from rlhf.errors import DataError

    whole = json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                     {"role": "assistant", "content": "Hello"}]})
    cut = whole[:30]
    path = tmp_path / "sft.jsonl"
    path.write_bytes((whole + newline + cut + newline + "{oops}" + newline).encode())
    with pytest.raises(DataError) as info:
        load_conversations(str(path), bad_rows_dir=tmp_path)
    assert str(info.value).startswith(
        f"{path}:2: not valid JSON: the line ends at column {len(cut)} before the JSON value "
        "is complete (cut off?)")
    bad = [json.loads(line) for line in open(tmp_path / "bad_rows.jsonl")]
    assert [b["category"] for b in bad] == ["invalid_json", "invalid_json"]
    # an error inside the line keeps its own column
    assert bad[1]["reason"].startswith(f"{path}:3: not valid JSON (Expecting property name "
                                       "enclosed in double quotes at column 2)")
