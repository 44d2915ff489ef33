#!/usr/bin/env bash
# The benchmarks (BENCHMARKS.md): the receiver against its in-process limit and an Express peer,
# and the controller at scale on a local control plane. Not part of the tests.
#
#   scripts/bench.sh            # --short: a few minutes; results under $CARGO_TARGET_DIR/ens-bench/short
#   scripts/bench.sh --full     # the figures in BENCHMARKS.md; results and plots into docs/bench/
#   scripts/bench.sh --full --only receiver|controller [-- EXTRA BENCH ARGS]
#
# It builds the release binary and the bench harnesses, installs the Express peer's modules with
# `npm ci` into ~/.cache/ens-operator/bench-peer (outside the clone), starts its own control
# plane for the controller bench and stops it on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

mode=--short only=all extra=()
while [ $# -gt 0 ]; do
  case $1 in
    --short|--full) mode=$1 ;;
    --only) only=${2:?--only receiver|controller}; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "usage: scripts/bench.sh [--short|--full] [--only receiver|controller] [-- BENCH ARGS]" ;;
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

  phase "receiver benchmark ($mode)"
  cargo bench --locked --bench receiver -- "$mode" --out "$out" "${extra[@]}"
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
