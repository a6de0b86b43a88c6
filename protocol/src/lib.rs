//! The one definition of what the host (runtime, shim, monitor) and the guest
//! agent say to each other.
//!
//! Two kinds of connection reach the agent's vsock port (default 1024):
//! - one **control** connection: a [`Hello`] frame naming it a control
//!   connection, then a sequence of [`RequestFrame`]s, each answered by one
//!   [`ResponseFrame`] with the same `id`;
//! - one connection **per stdio stream** of a process (stdin, stdout, stderr,
//!   or a pty): a [`Hello`] frame naming container, process and stream, one
//!   [`ResponseFrame`]-style acknowledgement, then raw bytes in one direction
//!   (both for a pty) until EOF.
//!
//! Every frame is a 4-byte big-endian length followed by that many bytes of
//! JSON ([`frame`]). Unknown fields, unknown request types and other protocol
//! versions are rejected with [`ErrorCode::InvalidArgument`] or
//! [`ErrorCode::UnsupportedVersion`], never ignored.

pub mod attach;
pub mod client;
pub mod frame;
mod messages;

#[cfg(test)]
mod fuzz;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;

pub use messages::*;

/// The protocol version spoken by this build. Both sides put it in every frame.
pub const PROTOCOL_VERSION: u32 = 1;

/// The vsock port the agent listens on unless `husk.agent_port=` is on the
/// guest kernel command line.
pub const DEFAULT_AGENT_PORT: u32 = 1024;

/// The kernel command-line key that overrides [`DEFAULT_AGENT_PORT`].
pub const AGENT_PORT_CMDLINE_KEY: &str = "husk.agent_port";

/// The annotation that lets a container's processes open AF_VSOCK sockets
/// (value `allow`). Without it the agent's seccomp rule answers
/// `socket(AF_VSOCK, ..)` with EAFNOSUPPORT. The host runtime passes it to
/// the guest only when the operator enabled it.
pub const GUEST_VSOCK_ANNOTATION: &str = "husk.guest_vsock";

/// Formats an error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// The largest pid Linux hands out (`PID_MAX_LIMIT` on 64-bit kernels);
/// a guest-reported pid above it, or below 1, is a lie.
pub const MAX_GUEST_PID: i32 = 4_194_304;

/// A pid the guest reported that no Linux process can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the guest reported pid {0}, outside 1..={MAX_GUEST_PID}")]
pub struct BadGuestPid(pub i64);

/// Checks a guest-reported pid before it reaches a caller (a containerd
/// task pid, `husk ps`); returns it as the unsigned pid callers use.
pub fn check_guest_pid(pid: i64) -> Result<u32, BadGuestPid> {
    match u32::try_from(pid) {
        Ok(p) if p >= 1 && i64::from(p) <= i64::from(MAX_GUEST_PID) => Ok(p),
        _ => Err(BadGuestPid(pid)),
    }
}

/// Makes a string the guest supplied safe to print on a terminal: every
/// control character (C0, DEL, C1, so ESC and CSI sequences too) becomes a
/// `\xNN` escape, and a backslash becomes `\\` so an escape cannot be
/// forged. Borrows when nothing needs escaping.
pub fn sanitize(s: &str) -> std::borrow::Cow<'_, str> {
    use std::fmt::Write;
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if c == '\\' {
            out.push_str("\\\\");
        } else if c.is_control() {
            // Every `Cc` character is below U+00A0, so two digits suffice.
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Where the agent mounts the virtio-fs share with tag `tag` inside the guest.
pub fn share_mount_point(tag: &str) -> String {
    format!("/run/husk/shares/{tag}")
}

/// runc 1.1's recursive mount options, which the agent applies with
/// `mount_setattr(AT_RECURSIVE)` to a mount and everything below it. The
/// runtime carries them over to the separate guest mounts it makes for a
/// bind source's host submounts, so they reach those too.
pub const RECURSIVE_MOUNT_OPTIONS: &[&str] = &[
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnodiratime",
    "rdiratime",
    "rnosymfollow",
    "rsymfollow",
    "rnoatime",
    "ratime",
    "rrelatime",
    "rnorelatime",
    "rstrictatime",
    "rnostrictatime",
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_escapes_terminal_control_sequences() {
        assert!(matches!(
            sanitize("sh -c sleep"),
            std::borrow::Cow::Borrowed(_)
        ));
        // A CSI that clears the screen, an OSC title change ended by BEL,
        // a C1 CSI, DEL, a newline and a carriage return.
        let hostile = "a\x1b[2J\x1b]0;pwned\x07b\u{9b}31m\x7f\r\nc";
        let clean = sanitize(hostile);
        assert_eq!(
            clean,
            "a\\x1b[2J\\x1b]0;pwned\\x07b\\x9b31m\\x7f\\x0d\\x0ac"
        );
        assert!(!clean.chars().any(char::is_control), "{clean:?}");
        // A literal backslash cannot pass for an escape.
        assert_eq!(sanitize("\\x1b"), "\\\\x1b");
        assert_eq!(sanitize("caf\u{e9} \u{1F600}"), "caf\u{e9} \u{1F600}");
    }

    #[test]
    fn guest_pids_outside_linux_range_are_refused() {
        assert_eq!(check_guest_pid(1), Ok(1));
        assert_eq!(check_guest_pid(4_194_304), Ok(4_194_304));
        for bad in [
            0,
            -1,
            4_194_305,
            i64::from(i32::MIN),
            i64::from(u32::MAX) + 1,
        ] {
            assert_eq!(check_guest_pid(bad), Err(BadGuestPid(bad)), "{bad}");
        }
    }
}
