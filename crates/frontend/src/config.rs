//! `shoal frontend` flags.

use std::fmt;
use std::str::FromStr;

use clap::Args;
use shoal_core::config::{CommonArgs, ListenArgs, parse_size, service_flag};

/// Configuration of `shoal frontend`.
#[derive(Args, Clone, Debug)]
#[command(
    mut_arg("listen", |a| service_flag(a, "SHOAL_FRONTEND_LISTEN", Some("127.0.0.1:8080"))),
    // Nothing discovers the frontend (a load balancer or the user reaches it): the shared
    // `--advertise` is accepted but not offered.
    mut_arg("advertise", |a| a.hide(true)),
)]
pub struct Config {
    /// Where the page and the public API listen.
    #[command(flatten)]
    pub net: ListenArgs,

    /// The master's address, instead of `masterAddress` from the k/v store.
    #[arg(long, env = "SHOAL_FRONTEND_MASTER", value_name = "URL")]
    pub master: Option<String>,

    /// Largest image accepted (the master's --max-upload; the seed's form limit was 10 MB).
    #[arg(long, env = "SHOAL_FRONTEND_MAX_UPLOAD", value_parser = parse_size, default_value = "10MB")]
    pub max_upload: u64,

    /// Protect the page and the public API with HTTP basic authentication (`USER:PASSWORD`).
    /// Off by default, for a frontend on loopback; set it before listening on a network.
    #[arg(
        long,
        env = "SHOAL_FRONTEND_BASIC_AUTH",
        value_name = "USER:PASSWORD",
        hide_env_values = true
    )]
    pub basic_auth: Option<BasicAuth>,

    /// Uploads each client (by IP address) may make, e.g. `30/min`; beyond it, 429 with
    /// `Retry-After`. Unlimited by default.
    #[arg(long, env = "SHOAL_FRONTEND_RATE_LIMIT", value_name = "N/min")]
    pub rate_limit: Option<RateLimit>,

    /// Flags every service shares. `--token` is sent to the master; the page itself is
    /// public (or protected by `--basic-auth`).
    #[command(flatten)]
    pub common: CommonArgs,
}

impl Config {
    /// Every default; the master found through the k/v store at `kv` (tests, `shoal up`).
    pub fn with_kv(kv: impl Into<String>) -> Self {
        Self {
            net: ListenArgs {
                listen: "127.0.0.1:8080".into(),
                advertise: None,
            },
            master: None,
            max_upload: 10_000_000,
            basic_auth: None,
            rate_limit: None,
            common: CommonArgs {
                kv: vec![kv.into()],
                ..CommonArgs::default()
            },
        }
    }
}

/// A user name and password for HTTP basic authentication.
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    /// The user name.
    pub user: String,
    /// The password.
    pub password: String,
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl FromStr for BasicAuth {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (user, password) = text.split_once(':').ok_or("expected USER:PASSWORD")?;
        if user.is_empty() || password.is_empty() {
            return Err("expected USER:PASSWORD, both non-empty".into());
        }
        Ok(Self {
            user: user.to_owned(),
            password: password.to_owned(),
        })
    }
}

/// Uploads allowed per client per minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Uploads per minute (also the burst a client may send at once).
    pub per_minute: u32,
}

impl FromStr for RateLimit {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || format!("invalid rate {text:?}: expected N/min or N/s, e.g. 30/min");
        let (count, unit) = text.trim().split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per_minute = match unit.trim() {
            "min" | "m" | "minute" => Some(count),
            "s" | "sec" | "second" => count.checked_mul(60),
            _ => return Err(invalid()),
        }
        .ok_or_else(invalid)?;
        if per_minute == 0 {
            return Err(format!(
                "invalid rate {text:?}: must allow at least one upload"
            ));
        }
        Ok(Self { per_minute })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_auth_parses_and_hides_the_password() {
        let auth: BasicAuth = "ann:s3:cret".parse().expect("parses");
        assert_eq!(auth.user, "ann");
        assert_eq!(auth.password, "s3:cret");
        assert!(!format!("{auth:?}").contains("s3:cret"));
        assert!("ann".parse::<BasicAuth>().is_err());
        assert!(":pw".parse::<BasicAuth>().is_err());
        assert!("ann:".parse::<BasicAuth>().is_err());
    }

    #[test]
    fn rate_limits_parse() {
        assert_eq!("30/min".parse(), Ok(RateLimit { per_minute: 30 }));
        assert_eq!("2/s".parse(), Ok(RateLimit { per_minute: 120 }));
        assert!("0/min".parse::<RateLimit>().is_err());
        assert!("30".parse::<RateLimit>().is_err());
        assert!("x/min".parse::<RateLimit>().is_err());
        assert!("30/day".parse::<RateLimit>().is_err());
    }
}
