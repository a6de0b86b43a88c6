//! The host side of husk. See the crate README.
