//! Object names: a request's `state` and `id` become exactly one canonical name, or a 400.
//!
//! Nothing from the request reaches a path or an S3 key as text: `state` must be one of two
//! words and `id` the canonical decimal form of an integer, which is then formatted back. So
//! `../`, `%2f`, NUL bytes, absolute paths, signs, leading zeros and ids past the range all
//! fail here, before any name is built (the seed's `1`, `+1` and `01` named three files).

use std::fmt;

use shoal_core::ApiError;
use shoal_core::query::Params;

/// Which of the two collections an object is in (the seed's `state` parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Uploaded, not processed yet.
    Working,
    /// Processed.
    Finished,
}

impl Stage {
    /// Both stages, in a fixed order.
    pub const ALL: [Stage; 2] = [Stage::Working, Stage::Finished];

    /// The stage's name, also its directory (local) or key prefix (S3).
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Working => "working",
            Stage::Finished => "finished",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "working" => Some(Stage::Working),
            "finished" => Some(Stage::Finished),
            _ => None,
        }
    }
}

/// One object's identity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    /// The collection.
    pub stage: Stage,
    /// The task id.
    pub id: u64,
}

impl ObjectKey {
    /// The key named by a request's `state` and `id` parameters.
    pub fn from_params(params: &Params) -> Result<Self, ApiError> {
        let state = params.text("state")?.unwrap_or("");
        let stage = Stage::parse(state).ok_or_else(|| {
            ApiError::bad_request(format!(
                "Wrong input state: {state:?} (use working or finished)."
            ))
        })?;
        let id = parse_id(params.text("id")?.unwrap_or(""))?;
        Ok(Self { stage, id })
    }

    /// The object's name inside the store: `working/12`.
    pub fn name(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.stage.as_str(), self.id)
    }
}

pub use shoal_core::query::{MAX_ID, canonical_id as parse_id};

#[cfg(test)]
mod tests {
    use super::*;

    fn key(query: &str) -> Result<ObjectKey, ApiError> {
        ObjectKey::from_params(&Params::parse(query)?)
    }

    #[test]
    fn canonical_keys_name_one_object() {
        assert_eq!(key("state=working&id=0").expect("ok").name(), "working/0");
        assert_eq!(
            key("id=42&state=finished").expect("ok").name(),
            "finished/42"
        );
        assert_eq!(
            key(&format!("state=working&id={MAX_ID}")).expect("ok").id,
            MAX_ID
        );
    }

    #[test]
    fn everything_else_is_a_bad_request() {
        for query in [
            "",
            "state=working",
            "id=1",
            "state=working&id=",
            "state=working&id=01",
            "state=working&id=00",
            "state=working&id=+1",
            "state=working&id=-1",
            "state=working&id=1.0",
            "state=working&id=1%20",
            "state=working&id=%201",
            "state=working&id=1e3",
            "state=working&id=0x10",
            "state=working&id=9223372036854775808",
            "state=working&id=99999999999999999999999",
            "state=working&id=..%2F..%2Fetc%2Fpasswd",
            "state=working&id=1%00",
            "state=working&id=%2Fetc%2Fpasswd",
            "state=..&id=1",
            "state=..%2Fworking&id=1",
            "state=working%2F..&id=1",
            "state=Working&id=1",
            "state=%2Ftmp&id=1",
            "state=working%00&id=1",
            "state=working&id=%ZZ",
        ] {
            let err = key(query).expect_err(query);
            assert!(matches!(err, ApiError::BadRequest(_)), "{query}: {err:?}");
        }
    }
}
