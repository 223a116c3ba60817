//! The live set of a service's instances: kept current by a watch of the k/v store, spread
//! over by round robin, and steering around an instance that just failed.
//!
//! Round robin rather than least-outstanding: every caller of a service sends requests of a
//! similar size, and the long polls that are not (a worker waiting for a task) are spread
//! evenly by it too, whereas counting outstanding requests would count those polls as load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{KvStore, Listing, instance_prefix};
use crate::config::base_url;

/// How long an instance that failed is passed over, at first; doubles with each failure in a
/// row up to [`MAX_EJECTION`]. A dead instance's registration expires within the TTL anyway.
const FIRST_EJECTION: Duration = Duration::from_secs(2);
/// Longest an instance is passed over.
const MAX_EJECTION: Duration = Duration::from_secs(30);
/// How often an empty set looks again (also at the seed key, for a service that registers
/// only there, such as the tutorial's own programs).
const EMPTY_RECHECK: Duration = Duration::from_secs(1);

/// The live instances of one service.
#[derive(Debug)]
pub struct InstanceSet {
    key: String,
    members: watch::Sender<Vec<String>>,
    next: AtomicUsize,
    ejected: Mutex<HashMap<String, Ejection>>,
}

#[derive(Clone, Copy, Debug)]
struct Ejection {
    until: Instant,
    failures: u32,
}

impl InstanceSet {
    /// An empty set of the service `key`, filled by the watch.
    pub(super) fn new(key: &str) -> Self {
        Self {
            key: key.to_owned(),
            members: watch::channel(Vec::new()).0,
            next: AtomicUsize::new(0),
            ejected: Mutex::default(),
        }
    }

    /// A set of fixed base URLs (addresses given on the command line), never watched.
    pub fn fixed(key: &str, urls: Vec<String>) -> Self {
        Self {
            key: key.to_owned(),
            members: watch::channel(urls).0,
            next: AtomicUsize::new(0),
            ejected: Mutex::default(),
        }
    }

    /// The base URLs of the instances, sorted.
    pub fn members(&self) -> Vec<String> {
        self.members.borrow().clone()
    }

    /// How many instances there are.
    pub fn len(&self) -> usize {
        self.members.borrow().len()
    }

    /// Whether no instance is known.
    pub fn is_empty(&self) -> bool {
        self.members.borrow().is_empty()
    }

    /// Changes whenever the set does.
    pub fn subscribe(&self) -> watch::Receiver<Vec<String>> {
        self.members.subscribe()
    }

    /// Waits up to `limit` for the set to hold an instance; `false` if it stays empty.
    pub async fn wait_for_any(&self, limit: Duration) -> bool {
        let mut members = self.members.subscribe();
        tokio::time::timeout(limit, members.wait_for(|m| !m.is_empty()))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The next instance in turn that is not in `exclude`, preferring those that have not
    /// failed lately; `None` when every instance is excluded. An instance that failed is only
    /// passed over while others are left, never made unreachable.
    pub fn pick(&self, exclude: &[String]) -> Option<String> {
        let members = self.members.borrow();
        if members.is_empty() {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let candidates = (0..members.len())
            .map(|i| &members[(start + i) % members.len()])
            .filter(|m| !exclude.contains(m));
        let mut fallback: Option<(&String, Instant)> = None;
        for member in candidates {
            match ejected.get(member) {
                Some(e) if e.until > now => {
                    if fallback.is_none_or(|(_, until)| e.until < until) {
                        fallback = Some((member, e.until));
                    }
                }
                _ => return Some(member.clone()),
            }
        }
        fallback.map(|(m, _)| m.clone())
    }

    /// Whether an instance not in `exclude` is left (without taking a turn).
    pub fn has_other(&self, exclude: &[String]) -> bool {
        self.members.borrow().iter().any(|m| !exclude.contains(m))
    }

    /// Records that a call to `url` failed: it is passed over for a while. Failures while it
    /// is already passed over (calls that had no other choice) do not lengthen the pause;
    /// a failure of the first call after a pause doubles it.
    pub fn failed(&self, url: &str) {
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if ejected.get(url).is_some_and(|e| e.until > now) {
            return;
        }
        let failures = ejected.get(url).map_or(1, |e| e.failures.saturating_add(1));
        let wait = FIRST_EJECTION
            .saturating_mul(1 << failures.saturating_sub(1).min(8))
            .min(MAX_EJECTION);
        ejected.insert(
            url.to_owned(),
            Ejection {
                until: now + wait,
                failures,
            },
        );
        metrics::counter!("shoal_discovery_ejections_total", "service" => metric_name(&self.key))
            .increment(1);
    }

    /// Records that a call to `url` succeeded: it is no longer passed over.
    pub fn succeeded(&self, url: &str) {
        let mut ejected = self.ejected.lock().unwrap_or_else(PoisonError::into_inner);
        if !ejected.is_empty() {
            ejected.remove(url);
        }
    }

    /// Replaces the members (sorted, deduplicated); forgets failures of instances that left.
    fn replace(&self, mut urls: Vec<String>) {
        urls.sort();
        urls.dedup();
        self.ejected
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|url, _| urls.contains(url));
        metrics::gauge!("shoal_discovery_instances", "service" => metric_name(&self.key))
            .set(urls.len() as f64);
        self.members.send_if_modified(|current| {
            if *current == urls {
                false
            } else {
                tracing::info!(service = %self.key, instances = ?urls, "instances changed");
                *current = urls;
                true
            }
        });
    }
}

/// A metric label from a fixed set, whatever key a caller uses.
fn metric_name(key: &str) -> &'static str {
    match key {
        super::DATABASE_ADDRESS => "tasks",
        super::STORAGE_ADDRESS => "storage",
        super::MASTER_ADDRESS => "master",
        super::MULTICAST_ADDRESS => "multicast",
        _ => "other",
    }
}

