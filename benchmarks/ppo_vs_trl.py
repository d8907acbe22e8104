"""`rlhf stage=ppo` vs. TRL 1.12's `trl.experimental.ppo.PPOTrainer`: the same PPO work, timed per step.

    python benchmarks/ppo_vs_trl.py                  # tiny demo Llama, CPU, a few minutes
    python benchmarks/ppo_vs_trl.py --steps 10 --warmup 2

TRL removed its PPO trainer in 1.13, so TRL 1.12.0 is installed into its own virtual
environment (`--trl-venv`, default ~/.cache/rlhf/bench-trl112; created when missing: the same
torch, transformers, accelerate and datasets versions as ours, then trl==1.12.0), and driven by a
small script this benchmark writes. Our side is `rlhf stage=ppo` in this interpreter's
environment. The two run one after the other, never together, TRL as shipped, TRL with its two
per-step `gc.collect()` calls turned into no-ops (the module's `gc` replaced), then ours twice
(log-probs from the rollout as TRL, then recomputed).

Same work on both sides:
- models: the policy is a `rlhf stage=sft debug=tiny` run of the demo's tiny Llama, the reward
  model a `rlhf stage=rm debug=tiny` run from it (both built here, into `--work`, unless given);
  the reference is a frozen copy of the policy; the critic starts from the reward model
  (a LlamaForSequenceClassification read at every position on both sides);
- prompts: the same 8 x (warm-up + steps) demo prompts, tokenized with the chat template and
  its generation prompt (ours: `prompt_token_ids`; TRL gets those token ids);
- no gradient clipping (TRL 1.12's PPO loop never clips; ours: `stage.max_grad_norm=0`);
- the old log-probs of the sampled tokens: TRL takes them from generation's logits, and so
  does our equal-work run (`stage.rollout_logprobs=true`); our default, which recomputes them
  with a full forward pass of the actor, is run and printed too;
- 8 prompts per step, one answer each, at most 16 new tokens (temperature 1, no top-k/top-p),
  4 PPO epochs over one minibatch of 8 (no accumulation), fixed KL coefficient 0.05 (k1 in
  the reward), GAE gamma 1 / lambda 0.95, clip 0.2 / value clip 0.2, vf_coef 0.1, fp32, CPU.

What differs unavoidably (each side's own design):
- TRL trains policy and critic as one wrapped model under one AdamW and one learning rate; ours
  has two optimizers (actor 1e-6, critic 1e-5). Same parameters updated, same number of
  forward/backward passes per epoch (TRL: one policy and one value forward in the wrapper;
  ours: actor and critic forward separately).
- TRL scores the token ids of prompt + answer with the reward model directly; ours decodes the
  answer and re-renders the conversation with the reward model's chat template (one extra
  tokenization), then normalises with its reward_stats.json.
- The order of prompts differs (TRL: its shuffled DataLoader; ours: a seeded order); both draw
  from the same prompt set, one pass over it.
- Step time. TRL: the time between consecutive `on_step_end` callbacks (everything in its step,
  its `gc.collect()` at the end of the previous step included). Ours: `time/rollout_s +
  time/score_s + time/update_s` from log_history.json (the step's metric averaging and logging
  after the update, well under a millisecond on one process, is not counted).
- The answers' lengths: both stop at the end-of-turn token (TRL: `stop_token="eos"`, which is
  `<|end|>` here); a barely trained policy rarely stops, so both generate close to 16 tokens.
  Printed: ours' mean response length, TRL's count of EOS tokens.
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
import time
from pathlib import Path

BATCH, NEW_TOKENS, EPOCHS, KL_COEF = 8, 16, 4, 0.05
TRL_PINS = ["trl==1.12.0"]
# our runs: TRL takes the old log-probs from generation's logits, so the equal-work run does
# too (stage.rollout_logprobs=true); the default recomputes them with one more forward pass
EQUAL_WORK = "rlhf stage=ppo (log-probs from rollout)"
OURS = {EQUAL_WORK: ["stage.rollout_logprobs=true"],
        "rlhf stage=ppo (log-probs recomputed)": ["stage.rollout_logprobs=false"]}
SAME_AS_OURS = ["transformers", "accelerate", "datasets"]

TRL_DRIVER = textwrap.dedent('''
    import json, sys, time, types
    import torch
    from datasets import Dataset
    from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification,
                              AutoTokenizer, TrainerCallback)
    import trl
    import trl.experimental.ppo.ppo_trainer as ppo_module
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    policy, rm, prompt_file, out, steps, no_gc = sys.argv[1:7]
    steps, no_gc = int(steps), no_gc == "1"
    skipped = []
    if no_gc:  # the two gc.collect() calls of each step become no-ops (counted)
        ppo_module.gc = types.SimpleNamespace(collect=lambda *a, **k: skipped.append(1) or 0)
    torch.manual_seed(42)
    tokenizer = AutoTokenizer.from_pretrained(policy, padding_side="left")
    prompt_ids = json.load(open(prompt_file))
    dataset = Dataset.from_dict({"input_ids": prompt_ids})
    model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    ref_model = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1,
                                                                      dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1,
                                                                     dtype=torch.float32)
    args = PPOConfig(output_dir=out, per_device_train_batch_size=%(batch)d,
                     gradient_accumulation_steps=1, num_mini_batches=1,
                     num_ppo_epochs=%(epochs)d, response_length=%(tokens)d,
                     total_episodes=%(batch)d * steps, local_rollout_forward_batch_size=%(batch)d,
                     kl_coef=%(kl)s, kl_estimator="k1", learning_rate=1e-6, temperature=1.0,
                     stop_token="eos", missing_eos_penalty=None, gamma=1.0, lam=0.95,
                     cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, whiten_rewards=False,
                     num_sample_generations=0, report_to="none", save_strategy="no",
                     logging_steps=1, use_cpu=True, bf16=False, seed=42,
                     dataloader_num_workers=0, disable_tqdm=True)

    stamps, eos = [], []

    class Clock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "val/num_eos_tokens" in logs:
                eos.append(logs["val/num_eos_tokens"])

        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(args=args, processing_class=tokenizer, model=model, ref_model=ref_model,
                         reward_model=reward_model, value_model=value_model,
                         train_dataset=dataset, callbacks=[Clock()])
    trainer.train()
    print("RESULT " + json.dumps({"trl": trl.__version__, "torch": torch.__version__,
                                  "step_s": [b - a for a, b in zip(stamps, stamps[1:])],
                                  "eos_tokens": eos, "gc_calls_skipped": len(skipped)}))
''') % {"batch": BATCH, "epochs": EPOCHS, "tokens": NEW_TOKENS, "kl": KL_COEF}


def run(cmd: list, env: dict | None = None, log: Path | None = None) -> str:
    proc = subprocess.run([str(c) for c in cmd], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, env=env)
    if log:
        log.write_text(proc.stdout)
    if proc.returncode:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{proc.stdout[-4000:]}")
    return proc.stdout


def ensure_trl_venv(venv: Path) -> Path:
    python = venv / "bin" / "python"
    check = [python, "-c", "import trl.experimental.ppo, trl; assert trl.__version__ == '1.12.0'"]
    if python.exists() and subprocess.run([str(c) for c in check],
                                          capture_output=True).returncode == 0:
        return python
    import importlib.metadata as md

    import torch
    print(f"creating {venv} with trl==1.12.0 (once) ...", flush=True)
    run([sys.executable, "-m", "venv", venv])
    run([python, "-m", "pip", "install", "-q", f"torch=={torch.__version__.split('+')[0]}"])
    run([python, "-m", "pip", "install", "-q", *TRL_PINS,
         *[f"{p}=={md.version(p)}" for p in SAME_AS_OURS]])
    run(check)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20, help="timed steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=3, help="steps left out of the timing")
    parser.add_argument("--policy", help="an SFT run dir (default: built with stage=sft debug=tiny)")
    parser.add_argument("--reward-model", help="a stage=rm run dir (default: built from --policy)")
    parser.add_argument("--trl-venv", default=str(Path.home() / ".cache/rlhf/bench-trl112"))
    parser.add_argument("--work", help="where runs go (default: a temporary directory)")
    args = parser.parse_args()
    total = args.warmup + args.steps

    from data_tools.demo.generate import DemoSpec, ensure_demo_data
    from rlhf.data.loading import load_prompts
    from rlhf.models.generation import prompt_token_ids

    trl_python = ensure_trl_venv(Path(args.trl_venv))
    with tempfile.TemporaryDirectory(prefix="rlhf-ppo-bench-") as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = Path(os.environ.get("RLHF_CACHE_DIR", Path.home() / ".cache/rlhf"))
        env = {**os.environ, "RLHF_CACHE_DIR": str(cache)}
        rlhf = [sys.executable, "-m", "rlhf.cli"]
        ensure_demo_data(cache / "demo_data", DemoSpec())
        policy = args.policy
        if not policy:
            policy = work / "sft"
            print("building the policy: rlhf stage=sft debug=tiny ...", flush=True)
            run([*rlhf, "stage=sft", "debug=tiny", f"hydra.run.dir={policy}"], env,
                work / "sft.log")
        rm = args.reward_model
        if not rm:
            rm = work / "rm"
            print("building the reward model: rlhf stage=rm debug=tiny ...", flush=True)
            run([*rlhf, "stage=rm", "debug=tiny", f"model.path={policy}",
                 f"hydra.run.dir={rm}"], env, work / "rm.log")
        policy_model, rm_model = Path(policy) / "model", Path(rm) / "model"

        # the same prompts for both: one pass over BATCH x total demo prompts
        from transformers import AutoTokenizer
        rows = load_prompts(str(cache / "demo_data" / "prompts_train.jsonl"))[:BATCH * total]
        prompts_file = work / "bench_prompts.jsonl"
        prompts_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
        tokenizer = AutoTokenizer.from_pretrained(policy_model)
        ids = [prompt_token_ids(tokenizer, r["prompt"]) for r in rows]
        ids_file = work / "bench_prompt_ids.json"
        ids_file.write_text(json.dumps(ids))
        driver = work / "trl112_ppo_driver.py"
        driver.write_text(TRL_DRIVER)

        results = {}
        for name, no_gc in (("TRL 1.12 as shipped", "0"), ("TRL 1.12 without gc.collect", "1")):
            print(f"running {name} ...", flush=True)
            out = run([trl_python, driver, policy_model, rm_model, ids_file,
                       work / f"trl_{no_gc}", total, no_gc], env, work / f"trl_{no_gc}.log")
            res = json.loads([x for x in out.splitlines() if x.startswith("RESULT ")][-1][7:])
            if len(res["step_s"]) != total:
                sys.exit(f"{name}: {len(res['step_s'])} steps timed, {total} expected")
            results[name] = res
            if no_gc == "1" and res["gc_calls_skipped"] < 2 * total:
                sys.exit(f"{name}: {res['gc_calls_skipped']} gc.collect calls skipped, "
                         f"expected 2 per step")

        histories = {}
        for name, extra in OURS.items():
            print(f"running {name} ...", flush=True)
            ours_dir = work / ("ours_" + extra[0].split("=")[-1])
            # stage.cache=false: time the training, not a reuse of an earlier benchmark's run
            run([*rlhf, "stage=ppo", "stage.cache=false", f"model.path={policy}",
                 f"stage.reward_model={rm}",
                 f"data.prompts_train={prompts_file}", f"stage.max_steps={total}",
                 f"stage.global_batch_size={BATCH}", f"stage.per_device_batch_size={BATCH}",
                 "stage.num_minibatches=1", f"stage.ppo_epochs={EPOCHS}",
                 f"stage.max_new_tokens={NEW_TOKENS}", "stage.adaptive_kl=false",
                 f"stage.kl_coef={KL_COEF}", "stage.kl_estimator=k1", "stage.temperature=1.0",
                 "stage.top_p=1.0", "stage.critic_init=reward_model", "stage.sample_every=0",
                 "stage.heldout.max_prompts=2", "stage.max_grad_norm=0", *extra,
                 f"hydra.run.dir={ours_dir}"], env, work / f"{ours_dir.name}.log")
            history = json.loads((ours_dir / "log_history.json").read_text())
            if len(history) != total:
                sys.exit(f"{name}: {len(history)} steps logged, {total} expected")
            histories[name] = history

    report(results, histories, args.warmup)


def report(results: dict, histories: dict, warmup: int) -> None:
    """Mean, median and fastest step after the warm-up. On a machine shared with other jobs the
    mean carries their load; the fastest step is the closest to the code's own cost."""
    keys = ("time/rollout_s", "time/score_s", "time/update_s")
    equal, total = EQUAL_WORK, len(histories[EQUAL_WORK])
    steps = {name: res["step_s"][warmup:] for name, res in results.items()}
    for name, history in histories.items():
        steps[name] = [sum(h[k] for k in keys) for h in history[warmup:]]
    print(f"\nPPO step time, {BATCH} prompts x {NEW_TOKENS} new tokens, {EPOCHS} epochs over one "
          f"minibatch, fixed KL {KL_COEF}, tiny demo Llama, CPU (torch threads: default), "
          f"steps {warmup + 1}-{total} (first {warmup} = warm-up); "
          f"trl {results['TRL 1.12 as shipped']['trl']}")
    print(f"{'':44}{'mean s':>8}{'median s':>10}{'min s':>8}   TRL / ours (mean / median / min)")
    for name, times in steps.items():
        row = f"{name:44}{statistics.mean(times):>8.3f}{statistics.median(times):>10.3f}" \
              f"{min(times):>8.3f}"
        for ours in (n for n in histories if name in results):
            row += f"\n{'':46}over {ours}: " + " / ".join(
                f"{f(times) / f(steps[ours]):.2f}x" for f in
                (statistics.mean, statistics.median, min))
        print(row)
    for name, times in steps.items():
        print(f"  {name} per step: {[round(t, 2) for t in times]}")
    for name, history in histories.items():
        timed = history[warmup:]
        print(f"{name}, split (mean): " + ", ".join(
            f"{k} {statistics.mean(h[k] for h in timed):.3f}" for k in keys)
            + f"; mean response length "
            f"{statistics.mean(h['ppo/response_length'] for h in timed):.1f} tokens")
    print(f"TRL's EOS tokens per step "
          f"{[int(x) for x in results['TRL 1.12 as shipped']['eos_tokens'][warmup:]]}")
    shipped = statistics.median(steps["TRL 1.12 as shipped"])
    no_gc = statistics.median(steps["TRL 1.12 without gc.collect"])
    mine = statistics.median(steps[equal])
    print(f"targets, at equal work ({equal}; reported, not asserted; medians): >= 3x faster "
          f"than TRL 1.12 as shipped: {shipped / mine:.2f}x "
          f"{'met' if shipped / mine >= 3 else 'NOT met'}; faster than TRL 1.12 without "
          f"gc.collect: {no_gc / mine:.2f}x {'met' if no_gc > mine else 'NOT met'}")


if __name__ == "__main__":
    main()
