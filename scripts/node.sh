#!/usr/bin/env bash
# Starts or stops a single-node cluster on the local control plane (scripts/control-plane.sh):
# containerd + runc, kubelet, kube-proxy, kube-scheduler and CoreDNS, all in a network namespace
# of their own that has no route out of the machine (docs/real-node.md).
#
#   scripts/node.sh start RUN_DIR     # RUN_DIR: a control plane started with ENS_WITH_NODE=1;
#                                     # writes RUN_DIR/node-env (ENS_TEST_NODE_* for tests/it/node.rs)
#   scripts/node.sh stop  RUN_DIR     # removes everything start made
#   scripts/node.sh sweep             # removes what runs never stopped left (start does it too)
#   scripts/node.sh check RUN_DIR     # prints the host's outbound counters for the node's ranges
#   scripts/node.sh expose RUN_DIR NAME PORT   # host 127.0.0.1:PORT reachable from pods at
#                                     # 10.200.0.1:PORT (e.g. a sink for a selector-less Service)
#
# Network (inside the namespace only): the node address 10.200.0.1 (API
# server proxy and cluster DNS listen there, on lo), pods on the bridge cni0 in 10.244.0.0/24, Services
# in 10.0.0.0/24 (kube-proxy, iptables mode). The namespace has no veth to the host: the only way
# out is the API server, through a Unix socket that socat bridges to 127.0.0.1 on the host.
# Everything runs in a cgroup of its own (and its own mount namespace), so stop can find and kill
# every process it started, containers included.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
here=$(cd "$(dirname "$0")" && pwd)

NODE_IP=${NODE_IP:-10.200.0.1}
POD_CIDR=10.244.0.0/24
SERVICE_CIDR=10.0.0.0/24
NODE_NAME=ens-node
PAUSE_IMAGE=localhost/ens-operator/pause:3.10

wait_for() { # CMD SECONDS
  local deadline=$(( $(date +%s) + $2 ))
  until eval "$1" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$deadline" ] && return 1
    sleep 0.5
  done
}

ids() { # RUN: the names this run uses on the host (netns, cgroup, iptables comment)
  local run=$1 tag
  tag=$(printf '%s' "$(cd "$run" && pwd)" | sha256sum | cut -c1-8)
  NS=ens-node-$tag CG=ens-node-$tag COMMENT=ens-node-$tag N=$run/node
}

