//! A worker's stable name: the one its claims carry, so that when it starts again after a
//! crash it can hand back the claims of its previous life at once instead of leaving them
//! until their leases run out.
//!
//! Without `--name`, the name is the host name and an id kept in `--data-dir`
//! (`worker-id`, made on first start). The directory is locked while the worker runs, so a
//! second worker started on the same directory is refused instead of taking the same name
//! and handing back the first one's live claims.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};

/// The worker's name, and the lock that keeps it this process's alone.
#[derive(Debug)]
pub struct Identity {
    /// The name on its claims.
    pub name: String,
    /// Held for the life of the process (released by the OS when it dies).
    _lock: Option<File>,
}

/// Longest name the task database accepts.
const MAX_NAME: usize = 256;

impl Identity {
    /// `--name` as given: the operator vouches that no other live worker uses it.
    pub fn named(name: &str) -> anyhow::Result<Self> {
        if name.is_empty() || name.len() > MAX_NAME {
            bail!("--name must be 1 to {MAX_NAME} bytes");
        }
        Ok(Self {
            name: name.to_owned(),
            _lock: None,
        })
    }

    /// `HOST-ID`, with the id kept in `dir` (made there on first start), and `dir` locked.
    pub fn persistent(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the worker's --data-dir {}", dir.display()))?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("worker.lock"))
            .with_context(|| format!("cannot open {}", dir.join("worker.lock").display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => bail!(
                "another worker is running with --data-dir {}; give each worker its own \
                 directory (or its own --name)",
                dir.display()
            ),
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).context(format!("cannot lock {}", dir.display()));
            }
        }
        let id = read_or_make_id(dir)?;
        Ok(Self {
            name: format!("{}-{id}", host_name()),
            _lock: Some(lock),
        })
    }
}

fn read_or_make_id(dir: &Path) -> anyhow::Result<String> {
    let path = dir.join("worker-id");
    match std::fs::read_to_string(&path) {
        Ok(text) if is_id(text.trim()) => return Ok(text.trim().to_owned()),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "the worker id file is malformed; making a new id")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).context(format!("cannot read {}", path.display())),
    }
    let id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    // Written whole or not at all: a crash mid-write must not leave a torn id.
    let temporary = dir.join(".worker-id.tmp");
    let mut file = File::create(&temporary)
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    file.write_all(id.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, &path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(id)
}

fn is_id(text: &str) -> bool {
    text.len() == 12 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The host's name, for people reading claims; `worker` when it cannot be read.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_persists_and_the_directory_is_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = Identity::persistent(dir.path()).expect("first");
        let err = Identity::persistent(dir.path()).expect_err("locked");
        assert!(err.to_string().contains("another worker"), "{err}");
        let name = first.name.clone();
        drop(first);
        let again = Identity::persistent(dir.path()).expect("again");
        assert_eq!(again.name, name, "the same directory gives the same name");
        let other = tempfile::tempdir().expect("tempdir");
        assert_ne!(
            Identity::persistent(other.path()).expect("other").name,
            name
        );
    }

    #[test]
    fn given_names_are_bounded() {
        assert!(Identity::named("").is_err());
        assert!(Identity::named(&"x".repeat(300)).is_err());
        assert_eq!(Identity::named("host-a").expect("ok").name, "host-a");
    }
}
