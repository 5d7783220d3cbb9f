#!/usr/bin/env bash
# The original README's one-command local cluster, under its original name. It ran Docker
# containers; network namespaces do the same job here without images or a Docker engine:
#   1. cleanup: namespaces and work directories an earlier run left behind;
#   2. startup: a Nucleus on an "internet" and two edges, each behind its own NAT router;
#   3. verification: registration, NAT traversal (hole punching), a direct P2P path, the
#      Noise IK handshake, FDB learning, ping and iperf3 over omni0;
#   4. teardown, also when a check fails or the run is interrupted.
# It prints the original README's result table with what this run measured, and exits 0
# only when every check passed. It is scripts/cluster.sh with two edges; options pass on:
#   scripts/run_local_autotest.sh [--seconds S] [--keep] [--symmetric-nat 1|2]
set -euo pipefail
case "${1:-}" in -h|--help) sed -n '2,11p' "$0"; exit 0 ;; esac
exec "$(dirname "$0")/cluster.sh" --edges 2 "$@"
