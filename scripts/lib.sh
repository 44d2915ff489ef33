# Shared settings for the scripts: every cache lives outside the clone, keyed by version.
# Sourced, not run.
ENS_CACHE=${ENS_CACHE:-$HOME/.cache/ens-operator}
K8S_VERSION=${K8S_VERSION:-v1.37.0}
ETCD_VERSION=${ETCD_VERSION:-v3.6.13}
HELM_VERSION=${HELM_VERSION:-v3.21.3}
KUBECONFORM_VERSION=${KUBECONFORM_VERSION:-v0.7.0}
# kstatus (what Flux and kpt compute readiness with), and third-party CRDs the chart can render
# objects of (ServiceMonitor, HTTPRoute): tests validate and install those against their schemas.
CLI_UTILS_VERSION=${CLI_UTILS_VERSION:-v0.37.2}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.4.0}
PROMETHEUS_OPERATOR_VERSION=${PROMETHEUS_OPERATOR_VERSION:-v0.85.0}
# The local node (scripts/node.sh): kubelet, kube-proxy, kube-scheduler at K8S_VERSION; CoreDNS.
COREDNS_VERSION=${COREDNS_VERSION:-v1.15.0}
# The receiver's JetStream hand-off tests run a real nats-server (tests/it/receiver_nats.rs).
NATS_SERVER_VERSION=${NATS_SERVER_VERSION:-v2.15.3}
# The Kafka hand-off tests run a real Apache Kafka broker (KRaft, one node) from its jars on
# Maven Central with the machine's Java (>= 17), and Log4j 2's SLF4J binding for its log.
KAFKA_VERSION=${KAFKA_VERSION:-4.1.1}
KAFKA_LOG4J_VERSION=${KAFKA_LOG4J_VERSION:-2.24.3}
KAFKA_SLF4J_VERSION=${KAFKA_SLF4J_VERSION:-2.0.16}
# The address the API server advertises (the `kubernetes` Service's endpoint): it exists only
# inside the node's network namespace, where a proxy forwards it to the API server on 127.0.0.1.
NODE_IP=10.200.0.1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ENS_CACHE/target}
export GOMODCACHE=${GOMODCACHE_OVERRIDE:-$ENS_CACHE/gomod}
export GOCACHE=${GOCACHE_OVERRIDE:-$ENS_CACHE/gobuild}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-buildvcs=false
K8S_BIN=$ENS_CACHE/bin/k8s-$K8S_VERSION
ETCD_BIN=$ENS_CACHE/bin/etcd-$ETCD_VERSION
HELM_BIN=$ENS_CACHE/bin/helm-$HELM_VERSION
KUBECONFORM_BIN=$ENS_CACHE/bin/kubeconform-$KUBECONFORM_VERSION
KSTATUS_BIN=$ENS_CACHE/bin/kstatus-$CLI_UTILS_VERSION
NODE_BIN=$ENS_CACHE/bin/node-$K8S_VERSION
COREDNS_BIN=$ENS_CACHE/bin/coredns-$COREDNS_VERSION
NATS_SERVER_BIN=$ENS_CACHE/bin/nats-server-$NATS_SERVER_VERSION
KAFKA_LIBS=$ENS_CACHE/kafka-$KAFKA_VERSION/libs
THIRD_PARTY_CRDS=$ENS_CACHE/crds
log() { printf '\033[1m[%s]\033[0m %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
