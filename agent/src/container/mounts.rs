//! `mounts` entries of the spec: option parsing and the mount calls, run in
//! the container's mount namespace before pivot_root.

use std::fs;
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::{sys, SetupError};

/// A mount's options split the way mount(2) wants them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount call.
    pub flags: MsFlags,
    /// Flags that are cleared by an option (`rw`, `suid`...), for remounts.
    pub cleared: MsFlags,
    /// Propagation changes applied after the mount.
    pub propagation: Vec<MsFlags>,
    /// Filesystem-specific data (`mode=755,size=65536k`).
    pub data: String,
    /// Attributes set on the mount and every mount below it
    /// (`MOUNT_ATTR_*` of runc's recursive options: `rro`, `rnosuid`...).
    pub rec_set: u64,
    /// Attributes cleared on the mount and every mount below it (`rrw`...).
    pub rec_clr: u64,
}

impl MountOptions {
    /// Whether this is a bind mount (`bind` or `rbind`).
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Whether a recursive attribute (`rro`, `rnoexec`...) was asked for.
    pub fn has_recursive_attrs(&self) -> bool {
        self.rec_set != 0 || self.rec_clr != 0
    }
}

/// `nosymfollow` (Linux 5.10), which nix's `MsFlags` does not name.
const MS_NOSYMFOLLOW: MsFlags = MsFlags::from_bits_retain(libc::MS_NOSYMFOLLOW);

/// What a recursive option (runc 1.1's `rro`, `rnosuid`...) does to the
/// `mount_setattr(2)` attributes of a mount tree: set or clear a flag, or
/// pick the atime mode (an enum in the kernel's ABI, so picking one also
/// clears `MOUNT_ATTR__ATIME`).
enum RecAttr {
    Set(u64),
    Clear(u64),
    Atime(u64),
}

