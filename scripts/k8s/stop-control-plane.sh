#!/usr/bin/env bash
# stop-control-plane.sh <workdir> — stop what start-control-plane.sh started in
# <workdir> (kube-apiserver, then etcd) and remove what it created there.
# Only the processes named by <workdir>/*.pid are signalled, and only if their
# command line still mentions <workdir> (guards against reused pids).
#   MVM_KEEP_LOGS=1   keep <workdir>/{apiserver,etcd}.log
set -uo pipefail

W=${1:?usage: stop-control-plane.sh <workdir>}
[[ -d $W ]] || exit 0
W=$(cd "$W" && pwd)

ours() { # ours <pid> — is it alive and one of ours?
  [[ -r /proc/$1/cmdline ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -qF -- "$W/"
}
stop_one() {
  local f=$W/$1.pid pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  if [[ $pid =~ ^[0-9]+$ ]] && ours "$pid"; then
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 100); do ours "$pid" || break; sleep 0.1; done
    if ours "$pid"; then
      echo "stop-control-plane: $1 ($pid) ignored SIGTERM for 10s; SIGKILL" >&2
      kill -KILL "$pid" 2>/dev/null
      for _ in $(seq 1 50); do ours "$pid" || break; sleep 0.1; done
    fi
  fi
  rm -f "$f"
}
# The watchdog (MVM_CONTROL_PLANE_OWNER_PID) may be the caller: never signal ourselves.
if [[ -f $W/watchdog.pid && $(cat "$W/watchdog.pid") != "$$" ]]; then stop_one watchdog; fi
rm -f "$W/watchdog.pid"
stop_one apiserver
stop_one etcd

rm -rf "$W/pki" "$W/etcd-data"
rm -f "$W/kubeconfig" "$W/admin.token" "$W/env"
[[ ${MVM_KEEP_LOGS:-} == 1 ]] || rm -f "$W/apiserver.log" "$W/etcd.log"
rmdir "$W" 2>/dev/null || true
exit 0
