//! husk's vhost-user virtio-vsock backend (`husk-vsockd`).
//!
//! | module | what |
//! |---|---|
//! | [`packet`] | the packet header; reading TX chains (a payload split over any number of descriptors) and writing RX chains, validating all of it |
//! | [`muxer`] | connections, the hybrid `CONNECT` convention, credit flow control, half-close |
//! | [`backend`] | the vhost-user device: queues, config, events |

pub mod backend;
pub mod muxer;
pub mod packet;
