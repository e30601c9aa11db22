#!/usr/bin/env bash
# ensure-go.sh — a Go toolchain that can build k8s.io/kubernetes@$MVM_KUBE_VERSION; prints its bin dir.
#
#   GO_BIN=$(scripts/k8s/ensure-go.sh) && PATH=$GO_BIN:$PATH
#
# The version needed is what the kubernetes go.mod asks for (its `toolchain` line, else its `go`
# line: v1.37.2 says `go 1.26.0`), read once from the Go module proxy and remembered in the cache.
# A `go` on PATH that is at least that version is used as it is. Otherwise (no Go, or an old one
# such as Debian bookworm's 1.19) the toolchain is fetched the way GOTOOLCHAIN=auto fetches it:
# the module golang.org/toolchain@v0.0.1-<version>.linux-<arch> from the module proxy, checked
# against the Go checksum database (scripts/k8s/go-sumdb.mjs: signed tree head + inclusion proof,
# then the zip's h1 hash), unpacked into a temp dir, checked with `go env GOVERSION`, and renamed
# into place under a lock:
#
#   ${MVM_CACHE_DIR:-/var/cache/mvm}/go/<version>/            the GOROOT (bin/go, ...) + mvm-manifest
#   ${MVM_CACHE_DIR:-/var/cache/mvm}/go-downloads/<mod>.zip   the verified zip + .ziphash, so a
#                                                             broken entry is rebuilt offline
# An entry that exists with its manifest, its tools and the right `go env GOVERSION` is used as
# it is ("cached"), with no network at all; anything else under that name is removed and rebuilt.
#
# Environment:
#   MVM_KUBE_VERSION     Kubernetes version whose go.mod sets the minimum (default v1.37.2)
#   MVM_GO_VERSION       use this version instead of the go.mod's (e.g. go1.26.8): the minimum
#                        for a `go` on PATH and the version fetched
#   MVM_CACHE_DIR        cache root (default /var/cache/mvm)
#   MVM_GO_DOWNLOAD_DIR  where verified zips are kept (default $MVM_CACHE_DIR/go-downloads)
#   MVM_GOPROXY          module proxy (default: the first http(s) entry of GOPROXY, else
#                        https://proxy.golang.org)
#   MVM_GO_SUMDB=off     do not consult the checksum database (then only `go env GOVERSION` is
#                        checked, and the zip is not kept for reuse)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
KUBE_VERSION=${MVM_KUBE_VERSION:-v1.37.2}
CACHE=${MVM_CACHE_DIR:-/var/cache/mvm}
ROOT=$CACHE/go
DL=${MVM_GO_DOWNLOAD_DIR:-$CACHE/go-downloads}
log() { echo "ensure-go: $*" >&2; }
die() { log "$*"; exit 1; }

