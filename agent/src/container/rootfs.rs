//! The container's root filesystem: propagation, the rootfs bind, mounts,
//! devices, pivot_root, then masked/readonly paths and a read-only root.

use std::fs;
use std::path::Path;

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::unistd::{chdir, pivot_root};
use oci_spec::runtime::Spec;

use super::mounts::{mount_entry, propagation_flags, remount_bind, Kernel};
use super::{devices, sys, SetupError};

/// Builds the rootfs and pivots into it, calling `before_pivot` once the
/// mounts and devices are in place (the createContainer hooks). Runs in a
/// fresh mount namespace.
pub fn setup(
    spec: &Spec,
    rootfs: &Path,
    before_pivot: impl FnOnce() -> Result<(), SetupError>,
) -> Result<(), SetupError> {
    let linux = spec.linux().clone().unwrap_or_default();
    let prop = match linux.rootfs_propagation().as_deref() {
        None | Some("") => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        Some(p) => propagation_flags(p)
            .ok_or_else(|| SetupError::Invalid(format!("unknown rootfsPropagation {p:?}")))?,
    };
    // Nothing we mount may propagate back to the agent's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("make / a slave mount"))?;
    if !rootfs.is_dir() {
        return Err(SetupError::Invalid(format!(
            "rootfs {} does not exist or is not a directory",
            rootfs.display()
        )));
    }
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
        devices::create_symlinks(rootfs)?;
    }
    for d in linux.devices().clone().unwrap_or_default() {
        devices::create(rootfs, &devices::from_spec(&d)?)?;
    }

    before_pivot()?;
    chdir(rootfs).map_err(sys(format!("chdir {}", rootfs.display())))?;
    pivot_root(".", ".").map_err(sys(format!("pivot_root to {}", rootfs.display())))?;
    // The old root is now stacked on ".": detach it without touching the
    // agent's mounts.
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(sys("make the old root private"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("unmount the old root"))?;
    chdir("/").map_err(sys("chdir /"))?;
    mount(None::<&str>, "/", None::<&str>, prop, None::<&str>)
        .map_err(sys("set rootfs propagation"))?;
    Ok(())
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
