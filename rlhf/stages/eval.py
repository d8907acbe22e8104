"""Generation evaluation: answer held-out prompts and score the answers.

    rlhf stage=eval model.path=outputs/demo/<run>/sft     # a stage's run dir or a checkpoint

On the demo, the oracle scores each answer (fact, politeness, relevance; DESIGN.md section 5),
greedy and sampled, since greedy scores swing between seeds. Writes `samples.jsonl` (every
prompt with its answers and scores) and `metrics.json` (`eval/oracle_greedy`, ...).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import torch

from data_tools.demo.oracle import Oracle
from rlhf.data.loading import load_prompts, require
from rlhf.distributed import is_main_process
from rlhf.models.generation import generate_answers
from rlhf.models.loading import load_causal_lm, load_tokenizer
from rlhf.stages.common import StageRun


def demo_oracle(cfg, rows: list[dict]) -> Oracle | None:
    """The oracle, when the prompts come from the demo (they name `product` and `intent`)."""
    catalogue = Path(cfg.data.dir or "") / "catalogue.json"
    if cfg.data.demo is None or not catalogue.exists():
        return None
    if not all("product" in r and "intent" in r for r in rows):
        return None
    return Oracle.from_file(str(catalogue))


def score_answers(oracle: Oracle, rows: list[dict], answers: list[str], mode: str) -> dict:
    scores = [oracle.score(a, r["product"], r["intent"]) for r, a in zip(rows, answers)]
    for row, s in zip(rows, scores):
        row.setdefault("scores", {})[mode] = s.as_dict()
    return {f"eval/oracle_{mode}": mean(s.total for s in scores),
            f"eval/oracle_fact_{mode}": mean(s.fact for s in scores),
            f"eval/oracle_polite_{mode}": mean(s.polite for s in scores),
            f"eval/oracle_relevant_{mode}": mean(s.relevant for s in scores)}


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    stage, out = cfg.stage, stage_run.out
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model)
    caps = [c for c in (stage.max_prompts or None, cfg.debug.max_eval_rows) if c]
    rows = load_prompts(require(cfg.data.eval_prompts, "data.eval_prompts", "eval"),
                        min(caps) if caps else None, bad_rows_dir=out)
    oracle = demo_oracle(cfg, rows)

    modes = {"greedy": 0.0} if stage.greedy else {}
    if stage.sample_temperature > 0:
        modes["sampled"] = stage.sample_temperature
    metrics = {"eval/num_prompts": len(rows)}
    torch.manual_seed(stage.seed)
    for mode, temperature in modes.items():
        answers = generate_answers(model, tokenizer, [r["prompt"] for r in rows],
                                   stage.max_new_tokens, stage.batch_size, temperature)
        for row, answer in zip(rows, answers):
            row.setdefault("answers", {})[mode] = answer
        metrics[f"eval/answer_words_{mode}"] = mean(len(a.split()) for a in answers)
        if oracle is not None:
            metrics.update(score_answers(oracle, rows, answers, mode))

    if is_main_process():
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    show_examples(rows[:stage.num_examples], stage_run.tracker)
    stage_run.tracker.log(metrics)
    return stage_run.finish(metrics)


def show_examples(rows: list[dict], tracker) -> None:
    table = []
    for row in rows:
        question = row["prompt"][-1]["content"]
        for mode, answer in row.get("answers", {}).items():
            score = row.get("scores", {}).get(mode, {}).get("total")
            table.append([question, mode, answer, score])
            print(f"Q: {question}\n  [{mode}{'' if score is None else f' {score:.2f}'}] {answer}")
    tracker.log_table("eval/examples", ["prompt", "mode", "answer", "oracle"], table)
