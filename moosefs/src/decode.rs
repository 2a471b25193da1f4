//! Every answer the master or a chunkserver sends, decoded by a pure
//! function of its payload bytes (the master's message id already removed).
//! Each length or count read from the wire is bounded here before it becomes
//! an index, an allocation size or a loop bound: a hostile or broken peer gets
//! a [`ProtocolError`], never a panic (`tests/decoders.rs` feeds
//! arbitrary bytes to each of these).
//!
//! Status-only answers (one byte) are told apart by the caller before these
//! run; the frame header is [`crate::codec::decode_frame_header`].

use std::net::{Ipv4Addr, SocketAddrV4};

use bytes::Bytes;

use crate::codec::{PayloadReader, ProtocolError};
use crate::proto::{
    Attr, ChunkLocation, CopyState, Status, BLOCKS_PER_CHUNK, BLOCK_SIZE, MAX_CHUNK_COPIES,
};

/// `statfs`: cluster space, as `df` would show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatFs {
    pub total_bytes: u64,
    pub avail_bytes: u64,
    pub free_bytes: u64,
    pub trash_bytes: u64,
    pub sustained_bytes: u64,
    pub inodes: u32,
}

/// `STATFS`.
pub fn statfs(payload: Bytes) -> Result<StatFs, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    Ok(StatFs {
        total_bytes: r.u64()?,
        avail_bytes: r.u64()?,
        free_bytes: r.u64()?,
        trash_bytes: r.u64()?,
        sustained_bytes: r.u64()?,
        inodes: r.u32()?,
    })
}

/// `GETATTR`: one attribute record.
pub fn attr(payload: Bytes) -> Result<Attr, ProtocolError> {
    Attr::parse(&mut PayloadReader::new(payload))
}

/// `LOOKUP` and `MKDIR`: `inode:u32` + attributes.
pub fn inode_attr(payload: Bytes) -> Result<(u32, Attr), ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let inode = r.u32()?;
    Ok((inode, Attr::parse(&mut r)?))
}

/// `CREATE`: `oflags:u8 inode:u32` + attributes.
pub fn created(payload: Bytes) -> Result<(u32, Attr), ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let _oflags = r.u8()?;
    let inode = r.u32()?;
    Ok((inode, Attr::parse(&mut r)?))
}

/// `OPEN`: `oflags:u8` + attributes (no inode: the caller named it).
pub fn opened(payload: Bytes) -> Result<Attr, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let _oflags = r.u8()?;
    Attr::parse(&mut r)
}

/// `RENAME`: the moved inode.
pub fn renamed(payload: Bytes) -> Result<u32, ProtocolError> {
    PayloadReader::new(payload).u32()
}

/// `TRUNCATE`: `previous length:u64` + the new attributes.
pub fn truncated(payload: Bytes) -> Result<Attr, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let _previous = r.u64()?;
    Attr::parse(&mut r)
}

/// One `READDIR` entry: raw name, inode, attributes.
pub type RawDirEntry = (Bytes, u32, Attr);

/// `READDIR` with attributes: `next edge:u64`, then `name inode attr`
/// records (`.` and `..` included). Names are at most 255 bytes (a `u8`
/// length); the count is bounded by the master's packet limit, and each
/// record is at least 41 bytes, so there are never more than that allows.
pub fn dir_entries(payload: Bytes) -> Result<Vec<RawDirEntry>, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let _next_edge = r.u64()?;
    let mut entries = Vec::new();
    while r.remaining() > 0 {
        let name = r.name()?;
        let child = r.u32()?;
        let attr = Attr::parse(&mut r)?;
        entries.push((name, child, attr));
    }
    Ok(entries)
}

/// `SETSCLASS`: `(changed, unchanged, not permitted)` inode counts.
pub fn set_goal_counts(payload: Bytes) -> Result<(u32, u32, u32), ProtocolError> {
    let mut r = PayloadReader::new(payload);
    Ok((r.u32()?, r.u32()?, r.u32()?))
}

/// `GETSCLASS` of one inode: the goal of the first class listed (`0xFF` =
/// a named storage class).
pub fn goal(payload: Bytes) -> Result<u8, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let files = r.u8()?;
    let dirs = r.u8()?;
    if files as u16 + dirs as u16 == 0 {
        return Err(ProtocolError::new("get goal: empty answer"));
    }
    r.u8()
}

/// `READ_CHUNK` / `WRITE_CHUNK`: where a chunk is (at most
/// [`MAX_CHUNK_COPIES`] servers).
pub fn chunk_location(payload: Bytes) -> Result<ChunkLocation, ProtocolError> {
    ChunkLocation::parse(&mut PayloadReader::new(payload))
}

/// A chunk's copies as `CHECK` lists them.
pub type ChunkCopies = (u64, u32, Vec<(SocketAddrV4, CopyState)>);

/// `CHECK`: `chunk id:u64 version:u32`, then `ip:u32 port:u16 state:u8` per
/// copy, at most [`MAX_CHUNK_COPIES`] (each one is asked for its CRC table).
pub fn chunk_copies(payload: Bytes) -> Result<ChunkCopies, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let chunk_id = r.u64()?;
    let version = r.u32()?;
    if !r.remaining().is_multiple_of(7) || r.remaining() / 7 > MAX_CHUNK_COPIES {
        return Err(ProtocolError::new(format!(
            "chunk check answer with {} bytes of copies (at most {MAX_CHUNK_COPIES} records of 7)",
            r.remaining()
        )));
    }
    let mut copies = Vec::with_capacity(r.remaining() / 7);
    while r.remaining() > 0 {
        let ip = Ipv4Addr::from(r.u32()?);
        let port = r.u16()?;
        let state = CopyState::from_code(r.u8()?);
        copies.push((SocketAddrV4::new(ip, port), state));
    }
    Ok((chunk_id, version, copies))
}

