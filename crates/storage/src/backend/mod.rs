//! Where objects live: one trait, two implementations (a local directory and S3).
//!
//! Both give the same guarantees: an upload becomes visible only once its whole body arrived
//! and is durable, so readers see the old object or the new one and never a part; an upload
//! that fails or is dropped half-way leaves nothing behind.

use std::fmt;
use std::io;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::BoxStream;

use crate::key::{ObjectKey, Stage};

pub mod local;
pub mod s3;

/// Why an upload did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PutError {
    /// The body grew past the object size limit.
    #[error("the object is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The client stopped sending before the body was complete.
    #[error("the upload was cut off: {0}")]
    Incomplete(String),
    /// The client sent nothing for too long.
    #[error("no data for {}", humantime::format_duration(*.0))]
    Stalled(Duration),
    /// The backend failed.
    #[error(transparent)]
    Backend(#[from] anyhow::Error),
}

/// An upload body: chunks as they arrive. An `Err` ends the upload without storing anything.
pub type UploadStream = BoxStream<'static, Result<Bytes, PutError>>;

/// A download body.
pub type DownloadStream = BoxStream<'static, io::Result<Bytes>>;

/// What is known about a stored object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Size in bytes.
    pub size: u64,
    /// A strong entity tag (quoted) naming exactly these bytes.
    pub etag: String,
    /// When it was written.
    pub modified: SystemTime,
    /// Media type, detected from the first bytes.
    pub content_type: &'static str,
}

/// An object being read.
pub struct Object {
    /// Its metadata, for the response headers.
    pub info: ObjectInfo,
    /// Its bytes.
    pub body: DownloadStream,
}

impl fmt::Debug for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Object").field("info", &self.info).finish()
    }
}

/// A place objects are stored. Methods return boxed futures so one `Arc<dyn Backend>` serves
/// either implementation.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Stores the body under `key`, replacing any previous object only once the body is whole
    /// and durable.
    fn put(
        &self,
        key: ObjectKey,
        body: UploadStream,
    ) -> BoxFuture<'_, Result<ObjectInfo, PutError>>;

    /// Opens the object for reading; `None` when there is none.
    fn get(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<Object>>>;

    /// The object's metadata without its bytes; `None` when there is none.
    fn head(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<ObjectInfo>>>;

    /// Removes the object; `false` when there was none.
    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<bool>>;

    /// Removes every object of `stage` last written before `cutoff`; returns how many.
    fn remove_older_than(
        &self,
        stage: Stage,
        cutoff: SystemTime,
    ) -> BoxFuture<'_, anyhow::Result<u64>>;

    /// Whether the backend answers (for `/readyz`).
    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>>;
}

/// Quotes an entity tag unless it already is (S3 servers differ).
pub(crate) fn quoted(tag: &str) -> String {
    if tag.starts_with('"') || tag.starts_with("W/\"") {
        tag.to_owned()
    } else {
        format!("\"{tag}\"")
    }
}
