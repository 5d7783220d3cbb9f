#!/usr/bin/env bash
# The local cluster demo: two nodes in network namespaces joined by a veth, a Noise IK
# handshake, ping and iperf3 over omni0, and each node's status table. Everything is torn
# down on exit, even on failure.
#   scripts/demo.sh [--mtu 1500|9000] [--seconds N]
set -euo pipefail
source "$(dirname "$0")/lib.sh"
need_root "$@"

mtu=1500
secs=5
while [ $# -gt 0 ]; do
  case "$1" in
    --mtu) mtu=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    -h|--help) sed -n '2,6p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1" >&2; exit 2 ;;
  esac
done

"$OMNI_ROOT/scripts/setup.sh" >/dev/null
echo "== building (release)"
(cd "$OMNI_ROOT" && cargo build --release --bins -q)

work=$(mktemp -d /tmp/omni-demo.XXXXXX)
trap 'teardown; rm -rf "$work"' EXIT INT TERM
A=omnidemo-a B=omnidemo-b
add_ns $A
add_ns $B
ip link add ua netns $A mtu "$mtu" type veth peer name ub netns $B mtu "$mtu"
ip -n $A addr add 10.99.0.1/24 dev ua && ip -n $A link set ua up
ip -n $B addr add 10.99.0.2/24 dev ub && ip -n $B link set ub up

echo "== identities"
KA=$("$BIN/omni-daemon" --init --identity "$work/a.key" | sed 's/^Your Public Identity: //')
KB=$("$BIN/omni-daemon" --init --identity "$work/b.key" | sed 's/^Your Public Identity: //')
echo "   node A: $KA"
echo "   node B: $KB"

echo "== starting omni-daemon in both namespaces"
ip netns exec $A "$BIN/omni-daemon" --identity "$work/a.key" --run-dir "$work/a" --peer "$KB" --endpoint 10.99.0.2:51820 >"$work/a.log" 2>&1 &
PIDS+=($!)
ip netns exec $B "$BIN/omni-daemon" --identity "$work/b.key" --run-dir "$work/b" --peer "$KA" --endpoint 10.99.0.1:51820 >"$work/b.log" 2>&1 &
PIDS+=($!)
wait_status $A "$work/a" "True" 20 || { cat "$work/a.log"; exit 1; }
wait_status $B "$work/b" "True" 20 || { cat "$work/b.log"; exit 1; }
ip -n $A addr add 192.168.99.1/24 dev omni0
ip -n $B addr add 192.168.99.2/24 dev omni0

echo "== ping over omni0 (the first packet triggers the handshake)"
ip netns exec $A ping -c 3 -i 0.2 192.168.99.2 | sed 's/^/   /'
wait_status $A "$work/a" "s['peers'][0]['session']=='established'" 10

echo "== iperf3 TCP over omni0 (${secs}s), then over the bare veth for comparison"
ip netns exec $B iperf3 -s -D -1 -B 192.168.99.2 >/dev/null; sleep 0.3
fab=$(ip netns exec $A iperf3 -c 192.168.99.2 -t "$secs" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
ip netns exec $B iperf3 -s -D -1 -B 10.99.0.2 >/dev/null; sleep 0.3
raw=$(ip netns exec $A iperf3 -c 10.99.0.2 -t "$secs" -J | python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')

echo
echo "| check | result |"
echo "|---|---|"
echo "| Noise IK handshake | completed |"
echo "| ping over omni0 | ok |"
echo "| FDB learning | $(ip netns exec $A "$BIN/omni-daemon" status --json --run-dir "$work/a" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["fdb"]))') entries |"
echo "| iperf3 over omni0 | $fab Gbit/s |"
echo "| iperf3 over the bare veth | $raw Gbit/s |"
echo
echo "== status of node A (omni-daemon status --run-dir $work/a)"
ip netns exec $A "$BIN/omni-daemon" status --run-dir "$work/a" | sed 's/^/   /'
echo "== metrics: ip netns exec $A curl -s 127.0.0.1:9100/metrics (while running)"
echo "== done; tearing down"
