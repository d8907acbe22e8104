"""Reward-model losses against numbers worked out by hand.

-log sigmoid(x) = log(1 + exp(-x)): x=2 -> 0.126928, x=1 -> 0.313262, x=0 -> 0.693147,
x=0.5 -> 0.474077, x=-1 -> 1.313262."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algorithms.reward_losses import (kwise_ranking_loss, pairwise_loss,
                                           ranking_accuracy, ranking_pair_mask)

NLS = {2: 0.126928, 1: 0.313262, 0: 0.693147, 0.5: 0.474077, -1: 1.313262}


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def test_pairwise_bradley_terry():
    loss = pairwise_loss(t(2.0, 0.0), t(0.0, 1.0))  # differences 2 and -1
    assert loss.item() == pytest.approx((NLS[2] + NLS[-1]) / 2, abs=1e-5)


def test_pairwise_with_margin_and_centering():
    # difference 2 minus margin 1.5 -> 0.5
    assert pairwise_loss(t(2.0), t(0.0), margin=t(1.5)).item() == pytest.approx(NLS[0.5], abs=1e-5)
    # centering adds coef * mean((r_c + r_r)^2) = 0.01 * (2 + 0)^2
    centred = pairwise_loss(t(2.0), t(0.0), center_coef=0.01).item()
    assert centred == pytest.approx(NLS[2] + 0.04, abs=1e-5)


def test_kwise_three_responses():
    # rewards [2, 0, 1], ranks [1, 3, 2]: pairs 0>1 (diff 2), 0>2 (diff 1), 2>1 (diff 1)
    loss = kwise_ranking_loss(t(2.0, 0.0, 1.0)[None], torch.tensor([[1, 3, 2]]),
                              torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((NLS[2] + NLS[1] + NLS[1]) / 3, abs=1e-5)


def test_kwise_ties_contribute_nothing():
    # ranks [1, 2, 2]: pairs 0>1 (diff 2), 0>2 (diff 1); 1 and 2 tie
    loss = kwise_ranking_loss(t(2.0, 0.0, 1.0)[None], torch.tensor([[1, 2, 2]]),
                              torch.ones(1, 3, dtype=torch.bool))
    assert loss.item() == pytest.approx((NLS[2] + NLS[1]) / 2, abs=1e-5)


def test_kwise_averages_per_prompt_then_over_prompts_with_padding():
    rewards = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 9.0]])
    ranks = torch.tensor([[1, 3, 2], [1, 2, 99]])
    valid = torch.tensor([[True, True, True], [True, True, False]])  # prompt 2 has K=2
    loss = kwise_ranking_loss(rewards, ranks, valid)
    first = (NLS[2] + NLS[1] + NLS[1]) / 3
    assert loss.item() == pytest.approx((first + NLS[0]) / 2, abs=1e-5)


def test_kwise_with_score_margins():
    # scores [1.0, 0.5]: diff 1 - margin 0.5 -> 0.5
    loss = kwise_ranking_loss(t(1.0, 0.0)[None], torch.tensor([[1, 2]]),
                              torch.ones(1, 2, dtype=torch.bool), scores=t(1.0, 0.5)[None])
    assert loss.item() == pytest.approx(NLS[0.5], abs=1e-5)


def test_kwise_equals_mean_of_pairwise_losses_over_all_pairs():
    torch.manual_seed(0)
    rewards = torch.randn(1, 4)
    ranks = torch.tensor([[3, 1, 4, 2]])  # not in index order: best is response 1
    valid = torch.ones(1, 4, dtype=torch.bool)
    by_rank = [1, 3, 0, 2]  # the responses from best to worst, worked out by hand
    pairs = [(by_rank[a], by_rank[b]) for a in range(4) for b in range(a + 1, 4)]
    expected = pairwise_loss(rewards[0, [w for w, _ in pairs]], rewards[0, [l for _, l in pairs]])
    got = kwise_ranking_loss(rewards, ranks, valid)
    assert got.item() == pytest.approx(expected.item(), abs=1e-6)
    # the loss itself sees exactly the C(4,2) ordered pairs, each once, in the right direction
    better = ranking_pair_mask(ranks, valid)[0]
    assert int(better.sum()) == math.comb(4, 2)
    assert {(i, j) for i in range(4) for j in range(4) if better[i, j]} == set(pairs)


def test_ranking_accuracy_skips_ties():
    correct, total = ranking_accuracy(t(2.0, 0.0, 1.0)[None], torch.tensor([[1, 2, 2]]),
                                      torch.ones(1, 3, dtype=torch.bool))
    assert (correct, total) == (2, 2)
