//! The per-replica checksum report: every copy of a chunk as the master
//! lists it, with the CRC table its chunkserver holds, so callers (and
//! `worker mfs replicas`) can tell whether the copies hold the same data.

use std::net::SocketAddrV4;

use crate::chunkserver::ReplicaCrcTable;
use crate::client::MfsClient;
use crate::codec::ProtocolError;
use crate::error::Result;
use crate::proto::{CopyState, CHUNK_SIZE};

/// One copy of a chunk as the master lists it, with what the chunkserver reports.
#[derive(Debug, Clone)]
pub struct CopyReport {
    pub server: SocketAddrV4,
    pub state: CopyState,
    /// The replica's CRC table, or why it could not be read.
    pub table: std::result::Result<ReplicaCrcTable, String>,
}

/// Every copy of one chunk.
#[derive(Debug, Clone)]
pub struct ChunkReport {
    pub index: u32,
    /// 0 = hole.
    pub chunk_id: u64,
    pub version: u32,
    pub copies: Vec<CopyReport>,
}

impl ChunkReport {
    pub fn valid_copies(&self) -> usize {
        self.copies
            .iter()
            .filter(|c| c.state == CopyState::Valid && c.table.is_ok())
            .count()
    }

    /// True when every readable valid copy has the same block count and CRCs.
    pub fn copies_identical(&self) -> bool {
        let mut tables = self
            .copies
            .iter()
            .filter(|c| c.state == CopyState::Valid)
            .filter_map(|c| c.table.as_ref().ok());
        match tables.next() {
            None => true,
            Some(first) => tables.all(|t| t.same_data(first)),
        }
    }
}

impl MfsClient {
    /// Every copy of chunk `index` with its CRC table, read from each chunkserver.
    pub async fn chunk_report(&self, inode: u32, index: u32) -> Result<ChunkReport> {
        let (chunk_id, version, copies) = self.check_chunk(inode, index).await?;
        let limit = self.cfg.chunkservers.read;
        let connect = self.cfg.chunkservers.connect;
        let tables = futures::future::join_all(copies.iter().map(|(server, _)| async move {
            if chunk_id == 0 {
                return Err("hole".to_string());
            }
            self.pool
                .with_link(*server, connect, |link| {
                    Box::pin(link.crc_table(chunk_id, version, limit))
                })
                .await
                .map_err(|e| e.to_string())
        }))
        .await;
        Ok(ChunkReport {
            index,
            chunk_id,
            version,
            copies: copies
                .into_iter()
                .zip(tables)
                .map(|((server, state), table)| CopyReport {
                    server,
                    state,
                    table,
                })
                .collect(),
        })
    }

    /// [`MfsClient::chunk_report`] for every chunk of a file.
    pub async fn replica_report(&self, inode: u32) -> Result<Vec<ChunkReport>> {
        // The attributes' decoder bounds the length (MAX_FILE_LENGTH), so
        // this is a chunk count MooseFS can hold; the capacity is bounded
        // anyway, the reports grow as the answers come.
        let length = self.getattr(inode).await?.length;
        let chunks = u32::try_from(length.div_ceil(CHUNK_SIZE)).map_err(|_| {
            ProtocolError::new(format!("a file of {length} bytes has too many chunks"))
        })?;
        let mut reports = Vec::with_capacity(chunks.min(1024) as usize);
        for index in 0..chunks {
            reports.push(self.chunk_report(inode, index).await?);
        }
        Ok(reports)
    }
}
