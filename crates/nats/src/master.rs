//! `shoal nats master`: hands out word-count tasks over NATS.
//!
//! - `Work.TaskToDo` (request) → the next task not started, or an empty `Task` with the
//!   `Shoal-No-Work` header, so a worker backs off at once instead of waiting out its timeout.
//! - `Work.TaskFinished` (publish) → the task is finished when its id exists and its uuid
//!   matches; anything else (out-of-range id, wrong uuid, a result name that is not a file
//!   name, a repeat) is counted and ignored. The tutorial's worker sends the task back with
//!   state 1, so state 1 and 2 both mean finished.
//! - `Work.NewTask` (request, a `Task` with the `uuid` of an uploaded file) → the task's id.
//! - `Work.Status` (request) → the master's state as JSON.
//!
//! A task handed out and not finished within `--reset-after` is handed out again. In memory
//! (the default) a sweep runs several times a second, under the same short lock as
//! everything else (the tutorial's reset routine never releases its lock and deadlocks the
//! master). With `--durable`, tasks live in a JetStream work-queue stream instead: a task's
//! id is its stream sequence, handing out is a pull that is not acknowledged, the reset is
//! JetStream's redelivery after the ack wait, and a finish deletes the message; a restarted
//! master (or several masters in the `shoal-masters` queue group) loses nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_nats::Client;
use async_nats::jetstream;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use prost::Message as _;
use serde::Serialize;
use shoal_core::config::{LogFormat, MetricsArgs, parse_duration};
use tokio_util::sync::CancellationToken;

use crate::Task;
use crate::connection::{self, NatsArgs};
use crate::fileserver::valid_name;
use crate::headers::{ERROR, NO_WORK};
use crate::subjects::{NEW_TASK, STATUS, TASK_FINISHED, TASK_TO_DO};
use crate::task_state::{FINISHED, IN_PROGRESS, NOT_STARTED};

/// The tutorial's test file.
pub const DEMO_CONTENT: &str = "get,my,data,my,get,get,have";
/// How many test tasks `--demo` creates, as in the tutorial.
pub const DEMO_TASKS: usize = 20;
/// Queue group of durable masters.
pub const MASTERS: &str = "shoal-masters";

/// `shoal nats master` flags.
#[derive(Args, Clone, Debug)]
pub struct MasterConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Create the tutorial's 20 test tasks (each a file `get,my,data,my,get,get,have`
    /// uploaded to the discovered file server).
    #[arg(long)]
    pub demo: bool,
    /// Hand a task out again when it is not finished this long after it was handed out.
    #[arg(long, env = "SHOAL_NATS_RESET_AFTER", value_name = "DURATION", default_value = "2m", value_parser = parse_duration)]
    pub reset_after: Duration,
    /// Keep tasks in a JetStream work-queue stream (the server must run with JetStream), so
    /// a restarted master loses nothing and several masters can share the work.
    #[arg(long)]
    pub durable: bool,
    /// The JetStream stream `--durable` uses.
    #[arg(
        long,
        env = "SHOAL_NATS_STREAM",
        value_name = "NAME",
        default_value = "SHOAL_WORK"
    )]
    pub stream: String,
    /// `/healthz` and `/metrics`.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Why a `TaskFinished` message was ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a `Task`.
    Undecodable,
    /// No task has this id.
    UnknownId,
    /// The uuid is not the task's.
    WrongUuid,
    /// The state is neither in progress nor finished.
    BadState,
    /// `finisheduuid` is not a file name.
    BadResult,
    /// The task was already finished.
    Duplicate,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::Undecodable => "undecodable",
            Self::UnknownId => "unknown_id",
            Self::WrongUuid => "wrong_uuid",
            Self::BadState => "bad_state",
            Self::BadResult => "bad_result",
            Self::Duplicate => "duplicate",
        }
    }
}

