"""`rlhf-data`: offline data preparation, a Hydra app like `rlhf` (so pipelines and sweeps
call it the same way).

    rlhf-data inputs='[{path: raw/}]' out_dir=data/v1          # clean, dedupe, convert, split
    rlhf-data inputs='[{path: logs.csv.gz, format: support_csv}]' out_dir=data/v1 \
        formats.support_csv.speaker=author roles.operator=assistant pii.ip=false
    rlhf-data task=demo out_dir=/tmp/demo_data                  # the built-in demo data set
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from data_tools.config import DataToolsConfig
from data_tools.records import UnreadableFile

ConfigStore.instance().store(name="rlhf_data_schema", node=DataToolsConfig)
TASKS = ("prepare", "demo")


def print_summary(summary: dict, out_dir: str) -> None:
    print(f"\nrows read {summary['rows_read']}, kept {summary['rows_kept']}, "
          f"quarantined {summary['rows_quarantined']} ({summary['rows_per_second']:.0f} rows/s)")
    for reason, n in summary["dropped_by_reason"].items():
        print(f"  dropped {reason:18} {n}")
    for kind, n in summary["pii_replaced"].items():
        print(f"  PII {kind:22} {n}")
    for step, n in summary["cleaning"].items():
        print(f"  cleaning {step:17} {n}")
    if summary["length_percentiles"]:
        print("  length " + ", ".join(f"{k} {v}" for k, v in
                                      summary["length_percentiles"].items()))
    for name, splits in summary["outputs"].items():
        print(f"  {out_dir}/{name}: " + ", ".join(f"{s} {n}" for s, n in sorted(splits.items())))


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
            config_name="config")
def main(cfg) -> dict | None:
    if cfg.task not in TASKS:
        sys.exit(f"rlhf-data: error: task={cfg.task!r} is unknown; choose one of {TASKS}")
    if cfg.task == "demo":
        from data_tools.demo.generate import generate_demo

        out = generate_demo(cfg.out_dir, OmegaConf.to_object(cfg.demo))
        for path in sorted(out.iterdir()):
            lines = sum(1 for _ in open(path, encoding="utf-8")) \
                if path.suffix == ".jsonl" else "-"
            print(f"{path}  rows: {lines}")
        return None
    from data_tools.prepare import PrepareError, prepare
    try:
        summary = prepare(cfg)
    except (PrepareError, UnreadableFile) as err:
        sys.exit(f"rlhf-data: error: {err}")
    print_summary(summary, cfg.out_dir)
    return summary


if __name__ == "__main__":
    main()
