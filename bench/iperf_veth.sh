#!/usr/bin/env bash
# iperf3 TCP over omni0 between two namespaces on one veth, against the same veth without
# the fabric, in one run, alternating the order each repetition.
#   bench/iperf_veth.sh [--reps N] [--seconds S] [--mtu 1500|9000]
# Prints a markdown table (median, min-max, ratio) and ping RTTs.
set -euo pipefail
# shellcheck source=../scripts/lib.sh
source "$(dirname "$0")/../scripts/lib.sh"
need_root "$@"
reps=3 secs=5 mtu=1500
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --mtu) mtu=$2; shift 2 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "iperf_veth.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
(cd "$OMNI_ROOT" && cargo build --release --bins -q)
work=$(mktemp -d /tmp/omni-bench.XXXXXX)
trap 'teardown; rm -rf "$work"' EXIT INT TERM
two_node_fabric omnibench "$mtu" "$work" 98
ip netns exec "$A" ping -c 2 -i 0.2 "$OMNI_B" >/dev/null

tcp() { iperf3_gbps "$A" "$B" "$1" "$secs"; }
rtt() { # ip -> "p50 p99" in ms
  ip netns exec "$A" ping -c 200 -i 0.005 -q "$1" >/dev/null 2>&1 || true
  ip netns exec "$A" ping -c 500 -i 0.002 "$1" 2>/dev/null | python3 -c '
import re,sys
v=sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
print("%.3f %.3f" % (v[len(v)//2], v[int(len(v)*0.99)-1]))'
}
fab=() raw=()
for ((i = 0; i < reps; i++)); do
  if ((i % 2 == 0)); then fab+=("$(tcp "$OMNI_B")"); raw+=("$(tcp "$UNDER_B")")
  else raw+=("$(tcp "$UNDER_B")"); fab+=("$(tcp "$OMNI_B")"); fi
done
rf=$(rtt "$OMNI_B") rr=$(rtt "$UNDER_B")
python3 - "$mtu" "$secs" "${fab[*]}" "${raw[*]}" "$rf" "$rr" <<'PY'
import statistics, sys
mtu, secs, fab, raw, rf, rr = sys.argv[1:]
fab = [float(x) for x in fab.split()]; raw = [float(x) for x in raw.split()]
mf, mr = statistics.median(fab), statistics.median(raw)
print(f"\niperf3 TCP, one stream, {secs}s x {len(fab)} alternating runs, veth MTU {mtu}\n")
print("| path | median Gbit/s | min-max | ratio to veth | ping p50 ms | ping p99 ms |")
print("|---|---|---|---|---|---|")
print(f"| bare veth | {mr:.2f} | {min(raw):.2f}-{max(raw):.2f} | 1.00 | {rr.split()[0]} | {rr.split()[1]} |")
print(f"| OmniNervous socket backend (omni0) | {mf:.2f} | {min(fab):.2f}-{max(fab):.2f} | {mf/mr:.3f} | {rf.split()[0]} | {rf.split()[1]} |")
PY
