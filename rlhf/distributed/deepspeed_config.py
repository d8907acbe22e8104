"""The DeepSpeed config of a run, derived from `distributed.*` and the stage's batch sizes.

Batch sizes are given once, in the stage (global batch and per-device micro batch); the
accumulation steps follow from the number of ranks, so DeepSpeed's
`train_batch_size == micro * accumulation * world` always holds and no "auto" is left for
another library to guess.
"""

from __future__ import annotations

from rlhf.config import Backend, Precision


def deepspeed_config(dist, stage, world: int, on_gpu: bool) -> dict | None:
    """A DeepSpeed config dict for `distributed.backend=deepspeed`, else None."""
    if dist.backend != Backend.deepspeed:
        return None
    zero = dist.zero
    zero_cfg = {"stage": zero.stage, "overlap_comm": zero.overlap_comm,
                "contiguous_gradients": zero.contiguous_gradients,
                "reduce_bucket_size": zero.reduce_bucket_size}
    if zero.stage < 3:
        zero_cfg["allgather_bucket_size"] = zero.allgather_bucket_size
    else:
        zero_cfg.update(
            stage3_prefetch_bucket_size=zero.stage3_prefetch_bucket_size,
            stage3_param_persistence_threshold=zero.stage3_param_persistence_threshold,
            stage3_max_live_parameters=zero.stage3_max_live_parameters,
            stage3_gather_16bit_weights_on_model_save=(
                zero.stage3_gather_16bit_weights_on_model_save))
    if zero.offload_optimizer:
        zero_cfg["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if zero.offload_params:
        zero_cfg["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    config = {
        "train_batch_size": stage.global_batch_size,
        "train_micro_batch_size_per_gpu": stage.per_device_batch_size,
        "gradient_accumulation_steps": stage.global_batch_size
        // (stage.per_device_batch_size * world),
        "gradient_clipping": stage.max_grad_norm,
        "zero_optimization": zero_cfg,
        "bf16": {"enabled": dist.precision == Precision.bf16},
        "fp16": {"enabled": dist.precision == Precision.fp16, "loss_scale": 0,
                 "initial_scale_power": 16},
        "steps_per_print": 1_000_000_000,  # progress is ours to print, not DeepSpeed's
        "wall_clock_breakdown": False,
    }
    if zero.offload_optimizer:
        # ZeRO-Offload steps the optimizer on the CPU with DeepSpeed's own CPU Adam, so the
        # optimizer is DeepSpeed's (same hyperparameters as the trainer's AdamW)
        config["optimizer"] = {"type": "AdamW", "params": {
            "lr": stage.learning_rate, "betas": [0.9, 0.999], "eps": 1e-8,
            "weight_decay": stage.weight_decay}}
    return config
