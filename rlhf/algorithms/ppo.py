"""The math of PPO for language models (rlhf/stages/ppo.py), as pure tensor functions.

Shapes: B answers, T answer tokens (right-padded), V vocabulary. Every function that sees
padding takes `mask` (B, T), 1 for a real answer token and 0 for padding, and reads nothing
from padded positions (`torch.where`, not multiplication, so even NaN or inf there is inert).

- GAE: Schulman, Moritz, Levine, Jordan, Abbeel, "High-Dimensional Continuous Control Using
  Generalized Advantage Estimation", ICLR 2016 (arXiv 1506.02438), eq. 16.
- Clipped surrogate policy loss: Schulman, Wolski, Dhariwal, Radford, Klimov, "Proximal Policy
  Optimization Algorithms", 2017 (arXiv 1707.06347), eq. 7; the clipped value loss is the one of
  OpenAI's baselines ppo2 (used by Ziegler et al. 2019 and InstructGPT), discussed in Engstrom
  et al., "Implementation Matters in Deep RL", ICLR 2020 (arXiv 2005.12729).
- KL estimators k1 and k3: J. Schulman, "Approximating KL Divergence" (2020),
  http://joschu.net/blog/kl-approx.html.
- KL penalty in the reward and its adaptive coefficient: Ziegler et al., "Fine-Tuning Language
  Models from Human Preferences", 2019 (arXiv 1909.08593), section 2.2; InstructGPT (Ouyang et
  al. 2022, arXiv 2203.02155) eq. 2.
- Whitening (per-batch normalisation of advantages; rewards scaled without mean shift): the
  implementation details catalogued by Huang et al., "The N Implementation Details of RLHF with
  PPO" (ICLR blog track 2024) and Engstrom et al. 2020.
"""

from __future__ import annotations

import torch

# ---------------------------------------------------------------- masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    x = torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim=None) -> torch.Tensor:
    """Mean of x over the positions where mask is 1 (0 when there are none)."""
    count = mask.sum() if dim is None else mask.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked-in positions (Bessel-corrected when `unbiased`)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked-in positions; with shift_mean=False, x / std with the
    mean added back (rewards keep their sign: a uniformly good batch stays good). Padding
    comes back as 0."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


# ---------------------------------------------------------------- KL


def kl_estimate(logps: torch.Tensor, ref_logps: torch.Tensor, estimator: str = "k1",
                clamp: float = 10.0) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from tokens sampled from pi (Schulman 2020).

    With log r = log pi_ref(y) - log pi(y):
    - k1 = -log r: unbiased, high variance, can be negative for one token;
    - k3 = (r - 1) - log r: unbiased, never negative, lower variance.
    The result is clamped to [-clamp, clamp]: one token with a huge ratio must not dominate a
    batch's reward. (B, T) -> (B, T)."""
    log_ratio = ref_logps - logps
    if estimator == "k1":
        kl = -log_ratio
    elif estimator == "k3":
        # exp of a clamped log ratio: the estimate is clamped anyway, exp must not overflow
        log_ratio = log_ratio.clamp(-clamp, clamp)
        kl = torch.expm1(log_ratio) - log_ratio
    else:
        raise ValueError(f"unknown KL estimator {estimator!r}; use k1 or k3")
    return kl.clamp(-clamp, clamp)


class FixedKLController:
    """A constant KL coefficient beta."""

    def __init__(self, init_kl_coef: float):
        self.value = init_kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, section 2.2: a proportional controller that steers the KL towards
    `target`. After a batch of n_steps samples with mean KL `current_kl`,

        e = clip(current_kl / target - 1, -0.2, 0.2),   beta <- beta * (1 + e * n_steps / horizon)
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: float):
        super().__init__(init_kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------- rewards and advantages


def kl_penalised_rewards(scores: torch.Tensor, kl: torch.Tensor, kl_coef: float,
                         mask: torch.Tensor) -> torch.Tensor:
    """Per-token rewards: -kl_coef * KL_t at every answer token, plus the sequence's score on
    its last real token (InstructGPT eq. 2, spread over tokens as in Ziegler et al.).
    scores (B,), kl (B, T), mask (B, T) -> (B, T), zero in padding."""
    rewards = torch.where(mask.bool(), -kl_coef * kl, torch.zeros_like(kl))
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,): index of the last real token
    has_tokens = mask.sum(dim=1) > 0
    rewards[torch.arange(len(scores)), last] += torch.where(has_tokens, scores,
                                                            torch.zeros_like(scores))
    return rewards


