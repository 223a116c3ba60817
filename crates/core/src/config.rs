//! Flags shared by every shoal service, and the value parsers behind them.
//!
//! Common flags read their environment variable as `SHOAL_<FLAG>` (`SHOAL_KV`,
//! `SHOAL_TOKEN`, …) so one environment can configure a whole deployment; flags that belong
//! to one service (its `--listen`, its `--data-dir`) use `SHOAL_<SUBCOMMAND>_<FLAG>`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Arg, Args, ValueEnum};

/// Flags every service understands, flattened into each subcommand's own `Config`.
#[derive(Args, Clone, Debug, Default)]
pub struct CommonArgs {
    /// The k/v store this service registers in and discovers its peers through
    /// (`http://HOST:PORT` or `HOST:PORT`). Several replicas of one store (sharing a
    /// PostgreSQL database): repeat the flag or separate them with commas; any live one is
    /// used.
    #[arg(
        long = "kv",
        env = "SHOAL_KV",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub kv: Vec<String>,

    /// Shared secret: when set, every route but /healthz requires
    /// `Authorization: Bearer <token>`, and shoal clients send it.
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

    /// Connections the HTTP server keeps open at once [default: 4096, or three quarters of
    /// the open-files limit when that is lower]. At the limit the longest-idle ones are
    /// closed to make room; when none is idle, new ones are refused.
    #[arg(long, env = "SHOAL_MAX_CONNECTIONS", value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: Option<u32>,

    /// Time a client has to send a request's headers, counted from when its connection is
    /// ready for one; an idle keep-alive connection is closed after it too [default: 30s].
    #[arg(long, env = "SHOAL_HEADER_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub header_timeout: Option<Duration>,
}

impl CommonArgs {
    /// The HTTP server's connection bounds these flags ask for.
    pub fn connection_limits(&self) -> crate::connections::ConnectionLimits {
        let defaults = crate::connections::ConnectionLimits::default();
        crate::connections::ConnectionLimits {
            max_connections: self
                .max_connections
                .map_or(defaults.max_connections, |n| n as usize),
            header_timeout: self
                .header_timeout
                .filter(|t| !t.is_zero())
                .unwrap_or(defaults.header_timeout),
        }
    }
}

/// `--database-url`, for the services that keep state in a database (kv, tasks, multicast).
#[derive(Args, Clone, Debug, Default)]
pub struct DatabaseArgs {
    /// Use this PostgreSQL database instead of the embedded SQLite file
    /// (`postgres://user:pass@host/db?sslmode=require`). Each service keeps its tables in a
    /// schema of its own, so several services can share one database.
    #[arg(
        long,
        env = "SHOAL_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub database_url: Option<Secret>,
}

/// Where a service's HTTP API binds and how other services reach it. Flatten it into a
/// service's `Config` and give the flags that service's environment variables and defaults
/// with [`service_flag`]:
///
/// ```
/// use clap::Args;
/// use shoal_core::config::{ListenArgs, service_flag};
///
/// #[derive(Args, Debug)]
/// #[command(
///     mut_arg("listen", |a| service_flag(a, "SHOAL_TASKS_LISTEN", Some("127.0.0.1:3001"))),
///     mut_arg("advertise", |a| service_flag(a, "SHOAL_TASKS_ADVERTISE", None)),
/// )]
/// struct Config {
///     #[command(flatten)]
///     net: ListenArgs,
/// }
/// ```
#[derive(Args, Clone, Debug)]
pub struct ListenArgs {
    /// Address the HTTP API listens on.
    #[arg(long, value_name = "ADDR")]
    pub listen: String,

    /// Address other services use to reach this one (registered in the k/v store); default:
    /// the address actually bound.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Option<String>,
}

impl ListenArgs {
    /// The address to register: `--advertise`, or else the bound address (so `--listen
    /// 127.0.0.1:0` registers the port the system picked).
    pub fn advertised(&self, bound: SocketAddr) -> String {
        self.advertise.clone().unwrap_or_else(|| bound.to_string())
    }
}

/// Gives a shared flag a service's own environment variable (`SHOAL_<SUBCOMMAND>_<FLAG>`)
/// and, optionally, default.
pub fn service_flag(arg: Arg, env: &'static str, default: Option<&'static str>) -> Arg {
    let arg = arg.env(env);
    match default {
        Some(default) => arg.default_value(default).required(false),
        None => arg,
    }
}

