#!/usr/bin/env bash
# The reliability checks that fit in CI, run one at a time, and a table of what each
# applied and found (issue 7). Each test prints a `RELIABILITY|check|load|result|figure`
# line when it passes; a failing test fails this script.
#   sudo scripts/reliability.sh [--quick]
# --quick leaves out the 10-minute soak (OMNI_SOAK_SECS sets its length).
set -euo pipefail
quick=0
case "${1:-}" in
  --quick) quick=1; shift ;;
  -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
  "") ;;
  *) echo "reliability.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
esac
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$OMNI_ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for t in reliability_netns fabric_netns cluster_netns xdp_netns dpdk_netns; do
  echo "reliability.sh: $t" >&2
  cargo test --release -q -p omni-daemon --test "$t" -- --test-threads=1 --nocapture >>"$log" 2>&1 || status=$?
done
if [ "$quick" = 0 ]; then
  echo "reliability.sh: soak (${OMNI_SOAK_SECS:-600} s)" >&2
  cargo test --release -q -p omni-daemon --test reliability_netns soak_ten_minutes -- --ignored --nocapture >>"$log" 2>&1 || status=$?
fi
echo
echo "| check | load applied | result | figure |"
echo "|---|---|---|---|"
# A row may follow other output on its line (test progress dots): take it from its tag.
grep -o 'RELIABILITY|.*' "$log" | sed 's/^RELIABILITY//; s/$/|/; s/|/ | /g; s/^ //; s/ $//'
if [ "$status" != 0 ]; then
  echo
  echo "reliability.sh: a test failed; its output:" >&2
  grep -E 'panicked|FAILED|assert' "$log" | head -40 >&2
  exit "$status"
fi
