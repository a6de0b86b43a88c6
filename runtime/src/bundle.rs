//! An OCI bundle on the host and its translation for the guest.
//!
//! The guest sees one virtio-fs share, [`SHARE_TAG`], served by virtiofsd
//! (root) from the state directory's `share/`. husk makes that directory a
//! small tmpfs, bind-mounts the bundle rootfs at `share/rootfs` and each
//! host source of a bind mount at `share/mounts/N`, seals the tmpfs
//! read-only, and rewrites the spec so those paths point at the share's
//! guest mount point. One daemon serves the whole container this way, and
//! unmounting `share/` undoes all of it.
//!
//! The guest is not trusted to honour read-only: a guest root can remount
//! anything. So every bind in the share is nosuid and nodev, and read-only
//! ones (`root.readonly`, a mount's `ro`) are read-only on the host mount
//! itself ([`prepare_share`]), where virtiofsd's writes fail with EROFS.
//! The containerd shim adds containers to a share the guest already
//! serves and can write; it builds each tree out of the guest's reach and
//! attaches it by file descriptor ([`attach_share`]).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};

use crate::mountpoints::{self, MountPointError};
use crate::mounts::{self, MountAttrs};

/// The virtio-fs tag of a container's share.
pub const SHARE_TAG: &str = "husk";

/// Why a bundle cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// The bundle directory is missing.
    #[error("bundle {0} does not exist")]
    Missing(PathBuf),
    /// config.json is missing or unreadable or invalid.
    #[error("cannot load {path}: {reason}")]
    Config {
        /// The config path.
        path: PathBuf,
        /// What oci-spec said.
        reason: String,
    },
    /// The spec is well-formed but unusable.
    #[error("invalid spec in {path}: {reason}")]
    Invalid {
        /// The config path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A host mount for the share could not be made.
    #[error("cannot share {what} into the guest")]
    Share {
        /// What was being shared.
        what: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A mount destination could not be made in a read-only rootfs.
    #[error(transparent)]
    MountPoint(#[from] MountPointError),
}

/// A bundle with its parsed config.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The absolute bundle directory.
    pub dir: PathBuf,
    /// The parsed config.json.
    pub spec: Spec,
    /// The absolute host rootfs.
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Loads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Bundle, BundleError> {
        let dir = fs::canonicalize(dir).map_err(|_| BundleError::Missing(dir.to_owned()))?;
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(BundleError::Config {
                path,
                reason: "no such file".into(),
            });
        }
        let bytes = fs::read(&path).map_err(|e| BundleError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let spec = parse_spec(&bytes).map_err(|reason| BundleError::Config {
            path: path.clone(),
            reason,
        })?;
        let invalid = |reason: String| BundleError::Invalid {
            path: path.clone(),
            reason,
        };
        let root = spec
            .root()
            .as_ref()
            .ok_or_else(|| invalid("root is missing".into()))?;
        let rootfs = dir.join(root.path());
        if !rootfs.is_dir() {
            return Err(invalid(format!(
                "root.path {} is not a directory",
                rootfs.display()
            )));
        }
        let process = spec
            .process()
            .as_ref()
            .ok_or_else(|| invalid("process is missing".into()))?;
        if process.args().as_ref().is_none_or(|a| a.is_empty()) {
            return Err(invalid("process.args is empty".into()));
        }
        if !process.cwd().is_absolute() {
            return Err(invalid(format!(
                "process.cwd {} is not absolute",
                process.cwd().display()
            )));
        }
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            if !m.destination().is_absolute() {
                return Err(invalid(format!(
                    "mounts[{i}].destination {} is not absolute",
                    m.destination().display()
                )));
            }
        }
        if let Some(sc) = spec.linux().as_ref().and_then(|l| l.seccomp().as_ref()) {
            crate::unsupported::check_seccomp(sc).map_err(invalid)?;
        }
        let rootfs = fs::canonicalize(&rootfs).unwrap_or(rootfs);
        Ok(Bundle { dir, spec, rootfs })
    }
}

