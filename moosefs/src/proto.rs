//! MooseFS 3.0.117 wire constants: message ids, sizes, status codes and the
//! fixed-layout records (attributes, chunk locations) shared by master and
//! chunkserver messages. Pure data, no I/O.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

use crate::codec::{PayloadReader, ProtocolError};

/// Chunk size: 64 MiB. File offset `>> CHUNK_BITS` is the chunk index.
pub const CHUNK_SIZE: u64 = 1 << 26;
/// Block size: 64 KiB, the unit of CRC and of one `CLTOCS_WRITE_DATA`.
pub const BLOCK_SIZE: u32 = 1 << 16;
/// Blocks in one chunk.
pub const BLOCKS_PER_CHUNK: usize = 1024;
/// Largest chunk index the master accepts.
pub const MAX_CHUNK_INDEX: u64 = 0x7FFF_FFFF;
/// Longest file MooseFS can hold: every chunk index in use. A larger length
/// in an answer is a protocol error, not a loop bound.
pub const MAX_FILE_LENGTH: u64 = (MAX_CHUNK_INDEX + 1) * CHUNK_SIZE;
/// Most copies of one chunk an answer may list (goals go up to 9; copies
/// being replicated or removed come on top). More is a protocol error: each
/// copy costs a connection when its CRC table is read.
pub const MAX_CHUNK_COPIES: usize = 64;
/// Root inode (of the exported subfolder).
pub const ROOT_INODE: u32 = 1;
/// Largest name of one path component.
pub const MAX_NAME_LEN: usize = 255;
/// CRC-32 of an all-zero 64 KiB block, what a chunkserver reports for unwritten blocks.
pub const ZERO_BLOCK_CRC: u32 = 0xD797_8EEB;

/// The version we announce: 3.0.117, packed as `major<<16 | mid<<8 | minor*2`.
pub const CLIENT_VERSION: u32 = (3 << 16) | (117 * 2); // mid version 0

/// The only register blob a 3.0.117 master accepts.
pub const REGISTER_BLOB_ACL: &[u8; 64] =
    b"DjI1GAQDULI5d2YjA26ypc3ovkhjvhciTQVx3CS4nYgtBoUcsljiVpsErJENHaw0";

/// Register sub-commands (`rcode`).
pub mod register {
    pub const GETRANDOM: u8 = 1;
    pub const NEWSESSION: u8 = 2;
    pub const RECONNECT: u8 = 3;
    pub const CLOSESESSION: u8 = 6;
}

/// Message type ids.
pub mod msg {
    pub const ANTOAN_NOP: u32 = 0;
    pub const ANTOAN_UNKNOWN_COMMAND: u32 = 1;
    pub const ANTOAN_BAD_COMMAND_SIZE: u32 = 2;

    pub const CLTOCS_READ: u32 = 200;
    pub const CSTOCL_READ_STATUS: u32 = 201;
    pub const CSTOCL_READ_DATA: u32 = 202;
    pub const CLTOCS_WRITE: u32 = 210;
    pub const CSTOCL_WRITE_STATUS: u32 = 211;
    pub const CLTOCS_WRITE_DATA: u32 = 212;
    pub const CLTOCS_WRITE_FINISH: u32 = 213;
    pub const ANTOCS_GET_CHUNK_BLOCKS: u32 = 250;
    pub const CSTOAN_CHUNK_BLOCKS: u32 = 251;
    pub const ANTOCS_GET_CHUNK_CHECKSUM_TAB: u32 = 302;
    pub const CSTOAN_CHUNK_CHECKSUM_TAB: u32 = 303;

