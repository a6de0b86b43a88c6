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

pub mod client;
pub mod frame;
mod messages;

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

/// Where the agent mounts the virtio-fs share with tag `tag` inside the guest.
pub fn share_mount_point(tag: &str) -> String {
    format!("/run/husk/shares/{tag}")
}
