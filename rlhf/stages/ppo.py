"""PPO with a critic against a learned reward model: our own loop (docs/ppo.md).

    rlhf stage=ppo model.path=<sft run> stage.reward_model=<rm run>
    rlhf stage=ppo model.path=<sft run> 'stage.reward_funcs=[{_target_: rlhf.rewards.length.LengthPenalty}]' \
        stage.critic_init=policy

Four models: the actor (trained, from model.path), the critic (trained; a value per token,
from the reward model's run or from model.path with a zero-initialised head), the reference
(frozen; model.path, stage.reference_path, or the actor with its LoRA adapters off) and the
reward model (frozen; stage.reward_model, normalised with its reward_stats.json, plus any
stage.reward_funcs). Each step, read top to bottom in `run`:

1. rollout: sample one answer per prompt (rlhf/models/rollout.py);
2. score: actor and reference log-probs, values, reward-model score of the answer cut after its
   stop token, penalties; per-token rewards = score on the last token - kl_coef x KL;
3. advantages: GAE over the answer tokens, whitened over the rollout;
4. update: ppo_epochs passes over shuffled minibatches of micro batches: clipped policy loss
   (+ entropy bonus, + KL term when not in the reward, + PPO-ptx's SFT loss on supervised
   conversations) for the actor, clipped value loss for the critic, each with its own
   optimizer; early stop on the approximate KL.

The math is in rlhf/algorithms/ppo.py (papers cited there). Ends with the held-out evaluation
of stage=eval, as dpo/grpo do.
"""

from __future__ import annotations

import json
import random
import shutil
import time
from pathlib import Path

from rlhf.config import CriticInit, PPOReference, PtxData
from rlhf.data.loading import load_conversations, load_prompts, require
from rlhf.distributed import is_main_process, rank, world_size
from rlhf.models.loading import resolve_model_path
from rlhf.rewards import build_reward_funcs
from rlhf.stages import preemption
from rlhf.stages.common import StageRun, max_steps
from rlhf.stages.eval import evaluate_trained_policy


