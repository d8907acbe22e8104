"""Batched generation of chat answers (left padding, chat template, stop at end of turn)."""

from __future__ import annotations

import torch


@torch.no_grad()
def generate_answers(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int,
                     batch_size: int, temperature: float = 0.0) -> list[str]:
    """Answer each prompt (a list of chat messages); temperature 0 means greedy."""
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # new tokens must follow the prompt directly
    answers = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [tokenizer.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
                     for p in prompts[start:start + batch_size]]
            batch = tokenizer(texts, return_tensors="pt", padding=True,
                              add_special_tokens=False).to(model.device)
            sampling = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) \
                if temperature > 0 else dict(do_sample=False)
            output = model.generate(**batch, max_new_tokens=max_new_tokens,
                                    pad_token_id=tokenizer.pad_token_id,
                                    eos_token_id=tokenizer.eos_token_id, **sampling)
            new_tokens = output[:, batch["input_ids"].shape[1]:]  # (B, T_new)
            answers += [t.strip() for t in
                        tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = padding_side
    return answers
