//! Connecting to NATS: `--nats`, retries with backoff until the server answers, connection
//! events in the log, and small helpers for protobuf requests and replies.
//!
//! The tutorial's programs carry on with a nil connection when the first connect fails
//! (deadlocks, panics, busy loops). Here the first connect is retried with exponential
//! backoff, each failure logged with the URL and the reason, until it succeeds or the process
//! is asked to stop. After that, `async-nats` reconnects by itself (without limit) and
//! resubscribes; disconnections and reconnections are logged.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::{Client, ConnectOptions, Event, HeaderMap, Message};
use bytes::Bytes;
use clap::Args;
use tokio_util::sync::CancellationToken;

/// `--nats`, shared by every `shoal nats` program.
#[derive(Args, Clone, Debug)]
pub struct NatsArgs {
    /// The NATS server (`nats://HOST:PORT`; credentials as `nats://user:pass@HOST:PORT` or
    /// `nats://token@HOST:PORT`).
    #[arg(
        long = "nats",
        env = "SHOAL_NATS_URL",
        value_name = "URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
}

impl NatsArgs {
    /// Arguments for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self { url: url.into() }
    }
}

/// The URL without credentials, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        (None, Some(at)) => format!("***@{}", &url[at + 1..]),
        _ => url.to_string(),
    }
}

/// Connects to NATS as `name`, retrying with backoff (100 ms doubling to 5 s) until the
/// server answers or `stop` is cancelled. Every failed attempt is logged with the reason.
pub async fn connect(
    args: &NatsArgs,
    name: &str,
    stop: &CancellationToken,
) -> anyhow::Result<Client> {
    let shown = redact(&args.url);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let events_name = name.to_string();
        let events_url = shown.clone();
        let options = ConnectOptions::new()
            .name(name)
            .connection_timeout(Duration::from_secs(2))
            .event_callback(move |event| {
                let name = events_name.clone();
                let url = events_url.clone();
                async move { log_event(&name, &url, event) }
            });
        let connecting = options.connect(args.url.as_str());
        let result = tokio::select! {
            result = connecting => result,
            () = stop.cancelled() => bail!("stopped before NATS at {shown} answered"),
        };
        match result {
            Ok(client) => {
                tracing::info!(program = name, url = %shown, "connected to NATS");
                return Ok(client);
            }
            Err(err) => {
                let delay = shoal_core::backoff::exponential(
                    Duration::from_millis(100),
                    Duration::from_secs(5),
                    attempt,
                );
                tracing::warn!(
                    program = name,
                    url = %shown,
                    attempt,
                    error = %err,
                    retry_in = ?delay,
                    "cannot connect to NATS; retrying"
                );
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => bail!("stopped before NATS at {shown} answered"),
                }
            }
        }
    }
}

fn log_event(name: &str, url: &str, event: Event) {
    match event {
        Event::Connected => tracing::info!(program = name, url, "NATS connection (re)established"),
        Event::Disconnected => {
            tracing::warn!(program = name, url, "NATS connection lost; reconnecting");
        }
        Event::SlowConsumer(sid) => {
            tracing::warn!(program = name, sid, "slow consumer: messages were dropped");
        }
        other => tracing::info!(program = name, url, event = %other, "NATS event"),
    }
}

/// Sends `message` as a request on `subject` and waits up to `timeout` for the reply.
pub async fn request<M: prost::Message>(
    client: &Client,
    subject: &'static str,
    message: &M,
    timeout: Duration,
) -> anyhow::Result<Message> {
    let payload = Bytes::from(message.encode_to_vec());
    match tokio::time::timeout(timeout, client.request(subject, payload)).await {
        Ok(reply) => reply.with_context(|| format!("request on {subject} failed")),
        Err(_) => bail!("request on {subject} timed out after {timeout:?}"),
    }
}

