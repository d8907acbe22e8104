"""K-wise vs. pairwise reward-model training on the same K = 4 demo rankings, side by side.

    python benchmarks/rm_kwise_vs_pairs.py --model outputs/demo/<run>/sft
    python benchmarks/rm_kwise_vs_pairs.py            # trains the demo SFT model first (~2 min)

Pairwise expands each ranking into its C(4,2) = 6 pairs (12 sequences through the model per
prompt) and trains on TRL's RewardTrainer, the usual way; K-wise (our RankingTrainer) scores the 4 responses once and takes all 6 comparisons from them (InstructGPT
section 3.5). Both run one epoch over the same prompts with the same learning rate and are
evaluated on the same held-out rankings. Prints examples/s, prompts/s, forward tokens per
prompt and accuracy for each, and the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def rlhf(args: list[str], run_dir: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", *args, f"hydra.run.dir={run_dir}"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode:
        sys.exit(f"failed: rlhf {' '.join(args)}\n{proc.stdout[-4000:]}")
    return json.loads((run_dir / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SFT checkpoint or run dir (default: train one)")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--prompts-per-step", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="rlhf-rm-bench-") as tmp:
        tmp = Path(tmp)
        model = args.model
        if model is None:
            model = str(tmp / "sft")
            rlhf(["experiment=demo", "stage=sft", "stage.learning_rate=2e-3",
                  "stage.max_steps=400", "stage.per_device_batch_size=32",
                  "stage.max_length=128"], Path(model))
        # stage.cache=false: time the training, not a reuse of an earlier benchmark's run
        common = ["experiment=demo", "stage=rm", "stage.cache=false", f"model.path={model}",
                  f"stage.learning_rate={args.lr}", "stage.num_epochs=1", "stage.max_length=128",
                  "stage.logging_steps=1000", "stage.reward_stats_rows=16",
                  "debug.max_train_rows=2000"]
        # the same prompts per optimizer step: 16 rankings, or their 16 x 6 pairs
        kwise = rlhf([*common, "stage.objective=kwise",
                      f"stage.global_batch_size={args.prompts_per_step}",
                      f"stage.per_device_batch_size={args.prompts_per_step}"], tmp / "kwise")
        pairs = rlhf([*common, "stage.objective=pairwise",
                      f"stage.global_batch_size={args.prompts_per_step * 6}",
                      f"stage.per_device_batch_size={args.prompts_per_step * 6}"], tmp / "pairs")
    prompts = kwise["train/examples"]
    print(f"\nreward model, demo rankings: {prompts} prompts x K=4, 1 epoch, lr {args.lr}, "
          f"{'GPU' if os.environ.get('CUDA_VISIBLE_DEVICES') else 'CPU'}\n")
    print(f"{'objective':10}{'examples':>10}{'examples/s':>12}{'prompts/s':>11}"
          f"{'fwd tokens/prompt':>19}{'accuracy':>10}{'kendall tau':>13}{'train s':>9}")
    for name, m in (("kwise", kwise), ("pairwise", pairs)):
        prompts_per_s = prompts / m["train_runtime_s"]
        print(f"{name:10}{m['train/examples']:>10}{m['train/samples_per_second']:>12.1f}"
              f"{prompts_per_s:>11.1f}{m['train/forward_tokens_per_prompt']:>19.0f}"
              f"{m['eval/reward_accuracy']:>10.3f}{m['eval/kendall_tau']:>13.3f}"
              f"{m['train_runtime_s']:>9.0f}")
    print(f"\nforward tokens per prompt, kwise / pairwise: "
          f"{kwise['train/forward_tokens_per_prompt'] / pairs['train/forward_tokens_per_prompt']:.2f}")
    print(f"training time, kwise / pairwise: "
          f"{kwise['train_runtime_s'] / pairs['train_runtime_s']:.2f}")
    print(f"accuracy, kwise - pairwise: "
          f"{kwise['eval/reward_accuracy'] - pairs['eval/reward_accuracy']:+.3f}")


if __name__ == "__main__":
    main()
