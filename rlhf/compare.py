"""`rlhf-compare`: runs side by side, for someone without a browser at hand.

    rlhf-compare multirun/default/2026-01-02_03-04-05                 # a sweep: all its runs
    rlhf-compare outputs/a outputs/b --metrics eval/loss,train/loss --sort eval/loss --ascending
    rlhf-compare --wandb my-team/rlhf --group 2026-01-02_03-04-05     # online, W&B public API
    rlhf-compare --wandb rlhf --group <sweep> --wandb-dir multirun/   # offline W&B run files

Reads each run's own config.yaml, metrics.json and log_history.json (or a W&B run's config,
summary and history) and prints one row per run: the config values that differ between the
runs, then the chosen final metrics, sorted by one of them. Writes compare.csv and one PNG per
plotted metric (its values over steps, one line per run) into --out. `rlhf -m ...` prints the
same table at the end of a local sweep.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

# metrics shown when none are chosen, those that the runs have (stage by stage)
DEFAULT_METRICS = ["eval/loss", "train/loss", "eval/reward_accuracy", "eval/oracle_greedy",
                   "eval/oracle_sampled", "eval/reward_model_sampled", "eval/kl_to_reference",
                   "train_runtime_s"]
# config keys never shown as a difference: where a run was, not how
IGNORED_KEYS = ("_wandb",)


class CompareError(Exception):
    """A problem with the command's inputs: one line, exit code 2."""


@dataclass
class Run:
    name: str
    source: str
    config: dict  # flat, dotted keys
    metrics: dict  # final values
    history: list[dict] = field(default_factory=list)  # {"step": n, metric: value, ...}


def flatten(tree, prefix: str = "") -> dict:
    if isinstance(tree, dict):
        flat = {}
        for key, value in tree.items():
            flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: tree}


# ---------------------------------------------------------------- local runs
def find_runs(paths: list[Path]) -> list[Path]:
    """Run directories (holding config.yaml) given directly, or below a sweep or outputs
    directory; a pipeline's steps are not listed apart from their pipeline."""
    found: list[Path] = []
    for path in paths:
        if not path.is_dir():
            raise CompareError(f"{path}: no such directory")
        if (path / "config.yaml").exists():
            found.append(path)
            continue
        below = sorted(p.parent for p in path.rglob("config.yaml")
                       if ".hydra" not in p.parts and "wandb" not in p.parts)
        below = [p for p in below if not any(q in p.parents for q in below)]
        if not below:
            raise CompareError(f"{path}: no run directory (with config.yaml) in it")
        found += below
    return found


def local_run(path: Path, name: str) -> Run:
    from omegaconf import OmegaConf

    from rlhf.tracking import hf_log_to_metrics

    config = flatten(OmegaConf.to_container(OmegaConf.load(path / "config.yaml")))
    metrics = json.loads((path / "metrics.json").read_text()) \
        if (path / "metrics.json").exists() else {}
    history = []
    if (path / "log_history.json").exists():
        for entry in json.loads((path / "log_history.json").read_text()):
            # the Trainer's entries say "step"; our own loops (ppo) "train/step"
            step = entry.get("step", entry.get("train/step"))
            if step is not None:
                history.append({"step": step, **hf_log_to_metrics(entry)})
    return Run(name, str(path), config, metrics, history)


def local_runs(paths: list[Path]) -> list[Run]:
    dirs = find_runs(paths)
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):  # the same job name in two sweeps: say which sweep
        names = [f"{d.parent.name}/{d.name}" for d in dirs]
    return [local_run(d, n) for d, n in zip(dirs, names)]


