//! The final file of a completion, still in the staging directory: a
//! single part as it is, or the parts assembled (chunk references when
//! aligned, a streamed copy otherwise) and its MD5 checked; and the
//! whole-file digests read back from MooseFS.

use md5::Digest;

use super::complete::{md5_mismatch, CheckFailed, CompletionError};
use super::Ingest;
use crate::store::{Part, Session};
use moosefs::{MfsError, Name, ReplicaChoice, WriteOptions, CHUNK_SIZE};

/// A verified file in the staging directory, ready to be renamed into place.
pub(super) struct FinalFile {
    /// Its staging directory's inode and its name there.
    pub(super) dir: u32,
    pub(super) name: Name,
    pub(super) inode: u32,
    pub(super) md5: Option<String>,
}

impl Ingest {
    /// The verified file to put in place, still in the staging directory:
    /// a single part (its MD5 checked already), or the parts assembled and
    /// the assembly's MD5 read and checked if one was asked for (a
    /// mismatching assembly is removed). Its directory inode, name, inode
    /// and MD5, or why the session fails.
    pub(super) async fn verified_final_file(
        &self,
        session: &Session,
        parts: &[Part],
        inodes: &[u32],
    ) -> Result<Result<FinalFile, CheckFailed>, CompletionError> {
        if let [one] = parts {
            let (dir, name) = self.staging_location(&one.staging_path).await?;
            let md5 = one.md5.clone();
            return Ok(Ok(FinalFile {
                dir,
                name,
                inode: inodes[0],
                md5,
            }));
        }
        let (dir, name, inode) = self.assemble(session, parts, inodes).await?;
        let md5 = match &session.expected_md5 {
            Some(_) => Some(self.md5_of(inode).await?),
            None => None,
        };
        if let Some(why) = md5_mismatch(session, md5.as_deref()) {
            // Only the assembly, never anything at the destination.
            let _ = self.mfs.unlink(dir, &name).await;
            return Ok(Err(CheckFailed(why)));
        }
        Ok(Ok(FinalFile {
            dir,
            name,
            inode,
            md5,
        }))
    }

    /// Builds the final file in a temporary file of the session's staging
    /// directory (chunk references only, APPEND_SLICE, when every part but
    /// the last is a whole number of chunks, a streamed copy otherwise) and
    /// checks its length; the caller verifies it further and renames it into
    /// place. Returns its directory inode, name and inode.
    async fn assemble(
        &self,
        session: &Session,
        parts: &[Part],
        inodes: &[u32],
    ) -> Result<(u32, Name, u32), CompletionError> {
        let goal = session.goal as u8;
        let staging_dir = self.staging_dir_inode(goal).await?;
        let assembly = self.cfg.assembly_file(goal, session.id);
        let name = assembly
            .file_name()
            .expect("assembly file has a name")
            .clone();
        match self.mfs.unlink(staging_dir, &name).await {
            Ok(()) | Err(MfsError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let file = self.mfs.create(staging_dir, &name, 0o644).await?;
        let zero_copy = parts[..parts.len() - 1]
            .iter()
            .all(|p| (p.size as u64).is_multiple_of(CHUNK_SIZE));
        if zero_copy {
            for inode in inodes {
                self.mfs.append_slice(file.inode, *inode).await?;
            }
        } else {
            let opts = WriteOptions {
                required_copies: Some(session.goal as u8),
                compute_md5: false,
                ..self.mfs.config().write.clone()
            };
            for (p, inode) in parts.iter().zip(inodes) {
                let (mut sink, source) = tokio::io::duplex(1 << 20);
                let mfs = self.mfs.clone();
                let inode = *inode;
                let reader = tokio::spawn(async move {
                    mfs.read_to(inode, 0, None, &mut sink, ReplicaChoice::Any)
                        .await
                });
                self.mfs
                    .write_stream(file.inode, p.part_offset as u64, source, &opts)
                    .await?;
                reader.await??;
            }
        }
        let length = self.mfs.getattr(file.inode).await?.length;
        if length != session.size as u64 {
            return Err(CompletionError::AssembledLength {
                length,
                expected: session.size,
            });
        }
        Ok((staging_dir, name, file.inode))
    }

    /// Streams a file through `consume` (for whole-file digests).
    async fn digest_file(
        &self,
        inode: u32,
        consume: impl FnMut(&[u8]) + Unpin,
    ) -> Result<(), MfsError> {
        let mut sink = DigestSink(consume);
        self.mfs
            .read_to(inode, 0, None, &mut sink, ReplicaChoice::Any)
            .await?;
        Ok(())
    }

    pub(super) async fn crc32c_of(&self, inode: u32) -> Result<u32, MfsError> {
        let mut crc = 0u32;
        self.digest_file(inode, |b| crc = crc32c::crc32c_append(crc, b))
            .await?;
        Ok(crc)
    }

    async fn md5_of(&self, inode: u32) -> Result<String, MfsError> {
        let mut h = md5::Md5::new();
        self.digest_file(inode, |b| h.update(b)).await?;
        Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
    }
}

/// An `AsyncWrite` that hands every buffer to a function.
struct DigestSink<F>(F);

impl<F: FnMut(&[u8]) + Unpin> tokio::io::AsyncWrite for DigestSink<F> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        (self.0)(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
