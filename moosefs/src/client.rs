//! [`MfsClient`]: the namespace and metadata operations of the master
//! protocol (lookup, getattr, mkdir, create, unlink, rename, truncate,
//! readdir, statfs, goal, trash time, snapshot, append slice, chunk check,
//! opening an existing file for this session)
//! and path resolution. Data I/O lives in `write.rs` and `read.rs`, the
//! per-replica checksum report in `report.rs`, as further `impl MfsClient`
//! blocks.

use std::net::SocketAddrV4;
use std::sync::Arc;

use bytes::Bytes;

use crate::chunkserver::CsPool;
use crate::codec::Packet;
use crate::config::ClientConfig;
use crate::cservers::{ChunkserverCount, ChunkserverCountCache};
use crate::decode;
pub use crate::decode::StatFs;
use crate::error::{MfsError, Result};
use crate::master::{answer_status, MasterSession, OpenInodeGuard, SessionInfo};
use crate::observe::{ClientStats, NoObserver, Observer};
use crate::path::{MfsPath, Name};
use crate::proto::{msg, Attr, ChunkLocation, CopyState, Status, CHUNK_SIZE, ROOT_INODE};

/// Deepest directory tree [`MfsClient::remove`] descends into: a master
/// whose directories contain themselves must not make it recurse forever.
pub const MAX_REMOVE_DEPTH: usize = 1024;

/// A directory entry.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub inode: u32,
    pub attr: Attr,
}

/// A file created (and opened) by this session. While this value lives the
/// master keeps the inode writable even if it is unlinked; dropping it
/// releases the inode at the next sustained-inodes update.
pub struct CreatedFile {
    pub inode: u32,
    pub attr: Attr,
    pub open: OpenInodeGuard,
}

/// An existing file opened by this session ([`MfsClient::open_file`]): while
/// this value lives the file is in the session's sustained-inodes list, so
/// unlinking it (or renaming another file over it) from any session leaves
/// its data readable by inode; dropping it releases the inode at once (the
/// next sustained-inodes update, sent when the last holder drops), and the
/// master frees an unlinked file's data once no session holds it.
pub struct OpenedFile {
    pub inode: u32,
    /// The attributes when it was opened (a file replaced by rename, never
    /// written in place, keeps them).
    pub attr: Attr,
    pub open: OpenInodeGuard,
}

/// A native MooseFS client: one master session shared by every operation;
/// chunkserver links opened per data transfer. Cheap to clone.
#[derive(Clone)]
pub struct MfsClient {
    pub(crate) master: MasterSession,
    pub(crate) observer: Arc<dyn Observer>,
    pub(crate) cfg: Arc<ClientConfig>,
    pub(crate) stats: Arc<ClientStats>,
    pub(crate) pool: Arc<CsPool>,
    /// The master's chunkserver count, asked at most every few seconds.
    pub(crate) chunkserver_count: Arc<ChunkserverCountCache>,
}

/// How long a chunkserver count from the master is reused.
pub const CHUNKSERVER_COUNT_TTL: std::time::Duration = std::time::Duration::from_secs(10);

/// An answer that is either one status byte or a payload.
fn payload_or_status(op: &'static str, answer: Bytes) -> std::result::Result<Bytes, MfsError> {
    match answer_status(&answer) {
        Some(status) => Err(MfsError::status(op, status)),
        None => Ok(answer),
    }
}

/// Turns a namespace status into the error a caller can act on.
fn namespace_error(err: MfsError, what: impl std::fmt::Display) -> MfsError {
    match err.mfs_status() {
        Some(s) if s.is_not_found() => MfsError::NotFound(what.to_string()),
        Some(Status::EEXIST) => MfsError::AlreadyExists(what.to_string()),
        Some(Status::ENOTDIR) => MfsError::NotDirectory(what.to_string()),
        Some(Status::ENOTEMPTY) => MfsError::DirectoryNotEmpty(what.to_string()),
        _ => err,
    }
}

impl MfsClient {
    /// Registers a session with the master.
    pub async fn connect(cfg: ClientConfig) -> Result<Self> {
        Self::connect_observed(cfg, Arc::new(NoObserver)).await
    }

