//! Standard Webhooks signatures (<https://www.standardwebhooks.com>), for the hub and for
//! receivers.
//!
//! # Why
//! A subscriber endpoint is reachable by anyone who learns its URL, so a receiver needs a way
//! to tell the hub's deliveries apart from forgeries and from replays of old deliveries. The
//! Standard Webhooks scheme gives it both with one shared secret per subscriber, and is what
//! off-the-shelf receiver libraries (in many languages) already check, so subscribers do not
//! have to write bespoke verification code for this hub.
//!
//! # Scheme
//! Every delivery carries three headers:
//! - [`ID_HEADER`] (`webhook-id`): the message id, stable across retries so receivers can
//!   deduplicate;
//! - [`TIMESTAMP_HEADER`] (`webhook-timestamp`): the attempt's time in integer unix seconds;
//! - [`SIGNATURE_HEADER`] (`webhook-signature`): a space-separated list of `v1,<base64>`
//!   entries, each `base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))`.
//!
//! Several entries let a sender sign with an old and a new key during key rotation; a receiver
//! accepts the message if *any* `v1` entry matches its key and ignores entries of other
//! versions. Because the timestamp is signed, and receivers reject timestamps outside a small
//! window around their clock ([`DEFAULT_TOLERANCE`]), a captured delivery cannot be replayed
//! later.
//!
//! Signatures are compared in constant time, and a [`SigningSecret`] never prints its key.
//!
//! # Caveat
//! The signed content joins id, timestamp and body with `.`, as the specification says; the
//! timestamp must be all digits, but the specification puts no restriction on the id. Senders
//! (this hub included) should therefore use ids without `.` so that no two different
//! `(id, timestamp, body)` triples sign the same bytes.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use axum::http::HeaderMap;
use base64::Engine as _;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use ring::hmac;

/// Header carrying the message id (stable across delivery attempts).
pub const ID_HEADER: &str = "webhook-id";

/// Header carrying the attempt's timestamp, in integer unix seconds.
pub const TIMESTAMP_HEADER: &str = "webhook-timestamp";

/// Header carrying the space-separated list of `v1,<base64>` signatures.
pub const SIGNATURE_HEADER: &str = "webhook-signature";

/// How far a message's timestamp may be from the receiver's clock, in either direction, by
/// default (the specification's recommendation: five minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);

/// Prefix of secrets in the specification's textual form, `whsec_<base64 of the key bytes>`.
const SECRET_PREFIX: &str = "whsec_";

/// Version tag of HMAC-SHA256 signature entries.
const SIGNATURE_VERSION: &str = "v1";

/// Standard base64 alphabet that encodes with padding but decodes with or without it, since
/// secrets in particular are often copied around with the padding dropped.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A shared webhook signing key.
///
/// Parse one with [`str::parse`] (see the [`FromStr`] impl for the accepted forms). `Debug`
/// output never includes the key.
#[derive(Clone)]
pub struct SigningSecret {
    key: hmac::Key,
}

/// Why a string is not a usable [`SigningSecret`].
///
/// Deliberately carries no detail from the input: error messages end up in logs, and the
/// input is a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The secret is the empty string.
    #[error("signing secret is empty")]
    Empty,
    /// The secret starts with `whsec_` but the rest is not valid base64.
    #[error("signing secret has the whsec_ prefix but is not valid base64 after it")]
    BadBase64,
    /// The secret is `whsec_` followed by base64 of zero bytes.
    #[error("signing secret has the whsec_ prefix but encodes an empty key")]
    EmptyKey,
}

/// A message that passed [`SigningSecret::verify`]: its signed id and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The message id from [`ID_HEADER`]; receivers use it to deduplicate redeliveries.
    pub id: String,
    /// The message timestamp from [`TIMESTAMP_HEADER`], in unix seconds.
    pub timestamp: i64,
}

