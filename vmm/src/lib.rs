//! The per-container monitor. See the crate README.
