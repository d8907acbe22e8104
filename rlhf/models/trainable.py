"""A model trained by our own loop (PPO's actor and critic), the same way under every
`distributed=` option, and frozen models sharded for inference.

    actor = Trainable(model, cfg.distributed, lr=1e-6, micro_batch=8, minibatch=32, ...)
    loss = ...; actor.backward(loss)      # once per micro batch
    actor.step()                          # once per minibatch: clip, optimizer, scheduler

- `distributed=single`: the module, torch AdamW, `backward(loss / accumulation)`.
- `distributed=ddp`: the module in DistributedDataParallel (gradients averaged over ranks).
- `distributed=zero*`: `deepspeed.initialize` with the DeepSpeed config of
  rlhf/distributed/deepspeed_config.py, whose batch sizes are one minibatch (micro batch x
  accumulation x ranks), so `engine.step()` steps once per minibatch; DeepSpeed clips and
  scales the loss by the accumulation itself.
Frozen models (reference, reward model) run as they are, or, when the trained ones are under
ZeRO-3, as a DeepSpeed engine without optimizer: sharded like the actor.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace

import torch

from rlhf.config import Backend
from rlhf.distributed import world_size
from rlhf.distributed.deepspeed_config import deepspeed_config


def uses_deepspeed(dist) -> bool:
    return dist.backend == Backend.deepspeed


def is_zero3(dist) -> bool:
    return uses_deepspeed(dist) and dist.zero.stage == 3


def disable_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """Dropout off for good: eval mode and p = 0 on every Dropout (a wrapper calling .train()
    must not bring it back). With dropout, the log-probs of the update would not be those of
    the rollout even before the first step (Huang et al. 2024, Ziegler et al. 2019)."""
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for key in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "attn_pdrop",
                "embd_pdrop"):
        if config is not None and isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    return model


class Trainable:
    def __init__(self, module: torch.nn.Module, dist, lr: float, weight_decay: float,
                 max_grad_norm: float, micro_batch: int, minibatch: int, scheduler: str,
                 warmup_steps: int, total_steps: int):
        from transformers import get_scheduler

        self.module, self.dist = module, dist
        self.max_grad_norm = max_grad_norm
        self.accumulation = minibatch // (micro_batch * world_size())
        self.params = params = [p for p in module.parameters() if p.requires_grad]
        on_gpu = torch.cuda.is_available()
        if uses_deepspeed(dist):
            import deepspeed

            shim = SimpleNamespace(global_batch_size=minibatch, per_device_batch_size=micro_batch,
                                   max_grad_norm=max_grad_norm, learning_rate=lr,
                                   weight_decay=weight_decay)
            config = deepspeed_config(dist, shim, world_size(), on_gpu)
            # ZeRO-Offload brings its own CPU Adam (the config's "optimizer" block)
            optimizer = None if "optimizer" in config else \
                torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
            schedule = (lambda opt: get_scheduler(scheduler, opt, warmup_steps, total_steps))
            self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=module, optimizer=optimizer, model_parameters=params, config=config,
                lr_scheduler=schedule)
            self.wrapped = self.engine
        else:
            self.engine = None
            # fused: one kernel for the whole update (CPU and CUDA); torch's default on CPU
            # is a loop over the tensors, 4.6x slower on the demo model (2.4 vs 0.5 ms a step)
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay,
                                               fused=True)
            self.scheduler = get_scheduler(scheduler, self.optimizer, warmup_steps, total_steps)
            self.wrapped = module
            if dist.backend == Backend.ddp and world_size() > 1:
                from torch.nn.parallel import DistributedDataParallel
                self.wrapped = DistributedDataParallel(module)
        disable_dropout(module)

    def __call__(self, *args, **kwargs):
        return self.wrapped(*args, **kwargs)

    def backward(self, loss: torch.Tensor) -> None:
        """One micro batch's loss (a mean over its tokens)."""
        if self.engine is not None:
            self.engine.backward(loss)  # DeepSpeed divides by the accumulation steps
        else:
            (loss / self.accumulation).backward()

    def step(self) -> None:
        """End of a minibatch: clip (unless max_grad_norm is 0), optimizer step, scheduler step,
        zero the gradients."""
        if self.engine is not None:
            self.engine.step()  # a boundary: every minibatch has `accumulation` micro batches
            return
        if self.max_grad_norm > 0:  # 0: no clipping, as for transformers' Trainer
            torch.nn.utils.clip_grad_norm_(self.params, self.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def zero_grad(self) -> None:
        """Drop gradients of an unfinished minibatch (an early stop leaves none)."""
        if self.engine is None:
            self.optimizer.zero_grad(set_to_none=True)

    # ------------------------------------------------------------ checkpoints
    def save(self, directory: Path, is_main: bool) -> None:
        """Weights, optimizer and scheduler. DeepSpeed: every rank writes its shards (a
        collective); otherwise rank 0 writes one file."""
        if self.engine is not None:
            self.engine.save_checkpoint(str(directory), tag="state")
        elif is_main:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save({"model": self.module.state_dict(),
                        "optimizer": self.optimizer.state_dict(),
                        "scheduler": self.scheduler.state_dict()}, directory / "state.pt")

    def load(self, directory: Path) -> None:
        if self.engine is not None:
            self.engine.load_checkpoint(str(directory), tag="state")
            return
        state = torch.load(directory / "state.pt", map_location="cpu", weights_only=False)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])

    # ------------------------------------------------------------ generation
    def generation_context(self, gather: bool):
        """A context factory yielding the module to generate with. Under ZeRO-3 with
        `gather`, the weights are gathered once for the whole rollout and DeepSpeed's per-module
        hooks are off meanwhile; without it, every forward pass of every new token gathers
        each layer again (a collective per layer per token)."""
        if self.engine is not None and is_zero3(self.dist) and gather:
            from rlhf.compat import zero3_gathered_for_generation
            return lambda: zero3_gathered_for_generation(self.engine)
        module = self.engine.module if self.engine is not None else self.module
        return lambda: contextlib.nullcontext(module)


def inference_model(module: torch.nn.Module, dist) -> torch.nn.Module:
    """A frozen model: dropout off, no gradients; under ZeRO-3 sharded over the ranks by a
    DeepSpeed engine without optimizer (its forward passes are then collectives: every rank
    runs the same number of them). Returns the module to call."""
    disable_dropout(module)
    module.requires_grad_(False)
    if not is_zero3(dist):
        return module
    import deepspeed

    config = deepspeed_config(dist, SimpleNamespace(
        global_batch_size=world_size(), per_device_batch_size=1, max_grad_norm=1.0,
        learning_rate=0.0, weight_decay=0.0), world_size(), torch.cuda.is_available())
    config.pop("optimizer", None)
    config["zero_optimization"].pop("offload_optimizer", None)
    engine, *_ = deepspeed.initialize(model=module, config=config)
    return engine.module
