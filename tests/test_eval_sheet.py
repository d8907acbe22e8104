"""Blinded human evaluation: kappa against hand-worked tables, and the round trip
`rlhf-eval-sheet export` -> sheets filled in programmatically -> `import` with the expected
rates; bad sheets give one error per row. No model is loaded: samples.jsonl is written here."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from rlhf.algorithms.eval_stats import cohen_kappa, fleiss_kappa
from rlhf.evaluation.sheet import export, import_sheets, main


def test_cohen_kappa_hand_worked():
    # 50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.
    # p_o = 35/50 = 0.7; p_e = 0.5 x 0.6 + 0.5 x 0.4 = 0.5; kappa = 0.2 / 0.5 = 0.4
    a = ["y"] * 20 + ["y"] * 5 + ["n"] * 10 + ["n"] * 15
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4)
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(["x"] * 4, ["x"] * 4) == 1.0


def test_fleiss_kappa_hand_worked():
    # the worked example of Wikipedia's "Fleiss' kappa" article: 10 items, 14 raters,
    # 5 categories; P_bar = 0.378, P_e = 0.213, kappa = 0.210
    table = [[0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0],
             [2, 2, 8, 1, 1], [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2],
             [6, 5, 2, 1, 0], [0, 2, 2, 3, 7]]
    assert fleiss_kappa(table) == pytest.approx(0.20993, abs=1e-4)
    with pytest.raises(ValueError):
        fleiss_kappa([[1, 1], [2, 1]])


N = 8  # prompts


@pytest.fixture
def eval_run(tmp_path):
    """A multi-model stage=eval run as far as the sheets read it: samples.jsonl, config.yaml."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("stage:\n  name: eval\n  baseline: sft\n")
    with open(run / "samples.jsonl", "w") as f:
        for i in range(N):
            f.write(json.dumps({"prompt": [{"role": "user", "content": f"question {i}?"}],
                                "answers": {m: {"greedy": f"{m} answer {i}",
                                                "sampled": f"{m} sample {i}"}
                                            for m in ("sft", "dpo", "ppo")}}) + "\n")
    return run


