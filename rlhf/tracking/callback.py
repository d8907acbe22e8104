"""Forwards the logs of transformers/TRL trainers to our tracker under the shared names."""

from __future__ import annotations

from transformers import TrainerCallback

from rlhf.tracking import hf_log_to_metrics


class TrackerCallback(TrainerCallback):
    def __init__(self, tracker):
        self.tracker = tracker

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            self.tracker.log(hf_log_to_metrics(logs), step=state.global_step)
