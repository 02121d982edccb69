#!/usr/bin/env bash
# A one-node Slurm cluster in a directory, for tests of the srun/sbatch launch: munged with its own
# key and socket, slurmctld and slurmd on free ports, all state, logs and pid files under DIR.
# Debian 12's slurm-wlm and munge; proctrack/linuxproc and task/none, so no cgroups are needed.
#
#   slurm_cluster.sh up DIR      start it; DIR/env holds SLURM_CONF for srun/sbatch/squeue
#   slurm_cluster.sh down DIR    stop every daemon it started (idempotent, never fails)
#
# `up` exits 3 with the reason when Slurm cannot run here (not installed, not root, the node never
# becomes idle), so a test can skip; it waits at most 30 s for the node.
set -uo pipefail

die() {
  echo "slurm_cluster: $*" >&2
  exit 1
}
skip() {
  echo "slurm_cluster: $*" >&2
  exit 3
}

free_port() {
  local p
  for _ in $(seq 50); do
    p=$((20000 + RANDOM % 20000))
    (echo >"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
  done
  die "no free TCP port found"
}

cmd_down() {
  local dir="$1"
  for pid_file in "$dir/slurmd.pid" "$dir/slurmctld.pid" "$dir/munge/munged.pid"; do
    [[ -f "$pid_file" ]] || continue
    local pid
    pid="$(cat "$pid_file")"
    kill "$pid" 2>/dev/null
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null
    rm -f "$pid_file"
  done
  # Job steps the daemons left (slurmstepd of this cluster only: its spool directory).
  pgrep -f "slurmstepd.*$dir" | xargs -r kill -9 2>/dev/null
  return 0
}

cmd_up() {
  local dir="$1"
  for tool in munged slurmctld slurmd srun sinfo scontrol; do
    command -v "$tool" >/dev/null || skip "$tool is not installed (apt-get install slurm-wlm munge)"
  done
  [[ "$(id -u)" -eq 0 ]] || skip "needs root (slurmd runs jobs as their user)"
  mkdir -p "$dir/munge" "$dir/state" "$dir/spool" "$dir/log" || die "cannot make $dir"
  chmod 700 "$dir/munge"
  head -c 1024 /dev/urandom >"$dir/munge/munge.key"
  chmod 600 "$dir/munge/munge.key"
  munged --key-file="$dir/munge/munge.key" --socket="$dir/munge/socket" \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/seed" --force 2>"$dir/log/munged.err" ||
    skip "munged does not start here: $(tail -n 1 "$dir/log/munged.err")"
  local node
  node="$(slurmd -C 2>/dev/null | head -n 1)"
  [[ "$node" == NodeName=* ]] || { cmd_down "$dir"; skip "slurmd -C cannot describe this node"; }
  cat >"$dir/slurm.conf" <<EOF
ClusterName=moetest
# Job ids of clusters started side by side must differ: a step's PMIx and spool names carry them.
FirstJobId=$((1000 + (RANDOM * 32768 + RANDOM) % 60000000))
SlurmctldHost=$(hostname)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
AuthInfo=socket=$dir/munge/socket
CredType=cred/munge
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=pmix
ReturnToService=2
$node State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=10 State=UP OverSubscribe=FORCE
EOF
  echo "export SLURM_CONF=$dir/slurm.conf" >"$dir/env"
  export SLURM_CONF="$dir/slurm.conf"
  slurmctld -f "$SLURM_CONF" 2>"$dir/log/slurmctld.err" || {
    cmd_down "$dir"
    skip "slurmctld does not start here: $(tail -n 1 "$dir/log/slurmctld.err")"
  }
  slurmd -f "$SLURM_CONF" 2>"$dir/log/slurmd.err" || {
    cmd_down "$dir"
    skip "slurmd does not start here: $(tail -n 1 "$dir/log/slurmd.err")"
  }
  for _ in $(seq 60); do
    sinfo -h -o %t 2>/dev/null | grep -qx idle && return 0
    sleep 0.5
  done
  local why
  why="$(sinfo -h -o '%t %E' 2>&1 | head -n 1)"
  cmd_down "$dir"
  skip "the node did not become idle within 30 s (${why:-no answer from slurmctld})"
}

case "${1:-}" in
  up) [[ $# -eq 2 ]] || die "usage: up DIR"; cmd_up "$2" ;;
  down) [[ $# -eq 2 ]] || die "usage: down DIR"; cmd_down "$2" ;;
  *) die "usage: $0 up|down DIR" ;;
esac
