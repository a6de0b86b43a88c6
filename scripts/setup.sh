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

# step TEXT: says what comes next and how long the step before took.
step_started=
step() {
  [ -n "$step_started" ] && log "  (took $((SECONDS - step_started)) s)"
  step_started=$SECONDS
  log "$1"
}
step "1/6 apt packages (a minute or two the first time)"
apt_need build-essential pkg-config qemu-system-x86 busybox-static jq file cpio \
  libcap-ng-dev libseccomp-dev iproute2 iptables runc containerd

step "2/6 device daemon (virtiofsd: cargo install, ~3 min on 2 cores the first time, cached after)"
"$root/scripts/install-daemons.sh" "$prefix/bin"

step "3/6 guest kernel (linux-source-6.12 + our fragments: ~7 min on 2 cores the first time, cached by its inputs after)"
vmlinux=$("$root/guest-kernel/build.sh" | tail -n1)

step "4/6 binaries (release: ~10 min on 2 cores from scratch, about a minute after a small change)"
(cd "$root" && cargo build -q --release -j"$jobs" --workspace --bins)

step "5/6 guest initramfs (the static agent: ~2 min from scratch, cached after)"
initramfs=$("$root/guest-kernel/build-initramfs.sh" | tail -n1)

step "6/6 install to $prefix, husk check, the Debian package (under a minute)"
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
log "setup took $SECONDS s"

$run_demo || exit 0
exec "$root/scripts/demo.sh"
