//! husk's in-guest agent: PID 1 of every microVM and the container engine
//! that turns an OCI spec into a confined process. See `README.md`.
//!
//! The agent is single-threaded on purpose: it forks container processes,
//! and forking a multi-threaded process is unsafe: only async-signal-safe
//! calls are allowed in the child, and another thread may hold a lock
//! (the allocator's) at the moment of the fork.

pub mod container;
pub mod init;
pub mod network;
pub mod server;
pub mod switch_root;
pub mod sys;
