"""Conversion of clean records into the training formats (data_tools/formats.py, TRL's formats):
conversations -> SFT `messages`; rankings -> preference pairs (and, unchanged, rankings for
K-wise reward models); every record -> its prompt, for PPO/GRPO.

Records arrive checked by formats.py (cleaning's last step), so every row written here passes
the checks the stages load it with.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from data_tools import formats
from data_tools.ranking import ranked_pairs
from data_tools.records import CONVERSATION, PAIR, RANKING, BadRow, Record

SETS = ("sft", "pairs", "rankings", "prompts")


def ranking_pairs(ranking: dict, mode: str) -> list[dict]:
    """Preference pairs from K ranked responses (rank 1 = best).

    mode "all": every C(K,2) pair with different ranks; "adjacent": only responses on
    neighbouring rank levels. Ties give no pair. With scores, the margin is their difference.
    """
    responses, scores = ranking["responses"], ranking.get("scores")
    pairs = []
    for better, worse in ranked_pairs(ranking["ranks"], mode):
        pair = {"prompt": ranking["prompt"], "chosen": [responses[better]],
                "rejected": [responses[worse]], "margin": None}
        if scores is not None:
            pair["margin"] = scores[better] - scores[worse]
        pairs.append(pair)
    return pairs


def prompt_of_conversation(messages: list[dict]) -> list[dict]:
    """Everything before the final assistant answer."""
    return messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages


class OutputWriter:
    """JSONL per set and split, opened when first written; prompts are written once each."""

    def __init__(self, out_dir: Path, cfg):
        self.out_dir, self.cfg = Path(out_dir), cfg
        self.files: dict[tuple[str, str], object] = {}
        self.counts: dict[str, dict[str, int]] = {s: {} for s in SETS}
        self.prompts_seen: set[bytes] = set()

    def _emit(self, name: str, split: str, row: dict) -> None:
        key = (name, split)
        if key not in self.files:
            (self.out_dir / name).mkdir(parents=True, exist_ok=True)
            self.files[key] = open(self.out_dir / name / f"{split}.jsonl", "w", encoding="utf-8")
        self.files[key].write(json.dumps(row, ensure_ascii=False) + "\n")
        self.counts[name][split] = self.counts[name].get(split, 0) + 1

    def _prompt(self, prompt: list[dict], split: str) -> None:
        digest = hashlib.blake2b(json.dumps(prompt, sort_keys=True).encode("utf-8"),
                                 digest_size=8).digest()
        if prompt and digest not in self.prompts_seen:
            self.prompts_seen.add(digest)
            self._emit("prompts", split, {"prompt": prompt})

    def _conversation_prompt(self, messages: list[dict], split: str) -> None:
        """The conversation's prompt, when it is one the prompt format accepts (with
        clean.check_role_order=false it may end with another role: the conversation is then
        in sft/ only)."""
        try:
            self._prompt(formats.check_prompt(prompt_of_conversation(messages)), split)
        except BadRow:
            pass

    def write(self, record: Record, split: str) -> None:
        d = record.data
        if record.kind == CONVERSATION:
            # ending with a user turn (clean.require_final_assistant=false): a prompt only
            if d["messages"][-1]["role"] == "assistant":
                self._emit("sft", split, {"messages": d["messages"]})
            self._conversation_prompt(d["messages"], split)
        elif record.kind == RANKING:
            self._emit("rankings", split, {"prompt": d["prompt"], "responses": d["responses"],
                                           "ranks": d["ranks"], "scores": d.get("scores")})
            for pair in ranking_pairs(d, self.cfg.pairs.mode):
                self._emit("pairs", split, pair)
            self._prompt(d["prompt"], split)
        elif record.kind == PAIR:
            self._emit("pairs", split, {"prompt": d["prompt"], "chosen": [d["chosen"]],
                                        "rejected": [d["rejected"]], "margin": d.get("margin")})
            self._prompt(d["prompt"], split)

    def close(self) -> dict:
        for f in self.files.values():
            f.close()
        return {name: counts for name, counts in self.counts.items() if counts}

    def save_datasets(self) -> None:
        """Each set as a `datasets` DatasetDict directory (memory-mapped Arrow)."""
        import datasets

        for name in SETS:
            splits = {split: str(self.out_dir / name / f"{split}.jsonl")
                      for (set_name, split) in self.files if set_name == name}
            if splits:
                ds = datasets.load_dataset("json", data_files=splits)
                ds.save_to_disk(str(self.out_dir / "datasets" / name))
