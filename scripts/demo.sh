#!/usr/bin/env bash
# The local cluster demo: two nodes in network namespaces joined by a veth, a Noise IK
# handshake, ping and iperf3 over omni0, and each node's status table. Everything is torn
# down on exit, even on failure.
#   scripts/demo.sh [--mtu 1500|9000] [--seconds N]
set -euo pipefail
# shellcheck source=lib.sh
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
echo "== two nodes in namespaces: identities, daemons, omni0 addresses"
two_node_fabric omnidemo "$mtu" "$work" 99
echo "   node A: $KA"
echo "   node B: $KB"

echo "== ping over omni0 (the first packet triggers the handshake)"
ip netns exec "$A" ping -c 3 -i 0.2 "$OMNI_B" | sed 's/^/   /'
wait_status "$A" "$RUN_A" "s['peers'][0]['session']=='established'" 10

echo "== iperf3 TCP over omni0 (${secs}s), then over the bare veth for comparison"
fab=$(iperf3_gbps "$A" "$B" "$OMNI_B" "$secs")
raw=$(iperf3_gbps "$A" "$B" "$UNDER_B" "$secs")

echo
echo "| check | result |"
echo "|---|---|"
echo "| Noise IK handshake | completed |"
echo "| ping over omni0 | ok |"
echo "| FDB learning | $(ip netns exec "$A" "$BIN/omni-daemon" status --json --run-dir "$RUN_A" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["fdb"]))') entries |"
echo "| iperf3 over omni0 | $fab Gbit/s |"
echo "| iperf3 over the bare veth | $raw Gbit/s |"
echo
echo "== status of node A (ip netns exec $A omni-daemon status --run-dir $RUN_A)"
ip netns exec "$A" "$BIN/omni-daemon" status --run-dir "$RUN_A" | sed 's/^/   /'
echo "== metrics of node A (ip netns exec $A, http://127.0.0.1:9100/metrics), an excerpt:"
ip netns exec "$A" bash -c 'exec 3<>/dev/tcp/127.0.0.1/9100; printf "GET /metrics HTTP/1.0\r\n\r\n" >&3; cat <&3' |
  grep -E '^omni_(sessions_active|handshakes_completed_total|packets_rx_total|packets_tx_total) ' | sed 's/^/   /'
echo "   node logs: $work/{a,b}.log (removed on exit)"
echo "== done; tearing down"