    /// [`MfsClient::connect`] reporting wire events to `observer`.
    pub async fn connect_observed(cfg: ClientConfig, observer: Arc<dyn Observer>) -> Result<Self> {
        let master = MasterSession::connect_observed(cfg.master.clone(), observer.clone()).await?;
        Ok(MfsClient {
            master,
            observer,
            cfg: Arc::new(cfg),
            stats: Arc::new(ClientStats::default()),
            pool: Arc::new(CsPool::default()),
            chunkserver_count: Arc::new(ChunkserverCountCache::new(CHUNKSERVER_COUNT_TTL)),
        })
    }

    /// How many chunkservers the master knows and how many are connected,
    /// at most [`CHUNKSERVER_COUNT_TTL`] old (asked on a connection of its own).
    pub async fn chunkserver_count(&self) -> Result<ChunkserverCount> {
        self.chunkserver_count.get(&self.cfg.master).await
    }

    pub fn session(&self) -> SessionInfo {
        self.master.info()
    }

    pub fn master(&self) -> &MasterSession {
        &self.master
    }

    pub fn config(&self) -> &ClientConfig {
        &self.cfg
    }

    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// Closes the master session (releases open inodes at once).
    pub async fn close(&self) {
        self.master.close().await;
    }

    fn ugid(&self, p: Packet) -> Packet {
        p.ugid(self.cfg.uid, self.cfg.gid)
    }

    /// A read-only request, repeated if the link dropped while it was in flight.
    async fn idempotent(
        &self,
        kind: u32,
        op: &'static str,
        build: impl Fn(Packet) -> Packet,
    ) -> Result<Bytes> {
        let mut tries = 0;
        loop {
            tries += 1;
            match self.master.request(kind, op, &build).await {
                Err(MfsError::Disconnected) if tries < 4 => continue,
                other => return other,
            }
        }
    }

