//! The master's list of chunkservers (`CLTOMA_CSERV_LIST`, what `mfscli
//! -SCS` shows), asked on a short-lived connection of its own: the master
//! answers this "admin" request only on a connection that has not
//! registered a session ([`crate::admin`]). Used to refuse a goal no set of chunkservers can
//! hold. [`ChunkserverCountCache`] keeps the answer for a few seconds so a
//! request's validation costs no master round trip of its own.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use crate::admin::admin_request;
use crate::codec::{Packet, PayloadReader, ProtocolError};
use crate::config::MasterConfig;
use crate::error::Result;
use crate::proto::msg;

/// Bytes of one entry of a 3.0 `MATOCL_CSERV_LIST` answer: flags+version
/// (u32), ip (u32), port (u16), csid (u16), used and total space (2 × u64),
/// chunks (u32), the same for disks marked for removal (2 × u64, u32),
/// error count, load, grace time, label mask (4 × u32), maintenance (u8).
pub const CSERV_ENTRY_LEN: usize = 69;
/// Most entries accepted in one answer (bounds what the master may make us read).
pub const MAX_CSERV_ENTRIES: usize = 4096;
/// The flag in an entry's first byte marking a chunkserver the master
/// knows but that is not connected now.
const DISCONNECTED_FLAG: u32 = 0x0100_0000;

/// One chunkserver the master knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkserverEntry {
    pub addr: SocketAddrV4,
    pub connected: bool,
}

/// How many chunkservers the master knows, and how many are connected now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkserverCount {
    /// Every chunkserver in the master's list (disconnected ones included:
    /// they may come back; ones removed by an operator are not listed).
    pub known: u32,
    pub connected: u32,
}

/// Parses a `MATOCL_CSERV_LIST` payload.
pub fn parse_cserv_list(payload: bytes::Bytes) -> Result<Vec<ChunkserverEntry>, ProtocolError> {
    if !payload.len().is_multiple_of(CSERV_ENTRY_LEN) {
        return Err(ProtocolError::new(format!(
            "chunkserver list of {} bytes is not a multiple of {CSERV_ENTRY_LEN}",
            payload.len()
        )));
    }
    let entries = payload.len() / CSERV_ENTRY_LEN;
    if entries > MAX_CSERV_ENTRIES {
        return Err(ProtocolError::new(format!(
            "chunkserver list of {entries} entries, limit {MAX_CSERV_ENTRIES}"
        )));
    }
    let mut r = PayloadReader::new(payload);
    let mut list = Vec::with_capacity(entries);
    for _ in 0..entries {
        let flags_version = r.u32()?;
        let ip = Ipv4Addr::from(r.u32()?);
        let port = r.u16()?;
        r.bytes(CSERV_ENTRY_LEN - 10)?;
        list.push(ChunkserverEntry {
            addr: SocketAddrV4::new(ip, port),
            connected: flags_version & DISCONNECTED_FLAG == 0,
        });
    }
    r.finish("chunkserver list")?;
    Ok(list)
}

/// Asks the master for its chunkserver list on a fresh connection, each
/// step under the configured connect / request timeouts.
pub async fn fetch_cserv_list(cfg: &MasterConfig) -> Result<Vec<ChunkserverEntry>> {
    let request = Packet::new(msg::CLTOMA_CSERV_LIST, 0).finish();
    let answer = admin_request(
        cfg,
        request,
        msg::MATOCL_CSERV_LIST,
        CSERV_ENTRY_LEN * MAX_CSERV_ENTRIES,
        "the chunkserver list",
    )
    .await?;
    Ok(parse_cserv_list(answer)?)
}

/// The chunkserver count, asked at most once per `ttl` (concurrent callers
/// wait for the one request in flight); errors are not cached.
pub struct ChunkserverCountCache {
    ttl: Duration,
    last: tokio::sync::Mutex<Option<(Instant, ChunkserverCount)>>,
}

impl ChunkserverCountCache {
    pub fn new(ttl: Duration) -> Self {
        ChunkserverCountCache {
            ttl,
            last: tokio::sync::Mutex::new(None),
        }
    }

    /// The cached count if it is younger than the ttl, else a fresh one.
    pub async fn get(&self, cfg: &MasterConfig) -> Result<ChunkserverCount> {
        let mut last = self.last.lock().await;
        if let Some((at, count)) = *last {
            if at.elapsed() < self.ttl {
                return Ok(count);
            }
        }
        let list = fetch_cserv_list(cfg).await?;
        let count = ChunkserverCount {
            known: u32::try_from(list.len()).unwrap_or(u32::MAX),
            connected: u32::try_from(list.iter().filter(|e| e.connected).count())
                .unwrap_or(u32::MAX),
        };
        *last = Some((Instant::now(), count));
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(flags_version: u32, ip: [u8; 4], port: u16) -> Vec<u8> {
        let mut e = Vec::new();
        e.extend_from_slice(&flags_version.to_be_bytes());
        e.extend_from_slice(&ip);
        e.extend_from_slice(&port.to_be_bytes());
        e.resize(CSERV_ENTRY_LEN, 7);
        e
    }

    #[test]
    fn entries_are_parsed_with_their_connected_flag() {
        let mut payload = entry(0x0003_00EA, [10, 213, 47, 11], 9422);
        payload.extend(entry(DISCONNECTED_FLAG, [10, 213, 47, 12], 9422));
        let list = parse_cserv_list(payload.into()).unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].addr, "10.213.47.11:9422".parse().unwrap());
        assert!(list[0].connected && !list[1].connected);
        assert!(parse_cserv_list(bytes::Bytes::new()).unwrap().is_empty());
    }

    #[test]
    fn malformed_lists_are_errors_not_panics() {
        for len in [1, 68, 70, 137] {
            assert!(parse_cserv_list(vec![0u8; len].into()).is_err(), "{len}");
        }
        let huge = vec![0u8; CSERV_ENTRY_LEN * (MAX_CSERV_ENTRIES + 1)];
        assert!(parse_cserv_list(huge.into()).is_err());
    }
}
