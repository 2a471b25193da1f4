//! Replica verification after a chunk write: every server of the chain is
//! asked for its CRC table, and each block written must be stored with the
//! CRC the client sent (for a chunk with earlier data, the replicas must
//! also agree with each other on every block). A mismatch is an error of
//! the write, never a warning.

use std::net::SocketAddrV4;

use crate::chunkserver::{AckedBlock, CsLink, ReplicaCrcTable, WriteSession};
use crate::client::MfsClient;
use crate::error::{MfsError, Result};
use crate::observe::ClientStats;
use crate::proto::{BLOCK_SIZE, CHUNK_SIZE};

/// Where a chunk write landed.
pub(crate) struct WrittenChunk {
    pub(crate) chunk_id: u64,
    pub(crate) version: u32,
    pub(crate) servers: Vec<SocketAddrV4>,
}

/// Facts about the file a chunk task needs.
#[derive(Clone, Copy)]
pub(crate) struct ChunkJob {
    pub(crate) inode: u32,
    pub(crate) index: u32,
    pub(crate) required_copies: usize,
    /// File length before this write started: blocks wholly beyond it held zeros.
    pub(crate) old_length: u64,
}

impl MfsClient {
    /// One question to every server of the chain that acknowledged a chunk
    /// (in parallel, on pooled links): their answers, or why there are not
    /// enough of them (an unreadable replica, fewer than `required`).
    async fn ask_replicas<T, F>(
        &self,
        written: &WrittenChunk,
        required: usize,
        ask: F,
    ) -> std::result::Result<Vec<(SocketAddrV4, T)>, String>
    where
        F: for<'a> Fn(&'a mut CsLink) -> futures::future::BoxFuture<'a, Result<T>> + Copy,
    {
        let connect = self.cfg.chunkservers.connect;
        let answers = futures::future::join_all(
            written
                .servers
                .iter()
                .map(|server| self.pool.with_link(*server, connect, ask)),
        )
        .await;
        let mut tables = Vec::with_capacity(answers.len());
        for (server, answer) in written.servers.iter().zip(answers) {
            match answer {
                Ok(t) => tables.push((*server, t)),
                Err(e) => return Err(format!("replica on {server} unreadable: {e}")),
            }
        }
        if tables.len() < required {
            return Err(format!("{} copies, {required} required", tables.len()));
        }
        Ok(tables)
    }

    /// Checks every replica of a chunk just written against the CRCs sent.
    pub(crate) async fn verify_chunk(
        &self,
        job: ChunkJob,
        written: &WrittenChunk,
        session: &WriteSession,
    ) -> Result<()> {
        let chunk_id = written.chunk_id;
        let mismatch = |detail: String| {
            ClientStats::add(&self.stats.replica_mismatches, 1);
            self.observer.replica_mismatch();
            MfsError::ReplicaMismatch {
                inode: job.inode,
                chunk_index: job.index,
                chunk_id,
                detail,
            }
        };
        let (version, limit) = (written.version, self.cfg.chunkservers.read);
        if job.old_length <= job.index as u64 * CHUNK_SIZE {
            // The chunk held no data before this write (every chunk of a new
            // file): each replica's CRC of every block written must be the
            // CRC sent. One question per replica, not two.
            let tables = self
                .ask_replicas(written, job.required_copies, |link| {
                    Box::pin(link.checksum_tab(chunk_id, version, limit))
                })
                .await
                .map_err(mismatch)?;
            let acked = session.acked.lock().expect("acked");
            fresh_replicas_hold(&tables, &acked, job).map_err(mismatch)?;
            ClientStats::add(&self.stats.chunks_verified, 1);
            return Ok(());
        }
        // A chunk with earlier data: the replicas must agree on every block,
        // and hold what was sent where it was written.
        let tables = self
            .ask_replicas(written, job.required_copies, |link| {
                Box::pin(link.crc_table(chunk_id, version, limit))
            })
            .await
            .map_err(mismatch)?;
        let tables: Vec<(SocketAddrV4, &ReplicaCrcTable)> =
            tables.iter().map(|(s, t)| (*s, t)).collect();
        let Some(&(first_server, first)) = tables.first() else {
            return Err(mismatch("no replica to compare".into()));
        };
        for (server, table) in &tables[1..] {
            if !table.same_data(first) {
                return Err(mismatch(format!(
                    "replica {first_server} has {} blocks (digest {}), replica {server} has {} blocks (digest {})",
                    first.blocks,
                    first.digest(),
                    table.blocks,
                    table.digest()
                )));
            }
        }
        let acked = session.acked.lock().expect("acked");
        for b in acked.iter() {
            let Some(expected) = expected_block_crc(b, job) else {
                continue;
            };
            if b.block >= first.blocks {
                return Err(mismatch(format!(
                    "block {} was written but the replicas hold only {} blocks",
                    b.block, first.blocks
                )));
            }
            let stored = first.crcs[b.block as usize];
            if stored != expected {
                return Err(mismatch(format!(
                    "block {}: replicas store CRC {stored:08x}, the client sent {expected:08x}",
                    b.block
                )));
            }
        }
        ClientStats::add(&self.stats.chunks_verified, 1);
        Ok(())
    }
}

