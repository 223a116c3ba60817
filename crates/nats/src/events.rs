//! `shoal nats publish` and `shoal nats subscribe`: the tutorial's three event forms with
//! protobuf `TextMessage`s — a plain publish on `Messaging.Text.Standard`, request/reply on
//! `Messaging.Text.Respond`, and a Rust channel bound to `Messaging.Text.Channel`.
//!
//! The publisher waits until everything sent on the channel is published and flushed before
//! it returns (the tutorial's can exit before its last channel message leaves), and a failed
//! request is reported as failed instead of printing an empty reply.

use std::time::Duration;

use anyhow::Context as _;
use async_nats::Client;
use bytes::Bytes;
use clap::Args;
use futures::StreamExt as _;
use prost::Message as _;
use shoal_core::config::{LogFormat, parse_duration};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TextMessage;
use crate::connection::{self, NatsArgs};
use crate::subjects::{TEXT_CHANNEL, TEXT_RESPOND, TEXT_STANDARD};

/// `shoal nats publish` flags.
#[derive(Args, Clone, Debug)]
pub struct PublishConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Messages per form (the tutorial sends 5 of each).
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub count: u32,
    /// How long each request waits for its reply.
    #[arg(long, value_name = "DURATION", default_value = "200ms", value_parser = parse_duration)]
    pub timeout: Duration,
}

/// `shoal nats subscribe` flags.
#[derive(Args, Clone, Debug)]
pub struct SubscribeConfig {
    /// NATS connection.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// A channel bound to a subject: every message sent on the returned sender is published on
/// `subject`. Drop the sender and await the handle to know all were handed to the client
/// (then flush the client to know the server has them); the handle returns how many.
pub fn bind_send<M>(
    client: Client,
    subject: &'static str,
) -> (mpsc::Sender<M>, JoinHandle<anyhow::Result<u64>>)
where
    M: prost::Message + Send + 'static,
{
    let (tx, mut rx) = mpsc::channel::<M>(64);
    let handle = tokio::spawn(async move {
        let mut sent = 0;
        while let Some(message) = rx.recv().await {
            client
                .publish(subject, Bytes::from(message.encode_to_vec()))
                .await
                .with_context(|| format!("cannot publish on {subject}"))?;
            sent += 1;
        }
        Ok(sent)
    });
    (tx, handle)
}

/// A channel fed by a subject (the tutorial's `BindRecvChan`): every message on `subject`
/// that decodes as `M` arrives on the returned receiver; undecodable ones are logged and
/// skipped. The subscription exists when this returns.
pub async fn bind_recv<M>(
    client: &Client,
    subject: &'static str,
) -> anyhow::Result<mpsc::Receiver<M>>
where
    M: prost::Message + Default + Send + 'static,
{
    let subscriber = client
        .subscribe(subject)
        .await
        .with_context(|| format!("cannot subscribe to {subject}"))?;
    Ok(forward(subscriber))
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct PublishReport {
    /// Ids published on `Messaging.Text.Standard`.
    pub standard: Vec<i32>,
    /// Each request's id and its reply, or why there was none.
    pub replies: Vec<(i32, Result<TextMessage, String>)>,
    /// How many went out through the channel on `Messaging.Text.Channel`.
    pub channel: u64,
}

impl PublishReport {
    /// How many requests got no reply.
    pub fn failed_requests(&self) -> usize {
        self.replies.iter().filter(|(_, r)| r.is_err()).count()
    }
}

/// The tutorial's publisher: `count` messages of each form, ids counting up from 0.
/// Returns once the server has processed everything sent.
pub async fn publish(
    client: &Client,
    count: u32,
    timeout: Duration,
) -> anyhow::Result<PublishReport> {
    let count = i32::try_from(count).context("count too large")?;
    let mut report = PublishReport::default();
    for id in 0..count {
        let message = TextMessage {
            id,
            body: "Hello over standard!".into(),
        };
        client
            .publish(TEXT_STANDARD, Bytes::from(message.encode_to_vec()))
            .await
            .context("cannot publish")?;
        report.standard.push(id);
    }
    for id in count..2 * count {
        let message = TextMessage {
            id,
            body: "Hello, please respond!".into(),
        };
        let reply = match connection::request(client, TEXT_RESPOND, &message, timeout).await {
            Ok(reply) => connection::decode::<TextMessage>(&reply).map_err(|e| format!("{e:#}")),
            Err(err) => Err(format!("{err:#}")),
        };
        report.replies.push((id, reply));
    }
    let (sender, forwarder) = bind_send::<TextMessage>(client.clone(), TEXT_CHANNEL);
    for id in 2 * count..3 * count {
        let message = TextMessage {
            id,
            body: "Hello over channel!".into(),
        };
        sender
            .send(message)
            .await
            .context("the channel's publisher stopped")?;
    }
    drop(sender);
    report.channel = forwarder
        .await
        .context("the channel's publisher failed")??;
    // Not just written to the socket: processed by the server, so nothing sent is lost when
    // the process exits right after.
    connection::sync(client)
        .await
        .context("cannot flush to the NATS server")?;
    Ok(report)
}

/// Which form a message arrived by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `Messaging.Text.Standard`.
    Standard,
    /// `Messaging.Text.Respond` (answered `Responding!` with the same id).
    Respond,
    /// `Messaging.Text.Channel`.
    Channel,
}

/// A message the subscriber received.
#[derive(Debug, Clone)]
pub struct Received {
    /// How it came.
    pub form: Form,
    /// The message.
    pub message: TextMessage,
}

impl std::fmt::Display for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.form {
            Form::Standard => "standard message",
            Form::Respond => "ask for response message",
            Form::Channel => "channel'ed message",
        };
        write!(
            f,
            "Got {kind}: \"{}\" with the Id {}.",
            self.message.body, self.message.id
        )
    }
}