/// Counters, reported by `Work.Status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Counters {
    /// Tasks created.
    pub created: u64,
    /// Tasks handed to a worker (a task handed out twice counts twice).
    pub handed_out: u64,
    /// `TaskToDo` requests answered with "no work".
    pub no_work: u64,
    /// Tasks finished.
    pub finished: u64,
    /// Tasks handed out again after `--reset-after` (memory mode; JetStream counts its own).
    pub resets: u64,
    /// Ignored `TaskFinished` messages, by reason.
    pub refused: HashMap<&'static str, u64>,
}

impl Counters {
    fn refuse(&mut self, refusal: Refusal) {
        *self.refused.entry(refusal.label()).or_default() += 1;
    }
}

struct Entry {
    task: Task,
    deadline: Option<Instant>,
}

/// The in-memory task list.
#[derive(Default)]
pub struct Board {
    tasks: Vec<Entry>,
    queue: VecDeque<usize>,
    in_progress: HashMap<usize, Instant>,
    by_uuid: HashMap<String, usize>,
    counters: Counters,
}

impl Board {
    /// Adds a task for the file `uuid`; the same uuid again gets the same id.
    pub fn add(&mut self, uuid: &str) -> Result<i32, String> {
        if let Some(&index) = self.by_uuid.get(uuid) {
            return Ok(self.tasks[index].task.id);
        }
        let index = self.tasks.len();
        let id = i32::try_from(index).map_err(|_| "the task list is full".to_string())?;
        self.tasks.push(Entry {
            task: Task {
                uuid: uuid.to_string(),
                finisheduuid: String::new(),
                state: NOT_STARTED,
                id,
            },
            deadline: None,
        });
        self.queue.push_back(index);
        self.by_uuid.insert(uuid.to_string(), index);
        self.counters.created += 1;
        Ok(id)
    }

    /// Hands out the oldest task not started, due back `reset_after` from `now`.
    pub fn next(&mut self, now: Instant, reset_after: Duration) -> Option<Task> {
        while let Some(index) = self.queue.pop_front() {
            let entry = &mut self.tasks[index];
            if entry.task.state != NOT_STARTED {
                continue;
            }
            entry.task.state = IN_PROGRESS;
            let deadline = now + reset_after;
            entry.deadline = Some(deadline);
            self.in_progress.insert(index, deadline);
            self.counters.handed_out += 1;
            return Some(entry.task.clone());
        }
        self.counters.no_work += 1;
        None
    }

    /// Applies a `TaskFinished` message.
    pub fn finish(&mut self, message: &Task) -> Result<(), Refusal> {
        let index = usize::try_from(message.id).map_err(|_| Refusal::UnknownId)?;
        let entry = self.tasks.get_mut(index).ok_or(Refusal::UnknownId)?;
        if entry.task.uuid != message.uuid {
            return Err(Refusal::WrongUuid);
        }
        if message.state != IN_PROGRESS && message.state != FINISHED {
            return Err(Refusal::BadState);
        }
        if !valid_name(&message.finisheduuid) {
            return Err(Refusal::BadResult);
        }
        if entry.task.state == FINISHED {
            return Err(Refusal::Duplicate);
        }
        // A task reset and queued again but finished by its first worker is done: its queue
        // entry is skipped when reached.
        entry.task.state = FINISHED;
        entry.task.finisheduuid.clone_from(&message.finisheduuid);
        entry.deadline = None;
        self.in_progress.remove(&index);
        self.counters.finished += 1;
        Ok(())
    }

