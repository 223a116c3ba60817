//! The API suite. Every case runs twice: on the local directory and on S3.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt as _;

use crate::support::{Backend, png};

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(&crate::support::Backend::local()).await;
                }
            )*
        }
        mod s3 {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let Some(backend) = crate::support::Backend::s3() else { return };
                    super::$case(&backend).await;
                }
            )*
        }
    };
}

suite!(
    seed_usage,
    bad_input_is_400_and_changes_nothing,
    traversal_attempts_never_leave_the_store,
    unknown_objects_are_404_without_internals,
    wrong_method_is_405,
    oversized_bodies_are_413_and_store_nothing,
    interrupted_upload_leaves_nothing,
    head_etag_and_conditional_get,
    delete_removes_the_object,
    concurrent_writers_and_readers_never_see_a_torn_object,
    large_objects_stream_in_parts,
    objects_survive_a_restart,
    retention_removes_old_objects,
    token_guards_every_route_but_healthz,
);

/// The seed's usage: upload an image, read it back; an upload replaces the object.
async fn seed_usage(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    let image = png(5000, 7);
    let r = storage.put("state=working&id=1", image.clone()).await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert!(r.header("etag").is_some());

    let r = storage.get("state=working&id=1").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), image.as_slice());
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(r.header("content-length"), Some(image.len().to_string()));

    // The two states are two collections.
    assert_eq!(storage.get("state=finished&id=1").await.status, 404);
    let jpeg = b"\xff\xd8\xff\xe0 a jpeg".to_vec();
    assert_eq!(
        storage
            .put("state=finished&id=1", jpeg.clone())
            .await
            .status,
        200
    );
    let r = storage.get("state=finished&id=1").await;
    assert_eq!(r.body.as_ref(), jpeg.as_slice());
    assert_eq!(r.header("content-type").as_deref(), Some("image/jpeg"));

    // Replacing.
    let replacement = png(10, 1);
    assert_eq!(
        storage
            .put("state=working&id=1", replacement.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        storage.get("state=working&id=1").await.body.as_ref(),
        replacement.as_slice()
    );

    // Unknown bytes are served as such; an empty object is an object.
    assert_eq!(storage.put("id=2&state=working", "plain").await.status, 200);
    let r = storage.get("state=working&id=2").await;
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        storage.put("state=working&id=3", Vec::new()).await.status,
        200
    );
    let r = storage.get("state=working&id=3").await;
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(
        backend.names().await,
        ["finished/1", "working/1", "working/2", "working/3"]
    );
    storage.stop().await;
}

const BAD_QUERIES: &[&str] = &[
    "",
    "state=working",
    "id=1",
    "state=working&id=",
    "state=&id=1",
    "state=working&id=01",
    "state=working&id=+1",
    "state=working&id=-1",
    "state=working&id=1.5",
    "state=working&id=%201",
    "state=working&id=0x1",
    "state=working&id=9223372036854775808",
    "state=working&id=123456789012345678901234567890",
    "state=done&id=1",
    "state=WORKING&id=1",
    "state=working&id=%zz",
];

/// Malformed parameters are a 400 on every route, and nothing is stored.
async fn bad_input_is_400_and_changes_nothing(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    assert_eq!(
        storage.put("state=working&id=1", png(100, 1)).await.status,
        200
    );
    for query in BAD_QUERIES {
        let r = storage.put(query, png(100, 2)).await;
        assert_eq!(r.status, 400, "sendImage?{query}");
        assert!(r.text().starts_with("Error: "), "{query}: {}", r.text());
        let r = storage.get(query).await;
        assert_eq!(r.status, 400, "getImage?{query}");
        assert!(r.text().starts_with("Error: "), "{query}: {}", r.text());
        assert_eq!(
            storage.head(query).await.status,
            400,
            "HEAD getImage?{query}"
        );
        assert_eq!(
            storage.delete(query).await.status,
            400,
            "deleteImage?{query}"
        );
    }
    assert_eq!(backend.names().await, ["working/1"]);
    assert_eq!(
        storage.get("state=working&id=1").await.body.as_ref(),
        png(100, 1).as_slice()
    );
    storage.stop().await;
}

