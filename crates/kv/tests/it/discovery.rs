//! The discovery client (shoal-core) against a live kv.

use std::time::Duration;

use shoal_core::client::{ClientOptions, HttpClient};
use shoal_core::discovery::{Discovery, DiscoveryOptions};
use tokio_util::sync::CancellationToken;

use crate::support::{Kv, Storage};

fn options(ttl_ms: u64, heartbeat_ms: u64, deadline_ms: u64) -> DiscoveryOptions {
    DiscoveryOptions {
        ttl: Duration::from_millis(ttl_ms),
        heartbeat: Duration::from_millis(heartbeat_ms),
        deadline: Duration::from_millis(deadline_ms),
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(200),
        watch_wait: Duration::from_secs(30),
    }
}

fn discovery_at(address: &str, opts: DiscoveryOptions) -> Discovery {
    let client = HttpClient::new(ClientOptions::default()).expect("client");
    Discovery::new(&[address], client, opts).expect("discovery")
}

fn discovery(kv: &Kv, opts: DiscoveryOptions) -> Discovery {
    discovery_at(&kv.server.base_url, opts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_keeps_a_registration_alive_and_stop_removes_it() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let d = discovery(&kv, options(400, 100, 5000));
    let registration = d
        .register(
            "databaseAddress",
            "127.0.0.1:3001",
            CancellationToken::new(),
        )
        .await
        .expect("register");
    // Three TTLs later it is still there, thanks to the heartbeat.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        kv.value("databaseAddress").await.as_deref(),
        Some(&b"127.0.0.1:3001"[..])
    );
    registration.stop().await;
    assert_eq!(
        kv.value("databaseAddress").await,
        None,
        "a graceful stop deregisters at once"
    );
    kv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_registrant_expires() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let base = kv.server.base_url.clone();
    // The registrant lives in a runtime of its own; dropping that runtime is a crash: its
    // tasks vanish without deregistering.
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(async {
            let d = discovery_at(&base, options(400, 100, 5000));
            let registration = d
                .register("storageAddress", "127.0.0.1:3002", CancellationToken::new())
                .await
                .expect("register");
            std::mem::forget(registration);
            tokio::time::sleep(Duration::from_millis(300)).await;
        });
        drop(rt);
    })
    .join()
    .expect("registrant thread");
    assert!(
        kv.value("storageAddress").await.is_some(),
        "still within its TTL"
    );
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        kv.value("storageAddress").await,
        None,
        "expired after the TTL"
    );
    kv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_does_not_remove_someone_elses_registration() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let d = discovery(&kv, options(5000, 2000, 5000));
    let registration = d
        .register("masterAddress", "127.0.0.1:1111", CancellationToken::new())
        .await
        .expect("register");
    // A new master takes over the key.
    kv.set("masterAddress", "127.0.0.1:2222").await;
    registration.stop().await;
    assert_eq!(
        kv.value("masterAddress").await.as_deref(),
        Some(&b"127.0.0.1:2222"[..])
    );
    kv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_waits_for_a_late_registrant_and_follows_the_set() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let d = discovery(&kv, options(5000, 1000, 10_000));
    let resolver = d.clone();
    let pending = tokio::spawn(async move { resolver.resolve("masterAddress").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!pending.is_finished());
    // A registrant that writes only the seed key (the tutorial's own programs) is found.
    kv.set("masterAddress", "127.0.0.1:3003").await;
    let resolved = pending.await.expect("join").expect("resolved");
    assert_eq!(resolved, "http://127.0.0.1:3003");
    // Instances registering take over from the seed key; the watch sees them at once, with no
    // invalidation by the caller (DEFECTS 5).
    kv.set("svc/masterAddress/127.0.0.1:4003", "127.0.0.1:4003")
        .await;
    let set = d.instances("masterAddress");
    wait_until(|| set.members() == ["http://127.0.0.1:4003"]).await;
    assert_eq!(
        d.resolve("masterAddress").await.expect("fresh"),
        "http://127.0.0.1:4003"
    );
    kv.stop().await;
}

