#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the `slurm` tests and for trying the cluster
# path on a laptop: Debian's slurmctld + slurmd + munge, one partition `debug` with all of
# this machine's CPUs and 90% of its memory.
#
#   slurm/local-cluster.sh start    # install what is missing (apt-get, root), start; idempotent
#   slurm/local-cluster.sh status   # exit 0 when the node answers and takes jobs
#   slurm/local-cluster.sh stop     # stop the daemons this script started
#
# Runs as root (apt-get, daemons as SlurmUser=root). It writes /etc/slurm/slurm.conf only if
# there is none or the one there was written by this script: a real cluster's config is never
# touched (and `start` then only checks that it answers). No slurmdbd: `sacct` is not needed
# (see slurm/README.md). Logs: /var/log/slurm/{slurmctld,slurmd}.log.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# written by rlhf slurm/local-cluster.sh"
LOGDIR=/var/log/slurm
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { echo "local-cluster: $*" >&2; }

need_root() {
  if [ "$(id -u)" != 0 ]; then
    log "run as root (installs packages and starts daemons)"; exit 1
  fi
}

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -1 || true; }

answers() {
  # the controller answers and the node takes jobs (idle, mixed or allocated)
  scontrol ping 2>/dev/null | grep -q UP || return 1
  case "$(node_state)" in idle*|mix*|alloc*|complet*) return 0 ;; *) return 1 ;; esac
}

install() {
  local missing=()
  command -v slurmctld >/dev/null || missing+=(slurmctld)
  command -v slurmd >/dev/null || missing+=(slurmd)
  command -v sbatch >/dev/null || missing+=(slurm-client)
  command -v munged >/dev/null || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # the packages' own service start-up fails without systemd; we start the daemons ourselves
  apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
}

write_conf() {
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF exists and is not ours: using it as it is"; return 1
  fi
  local host cpus mem
  host=$(hostname -s)
  # not plain `nproc`: it honours OMP_NUM_THREADS, and a cluster started from a process with
  # OMP_NUM_THREADS=1 (a test worker) got CPUs=1, where a 2-task job pends forever
  # (Reason=PartitionConfig)
  cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
  mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
  mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGDIR"
  local tmp
  tmp=$(mktemp "$CONF.XXXXXX")
  cat >"$tmp" <<EOF
$MARK
ClusterName=rlhf-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGDIR/slurmctld.log
SlurmdLogFile=$LOGDIR/slurmd.log
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
  chmod 644 "$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then rm -f "$tmp"; return 1; fi
  mv "$tmp" "$CONF"   # returns 0: the config changed
}

pid_alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start_daemons() {
  mkdir -p /run/munge && chown munge:munge /run/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  if ! pid_alive /run/munge/munged.pid; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged
  fi
  if ! pid_alive /run/slurmctld.pid; then
    log "starting slurmctld"
    /usr/sbin/slurmctld
  fi
  if ! pid_alive /run/slurmd.pid; then
    log "starting slurmd"
    /usr/sbin/slurmd
  fi
}

start() {
  if command -v scontrol >/dev/null && answers; then
    # a cluster of ours whose config no longer matches this machine (e.g. written with fewer
    # CPUs) restarts with the new one: slurmctld reads node sizes only when it starts
    if [ "$(id -u)" = 0 ] && grep -qF "$MARK" "$CONF" 2>/dev/null && write_conf; then
      log "slurm.conf changed ($(grep -o 'CPUs=[0-9]*' "$CONF")): restarting the daemons"
      stop
    else
      log "running ($(node_state), $(sinfo -h -o '%c CPUs, partition %P'))"; return 0
    fi
  fi
  need_root
  install
  write_conf || true
  start_daemons
  local i
  for i in $(seq 1 60); do
    if answers; then
      log "up: node $(hostname -s), $(sinfo -h -o '%c CPUs, partition %P') ($(node_state))"
      return 0
    fi
    # a node left down by an earlier run (ReturnToService=2 clears most cases)
    if [ "$i" = 10 ]; then
      scontrol update NodeName="$(hostname -s)" State=RESUME 2>/dev/null || true
    fi
    sleep 0.5
  done
  log "did not come up; see $LOGDIR/slurmctld.log and $LOGDIR/slurmd.log"
  sinfo -N -l >&2 || true
  exit 1
}

stop() {
  need_root
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    log "$CONF is not ours: not stopping that cluster"; exit 1
  fi
  local f
  for f in /run/slurmd.pid /run/slurmctld.pid /run/munge/munged.pid; do
    if pid_alive "$f"; then
      local pid
      pid=$(cat "$f")
      log "stopping $(basename "$f" .pid) ($pid)"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
  done
}

status() {
  if command -v scontrol >/dev/null && answers; then
    sinfo -N -o '%N %T %c %m %P'
    squeue -h -o '%i %j %T %M' | sed 's/^/job /'
    return 0
  fi
  log "not running"
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
