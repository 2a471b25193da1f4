//! Objects and buckets in MooseFS: bucket directories, a key's destination
//! lock and the removal of its file, and reading an object's bytes from its
//! file held open in the master session (so that an overwrite or delete
//! during a GET leaves the old bytes readable until the GET ends).

use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use moosefs::{MfsError, MfsPath, Name, OpenedFile, ReplicaChoice};
use shared::store::SessionLock;
use tracing::Instrument;

use super::{Pipeline, PipelineError};

/// An object's file held open in the master session (see
/// [`Pipeline::open_object`]).
pub struct OpenObject {
    file: Arc<OpenedFile>,
}

impl OpenObject {
    pub fn inode(&self) -> u32 {
        self.file.inode
    }
}

/// A GET's body: the bytes of an opened object, holding the file open
/// until the last byte was taken or the stream is dropped.
struct HeldStream {
    inner: tokio_util::io::ReaderStream<tokio::io::DuplexStream>,
    file: Option<Arc<OpenedFile>>,
}

impl Stream for HeldStream {
    type Item = Result<Bytes, std::io::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_next(cx);
        if let std::task::Poll::Ready(None | Some(Err(_))) = &polled {
            self.file = None;
        }
        polled
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}

/// A key's destination lock, held by an open transaction the caller may
/// write in ([`KeyLock::conn`]).
pub struct KeyLock {
    lock: SessionLock,
    full: MfsPath,
}

impl KeyLock {
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        self.lock.conn()
    }
}

impl Pipeline {
    /// Makes the S3 root and the bucket directory (goal of the uploads,
    /// trash time 0: replaced and deleted objects free their space at once).
    pub async fn make_bucket_dir(&self, bucket: &str) -> Result<(), PipelineError> {
        let mfs = &self.ingest.mfs;
        let root = self.full_path(&self.s3_root);
        let root_inode = mfs.mkdir_all(&root).await?;
        mfs.set_trash_time(root_inode, 0, false).await?;
        let dir = root.join(&Name::parse(bucket)?);
        let inode = mfs.mkdir_all(&dir).await?;
        mfs.set_goal(inode, self.goal, false).await?;
        mfs.set_trash_time(inode, 0, false).await?;
        Ok(())
    }

    /// Removes a bucket directory and the empty directories left in it.
    pub async fn remove_bucket_dir(&self, bucket: &str) -> Result<(), PipelineError> {
        let dir = self.full_path(&self.s3_root.join(&Name::parse(bucket)?));
        match self.ingest.mfs.remove(&dir, true).await {
            Ok(()) | Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        self.ingest.dirs.forget();
        Ok(())
    }

    /// Takes the key's destination lock (the advisory lock the pipeline's
    /// completions of that destination take) in a new transaction: a delete
    /// and a completion of one key never interleave.
    pub async fn lock_key(&self, bucket: &str, key: &str) -> Result<KeyLock, PipelineError> {
        let full = self.full_path(&self.object_rel_path(bucket, key)?);
        let lock = self
            .ingest
            .store
            .lock_destinations(&[full.to_string()])
            .await?;
        Ok(KeyLock { lock, full })
    }

    /// Removes a locked key's file if it is still `inode`, commits the
    /// lock's transaction (with whatever the caller wrote in it), then
    /// removes the empty directories above it up to the bucket.
    pub async fn remove_locked_file(&self, lock: KeyLock, inode: i64) -> Result<(), PipelineError> {
        let KeyLock { lock, full } = lock;
        let (parent_path, name) = full.split_last().expect("an object path has a name");
        let mfs = &self.ingest.mfs;
        match mfs.resolve(&parent_path).await {
            Ok((parent, _)) => match mfs.lookup(parent, name).await {
                Ok((found, _)) if i64::from(found) == inode => match mfs.unlink(parent, name).await
                {
                    Ok(()) | Err(MfsError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                },
                Ok(_) | Err(MfsError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            },
            Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        lock.commit().await?;
        self.remove_empty_dirs(parent_path).await;
        Ok(())
    }

    /// Removes `dir` and the directories above it while they are empty,
    /// up to the bucket directory (kept).
    async fn remove_empty_dirs(&self, mut dir: MfsPath) {
        let mfs = &self.ingest.mfs;
        let bucket_depth = self.full_path(&self.s3_root).components().len() + 1;
        while dir.components().len() > bucket_depth {
            let Some((up, name)) = dir.split_last() else {
                break;
            };
            let Ok((up_inode, _)) = mfs.resolve(&up).await else {
                break;
            };
            if mfs.rmdir(up_inode, name).await.is_err() {
                break;
            }
            dir = up;
        }
        self.ingest.dirs.forget();
    }

    /// Opens the file of an object row (`inode`, `size`) for reading in
    /// this process's master session, so that an overwrite or a delete of
    /// the key — by any endpoint instance or the coordinator — leaves its
    /// data readable until the [`OpenObject`] (and every body made of it)
    /// is gone. `None` when the inode is no longer that object: gone (freed
    /// after an overwrite or delete that committed after the row was read),
    /// not a file, or not the row's length; the caller reads the row again.
    /// An inode number is not reused for a day, so an open inode of the
    /// row's length is the row's object (objects are replaced by rename,
    /// never written in place).
    pub async fn open_object(
        &self,
        inode: i64,
        size: i64,
    ) -> Result<Option<OpenObject>, PipelineError> {
        let Ok(inode) = u32::try_from(inode) else {
            return Ok(None);
        };
        match self.ingest.mfs.open_file(inode).await {
            Ok(file) if i64::try_from(file.attr.length).ok() == Some(size) => {
                Ok(Some(OpenObject {
                    file: Arc::new(file),
                }))
            }
            Ok(file) => {
                tracing::debug!(
                    inode,
                    length = file.attr.length,
                    size,
                    "the object's inode is not the row's object"
                );
                Ok(None)
            }
            Err(MfsError::NotFound(_) | MfsError::InvalidArgument(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Streams `len` bytes of an opened object from `offset`, straight from
    /// the chunkservers (a small pipe between the reader task and the
    /// response; no whole chunk is buffered). The stream and the reader
    /// task both hold the file open: it is released when the stream has
    /// ended or was dropped and the task has stopped (at its next write
    /// into the pipe once nobody reads it).
    pub fn read_object(
        &self,
        object: OpenObject,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let file = object.file.clone();
        let (source, _reader) = self.read_opened(object, offset, len);
        HeldStream {
            inner: tokio_util::io::ReaderStream::with_capacity(source, 64 << 10),
            file: Some(file),
        }
    }

    /// Reads `len` bytes of an opened object from `offset` into a pipe
    /// (256 KiB) by a task of its own, which holds the file open until it
    /// stops: the pipe's end, and the task, whose result says why the pipe
    /// ended early if it did (a failed read ends it short, and is logged).
    pub(super) fn read_opened(
        &self,
        object: OpenObject,
        offset: u64,
        len: u64,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<(), MfsError>>,
    ) {
        let (mut sink, source) = tokio::io::duplex(256 << 10);
        let mfs = self.ingest.mfs.clone();
        let reading = object.file;
        let reader = tokio::spawn(
            async move {
                let read = mfs
                    .read_opened_to(&reading, offset, Some(len), &mut sink, ReplicaChoice::Any)
                    .await;
                if let Err(e) = &read {
                    tracing::warn!(inode = reading.inode, offset, len, error = %e,
                        "reading an object failed");
                }
                read.map(|_| ())
            }
            .in_current_span(),
        );
        (source, reader)
    }
}
