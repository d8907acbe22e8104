"""The demo's tiny model: a BPE tokenizer trained on the demo corpus and a small Llama.

Both are real Hugging Face objects written with `save_pretrained`, so every stage loads them
exactly as it loads a hub model (`from_pretrained` on a directory). `model=demo_tiny` builds
them once into the cache directory and reuses them.
"""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path

from data_tools.demo import catalogue as cat
from data_tools.demo.generate import prompt_rows, ranking_rows, sft_rows
from data_tools.io import atomic_dir, build_once

MANIFEST = "rlhf_demo_model.json"
# bump when demo_corpus changes, so cached tokenizers are rebuilt
CORPUS_VERSION = 2
END_OF_TURN = "<|end|>"
PAD = "<|pad|>"
SPECIAL_TOKENS = [PAD, END_OF_TURN, "<|system|>", "<|user|>", "<|assistant|>"]

# The assistant turn sits inside {% generation %} with its end-of-turn token, so TRL's
# assistant_only_loss trains the model to say <|end|> (and so to stop).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + '<|end|>' }}"
    "{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + '<|end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


@dataclass
class DemoModelSpec:
    """Architecture of the tiny Llama (0.75 M parameters at these defaults)."""
    seed: int = 0
    # the BPE trainer stops near 740 tokens on this corpus, whatever is asked above that
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    max_position_embeddings: int = 256


def demo_corpus(seed: int) -> list[str]:
    """Plain text of every kind of turn in the demo domain (training and held-out phrasings,
    fact sheets included: a tokenizer that never saw them splits every system message into
    ~2x more tokens, and sequence length is what the demo's training time is made of)."""
    products = cat.make_catalogue(30, seed)
    rng = random.Random(f"corpus-{seed}")
    texts = []
    for heldout in (False, True):
        for row in sft_rows(products, 1500, 0.5, heldout, True, rng, fact_sheet=True):
            texts += [m["content"] for m in row["messages"]]
        for row in ranking_rows(products, 200, 4, heldout, True, rng, fact_sheet=True):
            texts += [m["content"] for m in row["prompt"] + row["responses"]]
    texts += [m["content"] for r in prompt_rows(products, 500, True, False, rng, fact_sheet=True)
              for m in r["prompt"]]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END_OF_TURN,
                                     pad_token=PAD, padding_side="right")
    hf_tok.chat_template = CHAT_TEMPLATE
    return hf_tok


def build_demo_model(out_dir: str | Path, spec: DemoModelSpec) -> Path:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer(demo_corpus(spec.seed), spec.vocab_size)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads, num_key_value_heads=spec.num_attention_heads,
        max_position_embeddings=spec.max_position_embeddings, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest(spec), indent=1))
    return Path(out_dir)


def ensure_demo_model(out_dir: str | Path, spec: DemoModelSpec) -> Path:
    """Build the tiny model at `out_dir` unless a build of the same spec is already there."""
    return build_once(out_dir, manifest(spec), MANIFEST, lambda path: build_demo_model(path, spec))


def manifest(spec: DemoModelSpec) -> dict:
    return {**dataclasses.asdict(spec), "corpus_version": CORPUS_VERSION}
