#!/usr/bin/env bash
# The node agents' TLS (ADR 0026): a CA of their own and one serving certificate per node, for the
# name <node>.agent.microvm.service (what the API verifies, MVM_AGENT_TLS_SERVER_NAME), as two
# Secrets in microvm-system that deploy/firecracker and deploy/api mount:
#   microvm-agent-tls  ca.crt, <node>.crt, <node>.key for every node (the DaemonSet picks its own)
#   microvm-agent-ca   ca.crt only (the API trusts it)
# The CA key stays in --dir (default ./microvm-agent-pki), not in the cluster. Run it again to add
# nodes or to renew: certificates are re-issued, the Secrets replaced, and agents and API pick the
# new files up without a restart (kubelet refreshes the mounted Secret within about a minute).
#   deploy/tls/gen-agent-certs.sh                 # nodes labelled microvm.service/kvm=true
#   deploy/tls/gen-agent-certs.sh node-a node-b   # these nodes
#   deploy/tls/gen-agent-certs.sh --new-ca ...    # rotate the CA too (agents and API follow; both CAs
#                                                 # are trusted until every node has its new certificate)
#   deploy/tls/gen-agent-certs.sh --dry-run ...   # print the Secrets instead of applying them
set -euo pipefail

dir=./microvm-agent-pki
namespace=microvm-system
days=365
new_ca=0
dry=0
nodes=()
while (($#)); do
  case $1 in
    --dir) dir=$2; shift 2 ;;
    --namespace) namespace=$2; shift 2 ;;
    --days) days=$2; shift 2 ;;
    --new-ca) new_ca=1; shift ;;
    --dry-run) dry=1; shift ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) nodes+=("$1"); shift ;;
  esac
done
if ((${#nodes[@]} == 0)); then
  mapfile -t nodes < <(kubectl get nodes -l microvm.service/kvm=true -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}')
fi
((${#nodes[@]})) || { echo "no nodes: name them, or label them microvm.service/kvm=true" >&2; exit 1; }

mkdir -p "$dir"
chmod 700 "$dir"
umask 077
if [[ $new_ca == 1 || ! -f $dir/ca.key ]]; then
  [[ -f $dir/ca.crt ]] && cp "$dir/ca.crt" "$dir/ca-previous.crt"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -sha256 -days $((days * 3)) \
    -subj "/CN=microvm-agent-ca" -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi
# The bundle the API trusts: the CA, and the previous one while a rotation is under way.
cat "$dir/ca.crt" > "$dir/bundle.crt"
[[ $new_ca == 1 && -f $dir/ca-previous.crt ]] && cat "$dir/ca-previous.crt" >> "$dir/bundle.crt"

files=(--from-file=ca.crt="$dir/bundle.crt")
for n in "${nodes[@]}"; do
  [[ $n =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || { echo "not a node name: $n" >&2; exit 2; }
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$n.agent.microvm.service" \
    -keyout "$dir/$n.key" -out "$dir/$n.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s.agent.microvm.service\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n' "$n" > "$dir/$n.ext"
  openssl x509 -req -in "$dir/$n.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days "$days" -sha256 \
    -extfile "$dir/$n.ext" -out "$dir/$n.crt" 2>/dev/null
  rm -f "$dir/$n.csr" "$dir/$n.ext"
  files+=(--from-file="$n.crt=$dir/$n.crt" --from-file="$n.key=$dir/$n.key")
done

secrets() {
  kubectl create secret generic microvm-agent-tls -n "$namespace" "${files[@]}" --dry-run=client -o yaml
  echo ---
  kubectl create secret generic microvm-agent-ca -n "$namespace" --from-file=ca.crt="$dir/bundle.crt" --dry-run=client -o yaml
}
if [[ $dry == 1 ]]; then secrets; else secrets | kubectl apply -f -; fi
echo "agent certificates for ${nodes[*]} (CA in $dir)" >&2
