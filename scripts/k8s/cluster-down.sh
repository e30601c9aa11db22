#!/usr/bin/env bash
# cluster-down.sh — remove everything cluster-up.sh started or created (`make cluster-down`):
# the API, the operator and the node agents (SIGTERM, then SIGKILL of their process groups), the
# guests (QEMU processes running from the node data dirs), the VMs' network namespaces and the
# nodes' stand-in host namespaces (the bridges, veths and nftables tables live in those), the
# nodes' cgroup parents, template memory in /dev/shm, the control plane, and the state dir.
# Idempotent: a second run, or a run after a failed cluster-up, finds nothing and says so.
#
# Only what this state dir names is touched: processes by its pid files (checked to be ours) and by
# command lines mentioning its node data dirs; namespaces and cgroups by the names cluster-up
# recorded (run/netns, run/cgroups) and the VM records of the node data dirs.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
D=${MVM_CLUSTER_DIR:-/run/mvm-cluster}
log() { echo "cluster-down: $*" >&2; }
if [[ ! -d $D ]]; then
  log "nothing to remove ($D does not exist)"
  exit 0
fi
D=$(cd "$D" && pwd)

# A process of this cluster: started from our pid file, and its environment names this state dir.
ours() { { tr '\0' '\n' <"/proc/$1/environ"; } 2>/dev/null | grep -qF -- "$D/"; }
components=()
for f in "$D"/run/api.pid "$D"/run/operator.pid "$D"/run/agent-*.pid; do [[ -f $f ]] && components+=("$f"); done
pids=()
for f in "${components[@]}"; do
  pid=$(cat "$f")
  if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  fi
done
for _ in $(seq 1 100); do
  left=0
  for pid in "${pids[@]}"; do ours "$pid" && left=1; done
  ((left)) || break
  sleep 0.1
done
for pid in "${pids[@]}"; do
  # Its own session (setsid): the whole group goes, helpers (CNI plugins, qemu-img) included.
  if ours "$pid"; then log "pid $pid ignored SIGTERM for 10 s: SIGKILL"; fi
  kill -KILL -- "-$pid" 2>/dev/null || true
done

# Guests run detached from their agent (own session): every process running from a node data dir.
guests() {
  local p
  for p in /proc/[0-9]*; do
    { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "$D/nodes/" && echo "${p#/proc/}"
  done
}
for _ in 1 2 3 4 5 6 7 8 9 10; do
  mapfile -t g < <(guests)
  ((${#g[@]})) || break
  kill -KILL "${g[@]}" 2>/dev/null || true
  sleep 0.2
done

# Network namespaces: each VM's (named in its network record), then each node's host stand-in.
for rec in "$D"/nodes/*/network/vms/*.json; do
  [[ -f $rec ]] || continue
  ns=$(sed -n 's/.*"netns": *"\([^"]*\)".*/\1/p' "$rec" | head -1)
  [[ -n $ns && -e /var/run/netns/$ns ]] && ip netns del "$ns" 2>/dev/null
done
for dir in "$D"/nodes/*/; do
  [[ -d $dir ]] || continue
  # The agent's naming (src/agent/node-runtime.ts): mvm<sha256(data dir)[0:4]>-<vm id>, for VMs whose record is gone.
  tag=$(printf '%s' "${dir%/}" | sha256sum | cut -c1-4)
  for ns in /var/run/netns/mvm"$tag"-*; do [[ -e $ns ]] && ip netns del "${ns##*/}" 2>/dev/null; done
  # Template memory (src/agent/agent.ts): /dev/shm/mvm-<sha256(data dir)[0:8]>.
  rm -rf "/dev/shm/mvm-$(printf '%s' "${dir%/}" | sha256sum | cut -c1-8)"
done
if [[ -f $D/run/netns ]]; then
  while read -r ns; do
    [[ -n $ns && -e /var/run/netns/$ns ]] && ip netns del "$ns"
  done <"$D/run/netns"
fi

# Cgroup parents of the nodes, on v2 and on every v1 controller: kill what is left, remove depth-first.
if [[ -f $D/run/cgroups ]]; then
  while read -r parent; do
    [[ -n $parent && $parent != */* ]] || continue
    for root in /sys/fs/cgroup /sys/fs/cgroup/*; do
      p=$root/$parent
      [[ -d $p ]] || continue
      while read -r cg; do
        [[ -f $cg/cgroup.kill ]] && echo 1 >"$cg/cgroup.kill" 2>/dev/null
        for f in "$cg"/cgroup.procs; do [[ -f $f ]] && xargs -r kill -KILL <"$f" 2>/dev/null; done
      done < <(find "$p" -depth -type d)
      for _ in 1 2 3 4 5 6 7 8 9 10; do
        find "$p" -depth -type d -exec rmdir {} \; 2>/dev/null
        [[ -d $p ]] || break
        sleep 0.2
      done
      [[ -d $p ]] && log "could not remove cgroup $p (still busy)"
    done
  done <"$D/run/cgroups"
fi

[[ -d $D/control-plane ]] && "$HERE/stop-control-plane.sh" "$D/control-plane"
rm -rf "$D"
log "removed $D and everything it started"
