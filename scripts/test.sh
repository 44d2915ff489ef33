#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this). On a fresh machine it installs
# what is missing (Rust components, the Go-built control plane and tools, all cached outside the
# clone under ~/.cache/ens-operator), then: fmt, clippy, build, one control plane for the whole
# run, every test, and the control plane stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

t0=$(date +%s)
phase() { log "$* (+$(( $(date +%s) - t0 )) s)"; }

phase "prerequisites"
for tool in cargo go openssl curl python3; do
  command -v "$tool" >/dev/null || die "$tool is missing: install it (Rust via rustup, Go >= 1.26, openssl, curl, python3)"
done
if command -v rustup >/dev/null; then
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
  done
fi

phase "cargo fmt --check"
cargo fmt --all -- --check || die "formatting differs: run cargo fmt"

phase "cargo clippy"
cargo clippy --locked --all-targets --features fault-injection -- -D warnings

phase "building test binaries"
cargo test --locked --no-run --features fault-injection

phase "without fault-injection (release builds) ENS_OPERATOR_CRASH_AT is ignored"
cargo test --locked --lib -- controller::crash

phase "control-plane tools (cached after the first run)"
scripts/build-tools.sh

phase "starting the control plane"
run=$(scripts/control-plane.sh start)
noderun=""
trap 'scripts/control-plane.sh stop "$run"; [ -z "$noderun" ] || { scripts/node.sh stop "$noderun"; scripts/control-plane.sh stop "$noderun"; }' EXIT
. "$run/env"
export ENS_TEST_NATS_SERVER=$NATS_SERVER_BIN/nats-server
export ENS_TEST_KAFKA_LIBS=$KAFKA_LIBS

# A second control plane with a real node (tests/it/node*.rs), so the pods it runs never meet the
# other tests' objects. The image is built from the release binary (cached by its hash).
phase "the node: release build, images, control plane, kubelet"
noderun=$(ENS_WITH_NODE=1 scripts/control-plane.sh start)
scripts/node.sh start "$noderun"
. "$noderun/node-env"

phase "cargo test"
cargo test --locked --features fault-injection -- "$@"

phase "all tests passed"