/// The namespaces a container must ask for: without an entry of one of
/// these types in `linux.namespaces`, runc shares the host's (Kubernetes'
/// `hostNetwork`, `hostIPC` and `hostPID` make such specs). A container in
/// a VM cannot share the host's namespaces, and giving it the VM's instead
/// would silently be something else, so such a spec is refused.
pub const REQUIRED_NAMESPACES: [(LinuxNamespaceType, &str, &str); 3] = [
    (LinuxNamespaceType::Network, "network", "hostNetwork"),
    (LinuxNamespaceType::Ipc, "ipc", "hostIPC"),
    (LinuxNamespaceType::Pid, "pid", "hostPID"),
];

/// Refuses a spec that would share one of the host's network, IPC or PID
/// namespaces ([`REQUIRED_NAMESPACES`]): the error names the field, the
/// namespace, why, and the fix.
pub fn check_namespaces(spec: &Spec) -> Result<(), String> {
    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    for (typ, name, k8s) in REQUIRED_NAMESPACES {
        if !ns.iter().any(|n| n.typ() == typ) {
            return Err(format!(
                "linux.namespaces has no {name} namespace: the container would share the \
                 host's {name} namespace, which a container in a VM cannot (it would get the \
                 VM's instead); add {{\"type\": \"{name}\"}} (a Kubernetes pod with {k8s} \
                 cannot run with husk)"
            ));
        }
    }
    Ok(())
}

/// Parses a config.json. An error names the field it is about and where
/// it is in the file (`process.args: invalid type: string "sh", expected a
/// sequence at line 3 column 17`), where oci-spec's own loader only says
/// `serde failed`.
pub fn parse_spec(json: &[u8]) -> Result<Spec, String> {
    parse_json(json)
}

/// Parses JSON as `T` (a spec, a `--process` file); an error names the
/// field path it is about, as [`parse_spec`]'s do.
pub fn parse_json<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    // Trailing bytes after the value, as serde_json::from_slice refuses.
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

/// Whether an OCI mount is a bind mount of a host path.
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Whether an OCI mount's options make it read-only: the last of `ro` and
/// `rw` (or runc's recursive `rro`/`rrw`) wins, as in mount(8).
pub fn is_readonly(m: &Mount) -> bool {
    m.options()
        .iter()
        .flatten()
        .fold(false, |ro, o| match o.as_str() {
            "ro" | "rro" => true,
            "rw" | "rrw" => false,
            _ => ro,
        })
}

/// Whether an OCI mount is read-only below its top too: the last of runc's
/// `rro` and `rrw` wins.
pub fn is_recursively_readonly(m: &Mount) -> bool {
    m.options()
        .iter()
        .flatten()
        .fold(false, |ro, o| match o.as_str() {
            "rro" => true,
            "rrw" => false,
            _ => ro,
        })
}

/// Whether the spec asks for a read-only root filesystem.
pub fn root_readonly(spec: &Spec) -> bool {
    spec.root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
}

/// The host path of a bind mount's source: relative ones are in the bundle.
fn bind_source(bundle: &Bundle, m: &Mount) -> PathBuf {
    let src = m.source().clone().unwrap_or_default();
    if src.is_absolute() {
        src
    } else {
        bundle.dir.join(src)
    }
}

/// The host mounts made for a share, undone in reverse order.
#[derive(Debug, Default)]
pub struct ShareMounts {
    /// Mount points, in the order they were made. Unmounting one detaches
    /// everything below it.
    pub points: Vec<PathBuf>,
}

/// Unmounts `points` in reverse order, each lazily with everything below
/// it and without following a symlink in its last component; returns the
/// first failure. A point that is not (or no longer) mounted is skipped.
pub fn unmount_all(points: &[PathBuf]) -> io::Result<()> {
    let mut first = Ok(());
    for p in points.iter().rev() {
        match umount2(p, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) if first.is_ok() => first = Err(io::Error::from(e)),
            Err(_) => {}
        }
    }
    first
}

