#!/usr/bin/env bash
# Builds a Debian package of husk from what scripts/setup.sh built (release
# binaries, the guest kernel and its config, the initramfs, the pinned
# device daemons): husk and the shim in /usr/bin, the monitor and the
# daemons it runs in /usr/lib/husk/bin (found next to the monitor, so they
# never shadow or conflict with a distribution's virtiofsd), the guest in
# /usr/share/husk, the default /etc/husk/husk.toml naming them, a
# containerd drop-in example, man pages and shell completions generated
# from the CLI. dpkg-deb (Debian's own packager, always installed) builds
# it: the package holds more than cargo builds (kernel, initramfs, daemons
# from `cargo install`), which a cargo-centric packager would only copy.
#
# usage: scripts/package.sh [OUT_DIR]   (prints the .deb's path last)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
out=${1:-$root/target/debian}
prefix=${HUSK_PREFIX:-/usr/local}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -1)
[ -n "$version" ] || die "no workspace version in Cargo.toml"
release=$root/target/release
for b in husk husk-vmm husk-vsockd containerd-shim-husk-v2; do
  [ -x "$release/$b" ] || die "$release/$b missing: run scripts/setup.sh first"
done
for f in vmlinux vmlinux.config initramfs.cpio; do
  [ -s "$prefix/share/husk/$f" ] || die "$prefix/share/husk/$f missing: run scripts/setup.sh first"
done

stage=$(mktemp -d /tmp/husk-deb.XXXXXX)
trap 'rm -rf "$stage"' EXIT
pkg=$stage/husk_${version}_amd64
install -d "$pkg/DEBIAN" "$pkg/usr/bin" "$pkg/usr/lib/husk/bin" "$pkg/usr/share/husk" \
  "$pkg/etc/husk" "$pkg/usr/share/doc/husk/examples" "$pkg/usr/share/man/man1" \
  "$pkg/usr/share/bash-completion/completions" "$pkg/usr/share/zsh/vendor-completions" \
  "$pkg/usr/share/fish/vendor_completions.d"
install -m 0755 "$release/husk" "$release/containerd-shim-husk-v2" "$pkg/usr/bin/"
# The monitor and the device daemons it runs, which it finds next to
# itself: husk-vsockd from this build, virtiofsd as setup.sh installed it.
install -m 0755 "$release/husk-vmm" "$release/husk-vsockd" "$pkg/usr/lib/husk/bin/"
[ -x "$prefix/bin/virtiofsd" ] || die "$prefix/bin/virtiofsd missing: run scripts/setup.sh first"
install -m 0755 "$prefix/bin/virtiofsd" "$pkg/usr/lib/husk/bin/virtiofsd"
for f in vmlinux vmlinux.config initramfs.cpio; do
  install -m 0644 "$prefix/share/husk/$f" "$pkg/usr/share/husk/$f"
done
cat >"$pkg/etc/husk/husk.toml" <<'TOML'
# husk's configuration (see `man husk`, `husk check`). Environment variables
# (HUSK_ENGINE, HUSK_KERNEL, ...) override these; a command-line flag
# overrides both.
engine = "auto"
kernel = "/usr/share/husk/vmlinux"
initramfs = "/usr/share/husk/initramfs.cpio"
vmm = "/usr/lib/husk/bin/husk-vmm"
TOML
cat >"$pkg/usr/share/doc/husk/examples/containerd-husk.toml" <<'TOML'
# containerd 1.6/1.7 (config version 2): the husk runtime class. Put this
# in /etc/containerd/config.toml (or a file it imports) and restart
# containerd; a Kubernetes RuntimeClass with handler "husk" selects it.
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.husk]
  runtime_type = "io.containerd.husk.v2"
  pod_annotations = ["husk.memory_mib", "husk.vcpus"]
TOML
"$release/husk" generate-docs "$stage/docs"
for page in "$stage"/docs/man1/*.1; do
  gzip -9n <"$page" >"$pkg/usr/share/man/man1/$(basename "$page").gz"
done
install -m 0644 "$stage/docs/completions/husk.bash" "$pkg/usr/share/bash-completion/completions/husk"
install -m 0644 "$stage/docs/completions/_husk" "$pkg/usr/share/zsh/vendor-completions/_husk"
install -m 0644 "$stage/docs/completions/husk.fish" "$pkg/usr/share/fish/vendor_completions.d/husk.fish"
install -m 0644 "$root/README.md" "$pkg/usr/share/doc/husk/README.md"
echo /etc/husk/husk.toml >"$pkg/DEBIAN/conffiles"
cat >"$pkg/DEBIAN/control" <<CONTROL
Package: husk
Version: $version
Architecture: amd64
Maintainer: husk developers <husk@localhost>
Depends: libc6, libgcc-s1, libseccomp2, libcap-ng0
Recommends: qemu-system-x86, iptables, containerd
Section: admin
Priority: optional
Installed-Size: $(du -sk "$pkg" | cut -f1)
Description: microVM-backed OCI container runtime
 husk runs each container in its own KVM microVM: a runc-compatible CLI
 (husk) and a containerd shim v2 (containerd-shim-husk-v2), with the guest
 kernel, initramfs and the virtio-fs and vsock device daemons. qemu is the
 engine on hosts without VT-x/AMD-V. Run "husk check" after installing.
CONTROL
mkdir -p "$out"
deb=$out/husk_${version}_amd64.deb
dpkg-deb --root-owner-group --build -Zxz "$pkg" "$deb" >&2
log "built $deb ($(du -h "$deb" | cut -f1))"
echo "$deb"