def run(cfg) -> dict:
    stage_run = StageRun(cfg)
    out, stage = stage_run.out, cfg.stage
    rows = load_prompts(require(cfg.data.prompts_train, "data.prompts_train", stage.name),
                        cfg.debug.max_train_rows, bad_rows_dir=out)
    ptx_rows = ptx_conversations(cfg, out)  # PPO-ptx: SFT loss on these, or None
    resolve_model_path(cfg.model.path)  # a wrong path fails here, before the slow imports

    import torch
    from tqdm.auto import tqdm

    from rlhf.algorithms import ppo as algo
    from rlhf.models.generation import default_device, prompt_token_ids
    from rlhf.models.loading import load_tokenizer
    from rlhf.models.ptx import PtxBatches
    from rlhf.models.rollout import (HFRollout, ResponseBatch, answer_logits, safe_pad_id,
                                     stop_token_ids, token_logprobs)

    torch.manual_seed(stage.seed + rank())  # one sampling stream per rank
    random.seed(stage.seed + rank())
    device = default_device()
    world, steps = world_size(), max_steps(cfg)
    local_batch = stage.global_batch_size // world
    minibatch = local_batch // stage.num_minibatches  # per rank
    micro = stage.per_device_batch_size

    # ------------------------------------------------------------ the four models
    tokenizer = load_tokenizer(cfg.model)
    stops = stop_token_ids(tokenizer)
    pad = safe_pad_id(tokenizer, stops)
    actor, critic, reference = build_trained_models(cfg, steps, device, pad)
    reward_funcs, reward_weights = build_reward_funcs(stage)
    shard_reward_models(reward_funcs, cfg.distributed, device)
    kl_ctl = algo.AdaptiveKLController(stage.kl_coef, stage.kl_target, stage.kl_horizon) \
        if stage.adaptive_kl else algo.FixedKLController(stage.kl_coef)
    rollout = HFRollout(actor.generation_context(stage.gather_for_generation), pad, stops,
                        stage.max_new_tokens, stage.temperature, stage.top_p,
                        batch_size=local_batch, synced=world > 1 and not
                        stage.gather_for_generation)
    columns = [k for k in rows[0] if k != "prompt"]  # extra columns reach reward_funcs
    ptx = PtxBatches(tokenizer, ptx_rows, stage.ptx_max_length, stage.ptx_batch_size,
                     stage.seed, pad, device) if ptx_rows else None

    # the metrics of every step so far: a resumed run continues its log_history.json
    start, history = resume_checkpoint(cfg, out, actor, critic, kl_ctl)
    metrics = {}
    bar = tqdm(total=steps, initial=start, disable=not is_main_process(), desc="ppo")
    started = time.time()
    for step in range(start + 1, steps + 1):
        # -------------------------------------------------------- 1. rollout
        t0 = time.time()
        prompts = prompt_batch(rows, step, stage.global_batch_size, stage.seed)[rank()::world]
        prompt_ids = [prompt_token_ids(tokenizer, r["prompt"]) for r in prompts]
        generated = rollout.generate(prompt_ids, logprobs=stage.rollout_logprobs)
        response_ids = generated.tokens
        batch = ResponseBatch.build(prompt_ids, response_ids, pad, device)
        mask = batch.response_mask  # (B, T)
        stopped = torch.tensor([bool(r) and r[-1] in stops for r in response_ids],
                               dtype=torch.float, device=device)  # (B,)

        # -------------------------------------------------------- 2. score
        t1 = time.time()
        with torch.no_grad():
            old_logps, ref_logps, old_values = [], [], []
            if generated.logprobs is not None:  # stage.rollout_logprobs: from generation
                old_logps.append(torch.tensor(
                    [lp + [0.0] * (mask.shape[1] - len(lp)) for lp in generated.logprobs],
                    device=device))
            for i in range(0, local_batch, micro):
                part = batch.select(slice(i, i + micro))
                if generated.logprobs is None:
                    old_logps.append(token_logprobs(answer_logits(actor, part),
                                                    part.response_ids, stage.temperature))
                with reference_context(actor, reference):
                    ref_model = reference if reference is not None else actor
                    ref_logps.append(token_logprobs(answer_logits(ref_model, part),
                                                    part.response_ids, stage.temperature))
                old_values.append(part.answer_slice(critic(**part.model_inputs())))
            old_logps, ref_logps = torch.cat(old_logps), torch.cat(ref_logps)  # (B, T)
            old_values = torch.cat(old_values)  # (B, T)
            texts = [tokenizer.decode(r, skip_special_tokens=True).strip() for r in response_ids]
            scores = torch.zeros(local_batch, device=device)
            for func, weight in zip(reward_funcs, reward_weights):
                got = func(prompts=[r["prompt"] for r in prompts],
                           completions=[[{"role": "assistant", "content": t}] for t in texts],
                           **{c: [r[c] for r in prompts] for c in columns})
                scores += weight * torch.tensor(got, dtype=torch.float, device=device)
            scores = algo.sequence_scores(scores, stopped, stage.score_clip,
                                          stage.missing_eos_penalty)  # (B,)
            kl = algo.kl_estimate(old_logps, ref_logps, stage.kl_estimator, stage.kl_clamp)
            reward_kl_coef = kl_ctl.value if stage.kl_in_reward else 0.0
            rewards = algo.kl_penalised_rewards(scores, kl, reward_kl_coef, mask)  # (B, T)

            # ---------------------------------------------------- 3. advantages
            if stage.whiten_rewards:
                rewards = algo.masked_whiten(rewards, mask, shift_mean=False)
            advantages, returns = algo.gae(rewards, old_values, mask, stage.gamma, stage.lam)
            if stage.whiten_advantages:
                advantages = algo.masked_whiten(advantages, mask)

        # -------------------------------------------------------- 4. update
        t2 = time.time()
        train_actor = step > stage.critic_warmup_steps
        update_stats = []
        n_actor_passes = 0
        for _epoch in range(stage.ppo_epochs):
            order = torch.randperm(local_batch, device=device)
            stop_early = False
            for m in range(0, local_batch, minibatch):
                mb_stats = []
                for i in range(m, m + minibatch, micro):
                    idx = order[i:i + micro]
                    part, part_mask = batch.select(idx), mask[idx]
                    stats = {}
                    if train_actor:
                        logits = answer_logits(actor, part)  # (b, T, V)
                        logps = token_logprobs(logits, part.response_ids, stage.temperature)
                        pg_loss, stats = algo.policy_loss(logps, old_logps[idx],
                                                          advantages[idx], part_mask,
                                                          stage.cliprange)
                        # with no entropy bonus the entropy is only reported: no graph for it
                        with torch.set_grad_enabled(stage.entropy_coef != 0):
                            entropy = algo.masked_mean(
                                algo.entropy_from_logits(logits / stage.temperature), part_mask)
                        loss = pg_loss - stage.entropy_coef * entropy
                        if not stage.kl_in_reward:
                            kl_now = algo.kl_estimate(logps, ref_logps[idx], stage.kl_estimator,
                                                      stage.kl_clamp)
                            loss = loss + kl_ctl.value * algo.masked_mean(kl_now, part_mask)
                        if ptx is not None:  # PPO-ptx: the SFT loss on SFT conversations
                            sft = ptx.get(step, n_actor_passes, rank())
                            ptx_loss = -algo.masked_mean(token_logprobs(
                                answer_logits(actor, sft), sft.response_ids, 1.0),
                                sft.response_mask)
                            loss = loss + stage.ptx_coef * ptx_loss
                            stats["ptx_loss"] = ptx_loss.detach()
                        n_actor_passes += 1
                        actor.backward(loss)
                        stats.update(policy_loss=pg_loss.detach(), entropy=entropy.detach())
                    values = part.answer_slice(critic(**part.model_inputs()))
                    vf_loss, vf_stats = algo.value_loss(values, old_values[idx], returns[idx],
                                                        part_mask, stage.cliprange_value)
                    critic.backward(stage.vf_coef * vf_loss)
                    stats.update(vf_stats, value_loss=vf_loss.detach())
                    mb_stats.append({k: float(v) for k, v in stats.items()})
                if train_actor:
                    actor.step()
                critic.step()
                update_stats += mb_stats
                mb_kl = mean_over_ranks_dict(
                    {"k": sum(s.get("approx_kl", 0.0) for s in mb_stats) / len(mb_stats)})["k"]
                if stage.target_kl_early_stop is not None and train_actor and \
                        mb_kl > stage.target_kl_early_stop:
                    stop_early = True
                    break
            if stop_early:
                break

        # -------------------------------------------------------- metrics, KL controller
        t3 = time.time()
        seq_kl = algo.masked_sum(algo.kl_estimate(old_logps, ref_logps, "k1", stage.kl_clamp),
                                 mask, dim=1)  # (B,)
        local = {
            "ppo/reward_mean": algo.masked_sum(rewards, mask, dim=1).mean().item(),
            "ppo/score_mean": scores.mean().item(),
            "ppo/kl": seq_kl.mean().item(),
            "ppo/explained_variance": algo.explained_variance(old_values, returns, mask).item(),
            "ppo/response_length": mask.sum(1).mean().item(),
            "ppo/no_eos_share": (1 - stopped).mean().item(),
            "ppo/value_mean": algo.masked_mean(old_values, mask).item(),
            "ppo/update_passes": len(update_stats) * micro / local_batch,
            "time/rollout_s": t1 - t0, "time/score_s": t2 - t1, "time/update_s": t3 - t2}
        for key in ("policy_loss", "value_loss", "clipfrac", "value_clipfrac", "approx_kl",
                    "entropy", "ptx_loss"):
            values_ = [s[key] for s in update_stats if key in s]
            if values_ or key != "ptx_loss":  # ptx_loss: only with stage.ptx_coef
                local[f"ppo/{key}"] = sum(values_) / len(values_) if values_ else 0.0
        metrics = mean_over_ranks_dict(local)
        metrics["ppo/kl_coef"] = kl_ctl.value
        kl_ctl.update(metrics["ppo/kl"], stage.global_batch_size)
        metrics["train/step"] = step
        history.append(metrics)
        if step % stage.logging_steps == 0 or step == steps:
            stage_run.tracker.log(metrics, step=step)
        if stage.sample_every and step % stage.sample_every == 0:
            stage_run.tracker.log_table("ppo/samples", ["step", "prompt", "answer", "score"], [
                [step, p["prompt"][-1]["content"], t, float(s)]
                for p, t, s in list(zip(prompts, texts, scores.tolist()))[:8]])
        bar.set_postfix(reward=f"{metrics['ppo/reward_mean']:.3f}",
                        kl=f"{metrics['ppo/kl']:.3f}", score=f"{metrics['ppo/score_mean']:.3f}")
        bar.update(1)
        if stage.save_every_steps and step % stage.save_every_steps == 0 and step < steps:
            save_checkpoint(cfg, out, step, actor, critic, kl_ctl, history)
        # Slurm's pre-timeout signal or a preemption: this step's checkpoint, requeue, exit
        preemption.stop_here(
            lambda: save_checkpoint(cfg, out, step, actor, critic, kl_ctl, history))
    bar.close()

    train_runtime = time.time() - started
    save_checkpoint(cfg, out, steps, actor, critic, kl_ctl, history)
    save_policy(actor, tokenizer, cfg, out)
    if is_main_process():
        (out / "log_history.json").write_text(json.dumps(history, indent=1))
    final = {"train/steps": steps, "train_runtime_s": train_runtime,
             "train/prompts": len(rows),
             **{k: v for k, v in metrics.items() if k.startswith(("ppo/", "time/"))}}
    final.update(evaluate_trained_policy(
        cfg, stage_run, stage.heldout.reward_model or stage.reward_model,
        stage.heldout.reference_path or stage.reference_path or cfg.model.path))
    return stage_run.finish(final)


