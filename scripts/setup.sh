#!/usr/bin/env bash
# Installs what OmniNervous needs to build, run and test on Debian/Ubuntu. Idempotent:
# every step checks first and does nothing when already done.
#   scripts/setup.sh            build + test dependencies
#   scripts/setup.sh --fuzz     also the nightly toolchain and cargo-fuzz
#   scripts/setup.sh --bench    also what bench/compare compares against (wireguard-go, wg,
#                               boringtun and gotatun in bench/.tools) and gnuplot
#   scripts/setup.sh --package  also cargo-deb and man-db (scripts/package.sh, its test)
set -euo pipefail

want_fuzz=0 want_bench=0 want_package=0
for a in "$@"; do
  case "$a" in
    --fuzz) want_fuzz=1 ;;
    --bench) want_bench=1 ;;
    --package) want_package=1 ;;
    -h|--help) sed -n '2,7p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

if [ "$(id -u)" != 0 ]; then
  echo "setup.sh: run as root (it installs packages): sudo $0 $*" >&2
  exit 1
fi

pkgs=(build-essential pkg-config ca-certificates curl git iproute2 iputils-ping iperf3 socat tcpdump nftables procps bash util-linux shellcheck ethtool libdpdk-dev dpdk libclang-dev)
[ "$want_bench" = 1 ] && pkgs+=(wireguard-go wireguard-tools gnuplot-nox)
[ "$want_package" = 1 ] && pkgs+=(man-db dpkg-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# Rust (1.95 or newer).
if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup.sh: installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy >/dev/null
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rust_minor:-0}" -lt 95 ]; then
  if command -v rustup >/dev/null 2>&1; then
    rustup toolchain install stable --profile minimal --component rustfmt,clippy >/dev/null
    rustup default stable >/dev/null
  else
    echo "setup.sh: rustc $(rustc --version) is older than 1.95; install a newer Rust" >&2
    exit 1
  fi
fi
if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy rustfmt >/dev/null
fi

if [ "$want_fuzz" = 1 ]; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    rustup toolchain install nightly --profile minimal >/dev/null
  fi
  if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "setup.sh: installing cargo-fuzz"
    cargo install cargo-fuzz --locked >/dev/null 2>&1 || cargo install cargo-fuzz >/dev/null
  fi
fi

if [ "$want_package" = 1 ] && ! cargo deb --version >/dev/null 2>&1; then
  echo "setup.sh: installing cargo-deb"
  cargo install cargo-deb --locked >/dev/null 2>&1 || cargo install cargo-deb >/dev/null
fi

if [ "$want_bench" = 1 ]; then
  tools="$(cd "$(dirname "$0")/.." && pwd)/bench/.tools"
  if [ ! -x "$tools/bin/boringtun-cli" ]; then
    echo "setup.sh: building boringtun-cli into $tools (a comparison point, not part of OmniNervous)"
    cargo install boringtun-cli --locked --root "$tools" >/dev/null 2>&1 || cargo install boringtun-cli --root "$tools" >/dev/null
  fi
  if [ ! -x "$tools/bin/gotatun" ]; then
    echo "setup.sh: building gotatun into $tools (Mullvad's user-space WireGuard, a comparison point)"
    cargo install gotatun-cli --locked --root "$tools" >/dev/null 2>&1 || cargo install gotatun-cli --root "$tools" >/dev/null
  fi
fi

# The XDP program (xdp-fallback/ebpf) is built by the workspace build with a nightly
# toolchain (rust-src for build-std) and bpf-linker, linked against the system LLVM.
if command -v rustup >/dev/null 2>&1; then
  if ! rustup toolchain list | grep -q '^nightly'; then
    echo "setup.sh: installing the nightly toolchain (for the eBPF program)"
    rustup toolchain install nightly --profile minimal >/dev/null
  fi
  if ! rustup component list --toolchain nightly --installed 2>/dev/null | grep -q '^rust-src'; then
    rustup component add rust-src --toolchain nightly >/dev/null
  fi
fi
if ! command -v bpf-linker >/dev/null 2>&1; then
  llvm=()
  for p in llvm-22-dev libpolly-22-dev libzstd-dev zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || llvm+=("$p")
  done
  if [ ${#llvm[@]} -gt 0 ]; then
    echo "setup.sh: installing ${llvm[*]} (bpf-linker links against LLVM 22)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${llvm[@]}" >/dev/null || true
  fi
  echo "setup.sh: building bpf-linker (a few minutes, once)"
  if [ -d /usr/lib/llvm-22 ]; then
    LLVM_PREFIX=/usr/lib/llvm-22 cargo install bpf-linker --no-default-features --features llvm-22 >/dev/null 2>&1 \
      || cargo install bpf-linker >/dev/null
  else
    cargo install bpf-linker >/dev/null
  fi
fi

# The TUN/TAP driver.
[ -e /dev/net/tun ] || modprobe tun 2>/dev/null || true
if [ ! -e /dev/net/tun ]; then
  echo "setup.sh: /dev/net/tun is missing and 'modprobe tun' failed; the socket backend needs TUN/TAP" >&2
  exit 1
fi
echo "setup.sh: ready"
