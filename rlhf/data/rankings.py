"""Loading ranked responses (K-wise) and preference pairs for the reward model, and the
collator that flattens K responses per prompt into one batch of sequences.

A pair is a ranking with K = 2. Each row is checked first with the rules of
data_tools/formats.py (those `rlhf-data` writes by); errors name the file, line and field.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_tools import formats
from data_tools.ranking import ranked_pairs
from rlhf.data.loading import load_checked


def _check_ranking(row) -> dict:
    """formats.ranking_row (K >= 2, no answer twice, ranks/scores, not all tied), as texts."""
    r = formats.ranking_row(row)
    return {"prompt": r["prompt"], "responses": [a["content"] for a in r["responses"]],
            "ranks": r["ranks"], "scores": r["scores"]}


def _check_pair(row) -> dict:
    """formats.pair_row, as a ranking with K = 2 (the margin as the chosen answer's score)."""
    p = formats.pair_row(row)
    return {"prompt": p["prompt"], "responses": [p["chosen"]["content"], p["rejected"]["content"]],
            "ranks": [1, 2], "scores": None if p["margin"] is None else [p["margin"], 0.0]}


def load_rankings(path: str, max_rows: int | None = None,
                  bad_rows_dir: Path | None = None) -> list[dict]:
    return load_checked(path, _check_ranking, max_rows, bad_rows_dir)


def load_pairs(path: str, max_rows: int | None = None,
               bad_rows_dir: Path | None = None) -> list[dict]:
    return load_checked(path, _check_pair, max_rows, bad_rows_dir)


def best_answer_conversations(rankings: list[dict]) -> list[dict]:
    """Each ranking's prompt and its best answer as an SFT conversation (answers tied for the
    best rank: the first of them)."""
    best = [r["responses"][r["ranks"].index(min(r["ranks"]))] for r in rankings]
    return [{"messages": r["prompt"] + [{"role": "assistant", "content": answer}]}
            for r, answer in zip(rankings, best)]


def expand_to_pairs(rankings: list[dict], mode: str = "all") -> list[dict]:
    """The non-tied pairs of each ranking (data_tools.ranking.ranked_pairs' `mode`: all,
    adjacent or best), each as its own K = 2 row."""
    out = []
    for r in rankings:
        for a, b in ranked_pairs(r["ranks"], mode):
            scores = None if r["scores"] is None else [r["scores"][a], r["scores"][b]]
            out.append({"prompt": r["prompt"], "responses": [r["responses"][a], r["responses"][b]],
                        "ranks": [1, 2], "scores": scores})
    return out


def tokenize_ranking(row: dict, tokenizer, max_length: int) -> dict:
    """Token ids of prompt + each response, through the chat template."""
    ids = []
    for answer in row["responses"]:
        text = tokenizer.apply_chat_template(
            row["prompt"] + [{"role": "assistant", "content": answer}], tokenize=False)
        ids.append(tokenizer(text, add_special_tokens=False, truncation=True,
                             max_length=max_length)["input_ids"])
    return {"input_ids": ids, "ranks": row["ranks"],
            "scores": row["scores"] if row["scores"] is not None else [0.0] * len(ids),
            "has_scores": row["scores"] is not None}


class RankingCollator:
    """B prompts with up to K responses -> (sum of K) padded sequences + (B, K) ranks/mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        seqs = [s for r in rows for s in r["input_ids"]]
        longest = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for n, s in enumerate(seqs):  # right padding: the reward is read at the last token
            input_ids[n, :len(s)] = torch.tensor(s)
            attention_mask[n, :len(s)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask,
                **ranking_targets(rows)}


def ranking_targets(rows: list[dict]) -> dict:
    """(B, K_max) ranks, scores and valid mask of tokenized rankings, and whether every row
    has scores (for margins)."""
    k_max = max(len(r["input_ids"]) for r in rows)
    ranks = torch.zeros((len(rows), k_max), dtype=torch.long)
    scores = torch.zeros((len(rows), k_max))
    valid = torch.zeros((len(rows), k_max), dtype=torch.bool)
    for b, r in enumerate(rows):
        k = len(r["input_ids"])
        ranks[b, :k] = torch.tensor(r["ranks"])
        scores[b, :k] = torch.tensor(r["scores"], dtype=torch.float)
        valid[b, :k] = True
    return {"ranks": ranks, "scores": scores, "valid": valid,
            "use_scores": torch.tensor(all(r["has_scores"] for r in rows))}