/// Paths, encoded slashes, NUL bytes and absolute paths in either parameter are refused
/// before any name is built.
async fn traversal_attempts_never_leave_the_store(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    let outside = backend.dir().parent().expect("parent").join("escaped");
    for query in [
        "state=working&id=../escaped",
        "state=working&id=..%2Fescaped",
        "state=working&id=..%2F..%2F..%2Ftmp%2Fescaped",
        "state=working&id=%2Ftmp%2Fescaped",
        "state=..&id=1",
        "state=..%2F..&id=1",
        "state=working%2F..%2F..&id=1",
        "state=%2Ftmp&id=1",
        "state=working&id=1%00",
        "state=working%00&id=1",
        "state=working&id=1%2F..%2F2",
        "state=working&id=1/../2",
        "state=working/../finished&id=1",
    ] {
        let r = storage.put(query, png(10, 3)).await;
        assert_eq!(r.status, 400, "sendImage?{query}");
        assert_eq!(storage.get(query).await.status, 400, "getImage?{query}");
    }
    assert!(!outside.exists(), "something was written outside the store");
    assert_eq!(backend.names().await, Vec::<String>::new());
    storage.stop().await;
}

/// A missing object is 404 on every route, and the message names the object, not a path.
async fn unknown_objects_are_404_without_internals(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    let r = storage.get("state=working&id=42").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (404, "Error: No image working/42.")
    );
    let dir = backend.dir().to_string_lossy().into_owned();
    assert!(!r.text().contains(&dir));
    assert_eq!(storage.head("state=working&id=42").await.status, 404);
    assert_eq!(storage.delete("state=working&id=42").await.status, 404);
    storage.stop().await;
}

/// Wrong methods are 405 with the seed's message and an `Allow` header.
async fn wrong_method_is_405(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    let c = &storage.client;
    let r = storage
        .send(c.get(storage.url("/sendImage?state=working&id=1")))
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (405, "Error: Only POST accepted.")
    );
    let r = storage
        .send(c.post(storage.url("/getImage?state=working&id=1")))
        .await;
    assert_eq!(r.status, 405);
    assert!(r.text().starts_with("Error: Only GET"), "{}", r.text());
    let r = storage
        .send(c.get(storage.url("/deleteImage?state=working&id=1")))
        .await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (405, "Error: Only DELETE accepted.")
    );
    assert_eq!(backend.names().await, Vec::<String>::new());
    storage.stop().await;
}

/// Over `--max-object-size`: 413 before the body is read when its length is announced, and at
/// the limit when it is streamed; either way nothing is stored and no temporary file remains.
async fn oversized_bodies_are_413_and_store_nothing(backend: &Backend) {
    let storage = backend.start(|c| c.max_object_size = 64 * 1024).await;
    // Exactly the limit is fine.
    assert_eq!(
        storage
            .put("state=working&id=1", png(64 * 1024, 1))
            .await
            .status,
        200
    );

    // Sent by hand: a client still writing a body the server refused could see the
    // connection closed under it instead of the answer, so each request stops where the
    // server stops reading and then reads the answer.
    let announced = |id: u32| {
        format!(
            "POST /sendImage?state=working&id={id} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            64 * 1024 + 1
        )
        .into_bytes()
    };

    // Announced: answered without reading the body.
    let answer = storage.raw(&announced(2)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("Error: "), "{answer}");

    // Streamed (chunked, no length): cut off at the limit. One byte past the limit and
    // nothing after it, so the server has read every byte sent when it refuses.
    let mut request =
        b"POST /sendImage?state=working&id=3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..8 {
        request.extend_from_slice(format!("{:x}\r\n", 8 * 1024).as_bytes());
        request.extend_from_slice(&[5u8; 8 * 1024]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"1\r\n\x05");
    let answer = storage.raw(&request).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("Error: "), "{answer}");

    // A replacement that is too large leaves the old object in place.
    let answer = storage.raw(&announced(1)).await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert_eq!(
        storage.get("state=working&id=1").await.body.as_ref(),
        png(64 * 1024, 1).as_slice()
    );
    assert_eq!(backend.names().await, ["working/1"]);
    storage.stop().await;
}

/// A client that goes away mid-body leaves no object and no temporary file — also when the
/// upload was large enough to have started writing out (local) or uploading parts (S3).
async fn interrupted_upload_leaves_nothing(backend: &Backend) {
    let storage = backend.start(|c| c.max_object_size = 64 << 20).await;
    let address = storage.base.trim_start_matches("http://").to_owned();
    for (id, announced, sent) in [(1, 1 << 20, 100_000), (2, 40 << 20, 20 << 20)] {
        let mut socket = tokio::net::TcpStream::connect(&address)
            .await
            .expect("connect");
        socket
            .write_all(
                format!(
                    "POST /sendImage?state=working&id={id} HTTP/1.1\r\nHost: {address}\r\nContent-Length: {announced}\r\n\r\n"
                )
                .as_bytes(),
            )
            .await
            .expect("write");
        let mut remaining: usize = sent;
        let block = vec![1u8; 64 * 1024];
        while remaining > 0 {
            let n = remaining.min(block.len());
            socket.write_all(&block[..n]).await.expect("write body");
            remaining -= n;
        }
        socket.flush().await.expect("flush");
        tokio::time::sleep(Duration::from_millis(300)).await;
        drop(socket);
    }
    // The server notices, cleans up, and nothing is visible at any point after.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let names = backend.names().await;
        if names.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "left behind: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(storage.get("state=working&id=1").await.status, 404);
    assert_eq!(storage.get("state=working&id=2").await.status, 404);
    // And the service still works.
    assert_eq!(
        storage.put("state=working&id=1", png(10, 1)).await.status,
        200
    );
    storage.stop().await;
}

