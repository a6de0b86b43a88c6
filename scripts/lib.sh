# Shared helpers for husk's shell scripts (sourced, not run).

# Where slow artifacts (the guest kernel, the initramfs) are cached, outside
# the git tree so a fresh clone reuses them.
HUSK_CACHE_DIR=${HUSK_CACHE_DIR:-/var/cache/husk}

log() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# apt_need PKG...: install the Debian packages that are not installed yet.
apt_need() {
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
  log "installing ${missing[*]}"
  if [ -z "${HUSK_APT_UPDATED:-}" ]; then
    apt-get update -q >&2 || die "apt-get update failed"
    export HUSK_APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get install ${missing[*]} failed"
}

# hash_inputs FILE...: one sha256 over the names and contents of the inputs.
hash_inputs() {
  local f
  for f in "$@"; do printf '%s\n' "$(basename "$f")"; cat "$f"; done | sha256sum | cut -c1-16
}
