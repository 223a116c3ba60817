//! What travels over the cluster's UDP socket, and how it is authenticated.
//!
//! Every datagram is `MAGIC, kind | flags, payload[, tag]`. The kinds share one socket: SWIM
//! packets from foca, and the node's own messages (a new version pushed to every member, a
//! request for the current version or for the whole membership from a node that just
//! joined, a member's announcement that it is leaving). With a cluster key every datagram carries a 16-byte
//! HMAC-SHA256 tag over everything before it; a datagram without a valid tag is dropped and
//! counted, as is anything malformed. Replaying a captured datagram cannot move the register
//! backwards (versions only go forward) and SWIM ignores stale incarnations; confidentiality
//! is not a goal (the value is not secret, and the HTTP API serves it to anyone allowed in).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use ring::hmac;

use crate::register::Versioned;

/// First byte of every datagram: lets a node drop stray traffic cheaply.
pub const MAGIC: u8 = 0xA7;
/// Flag bit on the kind byte: the datagram ends with a tag.
const SIGNED: u8 = 0x80;
/// Bytes of HMAC-SHA256 kept as the tag.
pub const TAG_LEN: usize = 16;
/// Longest node name (it travels in every version).
pub const MAX_NAME_LEN: usize = 128;

/// What a datagram carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// A SWIM packet, handed to foca.
    Swim = 1,
    /// A version of the register pushed by another member.
    Update = 2,
    /// A member says it is leaving the cluster (payload: its identity).
    Leave = 3,
    /// A member asks for the current version (answered with an `Update`).
    StateRequest = 4,
    /// A member that just joined asks for the whole membership (answered with `Members`).
    MembersRequest = 5,
    /// Part of a membership: postcard-encoded SWIM member records.
    Members = 6,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Self> {
        match b {
            1 => Some(Self::Swim),
            2 => Some(Self::Update),
            3 => Some(Self::Leave),
            4 => Some(Self::StateRequest),
            5 => Some(Self::MembersRequest),
            6 => Some(Self::Members),
            _ => None,
        }
    }
}

/// Why a datagram was dropped. Each is counted under its [`Rejected::reason`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Too short, wrong magic, unknown kind or an undecodable payload.
    Malformed,
    /// A cluster key is set and the datagram is not signed.
    Unsigned,
    /// A cluster key is set and the tag does not match.
    BadSignature,
    /// Signed, but this node has no cluster key to check it with.
    UnexpectedSignature,
}

impl Rejected {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::Unsigned => "unsigned",
            Self::BadSignature => "bad_signature",
            Self::UnexpectedSignature => "unexpected_signature",
        }
    }
}

/// The shared secret that authenticates a cluster's traffic. Never shown in logs.
#[derive(Clone)]
pub struct ClusterKey(Arc<hmac::Key>);

/// Shortest cluster key accepted: anything shorter is guessable.
pub const MIN_KEY_LEN: usize = 16;

impl ClusterKey {
    /// A key from a secret of at least [`MIN_KEY_LEN`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, String> {
        if secret.len() < MIN_KEY_LEN {
            return Err(format!(
                "the cluster key must be at least {MIN_KEY_LEN} bytes long"
            ));
        }
        Ok(Self(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, secret))))
    }

    fn tag(&self, data: &[u8]) -> [u8; TAG_LEN] {
        let full = hmac::sign(&self.0, data);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&full.as_ref()[..TAG_LEN]);
        tag
    }

    fn verify(&self, data: &[u8], tag: &[u8]) -> bool {
        use subtle::ConstantTimeEq as _;
        self.tag(data).ct_eq(tag).into()
    }

    /// The `X-Shoal-Signature` header value for a `/notify` call: hex HMAC-SHA256 over the
    /// value, generation and origin.
    pub fn sign_notify(&self, value: i64, generation: u64, origin: &str) -> String {
        let full = hmac::sign(
            &self.0,
            notify_message(value, generation, origin).as_bytes(),
        );
        hex(full.as_ref())
    }

    /// Whether `signature` is this key's signature of a `/notify` call.
    pub fn verify_notify(
        &self,
        value: i64,
        generation: u64,
        origin: &str,
        signature: &str,
    ) -> bool {
        use subtle::ConstantTimeEq as _;
        let expected = self.sign_notify(value, generation, origin);
        expected
            .as_bytes()
            .ct_eq(signature.trim().as_bytes())
            .into()
    }
}

