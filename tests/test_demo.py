"""The main job, `rlhf experiment=demo`, in full: SFT must answer held-out questions with the
right fact far more often than the untrained model, by the oracle's measure."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
def test_demo_sft_beats_untrained_model(run_cli, tmp_path):
    run_dir = tmp_path / "demo"
    result = run_cli(["experiment=demo", f"hydra.run.dir={run_dir}"], cwd=tmp_path, timeout=900)
    assert result.returncode == 0, result.output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    base, sft = summary["base_eval"], summary["sft_eval"]
    print(json.dumps({"base": base, "sft": sft}, indent=1))
    assert base["eval/num_prompts"] == sft["eval/num_prompts"] == 200
    assert sft["eval/oracle_fact_greedy"] >= base["eval/oracle_fact_greedy"] + 0.5
    assert sft["eval/oracle_greedy"] >= base["eval/oracle_greedy"] + 0.4
    assert sft["eval/oracle_sampled"] > base["eval/oracle_sampled"]
    # the same figures are in the pipeline's metrics.json and printed in the summary table
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["sft_eval/eval/oracle_greedy"] == sft["eval/oracle_greedy"]
    assert "=== summary" in result.output
