#!/usr/bin/env bash
# The demo: a local control plane, the ENS emulator, the receiver and the controller (as local
# processes against that API server), the example manifests applied, the callback watched from
# created through awaiting verification (with ENS's deadline) to Ready, and events injected into
# ENS arriving at a sink. Everything stops on exit (also on Ctrl-C or failure).
#
#   scripts/demo.sh          # the fast path: local processes against a local API server
#   scripts/demo.sh --pods   # the same story as pods: the chart on a real local node
#                            # (scripts/node.sh, root), or on the cluster KUBECONFIG names when
#                            # ENS_DEMO_KUBECONFIG=1 (e.g. kind; load the image first, see README)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
[ "${1:-}" = "--pods" ] && exec scripts/demo-pods.sh

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*" >&2; }
pids=()
run_dir=""
work=""
ok=""
cleanup() {
  step "tearing down: controller, receiver, emulator, sink, control plane"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$run_dir" ] && scripts/control-plane.sh stop "$run_dir"
  if [ -n "$ok" ]; then rm -rf "$work"; elif [ -n "$work" ]; then echo "logs kept in $work" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

for tool in cargo go openssl curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing: install it (Rust via rustup, Go >= 1.26, openssl, curl, python3)"
done

step "building the control plane (first run: ~15 min from the Go module proxy) and ens-operator"
scripts/build-tools.sh k8s etcd
cargo build --locked
bin=$CARGO_TARGET_DIR/debug/ens-operator
work=$(mktemp -d "${TMPDIR:-/tmp}/ens-demo.XXXXXX")

step "starting the local control plane"
run_dir=$(scripts/control-plane.sh start "$work/cp")
. "$run_dir/env"
kubectl apply -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace ens-system >/dev/null
kubectl create namespace marketing-events >/dev/null

listening() { # LOGFILE -> URL from its "listening on" line
  for _ in $(seq 100); do
    url=$(sed -n 's/^listening on //p' "$1" | head -1)
    [ -n "$url" ] && { echo "${url%/}"; return; }
    sleep 0.1
  done
  die "no 'listening on' line in $1"
}

step "starting a CloudEvents sink (prints what it receives)"
cat >"$work/sink.py" <<'PY'
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"sink <- {self.headers.get('ce-type')} id={self.headers.get('ce-id', '')[:12]}… {body.decode()[:120]}", flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(f"listening on http://127.0.0.1:{s.server_port}", flush=True)
s.serve_forever()
PY
python3 "$work/sink.py" >"$work/sink.log" 2>&1 & pids+=($!)
sink=$(listening "$work/sink.log")

step "starting the receiver (cluster mode, namespace ens-system)"
"$bin" receiver --listen 127.0.0.1:0 --namespace ens-system --sink "$sink" >"$work/receiver.log" 2>"$work/receiver.err" & pids+=($!)
receiver=$(listening "$work/receiver.log")

step "starting the ENS emulator (events.example.com resolves to the receiver)"
"$bin" emulator --listen 127.0.0.1:0 --client-id demo-client --client-secret demo-secret \
  --resolve "events.example.com=${receiver#http://}" >"$work/emulator.log" 2>"$work/emulator.err" & pids+=($!)
emulator=$(listening "$work/emulator.log")

step "starting the controller"
"$bin" controller --receiver-namespace ens-system --receiver-url "$receiver" --no-leader-election \
  --metrics-listen 127.0.0.1:0 --cluster-name demo \
  --ens-allow-http --ens-auth-hosts 127.0.0.1 --ens-rest-hosts 127.0.0.1 \
  --default-credentials marketing-events/sfmc-ens-credentials >"$work/controller.out" 2>"$work/controller.err" & pids+=($!)

step "creating the credentials Secret (the emulator's client id and secret)"
kubectl -n marketing-events create secret generic sfmc-ens-credentials \
  --from-literal=clientId=demo-client --from-literal=clientSecret=demo-secret \
  --from-literal=authBaseUrl="$emulator"

step "kubectl apply -f deploy/examples/{callback,subscription}-minimal.yaml, watching the callback"
kubectl get enscallbacks -n marketing-events -w >"$work/watch.log" 2>/dev/null & pids+=($!); watch_pid=$!
sleep 1
kubectl apply -f deploy/examples/callback-minimal.yaml -f deploy/examples/subscription-minimal.yaml
echo "kubectl wait --for=condition=Ready enscallbacks,enssubscriptions --all -n marketing-events" >&2
kubectl wait --for=condition=Ready enscallbacks,enssubscriptions --all -n marketing-events --timeout=60s \
  >/dev/null || die "not Ready within 60 s; logs in $work"
sleep 0.5; kill "$watch_pid" 2>/dev/null || true; wait "$watch_pid" 2>/dev/null || true
echo "What kubectl get enscallbacks -w saw (one line per visible change): the controller creates the" >&2
echo "callback in ENS, waits for ENS's probe to verify it before DEADLINE (4 h later), and is Ready:" >&2
# Drop repeats that differ only in AGE.
awk '{k=$0; sub(/[[:space:]]+[^[:space:]]+$/, "", k)} k!=prev {print} {prev=k}' "$work/watch.log"

step "kubectl get ens -n marketing-events"
kubectl get ens -n marketing-events

step "injecting two events into ENS (EmailSent, EmailBounced); the subscription routes both"
curl -fsS -X POST "$emulator/emulator/v1/events" -H 'content-type: application/json' -d '[
  {"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1700000000000,
   "definitionKey": "order-confirmation", "mid": 1447640, "eid": 1447640,
   "info": {"to": "customer@example.com", "messageKey": "demo-1", "status": "Sent"}},
  {"eventCategoryType": "TransactionalSendEvents.EmailBounced", "timestampUTC": 1700000060000,
   "definitionKey": "order-confirmation", "mid": 1447640, "eid": 1447640,
   "info": {"to": "nobody@example.com", "messageKey": "demo-2", "bounceCode": "5.1.1"}}]'
echo

step "the sink receives them as CloudEvents (signature checked by the receiver first)"
for _ in $(seq 50); do [ "$(grep -c "^sink <-" "$work/sink.log")" -ge 2 ] && break; sleep 0.2; done
grep "^sink <-" "$work/sink.log" || die "the events did not reach the sink; logs in $work"
[ "$(grep -c "^sink <-" "$work/sink.log")" -ge 2 ] || die "only one event reached the sink; logs in $work"

ok=1
step "done: ENS signed each batch, the receiver verified it and handed the events to the sink"
