//! Subscriber addresses: `host:port`, and nothing else.
//!
//! The seed service registers subscribers with `POST /registerAndKeepAlive?address=HOST:PORT`
//! and later POSTs events to `http://` + ADDRESS + `/event`, pasting the raw string into the
//! URL. A caller therefore controls the host, the path and the query of every delivery (and,
//! with `user@`, `#` or `\`, can confuse URL parsers about which host is meant): the hub becomes
//! an open relay and an SSRF vector.
//!
//! shoal parses the address into an [`Address`] before anything else happens. Only three
//! shapes are accepted, each followed by `:port` (decimal, 1–65535):
//!
//! - a DNS name (`sub.internal:8080`), letters, digits, hyphens and underscores, normalised to
//!   lower case, with at most one trailing dot (stripped);
//! - an IPv4 literal in strict dotted-quad form (`10.0.0.7:8080`);
//! - an IPv6 literal in brackets (`[fd00::7]:8080`).
//!
//! Anything resembling a scheme, path, query, fragment, user info or percent-encoding is
//! rejected, and so are "numeric" names that are not a strict dotted quad (`1.2.3`,
//! `0x7f.1`, `999.1.1.1`): some resolvers and URL parsers interpret those as IPv4 addresses,
//! which would let them slip past a name-based review. The canonical [`Display`] form is what
//! gets stored and what [`Address::url`] builds URLs from, so the delivered-to URL never
//! contains caller-chosen text beyond a validated host and a port.
//!
//! Parsing only validates syntax; whether the address may be *reached* is decided by
//! [`crate::guard`].
//!
//! [`Display`]: std::fmt::Display

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Longest DNS name accepted (without the optional trailing dot), per RFC 1035.
const MAX_NAME_LEN: usize = 253;
/// Longest DNS label accepted, per RFC 1035.
const MAX_LABEL_LEN: usize = 63;

/// A validated subscriber address: a host and a non-zero port.
///
/// Obtain one with [`str::parse`]; see the [module docs](self) for the accepted syntax.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    host: Host,
    port: u16,
}

/// The host part of an [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, lower case, without a trailing dot. Never numeric-looking (see the module
    /// docs), so it is never mistaken for an IP address by a resolver.
    Name(String),
    /// An IP address literal (IPv4 dotted quad, or bracketed IPv6 in the text form).
    Ip(IpAddr),
}

/// Why a string is not a valid [`Address`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AddressError {
    /// The input was empty.
    #[error("address is empty; expected host:port")]
    Empty,
    /// The input contained whitespace or a control character.
    #[error("address must be host:port, without whitespace or control characters")]
    Whitespace,
    /// The input contained a character that only appears in URLs (scheme, path, query,
    /// fragment, user info, percent-encoding), never in `host:port`.
    #[error("address must be host:port, without scheme, path, query or user info (found {0:?})")]
    UrlCharacter(char),
    /// There was no `:port` suffix.
    #[error("address must be host:port; the port is missing")]
    MissingPort,
    /// The port was not a decimal number from 1 to 65535.
    #[error("address must be host:port with a port from 1 to 65535 (got {0:?})")]
    InvalidPort(String),
    /// Nothing before the `:port`.
    #[error("address must be host:port; the host is missing")]
    MissingHost,
    /// An IPv6 literal without brackets (ambiguous with the port separator).
    #[error("IPv6 addresses must be written in brackets, e.g. [::1]:8080")]
    UnbracketedIpv6,
    /// The text between `[` and `]` was not an IPv6 address, or the brackets were unbalanced.
    #[error("invalid bracketed IPv6 address; expected e.g. [fd00::1]:8080")]
    InvalidIpv6,
    /// A numeric-looking host that is not a strict dotted-quad IPv4 address.
    #[error(
        "host looks like an IPv4 address but is not a valid dotted quad (use a.b.c.d with each part 0-255)"
    )]
    MalformedIpv4,
    /// A host name that breaks DNS syntax; the message says which rule.
    #[error("invalid host name: {0}")]
    InvalidName(&'static str),
}

impl Address {
    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// The port (never 0).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The plain-HTTP URL for `path` on this address: `http://{canonical}{path}`.
    ///
    /// `path` should start with `/`; if it does not, one is inserted, so the result can never
    /// extend the authority (e.g. `path = "@evil"` yields `http://host:1/@evil`).
    pub fn url(&self, path: &str) -> String {
        let slash = if path.starts_with('/') { "" } else { "/" };
        format!("http://{self}{slash}{path}")
    }
}

impl Host {
    /// The IP address, if this host is a literal.
    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Host::Ip(ip) => Some(*ip),
            Host::Name(_) => None,
        }
    }

    /// The DNS name, if this host is a name.
    pub fn name(&self) -> Option<&str> {
        match self {
            Host::Name(name) => Some(name),
            Host::Ip(_) => None,
        }
    }
}

/// URL-authority form: `name`, `1.2.3.4` or `[v6]`.
impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(name) => f.write_str(name),
            Host::Ip(IpAddr::V4(ip)) => write!(f, "{ip}"),
            Host::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
        }
    }
}