/// Builds the share of `bundle` at `share_dir` and returns the spec
/// rewritten for the guest plus the one mount to undo (`share_dir`).
///
/// `share_dir` becomes a small tmpfs (nosuid, nodev, noexec) that is
/// read-only once filled, holding the rootfs at `rootfs` and each bind
/// source at `mounts/N`. Each of those is a recursive bind made while
/// detached and attached with its attributes already set: nosuid and nodev
/// always, read-only when the spec says so (`root.readonly`, a bind mount's
/// `ro`). Read-only is thus enforced on the host, where virtiofsd (root,
/// with CAP_DAC_OVERRIDE) gets EROFS, and not only by the guest kernel,
/// which a guest root can remount. A read-only rootfs first gets the mount
/// destinations the agent would have made in it ([`crate::mountpoints`]).
///
/// `share_dir` must be a directory only the host can change (the CLI's
/// state directory before the VM starts, the shim's staging directory).
/// On error, whatever was mounted is unmounted again.
pub fn prepare_share(
    bundle: &Bundle,
    share_dir: &Path,
) -> Result<(Spec, ShareMounts), BundleError> {
    // Checked before anything is made, in the rootfs or here.
    for m in bundle.spec.mounts().iter().flatten().filter(|m| is_bind(m)) {
        let src = bind_source(bundle, m);
        if !src.exists() {
            return Err(BundleError::Share {
                what: format!("bind source {}", src.display()),
                source: io::ErrorKind::NotFound.into(),
            });
        }
    }
    if root_readonly(&bundle.spec) {
        let dests =
            mountpoints::destinations(bundle.spec.mounts().as_deref().unwrap_or_default(), |m| {
                is_bind(m).then(|| bind_source(bundle, m))
            });
        let made = mountpoints::create_missing(&bundle.rootfs, &dests)?;
        if !made.is_empty() {
            tracing::debug!(?made, "made mount destinations in the read-only rootfs");
        }
    }
    let err = |what: &str| {
        let what = what.to_owned();
        move |source| BundleError::Share { what, source }
    };
    fs::create_dir_all(share_dir).map_err(err("the share directory"))?;
    mount(
        Some("tmpfs"),
        share_dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0755,size=64k"),
    )
    .map_err(|e| err("the share directory")(e.into()))?;
    let mounts = ShareMounts {
        points: vec![share_dir.to_owned()],
    };
    let built = (|| {
        // Nothing mounted in the share propagates to the host's other
        // mount namespaces.
        mount(
            None::<&str>,
            share_dir,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| err("the share directory")(e.into()))?;
        let top = mounts::open_dir(share_dir).map_err(err("the share directory"))?;
        let spec = rewrite(bundle, share_dir, top.as_fd())?;
        let sealed = MountAttrs {
            readonly: true,
            nosuid_nodev: true,
        };
        mounts::set_attrs(top.as_fd(), sealed, false).map_err(err("the share directory"))?;
        Ok(spec)
    })();
    match built {
        Ok(spec) => Ok((spec, mounts)),
        Err(e) => {
            let _ = unmount_all(&mounts.points);
            Err(e)
        }
    }
}

/// How a bind source is copied into the share.
#[derive(Debug, Clone, Copy)]
struct BindMode {
    /// Read-only (`ro`, `rro`): the copy's top mount.
    readonly: bool,
    /// `rbind`: the source's submounts come along.
    recursive: bool,
    /// `rro`: the submounts are made read-only too.
    readonly_below: bool,
}

impl BindMode {
    fn of(m: &Mount) -> BindMode {
        BindMode {
            readonly: is_readonly(m),
            recursive: m.options().iter().flatten().any(|o| o == "rbind"),
            readonly_below: is_recursively_readonly(m),
        }
    }

    /// The rootfs: a recursive copy, read-only throughout when asked.
    fn root(readonly: bool) -> BindMode {
        BindMode {
            readonly,
            recursive: true,
            readonly_below: readonly,
        }
    }
}

