//! An instance's registration: its own key under `svc/<key>/`, renewed by a heartbeat, and
//! the seed's one-address key kept pointing at a live instance.
//!
//! Every instance looks after the seed key at each heartbeat and whenever the set of
//! instances changes: it writes its own address when the key is absent or names an address
//! that is no longer a live instance, and renews the key when it holds it. Every write is
//! conditional on the revision it read, so instances racing for the key cannot overwrite each
//! other, and a graceful stop removes the key only if it is still this instance's. A stopped
//! instance's key is taken over within milliseconds (the others watch the set); a killed one's
//! within the TTL.

use std::sync::Arc;

use anyhow::anyhow;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Discovery, InstanceSet, KvStore, instance_prefix};
use crate::config::base_url;

/// A live registration: renewed in the background until [`Registration::stop`] or the
/// cancellation token passed to [`Discovery::register`].
#[derive(Debug)]
pub struct Registration {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl Registration {
    /// Stops renewing and removes this instance's keys (unless somebody else has written them
    /// since).
    pub async fn stop(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

/// What this instance last wrote.
struct Held {
    /// Revision of its own instance key.
    instance: u64,
    /// Revision of the seed key, while this instance holds it.
    seed: Option<u64>,
}

impl Discovery {
    /// Registers this instance of the service `key` at `address`: writes its instance key with
    /// the TTL, retrying with backoff until the deadline (the k/v store may start after us),
    /// then renews it every heartbeat until `cancel` fires, when it removes it. Fails only
    /// when the first write cannot be made before the deadline; a cancellation before then
    /// returns at once with a registration that holds nothing.
    pub async fn register(
        &self,
        key: &str,
        address: &str,
        cancel: CancellationToken,
    ) -> anyhow::Result<Registration> {
        let kv = Arc::clone(&self.inner.kv);
        let instance_key = format!("{}{address}", instance_prefix(key));
        let deadline = Instant::now() + kv.options.deadline;
        // A shutdown while the k/v store is still unreachable must not wait out the deadline:
        // nothing was written, so there is nothing to remove.
        let what = format!("register {key}");
        let first = tokio::select! {
            () = cancel.cancelled() => None,
            first = kv.retry_until(deadline, &what, || async {
                kv.put(&instance_key, address, None)
                    .await?
                    .ok_or_else(|| anyhow!("unconditional write refused"))
            }) => Some(first?),
        };
        let Some(revision) = first else {
            tracing::info!(key, "shutdown before registering");
            return Ok(Registration {
                cancel,
                task: tokio::spawn(async {}),
            });
        };
        let set = self.instances(key);
        // The set holds at least this instance once its first listing is in; judging the seed
        // key's holder dead before then would steal the key from a live instance.
        set.wait_for_any(kv.options.heartbeat).await;
        let mut held = Held {
            instance: revision,
            seed: None,
        };
        let own = base_url(address).map_err(|e| anyhow!("advertised address: {e}"))?;
        held.seed = look_after_seed(&kv, key, address, &own, &set, held.seed).await;
        tracing::info!(key, address, kv = %kv.urls.join(","), "registered");
        let key = key.to_owned();
        let address = address.to_owned();
        let token = cancel.child_token();
        let stop = token.clone();
        // Keeps the watch of our own set alive while the registration runs.
        let discovery = self.clone();
        let task = tokio::spawn(async move {
            let options = kv.options.clone();
            let mut changes = set.subscribe();
            let mut backoff = options.initial_backoff;
            let mut next = Instant::now() + options.heartbeat;
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep_until(next) => {
                        match kv.put(&instance_key, &address, None).await {
                            Ok(Some(rev)) => {
                                held.instance = rev;
                                backoff = options.initial_backoff;
                                next = Instant::now() + options.heartbeat;
                            }
                            Ok(None) | Err(_) => {
                                tracing::warn!(key, "heartbeat failed; retrying");
                                next = Instant::now() + backoff;
                                backoff = (backoff * 2).min(options.max_backoff);
                                continue;
                            }
                        }
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                }
                held.seed = look_after_seed(&kv, &key, &address, &own, &set, held.seed).await;
            }
            if let Some(seed) = held.seed
                && let Err(err) = kv.remove_if(&key, seed).await
            {
                tracing::warn!(key, error = %err, "could not remove the seed key; it will expire");
            }
            match kv.remove_if(&instance_key, held.instance).await {
                Ok(()) => tracing::info!(key, "deregistered"),
                Err(err) => {
                    tracing::warn!(key, error = %err, "could not deregister; the key will expire")
                }
            }
            drop(discovery);
        });
        Ok(Registration {
            cancel: token,
            task,
        })
    }
}

/// Makes sure the seed key names a live instance: takes it when it is absent or names an
/// instance that is gone, renews it when it is ours. Returns the revision this instance now
/// holds it at, if it does. Failures are logged and retried at the next heartbeat.
async fn look_after_seed(
    kv: &KvStore,
    key: &str,
    address: &str,
    own: &str,
    set: &InstanceSet,
    held: Option<u64>,
) -> Option<u64> {
    let current = match kv.fetch(key).await {
        Ok(current) => current,
        Err(err) => {
            tracing::debug!(key, error = %format!("{err:#}"), "cannot read the seed key");
            return held;
        }
    };
    let condition = match &current {
        None => 0,
        Some((value, revision)) => {
            let holder = base_url(value).ok();
            let ours = holder.as_deref() == Some(own);
            let live = holder
                .as_ref()
                .is_some_and(|h| set.members().iter().any(|m| m == h));
            if !ours && live {
                return None;
            }
            *revision
        }
    };
    match kv.put(key, address, Some(condition)).await {
        Ok(Some(revision)) => {
            if current.is_none() || held.is_none() {
                tracing::info!(key, address, "holding the seed key");
            }
            Some(revision)
        }
        // Another instance took it first: theirs.
        Ok(None) => None,
        Err(err) => {
            tracing::debug!(key, error = %format!("{err:#}"), "cannot write the seed key");
            held
        }
    }
}
