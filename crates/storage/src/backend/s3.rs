//! The S3 backend: any S3-compatible service, through the `object_store` crate.
//!
//! Objects are keys `working/N` and `finished/N` in the bucket. An upload that fits in one
//! part is a single `PUT`, visible only once complete; a larger one is a multipart upload
//! whose parts stream out as the body arrives (one part in flight while the next fills, so
//! memory stays at two parts) and which is completed only after the whole body arrived.
//! An upload that fails or is dropped is aborted, so no object appears and the parts are
//! freed. The content type is detected from the first bytes at upload time and stored as the
//! object's `Content-Type`.

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, GetOptions, MultipartUpload, ObjectStore, ObjectStoreExt as _,
    PutMultipartOptions, PutOptions, PutPayload, UploadPart,
};

use shoal_core::config::Secret;

use super::{Backend, DownloadStream, Object, ObjectInfo, PutError, UploadStream, quoted};
use crate::key::{ObjectKey, Stage};
use crate::sniff::{SNIFF_LEN, content_type, known_content_type};

/// Size of one multipart part (S3 requires at least 5 MiB for all but the last).
const PART_SIZE: usize = 8 << 20;

/// Where the S3 backend stores, from the command line.
#[derive(Clone, Debug)]
pub struct S3Options {
    /// The bucket, which must exist.
    pub bucket: String,
    /// An S3-compatible endpoint (`http://127.0.0.1:9000`); AWS when unset.
    pub endpoint: Option<String>,
    /// The region; otherwise `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// The access key id, overriding `AWS_ACCESS_KEY_ID`.
    pub access_key_id: Option<String>,
    /// The secret access key, overriding `AWS_SECRET_ACCESS_KEY`.
    pub secret_access_key: Option<Secret>,
}

/// Objects in an S3 bucket.
#[derive(Debug)]
pub struct S3Backend {
    store: Arc<AmazonS3>,
    bucket: String,
}

impl S3Backend {
    /// Connects to the bucket. Settings not given in `options` come from the standard AWS
    /// environment variables (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_SESSION_TOKEN`, `AWS_REGION`, …).
    pub fn new(options: &S3Options) -> anyhow::Result<Self> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&options.bucket);
        if let Some(endpoint) = &options.endpoint {
            builder = builder
                .with_endpoint(endpoint)
                .with_allow_http(endpoint.starts_with("http://"))
                // S3-compatible servers on an address (not a DNS name) need path-style URLs.
                .with_virtual_hosted_style_request(false);
        }
        if let Some(region) = &options.region {
            builder = builder.with_region(region);
        }
        if let Some(id) = &options.access_key_id {
            builder = builder.with_access_key_id(id);
        }
        if let Some(secret) = &options.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose());
        }
        let store = builder
            .build()
            .with_context(|| format!("S3 bucket {}", options.bucket))?;
        Ok(Self {
            store: Arc::new(store),
            bucket: options.bucket.clone(),
        })
    }
}

/// What a failed S3 call means for the operator, from the error S3 sent (its codes are in
/// the error's text: object_store passes S3's answer on as it came).
fn s3_failure(bucket: &str, err: &object_store::Error) -> String {
    let text = err.to_string();
    if is_not_found(err) || text.contains("NoSuchBucket") {
        format!("S3 bucket {bucket} does not exist (or these credentials cannot see it)")
    } else if [
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "AccessDenied",
        "403 Forbidden",
    ]
    .iter()
    .any(|code| text.contains(code))
    {
        format!("S3 bucket {bucket}: the credentials were refused")
    } else {
        format!("S3 bucket {bucket} cannot be reached")
    }
}

fn location(key: ObjectKey) -> Path {
    Path::from(key.name())
}

fn is_not_found(err: &object_store::Error) -> bool {
    matches!(err, object_store::Error::NotFound { .. })
}

fn attributes(content_type: &'static str) -> Attributes {
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::ContentType, content_type.into());
    attributes
}

fn info_of(meta: &object_store::ObjectMeta, attributes: &Attributes) -> ObjectInfo {
    ObjectInfo {
        size: meta.size,
        etag: quoted(meta.e_tag.as_deref().unwrap_or("")),
        modified: SystemTime::from(meta.last_modified),
        content_type: attributes
            .get(&Attribute::ContentType)
            .map_or("application/octet-stream", |v| known_content_type(v)),
    }
}

/// A multipart upload that is aborted unless it was completed.
struct Multipart {
    upload: Option<Box<dyn MultipartUpload>>,
    in_flight: Option<UploadPart>,
}

impl Multipart {
    async fn push(&mut self, part: PutPayload) -> object_store::Result<()> {
        if let Some(previous) = self.in_flight.take() {
            previous.await?;
        }
        if let Some(upload) = self.upload.as_mut() {
            self.in_flight = Some(upload.put_part(part));
        }
        Ok(())
    }

    async fn complete(mut self) -> object_store::Result<object_store::PutResult> {
        if let Some(previous) = self.in_flight.take() {
            previous.await?;
        }
        let mut upload = self
            .upload
            .take()
            .ok_or_else(|| object_store::Error::Generic {
                store: "S3",
                source: "multipart upload already finished".into(),
            })?;
        match upload.complete().await {
            Ok(done) => Ok(done),
            Err(e) => {
                self.upload = Some(upload); // aborted on drop
                Err(e)
            }
        }
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(mut upload) = self.upload.take() {
            // Parts of an abandoned upload cost storage until aborted; nothing waits for this.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move {
                    if let Err(e) = upload.abort().await {
                        tracing::warn!(error = %e, "could not abort a multipart upload");
                    }
                });
            }
        }
    }
}

