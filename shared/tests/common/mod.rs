//! Helpers for tests against the real MooseFS cluster started by `scripts/stack up`:
//! a client from `MFS_MASTER`, a unique test directory (goal 3, trash time 0) that is
//! removed afterwards even if the test panics, and independent checks through the
//! `mfsmount` at `MFS_MOUNT` (md5sum, `mfsfileinfo -c`).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use md5::{Digest, Md5};
use rand::{RngCore, SeedableRng};
use shared::moosefs::{ClientConfig, MfsClient, MfsPath, Name};

pub fn master_addr() -> String {
    std::env::var("MFS_MASTER").unwrap_or_else(|_| "10.213.47.10:9421".into())
}

pub fn mount_dir() -> PathBuf {
    PathBuf::from(std::env::var("MFS_MOUNT").unwrap_or_else(|_| "/var/tmp/mfs-ingest/mnt".into()))
}

pub async fn client() -> MfsClient {
    let mut cfg = ClientConfig::new(master_addr());
    cfg.master.client_info = "mfs-ingest tests".into();
    MfsClient::connect(cfg)
        .await
        .expect("connect to the MooseFS master (is `scripts/stack up` running?)")
}

/// A directory `/tests/<name>-<pid>-<random>` with goal 3 and trash time 0.
pub struct TestDir {
    pub path: MfsPath,
    pub inode: u32,
}

impl TestDir {
    pub async fn new(client: &MfsClient, name: &str) -> TestDir {
        let tests = MfsPath::parse("/tests").unwrap();
        let tests_inode = client.mkdir_all(&tests).await.unwrap();
        client.set_trash_time(tests_inode, 0, false).await.unwrap();
        let unique = format!(
            "{name}-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = tests.join(&Name::parse(&unique).unwrap());
        let inode = client.mkdir_all(&path).await.unwrap();
        client.set_goal(inode, 3, false).await.unwrap();
        client.set_trash_time(inode, 0, false).await.unwrap();
        TestDir { path, inode }
    }

    pub fn file(&self, name: &str) -> MfsPath {
        self.path.join(&Name::parse(name).unwrap())
    }

    pub fn mount_path(&self, name: &str) -> PathBuf {
        mount_dir().join(self.file(name).to_string().trim_start_matches('/'))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let path = self.path.clone();
        // Cleanup needs async I/O; run it on a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let c = client().await;
                if let Err(e) = c.remove(&path, true).await {
                    eprintln!("cleanup of {path} failed: {e}");
                }
                c.close().await;
            });
        })
        .join();
    }
}

pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// md5 of a file read through the FUSE mount.
pub fn md5_through_mount(path: &std::path::Path) -> String {
    let out = Command::new("md5sum")
        .arg(path)
        .output()
        .expect("run md5sum");
    assert!(
        out.status.success(),
        "md5sum {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `mfsfileinfo -c` per chunk: the copies' checksum digests. Panics if the tool
/// itself reports differing copies.
pub fn mfsfileinfo_digests(path: &std::path::Path) -> BTreeMap<u32, Vec<String>> {
    let out = Command::new("mfsfileinfo")
        .arg("-c")
        .arg(path)
        .output()
        .expect("run mfsfileinfo");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mfsfileinfo failed: {text}");
    assert!(!text.contains("different checksums"), "mfsfileinfo: {text}");
    let mut chunks = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("chunk ") {
            current = rest
                .split(':')
                .next()
                .and_then(|n| n.trim().parse::<u32>().ok());
            chunks.entry(current.unwrap()).or_insert_with(Vec::new);
        } else if line.starts_with("copy ") {
            let digest = line
                .split("checksum digest: ")
                .nth(1)
                .map(|d| d.trim_end_matches(')').to_string())
                .unwrap_or_else(|| panic!("no digest in {line:?}"));
            chunks.get_mut(&current.unwrap()).unwrap().push(digest);
        }
    }
    chunks
}

/// Asserts every replica of every chunk is identical, by our own report and by
/// `mfsfileinfo -c` through the mount, with at least `copies` valid copies each.
pub async fn assert_replicas_identical(
    client: &MfsClient,
    dir: &TestDir,
    name: &str,
    copies: usize,
) {
    let (inode, _) = client.resolve(&dir.file(name)).await.unwrap();
    let reports = client.replica_report(inode).await.unwrap();
    for r in &reports {
        if r.chunk_id == 0 {
            continue;
        }
        assert!(
            r.copies_identical(),
            "{name} chunk {}: copies differ: {r:?}",
            r.index
        );
        assert!(
            r.valid_copies() >= copies,
            "{name} chunk {}: {} valid copies",
            r.index,
            r.valid_copies()
        );
    }
    let tool = mfsfileinfo_digests(&dir.mount_path(name));
    for r in &reports {
        if r.chunk_id == 0 {
            continue;
        }
        let ours: Vec<String> = r
            .copies
            .iter()
            .map(|c| c.table.as_ref().unwrap().digest())
            .collect();
        let theirs = tool
            .get(&r.index)
            .unwrap_or_else(|| panic!("mfsfileinfo lists no chunk {}", r.index));
        assert!(
            theirs.len() >= copies,
            "mfsfileinfo chunk {}: {theirs:?}",
            r.index
        );
        assert!(
            theirs.iter().all(|d| d == &ours[0]),
            "chunk {}: ours {ours:?}, mfsfileinfo {theirs:?}",
            r.index
        );
    }
}
