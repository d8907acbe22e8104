"""`rlhf-data`: offline data preparation, a Hydra app like `rlhf` (so pipelines and sweeps
call it the same way).

    rlhf-data task=demo out_dir=/tmp/demo_data              # write the built-in demo data set
    rlhf-data task=demo out_dir=/tmp/demo_data demo.sft_train_size=10000
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, OmegaConf

from data_tools.demo.generate import DemoSpec, generate_demo


@dataclass
class DataToolsConfig:
    # what to do: demo (write the synthetic demo data set)
    task: str = "demo"
    out_dir: str = MISSING
    demo: DemoSpec = field(default_factory=DemoSpec)


ConfigStore.instance().store(name="rlhf_data_schema", node=DataToolsConfig)
TASKS = ("demo",)


@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parent / "conf"),
            config_name="config")
def main(cfg) -> None:
    if cfg.task not in TASKS:
        raise SystemExit(f"rlhf-data: error: task={cfg.task!r} is unknown; choose one of {TASKS}")
    out = generate_demo(cfg.out_dir, OmegaConf.to_object(cfg.demo))
    for path in sorted(out.iterdir()):
        lines = sum(1 for _ in open(path, encoding="utf-8")) if path.suffix == ".jsonl" else "-"
        print(f"{path}  rows: {lines}")


if __name__ == "__main__":
    main()
