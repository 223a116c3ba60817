//! `shoal tasks` over HTTP, on the embedded SQLite store.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;
use shoal_core::testkit::TestServer;
use shoal_core::testkit::postgres::PgServer;
use shoal_tasks::Config;

struct Tasks {
    server: TestServer,
    client: reqwest::Client,
}

/// Where a test's tasks live; outlives restarts within the test.
enum Storage {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

static PG: std::sync::OnceLock<Option<PgServer>> = std::sync::OnceLock::new();

impl Storage {
    fn sqlite() -> Self {
        Self::Sqlite(tempfile::tempdir().expect("tempdir"))
    }

    fn postgres() -> Option<Self> {
        let server = PG
            .get_or_init(|| PgServer::start().expect("start PostgreSQL"))
            .as_ref()?;
        Some(Self::Postgres(server.fresh_database().expect("database")))
    }

    fn config(&self) -> Config {
        match self {
            Self::Sqlite(dir) => Config::with_data_dir(dir.path()),
            Self::Postgres(url) => {
                let mut c = Config::with_data_dir("/nonexistent-unused");
                c.database.database_url = Some(shoal_core::config::Secret::new(url.clone()));
                c
            }
        }
    }
}

macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::Storage::sqlite()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(storage) = super::Storage::postgres() else { return };
                    super::$case(storage).await;
                }
            )*
        }
    };
}

