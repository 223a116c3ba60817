//! Running the built `shoal` binary in tests.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// Starts `shoal <args…> --listen 127.0.0.1:0 --log-format json --data-dir DIR <extra…>`, waits
/// for its "listening" log line and returns the child and its base URL. Its stderr keeps being
/// drained so it never blocks on a full pipe.
pub fn spawn_service(args: &[&str], data_dir: &Path, extra: &[&str]) -> (Child, String) {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--data-dir",
        ])
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info");
    spawn_command(command)
}

/// Spawns a prepared `shoal` command that logs JSON, waits for its "listening" line and
/// returns the child and its base URL.
pub fn spawn_command(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn shoal");
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the service exited before listening")
            .expect("read");
        let Ok(event) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if event["message"] == "listening" {
            break event["address"].as_str().expect("address").to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, format!("http://{address}"))
}
