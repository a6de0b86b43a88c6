//! What husk's tests share: the one way a test skips, the probes of what
//! a host may lack, and waiting for a condition with a deadline instead
//! of sleeping.
//!
//! # Skipping
//!
//! A test that cannot run on this host (not root, no `/dev/kvm`, no
//! qemu...) returns early and says why on one stderr line starting with
//! `SKIP`: `scripts/test.sh` runs the tests with `--nocapture` and counts
//! those lines as skipped tests rather than passed ones. So every early
//! return that skips goes through [`skip()`], exactly once, and the caller
//! returns right after it:
//!
//! ```no_run
//! use husk_test_support::{require, root, skip};
//!
//! fn a_test() {
//!     // A probe's reason, with what needs it:
//!     require!(root(), "bind mounts");
//!     // A condition of the test's own:
//!     if std::path::Path::new("/nonexistent").exists() {
//!         skip!("the host has /nonexistent");
//!     }
//! }
//! # a_test();
//! ```
//!
//! A helper that finds what a test needs and hands it back as `None`
//! when the host lacks it calls [`skip()`] itself; its callers then
//! return on `None` without printing again.

use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Prints the line that marks the running test as skipped:
/// `SKIP: <test>: <why>`, on a line of its own on stderr. The test is named by its thread
/// (libtest runs each test on a thread named after it); where that is not
/// available, by the caller's file and line. The caller returns right
/// after; [`skip!`] and [`require!`] do both.
#[track_caller]
pub fn skip(why: impl Display) {
    let at = std::panic::Location::caller();
    let thread = std::thread::current();
    let line = match thread.name().filter(|n| *n != "main") {
        Some(test) => format!("SKIP: {test}: {why}"),
        None => format!("SKIP: {}:{}: {why}", at.file(), at.line()),
    };
    // This crate's own tests skip on purpose: they keep the line to check
    // it rather than have `scripts/test.sh` count a skipped test.
    #[cfg(test)]
    tests::SKIPPED.with(|s| s.borrow_mut().push(line));
    // After a newline: with one test thread libtest has already printed
    // `test NAME ... ` (no newline) when the test runs, and test.sh only
    // counts a `SKIP` at the start of a line of the combined output.
    #[cfg(not(test))]
    eprintln!("\n{line}");
}

/// Skips the calling test: prints the `SKIP` line ([`skip()`]) with the
/// formatted reason and returns from the calling function (which returns
/// `()`).
#[macro_export]
macro_rules! skip {
    ($($why:tt)+) => {{
        $crate::skip(::std::format_args!($($why)+));
        return;
    }};
}

/// The value of a probe (a `Result<T, impl Display>`), or the calling test
/// skipped with the probe's reason (after `context: `, any `Display`, when
/// given) and returned from.
#[macro_export]
macro_rules! require {
    ($probe:expr) => {
        match $probe {
            Ok(v) => v,
            Err(why) => $crate::skip!("{why}"),
        }
    };
    ($probe:expr, $context:expr) => {
        match $probe {
            Ok(v) => v,
            Err(why) => $crate::skip!("{}: {why}", $context),
        }
    };
}

/// Whether this process runs as root (effective uid 0); the reason is
/// `needs root`.
pub fn root() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        Ok(())
    } else {
        Err("needs root".into())
    }
}

/// Whether `/dev/kvm` can be opened for reading and writing, as a KVM
/// guest needs it.
pub fn kvm() -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(drop)
        .map_err(|e| format!("/dev/kvm cannot be opened ({e})"))
}

/// Where program `name` is: the first directory of `$PATH` holding it,
/// else `/usr/local/bin` (where husk and its daemons are installed).
pub fn program(name: &str) -> Result<PathBuf, String> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("{name} is not installed"))
}

/// The cgroup2 hierarchy of this host: `/sys/fs/cgroup` when it is one,
/// else the hybrid layout's `/sys/fs/cgroup/unified`.
pub fn cgroup2() -> Result<PathBuf, String> {
    ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| is_cgroup2(p))
        .ok_or_else(|| "no cgroup2 hierarchy on this host".into())
}

/// Whether `dir` is a cgroup2 mount.
pub fn is_cgroup2(dir: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid value of this plain C struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid, writable
    // statfs that outlives the call.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return false;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs by target.
    let magic = st.f_type as i64;
    magic == CGROUP2_SUPER_MAGIC
}

/// A husk artifact (the guest kernel, the agent initramfs...) as the
/// runtime finds it: the file `$var` names, else `installed` (where
/// `scripts/setup.sh` puts it).
pub fn artifact(var: &str, installed: &str) -> Result<PathBuf, String> {
    let p = std::env::var_os(var).map_or_else(|| PathBuf::from(installed), PathBuf::from);
    if p.is_file() {
        Ok(p)
    } else {
        Err(format!("no {} (run scripts/setup.sh)", p.display()))
    }
}

