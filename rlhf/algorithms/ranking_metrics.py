"""Reward-model evaluation on held-out rankings: pairwise accuracy (overall and per rank
distance), Kendall's tau-b per prompt, top-1 accuracy, and the reward distribution."""

from __future__ import annotations

from collections import defaultdict
from statistics import mean, pstdev

from scipy.stats import kendalltau


def ranking_metrics(rewards: list[list[float]], ranks: list[list[int]]) -> dict:
    """rewards[i][k] is the reward of response k of prompt i; ranks[i][k] its rank (1 best)."""
    correct = total = top1 = 0
    by_distance: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    taus = []
    for r, rk in zip(rewards, ranks):
        levels = sorted(set(rk))
        for i in range(len(r)):
            for j in range(len(r)):
                if rk[i] < rk[j]:  # i ranked above j; ties give no pair
                    hit = int(r[i] > r[j])
                    correct, total = correct + hit, total + 1
                    d = levels.index(rk[j]) - levels.index(rk[i])
                    by_distance[d][0] += hit
                    by_distance[d][1] += 1
        top1 += int(rk[max(range(len(r)), key=r.__getitem__)] == min(rk))
        tau = kendalltau([-x for x in rk], r).statistic  # tau-b: ties handled
        if tau == tau:  # NaN when one side is constant
            taus.append(tau)
    flat = [x for r in rewards for x in r]
    metrics = {"eval/reward_accuracy": correct / max(total, 1), "eval/num_pairs": total,
               "eval/top1_accuracy": top1 / max(len(rewards), 1),
               "eval/kendall_tau": mean(taus) if taus else float("nan"),
               "eval/reward_mean": mean(flat), "eval/reward_std": pstdev(flat)}
    for d, (hit, n) in sorted(by_distance.items()):
        metrics[f"eval/reward_accuracy_rank_distance_{d}"] = hit / n
    return metrics
