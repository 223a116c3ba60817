//! The local directory backend, laid out like the seed: `ROOT/working/N`, `ROOT/finished/N`.
//!
//! An upload streams into a temporary file in the object's own directory (so the rename
//! cannot cross filesystems), is fsynced, renamed over the final name and the directory is
//! fsynced: the rename is the commit point, readers opening the name get the old file or the
//! new one, and after the acknowledgement a crash cannot lose it. The temporary file is
//! removed when anything fails — including the upload being dropped half-way because the
//! client went away — and leftovers of a crash are swept at start-up, which is safe because
//! an exclusive lock on `ROOT/.lock` keeps a second process out of the directory.
//!
//! Files are never modified in place, so an open file's bytes are immutable and its
//! (inode, size, mtime) is a strong entity tag for exactly the bytes a reader streams.

use std::fs::{self, File, TryLockError};
use std::io::{self, Read as _, Write as _};
use std::os::unix::fs::{FileExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, anyhow};
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use tempfile::TempPath;

use super::{Backend, DownloadStream, Object, ObjectInfo, PutError, UploadStream};
use crate::key::{ObjectKey, Stage};
use crate::sniff::{SNIFF_LEN, content_type};

/// Prefix of temporary upload files; never a valid object name.
const TEMP_PREFIX: &str = ".upload-";

/// Body bytes gathered before they are written out. Objects up to this size cost one
/// blocking call in all (create, write, fsync, rename, fsync directory).
const WRITE_BUFFER: usize = 2 << 20;

/// How long opening waits for the directory's lock before reporting it taken.
const LOCK_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes per read when streaming an object out; the first chunk is read while opening.
const READ_CHUNK: usize = 1 << 20;

/// Objects in a local directory.
#[derive(Debug)]
pub struct LocalBackend {
    root: PathBuf,
    dirs: Arc<[File; 2]>,
    _lock: File,
}

impl LocalBackend {
    /// Opens (creating) the store at `root`: takes its lock, creates the stage directories and
    /// removes temporary files a crash left behind.
    pub async fn open(root: PathBuf) -> anyhow::Result<Self> {
        blocking(move || Self::open_blocking(root)).await
    }

    fn open_blocking(root: PathBuf) -> anyhow::Result<Self> {
        fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
        let lock_path = root.join(".lock");
        let lock = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        // A store that was closing in this same process a moment ago may still be
        // releasing its last references; give it a little while before calling it taken.
        let deadline = std::time::Instant::now() + LOCK_PATIENCE;
        loop {
            match lock.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(anyhow!(
                        "{} is in use by another shoal storage process",
                        root.display()
                    ));
                }
                Err(TryLockError::Error(e)) => {
                    return Err(anyhow::Error::from(e)
                        .context(format!("cannot lock {}", lock_path.display())));
                }
            }
        }
        let mut dirs = Vec::with_capacity(2);
        for stage in Stage::ALL {
            let dir = root.join(stage.as_str());
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let removed = remove_temporaries(&dir)?;
            if removed > 0 {
                tracing::info!(dir = %dir.display(), removed, "removed unfinished uploads");
            }
            dirs.push(File::open(&dir).with_context(|| format!("cannot open {}", dir.display()))?);
        }
        // The stage directories themselves must survive a crash before anything is stored.
        File::open(&root)
            .and_then(|d| d.sync_all())
            .with_context(|| format!("cannot sync {}", root.display()))?;
        let dirs: [File; 2] = dirs
            .try_into()
            .map_err(|_| anyhow!("two stage directories expected"))?;
        Ok(Self {
            root,
            dirs: Arc::new(dirs),
            _lock: lock,
        })
    }

    /// The directory this store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn dir(&self, stage: Stage) -> PathBuf {
        self.root.join(stage.as_str())
    }

    fn path(&self, key: ObjectKey) -> PathBuf {
        self.dir(key.stage).join(key.id.to_string())
    }
}

fn stage_index(stage: Stage) -> usize {
    match stage {
        Stage::Working => 0,
        Stage::Finished => 1,
    }
}

