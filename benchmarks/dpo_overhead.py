"""`rlhf stage=dpo` vs. a plain TRL DPOTrainer script: the same DPO job, side by side.

    python benchmarks/dpo_overhead.py                 # tiny demo model, CPU, ~4 min
    python benchmarks/dpo_overhead.py --steps 60 --repeats 3

Both train the same model on the same pairs (the demo rankings expanded to pairs, written
to one JSONL file) with the same batch, steps, learning rate, beta, max_length and seed, fp32,
no gradient checkpointing. The plain script is what a TRL user would write: load the JSONL
with `datasets`, DPOConfig + DPOTrainer with the SFT model as its own reference. Each side
runs `--repeats` times, alternating; the median of TRL's own train_samples_per_second is
compared (it excludes loading and saving, which differ by design: rlhf also checks every
row first, and evaluates on held-out prompts afterwards, outside the timed loop).

Padding-free batches: TRL 1.16's DPOTrainer ignores `padding_free=True` (it warns and pads
since its DPO refactor), so this prints what it measures with padding on both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

PLAIN_SCRIPT = textwrap.dedent('''
    import json, sys
    import datasets, torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    model_path, pairs, out, steps, batch, lr, beta, max_length = sys.argv[1:9]
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    dataset = datasets.load_dataset("json", data_files=pairs, split="train")
    args = DPOConfig(output_dir=out, max_steps=int(steps), per_device_train_batch_size=int(batch),
                     learning_rate=float(lr), beta=float(beta), max_length=int(max_length),
                     lr_scheduler_type="cosine", warmup_steps=0.1, seed=42, logging_steps=10,
                     bf16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
                     save_strategy="no", dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=ref_model, args=args, train_dataset=dataset,
                         processing_class=tokenizer)
    result = trainer.train()
    print("RESULT " + json.dumps(result.metrics))
''')


def run(cmd: list[str], env: dict) -> str:
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stdout[-4000:]}")
    return proc.stdout


def write_pairs(data_dir: Path, path: Path, limit: int) -> int:
    from rlhf.data.rankings import expand_to_pairs, load_rankings

    pairs = expand_to_pairs(load_rankings(str(data_dir / "rankings_train.jsonl")))[:limit]
    with open(path, "w", encoding="utf-8") as f:
        for p in pairs:
            f.write(json.dumps({"prompt": p["prompt"],
                                "chosen": [{"role": "assistant", "content": p["responses"][0]}],
                                "rejected": [{"role": "assistant",
                                              "content": p["responses"][1]}]}) + "\n")
    return len(pairs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="SFT checkpoint (default: the untrained demo model; "
                                        "speed does not depend on the weights)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from data_tools.demo.generate import DemoSpec, ensure_demo_data
    from rlhf.models.demo_tiny import DemoModelSpec, ensure_demo_model

    with tempfile.TemporaryDirectory(prefix="rlhf-dpo-bench-") as tmp:
        tmp = Path(tmp)
        cache = Path(os.environ.get("RLHF_CACHE_DIR", tmp / "cache"))
        env = {**os.environ, "RLHF_CACHE_DIR": str(cache)}
        ensure_demo_data(cache / "demo_data", DemoSpec())
        model = args.model or str(ensure_demo_model(cache / "demo_tiny", DemoModelSpec()))
        pairs_file = tmp / "pairs.jsonl"
        n_pairs = write_pairs(cache / "demo_data", pairs_file, args.steps * args.batch)
        common = dict(lr="5e-5", beta="0.1", max_length="192")
        # stage.cache=false: time the training, not a reuse of an earlier run of the same job
        ours_cmd = [sys.executable, "-m", "rlhf.cli", "stage=dpo", "stage.cache=false",
                    f"model.path={model}",
                    "stage.data_format=pairs", f"data.pairs_train={pairs_file}",
                    "data.pairs_eval=null", f"stage.max_steps={args.steps}",
                    f"stage.global_batch_size={args.batch}",
                    f"stage.per_device_batch_size={args.batch}",
                    f"stage.learning_rate={common['lr']}", f"stage.beta={common['beta']}",
                    f"stage.max_length={common['max_length']}", "stage.warmup_ratio=0.1",
                    "stage.seed=42", "stage.heldout.max_prompts=4"]
        script = tmp / "plain_dpo.py"
        script.write_text(PLAIN_SCRIPT)
        plain, ours = [], []
        for i in range(args.repeats):
            out = run([sys.executable, str(script), model, str(pairs_file), str(tmp / f"p{i}"),
                       str(args.steps), str(args.batch), common["lr"], common["beta"],
                       common["max_length"]], env)
            line = [x for x in out.splitlines() if x.startswith("RESULT ")][-1]
            plain.append(json.loads(line[len("RESULT "):])["train_samples_per_second"])
            run([*ours_cmd, f"hydra.run.dir={tmp / f'o{i}'}"], env)
            ours.append(json.loads((tmp / f"o{i}" / "metrics.json").read_text())
                        ["train/samples_per_second"])
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"\nDPO, {n_pairs} demo pairs, {args.steps} steps x {args.batch} pairs, fp32, "
          f"{'GPU' if os.environ.get('CUDA_VISIBLE_DEVICES') else 'CPU'}, "
          f"{args.repeats} run(s) each, median")
    print(f"{'':24}{'samples/s':>10}   runs")
    print(f"{'plain TRL DPOTrainer':24}{p:>10.2f}   {', '.join(f'{x:.2f}' for x in plain)}")
    print(f"{'rlhf stage=dpo':24}{o:>10.2f}   {', '.join(f'{x:.2f}' for x in ours)}")
    print(f"\nratio rlhf / plain: {o / p:.3f}  (target >= 0.95)")
    print("padding-free: not measured; TRL 1.16 DPOTrainer falls back to padding "
          "(padding_free is 'temporarily unavailable')")


if __name__ == "__main__":
    main()