    pub const CLTOMA_FUSE_REGISTER: u32 = 400;
    pub const MATOCL_FUSE_REGISTER: u32 = 401;
    pub const CLTOMA_FUSE_STATFS: u32 = 402;
    pub const CLTOMA_FUSE_LOOKUP: u32 = 406;
    pub const CLTOMA_FUSE_GETATTR: u32 = 408;
    pub const CLTOMA_FUSE_MKDIR: u32 = 418;
    pub const CLTOMA_FUSE_UNLINK: u32 = 420;
    pub const CLTOMA_FUSE_RMDIR: u32 = 422;
    pub const CLTOMA_FUSE_RENAME: u32 = 424;
    pub const CLTOMA_FUSE_READDIR: u32 = 428;
    pub const CLTOMA_FUSE_OPEN: u32 = 430;
    pub const CLTOMA_FUSE_READ_CHUNK: u32 = 432;
    pub const CLTOMA_FUSE_WRITE_CHUNK: u32 = 434;
    pub const CLTOMA_FUSE_WRITE_CHUNK_END: u32 = 436;
    pub const CLTOMA_FUSE_APPEND_SLICE: u32 = 438;
    pub const CLTOMA_FUSE_CHECK: u32 = 440;
    pub const CLTOMA_FUSE_GETTRASHTIME: u32 = 442;
    pub const CLTOMA_FUSE_SETTRASHTIME: u32 = 444;
    pub const CLTOMA_FUSE_GETSCLASS: u32 = 446;
    pub const CLTOMA_FUSE_SETSCLASS: u32 = 448;
    pub const CLTOMA_FUSE_TRUNCATE: u32 = 464;
    pub const CLTOMA_FUSE_SNAPSHOT: u32 = 468;
    pub const CLTOMA_FUSE_CREATE: u32 = 482;
    pub const CLTOMA_FUSE_SUSTAINED_INODES: u32 = 700;
    /// Admin request (unregistered connections only): the chunkserver list.
    pub const CLTOMA_CSERV_LIST: u32 = 500;
    pub const MATOCL_CSERV_LIST: u32 = 501;
    /// Admin request (unregistered connections only): the inodes a session
    /// has open (what `mfscli -SOF` shows).
    pub const CLTOMA_LIST_OPEN_FILES: u32 = 532;
    pub const MATOCL_LIST_OPEN_FILES: u32 = 533;
}

/// `flags` of `CLTOMA_FUSE_OPEN`.
pub mod open {
    /// Open for reading (the master checks read permission).
    pub const READ: u8 = 0x01;
}

/// `chunkopflags` of READ_CHUNK / WRITE_CHUNK / WRITE_CHUNK_END.
pub mod chunkop {
    pub const CONTINUEOP: u8 = 0x02;
}

/// A MooseFS status code (u8, shared by master and chunkservers).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Status(pub u8);

impl Status {
    pub const OK: Status = Status(0);
    pub const EPERM: Status = Status(1);
    pub const ENOTDIR: Status = Status(2);
    pub const ENOENT: Status = Status(3);
    pub const EACCES: Status = Status(4);
    pub const EEXIST: Status = Status(5);
    pub const EINVAL: Status = Status(6);
    pub const ENOTEMPTY: Status = Status(7);
    pub const CHUNKLOST: Status = Status(8);
    pub const OUTOFMEMORY: Status = Status(9);
    pub const INDEXTOOBIG: Status = Status(10);
    pub const LOCKED: Status = Status(11);
    pub const NOCHUNKSERVERS: Status = Status(12);
    pub const NOCHUNK: Status = Status(13);
    pub const CHUNKBUSY: Status = Status(14);
    pub const NOTDONE: Status = Status(16);
    pub const WRONGVERSION: Status = Status(19);
    pub const NOSPACE: Status = Status(21);
    pub const IO: Status = Status(22);
    pub const CANTCONNECT: Status = Status(26);
    pub const DISCONNECTED: Status = Status(28);
    pub const CRC: Status = Status(29);
    pub const EROFS: Status = Status(33);
    pub const QUOTA: Status = Status(34);
    pub const BADSESSIONID: Status = Status(35);
    pub const NOPASSWORD: Status = Status(36);
    pub const BADPASSWORD: Status = Status(37);
    pub const CSNOTPRESENT: Status = Status(43);
    pub const EAGAIN: Status = Status(45);
    pub const ENOENT_NOCACHE: Status = Status(48);