impl Tasks {
    async fn start(storage: &Storage, tweak: impl FnOnce(&mut Config)) -> Self {
        shoal_core::client::install_crypto_provider();
        let mut config = storage.config();
        tweak(&mut config);
        let server = TestServer::start(move |l, s| shoal_tasks::run(config, l, s))
            .await
            .expect("start");
        let client = reqwest::Client::new();
        for _ in 0..200 {
            if client
                .get(server.url("/healthz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return Self { server, client };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tasks did not start");
    }

    async fn call(&self, method: Method, path: &str) -> (u16, String) {
        let r = self
            .client
            .request(method, self.server.url(path))
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    async fn post_body(&self, path: &str, body: &str) -> (u16, String) {
        let r = self
            .client
            .post(self.server.url(path))
            .body(body.to_owned())
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.text().await.expect("body"))
    }

    async fn new_task(&self) -> u64 {
        let (status, body) = self.call(Method::POST, "/newTask").await;
        assert_eq!(status, 200, "{body}");
        body.parse().expect("id")
    }

    async fn claim(&self) -> Option<Value> {
        let (status, body) = self.call(Method::POST, "/getNewTask").await;
        match status {
            200 => Some(serde_json::from_str(&body).expect("json")),
            404 => {
                assert_eq!(body, "Error: No non-started task.");
                None
            }
            s => panic!("getNewTask: {s} {body}"),
        }
    }

    async fn task(&self, id: u64) -> Value {
        let (status, body) = self.call(Method::GET, &format!("/getById?id={id}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("json")
    }

    async fn stop(self) {
        self.server.stop().await.expect("stop");
    }
}

on_both_backends!(
    retention_deletes_old_finished_tasks_and_never_reuses_ids,
    seed_flow,
    bad_input_is_400_unknown_ids_404_wrong_methods_405,
    set_by_id_follows_the_state_machine,
    leases_expire_and_attempts_are_bounded,
    fail_task_with_and_without_retry_and_cancel,
    held_tasks_are_invisible_until_released_and_fail_if_never_released,
    payloads_travel_with_the_task,
    a_long_polling_claimer_gets_a_task_created_after_it_started_waiting,
    acknowledged_transitions_survive_a_restart,
    concurrent_claimers_get_each_task_exactly_once,
    an_idempotency_key_creates_one_task,
    a_workers_claims_can_be_given_back_at_once,
    stats_count_tasks_per_state,
);

async fn an_idempotency_key_creates_one_task(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    let create = async |key: &str| {
        let r = t
            .client
            .post(t.server.url("/newTask?hold=true"))
            .header("idempotency-key", key)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        let existing = r.headers().get("x-existing").is_some();
        (
            r.text().await.expect("body").parse::<u64>().expect("id"),
            existing,
        )
    };
    assert_eq!(create("upload-a").await, (0, false));
    assert_eq!(create("upload-a").await, (0, true));
    assert_eq!(create("upload-b").await, (1, false));
    assert_eq!(t.new_task().await, 2, "keyless creates are unaffected");
    // Concurrent retries of one key: one task.
    let ids: Vec<_> = futures::future::join_all((0..16).map(|_| create("upload-c"))).await;
    let created = ids.iter().filter(|(_, existing)| !existing).count();
    assert_eq!(created, 1, "{ids:?}");
    assert!(ids.iter().all(|(id, _)| *id == 3), "{ids:?}");
    // Bad keys.
    for bad in ["", &"k".repeat(201)] {
        let r = t
            .client
            .post(t.server.url("/newTask"))
            .header("idempotency-key", bad)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
    }
    assert_eq!(t.new_task().await, 4);
    t.stop().await;
}

async fn a_workers_claims_can_be_given_back_at_once(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    for _ in 0..4 {
        t.new_task().await;
    }
    for worker in ["host-a", "host-a", "host-b"] {
        let (status, body) = t
            .call(Method::POST, &format!("/getNewTask?worker={worker}"))
            .await;
        assert_eq!(status, 200, "{body}");
        let task: Value = serde_json::from_str(&body).expect("json");
        assert_eq!(task["worker"], worker);
    }
    let (status, body) = t.call(Method::POST, "/releaseWorker?worker=host-a").await;
    assert_eq!((status, body.as_str()), (200, "2"));
    // Back in the queue at once, oldest first; host-b's claim stands.
    let again = t.claim().await.expect("task");
    assert_eq!(again["id"], 0);
    assert_eq!(again["attempts"], 2);
    assert_eq!(t.task(2).await["state"], 1);
    let (_, body) = t.call(Method::POST, "/releaseWorker?worker=host-a").await;
    assert_eq!(body, "0");
    let (status, _) = t.call(Method::POST, "/releaseWorker").await;
    assert_eq!(status, 400);
    t.stop().await;
}

async fn stats_count_tasks_per_state(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    for _ in 0..5 {
        t.new_task().await;
    }
    t.call(Method::POST, "/newTask?hold=true").await;
    let claimed = t.claim().await.expect("task");
    t.call(Method::POST, &format!("/finishTask?id={}", claimed["id"]))
        .await;
    t.claim().await.expect("task");
    let (status, body) = t.call(Method::GET, "/stats").await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(
        stats,
        serde_json::json!({"not_started": 3, "held": 1, "in_progress": 1, "finished": 1, "failed": 0})
    );
    t.stop().await;
}

async fn seed_flow(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    assert_eq!(t.new_task().await, 0, "ids are consecutive from 0");
    assert_eq!(t.new_task().await, 1);
    let task = t.task(0).await;
    assert_eq!(
        (task["id"].as_u64(), task["state"].as_u64()),
        (Some(0), Some(0))
    );
    let claimed = t.claim().await.expect("a task");
    assert_eq!(
        (claimed["id"].as_u64(), claimed["state"].as_u64()),
        (Some(0), Some(1)),
        "the oldest"
    );
    assert_eq!(claimed["attempts"], 1);
    assert!(claimed["lease"].is_string() && claimed["lease_expires_at"].is_string());
    assert_eq!(
        t.call(Method::POST, "/finishTask?id=0").await,
        (200, "success".into())
    );
    assert_eq!(t.task(0).await["state"], 2);
    // Finishing a finished task is a conflict; so is finishing a task nobody claimed.
    assert_eq!(t.call(Method::POST, "/finishTask?id=0").await.0, 409);
    assert_eq!(t.call(Method::POST, "/finishTask?id=1").await.0, 409);
    let (status, list) = t.call(Method::GET, "/list").await;
    assert_eq!(status, 200);
    assert!(list.starts_with("0 : finished"), "{list}");
    assert!(
        list.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("1 : not started")),
        "{list}"
    );
    let (_, only_finished) = t.call(Method::GET, "/list?state=2").await;
    assert_eq!(only_finished.lines().count(), 1);
    let (_, json) = t.call(Method::GET, "/list?format=json").await;
    assert_eq!(
        serde_json::from_str::<Value>(&json)
            .expect("json")
            .as_array()
            .map(Vec::len),
        Some(2)
    );
    t.stop().await;
}

async fn bad_input_is_400_unknown_ids_404_wrong_methods_405(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    t.new_task().await;
    for path in [
        "/getById",
        "/getById?id=",
        "/getById?id=-1",
        "/getById?id=abc",
        "/getById?id=1.5",
        "/getById?id=99999999999999999999",
        "/getById?id=01",
        "/getById?id=%2B1",
    ] {
        assert_eq!(t.call(Method::GET, path).await.0, 400, "{path}");
    }
    for path in [
        "/finishTask?id=-1",
        "/failTask?id=x",
        "/extendLease",
        "/releaseTask?id=+1",
        "/cancelTask?id=",
    ] {
        assert_eq!(t.call(Method::POST, path).await.0, 400, "{path}");
    }
    assert_eq!(t.call(Method::GET, "/list?state=7").await.0, 400);
    assert_eq!(t.call(Method::GET, "/list?format=xml").await.0, 400);
    assert_eq!(t.call(Method::POST, "/newTask?hold=maybe").await.0, 400);
    assert_eq!(t.post_body("/newTask", "{not json").await.0, 400);
    for body in [
        "{not json",
        r#"{"id":-1,"state":0}"#,
        r#"{"id":0,"state":9}"#,
        r#"{"id":"0","state":0}"#,
        r#"{"state":1}"#,
    ] {
        assert_eq!(t.post_body("/setById", body).await.0, 400, "{body}");
    }
    for (method, path) in [
        (Method::GET, "/getById?id=5"),
        (Method::POST, "/finishTask?id=5"),
        (Method::POST, "/failTask?id=5"),
        (Method::POST, "/extendLease?id=5"),
        (Method::POST, "/releaseTask?id=5"),
        (Method::POST, "/cancelTask?id=5"),
    ] {
        let (status, body) = t.call(method, path).await;
        assert_eq!(status, 404, "{path}");
        assert!(body.starts_with("Error: "));
    }
    assert_eq!(
        t.post_body("/setById", r#"{"id":5,"state":0}"#).await.0,
        404
    );
    for (method, path, allowed) in [
        (Method::GET, "/newTask", "POST"),
        (Method::GET, "/getNewTask", "POST"),
        (Method::POST, "/getById?id=0", "GET"),
        (Method::GET, "/finishTask?id=0", "POST"),
        (Method::GET, "/setById", "POST"),
        (Method::POST, "/list", "GET"),
    ] {
        assert_eq!(
            t.call(method, path).await,
            (405, format!("Error: Only {allowed} accepted."))
        );
    }
    // DEFECTS 8: nothing was created by any of that.
    let (_, list) = t.call(Method::GET, "/list").await;
    assert_eq!(list.lines().count(), 1, "{list}");
    assert_eq!(t.new_task().await, 1, "id allocation is intact");
    t.stop().await;
}

async fn set_by_id_follows_the_state_machine(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    let id = t.new_task().await;
    let set = |state: u8| format!(r#"{{"id":{id},"state":{state}}}"#);
    assert_eq!(
        t.post_body("/setById", &set(0)).await,
        (200, "success".into()),
        "same state: no-op"
    );
    assert_eq!(
        t.post_body("/setById", &set(2)).await.0,
        409,
        "not started → finished"
    );
    assert_eq!(t.post_body("/setById", &set(1)).await.0, 200, "claim");
    assert_eq!(
        t.post_body("/setById", &set(0)).await.0,
        200,
        "explicit release"
    );
    assert_eq!(t.post_body("/setById", &set(1)).await.0, 200);
    assert_eq!(t.post_body("/setById", &set(3)).await.0, 200, "fail");
    assert_eq!(
        t.post_body("/setById", &set(2)).await.0,
        409,
        "failed → finished"
    );
    assert_eq!(
        t.post_body("/setById", &set(0)).await.0,
        200,
        "explicit retry"
    );
    assert_eq!(t.post_body("/setById", &set(1)).await.0, 200);
    assert_eq!(t.post_body("/setById", &set(2)).await.0, 200, "finish");
    for state in 0..=3 {
        assert_eq!(
            t.post_body("/setById", &set(state)).await.0,
            409,
            "finished is final ({state})"
        );
    }
    t.stop().await;
}

async fn leases_expire_and_attempts_are_bounded(storage: Storage) {
    let t = Tasks::start(&storage, |c| {
        c.lease = Duration::from_millis(200);
        c.max_attempts = 2;
    })
    .await;
    let id = t.new_task().await;
    let first = t.claim().await.expect("claim 1");
    assert!(t.claim().await.is_none(), "held by a lease");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = t
        .claim()
        .await
        .expect("re-delivered after the lease ran out");
    assert_eq!(second["id"], id);
    assert_eq!(second["attempts"], 2);
    // The first worker's lease is stale: it cannot finish the task the second one holds.
    let stale = first["lease"].as_str().expect("lease");
    assert_eq!(
        t.call(Method::POST, &format!("/finishTask?id={id}&lease={stale}"))
            .await
            .0,
        409
    );
    // Extending the lease keeps it.
    let lease = second["lease"].as_str().expect("lease").to_owned();
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(
            t.call(Method::POST, &format!("/extendLease?id={id}&lease={lease}"))
                .await
                .0,
            200
        );
    }
    assert!(t.claim().await.is_none());
    // DEFECTS 9: after max attempts an expiring lease fails the task instead of looping.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(t.claim().await.is_none());
    let task = t.task(id).await;
    assert_eq!(task["state"], 3, "{task}");
    assert!(
        task["error"]
            .as_str()
            .is_some_and(|e| e.contains("attempts")),
        "{task}"
    );
    t.stop().await;
}

async fn fail_task_with_and_without_retry_and_cancel(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    let a = t.new_task().await;
    let b = t.new_task().await;
    t.claim().await.expect("a");
    assert_eq!(
        t.call(
            Method::POST,
            &format!("/failTask?id={a}&retry=true&reason=flaky")
        )
        .await
        .0,
        200
    );
    assert_eq!(t.task(a).await["state"], 0, "back in the queue");
    t.claim().await.expect("a again");
    assert_eq!(
        t.call(
            Method::POST,
            &format!("/failTask?id={a}&reason=bad%20image")
        )
        .await
        .0,
        200
    );
    let task = t.task(a).await;
    assert_eq!(
        (task["state"].as_u64(), task["error"].as_str()),
        (Some(3), Some("bad image"))
    );
    assert_eq!(
        t.call(Method::POST, &format!("/cancelTask?id={b}")).await.0,
        200
    );
    let task = t.task(b).await;
    assert_eq!(
        (task["state"].as_u64(), task["error"].as_str()),
        (Some(3), Some("cancelled"))
    );
    assert_eq!(
        t.call(Method::POST, &format!("/cancelTask?id={b}")).await.0,
        409
    );
    t.stop().await;
}

async fn held_tasks_are_invisible_until_released_and_fail_if_never_released(storage: Storage) {
    let t = Tasks::start(&storage, |c| c.hold_timeout = Duration::from_millis(400)).await;
    let (status, body) = t.call(Method::POST, "/newTask?hold=true").await;
    assert_eq!(status, 200);
    let held: u64 = body.parse().expect("id");
    assert_eq!(t.task(held).await["held"], true);
    assert!(t.claim().await.is_none(), "held: invisible");
    assert_eq!(
        t.call(Method::POST, &format!("/releaseTask?id={held}"))
            .await
            .0,
        200
    );
    assert_eq!(t.claim().await.expect("released")["id"], held);
    let (_, body) = t.call(Method::POST, "/newTask?hold=true").await;
    let orphan: u64 = body.parse().expect("id");
    tokio::time::sleep(Duration::from_millis(1600)).await;
    let task = t.task(orphan).await;
    assert_eq!(
        (task["state"].as_u64(), task["error"].as_str()),
        (Some(3), Some("never released"))
    );
    t.stop().await;
}

async fn payloads_travel_with_the_task(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    let (status, id) = t
        .post_body("/newTask", r#"{"op":"grayscale","format":"png"}"#)
        .await;
    assert_eq!(status, 200);
    let claimed = t.claim().await.expect("task");
    assert_eq!(claimed["id"].as_u64(), id.parse().ok());
    assert_eq!(claimed["payload"]["op"], "grayscale");
    t.stop().await;
}

async fn a_long_polling_claimer_gets_a_task_created_after_it_started_waiting(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    let client = t.client.clone();
    let url = t.server.url("/getNewTask?wait=10s");
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { client.post(url).send().await.expect("send").text().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished());
    let id = t.new_task().await;
    let body = waiter.await.expect("join").expect("body");
    let task: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(task["id"], id);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // With nothing to do, the wait ends with the seed's 404.
    assert_eq!(t.call(Method::POST, "/getNewTask?wait=200ms").await.0, 404);
    t.stop().await;
}

async fn acknowledged_transitions_survive_a_restart(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    for _ in 0..5 {
        t.new_task().await;
    }
    t.claim().await.expect("0");
    t.call(Method::POST, "/finishTask?id=0").await;
    t.claim().await.expect("1");
    let before = t.call(Method::GET, "/list").await.1;
    t.stop().await;
    let t = Tasks::start(&storage, |_| {}).await;
    assert_eq!(t.call(Method::GET, "/list").await.1, before);
    assert_eq!(t.new_task().await, 5, "ids continue");
    t.stop().await;
}

async fn concurrent_claimers_get_each_task_exactly_once(storage: Storage) {
    let t = Tasks::start(&storage, |_| {}).await;
    const TASKS: u64 = 10_000;
    let mut creators = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let client = t.client.clone();
        let url = t.server.url("/newTask");
        creators.spawn(async move {
            for _ in 0..TASKS / 8 {
                assert_eq!(client.post(&url).send().await.expect("send").status(), 200);
            }
        });
    }
    while let Some(r) = creators.join_next().await {
        r.expect("creator");
    }
    let seen = claim_all(&t.client, std::slice::from_ref(&t.server.base_url)).await;
    assert_eq!(seen.len() as u64, TASKS, "every task claimed once");
    let (_, finished) = t.call(Method::GET, "/list?state=2").await;
    assert_eq!(finished.lines().count() as u64, TASKS);
    t.stop().await;
}

/// Two replicas on one PostgreSQL database: concurrent claimers on both never get the same task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_claim_each_task_exactly_once() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = Tasks::start(&storage, |_| {}).await;
    let b = Tasks::start(&storage, |_| {}).await;
    const TASKS: u64 = 10_000;
    for i in 0..TASKS {
        let replica = if i % 2 == 0 { &a } else { &b };
        assert_eq!(
            replica.new_task().await,
            i,
            "one id sequence across replicas"
        );
    }
    let seen = claim_all(
        &a.client,
        &[a.server.base_url.clone(), b.server.base_url.clone()],
    )
    .await;
    assert_eq!(seen.len() as u64, TASKS);
    a.stop().await;
    b.stop().await;
}

/// The server ends every connection of the replica (as a restart or a failover of PostgreSQL
/// does): the next operations are answered, not failed, and ids go on from where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_go_on_after_the_server_drops_the_connections() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let Storage::Postgres(url) = &storage else {
        unreachable!()
    };
    let pg = PG.get().and_then(Option::as_ref).expect("server");
    let t = Tasks::start(&storage, |_| {}).await;
    assert_eq!(t.new_task().await, 0);
    pg.psql(
        url,
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .expect("terminate");
    assert_eq!(
        t.new_task().await,
        1,
        "answered after the connections were lost"
    );
    let claimed = t.claim().await.expect("a task to claim");
    assert_eq!(claimed["id"], 0);
    t.stop().await;
}

/// Two replicas creating at once, many with the same idempotency keys: each key is one task,
/// and the ids are consecutive from 0 with no gap, whichever replica made them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_on_two_replicas_keep_keys_unique_and_ids_consecutive() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = Tasks::start(&storage, |_| {}).await;
    let b = Tasks::start(&storage, |_| {}).await;
    const KEYS: usize = 100;
    let create = async |base: String, key: Option<String>| {
        let mut request = a.client.post(format!("{base}/newTask"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let r = request.send().await.expect("send");
        assert_eq!(r.status(), 200);
        r.text().await.expect("body").parse::<u64>().expect("id")
    };
    // Every key sent four times, twice to each replica, interleaved with keyless creates.
    let mut calls = Vec::new();
    for round in 0..4 {
        for k in 0..KEYS {
            let base = if (k + round) % 2 == 0 { &a } else { &b };
            calls.push(create(
                base.server.base_url.clone(),
                Some(format!("key-{k}")),
            ));
        }
        for _ in 0..25 {
            calls.push(create(a.server.base_url.clone(), None));
            calls.push(create(b.server.base_url.clone(), None));
        }
    }
    let ids = futures::future::join_all(calls).await;
    let mut by_key: HashMap<usize, u64> = HashMap::new();
    let mut all: Vec<u64> = Vec::new();
    let mut i = 0;
    for _round in 0..4 {
        for k in 0..KEYS {
            let id = ids[i];
            i += 1;
            assert_eq!(*by_key.entry(k).or_insert(id), id, "key-{k} made two tasks");
        }
        for _ in 0..50 {
            all.push(ids[i]);
            i += 1;
        }
    }
    all.extend(by_key.values());
    all.sort_unstable();
    let expected: Vec<u64> = (0..(KEYS + 200) as u64).collect();
    assert_eq!(all, expected, "ids are consecutive from 0, each once");
    a.stop().await;
    b.stop().await;
}

/// `getById?wait=&state=` on one replica wakes when the task changes on another; it answers
/// at once when the state already differs; a bad `state` is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_long_poll_on_one_replica_sees_a_change_on_another() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = Tasks::start(&storage, |_| {}).await;
    let b = Tasks::start(&storage, |_| {}).await;
    let id = a.new_task().await;
    for bad in ["9", "-1", "x", ""] {
        let (status, body) = a
            .call(
                Method::GET,
                &format!("/getById?id={id}&wait=1s&state={bad}"),
            )
            .await;
        assert_eq!(status, 400, "state={bad}: {body}");
    }
    // Already not in state 1: answered at once.
    let started = Instant::now();
    let (status, body) = a
        .call(Method::GET, &format!("/getById?id={id}&wait=10s&state=1"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() < Duration::from_secs(2));
    let client = a.client.clone();
    let url = a.server.url(&format!("/getById?id={id}&wait=10s&state=0"));
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { client.get(url).send().await.expect("send").text().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiter.is_finished(), "no change yet");
    let claimed = b.claim().await.expect("a task to claim");
    assert_eq!(claimed["id"], id);
    let task: Value =
        serde_json::from_str(&waiter.await.expect("join").expect("body")).expect("json");
    assert_eq!(task["state"], 1, "{task}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Nothing changes: the wait ends with the task as it is.
    let started = Instant::now();
    let (status, body) = a
        .call(Method::GET, &format!("/getById?id={id}&wait=300ms&state=1"))
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(started.elapsed() >= Duration::from_millis(250));
    a.stop().await;
    b.stop().await;
}

/// A long poll on one replica wakes for a task created on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_on_one_replica_sees_a_task_created_on_another() {
    let Some(storage) = Storage::postgres() else {
        return;
    };
    let a = Tasks::start(&storage, |_| {}).await;
    let b = Tasks::start(&storage, |_| {}).await;
    let client = a.client.clone();
    let url = b.server.url("/getNewTask?wait=10s");
    let started = Instant::now();
    let waiter =
        tokio::spawn(async move { client.post(url).send().await.expect("send").text().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let id = a.new_task().await;
    let task: Value =
        serde_json::from_str(&waiter.await.expect("join").expect("body")).expect("json");
    assert_eq!(task["id"], id);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    a.stop().await;
    b.stop().await;
}

async fn retention_deletes_old_finished_tasks_and_never_reuses_ids(storage: Storage) {
    let t = Tasks::start(&storage, |c| c.retention = Some(Duration::from_millis(300))).await;
    let done = t.new_task().await;
    let waiting = t.new_task().await;
    t.claim().await.expect("claim");
    assert_eq!(
        t.call(Method::POST, &format!("/finishTask?id={done}"))
            .await
            .0,
        200
    );
    let started = Instant::now();
    while t.call(Method::GET, &format!("/getById?id={done}")).await.0 != 404 {
        assert!(started.elapsed() < Duration::from_secs(5), "never deleted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(t.task(waiting).await["state"], 0, "unfinished tasks stay");
    assert_eq!(t.new_task().await, 2, "ids are never reused");
    t.stop().await;
}

/// 32 claimers spread over `bases` take tasks until none is left, finishing each with its
/// lease; returns every id claimed, failing if any was claimed twice.
async fn claim_all(client: &reqwest::Client, bases: &[String]) -> HashSet<u64> {
    let mut claimers = tokio::task::JoinSet::new();
    for c in 0..32 {
        let client = client.clone();
        let base = bases[c % bases.len()].clone();
        claimers.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let r = client
                    .post(format!("{base}/getNewTask"))
                    .send()
                    .await
                    .expect("send");
                if r.status() == 404 {
                    return mine;
                }
                assert_eq!(r.status(), 200);
                let task: Value =
                    serde_json::from_str(&r.text().await.expect("body")).expect("json");
                let id = task["id"].as_u64().expect("id");
                let lease = task["lease"].as_str().expect("lease").to_owned();
                let r = client
                    .post(format!("{base}/finishTask?id={id}&lease={lease}"))
                    .send()
                    .await
                    .expect("finish");
                assert_eq!(r.status(), 200, "finish {id}");
                mine.push(id);
            }
        });
    }
    let mut seen = HashSet::new();
    while let Some(r) = claimers.join_next().await {
        for id in r.expect("claimer") {
            assert!(seen.insert(id), "task {id} claimed twice");
        }
    }
    seen
}
