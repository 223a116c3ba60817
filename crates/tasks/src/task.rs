//! A task as stored and as shown.

use std::time::{Duration, UNIX_EPOCH};

use crate::state::State;

/// A task row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Consecutive from 0.
    pub id: u64,
    /// Its state.
    pub state: State,
    /// Created held and not released yet.
    pub held: bool,
    /// What to do, as JSON text.
    pub payload: Option<String>,
    /// Claims so far.
    pub attempts: u32,
    /// Why it failed.
    pub error: Option<String>,
    /// Names the current claim.
    pub lease: Option<String>,
    /// When the current claim runs out, unix ms.
    pub lease_expires_at: Option<i64>,
    /// When a held task fails if not released, unix ms.
    pub hold_expires_at: Option<i64>,
    /// Who claimed it last, when the claimer said.
    pub worker: Option<String>,
}

impl Task {
    /// What the state machine needs to know.
    pub fn snapshot(&self) -> crate::state::Task {
        crate::state::Task {
            state: self.state,
            held: self.held,
            attempts: self.attempts,
        }
    }

    /// The JSON the API answers with: the seed's `id` and `state`, and shoal's fields.
    pub fn to_json(&self) -> serde_json::Value {
        let payload = self
            .payload
            .as_deref()
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok());
        serde_json::json!({
            "id": self.id,
            "state": self.state.code(),
            "held": self.held,
            "payload": payload,
            "attempts": self.attempts,
            "error": self.error,
            "lease": self.lease,
            "lease_expires_at": self.lease_expires_at.map(rfc3339),
            "worker": self.worker,
        })
    }

    /// The human-readable line of `/list`, beginning with the id as the seed's does.
    pub fn line(&self) -> String {
        let mut line = format!("{} : {}", self.id, self.state);
        if self.held {
            line.push_str(" (held)");
        }
        line.push_str(&format!(", attempts {}", self.attempts));
        if let Some(e) = &self.error {
            line.push_str(&format!(", error: {}", e.escape_debug()));
        }
        line
    }
}

/// RFC 3339 with milliseconds, clamped to what the format can show.
pub fn rfc3339(ms: i64) -> String {
    const MAX: i64 = 253_402_300_799_999;
    let t = UNIX_EPOCH + Duration::from_millis(ms.clamp(0, MAX).cast_unsigned());
    humantime::format_rfc3339_millis(t).to_string()
}
