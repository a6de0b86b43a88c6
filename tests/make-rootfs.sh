#!/usr/bin/env bash
# Makes a busybox root filesystem in DIR: /bin/busybox from Debian's
# busybox-static with a link per applet, /etc/passwd and /etc/group with
# root and nobody, and the usual empty directories.
#
# usage: make-rootfs.sh DIR
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../scripts/lib.sh"
[ $# -eq 1 ] || die "usage: $0 DIR"
apt_need busybox-static
dir=$1
mkdir -p "$dir"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,root,run,var/tmp,home}
chmod 1777 "$dir/tmp" "$dir/var/tmp"
install -m 0755 /bin/busybox "$dir/bin/busybox"
# One process for the ~400 links, not two per link: forks are slow under
# emulation (the nested tier makes bundles inside a TCG-emulated VM).
/bin/busybox --list-full | DIR=$dir perl -ne '
  chomp; next if $_ eq "bin/busybox";
  my $p = "$ENV{DIR}/$_";
  unlink $p; symlink("/bin/busybox", $p) or die "make-rootfs: $p: $!\n";'
cat > "$dir/etc/passwd" <<'PW'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PW
cat > "$dir/etc/group" <<'GR'
root:x:0:
daemon:x:1:
tty:x:5:
nogroup:x:65534:
GR
echo "nameserver 127.0.0.1" > "$dir/etc/resolv.conf"
echo "husk" > "$dir/etc/hostname"
echo "$dir"
