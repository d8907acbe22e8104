"""Ranking arithmetic shared by the data tools and the reward-model stage (rank 1 = best)."""

from __future__ import annotations

import itertools


def ranks_from_scores(scores: list[float]) -> list[int]:
    """Dense ranks, higher score = better; equal scores tie."""
    levels = sorted(set(scores), reverse=True)
    return [levels.index(s) + 1 for s in scores]


def ranked_pairs(ranks: list[int], mode: str = "all") -> list[tuple[int, int]]:
    """(better, worse) index pairs of a ranking; ties give no pair.

    mode "all": every C(K,2) pair with different ranks; "adjacent": only pairs on
    neighbouring rank levels; "best": the top level against every other answer (the way
    UltraFeedback was binarised: the chosen answer is always a best one)."""
    levels = sorted(set(ranks))
    pairs = []
    for i, j in itertools.combinations(range(len(ranks)), 2):
        if ranks[i] == ranks[j]:
            continue
        better, worse = (i, j) if ranks[i] < ranks[j] else (j, i)
        if mode == "adjacent" and levels.index(ranks[worse]) - levels.index(ranks[better]) != 1:
            continue
        if mode == "best" and ranks[better] != levels[0]:
            continue
        pairs.append((better, worse))
    return pairs
