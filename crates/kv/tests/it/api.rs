//! The API suite. Every case runs twice: on SQLite and on PostgreSQL.

use std::time::{Duration, Instant};

use crate::support::{Kv, Storage};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&crate::support::Storage::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(storage) = crate::support::Storage::postgres() else { return };
                    super::$case(&storage).await;
                }
            )*
        }
    };
}

suite!(
    seed_usage,
    bad_input_is_400_and_changes_nothing,
    wrong_method_is_405,
    size_limits_are_413,
    unicode_and_encoded_keys_and_values,
    arbitrary_bytes_in_the_body,
    list_is_sorted_with_prefix_and_json,
    revisions_are_store_wide_and_survive_restart,
    compare_and_set,
    ttl_expires_keys,
    long_poll_watch,
    prefix_watch,
    restart_keeps_everything,
    concurrent_writes_are_all_acknowledged_and_kept,
    health_metrics_and_request_ids,
    token_guards_every_route_but_healthz,
);

/// The seed's own usage, with its exact bodies.
async fn seed_usage(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let r = kv
        .post("/set?key=databaseAddress&value=localhost:3001")
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    let r = kv.get("/get?key=databaseAddress").await;
    assert_eq!((r.status, r.text().as_str()), (200, "localhost:3001"));
    kv.post("/set?key=storageAddress&value=localhost:3002")
        .await;
    assert_eq!(
        kv.list().await,
        "databaseAddress : localhost:3001\nstorageAddress : localhost:3002\n"
    );
    let r = kv.delete("/remove?key=databaseAddress").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    // DEFECTS 7: a missing key is a 404, not an empty 200.
    kv.get("/get?key=databaseAddress").await.assert_error(404);
    // Removing an absent key is also success.
    let r = kv.delete("/remove?key=databaseAddress").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    kv.stop().await;
}

async fn bad_input_is_400_and_changes_nothing(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let before_rev = kv.set("keep", "me").await;
    for path in [
        "/get",
        "/get?key=",
        "/get?key=%zz",
        "/get?key=%FF",
        "/get?key=a&wait=soon",
        "/get?key=a&wait=1s&after=-1",
    ] {
        kv.get(path).await.assert_error(400);
    }
    for path in [
        "/set",
        "/set?key=",
        "/set?value=v",
        "/set?key=k",
        "/set?key=k&value=",
        "/set?key=%zz&value=v",
        "/set?key=k&value=v&ttl=abc",
        "/set?key=k&value=v&ttl=0",
        "/set?key=k&value=v&ttl=-1s",
        "/set?key=k&value=v&ttl=99999y",
        "/set?key=k&value=v&if_revision=x",
    ] {
        kv.post(path).await.assert_error(400);
    }
    kv.post_body("/set?key=k", "").await.assert_error(400);
    for path in ["/remove", "/remove?key=", "/remove?key=keep&if_revision=-3"] {
        kv.delete(path).await.assert_error(400);
    }
    kv.get("/list?format=xml").await.assert_error(400);
    assert_eq!(kv.list().await, "keep : me\n");
    assert_eq!(kv.get("/get?key=keep").await.revision(), Some(before_rev));
    let r = kv.get("/list").await;
    assert_eq!(r.revision(), Some(before_rev), "no write took a revision");
    kv.stop().await;
}

async fn wrong_method_is_405(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let cases = [
        (reqwest::Method::POST, "/get?key=a", "GET"),
        (reqwest::Method::DELETE, "/get?key=a", "GET"),
        (reqwest::Method::GET, "/set?key=a&value=b", "POST"),
        (reqwest::Method::PUT, "/set?key=a&value=b", "POST"),
        (reqwest::Method::GET, "/remove?key=a", "DELETE"),
        (reqwest::Method::POST, "/list", "GET"),
    ];
    for (method, path, allowed) in cases {
        let r = crate::support::Reply::from(
            kv.client
                .request(method.clone(), kv.url(path))
                .send()
                .await
                .expect("send"),
        )
        .await;
        r.assert_error(405);
        assert_eq!(
            r.text(),
            format!("Error: Only {allowed} accepted."),
            "{method} {path}"
        );
        assert_eq!(r.header("allow"), Some(allowed));
    }
    assert_eq!(kv.list().await, "", "a wrong-method set wrote nothing");
    kv.get("/no/such/route").await.assert_error(404);
    kv.stop().await;
}

