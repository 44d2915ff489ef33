#!/usr/bin/env bash
# The controller's memory with many Secrets it has no business with: N (default 5000) unrelated
# Secrets of ~2 KiB in another namespace, the controller run with --watch-namespace, its RSS
# read from /proc once its watches have listed. Run it for two binaries in one go and compare
# the figures of that run (the machine is shared: absolute numbers drift).
#
#   scripts/secret-watch-rss.sh BINARY [BINARY...]    # env: N=5000 SETTLE=20 ROUNDS=2
#
# Uses the control plane of $KUBECONFIG when set, else starts one and stops it again. Creates
# the namespaces rss-unrelated, rss-team and rss-rx and deletes them at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ $# -ge 1 ] || die "usage: $0 BINARY [BINARY...]"
n=${N:-5000}
settle=${SETTLE:-20}
rounds=${ROUNDS:-2}
work=$(mktemp -d)
run=""
pid=""
cleanup() {
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  kubectl delete namespace rss-unrelated rss-team rss-rx --wait=false --ignore-not-found >/dev/null 2>&1 || true
  [ -n "$run" ] && scripts/control-plane.sh stop "$run" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
if [ -z "${KUBECONFIG:-}" ]; then
  run=$(scripts/control-plane.sh start)
  . "$run/env"
fi
export PATH="$K8S_BIN:$PATH"

for ns in rss-unrelated rss-team rss-rx; do
  kubectl create namespace "$ns" >/dev/null 2>&1 || true
done
log "creating $n unrelated Secrets in rss-unrelated"
python3 - "$n" >"$work/secrets.yaml" <<'PY'
import base64, os, sys
n = int(sys.argv[1])
for i in range(n):
    blob = base64.b64encode(os.urandom(1536)).decode()
    print(f"---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: unrelated-{i}\n  namespace: rss-unrelated\n  labels: {{app: unrelated}}\ndata:\n  blob: {blob}")
PY
kubectl apply --server-side -f "$work/secrets.yaml" >/dev/null
log "$(kubectl get secrets -n rss-unrelated -l app=unrelated -o name | wc -l) Secrets in rss-unrelated"

measure() {
  local bin=$1 out=$work/controller.out
  "$bin" controller --watch-namespace rss-team --receiver-namespace rss-rx --no-leader-election \
    --metrics-listen 127.0.0.1:0 --default-credentials rss-team/creds >"$out" 2>"$work/controller.err" &
  pid=$!
  for _ in $(seq 100); do grep -q "listening on" "$out" && break; sleep 0.1; done
  sleep "$settle"
  local rss hwm
  rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status")
  hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$pid/status")
  kill "$pid"; wait "$pid" 2>/dev/null || true
  pid=""
  echo "$bin rss_kib=$rss peak_kib=$hwm"
}

for r in $(seq "$rounds"); do
  for bin in "$@"; do
    log "round $r: $bin"
    measure "$bin"
  done
done
