"""SFT of the demo on 2 ranks under ddp, zero2, zero3 and zero3_offload, side by side.

    python benchmarks/zero_memory.py                  # a 25 M-parameter demo Llama, 10 steps
    python benchmarks/zero_memory.py --hidden 128 --layers 4 --steps 30   # the tiny model
    # one GPU, bf16, a 0.3 B Llama on packed 512-token rows
    python benchmarks/zero_memory.py --nproc 1 --precision bf16 --hidden 1024 --layers 24 \
        --max-length 512 --packing --global-batch 32 --configs single zero2 zero3 zero3_offload

Prints samples/s, peak resident memory per rank, and the bytes of parameters, gradients and
optimizer state that each rank holds (measured inside the run after the first optimizer step;
see rlhf/distributed/memory.py). ZeRO-3 should hold about 1/N of the full state per rank.
On CPU every rank runs with gloo and DS_ACCELERATOR=cpu. On a GPU it also prints s/step, the
median step after the first (`train/step_s`), tokens/s (TRL's count of non-padding tokens per
mean step, over that median) and rank 0's peak of allocated GPU memory over the whole stage.
The first step carries CUDA's and nccl's start (~10 s on an H100), which samples/s (over the
whole training time) includes.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CONFIGS = ["ddp", "zero2", "zero3", "zero3_offload"]


def run(name: str, args, work: Path) -> dict:
    run_dir = work / name
    # stage.cache=false: measure the training, not a reuse of an earlier benchmark's run
    # cache_dir: the demo data and the model of the asked size are built in the work directory
    cmd = [sys.executable, "-m", "rlhf.cli", "stage=sft", "stage.cache=false",
           f"cache_dir={work}", f"distributed={name}",
           f"distributed.precision={args.precision}", f"stage.packing={args.packing}",
           f"distributed.nproc_per_node={args.nproc}", f"stage.max_steps={args.steps}",
           "stage.learning_rate=1e-3", f"stage.global_batch_size={args.global_batch}",
           f"stage.per_device_batch_size={args.global_batch // args.nproc}",
           f"stage.max_length={args.max_length}", "stage.logging_steps=1000",
           "data.sft_eval=null",
           f"model.path={work / 'model'}", f"model.demo.hidden_size={args.hidden}",
           f"model.demo.intermediate_size={args.hidden * 8 // 3}",
           f"model.demo.num_hidden_layers={args.layers}",
           f"model.demo.num_attention_heads={max(1, args.hidden // 64)}",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        sys.exit(f"{name} failed:\n{proc.stdout[-4000:]}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    history = json.loads((run_dir / "log_history.json").read_text())
    tokens = [h["num_tokens"] for h in history if "num_tokens" in h]
    if tokens and metrics.get("train/step_s"):
        # tokens of the mean step over the median step time (the first step left out)
        metrics["tokens_per_second"] = tokens[-1] / args.steps / metrics["train/step_s"]
    return metrics


def mib(n: float) -> str:
    return f"{n / 2**20:9.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--configs", nargs="+", default=CONFIGS)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--packing", action="store_true", help="pack rows to --max-length")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="rlhf-bench-") as tmp:
        results = {name: run(name, args, Path(tmp)) for name in args.configs}
    params = next(iter(results.values()))["num_parameters"]
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"\nSFT, demo data, {params / 1e6:.1f} M parameters, {args.nproc} ranks, "
          f"{args.steps} steps, global batch {args.global_batch}, max length "
          f"{args.max_length}{' packed' if args.packing else ''}, {args.precision}, {device}\n")
    if torch.cuda.is_available():
        print(f"{'config':15}{'samples/s*':>11}{'tokens/s':>10}{'s/step':>8}"
              f"{'peak GPU GiB (rank 0)':>23}")
        for name, m in results.items():
            print(f"{name:15}{m['train/samples_per_second']:11.1f}"
                  f"{m.get('tokens_per_second', float('nan')):10.0f}"
                  f"{m.get('train/step_s', float('nan')):8.3f}"
                  f"{m['memory/peak_gpu_bytes'] / 2**30:23.2f}")
        print("s/step: the median step after the first (train/step_s); tokens/s from it; "
              "* samples/s: over the whole training time, the first step's start included\n")
    header = (f"{'config':15}{'samples/s':>10}  per rank (MiB): {'params':>9}{'grads':>9}"
              f"{'optimizer':>10}{'state sum':>10}{'peak RSS':>10}")
    print(header)
    for name, m in results.items():
        for r in range(args.nproc):
            key = lambda k: m.get(f"memory/rank{r}_{k}", 0)  # noqa: E731
            state = key("param_bytes") + key("grad_bytes") + key("optimizer_bytes")
            label = name if r == 0 else ""
            speed = f"{m['train/samples_per_second']:10.1f}" if r == 0 else " " * 10
            print(f"{label:15}{speed}  rank {r}:         {mib(key('param_bytes'))}"
                  f"{mib(key('grad_bytes'))}{mib(key('optimizer_bytes'))} {mib(state)}"
                  f" {mib(key('peak_rss_bytes'))}")
    base = results.get("ddp")
    if base:
        full = sum(base[f"memory/rank0_{k}"] for k in ("param_bytes", "grad_bytes",
                                                       "optimizer_bytes"))
        print("\nstate per rank relative to ddp:")
        for name, m in results.items():
            state = sum(m.get(f"memory/rank0_{k}", 0) for k in ("param_bytes", "grad_bytes",
                                                                 "optimizer_bytes"))
            print(f"  {name:15}{state / full:6.2f}")


if __name__ == "__main__":
    main()
