#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to a running husk:
# apt packages, the device daemons, the guest kernel and initramfs, the
# binaries, installed to /usr/local, then one container run as a smoke test.
#
# usage: setup.sh [--no-run]
#   --no-run   build and install only (the test command uses this)
# Env: HUSK_CACHE_DIR (default /var/cache/husk), HUSK_JOBS (default nproc),
#      HUSK_PREFIX (default /usr/local).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"

run_demo=true
[ "${1:-}" = --no-run ] && run_demo=false
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and binaries)"
prefix=${HUSK_PREFIX:-/usr/local}
jobs=${HUSK_JOBS:-$(nproc)}

# Rust: Debian 12's rustc is too old; the rustup toolchain is required.
[ -d "$HOME/.cargo/bin" ] && export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "no cargo: install a stable Rust toolchain with rustup (Debian 12's rustc 1.63 is too old)"

log "1/6 apt packages"
apt_need build-essential pkg-config qemu-system-x86 busybox-static jq file cpio \
  libcap-ng-dev libseccomp-dev iproute2 iptables runc containerd

log "2/6 device daemon (virtiofsd)"
"$root/scripts/install-daemons.sh" "$prefix/bin"

log "3/6 guest kernel"
vmlinux=$("$root/guest-kernel/build.sh" | tail -n1)

log "4/6 binaries (release)"
(cd "$root" && cargo build -q --release -j"$jobs" --workspace --bins)

log "5/6 guest initramfs"
initramfs=$("$root/guest-kernel/build-initramfs.sh" | tail -n1)

log "6/6 install to $prefix"
for b in husk husk-vmm husk-vsockd husk-agent containerd-shim-husk-v2; do
  install -m 0755 "$root/target/release/$b" "$prefix/bin/$b"
done
install -d "$prefix/share/husk"
install -m 0644 "$vmlinux" "$prefix/share/husk/vmlinux"
install -m 0644 "$initramfs" "$prefix/share/husk/initramfs.cpio"
# The kernel's .config, so that `husk check` can say whether it has what
# husk needs.
install -m 0644 "$(dirname "$vmlinux")/config" "$prefix/share/husk/vmlinux.config"
log "installed: $prefix/bin/{husk,husk-vmm,husk-vsockd,husk-agent}, $prefix/share/husk/{vmlinux,vmlinux.config,initramfs.cpio}"
"$prefix/bin/husk" check || die "husk check says this host cannot run containers (above)"
deb=$("$root/scripts/package.sh" | tail -n1)
log "Debian package: $deb (dpkg -i it on another Debian 12 machine, then husk check)"

$run_demo || exit 0
exec "$root/scripts/demo.sh"