fn notify_message(value: i64, generation: u64, origin: &str) -> String {
    format!("shoal-gossip-notify\n{value}\n{generation}\n{origin}")
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(<redacted>)")
    }
}

impl FromStr for ClusterKey {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s.as_bytes())
    }
}

/// Frames `payload` as a datagram of `kind`, signed when a key is given.
pub fn seal(kind: Kind, payload: &[u8], key: Option<&ClusterKey>) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + payload.len() + TAG_LEN);
    out.push(MAGIC);
    out.push(kind as u8 | if key.is_some() { SIGNED } else { 0 });
    out.extend_from_slice(payload);
    if let Some(key) = key {
        let tag = key.tag(&out);
        out.extend_from_slice(&tag);
    }
    out
}

/// Checks a datagram's framing and tag; returns its kind and payload.
pub fn open<'a>(packet: &'a [u8], key: Option<&ClusterKey>) -> Result<(Kind, &'a [u8]), Rejected> {
    if packet.len() < 2 || packet[0] != MAGIC {
        return Err(Rejected::Malformed);
    }
    let kind = Kind::from_byte(packet[1] & !SIGNED).ok_or(Rejected::Malformed)?;
    let signed = packet[1] & SIGNED != 0;
    match (key, signed) {
        (Some(_), false) => Err(Rejected::Unsigned),
        (None, true) => Err(Rejected::UnexpectedSignature),
        (None, false) => Ok((kind, &packet[2..])),
        (Some(key), true) => {
            if packet.len() < 2 + TAG_LEN {
                return Err(Rejected::Malformed);
            }
            let (body, tag) = packet.split_at(packet.len() - TAG_LEN);
            if key.verify(body, tag) {
                Ok((kind, &body[2..]))
            } else {
                Err(Rejected::BadSignature)
            }
        }
    }
}

/// A pushed version: the version and the name of the node that sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    /// The version.
    pub version: Versioned,
    /// Who sent it (for logs).
    pub sender: Arc<str>,
}

/// Encodes an [`Update`] payload: value, generation, then origin and sender as
/// length-prefixed UTF-8.
pub fn encode_update(version: &Versioned, sender: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(18 + version.origin.len() + sender.len());
    out.extend_from_slice(&version.value.to_be_bytes());
    out.extend_from_slice(&version.generation.to_be_bytes());
    push_name(&mut out, &version.origin);
    push_name(&mut out, sender);
    out
}

fn push_name(out: &mut Vec<u8>, name: &str) {
    // Names are validated to MAX_NAME_LEN at start-up; truncating here only guards the
    // encoding.
    let bytes = &name.as_bytes()[..name.len().min(MAX_NAME_LEN)];
    out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
    out.extend_from_slice(bytes);
}

/// Decodes an [`Update`] payload; anything but an exact, valid encoding is malformed.
pub fn decode_update(payload: &[u8]) -> Result<Update, Rejected> {
    let (value, rest) = split_array::<8>(payload)?;
    let (generation, rest) = split_array::<8>(rest)?;
    let (origin, rest) = take_name(rest)?;
    let (sender, rest) = take_name(rest)?;
    if !rest.is_empty() {
        return Err(Rejected::Malformed);
    }
    Ok(Update {
        version: Versioned {
            value: i64::from_be_bytes(value),
            generation: u64::from_be_bytes(generation),
            origin: Arc::from(origin),
        },
        sender: Arc::from(sender),
    })
}

fn split_array<const N: usize>(bytes: &[u8]) -> Result<([u8; N], &[u8]), Rejected> {
    if bytes.len() < N {
        return Err(Rejected::Malformed);
    }
    let (head, rest) = bytes.split_at(N);
    let mut array = [0u8; N];
    array.copy_from_slice(head);
    Ok((array, rest))
}

