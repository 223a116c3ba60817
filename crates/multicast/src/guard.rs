//! The SSRF guard: which network addresses deliveries may reach.
//!
//! Subscribers are registered by users, so every delivery is a request to a user-chosen
//! destination made from inside our network. Left alone that is a server-side request forgery
//! primitive: register `169.254.169.254:80` (or a name resolving there) and the hub POSTs to the
//! cloud metadata service on the attacker's behalf.
//!
//! # Policy
//!
//! A [`Policy`] decides per IP address, in this order (after normalising IPv4-mapped,
//! IPv4-compatible and NAT64 `64:ff9b::/96` IPv6 addresses to the IPv4 address they reach):
//!
//! 1. refused if it matches an operator `--deny-cidr` network;
//! 2. allowed if it matches an operator `--allow-cidr` network;
//! 3. refused if it is in the built-in blocklist: unspecified (`0.0.0.0/8`, `::/128`),
//!    link-local including cloud metadata (`169.254.0.0/16`, `fe80::/10`), multicast
//!    (`224.0.0.0/4`, `ff00::/8`), broadcast (`255.255.255.255/32`), and the AWS IPv6 and
//!    Alibaba Cloud metadata addresses (`fd00:ec2::254/128`, `100.100.100.200/32`);
//! 4. allowed.
//!
//! Loopback and private ranges are allowed by default: the hub is an internal bus and its
//! subscribers usually live on private addresses. Operators who expose registration to less
//! trusted callers deny them with `--deny-cidr`.
//!
//! # Names and rebinding
//!
//! A name is resolved through an injectable [`Resolver`], and the address is refused if *any*
//! resolved IP is refused: a name resolving to a mix of public and metadata addresses is an
//! attack signal, not a load-balancing accident. Checking at registration is not enough,
//! because DNS can change between the check and the connection (DNS rebinding), so
//! [`GuardedResolve`] plugs the same check into reqwest's connector: every connection made by a
//! client built with it only reaches addresses that passed the policy at connect time.
//!
//! reqwest does **not** call its resolver for IP-literal hosts, so IP literals must be checked
//! with [`Guard::check`] before each request. A client with a proxy configured connects to the
//! proxy instead, bypassing the guard entirely, so delivery clients must be built with
//! `no_proxy()`.
//!
//! # Tripwire
//!
//! A [`Guard`] may carry a tripwire, a predicate shown every socket address that passed the
//! policy. If it returns `false`, the check fails with [`GuardError::Tripwire`]. It is a last
//! line of defence for tests: they install a tripwire that lets only loopback through and
//! records anything else, so even a broken policy never makes a test send a packet to a
//! metadata address.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use futures::future::BoxFuture;

pub use shoal_core::address_policy::{Policy, Reason, Refused, parse_cidr};

use crate::address::{Address, Host};

/// Name resolution, injectable so tests (and operators pinning names) need no DNS.
pub trait Resolver: Send + Sync + 'static {
    /// Resolves `host` to socket addresses with `port`.
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>>;
}

/// The system resolver (`getaddrinfo`, via [`tokio::net::lookup_host`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// A fixed name → addresses table; unknown names fail with [`io::ErrorKind::NotFound`].
///
/// Names are matched case-insensitively and without a trailing dot. For tests, and for pinning
/// subscriber names to known addresses.
#[derive(Clone, Debug, Default)]
pub struct StaticResolver {
    names: HashMap<String, Vec<IpAddr>>,
}

impl StaticResolver {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) `name` → `ips`, builder style.
    pub fn with(mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.insert(name, ips);
        self
    }

    /// Adds (or replaces) `name` → `ips`.
    pub fn insert(&mut self, name: &str, ips: impl IntoIterator<Item = IpAddr>) {
        self.names
            .insert(normalise_name(name), ips.into_iter().collect());
    }
}

fn normalise_name(name: &str) -> String {
    name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase()
}

