"""Preemption and time limits on Slurm: checkpoint at the end of a step, requeue, exit; resume.

Inside a Slurm job (`SLURM_JOB_ID` set) every rank catches

- **SIGUSR2**, the pre-timeout signal (`--signal=USR2@<s>`: submitit's launcher sends it to the
  tasks, slurm/stage.sbatch forwards `B:USR2` from the batch shell) or a preemption notice
  (`scancel --signal=USR2 <job>`): the stage saves a complete checkpoint at the end of the
  current optimizer step, requeues the job (`scontrol requeue`; under submitit, submitit's own
  handler, which also counts timeouts against `max_num_timeout`) and exits;
- **SIGTERM**, which Slurm sends when it requeues (`scontrol requeue`, preemption in REQUEUE
  mode), cancels or times out a job, `KillWait` seconds (30 on the local cluster) before
  SIGKILL: the stage saves a complete checkpoint at the end of the step and exits. Slurm has
  already decided whether the job comes back, so it does not requeue again (a `scancel`ed job
  stays cancelled).

The signal handler only sets a flag; the ranks agree on it at the end of each step (an
all-reduce of one number), so that all of them save the same step, a collective under ZeRO.

Checkpoints are complete or ignored: `<run dir>/trainer/checkpoint-N` counts only once its
`complete.json` exists, written by rank 0 after every rank has finished writing (a barrier).
Older checkpoints are removed only after that (the Trainer's own rotation is off), so a job
killed hard while saving resumes from the previous complete checkpoint, and the unfinished
one is deleted before training continues.

`stage.resume=auto` (the default) resumes from the newest complete checkpoint inside a Slurm
job and starts fresh elsewhere; `true` always resumes when there is one, `false` never.

Hooks:
- TRL stages: `rlhf.stages.common.train()` adds `PreemptionCallback` and resumes;
- a stage with its own loop (ppo) calls `stop_here(save)` at the end of every step, with a
  function that writes its complete checkpoint of that step (every rank calls both).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from rlhf.distributed import is_main_process, world_size

COMPLETE = "complete.json"
CATCH = (signal.SIGUSR2, signal.SIGTERM)
# the exit code of a stage that saved and was requeued (Slurm runs it again)
EXIT_REQUEUED = 3

_caught: list[int] = []  # signals received since install()
_previous: dict[int, object] = {}  # the handlers ours replaced (submitit's)


# ---------------------------------------------------------------- where we run
def on_slurm(environ=os.environ) -> bool:
    """Inside a Slurm job (sbatch, srun, a submitit task)."""
    return "SLURM_JOB_ID" in environ


def slurm_job_id(environ=os.environ) -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for a job array's task."""
    if "SLURM_ARRAY_JOB_ID" in environ and "SLURM_ARRAY_TASK_ID" in environ:
        return f"{environ['SLURM_ARRAY_JOB_ID']}_{environ['SLURM_ARRAY_TASK_ID']}"
    return environ.get("SLURM_JOB_ID")


def resume_wanted(cfg) -> bool:
    """stage.resume: true, false, or auto (resume inside a Slurm job)."""
    value = cfg.stage.get("resume", False)
    if isinstance(value, str) and value.lower() == "auto":
        return on_slurm()
    return bool(value) if not isinstance(value, str) else value.lower() == "true"


def resolve_resume(cfg) -> None:
    """Replace stage.resume=auto by what it means here (true inside a Slurm job), so that code
    testing `cfg.stage.resume` (the ppo loop) sees a boolean."""
    if "resume" in cfg.stage and isinstance(cfg.stage.resume, str):
        cfg.stage.resume = resume_wanted(cfg)


# ---------------------------------------------------------------- signals
_exiting: list[bool] = []


def _handler(signum, frame) -> None:
    if _exiting:
        return  # the checkpoint is saved; Slurm's SIGTERM after our own requeue
    if signum not in _caught:
        _caught.append(signum)
    print(f"rlhf: caught {signal.Signals(signum).name}: saving a checkpoint at the end of "
          "this step", file=sys.stderr, flush=True)


def install() -> bool:
    """Catch USR2 and TERM inside a Slurm job (once per process); elsewhere leave them alone.
    Returns whether the handlers are in place."""
    if not on_slurm():
        return False
    for signum in CATCH:
        current = signal.getsignal(signum)
        if current is not _handler:
            _previous[signum] = current
            signal.signal(signum, _handler)
    return True


def installed() -> bool:
    return signal.getsignal(signal.SIGUSR2) is _handler


def caught() -> list[int]:
    return list(_caught)