impl Backend for LocalBackend {
    fn put(
        &self,
        key: ObjectKey,
        mut body: UploadStream,
    ) -> BoxFuture<'_, Result<ObjectInfo, PutError>> {
        Box::pin(async move {
            let dir = self.dir(key.stage);
            let target = self.path(key);
            let mut head = Vec::with_capacity(SNIFF_LEN);
            let mut pending: Vec<Bytes> = Vec::new();
            let mut buffered = 0usize;
            // Created on the first write-out; its `TempPath` deletes the file when dropped, so
            // every early return (and a dropped upload) leaves nothing behind.
            let mut temp: Option<(File, TempPath)> = None;
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                if head.len() < SNIFF_LEN {
                    let take = (SNIFF_LEN - head.len()).min(chunk.len());
                    head.extend_from_slice(&chunk[..take]);
                }
                buffered += chunk.len();
                pending.push(chunk);
                if buffered >= WRITE_BUFFER {
                    let chunks = std::mem::take(&mut pending);
                    buffered = 0;
                    let dir = dir.clone();
                    let open = temp.take();
                    temp = Some(
                        blocking(move || {
                            let (mut file, path) = match open {
                                Some(open) => open,
                                None => create_temporary(&dir)?,
                            };
                            write_chunks(&mut file, &chunks)?;
                            Ok((file, path))
                        })
                        .await?,
                    );
                }
            }
            let dirs = Arc::clone(&self.dirs);
            let index = stage_index(key.stage);
            let metadata = blocking(move || {
                let (mut file, path) = match temp {
                    Some(open) => open,
                    None => create_temporary(&dir)?,
                };
                write_chunks(&mut file, &pending)?;
                file.sync_all().context("fsync")?;
                let metadata = file.metadata().context("stat")?;
                path.persist(&target)
                    .map_err(|e| anyhow::Error::from(e.error))
                    .with_context(|| format!("cannot rename into {}", target.display()))?;
                dirs[index].sync_all().context("fsync of the directory")?;
                Ok(metadata)
            })
            .await?;
            Ok(info(&metadata, content_type(&head)))
        })
    }

    fn get(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<Object>>> {
        let path = self.path(key);
        Box::pin(async move {
            let opened = blocking(move || {
                let Some((file, metadata)) = open(&path)? else {
                    return Ok(None);
                };
                let size = metadata.len();
                let first_len = usize::try_from(size).unwrap_or(usize::MAX).min(READ_CHUNK);
                let first = read_next(&file, first_len)
                    .with_context(|| format!("cannot read {}", path.display()))?;
                Ok(Some((file, metadata, first)))
            })
            .await?;
            let Some((file, metadata, first)) = opened else {
                return Ok(None);
            };
            let info = info(&metadata, content_type(&first));
            let offset = first.len() as u64;
            let rest = read_from(Arc::new(file), offset, info.size);
            let body: DownloadStream = futures::stream::once(async move { Ok(Bytes::from(first)) })
                .chain(rest)
                .boxed();
            Ok(Some(Object { info, body }))
        })
    }

    fn head(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<Option<ObjectInfo>>> {
        let path = self.path(key);
        Box::pin(blocking(move || {
            let Some((file, metadata)) = open(&path)? else {
                return Ok(None);
            };
            let len = usize::try_from(metadata.len())
                .unwrap_or(usize::MAX)
                .min(SNIFF_LEN);
            let mut head = vec![0; len];
            file.read_exact_at(&mut head, 0)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Ok(Some(info(&metadata, content_type(&head))))
        }))
    }

    fn delete(&self, key: ObjectKey) -> BoxFuture<'_, anyhow::Result<bool>> {
        let path = self.path(key);
        let dirs = Arc::clone(&self.dirs);
        let index = stage_index(key.stage);
        Box::pin(blocking(move || match fs::remove_file(&path) {
            Ok(()) => {
                dirs[index].sync_all().context("fsync of the directory")?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => {
                Err(anyhow::Error::from(e).context(format!("cannot remove {}", path.display())))
            }
        }))
    }

    fn remove_older_than(
        &self,
        stage: Stage,
        cutoff: SystemTime,
    ) -> BoxFuture<'_, anyhow::Result<u64>> {
        let dir = self.dir(stage);
        let dirs = Arc::clone(&self.dirs);
        let index = stage_index(stage);
        Box::pin(blocking(move || {
            let mut removed = 0;
            for entry in
                fs::read_dir(&dir).with_context(|| format!("cannot list {}", dir.display()))?
            {
                let entry = entry?;
                let name = entry.file_name();
                // Only objects: temporary files belong to uploads in progress.
                let is_object = name
                    .to_str()
                    .is_some_and(|n| crate::key::parse_id(n).is_ok());
                if !is_object {
                    continue;
                }
                let Ok(metadata) = entry.metadata() else {
                    continue; // removed meanwhile
                };
                if metadata.is_file() && metadata.modified()? < cutoff {
                    match fs::remove_file(entry.path()) {
                        Ok(()) => removed += 1,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if removed > 0 {
                dirs[index].sync_all().context("fsync of the directory")?;
            }
            Ok(removed)
        }))
    }

    fn check(&self) -> BoxFuture<'_, anyhow::Result<()>> {
        let root = self.root.clone();
        Box::pin(blocking(move || {
            for stage in Stage::ALL {
                let dir = root.join(stage.as_str());
                let metadata =
                    fs::metadata(&dir).with_context(|| format!("cannot stat {}", dir.display()))?;
                if !metadata.is_dir() {
                    return Err(anyhow!("{} is not a directory", dir.display()));
                }
            }
            Ok(())
        }))
    }
}

/// Runs blocking file work off the async threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| anyhow!("file operation aborted: {e}"))?
}

fn create_temporary(dir: &Path) -> anyhow::Result<(File, TempPath)> {
    let file = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .with_context(|| format!("cannot create a file in {}", dir.display()))?;
    Ok(file.into_parts())
}

fn write_chunks(file: &mut File, chunks: &[Bytes]) -> anyhow::Result<()> {
    for chunk in chunks {
        file.write_all(chunk).context("write")?;
    }
    Ok(())
}

fn open(path: &Path) -> anyhow::Result<Option<(File, fs::Metadata)>> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(anyhow::Error::from(e).context(format!("cannot open {}", path.display())));
        }
    };
    let metadata = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !metadata.is_file() {
        return Ok(None);
    }
    Ok(Some((file, metadata)))
}

