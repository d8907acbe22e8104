"""Every place where we reach into a library's internals, in one small module.

Each function says which library version it was written against (the versions installed
when it was last checked: transformers 5.23, TRL 1.16, DeepSpeed 0.19.8, accelerate 1.15)
and why no public API does the job. When a library is upgraded, this module is the list of
things to re-check; the rest of the code uses only public APIs. Imports are lazy: importing
this module costs nothing, so config composition stays fast.
"""

from __future__ import annotations

from contextlib import contextmanager

# ---------------------------------------------------------------- transformers


def prepare_inputs(trainer, inputs: dict) -> dict:
    """Move a batch to the trainer's device (and DeepSpeed's float dtype), exactly as the
    trainer does for its own training batches.

    transformers 5.23: `Trainer._prepare_inputs` is private and has no public equivalent. A
    `prediction_step` override (the reward model's held-out scoring of ranking batches)
    receives the batch unprepared and must call it, as transformers' own
    `Trainer.prediction_step` does."""
    return trainer._prepare_inputs(inputs)


@contextmanager
def collator_swapped(trainer, collator):
    """Run `trainer.predict`/`evaluate` with another data collator, then put it back.

    transformers 5.23: `predict` takes no collator argument; its dataloader
    (`Trainer._get_dataloader`) reads the public attribute `trainer.data_collator` at call
    time, so swapping that attribute is what selects the collator. Used to score ranking
    batches (K responses per prompt) with TRL's pairwise RewardTrainer, whose own collator
    only knows chosen/rejected pairs."""
    saved = trainer.data_collator
    trainer.data_collator = collator
    try:
        yield trainer
    finally:
        trainer.data_collator = saved


def forget_deepspeed_zero3_init() -> None:
    """Stop `from_pretrained` from building ZeRO-3 partitioned models in this process.

    transformers 5.23: TrainingArguments with a DeepSpeed config registers it in a
    module-level weak reference (transformers.integrations.deepspeed), and while it lives
    every `from_pretrained` runs under `deepspeed.zero.Init`, a collective. After training,
    rank 0 alone loads models for the held-out evaluation; the other ranks never join, so
    it would hang. `unset_hf_deepspeed_config` (documented only as a unit-test helper)
    clears that reference."""
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()


# ---------------------------------------------------------------- Hydra
def hydra_args_parser():
    """Hydra 1.3's own command-line parser (hydra/_internal/utils.py; `hydra.main` parses argv
    with it), so that rlhf.cli's check before Hydra runs reads flags as Hydra will."""
    from hydra._internal.utils import get_args_parser

    return get_args_parser()


# ---------------------------------------------------------------- TRL


def cpo_classes():
    """(CPOConfig, CPOTrainer) for SimPO.

    TRL 1.16: CPO and ORPO moved from `trl` to `trl.experimental` (no stability promise);
    this is the one place that names the module."""
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    return CPOConfig, CPOTrainer


def orpo_classes():
    """(ORPOConfig, ORPOTrainer). TRL 1.16: in `trl.experimental`, like CPO."""
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    return ORPOConfig, ORPOTrainer


def score_only_labelled_tokens_on_cpu() -> None:
    """Let TRL's fused LM head project only the positions that carry a label on CPU too.

    TRL 1.16: the SFT, DPO, GRPO and RLOO trainers call the model with `fused_lm_head=True`
    (trl/trainer/utils.py, `add_fused_lm_head`). On a device with Triton it scores only the
    positions whose label is not -100; elsewhere it scores every position and zeroes the
    unlabelled ones afterwards, so that a compiled Neuron kernel keeps one tile shape. CPU
    compiles nothing, so that only costs time: on the demo SFT (assistant-only loss, about
    a quarter of the tokens labelled) the head was a quarter of the step, and a step took
    26% less with this (DPO 23% less), with the same loss to 6 digits (docs/notes.md). The
    choice is the module-level name `_use_triton` in `trl.trainer.utils`, which only this
    decision reads there; the kernels module keeps its own, so CPU still runs TRL's torch
    tiles. Idempotent; a TRL without that name is left alone."""
    import trl.trainer.utils as trl_utils

    decide = getattr(trl_utils, "_use_triton", None)
    if decide is None or getattr(decide, "rlhf_compact_on_cpu", False):
        return

    def compact(device) -> bool:
        return device.type == "cpu" or decide(device)

    compact.rlhf_compact_on_cpu = True
    trl_utils._use_triton = compact


