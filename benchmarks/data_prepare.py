"""`rlhf-data` at scale: N generated support conversations (default 1 million) through the
whole prepare pipeline; prints rows per second and peak memory.

    python benchmarks/data_prepare.py                    # 1,000,000 conversations
    python benchmarks/data_prepare.py --rows 100000 --num-proc 2

The input is the demo domain's conversations (docs/demo.md) with real-world noise mixed
in: 5% exact duplicates, 2% near duplicates, e-mail addresses and phone numbers, HTML entities,
and 1% malformed lines. Peak memory is the largest resident set of the main process and of
any worker (ru_maxrss), measured by the OS.
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

from omegaconf import OmegaConf

from data_tools.config import DataToolsConfig, InputSpec
from data_tools.demo import catalogue as cat
from data_tools.prepare import prepare


def generate(path: Path, rows: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    products = cat.make_catalogue(200, seed)
    recent = []
    with gzip.open(path, "wt", encoding="utf-8", compresslevel=1) as f:
        for i in range(rows):
            roll = rng.random()
            if roll < 0.01:
                f.write('{"messages": [\n')
                continue
            if roll < 0.06 and recent:
                f.write(rng.choice(recent))  # exact duplicate
                continue
            product, intent = rng.choice(products), rng.choice(cat.INTENTS)
            question = cat.question(product, intent, rng, heldout=rng.random() < 0.3,
                                    framing=True)
            answer = cat.answer(product, intent, rng.choice(("good",) * 4 + cat.FLAWS), rng)
            if roll < 0.08 and recent:
                answer += " Thanks again."  # near duplicate of an earlier style
            if rng.random() < 0.05:
                question += f" My email is user{i}@example.com, phone +1-202-555-{i % 10000:04d}."
            if rng.random() < 0.05:
                answer = answer.replace(" and ", " &amp; ") + " <br/>"
            line = json.dumps({"messages": [{"role": "user", "content": f"[{i}] {question}"},
                                            {"role": "assistant", "content": answer}]}) + "\n"
            recent = (recent + [line])[-1000:]
            f.write(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--no-near-dedup", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-data-bench-") as tmp:
        raw = Path(tmp) / "support.jsonl.gz"
        t0 = time.time()
        generate(raw, args.rows)
        print(f"generated {args.rows} rows in {time.time() - t0:.0f} s "
              f"({raw.stat().st_size / 2**20:.0f} MiB gzip)", flush=True)
        cfg = OmegaConf.structured(DataToolsConfig(
            inputs=[InputSpec(path=str(raw))], out_dir=str(Path(tmp) / "out"),
            num_proc=args.num_proc, save_datasets=True))
        cfg.dedup.near = not args.no_near_dedup
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.time()
        summary = prepare(cfg)
        seconds = time.time() - t0
    main_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    worker_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({k: summary[k] for k in ("rows_read", "rows_kept", "rows_quarantined",
                                              "dropped_by_reason", "pii_replaced")}, indent=1))
    print(f"\nrows: {summary['rows_read']}, {seconds:.0f} s, "
          f"{summary['rows_read'] / seconds:,.0f} rows/s with {args.num_proc} workers "
          f"(near-duplicate LSH {'off' if args.no_near_dedup else 'on'})")
    print(f"peak resident memory: main {main_peak:,.0f} MiB (before the run "
          f"{before / 1024:,.0f} MiB), largest worker {worker_peak:,.0f} MiB")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