fn recursive_attr(opt: &str) -> Option<RecAttr> {
    use RecAttr::*;
    Some(match opt {
        "rro" => Set(libc::MOUNT_ATTR_RDONLY),
        "rrw" => Clear(libc::MOUNT_ATTR_RDONLY),
        "rnosuid" => Set(libc::MOUNT_ATTR_NOSUID),
        "rsuid" => Clear(libc::MOUNT_ATTR_NOSUID),
        "rnodev" => Set(libc::MOUNT_ATTR_NODEV),
        "rdev" => Clear(libc::MOUNT_ATTR_NODEV),
        "rnoexec" => Set(libc::MOUNT_ATTR_NOEXEC),
        "rexec" => Clear(libc::MOUNT_ATTR_NOEXEC),
        "rnodiratime" => Set(libc::MOUNT_ATTR_NODIRATIME),
        "rdiratime" => Clear(libc::MOUNT_ATTR_NODIRATIME),
        "rnosymfollow" => Set(libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rsymfollow" => Clear(libc::MOUNT_ATTR_NOSYMFOLLOW),
        "rnoatime" => Atime(libc::MOUNT_ATTR_NOATIME),
        "rstrictatime" | "rnorelatime" => Atime(libc::MOUNT_ATTR_STRICTATIME),
        // As mount(8)'s `atime` and `nostrictatime`: the kernel's default.
        "rrelatime" | "ratime" | "rnostrictatime" => Atime(libc::MOUNT_ATTR_RELATIME),
        _ => return None,
    })
}

/// Splits mount options into flags, propagation and data, like runc.
pub fn parse_options(options: &[String]) -> MountOptions {
    let mut o = MountOptions {
        flags: MsFlags::empty(),
        cleared: MsFlags::empty(),
        propagation: Vec::new(),
        data: String::new(),
        rec_set: 0,
        rec_clr: 0,
    };
    let mut data = Vec::new();
    for opt in options {
        if let Some(attr) = recursive_attr(opt) {
            // The last of two opposite options wins, as for `ro`/`rw`.
            match attr {
                RecAttr::Set(f) => {
                    o.rec_set |= f;
                    o.rec_clr &= !f;
                }
                RecAttr::Clear(f) => {
                    o.rec_clr |= f;
                    o.rec_set &= !f;
                }
                RecAttr::Atime(mode) => {
                    o.rec_set = (o.rec_set & !libc::MOUNT_ATTR__ATIME) | mode;
                    o.rec_clr |= libc::MOUNT_ATTR__ATIME;
                }
            }
            continue;
        }
        let (set, clear) = match opt.as_str() {
            "ro" => (MsFlags::MS_RDONLY, false),
            "rw" => (MsFlags::MS_RDONLY, true),
            "nosuid" => (MsFlags::MS_NOSUID, false),
            "suid" => (MsFlags::MS_NOSUID, true),
            "nodev" => (MsFlags::MS_NODEV, false),
            "dev" => (MsFlags::MS_NODEV, true),
            "noexec" => (MsFlags::MS_NOEXEC, false),
            "exec" => (MsFlags::MS_NOEXEC, true),
            "sync" => (MsFlags::MS_SYNCHRONOUS, false),
            "async" => (MsFlags::MS_SYNCHRONOUS, true),
            "dirsync" => (MsFlags::MS_DIRSYNC, false),
            "remount" => (MsFlags::MS_REMOUNT, false),
            "mand" => (MsFlags::MS_MANDLOCK, false),
            "nomand" => (MsFlags::MS_MANDLOCK, true),
            "noatime" => (MsFlags::MS_NOATIME, false),
            "atime" => (MsFlags::MS_NOATIME, true),
            "nodiratime" => (MsFlags::MS_NODIRATIME, false),
            "diratime" => (MsFlags::MS_NODIRATIME, true),
            "relatime" => (MsFlags::MS_RELATIME, false),
            "norelatime" => (MsFlags::MS_RELATIME, true),
            "strictatime" => (MsFlags::MS_STRICTATIME, false),
            "nostrictatime" => (MsFlags::MS_STRICTATIME, true),
            "bind" => (MsFlags::MS_BIND, false),
            "rbind" => (MsFlags::MS_BIND | MsFlags::MS_REC, false),
            // mount(8)'s defaults are mount(2)'s: no flag at all.
            "defaults" => (MsFlags::empty(), false),
            "nosymfollow" => (MS_NOSYMFOLLOW, false),
            "symfollow" => (MS_NOSYMFOLLOW, true),
            p => {
                if let Some(f) = propagation_flags(p) {
                    o.propagation.push(f);
                } else {
                    data.push(p.to_owned());
                }
                continue;
            }
        };
        if clear {
            o.flags.remove(set);
            o.cleared.insert(set);
        } else {
            o.flags.insert(set);
        }
    }
    o.data = data.join(",");
    o
}

/// The mount(2) flags of a propagation name (`rprivate`, `slave`...).
pub fn propagation_flags(name: &str) -> Option<MsFlags> {
    Some(match name {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// `root` joined with the container path `dest`, refusing `..` so that a
/// spec cannot point a mount outside the rootfs lexically.
pub fn join_in_root(root: &Path, dest: &Path) -> Result<PathBuf, SetupError> {
    let mut out = root.to_path_buf();
    for c in dest.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir => {}
            _ => {
                return Err(SetupError::Invalid(format!(
                    "mount destination {} leaves the rootfs",
                    dest.display()
                )))
            }
        }
    }
    Ok(out)
}

/// `dest` inside `root` with symlinks resolved as if `root` were `/`
/// (filepath-securejoin semantics): an image's `/var/run -> /run` lands in
/// the rootfs's /run, and neither `..` nor a symlink can leave the rootfs.
/// Components that do not exist yet are taken as they are.
pub fn resolve_in_root(root: &Path, dest: &Path) -> Result<PathBuf, SetupError> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn parts(p: &Path) -> impl Iterator<Item = OsString> + '_ {
        p.components().filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_owned()),
            Component::ParentDir => Some(OsString::from("..")),
            _ => None,
        })
    }
    let mut todo: VecDeque<OsString> = parts(dest).collect();
    let mut resolved = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            resolved.pop();
            continue;
        }
        let cand = root.join(&resolved).join(&c);
        match fs::symlink_metadata(&cand) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(SetupError::Invalid(format!(
                        "too many symlinks resolving {} in the rootfs",
                        dest.display()
                    )));
                }
                let target = fs::read_link(&cand)
                    .map_err(sys(format!("read symlink {}", cand.display())))?;
                if target.is_absolute() {
                    resolved.clear();
                }
                let mut next: VecDeque<OsString> = parts(&target).collect();
                next.extend(todo.drain(..));
                todo = next;
            }
            _ => resolved.push(c),
        }
    }
    Ok(root.join(resolved))
}

