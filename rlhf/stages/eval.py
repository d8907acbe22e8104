"""Held-out evaluation: answer held-out prompts and score the answers.

    rlhf stage=eval model.path=outputs/demo/<run>/sft                    # a run dir or checkpoint
    rlhf stage=eval model.path=<dpo run> stage.reward_model=<rm run> stage.reference_path=<sft run>

Greedy and sampled answers (`stage.samples_per_prompt` draws several sampled answers per
prompt and averages the sampled figures over all of them; one draw moves with the seed). On
the demo the oracle scores each answer (fact, politeness, relevance; docs/demo.md). With
`reward_model`, the mean reward-model score is reported beside the oracle's, so reward hacking
shows; with `reference_path`, the KL from the reference to the policy on the sampled answers.
dpo, grpo, rloo and ppo end with the same evaluation (their `stage.heldout`). Writes
`samples.jsonl` (every prompt with its answers and scores) and `metrics.json`
(`eval/oracle_greedy`, `eval/kl_to_reference`...).

With `stage.models={name: run, ...}` and `stage.baseline`, several models are evaluated side by
side instead: perplexity, BLEU/chrF/ROUGE-L against reference answers, win rate against the
baseline with a bootstrap interval (rlhf/evaluation/compare_models.py, docs/evaluation.md).
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import torch

from data_tools.demo.oracle import Oracle
from rlhf.algorithms.kl import sequence_kl
from rlhf.data.loading import load_prompts, require
from rlhf.distributed import is_main_process
from rlhf.models.generation import answer_logprobs, default_device, generate
from rlhf.models.loading import CHECKPOINT_SUBDIR, load_causal_lm, load_tokenizer
from rlhf.stages.common import StageRun


def demo_oracle(cfg, rows: list[dict]) -> Oracle | None:
    """The oracle, when the prompts come from the demo (they name `product` and `intent`)."""
    catalogue = Path(cfg.data.dir or "") / "catalogue.json"
    if cfg.data.demo is None or not catalogue.exists():
        return None
    if not all("product" in r and "intent" in r for r in rows):
        return None
    return Oracle.from_file(str(catalogue))


def score_answers(oracle: Oracle, rows: list[dict], answers: list[str], mode: str) -> dict:
    scores = [oracle.score(a, r["product"], r["intent"]) for r, a in zip(rows, answers)]
    for row, s in zip(rows, scores):
        row.setdefault("scores", {})[mode] = s.as_dict()
    return {f"eval/oracle_{mode}": mean(s.total for s in scores),
            f"eval/oracle_fact_{mode}": mean(s.fact for s in scores),
            f"eval/oracle_polite_{mode}": mean(s.polite for s in scores),
            f"eval/oracle_relevant_{mode}": mean(s.relevant for s in scores)}


def reward_model_scores(scorer: tuple, rows: list[dict], answers: list[str], mode: str,
                        batch_size: int) -> dict:
    """Mean raw score of (model, tokenizer) from rlhf.models.reward.load on the answers."""
    from rlhf.models import reward

    scores = reward.score(*scorer, [r["prompt"] + [{"role": "assistant", "content": a}]
                                          for r, a in zip(rows, answers)], batch_size)
    for row, s in zip(rows, scores):
        row.setdefault("reward_model", {})[mode] = s
    return {f"eval/reward_model_{mode}": mean(scores)}


def kl_to_reference(reference, policy, answers, batch_size: int, pad: int) -> dict:
    """KL(policy || reference) on the policy's own samples (rlhf/algorithms/kl.py)."""
    policy_logps, mask = answer_logprobs(policy, answers.prompt_ids, answers.answer_ids,
                                         batch_size, pad)
    ref_logps, _ = answer_logprobs(reference, answers.prompt_ids, answers.answer_ids,
                                   batch_size, pad)
    kl = sequence_kl(policy_logps, ref_logps, mask)  # (N,)
    return {"eval/kl_to_reference": kl.mean().item(),
            "eval/kl_to_reference_per_token": (kl.sum() / mask.sum().clamp(min=1)).item()}


