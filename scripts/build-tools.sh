#!/usr/bin/env bash
# Builds kube-apiserver, kube-controller-manager, kubectl, etcd, helm, kubeconform, kstatus-check and
# the local node's kubelet, kube-proxy, kube-scheduler and CoreDNS (docs/real-node.md), and
# nats-server (the JetStream hand-off tests)
# from the Go module proxy into $ENS_CACHE/bin/<tool>-<version>/ (outside the clone), fetches the
# Apache Kafka broker's jars from Maven Central into $ENS_CACHE/kafka-<version>/libs (the Kafka
# hand-off tests; run with the machine's Java), copies the
# ServiceMonitor and HTTPRoute CRDs out of their Go modules into $ENS_CACHE/crds/, and installs a
# Lua interpreter (apt) for the Argo CD health-check tests. Idempotent: anything already cached is
# skipped.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

command -v go >/dev/null || die "Go is not installed (need go >= 1.26 for Kubernetes ${K8S_VERSION})"
command -v python3 >/dev/null || die "python3 is needed to read the upstream go.mod"
go_minor=$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')
[ "$go_minor" -ge 26 ] || die "Go $(go env GOVERSION) is too old: Kubernetes ${K8S_VERSION} needs go1.26"
mkdir -p "$ENS_CACHE/src" "$ENS_CACHE/bin"

proxy_check() {
  go mod download -json "$1" >/dev/null 2>"$ENS_CACHE/proxy-check.err" ||
    die "cannot download $1 from the Go module proxy ($(go env GOPROXY)): $(tail -1 "$ENS_CACHE/proxy-check.err")"
}

