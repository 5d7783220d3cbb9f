#!/usr/bin/env bash
# The reliability checks that fit in CI, run one at a time, and a table of what each
# applied and found (issue 7). Each test prints a `RELIABILITY|check|load|result|figure`
# line when it passes; a failing test fails this script.
#   sudo scripts/reliability.sh
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$OMNI_ROOT"
export PATH="$HOME/.cargo/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
for t in reliability_netns fabric_netns cluster_netns xdp_netns; do
  echo "reliability.sh: $t" >&2
  cargo test --release -q -p omni-control --test "$t" -- --test-threads=1 --nocapture >>"$log" 2>&1 || status=$?
done
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
