//! `shoal nats submit FILES…`: uploads comma-separated files to the discovered file server,
//! creates a task for each with `Work.NewTask`, waits for their `Work.TaskFinished`
//! messages, and returns each file's word counts.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::Client;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use shoal_core::config::parse_duration;

use crate::Task;
use crate::connection::{self, NatsArgs};
use crate::headers::ERROR;
use crate::subjects::{NEW_TASK, TASK_FINISHED};

/// `shoal nats submit` flags.
#[derive(Args, Clone, Debug)]
pub struct SubmitConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// How long to wait for all results.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// The comma-separated files to count.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
}

/// One file's outcome.
#[derive(Debug)]
pub struct Submitted {
    /// The file as given.
    pub file: PathBuf,
    /// The task id, once created.
    pub id: Option<i32>,
    /// The result file's text (`word : count` lines), or why there is none.
    pub result: Result<String, String>,
}

/// Submits every file and waits up to `timeout` for all results.
pub async fn submit(
    client: &Client,
    files: &[PathBuf],
    timeout: Duration,
) -> anyhow::Result<Vec<Submitted>> {
    let http = crate::worker::http_client()?;
    // Subscribed before any task exists, so no finish can be missed.
    let mut finished = client
        .subscribe(TASK_FINISHED)
        .await
        .context("cannot subscribe to Work.TaskFinished")?;
    connection::sync(client).await?;
    let server = crate::fileserver::discover(client, Duration::from_secs(2)).await?;
    let mut outcomes: Vec<Submitted> = Vec::new();
    let mut waiting: HashMap<String, usize> = HashMap::new();
    for file in files {
        let index = outcomes.len();
        outcomes.push(Submitted {
            file: file.clone(),
            id: None,
            result: Err("not submitted".into()),
        });
        let created = async {
            let body = tokio::fs::read(file)
                .await
                .with_context(|| format!("cannot read {}", file.display()))?;
            let uuid = uuid::Uuid::new_v4().to_string();
            crate::worker::upload(&http, &server, &uuid, Bytes::from(body)).await?;
            let reply = connection::request(
                client,
                NEW_TASK,
                &Task {
                    uuid: uuid.clone(),
                    ..Default::default()
                },
                Duration::from_secs(5),
            )
            .await
            .context("no master answered Work.NewTask")?;
            if let Some(reason) = connection::header_value(&reply, ERROR) {
                bail!("the master refused the task: {reason}");
            }
            let task: Task = connection::decode(&reply)?;
            if task.uuid != uuid {
                bail!("the master answered for another file ({:?})", task.uuid);
            }
            anyhow::Ok((uuid, task.id))
        }
        .await;
        match created {
            Ok((uuid, id)) => {
                outcomes[index].id = Some(id);
                outcomes[index].result = Err("no result yet".into());
                waiting.insert(uuid, index);
            }
            Err(err) => outcomes[index].result = Err(format!("{err:#}")),
        }
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while !waiting.is_empty() {
        let message = match tokio::time::timeout_at(deadline, finished.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => {
                for index in waiting.values() {
                    outcomes[*index].result = Err(format!("not finished within {timeout:?}"));
                }
                break;
            }
        };
        let Ok(task) = connection::decode::<Task>(&message) else {
            continue;
        };
        let Some(&index) = waiting.get(&task.uuid) else {
            continue;
        };
        if outcomes[index].id != Some(task.id) {
            continue;
        }
        match crate::worker::download(&http, &server, &task.finisheduuid).await {
            Ok(body) => {
                outcomes[index].result = Ok(String::from_utf8_lossy(&body).into_owned());
                waiting.remove(&task.uuid);
            }
            // A forged or broken finish: keep waiting for a real one.
            Err(err) => {
                tracing::warn!(error = %format!("{err:#}"), id = task.id, "cannot fetch a result")
            }
        }
    }
    Ok(outcomes)
}
