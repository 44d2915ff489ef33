#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): the receiver against its in-process limit and an Express peer,
# and the controller at scale on a local control plane. Not part of the tests.
#
#   scripts/bench.sh            # --short: a few minutes; results under $CARGO_TARGET_DIR/ens-bench/short
#   scripts/bench.sh --full     # the figures in BENCHMARKS.md; results and plots into docs/bench/
#   scripts/bench.sh --full --only receiver|receiver-ack|controller [-- EXTRA BENCH ARGS]
#
# It builds the release binary and the bench harnesses, installs the Express peer's modules with
# `npm ci` into ~/.cache/ens-operator/bench-peer and builds the Go peer with the machine's Go
# into ~/.cache/ens-operator/bench-peer-go/<source hash> (outside the clone), starts its own
# control plane for the controller bench and stops it on exit. `receiver-ack` is the
# acknowledgement time against sink latency per hand-off mode (also run with `receiver`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

mode=--short only=all extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --short|--full) mode=$1 ;;
    --only) only=${2:?--only receiver|receiver-ack|controller}; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "usage: scripts/bench.sh [--short|--full] [--only receiver|receiver-ack|controller] [-- BENCH ARGS]" ;;
  esac
  shift
done
if [ "$mode" = --full ]; then out=docs/bench; else out=$CARGO_TARGET_DIR/ens-bench/short; fi
mkdir -p "$out"

t0=$(date +%s)
phase() { log "$* (+$(( $(date +%s) - t0 )) s)"; }

run_dir=""
cleanup() { if [ -n "$run_dir" ]; then scripts/control-plane.sh stop "$run_dir"; fi; }
trap cleanup EXIT

phase "building the release binary and the benchmarks"
cargo bench --locked --no-run --bench receiver --bench controller

if [ "$only" = all ] || [ "$only" = receiver ]; then
  phase "Express peer: npm ci (cached)"
  command -v node >/dev/null || die "node is missing: the receiver bench's peer is an Express app (Node >= 18)"
  peer=$ENS_CACHE/bench-peer
  if ! cmp -s bench/peer/package-lock.json "$peer/package-lock.json" || [ ! -d "$peer/node_modules/express" ]; then
    mkdir -p "$peer"
    cp bench/peer/package.json bench/peer/package-lock.json "$peer/"
    (cd "$peer" && npm ci --no-audit --no-fund --loglevel=error)
  fi
  export ENS_BENCH_PEER_MODULES=$peer/node_modules

  phase "Go peer: go build (cached by source hash)"
  command -v go >/dev/null || die "go is missing: the receiver bench's second peer is a Go net/http app"
  hash=$( (go version; cat bench/peer-go/go.mod bench/peer-go/main.go) | sha256sum | cut -c1-16)
  go_peer=$ENS_CACHE/bench-peer-go/$hash/peer-go
  if [ ! -x "$go_peer" ]; then
    mkdir -p "$(dirname "$go_peer")"
    (cd bench/peer-go && go build -trimpath -o "$go_peer" .)
  fi
  export ENS_BENCH_GO_PEER=$go_peer

  phase "nats-server for the JetStream hand-off (cached after the first run)"
  scripts/build-tools.sh nats
  export ENS_BENCH_NATS_SERVER=$NATS_SERVER_BIN/nats-server

  phase "Kafka broker jars for the Kafka hand-off (cached after the first run)"
  scripts/build-tools.sh kafka
  export ENS_TEST_KAFKA_LIBS=$KAFKA_LIBS

  phase "receiver benchmark ($mode)"
  cargo bench --locked --bench receiver -- "$mode" --out "$out" "${extra[@]}"
fi

if [ "$only" = all ] || [ "$only" = receiver ] || [ "$only" = receiver-ack ]; then
  phase "receiver acknowledgement time against sink latency ($mode)"
  cargo bench --locked --bench receiver -- "$mode" --part ack --out "$out" "${extra[@]}"
fi

if [ "$only" = all ] || [ "$only" = controller ]; then
  phase "control-plane tools (cached after the first run)"
  scripts/build-tools.sh k8s etcd
  phase "starting a control plane for the controller benchmark"
  run_dir=$(scripts/control-plane.sh start)
  . "$run_dir/env"
  phase "controller benchmark ($mode)"
  cargo bench --locked --bench controller -- "$mode" --out "$out" "${extra[@]}"
fi

phase "done: results in $out"
