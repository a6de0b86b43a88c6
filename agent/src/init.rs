//! PID 1 duties in the guest: the base mounts, the console, virtio-fs
//! shares, and the final reboot (which ends a `-no-reboot` microVM).

use std::fs;
use std::io;
use std::path::Path;

use nix::mount::{mount, MsFlags};

/// Why PID 1 setup failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A base mount failed.
    #[error("mount {fstype} on {target}")]
    Mount {
        /// The filesystem type.
        fstype: String,
        /// The mount point.
        target: String,
        /// The failure.
        #[source]
        source: io::Error,
    },
}

fn is_mountpoint(target: &str) -> bool {
    crate::container::rootfs::own_mountinfo()
        .iter()
        .any(|m| m.mount_point == Path::new(target))
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), InitError> {
    let _ = fs::create_dir_all(target);
    if target != "/proc" && is_mountpoint(target) {
        return Ok(());
    }
    match mount(Some(src), target, Some(fstype), flags, data) {
        Ok(()) | Err(nix::errno::Errno::EBUSY) => Ok(()),
        Err(e) => Err(InitError::Mount {
            fstype: fstype.into(),
            target: target.into(),
            source: e.into(),
        }),
    }
}

/// Mounts /proc, /sys, /dev, /dev/pts, /dev/shm, /run and cgroup2, and
/// points missing stdio at /dev/console.
pub fn setup() -> Result<(), InitError> {
    let common = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", common, None)?;
    mnt("sysfs", "/sys", "sysfs", common, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("mode=0620,ptmxmode=0666"),
    )?;
    mnt("shm", "/dev/shm", "tmpfs", common, Some("mode=1777"))?;
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", common, None)?;
    crate::container::cgroups::enable_controllers(Path::new("/sys/fs/cgroup"));
    let _ = std::os::unix::fs::symlink("/proc/self/fd", "/dev/fd");
    // The kernel gives init /dev/console as 0-2 when the initramfs has a
    // /dev/console node; otherwise open it now that devtmpfs is mounted.
    for fd in 0..3 {
        if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok() {
            continue;
        }
        let console = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/console");
        if let Ok(console) = console {
            // The open may itself have landed on `fd` (the lowest free one).
            let raw = std::os::fd::IntoRawFd::into_raw_fd(console);
            if raw != fd {
                let _ = nix::unistd::dup2(raw, fd);
                let _ = nix::unistd::close(raw);
            }
        }
    }
    // The guest's root network namespace is the pod's: loopback works even
    // before (or without) ConfigureNetwork.
    if let Err(e) = crate::network::loopback_up() {
        tracing::warn!(error = %e, "cannot bring lo up");
    }
    Ok(())
}

/// Makes the guest's mounts shared, as systemd makes a host's, so that a
/// container's propagation (`linux.rootfsPropagation`, a volume's `rslave`
/// or `rshared`) means what it means with runc on such a host: `rslave`
/// receives the guest's mounts, an `rshared` volume shares its mounts with
/// the guest. A container still gets `rslave` by default: nothing it
/// mounts reaches the guest unless it asks. After [`setup`], once logging
/// is up (a failure is logged, not fatal).
pub fn share_mounts() {
    if let Err(e) = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SHARED | MsFlags::MS_REC,
        None::<&str>,
    ) {
        tracing::warn!(
            error = %e,
            "cannot make the guest's mounts shared: a container's mount propagation stays \
             within the container"
        );
    }
}

/// Mounts the virtio-fs share `tag` at its mount point unless it is there.
pub fn mount_share(tag: &str) -> Result<(), InitError> {
    let target = husk_protocol::share_mount_point(tag);
    if tag.is_empty() || tag.contains('/') {
        return Err(InitError::Mount {
            fstype: "virtiofs".into(),
            target,
            source: io::Error::new(io::ErrorKind::InvalidInput, "bad share tag"),
        });
    }
    if is_mountpoint(&target) {
        return Ok(());
    }
    mnt(tag, &target, "virtiofs", MsFlags::empty(), None)
}

/// The guest kernel command line value of `key`, if any.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
}

/// Milliseconds since the guest kernel started (its `/proc/uptime`, 10 ms
/// steps), for the ready line: the monitor measures the host's side of the
/// boot, this is the guest's.
pub fn uptime_ms() -> Option<u64> {
    use procfs_core::FromRead;
    let f = fs::File::open("/proc/uptime").ok()?;
    let up = procfs_core::Uptime::from_read(f).ok()?;
    Some(up.uptime_duration().as_millis() as u64)
}

/// The vsock port to listen on: `husk.agent_port=` or the default.
pub fn agent_port() -> u32 {
    fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| cmdline_value(&c, husk_protocol::AGENT_PORT_CMDLINE_KEY))
        .and_then(|v| v.parse().ok())
        .unwrap_or(husk_protocol::DEFAULT_AGENT_PORT)
}

/// Syncs and reboots; with `-no-reboot` (and in the builtin engine) this
/// ends the VM.
pub fn reboot() -> ! {
    nix::unistd::sync();
    let e = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    tracing::error!(error = ?e, "reboot failed");
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_port() {
        let c = "console=ttyS0 husk.agent_port=2048 quiet";
        assert_eq!(cmdline_value(c, "husk.agent_port").as_deref(), Some("2048"));
        assert_eq!(cmdline_value("husk.agent_portx=1", "husk.agent_port"), None);
    }
}
