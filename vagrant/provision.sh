#!/usr/bin/env bash
# Provisions one VM of vagrant/Vagrantfile (run by Vagrant as root, idempotent):
#   provision.sh nucleus 192.168.56.10
#   provision.sh edge 192.168.56.11 10.99.0.1 52:54:00:0a:00:11
# The Nucleus runs omni-nucleus on its second NIC; an edge binds its second NIC (found by
# its MAC) to vfio-pci and runs omni-daemon with the DPDK backend on it.
set -euo pipefail
role=${1:?role: nucleus or edge}
ip=${2:?underlay address}
inner=${3:-}
mac=${4:-}
src=/omni
state=/omni-state
cluster=vagrant-fleet

# Packages, Rust, libdpdk, hugepages: the same script as on a bare host.
hugepages=512
[ "$role" = nucleus ] && hugepages=0
"$src/scripts/setup-host.sh" --hugepages "$hugepages"
echo "vm.nr_hugepages=$hugepages" >/etc/sysctl.d/80-omni-hugepages.conf
export PATH="$HOME/.cargo/bin:$PATH"
(cd "$src" && cargo build --release --bins -q)
install -m 0755 "$src"/target/release/{omni-daemon,omni-dataplane,omni-nucleus} /usr/local/bin/
install -d -m 0700 /etc/omni

case "$role" in
nucleus)
  # The unit from packaging/ (a dynamic user, no capability), listening on the underlay
  # NIC; it creates its identity in its state directory on the first start.
  sed -e "s|--listen 0.0.0.0:51820|--listen $ip:51820|" \
    "$src/packaging/systemd/omni-nucleus.service" >/etc/systemd/system/omni-nucleus.service
  systemctl daemon-reload
  systemctl enable --now omni-nucleus
  key=/var/lib/private/omni-nucleus/nucleus.key
  for _ in $(seq 1 30); do [ -s "$key" ] && break; sleep 1; done
  omni-nucleus pubkey --identity "$key" >"$state/nucleus.pub"
  if [ ! -s "$state/cluster.secret" ]; then
    (umask 077 && omni-daemon cluster new "$cluster" 2>/dev/null >"$state/cluster.secret")
  fi
  ;;
edge)
  for f in nucleus.pub cluster.secret; do
    for _ in $(seq 1 60); do [ -s "$state/$f" ] && break; sleep 5; done
    [ -s "$state/$f" ] || { echo "provision.sh: $state/$f missing: provision the nucleus first" >&2; exit 1; }
  done
  install -m 0600 "$state/cluster.secret" /etc/omni/cluster.secret
  # The second NIC, by its MAC, and its PCI address.
  iface=$(ip -o link | awk -v m="$mac" 'tolower($0) ~ m { sub(":", "", $2); print $2; exit }')
  if [ -n "$iface" ]; then
    pci=$(basename "$(readlink -f "/sys/class/net/$iface/device")")
    ip link set "$iface" down
    modprobe vfio-pci
    # No virtual IOMMU in most VMs: vfio's no-IOMMU mode (the data plane then uses
    # physical addresses: CAP_SYS_ADMIN, which it keeps for PCI ports).
    echo 1 >/sys/module/vfio/parameters/enable_unsafe_noiommu_mode
    dpdk-devbind.py --bind=vfio-pci "$pci"
    echo "$pci" >/etc/omni/underlay.pci
  fi
  pci=$(cat /etc/omni/underlay.pci)
  cat >/etc/omni/config.toml <<CONF
[daemon]
backend = "dpdk"
identity = "/etc/omni/identity.key"

[dpdk]
underlay = "$pci"
underlay_ip = "$ip/24"
cores = "1"

[network]
nucleus = ["$(cat "$state/nucleus.pub")@192.168.56.10:51820"]
cluster = "$cluster"
cluster_secret_file = "/etc/omni/cluster.secret"
CONF
  chmod 0600 /etc/omni/config.toml
  [ -f /etc/omni/identity.key ] || omni-daemon --init --identity /etc/omni/identity.key
  sed -e "s|^ExecStart=.*|ExecStart=/usr/local/bin/omni-daemon --config /etc/omni/config.toml|" \
    "$src/packaging/systemd/omni-daemon.service" >/etc/systemd/system/omni-daemon.service
  systemctl daemon-reload
  systemctl enable --now omni-daemon
  for _ in $(seq 1 30); do ip link show omni0 >/dev/null 2>&1 && break; sleep 1; done
  ip addr replace "$inner/24" dev omni0
  ip link set omni0 up
  ;;
*) echo "provision.sh: role is nucleus or edge, not $role" >&2; exit 2 ;;
esac
echo "provision.sh: $role $ip ready"
