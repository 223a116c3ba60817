//! A 200 MB object streams in and out with flat memory. Alone in its own test binary, so the
//! process's peak memory is this test's.

use std::time::Duration;

use futures::StreamExt as _;
use shoal_core::testkit::TestServer;

const SIZE: usize = 200 << 20;
const CHUNK: usize = 64 << 10;

fn byte_at(i: usize) -> u8 {
    (i % 253) as u8
}

/// Resident and peak-resident memory of this process, in bytes.
fn memory() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("no {name} in /proc/self/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mb_object_streams_with_flat_memory() {
    shoal_core::client::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = shoal_storage::Config::with_data_dir(dir.path());
    config.max_object_size = SIZE as u64;
    let server =
        TestServer::start(move |listener, shutdown| shoal_storage::run(config, listener, shutdown))
            .await
            .expect("start");
    let client = reqwest::Client::new();
    // Warm up allocators and connections so the baseline includes them.
    let r = client
        .post(server.url("/sendImage?state=working&id=1"))
        .body(vec![1u8; 4 << 20])
        .send()
        .await
        .expect("warm-up");
    assert_eq!(r.status(), 200);
    client
        .get(server.url("/getImage?state=working&id=1"))
        .send()
        .await
        .expect("warm-up")
        .bytes()
        .await
        .expect("warm-up body");
    // Reset the peak (Linux: writing 5 to clear_refs resets VmHWM to the current RSS).
    std::fs::write("/proc/self/clear_refs", "5").expect("reset peak memory");
    let (before, _) = memory();

    let chunks = futures::stream::iter((0..SIZE / CHUNK).map(|c| {
        let chunk: Vec<u8> = (c * CHUNK..(c + 1) * CHUNK).map(byte_at).collect();
        Ok::<_, std::io::Error>(chunk)
    }));
    let r = client
        .post(server.url("/sendImage?state=finished&id=2"))
        .header("content-length", SIZE)
        .body(reqwest::Body::wrap_stream(chunks))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("upload");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    assert_eq!(
        std::fs::metadata(dir.path().join("finished/2"))
            .expect("stored")
            .len(),
        SIZE as u64
    );

    let r = client
        .get(server.url("/getImage?state=finished&id=2"))
        .timeout(Duration::from_secs(300))
        .send()
        .await
        .expect("download");
    assert_eq!(r.status(), 200);
    assert_eq!(r.content_length(), Some(SIZE as u64));
    let mut body = r.bytes_stream();
    let mut offset = 0usize;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.expect("chunk");
        assert!(
            chunk
                .iter()
                .enumerate()
                .all(|(i, b)| *b == byte_at(offset + i)),
            "wrong bytes near offset {offset}"
        );
        offset += chunk.len();
    }
    assert_eq!(offset, SIZE);

    let (_, peak) = memory();
    let growth = peak.saturating_sub(before);
    // Buffering either way would cost ≥ 200 MB; streaming costs a few buffers.
    assert!(
        growth < 48 << 20,
        "peak memory grew by {} MiB moving a 200 MiB object",
        growth >> 20
    );
    server.stop().await.expect("stop");
}
