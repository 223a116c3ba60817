//! `shoal gossip`: a one-value replicated database on SWIM membership.
//!
//! Nodes form a cluster with SWIM (the [`foca`] crate: suspicion, indirect probes, graceful
//! leave, automatic rejoin) over UDP. Each holds one 64-bit value with a version; a set on
//! any node reaches every member at once and all nodes converge on the same winner, because
//! versions are totally ordered (hybrid-logical-clock generation, then origin node). The
//! seed's HTTP API is kept: `GET /get`, `/set/{n}`, `/notify/{value}/{generation}`.
//!
//! # Layout
//! - [`register`]: the value, its versions and the clock that orders them.
//! - [`wire`]: datagram framing, the cluster key's authentication.
//! - [`member`]: the identity nodes gossip and the `/members` view.
//! - [`node`]: a running node: membership, spreading, anti-entropy.
//! - [`http`]: the routes.
//! - [`config`]: the flags.

pub mod config;
pub mod http;
pub mod member;
pub mod node;
pub mod register;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context as _;
use tokio::net::UdpSocket;

pub use crate::config::Config;
pub use crate::member::{MemberState, MemberView, NodeId};
pub use crate::node::{Node, NodeOptions, StatsSnapshot};
pub use crate::register::Versioned;
pub use crate::wire::ClusterKey;

/// Runs a node until `shutdown` resolves, then leaves the cluster gracefully.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let resolved = config.resolve().await?;
    let socket = UdpSocket::bind(resolved.bind)
        .await
        .with_context(|| format!("cannot bind the cluster address {}", resolved.bind))?;
    let listener = shoal_core::server::bind(&config.listen).await?;
    let mut options = resolved.options;
    // `--advertise IP:0` lets the system pick the port; announce the one it picked.
    if let Some(advertise) = options.swim_advertise
        && advertise.port() == 0
    {
        let bound = socket.local_addr().context("UDP socket has no address")?;
        options.swim_advertise = Some(SocketAddr::new(advertise.ip(), bound.port()));
    }
    let advertise = options.swim_advertise;
    if options.cluster_key.is_none()
        && (!resolved.bind.ip().is_loopback() || advertise.is_some_and(|a| !a.ip().is_loopback()))
    {
        if !config.insecure {
            anyhow::bail!(
                "the cluster address {} is reachable from the network and no --cluster-key is \
                 set: anyone who can reach it could join the cluster and change the value. Set \
                 --cluster-key (the same on every node), or --insecure on a network nobody \
                 else is on",
                resolved.bind
            );
        }
        tracing::warn!(
            bind = %resolved.bind,
            "the cluster address is reachable from the network and no --cluster-key is set \
             (--insecure): anyone who can reach it can join the cluster and change the value"
        );
    }
    let node = Node::start(options, socket, listener).await?;
    shutdown.await;
    node.leave().await;
    Ok(())
}
