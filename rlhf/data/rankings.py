"""Loading ranked responses (K-wise) and preference pairs for the reward model, and the
collator that flattens K responses per prompt into one batch of sequences.

A pair is a ranking with K = 2. Each row is checked first; errors name the file, line and field.
"""

from __future__ import annotations

from pathlib import Path

import torch

from data_tools.ranking import ranked_pairs, ranks_from_scores
from rlhf.data.loading import load_checked, check_messages
from rlhf.errors import DataError


def _answer(value, where: str, field: str) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: `{field}` must be a non-empty assistant answer")
    return value


def _check_ranking(row: dict, where: str) -> dict:
    if "prompt" not in row or "responses" not in row:
        raise DataError(f"{where}: a ranking row needs `prompt` and `responses` "
                        "(and `ranks` or `scores`, best first if neither)")
    check_messages(row["prompt"], where, "prompt", final_role="user")
    responses = row["responses"]
    if not isinstance(responses, list) or len(responses) < 2:
        raise DataError(f"{where}: `responses` needs K >= 2 answers to rank, found "
                        f"{len(responses) if isinstance(responses, list) else 0}")
    texts = [_answer(r, where, f"responses[{i}]") for i, r in enumerate(responses)]
    if len(set(texts)) != len(texts):
        raise DataError(f"{where}: `responses` lists the same answer twice; rank each answer once")
    ranks = row.get("ranks")
    scores = row.get("scores")
    if ranks is None and scores is None:
        ranks = list(range(1, len(texts) + 1))  # given best first
    if ranks is None:
        ranks = ranks_from_scores(scores)
    if not isinstance(ranks, list) or len(ranks) != len(texts) or \
            not all(isinstance(r, int) for r in ranks):
        raise DataError(f"{where}: `ranks` must give one integer rank per response "
                        f"({len(texts)}); rank 1 is best, equal ranks are ties")
    if scores is not None and (not isinstance(scores, list) or len(scores) != len(texts)):
        raise DataError(f"{where}: `scores` must give one number per response ({len(texts)})")
    if len(set(ranks)) < 2:
        raise DataError(f"{where}: all responses tie; the row teaches the reward model nothing")
    return {"prompt": row["prompt"], "responses": texts, "ranks": ranks, "scores": scores}


def _check_pair(row: dict, where: str) -> dict:
    if not all(k in row for k in ("prompt", "chosen", "rejected")):
        raise DataError(f"{where}: a preference row needs `prompt`, `chosen` and `rejected`")
    check_messages(row["prompt"], where, "prompt", final_role="user")
    chosen = _answer(row["chosen"], where, "chosen")
    rejected = _answer(row["rejected"], where, "rejected")
    if chosen == rejected:
        raise DataError(f"{where}: `chosen` and `rejected` are the same text")
    margin = row.get("margin")
    return {"prompt": row["prompt"], "responses": [chosen, rejected], "ranks": [1, 2],
            "scores": None if margin is None else [float(margin), 0.0]}


def load_rankings(path: str, max_rows: int | None = None,
                  bad_rows_dir: Path | None = None) -> list[dict]:
    return load_checked(path, _check_ranking, max_rows, bad_rows_dir)


def load_pairs(path: str, max_rows: int | None = None,
               bad_rows_dir: Path | None = None) -> list[dict]:
    return load_checked(path, _check_pair, max_rows, bad_rows_dir)


def expand_to_pairs(rankings: list[dict]) -> list[dict]:
    """Every non-tied pair of each ranking as its own K = 2 row (the classic way)."""
    out = []
    for r in rankings:
        for a, b in ranked_pairs(r["ranks"]):
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
        k_max = max(len(r["input_ids"]) for r in rows)
        seqs = [s for r in rows for s in r["input_ids"]]
        longest = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), longest), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(seqs), longest), dtype=torch.long)
        for n, s in enumerate(seqs):  # right padding: the reward is read at the last token
            input_ids[n, :len(s)] = torch.tensor(s)
            attention_mask[n, :len(s)] = 1
        ranks = torch.zeros((len(rows), k_max), dtype=torch.long)
        scores = torch.zeros((len(rows), k_max))
        valid = torch.zeros((len(rows), k_max), dtype=torch.bool)
        for b, r in enumerate(rows):
            k = len(r["input_ids"])
            ranks[b, :k] = torch.tensor(r["ranks"])
            scores[b, :k] = torch.tensor(r["scores"], dtype=torch.float)
            valid[b, :k] = True
        return {"input_ids": input_ids, "attention_mask": attention_mask, "ranks": ranks,
                "scores": scores, "valid": valid,
                "use_scores": torch.tensor(all(r["has_scores"] for r in rows))}
