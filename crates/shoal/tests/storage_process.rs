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

/// Starts `shoal storage` on S3 the way the README says (credentials from the standard AWS
/// variables), with `extra` flags; returns the child and its stderr lines so far when it
/// exits before listening.
fn spawn_s3_storage(
    s3: &shoal_core::testkit::s3::S3Server,
    bucket: &str,
    dir: &std::path::Path,
) -> std::process::Command {
    let mut command = std::process::Command::new(support::BIN);
    command
        .args(["storage", "--s3-bucket", bucket, "--s3-endpoint"])
        .arg(s3.endpoint())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(dir)
        .env("AWS_ACCESS_KEY_ID", shoal_core::testkit::s3::ACCESS_KEY_ID)
        .env(
            "AWS_SECRET_ACCESS_KEY",
            shoal_core::testkit::s3::SECRET_ACCESS_KEY,
        )
        .env("AWS_REGION", shoal_core::testkit::s3::REGION)
        .env("RUST_LOG", "info");
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_process_on_s3_starts_round_trips_and_names_a_missing_bucket() {
    shoal_core::client::install_crypto_provider();
    let Some(s3) = shoal_core::testkit::s3::S3Server::start().expect("S3 server") else {
        return;
    };
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let bucket = s3.fresh_bucket().expect("bucket");

    // Starts (the TLS provider is installed before any client is built) and round-trips.
    let (child, base) = support::spawn_command(spawn_s3_storage(&s3, &bucket, dir.path()));
    let mut storage = StorageProcess { child, base };
    let ready = client
        .get(format!("{}/readyz", storage.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 200);
    let image = object(7, 1);
    let sent = client
        .post(format!("{}/sendImage?state=working&id=7", storage.base))
        .body(image.clone())
        .send()
        .await
        .expect("send");
    assert_eq!(sent.status(), 200, "{:?}", sent.text().await);
    let got = client
        .get(format!("{}/getImage?state=working&id=7", storage.base))
        .send()
        .await
        .expect("get");
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.expect("body").as_ref(), image.as_slice());

    // The bucket disappears under the running service: /readyz says so, with the reason.
    let deleted = client
        .delete(format!("{}/deleteImage?state=working&id=7", storage.base))
        .send()
        .await
        .expect("delete");
    assert_eq!(deleted.status(), 200);
    let gone = client
        .delete(format!("{}/{bucket}", s3.endpoint()))
        .send()
        .await
        .expect("delete bucket");
    assert!(gone.status().is_success(), "{}", gone.status());
    let ready = client
        .get(format!("{}/readyz", storage.base))
        .send()
        .await
        .expect("readyz");
    assert_eq!(ready.status(), 503);
    let reason = ready.text().await.expect("text");
    assert!(reason.contains("does not exist"), "{reason}");
    let _ = storage.child.kill();

    // A missing bucket fails the start with a clear reason, not a ready service that 500s.
    let output = spawn_s3_storage(&s3, "nosuch-bucket", dir.path())
        .stdout(std::process::Stdio::null())
        .output()
        .expect("run");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("S3 bucket nosuch-bucket does not exist"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
}
