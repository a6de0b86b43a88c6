//! Missing mount destinations, made on the host in a rootfs the guest will
//! only see read-only.
//!
//! The agent creates a mount's destination (a directory, or an empty file
//! when a file is bind-mounted) before mounting on it, which it cannot do in
//! a rootfs that is read-only on the host side of the share. So, like runc
//! before its read-only remount, the host makes them first. The rootfs is an
//! image, and its symlinks are untrusted: every path is resolved with
//! `openat2(RESOLVE_IN_ROOT)` against an fd of the rootfs, and created with
//! `mkdirat`/`openat(O_CREAT|O_EXCL|O_NOFOLLOW)` relative to the parent it
//! resolved to, so `etc -> /somewhere` lands in the rootfs's `/somewhere`.
//!
//! A destination below an earlier mount's destination is left to the guest:
//! it is made on that mount (a tmpfs on /dev, a volume), not in the image.
//! Devices (`linux.devices`) are not handled here: the agent makes them on
//! the /dev tmpfs, which every runtime spec has.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::Mount;

use crate::mounts::{mkdir_at, open_at, open_dir, open_in_root};

/// More symlinks than this while resolving one destination is a loop.
const MAX_SYMLINKS: u32 = 40;

/// A mount destination that cannot be made.
#[derive(Debug, thiserror::Error)]
#[error("cannot create mount destination {destination} in the rootfs")]
pub struct MountPointError {
    /// The destination, as the spec names it.
    pub destination: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// One mount destination to make: where in the container, and whether it
/// is a file (a bind of a host file) or a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The path in the container.
    pub path: PathBuf,
    /// An empty file rather than a directory.
    pub file: bool,
}

/// The destinations of `mounts` as the agent will need them: a file where a
/// bind source (`source_of`) is not a directory.
pub fn destinations(
    mounts: &[Mount],
    source_of: impl Fn(&Mount) -> Option<PathBuf>,
) -> Vec<Destination> {
    mounts
        .iter()
        .map(|m| Destination {
            path: m.destination().clone(),
            file: source_of(m)
                .and_then(|s| std::fs::metadata(s).ok())
                .is_some_and(|md| !md.is_dir()),
        })
        .collect()
}

/// Creates each destination missing in `rootfs`, in order, skipping those
/// below an earlier one. Returns the paths made, relative to `rootfs` as
/// resolved there.
pub fn create_missing(
    rootfs: &Path,
    dests: &[Destination],
) -> Result<Vec<PathBuf>, MountPointError> {
    let root = open_dir(rootfs).map_err(|source| MountPointError {
        destination: "/".into(),
        source,
    })?;
    let mut earlier: Vec<PathBuf> = Vec::new();
    let mut made = Vec::new();
    for d in dests {
        let err = |source| MountPointError {
            destination: d.path.clone(),
            source,
        };
        let resolved = resolve(root.as_fd(), &d.path).map_err(err)?;
        let rel: PathBuf = resolved.iter().collect();
        let covered = earlier.iter().any(|e| rel.starts_with(e));
        earlier.push(rel.clone());
        if covered || resolved.is_empty() {
            continue;
        }
        if create(root.as_fd(), &resolved, d.file).map_err(err)? {
            made.push(rel);
        }
    }
    Ok(made)
}

/// `dest` resolved in `root` the way the agent resolves it in the guest
/// (symlinks followed as if `root` were `/`), as symlink-free components.
/// Components that do not exist are kept as they are.
fn resolve(root: BorrowedFd<'_>, dest: &Path) -> io::Result<Vec<OsString>> {
    fn parts(p: &Path) -> impl Iterator<Item = OsString> + '_ {
        p.components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
    }
    let mut todo: VecDeque<OsString> = parts(dest).collect();
    let mut resolved: Vec<OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        resolved.push(c);
        let here: PathBuf = resolved.iter().collect();
        let fd = match open_in_root(root, &here, libc::O_PATH | libc::O_NOFOLLOW) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => continue,
            Err(e) => return Err(e),
        };
        let st = nix::sys::stat::fstat(std::os::fd::AsRawFd::as_raw_fd(&fd))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFLNK {
            continue;
        }
        links += 1;
        if links > MAX_SYMLINKS {
            return Err(io::Error::from_raw_os_error(libc::ELOOP));
        }
        let target = nix::fcntl::readlinkat(Some(std::os::fd::AsRawFd::as_raw_fd(&fd)), "")?;
        resolved.pop();
        let target = Path::new(&target);
        if target.is_absolute() {
            resolved.clear();
        }
        let mut next: VecDeque<OsString> = parts(target).collect();
        next.extend(todo.drain(..));
        todo = next;
    }
    Ok(resolved)
}

