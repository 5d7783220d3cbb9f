#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time (nightly + cargo-fuzz: scripts/setup.sh --fuzz).
#   scripts/fuzz.sh [--seconds N | --minutes N] [TARGET...]
# Findings land in <crate>/fuzz/artifacts/<target>/; add each as a regression test.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=60
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) secs=$2; shift 2 ;;
    --minutes) secs=$(( $2 * 60 )); shift 2 ;;
    -h|--help) sed -n '2,4p' "$0"; exit 0 ;;
    *) targets+=("$1"); shift ;;
  esac
done
export PATH="$HOME/.cargo/bin:$PATH"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz.sh: needs the nightly toolchain and cargo-fuzz: run scripts/setup.sh --fuzz" >&2
  exit 1
fi
declare -A crate_of=([wire_messages]=proto [public_key_text]=proto [membership]=proto [shm_records]=dataplane [engine_decap]=dataplane [underlay_frames]=dataplane [nucleus_core]=nucleus [nucleus_config]=nucleus [config_toml]=control)
[ ${#targets[@]} -eq 0 ] && targets=(wire_messages public_key_text membership shm_records engine_decap underlay_frames nucleus_core nucleus_config config_toml)
for t in "${targets[@]}"; do
  crate=${crate_of[$t]:-}
  [ -z "$crate" ] && { echo "fuzz.sh: unknown target $t" >&2; exit 2; }
  echo "fuzz.sh: $t for ${secs}s"
  # A scratch copy of the seed corpus, so runs do not grow the checked-in one.
  work=$(mktemp -d)
  cp -r "$crate/fuzz/corpus/$t/." "$work/"
  (cd "$crate" && cargo +nightly fuzz run "$t" "$work" -- -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1 2>&1 | tail -n 3)
  rm -rf "$work"
done
