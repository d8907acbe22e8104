"""stage=rm end to end on the tiny model, reload-and-score, and bad ranking rows."""

from __future__ import annotations

import json
import math

import pytest

from tests.data_tools.conftest import write_jsonl


def test_accuracy_rises_above_chance_and_loss_falls(rm_run):
    metrics = json.loads((rm_run / "metrics.json").read_text())
    assert metrics["eval/reward_accuracy"] > 0.7, metrics
    assert metrics["eval/kendall_tau"] > 0.3, metrics
    assert {"eval/reward_accuracy_rank_distance_1", "eval/reward_mean",
            "eval/reward_std"} <= set(metrics)
    assert metrics["train/loss"] < math.log(2)  # below the loss of a constant reward


def test_reward_stats_written(rm_run):
    stats = json.loads((rm_run / "reward_stats.json").read_text())
    assert stats["count"] == 64 * 4 and stats["std"] > 0 and math.isfinite(stats["mean"])


def test_top1_accuracy_is_what_the_saved_model_says(rm_run, cache_dir):
    """eval/top1_accuracy: the share of held-out prompts whose highest-scored answer is one
    ranked best, recomputed from the saved model's own scores, and better than picking one of
    the 4 answers at random (the good answer and the rambling one, ranked second, differ
    only by the rambling's extra sentence: the hardest pair to learn)."""
    from rlhf.data.rankings import load_rankings
    from rlhf.models import reward

    metrics = json.loads((rm_run / "metrics.json").read_text())
    model, tokenizer = reward.load(str(rm_run))
    rows = load_rankings(str(cache_dir / "demo_data" / "rankings_eval.jsonl"), 64)
    hits = 0
    for row in rows:
        scores = reward.score(model, tokenizer, [row["prompt"] + [{"role": "assistant",
                                                                   "content": a}]
                                                 for a in row["responses"]])
        best = max(range(len(scores)), key=scores.__getitem__)
        hits += row["ranks"][best] == min(row["ranks"])
    # one prompt may flip where two scores differ by float noise (batching differs)
    assert metrics["eval/top1_accuracy"] == pytest.approx(hits / len(rows), abs=1.5 / len(rows))
    assert metrics["eval/top1_accuracy"] > 0.25, metrics  # chance: 1 in 4


def test_reload_with_plain_transformers_and_score(rm_run):
    from transformers import AutoModelForSequenceClassification

    from rlhf.models import reward

    assert AutoModelForSequenceClassification.from_pretrained(rm_run / "model").num_labels == 1
    model, tokenizer = reward.load(str(rm_run))
    q = {"role": "user", "content": "How much is the Orbit Fan?"}
    polite, rude, off = reward.score(model, tokenizer, [
        [q, {"role": "assistant", "content": "The Orbit Fan costs $42. Happy to help!"}],
        [q, {"role": "assistant", "content": "$42. Obviously. Look it up yourself next time."}],
        [q, {"role": "assistant", "content": "Our support line is open from nine to five."}]])
    assert polite > rude and polite > off


@pytest.mark.parametrize("row,message", [
    ({"prompt": [{"role": "user", "content": "q"}], "responses": ["only one"]},
     "rankings.jsonl:2: `responses` needs K >= 2 answers to rank, found 1"),
    ({"prompt": [{"role": "user", "content": "q"}], "responses": ["same", "same"]},
     "rankings.jsonl:2: `responses` lists the same answer twice"),
    ({"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b", "c"], "ranks": [1, 2]},
     "rankings.jsonl:2: `ranks` must give one integer rank per response (3)"),
])
def test_bad_ranking_rows_name_the_row(run_stage, tmp_path, row, message):
    good = {"prompt": [{"role": "user", "content": "q"}], "responses": ["a", "b"]}
    path = write_jsonl(tmp_path / "rankings.jsonl", [good, row])
    error = run_stage.fails(["stage=rm", "data=custom", f"data.rankings_train={path}"],
                            tmp_path / "run")
    assert message in error, error


def test_pairwise_lora_on_trl_reloads_the_merged_model(run_stage, cache_dir, tmp_path):
    """Pairwise runs on TRL's RewardTrainer; LoRA adapters and the new score head are merged
    on save, so the plain reloaded model reproduces the stage's own held-out accuracy."""
    from rlhf.algorithms.ranking_metrics import ranking_metrics
    from rlhf.data.rankings import load_rankings
    from rlhf.models import reward

    run_dir = tmp_path / "run"
    run_stage(["stage=rm", "stage.objective=pairwise", "model.lora.enabled=true",
               "model.lora.r=8", "stage.learning_rate=2e-3",
               "stage.max_steps=12", "stage.global_batch_size=16",
               "stage.per_device_batch_size=16", "stage.max_length=128",
               "stage.use_margin=true", "debug.max_train_rows=64",
               "debug.max_eval_rows=48", "stage.reward_stats_rows=16"], run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["train/examples"] > 64 and math.isfinite(metrics["train/loss"])
    assert (run_dir / "model" / "adapter" / "adapter_config.json").exists()
    model, tokenizer = reward.load(str(run_dir))
    rows = load_rankings(str(cache_dir / "demo_data" / "rankings_eval.jsonl"), 48)
    rewards = [reward.score(model, tokenizer, [r["prompt"] + [{"role": "assistant",
                                                               "content": a}]
                                               for a in r["responses"]]) for r in rows]
    reloaded = ranking_metrics(rewards, [r["ranks"] for r in rows])
    assert reloaded["eval/reward_accuracy"] == pytest.approx(
        metrics["eval/reward_accuracy"], abs=0.02)
    assert reloaded["eval/reward_accuracy"] > 0.6  # the merged adapters are not a no-op
