#!/usr/bin/env bash
# install-tools.sh [BIN_DIR] — put the command-line tools on PATH (`make install-tools`, default
# /usr/local/bin): `mvm` (the CLI), `kubectl-mvm` (the kubectl plugin: `kubectl mvm console|metrics|exec`),
# each a two-line wrapper running this checkout's dist/ (so `make build` never breaks them), and
# `kubectl` when there is none on PATH: a link to the one built with the test control plane
# (scripts/k8s/ensure-control-plane.sh builds kube-apiserver and kubectl from the Go module proxy,
# cached per Kubernetes version in $MVM_CACHE_DIR/kube/<version>/bin).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${1:-/usr/local/bin}
NODE_BIN=$(command -v "${NODE:-node}") || { echo "install-tools: no node on PATH" >&2; exit 1; }
mkdir -p "$BIN"
wrapper() { # wrapper <name> <script under dist/src/cmd>
  local tmp
  tmp=$(mktemp "$BIN/.$1.XXXXXX")
  printf '#!/bin/sh\n# installed by make install-tools from %s\nexec %s %s "$@"\n' "$REPO" "$NODE_BIN" "$REPO/dist/src/cmd/$2" >"$tmp"
  chmod 755 "$tmp"
  mv -f "$tmp" "$BIN/$1"
}
wrapper mvm mvm.js
wrapper kubectl-mvm kubectl-mvm.js
if ! command -v kubectl >/dev/null 2>&1 && [[ ! -e $BIN/kubectl ]]; then
  KBIN=$("$REPO/scripts/k8s/ensure-control-plane.sh")
  ln -sfn "$KBIN/kubectl" "$BIN/kubectl"
  echo "install-tools: $BIN/kubectl -> $KBIN/kubectl" >&2
fi
echo "install-tools: $BIN/mvm, $BIN/kubectl-mvm" >&2
