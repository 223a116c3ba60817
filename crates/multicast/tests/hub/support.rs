//! A hub under test, scripted subscribers, and an injectable resolver.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use futures::future::BoxFuture;
use shoal_core::testkit::TestServer;
use shoal_core::testkit::postgres::PgServer;
use shoal_multicast::Config;
use shoal_multicast::guard::Resolver;

/// A resolver whose answers tests can change (DNS rebinding).
#[derive(Default)]
pub struct TestResolver {
    names: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl TestResolver {
    pub fn set(&self, name: &str, ip: &str) {
        self.names
            .lock()
            .expect("lock")
            .insert(name.to_owned(), vec![ip.parse().expect("ip")]);
    }
}

impl Resolver for TestResolver {
    fn lookup(
        &self,
        host: &str,
        port: u16,
    ) -> BoxFuture<'static, std::io::Result<Vec<SocketAddr>>> {
        let found = self.names.lock().expect("lock").get(host).cloned();
        Box::pin(async move {
            found
                .map(|ips| {
                    ips.into_iter()
                        .map(|ip| SocketAddr::new(ip, port))
                        .collect()
                })
                .ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::NotFound, "unknown test name")
                })
        })
    }
}

pub enum Storage {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

static PG: OnceLock<Option<PgServer>> = OnceLock::new();

impl Storage {
    pub fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    pub fn postgres() -> Option<Self> {
        let server = PG
            .get_or_init(|| PgServer::start().expect("start PostgreSQL"))
            .as_ref()?;
        Some(Self::Postgres(server.fresh_database().expect("database")))
    }

    pub fn config(&self) -> Config {
        let mut config = match self {
            Self::Sqlite(dir) => Config::with_data_dir(dir.path()),
            Self::Postgres(url) => {
                let mut c = Config::with_data_dir("/nonexistent-unused");
                c.database.database_url = Some(shoal_core::config::Secret::new(url.clone()));
                c
            }
        };
        // Fast retries and timeouts so tests take milliseconds.
        config.retry_initial = Duration::from_millis(20);
        config.retry_max = Duration::from_millis(200);
        config.delivery_timeout = Duration::from_millis(800);
        config
    }
}

/// A running hub, its client, and what the tripwire caught.
pub struct Hub {
    pub server: TestServer,
    pub client: reqwest::Client,
    pub resolver: Arc<TestResolver>,
    pub tripped: Arc<Mutex<Vec<SocketAddr>>>,
}

impl Hub {
    pub async fn start(storage: &Storage, tweak: impl FnOnce(&mut Config)) -> Self {
        Self::start_with(storage, Arc::new(TestResolver::default()), tweak).await
    }

    pub async fn start_with(
        storage: &Storage,
        resolver: Arc<TestResolver>,
        tweak: impl FnOnce(&mut Config),
    ) -> Self {
        shoal_core::client::install_crypto_provider();
        let mut config = storage.config();
        tweak(&mut config);
        let tripped: Arc<Mutex<Vec<SocketAddr>>> = Arc::default();
        let seen = tripped.clone();
        // The last line of defence in tests: only loopback is ever contacted.
        let tripwire: Arc<dyn Fn(SocketAddr) -> bool + Send + Sync> =
            Arc::new(move |addr: SocketAddr| {
                if addr.ip().is_loopback() {
                    true
                } else {
                    seen.lock().expect("lock").push(addr);
                    false
                }
            });
        let r: Arc<dyn Resolver> = resolver.clone();
        let server = TestServer::start(move |listener, shutdown| {
            shoal_multicast::run_with_resolver(config, r, Some(tripwire), listener, shutdown)
        })
        .await
        .expect("start hub");
        let hub = Self {
            server,
            client: reqwest::Client::new(),
            resolver,
            tripped,
        };
        for _ in 0..200 {
            if let Ok(r) = hub.client.get(hub.url("/healthz")).send().await
                && r.status().is_success()
            {
                return hub;
            }
            assert!(!hub.server.is_finished(), "hub exited during start-up");
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("hub did not come up");
    }

    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }

    pub async fn call(&self, method: reqwest::Method, path: &str) -> (u16, String) {
        let r = self
            .client
            .request(method, self.url(path))
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    pub async fn register(&self, address: &str) {
        let r = self
            .client
            .post(self.url("/registerAndKeepAlive"))
            .query(&[("address", address)])
            .send()
            .await
            .expect("register");
        let status = r.status();
        assert_eq!(
            (status.as_u16(), r.text().await.expect("body")),
            (200, "success".to_owned())
        );
    }

    pub async fn deregister(&self, address: &str) {
        let r = self
            .client
            .delete(self.url("/deregister"))
            .query(&[("address", address)])
            .send()
            .await
            .expect("deregister");
        assert_eq!(r.status(), 200);
    }

    /// Sends a message and returns its webhook id.
    pub async fn send(&self, body: impl Into<reqwest::Body>) -> String {
        let r = self
            .client
            .post(self.url("/sendMessage"))
            .body(body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let id = r.headers()["webhook-id"].to_str().expect("id").to_owned();
        assert_eq!(r.text().await.expect("body"), "success");
        id
    }

    pub async fn deliveries(&self, address: &str) -> serde_json::Value {
        let r = self
            .client
            .get(self.url("/deliveries"))
            .query(&[("address", address)])
            .send()
            .await
            .expect("deliveries");
        serde_json::from_str(&r.text().await.expect("body")).expect("json")
    }

    pub async fn stop(self) {
        assert!(
            self.tripped.lock().expect("lock").is_empty(),
            "the tripwire was hit"
        );
        self.server.stop().await.expect("hub stopped cleanly");
    }
}

/// How a subscriber answers.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Accept,
    /// Answer this status this many times, then accept.
    FailTimes(u16, u32),
    /// Always answer this status.
    Always(u16),
    /// Never answer.
    Hang,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub id: String,
    pub body: Bytes,
    pub headers: HeaderMap,
}

#[derive(Default)]
struct SubState {
    close_connections: bool,
    behaviour: Mutex<Option<Behaviour>>,
    accepted: Mutex<Vec<Event>>,
    attempts: Mutex<u32>,
}

/// A subscriber on loopback that records what it accepted.
pub struct Subscriber {
    pub server: TestServer,
    state: Arc<SubState>,
}

async fn on_event(
    State(state): State<Arc<SubState>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(axum::http::HeaderName, &'static str); 1]) {
    *state.attempts.lock().expect("lock") += 1;
    let behaviour = state
        .behaviour
        .lock()
        .expect("lock")
        .clone()
        .unwrap_or(Behaviour::Accept);
    let status = match behaviour {
        Behaviour::Accept => 200,
        Behaviour::Always(s) => s,
        Behaviour::FailTimes(s, n) => {
            let mut b = state.behaviour.lock().expect("lock");
            *b = Some(if n <= 1 {
                Behaviour::Accept
            } else {
                Behaviour::FailTimes(s, n - 1)
            });
            s
        }
        Behaviour::Hang => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            200
        }
    };
    if status == 200 {
        let id = headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        state
            .accepted
            .lock()
            .expect("lock")
            .push(Event { id, body, headers });
    }
    let connection = if state.close_connections {
        "close"
    } else {
        "keep-alive"
    };
    (
        StatusCode::from_u16(status).expect("status"),
        [(axum::http::header::CONNECTION, connection)],
    )
}

impl Subscriber {
    pub async fn start(behaviour: Behaviour) -> Self {
        Self::start_with(behaviour, false).await
    }

    /// With `close_connections`, every answer closes its connection, so each delivery
    /// connects (and resolves the name) anew.
    pub async fn start_with(behaviour: Behaviour, close_connections: bool) -> Self {
        let state = Arc::new(SubState {
            close_connections,
            ..SubState::default()
        });
        *state.behaviour.lock().expect("lock") = Some(behaviour);
        let app = Router::new()
            .route("/event", axum::routing::post(on_event))
            .with_state(state.clone());
        let server = TestServer::start(move |listener, shutdown| async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(anyhow::Error::from)
        })
        .await
        .expect("subscriber");
        Self { server, state }
    }

    pub fn address(&self) -> String {
        self.server.addr.to_string()
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().expect("lock") = Some(behaviour);
    }

    pub fn events(&self) -> Vec<Event> {
        self.state.accepted.lock().expect("lock").clone()
    }

    pub fn bodies(&self) -> Vec<String> {
        self.events()
            .iter()
            .map(|e| String::from_utf8_lossy(&e.body).into_owned())
            .collect()
    }

    pub fn attempts(&self) -> u32 {
        *self.state.attempts.lock().expect("lock")
    }

    /// Waits until `n` events were accepted.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Event> {
        let started = Instant::now();
        loop {
            let events = self.events();
            if events.len() >= n {
                return events;
            }
            assert!(
                started.elapsed() < within,
                "{} got {} of {n} events in {within:?}",
                self.address(),
                events.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// Polls `check` until it holds or `within` passes.
pub async fn eventually(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