# ---------------------------------------------------------------- models


def build_trained_models(cfg, steps: int, device, pad: int):
    """(actor, critic, reference or None): the actor and critic as `Trainable`s, the
    reference frozen (None for reference=lora_base: the actor with adapters off)."""
    import torch

    from rlhf.models.loading import load_causal_lm, peft_config
    from rlhf.models.trainable import Trainable, inference_model
    from rlhf.models.value import ValueModel, load_sequence_classifier

    stage, model_cfg = cfg.stage, cfg.model
    updates = steps * stage.ppo_epochs * stage.num_minibatches
    warmup = int(stage.warmup_ratio * updates)
    common = dict(dist=cfg.distributed, weight_decay=stage.weight_decay,
                  max_grad_norm=stage.max_grad_norm, micro_batch=stage.per_device_batch_size,
                  minibatch=stage.global_batch_size // stage.num_minibatches,
                  scheduler=stage.lr_scheduler, warmup_steps=warmup, total_steps=updates)

    policy = load_causal_lm(model_cfg).to(device)
    if stage.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
    if model_cfg.lora.enabled:
        from peft import get_peft_model
        policy = get_peft_model(policy, peft_config(model_cfg))
    actor = Trainable(policy, lr=stage.learning_rate, **common)

    from_rm = stage.critic_init == CriticInit.reward_model
    classifier = load_sequence_classifier(stage.reward_model if from_rm else model_cfg.path,
                                          torch.float32, zero_head=not from_rm,
                                          pad_token_id=pad)
    if from_rm:
        rescale_value_head(classifier, stage)
    if model_cfg.lora.enabled:
        from peft import get_peft_model
        classifier = get_peft_model(classifier, peft_config(model_cfg, "SEQ_CLS"))
    critic = Trainable(ValueModel(classifier).to(device), lr=stage.critic_learning_rate,
                       **common)

    reference = None
    if stage.reference == PPOReference.model:
        reference = inference_model(
            load_causal_lm(model_cfg, stage.reference_path or model_cfg.path).to(device),
            cfg.distributed)
    return actor, critic, reference


