//! `shoal nats`: the NATS messaging patterns of the tutorial, on a real NATS server.
//!
//! - **Request/reply behind an HTTP frontend** ([`providers`], [`frontend`]): a user-name
//!   provider and a time teller in queue groups, and a web frontend that asks both at once
//!   and answers within its timeout whatever happens to them.
//! - **Master and workers** ([`fileserver`], [`master`], [`worker`], [`submit`]): word-count
//!   tasks handed out over request/reply, files moved over HTTP through a file server found
//!   by discovery over NATS, and an optional JetStream-backed master that survives restarts.
//! - **Events** ([`events`]): typed publish, request/reply and channel-bound subjects.
//!
//! Messages are the tutorial's protobuf messages ([`transport`]), generated from
//! `proto/transport.proto` with the tutorial's package (`Transport`) and field numbers, so Go
//! programs built from the tutorial and shoal read each other's messages.

pub mod connection;
pub mod events;
pub mod fileserver;
pub mod frontend;
pub mod master;
pub mod providers;
pub mod submit;
pub mod worker;

/// The protobuf messages (package `Transport`).
pub mod transport {
    #![allow(missing_docs, unused_qualifications, clippy::all)]
    include!(concat!(env!("OUT_DIR"), "/transport.rs"));
}

pub use connection::{NatsArgs, connect};
pub use transport::{DiscoverableServiceTransport, Task, TextMessage, Time, User};

/// The request path after its leading slash, percent-decoded as raw bytes (the routes take
/// one segment): `None` when the result is not UTF-8. Done by hand rather than by axum's
/// `Path` extractor, whose rejection is not an `Error: …` answer.
pub(crate) fn path_segment(uri: &axum::http::Uri) -> Option<String> {
    let raw = uri.path().strip_prefix('/').unwrap_or(uri.path());
    String::from_utf8(percent_encoding::percent_decode_str(raw).collect()).ok()
}

/// Task states as the tutorial numbers them.
pub mod task_state {
    /// Not handed out yet.
    pub const NOT_STARTED: i32 = 0;
    /// Handed to a worker.
    pub const IN_PROGRESS: i32 = 1;
    /// Done.
    pub const FINISHED: i32 = 2;
}

/// The subjects and queue groups, as the tutorial names them.
pub mod subjects {
    /// Request: a `User` with its id; reply: the same `User` with the name filled in (empty
    /// when the id is unknown).
    pub const USER_NAME_BY_ID: &str = "UserNameById";
    /// Queue group of the user-name providers.
    pub const USER_PROVIDERS: &str = "userNameByIdProviders";
    /// Request: empty; reply: a `Time`.
    pub const TIME_TELLER: &str = "TimeTeller";
    /// Queue group of the time tellers.
    pub const TIME_TELLERS: &str = "TimeTellers";
    /// Request: empty; reply: a `DiscoverableServiceTransport` with the file server's URL.
    pub const DISCOVERY_FILE_SERVER: &str = "Discovery.FileServer";
    /// Request: empty; reply: the next `Task` to do, or an empty `Task` with the
    /// [`super::headers::NO_WORK`] header.
    pub const TASK_TO_DO: &str = "Work.TaskToDo";
    /// Published by a worker: the `Task` with its `finisheduuid` set.
    pub const TASK_FINISHED: &str = "Work.TaskFinished";
    /// Request: a `Task` with the `uuid` of an uploaded file; reply: the `Task` with its id
    /// (or the [`super::headers::ERROR`] header).
    pub const NEW_TASK: &str = "Work.NewTask";
    /// Request: empty; reply: the master's state as JSON.
    pub const STATUS: &str = "Work.Status";
    /// Events: plain publish.
    pub const TEXT_STANDARD: &str = "Messaging.Text.Standard";
    /// Events: request/reply.
    pub const TEXT_RESPOND: &str = "Messaging.Text.Respond";
    /// Events: a channel bound to a subject.
    pub const TEXT_CHANNEL: &str = "Messaging.Text.Channel";
}

/// NATS headers shoal adds to replies. Go programs from the tutorial ignore headers, so they
/// keep working; shoal programs read them.
pub mod headers {
    /// On an empty `Task` reply to `Work.TaskToDo`: there is nothing to do right now.
    pub const NO_WORK: &str = "Shoal-No-Work";
    /// On a reply that reports a refusal; the value says why.
    pub const ERROR: &str = "Shoal-Error";
}