    /// Puts tasks whose deadline has passed back at the front of the queue; returns how many.
    pub fn reset_expired(&mut self, now: Instant) -> usize {
        let expired: Vec<usize> = self
            .in_progress
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(index, _)| *index)
            .collect();
        for &index in &expired {
            self.in_progress.remove(&index);
            let entry = &mut self.tasks[index];
            entry.task.state = NOT_STARTED;
            entry.deadline = None;
            self.queue.push_front(index);
            self.counters.resets += 1;
            tracing::info!(id = index, uuid = %entry.task.uuid, "task not finished in time; handing it out again");
        }
        expired.len()
    }

    fn status(&self) -> serde_json::Value {
        let count = |state| self.tasks.iter().filter(|e| e.task.state == state).count();
        let tasks: Vec<_> = self
            .tasks
            .iter()
            .take(1000)
            .map(|e| {
                serde_json::json!({
                    "id": e.task.id, "uuid": e.task.uuid, "state": e.task.state,
                    "finisheduuid": e.task.finisheduuid,
                })
            })
            .collect();
        serde_json::json!({
            "mode": "memory",
            "total": self.tasks.len(),
            "not_started": count(NOT_STARTED),
            "in_progress": count(IN_PROGRESS),
            "finished": count(FINISHED),
            "counters": self.counters,
            "tasks": tasks,
        })
    }
}

/// The JetStream-backed task list of `--durable`.
struct Durable {
    stream: jetstream::stream::Stream,
    consumer: jetstream::consumer::PullConsumer,
    context: jetstream::Context,
    subject: String,
    counters: Mutex<Counters>,
}

impl Durable {
    async fn open(client: &Client, name: &str, reset_after: Duration) -> anyhow::Result<Self> {
        let context = jetstream::new(client.clone());
        let subject = format!("shoal.tasks.{name}");
        let stream = context
            .get_or_create_stream(jetstream::stream::Config {
                name: name.to_string(),
                subjects: vec![subject.clone()],
                retention: jetstream::stream::RetentionPolicy::WorkQueue,
                storage: jetstream::stream::StorageType::File,
                // A repeated Work.NewTask for the same file within this window is one task.
                duplicate_window: Duration::from_secs(120),
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("cannot open the JetStream stream {name} (is the server running with -js?)")
            })?;
        let consumer: jetstream::consumer::PullConsumer = stream
            .get_or_create_consumer(
                "shoal-master",
                jetstream::consumer::pull::Config {
                    durable_name: Some("shoal-master".to_string()),
                    ack_policy: jetstream::consumer::AckPolicy::Explicit,
                    ack_wait: reset_after,
                    max_ack_pending: 100_000,
                    ..Default::default()
                },
            )
            .await
            .context("cannot open the JetStream consumer shoal-master")?;
        let info = consumer.cached_info();
        if info.config.ack_wait != reset_after {
            tracing::warn!(
                configured = ?reset_after,
                existing = ?info.config.ack_wait,
                "the stream's consumer keeps the reset time it was created with"
            );
        }
        Ok(Self {
            stream,
            consumer,
            context,
            subject,
            counters: Mutex::new(Counters::default()),
        })
    }