/// Whether every replica's CRC table (`(server, 1024 CRCs)`) of a chunk that
/// held no data before holds, for every block written, the CRC sent.
fn fresh_replicas_hold(
    tables: &[(SocketAddrV4, Vec<u32>)],
    acked: &[AckedBlock],
    job: ChunkJob,
) -> std::result::Result<(), String> {
    for (server, crcs) in tables {
        for b in acked {
            let Some(expected) = expected_block_crc(b, job) else {
                continue;
            };
            let stored = crcs.get(b.block as usize).copied();
            if stored != Some(expected) {
                return Err(format!(
                    "replica {server} block {}: stores CRC {}, the client sent {expected:08x}",
                    b.block,
                    stored.map_or("nothing".into(), |c| format!("{c:08x}"))
                ));
            }
        }
    }
    Ok(())
}

/// The CRC a replica must store for a block we wrote, when it is knowable: a
/// full block's CRC is what we sent; a partial block wholly beyond the file's
/// old end holds zeros around our data.
fn expected_block_crc(b: &AckedBlock, job: ChunkJob) -> Option<u32> {
    if b.size == BLOCK_SIZE {
        return Some(b.crc);
    }
    let block_start = job.index as u64 * CHUNK_SIZE + b.block as u64 * BLOCK_SIZE as u64;
    (block_start >= job.old_length).then_some(b.zero_padded_crc)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u16, crc: u32) -> AckedBlock {
        AckedBlock {
            block: n,
            offset: 0,
            size: BLOCK_SIZE,
            crc,
            zero_padded_crc: crc,
        }
    }

    #[test]
    fn fresh_chunk_check_finds_a_replica_with_other_data() {
        let job = ChunkJob {
            inode: 7,
            index: 0,
            required_copies: 3,
            old_length: 0,
        };
        let acked = [block(0, 0xAAAA_0000), block(1, 0xBBBB_1111)];
        let mut crcs = vec![0u32; 1024];
        crcs[0] = 0xAAAA_0000;
        crcs[1] = 0xBBBB_1111;
        let server = |n: u8| SocketAddrV4::new(std::net::Ipv4Addr::new(10, 0, 0, n), 9422);
        let good: Vec<_> = (1..=3).map(|n| (server(n), crcs.clone())).collect();
        assert_eq!(fresh_replicas_hold(&good, &acked, job), Ok(()));

        let mut bad = good.clone();
        bad[2].1[1] = 0xDEAD_BEEF;
        let why = fresh_replicas_hold(&bad, &acked, job).unwrap_err();
        assert!(why.contains("10.0.0.3:9422 block 1"), "{why}");
        assert!(
            why.contains("deadbeef") && why.contains("bbbb1111"),
            "{why}"
        );

        let short: Vec<_> = vec![(server(1), vec![0xAAAA_0000])];
        let why = fresh_replicas_hold(&short, &acked, job).unwrap_err();
        assert!(why.contains("stores CRC nothing"), "{why}");
    }
}
