//! Copies of objects with no client bytes in between.
//!
//! - CopyObject: the source object's file becomes the one part of the copy's
//!   upload **by reference**: a MooseFS snapshot (`CLTOMA_FUSE_SNAPSHOT`) at
//!   the part attempt's staging name, committed like any part, then put in
//!   place by the pipeline's completion like a PutObject's part. No chunk is
//!   read or written: the copy shares the source's chunks, and a later write
//!   to either would give that chunk a new id (copy-on-write; objects' files
//!   are never written once in place anyway).
//! - UploadPartCopy: a range of the source's file, held open in the master
//!   session like a GET's ([`Pipeline::open_object`]) and read from the
//!   chunkservers ([`Pipeline::read_source`]), is the body of an ordinary
//!   part attempt (the caller hands it to the part-writing path UploadPart
//!   uses). An overwrite or delete of the source during the copy leaves
//!   the bytes being copied readable until the copy has read them.
//!
//! A snapshot's source is named by the inode its index row names, with no
//! lock: an object's file never changes once in place (a newer object
//! replaces it by rename), so the inode holds exactly the bytes of the
//! version the row named, or is gone ([`PipelineError::SourceGone`]);
//! MooseFS does not reuse a freed inode number for a day (the master's
//! inode reuse delay).

use moosefs::MfsError;
use shared::domain::FencingToken;
use uuid::Uuid;

use super::{db_statement, OpenObject, Pipeline, PipelineError, WrittenPart};

/// An object's file as a copy reads it (from its index row).
#[derive(Debug, Clone, Copy)]
pub struct SourceObject {
    pub inode: u32,
    pub size: u64,
    /// The session that put it in place (its digests are the file's).
    pub session: Uuid,
}

/// The task reading a source range into a pipe ([`Pipeline::read_source`]).
pub struct SourceRead(tokio::task::JoinHandle<Result<(), MfsError>>);

impl SourceRead {
    /// Why the read ended the pipe early, if it failed.
    pub async fn failure(self) -> Option<PipelineError> {
        match self.0.await {
            Ok(Ok(())) => None,
            Ok(Err(MfsError::NotFound(what))) => Some(PipelineError::SourceGone(what)),
            Ok(Err(e)) => Some(e.into()),
            Err(e) => Some(PipelineError::SourceGone(format!("the reader failed: {e}"))),
        }
    }
}

impl Pipeline {
    /// Makes the file of `source` the attempt `token` of part `part_number`
    /// of `upload` by reference: a snapshot at the attempt's staging name
    /// (no data read or written). Its digests are the source session's (the
    /// MD5 only if that completion knew it; the CRC-32C always). A snapshot
    /// whose length is not the source's is recorded as abandoned.
    pub async fn snapshot_part(
        &self,
        upload: Uuid,
        part_number: i32,
        token: FencingToken,
        source: &SourceObject,
    ) -> Result<WrittenPart, PipelineError> {
        let (md5, crc32c) = self
            .ingest
            .store
            .completed_digests(source.session)
            .await
            .map_err(db_statement)?
            .ok_or_else(|| {
                PipelineError::SourceGone(format!(
                    "the source's session {} is not completed",
                    source.session
                ))
            })?;
        let (dir, staging) = self.staging_target(upload, part_number, token).await?;
        let name = staging.file_name().expect("staging file has a name");
        let path = staging.to_string();
        shared::metrics::metrics().part_started();
        let (inode, attr) = match self.ingest.mfs.snapshot_file(source.inode, dir, name).await {
            Ok(found) => found,
            Err(MfsError::NotFound(what)) => {
                self.ingest.dirs.forget();
                return Err(match self.ingest.mfs.getattr(source.inode).await {
                    Err(MfsError::NotFound(_)) => PipelineError::SourceGone(format!(
                        "inode {} of the source is gone",
                        source.inode
                    )),
                    _ => MfsError::NotFound(what).into(),
                });
            }
            Err(e) => return Err(e.into()),
        };
        let part = WrittenPart {
            token,
            inode,
            path,
            size: attr.length,
            md5,
            crc32c: crc32c as u32,
            checksum: None,
        };
        if attr.length != source.size {
            self.abandon(
                upload,
                part_number,
                token,
                inode,
                &part.path,
                "s3 copy: the snapshot is not the source's length",
            )
            .await;
            return Err(PipelineError::SourceGone(format!(
                "inode {} has {} bytes, the source object {}",
                source.inode, attr.length, source.size
            )));
        }
        Ok(part)
    }

    /// Reads `len` bytes of an opened source object from `offset`, straight
    /// from the chunkservers, into a pipe: the body of an UploadPartCopy's
    /// part (the file is held open until the read has ended). A failed read
    /// ends the pipe short (the part write then fails on its length);
    /// [`SourceRead::failure`] says why.
    pub fn read_source(
        &self,
        source: OpenObject,
        offset: u64,
        len: u64,
    ) -> (tokio::io::DuplexStream, SourceRead) {
        let (pipe, reader) = self.read_opened(source, offset, len);
        (pipe, SourceRead(reader))
    }
}