def fill(sheet, out, rater, judge):
    """A rater's filled copy of sheet.csv: judge(model_A_text, model_B_text) -> verdict."""
    with open(sheet, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        row["verdict"] = judge(row["answer_A"], row["answer_B"])
        row["rater"] = rater
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return out


def prefers(model, a, b, tie_when=lambda a, b: False):
    if tie_when(a, b):
        return "tie"
    return "A" if a.startswith(model) else "B" if b.startswith(model) else "tie"


def test_round_trip_gives_the_expected_rates(eval_run, tmp_path):
    sheets = tmp_path / "sheets"
    key = export(eval_run, sheets, seed=1)
    assert key["pairs"] == [["dpo", "sft"], ["ppo", "sft"]]  # against the run's baseline
    assert len(key["rows"]) == 2 * N
    rows = list(csv.DictReader(open(sheets / "sheet.csv")))
    # blinded: no model name in the sheet, A is sometimes the baseline, sometimes not
    assert not any(name in cell for r in rows for name in ("sft", "dpo", "ppo")
                   for k, cell in r.items() if k != "answer_A" and k != "answer_B")
    assert {r["A"] for r in key["rows"]} == {"sft", "dpo", "ppo"}
    html = (sheets / "sheet.html").read_text()
    assert key["sheet_id"] in html and all(r["row_id"] in html for r in key["rows"])
    assert "http" not in html.replace("http-equiv", "")  # self-contained

    def odd(a, b):  # prompt number odd
        return int(a.rsplit(" ", 1)[1]) % 2 == 1

    # rater 1: dpo always beats sft; ppo ties sft on odd prompts and loses on even ones
    def judge1(a, b):
        if "dpo" in a + b:
            return prefers("dpo", a, b)
        return "tie" if odd(a, b) else prefers("sft", a, b)

    # rater 2 agrees except on dpo's prompts 0 and 1, where sft wins
    def judge2(a, b):
        if "dpo" in a + b and int(a.rsplit(" ", 1)[1]) < 2:
            return prefers("sft", a, b)
        return judge1(a, b)

    one = fill(sheets / "sheet.csv", tmp_path / "alice.csv", "alice", judge1)
    two = fill(sheets / "sheet.csv", tmp_path / "bob.csv", "bob", judge2)
    metrics, errors = import_sheets(sheets / "key.json", [one, two], bootstrap_samples=500)
    assert errors == []
    # dpo vs sft: 16 ratings, 14 wins, 2 losses
    assert metrics["human/dpo_vs_sft/win"] == pytest.approx(14 / 16)
    assert metrics["human/dpo_vs_sft/loss"] == pytest.approx(2 / 16)
    assert metrics["human/dpo_vs_sft/win_rate"] == pytest.approx(14 / 16)
    # ppo vs sft: half ties, half losses -> win rate 0.25
    assert metrics["human/ppo_vs_sft/tie"] == 0.5 and metrics["human/ppo_vs_sft/loss"] == 0.5
    assert metrics["human/ppo_vs_sft/win_rate"] == pytest.approx(0.25)
    low, high = metrics["human/dpo_vs_sft/win_rate_low"], metrics["human/dpo_vs_sft/win_rate_high"]
    assert low < 14 / 16 <= high <= 1
    # kappa on the blinded labels (A/B/tie) of the 16 rows, disagreeing on 2: by hand below
    assert metrics["human/cohen_kappa"] == pytest.approx(cohen_kappa(
        *[[r["verdict"] for r in csv.DictReader(open(p))] for p in (one, two)]))
    assert 0.6 < metrics["human/cohen_kappa"] < 1
    assert metrics["human/num_raters"] == 2 and metrics["human/kappa_rows"] == 16

    # the command line: table, metrics.json; exit 0
    out = tmp_path / "result"
    assert main(["import", "--key", str(sheets / "key.json"), str(one), str(two),
                 "--out", str(out), "--bootstrap-samples", "500"]) == 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["human/dpo_vs_sft/win_rate"] == pytest.approx(14 / 16)
    # a run for rlhf-compare like any other
    from rlhf.compare import local_runs
    run, = local_runs([out])
    assert run.metrics["human/cohen_kappa"] == pytest.approx(metrics["human/cohen_kappa"])


def test_bad_sheets_are_reported_per_row(eval_run, tmp_path, capsys):
    sheets = tmp_path / "sheets"
    key = export(eval_run, sheets, pairs="all", mode="sampled")
    assert len(key["rows"]) == 3 * N
    rows = list(csv.DictReader(open(sheets / "sheet.csv")))
    for row in rows:
        row["verdict"] = "A"
    rows[1]["verdict"] = "maybe"
    rows[2]["verdict"] = ""
    rows[3]["sheet_id"] = "0123456789abcdef"
    rows[4]["row_id"] = "r9999"
    rows[5]["prompt"] = "a different question?"
    del rows[6]  # a missing row
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics, errors = import_sheets(sheets / "key.json", [bad])
    by_where = {e["where"]: e["reason"] for e in errors}
    assert by_where[f"{bad}:3"] == "verdict 'maybe' is not A, B or tie"
    assert by_where[f"{bad}:4"] == "no verdict"
    assert "does not match the key's" in by_where[f"{bad}:5"]
    assert by_where[f"{bad}:6"] == "row_id 'r9999' is not in the key"
    assert "the prompt differs" in by_where[f"{bad}:7"]
    # the row deleted and the one whose row_id was changed: in the key, in no sheet
    missing = sorted(e["row_id"] for e in errors if e["where"] == str(bad))
    assert missing == ["r0005", "r0007"]
    assert len(errors) == 7
    # the command stops with exit code 2 and lists every bad row
    assert main(["import", "--key", str(sheets / "key.json"), str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("rlhf-eval-sheet: ") == 8 and "7 bad row(s)" in err
    # --allow-errors reports them and goes on with the valid rows
    assert main(["import", "--key", str(sheets / "key.json"), str(bad), "--allow-errors"]) == 0
    assert "vs" in capsys.readouterr().out


def test_console_script_export_errors(tmp_path):
    """The installed `rlhf-eval-sheet`: one line and exit code 2 for a run without samples."""
    script = f"{sys.prefix}/bin/rlhf-eval-sheet"
    proc = subprocess.run([script, "export", str(tmp_path), "--out", str(tmp_path / "s")],
                          capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().endswith("give a stage=eval run directory or its samples.jsonl")
