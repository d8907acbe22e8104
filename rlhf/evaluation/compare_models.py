"""stage=eval over several models at once (stage.models, stage.baseline).

    rlhf stage=eval stage.models='{sft: <run>, dpo: <run>, ppo: <run>}' stage.baseline=sft \
        stage.reward_model=<rm run> stage.references='${data.sft_eval}'

Every model answers the same held-out prompts with the same generation settings (greedy
and/or sampled at stage.sample_temperature, the same seed before each model). Per model:
perplexity on the reference answers, BLEU/chrF/ROUGE-L of its answers against them, mean
reward-model score, win rate against the baseline judged by the reward model (ties counted
half) with a bootstrap confidence interval over prompts, KL to the baseline on its sampled
answers, answer length, and on the demo the oracle's score and parts. Writes metrics.json
(`eval/<model>/<metric>`), samples.jsonl (per prompt every model's answers and scores), a
W&B table of the answers side by side, and prints a table. Definitions: docs/evaluation.md.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from statistics import mean

import torch

from rlhf.algorithms.eval_stats import bootstrap_ci, outcome_rates, outcomes, perplexity
from rlhf.algorithms.kl import sequence_kl
from rlhf.data.loading import load_checked, load_prompts, require
from rlhf.distributed import is_main_process, rank, world_size
from rlhf.evaluation.text_metrics import corpus_overlap, rouge_l, sentence_chrf
from rlhf.models.generation import Answers, answer_logprobs, answer_token_ids, \
    default_device, generate, prompt_token_ids
from rlhf.models.loading import load_causal_lm, load_tokenizer, resolve_model_path

OUTCOME_NAMES = {1.0: "win", 0.5: "tie", 0.0: "loss"}


# ---------------------------------------------------------------- the held-out set
def reference_row(row) -> dict:
    """An SFT conversation -> a prompt row whose `reference` is its last (assistant) turn;
    other fields (the demo's product and intent) are kept."""
    from data_tools import formats

    checked = formats.sft_row(row)["messages"]
    extra = {k: v for k, v in row.items() if k != "messages"}
    return {**extra, "prompt": checked[:-1], "reference": checked[-1]["content"]}


def prompt_with_reference(row) -> dict:
    """A prompt row; its optional `reference` (text or an assistant message) is checked."""
    from data_tools import formats

    checked = formats.prompt_row(row)
    if "reference" in checked:
        checked["reference"] = formats.check_answer(checked["reference"], "reference")["content"]
    return checked


def heldout_rows(cfg, out: Path) -> list[dict]:
    stage = cfg.stage
    caps = [c for c in (stage.max_prompts or None, cfg.debug.max_eval_rows) if c]
    cap = min(caps) if caps else None
    if stage.references:
        return load_checked(stage.references, reference_row, cap, out)
    path = require(cfg.data.eval_prompts, "data.eval_prompts", "eval")
    if any("reference" in r for r in load_prompts(path, cap, out)):
        return load_checked(path, prompt_with_reference, cap, out)
    return load_prompts(path, cap, out)


# ---------------------------------------------------------------- ranks
def my_share(rows: list) -> list:
    """The prompts this rank answers when several ranks split them (rank r: r, r + W, ...)."""
    return rows[rank()::world_size()]


def gather(values: list) -> list:
    """Every rank's share, back in the original order of the prompts."""
    if world_size() == 1:
        return values
    import torch.distributed as dist

    shares = [None] * world_size()
    dist.all_gather_object(shares, values)
    merged = [None] * sum(len(s) for s in shares)
    for r, share in enumerate(shares):
        merged[r::world_size()] = share
    return merged


def gather_answers(answers: Answers) -> Answers:
    return Answers(gather(answers.texts), gather(answers.prompt_ids), gather(answers.answer_ids))


# ---------------------------------------------------------------- generation and scoring
def answer_all(model, tokenizer, prompts: list, settings, temperature: float,
               label: str) -> Answers:
    """generate() in batches of stage.batch_size with a progress bar; this rank's share."""
    from tqdm.auto import tqdm

    share = my_share(prompts)
    result = Answers([], [], [])
    torch.manual_seed(settings.seed + rank())  # the same seed for every model
    step = settings.batch_size
    for start in tqdm(range(0, len(share), step), desc=label, unit="batch",
                      disable=not is_main_process() or len(share) <= step):
        part = generate(model, tokenizer, share[start:start + step], settings.max_new_tokens,
                        step, temperature)
        result.texts += part.texts
        result.prompt_ids += part.prompt_ids
        result.answer_ids += part.answer_ids
    return gather_answers(result)


def logprobs(model, answers: Answers, batch_size: int, pad: int):
    """answer_logprobs on this rank's share, gathered: (N, T) logps and mask as lists."""
    share_p, share_a = my_share(answers.prompt_ids), my_share(answers.answer_ids)
    if not share_a:
        return gather([])
    logps, mask = answer_logprobs(model, share_p, share_a, batch_size, pad)
    return gather([(lp[m.bool()].tolist()) for lp, m in zip(logps, mask)])


def padded(rows: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(map(len, rows)))
    logps = torch.zeros(len(rows), width)
    mask = torch.zeros(len(rows), width)
    for i, r in enumerate(rows):
        logps[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return logps, mask


def evaluate_models(cfg, stage_run) -> dict:
    """The multi-model evaluation (stage.models non-empty); returns the flat metrics."""
    from rlhf.stages.eval import demo_oracle, score_answers

    stage, out = cfg.stage, stage_run.out
    for name, path in stage.models.items():  # every path, before anything is loaded
        resolve_model_path(path, f"stage.models.{name}")
    if stage.reward_model:
        resolve_model_path(stage.reward_model, "stage.reward_model")
    rows = heldout_rows(cfg, out)
    references = [r["reference"] for r in rows] if all("reference" in r for r in rows) else None
    if references is None:
        print("rlhf: the held-out prompts have no reference answers (set stage.references="
              "<SFT conversations>, e.g. ${data.sft_eval}): no perplexity, BLEU, chrF, ROUGE-L")
    oracle = demo_oracle(cfg, rows)
    modes = {"greedy": 0.0} if stage.greedy else {}
    if stage.sample_temperature > 0:
        modes["sampled"] = stage.sample_temperature
    names = list(stage.models)
    baseline = stage.baseline or names[0]
    order = [baseline] + [n for n in names if n != baseline]  # the baseline stays loaded
    prompts = [r["prompt"] for r in rows]
    metrics: dict = {"eval/num_prompts": len(rows), "eval/num_models": len(names)}
    answers: dict[str, dict[str, Answers]] = {}
    base_model = base_tokenizer = None
    for name in order:
        model_cfg = cfg.model.copy()
        model_cfg.path = stage.models[name]
        tokenizer = load_tokenizer(model_cfg)
        model = load_causal_lm(model_cfg, stage.models[name]).to(default_device())
        pad = tokenizer.pad_token_id
        answers[name] = {mode: answer_all(model, tokenizer, prompts, stage, t, f"{name} {mode}")
                         for mode, t in modes.items()}
        for mode, a in answers[name].items():
            metrics[f"eval/{name}/answer_words_{mode}"] = mean(len(x.split()) for x in a.texts)
            metrics[f"eval/{name}/answer_tokens_{mode}"] = mean(len(x) for x in a.answer_ids)
        if references is not None:
            prompt_ids = [prompt_token_ids(tokenizer, p) for p in prompts]
            ref = Answers(references, prompt_ids, [answer_token_ids(tokenizer, i, p, r) for i, p, r
                                                   in zip(prompt_ids, prompts, references)])
            metrics[f"eval/{name}/perplexity"] = perplexity(
                *padded(logprobs(model, ref, stage.batch_size, pad)))
        if "sampled" in answers[name] and name != baseline:
            sampled = answers[name]["sampled"]
            policy = logprobs(model, sampled, stage.batch_size, pad)
            reference = logprobs(base_model, sampled, stage.batch_size,
                                 base_tokenizer.pad_token_id)
            policy_logps, mask = padded(policy)
            kl = sequence_kl(policy_logps, padded(reference)[0], mask)  # (N,)
            metrics[f"eval/{name}/kl_to_baseline"] = kl.mean().item()
        if name == baseline:
            base_model, base_tokenizer = model, tokenizer
        else:
            del model
    del base_model

    scorer = None
    if stage.reward_model:
        from rlhf.models import reward
        rm, rm_tokenizer = reward.load(stage.reward_model)
        scorer = (rm.to(default_device()), rm_tokenizer)
    samples = [{**row, "answers": {}} for row in rows]
    rm_scores: dict[str, dict[str, list[float]]] = {}
    for name in order:
        for mode, a in answers[name].items():
            for sample, text in zip(samples, a.texts):
                sample["answers"].setdefault(name, {})[mode] = text
            if references is not None:
                for key, value in corpus_overlap(a.texts, references).items():
                    metrics[f"eval/{name}/{key}_{mode}"] = value
                for sample, c, r in zip(samples, sentence_chrf(a.texts, references),
                                        rouge_l(a.texts, references)):
                    sample.setdefault("chrf", {}).setdefault(name, {})[mode] = c
                    sample.setdefault("rouge_l", {}).setdefault(name, {})[mode] = r
            if oracle is not None:
                scored = [dict(r) for r in rows]
                found = score_answers(oracle, scored, a.texts, mode)
                metrics.update({k.replace("eval/", f"eval/{name}/", 1): v
                                for k, v in found.items()})
                for sample, r in zip(samples, scored):
                    sample.setdefault("scores", {}).setdefault(name, {})[mode] = \
                        r["scores"][mode]
            if scorer is not None:
                from rlhf.models import reward
                conversations = [p + [{"role": "assistant", "content": t}]
                                 for p, t in zip(my_share(prompts), my_share(a.texts))]
                scores = gather(reward.score(*scorer, conversations, stage.batch_size))
                rm_scores.setdefault(name, {})[mode] = scores
                metrics[f"eval/{name}/reward_model_{mode}"] = mean(scores)
                for sample, s in zip(samples, scores):
                    sample.setdefault("reward_model", {}).setdefault(name, {})[mode] = s
    for name in order[1:]:
        if scorer is None:
            break
        for mode in modes:
            results = outcomes(rm_scores[name][mode], rm_scores[baseline][mode],
                               stage.tie_margin)
            # the same answer text is a tie whatever the scores say
            results = [0.5 if x == y else o for o, x, y in
                       zip(results, answers[name][mode].texts, answers[baseline][mode].texts)]
            for key, value in outcome_rates(results).items():
                metrics[f"eval/{name}/{key}_{mode}"] = value
            low, high = bootstrap_ci(results, stage.bootstrap_samples, stage.confidence,
                                     stage.seed)
            metrics[f"eval/{name}/win_rate_{mode}_low"] = low
            metrics[f"eval/{name}/win_rate_{mode}_high"] = high
            for sample, o in zip(samples, results):
                sample.setdefault("vs_baseline", {}).setdefault(name, {})[mode] = \
                    OUTCOME_NAMES[o]
    if not is_main_process():
        return metrics
    with open(out / "samples.jsonl", "w", encoding="utf-8") as f:
        for sample in samples:
            f.write(json.dumps(sample, ensure_ascii=False) + "\n")
    mode = "greedy" if "greedy" in modes else "sampled"
    stage_run.tracker.log_table(
        "eval/answers", ["prompt", "reference", *order],
        [[s["prompt"][-1]["content"], s.get("reference", "")]
         + [s["answers"][n][mode] for n in order] for s in samples])
    stage_run.tracker.log(metrics)
    print(f"\n=== {len(order)} models on {len(rows)} held-out prompts, baseline {baseline} "
          f"({out})\n{models_table(metrics, order, baseline, list(modes), stage.confidence)}")
    return metrics


# ---------------------------------------------------------------- the printed table
TABLE_COLUMNS = [("ppl", "perplexity", ".2f"), ("bleu", "bleu_{m}", ".1f"),
                 ("chrf", "chrf_{m}", ".1f"), ("rougeL", "rouge_l_{m}", ".1f"),
                 ("oracle", "oracle_{m}", ".3f"), ("fact", "oracle_fact_{m}", ".3f"),
                 ("rm", "reward_model_{m}", ".3f"), ("kl", "kl_to_baseline", ".2f"),
                 ("words", "answer_words_{m}", ".1f")]


def models_table(metrics: dict, order: list[str], baseline: str, modes: list[str],
                 confidence: float = 0.95) -> str:
    """One row per model and generation mode: the metrics that were computed, the win rate
    against the baseline with its interval."""
    level = f"{round(100 * confidence)}%"
    columns = [(h, k, f) for h, k, f in TABLE_COLUMNS
               if any(f"eval/{n}/{k.format(m=m)}" in metrics for n in order for m in modes)]
    header = ["model", "mode", *[h for h, _, _ in columns]]
    if any(f"eval/{n}/win_rate_{m}" in metrics for n in order for m in modes):
        header.append(f"win vs {baseline} [{level}]")
    lines = []
    for name in order:
        for mode in modes:
            cells = [name, mode]
            for _, key, fmt in columns:
                value = metrics.get(f"eval/{name}/{key.format(m=mode)}")
                cells.append("-" if value is None or (isinstance(value, float)
                                                      and math.isnan(value))
                             else format(value, fmt))
            if len(header) > len(cells):
                win = metrics.get(f"eval/{name}/win_rate_{mode}")
                cells.append("baseline" if name == baseline else "-" if win is None else
                             f"{win:.2f} [{metrics[f'eval/{name}/win_rate_{mode}_low']:.2f}, "
                             f"{metrics[f'eval/{name}/win_rate_{mode}_high']:.2f}]")
            lines.append(cells)
    widths = [max(len(str(r[i])) for r in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
                     for r in [header, *lines])

