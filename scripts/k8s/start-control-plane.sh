#!/usr/bin/env bash
# start-control-plane.sh <workdir> — start etcd + kube-apiserver on 127.0.0.1 for tests.
#
# Uses the binaries of ensure-control-plane.sh (built/cached on first use).
# Everything lives in <workdir>: certificates, etcd data, logs, pid files,
#   <workdir>/kubeconfig   admin kubeconfig (client cert, group system:masters)
#   <workdir>/env          shell-sourceable: KUBECONFIG, MVM_APISERVER_URL, ports, bin dir
#   <workdir>/admin.token  static bearer token of the same admin (token file auth)
# Prints the env lines on stdout once /readyz is ok. Stop with stop-control-plane.sh <workdir>.
#
# Environment (all optional):
#   MVM_APISERVER_PORT, MVM_ETCD_PORT, MVM_ETCD_PEER_PORT   fixed ports (default: random free)
#   MVM_APISERVER_EXTRA_ARGS   extra kube-apiserver flags (word-split),
#                              e.g. "--disable-admission-plugins=ServiceAccount"
#   MVM_CONTROL_PLANE_TIMEOUT  seconds to wait for /readyz (default 90)
#   MVM_KUBE_BIN               bin dir to use instead of calling ensure-control-plane.sh
#   MVM_CONTROL_PLANE_OWNER_PID  if set, a watchdog runs stop-control-plane.sh when
#                              that process exits (e.g. the test runner: process.pid)
set -euo pipefail

W=${1:?usage: start-control-plane.sh <workdir>}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { echo "start-control-plane: $*" >&2; }

mkdir -p "$W"
W=$(cd "$W" && pwd)
if [[ -f $W/apiserver.pid || -f $W/etcd.pid ]]; then
  log "$W already has a control plane (pid files present); stop it first"
  exit 1
fi

BIN=${MVM_KUBE_BIN:-$("$HERE/ensure-control-plane.sh")}
for b in etcd kube-apiserver kubectl; do [[ -x $BIN/$b ]] || { log "missing $BIN/$b"; exit 1; }; done
command -v openssl >/dev/null || { log "needs openssl (ensure-control-plane.sh installs it)"; exit 1; }

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_port() {
  local p
  for _ in $(seq 1 100); do
    # below Linux's ephemeral range (32768+), so an outgoing connection cannot take it before we bind
    p=$((20000 + (RANDOM * 32768 + RANDOM) % 12000))
    [[ " ${PICKED:-} " == *" $p "* ]] && continue
    if port_free "$p"; then PICKED="${PICKED:-} $p"; echo "$p"; return 0; fi
  done
  return 1
}
PICKED=
API_PORT=${MVM_APISERVER_PORT:-$(pick_port)}; PICKED="$PICKED $API_PORT"
ETCD_PORT=${MVM_ETCD_PORT:-$(pick_port)}; PICKED="$PICKED $ETCD_PORT"
PEER_PORT=${MVM_ETCD_PEER_PORT:-$(pick_port)}
# A given port that is taken would silently attach us to someone else's etcd/apiserver.
for p in "$API_PORT" "$ETCD_PORT" "$PEER_PORT"; do
  port_free "$p" || { log "port 127.0.0.1:$p is already in use"; exit 1; }
done

t0=$(date +%s.%N)
cleanup_on_fail() {
  local rc=$?
  ((rc == 0)) && return 0
  log "failed (rc=$rc); stopping what was started"
  for f in apiserver etcd; do
    [[ -f $W/$f.log ]] && { echo "--- tail $W/$f.log" >&2; tail -n 25 "$W/$f.log" >&2; }
  done
  MVM_KEEP_LOGS=1 "$HERE/stop-control-plane.sh" "$W" >&2 || true
  exit "$rc"
}
trap cleanup_on_fail EXIT
trap 'exit 130' INT TERM

