"""stage=eval over several models, its metrics checked against independent computations
(sacrebleu's corpus scores, a log-likelihood summed by hand, a win rate whose interval is
known), and `rlhf-compare` over a real 3-run sweep (local files, offline W&B files)."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from rlhf.algorithms.eval_stats import bootstrap_ci, outcome_rates, outcomes, perplexity

HYPS = ["The Orbit Fan costs $42. Happy to help!", "It ships in 4 days.",
        "The warranty is two years, obviously.", "Blue."]
REFS = ["The Orbit Fan costs $42. Happy to help!", "The Orbit Fan ships in 4 days.",
        "The warranty on the Orbit Fan is 2 years.", "The Orbit Fan is blue."]


def test_bleu_chrf_rouge_against_sacrebleu_and_a_hand_lcs():
    import sacrebleu

    from rlhf.evaluation.text_metrics import corpus_overlap, rouge_l

    got = corpus_overlap(HYPS, REFS)
    assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(HYPS, [REFS]).score)
    assert got["chrf"] == pytest.approx(sacrebleu.corpus_chrf(HYPS, [REFS]).score)
    assert 0 < got["bleu"] < 100 and 0 < got["chrf"] < 100
    # LCS of "the cat sat on the mat" / "the cat is on the mat" is 5 words: P = R = F = 5/6
    assert rouge_l(["the cat sat on the mat"], ["the cat is on the mat"]) == \
        pytest.approx([5 / 6])
    assert corpus_overlap(REFS, REFS) == pytest.approx({"bleu": 100, "chrf": 100,
                                                        "rouge_l": 100})


def test_perplexity_against_a_hand_summed_log_likelihood(cache_dir):
    from transformers import AutoModelForCausalLM

    from rlhf.evaluation.compare_models import padded

    from rlhf.models.generation import answer_logprobs

    model = AutoModelForCausalLM.from_pretrained(cache_dir / "demo_tiny")
    prompts, answers = [[5, 6, 7], [8, 9, 10, 11, 12]], [[20, 21, 22, 23], [24, 25]]
    total, tokens = 0.0, 0
    for p, a in zip(prompts, answers):  # one unpadded sequence at a time
        logits = model(input_ids=torch.tensor([p + a])).logits[0]
        logps = torch.log_softmax(logits, -1)
        total += sum(logps[len(p) - 1 + t, tok].item() for t, tok in enumerate(a))
        tokens += len(a)
    logps, mask = answer_logprobs(model, prompts, answers, batch_size=2, pad_token_id=0)
    assert perplexity(logps, mask) == pytest.approx(math.exp(-total / tokens), rel=1e-5)
    rows = [lp[m.bool()].tolist() for lp, m in zip(logps, mask)]
    assert perplexity(*padded(rows)) == pytest.approx(math.exp(-total / tokens), rel=1e-5)


def test_win_rate_and_its_bootstrap_interval_on_known_cases():
    results = outcomes([3.0, 1.0, 2.0, 2.05], [1.0, 2.0, 2.0, 2.0], tie_margin=0.1)
    assert results == [1.0, 0.0, 0.5, 0.5]
    assert outcome_rates(results) == {"win": 0.25, "tie": 0.5, "loss": 0.25, "win_rate": 0.5}
    assert bootstrap_ci([1.0] * 50) == (1.0, 1.0)  # all wins: no uncertainty left
    # 240 wins of 400: the bootstrap interval of a proportion is close to the normal one,
    # p +- 1.96 sqrt(p (1 - p) / n) = 0.6 +- 0.048
    wins = [1.0] * 240 + [0.0] * 160
    low, high = bootstrap_ci(wins, num_samples=4000, confidence=0.95, seed=3)
    half = 1.96 * math.sqrt(0.6 * 0.4 / 400)
    assert low == pytest.approx(0.6 - half, abs=0.01) and high == pytest.approx(0.6 + half,
                                                                                 abs=0.01)
    assert bootstrap_ci(wins, 4000, 0.95, seed=3) == (low, high)  # seeded
    narrow = bootstrap_ci(wins, 4000, 0.5, seed=3)
    assert low < narrow[0] < narrow[1] < high


@pytest.fixture(scope="module")
def three_models(cache_dir, tmp_path_factory):
    """The tiny demo model twice (identical: every comparison a tie, KL 0), a copy with noise
    on its weights, and a reward model with a random score head: no training."""
    import shutil

    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, \
        AutoTokenizer

    root = tmp_path_factory.mktemp("models")
    base = cache_dir / "demo_tiny"
    shutil.copytree(base, root / "same")
    torch.manual_seed(0)
    noisy = AutoModelForCausalLM.from_pretrained(base)
    with torch.no_grad():
        for p in noisy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    noisy.save_pretrained(root / "noisy")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "noisy")
    rm = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1)
    rm.config.pad_token_id = rm.config.pad_token_id or 0
    rm.save_pretrained(root / "rm")
    AutoTokenizer.from_pretrained(base).save_pretrained(root / "rm")
    return {"base": base, "same": root / "same", "noisy": root / "noisy", "rm": root / "rm"}


@pytest.fixture(scope="module")
def models_eval(run_stage, three_models, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eval_models") / "run"
    m = three_models
    metrics = run_stage(["stage=eval", f"stage.models={{base: {m['base']}, same: {m['same']}, "
                         f"noisy: {m['noisy']}}}", "stage.baseline=base",
                         f"stage.reward_model={m['rm']}", "stage.references=${data.sft_eval}",
                         "stage.max_prompts=12", "stage.max_new_tokens=16",
                         "stage.batch_size=5", "stage.bootstrap_samples=300"], run_dir)
    return run_dir, metrics


def test_several_models_side_by_side(models_eval):
    import sacrebleu

    run_dir, metrics = models_eval
    assert metrics["eval/num_prompts"] == 12 and metrics["eval/num_models"] == 3
    samples = [json.loads(line) for line in open(run_dir / "samples.jsonl")]
    assert len(samples) == 12 and all(s["reference"] for s in samples)
    for name in ("base", "same", "noisy"):
        for mode in ("greedy", "sampled"):
            texts = [s["answers"][name][mode] for s in samples]
            refs = [s["reference"] for s in samples]
            # the corpus scores are sacrebleu's on the very strings written to samples.jsonl
            assert metrics[f"eval/{name}/bleu_{mode}"] == pytest.approx(
                sacrebleu.corpus_bleu(texts, [refs]).score)
            assert metrics[f"eval/{name}/chrf_{mode}"] == pytest.approx(
                sacrebleu.corpus_chrf(texts, [refs]).score)
            assert f"eval/{name}/oracle_{mode}" in metrics  # the demo's oracle
            assert f"eval/{name}/reward_model_{mode}" in metrics
        assert metrics[f"eval/{name}/perplexity"] > 1
    # an identical model: same answers (same seed), every prompt a tie, no KL
    for mode in ("greedy", "sampled"):
        assert metrics[f"eval/same/tie_{mode}"] == 1.0
        assert metrics[f"eval/same/win_rate_{mode}"] == 0.5
        assert (metrics[f"eval/same/win_rate_{mode}_low"],
                metrics[f"eval/same/win_rate_{mode}_high"]) == (0.5, 0.5)
    assert metrics["eval/same/kl_to_baseline"] == pytest.approx(0, abs=1e-5)
    assert metrics["eval/same/perplexity"] == pytest.approx(metrics["eval/base/perplexity"])
    # the noisy copy differs: its own outcomes and an interval around its win rate
    noisy = [s["vs_baseline"]["noisy"]["greedy"] for s in samples]
    wins = sum(o == "win" for o in noisy) + 0.5 * sum(o == "tie" for o in noisy)
    assert metrics["eval/noisy/win_rate_greedy"] == pytest.approx(wins / 12)
    assert metrics["eval/noisy/win_rate_greedy_low"] <= wins / 12 <= \
        metrics["eval/noisy/win_rate_greedy_high"]
    assert metrics["eval/noisy/kl_to_baseline"] != pytest.approx(0, abs=1e-3)
    assert "eval/base/win_rate_greedy" not in metrics  # the baseline is not compared to itself
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["eval/noisy/bleu_greedy"] == pytest.approx(metrics["eval/noisy/bleu_greedy"])


def test_models_table_lists_every_model():
    from rlhf.evaluation.compare_models import models_table

    metrics = {"eval/a/bleu_greedy": 10.0, "eval/b/bleu_greedy": 12.5,
               "eval/b/win_rate_greedy": 0.6, "eval/b/win_rate_greedy_low": 0.5,
               "eval/b/win_rate_greedy_high": 0.7, "eval/a/perplexity": 3.0,
               "eval/b/perplexity": float("nan")}
    table = models_table(metrics, ["a", "b"], "a", ["greedy"]).splitlines()
    assert table[0].split() == ["model", "mode", "ppl", "bleu", "win", "vs", "a", "[95%]"]
    assert table[1].split() == ["a", "greedy", "3.00", "10.0", "baseline"]
    assert table[2].split() == ["b", "greedy", "-", "12.5", "0.60", "[0.50,", "0.70]"]


def test_eval_models_config_errors(run_stage, tmp_path):
    from rlhf.config import validate

    def error(overrides):
        from rlhf.errors import ConfigError
        with pytest.raises(ConfigError) as err:
            validate(run_stage.compose(["stage=eval", *overrides]))
        return str(err.value)

    assert "stage.baseline=c is not one of stage.models (a, b)" in error(
        ["stage.models={a: x, b: y}", "stage.baseline=c"])
    assert "e.g. stage.baseline=a" in error(["stage.models={a: x, b: y}"])
    assert "stage.confidence=1.5" in error(["stage.models={a: x}", "stage.confidence=1.5"])


# ---------------------------------------------------------------- rlhf-compare
@pytest.fixture(scope="module")
def sweep(run_cli, tmp_path_factory):
    """A real local sweep: 3 tiny SFT runs at 3 learning rates, logged to W&B offline."""
    cwd = tmp_path_factory.mktemp("sweep")
    result = run_cli(["-m", "stage=sft", "debug=tiny", "stage.learning_rate=1e-3,4e-3,2e-3",
                      "stage.logging_steps=1", "stage.global_batch_size=8",
                      "stage.per_device_batch_size=8", "debug.max_eval_rows=4",
                      "logger=wandb", "logger.mode=offline",
                      f"hydra.sweep.dir={cwd / 'sweep'}"], cwd=cwd,
                     env={"WANDB_MODE": "offline", "WANDB_API_KEY": ""})
    assert result.returncode == 0, result.output[-3000:]
    return cwd / "sweep", result.output


def line_colours(png) -> set[int]:
    """Which of matplotlib's first 6 line colours (tab10 C0-C5) the image shows."""
    from matplotlib.colors import to_rgb
    from PIL import Image

    pixels = {rgb for _, rgb in Image.open(png).convert("RGB").getcolors(1 << 24)}
    found = set()
    for i in range(6):
        rgb = tuple(round(255 * c) for c in to_rgb(f"C{i}"))
        if sum(1 for p in pixels if max(abs(a - b) for a, b in zip(p, rgb)) <= 2):
            found.add(i)
    return found


