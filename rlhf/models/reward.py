"""The scalar reward model: loading it and scoring conversations with it.

    from rlhf.models import reward
    model, tokenizer = reward.load("outputs/demo/<run>/rm")       # a run dir or a checkpoint
    reward.score(model, tokenizer, [[{"role": "user", "content": "Price of the Orbit Fan?"},
                                     {"role": "assistant", "content": "It costs $42."}]])

A reward model is `AutoModelForSequenceClassification` with one output, read at the last
token of the chat-templated conversation; it loads with plain `from_pretrained`.
"""

from __future__ import annotations

import torch

from rlhf.models.loading import resolve_model_path


def load(path: str, dtype=torch.float32):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_model_path(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.eval(), tokenizer


@torch.no_grad()
def score(model, tokenizer, conversations: list[list[dict]], batch_size: int = 32,
          max_length: int = 1024) -> list[float]:
    """One reward per conversation (each a list of {role, content} ending with the answer)."""
    texts = [tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"  # the model reads the last non-pad token
    rewards = []
    try:
        for start in range(0, len(texts), batch_size):
            batch = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                              truncation=True, max_length=max_length, add_special_tokens=False)
            logits = model(**batch.to(model.device)).logits  # (B, 1)
            rewards += logits[:, 0].float().tolist()
    finally:
        tokenizer.padding_side = side
    return rewards