def keep_fused_head_entropy(model) -> list:
    """Collect the per-token entropy that TRL's fused LM head computes in each training
    forward, with its gradient, and the label mask it belongs to; returns the list it fills.

    TRL 1.16: `DPOTrainer._compute_loss` calls the policy with `fused_lm_head=True` and
    `labels=`, and the head (`add_fused_lm_head` in trl/trainer/utils.py) returns per-token
    `entropy`, differentiable through `_ChunkedLogProbFunction`, for positions 1..T (zero
    where the label is -100). The trainer only logs it (detached) and returns the loss alone,
    so no public hook sees it. Wrapping the model's own `forward` (which TRL patched, and
    DeepSpeed's and DDP's wrappers call) keeps what the loss needs without a second forward
    pass. Forwards without gradients (reference log-probs, evaluation) are left out."""
    import torch

    captured: list = []
    forward = model.forward

    def forward_keeping_entropy(*args, **kwargs):
        out = forward(*args, **kwargs)
        if kwargs.get("fused_lm_head") and torch.is_grad_enabled():
            captured.append((out.entropy, kwargs["labels"][:, 1:] != -100))
        return out

    model.forward = forward_keeping_entropy
    return captured


# ---------------------------------------------------------------- DeepSpeed


def local_parameter(param):
    """The part of a parameter that this rank stores.

    DeepSpeed 0.19.8, ZeRO-3: between uses a parameter's own data is an empty placeholder
    and this rank's shard is the attribute `ds_tensor` (set by
    deepspeed.runtime.zero.partition_parameters); there is no public accessor. Without
    ZeRO-3 the parameter itself."""
    return getattr(param, "ds_tensor", param)


def full_numel(param) -> int:
    """Elements of the whole parameter, also when ZeRO-3 holds only a shard here.

    DeepSpeed 0.19.8, ZeRO-3: the full size is the attribute `ds_numel`; `numel()` of the
    partitioned parameter is 0."""
    return getattr(param, "ds_numel", param.numel())


def optimizer_chain(optimizer) -> list:
    """The optimizer and every optimizer it wraps, outermost first.

    accelerate 1.15 wraps the optimizer in AcceleratedOptimizer, DeepSpeed 0.19.8's ZeRO
    optimizers wrap the torch optimizer; both keep the inner one in the attribute
    `optimizer` (not a documented API of either)."""
    chain = []
    while optimizer is not None and optimizer not in chain:
        chain.append(optimizer)
        optimizer = getattr(optimizer, "optimizer", None)
    return chain


# the fp32 master partitions of DeepSpeed 0.19.8's ZeRO optimizers: stage 1/2
# (runtime/zero/stage_1_and_2.py) and stage 3 (runtime/zero/stage3.py)
_ZERO_FP32_PARTITIONS = ("single_partition_of_fp32_groups", "fp32_partitioned_groups_flat")


def zero_fp32_partitions(optimizer) -> list:
    """The fp32 master weights that a DeepSpeed ZeRO optimizer keeps for this rank (their
    `.grad` are the fp32 gradient partitions); [] for any other optimizer.

    DeepSpeed 0.19.8: private attributes of DeepSpeedZeroOptimizer (ZeRO-1/2) and
    DeepSpeedZeroOptimizer_Stage3; memory accounting needs them and no API reports them."""
    tensors = []
    for name in _ZERO_FP32_PARTITIONS:
        tensors += list(getattr(optimizer, name, None) or [])
    return tensors


@contextmanager
def zero3_gathered_for_generation(engine):
    """Yield a ZeRO-3 engine's module with every weight gathered once, for a whole rollout.

    DeepSpeed 0.19.8: `deepspeed.runtime.zero.unwrap_model_for_generation` (not in DeepSpeed's
    documented API) gathers the parameters with `GatheredParameters` and removes the engine's
    per-module forward hooks, which would otherwise release (re-partition) each layer after
    its forward pass and all-gather it again for the next token; on exit it re-registers the
    hooks and partitions the weights again. Used by PPO's rollout (stage.gather_for_generation)."""
    from deepspeed.runtime.zero import unwrap_model_for_generation

    with unwrap_model_for_generation(engine):
        yield engine.module