/// Keeps `set` current until `stop` fires (when the last [`super::Discovery`] handle is
/// dropped): one listing, then long polls of the prefix. Failures keep the last set and retry
/// with backoff.
pub(super) async fn watch(kv: Arc<KvStore>, set: Arc<InstanceSet>, stop: CancellationToken) {
    let prefix = instance_prefix(&set.key);
    let mut after: Option<u64> = None;
    let mut failures = 0u32;
    let options = kv.options.clone();
    loop {
        let discovery = &kv;
        // An empty set looks again soon: a registrant may write only the seed key.
        let wait = if set.is_empty() {
            EMPTY_RECHECK
        } else {
            options.watch_wait
        };
        let outcome = tokio::select! {
            () = stop.cancelled() => return,
            outcome = discovery.list(&prefix, after, wait) => outcome,
        };
        match outcome {
            Ok(Listing::Changed(addresses, revision)) => {
                failures = 0;
                after = Some(revision);
                let mut urls: Vec<String> =
                    addresses.iter().filter_map(|a| base_url(a).ok()).collect();
                if urls.is_empty()
                    && let Ok(Some((seed, _))) = discovery.fetch(&set.key).await
                    && let Ok(url) = base_url(&seed)
                {
                    urls.push(url);
                }
                set.replace(urls);
            }
            Ok(Listing::Unchanged) => {
                failures = 0;
                if set.is_empty() {
                    // Re-list, so a seed-only registrant is found.
                    after = None;
                    if let Ok(Some((seed, _))) = discovery.fetch(&set.key).await
                        && let Ok(url) = base_url(&seed)
                    {
                        set.replace(vec![url]);
                    }
                }
            }
            Err(err) => {
                failures += 1;
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(
                        service = %set.key,
                        error = %format!("{err:#}"),
                        kept = set.len(),
                        "cannot watch the instances; keeping the last known set"
                    );
                }
                let pause = crate::backoff::exponential(
                    options.initial_backoff,
                    options.max_backoff,
                    failures,
                );
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(urls: &[&str]) -> InstanceSet {
        InstanceSet::fixed(
            "masterAddress",
            urls.iter().map(|u| (*u).to_owned()).collect(),
        )
    }

    #[test]
    fn round_robin_over_every_member() {
        let s = set(&["a", "b", "c"]);
        let mut seen: Vec<String> = (0..6).filter_map(|_| s.pick(&[])).collect();
        seen.sort();
        assert_eq!(seen, ["a", "a", "b", "b", "c", "c"]);
    }

    #[tokio::test]
    async fn a_failed_member_is_passed_over_but_never_unreachable() {
        let s = set(&["a", "b"]);
        s.failed("a");
        for _ in 0..10 {
            assert_eq!(s.pick(&[]).as_deref(), Some("b"));
        }
        // Excluding the healthy one still leaves the failed one.
        assert_eq!(s.pick(&["b".to_owned()]).as_deref(), Some("a"));
        s.succeeded("a");
        let picks: Vec<_> = (0..4).filter_map(|_| s.pick(&[])).collect();
        assert!(picks.contains(&"a".to_owned()), "{picks:?}");
        assert_eq!(s.pick(&["a".to_owned(), "b".to_owned()]), None);
    }

    #[tokio::test]
    async fn replacing_forgets_failures_of_members_that_left() {
        let s = set(&["a", "b"]);
        s.failed("a");
        s.replace(vec!["b".to_owned(), "c".to_owned(), "b".to_owned()]);
        assert_eq!(s.members(), ["b", "c"]);
        s.replace(vec!["a".to_owned()]);
        assert_eq!(s.pick(&[]).as_deref(), Some("a"));
    }
}