def rescale_value_head(classifier, stage) -> None:
    """A critic from the reward model predicts raw reward-model scores; the rewards it must
    predict are normalised with reward_stats.json and weighted. Map its head onto that scale,
    (raw - mean) / std x weight, so that its first values are the normalised score of the
    answer so far rather than numbers `std` times too large (seen as an explained variance of
    -5 on the demo's first steps)."""
    import torch

    from rlhf.models.value import score_head
    from rlhf.rewards.reward_model import find_reward_stats

    stats = find_reward_stats(stage.reward_model) or {"mean": 0.0, "std": 1.0}
    scale = stage.reward_model_weight / max(stats["std"], 1e-6)
    head = score_head(classifier)
    with torch.no_grad():
        head.weight.mul_(scale)
        if getattr(head, "bias", None) is not None:
            head.bias.sub_(stats["mean"]).mul_(scale)


def reference_context(actor, reference):
    """No reference model: the actor with its LoRA adapters disabled is the reference."""
    import contextlib

    if reference is not None:
        return contextlib.nullcontext()
    module = actor.engine.module if actor.engine is not None else actor.module
    return module.disable_adapter()


def shard_reward_models(reward_funcs: list, dist, device) -> None:
    """Reward models (RewardModelReward) in eval mode without dropout; sharded under ZeRO-3."""
    from rlhf.models.trainable import inference_model
    from rlhf.rewards.reward_model import RewardModelReward

    for func in reward_funcs:
        if isinstance(func, RewardModelReward):
            func.model = inference_model(func.model.to(device), dist)