async fn size_limits_are_413(storage: &Storage) {
    let kv = storage
        .start(|c| {
            c.max_key_size = 16;
            c.max_value_size = 64;
            c.max_keys = 3;
        })
        .await;
    let long_key = "k".repeat(17);
    let long_value = "v".repeat(65);
    kv.post(&format!("/set?key={long_key}&value=v"))
        .await
        .assert_error(413);
    kv.get(&format!("/get?key={long_key}"))
        .await
        .assert_error(413);
    kv.post(&format!("/set?key=k&value={long_value}"))
        .await
        .assert_error(413);
    kv.post_body("/set?key=k", long_value.clone())
        .await
        .assert_error(413);
    // Far over the limit: refused from Content-Length alone, before any body is sent.
    let head = raw_request(
        &kv,
        "POST /set?key=k HTTP/1.1\r\nHost: kv\r\nContent-Length: 4194304\r\n\r\n",
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert!(head.contains("Error: "), "{head}");
    // At the limits exactly: fine.
    kv.set(&"k".repeat(16), &"v".repeat(64)).await;
    kv.set("b", "2").await;
    kv.set("c", "3").await;
    // A fourth key would exceed max-keys; overwriting an existing one is fine.
    kv.post("/set?key=d&value=4").await.assert_error(413);
    kv.set("b", "22").await;
    assert_eq!(kv.value("d").await, None);
    assert_eq!(kv.value("b").await.as_deref(), Some(&b"22"[..]));
    // After a removal there is room again.
    kv.delete("/remove?key=c").await;
    kv.set("d", "4").await;
    kv.stop().await;
}

async fn unicode_and_encoded_keys_and_values(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let key = "zażółć/ключ?&=#%+ 🦀";
    let value = "a b+c%20d&e=f\u{1F980}";
    kv.set(key, value).await;
    assert_eq!(kv.value(key).await.as_deref(), Some(value.as_bytes()));
    // `+` in a raw query is a space, as in Go's ParseQuery.
    kv.post("/set?key=plus&value=a+b").await;
    assert_eq!(kv.value("plus").await.as_deref(), Some(&b"a b"[..]));
    let list = kv.list().await;
    assert!(list.contains(&format!("{key} : {value}\n")), "{list}");
    kv.stop().await;
}

async fn arbitrary_bytes_in_the_body(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let bytes: Vec<u8> = (0..=255u8).collect();
    let r = kv.post_body("/set?key=bin", bytes.clone()).await;
    assert_eq!(r.status, 200);
    let r = kv.get("/get?key=bin").await;
    assert_eq!(r.body, bytes);
    assert_eq!(r.header("content-type"), Some("application/octet-stream"));
    kv.post_body("/set?key=multi", "line one\nline two").await;
    let list = kv.list().await;
    assert!(list.contains("multi : line one\\nline two\n"), "{list}");
    assert!(list.contains("bin : \\x00\\x01"), "{list}");
    assert_eq!(list.lines().count(), 2, "each entry on one line: {list}");
    let json: serde_json::Value =
        serde_json::from_slice(&kv.get("/list?format=json").await.body).expect("json");
    let bin = &json[0];
    assert_eq!(bin["key"], "bin");
    assert!(bin.get("value").is_none());
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(bin["value_base64"].as_str().expect("base64"))
        .expect("decode");
    assert_eq!(decoded, bytes);
    assert_eq!(json[1]["value"], "line one\nline two");
    kv.stop().await;
}

async fn list_is_sorted_with_prefix_and_json(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    for (k, v) in [
        ("svc/b", "2"),
        ("svc/a", "1"),
        ("other", "x"),
        ("svc/c", "3"),
    ] {
        kv.set(k, v).await;
    }
    assert_eq!(
        kv.list().await,
        "other : x\nsvc/a : 1\nsvc/b : 2\nsvc/c : 3\n"
    );
    let r = kv.get("/list?prefix=svc/").await;
    assert_eq!(r.text(), "svc/a : 1\nsvc/b : 2\nsvc/c : 3\n");
    let r = kv.get("/list?prefix=svc/&format=json").await;
    assert_eq!(r.header("content-type"), Some("application/json"));
    let json: serde_json::Value = serde_json::from_slice(&r.body).expect("json");
    let keys: Vec<&str> = json
        .as_array()
        .expect("array")
        .iter()
        .map(|e| e["key"].as_str().expect("key"))
        .collect();
    assert_eq!(keys, ["svc/a", "svc/b", "svc/c"]);
    assert_eq!(json[0]["value"], "1");
    assert!(json[0]["revision"].as_u64().expect("revision") > 0);
    assert_eq!(kv.get("/list?prefix=nothing").await.text(), "");
    kv.stop().await;
}

async fn revisions_are_store_wide_and_survive_restart(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let a1 = kv.set("a", "1").await;
    let b1 = kv.set("b", "1").await;
    let a2 = kv.set("a", "2").await;
    assert!(a1 < b1 && b1 < a2, "{a1} {b1} {a2}");
    let removed = kv.delete("/remove?key=b").await;
    let rb = removed.revision().expect("removal takes a revision");
    assert!(rb > a2);
    assert_eq!(
        kv.delete("/remove?key=b").await.revision(),
        None,
        "no-op remove"
    );
    assert_eq!(kv.get("/get?key=a").await.revision(), Some(a2));
    // The removed key reports the revision of its removal.
    let r = kv.get("/get?key=b").await;
    r.assert_error(404);
    assert_eq!(r.revision(), Some(rb));
    kv.stop().await;
    let kv = storage.start(|_| {}).await;
    assert_eq!(kv.get("/get?key=a").await.revision(), Some(a2));
    let c = kv.set("c", "1").await;
    assert!(
        c > rb,
        "the sequence continues after a restart ({c} > {rb})"
    );
    kv.stop().await;
}

async fn compare_and_set(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let r = kv.post("/set?key=lock&value=me&if_revision=0").await;
    assert_eq!(r.status, 200, "create-if-absent");
    let rev = r.revision().expect("revision");
    kv.post("/set?key=lock&value=you&if_revision=0")
        .await
        .assert_error(412);
    kv.post(&format!("/set?key=lock&value=you&if_revision={}", rev + 1))
        .await
        .assert_error(412);
    assert_eq!(kv.value("lock").await.as_deref(), Some(&b"me"[..]));
    let r = kv
        .post(&format!("/set?key=lock&value=you&if_revision={rev}"))
        .await;
    assert_eq!(r.status, 200);
    let rev2 = r.revision().expect("revision");
    kv.delete(&format!("/remove?key=lock&if_revision={rev}"))
        .await
        .assert_error(412);
    assert!(kv.value("lock").await.is_some());
    let r = kv
        .delete(&format!("/remove?key=lock&if_revision={rev2}"))
        .await;
    assert_eq!(r.status, 200);
    assert!(kv.value("lock").await.is_none());
    kv.stop().await;
}

async fn ttl_expires_keys(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let r = kv.post("/set?key=lease&value=x&ttl=300ms").await;
    assert_eq!(r.status, 200);
    let set_rev = r.revision().expect("revision");
    kv.set("forever", "y").await;
    assert!(kv.value("lease").await.is_some());
    let json: serde_json::Value =
        serde_json::from_slice(&kv.get("/list?format=json").await.body).expect("json");
    assert_eq!(json[1]["key"], "lease");
    assert!(
        json[1]["expires_at"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{json}"
    );
    assert!(json[0].get("expires_at").is_none(), "{json}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let r = kv.get("/get?key=lease").await;
    r.assert_error(404);
    assert!(
        r.revision().expect("expiry revision") > set_rev,
        "expiry takes a revision"
    );
    assert_eq!(kv.list().await, "forever : y\n");
    // Setting again without a TTL makes it permanent.
    kv.post("/set?key=lease&value=x&ttl=200ms").await;
    kv.set("lease", "z").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(kv.value("lease").await.as_deref(), Some(&b"z"[..]));
    // A TTL survives a restart (it is stored as a deadline).
    kv.post("/set?key=short&value=s&ttl=600ms").await;
    kv.stop().await;
    let kv = storage.start(|_| {}).await;
    assert!(kv.value("short").await.is_some());
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(kv.value("short").await.is_none());
    kv.stop().await;
}

async fn long_poll_watch(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let rev = kv.set("master", "10.0.0.1:3003").await;
    // Nothing changes: 304 after the wait.
    let started = Instant::now();
    let r = kv
        .get(&format!("/get?key=master&wait=300ms&after={rev}"))
        .await;
    assert_eq!(r.status, 304);
    assert!(started.elapsed() >= Duration::from_millis(250));
    // An older `after` answers at once.
    let r = kv
        .get(&format!("/get?key=master&wait=10s&after={}", rev - 1))
        .await;
    assert_eq!(r.status, 200);
    // A change wakes the watcher.
    let url = kv.url(&format!("/get?key=master&wait=10s&after={rev}"));
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    kv.set("unrelated", "x").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !watcher.is_finished(),
        "another key's write does not wake the watcher"
    );
    let new_rev = kv.set("master", "10.0.0.2:3003").await;
    let r = watcher.await.expect("join");
    assert_eq!((r.status, r.text().as_str()), (200, "10.0.0.2:3003"));
    assert_eq!(r.revision(), Some(new_rev));
    // A missing key: waits until it is created (no `after` needed).
    let url = kv.url("/get?key=late&wait=10s");
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    kv.set("late", "here").await;
    assert_eq!(watcher.await.expect("join").text(), "here");
    // A removal ends the watch with 404.
    let url = kv.url(&format!("/get?key=master&wait=10s&after={new_rev}"));
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    kv.delete("/remove?key=master").await;
    watcher.await.expect("join").assert_error(404);
    // Shutdown ends pending watches at once instead of holding up the drain.
    let url = kv.url("/get?key=late&wait=60s&after=100000");
    let client = kv.client.clone();
    let watcher =
        tokio::spawn(async move { client.get(url).send().await.map(|r| r.status().as_u16()) });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    kv.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown was not held up"
    );
    assert_eq!(watcher.await.expect("join").expect("answered"), 304);
}

/// `list?prefix=P&wait=…` wakes on any write under the prefix: a set, a removal, an expiry.
async fn prefix_watch(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    kv.set("svc/m/a", "10.0.0.1:3003").await;
    let r = kv.get("/list?prefix=svc/m/&format=json").await;
    let rev = r.revision().expect("revision");
    // Nothing under the prefix changes: 304 after the wait, other keys notwithstanding.
    let url = kv.url(&format!(
        "/list?prefix=svc/m/&format=json&wait=400ms&after={rev}"
    ));
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    kv.set("svc/other/x", "y").await;
    assert_eq!(watcher.await.expect("join").status, 304);
    // A new key under the prefix wakes it, with the whole listing.
    let url = kv.url(&format!(
        "/list?prefix=svc/m/&format=json&wait=10s&after={rev}"
    ));
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(!watcher.is_finished());
    kv.post("/set?key=svc/m/b&value=10.0.0.2:3003&ttl=300ms")
        .await;
    let r = watcher.await.expect("join");
    assert_eq!(r.status, 200);
    let listed: serde_json::Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");
    let rev = r.revision().expect("revision");
    // The TTL running out is a change too.
    let r = kv
        .get(&format!(
            "/list?prefix=svc/m/&format=json&wait=10s&after={rev}"
        ))
        .await;
    assert_eq!(r.status, 200);
    let listed: serde_json::Value = serde_json::from_str(&r.text()).expect("json");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    let rev = r.revision().expect("revision");
    // So is a removal.
    let url = kv.url(&format!("/list?prefix=svc/m/&wait=10s&after={rev}"));
    let client = kv.client.clone();
    let watcher = tokio::spawn(async move {
        crate::support::Reply::from(client.get(url).send().await.expect("watch")).await
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    kv.delete("/remove?key=svc/m/a").await;
    let r = watcher.await.expect("join");
    assert_eq!((r.status, r.text().as_str()), (200, ""));
    // A bad `after` is a 400.
    kv.get("/list?prefix=svc/&wait=1s&after=x")
        .await
        .assert_error(400);
    kv.stop().await;
}

async fn restart_keeps_everything(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    for i in 0..100 {
        kv.set(&format!("key{i:03}"), &format!("value {i}")).await;
    }
    kv.delete("/remove?key=key050").await;
    let before = kv.list().await;
    kv.stop().await;
    let kv = storage.start(|_| {}).await;
    assert_eq!(kv.list().await, before);
    assert_eq!(kv.value("key050").await, None);
    assert_eq!(kv.value("key099").await.as_deref(), Some(&b"value 99"[..]));
    kv.stop().await;
}

async fn concurrent_writes_are_all_acknowledged_and_kept(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    let mut tasks = Vec::new();
    for i in 0..200 {
        let client = kv.client.clone();
        let url = kv.url("/set");
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .query(&[("key", format!("c{i}")), ("value", format!("{i}"))])
                .send()
                .await
                .expect("set");
            assert_eq!(r.status(), 200);
            r.headers()["x-revision"]
                .to_str()
                .expect("rev")
                .parse::<u64>()
                .expect("rev")
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.expect("join"));
    }
    revisions.sort_unstable();
    revisions.dedup();
    assert_eq!(revisions.len(), 200, "every write got its own revision");
    for i in (0..200).step_by(17) {
        assert_eq!(
            kv.value(&format!("c{i}")).await,
            Some(i.to_string().into_bytes())
        );
    }
    kv.stop().await;
    let kv = storage.start(|_| {}).await;
    assert_eq!(kv.list().await.lines().count(), 200);
    kv.stop().await;
}

async fn health_metrics_and_request_ids(storage: &Storage) {
    let kv = storage.start(|_| {}).await;
    assert_eq!(kv.get("/healthz").await.text(), "ok");
    assert_eq!(kv.get("/readyz").await.text(), "ready");
    kv.set("m", "1").await;
    kv.get("/get?key=m").await;
    kv.get("/get?key=absent").await;
    let metrics = kv.get("/metrics").await.text();
    let line = |route: &str, status: &str| {
        metrics
            .lines()
            .find(|l| {
                l.starts_with("shoal_http_requests_total{")
                    && l.contains("service=\"kv\"")
                    && l.contains(&format!("route=\"{route}\""))
                    && l.contains(&format!("status=\"{status}\""))
            })
            .map(str::to_owned)
    };
    assert!(line("/get", "2xx").is_some(), "{metrics}");
    assert!(line("/get", "4xx").is_some(), "{metrics}");
    assert!(line("/set", "2xx").is_some(), "{metrics}");
    assert!(
        metrics.contains("shoal_http_request_duration_seconds_bucket{"),
        "histogram present"
    );
    // A request id is generated, or the caller's is echoed.
    let r = kv.get("/get?key=m").await;
    assert!(r.header("x-request-id").is_some_and(|v| v.len() >= 32));
    let r = kv
        .client
        .get(kv.url("/get?key=m"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .expect("send");
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    kv.stop().await;
}

async fn token_guards_every_route_but_healthz(storage: &Storage) {
    let kv = storage
        .start(|c| c.common.token = Some(shoal_core::config::Token::new("s3cret")))
        .await;
    kv.get("/get?key=a").await.assert_error(401);
    kv.post("/set?key=a&value=b").await.assert_error(401);
    kv.get("/list").await.assert_error(401);
    kv.get("/metrics").await.assert_error(401);
    let r = kv
        .client
        .post(kv.url("/set?key=a&value=b"))
        .bearer_auth("wrong")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(kv.get("/healthz").await.status, 200);
    let r = kv
        .client
        .post(kv.url("/set?key=a&value=b"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 200);
    let r = kv
        .client
        .get(kv.url("/list"))
        .bearer_auth("s3cret")
        .send()
        .await
        .expect("send");
    assert_eq!(r.text().await.expect("body"), "a : b\n");
    kv.stop().await;
}

/// Sends raw bytes and returns what the server answers before closing or within a second.
async fn raw_request(kv: &Kv, request: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(kv.server.addr)
        .await
        .expect("connect");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(1), stream.read(&mut buf)).await
    {
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if got.windows(7).any(|w| w == b"Error: ") {
            break;
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}
