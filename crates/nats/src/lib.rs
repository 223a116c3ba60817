//! `shoal nats`: the NATS messaging patterns of the tutorial, on a real NATS server.
//!
//! This crate starts with the wire format: the tutorial's protobuf messages, generated from
//! `proto/transport.proto` with the tutorial's package (`Transport`) and field numbers, so Go
//! programs built from the tutorial and shoal read each other's messages.

/// The protobuf messages (package `Transport`).
pub mod transport {
    #![allow(missing_docs, unused_qualifications, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/transport.rs"));
}

pub use transport::{DiscoverableServiceTransport, Task, TextMessage, Time, User};

/// Task states as the tutorial numbers them.
pub mod task_state {
    /// Not handed out yet.
    pub const NOT_STARTED: i32 = 0;
    /// Handed to a worker.
    pub const IN_PROGRESS: i32 = 1;
    /// Done.
    pub const FINISHED: i32 = 2;
}
