# Shared helpers for the scripts: namespace topology with guaranteed teardown.
# shellcheck shell=bash

OMNI_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN="$OMNI_ROOT/target/release"
NAMESPACES=()
PIDS=()

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "$(basename "$0"): run as root (it creates network namespaces): sudo $0 $*" >&2
    exit 1
  fi
}

teardown() {
  local ns pid
  for pid in "${PIDS[@]:-}"; do [ -n "$pid" ] && kill "$pid" 2>/dev/null || true; done
  sleep 0.3
  for ns in "${NAMESPACES[@]:-}"; do
    [ -z "$ns" ] && continue
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

add_ns() {
  ip netns del "$1" 2>/dev/null || true
  ip netns add "$1"
  ip -n "$1" link set lo up
  NAMESPACES+=("$1")
}

# wait_status NS RUN_DIR PYTHON_CONDITION SECONDS
wait_status() {
  local ns=$1 run=$2 cond=$3 limit=${4:-20} i
  for ((i = 0; i < limit * 10; i++)); do
    if ip netns exec "$ns" "$BIN/omni-daemon" status --json --run-dir "$run" 2>/dev/null |
      python3 -c "import json,sys; s=json.load(sys.stdin); sys.exit(0 if ($cond) else 1)" 2>/dev/null; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}
