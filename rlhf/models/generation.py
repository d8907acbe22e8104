"""Batched generation of chat answers (left padding, chat template, stop at end of turn) and
the log-probabilities of given answers under a model (for KL estimates)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def default_device() -> torch.device:
    """This rank's GPU when there is one, else the CPU."""
    from rlhf.distributed import local_rank
    return torch.device("cuda", local_rank()) if torch.cuda.is_available() else torch.device("cpu")


@dataclass
class Answers:
    texts: list[str]
    prompt_ids: list[list[int]]  # the chat-templated prompt, as the model saw it
    answer_ids: list[list[int]]  # generated tokens up to and including the end of turn


def prompt_token_ids(tokenizer, prompt: list[dict]) -> list[int]:
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def answer_token_ids(tokenizer, prompt_ids: list[int], prompt: list[dict],
                     answer: str) -> list[int]:
    """An answer's tokens as the model would write them after the prompt (`prompt_ids`, from
    prompt_token_ids): the chat template of prompt + answer minus that of the prompt
    (end-of-turn token included). A template that renders the prompt differently once it is
    answered gets the answer's own tokens and EOS instead."""
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": answer}],
                                         tokenize=False)
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"]
    if full_ids[:len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids):]
    return tokenizer(answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
             batch_size: int, temperature: float = 0.0) -> Answers:
    """Answer each prompt (a list of chat messages); temperature 0 means greedy, otherwise
    plain sampling from the model's distribution (no top-k/top-p), so answers are samples of
    the policy itself."""
    model.eval()
    result = Answers([], [], [])
    for start in range(0, len(prompts), batch_size):
        ids = [prompt_token_ids(tokenizer, p) for p in prompts[start:start + batch_size]]
        longest = max(map(len, ids))
        # left padding: new tokens must follow the prompt directly
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (longest - len(x)) + x
                                  for x in ids], device=model.device)
        attention_mask = torch.tensor([[0] * (longest - len(x)) + [1] * len(x) for x in ids],
                                      device=model.device)
        sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
            if temperature > 0 else dict(do_sample=False)
        output = model.generate(input_ids=input_ids, attention_mask=attention_mask,
                                max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                eos_token_id=tokenizer.eos_token_id, **sampling)
        for prompt, new in zip(ids, output[:, longest:].tolist()):  # (B, T_new)
            if tokenizer.eos_token_id in new:
                new = new[:new.index(tokenizer.eos_token_id) + 1]
            result.prompt_ids.append(prompt)
            result.answer_ids.append(new)
            result.texts.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return result


@torch.no_grad()
def answer_logprobs(model, prompt_ids: list[list[int]], answer_ids: list[list[int]],
                    batch_size: int, pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(answer token | prompt, earlier answer tokens) for every answer token.

    Returns logps (N, T) and mask (N, T), T the longest answer, padded with zeros."""
    model.eval()
    longest_answer = max(1, max(map(len, answer_ids)))
    logps = torch.zeros(len(answer_ids), longest_answer)
    mask = torch.zeros(len(answer_ids), longest_answer)
    for start in range(0, len(answer_ids), batch_size):
        prompts, answers = prompt_ids[start:start + batch_size], answer_ids[start:start + batch_size]
        seqs = [p + a for p, a in zip(prompts, answers)]
        width = max(map(len, seqs))
        input_ids = torch.tensor([s + [pad_token_id] * (width - len(s)) for s in seqs],
                                 device=model.device)  # right padding
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs],
                                      device=model.device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        token_logps = torch.log_softmax(logits[:, :-1], dim=-1).gather(
            -1, input_ids[:, 1:, None])[..., 0].cpu()  # (B, width - 1): logp of token t+1
        for b, (p, a) in enumerate(zip(prompts, answers)):
            # the answer's first token is predicted at position len(p) - 1
            logps[start + b, :len(a)] = token_logps[b, len(p) - 1:len(p) - 1 + len(a)]
            mask[start + b, :len(a)] = 1
    return logps, mask
