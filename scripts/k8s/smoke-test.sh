#!/usr/bin/env bash
# smoke-test.sh — end-to-end check of the test control plane: ensure (build or
# cached), start in a temp workdir, get namespaces, server-side dry-run of a CRD
# and a namespaced object, create a CRD + custom object + Node, stop. Prints timings.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

t0=$(date +%s.%N)
BIN=$("$HERE/ensure-control-plane.sh")
t1=$(date +%s.%N)
W=$(mktemp -d /tmp/mvm-k8s-smoke.XXXXXX)
trap '"$HERE/stop-control-plane.sh" "$W"' EXIT
"$HERE/start-control-plane.sh" "$W" >/dev/null
t2=$(date +%s.%N)
k() { "$BIN/kubectl" --kubeconfig "$W/kubeconfig" "$@"; }

k get ns
crd='apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: smokes.mvm.test}
spec:
  group: mvm.test
  names: {kind: Smoke, plural: smokes}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec: {type: object, properties: {vcpus: {type: integer, minimum: 1}}}'
k apply --dry-run=server -f - <<<"$crd"
k apply --dry-run=server -f - <<<'{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"smoke","namespace":"default"},"data":{"a":"b"}}'
k apply -f - <<<"$crd"
k wait --for=condition=Established crd/smokes.mvm.test --timeout=30s
k apply -f - <<<'{"apiVersion":"mvm.test/v1","kind":"Smoke","metadata":{"name":"s1","namespace":"default"},"spec":{"vcpus":1}}'
k create -f - <<<'{"apiVersion":"v1","kind":"Node","metadata":{"name":"smoke-node-1","labels":{"mvm.test/host":"true"}}}'
k get nodes,smokes -A
rss() { ps -o rss= -p "$(cat "$W/$1.pid")" | awk '{printf "%d MiB", $1/1024}'; }
echo "memory: kube-apiserver $(rss apiserver), etcd $(rss etcd)"
t3=$(date +%s.%N)
"$HERE/stop-control-plane.sh" "$W"
trap - EXIT
t4=$(date +%s.%N)
awk -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" -v e="$t4" 'BEGIN{
  printf "timings: ensure %.2fs, start-to-ready %.2fs, checks %.2fs, stop %.2fs\n", b-a, c-b, d-c, e-d }'
echo "smoke: 1 passed, 0 failed"