/// HEAD tells existence, size, type and entity tag; conditional GET answers 304 while the
/// object is unchanged and the new bytes once it is replaced.
async fn head_etag_and_conditional_get(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    let image = png(3000, 4);
    let put = storage.put("state=finished&id=9", image.clone()).await;
    let r = storage.head("state=finished&id=9").await;
    assert_eq!(r.status, 200);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-length"), Some("3000".to_owned()));
    assert_eq!(r.header("content-type").as_deref(), Some("image/png"));
    let etag = r.header("etag").expect("etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");
    assert_eq!(put.header("etag").as_deref(), Some(etag.as_str()));
    let last_modified = r.header("last-modified").expect("last-modified");

    let get = storage.get("state=finished&id=9").await;
    assert_eq!(get.header("etag").as_deref(), Some(etag.as_str()));

    let conditional = |tag: &str| {
        storage
            .client
            .get(storage.url("/getImage?state=finished&id=9"))
            .header("if-none-match", tag)
    };
    let r = storage.send(conditional(&etag)).await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    assert_eq!(r.header("etag").as_deref(), Some(etag.as_str()));
    let r = storage
        .send(conditional(&format!("\"other\", {etag}")))
        .await;
    assert_eq!(r.status, 304);
    let r = storage.send(conditional("*")).await;
    assert_eq!(r.status, 304);
    let r = storage.send(conditional("\"other\"")).await;
    assert_eq!((r.status, r.body.len()), (200, 3000));
    let r = storage
        .send(
            storage
                .client
                .head(storage.url("/getImage?state=finished&id=9"))
                .header("if-none-match", &etag),
        )
        .await;
    assert_eq!(r.status, 304);
    let r = storage
        .send(
            storage
                .client
                .get(storage.url("/getImage?state=finished&id=9"))
                .header("if-modified-since", &last_modified),
        )
        .await;
    assert_eq!(r.status, 304);
    let r = storage
        .send(
            storage
                .client
                .get(storage.url("/getImage?state=finished&id=9"))
                .header("if-modified-since", "Mon, 01 Jan 2001 00:00:00 GMT"),
        )
        .await;
    assert_eq!(r.status, 200);

    // Replaced (same length, other bytes): the old tag no longer matches.
    let replacement = png(3000, 5);
    assert_eq!(
        storage
            .put("state=finished&id=9", replacement.clone())
            .await
            .status,
        200
    );
    let r = storage.send(conditional(&etag)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.as_ref(), replacement.as_slice());
    assert_ne!(r.header("etag").as_deref(), Some(etag.as_str()));
    storage.stop().await;
}

/// deleteImage removes the object; a second delete is a 404.
async fn delete_removes_the_object(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    storage.put("state=working&id=5", png(100, 1)).await;
    storage.put("state=finished&id=5", png(100, 2)).await;
    let r = storage.delete("state=working&id=5").await;
    assert_eq!((r.status, r.text().as_str()), (200, "success"));
    assert_eq!(storage.get("state=working&id=5").await.status, 404);
    assert_eq!(storage.delete("state=working&id=5").await.status, 404);
    assert_eq!(storage.get("state=finished&id=5").await.status, 200);
    assert_eq!(backend.names().await, ["finished/5"]);
    storage.stop().await;
}

