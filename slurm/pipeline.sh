#!/usr/bin/env bash
# An experiment's pipeline as a chain of Slurm jobs, one per step, each starting only after
# the previous one succeeded (--dependency=afterok), then a small job writing the summary.
#
#   slurm/pipeline.sh experiment=demo                        # the demo, five jobs + summary
#   slurm/pipeline.sh experiment=demo debug=tiny -- --partition=gpu --gpus-per-node=1
#   slurm/pipeline.sh experiment=demo hydra.run.dir=outputs/slurm/demo-1   # rerun: restarts
#                                                            # at the first unfinished step
#
# Arguments before `--` are rlhf overrides (as for `rlhf experiment=...`); after `--`, sbatch
# options given to every job. Step <name> runs in <pipeline dir>/<name> (the pipeline dir:
# hydra.run.dir, else $RLHF_OUTPUT/<experiment>-pipeline-<time>, RLHF_OUTPUT=outputs/slurm), and
# `{name}` in a later step's overrides is that directory. A step with
# distributed.nproc_per_node=N runs as N Slurm tasks (ranks). Prints the job ids, one line
# per step; the summary job's id is last. Each job is slurm/stage.sbatch (preemption-safe).
#
# Environment: RLHF (the rlhf command, default `rlhf`), RLHF_PYTHON (the Python that has rlhf
# installed, default `python`), RLHF_OUTPUT.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PY=${RLHF_PYTHON:-python}

overrides=()
sbatch_opts=()
while [ $# -gt 0 ]; do
  if [ "$1" = "--" ]; then shift; sbatch_opts=("$@"); break; fi
  overrides+=("$1"); shift
done

base=
rest=()
for o in "${overrides[@]}"; do
  case "$o" in
    hydra.run.dir=*) base=${o#hydra.run.dir=} ;;
    *) rest+=("$o") ;;
  esac
done
if [ -z "$base" ]; then
  exp=pipeline
  for o in "${rest[@]}"; do case "$o" in experiment=*) exp=${o#experiment=}-pipeline ;; esac; done
  base=${RLHF_OUTPUT:-outputs/slurm}/$exp-$(date +%Y-%m-%d_%H-%M-%S)
fi
mkdir -p "$base"
base=$(cd "$base" && pwd)

plan=$("$PY" -m rlhf.slurm_pipeline plan "$base" "${rest[@]}")

previous=
while IFS=$'\t' read -r name tasks args; do
  [ -n "$name" ] || continue
  eval "step_args=($args)"
  dep=()
  [ -n "$previous" ] && dep=(--dependency="afterok:$previous" --kill-on-invalid-dep=yes)
  previous=$(sbatch --parsable --job-name="rlhf-$name" --ntasks-per-node="$tasks" \
    --output="$base/$name.slurm-%j.out" "${dep[@]}" "${sbatch_opts[@]}" \
    "$here/stage.sbatch" "${step_args[@]}")
  echo "$name $previous"
done <<<"$plan"

# the summary table and quality floors, once every step has succeeded
dep=()
[ -n "$previous" ] && dep=(--dependency="afterok:$previous" --kill-on-invalid-dep=yes)
quoted=$(printf '%q ' "${rest[@]}")
summary=$(sbatch --parsable --job-name=rlhf-summary --output="$base/summary.slurm-%j.out" \
  "${dep[@]}" "${sbatch_opts[@]}" \
  --wrap "cd $(printf '%q' "$PWD") && $PY -m rlhf.slurm_pipeline summary $(printf '%q' "$base") $quoted")
echo "summary $summary"
echo "pipeline: $base" >&2