impl Backend for S3Backend {
    fn put(
        &self,
        key: ObjectKey,
        mut body: UploadStream,
    ) -> BoxFuture<'_, Result<ObjectInfo, PutError>> {
        Box::pin(async move {
            let path = location(key);
            let mut head = Vec::with_capacity(SNIFF_LEN);
            let mut pending: Vec<Bytes> = Vec::new();
            let mut buffered = 0usize;
            let mut size = 0u64;
            let mut multipart: Option<Multipart> = None;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if head.len() < SNIFF_LEN {
                    let take = (SNIFF_LEN - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                size += chunk.len() as u64;
                buffered += chunk.len();
                pending.push(chunk);
                if buffered >= PART_SIZE {
                    let part: PutPayload = std::mem::take(&mut pending).into_iter().collect();
                    buffered = 0;
                    if multipart.is_none() {
                        let options = PutMultipartOptions {
                            attributes: attributes(content_type(&head)),
                            ..PutMultipartOptions::default()
                        };
                        let upload = self
                            .store
                            .put_multipart_opts(&path, options)
                            .await
                            .with_context(|| format!("starting the upload of {path}"))?;
                        multipart = Some(Multipart {
                            upload: Some(upload),
                            in_flight: None,
                        });
                    }
                    if let Some(multipart) = multipart.as_mut() {
                        multipart
                            .push(part)
                            .await
                            .with_context(|| format!("uploading a part of {path}"))?;
                    }
                }
            }
            let kind = content_type(&head);
            let rest: PutPayload = pending.into_iter().collect();
            let result = match multipart {
                None => {
                    let options = PutOptions {
                        attributes: attributes(kind),
                        ..PutOptions::default()
                    };
                    self.store
                        .put_opts(&path, rest, options)
                        .await
                        .with_context(|| format!("storing {path}"))?
                }
                Some(mut multipart) => {
                    if rest.content_length() > 0 {
                        multipart
                            .push(rest)
                            .await
                            .with_context(|| format!("uploading a part of {path}"))?;
                    }
                    multipart
                        .complete()
                        .await
                        .with_context(|| format!("completing the upload of {path}"))?
                }
            };
            Ok(ObjectInfo {
                size,
                etag: quoted(result.e_tag.as_deref().unwrap_or("")),
                modified: SystemTime::now(),
                content_type: kind,
            })
        })
    }

    fn get(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<Object>>> {
        Box::pin(async move {
            let path = location(key);
            let result = match self.store.get_opts(&path, GetOptions::default()).await {
                Ok(result) => result,
                Err(e) if is_not_found(&e) => return Ok(None),
                Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {path}"))),
            };
            let info = info_of(&result.meta, &result.attributes);
            let body: DownloadStream = result.into_stream().map_err(std::io::Error::other).boxed();
            Ok(Some(Object { info, body }))
        })
    }

    fn head(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<ObjectInfo>>> {
        Box::pin(async move {
            let path = location(key);
            let options = GetOptions {
                head: true,
                ..GetOptions::default()
            };
            match self.store.get_opts(&path, options).await {
                Ok(result) => Ok(Some(info_of(&result.meta, &result.attributes))),
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(anyhow::Error::from(e).context(format!("reading {path}"))),
            }
        })
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<bool>> {
        Box::pin(async move {
            let path = location(key);
            // S3 deletes succeed whether or not the key exists; ask first so a missing
            // object is a 404 as on the local backend.
            match self.store.head(&path).await {
                Ok(_) => {}
                Err(e) if is_not_found(&e) => return Ok(false),
                Err(e) => return Err(anyhow::Error::from(e).context(format!("reading {path}"))),
            }
            self.store
                .delete(&path)
                .await
                .with_context(|| format!("deleting {path}"))?;
            Ok(true)
        })
    }

    fn remove_older_than(
        &self,
        stage: Stage,
        cutoff: SystemTime,
    ) -> BoxFuture<'_, anyhow::Result<u64>> {
        Box::pin(async move {
            let prefix = Path::from(stage.as_str());
            let mut listing = self.store.list(Some(&prefix));
            let mut removed = 0;
            while let Some(meta) = listing.next().await {
                let meta = meta.with_context(|| format!("listing {prefix}"))?;
                if SystemTime::from(meta.last_modified) >= cutoff {
                    continue;
                }
                match self.store.delete(&meta.location).await {
                    Ok(()) => removed += 1,
                    Err(e) if is_not_found(&e) => {}
                    Err(e) => {
                        return Err(
                            anyhow::Error::from(e).context(format!("deleting {}", meta.location))
                        );
                    }
                }
            }
            Ok(removed)
        })
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        Box::pin(async move {
            // A listing, not a HEAD of a key: S3 answers a HEAD of a key in a missing bucket
            // with a bare 404, which reads as "no such key" and hid a missing bucket. A listing
            // of a prefix that matches nothing is one short request that fails only when the
            // bucket is missing or the credentials are refused.
            let probe = Path::from(".shoal-readiness");
            match self.store.list(Some(&probe)).next().await {
                None | Some(Ok(_)) => Ok(()),
                Some(Err(e)) => Err(anyhow::anyhow!("{}: {e}", s3_failure(&self.bucket, &e))),
            }
        })
    }
}