/// Canonical form: `name:port`, `1.2.3.4:port` or `[v6]:port`. Parsing it yields the same
/// [`Address`].
impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl FromStr for Address {
    type Err = AddressError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AddressError::Empty);
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(AddressError::Whitespace);
        }
        if let Some(c) = s
            .chars()
            .find(|c| matches!(c, '/' | '?' | '#' | '@' | '\\' | '%'))
        {
            return Err(AddressError::UrlCharacter(c));
        }

        if let Some(rest) = s.strip_prefix('[') {
            let (inside, after) = rest.split_once(']').ok_or(AddressError::InvalidIpv6)?;
            let port = after.strip_prefix(':').ok_or(if after.is_empty() {
                AddressError::MissingPort
            } else {
                AddressError::InvalidIpv6
            })?;
            let ip: Ipv6Addr = inside.parse().map_err(|_| AddressError::InvalidIpv6)?;
            return Ok(Address {
                host: Host::Ip(IpAddr::V6(ip)),
                port: parse_port(port)?,
            });
        }
        if s.contains(['[', ']']) {
            return Err(AddressError::InvalidIpv6);
        }

        let (host, port) = s.rsplit_once(':').ok_or(AddressError::MissingPort)?;
        if host.contains(':') {
            return Err(
                if s.parse::<Ipv6Addr>().is_ok() || host.parse::<Ipv6Addr>().is_ok() {
                    AddressError::UnbracketedIpv6
                } else {
                    AddressError::InvalidName("':' may only separate the host from the port")
                },
            );
        }
        let port = parse_port(port)?;
        if host.is_empty() {
            return Err(AddressError::MissingHost);
        }
        Ok(Address {
            host: parse_host(host)?,
            port,
        })
    }
}

/// A decimal port from 1 to 65535, digits only (no sign, no spaces).
fn parse_port(port: &str) -> Result<u16, AddressError> {
    let invalid = || AddressError::InvalidPort(port.to_owned());
    if port.is_empty() {
        return Err(AddressError::MissingPort);
    }
    // The digit and length checks keep `parse` from accepting a sign and bound the work.
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => Err(invalid()),
        Ok(port) => Ok(port),
    }
}

/// An unbracketed host: a strict IPv4 dotted quad or a DNS name.
fn parse_host(host: &str) -> Result<Host, AddressError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    if name.is_empty() {
        return Err(AddressError::InvalidName("empty label"));
    }
    // WHATWG URL "ends in a number": such hosts are parsed as IPv4 (in decimal, octal or hex,
    // with 1-4 parts) by browsers and by many resolvers, so they are either a strict dotted
    // quad or nothing.
    if ends_in_number(name) {
        return name
            .parse::<Ipv4Addr>()
            .map(|ip| Host::Ip(IpAddr::V4(ip)))
            .map_err(|_| AddressError::MalformedIpv4);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(AddressError::InvalidName("longer than 253 characters"));
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(AddressError::InvalidName("empty label"));
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(AddressError::InvalidName("label longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(AddressError::InvalidName(
                "only letters, digits, '-', '_' and '.' are allowed",
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(AddressError::InvalidName(
                "labels must not start or end with '-'",
            ));
        }
    }
    Ok(Host::Name(name.to_ascii_lowercase()))
}

/// Whether the last label is all decimal digits or `0x`/`0X` followed by hex digits.
fn ends_in_number(name: &str) -> bool {
    let last = name.rsplit('.').next().unwrap_or(name);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.get(..2) {
        Some("0x" | "0X") => last[2..].bytes().all(|b| b.is_ascii_hexdigit()),
        _ => false,
    }
}

impl serde::Serialize for Address {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Address {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Address {
        s.parse()
            .unwrap_or_else(|e| panic!("{s:?} should parse: {e}"))
    }

    #[test]
    fn accepts_names_and_normalises() {
        let a = parse("Sub.Example.COM:8080");
        assert_eq!(a.host(), &Host::Name("sub.example.com".into()));
        assert_eq!(a.port(), 8080);
        assert_eq!(a.to_string(), "sub.example.com:8080");

        assert_eq!(parse("localhost:1").to_string(), "localhost:1");
        assert_eq!(parse("host.:65535").to_string(), "host:65535");
        assert_eq!(
            parse("my_svc.internal:80").to_string(),
            "my_svc.internal:80"
        );
        assert_eq!(parse("a-b.c-d:80").to_string(), "a-b.c-d:80");
        assert_eq!(parse("x1.y2:80").to_string(), "x1.y2:80");
        assert_eq!(parse("1e100:80").to_string(), "1e100:80");
        assert_eq!(parse("host:080").port(), 80);

        let label = "a".repeat(63);
        assert_eq!(
            parse(&format!("{label}.b:1")).to_string(),
            format!("{label}.b:1")
        );
        // 4 labels of 63 + 3 dots = 255 > 253; 3 x 63 + 61 + 3 dots = 253.
        let long = format!("{label}.{label}.{label}.{}", "a".repeat(61));
        assert_eq!(long.len(), 253);
        assert_eq!(
            parse(&format!("{long}:1")).host().name(),
            Some(long.as_str())
        );
        assert_eq!(
            parse(&format!("{long}.:1")).host().name(),
            Some(long.as_str())
        );
    }

