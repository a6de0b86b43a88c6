//! Capabilities and no_new_privs of husk-vmm's threads once setup is done.
//!
//! Linux keeps capabilities per thread, so each thread drops its own: the
//! main thread after the last child was spawned (keeping CAP_KILL, only in
//! its permitted set, to stop qemu, which runs as another uid), every other
//! thread all of them when it starts. The bounding set is emptied too, so
//! not even an exec as uid 0 could bring them back (and seccomp forbids
//! exec anyway).

use caps::{CapSet, Capability, CapsHashSet};

/// A privilege could not be dropped.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// A capability set could not be read or changed.
    #[error("cannot drop capabilities ({what})")]
    Caps {
        /// Which set.
        what: &'static str,
        /// Why.
        #[source]
        source: caps::errors::CapsError,
    },
    /// `PR_SET_NO_NEW_PRIVS` failed.
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] std::io::Error),
}

fn caps_err(what: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { what, source }
}

/// Drops every capability of the calling thread but `keep` (left in the
/// permitted set only, out of the effective and bounding ones: raising a
/// permitted capability needs no bounding entry) and sets no_new_privs.
pub fn drop_thread_privileges(keep: &[Capability]) -> Result<(), PrivilegeError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // The bounding set first, while CAP_SETPCAP is still effective (a
    // thread started later inherits an empty one and has nothing to drop;
    // a monitor not run as root has nothing to bound). A capability
    // unknown to this kernel reads as an error: not there.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP).unwrap_or(false) {
        for c in caps::all() {
            if caps::has_cap(None, CapSet::Bounding, c).unwrap_or(false) {
                caps::drop(None, CapSet::Bounding, c).map_err(caps_err("bounding"))?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("ambient"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("inheritable"))?;
    caps::clear(None, CapSet::Effective).map_err(caps_err("effective"))?;
    let permitted = caps::read(None, CapSet::Permitted).map_err(caps_err("permitted"))?;
    let kept: CapsHashSet = permitted.intersection(&keep).copied().collect();
    if kept != permitted {
        caps::set(None, CapSet::Permitted, &kept).map_err(caps_err("permitted"))?;
    }
    set_no_new_privs()
}

/// Sets no_new_privs on the calling thread (inherited by later threads
/// and children).
pub fn set_no_new_privs() -> Result<(), PrivilegeError> {
    // SAFETY: prctl with integer arguments only changes this thread's flag.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(PrivilegeError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Runs `f` with CAP_KILL effective when the thread has it permitted (the
/// confined main thread stopping qemu), else just runs it. The capability
/// is effective only for `f`.
pub fn with_kill_capability<T>(f: impl FnOnce() -> T) -> T {
    let raised = caps::has_cap(None, CapSet::Permitted, Capability::CAP_KILL).unwrap_or(false)
        && !caps::has_cap(None, CapSet::Effective, Capability::CAP_KILL).unwrap_or(true)
        && caps::raise(None, CapSet::Effective, Capability::CAP_KILL).is_ok();
    let r = f();
    if raised {
        if let Err(e) = caps::drop(None, CapSet::Effective, Capability::CAP_KILL) {
            tracing::warn!("cannot lower CAP_KILL again: {e}");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs in its own thread: capabilities are per thread, so the test
    /// harness's other threads keep theirs.
    #[test]
    fn drops_all_but_kept_in_this_thread_only() {
        if !nix::unistd::Uid::effective().is_root() {
            husk_test_support::skip("needs root (capabilities to drop)");
            return;
        }
        std::thread::spawn(|| {
            drop_thread_privileges(&[Capability::CAP_KILL]).unwrap();
            let eff = caps::read(None, CapSet::Effective).unwrap();
            assert!(eff.is_empty(), "{eff:?}");
            let prm = caps::read(None, CapSet::Permitted).unwrap();
            assert_eq!(prm, CapsHashSet::from([Capability::CAP_KILL]));
            let bnd = caps::read(None, CapSet::Bounding).unwrap();
            assert!(bnd.is_empty(), "{bnd:?}");
            // The bracket raises it for the call only.
            let inside = with_kill_capability(|| {
                caps::has_cap(None, CapSet::Effective, Capability::CAP_KILL).unwrap()
            });
            assert!(inside);
            assert!(caps::read(None, CapSet::Effective).unwrap().is_empty());
            let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
            assert!(status.contains("NoNewPrivs:\t1"), "{status}");
            // A thread started now inherits the reduced sets.
            std::thread::spawn(|| {
                drop_thread_privileges(&[]).unwrap();
                assert!(caps::read(None, CapSet::Permitted).unwrap().is_empty());
                assert!(!with_kill_capability(|| {
                    caps::has_cap(None, CapSet::Effective, Capability::CAP_KILL).unwrap()
                }));
            })
            .join()
            .unwrap();
        })
        .join()
        .unwrap();
        // This thread kept its capabilities.
        assert!(!caps::read(None, CapSet::Effective).unwrap().is_empty());
    }
}
