//! The container's root filesystem: propagation, the rootfs bind, mounts,
//! devices, pivot_root, then masked/readonly paths and a read-only root.

use std::fs;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, fchdir, pivot_root};
use oci_spec::runtime::Spec;
use procfs_core::process::{MountInfo, MountOptFields};

use super::mounts::{mount_entry, propagation_flags, remount_bind, Kernel};
use super::{devices, sys, SetupError};

/// Builds the rootfs and pivots into it, calling `before_pivot` once the
/// mounts and devices are in place (the createContainer hooks). Runs in a
/// fresh mount namespace.
///
/// Propagation follows runc: the namespace's copy of the agent's mounts
/// gets `linux.rootfsPropagation` (`rslave` by default: the guest's mounts
/// reach the container, never the other way), so that with `rshared` a
/// volume bound from a shared guest mount stays its peer (Kubernetes'
/// Bidirectional); the mount holding the rootfs is made private if it is
/// shared (pivot_root refuses a shared parent, and the rootfs bind must not
/// propagate back); after pivot_root the container's `/` gets the
/// propagation too.
pub fn setup(
    spec: &Spec,
    rootfs: &Path,
    before_pivot: impl FnOnce() -> Result<(), SetupError>,
) -> Result<(), SetupError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let prop = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => propagation_flags(p).ok_or_else(|| {
            SetupError::Invalid(format!(
                "linux.rootfsPropagation {p:?} is not one of private, rprivate, shared, \
                 rshared, slave, rslave, unbindable, runbindable"
            ))
        })?,
    };
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(sys("apply linux.rootfsPropagation to /"))?;
    if !rootfs.is_dir() {
        return Err(SetupError::Invalid(format!(
            "rootfs {} does not exist or is not a directory",
            rootfs.display()
        )));
    }
    parent_mount_private(rootfs)?;
    mount(
        Some(rootfs),
        rootfs,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys(format!("bind rootfs {}", rootfs.display())))?;

    let mounts = spec.mounts().clone().unwrap_or_default();
    for m in &mounts {
        mount_entry(&mut Kernel, rootfs, m)?;
    }
    let dev_is_tmpfs = mounts
        .iter()
        .any(|m| m.destination() == Path::new("/dev") && m.typ().as_deref() == Some("tmpfs"));
    if dev_is_tmpfs {
        for d in devices::default_devices() {
            devices::create(rootfs, &d)?;
        }
    }
    // The spec's devices before the /dev links, as runc does: a
    // privileged container lists every host device, `/dev/ptmx` among
    // them, which would otherwise be made through the `ptmx -> pts/ptmx`
    // link onto devpts' own node. With the links, `/dev/ptmx` is the link
    // (runc skips a spec device there).
    for d in linux.devices().clone().unwrap_or_default() {
        let node = devices::from_spec(&d)?;
        if dev_is_tmpfs && devices::is_ptmx(&node.path) {
            continue;
        }
        devices::create(rootfs, &node)?;
    }
    if dev_is_tmpfs {
        devices::create_symlinks(rootfs)?;
    }

    before_pivot()?;
    // The old root, held open so the calls below are sure to act on it
    // (as runc does: the kernel gives no guarantee which of the two mounts
    // stacked on "." the cwd is after pivot_root).
    let old_root = fs::File::open("/").map_err(sys("open the old root"))?;
    chdir(rootfs).map_err(sys(format!("chdir {}", rootfs.display())))?;
    pivot_root(".", ".").map_err(sys(format!("pivot_root to {}", rootfs.display())))?;
    fchdir(old_root.as_raw_fd()).map_err(sys("chdir to the old root"))?;
    drop(old_root);
    // The old root is now stacked on the new one: detach it without
    // touching the agent's mounts (a slave: the unmount does not
    // propagate). Only the old root's tree: the container's own mounts
    // keep their propagation (an `rshared` volume stays the guest's peer).
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("make the old root a slave"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("unmount the old root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(sys("set rootfs propagation"))?;
    Ok(())
}

/// Makes the mount that holds `rootfs` private when it is shared (runc's
/// `rootfsParentMountPrivate`): pivot_root(2) refuses a new root whose
/// parent mount is shared, and the rootfs bind made next must not
/// propagate to the guest's mounts. Only this namespace's copy changes.
fn parent_mount_private(rootfs: &Path) -> Result<(), SetupError> {
    let info =
        fs::read_to_string("/proc/self/mountinfo").map_err(sys("read /proc/self/mountinfo"))?;
    let Some((point, shared)) = mount_holding(&parse_mountinfo(&info), rootfs) else {
        return Ok(());
    };
    if !shared {
        return Ok(());
    }
    mount(
        None::<&str>,
        &point,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys(format!(
        "make {} (the mount holding the rootfs) private",
        point.display()
    )))
}

/// The mounts of this mount namespace, from `/proc/self/mountinfo` (none
/// when it cannot be read).
pub fn own_mountinfo() -> Vec<MountInfo> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The mounts in the text of a `mountinfo` file, in its order (a mount
/// after the one it covers); lines procfs cannot parse are skipped. procfs
/// leaves the path fields as the kernel escapes them: the mount point and
/// root come back decoded.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|l| MountInfo::from_line(l).ok())
        .map(|mut m| {
            m.mount_point = PathBuf::from(unescape_mountinfo(&m.mount_point.to_string_lossy()));
            m.root = unescape_mountinfo(&m.root);
            m
        })
        .collect()
}

/// The mount point among `mounts` that holds `path` (the longest mount
/// point that is `path` or one of its ancestors; the last mounted of
/// equal ones), and whether it is shared.
pub fn mount_holding(mounts: &[MountInfo], path: &Path) -> Option<(PathBuf, bool)> {
    let mut best: Option<(&Path, bool)> = None;
    for m in mounts {
        let point = m.mount_point.as_path();
        if !path.starts_with(point) {
            continue;
        }
        let shared = m
            .opt_fields
            .iter()
            .any(|o| matches!(o, MountOptFields::Shared(_)));
        let longer = best.is_none_or(|(b, _)| point.as_os_str().len() >= b.as_os_str().len());
        if longer {
            best = Some((point, shared));
        }
    }
    best.map(|(p, shared)| (p.to_owned(), shared))
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b.get(i + 1..i + 4).and_then(|d| {
            d.iter()
                .all(|c| (b'0'..=b'7').contains(c))
                .then(|| d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0')))
                .and_then(|v| u8::try_from(v).ok())
        });
        if let (b'\\', Some(v)) = (b[i], octal) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `linux.sysctl` through the container's /proc/sys.
pub fn apply_sysctl(spec: &Spec) -> Result<(), SetupError> {
    let Some(sysctl) = spec.linux().as_ref().and_then(|l| l.sysctl().clone()) else {
        return Ok(());
    };
    for (k, v) in sysctl {
        let path = format!("/proc/sys/{}", k.replace('.', "/"));
        fs::write(&path, v.as_bytes()).map_err(sys(format!("sysctl {k}={v}")))?;
    }
    Ok(())
}

/// maskedPaths (after pivot_root): /dev/null over files, a read-only tmpfs
/// over directories.
pub fn mask_paths(spec: &Spec) -> Result<(), SetupError> {
    let paths = spec
        .linux()
        .as_ref()
        .and_then(|l| l.masked_paths().clone())
        .unwrap_or_default();
    for p in paths {
        let Ok(meta) = fs::metadata(&p) else { continue };
        let r = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p.as_str(),
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                p.as_str(),
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        r.map_err(sys(format!("mask {p}")))?;
    }
    Ok(())
}

/// readonlyPaths (after pivot_root): bind each on itself, remount read-only.
pub fn readonly_paths(spec: &Spec) -> Result<(), SetupError> {
    let paths = spec
        .linux()
        .as_ref()
        .and_then(|l| l.readonly_paths().clone())
        .unwrap_or_default();
    for p in paths {
        if fs::symlink_metadata(&p).is_err() {
            continue;
        }
        mount(
            Some(p.as_str()),
            p.as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(sys(format!("bind {p} read-only")))?;
        remount_bind(
            &mut Kernel,
            Path::new(&p),
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        )?;
    }
    Ok(())
}

/// `root.readonly`: remount / read-only (after everything else is mounted).
pub fn readonly_root(spec: &Spec) -> Result<(), SetupError> {
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        remount_bind(&mut Kernel, Path::new("/"), MsFlags::MS_RDONLY)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mount_holding_a_path_and_whether_it_is_shared() {
        let info = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
30 22 0:40 / /run rw,nosuid master:3 - tmpfs tmpfs rw
31 30 0:41 / /run/husk/share rw shared:7 master:2 - virtiofs husk0 rw
32 22 0:42 / /tmp/a\\040b rw - tmpfs tmpfs rw
33 31 0:43 / /run/husk/share rw - tmpfs tmpfs rw
";
        let mounts = parse_mountinfo(info);
        let at = |p: &str| mount_holding(&mounts, Path::new(p));
        assert_eq!(at("/srv/x"), Some(("/".into(), true)));
        assert_eq!(at("/run/x"), Some(("/run".into(), false)));
        // The last of the mounts stacked on one point is the one seen.
        assert_eq!(
            at("/run/husk/share/c1/rootfs"),
            Some(("/run/husk/share".into(), false))
        );
        // Not a prefix by characters: by components.
        assert_eq!(at("/running"), Some(("/".into(), true)));
        // An escaped space.
        assert_eq!(at("/tmp/a b/rootfs"), Some(("/tmp/a b".into(), false)));
        assert_eq!(mount_holding(&[], Path::new("/x")), None);
    }
}