    #[test]
    fn accepts_ip_literals() {
        let a = parse("1.2.3.4:80");
        assert_eq!(a.host(), &Host::Ip("1.2.3.4".parse().expect("ip")));
        assert_eq!(a.to_string(), "1.2.3.4:80");
        assert_eq!(
            parse("127.0.0.1:9").host().ip(),
            Some([127, 0, 0, 1].into())
        );

        let a = parse("[::1]:80");
        assert_eq!(a.host(), &Host::Ip(IpAddr::V6(Ipv6Addr::LOCALHOST)));
        assert_eq!(a.to_string(), "[::1]:80");
        assert_eq!(parse("[FD00:0::7]:8080").to_string(), "[fd00::7]:8080");
        assert_eq!(
            parse("[::ffff:169.254.169.254]:80").to_string(),
            "[::ffff:169.254.169.254]:80"
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["a.b:1", "1.2.3.4:80", "[fe80::1]:443", "Host.:80", "[::]:1"] {
            let a = parse(s);
            assert_eq!(parse(&a.to_string()), a);
        }
    }

    #[test]
    fn url_uses_canonical_form() {
        assert_eq!(parse("Host.:80").url("/event"), "http://host:80/event");
        assert_eq!(parse("[::1]:8080").url("/event"), "http://[::1]:8080/event");
        assert_eq!(parse("h:1").url("@evil"), "http://h:1/@evil");
    }

    #[test]
    fn serde_as_string() {
        let a = parse("Sub.Test:80");
        assert_eq!(
            serde_json::to_string(&a).expect("serialize"),
            "\"sub.test:80\""
        );
        let back: Address = serde_json::from_str("\"sub.test:80\"").expect("deserialize");
        assert_eq!(back, a);
        assert!(serde_json::from_str::<Address>("\"evil/x\"").is_err());
    }

    #[test]
    fn rejects_bad_addresses() {
        let bad = [
            "",
            "evil/x?",
            "host:1/x",
            "user@host:1",
            "host:99999",
            "host:65536",
            "host:0",
            "host:00000",
            "host",
            ":80",
            "http://host:80",
            "http:/host:80",
            "host:80?x=1",
            "host:80#f",
            "ho st:80",
            " host:80",
            "host:80\n",
            "host:\t80",
            "host:-1",
            "host:+80",
            "host:8 0",
            "host:",
            "host:80:80",
            "::1:80",
            "::1",
            "fe80::1:80",
            "[::1]",
            "[::1]:",
            "[::1]80",
            "[::1]:0",
            "[1.2.3.4]:80",
            "[::1:80",
            "::1]:80",
            "[fe80::1%25eth0]:80",
            "host]:80",
            "a..b:80",
            ".a:80",
            "a.b..:80",
            ".:80",
            "-a.b:80",
            "a-.b:80",
            "a.-b:80",
            "%2f:80",
            "host\\x:80",
            "h\u{e9}llo:80",
            "\u{ff41}:80",
            "a*b:80",
            "1.2.3:80",
            "999.1.1.1:80",
            "0x7f.1:80",
            "0x7f000001:80",
            "0X7F:80",
            "2130706433:80",
            "127.1:80",
            "0177.0.0.1:80",
            "01.2.3.4:80",
            "1.2.3.4.5:80",
            "example.123:80",
        ];
        for s in bad {
            assert!(s.parse::<Address>().is_err(), "{s:?} should be rejected");
        }
        let too_long_label = format!("{}.b:1", "a".repeat(64));
        assert!(too_long_label.parse::<Address>().is_err());
        let label = "a".repeat(63);
        let too_long = format!("{label}.{label}.{label}.{}:1", "a".repeat(62));
        assert!(too_long.parse::<Address>().is_err());
    }

    #[test]
    fn errors_explain() {
        let err = "http://host:80".parse::<Address>().expect_err("rejected");
        assert!(
            err.to_string()
                .contains("without scheme, path, query or user info"),
            "{err}"
        );
        assert_eq!(
            "::1:80".parse::<Address>(),
            Err(AddressError::UnbracketedIpv6)
        );
        assert_eq!("host".parse::<Address>(), Err(AddressError::MissingPort));
        assert_eq!("host:".parse::<Address>(), Err(AddressError::MissingPort));
        assert_eq!(":80".parse::<Address>(), Err(AddressError::MissingHost));
        assert_eq!(
            "host:+80".parse::<Address>(),
            Err(AddressError::InvalidPort("+80".into()))
        );
        assert_eq!(
            "1.2.3:80".parse::<Address>(),
            Err(AddressError::MalformedIpv4)
        );
    }
}
