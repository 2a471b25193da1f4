//! Test support for code that runs against a real MooseFS cluster (feature
//! `test-support`; never part of a production build): the cluster found
//! through the environment `scripts/stack env` prints (`MFS_MASTER`,
//! `MFS_MOUNT`), a unique test directory with trash time 0 that is removed
//! when dropped (even if the test panics), and independent checks through
//! the FUSE mount (`md5sum`, `mfsfileinfo -c`).
//!
//! Every helper panics on failure, with a message saying what to check:
//! that is what a test wants.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use md5::{Digest, Md5};
use rand::{RngCore, SeedableRng};

use crate::{ClientConfig, MfsClient, MfsPath, Name};

/// The master's client address: `MFS_MASTER`, else the default stack's.
pub fn master_addr() -> String {
    std::env::var("MFS_MASTER").unwrap_or_else(|_| "10.213.47.10:9421".into())
}

/// Where the cluster is mounted with `mfsmount`: `MFS_MOUNT`, else the default stack's.
pub fn mount_dir() -> PathBuf {
    PathBuf::from(std::env::var("MFS_MOUNT").unwrap_or_else(|_| "/var/tmp/mfs-ingest/mnt".into()))
}

/// A client configuration for the cluster in the environment.
pub fn client_config() -> ClientConfig {
    let mut cfg = ClientConfig::new(master_addr());
    cfg.master.client_info = "mfs-ingest tests".into();
    cfg
}

/// A client connected to the cluster in the environment.
pub async fn client() -> MfsClient {
    MfsClient::connect(client_config())
        .await
        .expect("connect to the MooseFS master (is `scripts/stack up` running, MFS_MASTER set?)")
}

/// The directory every [`TestDir`] lives in.
pub const TESTS_ROOT: &str = "/tests";

/// A directory `/tests/<name>-<pid>-<random>` with goal 3 and trash time 0
/// (deleted data is freed at once), removed with everything in it on drop.
pub struct TestDir {
    pub path: MfsPath,
    pub inode: u32,
}

impl TestDir {
    pub async fn new(client: &MfsClient, name: &str) -> TestDir {
        let tests = MfsPath::parse(TESTS_ROOT).expect("valid tests root");
        let tests_inode = client.mkdir_all(&tests).await.expect("mkdir /tests");
        client
            .set_trash_time(tests_inode, 0, false)
            .await
            .expect("trash time 0 on /tests");
        let path = tests.join(&unique_name(name));
        let inode = client.mkdir_all(&path).await.expect("mkdir test directory");
        client
            .set_goal(inode, 3, false)
            .await
            .expect("goal 3 on the test directory");
        client
            .set_trash_time(inode, 0, false)
            .await
            .expect("trash time 0 on the test directory");
        TestDir { path, inode }
    }

    /// The path of `name` inside the directory.
    pub fn file(&self, name: &str) -> MfsPath {
        self.path
            .join(&Name::parse(name).expect("valid MooseFS name"))
    }

    /// The path of `name` inside the directory, seen through the FUSE mount.
    pub fn mount_path(&self, name: &str) -> PathBuf {
        mount_dir().join(self.file(name).to_string().trim_start_matches('/'))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        remove_now(self.path.clone());
    }
}

/// `<prefix>-<pid>-<random>`: a name no other test process picks.
pub fn unique_name(prefix: &str) -> Name {
    let unique = format!(
        "{prefix}-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    );
    Name::parse(&unique).expect("test name prefix is a valid MooseFS name")
}

/// Removes `path` and everything below it, from any context (sync or async:
/// it runs on a thread and runtime of its own, as a `Drop` needs).
/// Failures are printed, not raised: cleanup must not hide a test's result.
pub fn remove_now(path: MfsPath) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("cleanup runtime");
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

/// `len` pseudo-random bytes, the same for the same seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// Lower-case hex MD5 of `data`.
pub fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `cmd` and asserts it exited 0 (else panics with its stderr);
/// returns its output.
pub fn run_checked(cmd: &mut Command) -> std::process::Output {
    let what = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// MD5 of a file read through the FUSE mount (`md5sum`).
pub fn md5_through_mount(path: &Path) -> String {
    let out = run_checked(Command::new("md5sum").arg(path));
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("md5sum prints a digest")
        .to_string()
}

/// `mfsfileinfo -c` per chunk: the copies' checksum digests. Panics if the
/// tool itself reports differing copies.
pub fn mfsfileinfo_digests(path: &Path) -> BTreeMap<u32, Vec<String>> {
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
            chunks
                .entry(current.expect("chunk number"))
                .or_insert_with(Vec::new);
        } else if line.starts_with("copy ") {
            let digest = line
                .split("checksum digest: ")
                .nth(1)
                .map(|d| d.trim_end_matches(')').to_string())
                .unwrap_or_else(|| panic!("no digest in {line:?}"));
            chunks
                .get_mut(&current.expect("a copy line follows a chunk line"))
                .expect("chunk entry")
                .push(digest);
        }
    }
    chunks
}

/// Asserts every replica of every chunk of `dir/name` is identical, by the
/// client's own report and by `mfsfileinfo -c` through the mount, with at
/// least `copies` valid copies each.
pub async fn assert_replicas_identical(
    client: &MfsClient,
    dir: &TestDir,
    name: &str,
    copies: usize,
) {
    let (inode, _) = client.resolve(&dir.file(name)).await.expect("resolve");
    let reports = client.replica_report(inode).await.expect("replica report");
    for r in reports.iter().filter(|r| r.chunk_id != 0) {
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
    for r in reports.iter().filter(|r| r.chunk_id != 0) {
        let ours: Vec<String> = r
            .copies
            .iter()
            .map(|c| c.table.as_ref().expect("readable copy").digest())
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