/// Makes every missing component of `resolved` under `root`, the last one a
/// file when `file`. Returns whether the last one was made.
fn create(root: BorrowedFd<'_>, resolved: &[OsString], file: bool) -> io::Result<bool> {
    let full: PathBuf = resolved.iter().collect();
    if open_in_root(root, &full, libc::O_PATH).is_ok() {
        return Ok(false);
    }
    let mut made = false;
    for (i, name) in resolved.iter().enumerate() {
        let parent: PathBuf = resolved[..i].iter().collect();
        let dir = open_in_root(root, &parent, libc::O_PATH | libc::O_DIRECTORY)?;
        let last = i + 1 == resolved.len();
        made = if last && file {
            make_file(dir.as_fd(), name)?
        } else {
            match mkdir_at(dir.as_fd(), name, 0o755) {
                Ok(()) => true,
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
                Err(e) => return Err(e),
            }
        };
    }
    Ok(made)
}

fn make_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    debug_assert!(!name.as_bytes().contains(&b'/'));
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW;
    match open_at(dir, name, flags, 0o644) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    fn dir(p: &str) -> Destination {
        Destination {
            path: p.into(),
            file: false,
        }
    }

    fn file(p: &str) -> Destination {
        Destination {
            path: p.into(),
            file: true,
        }
    }

    #[test]
    fn makes_directories_and_files_and_skips_what_an_earlier_mount_covers() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        fs::create_dir(r.join("proc")).unwrap();
        let made = create_missing(
            r,
            &[
                dir("/proc"),
                dir("/dev"),
                file("/dev/termination-log"),
                dir("/sys"),
                dir("/sys/fs/cgroup"),
                dir("/var/run/secrets/kubernetes.io/serviceaccount"),
                file("/etc/hosts"),
                dir("/"),
            ],
        )
        .unwrap();
        assert_eq!(
            made,
            [
                "dev",
                "sys",
                "var/run/secrets/kubernetes.io/serviceaccount",
                "etc/hosts"
            ]
            .map(PathBuf::from)
        );
        assert!(r
            .join("var/run/secrets/kubernetes.io/serviceaccount")
            .is_dir());
        assert!(r.join("etc/hosts").is_file());
        // Made on the /dev and /sys mounts by the guest, not in the image.
        assert!(!r.join("dev/termination-log").exists());
        assert!(!r.join("sys/fs").exists());
    }

    #[test]
    fn symlinks_in_the_image_do_not_leave_the_rootfs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("rootfs");
        let outside = t.path().join("outside");
        fs::create_dir_all(r.join("var")).unwrap();
        fs::create_dir(&outside).unwrap();
        symlink(&outside, r.join("etc")).unwrap();
        symlink("../../..", r.join("var/up")).unwrap();
        symlink("/run", r.join("var/run")).unwrap();
        symlink("loop", r.join("loop")).unwrap();
        let made = create_missing(
            &r,
            &[
                file("/etc/hosts"),
                dir("/var/up/escaped"),
                dir("/var/run/secrets"),
                dir("/../../dotdot"),
            ],
        )
        .unwrap();
        assert_eq!(fs::read_dir(&outside).unwrap().count(), 0, "wrote outside");
        assert!(!t.path().join("escaped").exists() && !t.path().join("dotdot").exists());
        // The absolute link lands at the same path inside the rootfs.
        let inner = r.join(outside.strip_prefix("/").unwrap());
        assert!(inner.join("hosts").is_file());
        assert!(r.join("escaped").is_dir() && r.join("dotdot").is_dir());
        assert!(r.join("run/secrets").is_dir());
        assert_eq!(made.len(), 4, "{made:?}");
        let e = create_missing(&r, &[dir("/loop/x")]).unwrap_err();
        assert_eq!(e.source.raw_os_error(), Some(libc::ELOOP), "{e}");
    }

    #[test]
    fn a_dangling_final_symlink_is_followed_inside() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path().join("rootfs");
        fs::create_dir_all(&r).unwrap();
        fs::write(t.path().join("victim"), b"host").unwrap();
        symlink(t.path().join("victim"), r.join("f")).unwrap();
        create_missing(&r, &[file("/f")]).unwrap();
        assert_eq!(fs::read(t.path().join("victim")).unwrap(), b"host");
        let inner = r.join(t.path().join("victim").strip_prefix("/").unwrap());
        assert!(inner.is_file());
        // A file where a directory is needed is an error, not a surprise.
        fs::write(r.join("plain"), b"").unwrap();
        assert!(create_missing(&r, &[dir("/plain/sub")]).is_err());
    }
}