impl Resolver for StaticResolver {
    fn lookup(&self, host: &str, port: u16) -> BoxFuture<'static, io::Result<Vec<SocketAddr>>> {
        let result = match self.names.get(&normalise_name(host)) {
            Some(ips) => Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect()),
            None => Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} is not in the static resolver table"),
            )),
        };
        Box::pin(futures::future::ready(result))
    }
}

/// A predicate shown every address that passed the policy; `false` stops the connection.
type Tripwire = Arc<dyn Fn(SocketAddr) -> bool + Send + Sync>;

/// A [`Policy`] together with the resolver used for names, and an optional tripwire.
pub struct Guard {
    policy: Policy,
    resolver: Arc<dyn Resolver>,
    tripwire: Option<Tripwire>,
}

/// Why [`Guard::check`] (or a connection through [`GuardedResolve`]) was stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GuardError {
    /// An address (given, or one the name resolved to) is refused by the policy.
    #[error("{0}")]
    Refused(#[from] Refused),
    /// The name could not be resolved.
    #[error("could not resolve {host}: {source}")]
    Resolve {
        /// The name being resolved.
        host: String,
        /// The resolver's error.
        source: io::Error,
    },
    /// The name resolved to no addresses at all.
    #[error("{0} resolved to no addresses")]
    NoAddresses(String),
    /// The tripwire rejected this address although the policy allowed it.
    #[error("tripwire refused a connection to {0}")]
    Tripwire(SocketAddr),
}

impl Guard {
    /// A guard applying `policy`, resolving names with `resolver`, without a tripwire.
    pub fn new(policy: Policy, resolver: Arc<dyn Resolver>) -> Self {
        Self {
            policy,
            resolver,
            tripwire: None,
        }
    }

    /// Adds a tripwire: every address that passed the policy is shown to `tripwire`, and one
    /// for which it returns `false` fails the check with [`GuardError::Tripwire`].
    pub fn with_tripwire(
        mut self,
        tripwire: impl Fn(SocketAddr) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.tripwire = Some(Arc::new(tripwire));
        self
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Checks `address` now and returns the socket addresses it may be reached at.
    ///
    /// An IP literal is checked directly. A name is resolved, and refused if *any* of its
    /// addresses is refused; resolving to nothing is an error. The tripwire, if any, then sees
    /// every address.
    ///
    /// Call this at registration, and before every request to an IP literal: reqwest does not
    /// consult [`GuardedResolve`] for IP-literal hosts.
    pub async fn check(&self, address: &Address) -> Result<Vec<SocketAddr>, GuardError> {
        match address.host() {
            Host::Ip(ip) => self.vet(None, vec![SocketAddr::new(*ip, address.port())]),
            Host::Name(name) => self.resolve(name, address.port()).await,
        }
    }

    /// Resolves `host` (a name or an IP literal) with `port` and vets every address, as
    /// [`Guard::check`] does.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, GuardError> {
        let literal = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return self.vet(None, vec![SocketAddr::new(ip, port)]);
        }
        let addrs =
            self.resolver
                .lookup(host, port)
                .await
                .map_err(|source| GuardError::Resolve {
                    host: host.to_owned(),
                    source,
                })?;
        self.vet(Some(host), addrs)
    }

    /// Applies the policy to all of `addrs` (all must pass), then the tripwire.
    fn vet(
        &self,
        host: Option<&str>,
        mut addrs: Vec<SocketAddr>,
    ) -> Result<Vec<SocketAddr>, GuardError> {
        let mut seen = std::collections::HashSet::new();
        addrs.retain(|a| seen.insert(*a));
        if addrs.is_empty() {
            let host = host.map_or_else(String::new, str::to_owned);
            return Err(GuardError::NoAddresses(host));
        }
        for addr in &addrs {
            if let Err(refused) = self.policy.check(addr.ip()) {
                let refused = match host {
                    Some(host) => refused.with_host(host),
                    None => refused,
                };
                tracing::warn!(%refused, "ssrf guard refused an address");
                return Err(refused.into());
            }
        }
        if let Some(tripwire) = &self.tripwire {
            let mut tripped = None;
            for addr in &addrs {
                if !tripwire(*addr) && tripped.is_none() {
                    tripped = Some(*addr);
                }
            }
            if let Some(addr) = tripped {
                tracing::error!(%addr, "ssrf guard tripwire fired");
                return Err(GuardError::Tripwire(addr));
            }
        }
        Ok(addrs)
    }
}