/// One `CSTOCL_READ_DATA` packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadData {
    pub chunk_id: u64,
    pub block: u16,
    pub offset: u16,
    pub crc: u32,
    pub data: Bytes,
}

impl ReadData {
    /// Chunk-relative position of the data.
    pub fn position(&self) -> u64 {
        self.block as u64 * BLOCK_SIZE as u64 + self.offset as u64
    }
}

/// `CSTOCL_READ_DATA`: `chunk id:u64 block:u16 offset:u16 size:u32 crc:u32
/// data`. The data must lie within one block of the chunk.
pub fn read_data(payload: Bytes) -> Result<ReadData, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let chunk_id = r.u64()?;
    let block = r.u16()?;
    let offset = r.u16()?;
    let size = r.u32()?;
    let crc = r.u32()?;
    if block as usize >= BLOCKS_PER_CHUNK || offset as u64 + size as u64 > BLOCK_SIZE as u64 {
        return Err(ProtocolError::new(format!(
            "READ_DATA for block {block}, offset {offset}, {size} bytes: outside a chunk block"
        )));
    }
    let data = r.bytes(size as usize)?;
    r.finish("READ_DATA")?;
    Ok(ReadData {
        chunk_id,
        block,
        offset,
        crc,
        data,
    })
}

/// `CSTOCL_READ_STATUS`: `chunk id:u64 status:u8`.
pub fn read_status(payload: Bytes) -> Result<(u64, Status), ProtocolError> {
    let mut r = PayloadReader::new(payload);
    Ok((r.u64()?, Status(r.u8()?)))
}

/// `CSTOCL_WRITE_STATUS`: `chunk id:u64 write id:u32 status:u8`.
pub fn write_status(payload: Bytes) -> Result<(u64, u32, Status), ProtocolError> {
    let mut r = PayloadReader::new(payload);
    let answer = (r.u64()?, r.u32()?, Status(r.u8()?));
    r.finish("WRITE_STATUS")?;
    Ok(answer)
}

/// `CSTOAN_CHUNK_CHECKSUM_TAB`: `chunk id:u64 version:u32`, then either a
/// status byte (`Err` inside `Ok`) or exactly [`BLOCKS_PER_CHUNK`] CRCs.
pub fn checksum_tab(payload: Bytes) -> Result<Result<Vec<u32>, Status>, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    r.u64()?;
    r.u32()?;
    if r.remaining() == 1 {
        return Ok(Err(Status(r.u8()?)));
    }
    if r.remaining() != BLOCKS_PER_CHUNK * 4 {
        return Err(ProtocolError::new(format!(
            "CHUNK_CHECKSUM_TAB with {} bytes of CRCs, expected {}",
            r.remaining(),
            BLOCKS_PER_CHUNK * 4
        )));
    }
    let mut crcs = Vec::with_capacity(BLOCKS_PER_CHUNK);
    for _ in 0..BLOCKS_PER_CHUNK {
        crcs.push(r.u32()?);
    }
    Ok(Ok(crcs))
}

/// `CSTOAN_CHUNK_BLOCKS`: `chunk id:u64 version:u32 blocks:u16 status:u8`;
/// a chunk has at most [`BLOCKS_PER_CHUNK`] blocks, more is a protocol error.
pub fn chunk_blocks(payload: Bytes) -> Result<Result<u16, Status>, ProtocolError> {
    let mut r = PayloadReader::new(payload);
    r.u64()?;
    r.u32()?;
    let blocks = r.u16()?;
    let status = Status(r.u8()?);
    if status != Status::OK {
        return Ok(Err(status));
    }
    if blocks as usize > BLOCKS_PER_CHUNK {
        return Err(ProtocolError::new(format!(
            "chunk with {blocks} blocks, a chunk has at most {BLOCKS_PER_CHUNK}"
        )));
    }
    Ok(Ok(blocks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Packet;

    fn payload(p: Packet) -> Bytes {
        p.finish().slice(8..)
    }

    #[test]
    fn a_block_count_above_a_chunk_is_refused() {
        let answer = |blocks| payload(Packet::new(0, 15).u64(1).u32(1).u16(blocks).u8(0));
        assert_eq!(chunk_blocks(answer(1024)).unwrap(), Ok(1024));
        let err = chunk_blocks(answer(5000)).unwrap_err();
        assert!(err.to_string().contains("5000 blocks"), "{err}");
    }

    #[test]
    fn read_data_outside_its_block_is_refused() {
        let data = |block, offset, size: u32| {
            payload(
                Packet::new(0, 20 + size as usize)
                    .u64(1)
                    .u16(block)
                    .u16(offset)
                    .u32(size)
                    .u32(0)
                    .bytes(&vec![0; size as usize]),
            )
        };
        assert!(read_data(data(1023, 0, 65536)).is_ok());
        assert!(read_data(data(1024, 0, 1)).is_err());
        assert!(read_data(data(0, 65535, 2)).is_err());
    }

    #[test]
    fn too_many_copies_are_refused() {
        let mut p = Packet::new(0, 12 + 7 * 65).u64(1).u32(1);
        for i in 0..65u32 {
            p = p.u32(i).u16(9422).u8(0);
        }
        assert!(chunk_copies(payload(p)).is_err());
    }
}
