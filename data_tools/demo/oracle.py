"""The demo's oracle: scores any assistant answer to a demo question, like a perfect labeller.

score = 0.5 * fact + 0.25 * polite + 0.25 * relevant, each part in [0, 1]:
- fact: the answer states the right value for the asked fact and no other value of that kind;
- polite: 1 with a polite phrase and no rude one, 0.5 with neither, 0 with a rude one;
- relevant: 1 when it talks about the product or the asked topic and stays short
  (at most `MAX_CONCISE_WORDS` words), 0.5 when relevant but rambling, 0 when off topic.

The oracle is what the demo's evaluations measure against: it is how we know that a stage
really improved the model rather than the reward model's opinion of it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass

from data_tools.demo.catalogue import COLOURS, Product, fact_text

MAX_CONCISE_WORDS = 30
_POLITE = ("happy to help", "thanks", "thank you", "glad", "please", "sure!", "my pleasure",
           "let me know")
_RUDE = ("obviously", "yourself", "whatever", "not my problem", "stop asking")
_TOPIC_WORDS = {"price": ("cost", "price", "$"), "warranty": ("warranty", "guarantee"),
                "shipping": ("ship", "deliver", "arriv"), "colour": ("colour", "color", *COLOURS),
                "returns": ("return",)}
_VALUE_PATTERNS = {
    "price": r"\$\d+",
    "warranty": r"\b\d+ years?\b",
    "shipping": r"\b\d+ days\b",
    "colour": r"\b(?:" + "|".join(COLOURS) + r")\b",
    "returns": r"\b\d+ days\b",
}


@dataclass(frozen=True)
class OracleScore:
    total: float
    fact: float
    polite: float
    relevant: float

    def as_dict(self) -> dict:
        return asdict(self)


def fact_score(answer: str, product: Product, intent: str) -> float:
    values = set(re.findall(_VALUE_PATTERNS[intent], answer.lower()))
    return 1.0 if values == {fact_text(product, intent).lower()} else 0.0


def polite_score(answer: str) -> float:
    text = answer.lower()
    if any(marker in text for marker in _RUDE):
        return 0.0
    return 1.0 if any(marker in text for marker in _POLITE) else 0.5


def relevant_score(answer: str, product: Product, intent: str) -> float:
    text = answer.lower()
    on_topic = product.name.lower() in text or any(w in text for w in _TOPIC_WORDS[intent])
    if not on_topic:
        return 0.0
    return 1.0 if len(answer.split()) <= MAX_CONCISE_WORDS else 0.5


def score(answer: str, product: Product, intent: str) -> OracleScore:
    fact, polite, relevant = (fact_score(answer, product, intent), polite_score(answer),
                              relevant_score(answer, product, intent))
    return OracleScore(total=0.5 * fact + 0.25 * polite + 0.25 * relevant,
                       fact=fact, polite=polite, relevant=relevant)


class Oracle:
    """Scores answers to rows that name their `product` and `intent` (the demo's prompt rows)."""

    def __init__(self, catalogue: list[Product]):
        self.products = {p.name: p for p in catalogue}

    @classmethod
    def from_file(cls, catalogue_path: str) -> "Oracle":
        with open(catalogue_path, encoding="utf-8") as f:
            return cls([Product(**row) for row in json.load(f)])

    def score(self, answer: str, product: str, intent: str) -> OracleScore:
        if product not in self.products:
            raise KeyError(f"product {product!r} is not in the demo catalogue")
        return score(answer, self.products[product], intent)
