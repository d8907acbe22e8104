"""K-wise reward batches that compute each prompt once: one sequence per ranking.

A ranking is a prompt with K responses. Scored one sequence per response, the prompt (on the
demo: a fact sheet and a question, most of the tokens) goes through the model K times. Here a
ranking is one sequence, `[prompt][response 1]...[response K]`, with

- a block attention mask: a response sees the prompt and its own earlier tokens, never
  another response (`(B, 1, L, L)` booleans, which transformers passes to attention as-is);
- position ids that restart after the prompt for every response, so each response sits
  exactly where it would sit alone;

so the reward read at each response's last token equals the reward of `prompt + response`
scored alone (up to float rounding; tests/test_rm.py checks it), for ~K-times fewer prompt
tokens and no padding between responses of different lengths.

The reward model's score head (`*ForSequenceClassification.score`, a Linear over every
position) is read through a forward hook, so the model is still called through whatever
wraps it (DDP, DeepSpeed, peft), which the wrappers need for gradient sync and ZeRO-3.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from rlhf.data.rankings import ranking_targets

def split_prompt(tokenizer, prompt: list[dict], full_ids: list[list[int]]) -> list[int] | None:
    """The prompt's token ids when every `prompt + response` tokenization starts with them
    (true of ordinary chat templates); None when one does not, and the row cannot share."""
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(prompt_ids)
    if all(len(ids) > n and ids[:n] == prompt_ids for ids in full_ids):
        return prompt_ids
    return None


def block_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, L) segment ids (0 prompt, k + 1 response k, -1 padding) -> (B, 1, L, L) booleans:
    causal, and a token sees the prompt or its own segment. Padding sees itself only, so no
    row of the mask is empty (an empty row makes attention NaN)."""
    length = segments.shape[1]
    causal = torch.ones(length, length, dtype=torch.bool).tril()  # (L, L)
    query, key = segments[:, :, None], segments[:, None, :]  # (B, L, 1), (B, 1, L)
    allowed = causal & (query != -1) & (key != -1) & ((key == 0) | (key == query))  # (B, L, L)
    allowed |= torch.eye(length, dtype=torch.bool) & (query == -1)
    return allowed[:, None]


class SharedPromptCollator:
    """Rows of `tokenize_ranking` with `prompt_ids` -> one packed sequence per ranking, plus
    (B, K) `ends` (each response's last position), ranks, scores and the valid mask."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows: list[dict]) -> dict:
        k_max = max(len(r["input_ids"]) for r in rows)
        pieces = [(r["prompt_ids"], [s[len(r["prompt_ids"]):] for s in r["input_ids"]])
                  for r in rows]
        length = max(len(p) + sum(map(len, rs)) for p, rs in pieces)
        input_ids = torch.full((len(rows), length), self.pad_token_id, dtype=torch.long)
        position_ids = torch.zeros((len(rows), length), dtype=torch.long)
        segments = torch.full((len(rows), length), -1, dtype=torch.long)
        ends = torch.zeros((len(rows), k_max), dtype=torch.long)
        for b, (prompt, responses) in enumerate(pieces):
            n = len(prompt)
            input_ids[b, :n], position_ids[b, :n] = torch.tensor(prompt), torch.arange(n)
            segments[b, :n] = 0
            start = n
            for k, response in enumerate(responses):
                stop = start + len(response)
                input_ids[b, start:stop] = torch.tensor(response)
                position_ids[b, start:stop] = torch.arange(n, n + len(response))
                segments[b, start:stop] = k + 1
                ends[b, k] = stop - 1
                start = stop
        return {"input_ids": input_ids, "attention_mask": block_mask(segments),
                "position_ids": position_ids, "ends": ends, **ranking_targets(rows)}


def score_head(model) -> torch.nn.Module:
    """The outermost module named `score` (the head of every decoder *ForSequenceClassification
    in transformers; under peft its ModulesToSaveWrapper, whose output is the active head's)."""
    heads = [(name, m) for name, m in model.named_modules() if name.split(".")[-1] == "score"]
    if not heads:
        raise ValueError(f"{type(model).__name__} has no `score` head; set "
                         "stage.share_prompt=false for this reward model")
    return min(heads, key=lambda item: item[0].count("."))[1]


@contextmanager
def captured_output(module: torch.nn.Module):
    """Collects the module's forward outputs while the block runs."""
    outputs: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _inputs, output: outputs.append(output))
    try:
        yield outputs
    finally:
        handle.remove()


def shared_prompt_rewards(model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards of a SharedPromptCollator batch: (B, K) with zeros at padding, and (sum K,)."""
    valid = inputs["valid"]  # (B, K)
    with captured_output(score_head(model)) as outputs:
        model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
              position_ids=inputs["position_ids"])
    per_token = outputs[-1][..., 0]  # (B, L): the score head at every position
    rewards = per_token.gather(1, inputs["ends"]).masked_fill(~valid, 0.0)  # (B, K)
    return rewards, rewards[valid]
