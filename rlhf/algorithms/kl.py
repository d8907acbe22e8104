"""KL divergence between the trained policy and its reference, estimated from samples.

For answers y sampled from the policy pi (temperature 1, no top-k/top-p), the per-sequence
log-ratio sum_t [log pi(y_t | x, y_<t) - log pi_ref(y_t | x, y_<t)] is an unbiased estimate of
KL(pi(. | x) || pi_ref(. | x)) by the chain rule of KL; averaged over prompts it is the
sequence-level KL that RLHF papers report (InstructGPT arXiv 2203.02155 eq. 2; the "k1"
estimator of J. Schulman, "Approximating KL Divergence", 2020).
"""

from __future__ import annotations

import torch


def sequence_kl(policy_logps: torch.Tensor, ref_logps: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL estimate. policy_logps, ref_logps, mask: (B, T) -> (B,)."""
    return ((policy_logps - ref_logps) * mask).sum(dim=1)
