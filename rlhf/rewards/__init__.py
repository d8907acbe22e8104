"""Reward functions for grpo and rloo, in TRL's form: `f(prompts, completions, **columns)`
returns one float per completion; extra dataset columns (the demo's `product`, `intent`)
arrive as keyword arguments.

    stage.reward_model=<stage=rm run>                  # RewardModelReward, normalised
    stage.reward_funcs='[{_target_: rlhf.rewards.length.LengthPenalty, max_words: 30}]'

A `_target_` names a class (built with the other keys as arguments) or a plain function
(used as it is, or with the other keys bound). `weight` (default 1) weighs it in the sum.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from rlhf.errors import ConfigError


def completion_text(completion) -> str:
    """TRL passes conversational completions as [{"role": "assistant", "content": ...}]."""
    if isinstance(completion, list):
        return completion[-1]["content"] if completion else ""
    return completion


def build_reward_func(spec: dict, field: str) -> tuple[Callable, float]:
    from hydra.utils import get_object

    spec = dict(spec)
    target, weight = spec.pop("_target_", None), float(spec.pop("weight", 1.0))
    if not target:
        raise ConfigError(f"{field} needs `_target_: package.module.name` (a class or function)")
    try:
        obj = get_object(target)
    except Exception as err:  # Hydra wraps the ImportError/AttributeError
        raise ConfigError(f"{field}._target_={target}: cannot import it ({err})") from None
    if isinstance(obj, type):
        func = obj(**spec)
    elif spec:
        func = functools.update_wrapper(functools.partial(obj, **spec), obj)
    else:
        func = obj
    if not callable(func):
        raise ConfigError(f"{field}._target_={target} is not callable")
    return func, weight


def build_reward_funcs(stage: Any) -> tuple[list[Callable], list[float]]:
    """The reward model (if any) first, then stage.reward_funcs, with their weights."""
    from omegaconf import OmegaConf

    funcs, weights = [], []
    if stage.reward_model:
        from rlhf.rewards.reward_model import RewardModelReward
        funcs.append(RewardModelReward(stage.reward_model))
        weights.append(stage.reward_model_weight)
    for i, spec in enumerate(stage.reward_funcs):
        spec = OmegaConf.to_container(spec, resolve=True) if OmegaConf.is_config(spec) else spec
        func, weight = build_reward_func(spec, f"stage.reward_funcs[{i}]")
        funcs.append(func)
        weights.append(weight)
    return funcs, weights
