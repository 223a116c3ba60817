//! `shoal frontend` as a process, with the flags README.md and docs/DEPLOY.md give a frontend
//! on a network: basic authentication and an upload rate limit (on loopback here).

mod support;

use std::process::{Command, Stdio};

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_networked_frontend_asks_for_credentials_and_says_what_it_lacks() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let (kv, kv_base) = support::spawn_service(&["kv"], &dir.path().join("kv"), &[]);
    let _kv = Killed(kv);
    let mut command = Command::new(support::BIN);
    command
        .args(["frontend", "--kv", &kv_base, "--listen", "127.0.0.1:0"])
        .args(["--basic-auth", "ann:opensesame", "--rate-limit", "30/min"])
        .args(["--log-format", "json"])
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    let (frontend, base) = support::spawn_command(command);
    let _frontend = Killed(frontend);
    let client = reqwest::Client::new();
    let r = client.get(format!("{base}/")).send().await.expect("get");
    assert_eq!(r.status(), 401);
    let r = client
        .get(format!("{base}/"))
        .basic_auth("ann", Some("opensesame"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 200);
    assert_eq!(
        client
            .get(format!("{base}/healthz"))
            .send()
            .await
            .expect("healthz")
            .status(),
        200
    );
    // No master has registered: not ready, and the reason names what is missing.
    let r = client
        .get(format!("{base}/readyz"))
        .basic_auth("ann", Some("opensesame"))
        .send()
        .await
        .expect("readyz");
    assert_eq!(r.status(), 503);
    let reason = r.text().await.expect("text");
    assert!(reason.contains("the master"), "{reason}");
}
