"""Forwards the logs of transformers/TRL trainers to our tracker under the shared names, with
the wall time of the optimizer steps since the previous log."""

from __future__ import annotations

import statistics
import time

from transformers import TrainerCallback

from rlhf.tracking import hf_log_to_metrics


class TrackerCallback(TrainerCallback):
    def __init__(self, tracker):
        self.tracker = tracker
        # seconds between the ends of consecutive optimizer steps (data loading, forward,
        # backward, optimizer; evaluation and saving when they fall in between), every step
        self.step_seconds: list[float] = []
        self._last_end: float | None = None
        self._logged = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self._last_end = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        now = time.perf_counter()
        if self._last_end is not None:
            self.step_seconds.append(now - self._last_end)
        self._last_end = now

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            metrics = hf_log_to_metrics(logs)
            recent = self.step_seconds[self._logged:]
            if recent and "train/loss" in metrics:
                metrics["time/step_s"] = statistics.median(recent)
                self._logged = len(self.step_seconds)
            self.tracker.log(metrics, step=state.global_step)

    def steady_step_seconds(self) -> float | None:
        """The median step time without the first step, which carries the warm-up (CUDA and
        nccl start, allocator growth, kernel selection: 9.7 s on an H100)."""
        later = self.step_seconds[1:]
        return statistics.median(later) if later else None