/// The mount point of a `proc` or `sysfs` mount. Like runc, the
/// destination itself must be an ordinary directory when it exists: a
/// symlink there (or a file) is refused instead of followed, since mounting
/// procfs or sysfs through an image's symlink is a known container-escape
/// class (runc: "must be mounted on ordinary directory"). The parent is
/// resolved inside the rootfs as for any mount; only the last component
/// is looked at without following it, after `.` and `..` are taken
/// lexically (runc cleans the destination the same way).
pub fn proc_sys_target(root: &Path, dest: &Path, fstype: &str) -> Result<PathBuf, SetupError> {
    let mut clean = PathBuf::new();
    for c in dest.components() {
        match c {
            Component::Normal(n) => clean.push(n),
            Component::ParentDir => {
                clean.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    let (Some(parent), Some(name)) = (clean.parent(), clean.file_name()) else {
        // The destination is `/` itself: the rootfs, a directory.
        return Ok(root.to_path_buf());
    };
    let target = resolve_in_root(root, parent)?.join(name);
    match fs::symlink_metadata(&target) {
        Ok(m) if m.is_dir() => Ok(target),
        Ok(m) => {
            let what = if m.file_type().is_symlink() {
                "a symlink"
            } else {
                "not a directory"
            };
            Err(SetupError::Invalid(format!(
                "mount destination {}: filesystem {fstype:?} must be mounted on ordinary \
                 directory, and {} in the rootfs is {what}",
                dest.display(),
                Path::new("/").join(&clean).display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(target),
        Err(e) => Err(sys(format!(
            "inspect mount destination {}",
            target.display()
        ))(e)),
    }
}

/// Creates the mount point: a file when binding a file, else a directory.
pub fn create_mount_point(target: &Path, source_is_file: bool) -> Result<(), SetupError> {
    if target.exists() {
        return Ok(());
    }
    if source_is_file {
        if let Some(parent) = target.parent() {
            fs::create_dir_all(parent)
                .map_err(sys(format!("create directory {}", parent.display())))?;
        }
        fs::File::create(target).map_err(sys(format!("create file {}", target.display())))?;
    } else {
        fs::create_dir_all(target)
            .map_err(sys(format!("create directory {}", target.display())))?;
    }
    Ok(())
}

/// mount(2), behind a trait so a test can record which calls a spec
/// produces without root.
pub trait Mounter {
    /// One mount(2) call.
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()>;

    /// `mount_setattr(2)` with `AT_RECURSIVE` on the mount at `target`
    /// (not following a symlink there): `set` and `clr` are `MOUNT_ATTR_*`.
    fn setattr_recursive(&mut self, target: &Path, set: u64, clr: u64) -> nix::Result<()>;
}

/// The kernel's mount(2).
#[derive(Debug, Default)]
pub struct Kernel;

impl Mounter for Kernel {
    fn mount(
        &mut self,
        source: Option<&Path>,
        target: &Path,
        fstype: Option<&str>,
        flags: MsFlags,
        data: Option<&str>,
    ) -> nix::Result<()> {
        mount(source, target, fstype, flags, data)
    }

    fn setattr_recursive(&mut self, target: &Path, set: u64, clr: u64) -> nix::Result<()> {
        crate::sys::mount_setattr_recursive(target, set, clr)
    }
}

/// Mounts one spec entry under `rootfs`.
pub fn mount_entry(mnt: &mut dyn Mounter, rootfs: &Path, m: &Mount) -> Result<(), SetupError> {
    let opts = parse_options(m.options().as_deref().unwrap_or(&[]));
    let mut typ = m.typ().clone().unwrap_or_default();
    let target = if matches!(typ.as_str(), "proc" | "sysfs") {
        proc_sys_target(rootfs, m.destination(), &typ)?
    } else {
        resolve_in_root(rootfs, m.destination())?
    };
    let source = m.source().clone();
    if typ == "bind" {
        typ.clear();
    }
    let is_bind = opts.is_bind() || typ.is_empty();
    if is_bind {
        let src = source.as_ref().ok_or_else(|| {
            SetupError::Invalid(format!(
                "bind mount {} has no source",
                m.destination().display()
            ))
        })?;
        let meta = fs::metadata(src).map_err(sys(format!("bind source {}", src.display())))?;
        create_mount_point(&target, !meta.is_dir())?;
        let rec = opts.flags & MsFlags::MS_REC;
        mnt.mount(
            Some(src.as_path()),
            &target,
            None,
            MsFlags::MS_BIND | rec,
            None,
        )
        .map_err(sys(format!(
            "bind mount {} on {}",
            src.display(),
            target.display()
        )))?;
        let extra = opts.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT);
        if !extra.is_empty() {
            remount_bind(mnt, &target, extra)?;
        }
    } else {
        create_mount_point(&target, false)?;
        // The guest only has cgroup v2; `cgroup` in a runc spec means "the
        // container's cgroup tree", which is cgroup2 there.
        let fstype = if typ == "cgroup" {
            "cgroup2".to_owned()
        } else {
            typ.clone()
        };
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        let flags = opts.flags & !MsFlags::MS_REMOUNT;
        let src = source.clone().unwrap_or_else(|| PathBuf::from(&fstype));
        mnt.mount(
            Some(src.as_path()),
            &target,
            Some(fstype.as_str()),
            flags,
            data,
        )
        .map_err(sys(format!("mount {fstype} on {}", target.display())))?;
    }
    for p in &opts.propagation {
        mnt.mount(None, &target, None, *p, None)
            .map_err(sys(format!("set propagation of {}", target.display())))?;
    }
    // runc 1.1 and crun apply the recursive options last, to the mount and
    // everything below it (an `rbind`'s submounts included).
    if opts.has_recursive_attrs() {
        mnt.setattr_recursive(&target, opts.rec_set, opts.rec_clr)
            .map_err(sys(format!(
                "set the recursive attributes of mount {}",
                m.destination().display()
            )))?;
    }
    Ok(())
}

/// Remounts a bind mount with `flags`, keeping the flags the kernel locks
/// (nosuid, nodev... of the source) so the remount is allowed in a user ns.
pub fn remount_bind(
    mnt: &mut dyn Mounter,
    target: &Path,
    flags: MsFlags,
) -> Result<(), SetupError> {
    let locked = locked_flags(target);
    mnt.mount(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags | locked,
        None,
    )
    .map_err(sys(format!("remount {} with {flags:?}", target.display())))
}

fn locked_flags(target: &Path) -> MsFlags {
    use nix::sys::statvfs::{statvfs, FsFlags};
    let Ok(st) = statvfs(target) else {
        return MsFlags::empty();
    };
    let f = st.flags();
    let mut out = MsFlags::empty();
    for (fs, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ] {
        if f.contains(fs) {
            out |= ms;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = parse_options(
            &[
                "nosuid",
                "rbind",
                "ro",
                "rslave",
                "mode=755",
                "size=65536k",
                "rw",
            ]
            .map(String::from),
        );
        assert!(o
            .flags
            .contains(MsFlags::MS_NOSUID | MsFlags::MS_BIND | MsFlags::MS_REC));
        assert!(!o.flags.contains(MsFlags::MS_RDONLY));
        assert!(o.cleared.contains(MsFlags::MS_RDONLY));
        assert_eq!(o.propagation, vec![MsFlags::MS_SLAVE | MsFlags::MS_REC]);
        assert_eq!(o.data, "mode=755,size=65536k");
    }

    type Call = (
        Option<PathBuf>,
        PathBuf,
        Option<String>,
        MsFlags,
        Option<String>,
    );

    /// mount(2) calls, and mount_setattr(2) calls (target, set, clear).
    #[derive(Default)]
    struct Recorder(Vec<Call>, Vec<(PathBuf, u64, u64)>);

    impl Mounter for Recorder {
        fn mount(
            &mut self,
            source: Option<&Path>,
            target: &Path,
            fstype: Option<&str>,
            flags: MsFlags,
            data: Option<&str>,
        ) -> nix::Result<()> {
            self.0.push((
                source.map(Path::to_path_buf),
                target.to_path_buf(),
                fstype.map(str::to_owned),
                flags,
                data.map(str::to_owned),
            ));
            Ok(())
        }

        fn setattr_recursive(&mut self, target: &Path, set: u64, clr: u64) -> nix::Result<()> {
            self.1.push((target.to_path_buf(), set, clr));
            Ok(())
        }
    }

    fn spec_mount(json: &str) -> Mount {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn readonly_bind_is_a_bind_then_a_readonly_remount() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let m = spec_mount(&format!(
            r#"{{"destination":"/mnt/x","type":"bind","source":"{}","options":["rbind","ro","nosuid","rprivate"]}}"#,
            src.path().display()
        ));
        let mut rec = Recorder::default();
        mount_entry(&mut rec, root.path(), &m).unwrap();
        let target = root.path().join("mnt/x");
        assert!(target.is_dir(), "mount point created");
        assert_eq!(rec.0.len(), 3, "{:?}", rec.0);
        assert_eq!(rec.0[0].0.as_deref(), Some(src.path()));
        assert_eq!(rec.0[0].3, MsFlags::MS_BIND | MsFlags::MS_REC);
        let remount = rec.0[1].3;
        assert!(remount.contains(
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_NOSUID
        ));
        assert_eq!(rec.0[2].3, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
    }

    #[test]
    fn recursive_options_become_mount_attributes_last_one_winning() {
        let o = parse_options(
            &[
                "rbind",
                "rro",
                "rnosuid",
                "rsuid",
                "rnoexec",
                "rnoatime",
                "rnosymfollow",
            ]
            .map(String::from),
        );
        assert_eq!(
            o.rec_set,
            libc::MOUNT_ATTR_RDONLY
                | libc::MOUNT_ATTR_NOEXEC
                | libc::MOUNT_ATTR_NOATIME
                | libc::MOUNT_ATTR_NOSYMFOLLOW
        );
        assert_eq!(o.rec_clr, libc::MOUNT_ATTR_NOSUID | libc::MOUNT_ATTR__ATIME);
        assert_eq!(o.data, "", "recursive options are not filesystem data");
        // The atime modes are one enum: the last one picks it.
        let o = parse_options(&["rnoatime", "rstrictatime"].map(String::from));
        assert_eq!(o.rec_set, libc::MOUNT_ATTR_STRICTATIME);
        assert_eq!(o.rec_clr, libc::MOUNT_ATTR__ATIME);
        let o = parse_options(&["rnodev", "rrw", "rnodiratime", "rrelatime"].map(String::from));
        assert_eq!(
            o.rec_set,
            libc::MOUNT_ATTR_NODEV | libc::MOUNT_ATTR_NODIRATIME
        );
        assert_eq!(o.rec_clr, libc::MOUNT_ATTR_RDONLY | libc::MOUNT_ATTR__ATIME);
        // Plain options have no recursive part; nosymfollow is a flag.
        let o = parse_options(&["ro", "nosymfollow", "noatime", "defaults"].map(String::from));
        assert!(!o.has_recursive_attrs());
        assert_eq!(o.data, "", "defaults is no filesystem data");
        assert!(o.flags.contains(MsFlags::MS_RDONLY | MS_NOSYMFOLLOW));
    }

    #[test]
    fn every_recursive_option_the_protocol_names_is_understood() {
        for opt in husk_protocol::RECURSIVE_MOUNT_OPTIONS {
            assert!(recursive_attr(opt).is_some(), "{opt}");
        }
        for opt in ["ro", "rbind", "rprivate", "rslave", "relatime", "rw"] {
            assert!(recursive_attr(opt).is_none(), "{opt}");
        }
    }

    #[test]
    fn recursive_attributes_are_set_after_the_mount_and_its_remount() {
        let root = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let m = spec_mount(&format!(
            r#"{{"destination":"/v","type":"bind","source":"{}","options":["rbind","ro","rnoexec","rprivate"]}}"#,
            src.path().display()
        ));
        let mut rec = Recorder::default();
        mount_entry(&mut rec, root.path(), &m).unwrap();
        assert_eq!(rec.0.len(), 3, "bind, ro remount, propagation: {:?}", rec.0);
        assert_eq!(
            rec.1,
            [(root.path().join("v"), libc::MOUNT_ATTR_NOEXEC, 0)],
            "one recursive mount_setattr on the destination"
        );
        let plain = spec_mount(&format!(
            r#"{{"destination":"/w","type":"bind","source":"{}","options":["rbind","ro"]}}"#,
            src.path().display()
        ));
        let mut rec = Recorder::default();
        mount_entry(&mut rec, root.path(), &plain).unwrap();
        assert!(rec.1.is_empty(), "no recursive option, no mount_setattr");
    }

    #[test]
    fn filesystem_mounts_carry_flags_and_data_and_cgroup_means_cgroup2() {
        let root = tempfile::tempdir().unwrap();
        let mut rec = Recorder::default();
        let tmp = spec_mount(
            r#"{"destination":"/dev","type":"tmpfs","source":"tmpfs","options":["nosuid","strictatime","mode=755","size=65536k"]}"#,
        );
        mount_entry(&mut rec, root.path(), &tmp).unwrap();
        let cg = spec_mount(
            r#"{"destination":"/sys/fs/cgroup","type":"cgroup","source":"cgroup","options":["ro","nosuid"]}"#,
        );
        mount_entry(&mut rec, root.path(), &cg).unwrap();
        assert_eq!(rec.0[0].2.as_deref(), Some("tmpfs"));
        assert_eq!(rec.0[0].3, MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME);
        assert_eq!(rec.0[0].4.as_deref(), Some("mode=755,size=65536k"));
        assert_eq!(rec.0[1].2.as_deref(), Some("cgroup2"));
        assert_eq!(rec.0[1].3, MsFlags::MS_RDONLY | MsFlags::MS_NOSUID);
        assert_eq!(rec.0[1].4, None);
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("run")).unwrap();
        fs::create_dir_all(r.join("var")).unwrap();
        std::os::unix::fs::symlink("/run", r.join("var/run")).unwrap();
        std::os::unix::fs::symlink("../../../../etc", r.join("esc")).unwrap();
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        let got = resolve_in_root(r, Path::new("/var/run/x/y")).unwrap();
        assert_eq!(got, r.join("run/x/y"));
        assert_eq!(
            resolve_in_root(r, Path::new("/esc/passwd")).unwrap(),
            r.join("etc/passwd")
        );
        assert_eq!(
            resolve_in_root(r, Path::new("/../../a")).unwrap(),
            r.join("a")
        );
        assert!(resolve_in_root(r, Path::new("/loop/x")).is_err());
    }

    /// runc refuses a proc or sysfs mount whose destination is a symlink
    /// or a file ("must be mounted on ordinary directory"); following it
    /// is a container-escape class. No mount call may be made.
    #[test]
    fn proc_and_sysfs_refuse_a_destination_that_is_not_a_directory() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("var")).unwrap();
        std::os::unix::fs::symlink("/etc", r.join("proc")).unwrap();
        std::os::unix::fs::symlink("etc", r.join("sys")).unwrap();
        fs::write(r.join("var/file"), b"").unwrap();
        for (json, dest, what) in [
            (
                r#"{"destination":"/proc","type":"proc","source":"proc"}"#,
                "/proc",
                "a symlink",
            ),
            (
                r#"{"destination":"/sys","type":"sysfs","source":"sysfs","options":["ro"]}"#,
                "/sys",
                "a symlink",
            ),
            // `.` and `..` are taken lexically, as runc cleans the path.
            (
                r#"{"destination":"/etc/../proc/.","type":"proc","source":"proc"}"#,
                "/proc",
                "a symlink",
            ),
            (
                r#"{"destination":"/var/file","type":"proc","source":"proc"}"#,
                "/var/file",
                "not a directory",
            ),
        ] {
            let mut rec = Recorder::default();
            let e = mount_entry(&mut rec, r, &spec_mount(json)).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, SetupError::Invalid(_)), "{msg}");
            assert!(
                msg.contains("must be mounted on ordinary directory"),
                "{msg}"
            );
            assert!(
                msg.contains(&format!("{dest} in the rootfs is {what}")),
                "{msg}"
            );
            assert!(rec.0.is_empty(), "{json}: mounted anyway: {:?}", rec.0);
        }
        assert!(r.join("proc").is_symlink() && r.join("sys").is_symlink());
        // A tmpfs may still go through a symlink (resolved in the root).
        let mut rec = Recorder::default();
        let tmp = spec_mount(r#"{"destination":"/proc","type":"tmpfs","source":"tmpfs"}"#);
        mount_entry(&mut rec, r, &tmp).unwrap();
        assert_eq!(rec.0[0].1, r.join("etc"));
    }

    #[test]
    fn proc_and_sysfs_mount_on_a_directory_or_a_new_one() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("proc")).unwrap();
        fs::create_dir_all(r.join("run")).unwrap();
        std::os::unix::fs::symlink("/run", r.join("var")).unwrap();
        let mut rec = Recorder::default();
        for json in [
            r#"{"destination":"/proc","type":"proc","source":"proc"}"#,
            r#"{"destination":"/sys","type":"sysfs","source":"sysfs"}"#,
            // The parent resolves inside the root, like any destination.
            r#"{"destination":"/var/proc","type":"proc","source":"proc"}"#,
        ] {
            mount_entry(&mut rec, r, &spec_mount(json)).unwrap();
        }
        let targets: Vec<_> = rec.0.iter().map(|c| c.1.clone()).collect();
        assert_eq!(targets, [r.join("proc"), r.join("sys"), r.join("run/proc")]);
        assert_eq!(rec.0[0].2.as_deref(), Some("proc"));
        assert_eq!(rec.0[1].2.as_deref(), Some("sysfs"));
        assert!(r.join("sys").is_dir() && r.join("run/proc").is_dir());
    }

    #[test]
    fn destinations_cannot_leave_the_root() {
        let r = Path::new("/r");
        assert_eq!(
            join_in_root(r, Path::new("/a/b")).unwrap(),
            Path::new("/r/a/b")
        );
        assert!(join_in_root(r, Path::new("/a/../../etc")).is_err());
    }
}