hierarchies() { # the cgroup v1 hierarchies (the node's kubelet runs with cgroupDriver cgroupfs)
  local d
  for d in /sys/fs/cgroup/*/; do
    d=${d%/}
    [ "$(basename "$d")" = unified ] && continue
    [ -f "$d/cgroup.procs" ] && echo "$d"
  done
}

outbound_if() { ip route show default | awk '{print $5; exit}'; }

install_packages() { # containerd, runc, CNI plugins, iptables, socat from Debian when missing
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [ -x /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v socat >/dev/null || missing+=(socat)
  [ ${#missing[@]} -eq 0 ] && return
  log "node: installing ${missing[*]} with apt-get"
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "${missing[@]}" >/dev/null 2>&1; } ||
    die "could not install ${missing[*]} (Debian: apt-get install ${missing[*]})"
}

write_configs() { # RUN API_PORT
  local run=$1 api_port=$2
  mkdir -p "$N"/{containerd/root,containerd/state,cni/net.d,kubelet,pod-logs,logs,proxy}
  : >"$N/resolv.conf"
  sed -e "s|server: https://127.0.0.1:[0-9]*|server: https://$NODE_IP:$api_port|" \
    "$run/admin.kubeconfig" >"$N/node.kubeconfig"

  containerd config default | python3 -c '
import re, sys
n, pause = sys.argv[1], sys.argv[2]
s = sys.stdin.read()
def put(key, value, count=1):
    global s
    s, k = re.subn(r"(?m)^(\s*)" + re.escape(key) + r" = .*$", lambda m: m.group(1) + key + " = " + value, s, count=count)
    assert k, key
put("root", f"\"{n}/containerd/root\"")
put("state", f"\"{n}/containerd/state\"")
s = s.replace("address = \"/run/containerd/containerd.sock\"", f"address = \"{n}/containerd.sock\"")
s = s.replace("path = \"/opt/containerd\"", f"path = \"{n}/containerd/opt\"")
put("netns_mounts_under_state_dir", "true")
put("restrict_oom_score_adj", "true")
put("sandbox_image", f"\"{pause}\"")
put("bin_dir", "\"/usr/lib/cni\"")
put("conf_dir", f"\"{n}/cni/net.d\"")
print(s)' "$N" "$PAUSE_IMAGE" >"$N/containerd.toml"

  cat >"$N/cni/net.d/10-bridge.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "ens-node",
 "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "$N/cni/ipam"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF

  cat >"$N/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$CG
failSwapOn: false
containerRuntimeEndpoint: unix://$N/containerd.sock
address: $NODE_IP
healthzBindAddress: 127.0.0.1
healthzPort: 0
readOnlyPort: 0
clusterDomain: cluster.local
clusterDNS: [$NODE_IP]
resolvConf: $N/resolv.conf
podLogsDir: $N/pod-logs
staticPodPath: ""
authentication: {anonymous: {enabled: false}, webhook: {enabled: false}}
authorization: {mode: AlwaysAllow}
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
enforceNodeAllocatable: []
localStorageCapacityIsolation: false
EOF

  cat >"$N/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $N/node.kubeconfig}
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {masqueradeAll: true}
EOF

  cat >"$N/Corefile" <<EOF
.:53 {
    bind $NODE_IP
    errors
    health $NODE_IP:8081
    ready $NODE_IP:8181
    kubernetes cluster.local in-addr.arpa {
        kubeconfig $N/node.kubeconfig
        pods insecure
    }
    cache 10
}
EOF
}

# The script run inside the namespaces: joins the node's cgroup, brings the interfaces up and
# starts every daemon, each with its PID file. Blocks (the namespaces live while it runs).
write_supervisor() { # API_PORT
  local api_port=$1
  cat >"$N/supervise.sh" <<EOF
#!/usr/bin/env bash
set -u
for h in $(hierarchies | tr '\n' ' '); do echo \$\$ >"\$h/$CG/system/cgroup.procs"; done
# Private mount namespace: what the daemons keep in fixed host paths (/run/containerd, runc's
# state, /var/lib/cni, /var/log/pods) lands on tmpfs that goes away with the namespace.
for d in /run /var/lib /var/log; do mount -t tmpfs -o mode=0755 tmpfs "\$d"; done
ip link set lo up
ip addr add $NODE_IP/32 dev lo
# Service addresses from the node itself (not only from pods): kube-proxy rewrites them in OUTPUT.
ip route add $SERVICE_CIDR dev lo
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.route_localnet=1
# Counts what pods send to addresses outside the node (the no-route-out test reads it).
iptables -w -t raw -A PREROUTING -s $POD_CIDR ! -d 10.0.0.0/8 -m comment --comment pod-egress-attempt
run() { local name=\$1; shift; "\$@" >"$N/logs/\$name.log" 2>&1 & echo \$! >"$N/\$name.pid"; }
run socat-api socat TCP-LISTEN:$api_port,bind=$NODE_IP,fork,reuseaddr UNIX-CONNECT:$N/api.sock
run containerd containerd --config "$N/containerd.toml"
for _ in \$(seq 100); do [ -S "$N/containerd.sock" ] && break; sleep 0.1; done
for t in $ENS_CACHE/images/*.tar; do ctr -a "$N/containerd.sock" -n k8s.io images import "\$t" >>"$N/logs/images.log" 2>&1; done
run kubelet "$NODE_BIN/kubelet" --config="$N/kubelet.yaml" --kubeconfig="$N/node.kubeconfig" \\
  --root-dir="$N/kubelet" --cert-dir="$N/kubelet/pki" --node-ip=$NODE_IP \\
  --hostname-override=$NODE_NAME --v=1
run kube-proxy "$NODE_BIN/kube-proxy" --config="$N/kube-proxy.yaml" --v=1
run kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig="$N/node.kubeconfig" \\
  --authentication-kubeconfig="$N/node.kubeconfig" --authorization-kubeconfig="$N/node.kubeconfig" \\
  --leader-elect=false --bind-address=127.0.0.1 --secure-port=0 --v=1
run coredns "$COREDNS_BIN/coredns" -conf "$N/Corefile"
wait
EOF
  chmod +x "$N/supervise.sh"
}

start() {
  local run=${1:?usage: node.sh start RUN_DIR}
  [ -f "$run/ports" ] && grep -qx 'with_node=1' "$run/ports" ||
    die "$run is not a control plane started with ENS_WITH_NODE=1 scripts/control-plane.sh start"
  [ "$(id -u)" -eq 0 ] || die "the node needs root (network namespace, cgroups, mounts)"
  sweep
  for b in "$NODE_BIN/kubelet" "$NODE_BIN/kube-proxy" "$NODE_BIN/kube-scheduler" "$COREDNS_BIN/coredns"; do
    [ -x "$b" ] || die "$b is missing: run scripts/build-tools.sh node coredns"
  done
  install_packages
  "$here/image.sh" ${ENS_IMAGE_BINARY:+"$ENS_IMAGE_BINARY"} >&2  # ENS_IMAGE_BINARY: another build
  ids "$run"
  local t0 etcd_port api_port; t0=$(date +%s)
  . "$run/ports"
  write_configs "$run" "$api_port"
  write_supervisor "$api_port"

  local h; for h in $(hierarchies); do
    mkdir -p "$h/$CG/system"
    if [ -f "$h/cpuset.cpus" ]; then
      cat "$h/cpuset.cpus" >"$h/$CG/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$CG/cpuset.mems"
      cat "$h/cpuset.cpus" >"$h/$CG/system/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$CG/system/cpuset.mems"
    fi
  done
  ip netns add "$NS"
  echo "$NS" >"$N/netns"
  # The API server, for the namespace: a Unix socket (crosses namespaces) to 127.0.0.1.
  socat UNIX-LISTEN:"$N/api.sock",fork TCP:127.0.0.1:"$api_port" >"$N/logs/socat-host.log" 2>&1 &
  echo $! >"$N/socat-host.pid"
  # On the host the node's ranges go nowhere (a host process addressing them would otherwise
  # follow the default route out), and counters catch anything from or to them leaving anyway.
  local net; for net in $POD_CIDR $SERVICE_CIDR $NODE_IP/32; do
    ip route add blackhole "$net" 2>/dev/null || true # shared with another run's node
  done
  local out; out=$(outbound_if)
  for chain in OUTPUT FORWARD; do
    for net in $POD_CIDR $SERVICE_CIDR $NODE_IP/32; do
      iptables -w -I "$chain" 1 -o "$out" -s "$net" -m comment --comment "$COMMENT"
      iptables -w -I "$chain" 1 -o "$out" -d "$net" -m comment --comment "$COMMENT"
    done
  done
  # A Node object left from an earlier run on this control plane would read Ready at once.
  "$K8S_BIN/kubectl" --kubeconfig="$run/admin.kubeconfig" delete node "$NODE_NAME" --ignore-not-found >/dev/null
  setsid nsenter --net="/run/netns/$NS" unshare --mount --propagation private \
    "$N/supervise.sh" >"$N/logs/supervise.log" 2>&1 </dev/null &
  echo $! >"$N/supervise.pid"

  local kc="$K8S_BIN/kubectl --kubeconfig=$run/admin.kubeconfig"
  wait_for "$kc get node $NODE_NAME -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True" 120 ||
    { tail -20 "$N/logs/kubelet.log" >&2; stop "$run"; die "the node did not become Ready"; }
  wait_for "nsenter --net=/run/netns/$NS curl -fsS http://$NODE_IP:8181/ready" 60 ||
    { tail -20 "$N/logs/coredns.log" >&2; stop "$run"; die "CoreDNS did not become ready"; }
  local d; for d in containerd kubelet kube-proxy kube-scheduler coredns socat-api; do
    kill -0 "$(cat "$N/$d.pid" 2>/dev/null)" 2>/dev/null ||
      { tail -20 "$N/logs/$d.log" >&2; stop "$run"; die "$d is not running"; }
  done
  cat >"$run/node-env" <<ENV
export ENS_TEST_NODE_RUN=$(cd "$run" && pwd)
export ENS_TEST_NODE_KUBECONFIG=$(cd "$run" && pwd)/admin.kubeconfig
export ENS_TEST_NODE_NETNS=$NS
export ENS_TEST_NODE_CGROUP=$CG
export ENS_TEST_NODE_IMAGE=$(cat "$ENS_CACHE/images/ens-operator.tag")
export ENS_TEST_NODE_IMAGE_TAR=$ENS_CACHE/images/ens-operator.tar
ENV
  log "node $NODE_NAME Ready in $(( $(date +%s) - t0 )) s (netns $NS, pods $POD_CIDR, services $SERVICE_CIDR)"
}

procs() { # every PID in the node's cgroup (containers included), from the pids hierarchy
  local h; h=$(hierarchies | grep -m1 '/pids$' || hierarchies | head -1)
  [ -d "$h/$CG" ] && find "$h/$CG" -name cgroup.procs -exec cat {} + 2>/dev/null || true
}

sweep() { # what runs that were never stopped (a killed session) left behind
  local ns d h chain rule tag live
  # A node's namespace always holds its processes; one made minutes ago and empty is orphaned.
  for ns in $(find /run/netns -maxdepth 1 -name 'ens-node-*' -mmin +10 -printf '%f\n' 2>/dev/null); do
    [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] || continue
    log "removing network namespace $ns, left by a node that was never stopped"
    ip netns del "$ns" 2>/dev/null || true
  done
  live=$(ip netns list | awk '/^ens-node-/ {print $1}')
  for h in $(hierarchies) /sys/fs/cgroup/unified; do
    for d in "$h"/ens-node-*; do
      [ -d "$d" ] || continue
      grep -qx "$(basename "$d")" <<<"$live" && continue
      [ -z "$(find "$d" -name cgroup.procs -exec cat {} + 2>/dev/null)" ] || continue
      find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
  for chain in OUTPUT FORWARD; do
    while read -r rule; do
      tag=$(grep -o 'ens-node-[0-9a-f]*' <<<"$rule")
      grep -qx "$tag" <<<"$live" && continue
      eval "iptables -w ${rule/-A /-D }" || break
    done < <(iptables -w -S "$chain" | grep -F -- "--comment ens-node-")
  done
  if [ -z "$live" ]; then
    local net; for net in $POD_CIDR $SERVICE_CIDR $NODE_IP/32; do ip route del blackhole "$net" 2>/dev/null || true; done
  fi
}

stop() {
  local run=${1:?usage: node.sh stop RUN_DIR}
  ids "$run"
  [ -d "$N" ] || return 0
  if [ -S "$N/containerd.sock" ]; then # stop containers through containerd, so shims clean up
    for t in $(ctr -a "$N/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$N/containerd.sock" -n k8s.io tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true
    done
    sleep 0.5
    for t in $(ctr -a "$N/containerd.sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr -a "$N/containerd.sock" -n k8s.io tasks delete -f "$t" >/dev/null 2>&1 || true
    done
  fi
  local f; for f in "$N"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  for _ in $(seq 50); do [ -z "$(procs)" ] && break; sleep 0.1; done
  for _ in $(seq 50); do
    local left; left=$(procs); [ -z "$left" ] && break
    kill -9 $left 2>/dev/null || true; sleep 0.1
  done
  [ -f "$N/socat-host.pid" ] && kill "$(cat "$N/socat-host.pid")" 2>/dev/null || true
  rm -f "$N"/*.pid
  local h; for h in $(hierarchies) /sys/fs/cgroup/unified; do # the kubelet also makes one in cgroup2
    [ -d "$h/$CG" ] && find "$h/$CG" -depth -type d -exec rmdir {} + 2>/dev/null || true
  done
  # Mounts live in the node's own mount namespace; any that reached the host's go too.
  grep -F " $N/" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  rm -rf "$N/containerd" "$N/kubelet" # images and volumes: large, and of no use after the run
  if ! ls /run/netns/ens-node-* >/dev/null 2>&1; then # the last node on this machine
    local net; for net in $POD_CIDR $SERVICE_CIDR $NODE_IP/32; do ip route del blackhole "$net" 2>/dev/null || true; done
  fi
  local out; out=$(outbound_if)
  for chain in OUTPUT FORWARD; do
    while read -r rule; do
      eval "iptables -w ${rule/-A /-D }" || break
    done < <(iptables -w -S "$chain" | grep -F -- "--comment $COMMENT")
  done
  [ -z "$(procs)" ] || die "node processes left in cgroup $CG: $(procs | tr '\n' ' ')"
  log "node in $N stopped"
}

expose() { # RUN NAME PORT: a server on the host's 127.0.0.1:PORT, reachable from pods at $NODE_IP:PORT
  local run=${1:?usage: node.sh expose RUN_DIR NAME PORT} name=${2:?name} port=${3:?port}
  ids "$run"
  [ -f "/run/netns/$NS" ] || die "no node for $run"
  socat UNIX-LISTEN:"$N/expose-$name.sock",fork TCP:127.0.0.1:"$port" >"$N/logs/expose-$name-host.log" 2>&1 &
  echo $! >"$N/expose-$name-host.pid"
  nsenter --net="/run/netns/$NS" socat TCP-LISTEN:"$port",bind="$NODE_IP",fork,reuseaddr \
    UNIX-CONNECT:"$N/expose-$name.sock" >"$N/logs/expose-$name.log" 2>&1 &
  echo $! >"$N/expose-$name.pid"
  wait_for "nsenter --net=/run/netns/$NS bash -c 'echo >/dev/tcp/$NODE_IP/$port'" 10 || die "expose $name failed"
  echo "$NODE_IP:$port"
}

check() { # prints "packets bytes" summed over the host's outbound counters for the node
  local run=${1:?usage: node.sh check RUN_DIR}
  ids "$run"
  { iptables -w -nvxL OUTPUT; iptables -w -nvxL FORWARD; } | grep -F "$COMMENT" |
    awk '{p+=$1; b+=$2} END {print p+0, b+0}'
}

case ${1:-} in
  start) start "${2:-}" ;;
  stop) stop "${2:-}" ;;
  check) check "${2:-}" ;;
  expose) expose "${2:-}" "${3:-}" "${4:-}" ;;
  sweep) sweep ;;
  *) die "usage: $0 start RUN_DIR | stop RUN_DIR | sweep | check RUN_DIR | expose RUN_DIR NAME PORT" ;;
esac