impl fmt::Debug for Guard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guard")
            .field("policy", &self.policy)
            .field("tripwire", &self.tripwire.is_some())
            .finish_non_exhaustive()
    }
}

/// A [`reqwest::dns::Resolve`] that applies a [`Guard`] to every connection a client makes.
///
/// Install it with `reqwest::Client::builder().dns_resolver(Arc::new(GuardedResolve::new(guard)))`
/// (and `.no_proxy()`: a proxy would bypass it). Each connection then resolves the host through
/// the guard's resolver and connects only to addresses that passed the policy and tripwire at
/// that moment, which defeats DNS rebinding between registration and delivery.
///
/// reqwest skips the resolver for IP-literal hosts: check those with [`Guard::check`] before
/// each request.
#[derive(Clone, Debug)]
pub struct GuardedResolve {
    guard: Arc<Guard>,
}

impl GuardedResolve {
    /// Wraps `guard` for use as a reqwest resolver.
    pub fn new(guard: Arc<Guard>) -> Self {
        Self { guard }
    }
}

impl reqwest::dns::Resolve for GuardedResolve {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = Arc::clone(&self.guard);
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // reqwest replaces port 0 with the URL's port.
            let addrs = guard.resolve(&host, 0).await?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use ipnet::{IpNet, Ipv4Net};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn net4(s: &str) -> Ipv4Net {
        s.parse().expect("ipv4 net")
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    fn net(s: &str) -> IpNet {
        parse_cidr(s).expect("cidr")
    }

    fn addr(s: &str) -> Address {
        s.parse().expect("address")
    }

    fn refused_what(policy: &Policy, s: &str) -> &'static str {
        match policy.check(ip(s)) {
            Err(refused) => match refused.reason() {
                Reason::Blocklisted { what, .. } => what,
                other => panic!("{s} should be blocklisted, got {other:?}"),
            },
            Ok(()) => panic!("{s} should be blocklisted"),
        }
    }

    #[test]
    fn default_policy_blocklist() {
        let p = Policy::default();
        for s in [
            "0.0.0.0",
            "0.1.2.3",
            "::",
            "169.254.169.254",
            "169.254.0.1",
            "fe80::1",
            "febf::1",
            "224.0.0.1",
            "239.255.255.250",
            "ff02::1",
            "255.255.255.255",
            "fd00:ec2::254",
            "100.100.100.200",
        ] {
            assert!(p.check(ip(s)).is_err(), "{s} should be refused");
        }
        assert_eq!(
            refused_what(&p, "169.254.169.254"),
            "link-local (cloud metadata)"
        );
        assert_eq!(refused_what(&p, "169.254.1.1"), "link-local");
        assert_eq!(refused_what(&p, "fe80::1"), "link-local");
        assert_eq!(refused_what(&p, "224.0.0.1"), "multicast");
        assert_eq!(refused_what(&p, "ff02::1"), "multicast");
        assert_eq!(refused_what(&p, "255.255.255.255"), "broadcast");
        assert_eq!(refused_what(&p, "::"), "unspecified");

        let err = p.check(ip("169.254.169.254")).expect_err("refused");
        assert_eq!(
            err.to_string(),
            "169.254.169.254 is link-local (cloud metadata)"
        );
    }

    #[test]
    fn default_policy_allows_internal_and_public() {
        let p = Policy::default();
        for s in [
            "127.0.0.1",
            "::1",
            "10.0.0.1",
            "172.16.0.1",
            "192.168.1.1",
            "100.64.0.1",
            "fd00::1",
            "fd00:ec2::253",
            "8.8.8.8",
            "2001:db8::1",
            "169.253.255.255",
            "169.255.0.0",
            "255.255.255.254",
        ] {
            assert!(p.check(ip(s)).is_ok(), "{s} should be allowed");
        }
    }

