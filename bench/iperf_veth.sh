#!/usr/bin/env bash
# iperf3 TCP over omni0 between two namespaces on one veth, against the same veth without
# the fabric, in one run, alternating the order each repetition.
#   bench/iperf_veth.sh [--reps N] [--seconds S] [--mtu 1500|9000]
# Prints a markdown table (median, min-max, ratio) and ping RTTs.
set -euo pipefail
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
A=omnibench-a B=omnibench-b
add_ns $A
add_ns $B
ip link add ua netns $A mtu "$mtu" type veth peer name ub netns $B mtu "$mtu"
ip -n $A addr add 10.98.0.1/24 dev ua && ip -n $A link set ua up
ip -n $B addr add 10.98.0.2/24 dev ub && ip -n $B link set ub up
KA=$("$BIN/omni-daemon" --init --identity "$work/a.key" | sed 's/^Your Public Identity: //')
KB=$("$BIN/omni-daemon" --init --identity "$work/b.key" | sed 's/^Your Public Identity: //')
ip netns exec $A "$BIN/omni-daemon" --identity "$work/a.key" --run-dir "$work/a" --peer "$KB" --endpoint 10.98.0.2:51820 >"$work/a.log" 2>&1 &
PIDS+=($!)
ip netns exec $B "$BIN/omni-daemon" --identity "$work/b.key" --run-dir "$work/b" --peer "$KA" --endpoint 10.98.0.1:51820 >"$work/b.log" 2>&1 &
PIDS+=($!)
wait_status $A "$work/a" "True" 20 && wait_status $B "$work/b" "True" 20
ip -n $A addr add 192.168.98.1/24 dev omni0
ip -n $B addr add 192.168.98.2/24 dev omni0
ip netns exec $A ping -c 2 -i 0.2 192.168.98.2 >/dev/null

tcp() { # server-ip -> Gbit/s
  ip netns exec $B iperf3 -s -D -1 -B "$1" >/dev/null; sleep 0.3
  ip netns exec $A iperf3 -c "$1" -t "$secs" -J | python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9)'
}
rtt() { # ip -> "p50 p99" in ms
  ip netns exec $A ping -c 200 -i 0.005 -q "$1" >/dev/null 2>&1 || true
  ip netns exec $A ping -c 500 -i 0.002 "$1" 2>/dev/null | python3 -c '
import re,sys
v=sorted(float(m.group(1)) for m in re.finditer(r"time=([0-9.]+)", sys.stdin.read()))
print("%.3f %.3f" % (v[len(v)//2], v[int(len(v)*0.99)-1]))'
}
fab=() raw=()
for ((i = 0; i < reps; i++)); do
  if ((i % 2 == 0)); then fab+=("$(tcp 192.168.98.2)"); raw+=("$(tcp 10.98.0.2)")
  else raw+=("$(tcp 10.98.0.2)"); fab+=("$(tcp 192.168.98.2)"); fi
done
rf=$(rtt 192.168.98.2) rr=$(rtt 10.98.0.2)
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
