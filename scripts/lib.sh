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
  for pid in "${PIDS[@]:-}"; do
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
  done
  sleep 0.3
  for ns in "${NAMESPACES[@]:-}"; do
    [ -z "$ns" ] && continue
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
}

# cleanup_leftovers PREFIX: what an earlier run killed before its teardown left behind
# (namespaces named PREFIX-*, the processes in them, their work directories).
cleanup_leftovers() {
  local prefix=$1 ns found=0
  while read -r ns _; do
    case "$ns" in "$prefix"-*) ;; *) continue ;; esac
    found=$((found + 1))
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done < <(ip netns list 2>/dev/null)
  [ "$found" -gt 0 ] && echo "   removed $found namespaces left by an earlier run ($prefix-*)"
  return 0
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

# two_node_fabric PREFIX MTU WORKDIR SUBNET
# Two namespaces $PREFIX-a / $PREFIX-b joined by a veth of MTU (underlay $SUBNET.1/.2),
# each running omni-daemon peered with the other, omni0 = 192.$SUBNET.1/.2 ... set as
# A, B (namespaces), KA, KB (keys), RUN_A, RUN_B (run dirs), OMNI_A, OMNI_B (omni0 IPs),
# UNDER_A, UNDER_B (underlay IPs). Logs in WORKDIR/{a,b}.log.
two_node_fabric() {
  local prefix=$1 mtu=$2 work=$3 net=$4
  A=$prefix-a B=$prefix-b
  UNDER_A=10.$net.0.1 UNDER_B=10.$net.0.2 OMNI_A=192.168.$net.1 OMNI_B=192.168.$net.2
  RUN_A=$work/a RUN_B=$work/b
  add_ns "$A"
  add_ns "$B"
  ip link add ua netns "$A" mtu "$mtu" type veth peer name ub netns "$B" mtu "$mtu"
  ip -n "$A" addr add "$UNDER_A/24" dev ua && ip -n "$A" link set ua up
  ip -n "$B" addr add "$UNDER_B/24" dev ub && ip -n "$B" link set ub up
  KA=$("$BIN/omni-daemon" --init --identity "$work/a.key" | sed 's/^Your Public Identity: //')
  KB=$("$BIN/omni-daemon" --init --identity "$work/b.key" | sed 's/^Your Public Identity: //')
  ip netns exec "$A" "$BIN/omni-daemon" --identity "$work/a.key" --run-dir "$RUN_A" --peer "$KB" --endpoint "$UNDER_B:51820" >"$work/a.log" 2>&1 &
  PIDS+=($!)
  ip netns exec "$B" "$BIN/omni-daemon" --identity "$work/b.key" --run-dir "$RUN_B" --peer "$KA" --endpoint "$UNDER_A:51820" >"$work/b.log" 2>&1 &
  PIDS+=($!)
  wait_status "$A" "$RUN_A" "True" 20 || { cat "$work/a.log"; return 1; }
  wait_status "$B" "$RUN_B" "True" 20 || { cat "$work/b.log"; return 1; }
  ip -n "$A" addr add "$OMNI_A/24" dev omni0
  ip -n "$B" addr add "$OMNI_B/24" dev omni0
}

# iperf3_gbps NS_CLIENT NS_SERVER SERVER_IP SECONDS -> Gbit/s received
iperf3_gbps() {
  ip netns exec "$2" iperf3 -s -D -1 -B "$3" >/dev/null
  sleep 0.3
  ip netns exec "$1" iperf3 -c "$3" -t "$4" -J |
    python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))'
}

# nat_cluster PREFIX EDGES SYMMETRIC_EDGE WORKDIR
# An "internet" (namespace $PREFIX-inet with bridge br0, 10.200.0.0/24), a Nucleus
# ($PREFIX-nuc, 10.200.0.10), and EDGES edges ($PREFIX-eI) each behind its own NAT router
# ($PREFIX-rI: WAN 10.200.0.(20+I), LAN 192.168.(10+I).1/24, nftables masquerade;
# "fully-random" port mapping, a symmetric NAT, for edge SYMMETRIC_EDGE, 0 for none).
# Sets NUC_NS, EDGE_NS[], CLUSTER_SECRET, and starts nothing but the topology.
nat_cluster() {
  local prefix=$1 edges=$2 sym=$3 i mode
  add_ns "$prefix-inet"
  ip -n "$prefix-inet" link add br0 type bridge
  ip -n "$prefix-inet" link set br0 up
  NUC_NS=$prefix-nuc
  add_ns "$NUC_NS"
  ip link add wan netns "$NUC_NS" type veth peer name pnuc netns "$prefix-inet"
  ip -n "$prefix-inet" link set pnuc master br0 up
  ip -n "$NUC_NS" addr add 10.200.0.10/24 dev wan
  ip -n "$NUC_NS" link set wan up
  EDGE_NS=()
  for ((i = 1; i <= edges; i++)); do
    local r=$prefix-r$i e=$prefix-e$i
    add_ns "$r"
    add_ns "$e"
    ip link add wan netns "$r" type veth peer name pr$i netns "$prefix-inet"
    ip -n "$prefix-inet" link set pr$i master br0 up
    ip -n "$r" addr add "10.200.0.$((20 + i))/24" dev wan
    ip -n "$r" link set wan up
    ip link add lan netns "$r" type veth peer name eth0 netns "$e"
    ip -n "$r" addr add "192.168.$((10 + i)).1/24" dev lan
    ip -n "$r" link set lan up
    ip -n "$e" addr add "192.168.$((10 + i)).2/24" dev eth0
    ip -n "$e" link set eth0 up
    ip -n "$e" route add default via "192.168.$((10 + i)).1"
    ip netns exec "$r" sysctl -qw net.ipv4.ip_forward=1
    mode=""
    [ "$i" = "$sym" ] && mode=" fully-random"
    # Like a home router: masquerade outbound, and drop unsolicited traffic to the router
    # itself from the WAN (no ICMP answers). Dropping also keeps a stray inbound packet
    # from leaving a confirmed conntrack entry that would later clash with a mapping.
    ip netns exec "$r" nft -f - <<NFT
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade$mode
  }
}
table inet filter {
  chain input {
    type filter hook input priority filter; policy accept;
    iifname "wan" ct state new drop
  }
}
NFT
    EDGE_NS+=("$e")
  done
}
