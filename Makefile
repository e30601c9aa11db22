# MicroVM Service — the two commands: `make run` and `make test`.
SHELL := /bin/bash
NODE  ?= node
export MVM_CACHE_DIR ?= /var/cache/mvm

.PHONY: run test test-unit deps build web images bench bench-instant bench-guest-channel bench-suspend bench-load bench-pool bench-migrate chaos chaos-cluster clean lint control-plane container-images guest-agent sdk-types cluster-up cluster-down install-tools

## Install what is missing (apt packages, npm packages), build, default guest images, then start the service.
run: deps build web images
	$(NODE) dist/src/cmd/mvm-server.js

## The same set-up, then every test (the first run also builds kube-apiserver from the Go module proxy, ~15 min, cached in $(MVM_CACHE_DIR)/kube).
test: deps lint build web images control-plane
	$(NODE) scripts/run-tests.mjs

## The unit tests alone (test/unit): no root, no guests, no control plane; under a minute.
test-unit: deps build
	$(NODE) scripts/run-tests.mjs --layer unit

## ESLint with typescript-eslint's type-aware rules (eslint.config.js): no root, no guests; warnings fail it.
## No --cache: a cached result can miss a finding caused by a type change in another file.
LINT_PATHS := src test bench scripts proto sdk/typescript eslint.config.js
lint: deps
	@npx eslint --max-warnings 0 $(LINT_PATHS)

control-plane:
	@scripts/k8s/ensure-control-plane.sh >/dev/null

## Cluster mode on this machine (scripts/k8s/cluster-up.sh; README "Try the cluster mode"): the test control
## plane, the CRDs and RBAC of deploy/, the operator, two node agents and the API on 127.0.0.1:18080, in the
## background, state in $(MVM_CLUSTER_DIR) (logs, pid files, kubeconfigs, node data dirs; `. $(MVM_CLUSTER_DIR)/env`).
## `make cluster-down` removes all of it. MVM_NO_BUILD=1 skips the set-up and build (the walkthrough test:
## `make test` built everything before).
export MVM_CLUSTER_DIR ?= /run/mvm-cluster
BIN_DIR ?= /usr/local/bin
cluster-up: $(if $(MVM_NO_BUILD),,deps build images control-plane) install-tools
	@scripts/k8s/cluster-up.sh

cluster-down:
	@scripts/k8s/cluster-down.sh

## `mvm`, the kubectl plugin `kubectl-mvm` (kubectl mvm console|metrics|exec) and, if there is no kubectl on
## PATH, the control plane's kubectl, into $(BIN_DIR) (scripts/install-tools.sh).
install-tools: $(if $(MVM_NO_BUILD),,build control-plane)
	@scripts/install-tools.sh "$(BIN_DIR)"

## The guest agent (images/guest/agent, Go): a static binary built into $(MVM_CACHE_DIR)/guest-agent/<hash>/ (prints its path).
guest-agent:
	@scripts/build-guest-agent.sh

deps:
	@scripts/setup.sh

## dist/ is rebuilt from scratch, so nothing compiled from a deleted source survives (dist/web is the dashboard's).
## The TypeScript SDK's package is compiled too, into sdk/typescript/dist (its main: JavaScript +
## declarations, what `npm pack` ships; build output, never committed).
build: deps
	@rm -rf dist/src dist/test dist/bench dist/sdk sdk/typescript/dist
	@npx tsc -p tsconfig.json
	@npx tsc -p sdk/typescript/tsconfig.json

## Regenerate the SDKs' types from the OpenAPI document after a change to src/core/schema.ts or a route
## (sdk/typescript/src/openapi.ts, sdk/python/src/mvm_sdk/models.py); test/unit/sdk-types fails while they are stale.
sdk-types: build
	@$(NODE) scripts/gen-sdk-types.mjs

## The dashboard (React + Vite) into dist/web, served at / by the API process.
web: deps
	@npx tsc -p src/web/tsconfig.json --noEmit
	@npx vite build --config src/web/vite.config.ts --logLevel warn

images: build
	@$(NODE) dist/src/cmd/mvm-images.js build >/dev/null

bench: deps build images
	$(NODE) dist/bench/boot-overhead.js

# OCI images: cold vs warm create, disk blocks of 20 VMs from one image vs 20 copies (README "Benchmarks").
bench-storage: deps build images
	$(NODE) dist/bench/storage.js