/// Binds `src` on `target` (a directory or file fd) as `mode` says, with
/// the attributes set on the detached copy so no moment exists where the
/// share shows it writable. Every mount of the copy is nosuid and nodev; as
/// on runc, a plain `bind` leaves the source's submounts out and `ro` makes
/// only the top read-only (`rro` all of them).
fn bind(src: &Path, target: BorrowedFd<'_>, mode: BindMode) -> io::Result<()> {
    let tree = if mode.recursive {
        mounts::clone_tree(src)?
    } else {
        mounts::clone_mount(src)?
    };
    // Cut the copy from the source's peers: mounts made later under the
    // source (by containerd, say) stay out of the share.
    mounts::make_private(tree.as_fd())?;
    let attrs = |readonly| MountAttrs {
        readonly,
        nosuid_nodev: true,
    };
    mounts::set_attrs(tree.as_fd(), attrs(mode.readonly_below), true)?;
    if mode.readonly && !mode.readonly_below {
        mounts::set_attrs(tree.as_fd(), attrs(true), false)?;
    }
    mounts::attach(tree.as_fd(), target)
}

/// The guest mounts that make a bind source's host submounts (now under
/// `share_point`) separate mounts in the container, as an `rbind` makes
/// them on runc: each is bound on its own below the spec mount `m`, read-only
/// or noexec where the host mount is, with `m`'s recursive options
/// (`rro`, `rnoexec`...) carried over. Without them the guest would see
/// one virtio-fs mount, and a remount of `m` would reach the submounts.
fn submount_entries(m: &Mount, share_point: &Path, guest_source: &Path) -> Vec<Mount> {
    let inherited: Vec<String> = m
        .options()
        .iter()
        .flatten()
        .filter(|o| husk_protocol::RECURSIVE_MOUNT_OPTIONS.contains(&o.as_str()))
        .cloned()
        .collect();
    mounts::submounts(share_point)
        .into_iter()
        .map(|sub| {
            let mut options = vec!["bind".to_owned()];
            if sub.readonly {
                options.push("ro".into());
            }
            if sub.noexec {
                options.push("noexec".into());
            }
            options.extend(inherited.iter().cloned());
            let mut e = Mount::default();
            e.set_destination(m.destination().join(&sub.rel));
            e.set_typ(Some("bind".into()));
            e.set_source(Some(guest_source.join(&sub.rel)));
            e.set_options(Some(options));
            e
        })
        .collect()
}

/// A new mount point `name` under `dir`: a directory, or an empty file when
/// `src` is not a directory.
fn mount_point(dir: BorrowedFd<'_>, name: &str, src: &Path) -> io::Result<OwnedFd> {
    let name = std::ffi::OsStr::new(name);
    if src.is_dir() {
        mounts::mkdir_at(dir, name, 0o755)?;
        mounts::open_dir_nofollow(dir, name)
    } else {
        let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
        drop(mounts::open_at(dir, name, flags, 0o644)?);
        mounts::open_at(dir, name, libc::O_PATH | libc::O_NOFOLLOW, 0)
    }
}

fn rewrite(bundle: &Bundle, share_dir: &Path, top: BorrowedFd<'_>) -> Result<Spec, BundleError> {
    let guest_share = PathBuf::from(husk_protocol::share_mount_point(SHARE_TAG));
    let mut spec = bundle.spec.clone();
    let share_err = |what: String| move |source| BundleError::Share { what, source };
    mount_point(top, "rootfs", &bundle.rootfs)
        .and_then(|t| {
            bind(
                &bundle.rootfs,
                t.as_fd(),
                BindMode::root(root_readonly(&spec)),
            )
        })
        .map_err(share_err("the rootfs".into()))?;
    let mut root = spec.root().clone().expect("validated");
    root.set_path(guest_share.join("rootfs"));
    spec.set_root(Some(root));

    let mut dir: Option<OwnedFd> = None;
    let mut new_mounts = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let mut m = m.clone();
        if is_bind(&m) {
            let src = bind_source(bundle, &m);
            let what = format!("bind source {}", src.display());
            let dir = match &mut dir {
                Some(d) => d,
                None => dir.insert(
                    mounts::mkdir_at(top, "mounts".as_ref(), 0o755)
                        .and_then(|()| mounts::open_dir_nofollow(top, "mounts".as_ref()))
                        .map_err(share_err("the share directory".into()))?,
                ),
            };
            mount_point(dir.as_fd(), &i.to_string(), &src)
                .and_then(|t| bind(&src, t.as_fd(), BindMode::of(&m)))
                .map_err(share_err(what))?;
            let guest_source = guest_share.join(format!("mounts/{i}"));
            m.set_source(Some(guest_source.clone()));
            let host_point = share_dir.join(format!("mounts/{i}"));
            let below = submount_entries(&m, &host_point, &guest_source);
            new_mounts.push(m);
            new_mounts.extend(below);
            continue;
        }
        new_mounts.push(m);
    }
    if spec.mounts().is_some() {
        spec.set_mounts(Some(new_mounts));
    }
    Ok(spec)
}

