//! The replicated register: one 64-bit value, its version, and the hybrid logical clock that
//! hands out versions.
//!
//! A version is `(generation, origin)`; versions are totally ordered, so every node that has
//! seen the same writes holds the same winner, whatever order they arrived in (the seed's
//! per-node counters never converge after two simultaneous sets). Generations are
//! milliseconds since the Unix epoch, made monotonic: a set takes `max(now, highest seen + 1)`.
//! A set made after another in real time therefore wins even on a node that has not heard of
//! the first one, and a restarted node (whose clock has moved on) never goes back.
//!
//! Check and write happen under one lock (the seed read the generation without it, so two
//! concurrent notifies could move the value backwards).

use std::cmp::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::watch;

/// One version of the value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Versioned {
    /// The value.
    pub value: i64,
    /// Milliseconds since the Unix epoch of the write (hybrid logical clock); 0 for the
    /// initial value.
    pub generation: u64,
    /// Name of the node that made the write; empty for the initial value. Breaks ties
    /// between writes with the same generation.
    pub origin: Arc<str>,
}

impl Versioned {
    /// The initial value every node starts with: generation 0, no origin.
    pub fn initial(value: i64) -> Self {
        Self {
            value,
            generation: 0,
            origin: Arc::from(""),
        }
    }

    /// The total order of versions: generation, then origin, then value. The value only
    /// matters when two nodes were (wrongly) given the same name: even then every node
    /// picks the same winner.
    pub fn order(&self, other: &Self) -> Ordering {
        self.generation
            .cmp(&other.generation)
            .then_with(|| self.origin.cmp(&other.origin))
            .then_with(|| self.value.cmp(&other.value))
    }

    /// Whether `self` replaces `other`.
    pub fn is_newer_than(&self, other: &Self) -> bool {
        self.order(other) == Ordering::Greater
    }
}

/// Why an incoming version was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The generation lies further in the future than the allowed clock drift: accepting it
    /// would let one message pin the cluster to its value until that time.
    #[error(
        "generation {generation} is more than {}s ahead of this node's clock ({now})",
        max_drift.as_secs()
    )]
    TooFarAhead {
        /// The refused generation.
        generation: u64,
        /// This node's clock, in ms since the epoch.
        now: u64,
        /// The allowed drift.
        max_drift: Duration,
    },
}

/// What applying a version did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// It was newer and is now the value.
    Changed,
    /// It was older than or equal to the current version: nothing changed.
    Stale,
}

/// A source of "now" in ms since the epoch; tests substitute their own.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock in ms since the Unix epoch (0 before 1970).
pub fn system_clock() -> Clock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0)
    })
}

struct Inner {
    /// Highest generation this node has issued or accepted.
    highest: u64,
}

/// The register of one node. Cheap to clone.
#[derive(Clone)]
pub struct Register {
    inner: Arc<Mutex<Inner>>,
    current: Arc<watch::Sender<Versioned>>,
    clock: Clock,
    max_drift: Duration,
    name: Arc<str>,
}

impl Register {
    /// A register holding `initial` at generation 0, for the node called `name`.
    pub fn new(name: &str, initial: i64, max_drift: Duration, clock: Clock) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner { highest: 0 })),
            current: Arc::new(watch::Sender::new(Versioned::initial(initial))),
            clock,
            max_drift,
            name: Arc::from(name),
        }
    }

    /// The current version.
    pub fn get(&self) -> Versioned {
        self.current.borrow().clone()
    }

    /// A receiver that sees every change.
    pub fn subscribe(&self) -> watch::Receiver<Versioned> {
        self.current.subscribe()
    }

    /// Sets the value locally, with a generation newer than anything this node has seen.
    pub fn set(&self, value: i64) -> Versioned {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (self.clock)();
        // `highest` never exceeds now + max drift, so this cannot reach u64::MAX in practice;
        // saturating keeps it well defined even if a clock were set to the far future.
        let generation = now.max(inner.highest.saturating_add(1));
        inner.highest = generation;
        let version = Versioned {
            value,
            generation,
            origin: self.name.clone(),
        };
        // Under the lock, so watchers see versions in the order they were made.
        self.current.send_replace(version.clone());
        version
    }

    /// Applies a version heard from elsewhere, atomically: it replaces the current one only
    /// if it is newer. Generations beyond the allowed drift are refused.
    pub fn apply(&self, incoming: &Versioned) -> Result<Applied, Refused> {
        let mut inner = self.inner.lock().unwrap_or_else(PoisonError::into_inner);
        let now = (self.clock)();
        let limit =
            now.saturating_add(u64::try_from(self.max_drift.as_millis()).unwrap_or(u64::MAX));
        if incoming.generation > limit {
            return Err(Refused::TooFarAhead {
                generation: incoming.generation,
                now,
                max_drift: self.max_drift,
            });
        }
        inner.highest = inner.highest.max(incoming.generation);
        let changed = self.current.send_if_modified(|current| {
            if incoming.is_newer_than(current) {
                *current = incoming.clone();
                true
            } else {
                false
            }
        });
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::Stale
        })
    }

    /// This node's name (the origin of its writes).
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }
}

