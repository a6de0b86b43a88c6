//! The mount and path syscalls the share is built with: the new mount API
//! (`open_tree`, `mount_setattr`, `move_mount`), `openat2` with in-root
//! resolution, and fd-relative creation. Every `unsafe` of the host side's
//! share handling lives here.
//!
//! All of it works on file descriptors so that a path a guest can change
//! (a symlink planted in a directory virtiofsd serves) is never followed by
//! the host: a tree is cloned and given its attributes while detached, and
//! attached onto a directory fd opened with `O_NOFOLLOW`.

use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

/// Per-mount attributes set on a share's mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountAttrs {
    /// Read-only for everyone on the host, virtiofsd (root) included.
    pub readonly: bool,
    /// No setuid/setgid and no device nodes through this mount.
    pub nosuid_nodev: bool,
}

fn cstr(p: &OsStr) -> io::Result<CString> {
    CString::new(p.as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn fd_result(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(r).map_err(|_| io::Error::from_raw_os_error(libc::EBADF))?;
    // SAFETY: the kernel just returned `fd` as a new descriptor owned by us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn unit_result(r: libc::c_long) -> io::Result<()> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A detached copy of the mount tree at `src` (`open_tree` with
/// `OPEN_TREE_CLONE | AT_RECURSIVE`): what `mount --rbind` would attach,
/// not yet visible anywhere. Closing the fd before [`attach`] drops it.
pub fn clone_tree(src: &Path) -> io::Result<OwnedFd> {
    open_tree_clone(src, true)
}

/// A detached copy of the one mount at `src` (`OPEN_TREE_CLONE` without
/// `AT_RECURSIVE`): what `mount --bind` would attach, the source's
/// submounts left out.
pub fn clone_mount(src: &Path) -> io::Result<OwnedFd> {
    open_tree_clone(src, false)
}

fn open_tree_clone(src: &Path, recursive: bool) -> io::Result<OwnedFd> {
    let c = cstr(src.as_os_str())?;
    let mut flags = libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC;
    if recursive {
        flags |= libc::AT_RECURSIVE as u32;
    }
    // SAFETY: `c` is a valid NUL-terminated path for the duration of the
    // call; open_tree reads it and returns a new fd or -1.
    let r = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c.as_ptr(), flags) };
    fd_result(r)
}

/// Sets `attrs` on the mount `fd` refers to, and on every mount below it
/// when `recursive`. Attributes already set stay (nothing is cleared).
pub fn set_attrs(fd: BorrowedFd<'_>, attrs: MountAttrs, recursive: bool) -> io::Result<()> {
    let mut set = 0;
    if attrs.readonly {
        set |= libc::MOUNT_ATTR_RDONLY;
    }
    if attrs.nosuid_nodev {
        set |= libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR_NODEV;
    }
    setattr(fd, set, 0, recursive)
}

/// Makes the mount `fd` refers to (and those below it) private: no mount
/// or unmount event propagates from or to its former peers.
pub fn make_private(fd: BorrowedFd<'_>) -> io::Result<()> {
    setattr(fd, 0, libc::MS_PRIVATE, true)
}

fn setattr(fd: BorrowedFd<'_>, set: u64, propagation: u64, recursive: bool) -> io::Result<()> {
    let attr = libc::mount_attr {
        attr_set: set,
        attr_clr: 0,
        propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: the path is the empty C string literal, `attr` is a valid
    // mount_attr that outlives the call and its size is passed with it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    unit_result(r)
}

/// Attaches the detached tree `tree` onto the directory or file `target`
/// refers to (`move_mount` between two fds: no path is looked up, so no
/// symlink is followed). `tree` then names the attached mount.
pub fn attach(tree: BorrowedFd<'_>, target: BorrowedFd<'_>) -> io::Result<()> {
    let flags = libc::MOVE_MOUNT_F_EMPTY_PATH | libc::MOVE_MOUNT_T_EMPTY_PATH;
    // SAFETY: both paths are the empty C string literal; the fds are
    // borrowed for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            target.as_raw_fd(),
            c"".as_ptr(),
            flags,
        )
    };
    unit_result(r)
}

