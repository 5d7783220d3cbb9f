#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and property tests, loom
# model checks of the shared-memory rings, the cross-process ring stress test, the network
# tests in namespaces (serialised), the local cluster as the original README runs it
# (run_local_autotest.sh), the Debian packages installed and purged for real, a short run of
# every fuzz target, and the benchmark harness in its short mode.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$OMNI_ROOT"

scripts/setup.sh --fuzz --bench --package
export PATH="$HOME/.cargo/bin:$PATH"
# CI builds the XDP program: a missing eBPF toolchain is an error here, not a skip.
export OMNI_XDP_REQUIRED=1
# ... and every test that needs root runs: not being root is a failure, not a skip.
export OMNI_ROOT_TESTS_REQUIRED=1

step() { printf '\n== %s\n' "$*"; }

step "format"
cargo fmt --all -- --check
step "clippy"
cargo clippy --workspace --all-targets -q -- -D warnings
step "build (release)"
cargo build --release --workspace --bins -q
# The original README's build commands, by their package names (no-ops after the line above).
cargo build --release -q -p omni-daemon -p omni-ebpf-core
test -s target/bpfel-unknown-none/release/omni-ebpf || { echo "omni-ebpf-core left no target/bpfel-unknown-none/release/omni-ebpf" >&2; exit 1; }
step "tests (unit, property, cross-process, network)"
cargo test --release --workspace -q
step "loom model checks of the rings"
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom cargo test --release -q -p omni-shm --lib
step "the local cluster, as the original README runs it (Nucleus, two edges behind NAT)"
scripts/run_local_autotest.sh --seconds 3
step "Debian packages: build, dpkg -i, run, dpkg -r / -P"
scripts/package_test.sh
step "fuzz targets (short runs)"
scripts/fuzz.sh --seconds "${FUZZ_SECONDS:-20}"
step "benchmark harness (short mode: keeps it working; numbers are not asserted)"
cargo build --release -q -p omni-bench --bin compare --bin tap_relay --bin udp_echo
target/release/compare --short --out target/compare-short
# The paths every machine has must have been measured, and the two-process echo under them
# (basic regular expressions: '|' and '(' are literal).
for row in '^| bare veth | [0-9]' '^| kernel VXLAN (L2, unencrypted) | [0-9]' \
  '^| OmniNervous socket backend | [0-9]' '^| gotatun (L3.* | [0-9]' \
  'udp_echo: no TAP.*RTT p50 / p99 [0-9]'; do
  grep -q -- "$row" target/compare-short/report.md \
    || { echo "compare --short: report.md has no line matching '$row'" >&2; exit 1; }
done
target/release/dpdk_pktgen --short --json target/dpdk-pktgen-short.json
step "all tests passed"
