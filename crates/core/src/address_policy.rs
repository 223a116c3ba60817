//! Which IP addresses a request made on a client's behalf may reach (the server-side request
//! forgery guard's policy). The multicast hub checks subscribers with it (through its
//! resolving guard, `shoal_multicast::guard`), and gossip checks the HTTP addresses of members
//! before pushing to them.
//!
//! A [`Policy`] decides per IP address, in this order, after normalising IPv6 addresses that
//! reach an IPv4 address (mapped, compatible, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`) to that
//! address:
//!
//! 1. refused if it matches an operator deny network;
//! 2. allowed if it matches an operator allow network;
//! 3. refused if it is in the built-in blocklist: unspecified (`0.0.0.0/8`, `::/128`),
//!    link-local including cloud metadata (`169.254.0.0/16`, `fe80::/10`), multicast
//!    (`224.0.0.0/4`, `ff00::/8`), broadcast (`255.255.255.255/32`), IETF protocol
//!    assignments (`192.0.0.0/24`), and the AWS IPv6, Alibaba and Oracle Cloud metadata
//!    addresses;
//! 4. allowed.
//!
//! Loopback and private ranges are allowed by default: these are internal services whose
//! peers usually live on private addresses.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A built-in blocklist entry: the network and the human description used in refusals.
struct Blocked {
    net: IpNet,
    what: &'static str,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> IpNet {
    IpNet::new_assert(IpAddr::V4(Ipv4Addr::new(a, b, c, d)), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> IpNet {
    let [a, b, c, d, e, f, g, h] = segments;
    IpNet::new_assert(IpAddr::V6(Ipv6Addr::new(a, b, c, d, e, f, g, h)), prefix)
}

/// The built-in blocklist, most specific entries first so refusals name the sharpest reason.
const BUILTIN_BLOCKLIST: &[Blocked] = &[
    Blocked {
        net: v4(169, 254, 169, 254, 32),
        what: "link-local (cloud metadata)",
    },
    Blocked {
        net: v6([0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254], 128),
        what: "the AWS IPv6 cloud metadata address",
    },
    Blocked {
        net: v4(100, 100, 100, 200, 32),
        what: "the Alibaba Cloud metadata address",
    },
    Blocked {
        net: v4(192, 0, 0, 192, 32),
        what: "the Oracle Cloud metadata address",
    },
    Blocked {
        net: v4(192, 0, 0, 0, 24),
        what: "IETF protocol assignments (192.0.0.0/24, not routable)",
    },
    Blocked {
        net: v4(0, 0, 0, 0, 8),
        what: "unspecified (0.0.0.0/8, \"this network\")",
    },
    Blocked {
        net: v6([0; 8], 128),
        what: "unspecified",
    },
    Blocked {
        net: v4(169, 254, 0, 0, 16),
        what: "link-local",
    },
    Blocked {
        net: v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10),
        what: "link-local",
    },
    Blocked {
        net: v4(224, 0, 0, 0, 4),
        what: "multicast",
    },
    Blocked {
        net: v6([0xff00, 0, 0, 0, 0, 0, 0, 0], 8),
        what: "multicast",
    },
    Blocked {
        net: v4(255, 255, 255, 255, 32),
        what: "broadcast",
    },
];

/// The operator's allow and deny networks on top of the built-in blocklist.
///
/// See the [module docs](self) for the decision order. `Policy::default()` has no operator
/// rules: only the built-in blocklist applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Why an IP address was refused by a [`Policy`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Reason {
    /// It matched an operator deny network (`--deny-cidr`).
    Denied(IpNet),
    /// It is in the built-in blocklist.
    Blocklisted {
        /// The blocklist network it matched.
        net: IpNet,
        /// What that network is, e.g. `"link-local (cloud metadata)"`.
        what: &'static str,
    },
}

/// An IP address the policy refuses, and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    host: Option<String>,
    ip: IpAddr,
    effective: IpAddr,
    reason: Reason,
}

