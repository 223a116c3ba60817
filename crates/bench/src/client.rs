//! The hand-rolled HTTP/1.1 client: one hyper connection per task, no pool, no redirects, no
//! TLS — as little client work per request as possible.

use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_LENGTH, HOST};
use http::{HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use shoal_core::config::Token;
use tokio::net::TcpStream;

use crate::mix::Op;

/// One keep-alive HTTP/1.1 connection's request half.
pub(crate) type Sender = SendRequest<Full<Bytes>>;

/// Where requests go: the address to dial, the `Host` header, the path prefix and the
/// optional bearer token.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// `http://HOST:PORT[/prefix]`, as shown in the report.
    pub(crate) base_url: String,
    /// `HOST:PORT`, what `TcpStream::connect` dials.
    dial: String,
    host: HeaderValue,
    prefix: String,
    authorization: Option<HeaderValue>,
}

impl Target {
    /// Parses `HOST:PORT` or `http://HOST:PORT[/prefix]`.
    pub(crate) fn parse(address: &str, token: Option<&Token>) -> anyhow::Result<Self> {
        let base_url = shoal_core::config::base_url(address)
            .map_err(|e| anyhow::anyhow!("invalid --target: {e}"))?;
        if base_url.starts_with("https://") {
            bail!(
                "invalid --target {base_url}: the bench speaks plain HTTP/1.1 only (no TLS), \
                 so benchmark the service directly over http://"
            );
        }
        let rest = base_url.strip_prefix("http://").unwrap_or(&base_url);
        let (authority, prefix) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        let has_port = match authority.rfind(']') {
            Some(i) => authority[i..].contains(':'),
            None => authority.contains(':'),
        };
        let dial = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let host = HeaderValue::from_str(authority)
            .with_context(|| format!("invalid host in --target {base_url}"))?;
        let authorization = token
            .map(|t| HeaderValue::from_str(&format!("Bearer {}", t.expose())))
            .transpose()
            .context("the token cannot be sent in an HTTP header")?
            .map(|mut v| {
                v.set_sensitive(true);
                v
            });
        let target = Self {
            base_url: base_url.clone(),
            dial,
            host,
            prefix: prefix.to_owned(),
            authorization,
        };
        // Fail now, not in every task, if the prefix makes an invalid request line.
        target
            .request(Method::GET, "/healthz", Bytes::new())
            .with_context(|| format!("invalid path in --target {base_url}"))?;
        Ok(target)
    }

    /// Opens a connection (`TCP_NODELAY` on) and spawns its driver task.
    pub(crate) async fn connect(&self) -> anyhow::Result<Sender> {
        let stream = TcpStream::connect(&self.dial)
            .await
            .with_context(|| format!("cannot connect to {}", self.dial))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .context("HTTP handshake failed")?;
        tokio::spawn(async move {
            // Ends when the sender is dropped or the peer closes; errors surface on the sender.
            let _ = connection.await;
        });
        Ok(sender)
    }

    /// A request for `path` (below the target's prefix), with `Host`, the token and, when
    /// there is a body, `Content-Length`.
    pub(crate) fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        let uri = Uri::try_from(format!("{}{path_and_query}", self.prefix))?;
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(HOST, self.host.clone());
        if !body.is_empty() {
            builder = builder.header(CONTENT_LENGTH, body.len());
        }
        if let Some(auth) = &self.authorization {
            builder = builder.header(AUTHORIZATION, auth.clone());
        }
        Ok(builder.body(Full::new(body))?)
    }

    /// The request for one benchmark operation on key number `key`.
    pub(crate) fn op_request(
        &self,
        op: Op,
        key: u64,
        value: &Bytes,
    ) -> anyhow::Result<Request<Full<Bytes>>> {
        match op {
            Op::Get => self.request(
                Method::GET,
                &format!("/get?key=bench-key-{key}"),
                Bytes::new(),
            ),
            Op::Set => self.request(
                Method::POST,
                &format!("/set?key=bench-key-{key}"),
                value.clone(),
            ),
        }
    }

    /// Connects, asks `/healthz`, and fails unless the answer is 2xx within `limit`.
    pub(crate) async fn probe(&self, limit: Duration) -> anyhow::Result<()> {
        let attempt = async {
            let mut sender = self.connect().await?;
            let request = self.request(Method::GET, "/healthz", Bytes::new())?;
            let (status, body) = fetch(&mut sender, request).await?;
            if !status.is_success() {
                bail!(
                    "GET /healthz answered {status}: {}",
                    String::from_utf8_lossy(&body).trim()
                );
            }
            Ok(())
        };
        tokio::time::timeout(limit, attempt)
            .await
            .with_context(|| format!("no answer within {}", humantime::format_duration(limit)))?
            .with_context(|| format!("cannot reach {}", self.base_url))
    }
}

/// Sends `request` and reads the whole response body, discarding it frame by frame (no
/// buffering). Returns the status.
pub(crate) async fn exchange(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<StatusCode, hyper::Error> {
    exchange_counted(sender, request)
        .await
        .map(|(status, _)| status)
}

/// Like [`exchange`], but also returns how many body bytes arrived (counted frame by frame,
/// still without buffering).
pub(crate) async fn exchange_counted(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, u64), hyper::Error> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let mut body = response.into_body();
    let mut received = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(data) = frame?.data_ref() {
            received += data.len() as u64;
        }
    }
    Ok((status, received))
}

/// Sends `request` and returns the status and the whole body (for setup steps whose errors
/// are worth showing).
pub(crate) async fn fetch(
    sender: &mut Sender,
    request: Request<Full<Bytes>>,
) -> anyhow::Result<(StatusCode, Bytes)> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        let t = Target::parse("127.0.0.1:3000", None).expect("target");
        assert_eq!(t.base_url, "http://127.0.0.1:3000");
        assert_eq!(t.dial, "127.0.0.1:3000");
        assert_eq!(t.prefix, "");

        let t = Target::parse("http://kv.local/api/", None).expect("target");
        assert_eq!(t.dial, "kv.local:80");
        assert_eq!(t.host, "kv.local");
        assert_eq!(t.prefix, "/api");
        let req = t.op_request(Op::Get, 7, &Bytes::new()).expect("request");
        assert_eq!(req.uri(), "/api/get?key=bench-key-7");

        let t = Target::parse("[::1]:4000", None).expect("target");
        assert_eq!(t.dial, "[::1]:4000");

        assert!(Target::parse("https://kv.example", None).is_err());
        assert!(Target::parse("", None).is_err());
    }

    #[test]
    fn set_requests_carry_the_value() {
        let token: Token = "secret".parse().expect("token");
        let t = Target::parse("127.0.0.1:1", Some(&token)).expect("target");
        let req = t
            .op_request(Op::Set, 3, &Bytes::from_static(b"abcd"))
            .expect("request");
        assert_eq!(req.method(), Method::POST);
        assert_eq!(req.uri(), "/set?key=bench-key-3");
        assert_eq!(req.headers()[CONTENT_LENGTH], "4");
        assert_eq!(req.headers()[HOST], "127.0.0.1:1");
        assert_eq!(req.headers()[AUTHORIZATION], "Bearer secret");
    }
}
