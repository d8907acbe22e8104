"""PPO-ptx: batches of the SFT conversations for the language-model loss that PPO mixes into
the actor's loss (InstructGPT, Ouyang et al. 2022, arXiv 2203.02155, eq. 2: the "pretraining
mix" that keeps what RL would otherwise erode; OpenRLHF's `ptx_coef`, DeepSpeed-Chat's
`unsup_coef`). Here the mix is supervised chat data: `data.sft_train`, or each ranking's best
answer in `data.rankings_train` (`stage.ptx_data`, rlhf/stages/ppo.py).

Each conversation is laid out as PPO lays out a rollout (`ResponseBatch`): the messages before
its last assistant turn as the prompt, with the generation prompt, and that turn's tokens as
the answer, so the loss is the SFT loss on the final answer, read through the same
`answer_logits` as the policy loss.
"""

from __future__ import annotations

import random

from rlhf.models.generation import answer_token_ids, prompt_token_ids
from rlhf.models.rollout import ResponseBatch


def split_conversation(tokenizer, messages: list[dict], max_length: int) -> tuple[list, list]:
    """(prompt ids, answer ids) of a conversation ending with an assistant turn: the chat
    template of the messages before it with the generation prompt, and the answer as the model
    would write it after them (its end-of-turn token included). The prompt is cut from the
    left and the answer from the right so that both fit in max_length tokens."""
    prompt = prompt_token_ids(tokenizer, messages[:-1])
    answer = answer_token_ids(tokenizer, prompt, messages[:-1], messages[-1]["content"])
    answer = answer[:max_length - 1]
    return prompt[-(max_length - len(answer)):], answer


class PtxBatches:
    """The conversations, tokenized once; each actor pass draws `batch_size` of them at
    random, seeded by (seed, step, pass within the step, rank) only, so a resumed run draws
    the same batches."""

    def __init__(self, tokenizer, rows: list[dict], max_length: int, batch_size: int,
                 seed: int, pad: int, device):
        self.pairs = [split_conversation(tokenizer, r["messages"], max_length) for r in rows]
        self.batch_size, self.seed, self.pad, self.device = batch_size, seed, pad, device

    def get(self, step: int, index: int, rank: int = 0) -> ResponseBatch:
        rng = random.Random(f"{self.seed}-{step}-{index}-{rank}")
        picked = rng.sample(self.pairs, min(self.batch_size, len(self.pairs)))
        return ResponseBatch.build([p for p, _ in picked], [a for _, a in picked], self.pad,
                                   self.device)
