"""Writes the built-in demo data set (docs/demo.md) in the training formats of docs/data.md.

    rlhf-data task=demo out_dir=/tmp/demo_data      # or implicitly: rlhf ... data=demo

Files: catalogue.json, sft_train.jsonl / sft_eval.jsonl (messages), rankings_train.jsonl /
rankings_eval.jsonl (K ranked responses, best first, with ranks and oracle scores),
prompts_train.jsonl (prompts only, for RL) and eval_prompts.jsonl (held-out phrasings, for
generation evaluation). Prompt rows carry `product` and `intent`, which the oracle needs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

from data_tools.demo import catalogue as cat
from data_tools.demo.oracle import score
from data_tools.io import atomic_dir, build_once
from data_tools.ranking import ranks_from_scores

MANIFEST = "demo_manifest.json"


@dataclass
class DemoSpec:
    """What the demo data set is made of; a different spec is a different data set."""
    seed: int = 0
    num_products: int = 30
    sft_train_size: int = 3000
    # share of SFT answers that are flawed (wrong fact, rude, off topic, rambling)
    sft_flawed_share: float = 0.28
    sft_eval_size: int = 200
    rankings_train_size: int = 4000
    rankings_eval_size: int = 200
    # responses per ranking row (K)
    ranking_k: int = 4
    prompts_train_size: int = 1000
    eval_prompts_size: int = 200
    # random greetings/closings around training questions (see catalogue.question)
    framing: bool = True
    # share of words deleted at random from training questions, intent keywords and product
    # name kept (never from held-out ones): with framing, what lets the tiny model answer
    # held-out phrasings (docs/demo.md)
    word_dropout: float = 0.2
    # a system message with the product's facts before every question, as a support bot has:
    # with it the reward model can check an answer's facts (held-out agreement 0.90 -> 0.96)
    fact_sheet: bool = True


def _prompt(product, question: str, fact_sheet: bool) -> list[dict]:
    system = [{"role": "system", "content": cat.fact_sheet(product)}] if fact_sheet else []
    return system + [{"role": "user", "content": question}]


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}


def _pick(products, rng):
    return rng.choice(products), rng.choice(cat.INTENTS)


def sft_rows(products, n: int, flawed_share: float, heldout: bool, framing: bool, rng,
             fact_sheet: bool = True, word_dropout: float = 0.0):
    for _ in range(n):
        product, intent = _pick(products, rng)
        style = rng.choice(cat.FLAWS) if rng.random() < flawed_share else "good"
        q = cat.question(product, intent, rng, heldout, framing, word_dropout)
        yield {"messages": _prompt(product, q, fact_sheet)
               + [_assistant(cat.answer(product, intent, style, rng))],
               "style": style, "product": product.name, "intent": intent}


def ranking_rows(products, n: int, k: int, heldout: bool, framing: bool, rng,
                 fact_sheet: bool = True, word_dropout: float = 0.0):
    """K responses per prompt, ranked by the oracle (rank 1 = best; equal scores tie)."""
    for _ in range(n):
        product, intent = _pick(products, rng)
        styles = ["good"] + rng.sample(cat.FLAWS, k=min(k - 1, len(cat.FLAWS)))
        while len(styles) < k:  # K > 5: repeat styles, which also creates ties
            styles.append(rng.choice(("good",) + cat.FLAWS))
        answers = {cat.answer(product, intent, s, rng) for s in styles}
        while len(answers) < k:  # two styles happened to give the same text
            answers.add(cat.answer(product, intent, rng.choice(cat.FLAWS), rng))
        scored = sorted(((score(a, product, intent).total, a) for a in answers), reverse=True)
        question = cat.question(product, intent, rng, heldout, framing, word_dropout)
        yield {"prompt": _prompt(product, question, fact_sheet),
               "responses": [_assistant(a) for _, a in scored],
               "ranks": ranks_from_scores([s for s, _ in scored]),
               "scores": [s for s, _ in scored],
               "product": product.name, "intent": intent}


def prompt_rows(products, n: int, heldout: bool, framing: bool, rng, fact_sheet: bool = True,
                word_dropout: float = 0.0):
    for _ in range(n):
        product, intent = _pick(products, rng)
        question = cat.question(product, intent, rng, heldout, framing, word_dropout)
        yield {"prompt": _prompt(product, question, fact_sheet),
               "product": product.name, "intent": intent}


def _write_jsonl(path: Path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def generate_demo(out_dir: str | os.PathLike, spec: DemoSpec) -> Path:
    """Write the demo files into `out_dir` (atomically: a half-written set never appears)."""
    out_dir = Path(out_dir)
    products = cat.make_catalogue(spec.num_products, spec.seed)
    # one generator per file, so changing one size leaves the other files unchanged
    rng = lambda salt: random.Random(f"{spec.seed}-{salt}")  # noqa: E731
    with atomic_dir(out_dir) as tmp:
        with open(tmp / "catalogue.json", "w", encoding="utf-8") as f:
            json.dump([dataclasses.asdict(p) for p in products], f, indent=1)
        _write_jsonl(tmp / "sft_train.jsonl", sft_rows(
            products, spec.sft_train_size, spec.sft_flawed_share, False, spec.framing, rng("sft"),
            spec.fact_sheet, spec.word_dropout))
        # the SFT eval set measures the target behaviour: good answers to held-out phrasings
        _write_jsonl(tmp / "sft_eval.jsonl", sft_rows(
            products, spec.sft_eval_size, 0.0, True, spec.framing, rng("sft_eval"),
            spec.fact_sheet))
        _write_jsonl(tmp / "rankings_train.jsonl", ranking_rows(
            products, spec.rankings_train_size, spec.ranking_k, False, spec.framing, rng("rank"),
            spec.fact_sheet, spec.word_dropout))
        _write_jsonl(tmp / "rankings_eval.jsonl", ranking_rows(
            products, spec.rankings_eval_size, spec.ranking_k, True, spec.framing,
            rng("rank_eval"), spec.fact_sheet))
        _write_jsonl(tmp / "prompts_train.jsonl", prompt_rows(
            products, spec.prompts_train_size, False, spec.framing, rng("prompts"),
            spec.fact_sheet, spec.word_dropout))
        _write_jsonl(tmp / "eval_prompts.jsonl", prompt_rows(
            products, spec.eval_prompts_size, True, spec.framing, rng("eval_prompts"),
            spec.fact_sheet))
        with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(spec), f, indent=1)
    return out_dir


def ensure_demo_data(out_dir: str | os.PathLike, spec: DemoSpec) -> Path:
    """Generate the demo set once; later calls (and other ranks) reuse it. A directory made
    from a different spec is regenerated, so changing `data.demo.*` never trains on stale files."""
    return build_once(out_dir, dataclasses.asdict(spec), MANIFEST,
                      lambda path: generate_demo(path, spec))
