//! The seed routes, bad input, and the guard at registration.

use std::time::Duration;

use reqwest::Method;

use crate::support::{Behaviour, Hub, Storage, Subscriber, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_usage() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |_| {}).await;
    let sub = Subscriber::start(Behaviour::Accept).await;
    hub.register(&sub.address()).await;
    let (status, list) = hub.call(Method::GET, "/listSubscribers").await;
    assert_eq!(status, 200);
    let line = list.lines().next().expect("one subscriber");
    let (address, time) = line.split_once(" : ").expect("address : time");
    assert_eq!(address, sub.address());
    assert!(humantime::parse_rfc3339(time).is_ok(), "{time}");
    let id = hub.send("hello subscribers").await;
    let events = sub.wait_for(1, Duration::from_secs(5)).await;
    assert_eq!(events[0].body, "hello subscribers");
    assert_eq!(events[0].id, id);
    assert!(events[0].headers.contains_key("webhook-timestamp"));
    assert_eq!(events[0].headers["content-length"], "17");
    // Keep-alive is a re-registration; listing as JSON works too.
    hub.register(&sub.address()).await;
    let (_, json) = hub.call(Method::GET, "/listSubscribers?format=json").await;
    let json: serde_json::Value = serde_json::from_str(&json).expect("json");
    assert_eq!(json[0]["address"], sub.address());
    assert!(json[0]["expires_at"].is_string());
    hub.deregister(&sub.address()).await;
    assert_eq!(hub.call(Method::GET, "/listSubscribers").await.1, "");
    hub.send("nobody hears this").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        sub.events().len(),
        1,
        "a deregistered subscriber gets nothing more"
    );
    // Deregistering an unknown address is fine.
    hub.deregister("127.0.0.1:9").await;
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_addresses_are_400_and_register_nothing() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |_| {}).await;
    for address in [
        "",
        "evil/x?",
        "user@host:1",
        "host:99999",
        "host:0",
        "host",
        "http://127.0.0.1:80",
        "127.0.0.1:80/path",
        "127.0.0.1:80?q=1",
        "127.0.0.1:80#frag",
        "::1:80",
        "ho st:80",
        "%2f:80",
    ] {
        let r = hub
            .client
            .post(hub.url("/registerAndKeepAlive"))
            .query(&[("address", address)])
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400, "{address:?}");
        assert!(
            r.text().await.expect("body").starts_with("Error: "),
            "{address:?}"
        );
    }
    assert_eq!(hub.call(Method::POST, "/registerAndKeepAlive").await.0, 400);
    assert_eq!(hub.call(Method::DELETE, "/deregister").await.0, 400);
    assert_eq!(
        hub.call(Method::DELETE, "/deregister?address=evil/x")
            .await
            .0,
        400
    );
    assert_eq!(hub.call(Method::GET, "/listSubscribers").await.1, "");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_are_405() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |_| {}).await;
    for (method, path, allowed) in [
        (
            Method::GET,
            "/registerAndKeepAlive?address=127.0.0.1:1",
            "POST",
        ),
        (Method::POST, "/deregister?address=127.0.0.1:1", "DELETE"),
        (Method::GET, "/sendMessage", "POST"),
        (Method::PUT, "/sendMessage", "POST"),
        (Method::POST, "/listSubscribers", "GET"),
        (Method::POST, "/deliveries", "GET"),
    ] {
        let (status, body) = hub.call(method.clone(), path).await;
        assert_eq!(status, 405, "{method} {path}");
        assert_eq!(body, format!("Error: Only {allowed} accepted."));
    }
    assert_eq!(
        hub.call(Method::GET, "/listSubscribers").await.1,
        "",
        "nothing registered"
    );
    assert_eq!(
        hub.call(Method::GET, "/listSubscribers?format=xml").await.0,
        400
    );
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_addresses_are_refused_at_registration() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |_| {}).await;
    hub.resolver.set("metadata.test", "169.254.169.254");
    hub.resolver.set("linklocal6.test", "fe80::1");
    for address in [
        "169.254.169.254:80",
        "metadata.test:80",
        "linklocal6.test:80",
        "[fe80::1]:80",
        "0.0.0.0:80",
        "224.0.0.1:80",
        "[::ffff:169.254.169.254]:80",
        "unknown-name.test:80",
    ] {
        let r = hub
            .client
            .post(hub.url("/registerAndKeepAlive"))
            .query(&[("address", address)])
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400, "{address}");
        let text = r.text().await.expect("body");
        assert!(
            text.starts_with("Error: address refused"),
            "{address}: {text}"
        );
    }
    assert_eq!(hub.call(Method::GET, "/listSubscribers").await.1, "");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_can_deny_loopback() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |c| {
        c.deny_cidr = vec!["127.0.0.0/8".parse().expect("cidr")];
    })
    .await;
    let (status, body) = hub
        .call(Method::POST, "/registerAndKeepAlive?address=127.0.0.1:8080")
        .await;
    assert_eq!(status, 400);
    assert!(body.contains("deny"), "{body}");
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_registration_and_sending() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |c| {
        c.common.token = Some(shoal_core::config::Token::new("hub-secret"));
    })
    .await;
    assert_eq!(
        hub.call(Method::POST, "/registerAndKeepAlive?address=127.0.0.1:1")
            .await
            .0,
        401
    );
    assert_eq!(hub.call(Method::POST, "/sendMessage").await.0, 401);
    assert_eq!(
        hub.call(Method::DELETE, "/deregister?address=127.0.0.1:1")
            .await
            .0,
        401
    );
    let r = hub
        .client
        .post(hub.url("/sendMessage"))
        .bearer_auth("hub-secret")
        .body("x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_messages_are_413_and_accept_nothing() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |c| c.max_message_size = 1024).await;
    let sub = Subscriber::start(Behaviour::Accept).await;
    hub.register(&sub.address()).await;
    let r = hub
        .client
        .post(hub.url("/sendMessage"))
        .body(vec![b'x'; 1025])
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 413);
    hub.send(vec![b'y'; 1024]).await;
    let events = sub.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.events().len(), 1);
    assert_eq!(events[0].body.len(), 1024);
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_expire_without_keepalive() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |c| c.expire = Duration::from_millis(600)).await;
    let quiet = Subscriber::start(Behaviour::Accept).await;
    let alive = Subscriber::start(Behaviour::Accept).await;
    hub.register(&quiet.address()).await;
    hub.register(&alive.address()).await;
    let started = std::time::Instant::now();
    let keepalive = async {
        for _ in 0..8 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            hub.register(&alive.address()).await;
        }
    };
    let watch = async {
        eventually(
            Duration::from_secs(3),
            "the quiet subscriber is removed",
            async || {
                !hub.call(Method::GET, "/listSubscribers")
                    .await
                    .1
                    .contains(&quiet.address())
            },
        )
        .await;
        started.elapsed()
    };
    let ((), removed_after) = tokio::join!(keepalive, watch);
    // Expiry 600 ms: removed within a second of expiring.
    assert!(
        removed_after < Duration::from_millis(1600),
        "{removed_after:?}"
    );
    assert!(
        removed_after >= Duration::from_millis(550),
        "{removed_after:?}"
    );
    let list = hub.call(Method::GET, "/listSubscribers").await.1;
    assert!(list.contains(&alive.address()), "kept alive: {list}");
    hub.send("after expiry").await;
    alive.wait_for(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(quiet.events().is_empty());
    hub.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotency_key_makes_a_retried_send_count_once() {
    let storage = Storage::sqlite();
    let hub = Hub::start(&storage, |_| {}).await;
    let sub = Subscriber::start(Behaviour::Accept).await;
    hub.register(&sub.address()).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let r = hub
            .client
            .post(hub.url("/sendMessage"))
            .header("Idempotency-Key", "order-42")
            .body("charge once")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        ids.push(r.headers()["webhook-id"].to_str().expect("id").to_owned());
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    hub.send("next").await;
    let events = sub.wait_for(2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sub.bodies(), ["charge once", "next"]);
    assert_eq!(events[0].id, ids[0]);
    let long_key = "k".repeat(300);
    let r = hub
        .client
        .post(hub.url("/sendMessage"))
        .header("Idempotency-Key", long_key)
        .body("x")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);
    hub.stop().await;
}
