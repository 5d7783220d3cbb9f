#!/usr/bin/env bash
# Builds the Debian packages omni-daemon (daemon, data plane, XDP object, systemd unit,
# default /etc/omni/config.toml, manual pages, bash/zsh/fish completions) and omni-nucleus
# (server, unit, manual pages, completions) into target/debian/.
#   scripts/package.sh            (installs cargo-deb through scripts/setup.sh if missing)
# Install with: dpkg -i target/debian/omni-daemon_*.deb target/debian/omni-nucleus_*.deb
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in -h|--help) sed -n '2,6p' "$0"; exit 0 ;; esac
if ! command -v cargo-deb >/dev/null 2>&1 && ! [ -x "$HOME/.cargo/bin/cargo-deb" ]; then
  if [ "$(id -u)" = 0 ]; then scripts/setup.sh --package >/dev/null
  else echo "package.sh: cargo-deb is missing: sudo scripts/setup.sh --package (or cargo install cargo-deb)" >&2; exit 1
  fi
fi
export PATH="$HOME/.cargo/bin:$PATH"
# The package carries the XDP program: a build without it is an error here.
export OMNI_XDP_REQUIRED=1

echo "== building (release)"
cargo build --release -q -p omni-daemon -p omni-dataplane -p omni-nucleus -p omni-ebpf-core --bins --lib
out=target/release/package
rm -rf "$out" target/debian && mkdir -p "$out/man" "$out/completions" "$out/systemd"
cp target/bpfel-unknown-none/release/omni-ebpf "$out/omni-ebpf"

echo "== manual pages and completions (from the binaries' own command-line definitions)"
for bin in omni-daemon omni-nucleus; do
  "target/release/$bin" man --out "$out/man"
  "target/release/$bin" completions bash >"$out/completions/$bin.bash"
  "target/release/$bin" completions zsh >"$out/completions/_$bin"
  "target/release/$bin" completions fish >"$out/completions/$bin.fish"
  # The units name /usr/local/bin (a manual install); the package installs into /usr/bin.
  sed 's|/usr/local/bin/|/usr/bin/|g' "packaging/systemd/$bin.service" >"$out/systemd/$bin.service"
done

echo "== packages"
for pkg in omni-daemon omni-nucleus; do
  cargo deb -q -p "$pkg" --no-build --strip
done
ls -1 target/debian/*.deb
