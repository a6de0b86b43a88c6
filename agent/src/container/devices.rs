//! Device nodes in the container's /dev: runc's default set when /dev is a
//! tmpfs, the spec's `linux.devices`, and the standard /dev symlinks.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path};

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

/// Whether a device path is `/dev/ptmx` (cleaned lexically, as runc's
/// `CleanPath`): with the standard /dev links it is the link to the
/// container's devpts, never a node.
pub fn is_ptmx(path: &str) -> bool {
    let mut clean = std::path::PathBuf::from("/");
    for c in Path::new(path).components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            _ => {}
        }
    }
    clean == Path::new("/dev/ptmx")
}

/// Creates `dev` under `rootfs`: mknod (whether or not the guest has a
/// driver for its numbers: a privileged container lists the host's devices,
/// and one the guest lacks is a node that does not open, as with runc on a
/// host without the driver), or, where mknod is not allowed (in a user
/// namespace), a bind mount of the guest's own node; a device the guest
/// does not have is then left out with a warning instead of failing the
/// container. The directory is resolved inside the rootfs; the last
/// component is replaced, never followed: a link there (an image's, or
/// one of the /dev links) is not a way to a node elsewhere. A node that
/// cannot be replaced (a mount point, a directory) is kept, as runc keeps
/// an existing node (EEXIST).
pub fn create(rootfs: &Path, dev: &DeviceNode) -> Result<(), SetupError> {
    let path = Path::new(&dev.path);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(SetupError::Invalid(format!(
            "linux.devices: path {:?} names no file",
            dev.path
        )));
    };
    let parent = resolve_in_root(rootfs, dir)?;
    let target = parent.join(name);
    fs::create_dir_all(&parent).map_err(sys(format!("create {}", parent.display())))?;
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
        // (No logging here: this runs in the container's child, whose
        // stderr is the container's. The agent warns about the devices a
        // user namespace leaves out before it forks: [`left_out`].)
        Err(nix::errno::Errno::EEXIST) => {}
        Err(nix::errno::Errno::EPERM) if !Path::new(&dev.path).exists() => {}
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

/// The spec's devices a container in a user namespace goes without: mknod
/// is not allowed there, and the guest has no node of that path to bind
/// (a host device the guest lacks). [`create`] leaves them out; the agent
/// logs them.
pub fn left_out(devices: &[LinuxDevice], user_ns: bool) -> Vec<String> {
    if !user_ns {
        return Vec::new();
    }
    devices
        .iter()
        .map(|d| d.path().to_string_lossy().into_owned())
        .filter(|p| !is_ptmx(p) && !Path::new(p).exists())
        .collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ptmx_is_recognized_however_spelled() {
        for p in [
            "/dev/ptmx",
            "/dev//ptmx",
            "/dev/./ptmx",
            "/dev/pts/../ptmx",
            "dev/ptmx",
        ] {
            assert!(is_ptmx(p), "{p}");
        }
        for p in ["/dev/pts/ptmx", "/dev/ptmx0", "/ptmx"] {
            assert!(!is_ptmx(p), "{p}");
        }
    }

    /// mknod at a path whose last component is a link replaces the link
    /// (never creates the node where it points); an existing node that
    /// cannot be replaced (a directory here) is kept, as runc keeps one
    /// (EEXIST).
    #[test]
    fn a_node_replaces_a_link_and_keeps_what_cannot_be_replaced() {
        husk_test_support::require!(husk_test_support::root(), "mknod");
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("dev/pts")).unwrap();
        fs::create_dir_all(r.join("dev/net")).unwrap();
        fs::write(r.join("dev/pts/ptmx"), b"devpts' node").unwrap();
        symlink("pts/ptmx", r.join("dev/ptmx")).unwrap();
        let node = |path: &str| DeviceNode {
            path: path.into(),
            kind: SFlag::S_IFCHR,
            major: 5,
            minor: 2,
            mode: 0o666,
            uid: 0,
            gid: 0,
        };
        create(r, &node("/dev/ptmx")).unwrap();
        let m = fs::symlink_metadata(r.join("dev/ptmx")).unwrap();
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(
            &m.file_type()
        ));
        assert_eq!(fs::read(r.join("dev/pts/ptmx")).unwrap(), b"devpts' node");
        create(r, &node("/dev/net")).unwrap();
        assert!(r.join("dev/net").is_dir());
    }
}