/// The guest kernel husk boots: `$HUSK_KERNEL`, else the installed one.
pub fn husk_kernel() -> Result<PathBuf, String> {
    artifact("HUSK_KERNEL", "/usr/local/share/husk/vmlinux")
}

/// The agent initramfs husk boots: `$HUSK_INITRAMFS`, else the installed
/// one.
pub fn husk_initramfs() -> Result<PathBuf, String> {
    artifact("HUSK_INITRAMFS", "/usr/local/share/husk/initramfs.cpio")
}

/// How long [`wait_until`] and [`wait_for`] wait before looking again:
/// the first pause, doubled each time up to the last.
const POLL_FIRST: Duration = Duration::from_millis(10);
const POLL_MAX: Duration = Duration::from_millis(200);

/// Waits until `cond` holds, looking again after a pause that grows from
/// 10 ms to 200 ms (quick to see a quick change, light on a slow one); panics
/// naming `what` when it still does not after `deadline`. Use it where a
/// test waits for something to happen (a file to appear, a process to
/// exit, a socket to listen) rather than sleeping for a while.
#[track_caller]
pub fn wait_until(deadline: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(deadline, what, || cond().then_some(()))
}

/// Like [`wait_until`], for a condition that yields a value: the first
/// `Some` that `f` returns.
#[track_caller]
pub fn wait_for<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + deadline;
    let mut pause = POLL_FIRST;
    loop {
        if let Some(v) = f() {
            return v;
        }
        let now = Instant::now();
        if now >= end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause.min(end - now));
        pause = (pause * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        /// The lines [`skip()`] would have printed on this thread.
        pub(crate) static SKIPPED: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
    }

    fn skipped() -> Vec<String> {
        SKIPPED.with(|s| s.take())
    }

    fn skips_when(missing: Result<(), String>, ran: &mut bool) {
        require!(missing, "the probe");
        *ran = true;
    }

    #[test]
    fn require_skips_naming_the_test_and_returns_on_a_missing_requirement_only() {
        let mut ran = false;
        skips_when(Err("absent".into()), &mut ran);
        assert!(!ran);
        assert_eq!(
            skipped(),
            ["SKIP: tests::require_skips_naming_the_test_and_returns_on_a_missing_requirement_only: the probe: absent"]
        );
        skips_when(Ok(()), &mut ran);
        assert!(ran);
        assert!(skipped().is_empty());
    }

    #[test]
    fn skip_prints_one_line_and_returns() {
        fn body(ran: &mut bool) {
            if !*ran {
                skip!("no {} here", "qemu");
            }
            *ran = true;
        }
        let mut ran = false;
        body(&mut ran);
        assert!(!ran);
        assert_eq!(
            skipped(),
            ["SKIP: tests::skip_prints_one_line_and_returns: no qemu here"]
        );
    }

    #[test]
    fn off_a_test_thread_the_skip_names_the_caller() {
        std::thread::Builder::new()
            .name("main".into())
            .spawn(|| {
                skip("why");
                let line = skipped().pop().unwrap();
                assert!(
                    line.starts_with("SKIP: test-support/src/lib.rs:") && line.ends_with(": why"),
                    "{line}"
                );
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn require_hands_back_the_probe_value() {
        fn value(out: &mut Option<u32>) {
            *out = Some(require!(Ok::<u32, String>(7)));
        }
        let mut out = None;
        value(&mut out);
        assert_eq!(out, Some(7));
    }

    #[test]
    fn artifact_names_the_missing_file() {
        let e = artifact("HUSK_TEST_SUPPORT_UNSET_VAR", "/nonexistent/vmlinux").unwrap_err();
        assert_eq!(e, "no /nonexistent/vmlinux (run scripts/setup.sh)");
    }

    #[test]
    fn program_finds_sh_and_names_a_missing_one() {
        assert!(program("sh").unwrap().is_file());
        assert_eq!(
            program("husk-test-support-no-such-program").unwrap_err(),
            "husk-test-support-no-such-program is not installed"
        );
    }

    #[test]
    fn proc_is_not_cgroup2() {
        assert!(!is_cgroup2(Path::new("/proc")));
        assert!(!is_cgroup2(Path::new("/nonexistent")));
    }

    #[test]
    fn wait_until_returns_once_the_condition_holds() {
        let mut n = 0;
        wait_until(Duration::from_secs(10), "the third look", || {
            n += 1;
            n == 3
        });
        assert_eq!(n, 3);
    }

    #[test]
    #[should_panic(expected = "timed out after 0ns waiting for never")]
    fn wait_until_panics_naming_what_never_came() {
        wait_until(Duration::ZERO, "never", || false);
    }
}
