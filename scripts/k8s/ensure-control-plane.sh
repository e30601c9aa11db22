#!/usr/bin/env bash
# ensure-control-plane.sh — make a real Kubernetes control plane (kube-apiserver,
# kubectl, etcd) available for tests, cached outside the repository.
#
#   scripts/k8s/ensure-control-plane.sh          # prints the bin dir on stdout
#   BIN=$(scripts/k8s/ensure-control-plane.sh)   # $BIN/{kube-apiserver,kubectl,etcd}
#
# Cache entry: ${MVM_CACHE_DIR:-/var/cache/mvm}/kube/<version>/bin/{kube-apiserver,kubectl,etcd}
# An entry that exists is complete (it is built in a temp dir and renamed into
# place), so a present entry is used as is ("cached") and nothing is rebuilt.
#
# Go: scripts/k8s/ensure-go.sh (a new enough `go` on PATH, else the toolchain the kubernetes
# go.mod asks for, fetched from the module proxy and checked against sum.golang.org).
# kube-apiserver and kubectl are built from the Go module proxy: a throwaway Go
# module requires k8s.io/kubernetes@<version> and pins every k8s.io/* staging
# module (which k8s.io/kubernetes replaces with ./staging/... paths that are
# not in its module zip) to the matching v0.<minor>.<patch> release.
# etcd: Debian's etcd-server package (3.4), unpacked into the entry (never
# installed as a service); MVM_KUBE_ETCD=build builds go.etcd.io/etcd/server/v3
# (the version k8s.io/kubernetes requires) instead, under its own cache key.
#
# Environment:
#   MVM_KUBE_VERSION   Kubernetes version (default v1.37.2)
#   MVM_CACHE_DIR      cache root (default /var/cache/mvm)
#   MVM_KUBE_ETCD      apt (default) | build
#   MVM_BUILD_P        go build -p (default 1; the machine is shared)
set -euo pipefail

KUBE_VERSION=${MVM_KUBE_VERSION:-v1.37.2}
ETCD_MODE=${MVM_KUBE_ETCD:-apt}
BUILD_P=${MVM_BUILD_P:-1}
CACHE_ROOT=${MVM_CACHE_DIR:-/var/cache/mvm}/kube
# Bump when the recipe changes in a way that needs a rebuild of existing entries.
RECIPE=1

case "$KUBE_VERSION" in
  v1.[0-9]*.[0-9]*) ;;
  *) echo "ensure-control-plane: bad MVM_KUBE_VERSION '$KUBE_VERSION' (want v1.N.M)" >&2; exit 2 ;;
esac
case "$ETCD_MODE" in
  apt) KEY=$KUBE_VERSION ;;
  build) KEY=$KUBE_VERSION-etcd-src ;;
  *) echo "ensure-control-plane: MVM_KUBE_ETCD must be apt or build" >&2; exit 2 ;;
esac
ENTRY=$CACHE_ROOT/$KEY
log() { echo "ensure-control-plane: $*" >&2; }

have_entry() {
  [[ -x $ENTRY/bin/kube-apiserver && -x $ENTRY/bin/kubectl && -x $ENTRY/bin/etcd ]] &&
    grep -qx "recipe=$RECIPE" "$ENTRY/manifest" 2>/dev/null
}

if have_entry; then
  log "cached $ENTRY"
  echo "$ENTRY/bin"
  exit 0
fi

mkdir -p "$CACHE_ROOT"
# One builder at a time per cache root; others wait and then find the entry.
exec 9>"$CACHE_ROOT/.lock"
flock 9
if have_entry; then
  log "cached $ENTRY (built by a concurrent run)"
  echo "$ENTRY/bin"
  exit 0
fi
# Leftovers of interrupted builds (we hold the lock, so none is in progress).
rm -rf "$CACHE_ROOT"/.tmp-* 2>/dev/null || true
if [[ -e $ENTRY ]]; then
  log "removing stale/incomplete entry $ENTRY"
  rm -rf "$ENTRY"