/// Shares `bundle` into a share the guest already serves: builds it with
/// [`prepare_share`] in `staging` (a directory the guest cannot reach), then
/// attaches a copy of that tree at `share/name` without following anything
/// the guest may have planted there, and drops the staging tree. Returns the
/// spec rewritten as for a share of its own (paths under the share's root,
/// not under `name`) and the one mount to undo with [`detach_share`].
///
/// `share/name` must be missing or an empty plain directory; a symlink or
/// anything else the guest put there is refused.
pub fn attach_share(
    bundle: &Bundle,
    staging: &Path,
    share: &Path,
    name: &str,
) -> Result<(Spec, ShareMounts), BundleError> {
    let err = |what: String| move |source| BundleError::Share { what, source };
    let single = Path::new(name).components().count() == 1
        && matches!(
            Path::new(name).components().next(),
            Some(Component::Normal(_))
        );
    if !single {
        return Err(err(format!("{name:?}"))(io::ErrorKind::InvalidInput.into()));
    }
    if let Some(p) = staging.parent() {
        fs::create_dir_all(p).map_err(err(format!("staging directory {}", p.display())))?;
    }
    fs::create_dir(staging).map_err(err(format!("staging directory {}", staging.display())))?;
    let (spec, staged) = match prepare_share(bundle, staging) {
        Ok(x) => x,
        Err(e) => {
            let _ = fs::remove_dir(staging);
            return Err(e);
        }
    };
    let attached = attach_staged(staging, share, name);
    // The share holds its own copy of the tree now (or nothing).
    let _ = unmount_all(&staged.points);
    let _ = fs::remove_dir(staging);
    Ok((
        spec,
        ShareMounts {
            points: vec![attached?],
        },
    ))
}

fn attach_staged(staging: &Path, share: &Path, name: &str) -> Result<PathBuf, BundleError> {
    let at = share.join(name);
    let err = |source| BundleError::Share {
        what: at.display().to_string(),
        source,
    };
    let tree = mounts::clone_tree(staging).map_err(err)?;
    let share_fd = mounts::open_dir(share).map_err(err)?;
    let name = std::ffi::OsStr::new(name);
    let created = match mounts::mkdir_at(share_fd.as_fd(), name, 0o755) {
        Ok(()) => true,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
        Err(e) => return Err(err(e)),
    };
    let r = (|| {
        // O_NOFOLLOW|O_DIRECTORY: a symlink here is ENOTDIR, not followed.
        let target = mounts::open_dir_nofollow(share_fd.as_fd(), name)?;
        if mounts::mount_info(target.as_fd())?.is_mount_root {
            return Err(io::Error::from_raw_os_error(libc::EBUSY));
        }
        if !mounts::dir_is_empty(target.as_fd())? {
            return Err(io::Error::from_raw_os_error(libc::ENOTEMPTY));
        }
        mounts::attach(tree.as_fd(), target.as_fd())?;
        // The directory could have been renamed between the open and the
        // attach; the spec and teardown need the mount at `share/name`.
        let want = mounts::mount_info(tree.as_fd())?.mount_id;
        let there = mounts::open_dir_nofollow(share_fd.as_fd(), name)
            .and_then(|fd| mounts::mount_info(fd.as_fd()));
        if !there.is_ok_and(|i| i.is_mount_root && i.mount_id == want) {
            let _ = mounts::detach_fd(tree.as_fd());
            return Err(io::Error::other(
                "the directory was moved while the share was attached",
            ));
        }
        Ok(())
    })();
    if let Err(e) = r {
        if created {
            let _ = mounts::rmdir_at(share_fd.as_fd(), name);
        }
        return Err(err(e));
    }
    Ok(at)
}

