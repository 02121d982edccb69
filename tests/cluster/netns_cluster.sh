#!/usr/bin/env bash
# A cluster of N "hosts" on this machine, for tests of multi-node runs: each node is a network
# namespace with its own hostname (a UTS namespace per process started in it), joined to the
# others by veth links to a bridge in a hub namespace (addresses 10.254.0.1.. exist only inside
# these namespaces). Open MPI starts its remote daemons through a launch agent that enters the
# node's namespace instead of ssh (plm_rsh_agent); TCP between nodes, shared memory within one.
# Each node gets its own CPUs, as a real host has (this process's CPUs split evenly, taskset on
# the node's daemon, hence on its ranks), when there are at least as many CPUs as nodes; with
# fewer, the nodes share them all. Unconfined, two nodes' ranks on shared cores run in step or
# not as the scheduler happens to place them, for seconds at a time.
#
#   netns_cluster.sh up DIR NODES SLOTS    make the namespaces; DIR (new, empty) keeps the state
#   netns_cluster.sh mpirun DIR ARGS...    mpirun ARGS across the nodes (from node0), SLOTS per node
#   netns_cluster.sh exec DIR NODE CMD...  CMD inside node NODE's namespace, as that host
#   netns_cluster.sh pids DIR NODE         the processes running in node NODE's namespace
#   netns_cluster.sh down DIR              remove everything `up` made (idempotent, never fails)
#
# Needs root (ip netns, unshare --uts); `up` exits 3 with the reason when namespaces cannot be made
# here, so a test can skip. Names carry `up`'s process id, so runs side by side do not collide.
set -uo pipefail

die() {
  echo "netns_cluster: $*" >&2
  exit 1
}

state() { cat "$1/$2"; }

cmd_down() {
  local dir="$1"
  [[ -f "$dir/prefix" ]] || return 0
  local prefix nodes
  prefix="$(state "$dir" prefix)"
  nodes="$(state "$dir" nodes)"
  for ((k = 0; k < nodes; ++k)); do
    local ns="$prefix-node$k"
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null
    ip netns del "$ns" 2>/dev/null
    rm -rf "/etc/netns/$ns"
  done
  ip netns pids "$prefix-hub" 2>/dev/null | xargs -r kill -9 2>/dev/null
  ip netns del "$prefix-hub" 2>/dev/null
  rm -f "$dir/prefix"
  return 0
}

