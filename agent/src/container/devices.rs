//! Device nodes in the container's /dev: runc's default set when /dev is a
//! tmpfs, the spec's `linux.devices`, and the standard /dev symlinks.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chown, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType};

use super::mounts::{create_mount_point, resolve_in_root};
use super::{sys, SetupError};

/// A device node to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    /// Path inside the container.
    pub path: String,
    /// `S_IFCHR`, `S_IFBLK` or `S_IFIFO`.
    pub kind: SFlag,
    /// Major number.
    pub major: u64,
    /// Minor number.
    pub minor: u64,
    /// Permission bits.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
}

/// The devices every container gets (runc's list).
pub fn default_devices() -> Vec<DeviceNode> {
    [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ]
    .into_iter()
    .map(|(n, major, minor)| DeviceNode {
        path: format!("/dev/{n}"),
        kind: SFlag::S_IFCHR,
        major,
        minor,
        mode: 0o666,
        uid: 0,
        gid: 0,
    })
    .collect()
}

/// Converts a spec device.
pub fn from_spec(d: &LinuxDevice) -> Result<DeviceNode, SetupError> {
    let kind = match d.typ() {
        LinuxDeviceType::C | LinuxDeviceType::U => SFlag::S_IFCHR,
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        LinuxDeviceType::A => {
            return Err(SetupError::Invalid(format!(
                "device {}: type 'a' is only valid in cgroup rules",
                d.path().display()
            )))
        }
    };
    Ok(DeviceNode {
        path: d.path().to_string_lossy().into_owned(),
        kind,
        major: d.major() as u64,
        minor: d.minor() as u64,
        mode: d.file_mode().unwrap_or(0o666) & 0o7777,
        uid: d.uid().unwrap_or(0),
        gid: d.gid().unwrap_or(0),
    })
}

/// Creates `dev` under `rootfs`: mknod, or (where mknod is not allowed, in a
/// user namespace) a bind mount of the agent's own node.
pub fn create(rootfs: &Path, dev: &DeviceNode) -> Result<(), SetupError> {
    let target = resolve_in_root(rootfs, Path::new(&dev.path))?;
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(sys(format!("create {}", parent.display())))?;
    }
    let _ = fs::remove_file(&target);
    let mode = Mode::from_bits_truncate(dev.mode);
    match mknod(&target, dev.kind, mode, makedev(dev.major, dev.minor)) {
        Ok(()) => {
            fs::set_permissions(&target, fs::Permissions::from_mode(dev.mode))
                .map_err(sys(format!("chmod {}", target.display())))?;
            chown(
                &target,
                Some(Uid::from_raw(dev.uid)),
                Some(Gid::from_raw(dev.gid)),
            )
            .map_err(sys(format!("chown {}", target.display())))?;
        }
        Err(nix::errno::Errno::EPERM) => {
            create_mount_point(&target, true)?;
            mount(
                Some(dev.path.as_str()),
                &target,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(sys(format!(
                "bind device {} on {}",
                dev.path,
                target.display()
            )))?;
        }
        Err(e) => return Err(sys(format!("mknod {}", target.display()))(e)),
    }
    Ok(())
}

/// /dev/fd, stdin, stdout, stderr, core and ptmx.
pub fn create_symlinks(rootfs: &Path) -> Result<(), SetupError> {
    let mut links = vec![
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("pts/ptmx", "ptmx"),
    ];
    if Path::new("/proc/kcore").exists() {
        links.push(("/proc/kcore", "core"));
    }
    let dev = rootfs.join("dev");
    for (src, name) in links {
        let link = dev.join(name);
        if name == "ptmx" {
            let _ = fs::remove_file(&link);
        }
        match symlink(src, &link) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(sys(format!("symlink {}", link.display()))(e)),
        }
    }
    Ok(())
}