/// Undoes [`attach_share`]: detaches the tree at each of `points` (one lazy
/// unmount, never through a symlink) and removes the then empty directory
/// `share/name`; never removes anything recursively.
pub fn detach_share(share: &Path, name: &str, points: &[PathBuf]) -> io::Result<()> {
    let unmounted = unmount_all(points);
    let removed = mounts::open_dir(share)
        .and_then(|d| mounts::rmdir_at(d.as_fd(), std::ffi::OsStr::new(name)));
    match removed {
        Err(e) if e.raw_os_error() != Some(libc::ENOENT) => unmounted.and(Err(e)),
        _ => unmounted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle_with(config: serde_json::Value) -> (tempfile::TempDir, Result<Bundle, BundleError>) {
        let tmp = tempfile::tempdir().unwrap();
        fs::create_dir(tmp.path().join("rootfs")).unwrap();
        fs::write(tmp.path().join("config.json"), config.to_string()).unwrap();
        let b = Bundle::load(tmp.path());
        (tmp, b)
    }

    fn minimal() -> serde_json::Value {
        serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "mounts": [{"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]}]
        })
    }

    /// runc shares the host's network, IPC or PID namespace when the spec
    /// has no entry for it (Kubernetes' hostNetwork, hostIPC, hostPID); a
    /// VM cannot, so the spec is refused naming the field and the fix.
    #[test]
    fn a_spec_sharing_a_host_namespace_is_refused() {
        let spec = |types: &[&str]| -> Spec {
            let ns: Vec<_> = types
                .iter()
                .map(|t| serde_json::json!({"type": t}))
                .collect();
            let mut c = minimal();
            c["linux"] = serde_json::json!({"namespaces": ns});
            serde_json::from_value(c).unwrap()
        };
        check_namespaces(&spec(&["pid", "network", "ipc", "uts", "mount"])).unwrap();
        // A namespace joined by path is the container's own choice.
        let mut joined = serde_json::to_value(spec(&["pid", "ipc", "mount"])).unwrap();
        joined["linux"]["namespaces"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"type": "network", "path": "/var/run/netns/cni-1"}));
        check_namespaces(&serde_json::from_value(joined).unwrap()).unwrap();
        for (types, missing, k8s) in [
            (
                &["pid", "ipc", "uts", "mount"][..],
                "network",
                "hostNetwork",
            ),
            (&["pid", "network", "uts", "mount"][..], "ipc", "hostIPC"),
            (&["network", "ipc", "uts", "mount"][..], "pid", "hostPID"),
        ] {
            let e = check_namespaces(&spec(types)).unwrap_err();
            assert!(
                e.starts_with(&format!(
                    "linux.namespaces has no {missing} namespace: the container would share the \
                     host's {missing} namespace, which a container in a VM cannot"
                )),
                "{e}"
            );
            assert!(
                e.contains(&format!("add {{\"type\": \"{missing}\"}}")),
                "{e}"
            );
            assert!(e.contains(k8s), "{e}");
        }
        // No linux section at all: no network namespace either.
        let e = check_namespaces(&serde_json::from_value(minimal()).unwrap()).unwrap_err();
        assert!(e.contains("no network namespace"), "{e}");
    }

    #[test]
    fn loads_a_minimal_bundle() {
        let (_t, b) = bundle_with(minimal());
        let b = b.unwrap();
        assert!(b.rootfs.is_absolute());
        assert!(is_bind(&b.spec.mounts().as_ref().unwrap()[0]));
    }

    #[test]
    fn rejects_what_cannot_run() {
        let mut c = minimal();
        c["process"]["args"] = serde_json::json!([]);
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("process.args is empty"));
        let mut c = minimal();
        c["root"]["path"] = "nope".into();
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("not a directory"));
        let mut c = minimal();
        c["process"]["cwd"] = "rel".into();
        assert!(bundle_with(c)
            .1
            .unwrap_err()
            .to_string()
            .contains("not absolute"));
        let (_t, b) = bundle_with(serde_json::json!({"ociVersion": 3}));
        assert!(matches!(b, Err(BundleError::Config { .. })));
        assert!(matches!(
            Bundle::load(Path::new("/nonexistent/b")),
            Err(BundleError::Missing(_))
        ));
    }

    /// An unknown capability name is refused naming its field and the
    /// value (oci-spec alone says `serde failed`), in a config.json and in
    /// an exec's process.json alike.
    #[test]
    fn unknown_capability_names_the_field_and_the_value() {
        let mut c = minimal();
        c["process"]["capabilities"] = serde_json::json!({"bounding": ["CAP_KILL", "CAP_FOO"]});
        let e = bundle_with(c).1.unwrap_err().to_string();
        assert!(
            e.contains("config.json: process.capabilities.bounding[1]: "),
            "{e}"
        );
        assert!(e.contains("CAP_FOO"), "{e}");
        assert!(!e.contains("serde failed"), "{e}");
        let e = parse_json::<oci_spec::runtime::Process>(
            br#"{"args": ["sh"], "cwd": "/", "user": {"uid": 0, "gid": 0},
                 "capabilities": {"effective": ["cap_bar"]}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("capabilities.effective[0]: "), "{e}");
        assert!(e.contains("cap_bar"), "{e}");
    }

    /// Seccomp user notification cannot work across the VM boundary: a
    /// config that asks for it is refused at load (the CLI's create and
    /// the shim's alike), naming the field, not found out in the guest.
    #[test]
    fn seccomp_user_notification_is_refused_naming_the_field() {
        let mut c = minimal();
        c["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["mount"], "action": "SCMP_ACT_NOTIFY"}]}});
        let e = bundle_with(c).1.unwrap_err().to_string();
        assert!(
            e.contains("linux.seccomp.syscalls[0].action: SCMP_ACT_NOTIFY is not supported"),
            "{e}"
        );
        let mut c = minimal();
        c["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
            "listenerPath": "/run/seccomp-agent.sock", "listenerMetadata": "x"}});
        let e = bundle_with(c).1.unwrap_err().to_string();
        assert!(
            e.contains("linux.seccomp.listenerPath /run/seccomp-agent.sock: "),
            "{e}"
        );
        let mut c = minimal();
        c["linux"] = serde_json::json!({"seccomp": {"defaultAction": "SCMP_ACT_ERRNO",
            "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW"}]}});
        bundle_with(c).1.unwrap();
    }

    #[test]
    fn share_rewrites_paths_and_unmounts() {
        husk_test_support::require!(husk_test_support::root(), "bind mounts");
        let (t, b) = bundle_with(minimal());
        fs::create_dir(t.path().join("data")).unwrap();
        fs::write(t.path().join("data/f"), b"x").unwrap();
        let share = t.path().join("share");
        let (spec, mounts) = prepare_share(&b.unwrap(), &share).unwrap();
        assert_eq!(
            spec.root().as_ref().unwrap().path(),
            Path::new("/run/husk/shares/husk/rootfs")
        );
        let m = &spec.mounts().as_ref().unwrap()[0];
        assert_eq!(
            m.source().as_deref(),
            Some(Path::new("/run/husk/shares/husk/mounts/0"))
        );
        assert_eq!(fs::read(share.join("mounts/0/f")).unwrap(), b"x");
        unmount_all(&mounts.points).unwrap();
        assert!(!share.join("mounts/0/f").exists());
    }

    #[test]
    fn missing_bind_source_fails_and_leaves_no_mount() {
        husk_test_support::require!(husk_test_support::root(), "bind mounts");
        let mut c = minimal();
        c["root"]["readonly"] = true.into();
        let (t, b) = bundle_with(c);
        let share = t.path().join("share");
        let err = prepare_share(&b.unwrap(), &share).unwrap_err();
        assert!(err.to_string().contains("bind source"), "{err}");
        // Nor was its destination made in the read-only rootfs.
        assert!(!t.path().join("rootfs/data").exists());
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!info.contains(share.to_str().unwrap()));
    }
}