impl std::fmt::Display for Versioned {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (generation {}, origin {:?})",
            self.value, self.generation, self.origin
        )
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

    use super::*;

    fn fixed_clock(at: u64) -> (Clock, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(at));
        let read = now.clone();
        (Arc::new(move || read.load(AtomicOrdering::SeqCst)), now)
    }

    fn version(value: i64, generation: u64, origin: &str) -> Versioned {
        Versioned {
            value,
            generation,
            origin: Arc::from(origin),
        }
    }

    #[test]
    fn a_set_after_another_wins_on_a_node_that_never_heard_of_the_first() {
        let (clock, now) = fixed_clock(1_000);
        let a = Register::new("a", 42, Duration::from_secs(60), clock.clone());
        let b = Register::new("b", 42, Duration::from_secs(60), clock);
        let first = a.set(1);
        now.store(1_005, AtomicOrdering::SeqCst);
        let second = b.set(2);
        // b never saw `first`, yet its later write is the newer version everywhere.
        assert!(second.is_newer_than(&first));
        assert_eq!(a.apply(&second), Ok(Applied::Changed));
        assert_eq!(b.apply(&first), Ok(Applied::Stale));
        assert_eq!(a.get(), b.get());
        assert_eq!(a.get().value, 2);
    }

    #[test]
    fn simultaneous_sets_converge_on_one_winner_in_any_order() {
        let (clock, _) = fixed_clock(5_000);
        let a = Register::new("a", 42, Duration::from_secs(60), clock.clone());
        let b = Register::new("b", 42, Duration::from_secs(60), clock.clone());
        let va = a.set(10);
        let vb = b.set(20);
        assert_eq!(va.generation, vb.generation);
        a.apply(&vb).expect("within drift");
        b.apply(&va).expect("within drift");
        assert_eq!(a.get(), b.get());
        assert_eq!(a.get().value, 20, "origin \"b\" > \"a\" breaks the tie");
        // A third node hearing them in the other order agrees.
        let c = Register::new("c", 42, Duration::from_secs(60), clock);
        c.apply(&va).expect("within drift");
        c.apply(&vb).expect("within drift");
        assert_eq!(c.get(), a.get());
    }

    #[test]
    fn sets_never_go_back_even_when_the_clock_does() {
        let (clock, now) = fixed_clock(10_000);
        let r = Register::new("a", 0, Duration::from_secs(60), clock);
        let first = r.set(1);
        now.store(9_000, AtomicOrdering::SeqCst);
        let second = r.set(2);
        assert!(second.generation > first.generation);
        // A version heard from a node slightly ahead pushes the clock forward too.
        r.apply(&version(3, 20_000, "z")).expect("within drift");
        let third = r.set(4);
        assert_eq!(third.generation, 20_001);
        assert_eq!(r.get().value, 4);
    }

    #[test]
    fn stale_and_replayed_versions_are_ignored() {
        let (clock, _) = fixed_clock(10_000);
        let r = Register::new("a", 0, Duration::from_secs(60), clock);
        let v = version(7, 9_000, "b");
        assert_eq!(r.apply(&v), Ok(Applied::Changed));
        assert_eq!(r.apply(&v), Ok(Applied::Stale), "a replay changes nothing");
        assert_eq!(r.apply(&version(8, 8_000, "c")), Ok(Applied::Stale));
        assert_eq!(r.get().value, 7);
    }

    #[test]
    fn generations_beyond_the_drift_are_refused_and_change_nothing() {
        let (clock, _) = fixed_clock(10_000);
        let r = Register::new("a", 42, Duration::from_secs(60), clock);
        let forged = version(666, u64::MAX, "evil");
        assert!(matches!(r.apply(&forged), Err(Refused::TooFarAhead { .. })));
        assert!(r.apply(&version(666, 10_000 + 60_001, "evil")).is_err());
        assert_eq!(r.get(), Versioned::initial(42));
        // The clock was not dragged forward by the refused version either.
        assert_eq!(r.set(1).generation, 10_000);
        // Exactly at the limit is accepted.
        assert_eq!(r.apply(&version(5, 70_000, "b")), Ok(Applied::Changed));
    }

    #[test]
    fn concurrent_applies_never_move_the_version_backwards() {
        let (clock, _) = fixed_clock(1_000_000);
        let r = Register::new("a", 0, Duration::from_secs(60), clock);
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for g in 0..2_000u64 {
                        let generation = if t % 2 == 0 { g } else { 2_000 - g };
                        let _ = r.apply(&version(
                            i64::try_from(generation).unwrap_or(0),
                            generation,
                            "x",
                        ));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        assert_eq!(r.get().generation, 2_000);
        assert_eq!(r.get().value, 2_000);
    }
}