# ---------------------------------------------------------------- data


def ptx_conversations(cfg, out: Path) -> list[dict] | None:
    """PPO-ptx's conversations (None without stage.ptx_coef): data.sft_train's, or with
    stage.ptx_data=rankings each ranking's prompt and best answer from data.rankings_train
    (the preference data's own demonstrations)."""
    stage = cfg.stage
    if not stage.ptx_coef:
        return None
    if stage.ptx_data == PtxData.rankings:
        from rlhf.data.rankings import best_answer_conversations, load_rankings
        return best_answer_conversations(load_rankings(
            cfg.data.rankings_train, cfg.debug.max_train_rows, bad_rows_dir=out))
    return load_conversations(cfg.data.sft_train, cfg.debug.max_train_rows, bad_rows_dir=out)


def prompt_batch(rows: list[dict], step: int, batch_size: int, seed: int) -> list[dict]:
    """The prompts of a step (1-based): the rows in a seeded order, reshuffled each pass over
    them, so that step N draws the same prompts whether or not the run was resumed."""
    start = (step - 1) * batch_size
    picked = []
    while len(picked) < batch_size:
        epoch, offset = divmod(start + len(picked), len(rows))
        order = list(range(len(rows)))
        random.Random(seed * 1_000_003 + epoch).shuffle(order)
        take = order[offset:offset + batch_size - len(picked)]
        picked += [rows[i] for i in take]
    return picked


def mean_over_ranks_dict(values: dict) -> dict:
    """Each value's mean over ranks, in one all-reduce."""
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return dict(values)
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    keys = sorted(values)
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return {k: v / dist.get_world_size() for k, v in zip(keys, tensor.tolist())}


# ---------------------------------------------------------------- saving and resuming


