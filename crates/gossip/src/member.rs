//! Who is in the cluster: the identity each node gossips, and the view `/members` shows.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

/// A node's identity in SWIM. Besides the cluster address it carries the node's name and
/// its HTTP address, so peers learn where to send `/notify` from membership alone (the seed
/// assumed port 8080 on every host).
///
/// `bump` starts at the node's start time in ms: a restarted node comes back with a higher
/// one and replaces its old identity at once, instead of waiting for the cluster to forget
/// it. When the cluster declares a live node down (a partition, a long pause), foca renews
/// the identity with `bump + 1` and the node rejoins by itself.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeId {
    /// The node's name: the origin of its writes.
    pub name: String,
    /// Its cluster (SWIM, UDP) address.
    pub swim: SocketAddr,
    /// Its HTTP API address.
    pub http: SocketAddr,
    /// Distinguishes successive lives of the same address.
    pub bump: u64,
}

impl NodeId {
    /// A stand-in for a node known only by its cluster address (a `--join` target): foca
    /// accepts an announce addressed to any identity with the right address.
    pub fn placeholder(swim: SocketAddr) -> Self {
        Self {
            name: String::new(),
            swim,
            http: SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
            bump: 0,
        }
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.name, self.swim, self.bump)
    }
}

impl foca::Identity for NodeId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Self {
            bump: self.bump.checked_add(1)?,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.swim
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.bump > adversary.bump
    }
}

/// A member's state as `/members` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberState {
    /// Answering probes.
    Alive,
    /// Missed a probe; still counted as a member until the suspicion times out or it
    /// refutes it.
    Suspect,
    /// Declared down by the cluster without having said goodbye: failed or unreachable.
    Dead,
    /// Left the cluster on purpose (shut down gracefully).
    Left,
}

/// One row of `/members`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberView {
    /// The node's name.
    pub name: String,
    /// Its cluster (SWIM) address.
    pub address: SocketAddr,
    /// Its HTTP API address.
    pub http: SocketAddr,
    /// Its state.
    pub state: MemberState,
    /// Whether this row is the node answering.
    #[serde(rename = "self")]
    pub is_self: bool,
}
