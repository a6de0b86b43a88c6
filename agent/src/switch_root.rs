//! Leaving the initramfs: pivot_root(2) refuses to move away from the
//! kernel's initial rootfs (EINVAL), and every container's rootfs setup
//! pivots. So PID 1 first copies itself onto a fresh tmpfs, moves that
//! tmpfs over `/`, chroots into it and re-executes itself, as
//! switch_root(8) does. After that, `/` is an ordinary mount and
//! containers pivot as they would on any host.

use std::ffi::CString;
use std::fs;

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot, execv};

/// Set in the environment of the re-executed agent.
const SWITCHED: &str = "HUSK_AGENT_SWITCHED_ROOT";
const NEW_ROOT: &str = "/newroot";

/// Whether this process already runs on the tmpfs root.
pub fn switched() -> bool {
    std::env::var_os(SWITCHED).is_some()
}

/// Whether `/` is the kernel's initial rootfs (a ramfs or tmpfs holding
/// `/init`). Only then is there anything to leave: an agent that is PID 1
/// of a pid namespace on an ordinary root (host tests) must not touch `/`.
pub fn on_initramfs() -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(st) = nix::sys::statfs::statfs("/") else {
        return false;
    };
    let t = st.filesystem_type().0;
    (t == RAMFS_MAGIC || t == TMPFS_MAGIC) && std::path::Path::new("/init").exists()
}

/// Moves the agent onto a tmpfs root and re-executes it; returns only on
/// failure (the caller then carries on from the initramfs).
pub fn leave_initramfs() -> std::io::Result<()> {
    let e = |err: nix::Error| std::io::Error::from(err);
    fs::create_dir_all(NEW_ROOT)?;
    mount(
        Some("rootfs"),
        NEW_ROOT,
        Some("tmpfs"),
        MsFlags::empty(),
        Some("mode=0755"),
    )
    .map_err(e)?;
    fs::copy("/init", format!("{NEW_ROOT}/init"))?;
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        fs::create_dir_all(format!("{NEW_ROOT}/{d}"))?;
    }
    // Free the initramfs copy: nothing else ever reads it.
    let _ = fs::remove_file("/init");
    chdir(NEW_ROOT).map_err(e)?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>).map_err(e)?;
    chroot(".").map_err(e)?;
    chdir("/").map_err(e)?;
    std::env::set_var(SWITCHED, "1");
    let argv: Vec<CString> = std::env::args()
        .map(|a| CString::new(a).unwrap_or_default())
        .collect();
    let init = CString::new("/init").expect("no NUL");
    execv(&init, &argv).map_err(e)?;
    unreachable!("execv returned without an error")
}