    async fn add(&self, uuid: &str) -> anyhow::Result<i32> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", uuid);
        let task = Task {
            uuid: uuid.to_string(),
            ..Default::default()
        };
        let ack = self
            .context
            .publish_with_headers(
                self.subject.clone(),
                headers,
                Bytes::from(task.encode_to_vec()),
            )
            .await
            .context("cannot queue the task")?
            .await
            .context("JetStream did not store the task")?;
        let id = i32::try_from(ack.sequence)
            .context("stream sequence beyond the tutorial's int32 task id")?;
        if !ack.duplicate {
            lock(&self.counters).created += 1;
        }
        Ok(id)
    }

    async fn next(&self) -> anyhow::Result<Option<Task>> {
        let mut batch = self
            .consumer
            .fetch()
            .max_messages(1)
            .messages()
            .await
            .context("fetch")?;
        let Some(message) = batch.next().await else {
            lock(&self.counters).no_work += 1;
            return Ok(None);
        };
        let message = message.map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
        let info = message
            .info()
            .map_err(|e| anyhow::anyhow!("message info: {e}"))?;
        let sequence = info.stream_sequence;
        let delivered = info.delivered;
        let mut task =
            Task::decode(message.payload.clone()).context("a queued task is not a Task")?;
        task.id = i32::try_from(sequence).context("stream sequence beyond int32")?;
        task.state = IN_PROGRESS;
        if delivered > 1 {
            tracing::info!(id = task.id, delivered, "task handed out again");
        }
        lock(&self.counters).handed_out += 1;
        // Not acknowledged: JetStream hands it out again after the ack wait unless a finish
        // deletes it first.
        Ok(Some(task))
    }

    async fn finish(&self, message: &Task) -> Result<(), Refusal> {
        let sequence = u64::try_from(message.id)
            .ok()
            .filter(|s| *s > 0)
            .ok_or(Refusal::UnknownId)?;
        if message.state != IN_PROGRESS && message.state != FINISHED {
            return Err(Refusal::BadState);
        }
        if !valid_name(&message.finisheduuid) {
            return Err(Refusal::BadResult);
        }
        let stored = match self.stream.get_raw_message(sequence).await {
            Ok(stored) => stored,
            // Gone: never existed, or already finished (deleted).
            Err(err) if err.kind() == jetstream::stream::RawMessageErrorKind::NoMessageFound => {
                return Err(Refusal::UnknownId);
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot read a task from the stream");
                return Err(Refusal::UnknownId);
            }
        };
        let task = Task::decode(stored.payload).map_err(|_| Refusal::UnknownId)?;
        if task.uuid != message.uuid {
            return Err(Refusal::WrongUuid);
        }
        match self.stream.delete_message(sequence).await {
            Ok(true) => {
                lock(&self.counters).finished += 1;
                Ok(())
            }
            Ok(false) => Err(Refusal::Duplicate),
            Err(err) => {
                // Deleted by a concurrent finish, or not at all: either way not ours to count.
                tracing::debug!(error = %err, "cannot delete a finished task");
                Err(Refusal::Duplicate)
            }
        }
    }

    async fn status(&self) -> serde_json::Value {
        let mut stream = self.stream.clone();
        let mut consumer = self.consumer.clone();
        let unfinished = stream.info().await.map(|i| i.state.messages).ok();
        let (pending, in_progress, redelivered) = match consumer.info().await {
            Ok(i) => (
                Some(i.num_pending),
                Some(i.num_ack_pending),
                Some(i.num_redelivered),
            ),
            Err(_) => (None, None, None),
        };
        let counters = lock(&self.counters).clone();
        serde_json::json!({
            "mode": "durable",
            "stream": self.stream.cached_info().config.name,
            "unfinished": unfinished,
            "not_started": pending,
            "in_progress": in_progress,
            "redelivered": redelivered,
            "counters": counters,
        })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere cannot leave these structures half-updated in a way that matters
    // more than stopping the master would.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The master's task list, in memory or in JetStream.
#[derive(Clone)]
pub struct Master {
    inner: Arc<Inner>,
}

// One per process, behind an Arc: the size difference costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
enum Inner {
    Memory {
        board: Mutex<Board>,
        reset_after: Duration,
    },
    Durable(Durable),
}

impl Master {
    /// An in-memory master.
    pub fn memory(reset_after: Duration) -> Self {
        Self {
            inner: Arc::new(Inner::Memory {
                board: Mutex::new(Board::default()),
                reset_after,
            }),
        }
    }

    /// A JetStream-backed master on `stream`.
    pub async fn durable(
        client: &Client,
        stream: &str,
        reset_after: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            inner: Arc::new(Inner::Durable(
                Durable::open(client, stream, reset_after).await?,
            )),
        })
    }

    /// Adds a task for the uploaded file `uuid`; returns its id.
    pub async fn add(&self, uuid: &str) -> anyhow::Result<i32> {
        if !valid_name(uuid) {
            bail!("the uuid {uuid:?} is not a file name");
        }
        match &*self.inner {
            Inner::Memory { board, .. } => lock(board).add(uuid).map_err(anyhow::Error::msg),
            Inner::Durable(durable) => durable.add(uuid).await,
        }
    }

    /// The next task to do, if any.
    pub async fn next(&self) -> anyhow::Result<Option<Task>> {
        match &*self.inner {
            Inner::Memory { board, reset_after } => {
                Ok(lock(board).next(Instant::now(), *reset_after))
            }
            Inner::Durable(durable) => durable.next().await,
        }
    }

    /// Applies a finish; a refusal is counted and logged.
    pub async fn finish(&self, message: &Task) -> Result<(), Refusal> {
        let result = match &*self.inner {
            Inner::Memory { board, .. } => lock(board).finish(message),
            Inner::Durable(durable) => durable.finish(message).await,
        };
        match result {
            Ok(()) => metrics::counter!("shoal_nats_tasks_finished_total").increment(1),
            Err(refusal) => {
                self.count_refusal(refusal);
                tracing::warn!(id = message.id, uuid = %message.uuid, reason = refusal.label(), "TaskFinished ignored");
            }
        }
        result
    }

    /// Counts an ignored `TaskFinished` (in `Work.Status` and the metrics).
    fn count_refusal(&self, refusal: Refusal) {
        metrics::counter!("shoal_nats_finish_refused_total", "reason" => refusal.label())
            .increment(1);
        match &*self.inner {
            Inner::Memory { board, .. } => lock(board).counters.refuse(refusal),
            Inner::Durable(durable) => lock(&durable.counters).refuse(refusal),
        }
    }

    /// The state as JSON (what `Work.Status` answers).
    pub async fn status(&self) -> serde_json::Value {
        match &*self.inner {
            Inner::Memory { board, .. } => lock(board).status(),
            Inner::Durable(durable) => durable.status().await,
        }
    }

    /// Memory mode: resets overdue tasks until `stop`, checking several times a second and
    /// at least ten times per reset period, so a reset comes well within a second of its
    /// deadline.
    async fn sweep(&self, stop: CancellationToken) {
        let Inner::Memory { board, reset_after } = &*self.inner else {
            return;
        };
        let period =
            (*reset_after / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let reset = lock(board).reset_expired(Instant::now());
                    if reset > 0 {
                        metrics::counter!("shoal_nats_tasks_reset_total").increment(reset as u64);
                    }
                }
                () = stop.cancelled() => return,
            }
        }
    }

    fn durable_mode(&self) -> bool {
        matches!(&*self.inner, Inner::Durable(_))
    }
}

