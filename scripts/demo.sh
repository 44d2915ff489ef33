#!/usr/bin/env bash
# The demo: a local control plane, the ENS emulator, the receiver and the controller (as local
# processes against that API server), the example manifests applied, `kubectl get ens` going
# Ready, and an event injected into ENS arriving at a sink. Everything stops on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*" >&2; }
pids=()
run_dir=""
cleanup() {
  step "tearing down"
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -n "$run_dir" ] && scripts/control-plane.sh stop "$run_dir"
}
trap cleanup EXIT

step "building (cached after the first run)"
scripts/build-tools.sh k8s etcd
cargo build --locked -q
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
  --default-credentials marketing-events/sfmc-ens-credentials 2>"$work/controller.err" & pids+=($!)

step "applying the credentials Secret and the examples"
kubectl -n marketing-events create secret generic sfmc-ens-credentials \
  --from-literal=clientId=demo-client --from-literal=clientSecret=demo-secret \
  --from-literal=authBaseUrl="$emulator" >/dev/null
kubectl apply -f deploy/examples/callback-minimal.yaml
kubectl apply -f deploy/examples/subscription-minimal.yaml

step "kubectl get ens -n marketing-events (until Ready)"
for i in $(seq 60); do
  kubectl get ens -n marketing-events
  ready=$(kubectl get enscallbacks,enssubscriptions -n marketing-events \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True || true)
  [ "$ready" -ge 2 ] && break
  [ "$i" -eq 60 ] && die "not Ready after 60 s; logs in $work"
  sleep 1; echo
done

step "injecting an EmailSent event into ENS"
curl -fsS -X POST "$emulator/emulator/v1/events" -H 'content-type: application/json' -d '[{
  "eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1700000000000,
  "definitionKey": "order-confirmation", "mid": 1447640, "eid": 1447640,
  "info": {"to": "customer@example.com", "messageKey": "demo-1", "status": "Sent"}}]'
echo
for _ in $(seq 50); do grep -q "^sink <-" "$work/sink.log" && break; sleep 0.2; done
grep "^sink <-" "$work/sink.log" || die "the event did not reach the sink; logs in $work"

step "done: ENS signed the batch, the receiver verified it and handed it to the sink"
