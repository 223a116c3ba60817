//! Starting `shoal storage` on either backend, and looking at what it stored.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use futures::StreamExt as _;
use object_store::ObjectStore as _;
use object_store::aws::AmazonS3Builder;
use shoal_core::config::Secret;
use shoal_core::testkit::TestServer;
use shoal_core::testkit::s3::{self, S3Server};
use shoal_storage::Config;

/// The shared moto server: started once per test binary, stopped when the process exits.
fn moto() -> Option<&'static S3Server> {
    static SERVER: OnceLock<Option<S3Server>> = OnceLock::new();
    SERVER
        .get_or_init(|| S3Server::start().expect("moto_server (set CI=false to skip)"))
        .as_ref()
}

/// A backend to test against, with its own empty store.
pub struct Backend {
    dir: tempfile::TempDir,
    bucket: Option<(String, String)>,
}

impl Backend {
    /// A fresh local directory.
    pub fn local() -> Self {
        shoal_core::client::install_crypto_provider();
        Self {
            dir: tempfile::tempdir().expect("tempdir"),
            bucket: None,
        }
    }

    /// A fresh bucket on the shared moto server; `None` (skip) when moto is not installed
    /// outside CI.
    pub fn s3() -> Option<Self> {
        shoal_core::client::install_crypto_provider();
        let server = moto()?;
        let bucket = server.fresh_bucket().expect("bucket");
        Some(Self {
            dir: tempfile::tempdir().expect("tempdir"),
            bucket: Some((server.endpoint(), bucket)),
        })
    }

    /// The local backend's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A configuration with every default, pointing at this backend.
    pub fn config(&self) -> Config {
        let mut config = Config::with_data_dir(self.dir.path());
        if let Some((endpoint, bucket)) = &self.bucket {
            config.s3_bucket = Some(bucket.clone());
            config.s3_endpoint = Some(endpoint.clone());
            config.s3_region = Some(s3::REGION.into());
            config.s3_access_key_id = Some(s3::ACCESS_KEY_ID.into());
            config.s3_secret_access_key = Some(Secret::new(s3::SECRET_ACCESS_KEY));
        }
        config
    }

    /// Starts the service with the default configuration changed by `adjust`.
    pub async fn start(&self, adjust: impl FnOnce(&mut Config)) -> Storage {
        let mut config = self.config();
        adjust(&mut config);
        let server = TestServer::start(move |listener, shutdown| {
            shoal_storage::run(config, listener, shutdown)
        })
        .await
        .expect("start shoal storage");
        // Serving starts only after the backend is open (lock taken, leftovers swept).
        let client = reqwest::Client::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !client
            .get(server.url("/healthz"))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            assert!(!server.is_finished(), "shoal storage exited at start");
            assert!(
                std::time::Instant::now() < deadline,
                "shoal storage did not start"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        Storage {
            base: server.url(""),
            server: Some(server),
            client,
        }
    }

    /// Every name in the store, sorted — objects and anything else (temporary files,
    /// half-finished uploads), so tests can see that nothing was left behind.
    pub async fn names(&self) -> Vec<String> {
        let mut names = match &self.bucket {
            None => {
                let mut names = Vec::new();
                for stage in ["working", "finished"] {
                    let dir: PathBuf = self.dir.path().join(stage);
                    let Ok(entries) = std::fs::read_dir(&dir) else {
                        continue;
                    };
                    for entry in entries {
                        let entry = entry.expect("entry");
                        names.push(format!("{stage}/{}", entry.file_name().to_string_lossy()));
                    }
                }
                names
            }
            Some((endpoint, bucket)) => {
                let store = AmazonS3Builder::new()
                    .with_endpoint(endpoint)
                    .with_allow_http(true)
                    .with_bucket_name(bucket)
                    .with_region(s3::REGION)
                    .with_access_key_id(s3::ACCESS_KEY_ID)
                    .with_secret_access_key(s3::SECRET_ACCESS_KEY)
                    .build()
                    .expect("S3 client");
                let listed: Vec<_> = store.list(None).collect().await;
                listed
                    .into_iter()
                    .map(|m| m.expect("list").location.to_string())
                    .collect()
            }
        };
        names.sort();
        names
    }
}

/// A running service and a client for it.
pub struct Storage {
    /// Base URL, no trailing slash.
    pub base: String,
    server: Option<TestServer>,
    /// A plain client.
    pub client: reqwest::Client,
}

/// An answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: bytes::Bytes,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ascii header").to_owned())
    }
}

impl Storage {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.expect("body");
        Answer {
            status,
            headers,
            body,
        }
    }

    pub async fn put(&self, query: &str, body: impl Into<reqwest::Body>) -> Answer {
        self.send(
            self.client
                .post(self.url(&format!("/sendImage?{query}")))
                .body(body),
        )
        .await
    }

    pub async fn get(&self, query: &str) -> Answer {
        self.send(self.client.get(self.url(&format!("/getImage?{query}"))))
            .await
    }

    pub async fn head(&self, query: &str) -> Answer {
        self.send(self.client.head(self.url(&format!("/getImage?{query}"))))
            .await
    }

    pub async fn delete(&self, query: &str) -> Answer {
        self.send(
            self.client
                .delete(self.url(&format!("/deleteImage?{query}"))),
        )
        .await
    }

    /// Writes `request` as is on a new connection and returns what comes back until the
    /// server closes it (or 5 s pass).
    pub async fn raw(&self, request: &[u8]) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let address = self.base.trim_start_matches("http://");
        let mut socket = tokio::net::TcpStream::connect(address)
            .await
            .expect("connect");
        socket.write_all(request).await.expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            socket.read_to_end(&mut answer),
        )
        .await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    /// Stops the service (graceful shutdown) and waits for it.
    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("clean stop");
        }
    }
}

/// A small valid-looking PNG: the signature and an IHDR, then filler.
pub fn png(len: usize, fill: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    bytes.resize(len.max(bytes.len()), fill);
    bytes
}
