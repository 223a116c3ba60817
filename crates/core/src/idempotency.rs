//! The `Idempotency-Key` request header, read the same way by every service that takes one.

use axum::http::HeaderMap;

use crate::error::ApiError;

/// The request's idempotency key: absent, or 1 to `max` visible ASCII characters (no space or
/// control character, which would not survive logs, query strings and other hops unchanged).
pub fn key(headers: &HeaderMap, max: usize) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() > max || !bytes.iter().all(u8::is_ascii_graphic) {
        return Err(ApiError::bad_request(format!(
            "Idempotency-Key must be 1 to {max} visible ASCII characters (no spaces)"
        )));
    }
    Ok(Some(String::from_utf8_lossy(bytes).into_owned()))
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "idempotency-key",
            HeaderValue::from_bytes(value).expect("header"),
        );
        headers
    }

    #[test]
    fn visible_ascii_only() {
        assert_eq!(key(&HeaderMap::new(), 10).ok(), Some(None));
        assert_eq!(
            key(&with(b"abc-123_X"), 10).ok(),
            Some(Some("abc-123_X".into()))
        );
        for bad in [&b"a b"[..], b"", b"\tab", b"caf\xc3\xa9", b"0123456789x"] {
            assert!(key(&with(bad), 10).is_err(), "{bad:?}");
        }
    }
}