/// Whether `name` may name a node or an origin: at most [`MAX_NAME_LEN`] bytes and no control
/// character (a name travels in the `X-Origin` header, where a newline cannot go).
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

fn take_name(bytes: &[u8]) -> Result<(&str, &[u8]), Rejected> {
    let (&len, rest) = bytes.split_first().ok_or(Rejected::Malformed)?;
    let len = usize::from(len);
    if rest.len() < len || len > MAX_NAME_LEN {
        return Err(Rejected::Malformed);
    }
    let (name, rest) = rest.split_at(len);
    let name = std::str::from_utf8(name).map_err(|_| Rejected::Malformed)?;
    if !valid_name(name) {
        return Err(Rejected::Malformed);
    }
    Ok((name, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> ClusterKey {
        ClusterKey::new(s.as_bytes()).expect("key")
    }

    #[test]
    fn updates_round_trip() {
        let version = Versioned {
            value: -5,
            generation: 1_700_000_000_123,
            origin: Arc::from("node-a"),
        };
        let payload = encode_update(&version, "node-b");
        let update = decode_update(&payload).expect("decodes");
        assert_eq!(update.version, version);
        assert_eq!(&*update.sender, "node-b");
        // Every truncation and any trailing byte is malformed, never a panic.
        for len in 0..payload.len() {
            assert_eq!(decode_update(&payload[..len]), Err(Rejected::Malformed));
        }
        let mut longer = payload.clone();
        longer.push(0);
        assert_eq!(decode_update(&longer), Err(Rejected::Malformed));
    }

    #[test]
    fn signed_datagrams_verify_only_with_the_same_key() {
        let k1 = key("0123456789abcdef-one");
        let k2 = key("0123456789abcdef-two");
        let packet = seal(Kind::Update, b"payload", Some(&k1));
        assert_eq!(
            open(&packet, Some(&k1)),
            Ok((Kind::Update, &b"payload"[..]))
        );
        assert_eq!(open(&packet, Some(&k2)), Err(Rejected::BadSignature));
        assert_eq!(open(&packet, None), Err(Rejected::UnexpectedSignature));
        let plain = seal(Kind::Update, b"payload", None);
        assert_eq!(open(&plain, Some(&k1)), Err(Rejected::Unsigned));
        assert_eq!(open(&plain, None), Ok((Kind::Update, &b"payload"[..])));
        // A flipped payload bit breaks the tag.
        let mut tampered = packet.clone();
        tampered[3] ^= 1;
        assert_eq!(open(&tampered, Some(&k1)), Err(Rejected::BadSignature));
        // Flipping the kind byte does too (it is covered by the tag).
        let mut rekinded = packet;
        rekinded[1] = Kind::Leave as u8 | SIGNED;
        assert_eq!(open(&rekinded, Some(&k1)), Err(Rejected::BadSignature));
    }

    #[test]
    fn garbage_is_malformed() {
        for garbage in [
            &b""[..],
            b"\x00",
            b"\xa7",
            b"\xa7\x09abc",
            b"GET / HTTP/1.1\r\n",
        ] {
            assert_eq!(open(garbage, None), Err(Rejected::Malformed), "{garbage:?}");
        }
        assert_eq!(
            open(b"\xa7\x82short", Some(&key("0123456789abcdef"))),
            Err(Rejected::Malformed)
        );
    }

    #[test]
    fn short_keys_are_refused() {
        assert!(ClusterKey::from_str("too short").is_err());
        assert!(ClusterKey::from_str("sixteen bytes ok").is_ok());
    }

    #[test]
    fn notify_signatures_cover_every_field() {
        let k = key("0123456789abcdef");
        let sig = k.sign_notify(5, 10, "a");
        assert!(k.verify_notify(5, 10, "a", &sig));
        assert!(!k.verify_notify(6, 10, "a", &sig));
        assert!(!k.verify_notify(5, 11, "a", &sig));
        assert!(!k.verify_notify(5, 10, "b", &sig));
        assert!(!key("0123456789abcdeX").verify_notify(5, 10, "a", &sig));
        assert!(!k.verify_notify(5, 10, "a", ""));
    }
}
