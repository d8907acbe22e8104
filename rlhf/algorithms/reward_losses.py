"""Reward-model losses.

- Pairwise Bradley-Terry loss (Bradley & Terry 1952; InstructGPT, arXiv 2203.02155 eq. 1 with
  K=2), with an optional margin from the data (Llama 2, arXiv 2307.09288 section 3.2.2) and an
  optional penalty that keeps rewards centred on zero (Eisenstein et al., arXiv 2312.09244).
- K-wise ranking loss (InstructGPT section 3.5): all C(K,2) comparisons of one prompt form one
  batch element, computed from K reward values (K forward passes, not 2*C(K,2)); the loss is
  averaged over the prompt's pairs, and ties contribute nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                  margin: torch.Tensor | None = None, center_coef: float = 0.0) -> torch.Tensor:
    """-log sigmoid(r_chosen - r_rejected - margin), averaged over the batch.

    chosen_rewards, rejected_rewards, margin: (B,)"""
    logits = chosen_rewards - rejected_rewards  # (B,)
    if margin is not None:
        logits = logits - margin
    loss = -F.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * torch.mean((chosen_rewards + rejected_rewards) ** 2)
    return loss


def ranking_pair_mask(ranks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """better[b, i, j] is True when response i is ranked above response j (rank 1 = best).

    ranks: (B, K) integers; valid: (B, K) bool, False for padding when prompts have fewer
    than K responses. Equal ranks (ties) give no pair."""
    better = ranks[:, :, None] < ranks[:, None, :]  # (B, K, K)
    return better & valid[:, :, None] & valid[:, None, :]


def kwise_ranking_loss(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor,
                       scores: torch.Tensor | None = None) -> torch.Tensor:
    """InstructGPT's loss: -1/#pairs * sum over pairs (w better than l) of
    log sigmoid(r_w - r_l [- (score_w - score_l)]), averaged over prompts.

    rewards: (B, K); ranks: (B, K); valid: (B, K); scores: (B, K) or None (margins off)."""
    better = ranking_pair_mask(ranks, valid)  # (B, K, K)
    diff = rewards[:, :, None] - rewards[:, None, :]  # (B, K, K): r_i - r_j
    if scores is not None:
        diff = diff - (scores[:, :, None] - scores[:, None, :])
    pair_losses = -F.logsigmoid(diff) * better  # (B, K, K)
    pairs_per_prompt = better.sum(dim=(1, 2))  # (B,)
    has_pairs = pairs_per_prompt > 0
    per_prompt = pair_losses.sum(dim=(1, 2)) / pairs_per_prompt.clamp(min=1)  # (B,)
    return per_prompt[has_pairs].mean() if has_pairs.any() else rewards.sum() * 0.0


def ranking_accuracy(rewards: torch.Tensor, ranks: torch.Tensor, valid: torch.Tensor) -> tuple:
    """(pairs ordered correctly, pairs) over all non-tied pairs of the batch."""
    better = ranking_pair_mask(ranks, valid)
    correct = (rewards[:, :, None] > rewards[:, None, :]) & better
    return int(correct.sum()), int(better.sum())