build_k8s() {
  if [ -x "$K8S_BIN/kube-apiserver" ] && [ -x "$K8S_BIN/kube-controller-manager" ] && [ -x "$K8S_BIN/kubectl" ]; then
    log "k8s $K8S_VERSION: cached in $K8S_BIN"; return; fi
  log "k8s $K8S_VERSION: building kube-apiserver, kube-controller-manager, kubectl (cold: ~7 min)"
  proxy_check "k8s.io/kubernetes@$K8S_VERSION"
  local minor staging w upstream ld
  minor=$(echo "$K8S_VERSION" | cut -d. -f2); staging=v0.${K8S_VERSION#v1.}
  w=$ENS_CACHE/src/k8s-$K8S_VERSION; mkdir -p "$w"; cd "$w"
  [ -f go.mod ] || go mod init local.invalid/k8s-build >/dev/null 2>&1
  upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  # Staging modules are required at v0.0.0 upstream; pin each to its v0.X.Y tag.
  grep -E '^[[:space:]]*k8s\.io/[^ ]+ => \./staging/' "$upstream" | awk '{print $1}' |
    while read -r m; do go mod edit -replace="$m=$m@$staging"; done
  go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-controller-manager@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kubectl@$K8S_VERSION"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  mkdir -p "$K8S_BIN.tmp"
  go build -trimpath -ldflags "$ld" -o "$K8S_BIN.tmp/" k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl
  rm -rf "$K8S_BIN"; mv "$K8S_BIN.tmp" "$K8S_BIN"
  "$K8S_BIN/kube-apiserver" --version >&2
}

# The node's Kubernetes parts, from a wrapper module of their own (same replace lines and
# ldflags as build_k8s, so the two builds never edit one go.mod at once).
build_node() {
  if [ -x "$NODE_BIN/kubelet" ] && [ -x "$NODE_BIN/kube-proxy" ] && [ -x "$NODE_BIN/kube-scheduler" ]; then
    log "node $K8S_VERSION: cached in $NODE_BIN"; return; fi
  log "node $K8S_VERSION: building kubelet, kube-proxy, kube-scheduler (~3 min once build_k8s ran)"
  proxy_check "k8s.io/kubernetes@$K8S_VERSION"
  local minor staging w upstream ld
  minor=$(echo "$K8S_VERSION" | cut -d. -f2); staging=v0.${K8S_VERSION#v1.}
  w=$ENS_CACHE/src/node-$K8S_VERSION; mkdir -p "$w"; cd "$w"
  [ -f go.mod ] || go mod init local.invalid/node-build >/dev/null 2>&1
  upstream=$(go mod download -json "k8s.io/kubernetes@$K8S_VERSION" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  grep -E '^[[:space:]]*k8s\.io/[^ ]+ => \./staging/' "$upstream" | awk '{print $1}' |
    while read -r m; do go mod edit -replace="$m=$m@$staging"; done
  go get -tool "k8s.io/kubernetes/cmd/kubelet@$K8S_VERSION" \
    "k8s.io/kubernetes/cmd/kube-proxy@$K8S_VERSION" "k8s.io/kubernetes/cmd/kube-scheduler@$K8S_VERSION"
  ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor"
    ld+=" -X $p.gitTreeState=clean -X $p.buildDate=2026-01-01T00:00:00Z"
  done
  mkdir -p "$NODE_BIN.tmp"
  go build -trimpath -ldflags "$ld" -o "$NODE_BIN.tmp/" k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler
  rm -rf "$NODE_BIN"; mv "$NODE_BIN.tmp" "$NODE_BIN"
  "$NODE_BIN/kubelet" --version >&2
}

build_coredns() { # only the plugins the node uses: scripts/coredns/main.go
  local src=$here/coredns/main.go
  if [ -x "$COREDNS_BIN/coredns" ] && cmp -s "$src" "$COREDNS_BIN/main.go"; then
    log "coredns $COREDNS_VERSION: cached in $COREDNS_BIN"; return; fi
  log "coredns $COREDNS_VERSION: building (cold: ~2 min)"
  proxy_check "github.com/coredns/coredns@$COREDNS_VERSION"
  local w=$ENS_CACHE/src/coredns-$COREDNS_VERSION; rm -rf "$w"; mkdir -p "$w"; cd "$w"
  cp "$src" main.go
  go mod init local.invalid/coredns >/dev/null 2>&1
  go get "github.com/coredns/coredns@$COREDNS_VERSION" >/dev/null 2>&1
  go mod tidy >/dev/null 2>&1
  mkdir -p "$COREDNS_BIN.tmp"
  go build -trimpath -ldflags "-s -w" -o "$COREDNS_BIN.tmp/coredns" .
  cp main.go "$COREDNS_BIN.tmp/main.go"
  rm -rf "$COREDNS_BIN"; mv "$COREDNS_BIN.tmp" "$COREDNS_BIN"
}

build_etcd() {
  if [ -x "$ETCD_BIN/etcd" ]; then log "etcd $ETCD_VERSION: cached in $ETCD_BIN"; return; fi
  log "etcd $ETCD_VERSION: building (go install refuses etcd's replace lines, so a wrapper module)"
  proxy_check "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  local w=$ENS_CACHE/src/etcd-$ETCD_VERSION; mkdir -p "$w"; cd "$w"
  [ -f go.mod ] || go mod init local.invalid/etcd-build >/dev/null 2>&1
  go get -tool "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  mkdir -p "$ETCD_BIN.tmp"
  go build -trimpath -ldflags "-s -w" -o "$ETCD_BIN.tmp/etcd" go.etcd.io/etcd/server/v3
  rm -rf "$ETCD_BIN"; mv "$ETCD_BIN.tmp" "$ETCD_BIN"
  "$ETCD_BIN/etcd" --version >&2
}

build_go_install() { # name version package dir
  local name=$1 version=$2 pkg=$3 dir=$4
  if [ -x "$dir/$name" ]; then log "$name $version: cached in $dir"; return; fi
  log "$name $version: go install"
  proxy_check "${pkg%%/cmd/*}@$version"
  mkdir -p "$dir.tmp"
  GOBIN="$dir.tmp" go install -trimpath -ldflags "-s -w" "$pkg@$version"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
}

build_kstatus() { # a tiny CLI around sigs.k8s.io/cli-utils' kstatus, the library Flux computes health with
  local src=$here/kstatus-check/main.go
  if [ -x "$KSTATUS_BIN/kstatus-check" ] && cmp -s "$src" "$KSTATUS_BIN/main.go"; then
    log "kstatus-check $CLI_UTILS_VERSION: cached in $KSTATUS_BIN"; return; fi
  log "kstatus-check $CLI_UTILS_VERSION: building (cold: ~30 s)"
  proxy_check "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION"
  local w=$ENS_CACHE/src/kstatus-check-$CLI_UTILS_VERSION; rm -rf "$w"; mkdir -p "$w"; cd "$w"
  cp "$src" main.go
  go mod init local.invalid/kstatus-check >/dev/null 2>&1
  go get "sigs.k8s.io/cli-utils@$CLI_UTILS_VERSION" >/dev/null 2>&1
  go mod tidy >/dev/null 2>&1
  mkdir -p "$KSTATUS_BIN.tmp"
  go build -trimpath -ldflags "-s -w" -o "$KSTATUS_BIN.tmp/kstatus-check" .
  cp main.go "$KSTATUS_BIN.tmp/main.go"
  rm -rf "$KSTATUS_BIN"; mv "$KSTATUS_BIN.tmp" "$KSTATUS_BIN"
}

fetch_crds() { # module version file...: copies CRD manifests out of a Go module
  local module=$1 version=$2; shift 2
  local dest=$THIRD_PARTY_CRDS/$(basename "$module")-$version
  if [ -d "$dest" ]; then log "$(basename "$module") $version CRDs: cached in $dest"; return; fi
  log "$(basename "$module") $version CRDs: from the Go module proxy"
  proxy_check "$module@$version"
  local dir; dir=$(go mod download -json "$module@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  mkdir -p "$dest.tmp"
  for f in "$@"; do cp "$dir/$f" "$dest.tmp/"; done
  chmod -R u+w "$dest.tmp"; rm -rf "$dest"; mv "$dest.tmp" "$dest"
}

fetch_kafka() { # the broker's jars and their runtime dependencies, by Maven from a throwaway pom
  if [ -f "$KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]; then log "kafka $KAFKA_VERSION: cached in $KAFKA_LIBS"; return; fi
  if ! command -v mvn >/dev/null || ! command -v java >/dev/null; then
    log "kafka: installing maven (it brings the distribution's Java runtime) with apt-get"
    local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
    $sudo apt-get install -y -q maven >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q maven >/dev/null 2>&1; } || true
  fi
  command -v mvn >/dev/null || die "mvn is missing: the Kafka broker's jars come from Maven Central (Debian/Ubuntu: apt-get install maven)"
  command -v java >/dev/null || die "java is missing: the Kafka $KAFKA_VERSION broker needs Java >= 17 (Debian/Ubuntu: apt-get install default-jre-headless)"
  local java_major; java_major=$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
  [ "${java_major:-0}" -ge 17 ] || die "java $java_major is too old: the Kafka $KAFKA_VERSION broker needs Java >= 17"
  log "kafka $KAFKA_VERSION: jars from Maven Central (cold: ~1 min)"
  local w; w=$(mktemp -d)
  cat >"$w/pom.xml" <<EOF
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.invalid</groupId>
  <artifactId>kafka-broker</artifactId>
  <version>0</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>$KAFKA_VERSION</version></dependency>
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>$KAFKA_LOG4J_VERSION</version></dependency>
    <!-- the binding's SLF4J 2 (Maven's nearest-wins would pick the 1.7 that a Kafka module names) -->
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>$KAFKA_SLF4J_VERSION</version></dependency>
  </dependencies>
</project>
EOF
  rm -rf "$KAFKA_LIBS.tmp"
  mvn -B -q -f "$w/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$KAFKA_LIBS.tmp" >"$w/mvn.log" 2>&1 ||
    die "cannot fetch Kafka $KAFKA_VERSION's jars with Maven: $(tail -5 "$w/mvn.log")"
  [ -f "$KAFKA_LIBS.tmp/kafka_2.13-$KAFKA_VERSION.jar" ] || die "Maven did not fetch kafka_2.13-$KAFKA_VERSION.jar"
  rm -rf "$KAFKA_LIBS"; mv "$KAFKA_LIBS.tmp" "$KAFKA_LIBS"; rm -rf "$w"
  log "kafka $KAFKA_VERSION: $(ls "$KAFKA_LIBS" | wc -l) jars in $KAFKA_LIBS"
}

install_lua() { # Argo CD health checks are Lua: the tests run them in real interpreters (5.4, and
  # 5.1 when available: Argo CD's gopher-lua implements 5.1)
  if command -v lua5.4 >/dev/null && command -v lua5.1 >/dev/null; then
    log "lua: $(command -v lua5.4) $(command -v lua5.1)"; return; fi
  log "lua: installing lua5.4 and lua5.1 with apt-get"
  local sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  for pkg in lua5.4 lua5.1; do
    command -v "$pkg" >/dev/null && continue
    $sudo apt-get install -y -q "$pkg" >/dev/null 2>&1 ||
      { $sudo apt-get update -q >/dev/null 2>&1 && $sudo apt-get install -y -q "$pkg" >/dev/null 2>&1; } || true
  done
  command -v lua5.4 >/dev/null ||
    die "lua5.4 is missing and could not be installed: install it (Debian/Ubuntu: apt-get install lua5.4)"
}

want=${*:-k8s etcd helm kubeconform kstatus crds lua node coredns nats kafka}
start=$(date +%s)
for t in $want; do
  case $t in
    k8s) build_k8s ;;
    etcd) build_etcd ;;
    helm) build_go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm "$HELM_BIN" ;;
    kubeconform) build_go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform "$KUBECONFORM_BIN" ;;
    kstatus) build_kstatus ;;
    crds)
      fetch_crds sigs.k8s.io/gateway-api "$GATEWAY_API_VERSION" config/crd/standard/gateway.networking.k8s.io_httproutes.yaml
      fetch_crds github.com/prometheus-operator/prometheus-operator "$PROMETHEUS_OPERATOR_VERSION" \
        example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml ;;
    lua) install_lua ;;
    node) build_node ;;
    coredns) build_coredns ;;
    nats) build_go_install nats-server "$NATS_SERVER_VERSION" github.com/nats-io/nats-server/v2 "$NATS_SERVER_BIN" ;;
    kafka) fetch_kafka ;;
    *) die "unknown tool $t (k8s etcd helm kubeconform kstatus crds lua node coredns nats kafka)" ;;
  esac
done
log "tools ready in $(( $(date +%s) - start )) s under $ENS_CACHE/bin"
