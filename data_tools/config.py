"""Typed config of `rlhf-data` (registered in Hydra's ConfigStore like the trainer's)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

from omegaconf import MISSING

from data_tools.demo.generate import DemoSpec


@dataclass
class InputSpec:
    # a file, a directory (every file in it, recursively) or a glob
    path: str = MISSING
    # auto | messages | sharegpt | support_csv | prompt_response | ranking | pairwise
    format: str = "auto"


@dataclass
class SupportCsvColumns:
    conversation_id: str = "conversation_id"
    timestamp: str = "timestamp"
    speaker: str = "speaker"
    text: str = "text"


@dataclass
class PromptResponseColumns:
    prompt: str = "prompt"
    response: str = "response"


@dataclass
class Formats:
    support_csv: SupportCsvColumns = field(default_factory=SupportCsvColumns)
    prompt_response: PromptResponseColumns = field(default_factory=PromptResponseColumns)


@dataclass
class CleanConfig:
    unicode: bool = True
    html: bool = True
    merge_same_role: bool = True
    drop_empty_turns: bool = True
    check_role_order: bool = True
    # SFT conversations must end with the assistant's answer
    require_final_assistant: bool = True
    # token-length limit, counted with `tokenizer` (a directory or hub id); null: no limit
    max_tokens: Optional[int] = None
    tokenizer: Optional[str] = None


@dataclass
class DedupConfig:
    exact: bool = True
    # MinHash LSH (datasketch) on word shingles of the whole record (words without spacing
    # and punctuation); 0.9: the lowest threshold at which >= 95% of the rows flagged are
    # copies, on the demo and generated data (benchmarks/dedup_threshold.py, docs/data.md)
    near: bool = True
    threshold: float = 0.9
    num_perm: int = 64
    shingle_words: int = 3


@dataclass
class PiiConfig:
    enabled: bool = True
    email: bool = True
    phone: bool = True
    card: bool = True
    ip: bool = True


@dataclass
class SplitConfig:
    # shares of eval and test; the rest is train. Split by a hash of the first user message.
    eval: float = 0.05
    test: float = 0.0
    seed: str = "rlhf"


@dataclass
class PairsConfig:
    # all: every C(K,2) pair of a ranking; adjacent: neighbouring rank levels only
    mode: str = "all"


@dataclass
class DataToolsConfig:
    # prepare: raw files -> training sets; demo: write the built-in demo data set
    task: str = "prepare"
    inputs: List[InputSpec] = field(default_factory=list)
    out_dir: str = MISSING
    # speaker names -> roles (lower case); roles themselves map to themselves
    roles: Dict[str, str] = field(default_factory=lambda: {
        "human": "user", "customer": "user", "client": "user", "prompter": "user",
        "gpt": "assistant", "bot": "assistant", "agent": "assistant", "support": "assistant",
        "chatgpt": "assistant", "model": "assistant"})
    formats: Formats = field(default_factory=Formats)
    clean: CleanConfig = field(default_factory=CleanConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    pii: PiiConfig = field(default_factory=PiiConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    # worker processes for cleaning (0: in this process); records per chunk handed to one
    num_proc: int = 2
    chunk_size: int = 2000
    # fail (after writing everything) when more than this share of any file's rows is
    # quarantined (so of all rows too)
    max_bad_share: float = 0.5
    # also write each set as a `datasets` directory (out_dir/datasets/<set>)
    save_datasets: bool = True
    demo: DemoSpec = field(default_factory=DemoSpec)
