"""stage=dpo end to end on the tiny model: DPO with a reference model, a reference-free
variant (SimPO), 2-rank ZeRO-3 with the reference model, and bad preference rows."""

from __future__ import annotations

import json
import math

import pytest

from tests.conftest import max_weight_change
from tests.data_tools.conftest import write_jsonl

# small and quick: 8 pairs per step, the held-out evaluation on 8 prompts
QUICK = ["stage=dpo", "stage.learning_rate=1e-4", "stage.max_steps=4",
         "stage.global_batch_size=8", "stage.per_device_batch_size=4", "stage.max_length=160",
         "stage.logging_steps=1", "debug.max_train_rows=64", "debug.max_eval_rows=8",
         "stage.heldout.max_prompts=8"]
SHARED_NAMES = {"rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy",
                "train/loss"}


def _run(run_stage, tmp_path, extra):
    """In this process (run(cfg) on a composed config)."""
    run_dir = tmp_path / "run"
    run_stage([*QUICK, *extra], run_dir)
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def _run_ranks(run_cli, tmp_path, extra):
    """Through the real CLI, which starts the ranks."""
    run_dir = tmp_path / "run"
    result = run_cli([*QUICK, *extra, f"hydra.run.dir={run_dir}"], cwd=tmp_path)
    assert result.returncode == 0, result.output[-4000:]
    return run_dir, json.loads((run_dir / "metrics.json").read_text())


def test_dpo_trains_against_the_reference_and_evaluates(run_stage, cache_dir, tmp_path):
    run_dir, metrics = _run(run_stage, tmp_path, ["stage.loss_type=sigmoid"])
    assert SHARED_NAMES <= set(metrics), sorted(metrics)
    assert math.isfinite(metrics["train/loss"]) and metrics["train/steps"] == 4
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0
    # 4 steps x 8 pairs are all the run can reach: only those are tokenized
    assert metrics["train/pairs"] == 32 < metrics["train/pairs_available"]
    # the held-out evaluation of stage=eval, with KL to the reference (here the start model)
    assert metrics["eval/num_prompts"] == 8 and "eval/oracle_greedy" in metrics
    assert metrics["eval/kl_to_reference"] > -0.05  # an estimate: >= 0 up to sampling noise
    assert (run_dir / "samples.jsonl").exists()
    history = json.loads((run_dir / "log_history.json").read_text())
    assert any("rewards/margins" in h for h in history)  # TRL's name, renamed in metrics


def test_rpo_adds_the_chosen_answers_nll(run_stage, tmp_path):
    """stage.sft_weight: at the first step policy = reference, so DPO's sigmoid loss is
    log 2 = 0.693; the NLL of the chosen answer under the untrained model comes on top."""
    run_dir, metrics = _run(run_stage, tmp_path, ["stage.sft_weight=1.0"])
    first = next(h["loss"] for h in json.loads((run_dir / "log_history.json").read_text())
                 if "loss" in h)
    assert first > math.log(2) + 1.0, first


def test_ld_dpo_leaves_out_the_longer_answers_tail(run_stage, tmp_path):
    """stage.ld_alpha=0 (LD-DPO): a pair's log-probs are summed over the shorter answer's
    length only. At the first step (policy = the start model, the same batch) the logged
    log-probs are therefore higher (fewer negative terms) than DPO's full sums."""
    def first_logps(extra, name):
        run_dir, _ = _run(run_stage, tmp_path / name, ["stage.max_steps=1", *extra])
        log = next(h for h in json.loads((run_dir / "log_history.json").read_text())
                   if "logps/chosen" in h)
        return log["logps/chosen"] + log["logps/rejected"]

    full, shared = first_logps([], "dpo"), first_logps(["stage.ld_alpha=0.0"], "ld")
    assert shared > full + 1.0, (shared, full)


def test_entropy_coefficient_enters_the_loss_with_its_sign(run_stage, tmp_path):
    """stage.entropy_coef: at the first step (policy = reference) DPO's sigmoid loss is
    log 2, minus the coefficient x the chosen answers' entropy, which for the untrained tiny
    model is near log(vocabulary) = 6.9 nats. A dropped term gives log 2 for both signs."""
    def first_loss(coef):
        run_dir, _ = _run(run_stage, tmp_path / f"coef{coef}",
                          ["stage.max_steps=1", f"stage.entropy_coef={coef}"])
        return next(h["loss"] for h in json.loads((run_dir / "log_history.json").read_text())
                    if "loss" in h)

    minimise, bonus = first_loss(-1.0), first_loss(1.0)
    assert minimise > math.log(2) + 5 and bonus < math.log(2) - 5, (minimise, bonus)
    assert minimise - math.log(2) == pytest.approx(math.log(2) - bonus, rel=1e-4)