def checkpoint_dirs(out: Path) -> list[Path]:
    """Finished checkpoints, oldest first."""
    root = out / "trainer"
    if not root.is_dir():
        return []
    found = [p for p in root.glob("checkpoint-*") if p.name.split("-")[1].isdigit()
             and (p / "ppo_state.json").exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(cfg, out: Path, step: int, actor, critic, kl_ctl, history: list) -> None:
    """<run dir>/trainer/checkpoint-<step>: actor and critic with their optimizers and
    schedulers (DeepSpeed shards under ZeRO), the KL controller, every rank's RNG state, the
    metrics of the steps so far.
    `ppo_state.json` is written last: a checkpoint without it is unfinished and ignored."""
    import torch
    import torch.distributed as dist

    ckpt = out / "trainer" / f"checkpoint-{step}"
    if is_main_process() and ckpt.exists():
        shutil.rmtree(ckpt)
    if dist.is_initialized():
        dist.barrier()
    actor.save(ckpt / "actor", is_main_process())
    critic.save(ckpt / "critic", is_main_process())
    ckpt.mkdir(parents=True, exist_ok=True)
    torch.save({"torch": torch.get_rng_state(), "python": random.getstate()},
               ckpt / f"rng_rank{rank()}.pt")
    if dist.is_initialized():
        dist.barrier()
    if is_main_process():
        (ckpt / "ppo_state.json").write_text(json.dumps(
            {"step": step, "kl_controller": kl_ctl.state_dict(), "world_size": world_size(),
             "history": history}))
        for old in checkpoint_dirs(out)[:-max(1, cfg.stage.keep_checkpoints)]:
            shutil.rmtree(old)
    if dist.is_initialized():
        dist.barrier()


def resume_checkpoint(cfg, out: Path, actor, critic, kl_ctl) -> tuple[int, list]:
    """With stage.resume=true, load the newest checkpoint; return its step and the metrics of
    the steps up to it ((0, []): none)."""
    import torch

    if not cfg.stage.resume:
        return 0, []
    found = checkpoint_dirs(out)
    if not found:
        if is_main_process():
            print(f"rlhf: stage.resume=true but {out / 'trainer'} holds no checkpoint; "
                  "starting fresh")
        return 0, []
    ckpt = found[-1]
    state = json.loads((ckpt / "ppo_state.json").read_text())
    actor.load(ckpt / "actor")
    critic.load(ckpt / "critic")
    kl_ctl.load_state_dict(state["kl_controller"])
    rng_file = ckpt / f"rng_rank{rank()}.pt"
    if rng_file.exists():
        rng = torch.load(rng_file, weights_only=False)
        torch.set_rng_state(rng["torch"])
        random.setstate(rng["python"])
    if is_main_process():
        print(f"rlhf: resuming stage=ppo from {ckpt} (step {state['step']}, "
              f"kl_coef {kl_ctl.value:.6g})")
    return state["step"], state.get("history", [])


def save_policy(actor, tokenizer, cfg, out: Path) -> Path:
    """<run dir>/model: the actor as a Hugging Face checkpoint (LoRA merged, the adapter in
    model/adapter), written aside and renamed. Every rank calls it: under ZeRO-3 the weights
    are gathered first (a collective)."""
    import contextlib

    from rlhf.models.trainable import is_zero3
    from rlhf.stages.common import publish_model_dir

    tmp = out / ".tmp-model"
    module = actor.engine.module if actor.engine is not None else actor.module
    gather = contextlib.nullcontext()
    if is_zero3(cfg.distributed):
        import deepspeed
        gather = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gather:
        if is_main_process():
            if tmp.exists():
                shutil.rmtree(tmp)
            if hasattr(module, "merge_and_unload"):
                module.save_pretrained(tmp / "adapter")
                module = module.merge_and_unload()
            state = {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}
            module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
    return publish_model_dir(tmp, tokenizer, out)