    #[test]
    fn mapped_ipv6_is_judged_as_ipv4() {
        let p = Policy::default();
        let err = p.check(ip("::ffff:169.254.169.254")).expect_err("refused");
        assert_eq!(err.effective_ip(), ip("169.254.169.254"));
        assert_eq!(
            err.to_string(),
            "::ffff:169.254.169.254 (reaching 169.254.169.254) is link-local (cloud metadata)"
        );
        assert!(p.check(ip("::169.254.169.254")).is_err());
        assert!(p.check(ip("64:ff9b::169.254.169.254")).is_err());
        let err = p
            .check(ip("2002:a9fe:a9fe::"))
            .expect_err("6to4 of the metadata address");
        assert_eq!(err.effective_ip(), ip("169.254.169.254"));
        assert!(
            p.check(ip("2002:7f00:1::")).is_ok(),
            "6to4 of 127.0.0.1 is allowed as it is"
        );
        assert!(p.check(ip("192.0.0.192")).is_err());
        assert!(p.check(ip("192.0.0.8")).is_err());
        assert!(p.check(ip("::ffff:0.0.0.0")).is_err());
        assert!(p.check(ip("::ffff:127.0.0.1")).is_ok());
        // :: and ::1 keep their IPv6 meaning.
        assert!(p.check(ip("::1")).is_ok());
        assert!(p.check(ip("::")).is_err());

        // Allowing all of IPv6 does not open mapped metadata; denying IPv4 covers mapped forms.
        let p = Policy::new(vec![net("::/0")], vec![]);
        assert!(p.check(ip("::ffff:169.254.169.254")).is_err());
        let p = Policy::new(vec![], vec![net("127.0.0.0/8")]);
        assert!(p.check(ip("::ffff:127.0.0.1")).is_err());
    }

    #[test]
    fn operator_deny_and_allow() {
        let p = Policy::new(
            vec![],
            vec![net("127.0.0.0/8"), net("::1"), net("10.0.0.0/8")],
        );
        assert!(p.check(ip("127.0.0.1")).is_err());
        assert!(p.check(ip("::1")).is_err());
        assert!(p.check(ip("192.168.0.1")).is_ok());
        let err = p.check(ip("10.0.0.1")).expect_err("denied");
        assert_eq!(err.reason(), &Reason::Denied(net("10.0.0.0/8")));
        assert_eq!(
            err.to_string(),
            "10.0.0.1 is denied by --deny-cidr 10.0.0.0/8"
        );

        let p = Policy::new(vec![net("169.254.10.0/24")], vec![]);
        assert!(p.check(ip("169.254.10.7")).is_ok());
        assert!(p.check(ip("169.254.169.254")).is_err());
        assert!(p.check(ip("169.254.11.1")).is_err());

        // Deny beats allow.
        let p = Policy::new(vec![net("10.0.0.0/8")], vec![net("10.1.0.0/16")]);
        assert!(p.check(ip("10.2.0.1")).is_ok());
        assert!(p.check(ip("10.1.0.1")).is_err());
        let p = Policy::new(vec![net("169.254.169.254")], vec![net("169.254.169.254")]);
        assert!(matches!(
            p.check(ip("169.254.169.254"))
                .map_err(|r| r.reason().clone()),
            Err(Reason::Denied(_))
        ));
    }

