#!/usr/bin/env bash
# Starts or stops a local Kubernetes control plane: etcd + kube-apiserver (RBAC, TLS) +
# kube-controller-manager (garbage collector, namespace, service accounts, ClusterRole
# aggregation, so the built-in edit role carries aggregated rules) on free loopback ports.
#
#   scripts/control-plane.sh start [RUN_DIR]   # prints RUN_DIR; $RUN_DIR/env has KUBECONFIG etc.
#   scripts/control-plane.sh stop  RUN_DIR     # stops only the PIDs recorded in RUN_DIR
#   scripts/control-plane.sh restart-apiserver RUN_DIR   # for the API-server restart test
#
#   ENS_WITH_NODE=1 scripts/control-plane.sh start [RUN_DIR]   # for scripts/node.sh: workload
#     controllers too (Deployments, StatefulSets, Jobs such as the chart's uninstall hook, volume
#     claim binding and protection), and the API server advertises $NODE_IP (lib.sh) so the `kubernetes`
#     Service has an endpoint pods can reach (it still listens on 127.0.0.1 only)
#
# Binaries come from scripts/build-tools.sh. See docs/real-node.md for the node.
set -euo pipefail
. "$(dirname "$0")/lib.sh"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mb() { awk '/VmRSS/ {printf "%d", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }

gen_pki() { # DIR: CA, serving cert, client certs (CN=user, O=group), service-account key pair
  local d=$1; mkdir -p "$d"; (
  cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 -subj "/CN=ens-operator-test-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" 2>/dev/null
  cat > serving.ext <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:127.0.0.1,IP:10.0.0.1,IP:$NODE_IP
EXT
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile serving.ext -out apiserver.crt 2>/dev/null
  printf 'basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' > client.ext
  client() { # FILE CN ORG
    openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "$3/CN=$2" 2>/dev/null
    openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
      -extfile client.ext -out "$1.crt" 2>/dev/null
  }
  client admin kubernetes-admin /O=system:masters
  client kcm system:kube-controller-manager /O=system:masters
  openssl genrsa -out sa.key 2048 2>/dev/null && openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  rm -f ./*.csr ./*.ext )
}

kubeconfig() { # USER_FILE PORT RUN
  cat <<KC
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority: $3/pki/ca.crt
users:
- name: $1
  user:
    client-certificate: $3/pki/$1.crt
    client-key: $3/pki/$1.key
contexts:
- name: local
  context: {cluster: local, user: $1, namespace: default}
current-context: local
KC
}

wait_for() { # CMD SECONDS
  local deadline=$(( $(date +%s) + $2 ))
  until eval "$1" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.2
  done
}

# Starts kube-apiserver for RUN (ports from RUN/ports) and waits for /readyz.
start_apiserver() {
  local run=$1 p=$1/pki etcd_port api_port with_node=""
  . "$run/ports"
  # For scripts/node.sh: the `kubernetes` Service's endpoint is $NODE_IP, reachable from pods.
  local node_flags=(--advertise-address=127.0.0.1 --endpoint-reconciler-type=none)
  [ -n "$with_node" ] && node_flags=(--advertise-address="$NODE_IP" --kubelet-preferred-address-types=InternalIP)
  "$K8S_BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$etcd_port" \
    --bind-address=127.0.0.1 --secure-port="$api_port" "${node_flags[@]}" \
    --cert-dir="$run/apiserver" --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --service-account-key-file="$p/sa.pub" --service-account-signing-key-file="$p/sa.key" \
    --service-cluster-ip-range=10.0.0.0/24 --authorization-mode=RBAC --allow-privileged=true \
    --enable-priority-and-fairness=false --v=1 \
    >>"$run/logs/kube-apiserver.log" 2>&1 &
  echo $! >"$run/apiserver.pid"
  wait_for "curl -fsS --cacert $p/ca.crt https://127.0.0.1:$api_port/readyz" 120 ||
    { tail -30 "$run/logs/kube-apiserver.log" >&2; stop "$run"; die "kube-apiserver did not become ready"; }
}

# Stops one component (kcm, apiserver, etcd) of RUN: SIGTERM, then SIGKILL after 5 s.
stop_one() {
  local f=$1/$2.pid
  [ -f "$f" ] || return 0
  local pid; pid=$(cat "$f")
  if kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

start() {
  local run=${1:-$(mktemp -d "${TMPDIR:-/tmp}/ens-cp.XXXXXX")}
  [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$ETCD_BIN/etcd" ] ||
    die "control-plane binaries missing under $ENS_CACHE/bin: run scripts/build-tools.sh"
  command -v openssl >/dev/null || die "openssl is needed to make the test certificates"
  mkdir -p "$run"/{etcd,logs,apiserver,kcm}
  local t0; t0=$(date +%s%N)
  gen_pki "$run/pki"
  local etcd_port etcd_peer api_port kcm_port
  etcd_port=$(free_port); etcd_peer=$(free_port); api_port=$(free_port); kcm_port=$(free_port)

  "$ETCD_BIN/etcd" --name=t --data-dir="$run/etcd" \
    --listen-client-urls="http://127.0.0.1:$etcd_port" --advertise-client-urls="http://127.0.0.1:$etcd_port" \
    --listen-peer-urls="http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls="http://127.0.0.1:$etcd_peer" \
    --initial-cluster="t=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --log-level=warn \
    >"$run/logs/etcd.log" 2>&1 &
  echo $! >"$run/etcd.pid"
  wait_for "curl -fsS http://127.0.0.1:$etcd_port/health" 30 || { tail -20 "$run/logs/etcd.log" >&2; stop "$run"; die "etcd did not become healthy"; }

  local p=$run/pki
  printf 'etcd_port=%s\napi_port=%s\nwith_node=%s\n' "$etcd_port" "$api_port" "${ENS_WITH_NODE:-}" >"$run/ports"
  local controllers=garbagecollector,namespace,serviceaccount,serviceaccount-token,clusterrole-aggregation
  [ -n "${ENS_WITH_NODE:-}" ] && controllers+=,nodelifecycle,deployment,replicaset,endpoint,endpointslice,endpointslicemirroring,podgc,disruption,root-ca-cert-publisher,statefulset-controller,job-controller,persistentvolume-binder-controller,persistentvolume-protection-controller,persistentvolumeclaim-protection-controller
  start_apiserver "$run"
  local ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

  kubeconfig admin "$api_port" "$run" >"$run/admin.kubeconfig"
  kubeconfig kcm "$api_port" "$run" >"$run/kcm.kubeconfig"
  "$K8S_BIN/kube-controller-manager" --kubeconfig="$run/kcm.kubeconfig" \
    --authentication-kubeconfig="$run/kcm.kubeconfig" --authorization-kubeconfig="$run/kcm.kubeconfig" \
    --bind-address=127.0.0.1 --secure-port="$kcm_port" --cert-dir="$run/kcm" --leader-elect=false \
    --controllers="$controllers" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" --v=1 \
    >"$run/logs/kcm.log" 2>&1 &
  echo $! >"$run/kcm.pid"
  wait_for "curl -fsSk https://127.0.0.1:$kcm_port/healthz" 60 ||
    { tail -30 "$run/logs/kcm.log" >&2; stop "$run"; die "kube-controller-manager did not become healthy"; }

  cat >"$run/env" <<ENV
export KUBECONFIG=$run/admin.kubeconfig
export ENS_TEST_KUBECONFIG=$run/admin.kubeconfig
export ENS_TEST_CONTROL_PLANE=$run
export ENS_TEST_API_URL=https://127.0.0.1:$api_port
export ENS_TEST_KUBECTL=$K8S_BIN/kubectl
export PATH=$K8S_BIN:$ETCD_BIN:$HELM_BIN:$KUBECONFORM_BIN:\$PATH
ENV
  log "control plane up in $run: apiserver https://127.0.0.1:$api_port ready after ${ready_ms} ms;" \
      "RSS etcd $(rss_mb "$(cat "$run/etcd.pid")") MB, kube-apiserver $(rss_mb "$(cat "$run/apiserver.pid")") MB," \
      "kube-controller-manager $(rss_mb "$(cat "$run/kcm.pid")") MB"
  echo "$run"
}

stop() {
  local run=${1:?usage: control-plane.sh stop RUN_DIR}
  for c in kcm apiserver etcd; do stop_one "$run" "$c"; done
  log "control plane in $run stopped"
}

# Restarts kube-apiserver of RUN (same ports, same etcd): clients see it go away and come back.
restart_apiserver() {
  local run=${1:?usage: control-plane.sh restart-apiserver RUN_DIR}
  stop_one "$run" apiserver
  start_apiserver "$run"
  log "kube-apiserver in $run restarted"
}

case ${1:-} in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  restart-apiserver) restart_apiserver "${2:-}" ;;
  *) die "usage: $0 start [RUN_DIR] | stop RUN_DIR | restart-apiserver RUN_DIR" ;;
esac
