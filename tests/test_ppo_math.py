"""rlhf/algorithms/ppo.py against numbers worked out by hand (in the comments), and padding:
what sits in padded positions changes no loss, advantage or metric."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.algorithms.ppo import (AdaptiveKLController, FixedKLController, entropy_from_logits,
                                 explained_variance, gae, kl_estimate, kl_penalised_rewards,
                                 masked_mean, masked_whiten, policy_loss, value_loss)

approx = lambda x: pytest.approx(x, abs=1e-5)  # noqa: E731


def test_gae_by_hand():
    # row 0: gamma 1, lambda 0.5, rewards (0, 0, 1), values (0.5, 0.4, 0.3)
    #   t=2: delta = 1 - 0.3 = 0.7                          A = 0.7
    #   t=1: delta = 0 + 0.3 - 0.4 = -0.1                   A = -0.1 + 0.5 * 0.7 = 0.25
    #   t=0: delta = 0 + 0.4 - 0.5 = -0.1                   A = -0.1 + 0.5 * 0.25 = 0.025
    adv, ret = gae(torch.tensor([[0.0, 0.0, 1.0]]), torch.tensor([[0.5, 0.4, 0.3]]),
                   torch.ones(1, 3), gamma=1.0, lam=0.5)
    assert adv[0].tolist() == approx([0.025, 0.25, 0.7])
    assert ret[0].tolist() == approx([0.525, 0.65, 1.0])
    # gamma 0.9, lambda 1, two real tokens then padding (whose 7s must be ignored)
    #   t=1: delta = 2 + 0 - 1 = 1 (the episode ends: V after it is 0)   A = 1
    #   t=0: delta = 0 + 0.9 * 1 - 1 = -0.1                             A = -0.1 + 0.9 * 1 = 0.8
    adv, ret = gae(torch.tensor([[0.0, 2.0, 7.0]]), torch.tensor([[1.0, 1.0, 7.0]]),
                   torch.tensor([[1.0, 1.0, 0.0]]), gamma=0.9, lam=1.0)
    assert adv[0].tolist() == approx([0.8, 1.0, 0.0])
    assert ret[0].tolist() == approx([1.8, 2.0, 0.0])


def test_kl_estimators_by_hand_and_clamped():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    # log r = log(0.25 / 0.5) = -log 2; k1 = log 2; k3 = (0.5 - 1) + log 2
    assert kl_estimate(logp, ref, "k1").item() == approx(math.log(2))
    assert kl_estimate(logp, ref, "k3").item() == approx(math.log(2) - 0.5)
    # a token the reference finds e^30 times less likely: clamped to 10 (k3: log r to -10)
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([-30.0]), "k1").item() == 10.0
    assert kl_estimate(torch.tensor([0.0]), torch.tensor([-30.0]), "k3").item() == \
        approx(math.exp(-10) - 1 + 10)
    # the other way round: k1 = -30 -> -10; k3 = e^10 - 1 - 10 -> 10
    assert kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "k1").item() == -10.0
    assert kl_estimate(torch.tensor([-30.0]), torch.tensor([0.0]), "k3").item() == 10.0
    # k3 is never negative, k1 can be
    assert kl_estimate(ref, logp, "k1").item() < 0 < kl_estimate(ref, logp, "k3").item()
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k2")


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL 9 is 50% above target: the error is clipped to 0.2; 0.2 * (1 + 0.2 * 500 / 10000)
    ctl.update(9.0, n_steps=500)
    assert ctl.value == approx(0.202)
    ctl.load_state_dict({"value": 0.2})
    # KL 5.4 is 10% below target: 0.2 * (1 - 0.1 * 500 / 10000)
    ctl.update(5.4, n_steps=500)
    assert ctl.value == approx(0.199)
    fixed = FixedKLController(0.05)
    fixed.update(100.0, n_steps=500)
    assert fixed.value == 0.05 and fixed.state_dict() == {"value": 0.05}


def test_whitening_by_hand():
    x, mask = torch.tensor([[2.0, 4.0, 6.0, 99.0]]), torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    # mean 4, unbiased variance ((-2)^2 + 0 + 2^2) / 2 = 4, std 2
    assert masked_whiten(x, mask)[0].tolist() == approx([-1.0, 0.0, 1.0, 0.0])
    # rewards: scaled by 1/std, mean kept: (x - 4) / 2 + 4
    assert masked_whiten(x, mask, shift_mean=False)[0].tolist() == approx([3.0, 4.0, 5.0, 0.0])


def test_kl_penalised_rewards_by_hand():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, 0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = kl_penalised_rewards(torch.tensor([1.0, 2.0]), kl, 0.1, mask)
    # -0.1 * KL per token, the score on the last real token, nothing in padding
    assert rewards.tolist() == [approx([-0.01, -0.02, 0.97]), approx([-0.05, 1.95, 0.0])]


def test_clipped_policy_loss_by_hand():
    logps, old = torch.log(torch.tensor([[1.0, 0.5]])), torch.log(torch.tensor([[0.5, 0.5]]))
    adv = torch.tensor([[1.0, -1.0]])
    loss, stats = policy_loss(logps, old, adv, torch.ones(1, 2), cliprange=0.2)
    # token 1: ratio 2, max(-1 * 2, -1 * 1.2) = -1.2 (clipped); token 2: ratio 1, max(1, 1) = 1
    assert loss.item() == approx((-1.2 + 1.0) / 2)
    assert stats["clipfrac"].item() == approx(0.5)
    # k3 of the log ratios (log 2, 0): (2 - 1 - log 2 + 0) / 2
    assert stats["approx_kl"].item() == approx((1 - math.log(2)) / 2)


def test_clipped_value_loss_by_hand():
    values, old = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0]])
    loss, stats = value_loss(values, old, returns, torch.ones(1, 2), cliprange_value=0.2)
    # token 1: v 1 clipped to 0.2: max((1 - 1)^2, (0.2 - 1)^2) = 0.64; token 2: (0 - 1)^2 = 1
    assert loss.item() == approx(0.5 * (0.64 + 1.0) / 2)
    assert stats["value_clipfrac"].item() == approx(0.5)


def test_entropy_and_explained_variance_by_hand():
    logits = torch.tensor([[0.0, 0.0], [0.0, math.log(3.0)]])
    # uniform over 2: log 2; probabilities (1/4, 3/4): -(1/4 log 1/4 + 3/4 log 3/4)
    assert entropy_from_logits(logits).tolist() == approx(
        [math.log(2), -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))])
    returns, mask = torch.tensor([[1.0, 2.0, 3.0]]), torch.ones(1, 3)
    assert explained_variance(returns.clone(), returns, mask).item() == approx(1.0)
    # a constant critic explains nothing: Var(returns - 2) = Var(returns)
    assert explained_variance(torch.full((1, 3), 2.0), returns, mask).item() == approx(0.0)
    assert explained_variance(-returns, returns, mask).item() < 0


def test_padding_changes_nothing():
    torch.manual_seed(0)
    B, T = 3, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.float)
    real = mask.bool()
    tensors = {name: torch.randn(B, T) for name in
               ("logps", "old", "ref", "values", "old_values", "kl")}
    logits = torch.randn(B, T, 7)

    def everything(t, logits):
        out = {}
        rewards = kl_penalised_rewards(torch.tensor([1.0, -1.0, 0.5]),
                                       kl_estimate(t["logps"], t["ref"], "k3"), 0.1, mask)
        out["rewards"] = rewards
        out["advantages"], out["returns"] = gae(rewards, t["values"], mask, 1.0, 0.95)
        out["whitened"] = masked_whiten(out["advantages"], mask)
        out["whitened_rewards"] = masked_whiten(rewards, mask, shift_mean=False)
        out["pg"], stats = policy_loss(t["logps"], t["old"], out["whitened"], mask, 0.2)
        out.update(stats)
        out["vf"], stats = value_loss(t["values"], t["old_values"], out["returns"], mask, 0.2)
        out.update(stats)
        out["entropy"] = masked_mean(entropy_from_logits(logits), mask)
        out["ev"] = explained_variance(t["values"], out["returns"], mask)
        out["kl1"] = masked_mean(kl_estimate(t["logps"], t["ref"], "k1"), mask)
        return out

    clean = everything(tensors, logits)
    junk = {k: torch.where(real, v, torch.full_like(v, 1e4) * torch.randn_like(v))
            for k, v in tensors.items()}
    junk["values"] = torch.where(real, tensors["values"], torch.tensor(float("nan")))
    junk_logits = torch.where(real[..., None], logits, torch.randn_like(logits) * 1e3)
    dirty = everything(junk, junk_logits)
    for name in clean:
        a, b = clean[name], dirty[name]
        if a.dim():
            a, b = a[real], b[real]
        assert torch.allclose(a, b, atol=1e-6), name
        assert torch.isfinite(b).all(), name
