//! A chunkserver killed in the middle of a large write (tests named
//! "disruptive" run alone, after the rest): the write either completes with the
//! remaining servers, with the right bytes and identical replicas, or fails with
//! a clear error. Never a silent short or mixed file.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use moosefs::testing::*;
use moosefs::{MfsError, Name, WriteOptions};

fn stack() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/stack")
}

fn stack_cmd(args: &[&str]) {
    moosefs::testing::run_checked(Command::new(stack()).args(args));
}

/// Brings chunkserver `n` back (and waits until it reports its space) on drop.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        stack_cmd(&["start-cs", self.0]);
    }
}

async fn write_while_killing(
    required: Option<u8>,
    cs: &'static str,
    tag: &str,
) -> Result<(), String> {
    let client = client().await;
    let dir = TestDir::new(&client, tag).await;
    let data = random_bytes(320 << 20, 77);
    let f = client
        .create(dir.inode, &Name::parse("big").unwrap(), 0o644)
        .await
        .unwrap();
    let opts = WriteOptions {
        required_copies: required,
        ..WriteOptions::default()
    };
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let restart = Restart(cs);
        tokio::task::spawn_blocking(move || stack_cmd(&["stop-cs", cs, "--kill"]))
            .await
            .unwrap();
        restart
    });
    let result = client.write_stream(f.inode, 0, &data[..], &opts).await;
    let restart = killer.await.unwrap();
    match &result {
        Ok(outcome) => {
            assert_eq!(outcome.length, data.len() as u64);
            let want = md5_hex(&data);
            assert_eq!(
                md5_hex(&client.read_all(f.inode).await.unwrap()),
                want,
                "through the client"
            );
            assert_eq!(
                md5_through_mount(&dir.mount_path("big")),
                want,
                "through mfsmount"
            );
            for r in client.replica_report(f.inode).await.unwrap() {
                assert!(r.copies_identical(), "chunk {}: {r:?}", r.index);
                assert!(
                    r.valid_copies() >= required.unwrap_or(3) as usize,
                    "chunk {}: {r:?}",
                    r.index
                );
            }
            eprintln!("write completed with the remaining chunkservers");
        }
        Err(e) => {
            assert!(
                matches!(
                    e,
                    MfsError::WriteFailed { .. } | MfsError::ReplicaMismatch { .. }
                ),
                "unexpected error kind: {e}"
            );
            eprintln!("write failed cleanly: {e}");
        }
    }
    drop(restart);
    drop(dir);
    client.close().await;
    result.map(|_| ()).map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_chunkserver_killed_mid_write_with_two_copies_required_completes() {
    // With two copies enough, losing one of three servers must not fail the write.
    write_while_killing(Some(2), "2", "cs-kill-2")
        .await
        .expect("write with 2 of 3 chunkservers left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disruptive_chunkserver_killed_mid_write_with_goal_copies_required_never_lies() {
    // Either outcome is checked inside; what matters is that it is never a lie.
    let _ = write_while_killing(None, "3", "cs-kill-goal").await;
}
