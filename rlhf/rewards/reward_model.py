"""A stage=rm reward model as a reward function, normalised with its reward_stats.json."""

from __future__ import annotations

import json
from pathlib import Path

from rlhf.models import reward
from rlhf.models.generation import default_device
from rlhf.models.loading import resolve_model_path
from rlhf.rewards import completion_text


def find_reward_stats(path: str) -> dict | None:
    """reward_stats.json of a stage=rm run: in the run dir, beside `model/`."""
    checkpoint = Path(resolve_model_path(path, "stage.reward_model"))
    for candidate in (checkpoint / "reward_stats.json", checkpoint.parent / "reward_stats.json"):
        if candidate.exists():
            return json.loads(candidate.read_text())
    return None


class RewardModelReward:
    """(reward - mean) / std of the reward model on its training answers, so that its scale
    is comparable with other reward functions and across reward models."""

    __name__ = "reward_model"

    def __init__(self, path: str, batch_size: int = 32, max_length: int = 1024):
        self.model, self.tokenizer = reward.load(path)
        self.model.to(default_device())
        self.batch_size, self.max_length = batch_size, max_length
        stats = find_reward_stats(path)
        if stats is None:
            print(f"rlhf: {path} has no reward_stats.json (not a stage=rm run); "
                  "its rewards are used unnormalised")
            stats = {"mean": 0.0, "std": 1.0}
        self.mean, self.std = stats["mean"], max(stats["std"], 1e-6)

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        conversations = [list(p) + [{"role": "assistant", "content": completion_text(c)}]
                         for p, c in zip(prompts, completions)]
        raw = reward.score(self.model, self.tokenizer, conversations, self.batch_size,
                           self.max_length)
        return [(r - self.mean) / self.std for r in raw]
