"""`rlhf-eval-sheet`: blinded side-by-side human evaluation of a multi-model stage=eval run.

    rlhf-eval-sheet export outputs/<eval run> --out sheets/            # sheet.csv, sheet.html, key.json
    rlhf-eval-sheet import --key sheets/key.json alice.csv bob.csv --out sheets/result

`export` reads the run's samples.jsonl and writes one row per (prompt, pair of models): the
prompt and the two answers as "A" and "B", which model is A drawn at random per row (seeded),
the models named only in key.json, which the raters must not see. sheet.csv can be filled in a
spreadsheet (column `verdict`: A, B or tie); sheet.html is one self-contained page a rater fills
in and saves as a CSV of the same columns. `import` joins the filled sheets (one per rater)
with the key and reports, per pair of models, win/tie/loss rates with a bootstrap interval over
prompts, and the agreement between raters (Cohen's kappa for two, Fleiss' kappa for any
number). Every bad row (unknown or missing verdict, a row of another sheet or not in the key,
a changed prompt, a key row nobody rated) is reported with its file and line; nothing is
dropped silently, and the import stops (exit 2) unless --allow-errors. Definitions:
docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import itertools
import json
import random
import sys
from pathlib import Path

from rlhf.algorithms.eval_stats import bootstrap_ci, cohen_kappa, fleiss_kappa, outcome_rates

VERDICTS = {"a": "A", "b": "B", "tie": "tie", "=": "tie"}
SHEET_COLUMNS = ["sheet_id", "row_id", "prompt", "answer_A", "answer_B", "verdict", "comment"]


class SheetError(Exception):
    """A problem with the command's own inputs (one line, exit code 2)."""


def prompt_text(prompt: list[dict]) -> str:
    return "\n".join(f"{m['role']}: {m['content']}" for m in prompt)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def read_samples(source: Path) -> tuple[list[dict], Path]:
    path = source / "samples.jsonl" if source.is_dir() else source
    if not path.exists():
        raise SheetError(f"{path}: no such file; give a stage=eval run directory or its "
                         "samples.jsonl")
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    if not rows or not all(isinstance(r.get("answers"), dict) for r in rows):
        raise SheetError(f"{path}: no answers to compare")
    return rows, path


def run_baseline(samples_path: Path) -> str | None:
    """stage.baseline of the run that wrote samples.jsonl, from its config.yaml."""
    config = samples_path.parent / "config.yaml"
    if not config.exists():
        return None
    from omegaconf import OmegaConf
    return OmegaConf.load(config).stage.get("baseline")