def test_chosen_answer_entropy_by_hand():
    import torch

    from rlhf.stages.dpo import chosen_answer_entropy

    # rows 0-1 chosen, 2-3 rejected; a leading column as PEFT's virtual tokens would add
    entropy = torch.tensor([[9., 1, 2, 3], [9, 4, 5, 6], [9, 7, 8, 9], [9, 10, 11, 12]])
    labelled = torch.tensor([[0, 1, 1], [1, 0, 0], [1, 1, 1], [1, 1, 1]]).bool()
    assert chosen_answer_entropy(entropy, labelled).item() == pytest.approx((2 + 3 + 4) / 3)


def test_entropy_coefficient_needs_a_dpo_trainer_loss(run_stage, tmp_path):
    from rlhf.errors import ConfigError

    with pytest.raises(ConfigError, match="stage.entropy_coef=-1.0 .* loss_type=simpo"):
        _run(run_stage, tmp_path, ["stage.loss_type=simpo", "stage.beta=2.0",
                                   "stage.entropy_coef=-1.0"])


def test_reference_free_simpo(run_stage, cache_dir, tmp_path):
    run_dir, metrics = _run(run_stage, tmp_path, ["stage.loss_type=simpo", "stage.beta=2.0"])
    assert SHARED_NAMES <= set(metrics) and math.isfinite(metrics["train/loss"])
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0


@pytest.mark.distributed
def test_dpo_zero3_two_ranks_with_reference_model(run_cli, cache_dir, tmp_path):
    """Also with stage.entropy_coef: the entropy of TRL's fused head reaches the loss through
    DeepSpeed's engine (at the first step log 2 plus about 6.9 nats, as in one process)."""
    run_dir, metrics = _run_ranks(run_cli, tmp_path, ["distributed=zero3",
                                                      "distributed.nproc_per_node=2",
                                                      "stage.entropy_coef=-1.0"])
    assert SHARED_NAMES <= set(metrics) and math.isfinite(metrics["train/loss"])
    first = next(h["loss"] for h in json.loads((run_dir / "log_history.json").read_text())
                 if "loss" in h)
    assert first > math.log(2) + 5, first
    # the ZeRO-3 shards were gathered into one checkpoint that moved away from the start
    assert max_weight_change(run_dir, cache_dir / "demo_tiny") > 0
    assert "eval/oracle_greedy" in metrics


@pytest.mark.parametrize("row,message", [
    ({"prompt": [{"role": "user", "content": "Price?"}], "chosen": "It is $5.",
      "rejected": "It is $5."}, "pairs.jsonl:2: `chosen` and `rejected` are the same text"),
    ({"prompt": [], "chosen": "a", "rejected": "b"},
     "pairs.jsonl:2: `prompt` is empty"),
])
def test_bad_preference_rows_name_the_row(run_stage, tmp_path, row, message):
    good = {"prompt": [{"role": "user", "content": "Price?"}], "chosen": "It is $5.",
            "rejected": "No idea."}
    path = write_jsonl(tmp_path / "pairs.jsonl", [good, row])
    error = run_stage.fails(["stage=dpo", "data=custom", "stage.data_format=pairs",
                             f"data.pairs_train={path}"], tmp_path / "run")
    assert message in error, error
    bad = [json.loads(x) for x in (tmp_path / "run" / "bad_rows.jsonl").read_text().splitlines()]
    assert [b["where"] for b in bad] == [f"{path}:2"]


def test_pair_selection_from_rankings_with_ties():
    """stage.pairs: all C(K,2) non-tied pairs, neighbouring levels, or the best level against
    the rest (with two answers tied for best, each of them against every worse one)."""
    from rlhf.data.rankings import expand_to_pairs

    ranking = {"prompt": [{"role": "user", "content": "q"}], "responses": list("abcde"),
               "ranks": [1, 1, 2, 3, 3], "scores": None}
    chosen_rejected = lambda mode: [tuple(p["responses"]) for p in  # noqa: E731
                                    expand_to_pairs([ranking], mode)]
    assert len(chosen_rejected("all")) == 8  # C(5,2) = 10 minus the two ties
    assert chosen_rejected("adjacent") == [("a", "c"), ("b", "c"), ("c", "d"), ("c", "e")]
    assert chosen_rejected("best") == [("a", "c"), ("a", "d"), ("a", "e"), ("b", "c"),
                                       ("b", "d"), ("b", "e")]