/// `--metrics-listen`, for processes without an HTTP API of their own (workers, NATS
/// clients): when given, `/healthz` and `/metrics` are served there.
#[derive(Args, Clone, Debug, Default)]
pub struct MetricsArgs {
    /// Serve /healthz and /metrics on this address.
    #[arg(long, env = "SHOAL_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// A shared secret. Its `Debug` and `Display` never show the value, so it cannot leak into
/// logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a secret; an empty string is rejected by the parser, not here.
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into())
    }

    /// The secret itself, for the one place that must send or compare it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl std::str::FromStr for Token {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err("the token must not be empty".into());
        }
        Ok(Self(s.to_owned()))
    }
}

/// A string that may carry credentials (a database URL). Shown redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The value itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl std::str::FromStr for Secret {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

/// Parses a duration such as `30s`, `250ms`, `2m` or `1h 30m`. A bare number is seconds,
/// as most people mean when they type `ttl=30`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        return s
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| format!("duration out of range: {s}"));
    }
    humantime::parse_duration(s).map_err(|e| format!("invalid duration {s:?}: {e}"))
}

/// Parses a byte size such as `1024`, `64KiB`, `1MiB`, `50MB` (decimal and binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, unit) = s.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("invalid size unit {other:?} in {s:?}")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("size out of range: {s}"))
}

/// Normalises a service address given as `HOST:PORT` or `http(s)://HOST:PORT[/]` into a base
/// URL without a trailing slash. The seeds pass bare `HOST:PORT`; shoal accepts both.
pub fn base_url(address: &str) -> Result<String, String> {
    let address = address.trim().trim_end_matches('/');
    if address.is_empty() {
        return Err("empty address".into());
    }
    let with_scheme = if address.starts_with("http://") || address.starts_with("https://") {
        address.to_owned()
    } else if address.contains("://") {
        return Err(format!(
            "unsupported scheme in {address:?}: use http or https"
        ));
    } else {
        format!("http://{address}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| format!("invalid address {address:?}: {e}"))?;
    if parsed.host_str().is_none() {
        return Err(format!("invalid address {address:?}: no host"));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() || !parsed.username().is_empty() {
        return Err(format!(
            "invalid address {address:?}: only scheme, host, port and path allowed"
        ));
    }
    Ok(with_scheme)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("99999999999999999999999").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("50MB"), Ok(50_000_000));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999GiB").is_err());
    }

    #[test]
    fn base_urls() {
        assert_eq!(
            base_url("127.0.0.1:3000").as_deref(),
            Ok("http://127.0.0.1:3000")
        );
        assert_eq!(base_url("http://kv:3000/").as_deref(), Ok("http://kv:3000"));
        assert_eq!(
            base_url("https://kv.example").as_deref(),
            Ok("https://kv.example")
        );
        assert!(base_url("").is_err());
        assert!(base_url("ftp://x").is_err());
        assert!(base_url("http://u:p@x:1").is_err());
    }

    #[test]
    fn secrets_never_print() {
        let t: Token = "hunter2".parse().expect("token");
        assert!(!format!("{t:?}").contains("hunter2"));
        let s: Secret = "postgres://u:pw@h/db".parse().expect("secret");
        assert!(!format!("{s:?}").contains("pw"));
        assert!("".parse::<Token>().is_err());
    }
}

#[cfg(test)]
mod listen_args_tests {
    use clap::{Args, Parser};

    use super::{ListenArgs, service_flag};

    #[derive(Args, Clone, Debug)]
    #[command(
        mut_arg("listen", |a| service_flag(a, "SHOAL_PROBE_LISTEN", Some("127.0.0.1:3999"))),
        mut_arg("advertise", |a| service_flag(a, "SHOAL_PROBE_ADVERTISE", None)),
    )]
    struct Probe {
        #[command(flatten)]
        net: ListenArgs,
    }

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        probe: Probe,
    }

    #[test]
    fn services_choose_env_and_defaults_for_shared_flags() {
        let cli = Cli::try_parse_from(["x"]).expect("parse");
        assert_eq!(cli.probe.net.listen, "127.0.0.1:3999");
        assert_eq!(cli.probe.net.advertise, None);
        let bound = "127.0.0.1:4321".parse().expect("addr");
        assert_eq!(cli.probe.net.advertised(bound), "127.0.0.1:4321");
        let cli = Cli::try_parse_from(["x", "--listen", "0.0.0.0:1", "--advertise", "h:1"])
            .expect("parse");
        assert_eq!(cli.probe.net.listen, "0.0.0.0:1");
        assert_eq!(cli.probe.net.advertised(bound), "h:1");
        let help = <Cli as clap::CommandFactory>::command()
            .render_long_help()
            .to_string();
        assert!(
            help.contains("SHOAL_PROBE_LISTEN") && help.contains("SHOAL_PROBE_ADVERTISE"),
            "{help}"
        );
    }
}