PROXY=${MVM_GOPROXY:-}
if [[ -z $PROXY ]]; then
  IFS=',|' read -ra entries <<<"${GOPROXY:-}"
  for e in "${entries[@]}"; do [[ $e == http://* || $e == https://* ]] && { PROXY=$e; break; }; done
  PROXY=${PROXY:-https://proxy.golang.org}
fi
PROXY=${PROXY%/}

# Go version strings: go1.26.0, go1.26rc1, go1.20 (a .0 release before Go 1.21).
valid_version() { [[ $1 =~ ^go[0-9]+\.[0-9]+(\.[0-9]+|rc[0-9]+|beta[0-9]+)?$ ]]; }
# version_key go1.26.0 → sortable "00001 00026 00000 9 00000" (release > rc > beta).
version_key() {
  [[ $1 =~ ^go([0-9]+)\.([0-9]+)(\.([0-9]+)|(rc|beta)([0-9]+))?$ ]] || return 1
  local stage=9 num=0
  case ${BASH_REMATCH[5]} in rc) stage=5 num=${BASH_REMATCH[6]} ;; beta) stage=1 num=${BASH_REMATCH[6]} ;; esac
  printf '%05d %05d %05d %d %05d\n' "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "${BASH_REMATCH[4]:-0}" "$stage" "$num"
}
version_ge() { # version_ge A B: A >= B
  local a b
  a=$(version_key "$1") && b=$(version_key "$2") || return 1
  [[ $a == "$b" || $a > $b ]]
}
# The toolchain name a go.mod line stands for: "1.26.0" → go1.26.0; "1.26" → go1.26.0 (Go 1.21+
# language versions); "1.20" → go1.20.
go_line_version() {
  local v=$1
  if [[ $v =~ ^1\.([0-9]+)$ ]] && ((BASH_REMATCH[1] >= 21)); then v=$v.0; fi
  echo "go$v"
}

need_curl() { # curl, unzip and CA certificates, installed from Debian when missing and we are root
  local missing=() t
  for t in curl unzip; do command -v "$t" >/dev/null || missing+=("$t"); done
  [[ -e /etc/ssl/certs/ca-certificates.crt ]] || missing+=(ca-certificates)
  ((${#missing[@]})) || return 0
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    die "needs ${missing[*]} to fetch Go (install them, or put ${WANT:-a new enough Go} or newer on PATH)"
  fi
}

# --- which version, and the go on PATH ------------------------------------------------------------
have='' goroot=''
if command -v go >/dev/null; then
  # GOTOOLCHAIN=local: the version of this binary, not one it would switch to.
  if have=$(cd / && GOTOOLCHAIN=local GOFLAGS='' go env GOVERSION 2>/dev/null) && valid_version "$have"; then
    goroot=$(cd / && GOTOOLCHAIN=local GOFLAGS='' go env GOROOT)
  else
    log "ignoring the go on PATH ($(command -v go)): \`go env GOVERSION\` says '${have:-nothing}'"
    have=
  fi
fi
use_local() { echo "$goroot/bin"; exit 0; }

if [[ -n ${MVM_GO_VERSION:-} ]]; then
  WANT=$MVM_GO_VERSION
  valid_version "$WANT" || die "bad MVM_GO_VERSION '$WANT' (want e.g. go1.26.0)"
  WHY="MVM_GO_VERSION asks for"
else
  case "$KUBE_VERSION" in v1.[0-9]*.[0-9]*) ;; *) die "bad MVM_KUBE_VERSION '$KUBE_VERSION' (want v1.N.M)" ;; esac
  NEEDS=$ROOT/kube-$KUBE_VERSION.needs # module versions are immutable, so this never goes stale
  WHY="k8s.io/kubernetes@$KUBE_VERSION needs"
  WANT=$(cat "$NEEDS" 2>/dev/null || true)
  valid_version "$WANT" || WANT=
  # Read the go.mod (curl is needed, and installed, only when there is no Go >= 1.21 to fall back on).
  if [[ -z $WANT ]] && { command -v curl >/dev/null || [[ -z $have ]] || ! version_ge "$have" go1.21.0; }; then
    need_curl
    if gomod=$(curl -fsSL --retry 2 --max-time 60 "$PROXY/k8s.io/kubernetes/@v/$KUBE_VERSION.mod" 2>/dev/null); then
      golang=$(sed -n 's/^go \([0-9][0-9a-z.]*\)[[:space:]]*$/\1/p' <<<"$gomod" | head -1)
      [[ -n $golang ]] || die "no go line in k8s.io/kubernetes@$KUBE_VERSION's go.mod"
      WANT=$(go_line_version "$golang")
      tc=$(sed -n 's/^toolchain \(go[0-9][0-9a-z.]*\)[[:space:]]*$/\1/p' <<<"$gomod" | head -1)
      if [[ -n $tc ]] && valid_version "$tc" && version_ge "$tc" "$WANT"; then WANT=$tc; fi
      valid_version "$WANT" || die "cannot use the go version '$WANT' of k8s.io/kubernetes@$KUBE_VERSION's go.mod"
      mkdir -p "$ROOT"
      echo "$WANT" >"$NEEDS.$$" && mv -f "$NEEDS.$$" "$NEEDS"
    fi
  fi
fi

if [[ -n $have && -n $WANT ]] && version_ge "$have" "$WANT"; then
  log "using $have from $goroot/bin ($WHY >= $WANT)"
  use_local
elif [[ -n $have && -z $WANT ]] && version_ge "$have" go1.21.0; then
  # We cannot tell which version is needed, so we could not fetch it anyway; a Go >= 1.21
  # switches to the toolchain the module needs by itself (GOTOOLCHAIN=auto) when it can.
  log "did not read k8s.io/kubernetes@$KUBE_VERSION's go.mod ($(command -v curl >/dev/null && echo "$PROXY did not serve it" || echo "no curl")); using $have from $goroot/bin"
  use_local
fi
[[ -n $WANT ]] || die "no usable Go on PATH, and cannot read k8s.io/kubernetes@$KUBE_VERSION's go.mod from $PROXY to know which Go to fetch (set MVM_GO_VERSION, or install Go)"
[[ -z $have ]] || log "$have on PATH ($goroot/bin) is older than the $WANT $WHY: fetching $WANT"

# --- the cache -----------------------------------------------------------------------------------
case $(uname -m) in
  x86_64 | amd64) ARCH=amd64 ;;
  aarch64 | arm64) ARCH=arm64 ;;
  *) die "no prebuilt Go for $(uname -m) here; install $WANT or newer and put it on PATH" ;;
esac
[[ $(uname -s) == Linux ]] || die "fetching Go is only done on Linux; install $WANT or newer"
MOD=golang.org/toolchain
MODV=v0.0.1-$WANT.linux-$ARCH
ENTRY=$ROOT/$WANT

have_entry() {
  local t
  [[ -f $ENTRY/mvm-manifest ]] || return 1
  for t in bin/go bin/gofmt pkg/tool/linux_$ARCH/compile pkg/tool/linux_$ARCH/link pkg/tool/linux_$ARCH/asm; do
    [[ -x $ENTRY/$t ]] || return 1
  done
  [[ $(cd / && env -u GOROOT GOTOOLCHAIN=local GOFLAGS='' "$ENTRY/bin/go" env GOVERSION 2>/dev/null) == "$WANT" ]]
}

if have_entry; then
  log "cached $ENTRY"
  echo "$ENTRY/bin"
  exit 0
