#!/usr/bin/env bash
# The Debian packages, installed for real: builds them (scripts/package.sh), installs both
# with dpkg -i on this machine, runs the installed commands (--init, --check, man -w), then
# removes (dpkg -r) and purges (dpkg -P) them and checks that nothing of theirs is left but
# the node identity, which the package keeps on purpose. Refuses to run where either
# package is already installed (it would replace a real installation).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "$0")/lib.sh"
need_root "$@"
cd "$OMNI_ROOT"

for p in omni-daemon omni-nucleus; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    echo "package_test.sh: $p is installed on this machine; remove it first (dpkg -r $p) or run this in CI" >&2
    exit 1
  fi
done
had_identity=0
[ -e /etc/omni/identity.key ] && had_identity=1
fail() { echo "package_test.sh: FAILED: $*" >&2; exit 1; }
cleanup() {
  dpkg -P omni-daemon omni-nucleus >/dev/null 2>&1 || true
  if [ "$had_identity" = 0 ]; then rm -f /etc/omni/identity.key; rmdir /etc/omni 2>/dev/null || true; fi
}
trap cleanup EXIT INT TERM

scripts/package.sh
# package.sh starts from an empty target/debian: one package of each.
daemon_deb=(target/debian/omni-daemon_*.deb)
nucleus_deb=(target/debian/omni-nucleus_*.deb)

echo "== dpkg -i"
# Minimal images exclude manual pages from every package (dpkg path-exclude); ours must
# be checked, so they are included on purpose.
dpkg -i --path-include='/usr/share/man/*' "${daemon_deb[0]}" "${nucleus_deb[0]}"
files=$(dpkg -L omni-daemon omni-nucleus | sort -u)

echo "== the installed commands"
[ "$(command -v omni-daemon)" = /usr/bin/omni-daemon ] || fail "omni-daemon is not /usr/bin/omni-daemon"
for b in omni-dataplane omni-nucleus; do [ -x "/usr/bin/$b" ] || fail "/usr/bin/$b is missing"; done
if [ "$had_identity" = 0 ]; then
  out=$(omni-daemon --init)
  echo "   $out"
  [[ "$out" == "Your Public Identity: "* ]] || fail "omni-daemon --init printed: $out"
fi
omni-daemon --config /etc/omni/config.toml --check | sed 's/^/   /' ||
  fail "the packaged /etc/omni/config.toml does not pass --check"
omni-nucleus --version >/dev/null || fail "omni-nucleus --version"
for page in omni-daemon omni-daemon-status omni-nucleus; do
  man -w "$page" >/dev/null || fail "man -w $page finds no page"
done
echo "   man -w omni-daemon: $(man -w omni-daemon)"
for f in /usr/share/bash-completion/completions/omni-daemon /usr/share/zsh/vendor-completions/_omni-daemon \
  /usr/share/fish/vendor_completions.d/omni-daemon.fish /usr/share/bash-completion/completions/omni-nucleus; do
  [ -s "$f" ] || fail "no completion file $f"
done
bash -c 'source /usr/share/bash-completion/completions/omni-daemon && complete -p omni-daemon' >/dev/null ||
  fail "the bash completion does not load"
grep -q '^ExecStart=/usr/bin/omni-daemon ' /lib/systemd/system/omni-daemon.service ||
  fail "the omni-daemon unit does not start /usr/bin/omni-daemon"
grep -q '^ExecStart=/usr/bin/omni-nucleus ' /lib/systemd/system/omni-nucleus.service ||
  fail "the omni-nucleus unit does not start /usr/bin/omni-nucleus"
# The XDP object: a BPF ELF file (e_machine 247).
[ "$(od -An -tu2 -j18 -N2 /usr/lib/omni/omni-xdp.o | tr -d ' ')" = 247 ] || fail "/usr/lib/omni/omni-xdp.o is not a BPF object"

echo "== dpkg -r, then dpkg -P"
dpkg -r omni-daemon omni-nucleus
[ ! -e /usr/bin/omni-daemon ] || fail "dpkg -r left /usr/bin/omni-daemon"
[ -e /etc/omni/config.toml ] || fail "dpkg -r removed the configuration (only purge should)"
dpkg -P omni-daemon omni-nucleus
left=()
while read -r f; do
  [ -n "$f" ] && [ ! -d "$f" ] && [ -e "$f" ] && left+=("$f")
done <<<"$files"
[ -e /etc/omni/config.toml ] && left+=(/etc/omni/config.toml)
[ ${#left[@]} -eq 0 ] || fail "purge left: ${left[*]}"
[ -e /etc/omni/identity.key ] || fail "purge removed the node identity (it is kept on purpose)"
echo "   purged: no file of either package is left; /etc/omni/identity.key is kept on purpose"
echo "== packages install, run and purge cleanly"