/// Why a message failed verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// A required header (the one named) is absent.
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    /// A required header (the one named) is present but malformed: not visible ASCII, repeated
    /// where one value is required, empty, or (for the timestamp) not integer unix seconds.
    #[error("malformed header {0}")]
    BadHeader(&'static str),
    /// The timestamp is further from the receiver's clock than the tolerance allows (a replay,
    /// or badly skewed clocks).
    #[error("message timestamp outside the allowed tolerance")]
    Timestamp,
    /// No `v1` signature entry matches the message under this secret.
    #[error("no matching signature")]
    Mismatch,
}

impl FromStr for SigningSecret {
    type Err = SecretError;

    /// Parses a secret.
    ///
    /// - `whsec_<base64>` (the specification's form) uses the base64-decoded bytes as the key;
    ///   padding is optional. Bad base64 or an empty key is an error, never a fallback to the
    ///   next form.
    /// - Any other non-empty string uses its UTF-8 bytes, as is, as the key (no trimming: a
    ///   trailing newline is part of the key). This suits secrets generated as plain
    ///   passwords; the other side must then be configured with the same raw bytes.
    /// - The empty string is an error.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(SecretError::Empty);
        }
        match s.strip_prefix(SECRET_PREFIX) {
            Some(encoded) => {
                let key = BASE64.decode(encoded).map_err(|_| SecretError::BadBase64)?;
                if key.is_empty() {
                    return Err(SecretError::EmptyKey);
                }
                Ok(Self::from_key(&key))
            }
            None => Ok(Self::from_key(s.as_bytes())),
        }
    }
}

impl fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SigningSecret(<redacted>)")
    }
}