# ---------------------------------------------------------------- export
def export(source: Path, out: Path, mode: str = "greedy", models: list[str] | None = None,
           pairs: str = "baseline", baseline: str | None = None, seed: int = 0,
           max_prompts: int | None = None) -> dict:
    samples, path = read_samples(source)
    multi = isinstance(next(iter(samples[0]["answers"].values())), dict)
    if not multi:
        raise SheetError(f"{path} holds one model's answers; a sheet compares the models of a "
                         "stage=eval run with stage.models")
    available = list(samples[0]["answers"])
    models = models or available
    unknown = [m for m in models if m not in available]
    if unknown or len(models) < 2:
        raise SheetError(f"--models {','.join(models)}: need two or more of {', '.join(available)}")
    if pairs == "all":
        model_pairs = list(itertools.combinations(models, 2))
    else:
        baseline = baseline or run_baseline(path) or models[0]
        if baseline not in models:
            raise SheetError(f"--baseline {baseline} is not one of {', '.join(models)}")
        model_pairs = [(m, baseline) for m in models if m != baseline]
    rng = random.Random(seed)
    key_rows, sheet_rows = [], []
    for index, sample in enumerate(samples[:max_prompts] if max_prompts else samples):
        for first, second in model_pairs:
            answers = sample["answers"]
            if mode not in answers[first] or mode not in answers[second]:
                raise SheetError(f"{path}:{index + 1}: no {mode!r} answer for {first} and "
                                 f"{second}; choose --mode among {', '.join(answers[first])}")
            a, b = (first, second) if rng.random() < 0.5 else (second, first)
            row_id = f"r{len(key_rows) + 1:04d}"
            text = prompt_text(sample["prompt"])
            key_rows.append({"row_id": row_id, "sample": index, "A": a, "B": b,
                             "pair": [first, second], "prompt_sha": digest(text)})
            sheet_rows.append({"row_id": row_id, "prompt": text, "answer_A": answers[a][mode],
                               "answer_B": answers[b][mode], "verdict": "", "comment": ""})
    sheet_id = digest(json.dumps(key_rows, sort_keys=True))
    for row in sheet_rows:
        row["sheet_id"] = sheet_id
    out.mkdir(parents=True, exist_ok=True)
    key = {"sheet_id": sheet_id, "samples": str(path.resolve()), "mode": mode,
           "models": models, "pairs": [list(p) for p in model_pairs], "seed": seed,
           "rows": key_rows}
    (out / "key.json").write_text(json.dumps(key, indent=1, ensure_ascii=False) + "\n")
    with open(out / "sheet.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, SHEET_COLUMNS)
        writer.writeheader()
        writer.writerows(sheet_rows)
    (out / "sheet.html").write_text(sheet_html(sheet_id, sheet_rows), encoding="utf-8")
    return key


def sheet_html(sheet_id: str, rows: list[dict]) -> str:
    """One page, no network: the rows as JSON, a form per row, Save writes the filled CSV."""
    data = json.dumps([{k: r[k] for k in ("row_id", "prompt", "answer_A", "answer_B")}
                       for r in rows], ensure_ascii=False).replace("</", "<\\/")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Side-by-side evaluation {sheet_id}</title>
<style>
body {{ font-family: sans-serif; max-width: 70em; margin: 1em auto; }}
.row {{ border: 1px solid #ccc; border-radius: 6px; padding: .6em; margin: .8em 0; }}
.prompt {{ white-space: pre-wrap; background: #f4f4f4; padding: .4em; }}
.answers {{ display: flex; gap: 1em; }} .answers div {{ flex: 1; white-space: pre-wrap;
 border: 1px solid #ddd; padding: .4em; }}
.done {{ border-color: #4a4; }}
</style></head><body>
<h1>Which answer is better?</h1>
<p>Sheet <code>{sheet_id}</code>. For every prompt pick A, B or tie (equally good). The order of
the answers is random. Your name: <input id="rater" placeholder="rater name"> &nbsp;
<button onclick="save()">Save CSV</button> <span id="count"></span></p>
<div id="rows"></div>
<script>
const SHEET_ID = {json.dumps(sheet_id)};
const ROWS = {data};
const store = "rlhf-sheet-" + SHEET_ID;
const saved = JSON.parse(localStorage.getItem(store) || "{{}}");
function esc(s) {{ const d = document.createElement("div"); d.textContent = s; return d.innerHTML; }}
function render() {{
  const box = document.getElementById("rows");
  for (const r of ROWS) {{
    const v = (saved[r.row_id] || {{}}).verdict || "";
    const div = document.createElement("div");
    div.className = "row" + (v ? " done" : ""); div.id = r.row_id;
    div.innerHTML = `<b>${{r.row_id}}</b><div class="prompt">${{esc(r.prompt)}}</div>
      <div class="answers"><div><b>A</b><br>${{esc(r.answer_A)}}</div>
      <div><b>B</b><br>${{esc(r.answer_B)}}</div></div>` +
      ["A", "B", "tie"].map(x => `<label><input type="radio" name="${{r.row_id}}" value="${{x}}"
        ${{v === x ? "checked" : ""}} onchange="pick('${{r.row_id}}', this.value)"> ${{x}}</label>`).join(" ") +
      ` <input size="50" placeholder="comment" value="${{esc((saved[r.row_id] || {{}}).comment || "")}}"
        onchange="note('${{r.row_id}}', this.value)">`;
    box.appendChild(div);
  }}
  count();
}}
function pick(id, v) {{ (saved[id] = saved[id] || {{}}).verdict = v; keep();
  document.getElementById(id).classList.add("done"); }}
function note(id, c) {{ (saved[id] = saved[id] || {{}}).comment = c; keep(); }}
function keep() {{ localStorage.setItem(store, JSON.stringify(saved)); count(); }}
function count() {{ const n = ROWS.filter(r => (saved[r.row_id] || {{}}).verdict).length;
  document.getElementById("count").textContent = n + " / " + ROWS.length + " rated"; }}
function cell(s) {{ s = String(s); return /[",\\n\\r]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }}
function save() {{
  const rater = document.getElementById("rater").value.trim();
  if (!rater) {{ alert("Please enter your name first."); return; }}
  const lines = ["sheet_id,row_id,rater,verdict,comment"];
  for (const r of ROWS) {{ const s = saved[r.row_id] || {{}};
    lines.push([SHEET_ID, r.row_id, rater, s.verdict || "", s.comment || ""].map(cell).join(",")); }}
  const a = document.createElement("a");
  a.href = URL.createObjectURL(new Blob([lines.join("\\n") + "\\n"], {{type: "text/csv"}}));
  a.download = "sheet_" + SHEET_ID + "_" + rater.replace(/\\W+/g, "_") + ".csv"; a.click();
}}
render();
</script></body></html>
"""


# ---------------------------------------------------------------- import
def read_sheet(path: Path, key: dict, errors: list[dict]) -> dict[str, dict]:
    """row_id -> {"verdict", "rater", "where"} of one filled sheet; bad rows go to `errors`."""
    by_id = {r["row_id"]: r for r in key["rows"]}
    found: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = {"sheet_id", "row_id", "verdict"} - set(reader.fieldnames or [])
        if missing:
            errors.append({"where": str(path), "reason": f"no column {', '.join(sorted(missing))}"
                           f"; a sheet has {', '.join(SHEET_COLUMNS)} (or rater)"})
            return found
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            row_id, verdict = (row.get("row_id") or "").strip(), (row.get("verdict") or "")
            if (row.get("sheet_id") or "").strip() != key["sheet_id"]:
                errors.append({"where": where, "row_id": row_id, "reason":
                               f"sheet_id {row.get('sheet_id')!r} does not match the key's "
                               f"{key['sheet_id']!r} (a sheet from another export?)"})
            elif row_id not in by_id:
                errors.append({"where": where, "row_id": row_id,
                               "reason": f"row_id {row_id!r} is not in the key"})
            elif row_id in found:
                errors.append({"where": where, "row_id": row_id,
                               "reason": f"row_id {row_id} appears twice (first at "
                                         f"{found[row_id]['where']})"})
            elif row.get("prompt") and digest(row["prompt"].replace("\r\n", "\n")) \
                    != by_id[row_id]["prompt_sha"]:
                errors.append({"where": where, "row_id": row_id,
                               "reason": "the prompt differs from the exported one (edited, or "
                                         "rows shuffled between sheets)"})
            elif verdict.strip().lower() not in VERDICTS:
                errors.append({"where": where, "row_id": row_id, "reason":
                               f"verdict {verdict!r} is not A, B or tie" if verdict.strip()
                               else "no verdict"})
            else:
                found[row_id] = {"verdict": VERDICTS[verdict.strip().lower()], "where": where,
                                 "rater": (row.get("rater") or "").strip() or path.stem}
    for row_id in by_id.keys() - found.keys():
        if not any(e.get("row_id") == row_id and e["where"].startswith(str(path))
                   for e in errors):
            errors.append({"where": str(path), "row_id": row_id,
                           "reason": f"row {row_id} of the key is missing from this sheet"})
    return found


def unblind(key_row: dict, verdict: str) -> float:
    """1 / 0.5 / 0 for the pair's first model (key_row["pair"][0])."""
    if verdict == "tie":
        return 0.5
    return 1.0 if key_row[verdict] == key_row["pair"][0] else 0.0


def import_sheets(key_path: Path, sheets: list[Path], bootstrap_samples: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> tuple[dict, list[dict]]:
    """(metrics, errors): rates per pair of models over the ratings that are valid, and every
    bad row."""
    key = json.loads(key_path.read_text())
    errors: list[dict] = []
    by_rater: dict[str, dict[str, float]] = {}
    for path in sheets:
        found = read_sheet(path, key, errors)
        for row_id, rating in found.items():
            rater = rating["rater"]
            if rater in by_rater and row_id in by_rater[rater]:
                errors.append({"where": rating["where"], "row_id": row_id,
                               "reason": f"rater {rater} rated row {row_id} in another sheet "
                                         "too; name each rater once (column rater)"})
                continue
            by_rater.setdefault(rater, {})[row_id] = rating["verdict"]
    metrics: dict = {"human/num_raters": len(by_rater), "human/num_rows": len(key["rows"])}
    for first, second in key["pairs"]:
        rows = [r for r in key["rows"] if r["pair"] == [first, second]]
        per_row = []
        for r in rows:
            got = [unblind(r, v[r["row_id"]]) for v in by_rater.values() if r["row_id"] in v]
            if got:
                per_row.append(sum(got) / len(got))
        ratings = [unblind(r, v[r["row_id"]]) for r in rows for v in by_rater.values()
                   if r["row_id"] in v]
        name = f"human/{first}_vs_{second}"
        for k, value in outcome_rates(ratings).items():
            metrics[f"{name}/{k}"] = value
        low, high = bootstrap_ci(per_row, bootstrap_samples, confidence, seed)
        metrics[f"{name}/win_rate_low"], metrics[f"{name}/win_rate_high"] = low, high
        metrics[f"{name}/num_ratings"] = len(ratings)
    raters = sorted(by_rater)
    common = [r["row_id"] for r in key["rows"] if all(r["row_id"] in by_rater[x] for x in raters)]
    if len(raters) >= 2 and common:
        labels = {x: [by_rater[x][i] for i in common] for x in raters}
        if len(raters) == 2:
            metrics["human/cohen_kappa"] = cohen_kappa(*labels.values())
        table = [[sum(labels[x][j] == c for x in raters) for c in ("A", "B", "tie")]
                 for j in range(len(common))]
        metrics["human/fleiss_kappa"] = fleiss_kappa(table)
        metrics["human/kappa_rows"] = len(common)
    return metrics, errors


def rates_table(metrics: dict, pairs: list[list[str]], confidence: float = 0.95) -> str:
    level = f"{round(100 * confidence)}%"
    lines = [["pair", "win", "tie", "loss", f"win rate [{level}]", "ratings"]]
    for first, second in pairs:
        n = f"human/{first}_vs_{second}"
        lines.append([f"{first} vs {second}", f"{metrics[f'{n}/win']:.2f}",
                      f"{metrics[f'{n}/tie']:.2f}", f"{metrics[f'{n}/loss']:.2f}",
                      f"{metrics[f'{n}/win_rate']:.2f} [{metrics[f'{n}/win_rate_low']:.2f}, "
                      f"{metrics[f'{n}/win_rate_high']:.2f}]", str(metrics[f"{n}/num_ratings"])])
    widths = [max(len(r[i]) for r in lines) for i in range(len(lines[0]))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in lines)
    kappas = [f"{k.split('/')[1]} {metrics[k]:.3f}" for k in ("human/cohen_kappa",
                                                               "human/fleiss_kappa")
              if k in metrics]
    if kappas:
        text += (f"\nagreement between {metrics['human/num_raters']} raters on "
                 f"{metrics['human/kappa_rows']} rows: {', '.join(kappas)}")
    return text


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-eval-sheet", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write sheet.csv, sheet.html and key.json")
    ex.add_argument("source", type=Path, help="a stage=eval run dir (stage.models) or samples.jsonl")
    ex.add_argument("--out", type=Path, required=True)
    ex.add_argument("--mode", default="greedy", help="which answers: greedy or sampled")
    ex.add_argument("--models", help="comma-separated; default: all of the run's models")
    ex.add_argument("--pairs", choices=("baseline", "all"), default="baseline",
                    help="each model against the baseline (default) or every pair")
    ex.add_argument("--baseline", help="default: the run's stage.baseline")
    ex.add_argument("--seed", type=int, default=0, help="seeds which answer is A")
    ex.add_argument("--max-prompts", type=int)
    im = sub.add_parser("import", help="join filled sheets with the key; rates and kappa")
    im.add_argument("sheets", type=Path, nargs="+", help="filled CSVs, one per rater")
    im.add_argument("--key", type=Path, required=True)
    im.add_argument("--out", type=Path, help="write metrics.json and import_errors.jsonl here")
    im.add_argument("--bootstrap-samples", type=int, default=1000)
    im.add_argument("--confidence", type=float, default=0.95)
    im.add_argument("--seed", type=int, default=0)
    im.add_argument("--allow-errors", action="store_true",
                    help="report bad rows and go on with the valid ones")
    im.add_argument("--wandb-project", help="also log the rates as a W&B run (job_type "
                    "human_eval) in this project")
    args = parser.parse_args(argv)
    try:
        if args.command == "export":
            key = export(args.source, args.out, args.mode,
                         args.models.split(",") if args.models else None, args.pairs,
                         args.baseline, args.seed, args.max_prompts)
            print(f"{len(key['rows'])} rows ({len(key['pairs'])} pair(s) of models) in "
                  f"{args.out}/sheet.csv and sheet.html; keep {args.out}/key.json from the "
                  "raters")
            return 0
        return run_import(args)
    except SheetError as err:
        print(f"rlhf-eval-sheet: error: {err}", file=sys.stderr)
        return 2


def run_import(args) -> int:
    for path in [args.key, *args.sheets]:
        if not path.exists():
            raise SheetError(f"{path}: no such file")
    metrics, errors = import_sheets(args.key, args.sheets, args.bootstrap_samples,
                                    args.confidence, args.seed)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        with open(args.out / "import_errors.jsonl", "w", encoding="utf-8") as f:
            for e in errors:
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
    for e in errors:
        print(f"rlhf-eval-sheet: {e['where']}: {e['reason']}", file=sys.stderr)
    if errors and not args.allow_errors:
        print(f"rlhf-eval-sheet: error: {len(errors)} bad row(s); fix them, or rerun with "
              "--allow-errors to report them and use the valid ones", file=sys.stderr)
        return 2
    key = json.loads(args.key.read_text())
    print(rates_table(metrics, key["pairs"], args.confidence))
    if args.out:  # a run directory as rlhf-compare reads one: config.yaml and metrics.json
        from rlhf.runs import write_metrics
        (args.out / "config.yaml").write_text(json.dumps(
            {"stage": {"name": "human_eval"}, "key": str(args.key.resolve()),
             "sheets": [str(s.resolve()) for s in args.sheets]}, indent=1) + "\n")
        write_metrics(args.out, metrics)
    if args.wandb_project:
        import wandb
        run = wandb.init(project=args.wandb_project, job_type="human_eval",
                         config={"key": str(args.key), "sheets": [str(s) for s in args.sheets]})
        run.log(metrics)
        for k, v in metrics.items():
            run.summary[k] = v
        run.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
