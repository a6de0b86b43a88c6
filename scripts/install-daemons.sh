#!/usr/bin/env bash
# Installs the third-party vhost-user device daemon both engines use
# (virtiofsd), at a pinned version, with cargo install; skipped when that
# version is already there. The vsock backend, husk-vsockd, is built with
# the workspace and installed by setup.sh next to husk-vmm.
#
# usage: install-daemons.sh BINDIR
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
. "$root/scripts/lib.sh"
bindir=${1:?usage: $0 BINDIR}

VIRTIOFSD_VERSION=1.14.0
apt_need libcap-ng-dev libseccomp-dev pkg-config

# install_pinned CRATE VERSION: cargo install into a cache-side root, then
# copy into BINDIR; the version stamp next to it makes reruns free.
install_pinned() {
  local crate=$1 version=$2 stamp="$bindir/.$1.version"
  if [ -x "$bindir/$crate" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$version" ]; then
    log "$crate $version already installed"
    return
  fi
  local croot="$HUSK_CACHE_DIR/cargo-install/$crate-$version"
  if [ ! -x "$croot/bin/$crate" ]; then
    log "cargo install $crate $version (a few minutes)"
    cargo install -q --locked --root "$croot" -j"${HUSK_JOBS:-$(nproc)}" "$crate" --version "$version" >&2
  fi
  install -m 0755 "$croot/bin/$crate" "$bindir/$crate"
  echo "$version" > "$stamp"
}
install_pinned virtiofsd "$VIRTIOFSD_VERSION"