def evaluate_policy(cfg, settings, model_path: str, stage_run: StageRun,
                    reward_model: str | None = None, reference_path: str | None = None) -> dict:
    """Answer data.eval_prompts with the model at `model_path` and score the answers.
    `settings` is a HeldOutEvalConfig (stage=eval's own config, or a stage's `heldout`)."""
    out = stage_run.out
    tokenizer = load_tokenizer(cfg.model)
    model = load_causal_lm(cfg.model, model_path).to(default_device())
    caps = [c for c in (settings.max_prompts or None, cfg.debug.max_eval_rows) if c]
    rows = load_prompts(require(cfg.data.eval_prompts, "data.eval_prompts", cfg.stage.name),
                        min(caps) if caps else None, bad_rows_dir=out)
    oracle = demo_oracle(cfg, rows)
    scorer = None  # the reward model and its tokenizer, loaded once for both modes
    if reward_model:
        from rlhf.models import reward
        rm, rm_tokenizer = reward.load(reward_model)
        scorer = (rm.to(default_device()), rm_tokenizer)
    reference = None  # the model of the KL, loaded once for all draws
    if reference_path and settings.sample_temperature > 0:
        reference = load_causal_lm(cfg.model, reference_path).to(model.device)

    modes = {"greedy": 0.0} if settings.greedy else {}
    if settings.sample_temperature > 0:
        modes["sampled"] = settings.sample_temperature
    metrics = {"eval/num_prompts": len(rows)}
    torch.manual_seed(settings.seed)
    for mode, temperature in modes.items():
        draws = settings.samples_per_prompt if mode == "sampled" else 1
        per_draw = [answer_and_score(settings, model, tokenizer, rows, mode, draw,
                                     temperature, oracle, scorer, reference)
                    for draw in range(draws)]
        # every draw answers every prompt once, so the mean of the draws' means is the mean
        # over all answers (the per-token KL: the mean of the draws')
        metrics.update({key: mean(d[key] for d in per_draw) for key in per_draw[0]})
        if draws > 1:
            metrics["eval/samples_per_prompt"] = draws

    if is_main_process():
        with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    show_examples(rows[:settings.num_examples], stage_run.tracker)
    stage_run.tracker.log(metrics)
    return metrics


def draw_name(mode: str, draw: int) -> str:
    """samples.jsonl's name of one draw: sampled, sampled_2, sampled_3, ..."""
    return mode if draw == 0 else f"{mode}_{draw + 1}"


def answer_and_score(settings, model, tokenizer, rows: list[dict], mode: str, draw: int,
                     temperature: float, oracle, scorer, reference) -> dict:
    """One answer per prompt, kept in each row under draw_name(mode, draw), and its metrics
    (named for `mode`, so that draws can be averaged)."""
    name = draw_name(mode, draw)
    answers = generate(model, tokenizer, [r["prompt"] for r in rows],
                       settings.max_new_tokens, settings.batch_size, temperature)
    for row, answer in zip(rows, answers.texts):
        row.setdefault("answers", {})[name] = answer
    metrics = {f"eval/answer_words_{name}": mean(len(a.split()) for a in answers.texts)}
    if oracle is not None:
        metrics.update(score_answers(oracle, rows, answers.texts, name))
    if scorer:
        metrics.update(reward_model_scores(scorer, rows, answers.texts, name,
                                           settings.batch_size))
    if reference is not None and temperature > 0:
        metrics.update(kl_to_reference(reference, model, answers,
                                       settings.batch_size, tokenizer.pad_token_id))
    return {key.replace(name, mode): value for key, value in metrics.items()}


def evaluate_trained_policy(cfg, stage_run: StageRun, reward_model: str | None,
                            reference_path: str | None) -> dict:
    """The end of dpo, grpo and rloo: rank 0 evaluates the saved `<run dir>/model` on one
    device while the other ranks wait (the checkpoint is whole even under ZeRO-3)."""
    import torch.distributed as dist

    from rlhf.compat import forget_deepspeed_zero3_init

    # training is over: without this, from_pretrained on rank 0 would build a ZeRO-3
    # partitioned model (a collective the waiting ranks never join) and hang
    forget_deepspeed_zero3_init()
    metrics = {}
    if not cfg.data.eval_prompts:
        print(f"rlhf: no data.eval_prompts; stage={cfg.stage.name} skips the held-out evaluation")
    elif is_main_process():
        metrics = evaluate_policy(cfg, cfg.stage.heldout, str(stage_run.out / CHECKPOINT_SUBDIR),
                                  stage_run, reward_model, reference_path)
    if dist.is_initialized():
        dist.barrier()
    return metrics


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    stage = cfg.stage
    if stage.models:  # several models side by side (rlhf/evaluation/compare_models.py)
        from rlhf.evaluation.compare_models import evaluate_models
        return stage_run.finish(evaluate_models(cfg, stage_run))
    return stage_run.finish(evaluate_policy(cfg, stage, cfg.model.path, stage_run,
                                            stage.reward_model, stage.reference_path))


def show_examples(rows: list[dict], tracker) -> None:
    table = []
    for row in rows:
        question = row["prompt"][-1]["content"]
        for mode, answer in row.get("answers", {}).items():
            if mode not in ("greedy", "sampled"):  # further draws: in samples.jsonl only
                continue
            score = row.get("scores", {}).get(mode, {}).get("total")
            table.append([question, mode, answer, score])
            print(f"Q: {question}\n  [{mode}{'' if score is None else f' {score:.2f}'}] {answer}")
    tracker.log_table("eval/examples", ["prompt", "mode", "answer", "oracle"], table)
