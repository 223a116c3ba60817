//! `shoal storage` as a process: every acknowledged upload survives `kill -9`, and an upload
//! the crash cut short leaves nothing behind.

mod support;

use std::collections::HashMap;
use std::process::Child;
use std::sync::{Arc, Mutex};

struct StorageProcess {
    child: Child,
    base: String,
}

impl StorageProcess {
    fn start(data_dir: &std::path::Path) -> Self {
        let (child, base) = support::spawn_service(&["storage"], data_dir, &[]);
        Self { child, base }
    }
}

impl Drop for StorageProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Object `id` in version `v`: its length and every byte depend on both, so a reader can tell
/// which whole write it sees, or that it sees none.
fn object(id: u64, version: u8) -> Vec<u8> {
    vec![
        version.wrapping_mul(31).wrapping_add(id as u8);
        20_000 + (id as usize % 7) * 9_000 + usize::from(version) * 100
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_uploads_survive_kill_9() {
    shoal_core::client::install_crypto_provider();
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = StorageProcess::start(dir.path());
    // Acknowledged version per id; 4 writers keep overwriting 50 ids until the kill.
    let acked: Arc<Mutex<HashMap<u64, u8>>> = Arc::default();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..4u64 {
        let client = client.clone();
        let base = storage.base.clone();
        let acked = Arc::clone(&acked);
        writers.spawn(async move {
            for version in 1..=u8::MAX {
                for id in (writer..50).step_by(4) {
                    let sent = client
                        .post(format!("{base}/sendImage?state=working&id={id}"))
                        .body(object(id, version))
                        .send()
                        .await;
                    match sent {
                        Ok(r) if r.status() == 200 => {
                            acked.lock().expect("lock").insert(id, version);
                        }
                        _ => return, // the process is gone
                    }
                }
            }
        });
    }
    // Let some rounds complete, then kill mid-stream.
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        if acked
            .lock()
            .expect("lock")
            .values()
            .filter(|v| **v >= 3)
            .count()
            >= 20
        {
            break;
        }
    }
    drop(storage); // SIGKILL
    while writers.join_next().await.is_some() {}
    let acked = acked.lock().expect("lock").clone();
    assert!(acked.len() >= 20);

    let storage = StorageProcess::start(dir.path());
    for id in 0..50u64 {
        let r = client
            .get(format!("{}/getImage?state=working&id={id}", storage.base))
            .send()
            .await
            .expect("get");
        match acked.get(&id) {
            Some(&version) => {
                assert_eq!(r.status(), 200, "acknowledged object {id} is gone");
                let body = r.bytes().await.expect("body");
                // The acknowledged version, or the one after it if its write completed
                // but the answer was lost in the kill.
                let ok = body.as_ref() == object(id, version).as_slice()
                    || body.as_ref() == object(id, version.wrapping_add(1)).as_slice();
                assert!(
                    ok,
                    "object {id}: not the acknowledged version {version} (len {})",
                    body.len()
                );
            }
            None => {
                // Never acknowledged: absent, or whole.
                if r.status() == 200 {
                    let body = r.bytes().await.expect("body");
                    assert_eq!(
                        body.as_ref(),
                        object(id, 1).as_slice(),
                        "object {id} is torn"
                    );
                } else {
                    assert_eq!(r.status(), 404);
                }
            }
        }
    }
    // Temporary files of the uploads the kill interrupted were swept at start.
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("working"))
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