cmd_up() {
  local dir="$1" nodes="$2" slots="$3"
  [[ "$nodes" =~ ^[0-9]+$ && "$nodes" -ge 2 && "$nodes" -le 200 ]] || die "NODES must be 2..200"
  [[ "$slots" =~ ^[0-9]+$ && "$slots" -ge 1 ]] || die "SLOTS must be >= 1"
  mkdir -p "$dir" || die "cannot make $dir"
  [[ ! -f "$dir/prefix" ]] || die "$dir already holds a cluster (down it first)"
  if [[ "$(id -u)" -ne 0 ]]; then
    echo "netns_cluster: needs root (ip netns, unshare --uts)" >&2
    exit 3
  fi
  local prefix="moe$$"
  local hub="$prefix-hub"
  if ! ip netns add "$hub" 2>"$dir/why"; then
    echo "netns_cluster: network namespaces are not available here: $(cat "$dir/why")" >&2
    exit 3
  fi
  echo "$prefix" >"$dir/prefix"
  echo "$nodes" >"$dir/nodes"
  echo "$slots" >"$dir/slots"
  local cpus=() per
  mapfile -t cpus < <(taskset -pc $$ | sed 's/.*: //' | tr ',' '\n' |
    awk -F- '{ for (c = $1; c <= ($2 == "" ? $1 : $2); ++c) print c }')
  per=$((${#cpus[@]} / nodes))
  # A node with fewer CPUs than ranks: Open MPI's waits yield (it does so itself only when the
  # hostfile's slots are oversubscribed, and here they are not).
  local yield=0
  if (((per > 0 ? per : ${#cpus[@]}) < slots)); then yield=1; fi
  echo "$yield" >"$dir/yield"
  set -e
  trap 'cmd_down "$dir"' ERR
  ip netns exec "$hub" ip link add br0 type bridge
  ip netns exec "$hub" ip link set br0 up
  : >"$dir/hostfile"
  local hosts="127.0.0.1 localhost"$'\n'
  for ((k = 0; k < nodes; ++k)); do hosts+="10.254.0.$((k + 1)) node$k"$'\n'; done
  for ((k = 0; k < nodes; ++k)); do
    local ns="$prefix-node$k"
    ip netns add "$ns"
    mkdir -p "/etc/netns/$ns"
    printf '%s' "$hosts" >"/etc/netns/$ns/hosts"  # `ip netns exec` mounts it over /etc/hosts
    echo "node$k" >"/etc/netns/$ns/hostname"
    ip netns exec "$ns" ip link set lo up
    ip link add "$prefix-e$k" type veth peer name "$prefix-h$k"
    ip link set "$prefix-e$k" netns "$ns"
    ip link set "$prefix-h$k" netns "$hub"
    ip netns exec "$hub" ip link set "$prefix-h$k" master br0
    ip netns exec "$hub" ip link set "$prefix-h$k" up
    ip netns exec "$ns" ip addr add "10.254.0.$((k + 1))/16" dev "$prefix-e$k"
    ip netns exec "$ns" ip link set "$prefix-e$k" up
    echo "node$k slots=$slots" >>"$dir/hostfile"
    local mine="${cpus[*]}"
    if ((per > 0)); then mine="${cpus[*]:$((k * per)):per}"; fi
    echo "${mine// /,}" >"$dir/cpus_node$k"
  done
  # The launch agent Open MPI calls as `agent HOST CMD...` in place of ssh.
  cat >"$dir/agent" <<EOF
#!/bin/sh
host="\$1"; shift
exec taskset -c "\$(cat "$dir/cpus_\$host")" ip netns exec "$prefix-\$host" unshare --uts /bin/sh -c 'hostname "\$0"; exec /bin/sh -c "\$1"' "\$host" "\$*"
EOF
  chmod +x "$dir/agent"
  trap - ERR
  set +e
}

# As `host` (node0 for mpirun): a shell inside its namespace with its hostname.
as_host() {
  local dir="$1" host="$2"
  shift 2
  exec taskset -c "$(state "$dir" "cpus_$host")" ip netns exec "$(state "$dir" prefix)-$host" \
    unshare --uts /bin/sh -c \
    'hostname "$0"; exec "$@"' "$host" "$@"
}

cmd_mpirun() {
  local dir="$1"
  shift
  [[ -f "$dir/prefix" ]] || die "no cluster in $dir (run up first)"
  as_host "$dir" node0 mpirun --allow-run-as-root --oversubscribe --bind-to none \
    --hostfile "$dir/hostfile" \
    --mca plm_rsh_agent "$dir/agent" --mca oob_tcp_if_include 10.254.0.0/16 \
    --mca btl_tcp_if_include 10.254.0.0/16 --mca btl self,vader,tcp \
    --mca mpi_yield_when_idle "$(state "$dir" yield)" "$@"
}

case "${1:-}" in
  up) [[ $# -eq 4 ]] || die "usage: up DIR NODES SLOTS"; cmd_up "$2" "$3" "$4" ;;
  down) [[ $# -eq 2 ]] || die "usage: down DIR"; cmd_down "$2" ;;
  mpirun) [[ $# -ge 3 ]] || die "usage: mpirun DIR ARGS..."; shift; cmd_mpirun "$@" ;;
  exec) [[ $# -ge 4 ]] || die "usage: exec DIR NODE CMD..."; as_host "$2" "$3" "${@:4}" ;;
  pids) [[ $# -eq 3 ]] || die "usage: pids DIR NODE"; ip netns pids "$(state "$2" prefix)-$3" ;;
  *) die "usage: $0 up|mpirun|exec|pids|down ..." ;;
esac
