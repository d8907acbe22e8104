"""`rlhf-data task=prepare`: a folder of raw chat logs and rankings in, clean training sets out.

    rlhf-data inputs='[{path: raw/}]' out_dir=data/v1
    rlhf-data inputs='[{path: logs.csv, format: support_csv}]' formats.support_csv.speaker=from \
        out_dir=data/v1 clean.max_tokens=2048 clean.tokenizer=Qwen/Qwen2.5-0.5B-Instruct

Streams every input row through reading, cleaning (in `num_proc` worker processes),
deduplication, conversion and a deterministic split, and writes out_dir/:
  sft/{train,eval,test}.jsonl        conversations ({"messages": ...})
  pairs/...jsonl                     preference pairs (from pairwise files and expanded rankings)
  rankings/...jsonl                  K-wise rankings, unchanged, for K-wise reward models
  prompts/...jsonl                   prompts only, for PPO/GRPO
  datasets/<set>                     the same as `datasets` directories
  quarantine.jsonl                   every row not kept: source file, line, reason
  report.json                        counts: read, kept, dropped by reason, PII, lengths
Invariant, checked on every run: rows read = rows kept + rows quarantined.
"""

from __future__ import annotations

import glob
import hashlib
import json
import multiprocessing as mp
import random
import re
import time
from collections import Counter, deque
from pathlib import Path
from typing import Iterator

from omegaconf import OmegaConf

from data_tools.cleaning import clean_record, first_user_text, record_text, scrub_rejected
from data_tools.config import DataToolsConfig
from data_tools.convert import SETS, OutputWriter
from data_tools.detect import resolve_format
from data_tools.io import atomic_dir
from data_tools.readers import read_file
from data_tools.records import Record, Rejected, UnreadableFile

QUARANTINE = "quarantine.jsonl"
_WORD = re.compile(r"\w+")


class PrepareError(Exception):
    """Stops the run with one line (unreadable file, too many bad rows, no input)."""


def input_files(cfg, out_dir: Path) -> list[tuple[Path, str]]:
    files = []
    for spec in cfg.inputs:
        p = Path(spec.path).expanduser()
        matches = sorted(p.rglob("*")) if p.is_dir() else [Path(m) for m in
                                                          sorted(glob.glob(str(p)))]
        matches = [m for m in matches if m.is_file() and not m.name.startswith(".")
                   and out_dir.resolve() not in m.resolve().parents]
        if not matches:
            raise PrepareError(f"inputs: {spec.path} matches no file")
        files += [(m, spec.format) for m in matches]
    if not files:
        raise PrepareError("no inputs: set inputs='[{path: /data/raw}]'")
    return files


# ----------------------------------------------------------------- worker side
_WORKER: dict = {}


def _init_worker(cfg) -> None:
    from datasketch import MinHash

    _WORKER["cfg"] = cfg
    # permutations are drawn once per worker; each record's MinHash copies them
    _WORKER["minhash"] = MinHash(num_perm=cfg.dedup.num_perm)
    _WORKER["tokenizer"] = None
    if cfg.clean.max_tokens and cfg.clean.tokenizer:
        from transformers import AutoTokenizer
        _WORKER["tokenizer"] = AutoTokenizer.from_pretrained(cfg.clean.tokenizer)


def _minhash(text: str, cfg):
    """MinHash of the record's word n-grams; the lean form travels back without permutations.
    Words are runs of letters and digits, so a record that differs only in spacing or
    punctuation ("ship ?", "4 days , and") has the same shingles as the one it copies."""
    from datasketch import LeanMinHash

    words = _WORD.findall(text)
    n = cfg.dedup.shingle_words
    shingles = {" ".join(words[i:i + n]) for i in range(max(1, len(words) - n + 1))}
    mh = _WORKER["minhash"].copy()
    mh.update_batch([s.encode("utf-8") for s in shingles])
    return LeanMinHash(mh)


