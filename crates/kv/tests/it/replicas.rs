//! Several kv replicas sharing one PostgreSQL database.

use std::time::{Duration, Instant};

use crate::support::{Kv, Storage, pg};

async fn eventually_value(kv: &Kv, key: &str, expected: Option<&[u8]>) {
    let started = Instant::now();
    loop {
        let got = kv.value(key).await;
        if got.as_deref() == expected {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{key}: expected {expected:?}, still {got:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_stay_coherent() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = storage.start(|_| {}).await;
    let b = storage.start(|_| {}).await;
    let r1 = a.set("databaseAddress", "10.0.0.1:3001").await;
    eventually_value(&b, "databaseAddress", Some(b"10.0.0.1:3001")).await;
    let r2 = b.set("databaseAddress", "10.0.0.2:3001").await;
    assert!(r2 > r1, "one revision sequence across replicas");
    eventually_value(&a, "databaseAddress", Some(b"10.0.0.2:3001")).await;
    b.delete("/remove?key=databaseAddress").await;
    eventually_value(&a, "databaseAddress", None).await;
    // Interleaved writes on both replicas get unique, increasing revisions.
    let mut last = 0;
    for i in 0..20 {
        let kv = if i % 2 == 0 { &a } else { &b };
        let rev = kv.set(&format!("k{i}"), "v").await;
        assert!(rev > last, "{rev} > {last}");
        last = rev;
    }
    eventually_value(&a, "k19", Some(b"v")).await;
    assert_eq!(a.list().await, b.list().await);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_and_set_holds_across_replicas() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = storage.start(|_| {}).await;
    let b = storage.start(|_| {}).await;
    assert_eq!(
        a.post("/set?key=leader&value=a&if_revision=0").await.status,
        200
    );
    // Even before b has heard of it, b's conditional create must fail.
    b.post("/set?key=leader&value=b&if_revision=0")
        .await
        .assert_error(412);
    assert_eq!(b.value("leader").await.as_deref(), Some(&b"a"[..]));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_one_replica_sees_a_write_on_another() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = storage.start(|_| {}).await;
    let b = storage.start(|_| {}).await;
    let rev = a.set("masterAddress", "one").await;
    eventually_value(&b, "masterAddress", Some(b"one")).await;
    let url = b.url(&format!("/get?key=masterAddress&wait=10s&after={rev}"));
    let client = b.client.clone();
    let watch =
        tokio::spawn(async move { client.get(url).send().await.expect("watch").text().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    a.set("masterAddress", "two").await;
    assert_eq!(watch.await.expect("join").expect("body"), "two");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_and_migrations_live_in_their_own_schema() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let kv = storage.start(|_| {}).await;
    kv.set("a", "1").await;
    kv.set("b", "2").await;
    kv.stop().await;
    let (Some(server), Storage::Postgres(url)) = (pg(), &storage) else {
        unreachable!()
    };
    let count = server
        .psql(
            url,
            "SELECT count(*) FROM shoal_kv.kv_entries WHERE value IS NOT NULL",
        )
        .expect("psql");
    assert_eq!(count.trim(), "2");
    let migrations = server
        .psql(url, "SELECT count(*) FROM shoal_kv._sqlx_migrations")
        .expect("psql");
    assert!(migrations.trim().parse::<u32>().expect("count") >= 1);
    let public = server
        .psql(
            url,
            "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'",
        )
        .expect("psql");
    assert_eq!(public.trim(), "0", "nothing in the public schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_url_with_sslmode_require_uses_tls() {
    let Some(server) =
        shoal_core::testkit::postgres::PgServer::start_tls().expect("start TLS postgres")
    else {
        return;
    };
    let url = server.fresh_database().expect("database");
    // The server rejects plain TCP connections, so a working kv proves the link is encrypted.
    let plain = Storage::Postgres(format!("{url}?sslmode=disable"));
    let mut config = plain.config();
    config.listen = "127.0.0.1:0".into();
    let err = shoal_kv::open_store(&config)
        .await
        .expect_err("plain connections are rejected");
    assert!(format!("{err:#}").contains("PostgreSQL"), "{err:#}");
    let tls = Storage::Postgres(format!("{url}?sslmode=require"));
    let kv = tls.start(|_| {}).await;
    kv.set("secure", "yes").await;
    assert_eq!(kv.value("secure").await.as_deref(), Some(&b"yes"[..]));
    kv.stop().await;
}