    /// The symbolic name used in the MooseFS sources.
    pub fn name(self) -> &'static str {
        const NAMES: [&str; 54] = [
            "OK",
            "EPERM",
            "ENOTDIR",
            "ENOENT",
            "EACCES",
            "EEXIST",
            "EINVAL",
            "ENOTEMPTY",
            "CHUNKLOST",
            "OUTOFMEMORY",
            "INDEXTOOBIG",
            "LOCKED",
            "NOCHUNKSERVERS",
            "NOCHUNK",
            "CHUNKBUSY",
            "REGISTER",
            "NOTDONE",
            "NOTOPENED",
            "NOTSTARTED",
            "WRONGVERSION",
            "CHUNKEXIST",
            "NOSPACE",
            "IO",
            "BNUMTOOBIG",
            "WRONGSIZE",
            "WRONGOFFSET",
            "CANTCONNECT",
            "WRONGCHUNKID",
            "DISCONNECTED",
            "CRC",
            "DELAYED",
            "CANTCREATEPATH",
            "MISMATCH",
            "EROFS",
            "QUOTA",
            "BADSESSIONID",
            "NOPASSWORD",
            "BADPASSWORD",
            "ENOATTR",
            "ENOTSUP",
            "ERANGE",
            "NOTFOUND",
            "ACTIVE",
            "CSNOTPRESENT",
            "WAITING",
            "EAGAIN",
            "EINTR",
            "ECANCELED",
            "ENOENT_NOCACHE",
            "EPERM_NOTADMIN",
            "CLASSEXISTS",
            "CLASSLIMITREACH",
            "NOSUCHCLASS",
            "CLASSINUSE",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }

    /// Whether a WRITE_CHUNK / READ_CHUNK answered with this status is worth
    /// retrying (the reference client's classification plus observation).
    pub fn is_transient(self) -> bool {
        matches!(
            self,
            Status::OUTOFMEMORY
                | Status::LOCKED
                | Status::NOCHUNKSERVERS
                | Status::NOCHUNK
                | Status::CHUNKBUSY
                | Status::NOTDONE
                | Status::WRONGVERSION
                | Status::NOSPACE
                | Status::CANTCONNECT
                | Status::DISCONNECTED
                | Status::CRC
                | Status::CSNOTPRESENT
                | Status::EAGAIN
        )
    }

