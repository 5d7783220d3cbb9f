#!/usr/bin/env bash
# The local cluster: a Nucleus on an "internet" and N edges, each behind its own NAT router
# (nftables masquerade), finding each other through the Nucleus, punching through their NATs
# (or relaying through the Nucleus when one NAT is symmetric), then ping and iperf3 over
# omni0. Prints a table of checks and where each node's status and metrics are. Everything
# is torn down on exit, even on failure.
#   scripts/cluster.sh [--edges N] [--symmetric-nat EDGE] [--seconds S] [--keep]
#                      [--relay-bytes-per-sec N]
# --keep leaves it running until Ctrl-C, to look around.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need_root "$@"

edges=2 sym=0 secs=5 keep=0 relay_rate=12500000
while [ $# -gt 0 ]; do
  case "$1" in
    --edges) edges=$2; shift 2 ;;
    --symmetric-nat) sym=$2; shift 2 ;;
    --seconds) secs=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --relay-bytes-per-sec) relay_rate=$2; shift 2 ;;
    -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "cluster.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
if ! [[ "$edges" =~ ^[0-9]+$ ]] || [ "$edges" -lt 2 ] || [ "$edges" -gt 20 ]; then
  echo "cluster.sh: --edges must be 2 to 20" >&2; exit 2
fi
if ! [[ "$sym" =~ ^[0-9]+$ ]] || [ "$sym" -gt "$edges" ]; then
  echo "cluster.sh: --symmetric-nat must name an edge (1 to $edges) or be 0" >&2; exit 2
fi

"$OMNI_ROOT/scripts/setup.sh" >/dev/null
echo "== building (release)"
(cd "$OMNI_ROOT" && cargo build --release --bins -q)

# One cluster at a time: the namespaces have fixed names. Under the lock, whatever an
# earlier run left (it was killed before its teardown) is ours to remove.
exec 9>/run/omni-cluster.lock
flock -n 9 || { echo "cluster.sh: another cluster.sh is running (/run/omni-cluster.lock)" >&2; exit 1; }
echo "== cleanup of leftovers"
cleanup_leftovers omnic
rm -rf /tmp/omni-cluster.*
work=$(mktemp -d /tmp/omni-cluster.XXXXXX)
trap 'teardown; rm -rf "$work"' EXIT INT TERM
echo "== topology: internet, Nucleus, $edges edges behind NAT$([ "$sym" != 0 ] && echo ", edge $sym behind a symmetric NAT")"
nat_cluster omnic "$edges" "$sym" "$work"

echo "== Nucleus"
NKEY=$("$BIN/omni-nucleus" pubkey --identity "$work/nucleus.key" 2>/dev/null)
ip netns exec "$NUC_NS" "$BIN/omni-nucleus" --listen 10.200.0.10:51820 --identity "$work/nucleus.key" \
  --metrics-listen 127.0.0.1:9200 --relay-bytes-per-sec "$relay_rate" >"$work/nucleus.log" 2>&1 &
PIDS+=($!)
# The secret goes in a file of mode 0600 (not on the command line, where ps shows it).
(umask 077 && "$BIN/omni-daemon" cluster new demo-fleet 2>/dev/null >"$work/cluster.secret")

metric() { # ns port name -> value
  ip netns exec "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2; printf 'GET /metrics HTTP/1.0\r\n\r\n' >&3; cat <&3" 2>/dev/null |
    awk -v n="$3" '$1 == n { print $2 }'
}

echo "== edges (omni-daemon --nucleus $NKEY@10.200.0.10:51820 --cluster demo-fleet)"
for ((i = 1; i <= edges; i++)); do
  e=${EDGE_NS[$((i - 1))]}
  "$BIN/omni-daemon" --init --identity "$work/e$i.key" >/dev/null
  ip netns exec "$e" "$BIN/omni-daemon" --identity "$work/e$i.key" --run-dir "$work/e$i" \
    --nucleus "$NKEY@10.200.0.10:51820" --cluster demo-fleet --cluster-secret-file "$work/cluster.secret" >"$work/e$i.log" 2>&1 &
  PIDS+=($!)
done
for ((i = 1; i <= edges; i++)); do
  e=${EDGE_NS[$((i - 1))]}
  wait_status "$e" "$work/e$i" "True" 20 || { cat "$work/e$i.log"; exit 1; }
  ip -n "$e" addr add "10.99.0.$i/24" dev omni0
done
registered=1
declare -A edge_registered
for ((i = 1; i <= edges; i++)); do
  edge_registered[$i]=1
  wait_status "${EDGE_NS[$((i - 1))]}" "$work/e$i" "s['nuclei'] and s['nuclei'][0]['registered']" 15 ||
    edge_registered[$i]=0 registered=0
