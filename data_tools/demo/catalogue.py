"""The synthetic customer-support domain of the built-in demo: products, facts, questions, answers.

Everything is generated from a seed, so the same seed gives the same catalogue on every machine.
A product has four facts (price, warranty, shipping time, colour); the shop has one returns
policy. Users ask about one fact at a time in one of five *intents*; each intent has training
phrasings and held-out phrasings, so the evaluation asks questions worded in ways the model
never saw during training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

INTENTS = ("price", "warranty", "shipping", "colour", "returns")
RETURNS_DAYS = 30

_ADJECTIVES = ["Aurora", "Breeze", "Cobalt", "Delta", "Ember", "Falcon", "Glacier", "Harbor",
               "Ivory", "Juniper", "Kestrel", "Lumen", "Meadow", "Nimbus", "Orbit", "Pioneer"]
_NOUNS = ["Kettle", "Lamp", "Blender", "Speaker", "Backpack", "Toaster", "Heater", "Fan",
          "Grinder", "Mixer", "Clock", "Router", "Scale", "Camera", "Charger", "Jacket"]
COLOURS = ("red", "blue", "green", "black", "white", "silver", "yellow", "orange")

# {name} is the product name. Held-out phrasings are only used for evaluation prompts.
TRAIN_PHRASINGS = {
    "price": ["How much does the {name} cost?", "What is the price of the {name}?",
              "How much is the {name}?", "What does the {name} sell for?",
              "Can you tell me the price of the {name}?"],
    "warranty": ["What warranty does the {name} have?", "How long is the warranty on the {name}?",
                 "Is the {name} under warranty, and for how long?",
                 "How many years of warranty come with the {name}?",
                 "What is the warranty period of the {name}?"],
    "shipping": ["How long does shipping take for the {name}?", "When will the {name} arrive?",
                 "How fast do you ship the {name}?", "What is the delivery time for the {name}?",
                 "How many days until the {name} is delivered?"],
    "colour": ["What colour is the {name}?", "Which colour does the {name} come in?",
               "What colour is the {name} made in?", "Tell me the colour of the {name}.",
               "Is the {name} available in a colour I should know about?"],
    "returns": ["Can I return the {name}?", "What is your return policy for the {name}?",
                "How long do I have to return the {name}?", "Can I send the {name} back?",
                "If I do not like the {name}, can I return it?"],
}
# Held-out phrasings keep each intent's keyword (a tiny model cannot learn synonyms it never
# saw) but put it in sentence shapes that never occur in training.
HELDOUT_PHRASINGS = {
    "price": ["What price would I pay for the {name}?", "Price of the {name}, please?",
              "I'd like to know what the {name} costs."],
    "warranty": ["Does the {name} come with a warranty?",
                 "For how long is the {name} covered by warranty?",
                 "I'd like to know the warranty of the {name}."],
    "shipping": ["How quickly can you ship the {name} to me?",
                 "Delivery time of the {name}, please?",
                 "I'd like to know how long the {name} takes to ship."],
    "colour": ["What colour would the {name} be?", "Colour of the {name}, please?",
               "I'd like to know the colour of the {name}."],
    "returns": ["Is it possible to return the {name}?", "Returns for the {name}, please?",
                "I'd like to know if I can return the {name}."],
}


@dataclass(frozen=True)
class Product:
    name: str
    price: int          # whole dollars
    warranty_years: int
    shipping_days: int
    colour: str


def make_catalogue(num_products: int, seed: int) -> list[Product]:
    rng = random.Random(seed)
    names = [f"{a} {n}" for a in _ADJECTIVES for n in _NOUNS]
    rng.shuffle(names)
    if num_products > len(names):
        raise ValueError(f"demo.num_products={num_products}: at most {len(names)} names exist")
    return [Product(name=name, price=rng.randrange(19, 300), warranty_years=rng.randint(1, 5),
                    shipping_days=rng.randint(2, 9), colour=rng.choice(COLOURS))
            for name in names[:num_products]]


def fact_text(product: Product, intent: str) -> str:
    """The fact an answer to `intent` must state, written as answers write it."""
    if intent == "price":
        return f"${product.price}"
    if intent == "warranty":
        return f"{product.warranty_years} year" + ("s" if product.warranty_years != 1 else "")
    if intent == "shipping":
        return f"{product.shipping_days} days"
    if intent == "colour":
        return product.colour
    if intent == "returns":
        return f"{RETURNS_DAYS} days"
    raise ValueError(f"unknown intent {intent!r}; expected one of {INTENTS}")


def fact_sheet(product: Product) -> str:
    """The system message a real support bot would get: the facts of the product asked about.
    With it, a reward model can check an answer's facts instead of memorising the catalogue."""
    return (f"Product: {product.name}. Price: "
            f"{fact_text(product, 'price')}. Warranty: {fact_text(product, 'warranty')}. "
            f"Shipping: {fact_text(product, 'shipping')}. Colour: {product.colour}. "
            f"Returns: within {RETURNS_DAYS} days.")


def wrong_fact_text(product: Product, intent: str, rng: random.Random) -> str:
    """A plausible but wrong value for the fact: what a hallucinating assistant would say."""
    right = fact_text(product, intent)
    while True:
        if intent == "price":
            candidate = f"${rng.randrange(19, 300)}"
        elif intent == "warranty":
            years = rng.randint(1, 5)
            candidate = f"{years} year" + ("s" if years != 1 else "")
        elif intent == "shipping":
            candidate = f"{rng.randint(2, 9)} days"
        elif intent == "colour":
            candidate = rng.choice(COLOURS)
        else:
            candidate = f"{rng.choice([7, 14, 60, 90])} days"
        if candidate != right:
            return candidate