/// Detaches the mount `fd` refers to, and everything below it, wherever it
/// is now attached: the path is `/proc/self/fd/N`, which names that exact
/// mount, not whatever a guest-writable path points at.
pub fn detach_fd(fd: BorrowedFd<'_>) -> io::Result<()> {
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH).map_err(io::Error::from)
}

/// Opens `path` relative to `root` as if `root` were `/` (`openat2` with
/// `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`): `..` and absolute symlinks
/// stop at `root`, so nothing outside it is reached.
pub fn open_in_root(root: BorrowedFd<'_>, path: &Path, flags: i32) -> io::Result<OwnedFd> {
    let p = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    let c = cstr(p.as_os_str())?;
    // SAFETY: open_how is plain data; all-zero is its "no options" value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | libc::O_CLOEXEC) as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: `c` and `how` are valid for the call, `how`'s size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            root.as_raw_fd(),
            c.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    fd_result(r)
}

/// `openat(dir, name, flags, mode)`, close-on-exec.
pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let c = cstr(name)?;
    // SAFETY: `c` is a valid C string for the call; openat returns a new fd
    // or -1.
    let r = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            flags | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    fd_result(r.into())
}

/// Opens a directory for `O_PATH` use, refusing a symlink in its place.
pub fn open_dir_nofollow(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(
        dir,
        name,
        libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW,
        0,
    )
}

/// Opens the directory `path` (followed: only for paths the host owns).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path.as_os_str())?;
    // SAFETY: `c` is a valid C string for the call.
    let r = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    fd_result(r.into())
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    nix::sys::stat::mkdirat(
        Some(dir.as_raw_fd()),
        name,
        nix::sys::stat::Mode::from_bits_truncate(mode),
    )
    .map_err(io::Error::from)
}

/// `unlinkat(dir, name, AT_REMOVEDIR)`: removes an empty directory, never a
/// symlink's target.
pub fn rmdir_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    nix::unistd::unlinkat(
        Some(dir.as_raw_fd()),
        name,
        nix::unistd::UnlinkatFlags::RemoveDir,
    )
    .map_err(io::Error::from)
}

/// What `statx` says about an fd: its mount id and whether it is the root
/// of a mount.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MountInfo {
    /// The id of the mount the fd is on (`/proc/self/mountinfo` field 1).
    pub mount_id: u64,
    /// Whether the fd is the root of that mount (a mount point).
    pub is_mount_root: bool,
}

/// The [`MountInfo`] of `fd`.
pub fn mount_info(fd: BorrowedFd<'_>) -> io::Result<MountInfo> {
    // SAFETY: statx is plain data; all-zero is a valid value.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the path is the empty C string literal and `st` is a valid
    // out-buffer for the call.
    let r = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_MNT_ID,
            &mut st,
        )
    };
    unit_result(r.into())?;
    if st.stx_mask & libc::STATX_MNT_ID == 0 {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    }
    let root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    Ok(MountInfo {
        mount_id: st.stx_mnt_id,
        is_mount_root: st.stx_attributes_mask & root != 0 && st.stx_attributes & root != 0,
    })
}

/// Whether the directory `dir` has no entries but `.` and `..`.
pub fn dir_is_empty(dir: BorrowedFd<'_>) -> io::Result<bool> {
    let d = nix::dir::Dir::openat(
        Some(dir.as_fd().as_raw_fd()),
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(io::Error::from)?;
    for e in d.into_iter() {
        let e = e.map_err(io::Error::from)?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            return Ok(false);
        }
    }
    Ok(true)
}

/// The mounts of this mount namespace, from `/proc/self/mountinfo` (none
/// when it cannot be read).
pub fn own_mountinfo() -> Vec<procfs::process::MountInfo> {
    parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The mounts in the text of a `mountinfo` file, in its order (a mount
/// after the one it covers); lines procfs cannot parse are skipped. procfs
/// leaves the path fields as the kernel escapes them: the mount point and
/// root come back decoded.
pub fn parse_mountinfo(text: &str) -> Vec<procfs::process::MountInfo> {
    text.lines()
        .filter_map(|l| procfs::process::MountInfo::from_line(l).ok())
        .map(|mut m| {
            m.mount_point = unescape(&m.mount_point.to_string_lossy());
            m.root = unescape(&m.root).to_string_lossy().into_owned();
            m
        })
        .collect()
}

/// Every mount point at or below `dir` in this mount namespace, deepest
/// first (from `/proc/self/mountinfo`).
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = own_mountinfo()
        .into_iter()
        .map(|m| m.mount_point)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort();
    v.dedup();
    v.reverse();
    v
}

/// A mount strictly below some directory, as [`submounts`] finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submount {
    /// Its mount point, relative to that directory.
    pub rel: PathBuf,
    /// Mounted read-only.
    pub readonly: bool,
    /// Mounted noexec.
    pub noexec: bool,
}