# ---------------------------------------------------------------- W&B runs
def numeric(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def from_wandb(record: dict) -> Run:
    config = {k: v for k, v in flatten(record["config"]).items()
              if not k.startswith(IGNORED_KEYS)}
    config = {k[:-len(".value")] if k.endswith(".value") else k: v for k, v in config.items()}
    metrics = {k: v for k, v in record["summary"].items()
               if not k.startswith("_") and (numeric(v) or isinstance(v, str))}
    history = [{"step": row["_step"], **{k: v for k, v in row.items()
                                         if not k.startswith("_") and numeric(v)}}
               for row in record["history"] if "_step" in row]
    return Run(record["run"]["name"] or record["run"]["id"], record["path"], config, metrics,
               history)


def wandb_runs(project: str, group: str | None, offline_dir: Path | None) -> list[Run]:
    from rlhf.evaluation import wandb_runs as wb

    if offline_dir is not None:
        if not offline_dir.is_dir():
            raise CompareError(f"--wandb-dir {offline_dir}: no such directory")
        name = project.rsplit("/", 1)[-1]
        records = [r for r in wb.offline_runs(offline_dir) if r["run"]["project"] == name
                   and (group is None or r["run"]["group"] == group)]
        if not records:
            raise CompareError(f"no offline W&B run of project {name}"
                               f"{f' in group {group}' if group else ''} below {offline_dir}")
        return [from_wandb(r) for r in records]
    try:
        records = wb.online_runs(project, group)
    except Exception as err:  # noqa: BLE001  (no key, no network, no such project: one line)
        reason = " ".join(str(err).split())[:300] or type(err).__name__
        raise CompareError(f"cannot read {project} through the W&B API ({reason}); runs that "
                           "were logged offline are read from their files with --wandb-dir "
                           "<directory holding the runs>, or upload them with `wandb sync`") \
            from None
    if not records:
        raise CompareError(f"W&B project {project} has no runs"
                           f"{f' in group {group}' if group else ''}")
    return [from_wandb(r) for r in records]


# ---------------------------------------------------------------- table, CSV, plots
def differing_keys(runs: list[Run]) -> list[str]:
    """Config keys whose values differ between the runs, the stage's own first."""
    keys = sorted({k for r in runs for k in r.config},
                  key=lambda k: (not k.startswith("stage."), k))
    return [k for k in keys if not k.startswith(IGNORED_KEYS)
            and len({json.dumps(r.config.get(k), sort_keys=True, default=str) for r in runs}) > 1]


def choose_metrics(runs: list[Run], chosen: list[str] | None) -> list[str]:
    if chosen:
        return chosen
    present = [m for m in DEFAULT_METRICS if any(m in r.metrics for r in runs)]
    if present:
        return present
    common = set.intersection(*(set(r.metrics) for r in runs)) if runs else set()
    return sorted(k for k in common if numeric(runs[0].metrics[k]))[:6]


def sort_runs(runs: list[Run], metric: str | None, ascending: bool) -> list[Run]:
    if not metric:
        return runs

    def key(run):
        value = run.metrics.get(metric)
        if not numeric(value) or math.isnan(value):
            return (1, 0.0)  # missing or NaN: last
        return (0, value if ascending else -value)
    return sorted(runs, key=key)


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# differing config keys shown in the table (all of them go to compare.csv): runs of different
# stages differ in dozens
MAX_TABLE_KEYS = 6


def table(runs: list[Run], metrics: list[str], keys: list[str] | None = None) -> str:
    keys = differing_keys(runs) if keys is None else keys
    hidden = len(keys) - MAX_TABLE_KEYS
    keys = keys[:MAX_TABLE_KEYS]
    header = ["run", *keys, *metrics]
    rows = [[r.name, *[cell(r.config.get(k)) for k in keys],
             *[cell(r.metrics.get(m)) for m in metrics]] for r in runs]
    widths = [max(len(x[i]) for x in [header, *rows]) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip()
                      for row in [header, *rows])
    if hidden > 0:
        text += (f"\n({hidden} more config keys differ: choose with --keys, all are in "
                 "compare.csv)")
    return text


def write_csv(runs: list[Run], metrics: list[str], path: Path) -> None:
    keys = differing_keys(runs)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "source", *keys, *metrics])
        for r in runs:
            writer.writerow([r.name, r.source, *[r.config.get(k) for k in keys],
                             *[r.metrics.get(m) for m in metrics]])


