"""Evaluation over several models (stage=eval with stage.models), text-overlap metrics, the
blinded human-evaluation sheets (`rlhf-eval-sheet`) and run comparison (`rlhf-compare`).
Definitions and citations: docs/evaluation.md."""