/// Answers a request with an empty `Task` and the reason in the `Shoal-Error` header.
async fn reply_refusal(client: &Client, message: &async_nats::Message, err: &anyhow::Error) {
    let text = format!("{err:#}");
    connection::reply(
        client,
        message,
        &Task::default(),
        Some(connection::header(ERROR, &text)),
    )
    .await;
}

/// Serves the master's subjects on `client` until `stop`, then drains.
pub async fn serve(client: Client, master: Master, stop: CancellationToken) -> anyhow::Result<()> {
    // Durable masters share the work in a queue group; an in-memory master must see every
    // finish for its own tasks, so it subscribes plainly (run one).
    let subscribe = |subject: &'static str| {
        let client = client.clone();
        let durable = master.durable_mode();
        async move {
            if durable {
                client.queue_subscribe(subject, MASTERS.to_string()).await
            } else {
                client.subscribe(subject).await
            }
            .with_context(|| format!("cannot subscribe to {subject}"))
        }
    };
    let todo = subscribe(TASK_TO_DO).await?;
    let finished = subscribe(TASK_FINISHED).await?;
    let new = subscribe(NEW_TASK).await?;
    let status = subscribe(STATUS).await?;
    connection::settle(&client).await;
    tracing::info!(durable = master.durable_mode(), "master ready");

    let serve_todo = connection::serve(&client, todo, stop.clone(), |message| {
        let client = client.clone();
        let master = master.clone();
        async move {
            tokio::spawn(async move {
                match master.next().await {
                    Ok(Some(task)) => {
                        metrics::counter!("shoal_nats_tasks_handed_out_total").increment(1);
                        connection::reply(&client, &message, &task, None).await;
                    }
                    Ok(None) => {
                        connection::reply(
                            &client,
                            &message,
                            &Task::default(),
                            Some(connection::header(NO_WORK, "true")),
                        )
                        .await;
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "cannot hand out a task");
                        reply_refusal(&client, &message, &err).await;
                    }
                }
            });
        }
    });
    let serve_finished = connection::serve(&client, finished, stop.clone(), |message| {
        let master = master.clone();
        async move {
            tokio::spawn(async move {
                match connection::decode::<Task>(&message) {
                    Ok(task) => {
                        let _ = master.finish(&task).await;
                    }
                    Err(_) => master.count_refusal(Refusal::Undecodable),
                }
            });
        }
    });
    let serve_new = connection::serve(&client, new, stop.clone(), |message| {
        let client = client.clone();
        let master = master.clone();
        async move {
            tokio::spawn(async move {
                let result = match connection::decode::<Task>(&message) {
                    Ok(task) => master.add(&task.uuid).await.map(|id| Task { id, ..task }),
                    Err(err) => Err(err),
                };
                match result {
                    Ok(task) => {
                        tracing::info!(id = task.id, uuid = %task.uuid, "task created");
                        connection::reply(&client, &message, &task, None).await;
                    }
                    Err(err) => reply_refusal(&client, &message, &err).await,
                }
            });
        }
    });
    let serve_status = connection::serve(&client, status, stop.clone(), |message| {
        let client = client.clone();
        let master = master.clone();
        async move {
            let body = master.status().await.to_string();
            if let Some(reply) = message.reply.clone() {
                let _ = client.publish(reply, Bytes::from(body)).await;
            }
        }
    });
    let sweep = master.sweep(stop.clone());
    tokio::join!(serve_todo, serve_finished, serve_new, serve_status, sweep);
    Ok(())
}