fi

mkdir -p "$ROOT"
# One fetcher at a time per cache root; others wait and then find the entry.
exec 9>"$ROOT/.lock"
flock 9
if have_entry; then
  log "cached $ENTRY (fetched by a concurrent run)"
  echo "$ENTRY/bin"
  exit 0
fi
# Leftovers of interrupted runs (we hold the lock, so none is in progress).
rm -rf "$ROOT"/.tmp-* 2>/dev/null || true
if [[ -e $ENTRY ]]; then
  log "removing incomplete or broken entry $ENTRY"
  rm -rf "$ENTRY"
fi

command -v node >/dev/null || die "needs node (to verify the download; see scripts/setup.sh)"
need_curl
TMP=$(mktemp -d "$ROOT/.tmp-$WANT.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
trap 'log "interrupted; nothing cached"; exit 130' INT TERM

secs_since() { awk -v a="$1" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }
t0=$(date +%s.%N)
unpack() { # unpack ZIP EXPECTED_H1 → $TMP/x/$MOD@$MODV; fails unless the files hash to EXPECTED_H1
  rm -rf "$TMP/x" && mkdir "$TMP/x"
  unzip -q -n "$1" -d "$TMP/x" </dev/null || { log "unzip $1 failed"; return 1; }
  [[ -d $TMP/x/$MOD@$MODV ]] || { log "$1 does not hold $MOD@$MODV/"; return 1; }
  local got
  got=$(node "$HERE/go-sumdb.mjs" dirhash "$TMP/x") || return 1
  if [[ -n $2 && $got != "$2" ]]; then
    log "$1 holds files that hash to $got, not the $2 it must have"
    return 1
  fi
  echo "$got" >"$TMP/h1"
}

zip=$DL/$MODV.zip
source=
if [[ -f $zip && -f $zip.ziphash ]]; then
  # Kept by an earlier run after it was checked against the checksum database.
  want_h1=$(cat "$zip.ziphash")
  log "unpacking $WANT from $zip"
  if unpack "$zip" "$want_h1"; then
    source="download cache ($zip, checked against sum.golang.org when it was fetched)"
  else
    log "not trusting $zip any more: removing it and fetching again"
    rm -f "$zip" "$zip.ziphash"
  fi
fi
if [[ -z $source ]]; then
  if [[ ${MVM_GO_SUMDB:-} == off ]]; then
    log "MVM_GO_SUMDB=off: $MOD@$MODV is NOT checked against the checksum database"
    want_h1=
  else
    want_h1=$(node "$HERE/go-sumdb.mjs" lookup "$PROXY" "$MOD" "$MODV") ||
      die "cannot verify $MOD@$MODV against the Go checksum database (see above); nothing fetched (MVM_GO_SUMDB=off skips this check)"
  fi
  log "fetching $WANT ($MOD@$MODV) from $PROXY"
  t1=$(date +%s.%N)
  curl -fsSL --retry 3 --max-time 900 -o "$TMP/dl.zip" "$PROXY/$MOD/@v/$MODV.zip" || die "download of $PROXY/$MOD/@v/$MODV.zip failed"
  log "downloaded $(($(stat -c %s "$TMP/dl.zip") / 1048576)) MiB in $(secs_since "$t1")s"
  unpack "$TMP/dl.zip" "$want_h1" || die "the downloaded $MOD@$MODV does not match the checksum database; nothing cached"
  if [[ -n $want_h1 ]]; then
    source="$PROXY, zip $want_h1 as recorded in sum.golang.org"
    # Keep the verified zip so that a broken entry can be rebuilt without the network.
    mkdir -p "$DL"
    mv -f "$TMP/dl.zip" "$DL/.$MODV.zip.$$" && mv -f "$DL/.$MODV.zip.$$" "$zip"
    echo "$want_h1" >"$DL/.$MODV.ziphash.$$" && mv -f "$DL/.$MODV.ziphash.$$" "$zip.ziphash"
  else
    source="$PROXY, not checked against the checksum database (MVM_GO_SUMDB=off)"
  fi
fi

GOROOT_TMP=$TMP/x/$MOD@$MODV
# Module zips do not carry file modes everywhere: set the execute bits as `go` does after a
# toolchain download (pkg/tool, then bin).
chmod -R a+x "$GOROOT_TMP/pkg/tool" "$GOROOT_TMP/bin"
got=$(cd / && env -u GOROOT GOTOOLCHAIN=local GOFLAGS='' "$GOROOT_TMP/bin/go" env GOVERSION) || die "the fetched go does not run"
[[ $got == "$WANT" ]] || die "the fetched go says it is $got, not $WANT"
{
  echo "version=$WANT"
  echo "module=$MOD@$MODV"
  echo "h1=$(cat "$TMP/h1")"
  echo "source=$source"
  echo "fetched=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
} >"$GOROOT_TMP/mvm-manifest"
chmod 755 "$GOROOT_TMP"
mv -T "$GOROOT_TMP" "$ENTRY"
log "$WANT ready in $ENTRY in $(secs_since "$t0")s (from $source)"
echo "$ENTRY/bin"
