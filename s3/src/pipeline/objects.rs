//! Objects and buckets in MooseFS: bucket directories, a key's destination
//! lock and the removal of its file, and reading an object's bytes.

use bytes::Bytes;
use futures::Stream;
use moosefs::{MfsError, MfsPath, Name, ReplicaChoice};
use shared::store::SessionLock;
use tracing::Instrument;

use super::{Pipeline, PipelineError};

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

    /// Streams `len` bytes of a file from `offset`, straight from the
    /// chunkservers (a small pipe between the reader task and the response;
    /// no whole chunk is buffered).
    pub fn read_object(
        &self,
        inode: u32,
        offset: u64,
        len: u64,
    ) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send + Sync + 'static {
        let (source, _reader) = self.read_range(inode, offset, len);
        tokio_util::io::ReaderStream::with_capacity(source, 64 << 10)
    }

    /// Reads `len` bytes of a file from `offset` into a pipe (256 KiB) by a
    /// task of its own: the pipe's end, and the task, whose result says why
    /// the pipe ended early if it did (a failed read ends it short, and is
    /// logged).
    pub(super) fn read_range(
        &self,
        inode: u32,
        offset: u64,
        len: u64,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<(), MfsError>>,
    ) {
        let (mut sink, source) = tokio::io::duplex(256 << 10);
        let mfs = self.ingest.mfs.clone();
        let reader = tokio::spawn(
            async move {
                let read = mfs
                    .read_to(inode, offset, Some(len), &mut sink, ReplicaChoice::Any)
                    .await;
                if let Err(e) = &read {
                    tracing::warn!(inode, offset, len, error = %e, "reading an object failed");
                }
                read.map(|_| ())
            }
            .in_current_span(),
        );
        (source, reader)
    }
}
