#!/bin/sh
# Stage 2 of the nested tier's L1 (PID 1, on the overlay of this host's
# root): the mounts a container host has, KVM with nested AMD-V, then the
# job's command; its exit status goes back through the job share.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs -o mode=0755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/husk-l1-job
mount -t virtiofs job /run/husk-l1-job
job=/run/husk-l1-job
moddir=$(cat $job/moddir)
kver=$(basename "$moddir")
mkdir -p /lib/modules/"$kver"
mount --bind "$moddir" /lib/modules/"$kver"
modprobe kvm_amd nested=1 || echo "l1: modprobe kvm_amd failed"
for m in tun veth; do modprobe -q $m; done
ip link set lo up
hostname husk-l1
echo "l1: up in $(cut -d' ' -f1 /proc/uptime) s; /dev/kvm $( [ -c /dev/kvm ] && echo present || echo MISSING)"
if [ -f $job/debug-shell ]; then
  (while :; do setsid sh -c 'exec sh -i </dev/ttyS1 >/dev/ttyS1 2>&1'; sleep 1; done) &
fi
( . $job/cmd ) </dev/null
echo $? >$job/rc
sync
echo "l1: done in $(cut -d' ' -f1 /proc/uptime) s"
echo o >/proc/sysrq-trigger
reboot -f