impl SigningSecret {
    fn from_key(key: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
        }
    }

    /// The raw HMAC-SHA256 tag over `{id}.{timestamp}.{body}`.
    fn tag(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// Signs a message, returning one signature entry, `v1,<base64>`, suitable as the whole
    /// value of [`SIGNATURE_HEADER`] (or as one entry of a space-separated list during key
    /// rotation).
    ///
    /// `timestamp` is in unix seconds; `id` should not contain `.` (see the module docs).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.tag(id, timestamp, body);
        format!("{SIGNATURE_VERSION},{}", BASE64.encode(tag.as_ref()))
    }

    /// The three headers of a signed delivery, as `(name, value)` pairs: [`ID_HEADER`],
    /// [`TIMESTAMP_HEADER`] and [`SIGNATURE_HEADER`].
    ///
    /// The id is passed through unchanged, so callers that build
    /// [`HeaderValue`](axum::http::HeaderValue)s from it must use ids that are valid header
    /// values (visible ASCII).
    pub fn headers(&self, id: &str, timestamp: i64, body: &[u8]) -> [(&'static str, String); 3] {
        [
            (ID_HEADER, id.to_owned()),
            (TIMESTAMP_HEADER, timestamp.to_string()),
            (SIGNATURE_HEADER, self.sign(id, timestamp, body)),
        ]
    }

    /// Verifies a received message from its HTTP headers and raw body bytes.
    ///
    /// `now` is the receiver's clock in unix seconds and `tolerance` how far the message's
    /// timestamp may be from it in either direction (whole seconds count; usually
    /// [`DEFAULT_TOLERANCE`]). The id and timestamp headers must appear exactly once; several
    /// signature header lines are treated as one space-separated list. See
    /// [`verify_parts`](Self::verify_parts) for the checks.
    pub fn verify(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        now: i64,
        tolerance: Duration,
    ) -> Result<Verified, VerifyError> {
        let id = single_header(headers, ID_HEADER)?;
        let timestamp = single_header(headers, TIMESTAMP_HEADER)?;
        let mut values = headers.get_all(SIGNATURE_HEADER).iter().peekable();
        if values.peek().is_none() {
            return Err(VerifyError::MissingHeader(SIGNATURE_HEADER));
        }
        let mut signatures = String::new();
        for value in values {
            let value = value
                .to_str()
                .map_err(|_| VerifyError::BadHeader(SIGNATURE_HEADER))?;
            if !signatures.is_empty() {
                signatures.push(' ');
            }
            signatures.push_str(value);
        }
        self.verify_parts(id, timestamp, &signatures, body, now, tolerance)
    }

    /// Verifies a received message from the raw values of its three headers and its raw body
    /// bytes, for code that does not hold an [`axum::http::HeaderMap`].
    ///
    /// Checks, in order:
    /// 1. the id is non-empty and the timestamp is integer unix seconds (only ASCII digits),
    ///    else [`VerifyError::BadHeader`];
    /// 2. the signature list has at least one entry, else [`VerifyError::BadHeader`];
    /// 3. the timestamp is within `tolerance` of `now` in either direction, else
    ///    [`VerifyError::Timestamp`];
    /// 4. some `v1,<base64>` entry matches, compared in constant time, else
    ///    [`VerifyError::Mismatch`]. Entries of other versions, and malformed entries, are
    ///    ignored.
    pub fn verify_parts(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: i64,
        tolerance: Duration,
    ) -> Result<Verified, VerifyError> {
        if id.is_empty() {
            return Err(VerifyError::BadHeader(ID_HEADER));
        }
        let timestamp = parse_timestamp(timestamp)?;
        if signatures.split_ascii_whitespace().next().is_none() {
            return Err(VerifyError::BadHeader(SIGNATURE_HEADER));
        }
        if now.abs_diff(timestamp) > tolerance.as_secs() {
            return Err(VerifyError::Timestamp);
        }

        let expected = self.tag(id, timestamp, body);
        // `ring` offers constant-time comparison only through `hmac::verify`, which recomputes
        // the tag over its input; recomputing over the whole body for every entry would make
        // the cost (body size × entries), both chosen by the sender. Instead compare entries
        // through a second, tiny HMAC: `HMAC(k, candidate) == HMAC(k, expected)`, checked in
        // constant time by `hmac::verify`, holds exactly when `candidate == expected`.
        let expected_mac = hmac::sign(&self.key, expected.as_ref());
        let matched = signatures
            .split_ascii_whitespace()
            .filter_map(|entry| entry.split_once(','))
            .filter(|(version, _)| *version == SIGNATURE_VERSION)
            .filter_map(|(_, encoded)| BASE64.decode(encoded).ok())
            // Stopping at the first match is fine: whether some entry matched is the public
            // outcome anyway; what must not leak is how close a non-matching entry came.
            .any(|candidate| hmac::verify(&self.key, &candidate, expected_mac.as_ref()).is_ok());
        if matched {
            Ok(Verified {
                id: id.to_owned(),
                timestamp,
            })
        } else {
            Err(VerifyError::Mismatch)
        }
    }
}

/// The value of a header that must appear exactly once, as a string.
fn single_header<'a>(headers: &'a HeaderMap, name: &'static str) -> Result<&'a str, VerifyError> {
    let mut values = headers.get_all(name).iter();
    let value = values.next().ok_or(VerifyError::MissingHeader(name))?;
    if values.next().is_some() {
        // Two ids or timestamps are ambiguous: the check could pass on one while the
        // application acts on the other.
        return Err(VerifyError::BadHeader(name));
    }
    value.to_str().map_err(|_| VerifyError::BadHeader(name))
}

