#!/usr/bin/env bash
# The Debian package: scripts/package.sh builds it from what setup.sh
# built; it installs with dpkg, and with only the package's files on PATH
# (env -i, PATH=/usr/bin:/bin: nothing from /usr/local) `husk check` says
# this host can run containers and `husk run` runs one; man pages and
# completions are there. The package is purged at the end.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$here/.." && pwd)
[ "$(id -u)" -eq 0 ] || { echo "SKIP: installing a package needs root"; exit 77; }
command -v dpkg-deb >/dev/null || { echo "SKIP: no dpkg-deb (not Debian)"; exit 77; }
if dpkg -s husk >/dev/null 2>&1 || [ -e /etc/husk ]; then
  echo "SKIP: husk is already installed as a package (or /etc/husk exists): not touching it"; exit 77
fi
tmp=$(mktemp -d /tmp/husk-pkg.XXXXXX)
cleanup() { dpkg --purge husk >/dev/null 2>&1 || true; rm -rf "$tmp" /etc/husk; }
trap cleanup EXIT
deb=$("$root/scripts/package.sh" "$tmp" 2>/dev/null | tail -n1)
contents=$(dpkg-deb -c "$deb")
for f in ./usr/bin/husk ./usr/bin/containerd-shim-husk-v2 ./usr/lib/husk/bin/husk-vmm \
  ./usr/lib/husk/bin/virtiofsd ./usr/lib/husk/bin/husk-vsockd ./usr/share/husk/vmlinux ./usr/share/husk/initramfs.cpio \
  ./etc/husk/husk.toml ./usr/share/man/man1/husk.1.gz ./usr/share/man/man1/husk-run.1.gz \
  ./usr/share/bash-completion/completions/husk ./usr/share/doc/husk/examples/containerd-husk.toml; do
  grep -q " $f\$" <<<"$contents" || { echo "FAIL: $f is not in the package"; exit 1; }
done
echo "ok   package built: $(basename "$deb"), $(du -h "$deb" | cut -f1)"
dpkg -i "$deb" >/dev/null
clean_env=(env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin HOME=/root)
check=$("${clean_env[@]}" husk --root "$tmp/state" check) || { echo "FAIL: husk check after install:"; echo "$check"; exit 1; }
grep -q "/usr/share/husk/vmlinux" <<<"$check" || { echo "FAIL: husk check does not use the package's kernel:"; echo "$check"; exit 1; }
for p in husk-vmm husk-vsockd virtiofsd; do
  grep -q "/usr/lib/husk/bin/$p" <<<"$check" || { echo "FAIL: husk check does not use the package's $p:"; echo "$check"; exit 1; }
done
echo "ok   husk check: $(head -1 <<<"$check")"
"$here/make-bundle.sh" "$tmp/b" sh -c 'echo from-the-package' >/dev/null
out=$("${clean_env[@]}" husk --root "$tmp/state" run --bundle "$tmp/b" pkg-$$ </dev/null) \
  || { echo "FAIL: husk run from the package"; exit 1; }
[ "$out" = from-the-package ] || { echo "FAIL: husk run printed '$out'"; exit 1; }
echo "ok   husk run from the package"
man -w husk >/dev/null 2>&1 || [ -s /usr/share/man/man1/husk.1.gz ] || { echo "FAIL: no man page"; exit 1; }
dpkg --purge husk >/dev/null
[ ! -e /usr/bin/husk ] && [ ! -e /etc/husk/husk.toml ] || { echo "FAIL: purge left files"; exit 1; }
echo "ok   purged"