    /// Whether the status means "no such entry".
    pub fn is_not_found(self) -> bool {
        self == Status::ENOENT || self == Status::ENOENT_NOCACHE
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Node type from the high nibble of `typemode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    File,
    Directory,
    Symlink,
    Fifo,
    BlockDevice,
    CharDevice,
    Socket,
    Unknown(u8),
}

impl NodeType {
    fn from_code(code: u8) -> Self {
        match code {
            1 => NodeType::File,
            2 => NodeType::Directory,
            3 => NodeType::Symlink,
            4 => NodeType::Fifo,
            5 => NodeType::BlockDevice,
            6 => NodeType::CharDevice,
            7 => NodeType::Socket,
            other => NodeType::Unknown(other),
        }
    }

    /// The single-letter type used by `ls -l`.
    pub fn letter(self) -> char {
        match self {
            NodeType::File => '-',
            NodeType::Directory => 'd',
            NodeType::Symlink => 'l',
            NodeType::Fifo => 'p',
            NodeType::BlockDevice => 'b',
            NodeType::CharDevice => 'c',
            NodeType::Socket => 's',
            NodeType::Unknown(_) => '?',
        }
    }
}

/// Byte length of an attribute record for clients >= 3.0.93.
pub const ATTR_LEN: usize = 36;

/// The 36-byte attribute record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub node_type: NodeType,
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub atime: u32,
    pub mtime: u32,
    pub ctime: u32,
    pub nlink: u32,
    pub length: u64,
}

impl Attr {
    pub(crate) fn parse(r: &mut PayloadReader) -> Result<Self, ProtocolError> {
        let _flags = r.u8()?;
        let typemode = r.u16()?;
        let attr = Attr {
            node_type: NodeType::from_code((typemode >> 12) as u8),
            mode: typemode & 0o7777,
            uid: r.u32()?,
            gid: r.u32()?,
            atime: r.u32()?,
            mtime: r.u32()?,
            ctime: r.u32()?,
            nlink: r.u32()?,
            length: r.u64()?,
        };
        if attr.length > MAX_FILE_LENGTH {
            return Err(ProtocolError::new(format!(
                "attributes with a length of {} bytes, more than MooseFS can hold",
                attr.length
            )));
        }
        let _winattr = r.u8()?;
        Ok(attr)
    }

    pub fn is_dir(&self) -> bool {
        self.node_type == NodeType::Directory
    }

    pub fn is_file(&self) -> bool {
        self.node_type == NodeType::File
    }
}

/// One chunkserver in a READ_CHUNK / WRITE_CHUNK answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ChunkServer {
    pub addr: SocketAddrV4,
    pub version: u32,
}

impl ChunkServer {
    pub(crate) fn parse(r: &mut PayloadReader) -> Result<Self, ProtocolError> {
        let ip = Ipv4Addr::from(r.u32()?);
        let port = r.u16()?;
        let version = r.u32()?;
        let _labelmask = r.u32()?;
        Ok(ChunkServer {
            addr: SocketAddrV4::new(ip, port),
            version,
        })
    }
}

/// A chunk's location as given by READ_CHUNK / WRITE_CHUNK.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkLocation {
    /// The file length as the master sees it at the time of the answer.
    pub file_length: u64,
    /// 0 = hole (no chunk).
    pub chunk_id: u64,
    pub version: u32,
    /// Replicas in the master's preferred order (element 0 = chain head).
    pub servers: Vec<ChunkServer>,
}

impl ChunkLocation {
    pub(crate) fn parse(r: &mut PayloadReader) -> Result<Self, ProtocolError> {
        let protocol_id = r.u8()?;
        if protocol_id != 2 {
            return Err(ProtocolError::new(format!(
                "chunk location answer with protocol id {protocol_id}, expected 2"
            )));
        }
        let file_length = r.u64()?;
        let chunk_id = r.u64()?;
        let version = r.u32()?;
        let count = r.remaining() / 14;
        if count > MAX_CHUNK_COPIES || !r.remaining().is_multiple_of(14) {
            return Err(ProtocolError::new(format!(
                "chunk location with {} bytes of servers (at most {MAX_CHUNK_COPIES} records of 14)",
                r.remaining()
            )));
        }
        let mut servers = Vec::with_capacity(count);
        while r.remaining() > 0 {
            servers.push(ChunkServer::parse(r)?);
        }
        Ok(ChunkLocation {
            file_length,
            chunk_id,
            version,
            servers,
        })
    }
}

/// State of one copy in a CHECK answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyState {
    Valid,
    MarkedForRemoval,
    WrongVersion,
    WrongVersionMarked,
    Invalid,
    Unknown(u8),
}

impl CopyState {
    pub(crate) fn from_code(code: u8) -> Self {
        match code {
            0 => CopyState::Valid,
            1 => CopyState::MarkedForRemoval,
            2 => CopyState::WrongVersion,
            3 => CopyState::WrongVersionMarked,
            4 => CopyState::Invalid,
            other => CopyState::Unknown(other),
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            CopyState::Valid => "VALID",
            CopyState::MarkedForRemoval => "MARKED FOR REMOVAL",
            CopyState::WrongVersion => "WRONG VERSION",
            CopyState::WrongVersionMarked => "WRONG VERSION, MARKED FOR REMOVAL",
            CopyState::Invalid => "INVALID",
            CopyState::Unknown(_) => "UNKNOWN",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announced_version_is_3_0_117() {
        assert_eq!(CLIENT_VERSION, 0x0003_00EA);
    }

    #[test]
    fn zero_block_crc_matches_crc32() {
        assert_eq!(crc32fast::hash(&[0u8; BLOCK_SIZE as usize]), ZERO_BLOCK_CRC);
    }

    #[test]
    fn status_names() {
        assert_eq!(Status::LOCKED.name(), "LOCKED");
        assert_eq!(Status(53).name(), "CLASSINUSE");
        assert_eq!(Status(200).name(), "UNKNOWN");
        assert_eq!(Status::ENOENT.to_string(), "ENOENT (3)");
    }
}