def test_sweep_ends_with_its_table(sweep):
    sweep_dir, output = sweep
    table = output[output.index("=== 3 runs of the sweep"):].splitlines()
    assert table[1].split()[:2] == ["run", "stage.learning_rate"]
    assert [row.split()[:2] for row in table[2:5]] == [["0_sft", "0.001"], ["1_sft", "0.004"],
                                                       ["2_sft", "0.002"]]


def test_compare_local_sweep_table_csv_and_plot(sweep, tmp_path, capsys):
    from rlhf.compare import main

    sweep_dir, _ = sweep
    out = tmp_path / "cmp"
    assert main([str(sweep_dir), "--metrics", "eval/loss,train/loss", "--sort", "eval/loss",
                 "--ascending", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["run", "stage.learning_rate", "eval/loss", "train/loss"]
    rows = [line.split() for line in lines[1:4]]
    losses = [json.loads((sweep_dir / r[0] / "metrics.json").read_text())["eval/loss"]
              for r in rows]
    assert losses == sorted(losses)  # sorted by the chosen metric
    assert {r[1] for r in rows} == {"0.001", "0.002", "0.004"}  # the swept parameter
    with open(out / "compare.csv") as f:
        saved = list(csv.DictReader(f))
    assert [r["run"] for r in saved] == [r[0] for r in rows]
    assert float(saved[0]["eval/loss"]) == pytest.approx(losses[0])
    from PIL import Image

    png = out / "train_loss.png"
    assert Image.open(png).size == (800, 500)
    assert line_colours(png) == {0, 1, 2}  # one line per run, no fourth


def test_compare_wandb_offline_files_and_the_api_error(sweep, tmp_path, capsys, monkeypatch):
    from rlhf.compare import main

    sweep_dir, _ = sweep
    # where the API cannot be reached (no key here): one clear line, exit code 2
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no_netrc"))
    assert main(["--wandb", "rlhf", "--group", sweep_dir.name]) == 2
    err = capsys.readouterr().err
    assert "through the W&B API" in err and "--wandb-dir" in err
    # the same runs read back from the offline files W&B wrote
    assert main(["--wandb", "rlhf", "--group", sweep_dir.name, "--wandb-dir", str(sweep_dir),
                 "--metrics", "eval/loss", "--sort", "eval/loss", "--out",
                 str(tmp_path / "w")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[-2:] == ["stage.learning_rate", "eval/loss"]
    local = {json.loads((d / "metrics.json").read_text())["eval/loss"]
             for d in sweep_dir.iterdir() if d.is_dir()}
    logged = sorted(float(line.split()[-1]) for line in lines[1:4])
    assert logged == pytest.approx(sorted(float(f"{v:.4g}") for v in local))
    assert line_colours(tmp_path / "w" / "train_loss.png") == {0, 1, 2}
    assert main(["--wandb", "rlhf", "--group", "no-such-group", "--wandb-dir",
                 str(sweep_dir)]) == 2


def test_a_missing_model_is_named_before_anything_loads(run_stage, three_models, tmp_path):
    message = run_stage.fails(["stage=eval", f"stage.models={{base: {three_models['base']}, "
                               f"dpo: {tmp_path / 'nowhere'}}}", "stage.baseline=base"],
                              tmp_path / "run")
    assert message.startswith(f"stage.models.dpo={tmp_path / 'nowhere'}: no such directory")