/// Uploads the tutorial's test file `count` times to the discovered file server and creates
/// a task for each; retries (with backoff) until each is done or `stop`.
pub async fn create_demo_tasks(
    client: &Client,
    master: &Master,
    count: usize,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<i32>> {
    let http = crate::worker::http_client()?;
    let mut ids = Vec::with_capacity(count);
    for _ in 0..count {
        let uuid = uuid::Uuid::new_v4().to_string();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let server = crate::fileserver::discover(client, Duration::from_secs(1)).await?;
                crate::worker::upload(
                    &http,
                    &server,
                    &uuid,
                    Bytes::from_static(DEMO_CONTENT.as_bytes()),
                )
                .await?;
                master.add(&uuid).await
            }
            .await;
            match result {
                Ok(id) => {
                    ids.push(id);
                    break;
                }
                Err(err) => {
                    let delay = shoal_core::backoff::exponential(
                        Duration::from_millis(200),
                        Duration::from_secs(5),
                        attempt,
                    );
                    tracing::warn!(error = %format!("{err:#}"), retry_in = ?delay, "cannot create a demo task yet");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => {}
                        () = stop.cancelled() => bail!("stopped while creating demo tasks"),
                    }
                }
            }
        }
    }
    tracing::info!(count, "demo tasks created");
    Ok(ids)
}

/// Runs the master until `stop`.
pub async fn run(config: MasterConfig, stop: CancellationToken) -> anyhow::Result<()> {
    let client = connection::connect(&config.nats, "shoal-nats-master", &stop).await?;
    let master = if config.durable {
        Master::durable(&client, &config.stream, config.reset_after).await?
    } else {
        Master::memory(config.reset_after)
    };
    let demo = config.demo.then(|| {
        let client = client.clone();
        let master = master.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            if let Err(err) = create_demo_tasks(&client, &master, DEMO_TASKS, &stop).await {
                tracing::warn!(error = %format!("{err:#}"), "demo tasks not created");
            }
        })
    });
    let result = serve(client.clone(), master, stop).await;
    if let Some(demo) = demo {
        demo.abort();
    }
    connection::close(&client).await;
    result
}
