#!/usr/bin/env bash
# Deploys omni-nucleus to a Linux server over ssh, as a hardened systemd service, and prints
# the key nodes should pin.
#   scripts/deploy_nucleus.sh <user@remote-ip> [ssh-key-path] [--port 51820] [--dry-run]
#                             [--binary PATH]
# --dry-run prints every command it would run and changes nothing, locally or remotely.
# The remote needs systemd and sudo (or root); the firewall must let UDP <port> in.
set -euo pipefail

usage() { sed -n '2,8p' "$0"; exit "${1:-0}"; }

target="" key="" port=51820 dry=0 binary=""
while [ $# -gt 0 ]; do
  case "$1" in
    --port) port=${2:-}; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --binary) binary=${2:-}; shift 2 ;;
    -h|--help) usage 0 ;;
    -*) echo "deploy_nucleus.sh: unknown option $1" >&2; usage 2 ;;
    *)
      if [ -z "$target" ]; then target=$1
      elif [ -z "$key" ]; then key=$1
      else echo "deploy_nucleus.sh: unexpected argument $1" >&2; usage 2
      fi
      shift ;;
  esac
done
[ -n "$target" ] || { echo "deploy_nucleus.sh: missing <user@remote-ip>" >&2; usage 2; }
[[ "$target" == *@* ]] || { echo "deploy_nucleus.sh: $target should be user@host" >&2; exit 2; }
if ! [[ "$port" =~ ^[0-9]+$ ]] || [ "$port" -lt 1 ] || [ "$port" -gt 65535 ]; then
  echo "deploy_nucleus.sh: --port must be 1 to 65535" >&2; exit 2
fi
if [ -n "$key" ] && [ ! -r "$key" ] && [ "$dry" = 0 ]; then
  echo "deploy_nucleus.sh: cannot read ssh key $key" >&2; exit 2
fi
host=${target#*@}
root=$(cd "$(dirname "$0")/.." && pwd)
ssh_opts=(-o BatchMode=yes -o ConnectTimeout=15)
[ -n "$key" ] && ssh_opts+=(-i "$key")

run() { # prints, and runs unless --dry-run
  printf '+ %s\n' "$*"
  [ "$dry" = 1 ] || "$@"
}

if [ -z "$binary" ]; then
  binary=$root/target/release/omni-nucleus
  run cargo build --release --manifest-path "$root/Cargo.toml" -p omni-nucleus
fi
[ "$dry" = 1 ] || [ -x "$binary" ] || { echo "deploy_nucleus.sh: $binary is not an executable" >&2; exit 1; }

# The unit is packaging/systemd/omni-nucleus.service, with this port (and, below 1024,
# the one capability binding it needs).
cap=""
if [ "$port" -lt 1024 ]; then cap=CAP_NET_BIND_SERVICE; fi
unit=$(sed -e "s/--listen 0.0.0.0:51820/--listen 0.0.0.0:$port/" \
  -e "s/^AmbientCapabilities=\$/AmbientCapabilities=$cap/" \
  -e "s/^CapabilityBoundingSet=\$/CapabilityBoundingSet=$cap/" \
  "$root/packaging/systemd/omni-nucleus.service")

echo "== copying omni-nucleus to $target"
run scp "${ssh_opts[@]}" "$binary" "$target:/tmp/omni-nucleus"
echo "== installing the service"
remote_script="set -e
sudo install -m 0755 /tmp/omni-nucleus /usr/local/bin/omni-nucleus && rm -f /tmp/omni-nucleus
printf '%s\n' '$unit' | sudo tee /etc/systemd/system/omni-nucleus.service >/dev/null
sudo systemctl daemon-reload
sudo systemctl enable --now omni-nucleus.service
sudo systemctl restart omni-nucleus.service
for i in 1 2 3 4 5 6 7 8 9 10; do sudo test -s /var/lib/omni-nucleus/nucleus.key && break; sleep 1; done
sudo /usr/local/bin/omni-nucleus pubkey --identity /var/lib/omni-nucleus/nucleus.key"
if [ "$dry" = 1 ]; then
  printf '+ ssh %s %s <<remote\n%s\nremote\n' "${ssh_opts[*]}" "$target" "$remote_script"
  nkey="<NUCLEUS-KEY>"
else
  # The script is built here on purpose (port, unit text); it runs there.
  # shellcheck disable=SC2029
  nkey=$(ssh "${ssh_opts[@]}" "$target" "$remote_script" | tail -n 1)
fi
echo
echo "Nucleus running on $host:$port (UDP). Point nodes at it, pinning its key:"
echo "  omni-daemon --nucleus $nkey@$host:$port --cluster <NAME> --cluster-secret-file <FILE, mode 0600> ..."
echo "Metrics on the server: curl -s 127.0.0.1:9200/metrics"