def sequence_scores(raw: torch.Tensor, stopped: torch.Tensor, score_clip: float,
                    missing_eos_penalty: float | None) -> torch.Tensor:
    """The score of each answer: the (normalised) reward clipped to [-score_clip, score_clip],
    minus `missing_eos_penalty` for an answer that never reached a stop token (truncated
    answers must not win by rambling on; Huang et al. 2024). raw, stopped: (B,) -> (B,)."""
    scores = raw.clamp(-score_clip, score_clip)
    if missing_eos_penalty is not None:
        scores = scores - missing_eos_penalty * (1 - stopped.to(scores.dtype))
    return scores


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16):

        delta_t = r_t + gamma * V_{t+1} - V_t,   A_t = delta_t + gamma * lam * A_{t+1},

    with V and A after the last real token taken as 0 (the episode ends there). Returns
    (advantages, returns = advantages + values), both (B, T) and zero in padding."""
    m = mask.to(rewards.dtype)
    zero = torch.zeros((), dtype=rewards.dtype, device=rewards.device)
    r = torch.where(mask.bool(), rewards, zero)
    v = torch.where(mask.bool(), values, zero)
    T = r.shape[1]
    advantages = torch.zeros_like(r)
    next_value = torch.zeros_like(r[:, 0])
    next_advantage = torch.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_value - v[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m[:, t]
        # padding after a sequence's end contributes nothing to the positions before it
        next_value, next_advantage = v[:, t] * m[:, t], advantages[:, t]
    returns = torch.where(mask.bool(), advantages + v, zero)
    return advantages, returns


# ---------------------------------------------------------------- losses


def policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, cliprange: float) -> tuple[torch.Tensor, dict]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) as a loss to minimise:

        ratio = exp(logp - old_logp),
        loss = mean over tokens of max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)).

    Also returns `clipfrac` (share of tokens where the clipped term is the larger) and
    `approx_kl` (k3 estimate of KL(pi_old || pi) on these tokens, for early stopping)."""
    log_ratio = torch.where(mask.bool(), logps - old_logps, torch.zeros_like(logps))
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, cliprange_value: float) -> tuple[torch.Tensor, dict]:
    """Clipped value loss (baselines ppo2): the new value may move at most cliprange_value
    away from the value at rollout time before its error counts in full:

        v_clip = old_v + clip(v - old_v, -c, c),  loss = 0.5 * mean max((v - R)^2, (v_clip - R)^2)

    Returns the loss and `value_clipfrac` (share of tokens where the clipped error is larger)."""
    clipped_values = old_values + (values - old_values).clamp(-cliprange_value, cliprange_value)
    unclipped_err = (values - returns) ** 2
    clipped_err = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(unclipped_err, clipped_err), mask)
    with torch.no_grad():
        stats = {"value_clipfrac": masked_mean((clipped_err > unclipped_err).float(), mask)}
    return loss, stats


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logsumexp(z) - sum softmax(z) * z.
    (..., V) -> (...)."""
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over real tokens: 1 is a perfect critic, 0 one
    no better than a constant, below 0 worse than that (NaN-free: Var 0 gives 0)."""
    var_returns = masked_var(returns, mask, unbiased=False)
    var_error = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_returns > 0, 1 - var_error / var_returns.clamp(min=1e-12),
                       torch.zeros_like(var_returns))