done
# Each edge pings every other: the first packets trigger punching (or the relay).
for ((i = 1; i <= edges; i++)); do
  for ((j = 1; j <= edges; j++)); do
    [ "$i" = "$j" ] && continue
    ip netns exec "${EDGE_NS[$((i - 1))]}" ping -c 1 -W 8 "10.99.0.$j" >/dev/null 2>&1 || true
  done
done
established=1 direct=0 relay=0
for ((i = 1; i <= edges; i++)); do
  cond="len([p for p in s['peers'] if p['session']=='established']) == $((edges - 1))"
  wait_status "${EDGE_NS[$((i - 1))]}" "$work/e$i" "$cond" 15 || established=0
  read -r d r < <(ip netns exec "${EDGE_NS[$((i - 1))]}" "$BIN/omni-daemon" status --json --run-dir "$work/e$i" |
    python3 -c 'import json,sys; p=json.load(sys.stdin)["peers"]; print(sum(x["path"]=="direct" for x in p), sum(x["path"]=="relay" for x in p))')
  direct=$((direct + d)) relay=$((relay + r))
done
ping_ok=1
ip netns exec "${EDGE_NS[0]}" ping -c 3 -i 0.2 -W 2 10.99.0.2 >/dev/null || ping_ok=0
gbps=$(iperf3_gbps "${EDGE_NS[0]}" "${EDGE_NS[1]}" 10.99.0.2 "$secs" 2>/dev/null || echo 0)
fdb=$(ip netns exec "${EDGE_NS[0]}" "$BIN/omni-daemon" status --json --run-dir "$work/e1" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["fdb"]))')
relayed=$(metric "$NUC_NS" 9200 omni_nucleus_relayed_packets_total)
punches=$(metric "$NUC_NS" 9200 omni_nucleus_punches_coordinated_total)

# The original README's result table, with what this run measured.
mark() { [ "$1" = 1 ] && echo "✅ $2" || echo "❌ $3"; }
nucleus_up=0 && [ -n "$punches" ] && nucleus_up=1
direct_ok=0 && [ "$direct" -gt 0 ] && direct_ok=1
fdb_ok=0 && [ "${fdb:-0}" -gt 0 ] && fdb_ok=1
iperf_ok=$(python3 -c "print(1 if float('${gbps:-0}') > 0 else 0)")
echo
echo "| Test | Status |"
echo "|:---|:---|"
echo "| **Nucleus Rendezvous** | $(mark $nucleus_up ONLINE "no answer from its metrics") |"
for ((i = 1; i <= edges; i++)); do
  echo "| **Edge $i Registration** | $(mark "${edge_registered[$i]}" Registered "not registered") |"
done
echo "| **NAT Traversal** | $(mark $direct_ok "UDP Hole Punch SUCCESS ($((direct / 2)) direct pairs)" "no direct pair") |"
echo "| **Direct P2P Channel** | $(mark $direct_ok ESTABLISHED none) |"
if [ "$relay" -gt 0 ]; then
  echo "| **Nucleus Relay** | ✅ $((relay / 2)) relayed pairs, ${relayed:-0} packets relayed |"
fi
echo "| **Noise_IK Handshake** | $(mark $established "COMPLETED (full mesh of $edges)" "not every session established") |"
echo "| **FDB Learning** | $(mark $fdb_ok "$fdb entries learned" "nothing learned") |"
echo "| **ping over omni0** | $(mark $ping_ok "3 of 3 answered" "lost") |"
echo "| **iperf3 (edge 1 -> edge 2)** | $(mark "$iperf_ok" "$gbps Gbit/s" "no throughput") |"
echo
echo "Where to look (while running; --keep keeps it up):"
for ((i = 1; i <= edges; i++)); do
  echo "  edge $i: ip netns exec ${EDGE_NS[$((i - 1))]} $BIN/omni-daemon status --run-dir $work/e$i   (metrics: 127.0.0.1:9100 in that namespace)"
done
echo "  Nucleus: ip netns exec $NUC_NS curl -s 127.0.0.1:9200/metrics"
if [ "$keep" = 1 ]; then
  echo "== running; Ctrl-C tears it down"
  while sleep 3600; do :; done
fi
# Every check must pass; a direct path is required unless an edge's NAT is symmetric.
[ "$nucleus_up" = 1 ] && [ "$registered" = 1 ] && [ "$established" = 1 ] && [ "$ping_ok" = 1 ] &&
  [ "$fdb_ok" = 1 ] && [ "$iperf_ok" = 1 ] && { [ "$direct_ok" = 1 ] || [ "$sym" != 0 ]; }