def stop_requested() -> bool:
    """Whether any rank caught a signal: every rank must call this at the same point of the
    same step (an all-reduce when there are several ranks). False outside Slurm, at no cost."""
    if not installed():
        return False
    local = 1.0 if _caught else 0.0
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return bool(local)
    import torch

    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([local], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if flag.item() and not _caught:
        _caught.append(signal.SIGUSR2)  # another rank was told; act as it does
    return bool(flag.item())


def requeue_and_exit() -> None:
    """After the checkpoint is complete: requeue the job (rank 0, for USR2) and exit every rank.

    Under submitit, its own USR2 handler requeues (it also re-pickles the submitted call and
    counts timeouts against max_num_timeout) and exits; elsewhere `scontrol requeue`."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    wants_requeue = signal.SIGUSR2 in _caught
    _exiting.append(True)
    _close_wandb()  # before the requeue: Slurm's SIGTERM also reaches W&B's service process
    if is_main_process() and wants_requeue:
        previous = _previous.get(signal.SIGUSR2)
        submitit = callable(previous) and "submitit" in getattr(previous, "__module__", "")
        sys.stdout.flush()
        if submitit:
            print("rlhf: checkpoint saved; requeueing through submitit", file=sys.stderr,
                  flush=True)
            previous(signal.SIGUSR2, None)  # requeues and exits (SystemExit)
        job = slurm_job_id()
        print(f"rlhf: checkpoint saved; requeueing Slurm job {job}", file=sys.stderr, flush=True)
        done = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
        if done.returncode:
            print(f"rlhf: scontrol requeue {job} failed: {done.stderr.strip()}",
                  file=sys.stderr, flush=True)
    elif is_main_process():
        print("rlhf: checkpoint saved after SIGTERM; exiting (Slurm requeues or ends the job)",
              file=sys.stderr, flush=True)
    sys.exit(EXIT_REQUEUED)


def _close_wandb() -> None:
    """Finish the open W&B runs and stop W&B's service process, so that the run's file is
    complete before Slurm's SIGTERM (our requeue) ends that process; the requeued job continues
    the same run (its id is in <run dir>/wandb_run_id). Runs made with reinit="create_new" are
    not `wandb.run`: `wandb.teardown` finishes them all."""
    wandb = sys.modules.get("wandb")
    if wandb is None:
        return
    try:
        if getattr(wandb, "run", None) is not None:
            wandb.run.mark_preempting()
        wandb.teardown(EXIT_REQUEUED)
    except Exception as err:  # noqa: BLE001  (the checkpoint is what matters)
        print(f"rlhf: closing W&B failed: {err}", file=sys.stderr)


def stop_here(save) -> None:
    """For a stage with its own loop (ppo), at the end of every step, on every rank: when a
    signal was caught, call `save()` (which writes this step's complete checkpoint; every rank
    calls it), then requeue and exit. Does nothing otherwise."""
    if stop_requested():
        save()
        requeue_and_exit()


# ---------------------------------------------------------------- complete checkpoints
def checkpoint_step(path: Path) -> int | None:
    name = Path(path).name
    if name.startswith("checkpoint-") and name[len("checkpoint-"):].isdigit():
        return int(name[len("checkpoint-"):])
    return None


def checkpoints(root: Path) -> list[Path]:
    """Every checkpoint-N under root, oldest first (complete or not)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and checkpoint_step(p) is not None]
    return sorted(found, key=checkpoint_step)


def is_complete(path: Path) -> bool:
    return (Path(path) / COMPLETE).exists()


def last_complete_checkpoint(root: Path) -> Path | None:
    done = [p for p in checkpoints(root) if is_complete(p)]
    return done[-1] if done else None


def mark_complete(path: Path, step: int, keep: int) -> None:
    """Every rank, after the checkpoint at `path` is written: rank 0 marks it complete (after a
    barrier, so every rank's shards are on disk), then removes all but the newest `keep`
    complete checkpoints and any unfinished older one."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()
    if is_main_process() and Path(path).is_dir():
        tmp = Path(path) / (COMPLETE + ".tmp")
        tmp.write_text(json.dumps({"step": step, "world_size": world_size()}))
        os.replace(tmp, Path(path) / COMPLETE)
        complete = [p for p in checkpoints(Path(path).parent) if is_complete(p)]
        for old in complete[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
        for p in checkpoints(Path(path).parent):
            if not is_complete(p) and checkpoint_step(p) < step:
                shutil.rmtree(p, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def drop_unfinished(root: Path) -> None:
    """Before resuming: remove checkpoints without complete.json (a job killed while saving),
    so that the Trainer neither resumes from nor writes into half of one. Every rank calls it."""
    import torch.distributed as dist

    if is_main_process():
        for p in checkpoints(root):
            if not is_complete(p):
                print(f"rlhf: removing the unfinished checkpoint {p}", file=sys.stderr)
                shutil.rmtree(p, ignore_errors=True)
    if dist.is_initialized():
        dist.barrier()


def resume_from(cfg, root: Path) -> Path | None:
    """The checkpoint to resume from (None: start fresh), after dropping unfinished ones."""
    if not resume_wanted(cfg):
        return None
    drop_unfinished(root)
    last = last_complete_checkpoint(root)
    if is_main_process():
        if last is None:
            print(f"rlhf: stage.resume={cfg.stage.resume}: no complete checkpoint in {root}; "
                  "starting fresh")
        else:
            print(f"rlhf: resuming from {last}")
    return last


def trainer_callback(keep: int):
    """A transformers TrainerCallback: marks each saved checkpoint complete (and rotates), and
    on a caught signal saves at the end of the step, then requeues and exits."""
    from transformers import TrainerCallback

    class PreemptionCallback(TrainerCallback):
        def __init__(self):
            self.stopping = False

        def on_step_end(self, args, state, control, **kwargs):
            if stop_requested():
                self.stopping = True
                control.should_save = True
                control.should_training_stop = True
            return control

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            mark_complete(path, state.global_step, keep)
            if self.stopping:
                requeue_and_exit()
            return control

    return PreemptionCallback()