/// Polls `check` every 10 ms for up to 5 s.
async fn wait_until(check: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(
            std::time::Instant::now() < deadline,
            "condition not met in 5 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_is_seen_and_the_seed_key_moves_to_a_live_one() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let a = discovery(&kv, options(5000, 1000, 5000));
    let b = discovery(&kv, options(5000, 1000, 5000));
    let client = discovery(&kv, options(5000, 1000, 5000));
    let ra = a
        .register("masterAddress", "127.0.0.1:1111", CancellationToken::new())
        .await
        .expect("register a");
    let rb = b
        .register("masterAddress", "127.0.0.1:2222", CancellationToken::new())
        .await
        .expect("register b");
    let set = client.instances("masterAddress");
    wait_until(|| set.len() == 2).await;
    // Requests go round both.
    let mut picks: Vec<String> = (0..4).filter_map(|_| set.pick(&[])).collect();
    picks.sort();
    assert_eq!(
        picks,
        [
            "http://127.0.0.1:1111",
            "http://127.0.0.1:1111",
            "http://127.0.0.1:2222",
            "http://127.0.0.1:2222"
        ]
    );
    // The first registrant holds the seed key; when it stops, the other takes the key over
    // within moments (it watches the set), so the seed key always names a live instance.
    assert_eq!(
        kv.value("masterAddress").await.as_deref(),
        Some(&b"127.0.0.1:1111"[..])
    );
    ra.stop().await;
    wait_until(|| set.members() == ["http://127.0.0.1:2222"]).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        if kv.value("masterAddress").await.as_deref() == Some(&b"127.0.0.1:2222"[..]) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the seed key was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rb.stop().await;
    wait_until(|| set.is_empty()).await;
    assert_eq!(kv.value("masterAddress").await, None);
    kv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_kv_addresses_any_live_one_serves_and_a_lost_store_keeps_the_last_set() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let client = HttpClient::new(ClientOptions::default()).expect("client");
    let d = Discovery::new(
        &[dead.as_str(), kv.server.base_url.as_str()],
        client,
        options(5000, 1000, 5000),
    )
    .expect("discovery");
    let registration = d
        .register("storageAddress", "127.0.0.1:3002", CancellationToken::new())
        .await
        .expect("register through the live replica");
    let set = d.instances("storageAddress");
    wait_until(|| set.len() == 1).await;
    // Every k/v replica gone: the set keeps what it last saw.
    kv.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(set.members(), ["http://127.0.0.1:3002"]);
    assert_eq!(
        d.resolve("storageAddress").await.expect("last known"),
        "http://127.0.0.1:3002"
    );
    registration.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolve_gives_up_at_the_deadline_with_a_clear_error() {
    let storage = Storage::sqlite();
    let kv = storage.start(|_| {}).await;
    let d = discovery(&kv, options(5000, 1000, 300));
    let err = d
        .resolve("nobodyAddress")
        .await
        .expect_err("nobody registered");
    let text = format!("{err:#}");
    assert!(
        text.contains("nobodyAddress") && text.contains("no instance registered"),
        "{text}"
    );
    kv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_waits_for_the_kv_store_to_come_up() {
    // DEFECTS 1: a service that cannot reach the k/v store yet retries instead of crashing.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let address = format!("127.0.0.1:{port}");
    let d = discovery_at(&address, options(5000, 1000, 10_000));
    let registering = tokio::spawn(async move {
        d.register(
            "databaseAddress",
            "127.0.0.1:3001",
            CancellationToken::new(),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!registering.is_finished(), "still retrying");
    let storage = Storage::sqlite();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .expect("rebind");
    let config = storage.config();
    let server = tokio::spawn(shoal_kv::run(config, listener, std::future::pending()));
    let registration = registering
        .await
        .expect("join")
        .expect("registered once kv was up");
    registration.stop().await;
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_fails_after_the_deadline_naming_the_kv_store() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let address = format!("127.0.0.1:{port}");
    let d = discovery_at(&address, options(5000, 1000, 300));
    let err = d
        .register(
            "databaseAddress",
            "127.0.0.1:3001",
            CancellationToken::new(),
        )
        .await
        .expect_err("no kv store");
    assert!(format!("{err:#}").contains(&address), "{err:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_sends_the_token() {
    let storage = Storage::sqlite();
    let kv = storage
        .start(|c| c.common.token = Some(shoal_core::config::Token::new("t0ken")))
        .await;
    let without = discovery(&kv, options(5000, 1000, 200));
    assert!(
        without
            .register("a", "127.0.0.1:1", CancellationToken::new())
            .await
            .is_err()
    );
    let client = HttpClient::new(ClientOptions {
        token: Some(shoal_core::config::Token::new("t0ken")),
        ..ClientOptions::default()
    })
    .expect("client");
    let with =
        Discovery::new(&[&kv.server.base_url], client, options(5000, 1000, 2000)).expect("d");
    let registration = with
        .register("a", "127.0.0.1:1", CancellationToken::new())
        .await
        .expect("register with token");
    assert_eq!(
        with.resolve("a").await.expect("resolve"),
        "http://127.0.0.1:1"
    );
    registration.stop().await;
    kv.stop().await;
}
