//! `shoal up`, the README's main command: starts, prints a working URL, stops on SIGTERM.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_prints_a_working_url_and_stops_on_sigterm() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_shoal"))
        .args([
            "up",
            "--kv-listen",
            "127.0.0.1:0",
            "--tasks-listen",
            "127.0.0.1:0",
            "--storage-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn shoal up");
    let stdout = child.stdout.take().expect("stdout");
    let line = BufReader::new(stdout)
        .lines()
        .next()
        .expect("a line on stdout")
        .expect("read");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {line:?}"))
        .trim_end_matches([',', '.', ')'])
        .to_owned();
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/set?key=hello&value=world"))
        .send()
        .await
        .expect("set");
    assert_eq!(r.text().await.expect("body"), "success");
    let r = client
        .get(format!("{url}/get?key=hello"))
        .send()
        .await
        .expect("get");
    assert_eq!(r.text().await.expect("body"), "world");
    // The other services registered themselves; storage works through its registered address.
    let mut registered = std::collections::HashMap::new();
    for key in ["databaseAddress", "storageAddress"] {
        let started = Instant::now();
        let address = loop {
            let r = client
                .get(format!("{url}/get?key={key}"))
                .send()
                .await
                .expect("get");
            if r.status() == 200 {
                break r.text().await.expect("body");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{key} never registered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        registered.insert(key, address);
    }
    let storage = format!("http://{}", registered["storageAddress"]);
    let r = client
        .post(format!("{storage}/sendImage?state=working&id=0"))
        .body(b"\x89PNG\r\n\x1a\n".to_vec())
        .send()
        .await
        .expect("sendImage");
    assert_eq!(r.text().await.expect("body"), "success");
    assert!(dir.path().join("storage/working/0").exists());
    assert!(
        dir.path().join("kv").exists(),
        "state lives under --data-dir"
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let started = Instant::now();
    let exit = loop {
        if let Some(exit) = child.try_wait().expect("wait") {
            break exit;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit:?}");
}