/// The mounts strictly below `dir` in this mount namespace, parents before
/// their children; of two mounts on one point, the one on top.
pub fn submounts(dir: &Path) -> Vec<Submount> {
    let mut found: Vec<Submount> = Vec::new();
    for m in own_mountinfo() {
        let Ok(rel) = m.mount_point.strip_prefix(dir) else {
            continue;
        };
        if rel.as_os_str().is_empty() {
            continue;
        }
        let m = Submount {
            rel: rel.to_owned(),
            readonly: m.mount_options.contains_key("ro"),
            noexec: m.mount_options.contains_key("noexec"),
        };
        // mountinfo lists a mount after the one it covers.
        found.retain(|f| f.rel != m.rel);
        found.push(m);
    }
    found.sort_by(|a, b| a.rel.cmp(&b.rel));
    found
}

/// A mountinfo path field with its octal escapes (`\040` for a space...)
/// decoded.
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match oct {
            Some(d) => {
                let v = d.iter().fold(0u32, |a, c| a * 8 + u32::from(c - b'0'));
                out.push(v as u8);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape("/a\\040b\\134c\\011"), Path::new("/a b\\c\t"));
        assert_eq!(unescape("/x\\9"), Path::new("/x\\9"));
        assert_eq!(unescape("/a\\040b"), Path::new("/a b"));
        assert_eq!(unescape("/a\\134b"), Path::new("/a\\b"));
        assert_eq!(unescape("/plain\\04"), Path::new("/plain\\04"));
    }

    #[test]
    fn mountinfo_lines_parse_with_decoded_paths() {
        let m = parse_mountinfo(
            "not a mountinfo line\n\
             36 25 0:32 /a\\040dir /mnt/my\\040share rw,noexec shared:7 - ext4 /dev/vda rw,name=x\n",
        );
        assert_eq!(m.len(), 1, "the junk line is skipped");
        assert_eq!(m[0].mount_point, Path::new("/mnt/my share"));
        assert_eq!(m[0].root, "/a dir");
        assert_eq!(m[0].fs_type, "ext4");
        assert!(m[0].mount_options.contains_key("noexec"));
        assert_eq!(m[0].super_options.get("name"), Some(&Some("x".into())));
    }

    #[test]
    fn open_in_root_keeps_symlinks_inside() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("in")).unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("in/rel")).unwrap();
        let r = open_dir(&root).unwrap();
        // Both links resolve against `root`, where there is no `outside`.
        for p in ["abs", "in/rel", "../outside"] {
            let e = open_in_root(r.as_fd(), Path::new(p), libc::O_PATH).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "{p}");
        }
        std::fs::create_dir(root.join("outside")).unwrap();
        assert!(open_in_root(r.as_fd(), Path::new("in/rel"), libc::O_PATH).is_ok());
    }

    #[test]
    fn nofollow_dir_open_refuses_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", t.path().join("l")).unwrap();
        let d = open_dir(t.path()).unwrap();
        let e = open_dir_nofollow(d.as_fd(), OsStr::new("l")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTDIR));
        assert!(dir_is_empty(d.as_fd()).is_ok_and(|e| !e));
        std::fs::create_dir(t.path().join("e")).unwrap();
        let e = open_dir_nofollow(d.as_fd(), OsStr::new("e")).unwrap();
        assert!(dir_is_empty(e.as_fd()).unwrap());
        assert!(!mount_info(e.as_fd()).unwrap().is_mount_root);
        assert!(
            mount_info(open_dir(Path::new("/")).unwrap().as_fd())
                .unwrap()
                .is_mount_root
        );
    }
}
