//! `shoal gossip` flags.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use shoal_core::config::{LogFormat, Token, parse_duration};

use crate::node::NodeOptions;
use crate::wire::{ClusterKey, MAX_NAME_LEN};

/// The cluster port when an address has none (Serf's and the seed's).
pub const DEFAULT_CLUSTER_PORT: u16 = 7946;

/// Configuration of `shoal gossip`.
#[derive(Args, Clone, Debug)]
pub struct Config {
    /// Cluster (SWIM, UDP) address the other nodes reach this one at: `IP[:PORT]`, port 7946
    /// when none is given. Also read from `ADVERTISE_ADDR`, as the seed does.
    #[arg(long, env = "SHOAL_GOSSIP_ADVERTISE", value_name = "IP[:PORT]")]
    pub advertise: Option<String>,

    /// UDP address to bind for cluster traffic; default: the advertise address (use
    /// `0.0.0.0:7946` behind NAT).
    #[arg(long, env = "SHOAL_GOSSIP_BIND", value_name = "IP:PORT")]
    pub bind: Option<String>,

    /// A member to join through (`IP[:PORT]` or `HOST[:PORT]`); repeat for several. Also read
    /// from `CLUSTER_ADDR`, as the seed does. If none answers, the node starts a new cluster,
    /// says so, and keeps trying.
    #[arg(
        long,
        env = "SHOAL_GOSSIP_JOIN",
        value_name = "IP[:PORT]",
        value_delimiter = ','
    )]
    pub join: Vec<String>,

    /// Where the HTTP API listens. Its address is announced to the others in the membership
    /// data (with the advertise IP when bound to 0.0.0.0).
    #[arg(
        long,
        env = "SHOAL_GOSSIP_LISTEN",
        value_name = "ADDR",
        default_value = "127.0.0.1:8081"
    )]
    pub listen: String,

    /// HTTP address announced to the others, when it differs from `--listen` (NAT, proxies).
    #[arg(long, env = "SHOAL_GOSSIP_HTTP_ADVERTISE", value_name = "IP:PORT")]
    pub http_advertise: Option<SocketAddr>,

    /// This node's name, unique in the cluster; it breaks ties between simultaneous sets.
    /// Default: the advertise address.
    #[arg(long, env = "SHOAL_GOSSIP_NAME")]
    pub name: Option<String>,

    /// The value before any set (the seed's 42).
    #[arg(
        long,
        env = "SHOAL_GOSSIP_INITIAL",
        default_value_t = 42,
        allow_hyphen_values = true
    )]
    pub initial: i64,

    /// How often each node sends its version to `--fanout` random members (anti-entropy).
    #[arg(long, env = "SHOAL_GOSSIP_INTERVAL", value_parser = parse_duration, default_value = "2s")]
    pub interval: Duration,

    /// Members contacted per anti-entropy round.
    #[arg(long, env = "SHOAL_GOSSIP_FANOUT", default_value_t = 2)]
    pub fanout: usize,

    /// Versions whose generation is further ahead of this node's clock are refused, so one
    /// forged message cannot pin the cluster to its value.
    #[arg(long, env = "SHOAL_GOSSIP_MAX_DRIFT", value_parser = parse_duration, default_value = "1m")]
    pub max_drift: Duration,

    /// Shared secret (at least 16 bytes) that authenticates cluster datagrams and /notify
    /// calls; traffic without it is dropped and counted. Every node needs the same key.
    #[arg(
        long,
        env = "SHOAL_GOSSIP_CLUSTER_KEY",
        value_name = "SECRET",
        hide_env_values = true
    )]
    pub cluster_key: Option<ClusterKey>,

    /// Run without --cluster-key on a cluster address other hosts can reach. Without a key,
    /// one forged datagram can join the cluster, change the value and make every node send
    /// requests to addresses of its choosing; only for a network nobody else is on.
    #[arg(long, env = "SHOAL_GOSSIP_INSECURE")]
    pub insecure: bool,

    /// SWIM probe period.
    #[arg(long, env = "SHOAL_GOSSIP_PROBE_PERIOD", value_parser = parse_duration, default_value = "1s")]
    pub probe_period: Duration,

    /// How long a suspected member has to refute the suspicion before it is declared dead.
    #[arg(long, env = "SHOAL_GOSSIP_SUSPECT_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub suspect_timeout: Duration,

    /// Shared secret: when set, every HTTP route but /healthz requires
    /// `Authorization: Bearer <token>`, and nodes send it to each other.
    #[arg(
        long,
        env = "SHOAL_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<Token>,

    /// Log output format.
    #[arg(long, env = "SHOAL_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where a node binds and what it announces, resolved from [`Config`].