impl Policy {
    /// A policy with operator `allow` and `deny` networks (see the module docs for precedence:
    /// deny, then allow, then the built-in blocklist).
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self { allow, deny }
    }

    /// The operator allow networks.
    pub fn allow(&self) -> &[IpNet] {
        &self.allow
    }

    /// The operator deny networks.
    pub fn deny(&self) -> &[IpNet] {
        &self.deny
    }

    /// Whether `ip` may be reached.
    ///
    /// IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible (`::a.b.c.d`) and NAT64
    /// (`64:ff9b::a.b.c.d`) addresses are judged as the IPv4 address they reach. Operator deny
    /// networks match either form; allow networks and the blocklist match the effective
    /// address only, so allowing `::/0` does not open `::ffff:169.254.169.254`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        let effective = effective_ip(ip);
        let refuse = |reason| Refused {
            host: None,
            ip,
            effective,
            reason,
        };
        if let Some(net) = self
            .deny
            .iter()
            .find(|net| net.contains(&effective) || net.contains(&ip))
        {
            return Err(refuse(Reason::Denied(*net)));
        }
        if self.allow.iter().any(|net| net.contains(&effective)) {
            return Ok(());
        }
        if let Some(b) = BUILTIN_BLOCKLIST
            .iter()
            .find(|b| b.net.contains(&effective))
        {
            return Err(refuse(Reason::Blocklisted {
                net: b.net,
                what: b.what,
            }));
        }
        Ok(())
    }
}

/// The address a connection to `ip` actually reaches: the embedded IPv4 address for mapped,
/// compatible, NAT64 well-known-prefix and 6to4 IPv6 addresses, else `ip` itself.
fn effective_ip(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let s = v6.segments();
    let embedded = Ipv4Addr::from_bits(v6.to_bits() as u32);
    // IPv4-compatible (::a.b.c.d, deprecated), excluding :: and ::1 which are IPv6's own
    // unspecified and loopback addresses.
    if s[..6] == [0; 6] && v6 != Ipv6Addr::UNSPECIFIED && v6 != Ipv6Addr::LOCALHOST {
        return IpAddr::V4(embedded);
    }
    // NAT64 well-known prefix (RFC 6052): translated to IPv4 by the network.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return IpAddr::V4(embedded);
    }
    // 6to4 (RFC 3056): 2002:AABB:CCDD::/48 is relayed to the IPv4 address AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return IpAddr::V4(Ipv4Addr::from_bits(
            (u32::from(s[1]) << 16) | u32::from(s[2]),
        ));
    }
    ip
}

impl Refused {
    /// The refused address as resolved or written.
    pub fn ip(&self) -> IpAddr {
        self.ip
    }

    /// The address judged: the embedded IPv4 address for mapped IPv6 forms, else [`ip`].
    ///
    /// [`ip`]: Refused::ip
    pub fn effective_ip(&self) -> IpAddr {
        self.effective
    }

    /// The host name that resolved to the address, when there was one.
    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    /// Why it was refused.
    pub fn reason(&self) -> &Reason {
        &self.reason
    }

    /// The same refusal, naming the host name that resolved to the address.
    #[must_use]
    pub fn with_host(mut self, host: &str) -> Self {
        self.host = Some(host.to_owned());
        self
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Denied(net) => write!(f, "denied by --deny-cidr {net}"),
            Reason::Blocklisted { what, .. } => f.write_str(what),
        }
    }
}

/// E.g. `169.254.169.254 is link-local (cloud metadata)`, `10.0.0.1 is denied by --deny-cidr
/// 10.0.0.0/8`, `meta.test resolves to 169.254.169.254, which is link-local (cloud metadata)`.
impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host} resolves to {}, which", self.ip)?,
            None => write!(f, "{}", self.ip)?,
        }
        if self.effective != self.ip {
            write!(f, " (reaching {})", self.effective)?;
        }
        write!(f, " is {}", self.reason)
    }
}

/// Parses a `--allow-cidr`/`--deny-cidr` value: a network such as `10.0.0.0/8` or `fd00::/8`,
/// or a bare IP address meaning just that address (`/32` or `/128`). Host bits are cleared
/// (`10.1.2.3/8` becomes `10.0.0.0/8`). Suitable for clap's `value_parser`.
pub fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let s = s.trim();
    if let Ok(net) = s.parse::<IpNet>() {
        return Ok(net.trunc());
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "invalid network {s:?}: expected CIDR notation such as 10.0.0.0/8 or fd00::/8, or a single IP address"
    ))
}