    #[test]
    fn parse_cidr_forms() {
        assert_eq!(parse_cidr("10.0.0.0/8"), Ok(IpNet::V4(net4("10.0.0.0/8"))));
        assert_eq!(parse_cidr("10.1.2.3/8"), Ok(IpNet::V4(net4("10.0.0.0/8"))));
        assert_eq!(parse_cidr("127.0.0.1"), Ok(IpNet::V4(net4("127.0.0.1/32"))));
        assert_eq!(parse_cidr("::1").map(|n| n.prefix_len()), Ok(128));
        assert_eq!(
            parse_cidr("fd00::/8").map(|n| n.to_string()),
            Ok("fd00::/8".into())
        );
        assert_eq!(parse_cidr(" 0.0.0.0/0 ").map(|n| n.prefix_len()), Ok(0));
        for bad in ["", "10.0.0.0/33", "::/129", "host", "10.0.0/8", "10.0.0.0/"] {
            let err = parse_cidr(bad).expect_err(bad);
            assert!(err.contains("invalid network"), "{err}");
        }
    }

    fn static_guard(policy: Policy) -> Guard {
        let resolver = StaticResolver::new()
            .with("sub.test", [ip("127.0.0.1")])
            .with("meta.test", [ip("169.254.169.254")])
            .with("mixed.test", [ip("127.0.0.1"), ip("169.254.169.254")])
            .with("public.test", [ip("203.0.113.7")])
            .with("empty.test", []);
        Guard::new(policy, Arc::new(resolver))
    }

