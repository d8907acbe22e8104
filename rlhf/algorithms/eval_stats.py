"""The statistics of model comparison: perplexity, win rate against a baseline with a bootstrap
confidence interval, and agreement between raters (Cohen's and Fleiss' kappa).

Pure functions on numbers and tensors; what they are checked against is in
tests/test_eval_compare.py and tests/test_eval_sheet.py, the definitions in docs/evaluation.md.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

WIN, TIE, LOSS = 1.0, 0.5, 0.0


def perplexity(logps: torch.Tensor, mask: torch.Tensor) -> float:
    """Token-level perplexity of a set of texts: exp(-sum log p(token) / number of tokens),
    pooled over all texts (Jelinek et al. 1977; the corpus perplexity of language-model papers,
    not the mean of per-text perplexities). logps, mask: (N, T) as answer_logprobs gives them."""
    tokens = mask.sum()
    if tokens == 0:
        return float("nan")
    return math.exp(-(logps * mask).sum().item() / tokens.item())


def outcomes(scores: list[float], baseline: list[float], tie_margin: float = 0.0) -> list[float]:
    """Per prompt, 1 (win), 0.5 (tie) or 0 (loss) of `scores` against the baseline's scores on
    the same prompt: a tie when the two differ by at most tie_margin."""
    return [TIE if abs(s - b) <= tie_margin else (WIN if s > b else LOSS)
            for s, b in zip(scores, baseline, strict=True)]


def outcome_rates(results: list[float]) -> dict:
    """win/tie/loss shares and the win rate, a tie counting half (as AlpacaEval's win rate
    counts them, Li et al. 2023): (wins + ties / 2) / n."""
    n = max(len(results), 1)
    counts = Counter(results)
    return {"win": counts[WIN] / n, "tie": counts[TIE] / n, "loss": counts[LOSS] / n,
            "win_rate": sum(results) / n}


def bootstrap_ci(values: list[float], num_samples: int = 1000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of `values` (Efron 1979,
    "Bootstrap methods: another look at the jackknife", Ann. Statist. 7(1); Efron & Tibshirani
    1993, "An Introduction to the Bootstrap", ch. 13): resample the values (here: prompts) with
    replacement `num_samples` times, seeded, and take the (1-c)/2 and (1+c)/2 quantiles of the
    resampled means."""
    if not values:
        return float("nan"), float("nan")
    data = torch.tensor(values, dtype=torch.float64)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(values), (num_samples, len(values)), generator=generator)
    means = data[index].mean(dim=1)
    alpha = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return low.item(), high.item()


def cohen_kappa(a: list, b: list) -> float:
    """Cohen's kappa of two raters' labels on the same items (Cohen 1960, "A coefficient of
    agreement for nominal scales", Educ. Psychol. Meas. 20(1)): (p_o - p_e) / (1 - p_e), p_o the
    observed agreement, p_e the agreement expected from each rater's own label shares. 1 when
    both agree everywhere and use one label only (p_e = 1)."""
    if len(a) != len(b) or not a:
        raise ValueError("cohen_kappa needs two equally long, non-empty label lists")
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    share_a, share_b = Counter(a), Counter(b)
    expected = sum(share_a[k] * share_b[k] for k in share_a) / n ** 2
    if expected == 1:
        return 1.0
    return (observed - expected) / (1 - expected)


def fleiss_kappa(counts: list[list[int]]) -> float:
    """Fleiss' kappa (Fleiss 1971, "Measuring nominal scale agreement among many raters",
    Psychol. Bull. 76(5)). counts[i][j]: how many raters put item i in category j; every item
    has the same number of raters n >= 2. kappa = (P_bar - P_e) / (1 - P_e) with
    P_i = (sum_j n_ij^2 - n) / (n (n - 1)), P_bar their mean, p_j the share of all labels in
    category j and P_e = sum_j p_j^2."""
    raters = {sum(row) for row in counts}
    if len(raters) != 1 or min(raters) < 2:
        raise ValueError("fleiss_kappa needs the same number (>= 2) of ratings on every item")
    n, items = raters.pop(), len(counts)
    p_items = [(sum(c * c for c in row) - n) / (n * (n - 1)) for row in counts]
    p_bar = sum(p_items) / items
    shares = [sum(row[j] for row in counts) / (items * n) for j in range(len(counts[0]))]
    p_e = sum(p * p for p in shares)
    if p_e == 1:
        return 1.0
    return (p_bar - p_e) / (1 - p_e)