# Answer styles. "good" is what the shop wants; the others are the flaws the later stages fix.
_GOOD = {
    "price": ["The {name} costs {fact}. Happy to help!",
              "Thanks for asking! The {name} is {fact}.",
              "Sure! The {name} sells for {fact}. Let me know if you need anything else."],
    "warranty": ["The {name} has a {fact} warranty. Happy to help!",
                 "Thanks for asking! The {name} comes with {fact} of warranty.",
                 "Sure! The warranty on the {name} is {fact}. Let me know if you need anything else."],
    "shipping": ["The {name} ships in {fact}. Happy to help!",
                 "Thanks for asking! The {name} arrives in {fact}.",
                 "Sure! Delivery of the {name} takes {fact}. Let me know if you need anything else."],
    "colour": ["The {name} is {fact}. Happy to help!",
               "Thanks for asking! The {name} comes in {fact}.",
               "Sure! The {name} is made in {fact}. Let me know if you need anything else."],
    "returns": ["You can return the {name} within {fact}. Happy to help!",
                "Thanks for asking! The {name} can be returned within {fact}.",
                "Sure! Returns of the {name} are accepted within {fact}. Let me know if you need anything else."],
}
_RUDE = ["{fact}. Obviously. Look it up yourself next time.",
         "It is {fact}, whatever. Stop asking me things you can read yourself.",
         "{fact}. Not my problem if you missed it."]
_OFF_TOPIC = ["Thanks for asking! Our store has great deals on gift cards this week.",
              "Happy to help! Did you know we also sell coffee mugs and tea towels?",
              "Sure! Our support line is open from nine to five on weekdays."]
# long enough to pass the oracle's concision limit, short enough to keep batches cheap
_RAMBLING_TAIL = (" Many customers ask about this, and every item in our shop is chosen by our team"
                  " with great care for quality and design.")

FLAWS = ("wrong_fact", "rude", "off_topic", "rambling")


def answer(product: Product, intent: str, style: str, rng: random.Random) -> str:
    """One assistant answer about `product` in the given style ("good" or one of FLAWS)."""
    good = rng.choice(_GOOD[intent])
    if style == "good":
        return good.format(name=product.name, fact=fact_text(product, intent))
    if style == "wrong_fact":
        return good.format(name=product.name, fact=wrong_fact_text(product, intent, rng))
    if style == "rude":
        text = rng.choice(_RUDE).format(fact=fact_text(product, intent))
        return text[0].upper() + text[1:]
    if style == "off_topic":
        return rng.choice(_OFF_TOPIC)
    if style == "rambling":
        return good.format(name=product.name, fact=fact_text(product, intent)) + _RAMBLING_TAIL
    raise ValueError(f"unknown answer style {style!r}; expected 'good' or one of {FLAWS}")


# how each held-out phrasing starts: no training question may contain one
_HELDOUT_STEMS = {p.split("{name}")[0].strip() for ps in HELDOUT_PHRASINGS.values() for p in ps}


# words that carry a question's intent: deleting them would make the question ambiguous
_INTENT_WORDS = ("cost", "price", "much", "sell", "warranty", "ship", "arrive", "deliver",
                 "colour", "return", "back")


def _keeps_meaning(word: str) -> bool:
    return "{name}" in word or any(k in word.lower() for k in _INTENT_WORDS)


def drop_words(template: str, rng: random.Random, rate: float) -> str:
    """Random deletion (EDA, Wei & Zou 2019, arXiv 1901.11196): each word of a training
    phrasing except the product name and the intent's keywords is dropped with probability
    `rate`. A tiny model then learns that the intent keyword alone decides the answer, not the
    sentence around it. A result that contains the start of a held-out phrasing is drawn
    again, so held-out shapes stay unseen."""
    words = template.split(" ")
    for _ in range(20):
        kept = [w for w in words if _keeps_meaning(w) or rng.random() >= rate]
        if len(kept) < 2:
            continue
        text = " ".join(kept)
        text = text[0].upper() + text[1:]
        if not any(stem and stem in text for stem in _HELDOUT_STEMS):
            return text
    return template


def question(product: Product, intent: str, rng: random.Random, heldout: bool,
             framing: bool, word_dropout: float = 0.0) -> str:
    """A user question. `framing` adds a random greeting/closing and `word_dropout` deletes
    random words of training phrasings: both keep a tiny model from memorising the exact
    training phrasings (docs/demo.md). Held-out phrasings are never altered but framed."""
    phrasings = HELDOUT_PHRASINGS if heldout else TRAIN_PHRASINGS
    template = rng.choice(phrasings[intent])
    if word_dropout > 0 and not heldout:
        template = drop_words(template, rng, word_dropout)
    text = template.format(name=product.name)
    if framing:
        opener = rng.choice(["", "", "Hi, ", "Hello! ", "Hey there. ", "Good morning, "])
        closer = rng.choice(["", "", " Thanks.", " Thank you!", " Please help."])
        if opener.endswith(", "):
            text = text[0].lower() + text[1:]
        text = opener + text + closer
    return text