    /// A tripwire that lets loopback through and records everything else.
    fn loopback_tripwire() -> (Arc<Mutex<Vec<SocketAddr>>>, impl Fn(SocketAddr) -> bool) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let tripwire = move |a: SocketAddr| {
            if a.ip().is_loopback() {
                true
            } else {
                record.lock().expect("tripwire lock").push(a);
                false
            }
        };
        (seen, tripwire)
    }

    #[tokio::test]
    async fn guard_checks_names_and_literals() {
        let g = static_guard(Policy::default());
        assert_eq!(
            g.check(&addr("sub.test:8080")).await.expect("allowed"),
            vec!["127.0.0.1:8080".parse::<SocketAddr>().expect("sa")]
        );
        assert_eq!(
            g.check(&addr("SUB.test.:1")).await.expect("allowed").len(),
            1
        );
        assert_eq!(
            g.check(&addr("10.0.0.1:80")).await.expect("allowed"),
            vec!["10.0.0.1:80".parse::<SocketAddr>().expect("sa")]
        );

        let err = g.check(&addr("meta.test:80")).await.expect_err("refused");
        assert!(matches!(err, GuardError::Refused(_)), "{err:?}");
        assert_eq!(
            err.to_string(),
            "meta.test resolves to 169.254.169.254, which is link-local (cloud metadata)"
        );
        let err = g.check(&addr("mixed.test:80")).await.expect_err("refused");
        assert!(matches!(err, GuardError::Refused(ref r) if r.ip() == ip("169.254.169.254")));
        let err = g
            .check(&addr("169.254.169.254:80"))
            .await
            .expect_err("refused");
        assert!(matches!(err, GuardError::Refused(_)));
        let err = g
            .check(&addr("[fd00:ec2::254]:80"))
            .await
            .expect_err("refused");
        assert!(matches!(err, GuardError::Refused(_)));

        let err = g
            .check(&addr("unknown.test:80"))
            .await
            .expect_err("unresolved");
        assert!(
            matches!(&err, GuardError::Resolve { host, source }
                if host == "unknown.test" && source.kind() == io::ErrorKind::NotFound),
            "{err:?}"
        );
        let err = g
            .check(&addr("empty.test:80"))
            .await
            .expect_err("no addresses");
        assert!(
            matches!(&err, GuardError::NoAddresses(h) if h == "empty.test"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn tripwire_blocks_even_with_permissive_policy() {
        let permissive = Policy::new(vec![net("0.0.0.0/0"), net("::/0")], vec![]);
        let (seen, tripwire) = loopback_tripwire();
        let g = static_guard(permissive).with_tripwire(tripwire);

        assert!(g.check(&addr("sub.test:80")).await.is_ok());
        let err = g.check(&addr("meta.test:80")).await.expect_err("tripped");
        let meta: SocketAddr = "169.254.169.254:80".parse().expect("sa");
        assert!(
            matches!(err, GuardError::Tripwire(a) if a == meta),
            "{err:?}"
        );
        let err = g.check(&addr("mixed.test:80")).await.expect_err("tripped");
        assert!(
            matches!(err, GuardError::Tripwire(a) if a == meta),
            "{err:?}"
        );
        assert!(g.check(&addr("public.test:80")).await.is_err());
        assert_eq!(seen.lock().expect("lock").len(), 3);
    }

    #[tokio::test]
    async fn policy_refuses_before_tripwire() {
        let (seen, tripwire) = loopback_tripwire();
        let g = static_guard(Policy::default()).with_tripwire(tripwire);
        assert!(matches!(
            g.check(&addr("meta.test:80")).await,
            Err(GuardError::Refused(_))
        ));
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn system_resolver_resolves_localhost_literal() {
        let g = Guard::new(Policy::default(), Arc::new(SystemResolver));
        assert!(g.check(&addr("127.0.0.1:80")).await.is_ok());
        assert!(g.resolve("[::1]", 80).await.is_ok());
        let addrs = SystemResolver.lookup("127.0.0.1", 9).await.expect("lookup");
        assert_eq!(
            addrs,
            vec!["127.0.0.1:9".parse::<SocketAddr>().expect("sa")]
        );
    }

    /// A one-route HTTP/1.1 server on 127.0.0.1 answering `ok` and counting connections.
    async fn tiny_server() -> (u16, Arc<Mutex<usize>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("local addr").port();
        let connections = Arc::new(Mutex::new(0));
        let count = Arc::clone(&connections);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                *count.lock().expect("count lock") += 1;
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        )
                        .await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        (port, connections)
    }

    fn guarded_client(guard: Guard) -> reqwest::Client {
        shoal_core::client::install_crypto_provider();
        reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolve::new(Arc::new(guard))))
            .no_proxy()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("client")
    }

    /// Finds a [`GuardError`] in an error's source chain.
    fn guard_error<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a GuardError> {
        let mut current = Some(err);
        while let Some(e) = current {
            if let Some(g) = e.downcast_ref::<GuardError>() {
                return Some(g);
            }
            current = e.source();
        }
        None
    }

    #[tokio::test]
    async fn reqwest_connects_through_guarded_resolve() {
        let (port, connections) = tiny_server().await;
        let (seen, tripwire) = loopback_tripwire();
        let client = guarded_client(static_guard(Policy::default()).with_tripwire(tripwire));

        let response = client
            .get(format!("http://sub.test:{port}/"))
            .send()
            .await
            .expect("request to sub.test");
        assert_eq!(response.status(), reqwest::StatusCode::OK);
        assert_eq!(response.text().await.expect("body"), "ok");
        assert_eq!(*connections.lock().expect("lock"), 1);
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn reqwest_refuses_metadata_before_connecting() {
        let (seen, tripwire) = loopback_tripwire();
        let client = guarded_client(static_guard(Policy::default()).with_tripwire(tripwire));

        let err = client
            .get("http://meta.test:80/latest/meta-data/")
            .send()
            .await
            .expect_err("must be refused");
        assert!(err.is_connect(), "{err:?}");
        let guard_err = guard_error(&err).expect("GuardError in the source chain");
        assert!(matches!(guard_err, GuardError::Refused(_)), "{guard_err:?}");
        // The policy stopped it: the tripwire never even saw a non-loopback address.
        assert!(seen.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn reqwest_tripwire_stops_what_a_broken_policy_lets_through() {
        let permissive = Policy::new(vec![net("0.0.0.0/0"), net("::/0")], vec![]);
        let (seen, tripwire) = loopback_tripwire();
        let client = guarded_client(static_guard(permissive).with_tripwire(tripwire));

        let err = client
            .get("http://meta.test:80/")
            .send()
            .await
            .expect_err("must be stopped");
        let guard_err = guard_error(&err).expect("GuardError in the source chain");
        assert!(
            matches!(guard_err, GuardError::Tripwire(_)),
            "{guard_err:?}"
        );
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].ip(), ip("169.254.169.254"));
    }
}