fn info(metadata: &fs::Metadata, content_type: &'static str) -> ObjectInfo {
    let modified = metadata.modified().unwrap_or(UNIX_EPOCH);
    let nanos = modified
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    ObjectInfo {
        size: metadata.len(),
        etag: format!("\"{:x}-{:x}-{:x}\"", metadata.ino(), metadata.len(), nanos),
        modified,
        content_type,
    }
}

/// Reads the next `len` bytes at the file's position into a fresh buffer. `read_to_end`
/// fills spare capacity without zeroing it first, which a `vec![0; len]` per chunk would cost
/// on every download. Each download's reads are sequential (one stream, polled in order), so
/// the file position is the stream's offset.
fn read_next(file: &File, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = Vec::with_capacity(len);
    file.take(len as u64).read_to_end(&mut buf)?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the file is shorter than when it was opened",
        ));
    }
    Ok(buf)
}

/// Streams `file` from `offset` up to `size` in [`READ_CHUNK`] reads.
fn read_from(file: Arc<File>, offset: u64, size: u64) -> DownloadStream {
    futures::stream::try_unfold(offset, move |offset| {
        let file = Arc::clone(&file);
        async move {
            if offset >= size {
                return Ok(None);
            }
            let len = usize::try_from(size - offset)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK);
            let chunk = tokio::task::spawn_blocking(move || read_next(&file, len))
                .await
                .map_err(io::Error::other)??;
            Ok(Some((Bytes::from(chunk), offset + len as u64)))
        }
    })
    .boxed()
}

fn remove_temporaries(dir: &Path) -> anyhow::Result<u64> {
    let mut removed = 0;
    for entry in fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))? {
        let entry = entry?;
        if entry
            .file_name()
            .to_str()
            .is_some_and(|n| n.starts_with(TEMP_PREFIX))
        {
            match fs::remove_file(entry.path()) {
                Ok(()) => removed += 1,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(removed)
}
