#!/usr/bin/env bash
# build-guest-agent.sh — build the guest agent (images/guest/agent, Go) into a cache outside the
# repository and print the binary's path.
#
#   AGENT=$(scripts/build-guest-agent.sh)     # or: make guest-agent
#
# The binary is static Linux x86-64 (CGO_ENABLED=0, -trimpath, stripped). Cache entry:
#
#   ${MVM_CACHE_DIR:-/var/cache/mvm}/guest-agent/<hash>/mvm-agent   (+ manifest)
#
# <hash> covers the recipe, the Go version and every source file of the module (go.mod, go.sum,
# *.go except tests), so a rerun with nothing changed prints the cached path without building.
# Builds happen in a temp dir renamed into place under a lock: a present entry is complete.
# Go comes from scripts/k8s/ensure-go.sh (the go on PATH if new enough, else a verified
# toolchain from the module proxy); the one dependency, golang.org/x/sys, from the module proxy.
#
# Environment: MVM_CACHE_DIR (default /var/cache/mvm), MVM_GUEST_AGENT_KEEP (entries kept, default 8).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$HERE")
SRC=$REPO/images/guest/agent
CACHE=${MVM_CACHE_DIR:-/var/cache/mvm}/guest-agent
KEEP=${MVM_GUEST_AGENT_KEEP:-8}
# Bump when the build recipe changes in a way that needs a rebuild.
RECIPE=1
log() { echo "build-guest-agent: $*" >&2; }

GO_BIN=$("$HERE/k8s/ensure-go.sh")
GO=$GO_BIN/go
GOVERSION=$(cd / && GOTOOLCHAIN=local GOFLAGS='' "$GO" env GOVERSION)
VERSION=$(sed -n 's/^  "version": "\([^"]*\)".*/\1/p' "$REPO/package.json" | head -1)

HASH=$(
  {
    echo "recipe=$RECIPE go=$GOVERSION target=linux/amd64 version=$VERSION"
    cd "$SRC" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) ! -name '*_test.go' -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
  } | sha256sum | cut -c1-16
)
ENTRY=$CACHE/$HASH

if [[ -x $ENTRY/mvm-agent && -f $ENTRY/manifest ]]; then
  log "cached $ENTRY"
  echo "$ENTRY/mvm-agent"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9
if [[ -x $ENTRY/mvm-agent && -f $ENTRY/manifest ]]; then
  log "cached $ENTRY (built by a concurrent run)"
  echo "$ENTRY/mvm-agent"
  exit 0
fi
rm -rf "$CACHE"/.tmp-* 2>/dev/null || true
[[ -e $ENTRY ]] && { log "removing incomplete entry $ENTRY"; rm -rf "$ENTRY"; }

TMP=$(mktemp -d "$CACHE/.tmp-$HASH.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
t0=$(date +%s.%N)
(
  cd "$SRC"
  CGO_ENABLED=0 GOOS=linux GOARCH=amd64 GOTOOLCHAIN=local GOFLAGS=-mod=readonly \
    "$GO" build -trimpath -buildvcs=false \
    -ldflags "-s -w -buildid= -X main.version=$VERSION -X main.build=$HASH" \
    -o "$TMP/mvm-agent" .
)
secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
size=$(stat -c %s "$TMP/mvm-agent")
{
  echo "hash=$HASH"
  echo "version=$VERSION"
  echo "go=$GOVERSION"
  echo "size=$size"
  echo "build_seconds=$secs"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$TMP/manifest"
chmod 755 "$TMP"
mv -T "$TMP" "$ENTRY"
trap - EXIT
log "built $ENTRY/mvm-agent ($size bytes, $GOVERSION) in ${secs}s"

# Keep the newest $KEEP entries.
ls -1dt "$CACHE"/*/ 2>/dev/null | tail -n +$((KEEP + 1)) | while read -r old; do rm -rf "$old"; done
echo "$ENTRY/mvm-agent"