    pub async fn statfs(&self) -> Result<StatFs> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_STATFS, "statfs", |p| p)
            .await?;
        Ok(decode::statfs(payload_or_status("statfs", answer)?)?)
    }

    /// Looks `name` up in directory `parent`.
    pub async fn lookup(&self, parent: u32, name: &Name) -> Result<(u32, Attr)> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_LOOKUP, "lookup", |p| {
                self.ugid(p.u32(parent).name(name.as_bytes()))
            })
            .await?;
        let answer = payload_or_status("lookup", answer).map_err(|e| namespace_error(e, name))?;
        Ok(decode::inode_attr(answer)?)
    }

    /// Resolves a path to its inode and attributes.
    pub async fn resolve(&self, path: &MfsPath) -> Result<(u32, Attr)> {
        let mut inode = ROOT_INODE;
        let mut attr = None;
        for (i, name) in path.components().iter().enumerate() {
            if let Some(a) = &attr {
                if !Attr::is_dir(a) {
                    let prefix: Vec<&str> =
                        path.components()[..i].iter().map(|n| n.as_str()).collect();
                    return Err(MfsError::NotDirectory(format!("/{}", prefix.join("/"))));
                }
            }
            let (child, child_attr) = self.lookup(inode, name).await.map_err(|e| match e {
                MfsError::NotFound(_) => MfsError::NotFound(path.to_string()),
                MfsError::NotDirectory(_) => MfsError::NotDirectory(path.to_string()),
                other => other,
            })?;
            inode = child;
            attr = Some(child_attr);
        }
        match attr {
            Some(a) => Ok((inode, a)),
            None => Ok((inode, self.getattr(inode).await?)),
        }
    }

    pub async fn getattr(&self, inode: u32) -> Result<Attr> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_GETATTR, "getattr", |p| {
                p.u32(inode).u8(0).u32(self.cfg.uid).u32(self.cfg.gid)
            })
            .await?;
        let answer = payload_or_status("getattr", answer)
            .map_err(|e| namespace_error(e, format!("inode {inode}")))?;
        Ok(decode::attr(answer)?)
    }

    pub async fn mkdir(&self, parent: u32, name: &Name, mode: u16) -> Result<(u32, Attr)> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_MKDIR, "mkdir", |p| {
                self.ugid(p.u32(parent).name(name.as_bytes()).u16(mode).u16(0))
                    .u8(0)
            })
            .await?;
        let answer = payload_or_status("mkdir", answer).map_err(|e| namespace_error(e, name))?;
        Ok(decode::inode_attr(answer)?)
    }

    /// `mkdir -p`: creates missing directories; returns the last one's inode.
    pub async fn mkdir_all(&self, path: &MfsPath) -> Result<u32> {
        let mut inode = ROOT_INODE;
        for name in path.components() {
            inode = match self.lookup(inode, name).await {
                Ok((child, attr)) if attr.is_dir() => child,
                Ok(_) => return Err(MfsError::NotDirectory(path.to_string())),
                Err(MfsError::NotFound(_)) => match self.mkdir(inode, name, 0o755).await {
                    Ok((child, _)) => child,
                    // Someone else created it meanwhile.
                    Err(MfsError::AlreadyExists(_)) => {
                        let (child, attr) = self.lookup(inode, name).await?;
                        if !attr.is_dir() {
                            return Err(MfsError::NotDirectory(path.to_string()));
                        }
                        child
                    }
                    Err(e) => return Err(e),
                },
                Err(e) => return Err(e),
            };
        }
        Ok(inode)
    }

    /// Creates (and opens for this session) a new regular file.
    pub async fn create(&self, parent: u32, name: &Name, mode: u16) -> Result<CreatedFile> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_CREATE, "create", |p| {
                self.ugid(p.u32(parent).name(name.as_bytes()).u16(mode).u16(0))
            })
            .await?;
        let answer = payload_or_status("create", answer).map_err(|e| namespace_error(e, name))?;
        let (inode, attr) = decode::created(answer)?;
        let open = self.master.hold_open(inode);
        Ok(CreatedFile { inode, attr, open })
    }

    /// Opens an existing regular file for reading (`CLTOMA_FUSE_OPEN`),
    /// holding it open for this session until the returned value drops.
    ///
    /// Wire (MooseFS 3.0.117, `matoclserv_fuse_open`, `fs_opencheck`):
    /// `CLTOMA_FUSE_OPEN` (430) `msgid:u32 inode:u32 uid:u32 gcnt:u32
    /// gcnt×gid:u32 flags:u8` (flags 0x01 read, 0x02 write, 0x04 after
    /// create, 0x08 truncate), answered by `MATOCL_FUSE_OPEN` (431)
    /// `msgid:u32 oflags:u8 attr[36]` or a status (ENOENT: no such inode;
    /// EPERM: not a file; EACCES: no read permission). The master records
    /// the (session, inode) pair; the session's next
    /// `CLTOMA_FUSE_SUSTAINED_INODES` list must name the inode or the
    /// master releases it, so the inode enters this session's open set
    /// *before* the request is sent: a list built in between would
    /// otherwise release what the master just opened.
    pub async fn open_file(&self, inode: u32) -> Result<OpenedFile> {
        let open = self.master.hold_open(inode);
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_OPEN, "open", |p| {
                self.ugid(p.u32(inode)).u8(crate::proto::open::READ)
            })
            .await?;
        let answer = payload_or_status("open", answer)
            .map_err(|e| namespace_error(e, format!("inode {inode}")))?;
        let attr = decode::opened(answer)?;
        if !attr.is_file() {
            return Err(MfsError::InvalidArgument(format!(
                "inode {inode} is not a regular file"
            )));
        }
        Ok(OpenedFile { inode, attr, open })
    }

    /// The attributes of any inode the master still has: also a file that
    /// was unlinked but is still open by some session (sustained) or in the
    /// trash (`GETATTR` with `opened = 1`). [`MfsError::NotFound`] once the
    /// master has freed it.
    pub async fn getattr_detached(&self, inode: u32) -> Result<Attr> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_GETATTR, "getattr", |p| {
                p.u32(inode).u8(1).u32(self.cfg.uid).u32(self.cfg.gid)
            })
            .await?;
        let answer = payload_or_status("getattr", answer)
            .map_err(|e| namespace_error(e, format!("inode {inode}")))?;
        Ok(decode::attr(answer)?)
    }

    pub async fn unlink(&self, parent: u32, name: &Name) -> Result<()> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_UNLINK, "unlink", |p| {
                self.ugid(p.u32(parent).name(name.as_bytes()))
            })
            .await?;
        payload_or_status("unlink", answer).map_err(|e| namespace_error(e, name))?;
        Ok(())
    }

    pub async fn rmdir(&self, parent: u32, name: &Name) -> Result<()> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_RMDIR, "rmdir", |p| {
                self.ugid(p.u32(parent).name(name.as_bytes()))
            })
            .await?;
        payload_or_status("rmdir", answer).map_err(|e| namespace_error(e, name))?;
        Ok(())
    }

    /// Removes a file, or a directory with everything below it if `recursive`.
    pub async fn remove(&self, path: &MfsPath, recursive: bool) -> Result<()> {
        let (parent_path, name) = path
            .split_last()
            .ok_or_else(|| MfsError::InvalidArgument("refusing to remove the root".into()))?;
        let (parent, _) = self.resolve(&parent_path).await?;
        let (inode, attr) = self.lookup(parent, name).await.map_err(|e| match e {
            MfsError::NotFound(_) => MfsError::NotFound(path.to_string()),
            other => other,
        })?;
        if attr.is_dir() {
            if recursive {
                self.remove_tree(inode, 1).await?;
            }
            self.rmdir(parent, name).await.map_err(|e| match e {
                MfsError::DirectoryNotEmpty(_) => MfsError::DirectoryNotEmpty(path.to_string()),
                other => other,
            })
        } else {
            self.unlink(parent, name).await
        }
    }

    /// Removes everything inside directory `dir`, `depth` levels below the
    /// directory being removed (at most [`MAX_REMOVE_DEPTH`]).
    fn remove_tree(
        &self,
        dir: u32,
        depth: usize,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + '_>> {
        Box::pin(async move {
            if depth > MAX_REMOVE_DEPTH {
                return Err(MfsError::InvalidArgument(format!(
                    "directory tree deeper than {MAX_REMOVE_DEPTH} levels"
                )));
            }
            for entry in self.readdir(dir).await? {
                let name = Name::parse(&entry.name)?;
                if entry.attr.is_dir() {
                    self.remove_tree(entry.inode, depth + 1).await?;
                    self.rmdir(dir, &name).await?;
                } else {
                    self.unlink(dir, &name).await?;
                }
            }
            Ok(())
        })
    }

    /// Renames (POSIX semantics: an existing target file is replaced).
    pub async fn rename(
        &self,
        src_parent: u32,
        src_name: &Name,
        dst_parent: u32,
        dst_name: &Name,
    ) -> Result<u32> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_RENAME, "rename", |p| {
                self.ugid(
                    p.u32(src_parent)
                        .name(src_name.as_bytes())
                        .u32(dst_parent)
                        .name(dst_name.as_bytes()),
                )
            })
            .await?;
        let answer =
            payload_or_status("rename", answer).map_err(|e| namespace_error(e, src_name))?;
        Ok(decode::renamed(answer)?)
    }

    /// Sets a file's length (shrinks or zero-extends). Returns the new attributes.
    pub async fn truncate(&self, inode: u32, length: u64) -> Result<Attr> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_TRUNCATE, "truncate", |p| {
                self.ugid(p.u32(inode).u8(0)).u64(length)
            })
            .await?;
        let answer = payload_or_status("truncate", answer)
            .map_err(|e| namespace_error(e, format!("inode {inode}")))?;
        Ok(decode::truncated(answer)?)
    }

    /// Entries of a directory, without `.` and `..`.
    pub async fn readdir(&self, inode: u32) -> Result<Vec<DirEntry>> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_READDIR, "readdir", |p| {
                self.ugid(p.u32(inode)).u8(0x01).u32(u32::MAX).u64(0)
            })
            .await?;
        let answer = payload_or_status("readdir", answer)
            .map_err(|e| namespace_error(e, format!("inode {inode}")))?;
        Ok(decode::dir_entries(answer)?
            .into_iter()
            .filter(|(name, _, _)| &name[..] != b"." && &name[..] != b"..")
            .map(|(name, inode, attr)| DirEntry {
                name: String::from_utf8_lossy(&name).into_owned(),
                inode,
                attr,
            })
            .collect())
    }

    /// Sets the goal (number of copies, 1..=9); `recursive` for directories.
    pub async fn set_goal(&self, inode: u32, goal: u8, recursive: bool) -> Result<()> {
        let info = self.session();
        if goal < info.min_goal.max(1) || goal > info.max_goal.min(9) {
            return Err(MfsError::InvalidArgument(format!(
                "goal {goal} outside the allowed range {}..={}",
                info.min_goal.max(1),
                info.max_goal.min(9)
            )));
        }
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_SETSCLASS, "set goal", |p| {
                p.u32(inode)
                    .u32(self.cfg.uid)
                    .u8(goal)
                    .u8(if recursive { 4 } else { 0 })
            })
            .await?;
        let (_changed, _unchanged, not_permitted) =
            decode::set_goal_counts(payload_or_status("set goal", answer)?)?;
        if not_permitted > 0 {
            return Err(MfsError::status("set goal", Status::EPERM));
        }
        Ok(())
    }

    /// The goal of one inode.
    pub async fn get_goal(&self, inode: u32) -> Result<u8> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_GETSCLASS, "get goal", |p| {
                p.u32(inode).u8(0)
            })
            .await?;
        let goal = decode::goal(payload_or_status("get goal", answer)?)?;
        if goal == 0xFF {
            return Err(MfsError::InvalidArgument(
                "inode uses a named storage class, not a simple goal".into(),
            ));
        }
        Ok(goal)
    }

    /// Sets how long deleted files stay in the trash (0 = freed at once).
    pub async fn set_trash_time(&self, inode: u32, seconds: u32, recursive: bool) -> Result<()> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_SETTRASHTIME, "set trash time", |p| {
                p.u32(inode)
                    .u32(self.cfg.uid)
                    .u32(seconds)
                    .u8(if recursive { 4 } else { 0 })
            })
            .await?;
        payload_or_status("set trash time", answer)?;
        Ok(())
    }

    /// Makes `dst_parent/dst_name` a lazy copy of `src` (metadata only):
    /// the new file references `src`'s chunks, and the first write to either
    /// file gives the written chunk a new id (copy-on-write), so neither ever
    /// sees the other's later writes. `overwrite` replaces an existing
    /// `dst_name` (without it, an existing name is [`MfsError::AlreadyExists`]).
    ///
    /// Wire (MooseFS 3.0.117, verified against `matoclserv_fuse_snapshot` and
    /// `mfstools.c` `snapshot_ctl`, and live): `CLTOMA_FUSE_SNAPSHOT` (468)
    /// `msgid:u32 src:u32 dst_parent:u32 dst_name:NAME uid:u32 gcnt:u32
    /// gcnt×gid:u32 smode:u8 umask:u16`, answered by `MATOCL_FUSE_SNAPSHOT`
    /// (469) `msgid:u32 status:u8` only (no inode: see
    /// [`MfsClient::snapshot_file`]). `smode` bits: 0x01 may overwrite,
    /// 0x02 attributes like `cp` (owner = caller, mode through umask), 0x04
    /// force removal, 0x08 preserve hard links, 0x80 delete a snapshot; 0
    /// here: the copy keeps `src`'s mode, owner, goal, trash time and times.
    /// The master answers at once (the chunk references are added in its
    /// memory; no chunkserver is involved).
    pub async fn snapshot(
        &self,
        src: u32,
        dst_parent: u32,
        dst_name: &Name,
        overwrite: bool,
    ) -> Result<()> {
        self.master
            .request_status(msg::CLTOMA_FUSE_SNAPSHOT, "snapshot", |p| {
                self.ugid(p.u32(src).u32(dst_parent).name(dst_name.as_bytes()))
                    .u8(if overwrite { 1 } else { 0 })
                    .u16(0o022)
            })
            .await
            .map_err(|e| match e.mfs_status() {
                Some(Status::ENOENT) => {
                    MfsError::NotFound(format!("inode {src} or directory inode {dst_parent}"))
                }
                _ => namespace_error(e, dst_name),
            })
    }

    /// Snapshots a regular file `src` to the new name `dst_parent/dst_name`
    /// (never replacing anything there) and returns the copy's inode and
    /// attributes. The snapshot answer carries no inode, and the master
    /// answers OK without creating anything when the caller may not read
    /// `src`: the name is looked up afterwards and a missing or non-file
    /// result is an error.
    pub async fn snapshot_file(
        &self,
        src: u32,
        dst_parent: u32,
        dst_name: &Name,
    ) -> Result<(u32, Attr)> {
        self.snapshot(src, dst_parent, dst_name, false).await?;
        let (inode, attr) = self
            .lookup(dst_parent, dst_name)
            .await
            .map_err(|e| match e {
                MfsError::NotFound(_) => MfsError::status("snapshot", Status::EACCES),
                other => other,
            })?;
        if !attr.is_file() {
            return Err(MfsError::InvalidArgument(format!(
                "snapshot of inode {src} is not a regular file"
            )));
        }
        Ok((inode, attr))
    }

    /// The chunk ids of a file, by chunk index (0 for a hole), as the
    /// master records them: two files with the same ids share their data.
    pub async fn chunk_ids(&self, inode: u32) -> Result<Vec<u64>> {
        let length = self.getattr(inode).await?.length;
        let chunks = length.div_ceil(CHUNK_SIZE);
        let mut ids = Vec::with_capacity(chunks as usize);
        for index in 0..chunks {
            let index = u32::try_from(index)
                .map_err(|_| MfsError::InvalidArgument(format!("file of {length} bytes")))?;
            ids.push(self.check_chunk(inode, index).await?.0);
        }
        Ok(ids)
    }

    /// Appends every chunk of `src` to `dst` by reference (no data copied).
    /// MooseFS places the appended chunks at `dst`'s next chunk boundary, so
    /// `dst`'s length must be a multiple of 64 MiB for a plain concatenation;
    /// anything else is refused here instead of leaving a hole.
    pub async fn append_slice(&self, dst: u32, src: u32) -> Result<u64> {
        let dst_len = self.getattr(dst).await?.length;
        if dst_len % CHUNK_SIZE != 0 {
            return Err(MfsError::InvalidArgument(format!(
                "append slice needs the destination's length to be a multiple of 64 MiB, it is {dst_len}"
            )));
        }
        self.master
            .request_status(msg::CLTOMA_FUSE_APPEND_SLICE, "append slice", |p| {
                self.ugid(p.u8(0).u32(dst).u32(src).u32(0).u32(0x8000_0000))
            })
            .await?;
        Ok(self.getattr(dst).await?.length)
    }

    /// Current location of a chunk for reading (no lock taken).
    pub async fn read_chunk(&self, inode: u32, index: u32) -> Result<ChunkLocation> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_READ_CHUNK, "read chunk", |p| {
                p.u32(inode).u32(index).u8(0)
            })
            .await?;
        Ok(decode::chunk_location(payload_or_status(
            "read chunk",
            answer,
        )?)?)
    }

    /// Low level: takes the write lock of a chunk (creating it if needed).
    /// Every lock must be released with [`MfsClient::write_chunk_end`].
    pub async fn write_chunk(&self, inode: u32, index: u32, flags: u8) -> Result<ChunkLocation> {
        let answer = self
            .master
            .request(msg::CLTOMA_FUSE_WRITE_CHUNK, "write chunk", |p| {
                p.u32(inode).u32(index).u8(flags)
            })
            .await?;
        Ok(decode::chunk_location(payload_or_status(
            "write chunk",
            answer,
        )?)?)
    }

    /// Low level: releases a write lock and grows the file to `file_length`
    /// if that is longer (the master never shrinks a file here).
    pub async fn write_chunk_end(
        &self,
        chunk_id: u64,
        inode: u32,
        index: u32,
        file_length: u64,
    ) -> Result<()> {
        self.master
            .request_status(msg::CLTOMA_FUSE_WRITE_CHUNK_END, "write chunk end", |p| {
                p.u64(chunk_id).u32(inode).u32(index).u64(file_length).u8(0)
            })
            .await
    }

    /// The master's view of a chunk's copies: `(chunk id, version, [(server, state)])`.
    pub async fn check_chunk(
        &self,
        inode: u32,
        index: u32,
    ) -> Result<(u64, u32, Vec<(SocketAddrV4, CopyState)>)> {
        let answer = self
            .idempotent(msg::CLTOMA_FUSE_CHECK, "check chunk", |p| {
                p.u32(inode).u32(index)
            })
            .await?;
        Ok(decode::chunk_copies(payload_or_status(
            "check chunk",
            answer,
        )?)?)
    }
}