fi

apt_ready=
apt_install() { # apt_install pkg... — installs the missing ones, quietly
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  ((${#missing[@]})) || return 0
  log "apt-get install ${missing[*]}"
  [[ -n $apt_ready ]] || { apt-get update -qq >/dev/null; apt_ready=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# openssl is what start-control-plane.sh uses for certificates.
apt_install ca-certificates openssl util-linux

# The Go toolchain: the `go` on PATH if it is new enough for this kubernetes version, else the one
# ensure-go.sh fetched from the module proxy (verified, cached in $MVM_CACHE_DIR/go/<version>).
GO_BIN=$("$(dirname "${BASH_SOURCE[0]}")/ensure-go.sh") || { log "no usable Go toolchain (see above)"; exit 1; }
export PATH="$GO_BIN:$PATH"
unset GOROOT

TMP=$(mktemp -d "$CACHE_ROOT/.tmp-$KEY.XXXXXX")
CHILD=
trap 'rm -rf "$TMP"' EXIT
# Builds run in their own session (setsid) and are waited for with `wait`, so a
# SIGINT/SIGTERM to this script stops the whole build at once and removes $TMP.
on_signal() {
  [[ -z $CHILD ]] || kill -TERM -- "-$CHILD" 2>/dev/null || true
  [[ -z $CHILD ]] || wait "$CHILD" 2>/dev/null || true
  log "interrupted; nothing cached"
  exit 130
}
trap on_signal INT TERM
mkdir -p "$TMP/bin" "$TMP/src"

BUILD_LOG=$CACHE_ROOT/.build-$KEY.log
: >"$BUILD_LOG"
run_logged() { # run_logged cmd... — output to $BUILD_LOG (MVM_VERBOSE=1: stderr); its tail on failure
  local rc=0
  if [[ ${MVM_VERBOSE:-} == 1 ]]; then setsid "$@" </dev/null >&2 & else setsid "$@" </dev/null >>"$BUILD_LOG" 2>&1 & fi
  CHILD=$!
  wait "$CHILD" || rc=$?
  CHILD=
  ((rc == 0)) || { log "failed ($rc): $*"; tail -n 40 "$BUILD_LOG" >&2; }
  return "$rc"
}

export GOFLAGS="-mod=mod -buildvcs=false" GOTOOLCHAIN=${GOTOOLCHAIN:-auto} CGO_ENABLED=0
export GOMAXPROCS=${GOMAXPROCS:-2}

t0=$(date +%s)
# --- kube-apiserver + kubectl from the module proxy --------------------------
minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
patch=${KUBE_VERSION##*.}
STAGING_VERSION=v0.$minor.$patch
log "building kube-apiserver + kubectl $KUBE_VERSION (staging $STAGING_VERSION); cold builds take 10-20 min; log: $BUILD_LOG"
kmod=$(cd "$TMP/src" && go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')
[[ -f $kmod ]] || { log "could not fetch k8s.io/kubernetes@$KUBE_VERSION from the module proxy"; exit 1; }
go_line=$(grep -m1 '^go ' "$kmod")
godebug_line=$(grep -m1 '^godebug ' "$kmod" || true)
staging=$(sed -n 's#^[[:space:]]*\(k8s\.io/[a-z0-9.-]*\) => \./staging/src/.*#\1#p' "$kmod")
[[ -n $staging ]] || { log "no staging replaces found in $kmod"; exit 1; }
{
  echo "module mvm.local/kube-build"
  echo
  echo "$go_line"
  [[ -z $godebug_line ]] || echo "$godebug_line"
  echo
  echo "require k8s.io/kubernetes $KUBE_VERSION"
  echo
  echo "replace ("
  for m in $staging; do echo "	$m => $m $STAGING_VERSION"; done
  echo ")"
} >"$TMP/src/go.mod"

build_date=$(sed -n 's/.*"Time":"\([^"]*\)".*/\1/p' "${kmod%.mod}.info" 2>/dev/null || true)
ld="-s -w"
for pkg in k8s.io/client-go/pkg/version k8s.io/component-base/version; do
  ld+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
  ld+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=${build_date:-1970-01-01T00:00:00Z}"
done
run_logged nice -n 19 go -C "$TMP/src" build -p "$BUILD_P" -trimpath -tags selinux,notest,grpcnotrace \
  -ldflags "$ld" -o "$TMP/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl
t1=$(date +%s)
log "kube-apiserver + kubectl built in $((t1 - t0))s"

# --- etcd --------------------------------------------------------------------
if [[ $ETCD_MODE == apt ]]; then
  # Unpack Debian's etcd-server into the entry instead of installing it: its
  # postinst would start a system etcd on 127.0.0.1:2379 through the init script.
  if [[ -x /usr/bin/etcd ]] && dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q 'install ok installed'; then
    cp /usr/bin/etcd "$TMP/bin/etcd"
    etcd_src="etcd-server $(dpkg-query -W -f='${Version}' etcd-server) (installed)"
  else
    apt_install dpkg
    mkdir -p "$TMP/deb" "$TMP/etcd-root"
    if ! (cd "$TMP/deb" && apt-get download -qq etcd-server >/dev/null 2>&1); then
      apt-get update -qq >/dev/null
      (cd "$TMP/deb" && apt-get download -qq etcd-server >/dev/null)
    fi
    dpkg-deb -x "$TMP"/deb/etcd-server_*.deb "$TMP/etcd-root"
    cp "$TMP/etcd-root/usr/bin/etcd" "$TMP/bin/etcd"
    etcd_src="etcd-server $(dpkg-deb -f "$TMP"/deb/etcd-server_*.deb Version) (unpacked .deb)"
    rm -rf "$TMP/deb" "$TMP/etcd-root"
  fi
else
  etcd_version=$(sed -n 's#^[[:space:]]*go\.etcd\.io/etcd/server/v3 \(v[^ ]*\).*#\1#p' "$kmod" | head -1)
  etcd_version=${etcd_version:-v3.6.5}
  log "building etcd $etcd_version from go.etcd.io/etcd/server/v3"
  mkdir -p "$TMP/etcd-src"
  cat >"$TMP/etcd-src/go.mod" <<EOF
module mvm.local/etcd-build

$go_line

require go.etcd.io/etcd/server/v3 $etcd_version
EOF
  cat >"$TMP/etcd-src/main.go" <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  run_logged nice -n 19 go -C "$TMP/etcd-src" build -p "$BUILD_P" -trimpath -ldflags "-s -w" -o "$TMP/bin/etcd" .
  etcd_src="go.etcd.io/etcd/server/v3 $etcd_version (built)"
fi
t2=$(date +%s)

# --- smoke check, manifest, atomic publish ------------------------------------
"$TMP/bin/kube-apiserver" --version >/dev/null
"$TMP/bin/kubectl" version --client >/dev/null
"$TMP/bin/etcd" --version >/dev/null
{
  echo "recipe=$RECIPE"
  echo "kubernetes=$KUBE_VERSION"
  echo "staging=$STAGING_VERSION"
  echo "etcd=$etcd_src"
  echo "go=$(go env GOVERSION)"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$((t2 - t0))"
} >"$TMP/manifest"
# Keep the throwaway modules' go.mod/go.sum as a record of exactly what was built.
mkdir -p "$TMP/build"
for d in src etcd-src; do
  [[ -d $TMP/$d ]] || continue
  mkdir -p "$TMP/build/$d"
  cp "$TMP/$d"/go.* "$TMP/build/$d/" 2>/dev/null || true
  rm -rf "${TMP:?}/$d"
done
chmod 755 "$TMP"
mv -T "$TMP" "$ENTRY"
trap - EXIT
log "built $ENTRY in $((t2 - t0))s"
echo "$ENTRY/bin"