def plot(runs: list[Run], metric: str, path: Path) -> int:
    """PNG of `metric` over steps, one line per run that logged it; returns the line count."""
    import matplotlib
    matplotlib.use("Agg")  # headless: no display needed
    import matplotlib.pyplot as plt

    keys = differing_keys(runs)
    fig, ax = plt.subplots(figsize=(8, 5), dpi=100)
    lines = 0
    for run in runs:
        points = [(h["step"], h[metric]) for h in run.history if metric in h]
        if not points:
            continue
        label = " ".join([run.name, *[f"{k.rsplit('.', 1)[-1]}={cell(run.config.get(k))}"
                                      for k in keys if len(keys) <= 3]])
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        lines += 1
    ax.set_xlabel("step")
    ax.set_ylabel(metric)
    ax.set_title(metric)
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return lines


def plot_name(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in metric) + ".png"


def compare(runs: list[Run], metrics: list[str] | None = None, sort: str | None = None,
            ascending: bool = False, plots: list[str] | None = None,
            out: Path | None = None, keys: list[str] | None = None) -> tuple[str, list[Path]]:
    """(table text, PNGs written). compare.csv and the PNGs go to `out` when given. `keys`:
    the config keys shown in the table (default: those that differ between the runs)."""
    chosen = choose_metrics(runs, metrics)
    runs = sort_runs(runs, sort or (chosen[0] if metrics else None), ascending)
    text = table(runs, chosen, keys)
    written = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_csv(runs, chosen, out / "compare.csv")
        if plots is None:
            plots = ["train/loss"] if any("train/loss" in h for r in runs
                                          for h in r.history) else []
        for metric in plots:
            path = out / plot_name(metric)
            if plot(runs, metric, path):
                written.append(path)
            else:
                print(f"rlhf-compare: no run logged {metric} over steps; no plot")
    return text, written


def sweep_summary(sweep: str | Path) -> str:
    """The table `rlhf -m` prints when a local sweep ends."""
    runs = local_runs([Path(sweep)])
    return f"\n=== {len(runs)} runs of the sweep {sweep}\n{compare(runs)[0]}"


# ---------------------------------------------------------------- command line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rlhf-compare", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", type=Path, help="run or sweep directories")
    parser.add_argument("--wandb", metavar="ENTITY/PROJECT",
                        help="read the runs from W&B instead (online: the public API)")
    parser.add_argument("--group", help="with --wandb: the W&B group (a sweep's directory name)")
    parser.add_argument("--wandb-dir", type=Path,
                        help="with --wandb: read offline run files below this directory")
    parser.add_argument("--metrics", help="comma-separated final metrics (default: the usual "
                        "ones the runs have)")
    parser.add_argument("--keys", help="comma-separated config keys shown in the table "
                        "(default: those that differ between the runs)")
    parser.add_argument("--sort", help="sort by this metric (default: the first of --metrics)")
    parser.add_argument("--ascending", action="store_true", help="smallest first (losses)")
    parser.add_argument("--plot", help="comma-separated metrics to plot over steps (default "
                        "train/loss)")
    parser.add_argument("--out", type=Path, help="write compare.csv and the PNGs here")
    args = parser.parse_args(argv)
    try:
        if bool(args.runs) == bool(args.wandb):
            raise CompareError("give run/sweep directories, or --wandb ENTITY/PROJECT")
        if args.wandb_dir and not args.wandb:
            raise CompareError("--wandb-dir reads offline W&B files; add --wandb PROJECT")
        runs = wandb_runs(args.wandb, args.group, args.wandb_dir) if args.wandb \
            else local_runs(args.runs)
        split = (lambda s: [x for x in s.split(",") if x] if s else None)
        text, pngs = compare(runs, split(args.metrics), args.sort, args.ascending,
                             split(args.plot), args.out, split(args.keys))
    except CompareError as err:
        print(f"rlhf-compare: error: {err}", file=sys.stderr)
        return 2
    print(text)
    if args.out:
        print(f"\nwrote {args.out / 'compare.csv'}" + "".join(f", {p}" for p in pngs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