def _process_chunk(chunk: list) -> list:
    """Clean records and compute their duplicate fingerprints (the parallel part)."""
    cfg, tokenizer = _WORKER["cfg"], _WORKER["tokenizer"]
    out = []
    for item in chunk:
        if isinstance(item, Rejected):
            result, counter = item, Counter()
        else:
            result, counter = clean_record(item, cfg, tokenizer)
        exact = near = None
        if isinstance(result, Rejected):
            # quarantine.jsonl is as free of PII as the kept rows (duplicates, rejected later,
            # hold their record's already scrubbed text)
            result = scrub_rejected(result, cfg)
        else:
            text = record_text(result)
            exact = hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest()
            near = _minhash(text, cfg) if cfg.dedup.near else None
        out.append((result, counter, exact, near))
    return out


# ----------------------------------------------------------------- main side
def _chunks(items: Iterator, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class Deduplicator:
    """Exact duplicates by a hash of the normalised record; near duplicates by MinHash LSH
    (datasketch). Keeps only hashes and band keys, not the texts."""

    def __init__(self, cfg):
        self.cfg = cfg
        self.exact: dict[bytes, tuple] = {}
        self.lsh = None
        self.where: list[tuple] = []
        if cfg.dedup.near:
            from datasketch import MinHashLSH
            self.lsh = MinHashLSH(threshold=cfg.dedup.threshold, num_perm=cfg.dedup.num_perm)

    def check(self, record: Record, exact: bytes, near) -> str | None:
        """None if new (and remembered), else the reason it is a duplicate."""
        here = (record.source, record.lines[0])
        if self.cfg.dedup.exact:
            if exact in self.exact:
                src, line = self.exact[exact]
                return f"exact duplicate of {src}:{line}"
            self.exact[exact] = here
        if self.lsh is not None and near is not None:
            similar = self.lsh.query(near)
            if similar:
                src, line = self.where[min(similar)]
                return f"near duplicate of {src}:{line} (MinHash Jaccard >= " \
                       f"{self.cfg.dedup.threshold})"
            self.lsh.insert(len(self.where), near)
            self.where.append(here)
        return None


def split_of(key: str, split_cfg) -> str:
    """Deterministic: the same first user message always goes to the same split."""
    digest = hashlib.blake2b(f"{split_cfg.seed}\0{key}".encode("utf-8"), digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    if u < split_cfg.eval:
        return "eval"
    return "test" if u < split_cfg.eval + split_cfg.test else "train"


class Report:
    def __init__(self, files):
        self.started = time.time()
        self.counts = Counter()
        self.dropped = Counter()
        self.pii = Counter()
        self.cleaning = Counter()
        # per file: the format and columns it was read with, and its rows
        self.files = {str(f): {"format": fmt.name, "chosen_by": fmt.chosen_by,
                               "columns": fmt.columns, "rows_read": 0, "rows_kept": 0,
                               "rows_quarantined": 0} for f, fmt in files}
        self.first_reason: dict[str, str] = {}  # per file, for the max_bad_share message
        self.lengths: list[int] = []  # a reservoir sample, so memory stays bounded
        self.rng = random.Random(0)

    def add(self, item: Record | Rejected, outcome: str) -> None:
        """Count an item's input rows as read and as `outcome` (rows_kept, rows_quarantined),
        overall and for its file."""
        for counts in (self.counts, self.files[item.source]):
            counts["rows_read"] += item.rows
            counts[outcome] += item.rows
        if isinstance(item, Rejected):
            self.first_reason.setdefault(item.source, f"line {item.lines[0]}: {item.reason} "
                                                      f"({item.category})")

    def length(self, n: int) -> None:
        seen = self.counts["rows_kept_records"]
        if len(self.lengths) < 100_000:
            self.lengths.append(n)
        elif (j := self.rng.randrange(seen)) < len(self.lengths):
            self.lengths[j] = n

    def as_dict(self, outputs: dict) -> dict:
        lengths = sorted(self.lengths)
        pct = {f"p{q}": lengths[min(len(lengths) - 1, int(q / 100 * len(lengths)))]
               for q in (50, 90, 99)} if lengths else {}
        if lengths:
            pct["max"] = lengths[-1]
        elapsed = time.time() - self.started
        return {"rows_read": self.counts["rows_read"], "rows_kept": self.counts["rows_kept"],
                "rows_quarantined": self.counts["rows_quarantined"],
                "dropped_by_reason": dict(self.dropped.most_common()),
                "pii_replaced": dict(self.pii), "cleaning": dict(self.cleaning),
                "length_percentiles": pct, "outputs": outputs, "files": self.files,
                "seconds": round(elapsed, 2),
                "rows_per_second": round(self.counts["rows_read"] / max(elapsed, 1e-9), 1)}


def _read_all(files, cfg, report: Report) -> Iterator[Record | Rejected]:
    for path, fmt in files:
        yield from read_file(path, fmt, cfg)


def _cleaned(chunks: Iterator[list], cfg) -> Iterator[list]:
    """Chunks cleaned in order by `num_proc` workers (in this process when 0), with at most
    two chunks per worker in flight: reading never runs ahead of cleaning, so memory stays
    bounded however large the input (Pool.imap would read everything ahead)."""
    if cfg.num_proc == 0:
        _init_worker(cfg)
        yield from map(_process_chunk, chunks)
        return
    with mp.get_context("fork").Pool(cfg.num_proc, _init_worker, (cfg,)) as pool:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(pool.apply_async(_process_chunk, (chunk,)))
            if len(pending) >= 2 * cfg.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def prepare(cfg) -> dict:
    if not isinstance(cfg, DataToolsConfig):
        # plain dataclasses: OmegaConf attribute access would cost more than the cleaning
        cfg = OmegaConf.to_object(cfg)
    out_dir = Path(cfg.out_dir)
    # every file's format is settled before anything is read: an unclear one stops the run
    files = [(path, resolve_format(path, fmt, cfg)) for path, fmt in input_files(cfg, out_dir)]
    report = Report(files)
    with atomic_dir(out_dir) as tmp:
        writer = OutputWriter(tmp, cfg)
        dedup = Deduplicator(cfg)
        with open(tmp / QUARANTINE, "w", encoding="utf-8") as quarantine:
            chunks = _chunks(_read_all(files, cfg, report), cfg.chunk_size)
            for processed in _cleaned(chunks, cfg):
                for result, counter, exact, near in processed:
                    report.cleaning.update(counter)
                    _route(result, exact, near, dedup, writer, quarantine, report, cfg)
        outputs = writer.close()
        summary = report.as_dict(outputs)
        if summary["rows_read"] != summary["rows_kept"] + summary["rows_quarantined"]:
            raise AssertionError(f"rows read != kept + quarantined: {summary}")
        (tmp / "report.json").write_text(json.dumps(summary, indent=1))
        if cfg.save_datasets:
            writer.save_datasets()
    _check_bad_shares(summary, report, cfg.max_bad_share, out_dir / QUARANTINE)
    return summary


def _check_bad_shares(summary: dict, report: Report, limit: float, quarantine: Path) -> None:
    """max_bad_share per file (after everything is written): a file that is all bad rows is an
    input read the wrong way, however many good rows the other files hold. The share over all
    files, a weighted mean of these, is then within the limit too."""
    for path, counts in summary["files"].items():
        bad = counts["rows_quarantined"] / max(counts["rows_read"], 1)
        if bad > limit:
            raise PrepareError(f"{path}: {bad:.0%} of its {counts['rows_read']} rows were "
                               f"quarantined, more than max_bad_share={limit}; the first, "
                               f"{report.first_reason[path]}; all reasons are in {quarantine}")


def _route(result, exact, near, dedup, writer, quarantine, report: Report, cfg) -> None:
    if isinstance(result, Record):
        duplicate = dedup.check(result, exact, near)
        if duplicate:
            result = Rejected(result.source, result.lines, duplicate, result.data,
                              "duplicate_exact" if duplicate.startswith("exact")
                              else "duplicate_near")
    if isinstance(result, Rejected):
        report.add(result, "rows_quarantined")
        report.dropped[result.category] += result.rows
        quarantine.write(json.dumps(result.as_dict(), ensure_ascii=False, default=str) + "\n")
        return
    report.add(result, "rows_kept")
    report.counts["rows_kept_records"] += 1
    report.pii.update(result.pii)
    report.length(result.data.get("num_tokens") or len(record_text(result).split()))
    writer.write(result, split_of(first_user_text(result), cfg.split))


__all__ = ["prepare", "PrepareError", "SETS", "UnreadableFile"]
