#!/usr/bin/env bash
# containerd + ctr through containerd-shim-husk-v2: a container with
# CAP_SYS_ADMIN, a read-only rootfs (--read-only) and a read-only volume
# remounts both read-write inside the guest, mounts the virtio-fs share a
# second time and writes everywhere; the host's volume must not change and
# every write must fail (EROFS comes from the host mount virtiofsd uses).
# The container is attached into the running VM's share by the shim
# (staged, then moved in by fd), which this covers too. The volume goes to
# /home, which the image has: ctr's --read-only rootfs is a read-only
# snapshot view, where no missing destination can be made (as with runc).
set -uo pipefail
. "$(cd "$(dirname "$0")/.." && pwd)/shim/lib.sh"
shim_preflight
tmp=$(mktemp -d)
trap 'shim_cleanup; containerd_stop; rm -rf "$tmp"' EXIT
containerd_start || exit 1
shim_import_image "$tmp"
R=(--runtime io.containerd.husk.v2)

mkdir "$tmp/vol"; echo host >"$tmp/vol/data"
attack='
try() { if "$@" 2>/dev/null; then echo "ok: $*"; else echo "failed: $*"; fi; }
try mount -o remount,rw /home
try sh -c "echo guest > /home/data"
try touch /home/new
try mount -o remount,rw /
try touch /root-new
try mkdir /dev/again
try mount -t virtiofs husk /dev/again
try touch /dev/again/share-new
for d in /dev/again/* /dev/again/*/*; do [ -d "$d" ] && try touch "$d/share-new"; done
test -e /root-new && echo "root-new exists"
echo done'
out=$(c run --rm "${R[@]}" --read-only --cap-add CAP_SYS_ADMIN \
  --mount "type=bind,src=$tmp/vol,dst=/home,options=rbind:ro" \
  "$IMAGE" t-ro sh -c "$attack" 2>&1); rc=$?
echo "$out" | sed 's/^/    guest: /'
expect_eq "run exit" "$rc" 0
grep -q '^done$' <<<"$out" || fail "the attack did not finish: $out"
grep -q '^ok: mount -t virtiofs husk /dev/again$' <<<"$out" \
  || fail "the guest could not mount the share again (nothing tested): $out"
if grep -E '^ok: (touch|sh -c)|root-new exists' <<<"$out"; then
  fail "the guest wrote through a read-only mount"
fi
echo "ok: every write from the guest failed"
expect_eq "volume data" "$(cat "$tmp/vol/data")" host
expect_eq "volume entries" "$(ls "$tmp/vol")" data

shim_expect_nothing_left
echo "ok: nothing left behind"
