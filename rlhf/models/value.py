"""A value model (PPO's critic) and per-token reward-model outputs.

A `AutoModelForSequenceClassification` with one label (what stage=rm trains) applies its
linear `score` head to every position and then reads the last one. `ValueModel` keeps every
position: values (B, L), one scalar per token. The critic starts from the reward model's run
(its backbone and head already judge answers) or from the policy's checkpoint with a fresh
head initialised to zero, so that the first advantages are the rewards themselves.
"""

from __future__ import annotations

import torch
from torch import nn

from rlhf.models.loading import resolve_model_path


def load_sequence_classifier(path: str, dtype=torch.float32, zero_head: bool = False,
                             pad_token_id: int | None = None):
    """One-label sequence classifier from a checkpoint (a causal LM checkpoint gets a new
    `score` head, zeroed with `zero_head`)."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(
        resolve_model_path(path), num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = pad_token_id
    if zero_head:
        with torch.no_grad():
            for param in score_head(model).parameters():
                param.zero_()
    return model


def score_head(model) -> nn.Module:
    """The linear head of a transformers sequence classifier (`score` for Llama, Qwen2,
    Mistral, ...; `classifier` for some others)."""
    for name in ("score", "classifier"):
        if hasattr(model, name):
            return getattr(model, name)
    raise ValueError(f"{type(model).__name__} has no `score` or `classifier` head")


class ValueModel(nn.Module):
    """forward(input_ids, attention_mask, position_ids) -> (B, L) float32 values."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier  # the HF model (or a peft model wrapping it)

    def _parts(self):
        inner = self.classifier
        if hasattr(inner, "get_base_model"):  # peft: LoRA layers sit inside the base model
            inner = inner.get_base_model()
        return getattr(inner, inner.base_model_prefix), score_head(inner)

    def forward(self, input_ids, attention_mask, position_ids):
        backbone, head = self._parts()
        hidden = backbone(input_ids=input_ids, attention_mask=attention_mask,
                          position_ids=position_ids, use_cache=False).last_hidden_state
        return head(hidden)[..., 0].float()
