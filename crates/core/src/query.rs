//! Strict query-string parsing.
//!
//! The seeds read parameters with Go's `url.ParseQuery`, which rejects malformed escapes. We
//! keep that strictness (a bad escape is a 400, not a silently altered key) and keep values as
//! bytes, because the k/v store stores arbitrary bytes; names and text parameters must be
//! UTF-8.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use crate::ApiError;

/// The decoded parameters of a query string, in order. Lookups return the first occurrence,
/// as Go's `Values.Get` does.
#[derive(Clone, Debug, Default)]
pub struct Params {
    pairs: Vec<(String, Vec<u8>)>,
}

impl Params {
    /// Parses a raw query string (without the `?`).
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let mut pairs = Vec::new();
        for part in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').unwrap_or((part, ""));
            let name = decode(name)?;
            let name = String::from_utf8(name)
                .map_err(|_| ApiError::bad_request("query parameter names must be UTF-8"))?;
            pairs.push((name, decode(value)?));
        }
        Ok(Self { pairs })
    }

    /// The raw bytes of the first parameter called `name`.
    pub fn bytes(&self, name: &str) -> Option<&[u8]> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first parameter called `name` as text; a 400 when it is not UTF-8.
    pub fn text(&self, name: &str) -> Result<Option<&str>, ApiError> {
        self.bytes(name)
            .map(|v| {
                std::str::from_utf8(v).map_err(|_| {
                    ApiError::bad_request(format!("parameter {name} must be UTF-8 text"))
                })
            })
            .transpose()
    }

    /// The first parameter called `name` as non-empty text, or a 400 naming what is wrong.
    pub fn required_text(&self, name: &str, what: &str) -> Result<&str, ApiError> {
        match self.text(name)? {
            Some(v) if !v.is_empty() => Ok(v),
            _ => Err(ApiError::bad_request(format!("Wrong input {what}."))),
        }
    }

    /// Whether a parameter called `name` is present (even with an empty value).
    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    /// Parses the first parameter called `name` with `parse`, mapping failures to a 400 that
    /// names the parameter.
    pub fn parsed<T>(
        &self,
        name: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ApiError> {
        match self.text(name)? {
            None => Ok(None),
            Some(v) => parse(v)
                .map(Some)
                .map_err(|e| ApiError::bad_request(format!("invalid {name}: {e}"))),
        }
    }
}

/// Decodes `+` as a space and `%XX` escapes; a malformed escape is an error.
fn decode(s: &str) -> Result<Vec<u8>, ApiError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                // Two hex digits exactly: `from_str_radix` alone would take `%+1` (a sign).
                let hex = bytes
                    .get(i + 1..i + 3)
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| ApiError::bad_request("malformed percent-escape in query"))?;
                out.push(hex);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    Ok(out)
}

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Self::parse(parts.uri.query().unwrap_or(""))
    }
}

/// Largest id a pipeline service accepts: task ids are signed 64-bit in the task database,
/// and every image belongs to a task.
pub const MAX_ID: u64 = i64::MAX as u64;

/// Parses an id in its one canonical form: decimal digits, no sign, no leading zero (but `0`
/// itself), at most [`MAX_ID`]. So `1`, `+1` and `01` cannot name different things (the
/// seed's storage stored them as three files).
pub fn canonical_id(text: &str) -> Result<u64, ApiError> {
    let canonical = !text.is_empty()
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(ApiError::bad_request(format!(
            "Wrong input id: {text:?} is not a non-negative integer in canonical form."
        )));
    }
    text.parse::<u64>()
        .ok()
        .filter(|id| *id <= MAX_ID)
        .ok_or_else(|| ApiError::bad_request(format!("Wrong input id: {text} is out of range.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_like_go() {
        let p = Params::parse("key=a+b%2Fc&value=%FF%00&key=second&flag").expect("parse");
        assert_eq!(p.text("key").expect("utf8"), Some("a b/c"));
        assert_eq!(p.bytes("value"), Some(&[0xff, 0][..]));
        assert!(p.text("value").is_err());
        assert!(p.contains("flag"));
        assert_eq!(p.bytes("flag"), Some(&b""[..]));
        assert_eq!(p.bytes("missing"), None);
        for bad in ["a=%+1", "a=%-1", "a=%1", "a=%", "a=%zz", "a=% 1"] {
            assert!(Params::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rejects_malformed_escapes() {
        assert!(Params::parse("key=%zz").is_err());
        assert!(Params::parse("key=%4").is_err());
        assert!(Params::parse("%ff=1").is_err());
    }

    #[test]
    fn required_text_rejects_empty() {
        let p = Params::parse("key=").expect("parse");
        assert!(p.required_text("key", "key").is_err());
        assert!(p.required_text("other", "key").is_err());
    }
}
