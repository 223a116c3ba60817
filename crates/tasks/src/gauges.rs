//! The queue's state as Prometheus gauges, for alerting without parsing `/stats`: tasks per
//! state, and the workers that asked this replica for work lately.
//!
//! Counters of lease expiries and hand-backs are counted where they happen ([`crate::queue`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::queue::Queue;

/// How often the gauges are refreshed.
const REFRESH: Duration = Duration::from_secs(2);
/// A worker that has not asked for work for this long no longer counts as alive. Idle workers
/// ask at least every long-poll wait (20 s by default); busy ones after each task.
const ALIVE_WINDOW: Duration = Duration::from_secs(120);
/// Most worker names remembered: a client sending made-up names cannot grow this without end.
const MAX_WORKERS: usize = 10_000;

/// The workers that asked this replica for a task lately, by name.
#[derive(Clone, Debug, Default)]
pub struct Workers {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
}

impl Workers {
    /// Records that `name` asked for a task now.
    pub fn saw(&self, name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(at) = seen.get_mut(name) {
            *at = Instant::now();
        } else if seen.len() < MAX_WORKERS {
            seen.insert(name.to_owned(), Instant::now());
        }
    }

    /// Forgets workers not seen within the window; returns how many are left.
    fn alive(&self) -> usize {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        seen.retain(|_, at| at.elapsed() < ALIVE_WINDOW);
        seen.len()
    }
}

/// Refreshes the gauges every [`REFRESH`] until `stop`.
pub async fn publish(queue: Queue, workers: Workers, stop: CancellationToken) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics::gauge!("shoal_tasks_workers_alive").set(workers.alive() as f64);
        match queue.stats().await {
            Ok(stats) => {
                for (state, count) in [
                    ("not_started", stats.not_started),
                    ("held", stats.held),
                    ("in_progress", stats.in_progress),
                    ("finished", stats.finished),
                    ("failed", stats.failed),
                ] {
                    metrics::gauge!("shoal_tasks_tasks", "state" => state).set(count as f64);
                }
                metrics::gauge!("shoal_tasks_database_up").set(1.0);
            }
            Err(err) => {
                metrics::gauge!("shoal_tasks_database_up").set(0.0);
                tracing::debug!(error = %err, "cannot count the tasks");
            }
        }
    }
}
