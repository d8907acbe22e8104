"""The cluster path on a real Slurm: `slurm/local-cluster.sh start` installs (if missing) and
starts a one-node cluster on this machine (slurmctld, slurmd, munge), and every test submits
real jobs to it. Jobs are tiny (debug=tiny); each runs `nice -n 19` with one thread.

(a) a sweep with hydra/launcher=slurm: one Slurm job (array task) per point, one W&B group;
(b) slurm/stage.sbatch with 2 tasks: a 2-rank ZeRO-2 stage, ranks from Slurm's variables;
(c) slurm/pipeline.sh: the steps as a chain of afterok jobs, {name} -> the step's run dir;
(d) USR2 mid-training: checkpoint, requeue, resume; the same steps, losses and W&B run id as
    an uninterrupted job;
(e) SIGKILL while a checkpoint is being written: the requeued job drops the unfinished one and
    resumes from the previous complete checkpoint.
(d') the same for ppo, whose loop is our own (rlhf/stages/ppo.py), not the Trainer's;
(f) a second sweep over a pipeline's DPO beta: its jobs reuse the first sweep's SFT run (stage
    caching); the point both sweeps share reuses its DPO run too, the other trains DPO.
(d) and (e) are one job's life (preempted, then killed, then finished) beside the
uninterrupted reference job, to keep the time down.

A requeued job waits ~2 minutes before Slurm starts it again (its BeginTime); the tests move
that to now with `scontrol update JobId=<id> StartTime=now`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from rlhf.evaluation.wandb_runs import offline_run as run_summary

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(1200)]

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent


# ---------------------------------------------------------------- the cluster and its jobs
@pytest.fixture(scope="session")
def slurm_cluster():
    """The local cluster, installed (apt-get) and started if needed; seconds when running."""
    if os.geteuid() != 0 and shutil.which("sinfo") is None:
        pytest.fail("the slurm tests install and start a local cluster: run them as root")
    started = time.time()
    done = subprocess.run([str(REPO / "slurm" / "local-cluster.sh"), "start"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    print(f"\nlocal Slurm cluster ready in {time.time() - started:.1f} s: "
          f"{done.stderr.strip().splitlines()[-1]}")
    return True


@pytest.fixture(scope="session")
def slurm_env(slurm_cluster, cache_dir) -> dict:
    """The environment jobs are submitted with (sbatch passes it on): this venv first on PATH,
    the session's demo data and tiny model, one thread, nice."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RLHF_RUN_DIR", "WANDB_MODE", "HYDRA_FULL_ERROR",
                        # this process's W&B service (set once a test here used W&B)
                        "WANDB_SERVICE")
           and not k.startswith("SLURM_")}
    env.update(PATH=f"{VENV_BIN}:{env.get('PATH', '')}", RLHF_CACHE_DIR=str(cache_dir),
               OMP_NUM_THREADS="1", RLHF=f"nice -n 19 {VENV_BIN / 'rlhf'}",
               RLHF_PYTHON=str(VENV_BIN / "python"))
    return env


def sbatch(args: list[str], env: dict, cwd: Path) -> str:
    done = subprocess.run(["sbatch", "--parsable", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)
    return done.stdout.strip().split(";")[0]


def job(job_id: str) -> dict:
    """`scontrol show job` as a dict (finished jobs stay visible for MinJobAge=600 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True,
                         text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out.splitlines()[0])) if out.strip() else {}


def wait_for(predicate, timeout: float, what: str, every: float = 0.5, seen=None):
    """Polls until `predicate()` is truthy; `seen()` says what was last seen, on a timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    last = f" (last seen: {seen()})" if seen else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{last}")


# a pending job with one of these reasons waits for a cluster that will never fit it
NEVER_STARTS = ("PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit")


def wait_done(job_id: str, timeout: float = 900) -> dict:
    ended = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY")
    last: dict = {}

    def ended_or_stuck():
        last.update(job(job_id))
        if last.get("JobState") == "PENDING" and last.get("Reason") in NEVER_STARTS:
            nodes = subprocess.run(["sinfo", "-N", "-o", "%N %T %c"], capture_output=True,
                                   text=True).stdout
            raise AssertionError(f"job {job_id} can never start (Reason={last['Reason']}, "
                                 f"NumCPUs={last.get('NumCPUs')}); the cluster:\n{nodes}")
        return dict(last) if last.get("JobState") in ended else None

    return wait_for(ended_or_stuck, timeout, f"job {job_id} to end",
                    seen=lambda: f"JobState={last.get('JobState')} Reason={last.get('Reason')}")


def start_now_when_requeued(job_id: str, timeout: float = 300) -> None:
    """A requeued job waits ~120 s (BeginTime) before it may start again: start it now, but
    not within the second its last run was killed. slurmd revokes a killed job's credential
    at that second and takes a new one only if it was made in a later second (whole-second
    times). Started at once, a job ended FAILED without running, twice (slurmd.log: "Job N
    already killed, do not launch batch job"; docs/notes.md, Slurm)."""
    wait_for(lambda: job(job_id).get("JobState") == "PENDING", timeout,
             f"job {job_id} to be requeued")
    time.sleep(1.5)
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True)


def metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def losses(run_dir: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in json.loads((run_dir / "log_history.json").read_text())
            if "loss" in h}


def wandb_segments(run_dir: Path) -> list[dict]:
    """Each offline W&B segment of a run directory, oldest first."""
    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    return [run_summary(f) for f in files]


# ---------------------------------------------------------------- the cluster itself
def test_the_local_cluster_offers_every_cpu_of_this_machine(slurm_cluster):
    """`make test` starts the cluster from a worker with OMP_NUM_THREADS=1, which GNU `nproc`
    honours: the node once had CPUs=1, and a 2-task job pended forever (PartitionConfig)."""
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout
    assert int(cpus.split()[0]) == len(os.sched_getaffinity(0))


# ---------------------------------------------------------------- (a) sweep as jobs
def test_sweep_with_the_slurm_launcher_runs_one_job_per_point(slurm_env, tmp_path):
    sweep = tmp_path / "sweep"
    done = subprocess.run(
        ["nice", "-n", "19", str(VENV_BIN / "rlhf"), "-m", "hydra/launcher=slurm",
         "stage=sft", "debug=tiny", "stage.learning_rate=1e-3,2e-3",
         "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=1",
         "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20",
         "logger=wandb", "logger.mode=offline", f"hydra.sweep.dir={sweep}"],
        env=slurm_env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    jobs = sorted(p.name for p in (sweep / ".submitit").iterdir() if re.match(r"\d+_\d+$", p.name))
    assert len(jobs) == 2 and {j.split("_")[1] for j in jobs} == {"0", "1"}  # one job array
    assert len({j.split("_")[0] for j in jobs}) == 1
    for j in jobs:  # submitit returns once the result is written; the job ends just after
        assert wait_done(j, 120)["JobState"] == "COMPLETED", job(j)
    groups = set()
    for n, rate in [(0, 1e-3), (1, 2e-3)]:
        run_dir = sweep / f"{n}_sft"
        assert metrics(run_dir)["train/steps"] == 4
        assert OmegaConf.load(run_dir / "config.yaml").stage.learning_rate == rate
        (segment,) = wandb_segments(run_dir)
        groups.add(segment["run"]["group"])
        assert segment["run"]["name"] == f"{n}_sft stage.learning_rate={rate}"
        assert segment["config"]["stage"]["learning_rate"] == rate
    assert groups == {sweep.name}


# ---------------------------------------------------------------- (b) sbatch, 2 ranks
def test_stage_sbatch_runs_a_two_rank_zero_stage(slurm_env, tmp_path):
    run_dir = tmp_path / "zero2"
    job_id = sbatch(["--ntasks=2", f"--output={tmp_path}/job.out",
                     str(REPO / "slurm" / "stage.sbatch"), "stage=sft", "debug=tiny",
                     "distributed=zero2", "stage.global_batch_size=16",
                     "stage.per_device_batch_size=8", f"hydra.run.dir={run_dir}"],
                    slurm_env, tmp_path)
    state = wait_done(job_id)
    out = (tmp_path / "job.out").read_text()
    assert state["JobState"] == "COMPLETED", out[-4000:]
    assert "2 task(s)" in out and "srun exited with 0" in out
    assert metrics(run_dir)["train/steps"] == 4
    # 16 = 8 per rank x 2 ranks: no accumulation, so 2 ranks really shared the batch
    assert OmegaConf.load(run_dir / "config.yaml").distributed.zero.stage == 2
    shards = list((run_dir / "trainer").glob("checkpoint-4/global_step4/*optim_states.pt"))
    assert len(shards) == 2, shards  # one ZeRO-2 optimizer shard per rank
    assert (run_dir / "trainer" / "checkpoint-4" / "complete.json").exists()


# ---------------------------------------------------------------- (c) pipeline as a chain
def test_pipeline_runs_as_a_chain_of_dependent_jobs(slurm_env, tmp_path):
    base = tmp_path / "pipeline"
    steps = ('pipeline.steps=[{name:sft,stage:sft},'
             '{name:ev,stage:eval,overrides:["model.path={sft}","debug.max_eval_rows=4"]}]')
    done = subprocess.run([str(REPO / "slurm" / "pipeline.sh"), "stage=pipeline", "debug=tiny",
                           steps, f"hydra.run.dir={base}"], env=slurm_env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ids = dict(line.split() for line in done.stdout.splitlines())
    assert list(ids) == ["sft", "ev", "summary"]
    # submitted at once, each waiting for the one before it
    assert job(ids["ev"])["Dependency"].startswith(f"afterok:{ids['sft']}")
    assert job(ids["summary"])["Dependency"].startswith(f"afterok:{ids['ev']}")
    states = {name: wait_done(i) for name, i in ids.items()}
    assert {s["JobState"] for s in states.values()} == {"COMPLETED"}, states
    assert states["ev"]["StartTime"] >= states["sft"]["EndTime"]
    assert OmegaConf.load(base / "ev" / "config.yaml").model.path == str(base / "sft")
    summary = json.loads((base / "summary.json").read_text())
    assert list(summary) == ["sft", "ev"] and summary["sft"]["train/steps"] == 4
    assert summary["ev"]["eval/num_prompts"] == 4
    # submitted again over the same directory: the finished steps are not run again
    again = subprocess.run([str(REPO / "slurm" / "pipeline.sh"), "stage=pipeline", "debug=tiny",
                            steps, f"hydra.run.dir={base}"], env=slurm_env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout + again.stderr
    assert [line.split()[0] for line in again.stdout.splitlines()] == ["summary"]
    assert "step sft already finished" in again.stderr
    wait_done(again.stdout.split()[-1])


# ---------------------------------------------------------------- (d), (e) preemption
# stage.cache=false: the preempted job must train, not reuse the reference job's finished run
PREEMPTED = ["stage=sft", "debug=tiny", "debug.max_steps=12", "stage.save_every_steps=1",
             "stage.logging_steps=1", "logger=wandb", "logger.mode=offline", "stage.cache=false"]


def rank_pids(run_dir: Path) -> list[int]:
    """The rlhf processes of a run (their command line names its directory)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"python" in c for c in cmd[:1]) and f"hydra.run.dir={run_dir}".encode() in cmd:
            pids.append(int(proc.name))
    return pids


def submit_twice(args: list[str], env: dict, tmp: Path) -> list[tuple[Path, str]]:
    """The same stage as two jobs side by side, A (to be interrupted) and B (the reference):
    their run directories tmp/a, tmp/b and job ids; their output in tmp/a.out, tmp/b.out."""
    script = str(REPO / "slurm" / "stage.sbatch")
    return [(tmp / name, sbatch([f"--output={tmp}/{name}.out", script, *args,
                                 f"hydra.run.dir={tmp / name}"], env, tmp))
            for name in ("a", "b")]


@pytest.fixture(scope="module")
def preempted_job(slurm_env, tmp_path_factory):
    """Job A is sent USR2 (the pre-timeout signal) after its 2nd checkpoint, requeued, and on
    its second run SIGKILLed while it writes a checkpoint, then requeued by hand (as a node
    failure would); job B, the same command, runs through untouched beside it."""
    tmp = tmp_path_factory.mktemp("preempt")
    (a, job_a), (b, job_b) = submit_twice(PREEMPTED, slurm_env, tmp)
    seen = {"job": job_a}
    # (d) the pre-timeout signal, as --signal=B:USR2@<s> delivers it, mid-training
    wait_for(lambda: (a / "trainer" / "checkpoint-2" / "complete.json").exists(), 600,
             "job A's second checkpoint", every=0.1)
    subprocess.run(["scancel", "--signal=USR2", "--batch", job_a], check=True)
    start_now_when_requeued(job_a)
    seen["saved_at_preemption"] = max(int(p.parent.name.split("-")[1])
                                      for p in (a / "trainer").glob("checkpoint-*/complete.json"))
    # (e) killed hard (SIGKILL) once the requeued job has resumed and saved a new checkpoint,
    # with the half-written checkpoint such a kill leaves when it lands mid-save: catching a
    # real save in its few milliseconds is a race the test would lose on a quiet machine, so
    # the unfinished checkpoint-<next> is planted (a copy without complete.json, one file cut)
    wait_for(lambda: "resuming from" in (tmp / "a.out").read_text(), 600,
             "job A to resume", every=0.2)
    first_new = seen["saved_at_preemption"] + 1
    wait_for(lambda: (a / "trainer" / f"checkpoint-{first_new}" / "complete.json").exists(),
             600, "job A's first checkpoint after the resume", every=0.002)
    for pid in rank_pids(a):
        os.kill(pid, signal.SIGKILL)
    seen["complete_when_killed"] = sorted(
        int(p.parent.name.split("-")[1]) for p in (a / "trainer").glob("checkpoint-*/complete.json"))
    ckpt = a / "trainer" / f"checkpoint-{max(seen['complete_when_killed']) + 1}"
    if not ckpt.exists():  # the kill came between two saves: leave what one mid-save leaves
        shutil.copytree(ckpt.with_name(f"checkpoint-{max(seen['complete_when_killed'])}"), ckpt)
        (ckpt / "complete.json").unlink()
        largest = max((f for f in ckpt.rglob("*") if f.is_file()), key=lambda f: f.stat().st_size)
        largest.write_bytes(largest.read_bytes()[:largest.stat().st_size // 2])
    seen["killed_in"] = ckpt
    wait_for(lambda: job(job_a).get("JobState") in ("FAILED", "COMPLETED", "CANCELLED"), 120,
             "job A to die")
    seen["half_written_after_kill"] = ckpt.is_dir() and not (ckpt / "complete.json").exists()
    subprocess.run(["scontrol", "requeue", job_a], check=True)
    start_now_when_requeued(job_a)
    seen["a"], seen["b"] = wait_done(job_a), wait_done(job_b)
    seen["a_out"] = (tmp / "a.out").read_text()
    seen["b_out"] = (tmp / "b.out").read_text()
    seen["dirs"] = a, b
    return seen


def test_preempted_job_checkpoints_requeues_and_finishes_like_an_uninterrupted_one(
        preempted_job):
    seen, (a, b) = preempted_job, preempted_job["dirs"]
    out = seen["a_out"]
    assert seen["a"]["JobState"] == seen["b"]["JobState"] == "COMPLETED", out[-4000:]
    assert "caught SIGUSR2" in out
    assert f"checkpoint saved; requeueing Slurm job {seen['job']}" in out
    assert f"resuming from {a}/trainer/checkpoint-{seen['saved_at_preemption']}" in out
    assert "(restart 1)" in out and "(restart 2)" in out
    # the same steps and the same losses, step by step, as the job that was never stopped
    assert metrics(a)["train/steps"] == metrics(b)["train/steps"] == 12
    ours, theirs = losses(a), losses(b)
    assert sorted(ours) == sorted(theirs) == list(range(1, 13))
    assert ours == pytest.approx(theirs, rel=1e-5, abs=1e-6)
    # one W&B run, continued: every segment (preempted, killed, last) has the id kept in the
    # run directory, and the steps logged after the resume come after those logged before
    # the preemption (the killed segment may have lost its records with its process)
    run_id = (a / "wandb_run_id").read_text().strip()
    folders = sorted(a.glob("wandb/offline-run-*"))
    assert len(folders) == 3 and {f.name.rsplit("-", 1)[1] for f in folders} == {run_id}
    segments = wandb_segments(a)
    assert segments[0]["run"]["id"] == segments[-1]["run"]["id"] == run_id
    first, last = ([h["_step"] for h in s["history"] if "_step" in h]
                   for s in (segments[0], segments[-1]))
    assert first and max(first) == seen["saved_at_preemption"]
    assert last and min(last) > max(first) and max(last) == 12


def test_job_killed_while_checkpointing_resumes_from_the_previous_complete_one(preempted_job):
    seen, (a, _) = preempted_job, preempted_job["dirs"]
    killed = seen["killed_in"]
    assert seen["half_written_after_kill"], "the kill came after the checkpoint was complete"
    previous = max(seen["complete_when_killed"])
    assert previous < int(killed.name.split("-")[1])
    out = seen["a_out"].split("(restart 2)", 1)[1]
    assert f"removing the unfinished checkpoint {killed}" in out
    assert f"resuming from {a}/trainer/checkpoint-{previous}" in out
    assert metrics(a)["train/steps"] == 12


# ---------------------------------------------------------------- (d') ppo's own loop
# 8 answers of at most 8 tokens per rollout (~0.5 s a step), no held-out evaluation
PPO_PREEMPTED = ["stage=ppo", "debug=tiny", "debug.max_steps=8", "stage.save_every_steps=1",
                 "stage.global_batch_size=8", "stage.per_device_batch_size=8",
                 "stage.max_new_tokens=8", "data.eval_prompts=null",
                 "stage.logging_steps=1", "stage.cache=false", "stage.critic_init=policy",
                 "stage.reward_funcs=[{_target_: rlhf.rewards.length.LengthPenalty, "
                 "max_words: 3}]"]


def test_preempted_ppo_job_resumes_its_own_loop_like_an_uninterrupted_one(slurm_env, tmp_path):
    (a, job_a), (b, job_b) = submit_twice(PPO_PREEMPTED, slurm_env, tmp_path)
    wait_for(lambda: (a / "trainer" / "checkpoint-2" / "ppo_state.json").exists(), 600,
             "the ppo job's second checkpoint", every=0.1)
    subprocess.run(["scancel", "--signal=USR2", "--batch", job_a], check=True)
    start_now_when_requeued(job_a)
    state_a, state_b = wait_done(job_a), wait_done(job_b)
    out = (tmp_path / "a.out").read_text()
    assert state_a["JobState"] == state_b["JobState"] == "COMPLETED", out[-4000:]
    assert "caught SIGUSR2" in out and f"requeueing Slurm job {job_a}" in out
    resumed = re.search(r"resuming stage=ppo from \S+checkpoint-(\d+) \(step (\d+)", out)
    assert resumed and 2 <= int(resumed.group(2)) < 8, out[-4000:]
    # every step once, in order, with the same rollouts, rewards and losses as job B's
    ours, theirs = (json.loads((d / "log_history.json").read_text()) for d in (a, b))
    assert [h["train/step"] for h in ours] == [h["train/step"] for h in theirs] == \
        list(range(1, 9))
    for key in ("ppo/score_mean", "ppo/kl", "ppo/kl_coef", "ppo/policy_loss", "ppo/value_loss",
                "ppo/response_length"):
        assert [h[key] for h in ours] == pytest.approx([h[key] for h in theirs],
                                                       rel=1e-4, abs=1e-6), key
    assert metrics(a)["train/steps"] == 8


# ---------------------------------------------------------------- (f) cached stages
CACHED_PIPELINE = ('pipeline.steps=[{name:sft,stage:sft},'
                   '{name:dpo,stage:dpo,overrides:["model.path={sft}","debug.max_eval_rows=4"]}]')


def test_a_second_beta_sweep_reuses_the_first_sweeps_sft_run(slurm_env, tmp_path):
    env = {**slurm_env, "RLHF_STAGE_CACHE_DIR": str(tmp_path / "stage_cache")}

    def sweep(name: str, betas: str) -> Path:
        done = subprocess.run(
            ["nice", "-n", "19", str(VENV_BIN / "rlhf"), "-m", "hydra/launcher=slurm",
             "stage=pipeline", "debug=tiny", CACHED_PIPELINE,
             f"+pipeline.step_overrides.dpo.stage.beta={betas}",
             "hydra.launcher.gpus_per_node=null", "hydra.launcher.tasks_per_node=1",
             "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=20",
             f"hydra.sweep.dir={tmp_path / name}"],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
        return tmp_path / name

    first = sweep("first", "0.1") / "0_pipeline"
    assert (first / "sft" / "trainer").is_dir() and not (first / "sft" / "cached_from.json").exists()
    second = sweep("second", "0.1,0.3")
    for n, beta in [(0, 0.1), (1, 0.3)]:
        job_dir = second / f"{n}_pipeline"
        assert json.loads((job_dir / "sft" / "cached_from.json").read_text())["run_dir"] == \
            str(first / "sft")
        assert f"reusing the finished run {first / 'sft'}" in \
            (job_dir / "sft" / "step.log").read_text()
        assert not (job_dir / "sft" / "trainer").exists()
        assert OmegaConf.load(job_dir / "dpo" / "config.yaml").stage.beta == beta
        assert metrics(job_dir / "dpo")["train/steps"] == 4
    # beta 0.1 again: its DPO read the reused copy of SFT (another directory), which is known
    # by the SFT run's key, so the first sweep's DPO is reused too; beta 0.3 trained
    reused = second / "0_pipeline" / "dpo" / "cached_from.json"
    assert json.loads(reused.read_text())["run_dir"] == str(first / "dpo")
    assert not (second / "1_pipeline" / "dpo" / "cached_from.json").exists()
    assert (second / "1_pipeline" / "dpo" / "trainer").is_dir()
