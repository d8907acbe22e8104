"""Precision and recall of `rlhf-data`'s duplicate detection per `dedup.threshold`, on the demo
data and on generated support conversations: the figures `dedup.threshold`'s default is chosen
from (docs/data.md, "Near duplicates").

    python benchmarks/dedup_threshold.py                    # all three sets, 10 thresholds
    python benchmarks/dedup_threshold.py --rows 500 --thresholds 0.7 0.9

Each set is N distinct rows (rows that are exact duplicates of an earlier one are left out of
the count) followed by a copy of a random `--copies` share of them, each copy changed in one
way a near duplicate is in practice:
  spacing       spaces before punctuation, doubled spaces, other case
  punctuation   commas dropped, full stops turned into "!" or ";"
  appended      a short phrase added to one answer ("Thanks again.")
  word dropped  one word of one answer left out
A copy flagged as a duplicate (exact or near) is a true positive; a distinct row flagged is a
false positive. The whole `prepare` pipeline runs (cleaning, then MinHash LSH in file order),
so the figures are those a user gets.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import tempfile
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf

from data_tools.config import DataToolsConfig, InputSpec
from data_tools.demo import catalogue as cat
from data_tools.demo.generate import DemoSpec, ensure_demo_data
from data_tools.prepare import prepare

KINDS = ("spacing", "punctuation", "appended", "word dropped")
THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.85, 0.86, 0.88, 0.9, 0.92, 0.95)


# ----------------------------------------------------------------- the changes a copy gets
def respace(text: str, rng: random.Random) -> str:
    text = re.sub(r"([,.!?:;])", r" \1", text).replace(" ", "  ", 1)
    return text.upper() if rng.random() < 0.2 else text.lower()


def repunctuate(text: str, rng: random.Random) -> str:
    return text.replace(",", "").replace(".", rng.choice(("!", ";")))


def append_phrase(text: str, rng: random.Random) -> str:
    return f"{text} {rng.choice(('Thanks again.', 'Have a nice day!', 'Anything else?'))}"


def drop_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    if len(words) > 1:
        del words[rng.randrange(len(words))]
    return " ".join(words)


def answers_of(row: dict) -> list[dict]:
    """The answer messages of a row (SFT: the last turn; ranking: every response)."""
    return row["responses"] if "responses" in row else row["messages"][-1:]


def texts_of(row: dict) -> list[dict]:
    return (row.get("prompt") or []) + row.get("messages", []) + row.get("responses", [])


def near_copy(row: dict, kind: str, rng: random.Random) -> dict:
    row = json.loads(json.dumps(row))
    if kind in ("spacing", "punctuation"):
        change = respace if kind == "spacing" else repunctuate
        for msg in texts_of(row):
            msg["content"] = change(msg["content"], rng)
    else:
        msg = rng.choice(answers_of(row))
        msg["content"] = (append_phrase if kind == "appended" else drop_word)(msg["content"],
                                                                             rng)
    return row


# ----------------------------------------------------------------- the sets
def demo_rows(name: str, rows: int, cache: Path) -> list[dict]:
    path = ensure_demo_data(cache / "demo_data", DemoSpec()) / f"{name}_train.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(rows), f)]


def generated_rows(rows: int, seed: int = 1) -> list[dict]:
    """Support conversations from the demo catalogue, without the demo's fact sheet: a
    question (with framing) and a good or flawed answer."""
    rng = random.Random(seed)
    products = cat.make_catalogue(200, seed)
    out = []
    for _ in range(rows):
        product, intent = rng.choice(products), rng.choice(cat.INTENTS)
        style = rng.choice(("good",) * 4 + cat.FLAWS)
        out.append({"messages": [
            {"role": "user", "content": cat.question(product, intent, rng, heldout=False,
                                                     framing=True)},
            {"role": "assistant", "content": cat.answer(product, intent, style, rng)}]})
    return out


# ----------------------------------------------------------------- measuring
def run(rows: list[dict], tmp: Path, **overrides):
    """prepare() over `rows` as one JSONL file -> {line: category} of the quarantined rows."""
    path = tmp / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = OmegaConf.structured(DataToolsConfig(inputs=[InputSpec(path=str(path))],
                                               out_dir=str(tmp / "out"), num_proc=0,
                                               save_datasets=False, max_bad_share=1.0))
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value)
    prepare(cfg)
    with open(tmp / "out" / "quarantine.jsonl", encoding="utf-8") as f:
        return {q["line"]: q["category"] for q in map(json.loads, f)}


def measure(rows: list[dict], copies: float, thresholds, tmp: Path, seed: int = 0) -> dict:
    """{threshold: {precision, recall, recall per kind}} for `rows` plus near copies."""
    rng = random.Random(seed)
    # rows the pipeline drops without the near-duplicate step are not part of the test
    dropped = run(rows, tmp, **{"dedup.near": False})
    distinct = [r for i, r in enumerate(rows, start=1) if i not in dropped]
    picked = rng.sample(range(len(distinct)), int(copies * len(distinct)))
    kinds = [KINDS[i % len(KINDS)] for i in range(len(picked))]
    data = distinct + [near_copy(distinct[i], kind, rng) for i, kind in zip(picked, kinds)]
    results = {}
    for threshold in thresholds:
        flagged = {line for line, category in run(data, tmp, **{"dedup.threshold": threshold})
                   .items() if category.startswith("duplicate")}
        false_pos = sum(1 for line in flagged if line <= len(distinct))
        caught = Counter(kinds[line - len(distinct) - 1] for line in flagged
                         if line > len(distinct))
        true_pos = sum(caught.values())
        results[threshold] = {
            "precision": true_pos / max(true_pos + false_pos, 1),
            "recall": true_pos / len(picked), "false_positives": false_pos,
            "distinct_rows": len(distinct), "copies": len(picked),
            "recall_by_kind": {k: caught[k] / kinds.count(k) for k in KINDS}}
    return results


def f1(result: dict) -> float:
    p, r = result["precision"], result["recall"]
    return 2 * p * r / max(p + r, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=3000, help="distinct rows per set (at most)")
    parser.add_argument("--copies", type=float, default=0.2, help="share of rows copied")
    parser.add_argument("--thresholds", type=float, nargs="+", default=THRESHOLDS)
    parser.add_argument("--min-precision", type=float, default=0.95)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-dedup-bench-") as tmp:
        tmp = Path(tmp)
        sets = {"demo sft": demo_rows("sft", args.rows, tmp),
                "demo rankings": demo_rows("rankings", args.rows, tmp),
                "generated": generated_rows(args.rows)}
        results = {name: measure(rows, args.copies, args.thresholds, tmp)
                   for name, rows in sets.items()}
    print("| threshold | " + " | ".join(f"{name} P / R" for name in results) + " | mean F1 |")
    print("| --- " * (len(results) + 2) + "|")
    for t in args.thresholds:
        cells = [f"{r[t]['precision']:.3f} / {r[t]['recall']:.3f}" for r in results.values()]
        mean_f1 = sum(f1(r[t]) for r in results.values()) / len(results)
        print(f"| {t} | " + " | ".join(cells) + f" | {mean_f1:.3f} |")
    # a false positive drops a distinct training row, a false negative keeps a near copy
    # (which weighs one example a little more): precision first, then as much recall as it allows
    good = [t for t in args.thresholds
            if all(r[t]["precision"] >= args.min_precision for r in results.values())]
    if not good:
        print(f"\nno threshold reaches precision {args.min_precision} on every set")
        return
    best = min(good)
    print(f"\nthe lowest threshold with precision >= {args.min_precision} on every set: {best}; "
          "recall by kind there:")
    for name, r in results.items():
        print(f"  {name} ({r[best]['distinct_rows']} rows, {r[best]['copies']} copies, "
              f"{r[best]['false_positives']} false positives): "
              + ", ".join(f"{k} {v:.2f}" for k, v in r[best]["recall_by_kind"].items()))


if __name__ == "__main__":
    main()
