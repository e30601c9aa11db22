#!/usr/bin/env bash
# Installs what the project needs on a fresh Debian (bookworm) machine, as root.
# Idempotent and quiet: packages are installed only when missing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Node.js and npm first: every make target needs them. Node: package.json's engines.node;
# npm: package-lock.json is lockfileVersion 3, which npm < 7 cannot read.
need_node=$(sed -n 's/^ *"node": *">= *\([0-9][0-9]*\).*/\1/p' package.json | head -1)
need_node=${need_node:-20}
need_npm=7
node_hint="install Node.js ${need_node} LTS or newer (it brings npm): Debian bookworm's nodejs package is 18, so use NodeSource's node_${need_node}.x apt repository or the linux-x64 tarball from nodejs.org, and make sure its bin dir comes first on PATH"
if ! command -v node >/dev/null; then
  echo "setup: Node.js >= ${need_node} is required and there is no node on PATH: ${node_hint}" >&2
  exit 1
fi
node_version=$(node --version 2>/dev/null || true)
node_major=${node_version#v}; node_major=${node_major%%.*}
if ! [[ $node_major =~ ^[0-9]+$ ]] || ((node_major < need_node)); then
  echo "setup: Node.js >= ${need_node} is required, $(command -v node) is ${node_version:-unknown}: ${node_hint}" >&2
  exit 1
fi
if ! command -v npm >/dev/null; then
  echo "setup: npm >= ${need_npm} is required and there is no npm on PATH (Node ${node_version} from $(command -v node) came without it): ${node_hint}" >&2
  exit 1
fi
npm_version=$(npm --version 2>/dev/null || true)
if ! [[ ${npm_version%%.*} =~ ^[0-9]+$ ]] || ((${npm_version%%.*} < need_npm)); then
  echo "setup: npm >= ${need_npm} is required for package-lock.json (lockfileVersion $(sed -n 's/^ *"lockfileVersion": *\([0-9]*\).*/\1/p' package-lock.json | head -1)), $(command -v npm) is ${npm_version:-unknown}: run \`npm install -g npm@10\`, or ${node_hint}" >&2
  exit 1
fi

APT_PACKAGES=(
  qemu-system-x86 qemu-utils busybox-static e2fsprogs lz4 cpio kmod
  linux-image-cloud-amd64
  iproute2 nftables iptables containernetworking-plugins
  prometheus chromium fonts-dejavu-core
  skopeo umoci docker-registry
  python3 python3-venv
  redis-server
)
if [[ -n "${MVM_EXTRA_APT:-}" ]]; then
  # shellcheck disable=SC2206
  APT_PACKAGES+=(${MVM_EXTRA_APT})
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "setup: missing packages ${missing[*]} — run as root (or install them) first" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Packages such as docker-registry and prometheus would start system services on install:
  # forbid that (policy-rc.d), the project starts what its tests need on loopback itself.
  policy_added=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && policy_added=1
  fi
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if ((policy_added)); then rm -f /usr/sbin/policy-rc.d; fi
fi

# The unprivileged user QEMU drops to after set-up (-runas).
if [[ $(id -u) -eq 0 ]] && ! getent passwd mvm-vmm >/dev/null; then
  useradd --system --no-create-home --shell /usr/sbin/nologin mvm-vmm
fi

# Node dependencies: npm ci when the lock file changed since the last install.
if [[ ! -f node_modules/.package-lock.json ]] || [[ package-lock.json -nt node_modules/.package-lock.json ]]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi

# The Python SDK's end-to-end test (sdk/python) and the OpenAPI fuzz run (test/e2e/openapi-fuzz.test.ts):
# httpx, websockets, pytest, setuptools and schemathesis from PyPI in
# a virtualenv of its own under $MVM_CACHE_DIR, named after the hash of its requirements file (a
# change makes a new one; test/support/sdk.ts finds it the same way), made with Debian's python3
# (not whatever python3 comes first in PATH), and only PyPI is asked (no local wheel directories).
# Nothing is installed system-wide.
py_req=sdk/python/requirements-test.txt
if [[ -f $py_req ]]; then
  py_venv="${MVM_CACHE_DIR:-/var/cache/mvm}/py-venv-$(sha256sum "$py_req" | cut -c1-16)"
  if [[ ! -f $py_venv/.complete ]] || ! grep -qx 'home = /usr/bin' "$py_venv/pyvenv.cfg"; then
    echo "setup: python venv $py_venv"
    rm -rf "$py_venv"
    mkdir -p "$(dirname "$py_venv")"
    /usr/bin/python3 -m venv "$py_venv"
    env -u PIP_FIND_LINKS -u PIP_NO_INDEX -u PIP_EXTRA_INDEX_URL "$py_venv/bin/python" -m pip install -q \
      --disable-pip-version-check --no-input --index-url "${MVM_PYPI_INDEX:-https://pypi.org/simple}" -r "$py_req"
    touch "$py_venv/.complete"
  fi
fi
