#!/usr/bin/env bash
# cluster-up.sh — cluster mode on this machine, in the background, on loopback (`make cluster-up`).
#
# Starts, in this order (scripts/k8s/README.md, "One-machine cluster"):
#   1. the test control plane (start-control-plane.sh: etcd + kube-apiserver, random free ports);
#   2. the CRDs (deploy/crds), the namespace and the RBAC of deploy/ (operator, node agent with
#      deploy/firecracker/register-node, API) — before any component, so the operator's leader
#      election finds its namespace;
#   3. a ServiceAccount token per component (TokenRequest, 1 year) in a kubeconfig of its own;
#   4. the operator; two node agents (node-a, node-b), each with its own data dir, cgroup parent,
#      stand-in host network namespace (bridge, veths and nftables tables live there) and address
#      range, registering its own Node (MVM_NODE_REGISTER=true: no kubelet here);
#   5. the API in cluster mode on its own ports (default 127.0.0.1:18080, gRPC 127.0.0.1:18090),
#      so a standalone service on 8080/9090 keeps running beside it.
# Everything lives in one state dir (MVM_CLUSTER_DIR, default /run/mvm-cluster): logs/, run/*.pid,
# kubeconfigs, node data dirs, and `env` (source it: KUBECONFIG, MVM_SERVER, MVM_TOKEN).
# cluster-down.sh removes all of it. A failure half-way runs cluster-down.sh.
#
# Environment: MVM_CLUSTER_DIR, MVM_CLUSTER_NODES ("node-a node-b"), MVM_CLUSTER_API_LISTEN,
# MVM_CLUSTER_GRPC_LISTEN, MVM_CLUSTER_LOG_LEVEL (info), MVM_CACHE_DIR (guest images, kube binaries).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
D=${MVM_CLUSTER_DIR:-/run/mvm-cluster}
NODES=${MVM_CLUSTER_NODES:-node-a node-b}
API_LISTEN=${MVM_CLUSTER_API_LISTEN:-127.0.0.1:18080}
GRPC_LISTEN=${MVM_CLUSTER_GRPC_LISTEN:-127.0.0.1:18090}
LOG_LEVEL=${MVM_CLUSTER_LOG_LEVEL:-info}
NS=microvm-system
NODE_BIN=${NODE:-node}
log() { echo "cluster-up: $*" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
T0=$(now)

[[ $(id -u) -eq 0 ]] || { log "run as root (network namespaces, cgroups, QEMU)"; exit 1; }
for b in agent operator server; do
  [[ -f $REPO/dist/src/cmd/mvm-$b.js ]] || { log "missing dist/src/cmd/mvm-$b.js: run make build"; exit 1; }
done
if [[ -e $D/run || -e $D/control-plane ]]; then
  log "$D holds a cluster already (or what is left of one): make cluster-down first (MVM_CLUSTER_DIR=$D)"
  exit 1
fi
port_taken() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }
for v in API_LISTEN GRPC_LISTEN; do
  a=${!v}
  [[ $a =~ ^[0-9.]+:[0-9]+$ ]] || { log "MVM_CLUSTER_$v must be host:port, got $a"; exit 1; }
  if [[ ${a##*:} != 0 ]] && port_taken "$a"; then log "$a is in use (a standalone service?): set MVM_CLUSTER_$v to a free host:port"; exit 1; fi
done

mkdir -p "$D"/{logs,run,kubeconfigs,nodes,api}
chmod 700 "$D" "$D/kubeconfigs"
D=$(cd "$D" && pwd)
cleanup_on_fail() {
  local rc=$?
  ((rc == 0)) && return 0
  log "failed (rc=$rc); removing what was started (logs: $D/logs kept as /tmp/mvm-cluster-failed-logs)"
  rm -rf /tmp/mvm-cluster-failed-logs && cp -r "$D/logs" /tmp/mvm-cluster-failed-logs 2>/dev/null || true
  for f in "$D"/logs/*.log; do [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }; done
  MVM_CLUSTER_DIR=$D "$HERE/cluster-down.sh" >&2 || true
  exit "$rc"
}
trap cleanup_on_fail EXIT
trap 'exit 130' INT TERM

# --- 1. control plane -------------------------------------------------------------------------
"$HERE/start-control-plane.sh" "$D/control-plane" >/dev/null
# shellcheck disable=SC1091
. "$D/control-plane/env"
ADMIN_KC=$D/control-plane/kubeconfig
k() { "$MVM_KUBE_BIN/kubectl" --kubeconfig "$ADMIN_KC" "$@"; }
T_CP=$(since "$T0")

# --- 2. CRDs, namespace, RBAC -------------------------------------------------------------------
k apply -f "$REPO/deploy/crds" >/dev/null
k wait --for=condition=Established --timeout=60s crd --all >/dev/null
k apply -f "$REPO/deploy/operator/00-namespace.yaml" >/dev/null
for f in operator/rbac.yaml firecracker/rbac.yaml firecracker/rbac-heartbeat.yaml firecracker/register-node/rbac.yaml api/rbac.yaml; do
  k apply -f "$REPO/deploy/$f" >/dev/null
done
until k get microvms -A >/dev/null 2>&1; do sleep 0.1; done

# --- 3. one ServiceAccount token and kubeconfig per component -------------------------------------
CA_DATA=$(base64 -w0 <"$D/control-plane/pki/ca.crt")
kubeconfig() { # kubeconfig <file> <user> <token>
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mvm-cluster
  cluster:
    server: $MVM_APISERVER_URL
    certificate-authority-data: $CA_DATA
users:
- name: $2
  user:
    token: $3
contexts:
- name: mvm-cluster
  context:
    cluster: mvm-cluster
    user: $2
current-context: mvm-cluster
EOF
  chmod 600 "$1"
}
for sa in microvm-operator firecracker-runtime microvm-api; do
  token=$(k create token "$sa" -n "$NS" --duration=8760h)
  kubeconfig "$D/kubeconfigs/$sa.kubeconfig" "$sa" "$token"
done
# The token the API sends to the node agents (deploy/api projects one; here the same account's).
k create token microvm-api -n "$NS" --duration=8760h >"$D/kubeconfigs/microvm-api.agent-token"
chmod 600 "$D/kubeconfigs/microvm-api.agent-token"
# Yours: the control plane's static admin token (system:masters), a bearer token the node agents
# can review too (kubectl mvm).
token=$(cat "$D/control-plane/admin.token")
kubeconfig "$D/kubeconfig" mvm-admin "$token"

start() { # start <name> <env...> -- <binary> — in its own session, logs and pid file in the state dir
  local name=$1 envs=()
  shift
  while [[ $1 != -- ]]; do envs+=("$1"); shift; done
  shift
  env "${envs[@]}" setsid "$NODE_BIN" "$@" </dev/null >>"$D/logs/$name.log" 2>&1 &
  echo $! >"$D/run/$name.pid"
}
alive() { kill -0 "$(cat "$D/run/$1.pid")" 2>/dev/null || { log "$1 exited: see $D/logs/$1.log"; exit 1; }; }
wait_for() { # wait_for <what> <component> <seconds> <command...>
  local what=$1 comp=$2 deadline=$(($(date +%s) + $3))
  shift 3
  until "$@" >/dev/null 2>&1; do
    alive "$comp"
    (($(date +%s) < deadline)) || { log "timed out waiting for $what"; exit 1; }
    sleep 0.2
  done
}

# --- 4. operator, node agents -------------------------------------------------------------------
start operator KUBECONFIG="$D/kubeconfigs/microvm-operator.kubeconfig" POD_NAME=operator-0 POD_NAMESPACE=$NS \
  MVM_HEALTH_LISTEN=127.0.0.1:0 MVM_LOG_LEVEL="$LOG_LEVEL" -- "$REPO/dist/src/cmd/mvm-operator.js"
i=0
for n in $NODES; do
  i=$((i + 1))
  netns=mvm-cluster-$n
  ip netns add "$netns"
  echo "$netns" >>"$D/run/netns"
  ip -n "$netns" link set lo up
  mkdir -p "$D/nodes/$n"
  echo "mvm-cluster-$n" >>"$D/run/cgroups"
  start "agent-$n" KUBECONFIG="$D/kubeconfigs/firecracker-runtime.kubeconfig" NODE_NAME="$n" MVM_NODE_REGISTER=true \
    MVM_DATA_DIR="$D/nodes/$n" MVM_CGROUP_PARENT="mvm-cluster-$n" MVM_NET_HOST_NETNS="$netns" \
    MVM_NET_BRIDGE=mvmcl-br0 MVM_NET_SUBNET="10.$((200 + i)).0.0/16" MVM_NET_GATEWAY="10.$((200 + i)).0.1" \
    MVM_AGENT_LISTEN=127.0.0.1:0 MVM_HEARTBEAT_SECONDS=5 MVM_RESYNC_SECONDS=5 MVM_LOG_LEVEL="$LOG_LEVEL" \
    -- "$REPO/dist/src/cmd/mvm-agent.js"
done

# --- 5. the API in cluster mode -----------------------------------------------------------------
API_TOKEN=$(openssl rand -hex 24)
echo "$API_TOKEN" >"$D/admin.token"
chmod 600 "$D/admin.token"
start api KUBECONFIG="$D/kubeconfigs/microvm-api.kubeconfig" MVM_STORE=kubernetes MVM_LISTEN="$API_LISTEN" \
  MVM_GRPC_LISTEN="$GRPC_LISTEN" MVM_ADMIN_TOKEN="$API_TOKEN" MVM_DATA_DIR="$D/api" \
  MVM_AGENT_TOKEN_FILE="$D/kubeconfigs/microvm-api.agent-token" MVM_LOG_LEVEL="$LOG_LEVEL" \
  -- "$REPO/dist/src/cmd/mvm-server.js"

# --- ready: the operator leads, every node is registered, Ready and reachable, the API answers --------
operator_leads() { [[ -n $(k get lease microvm-operator -n "$NS" -o jsonpath='{.spec.holderIdentity}' 2>/dev/null) ]]; }
node_ready() { # registered by its agent, Ready, its endpoint published
  [[ $(k get node "$1" -o jsonpath='{.metadata.annotations.microvm\.service/agent-endpoint} {.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) =~ ^http.*\ True$ ]]
}
wait_for "the operator's leader election" operator 60 operator_leads
for n in $NODES; do wait_for "node $n" "agent-$n" 120 node_ready "$n"; done
API_URL=
deadline=$(($(date +%s) + 60))
until [[ -n $API_URL ]]; do
  alive api
  API_URL=$(sed -n 's/.*listening on \(http[^ ,]*\).*/\1/p' "$D/logs/api.log" | head -1)
  (($(date +%s) < deadline)) || { log "timed out waiting for the API"; exit 1; }
  [[ -n $API_URL ]] || sleep 0.2
done
GRPC_ADDR=$(sed -n 's/.*gRPC on \([^ ]*\).*/\1/p' "$D/logs/api.log" | head -1)
"$NODE_BIN" -e 'fetch(process.argv[1]).then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))' "$API_URL/healthz" ||
  { log "the API at $API_URL does not answer /healthz"; exit 1; }

cat >"$D/env" <<EOF
export KUBECONFIG=$D/kubeconfig
export MVM_SERVER=$API_URL
export MVM_TOKEN=$API_TOKEN
EOF
chmod 600 "$D/env"
trap - EXIT
log "ready in $(since "$T0")s (control plane ${T_CP}s)"
cat <<EOF
kubeconfig:   $D/kubeconfig   (kubectl: cluster admin)
API:          $API_URL${GRPC_ADDR:+   (gRPC $GRPC_ADDR)}
admin token:  $API_TOKEN   (also in $D/admin.token)
nodes:        $NODES   (node agents registered their Nodes; logs in $D/logs)
Use it:       . $D/env   # sets KUBECONFIG, MVM_SERVER, MVM_TOKEN for kubectl, kubectl mvm and mvm
Stop it:      make cluster-down
EOF
