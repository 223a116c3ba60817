//! `shoal submit` as a process keeps going when the instance serving it fails mid-way: a
//! download broken off by a dying instance and a 503 from one being replaced are retried,
//! and the result is written whole.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

const BIN: &str = env!("CARGO_BIN_EXE_shoal");

/// The result the fake server hands out: long enough that a broken-off answer is visibly
/// short.
fn result_bytes() -> Vec<u8> {
    (0..200_000u32).map(|i| (i % 251) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_retries_a_download_cut_off_by_a_dying_instance() {
    let downloads = Arc::new(AtomicU32::new(0));
    let counter = Arc::clone(&downloads);
    let app = Router::new()
        .route(
            "/api/v1/tasks",
            post(|| async {
                (
                    StatusCode::CREATED,
                    axum::Json(serde_json::json!({"id": 7})),
                )
            }),
        )
        .route(
            "/api/v1/tasks/7",
            get(|| async { axum::Json(serde_json::json!({"id": 7, "state": "finished"})) }),
        )
        .route(
            "/api/v1/tasks/7/result",
            get(move || {
                let attempt = counter.fetch_add(1, Ordering::SeqCst);
                async move { result_answer(attempt) }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().expect("tempdir");
    let input = dir.path().join("photo.png");
    std::fs::write(&input, b"not looked at by the fake server").expect("write");
    let out = dir.path().join("out");
    let command_out = out.clone();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(BIN)
            .arg("submit")
            .arg(&input)
            .args(["--server", &format!("http://{address}"), "--out"])
            .arg(&command_out)
            .output()
    })
    .await
    .expect("join")
    .expect("run submit");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(downloads.load(Ordering::SeqCst), 3, "cut off, 503, whole");
    let written = std::fs::read(out.join("photo.png")).expect("result written");
    assert_eq!(
        written,
        result_bytes(),
        "the whole result, not the cut-off one"
    );
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .expect("out")
        .map(|e| e.expect("entry").file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// First a body that breaks off after a few bytes (the instance died), then a 503 (a
/// replacement not ready yet), then the whole result.
fn result_answer(attempt: u32) -> Response {
    let whole = result_bytes();
    match attempt {
        0 => {
            let head = Bytes::copy_from_slice(&whole[..1000]);
            let stream = futures::stream::iter([
                Ok::<_, std::io::Error>(head),
                Err(std::io::Error::other("the instance died")),
            ]);
            Response::builder()
                .header(header::CONTENT_TYPE, "image/png")
                .header(header::CONTENT_LENGTH, whole.len())
                .body(Body::from_stream(stream))
                .expect("response")
        }
        1 => (StatusCode::SERVICE_UNAVAILABLE, "Error: shutting down").into_response(),
        _ => ([(header::CONTENT_TYPE, "image/png")], whole).into_response(),
    }
}
