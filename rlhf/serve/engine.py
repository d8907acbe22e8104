"""The batching engine behind `rlhf-serve`: one thread owns the model and runs a decode loop
over every sequence in flight (continuous batching: a request joins the running batch at the
next step and leaves it as soon as it finishes or its client goes away).

Each step feeds the last token of every active sequence through the model at once, with one
shared key/value cache whose rows are left-padded to a common width (`pad` per sequence,
masked out by the attention mask; positions are given explicitly, so padding never shifts
RoPE). New requests are prefilled together, their cache left-padded to the running batch's
width (or the other way round) and concatenated along the batch; a finished or cancelled
sequence's row is dropped with `index_select`, and columns that have become padding in every
row are cut off. At most `max_batch` sequences are ever in flight (a request with `n` choices
takes `n` slots); the others wait in a FIFO queue.

The engine knows nothing of HTTP: a request carries a callback that receives its events
(`Token`, `Finish`, `Failed`) on the engine thread; the web layer (rlhf/serve/app.py) hands
them to its event loop.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    n: int = 1


@dataclass
class Token:
    choice: int
    text: str  # the new text of that choice (may be "" while a stop string might be forming)


@dataclass
class Finish:
    choice: int
    reason: str  # "stop" (end of turn or a stop string) or "length"
    completion_tokens: int


@dataclass
class Failed:
    message: str


class Sequence:
    """One choice of a request while it is generated."""

    def __init__(self, request: "Request", choice: int, generator: torch.Generator | None):
        self.request, self.choice, self.generator = request, choice, generator
        self.generated: list[int] = []  # sampled token ids, the end-of-turn token included
        self.emitted = 0  # characters of the decoded text already sent
        self.pad = 0  # left padding columns of this row in the shared cache
        self.done = False

    @property
    def length(self) -> int:
        return len(self.request.prompt_ids) + len(self.generated)


class Request:
    _ids = itertools.count()

    def __init__(self, prompt_ids: list[int], params: SamplingParams,
                 emit: Callable[[object], None]):
        self.id = next(self._ids)
        self.prompt_ids, self.params, self.emit = prompt_ids, params, emit
        self.cancelled = False
        self.submitted = time.monotonic()


class Engine:
    def __init__(self, model, tokenizer, max_batch: int = 16, eos_token_ids: list[int] | None = None):
        self.model, self.tokenizer, self.max_batch = model.eval(), tokenizer, max_batch
        self.device = model.device
        self.eos = set(eos_token_ids or [tokenizer.eos_token_id])
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
            else next(iter(self.eos))
        self.context = context_length(model)
        self.waiting: deque[Request] = deque()
        self.active: list[Sequence] = []
        self.cache = None
        self.width = 0  # columns in the cache
        self.cond = threading.Condition()
        self.stopping = False
        self.peak_in_flight = 0  # most sequences ever decoded together (tests check the cap)
        self.cancelled_sequences = 0  # left the batch because their client went away
        self.thread = threading.Thread(target=self._loop, name="rlhf-serve-engine", daemon=True)

    # ------------------------------------------------------------ public, any thread
    def start(self) -> "Engine":
        self.thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify()
        self.thread.join(timeout=30)

    def submit(self, request: Request) -> Request:
        with self.cond:
            self.waiting.append(request)
            self.cond.notify()
        return request

    def cancel(self, request: Request) -> None:
        """The client went away: its sequences leave the batch at the next step."""
        request.cancelled = True
        with self.cond:
            self.cond.notify()

    def in_flight(self) -> int:
        return len(self.active)

    # ------------------------------------------------------------ the engine thread
    def _loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            with self.cond:
                while not self.stopping and not self.waiting and not self.active:
                    self.cond.wait()
                if self.stopping:
                    return
                admitted = self._admit()
            try:
                gone = [s for s in self.active if s.request.cancelled]
                self.cancelled_sequences += len(gone)
                self._drop(gone)
                if admitted:
                    self._prefill(admitted)
                if self.active:
                    self._decode_step()
            except Exception as err:  # a bug must not take the server down: fail the batch
                for request in {id(s.request): s.request
                                for s in self.active + admitted}.values():
                    request.emit(Failed(f"generation failed: {type(err).__name__}: {err}"))
                self.active, self.cache, self.width = [], None, 0

    def _admit(self) -> list[Sequence]:
        """Whole requests from the head of the queue while their choices fit in the batch."""
        admitted = []
        while self.waiting:
            request = self.waiting[0]
            if request.cancelled:
                self.waiting.popleft()
                continue
            if len(self.active) + len(admitted) + request.params.n > self.max_batch:
                break
            self.waiting.popleft()
            for choice in range(request.params.n):
                admitted.append(Sequence(request, choice, self._generator(request, choice)))
        return admitted

    def _generator(self, request: Request, choice: int) -> torch.Generator | None:
        if request.params.temperature == 0:
            return None
        seed = request.params.seed
        seed = int.from_bytes(os.urandom(8), "little") if seed is None else seed + choice
        return torch.Generator(device=self.device).manual_seed(seed % 2**63)

    def _prefill(self, new: list[Sequence]) -> None:
        prompts = [s.request.prompt_ids for s in new]
        width = max(map(len, prompts))
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + p for p in prompts],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        from transformers import DynamicCache

        cache = DynamicCache()
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True).logits[:, -1]
        for s, p in zip(new, prompts):
            s.pad = width - len(p)
        self._join(new, cache, width)
        self._sample_and_emit(new, logits)

    def _join(self, new: list[Sequence], cache, width: int) -> None:
        """Concatenate the new rows' cache with the running batch's, left-padding the
        narrower one."""
        if not self.active:
            self.active, self.cache, self.width = list(new), cache, width
            return
        grow_old, grow_new = max(0, width - self.width), max(0, self.width - width)
        for old_layer, new_layer in zip(self.cache.layers, cache.layers):
            old_layer.keys = torch.cat([_left_pad(old_layer.keys, grow_old),
                                        _left_pad(new_layer.keys, grow_new)])
            old_layer.values = torch.cat([_left_pad(old_layer.values, grow_old),
                                          _left_pad(new_layer.values, grow_new)])
        for s in self.active:
            s.pad += grow_old
        for s in new:
            s.pad += grow_new
        self.active += new
        self.width = max(width, self.width)

    def _decode_step(self) -> None:
        self.peak_in_flight = max(self.peak_in_flight, len(self.active))
        ids = torch.tensor([[s.generated[-1]] for s in self.active], device=self.device)
        positions = torch.tensor([[s.length - 1] for s in self.active], device=self.device)
        pads = torch.tensor([[s.pad] for s in self.active], device=self.device)
        mask = (torch.arange(self.width + 1, device=self.device) >= pads).long()
        logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            past_key_values=self.cache, use_cache=True).logits[:, -1]
        self.width += 1
        self._sample_and_emit(list(self.active), logits)

    def _sample_and_emit(self, seqs: list[Sequence], logits: torch.Tensor) -> None:
        tokens = sample(logits.float(), seqs)
        finished = []
        for s, token in zip(seqs, tokens):
            s.generated.append(token)
            self._emit_text(s, token)
            if s.done:
                finished.append(s)
        self._drop(finished)

    def _emit_text(self, s: Sequence, token: int) -> None:
        params, request = s.request.params, s.request
        if token in self.eos:
            return self._finish(s, "stop", self._text(s)[s.emitted:])
        text = self._text(s)
        for stop in params.stop:
            at = text.find(stop)
            if at >= 0:
                return self._finish(s, "stop", text[s.emitted:at])
        if len(s.generated) >= params.max_tokens or s.length >= self.context:
            return self._finish(s, "length", text[s.emitted:])
        # hold back an incomplete character and the start of a possible stop string
        safe = len(text.rstrip("\ufffd"))
        for stop in params.stop:
            for k in range(min(len(stop) - 1, safe), 0, -1):
                if text[:safe].endswith(stop[:k]):
                    safe -= k
                    break
        if safe > s.emitted:
            request.emit(Token(s.choice, text[s.emitted:safe]))
            s.emitted = safe

    def _text(self, s: Sequence) -> str:
        ids = s.generated[:-1] if s.generated and s.generated[-1] in self.eos else s.generated
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _finish(self, s: Sequence, reason: str, rest: str) -> None:
        if rest:
            s.request.emit(Token(s.choice, rest))
        s.done = True
        s.request.emit(Finish(s.choice, reason, len(s.generated)))

    def _drop(self, gone: list[Sequence]) -> None:
        if not gone:
            return
        gone_ids = {id(s) for s in gone}
        keep = [row for row, s in enumerate(self.active) if id(s) not in gone_ids]
        self.active = [self.active[row] for row in keep]
        if not self.active:
            self.cache, self.width = None, 0
            return
        index = torch.tensor(keep, device=self.device)
        cut = min(s.pad for s in self.active)  # columns that are padding in every row
        for layer in self.cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, cut:]
            layer.values = layer.values.index_select(0, index)[:, :, cut:]
        for s in self.active:
            s.pad -= cut
        self.width -= cut


def _left_pad(x: torch.Tensor, n: int) -> torch.Tensor:
    """(B, H, T, D) -> (B, H, n + T, D) with zeros in front."""
    if n == 0:
        return x
    return torch.cat([x.new_zeros(x.shape[0], x.shape[1], n, x.shape[3]), x], dim=2)


def sample(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One token per row: greedy at temperature 0, else nucleus sampling (top_p) from
    softmax(logits / temperature) with the sequence's own generator (seeded requests repeat)."""
    greedy = logits.argmax(-1).tolist()
    tokens = []
    for row, s in enumerate(seqs):
        params = s.request.params
        if params.temperature == 0:
            tokens.append(greedy[row])
            continue
        probs = torch.softmax(logits[row] / params.temperature, dim=-1)
        if params.top_p < 1:
            sorted_probs, order = probs.sort(descending=True)
            # keep the smallest set of tokens whose probability reaches top_p
            keep = sorted_probs.cumsum(-1) - sorted_probs < params.top_p
            probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_probs[keep])
        tokens.append(torch.multinomial(probs, 1, generator=s.generator).item())
    return tokens


def context_length(model) -> int:
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    return getattr(config, "max_position_embeddings", None) or 2048
