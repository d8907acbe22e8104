"""Rollout for PPO: sample answers to chat prompts, and lay prompt + answer out for scoring.

The PPO loop sees generation only through the small `Rollout` interface,

    rollout.generate(prompt_ids: list[list[int]]) -> Generated   # .tokens: answer tokens

so a vLLM engine (weights pushed after each update) can replace `HFRollout` on GPU clusters
without touching the loop. `HFRollout` is batched Hugging Face `generate` with the KV cache:
prompts left-padded (new tokens follow each prompt directly) with a pad id that is no stop
token, position ids counted from each row's first real token (`generate` derives them from the
attention mask), temperature / top-p sampling, stopping at EOS and at the chat template's
end-of-turn token. Answers come back cut after their first stop token, which they keep.

`ResponseBatch` is the layout every scoring forward pass uses (actor, reference, critic):
[left-padded prompt | right-padded answer], width P + T, with `position_ids = cumsum(mask) - 1`
so that padding on the left shifts no position (Huang et al., "The N implementation details of
RLHF with PPO", 2024). Logits at positions P-1 .. P+T-2 predict the T answer tokens.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, ContextManager, Protocol

import torch


@dataclass
class Generated:
    tokens: list[list[int]]  # each prompt's answer, cut after its first stop token
    # with logprobs=True: log softmax(logits / temperature) of each answer token, from the
    # logits generation sampled it from
    logprobs: list[list[float]] | None = None


class Rollout(Protocol):
    def generate(self, prompt_ids: list[list[int]], logprobs: bool = False) -> Generated:
        """Answer tokens for each tokenized prompt (and their log-probabilities)."""


def stop_token_ids(tokenizer) -> list[int]:
    """EOS and the chat template's end-of-turn token (the first special token the template
    writes after an assistant message's content: <|im_end|> for Qwen, <|end|> for the demo)."""
    ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    marker = "rlhf-end-of-turn-probe"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                          {"role": "assistant", "content": marker}],
                                         tokenize=False)
    after = text[text.rfind(marker) + len(marker):]
    tail = tokenizer(after, add_special_tokens=False)["input_ids"] if after else []
    if tail and tail[0] in tokenizer.all_special_ids and tail[0] not in ids:
        ids.append(tail[0])
    return ids


def safe_pad_id(tokenizer, stop_ids: list[int]) -> int:
    """The tokenizer's pad id unless it is a stop token (Llama-style tokenizers pad with EOS):
    then any other id. Padding is always masked, but answers are cut at their first stop
    token, so a pad equal to EOS would make every padded answer look finished."""
    pad = tokenizer.pad_token_id
    if pad is not None and pad not in stop_ids:
        return pad
    return next(i for i in range(len(tokenizer)) if i not in stop_ids)


def cut_after_stop(tokens: list[int], stop_ids: list[int]) -> tuple[list[int], bool]:
    """(tokens up to and including the first stop token, whether there was one)."""
    for i, token in enumerate(tokens):
        if token in stop_ids:
            return tokens[:i + 1], True
    return tokens, False


