"""A length penalty: a reward model that likes long answers is the classic hack to guard."""

from __future__ import annotations

from rlhf.rewards import completion_text


class LengthPenalty:
    """-per_word for every word beyond max_words."""

    __name__ = "length_penalty"

    def __init__(self, max_words: int = 30, per_word: float = 0.05):
        self.max_words, self.per_word = max_words, per_word

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        return [-self.per_word * max(0, len(completion_text(c).split()) - self.max_words)
                for c in completions]
