"""Per-rank memory: bytes of parameters, gradients and optimizer state that a rank holds, and
its peak resident memory. This is how ZeRO's promise (stage 3: about 1/N of the model state
per rank) is checked on a real run; the figures go to metrics.json as `memory/*`."""

from __future__ import annotations

import resource

import torch
from transformers import TrainerCallback

from rlhf.compat import local_parameter, optimizer_chain, zero_fp32_partitions


def _storage_bytes(tensors) -> int:
    """Bytes of the distinct storages behind `tensors` (views of one buffer count once)."""
    seen = {}
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type != "meta" and t.numel():
            storage = t.untyped_storage()
            seen[(t.device, storage.data_ptr())] = storage.nbytes()
    return sum(seen.values())


def state_bytes(model, optimizer) -> dict:
    params = list(model.parameters())
    # under ZeRO-3 a parameter's own data is empty between uses; count this rank's shard
    local = [local_parameter(p) for p in params]
    grads = [p.grad for p in params]
    opt_tensors = []
    for opt in optimizer_chain(optimizer):  # accelerate's wrapper, DeepSpeed's, torch's
        for state in getattr(opt, "state", {}).values():
            opt_tensors += [v for v in state.values() if isinstance(v, torch.Tensor)]
        # ZeRO keeps fp32 master partitions (and their gradients) inside its optimizer
        for flat in zero_fp32_partitions(opt):
            opt_tensors.append(flat)
            grads.append(flat.grad)
    param_bytes = _storage_bytes(local)
    return {"param_bytes": param_bytes, "grad_bytes": _storage_bytes(grads),
            "optimizer_bytes": _storage_bytes(opt_tensors)}


class StateMemoryCallback(TrainerCallback):
    """Measures once, right after the first optimizer step (state exists, grads not freed)."""

    def __init__(self):
        self.report: dict | None = None

    def on_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        if self.report is None and model is not None:
            self.report = state_bytes(model, optimizer)


def memory_metrics(callback: StateMemoryCallback) -> dict:
    """Every rank's figures, gathered to all ranks: `memory/rank0_param_bytes`, ..."""
    import torch.distributed as dist

    mine = dict(callback.report or {})
    # ru_maxrss is in KiB on Linux
    mine["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    reports = [mine]
    if dist.is_initialized():
        reports = [None] * dist.get_world_size()
        dist.all_gather_object(reports, mine)
    return {f"memory/rank{r}_{key}": value
            for r, report in enumerate(reports) for key, value in report.items()}