#[derive(Debug)]
pub struct Resolved {
    /// UDP address to bind.
    pub bind: SocketAddr,
    /// Everything else.
    pub options: NodeOptions,
}

impl Config {
    /// Resolves addresses (the seed's `ADVERTISE_ADDR` and `CLUSTER_ADDR` too) and checks the
    /// flags against each other.
    pub async fn resolve(&self) -> anyhow::Result<Resolved> {
        let advertise_text = self
            .advertise
            .clone()
            .or_else(|| {
                std::env::var("ADVERTISE_ADDR")
                    .ok()
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or_else(|| "127.0.0.1".to_owned());
        let advertise = resolve_one(&advertise_text)
            .await
            .with_context(|| format!("invalid --advertise {advertise_text:?}"))?;
        if advertise.ip().is_unspecified() {
            anyhow::bail!(
                "--advertise must be an address the other nodes can reach, not {advertise}; \
                 bind to every interface with --bind 0.0.0.0:{}",
                advertise.port()
            );
        }
        let bind = match &self.bind {
            Some(text) => text
                .parse::<SocketAddr>()
                .with_context(|| format!("invalid --bind {text:?}: expected IP:PORT"))?,
            None => advertise,
        };
        let mut join_texts = self.join.clone();
        if join_texts.is_empty()
            && let Ok(seed) = std::env::var("CLUSTER_ADDR")
            && !seed.is_empty()
        {
            join_texts.push(seed);
        }
        let mut join = Vec::new();
        for text in &join_texts {
            let addr = resolve_one(text)
                .await
                .with_context(|| format!("invalid --join {text:?}"))?;
            if addr != advertise {
                join.push(addr);
            }
        }
        if let Some(name) = &self.name
            && (name.is_empty() || !crate::wire::valid_name(name))
        {
            anyhow::bail!("--name must be 1 to {MAX_NAME_LEN} bytes of printable text");
        }
        if self.fanout == 0 {
            anyhow::bail!("--fanout must be at least 1");
        }
        if self.interval.is_zero() || self.probe_period < Duration::from_millis(100) {
            anyhow::bail!("--interval must be positive and --probe-period at least 100ms");
        }
        if self.suspect_timeout.is_zero() {
            anyhow::bail!("--suspect-timeout must be positive");
        }
        let options = NodeOptions {
            name: self.name.clone(),
            swim_advertise: Some(advertise),
            http_advertise: self.http_advertise,
            join,
            initial: self.initial,
            interval: self.interval,
            fanout: self.fanout,
            max_drift: self.max_drift,
            cluster_key: self.cluster_key.clone(),
            token: self.token.clone(),
            probe_period: self.probe_period,
            suspect_timeout: self.suspect_timeout,
            ..NodeOptions::new()
        };
        Ok(Resolved { bind, options })
    }
}

/// `IP`, `IP:PORT`, `HOST` or `HOST:PORT` (port 7946 by default) to one socket address.
pub async fn resolve_one(text: &str) -> anyhow::Result<SocketAddr> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.parse::<std::net::IpAddr>() {
        return Ok(SocketAddr::new(ip, DEFAULT_CLUSTER_PORT));
    }
    let with_port = match text.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => text.to_owned(),
        _ => format!("{text}:{DEFAULT_CLUSTER_PORT}"),
    };
    tokio::net::lookup_host(&with_port)
        .await
        .with_context(|| format!("cannot resolve {with_port}"))?
        .next()
        .with_context(|| format!("{with_port} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn addresses_default_to_the_cluster_port() {
        assert_eq!(
            resolve_one("10.0.0.7").await.expect("ip"),
            "10.0.0.7:7946".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            resolve_one("10.0.0.7:9000").await.expect("ip:port"),
            "10.0.0.7:9000".parse::<SocketAddr>().expect("addr")
        );
        assert_eq!(
            resolve_one("localhost:9001").await.expect("host").port(),
            9001
        );
        assert!(resolve_one("10.0.0.7:notaport").await.is_err());
    }
}