# --- PKI ------------------------------------------------------------------------
P=$W/pki
mkdir -p "$P"
chmod 700 "$P"
(
  cd "$P"
  ossl() { openssl "$@" 2>/dev/null; }
  # ECDSA P-256 keys: fast to generate, accepted everywhere in Kubernetes.
  ossl ecparam -name prime256v1 -genkey -noout -out ca.key
  ossl req -x509 -new -key ca.key -sha256 -days 3650 -subj "/CN=mvm-test-ca" -out ca.crt
  cat >serving.ext <<'EOF'
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
EOF
  ossl ecparam -name prime256v1 -genkey -noout -out serving.key
  ossl req -new -key serving.key -subj "/CN=kube-apiserver" -out serving.csr
  ossl x509 -req -in serving.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 -extfile serving.ext -out serving.crt
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' >client.ext
  ossl ecparam -name prime256v1 -genkey -noout -out admin.key
  ossl req -new -key admin.key -subj "/O=system:masters/CN=mvm-admin" -out admin.csr
  ossl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -sha256 -days 3650 -extfile client.ext -out admin.crt
  # Service-account token signing key pair.
  ossl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key
  ossl pkey -in sa.key -pubout -out sa.pub
  rm -f ./*.csr ./*.ext ca.srl
  chmod 600 ./*.key
)
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN" >"$W/admin.token"
echo "$TOKEN,mvm-admin-token,mvm-admin-token-uid,system:masters" >"$P/tokens.csv"
chmod 600 "$W/admin.token" "$P/tokens.csv"

b64() { base64 -w0 <"$1"; }
cat >"$W/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: mvm-test
  cluster:
    server: https://127.0.0.1:$API_PORT
    certificate-authority-data: $(b64 "$P/ca.crt")
users:
- name: mvm-admin
  user:
    client-certificate-data: $(b64 "$P/admin.crt")
    client-key-data: $(b64 "$P/admin.key")
contexts:
- name: mvm-test
  context:
    cluster: mvm-test
    user: mvm-admin
current-context: mvm-test
EOF
chmod 600 "$W/kubeconfig"

# --- etcd -------------------------------------------------------------------------
# etcd 3.5+ can skip fsync (tests don't need durability); Debian's 3.4 cannot.
etcd_extra=()
etcd_help=$("$BIN/etcd" --help 2>&1 || true)
if [[ $etcd_help == *--unsafe-no-fsync* ]]; then etcd_extra+=(--unsafe-no-fsync); fi
# setsid: own process group, so a test runner's Ctrl-C doesn't race the stop script.
setsid "$BIN/etcd" \
  --name mvm-test \
  --data-dir "$W/etcd-data" \
  --listen-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-advertise-peer-urls "http://127.0.0.1:$PEER_PORT" \
  --initial-cluster "mvm-test=http://127.0.0.1:$PEER_PORT" \
  --initial-cluster-state new \
  --quota-backend-bytes $((2 * 1024 * 1024 * 1024)) \
  --logger zap --log-level warn \
  ${etcd_extra[@]+"${etcd_extra[@]}"} \
  </dev/null >"$W/etcd.log" 2>&1 &
echo $! >"$W/etcd.pid"

# --- kube-apiserver ------------------------------------------------------------
# shellcheck disable=SC2086
setsid "$BIN/kube-apiserver" \
  --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
  --bind-address 127.0.0.1 \
  --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --secure-port "$API_PORT" \
  --cert-dir "$W/pki" \
  --tls-cert-file "$P/serving.crt" \
  --tls-private-key-file "$P/serving.key" \
  --client-ca-file "$P/ca.crt" \
  --token-auth-file "$P/tokens.csv" \
  --authorization-mode RBAC \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$P/sa.pub" \
  --service-account-signing-key-file "$P/sa.key" \
  --api-audiences https://kubernetes.default.svc.cluster.local \
  --service-cluster-ip-range 10.0.0.0/24 \
  --allow-privileged=true \
  --profiling=false \
  --v 1 \
  ${MVM_APISERVER_EXTRA_ARGS:-} \
  </dev/null >"$W/apiserver.log" 2>&1 &
echo $! >"$W/apiserver.pid"

# --- wait for /readyz ----------------------------------------------------------
deadline=$(($(date +%s) + ${MVM_CONTROL_PLANE_TIMEOUT:-90}))
until out=$("$BIN/kubectl" --kubeconfig "$W/kubeconfig" --request-timeout 2s get --raw /readyz 2>/dev/null) && [[ $out == ok ]]; do
  for f in etcd apiserver; do
    kill -0 "$(cat "$W/$f.pid")" 2>/dev/null || { log "$f exited early"; exit 1; }
  done
  (($(date +%s) < deadline)) || { log "timed out waiting for /readyz"; exit 1; }
  sleep 0.2
done
for f in etcd apiserver; do
  kill -0 "$(cat "$W/$f.pid")" 2>/dev/null || { log "$f exited"; exit 1; }
done
t1=$(date +%s.%N)

cat >"$W/env" <<EOF
KUBECONFIG=$W/kubeconfig
MVM_APISERVER_URL=https://127.0.0.1:$API_PORT
MVM_APISERVER_PORT=$API_PORT
MVM_ETCD_URL=http://127.0.0.1:$ETCD_PORT
MVM_ETCD_PORT=$ETCD_PORT
MVM_ETCD_PEER_PORT=$PEER_PORT
MVM_KUBE_BIN=$BIN
MVM_CONTROL_PLANE_READY_SECONDS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')
EOF
if [[ -n ${MVM_CONTROL_PLANE_OWNER_PID:-} ]]; then
  # shellcheck disable=SC2016
  setsid bash -c 'while kill -0 "$1" 2>/dev/null && [[ -f $2/apiserver.pid ]]; do sleep 1; done
    exec "$3" "${2%/}"' mvm-control-plane-watchdog \
    "$MVM_CONTROL_PLANE_OWNER_PID" "$W/" "$HERE/stop-control-plane.sh" </dev/null >/dev/null 2>&1 &
  echo $! >"$W/watchdog.pid"
fi
trap - EXIT
log "ready in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b-a}')s (apiserver 127.0.0.1:$API_PORT, etcd 127.0.0.1:$ETCD_PORT)"
cat "$W/env"