def left_padded(seqs: list[list[int]], pad: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, longest), real tokens on the right."""
    width = max(map(len, seqs))
    ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=device)
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=device)
    return ids, mask


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... from each row's first real token; padding gets 0 (it is masked anyway)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class ResponseBatch:
    input_ids: torch.Tensor  # (B, P + T): left-padded prompt, right-padded answer
    attention_mask: torch.Tensor  # (B, P + T)
    position_ids: torch.Tensor  # (B, P + T)
    response_ids: torch.Tensor  # (B, T)
    response_mask: torch.Tensor  # (B, T): 1 for real answer tokens
    prompt_width: int  # P

    @classmethod
    def build(cls, prompt_ids: list[list[int]], response_ids: list[list[int]], pad: int,
              device=None) -> "ResponseBatch":
        p_ids, p_mask = left_padded(prompt_ids, pad, device)
        T = max(1, max(map(len, response_ids)))
        r_ids = torch.tensor([r + [pad] * (T - len(r)) for r in response_ids], device=device)
        r_mask = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in response_ids],
                              device=device)
        input_ids = torch.cat([p_ids, r_ids], dim=1)
        attention_mask = torch.cat([p_mask, r_mask], dim=1)
        return cls(input_ids, attention_mask, position_ids_from_mask(attention_mask), r_ids,
                   r_mask.float(), p_ids.shape[1])

    def select(self, index) -> "ResponseBatch":
        """The rows `index` (a slice or index tensor), keeping P (the layout stays valid)."""
        return ResponseBatch(self.input_ids[index], self.attention_mask[index],
                             self.position_ids[index], self.response_ids[index],
                             self.response_mask[index], self.prompt_width)

    def model_inputs(self) -> dict:
        return dict(input_ids=self.input_ids, attention_mask=self.attention_mask,
                    position_ids=self.position_ids)

    def answer_slice(self, per_position: torch.Tensor) -> torch.Tensor:
        """The positions that predict the answer tokens: (B, P + T, ...) -> (B, T, ...)."""
        P, T = self.prompt_width, self.response_ids.shape[1]
        return per_position[:, P - 1:P - 1 + T]


def answer_logits(model, batch: ResponseBatch) -> torch.Tensor:
    """Logits predicting each answer token, (B, T, V), in float32.

    Only the last T + 1 positions go through the LM head (transformers' `logits_to_keep`):
    the prompt's logits, most of a (B, P + T, V) tensor, would be computed and dropped, and
    the LM head and log-softmax over them were a third of PPO's update on the demo model."""
    T = batch.response_ids.shape[1]
    if keeps_logits(model):
        logits = model(**batch.model_inputs(), logits_to_keep=T + 1).logits
        return logits[:, :T].float()  # positions P - 1 .. P + T - 2 of P + T
    return batch.answer_slice(model(**batch.model_inputs()).logits).float()


_KEEPS_LOGITS: dict[type, bool] = {}


def keeps_logits(model) -> bool:
    """Whether the causal LM under any wrapper (DeepSpeed, DDP, peft) takes `logits_to_keep`
    (Llama, Qwen2, Mistral, Gemma, ... in transformers 5; not every architecture)."""
    import inspect

    inner = model
    while hasattr(inner, "module"):  # DeepSpeed engine, DDP
        inner = inner.module
    if hasattr(inner, "get_base_model"):  # peft
        inner = inner.get_base_model()
    kind = type(inner)
    if kind not in _KEEPS_LOGITS:
        _KEEPS_LOGITS[kind] = "logits_to_keep" in inspect.signature(inner.forward).parameters
    return _KEEPS_LOGITS[kind]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log softmax(logits / temperature) of the given tokens: the log-probabilities under the
    distribution the answers were sampled from. (B, T, V), (B, T) -> (B, T)."""
    logps = torch.log_softmax(logits / temperature, dim=-1)
    return logps.gather(-1, tokens[..., None])[..., 0]


class HFRollout:
    """Batched Hugging Face generation. `context()` yields the module to generate with; for a
    DeepSpeed ZeRO-3 actor it gathers the weights once for the whole rollout (see
    rlhf/compat.py), and `synced` keeps ranks stepping together while weights stay sharded
    (each token's forward pass is then a collective)."""

    def __init__(self, context: Callable[[], ContextManager], pad_id: int, stop_ids: list[int],
                 max_new_tokens: int, temperature: float, top_p: float, batch_size: int,
                 synced: bool = False):
        self.context, self.pad_id, self.stop_ids = context, pad_id, stop_ids
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.batch_size, self.synced = batch_size, synced

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], logprobs: bool = False) -> Generated:
        answers, answer_logprobs = [], []
        with self.context() as model:
            device = next(model.parameters()).device
            for start in range(0, len(prompt_ids), self.batch_size):
                chunk = prompt_ids[start:start + self.batch_size]
                input_ids, attention_mask = left_padded(chunk, self.pad_id, device)
                output = model.generate(
                    input_ids=input_ids, attention_mask=attention_mask,
                    max_new_tokens=self.max_new_tokens, do_sample=True,
                    temperature=self.temperature, top_p=self.top_p, top_k=0,
                    eos_token_id=self.stop_ids, pad_token_id=self.pad_id, use_cache=True,
                    synced_gpus=self.synced, return_dict_in_generate=True,
                    output_logits=logprobs)
                new = output.sequences[:, input_ids.shape[1]:]  # (B, T_new)
                if logprobs:  # the raw logits of each step, before temperature and top-p
                    logits = torch.stack(output.logits, dim=1).float()  # (B, T_new, V)
                    token_logps = token_logprobs(logits, new, self.temperature).tolist()
                for row, tokens in enumerate(new.tolist()):
                    kept = cut_after_stop(tokens, self.stop_ids)[0]
                    answers.append(kept)
                    if logprobs:
                        answer_logprobs.append(token_logps[row][:len(kept)])
        return Generated(answers, answer_logprobs if logprobs else None)


def plain_context(model) -> Callable[[], ContextManager]:
    return lambda: contextlib.nullcontext(model)
