//! `shoal nats user-provider` and `shoal nats time-teller`: the two backends behind the
//! frontend, each in a queue group so that any number of instances share the requests and
//! each request is answered once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use async_nats::Client;
use clap::Args;
use shoal_core::config::{LogFormat, MetricsArgs};
use tokio_util::sync::CancellationToken;

use crate::connection::{self, NatsArgs};
use crate::subjects::{TIME_TELLER, TIME_TELLERS, USER_NAME_BY_ID, USER_PROVIDERS};
use crate::{Time, User};

/// `shoal nats user-provider` flags.
#[derive(Args, Clone, Debug)]
pub struct UserProviderConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// More users, as a JSON object of id → name (`{"5": "Eve"}`), added to the built-in
    /// 1 Bob, 2 John, 3 Dan, 4 Kate (an id in the file replaces the built-in name).
    #[arg(long, env = "SHOAL_NATS_USERS", value_name = "FILE")]
    pub users: Option<PathBuf>,
    /// `/healthz` and `/metrics`.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// `shoal nats time-teller` flags.
#[derive(Args, Clone, Debug)]
pub struct TimeTellerConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// `/healthz` and `/metrics`.
    #[command(flatten)]
    pub metrics: MetricsArgs,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// The tutorial's users.
pub fn seed_users() -> HashMap<String, String> {
    [("1", "Bob"), ("2", "John"), ("3", "Dan"), ("4", "Kate")]
        .into_iter()
        .map(|(id, name)| (id.to_string(), name.to_string()))
        .collect()
}

/// The seed users plus those in `file`.
pub fn load_users(file: Option<&std::path::Path>) -> anyhow::Result<HashMap<String, String>> {
    let mut users = seed_users();
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read the users file {}", file.display()))?;
        let extra: HashMap<String, String> = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is not a JSON object of id → name ({{\"5\": \"Eve\"}})",
                file.display()
            )
        })?;
        users.extend(extra);
    }
    Ok(users)
}

/// Answers `UserNameById` requests in the `userNameByIdProviders` queue group until `stop`,
/// then drains. An unknown id is answered with an empty name; an undecodable request is
/// counted and not answered.
pub async fn serve_users(
    client: Client,
    users: HashMap<String, String>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let users = Arc::new(users);
    let subscriber = client
        .queue_subscribe(USER_NAME_BY_ID, USER_PROVIDERS.to_string())
        .await
        .context("cannot subscribe to UserNameById")?;
    connection::settle(&client).await;
    tracing::info!(
        subject = USER_NAME_BY_ID,
        group = USER_PROVIDERS,
        users = users.len(),
        "user provider ready"
    );
    connection::serve(&client, subscriber, stop, |message| {
        let client = client.clone();
        let users = users.clone();
        async move {
            let Ok(mut user) = connection::decode::<User>(&message) else {
                metrics::counter!("shoal_nats_bad_requests_total", "subject" => USER_NAME_BY_ID)
                    .increment(1);
                tracing::debug!("undecodable UserNameById request");
                return;
            };
            user.name = users.get(&user.id).cloned().unwrap_or_default();
            metrics::counter!("shoal_nats_replies_total", "subject" => USER_NAME_BY_ID)
                .increment(1);
            connection::reply(&client, &message, &user, None).await;
        }
    })
    .await;
    Ok(())
}

/// The current time as the tutorial formats it (RFC 3339, UTC, whole seconds).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

/// Answers `TimeTeller` requests in the `TimeTellers` queue group until `stop`, then drains.
pub async fn serve_time(client: Client, stop: CancellationToken) -> anyhow::Result<()> {
    let subscriber = client
        .queue_subscribe(TIME_TELLER, TIME_TELLERS.to_string())
        .await
        .context("cannot subscribe to TimeTeller")?;
    connection::settle(&client).await;
    tracing::info!(
        subject = TIME_TELLER,
        group = TIME_TELLERS,
        "time teller ready"
    );
    connection::serve(&client, subscriber, stop, |message| {
        let client = client.clone();
        async move {
            let time = Time {
                time: now_rfc3339(),
            };
            metrics::counter!("shoal_nats_replies_total", "subject" => TIME_TELLER).increment(1);
            connection::reply(&client, &message, &time, None).await;
        }
    })
    .await;
    Ok(())
}