/// Writers keep replacing one object with whole objects of different sizes, each filled with
/// its own byte; readers must always see one whole object: a length that belongs to its fill
/// byte and every byte equal.
async fn concurrent_writers_and_readers_never_see_a_torn_object(backend: &Backend) {
    let storage = Arc::new(backend.start(|_| {}).await);
    let size_of = |fill: u8| 50_000 + usize::from(fill) * 3_000;
    assert_eq!(
        storage
            .put("state=working&id=7", vec![0u8; size_of(0)])
            .await
            .status,
        200
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..4u8 {
        let storage = Arc::clone(&storage);
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut round = 0u8;
            let mut writes = 0;
            while !stop.is_cancelled() {
                let fill = writer * 40 + round % 40 + 1;
                round = round.wrapping_add(1);
                let r = storage
                    .put("state=working&id=7", vec![fill; size_of(fill)])
                    .await;
                assert_eq!(r.status, 200, "{}", r.text());
                writes += 1;
            }
            writes
        });
    }
    for _ in 0..4 {
        let storage = Arc::clone(&storage);
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut reads = 0;
            while !stop.is_cancelled() {
                let r = storage.get("state=working&id=7").await;
                assert_eq!(r.status, 200);
                let Some(&fill) = r.body.first() else {
                    panic!("torn: an empty object was visible");
                };
                assert_eq!(
                    r.body.len(),
                    size_of(fill),
                    "torn: length of another object"
                );
                assert!(r.body.iter().all(|b| *b == fill), "torn: mixed bytes");
                reads += 1;
            }
            reads
        });
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut total = 0;
    while let Some(done) = tasks.join_next().await {
        total += done.expect("no assertion failed");
    }
    assert!(total > 20, "too little happened to mean anything: {total}");
    assert_eq!(backend.names().await, ["working/7"]);
}

/// An object larger than the write buffer (local) and than one S3 part goes through whole:
/// 20 MiB streamed in, read back byte for byte.
async fn large_objects_stream_in_parts(backend: &Backend) {
    let storage = backend.start(|c| c.max_object_size = 64 << 20).await;
    let len = 20 << 20;
    let pattern = |i: usize| (i % 251) as u8;
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..len / 65536)
        .map(|c| Ok((c * 65536..(c + 1) * 65536).map(pattern).collect()))
        .collect();
    let r = storage
        .put(
            "state=finished&id=20",
            reqwest::Body::wrap_stream(futures::stream::iter(chunks)),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let r = storage.get("state=finished&id=20").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), len);
    assert!(r.body.iter().enumerate().all(|(i, b)| *b == pattern(i)));
    assert_eq!(r.header("content-length"), Some(len.to_string()));
    assert_eq!(backend.names().await, ["finished/20"]);
    storage.stop().await;
}

/// What was acknowledged is there after a restart.
async fn objects_survive_a_restart(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    for id in 0..20 {
        let r = storage
            .put(&format!("state=working&id={id}"), png(1000 + id, id as u8))
            .await;
        assert_eq!(r.status, 200);
    }
    storage.stop().await;
    let storage = backend.start(|_| {}).await;
    for id in 0..20 {
        let r = storage.get(&format!("state=working&id={id}")).await;
        assert_eq!(r.body.as_ref(), png(1000 + id, id as u8).as_slice());
    }
    storage.stop().await;
}

/// `--retention` removes objects older than the limit (checked at start and every minute)
/// and keeps newer ones.
async fn retention_removes_old_objects(backend: &Backend) {
    let storage = backend.start(|_| {}).await;
    storage.put("state=working&id=1", png(10, 1)).await;
    storage.put("state=finished&id=1", png(10, 1)).await;
    storage.stop().await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let storage = backend
        .start(|c| c.retention = Some(Duration::from_secs(2)))
        .await;
    storage.put("state=working&id=2", png(10, 2)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while backend.names().await != ["working/2"] {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{:?}",
            backend.names().await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(storage.get("state=working&id=1").await.status, 404);
    assert_eq!(storage.get("state=working&id=2").await.status, 200);
    storage.stop().await;
}

/// With `--token`, every route but `/healthz` needs it.
async fn token_guards_every_route_but_healthz(backend: &Backend) {
    let storage = backend
        .start(|c| c.common.token = Some(shoal_core::config::Token::new("s3cret")))
        .await;
    assert_eq!(
        storage.put("state=working&id=1", png(10, 1)).await.status,
        401
    );
    assert_eq!(storage.get("state=working&id=1").await.status, 401);
    assert_eq!(backend.names().await, Vec::<String>::new());
    let r = storage
        .send(
            storage
                .client
                .post(storage.url("/sendImage?state=working&id=1"))
                .bearer_auth("s3cret")
                .body(png(10, 1)),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = storage
        .send(
            storage
                .client
                .get(storage.url("/getImage?state=working&id=1"))
                .bearer_auth("s3cret"),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        storage
            .send(storage.client.get(storage.url("/healthz")))
            .await
            .status,
        200
    );
    let r = storage
        .send(
            storage
                .client
                .get(storage.url("/readyz"))
                .bearer_auth("s3cret"),
        )
        .await;
    assert_eq!((r.status, r.text().as_str()), (200, "ready"));
    storage.stop().await;
}
