"""A ranking scored as one sequence (prompt once, K responses after it) gives the rewards of
K separate sequences: the block mask and the restarted positions must hide the other
responses exactly."""

from __future__ import annotations

import json

import torch

from rlhf.data.rankings import RankingCollator, tokenize_ranking
from rlhf.models.shared_prompt import SharedPromptCollator, block_mask, split_prompt
from rlhf.stages.rm import ranking_rewards


def test_block_mask_by_hand():
    # prompt of 2 tokens, response 1 of 2 tokens, response 2 of 1 token, 1 padding
    mask = block_mask(torch.tensor([[0, 0, 1, 1, 2, -1]]))[0, 0].int()
    assert mask.tolist() == [[1, 0, 0, 0, 0, 0],
                             [1, 1, 0, 0, 0, 0],
                             [1, 1, 1, 0, 0, 0],
                             [1, 1, 1, 1, 0, 0],
                             [1, 1, 0, 0, 1, 0],   # response 2 does not see response 1
                             [0, 0, 0, 0, 0, 1]]   # padding sees itself only


def test_shared_prompt_rewards_equal_separate_sequences(cache_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = cache_dir / "demo_tiny"
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).eval()
    model.config.pad_token_id = tokenizer.pad_token_id
    rows = [json.loads(line) for line in open(cache_dir / "demo_data" / "rankings_eval.jsonl")][:5]
    rows[1]["responses"] = rows[1]["responses"][:2]  # K differs within the batch
    rows[1]["ranks"], rows[1]["scores"] = rows[1]["ranks"][:2], rows[1]["scores"][:2]
    for row in rows:
        row["responses"] = [r["content"] for r in row["responses"]]
    tokenized = [tokenize_ranking(row, tokenizer, 160) for row in rows]
    for row, tok in zip(rows, tokenized):
        tok["prompt_ids"] = split_prompt(tokenizer, row["prompt"], tok["input_ids"])
        assert tok["prompt_ids"] is not None
    with torch.no_grad():
        separate, _ = ranking_rewards(model, RankingCollator(tokenizer.pad_token_id)(tokenized))
        batch = SharedPromptCollator(tokenizer.pad_token_id)(tokenized)
        shared, flat = ranking_rewards(model, batch)
    assert separate.std() > 0.01  # a random head still gives different rewards
    assert torch.allclose(shared, separate, atol=1e-4), (shared - separate).abs().max()
    assert flat.numel() == sum(len(r["responses"]) for r in rows)
    # one sequence per ranking, shorter than its K sequences together
    assert batch["input_ids"].shape[0] == len(rows)
    assert (batch["input_ids"] != tokenizer.pad_token_id).sum() < \
        sum(len(s) for t in tokenized for s in t["input_ids"])