/// Waits until the server has processed everything this client sent so far — in particular
/// its subscriptions, so a message published by anyone after this returns reaches them.
/// (`Client::flush` only empties the client's write buffer.) It makes a request to a subject
/// nobody serves; the server's "no responders" answer is the acknowledgement.
pub async fn sync(client: &Client) -> anyhow::Result<()> {
    let subject = format!("_SHOAL.sync.{}", uuid::Uuid::new_v4().simple());
    match tokio::time::timeout(
        Duration::from_secs(10),
        client.request(subject, Bytes::new()),
    )
    .await
    {
        Ok(_) => Ok(()),
        Err(_) => bail!("the NATS server did not answer within 10 s"),
    }
}

/// [`sync`] for responders: a server that does not answer in time is logged, not fatal (the
/// subscriptions are made; the client restores them when it reconnects).
pub async fn settle(client: &Client) {
    if let Err(err) = sync(client).await {
        tracing::warn!(error = %err, "subscriptions not confirmed by the server yet");
    }
}

/// Ends a program's connection: flushes what it published, drains its subscriptions (messages
/// already received are still handled) and waits for the drain to finish — all bounded to 5 s,
/// and skipped when the server is unreachable (a flush would otherwise wait for a reconnection
/// that may never come, and a SIGTERM must not hang).
pub async fn close(client: &Client) {
    if client.connection_state() != async_nats::connection::State::Connected {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let _ = client.flush().await;
        if client.drain().await.is_err() {
            return;
        }
        // The connection's task ends once the drain is done; from then on commands fail.
        while client.flush().await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// Decodes a reply's payload, naming the subject on failure.
pub fn decode<M: prost::Message + Default>(message: &Message) -> anyhow::Result<M> {
    M::decode(message.payload.clone())
        .with_context(|| format!("undecodable message on {}", message.subject))
}

/// Publishes `message` to the reply subject of `request`, with `headers` if any. A request
/// without a reply subject (a plain publish to a request subject) gets nothing.
pub async fn reply<M: prost::Message>(
    client: &Client,
    request: &Message,
    message: &M,
    headers: Option<HeaderMap>,
) {
    let Some(reply) = request.reply.clone() else {
        return;
    };
    let payload = Bytes::from(message.encode_to_vec());
    let sent = match headers {
        Some(headers) => client.publish_with_headers(reply, headers, payload).await,
        None => client.publish(reply, payload).await,
    };
    if let Err(err) = sent {
        tracing::warn!(subject = %request.subject, error = %err, "cannot send a reply");
    }
}

/// One header, for [`reply`].
pub fn header(name: &'static str, value: &str) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name, value);
    headers
}

/// Whether a message carries header `name`.
pub fn has_header(message: &Message, name: &str) -> bool {
    message
        .headers
        .as_ref()
        .is_some_and(|h| h.get(name).is_some())
}

/// The value of header `name`, if any.
pub fn header_value(message: &Message, name: &str) -> Option<String> {
    message
        .headers
        .as_ref()
        .and_then(|h| h.get(name))
        .map(|v| v.as_str().to_string())
}

/// Reads `subscriber` until it ends, calling `handle` for each message; when `stop` is
/// cancelled the subscription is drained (messages already delivered are still handled) and
/// the loop ends with the stream.
pub async fn serve<F, Fut>(
    client: &Client,
    mut subscriber: async_nats::Subscriber,
    stop: CancellationToken,
    mut handle: F,
) where
    F: FnMut(Message) -> Fut,
    Fut: Future<Output = ()>,
{
    use futures::StreamExt as _;
    let mut draining = false;
    loop {
        let next = if draining {
            // Bounded: a server that went away must not hold the process open. Without a
            // connection the drain cannot complete, so only what was already received is
            // handled.
            let wait = if client.connection_state() == async_nats::connection::State::Connected {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(100)
            };
            tokio::time::timeout(wait, subscriber.next())
                .await
                .ok()
                .flatten()
        } else {
            tokio::select! {
                next = subscriber.next() => next,
                () = stop.cancelled() => {
                    draining = true;
                    if let Err(err) = subscriber.drain().await {
                        tracing::warn!(error = %err, "cannot drain a subscription");
                        return;
                    }
                    continue;
                }
            }
        };
        match next {
            Some(message) => handle(message).await,
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_are_not_logged() {
        assert_eq!(redact("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact("nats://u:p@h:1"), "nats://***@h:1");
        assert_eq!(redact("tok@h:1"), "***@h:1");
    }
}
