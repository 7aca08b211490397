//! The Confine API between a pod and its node: `protocol.rs` is what is said on the daemon's
//! unix socket (framing, requests, replies; documented there) and `client.rs` the side that asks.
//! A module of its own: the daemon serves it, and in the pod `leash confine` and its proxy speak
//! it; neither owns it.

pub mod client;
pub mod protocol;
