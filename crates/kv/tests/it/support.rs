//! Starting kv servers on either backend for a test.

use std::sync::OnceLock;

use shoal_core::testkit::TestServer;
use shoal_core::testkit::postgres::PgServer;
use shoal_kv::Config;

/// Where a test's kv keeps its data; outlives restarts of the server within one test.
pub enum Storage {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

static PG: OnceLock<Option<PgServer>> = OnceLock::new();

/// The process-wide PostgreSQL server (started on first use), or `None` when it is not
/// installed outside CI. Panics under CI when it cannot start.
pub fn pg() -> Option<&'static PgServer> {
    PG.get_or_init(|| match PgServer::start() {
        Ok(server) => server,
        Err(err) => panic!("cannot start PostgreSQL for tests: {err:#}"),
    })
    .as_ref()
}

impl Storage {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    pub fn postgres() -> Option<Self> {
        let server = pg()?;
        Some(Self::Postgres(
            server.fresh_database().expect("fresh database"),
        ))
    }

    pub fn config(&self) -> Config {
        match self {
            Self::Sqlite(dir) => Config::with_data_dir(dir.path()),
            Self::Postgres(url) => {
                let mut config = Config::with_data_dir("/nonexistent-unused");
                config.database.database_url = Some(shoal_core::config::Secret::new(url.clone()));
                config
            }
        }
    }

    /// Starts a kv on this storage with the configuration adjusted by `tweak`.
    pub async fn start(&self, tweak: impl FnOnce(&mut Config)) -> Kv {
        let mut config = self.config();
        tweak(&mut config);
        let server =
            TestServer::start(move |listener, shutdown| shoal_kv::run(config, listener, shutdown))
                .await
                .expect("start kv");
        let kv = Kv {
            client: reqwest::Client::new(),
            server,
        };
        kv.wait_ready().await;
        kv
    }
}

/// A running kv and a client for it.
pub struct Kv {
    pub client: reqwest::Client,
    pub server: TestServer,
}

impl Kv {
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    async fn wait_ready(&self) {
        for _ in 0..200 {
            if let Ok(r) = self.client.get(self.url("/healthz")).send().await
                && r.status().is_success()
            {
                return;
            }
            assert!(!self.server.is_finished(), "kv exited during start-up");
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
        panic!("kv did not come up");
    }

    pub async fn get(&self, path: &str) -> Reply {
        Reply::from(self.client.get(self.url(path)).send().await.expect("GET")).await
    }

    pub async fn post(&self, path: &str) -> Reply {
        Reply::from(self.client.post(self.url(path)).send().await.expect("POST")).await
    }

    pub async fn post_body(&self, path: &str, body: impl Into<reqwest::Body>) -> Reply {
        Reply::from(
            self.client
                .post(self.url(path))
                .body(body)
                .send()
                .await
                .expect("POST"),
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> Reply {
        Reply::from(
            self.client
                .delete(self.url(path))
                .send()
                .await
                .expect("DELETE"),
        )
        .await
    }

    pub async fn set(&self, key: &str, value: &str) -> u64 {
        let r = self
            .client
            .post(self.url("/set"))
            .query(&[("key", key), ("value", value)])
            .send()
            .await
            .expect("set");
        let r = Reply::from(r).await;
        assert_eq!(r.status, 200, "set {key}: {}", r.text());
        r.revision().expect("X-Revision on set")
    }

    pub async fn value(&self, key: &str) -> Option<Vec<u8>> {
        let r = self
            .client
            .get(self.url("/get"))
            .query(&[("key", key)])
            .send()
            .await
            .expect("get");
        let r = Reply::from(r).await;
        match r.status {
            200 => Some(r.body),
            404 => None,
            s => panic!("get {key}: {s} {}", r.text()),
        }
    }

    pub async fn list(&self) -> String {
        let r = self.get("/list").await;
        assert_eq!(r.status, 200);
        r.text()
    }

    pub async fn stop(self) {
        self.server.stop().await.expect("kv stopped cleanly");
    }
}

/// A response, read whole.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub async fn from(r: reqwest::Response) -> Self {
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("body").to_vec();
        Self {
            status,
            headers,
            body,
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn revision(&self) -> Option<u64> {
        self.headers
            .get("x-revision")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts a seed-style error: the status and an `Error: …` text body.
    #[track_caller]
    pub fn assert_error(&self, status: u16) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert!(
            self.text().starts_with("Error: "),
            "body: {:?}",
            self.text()
        );
    }
}
