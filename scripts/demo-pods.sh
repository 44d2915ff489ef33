#!/usr/bin/env bash
# `scripts/demo.sh --pods`: the demo's story with every part a pod. `helm install` of the chart
# (controller, two receivers) in a namespace enforcing Pod Security `restricted`, the ENS emulator
# as a pod of the same image resolving the callback host to the receiver Service, the examples
# applied, two events injected into ENS and received by a sink behind a Service. Shown as
# `kubectl get pods` and `kubectl get ens`.
#
# On the local node (default; root): a control plane with scripts/node.sh, the sink a small
# server on this machine that pods reach through the node's proxy. With ENS_DEMO_KUBECONFIG=1 on
# the cluster KUBECONFIG names instead; its nodes must have the image (kind: `kind load
# image-archive ~/.cache/ens-operator/images/ens-operator.tar`) and the events go to a discarding
# sink (the receiver's metrics count them).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

step() { printf '\n\033[1;34m==> %s\033[0m\n' "$*" >&2; }
NS=ens-system TEAM=marketing-events
run_dir="" sink_pid="" work=$(mktemp -d "${TMPDIR:-/tmp}/ens-demo-pods.XXXXXX")
cleanup() {
  step "tearing down"
  if [ -n "$run_dir" ]; then
    scripts/node.sh stop "$run_dir" || true
    scripts/control-plane.sh stop "$run_dir" || true
  else
    helm uninstall demo -n "$NS" >/dev/null 2>&1 || true
    kubectl delete namespace "$TEAM" "$NS" --wait=false >/dev/null 2>&1 || true
  fi
  [ -z "$sink_pid" ] || kill "$sink_pid" 2>/dev/null || true
  echo "logs in $work" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "building the tools, the node's binaries and the image (cached after the first run)"
if [ -n "${ENS_DEMO_KUBECONFIG:-}" ]; then
  scripts/build-tools.sh helm k8s
  scripts/image.sh >&2
  export PATH=$K8S_BIN:$HELM_BIN:$PATH
else
  scripts/build-tools.sh k8s etcd helm node coredns
  step "starting a control plane and the node (scripts/node.sh)"
  run_dir=$(ENS_WITH_NODE=1 scripts/control-plane.sh start "$work/cp")
  scripts/node.sh start "$run_dir"
  . "$run_dir/env"
fi

sink=discard:
if [ -n "$run_dir" ]; then
  step "a CloudEvents sink on this machine, reachable from pods as http://sink.$NS.svc"
  cat >"$work/sink.py" <<'PY'
import http.server
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        print(f"sink <- {self.headers.get('ce-type')} {body.decode()[:100]}", flush=True)
        self.send_response(200); self.end_headers()
    def log_message(self, *a): pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
print(s.server_port, flush=True)
s.serve_forever()
PY
  python3 -u "$work/sink.py" >"$work/sink.log" 2>&1 &
  sink_pid=$!
  for _ in $(seq 50); do [ -s "$work/sink.log" ] && break; sleep 0.1; done
  addr=$(scripts/node.sh expose "$run_dir" sink "$(head -1 "$work/sink.log")")
  sink=http://sink.$NS.svc
fi

step "helm install demo charts/ens-operator (namespace $NS, Pod Security restricted)"
kubectl create namespace "$NS" >/dev/null
kubectl label namespace "$NS" pod-security.kubernetes.io/enforce=restricted >/dev/null
if [ -n "$run_dir" ]; then
  kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: v1
kind: Service
metadata: {name: sink}
spec: {ports: [{port: 80, targetPort: ${addr#*:}}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: sink-host, labels: {kubernetes.io/service-name: sink}}
addressType: IPv4
endpoints: [{addresses: ["${addr%:*}"]}]
ports: [{port: ${addr#*:}, protocol: TCP}]
YAML
fi
helm install demo charts/ens-operator -n "$NS" --set receiver.sink="$sink" >/dev/null
receiver=$(kubectl -n "$NS" get svc -l app.kubernetes.io/component=receiver -o jsonpath='{.items[0].spec.clusterIP}:{.items[0].spec.ports[0].port}')
image=$(cat "$ENS_CACHE/images/ens-operator.tag")

step "the ENS emulator as a pod of the same image (events.example.com resolves to $receiver)"
kubectl create namespace "$TEAM" >/dev/null
kubectl -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: ens-emulator}
spec:
  selector: {matchLabels: {app: ens-emulator}}
  template:
    metadata: {labels: {app: ens-emulator}}
    spec:
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: emulator
        image: $image
        imagePullPolicy: IfNotPresent
        args: [emulator, --listen, "0.0.0.0:8090", --client-id, demo-client, --client-secret, demo-secret,
               --public-url, "http://ens-emulator.$NS.svc:8090", --resolve, "events.example.com=$receiver"]
        ports: [{containerPort: 8090}]
        readinessProbe: {tcpSocket: {port: 8090}}
        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
---
apiVersion: v1
kind: Service
metadata: {name: ens-emulator}
spec: {selector: {app: ens-emulator}, ports: [{port: 8090}]}
YAML
kubectl -n "$NS" create secret generic sfmc-ens-credentials --from-literal=clientId=demo-client \
  --from-literal=clientSecret=demo-secret --from-literal=authBaseUrl="http://ens-emulator.$NS.svc:8090" >/dev/null
kubectl -n "$NS" rollout status deploy --timeout=240s >&2

step "kubectl get pods -n $NS"
kubectl get pods -n "$NS" -o wide

step "kubectl apply -f deploy/examples/{callback,subscription}-minimal.yaml"
kubectl apply -f deploy/examples/callback-minimal.yaml -f deploy/examples/subscription-minimal.yaml
kubectl wait --for=condition=Ready enscallbacks,enssubscriptions --all -n "$TEAM" --timeout=120s >/dev/null ||
  { kubectl get ens -n "$TEAM" -o yaml >&2; exit 1; }

step "kubectl get ens -n $TEAM"
kubectl get ens -n "$TEAM"

step "injecting two events into ENS (the emulator's test API, through its Service)"
events='[{"eventCategoryType": "TransactionalSendEvents.EmailSent", "timestampUTC": 1700000000000,
  "definitionKey": "order-confirmation", "mid": 1447640, "eid": 1447640,
  "info": {"to": "customer@example.com", "messageKey": "demo-1", "status": "Sent"}},
 {"eventCategoryType": "TransactionalSendEvents.EmailBounced", "timestampUTC": 1700000060000,
  "definitionKey": "order-confirmation", "mid": 1447640, "eid": 1447640,
  "info": {"to": "nobody@example.com", "messageKey": "demo-2", "bounceCode": "5.1.1"}}]'
if [ -n "$run_dir" ]; then # the node's network is its own namespace: enter it
  ip=$(kubectl -n "$NS" get svc ens-emulator -o jsonpath='{.spec.clusterIP}')
  nsenter --net="/run/netns/$(cat "$run_dir/node/netns")" curl -fsS -X POST \
    "http://$ip:8090/emulator/v1/events" -H 'content-type: application/json' -d "$events"
else
  kubectl -n "$NS" port-forward svc/ens-emulator 18090:8090 >"$work/port-forward.log" 2>&1 &
  pf=$!; sleep 2
  curl -fsS -X POST http://127.0.0.1:18090/emulator/v1/events -H 'content-type: application/json' -d "$events"
  kill "$pf"
fi
echo

if [ -n "$run_dir" ]; then
  step "the sink receives them as CloudEvents (the receiver pods checked the signature first)"
  for _ in $(seq 100); do [ "$(grep -c '^sink <-' "$work/sink.log")" -ge 2 ] && break; sleep 0.2; done
  grep '^sink <-' "$work/sink.log" || { echo "the events did not reach the sink" >&2; exit 1; }
fi

step "kubectl get pods -n $NS"
kubectl get pods -n "$NS"
step "done: the chart's pods registered the callback in ENS, verified it and delivered the events"
