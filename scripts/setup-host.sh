#!/usr/bin/env bash
# Prepares a host for the DPDK data plane: the packages (scripts/setup.sh) and hugepages.
# Idempotent: what is already in place is left alone.
#   sudo scripts/setup-host.sh [--hugepages N]     N 2 MiB pages (default 1024 = 2 GiB)
# Hugepages reserved this way last until reboot; to keep them, add vm.nr_hugepages=N to
# /etc/sysctl.d/ (the script prints the line). Binding a PCI NIC to a DPDK driver
# (vfio-pci: dpdk-devbind.py --bind=vfio-pci 0000:3b:00.0) is left to the operator.
set -euo pipefail
pages=1024
while [ $# -gt 0 ]; do
  case "$1" in
    --hugepages)
      pages=${2:-}
      shift 2 || { echo "setup-host.sh: --hugepages needs a number" >&2; exit 2; }
      ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup-host.sh: unknown option $1 (try --help)" >&2; exit 2 ;;
  esac
done
case "$pages" in
  ''|*[!0-9]*) echo "setup-host.sh: --hugepages wants a number of 2 MiB pages, got '$pages'" >&2; exit 2 ;;
esac
if [ "$(id -u)" != 0 ]; then
  echo "setup-host.sh: run as root (it installs packages and reserves hugepages): sudo $0 $*" >&2
  exit 1
fi
"$(dirname "$0")/setup.sh"

have=$(awk '/^HugePages_Total:/ { print $2 }' /proc/meminfo)
if [ "${have:-0}" -lt "$pages" ]; then
  echo "$pages" >/proc/sys/vm/nr_hugepages
  have=$(awk '/^HugePages_Total:/ { print $2 }' /proc/meminfo)
fi
free=$(awk '/^HugePages_Free:/ { print $2 }' /proc/meminfo)
echo "setup-host.sh: hugepages: $have reserved, $free free (2 MiB each)"
if [ "${have:-0}" -lt "$pages" ]; then
  echo "setup-host.sh: only $have of $pages hugepages could be reserved (memory fragmented or short);" \
    "omni-dataplane --backend dpdk then runs with --no-huge and says so" >&2
fi
echo "setup-host.sh: to keep them across reboots: echo vm.nr_hugepages=$pages > /etc/sysctl.d/80-omni-hugepages.conf"
if ! pkg-config --exists libdpdk; then
  echo "setup-host.sh: libdpdk is still missing (apt install libdpdk-dev)" >&2
  exit 1
fi
echo "setup-host.sh: DPDK $(pkg-config --modversion libdpdk) ready"
