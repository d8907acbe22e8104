"""The built-in demo: deterministic data, held-out phrasings really held out, an oracle that
scores good answers 1 and each flaw lower (numbers worked out by hand)."""

from __future__ import annotations

import json
import random

import pytest

from data_tools.demo import catalogue as cat
from data_tools.demo.generate import DemoSpec, generate_demo
from data_tools.demo.oracle import Oracle, score

KETTLE = cat.Product(name="Aurora Kettle", price=49, warranty_years=2, shipping_days=3,
                     colour="red")


@pytest.mark.parametrize("answer,expected", [
    # fact, polite, concise and on topic: 0.5 + 0.25 + 0.25
    ("The Aurora Kettle costs $49. Happy to help!", (1.0, 1.0, 1.0, 1.0)),
    # wrong price: no fact
    ("The Aurora Kettle costs $59. Happy to help!", (0.5, 0.0, 1.0, 1.0)),
    # right and a wrong price: hedging is not a fact
    ("It costs $49 or maybe $59. Happy to help!", (0.5, 0.0, 1.0, 1.0)),
    # rude: 0.5 + 0 + 0.25
    ("$49. Obviously. Look it up yourself next time.", (0.75, 1.0, 0.0, 1.0)),
    # neither polite nor rude: politeness 0.5
    ("The Aurora Kettle costs $49.", (0.875, 1.0, 0.5, 1.0)),
    # off topic: polite only
    ("Thanks for asking! Our store has great deals on gift cards this week.",
     (0.25, 0.0, 1.0, 0.0)),
    # rambling (over 30 words): relevance 0.5
    ("The Aurora Kettle costs $49. Happy to help!" + " It is a very fine kettle." * 5,
     (0.875, 1.0, 1.0, 0.5)),
])
def test_oracle_hand_worked(answer, expected):
    s = score(answer, KETTLE, "price")
    assert (s.total, s.fact, s.polite, s.relevant) == expected


def test_oracle_facts_per_intent():
    assert score("The Aurora Kettle has a 2 years warranty.", KETTLE, "warranty").fact == 1.0
    assert score("The Aurora Kettle has a 3 years warranty.", KETTLE, "warranty").fact == 0.0
    assert score("It ships in 3 days.", KETTLE, "shipping").fact == 1.0
    assert score("The Aurora Kettle is red.", KETTLE, "colour").fact == 1.0
    assert score("The Aurora Kettle is blue.", KETTLE, "colour").fact == 0.0
    assert score("Return it within 30 days.", KETTLE, "returns").fact == 1.0


def test_every_style_scores_as_designed():
    rng = random.Random(0)
    products = cat.make_catalogue(30, 0)
    for product in products[:10]:
        for intent in cat.INTENTS:
            good = score(cat.answer(product, intent, "good", rng), product, intent).total
            assert good == 1.0
            for flaw in cat.FLAWS:
                flawed = score(cat.answer(product, intent, flaw, rng), product, intent).total
                assert flawed < good, (product, intent, flaw)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    spec = DemoSpec(sft_train_size=400, sft_eval_size=50, rankings_train_size=100,
                    rankings_eval_size=20, prompts_train_size=50, eval_prompts_size=50)
    return generate_demo(tmp_path_factory.mktemp("demo"), spec), spec


def _rows(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_generation_is_deterministic(demo_dir, tmp_path):
    out, spec = demo_dir
    again = generate_demo(tmp_path / "again", spec)
    for name in ("sft_train.jsonl", "rankings_train.jsonl", "eval_prompts.jsonl"):
        assert (out / name).read_text() == (again / name).read_text()


def test_sft_has_the_configured_share_of_flaws(demo_dir):
    out, spec = demo_dir
    rows = _rows(out / "sft_train.jsonl")
    assert len(rows) == spec.sft_train_size
    flawed = sum(r["style"] != "good" for r in rows) / len(rows)
    assert abs(flawed - spec.sft_flawed_share) < 0.07
    # the product's fact sheet, then the question and the answer
    assert all([m["role"] for m in r["messages"]] == ["system", "user", "assistant"]
               for r in rows)
    assert all(r["product"] in r["messages"][0]["content"] for r in rows)


def test_heldout_phrasings_never_appear_in_training(demo_dir):
    out, _ = demo_dir
    train_text = (out / "sft_train.jsonl").read_text() + (out / "prompts_train.jsonl").read_text()
    for intent, phrasings in cat.HELDOUT_PHRASINGS.items():
        for phrasing in phrasings:
            stem = phrasing.split("{name}")[0].strip()
            assert stem and stem not in train_text, (intent, phrasing)


def test_rankings_are_ordered_by_the_oracle_with_ties(demo_dir):
    out, spec = demo_dir
    oracle = Oracle.from_file(str(out / "catalogue.json"))
    for row in _rows(out / "rankings_train.jsonl"):
        assert len(row["responses"]) == spec.ranking_k
        totals = [oracle.score(r["content"], row["product"], row["intent"]).total
                  for r in row["responses"]]
        assert totals == row["scores"] == sorted(totals, reverse=True)
        assert row["ranks"] == sorted(row["ranks"]) and row["ranks"][0] == 1
        # equal scores share a rank, different scores do not
        for i in range(len(totals) - 1):
            assert (row["ranks"][i] == row["ranks"][i + 1]) == (totals[i] == totals[i + 1])


def test_rlhf_data_cli_writes_the_demo(run_cli, tmp_path):
    result = run_cli(["task=demo", f"out_dir={tmp_path / 'd'}", "demo.sft_train_size=20",
                      f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path, module="data_tools.cli")
    assert result.returncode == 0, result.output
    assert len(_rows(tmp_path / "d" / "sft_train.jsonl")) == 20
    assert "sft_train.jsonl  rows: 20" in result.output
