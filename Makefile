# MicroVM Service — the two commands: `make run` and `make test`.
SHELL := /bin/bash
NODE  ?= node
export MVM_CACHE_DIR ?= /var/cache/mvm

.PHONY: run test deps build web images bench clean lint control-plane

## Install what is missing (apt packages, npm packages), build, default guest images, then start the service.
run: deps build web images
	$(NODE) dist/src/cmd/mvm-server.js

## The same set-up, then every test (the first run also builds kube-apiserver from the Go module proxy, ~15 min, cached in $(MVM_CACHE_DIR)/kube).
test: deps build web images control-plane
	$(NODE) scripts/run-tests.mjs

control-plane:
	@scripts/k8s/ensure-control-plane.sh >/dev/null

deps:
	@scripts/setup.sh

build: deps
	@npx tsc -p tsconfig.json

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

# Scheduler: 10,000 placements over 1,000 simulated nodes, baselines side by side (README "Benchmarks").
bench-scheduler: deps build
	$(NODE) dist/bench/scheduler.js

clean:
	rm -rf dist
