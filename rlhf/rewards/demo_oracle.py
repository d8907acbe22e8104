"""The demo's oracle as a reward function (what a perfect labeller would say): an upper
bound for what RL with a learned reward model can reach."""

from __future__ import annotations

from data_tools.demo.oracle import Oracle
from rlhf.rewards import completion_text


class OracleReward:
    """reward_funcs: [{_target_: rlhf.rewards.demo_oracle.OracleReward,
    catalogue: ${data.dir}/catalogue.json}]; needs the prompts' `product` and `intent`."""

    __name__ = "demo_oracle"

    def __init__(self, catalogue: str):
        self.oracle = Oracle.from_file(catalogue)

    def __call__(self, prompts, completions, product, intent, **kwargs) -> list[float]:
        return [self.oracle.score(completion_text(c), p, i).total
                for c, p, i in zip(completions, product, intent)]