/// Parses integer unix seconds: ASCII digits only (no sign, no whitespace), fitting an `i64`.
fn parse_timestamp(value: &str) -> Result<i64, VerifyError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadHeader(TIMESTAMP_HEADER));
    }
    value
        .parse()
        .map_err(|_| VerifyError::BadHeader(TIMESTAMP_HEADER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const TIMESTAMP: i64 = 1_614_265_330;
    const BODY: &[u8] = br#"{"test": 2432232314}"#;
    const EXPECTED: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    fn secret() -> SigningSecret {
        SECRET.parse().expect("valid secret")
    }

    fn header_map(pairs: &[(&'static str, String)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                *name,
                HeaderValue::from_str(value).expect("valid header value"),
            );
        }
        map
    }

    fn signed(secret: &SigningSecret, id: &str, timestamp: i64, body: &[u8]) -> HeaderMap {
        header_map(&secret.headers(id, timestamp, body))
    }

    #[test]
    fn known_answer_vector() {
        assert_eq!(secret().sign(ID, TIMESTAMP, BODY), EXPECTED);
    }

    #[test]
    fn known_answer_vector_verifies() {
        let map = header_map(&[
            (ID_HEADER, ID.to_owned()),
            (TIMESTAMP_HEADER, TIMESTAMP.to_string()),
            (SIGNATURE_HEADER, EXPECTED.to_owned()),
        ]);
        let verified = secret()
            .verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE)
            .expect("official vector verifies");
        assert_eq!(
            verified,
            Verified {
                id: ID.to_owned(),
                timestamp: TIMESTAMP
            }
        );
    }

    #[test]
    fn headers_are_named_and_consistent() {
        let s = secret();
        let [id, ts, sig] = s.headers(ID, TIMESTAMP, BODY);
        assert_eq!(id, (ID_HEADER, ID.to_owned()));
        assert_eq!(ts, (TIMESTAMP_HEADER, TIMESTAMP.to_string()));
        assert_eq!(sig, (SIGNATURE_HEADER, EXPECTED.to_owned()));
    }

    #[test]
    fn round_trip() {
        let s = secret();
        let map = signed(&s, "msg_1", 1_700_000_000, b"hello");
        let verified = s
            .verify(&map, b"hello", 1_700_000_010, DEFAULT_TOLERANCE)
            .expect("round trip verifies");
        assert_eq!(verified.id, "msg_1");
        assert_eq!(verified.timestamp, 1_700_000_000);
    }

    #[test]
    fn empty_body_round_trip() {
        let s = secret();
        let map = signed(&s, "msg_1", 1_700_000_000, b"");
        assert!(
            s.verify(&map, b"", 1_700_000_000, DEFAULT_TOLERANCE)
                .is_ok()
        );
    }

    #[test]
    fn tampered_body_is_mismatch() {
        let s = secret();
        let map = signed(&s, ID, TIMESTAMP, BODY);
        let err = s
            .verify(
                &map,
                br#"{"test": 2432232315}"#,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect_err("tampered body must fail");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn tampered_id_is_mismatch() {
        let s = secret();
        let sig = s.sign(ID, TIMESTAMP, BODY);
        let err = s
            .verify_parts(
                "msg_other",
                &TIMESTAMP.to_string(),
                &sig,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect_err("tampered id must fail");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn tampered_timestamp_is_mismatch() {
        let s = secret();
        let sig = s.sign(ID, TIMESTAMP, BODY);
        let err = s
            .verify_parts(
                ID,
                &(TIMESTAMP + 1).to_string(),
                &sig,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect_err("tampered timestamp must fail");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn wrong_secret_is_mismatch() {
        let map = signed(&secret(), ID, TIMESTAMP, BODY);
        let other: SigningSecret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .expect("valid secret");
        let err = other
            .verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE)
            .expect_err("wrong secret must fail");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn any_matching_entry_is_accepted() {
        let s = secret();
        let bogus = BASE64.encode([0u8; 32]);
        let list = format!("v1,{bogus} {EXPECTED}");
        let verified = s
            .verify_parts(
                ID,
                &TIMESTAMP.to_string(),
                &list,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect("second entry matches");
        assert_eq!(verified.id, ID);
    }

    #[test]
    fn malformed_and_foreign_entries_are_ignored() {
        let s = secret();
        let list = format!("junk v1,!!notbase64!! v1a,xyz ,, v2,abcd   {EXPECTED}");
        assert!(
            s.verify_parts(
                ID,
                &TIMESTAMP.to_string(),
                &list,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .is_ok()
        );
    }

    #[test]
    fn signature_header_lines_are_combined() {
        let s = secret();
        let map = header_map(&[
            (ID_HEADER, ID.to_owned()),
            (TIMESTAMP_HEADER, TIMESTAMP.to_string()),
            (SIGNATURE_HEADER, format!("v1,{}", BASE64.encode([1u8; 32]))),
            (SIGNATURE_HEADER, EXPECTED.to_owned()),
        ]);
        assert!(s.verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE).is_ok());
    }

    #[test]
    fn other_versions_only_is_mismatch() {
        let s = secret();
        let v2 = EXPECTED.replacen("v1,", "v2,", 1);
        let err = s
            .verify_parts(
                ID,
                &TIMESTAMP.to_string(),
                &v2,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect_err("v2 entries are ignored");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn truncated_signature_is_mismatch() {
        let s = secret();
        let tag = BASE64
            .decode(&EXPECTED[3..])
            .expect("expected signature is base64");
        let truncated = format!("v1,{}", BASE64.encode(&tag[..16]));
        let err = s
            .verify_parts(
                ID,
                &TIMESTAMP.to_string(),
                &truncated,
                BODY,
                TIMESTAMP,
                DEFAULT_TOLERANCE,
            )
            .expect_err("prefix of the tag must not match");
        assert_eq!(err, VerifyError::Mismatch);
    }

    #[test]
    fn timestamp_tolerance() {
        let s = secret();
        let map = signed(&s, ID, TIMESTAMP, BODY);
        let tol = DEFAULT_TOLERANCE.as_secs() as i64;
        // Exactly at the edge in either direction is accepted.
        assert!(
            s.verify(&map, BODY, TIMESTAMP + tol, DEFAULT_TOLERANCE)
                .is_ok()
        );
        assert!(
            s.verify(&map, BODY, TIMESTAMP - tol, DEFAULT_TOLERANCE)
                .is_ok()
        );
        // Too old: the receiver's clock is past the window.
        assert_eq!(
            s.verify(&map, BODY, TIMESTAMP + tol + 1, DEFAULT_TOLERANCE),
            Err(VerifyError::Timestamp)
        );
        // Too new: the message claims to be from the future.
        assert_eq!(
            s.verify(&map, BODY, TIMESTAMP - tol - 1, DEFAULT_TOLERANCE),
            Err(VerifyError::Timestamp)
        );
        // Extreme clocks do not overflow.
        assert_eq!(
            s.verify(&map, BODY, i64::MIN, DEFAULT_TOLERANCE),
            Err(VerifyError::Timestamp)
        );
        assert!(s.verify(&map, BODY, TIMESTAMP, Duration::MAX).is_ok());
    }

    #[test]
    fn timestamp_checked_before_signature() {
        let s = secret();
        let err = s
            .verify_parts(ID, "1", "v1,AAAA", BODY, TIMESTAMP, DEFAULT_TOLERANCE)
            .expect_err("stale and unsigned");
        assert_eq!(err, VerifyError::Timestamp);
    }

    #[test]
    fn missing_headers() {
        let s = secret();
        let full = s.headers(ID, TIMESTAMP, BODY);
        for skip in 0..full.len() {
            let pairs: Vec<_> = full
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| p.clone())
                .collect();
            let err = s
                .verify(&header_map(&pairs), BODY, TIMESTAMP, DEFAULT_TOLERANCE)
                .expect_err("missing header must fail");
            assert_eq!(err, VerifyError::MissingHeader(full[skip].0));
        }
    }

    #[test]
    fn bad_headers() {
        let s = secret();
        let ts = TIMESTAMP.to_string();
        let cases: [(&str, &str, &str, &str); 9] = [
            ("", &ts, EXPECTED, ID_HEADER),
            (ID, "", EXPECTED, TIMESTAMP_HEADER),
            (ID, "abc", EXPECTED, TIMESTAMP_HEADER),
            (ID, "-1614265330", EXPECTED, TIMESTAMP_HEADER),
            (ID, "+1614265330", EXPECTED, TIMESTAMP_HEADER),
            (ID, " 1614265330", EXPECTED, TIMESTAMP_HEADER),
            (ID, "1614265330.5", EXPECTED, TIMESTAMP_HEADER),
            (ID, "99999999999999999999", EXPECTED, TIMESTAMP_HEADER),
            (ID, &ts, "   ", SIGNATURE_HEADER),
        ];
        for (id, ts, sigs, bad) in cases {
            assert_eq!(
                s.verify_parts(id, ts, sigs, BODY, TIMESTAMP, DEFAULT_TOLERANCE),
                Err(VerifyError::BadHeader(bad)),
                "id={id:?} ts={ts:?} sigs={sigs:?}"
            );
        }
    }

    #[test]
    fn repeated_or_non_text_headers_are_bad() {
        let s = secret();
        let mut map = signed(&s, ID, TIMESTAMP, BODY);
        map.append(ID_HEADER, HeaderValue::from_static("msg_other"));
        assert_eq!(
            s.verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE),
            Err(VerifyError::BadHeader(ID_HEADER))
        );

        let mut map = signed(&s, ID, TIMESTAMP, BODY);
        map.append(TIMESTAMP_HEADER, HeaderValue::from_static("1614265331"));
        assert_eq!(
            s.verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE),
            Err(VerifyError::BadHeader(TIMESTAMP_HEADER))
        );

        let mut map = signed(&s, ID, TIMESTAMP, BODY);
        map.insert(
            SIGNATURE_HEADER,
            HeaderValue::from_bytes(b"v1,\xff").expect("obs-text is a valid header value"),
        );
        assert_eq!(
            s.verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE),
            Err(VerifyError::BadHeader(SIGNATURE_HEADER))
        );
    }

    #[test]
    fn raw_secret_uses_utf8_bytes() {
        let raw: SigningSecret = "correct horse battery staple".parse().expect("raw secret");
        let map = signed(&raw, ID, TIMESTAMP, BODY);
        assert!(raw.verify(&map, BODY, TIMESTAMP, DEFAULT_TOLERANCE).is_ok());

        // Same as a whsec_ secret encoding the same bytes.
        let encoded = format!("whsec_{}", BASE64.encode("correct horse battery staple"));
        let same: SigningSecret = encoded.parse().expect("encoded secret");
        assert_eq!(
            raw.sign(ID, TIMESTAMP, BODY),
            same.sign(ID, TIMESTAMP, BODY)
        );
        // And different from a secret that is not the same bytes.
        assert_ne!(
            raw.sign(ID, TIMESTAMP, BODY),
            secret().sign(ID, TIMESTAMP, BODY)
        );
    }

    #[test]
    fn whsec_padding_is_optional() {
        let padded: SigningSecret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
            .parse()
            .expect("padded");
        let unpadded: SigningSecret = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            .parse()
            .expect("unpadded");
        assert_eq!(
            padded.sign(ID, TIMESTAMP, BODY),
            unpadded.sign(ID, TIMESTAMP, BODY)
        );
    }

    #[test]
    fn bad_secrets() {
        assert_eq!("".parse::<SigningSecret>().err(), Some(SecretError::Empty));
        assert_eq!(
            "whsec_".parse::<SigningSecret>().err(),
            Some(SecretError::EmptyKey)
        );
        assert_eq!(
            "whsec_not base64!".parse::<SigningSecret>().err(),
            Some(SecretError::BadBase64)
        );
    }

    #[test]
    fn debug_does_not_reveal_key() {
        for text in [SECRET, "correct horse battery staple"] {
            let s: SigningSecret = text.parse().expect("valid secret");
            let debug = format!("{s:?} {:#?}", s.clone());
            assert!(
                !debug.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
                "{debug}"
            );
            assert!(!debug.contains("horse"), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
    }
}