/// The subscriber's three subscriptions, made (and confirmed by the server) before
/// [`Subscriptions::run`].
pub struct Subscriptions {
    client: Client,
    standard: async_nats::Subscriber,
    respond: async_nats::Subscriber,
    channel: async_nats::Subscriber,
}

impl Subscriptions {
    /// Subscribes to the three subjects and waits until the server has them.
    pub async fn start(client: &Client) -> anyhow::Result<Self> {
        let standard = client.subscribe(TEXT_STANDARD).await.context("subscribe")?;
        let respond = client.subscribe(TEXT_RESPOND).await.context("subscribe")?;
        let channel = client.subscribe(TEXT_CHANNEL).await.context("subscribe")?;
        connection::sync(client).await?;
        Ok(Self {
            client: client.clone(),
            standard,
            respond,
            channel,
        })
    }

    /// Hands every message to `sink` (and answers requests) until `stop`, then drains.
    pub async fn run(self, stop: CancellationToken, sink: mpsc::UnboundedSender<Received>) {
        let Self {
            client,
            standard,
            respond,
            channel,
        } = self;
        let on = |form: Form| {
            let sink = sink.clone();
            let client = client.clone();
            move |message: async_nats::Message| {
                let sink = sink.clone();
                let client = client.clone();
                async move {
                    let Ok(text) = connection::decode::<TextMessage>(&message) else {
                        tracing::warn!(subject = %message.subject, "undecodable TextMessage skipped");
                        return;
                    };
                    if form == Form::Respond {
                        let answer = TextMessage {
                            id: text.id,
                            body: "Responding!".into(),
                        };
                        connection::reply(&client, &message, &answer, None).await;
                    }
                    let _ = sink.send(Received {
                        form,
                        message: text,
                    });
                }
            }
        };
        // The channel form: a subject feeding a Rust channel, read by its own loop.
        let (channel_tx, mut channel_rx) = mpsc::channel::<TextMessage>(64);
        let feed = connection::serve(&client, channel, stop.clone(), move |message| {
            let channel_tx = channel_tx.clone();
            async move {
                match connection::decode::<TextMessage>(&message) {
                    Ok(text) => {
                        let _ = channel_tx.send(text).await;
                    }
                    Err(_) => {
                        tracing::warn!(subject = %message.subject, "undecodable TextMessage skipped")
                    }
                }
            }
        });
        let read = {
            let sink = sink.clone();
            async move {
                while let Some(message) = channel_rx.recv().await {
                    let _ = sink.send(Received {
                        form: Form::Channel,
                        message,
                    });
                }
            }
        };
        tokio::join!(
            connection::serve(&client, standard, stop.clone(), on(Form::Standard)),
            connection::serve(&client, respond, stop.clone(), on(Form::Respond)),
            feed,
            read,
        );
    }
}

/// Reads messages from `subscriber` into a channel of `M`.
pub fn forward<M>(mut subscriber: async_nats::Subscriber) -> mpsc::Receiver<M>
where
    M: prost::Message + Default + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<M>(64);
    tokio::spawn(async move {
        while let Some(message) = subscriber.next().await {
            match M::decode(message.payload) {
                Ok(decoded) => {
                    if tx.send(decoded).await.is_err() {
                        return;
                    }
                }
                Err(_) => tracing::warn!(subject = %message.subject, "undecodable message skipped"),
            }
        }
    });
    rx
}
