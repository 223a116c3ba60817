//! The local backend's own promises: the seed's layout, crash leftovers, one process per
//! directory.

use shoal_storage::backend::Backend as _;
use shoal_storage::backend::local::LocalBackend;

use crate::support::{Backend, png};

/// Objects are plain files named like the seed's (`working/N`), without the `.png` suffix
/// the seed stuck on whatever was uploaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_are_files_in_the_seeds_layout() {
    let backend = Backend::local();
    let storage = backend.start(|_| {}).await;
    storage.put("state=working&id=12", png(100, 1)).await;
    storage.put("state=finished&id=0", png(50, 2)).await;
    assert_eq!(
        std::fs::read(backend.dir().join("working/12")).expect("file"),
        png(100, 1)
    );
    assert_eq!(
        std::fs::read(backend.dir().join("finished/0")).expect("file"),
        png(50, 2)
    );
    let mut top: Vec<String> = std::fs::read_dir(backend.dir())
        .expect("dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    top.sort();
    assert_eq!(top, [".lock", "finished", "working"]);
    storage.stop().await;
}

/// Temporary files a crash left behind are removed at start; objects are kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_crash_are_removed_at_start() {
    let backend = Backend::local();
    std::fs::create_dir_all(backend.dir().join("working")).expect("mkdir");
    std::fs::write(backend.dir().join("working/.upload-abc123"), b"half").expect("write");
    std::fs::write(backend.dir().join("working/3"), png(10, 3)).expect("write");
    let storage = backend.start(|_| {}).await;
    assert_eq!(backend.names().await, ["working/3"]);
    assert_eq!(
        storage.get("state=working&id=3").await.body.as_ref(),
        png(10, 3).as_slice()
    );
    storage.stop().await;
}

/// Two processes on one directory would sweep each other's uploads: the second is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_store_on_the_same_directory_is_refused() {
    let backend = Backend::local();
    let storage = backend.start(|_| {}).await;
    let err = LocalBackend::open(backend.dir().to_path_buf())
        .await
        .expect_err("refused");
    assert!(
        format!("{err:#}").contains("in use by another shoal storage process"),
        "{err:#}"
    );
    storage.stop().await;
    // Free again once the first has stopped.
    let reopened = LocalBackend::open(backend.dir().to_path_buf())
        .await
        .expect("reopen");
    reopened.check().await.expect("usable");
}