# Cluster mode: MicroVM create → Running through operator + node agent vs standalone (README "Benchmarks").
bench-k8s: deps build images control-plane
	$(NODE) dist/bench/k8s-latency.js

# MicroVMPool: scale-up 0 → 20 Ready, cold vs resuming suspended members (README "Benchmarks").
bench-pool: deps build images control-plane
	$(NODE) dist/bench/pool.js

# Cluster mode: migration with memory (downtime, total) vs the cold move, p50 over 5 each (README "Benchmarks").
bench-migrate: deps build images control-plane
	$(NODE) dist/bench/migrate.js

# The real Firecracker vs QEMU through the same service: create → Running, snapshot, restore (README "Benchmarks").
bench-firecracker: deps build images
	$(NODE) dist/bench/firecracker.js

# Templates and the guest agent: template clone vs cold create, exec and file transfer overheads, 50 concurrent clones (README "Benchmarks").
bench-instant: deps build images
	$(NODE) dist/bench/instant-start.js

# The guest agent against raw bytes on the same virtio-serial channel: exec round trips, 100 MiB up and down, create → first exec (README "Benchmarks").
bench-guest-channel: deps build images
	$(NODE) dist/bench/guest-channel.js

# Suspend to disk: resume → ready vs cold create → ready, suspend seconds per GiB of a 1 GiB guest (README "Benchmarks").
bench-suspend: deps build images
	$(NODE) dist/bench/suspend.js

# Scheduler: 10,000 placements over 1,000 simulated nodes, baselines side by side (README "Benchmarks").
bench-scheduler: deps build
	$(NODE) dist/bench/scheduler.js

# Load: 1,000 connections over get/list vs bare Fastify, 200 concurrent creates vs a quota, a 10-minute soak with RSS (README "Benchmarks").
bench-load: deps build
	$(NODE) dist/bench/load.js

# Chaos: ITERATIONS seeded kill -9 iterations (seeds SEED, SEED+1, …) against the real service; a failing seed
# replays exactly with `make chaos SEED=<seed> ITERATIONS=1` (README "Chaos"). CHAOS_JSON=FILE keeps the results.
SEED       ?= 1
ITERATIONS ?= 100
chaos: deps build images
	$(NODE) dist/test/chaos/main.js --seed $(SEED) --iterations $(ITERATIONS) $(if $(CHAOS_JSON),--json $(CHAOS_JSON))

# Cluster mode: the same iterations through the cluster-mode REST API, kill -9 of the node agent, the operator or a VMM.
chaos-cluster: deps build images control-plane
	$(NODE) dist/test/chaos/main.js --mode cluster --seed $(SEED) --iterations $(ITERATIONS) $(if $(CHAOS_JSON),--json $(CHAOS_JSON))

## Container images of the cluster components (deploy/images/Dockerfile), tagged as deploy/ names them:
## <stage>=<image> pairs; test/integration/container-images.test.ts checks them against every `image:` in deploy/.
IMAGE_REGISTRY   ?= microvm-service
IMAGE_TAG        ?= 0.1.0
CONTAINER_IMAGES := api=api operator=operator agent=firecracker-runtime
CONTAINER_ENGINE ?= $(shell for e in docker podman buildah; do command -v $$e >/dev/null 2>&1 && { echo $$e; break; }; done)

container-images:
	@if [[ -z "$(CONTAINER_ENGINE)" ]]; then \
	  echo "container-images: no container engine found: install docker, podman or buildah (or set CONTAINER_ENGINE=<command>)" >&2; \
	  exit 1; \
	fi
	@if ! $(CONTAINER_ENGINE) info >/dev/null 2>&1; then \
	  echo "container-images: $(CONTAINER_ENGINE) is installed but cannot build here (\`$(CONTAINER_ENGINE) info\` fails: daemon not running or no permission)" >&2; \
	  exit 1; \
	fi
	@set -e; for pair in $(CONTAINER_IMAGES); do \
	  stage=$${pair%%=*}; image=$(IMAGE_REGISTRY)/$${pair#*=}:$(IMAGE_TAG); \
	  echo "container-images: $$image (target $$stage) with $(CONTAINER_ENGINE)"; \
	  $(CONTAINER_ENGINE) build -f deploy/images/Dockerfile --target $$stage -t $$image .; \
	done

clean:
	rm -rf dist
