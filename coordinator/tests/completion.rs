//! The completion path against the real services (PostgreSQL, MooseFS,
//! mfsmount), run in this process: every check before anything at the
//! destination changes, completions serialized per destination, re-runs
//! after a crash between the rename and the commit, foreign files never
//! adopted, timeouts and deadlines on the work under the session row lock,
//! directory destinations refused.
// The instrumented part attempt's future is deep: rustc's default query
// depth overflows computing run_parts()'s layout.
#![recursion_limit = "256"]

use std::sync::Arc;
use std::time::Duration;

use moosefs::MfsPath;
use shared::ingest::{AttemptHooks, Completion, CompletionError, Ingest, PartOutcome};
use shared::queue::{PartJob, EVENTS_EXCHANGE};
use shared::store::{DbTimeouts, Session, Store};
use testkit::*;
use uuid::Uuid;

/// Runs one attempt of every part of a session in this process (in order).
async fn run_parts(ingest: &Ingest, session: &Session) -> Vec<PartOutcome> {
    let mut outcomes = Vec::new();
    for part_number in 0..session.part_count {
        let job = PartJob {
            session_id: session.id,
            part_number,
        };
        outcomes.push(ingest.run_part(&job, "completion-test").await.unwrap());
    }
    outcomes
}

async fn session(p: &Pipeline, id: Uuid) -> Session {
    p.ingest.store.session(id).await.unwrap().unwrap()
}

/// The inode at a destination and its bytes, through the native client.
async fn read_dest(p: &Pipeline, dest: &str) -> Option<(u32, Vec<u8>)> {
    let full = MfsPath::parse(&format!("{}/{dest}", p.mfs_root)).unwrap();
    let (inode, _) = p.ingest.mfs.resolve(&full).await.ok()?;
    Some((inode, p.ingest.mfs.read_all(inode).await.unwrap()))
}

/// Puts a file at a destination through the mount (a foreign writer).
fn put_through_mount(p: &Pipeline, dest: &str, data: &[u8]) {
    let path = p.mount_path(dest);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, data).unwrap();
}

/// Every event queued in the outbox (no relay runs in these tests), as JSON.
async fn queued_events(p: &Pipeline) -> Vec<serde_json::Value> {
    let payloads: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT e FROM outbox, jsonb_array_elements(payload->'events') AS e WHERE exchange = $1",
    )
    .bind(EVENTS_EXCHANGE)
    .fetch_all(&p.ingest.store.pool)
    .await
    .unwrap();
    payloads
}

async fn collect_all_garbage(p: &Pipeline) {
    while p.ingest.collect_garbage(100).await.unwrap() > 0 {}
}

/// Issue 12 item 1: with `overwrite`, a file whose MD5 (or CRC-32C) does not
/// match fails its session and the file that was at the destination stays
/// byte-identical (same inode, same bytes, through the client and the
/// mount): a single part (MD5 known from the write) and a copied assembly
/// (MD5 read from the assembled staging file before the rename).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrite_with_a_wrong_checksum_leaves_the_old_file_byte_identical() {
    let p = Pipeline::new("keepold").await;
    let cases: [(&str, usize, Option<u64>, bool); 3] = [
        ("single-md5", 100_000, None, true),
        ("assembled-md5", 150_000, Some(65536), true),
        ("assembled-crc", 150_000, Some(65536), false),
    ];
    for (i, (name, size, part_size, wrong_md5)) in cases.into_iter().enumerate() {
        let dest = format!("keep/{name}.bin");
        let old: Vec<u8> = (0..50_000u32).map(|b| (b * 7 + i as u32) as u8).collect();
        put_through_mount(&p, &dest, &old);
        let (old_inode, _) = read_dest(&p, &dest).await.unwrap();
        let (url, _) = p.source(&format!("{name}.bin"), size, 40 + i as u64);
        let mut req = p.request(name, &url, &dest);
        req.overwrite = true;
        req.part_size = part_size;
        if wrong_md5 {
            req.md5 = Some("0".repeat(32));
        } else {
            req.crc32c = Some(12345);
        }
        let (s, _) = p.ingest.submit(&req).await.unwrap();
        run_parts(&p.ingest, &s).await;
        let s = session(&p, s.id).await;
        assert_eq!(s.state, "failed", "{name}");
        assert!(
            s.error.as_deref().unwrap_or("").contains("mismatch"),
            "{name}: {:?}",
            s.error
        );
        let now = read_dest(&p, &dest).await.map(|(i, d)| (i, md5_hex(&d)));
        assert_eq!(
            now,
            Some((old_inode, md5_hex(&old))),
            "{name}: the old file is not what it was"
        );
        let through_mount = std::fs::read(p.mount_path(&dest)).unwrap();
        assert!(through_mount == old, "{name}: through the mount");
    }
    collect_all_garbage(&p).await;
    assert!(
        p.staging_files().await.is_empty(),
        "{:?}",
        p.staging_files().await
    );
}

/// Issue 12 item 2: two uploads to one destination whose last parts commit
/// at the same moment (a barrier right before both commits), eight rounds:
/// single-part files and copied three-part assemblies (whose completion
/// takes long enough for the two to overlap). Without `overwrite` exactly
/// one completes and the other fails with "exists"; with it both complete,
/// the one committed last is the file at the destination and its event says
/// it replaced a file, the other's does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_uploads_to_one_destination_complete_one_after_the_other() {
    let p = Pipeline::new("samedest").await;
    let cases = [(true, false), (false, false), (true, true), (false, true)];
    for (round, (assembled, overwrite)) in cases.into_iter().cycle().take(8).enumerate() {
        let dest = format!("same/{round}.bin");
        let mut sessions = Vec::new();
        let mut md5s = Vec::new();
        for who in ["a", "b"] {
            let size = 150_000 + round * 10 + (who == "b") as usize;
            let (url, md5) = p.source(&format!("{who}{round}.bin"), size, round as u64 * 2);
            md5s.push(md5);
            let mut req = p.request(&format!("{who}{round}"), &url, &dest);
            req.overwrite = overwrite;
            req.part_size = assembled.then_some(65536);
            sessions.push(p.ingest.submit(&req).await.unwrap().0);
        }
        let last_part = sessions[0].part_count - 1;
        for s in &sessions {
            for part_number in 0..last_part {
                let job = PartJob {
                    session_id: s.id,
                    part_number,
                };
                let ingest = &p.ingest;
                ingest.run_part(&job, "race").await.unwrap();
            }
        }
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        let hooks = AttemptHooks {
            before_commit: Some(Arc::new(move || {
                let barrier = barrier.clone();
                Box::pin(async move {
                    barrier.wait().await;
                })
            })),
        };
        let runs: Vec<_> = sessions
            .iter()
            .map(|s| {
                let (ingest, hooks) = (p.ingest.clone(), hooks.clone());
                let job = PartJob {
                    session_id: s.id,
                    part_number: last_part,
                };
                tokio::spawn(async move { ingest.run_part_with_hooks(&job, "race", &hooks).await })
            })
            .collect();
        for run in runs {
            run.await.unwrap().unwrap();
        }
        let ids = [sessions[0].id, sessions[1].id];
        let sessions = [session(&p, ids[0]).await, session(&p, ids[1]).await];
        let states: Vec<(&str, Option<&str>)> = sessions
            .iter()
            .map(|s| (s.state.as_str(), s.error.as_deref()))
            .collect();
        let completed: Vec<usize> = (0..2)
            .filter(|&i| sessions[i].state == "completed")
            .collect();
        let (inode, data) = read_dest(&p, &dest).await.unwrap();
        if !overwrite {
            assert_eq!(completed.len(), 1, "round {round}: {states:?}");
            let loser = &sessions[1 - completed[0]];
            assert_eq!(loser.state, "failed");
            assert!(
                loser.error.as_deref().unwrap_or("").contains("exists"),
                "{:?}",
                loser.error
            );
            assert_eq!(md5_hex(&data), md5s[completed[0]], "round {round}");
            assert_eq!(Some(inode as i64), sessions[completed[0]].final_inode);
        } else {
            assert_eq!(completed.len(), 2, "round {round}: {states:?}");
            let events = queued_events(&p).await;
            let replaced = |id: Uuid| {
                let e = events
                    .iter()
                    .find(|e| e["session_id"] == id.to_string() && e["event"] == "upload.completed")
                    .expect("a completion event");
                e["replaced"] == serde_json::Value::Bool(true)
            };
            let finished_last = sessions.iter().map(|s| s.finished_at).max().unwrap();
            let last = sessions
                .iter()
                .position(|s| s.finished_at == finished_last)
                .unwrap();
            assert_eq!(
                Some(inode as i64),
                sessions[last].final_inode,
                "round {round}"
            );
            assert_eq!(md5_hex(&data), md5s[last], "round {round}");
            assert!(replaced(ids[last]), "round {round}: the later one replaced");
            assert!(!replaced(ids[1 - last]), "round {round}");
        }
    }
}

/// Issue 12 item 3: a single-part completion whose rename happened but whose
/// commit did not (the completion transaction fails, then so does the
/// part's own commit: a crash) is re-run by the part's next attempt (a new
/// staging inode) and completes: the file at the destination is recognised
/// as this session's by its recorded inode, length and CRC-32C.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_part_completion_reruns_after_a_crash_between_rename_and_commit() {
    let p = Pipeline::new("rerun").await;
    let (url, md5) = p.source("one.bin", 200_000, 21);
    let req = p.request("rerun", &url, "rerun/one.bin");
    let (s, _) = p.ingest.submit(&req).await.unwrap();
    let pool = &p.ingest.store.pool;
    // The first commit of the part (with its completion) passes the part
    // trigger and fails at the completion; the fallback commit of the part
    // alone fails too.
    for statement in [
        "CREATE SEQUENCE test_part_commits",
        "CREATE FUNCTION test_crash_part() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF nextval('test_part_commits') > 1 THEN RAISE EXCEPTION 'crash'; END IF;
         RETURN NEW; END $$",
        "CREATE TRIGGER test_crash_part BEFORE UPDATE ON upload_parts FOR EACH ROW
         WHEN (NEW.committed_token IS DISTINCT FROM OLD.committed_token)
         EXECUTE FUNCTION test_crash_part()",
    ] {
        sqlx::query(statement).execute(pool).await.unwrap();
    }
    p.fail_completions(true).await;
    let job = PartJob {
        session_id: s.id,
        part_number: 0,
    };
    let crashed = p.ingest.run_part(&job, "crashing").await;
    assert!(crashed.is_err(), "{crashed:?}");
    let (first_inode, data) = read_dest(&p, "rerun/one.bin")
        .await
        .expect("the first attempt was renamed into place");
    assert_eq!(md5_hex(&data), md5);
    assert_eq!(session(&p, s.id).await.state, "open");
    assert_eq!(
        p.ingest.store.parts(s.id).await.unwrap()[0].committed_token,
        None
    );

    p.fail_completions(false).await;
    sqlx::query("DROP TRIGGER test_crash_part ON upload_parts")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(
        run_parts(&p.ingest, &s).await,
        vec![PartOutcome::Committed { completed: true }]
    );
    let done = session(&p, s.id).await;
    assert_eq!(done.state, "completed", "{:?}", done.error);
    let (inode, data) = read_dest(&p, "rerun/one.bin").await.unwrap();
    assert_eq!(md5_hex(&data), md5);
    assert_eq!(Some(inode as i64), done.final_inode);
    assert_ne!(
        inode, first_inode,
        "the new attempt's file replaced the first"
    );
    collect_all_garbage(&p).await;
    assert!(p.staging_files().await.is_empty());
}

/// Issue 12 item 3: a multi-part completion whose rename happened but whose
/// commit failed is completed by a later run, which recognises its own
/// assembly (recorded inode, length, CRC-32C) and replaces it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assembled_completion_reruns_after_a_failed_commit() {
    let p = Pipeline::new("rerunmulti").await;
    let (url, md5) = p.source("three.bin", 150_000, 22);
    let mut req = p.request("rerun-multi", &url, "rerun/three.bin");
    req.part_size = Some(65536);
    let (s, _) = p.ingest.submit(&req).await.unwrap();
    p.fail_completions(true).await;
    let outcomes = run_parts(&p.ingest, &s).await;
    assert!(outcomes
        .iter()
        .all(|o| *o == PartOutcome::Committed { completed: false }));
    let (placed, _) = read_dest(&p, "rerun/three.bin").await.unwrap();
    p.fail_completions(false).await;
    assert!(matches!(
        p.ingest.complete(s.id).await.unwrap(),
        Completion::Completed { .. }
    ));
    let (inode, data) = read_dest(&p, "rerun/three.bin").await.unwrap();
    assert_eq!(md5_hex(&data), md5);
    assert_ne!(inode, placed);
    collect_all_garbage(&p).await;
    assert!(p.staging_files().await.is_empty());
}

/// Issue 12 item 3: a foreign file at the destination with the same length
/// and CRC-32C (here: the very same bytes) is never adopted without
/// `overwrite`: the session fails with "exists", the file keeps its inode
/// and bytes. For a single part and for an assembly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_foreign_file_with_the_same_length_and_crc_is_never_adopted() {
    let p = Pipeline::new("foreign").await;
    for (name, part_size) in [("single", None), ("assembled", Some(65536))] {
        let dest = format!("foreign/{name}.bin");
        let (url, _) = p.source(&format!("{name}.bin"), 150_000, 23);
        let mut req = p.request(name, &url, &dest);
        req.part_size = part_size;
        let (s, _) = p.ingest.submit(&req).await.unwrap();
        let same_bytes = std::fs::read(url.trim_start_matches("file://")).unwrap();
        put_through_mount(&p, &dest, &same_bytes);
        let (foreign_inode, _) = read_dest(&p, &dest).await.unwrap();
        run_parts(&p.ingest, &s).await;
        let s = session(&p, s.id).await;
        assert_eq!(s.state, "failed", "{name}: a foreign file was adopted");
        assert!(s.error.as_deref().unwrap_or("").contains("exists"));
        let now = read_dest(&p, &dest).await.map(|(i, d)| (i, md5_hex(&d)));
        assert_eq!(now, Some((foreign_inode, md5_hex(&same_bytes))), "{name}");
    }
}

async fn show(store: &Store, name: &str) -> String {
    sqlx::query_scalar::<_, String>(&format!("SHOW {name}"))
        .fetch_one(&store.pool)
        .await
        .unwrap()
}

/// Issue 12 item 4: every pooled connection has a statement timeout and an
/// idle-in-transaction timeout, by default 2 min and the completion
/// deadline (15 min) plus a minute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_have_statement_and_idle_timeouts_by_default() {
    let p = Pipeline::new("timeoutdefault").await;
    let defaults = Store::connect(&p.database_url, 1).await.unwrap();
    assert_eq!(show(&defaults, "statement_timeout").await, "2min");
    assert_eq!(
        show(&defaults, "idle_in_transaction_session_timeout").await,
        "16min"
    );
    defaults.pool.close().await;
}

/// Issue 12 item 4: configured timeouts hold: a statement over its limit is
/// cancelled, a transaction left idle is ended by the server, migrations
/// still run (without the statement timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_timeouts_cancel_statements_and_end_idle_transactions() {
    let p = Pipeline::new("timeouts").await;

    let timeouts = DbTimeouts {
        statement: Duration::from_millis(500),
        idle_in_transaction: Duration::from_millis(1000),
    };
    let store = Store::connect_with(&p.database_url, 2, timeouts)
        .await
        .unwrap();
    let slow = sqlx::query("SELECT pg_sleep(2)").execute(&store.pool).await;
    let e = slow.expect_err("a statement over the timeout is cancelled");
    assert!(e.to_string().contains("statement timeout"), "{e}");
    let mut tx = store.pool.begin().await.unwrap();
    sqlx::query("SELECT 1").execute(&mut *tx).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after_idle = sqlx::query("SELECT 1").execute(&mut *tx).await;
    assert!(after_idle.is_err(), "the idle transaction was ended");
    drop(tx);
    // The migrations run without the statement timeout, and the pool still works.
    store.migrate().await.unwrap();
    assert_eq!(show(&store, "statement_timeout").await, "500ms");
}

/// Issue 12 item 4: the MooseFS work of a completion is bounded by the
/// completion deadline: past it the completion rolls back (session open,
/// row lock released, nothing at the destination) and a later run with
/// time enough completes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_completion_over_its_deadline_rolls_back_and_completes_later() {
    let p = Pipeline::new("deadline").await;
    let (url, md5) = p.source("slow.bin", 600_000, 24);
    let mut req = p.request("deadline", &url, "slow.bin");
    req.part_size = Some(65536);
    req.md5 = Some(md5.clone());
    let (s, _) = p.ingest.submit(&req).await.unwrap();
    let mut cfg = (*p.ingest.cfg).clone();
    cfg.completion_deadline = Duration::from_millis(5);
    let hurried = Ingest {
        cfg: Arc::new(cfg),
        ..p.ingest.clone()
    };
    let outcomes = run_parts(&hurried, &s).await;
    assert_eq!(
        outcomes.last(),
        Some(&PartOutcome::Committed { completed: false })
    );
    let started = std::time::Instant::now();
    match hurried.complete(s.id).await {
        Err(CompletionError::Deadline(d)) => assert_eq!(d, Duration::from_millis(5)),
        other => panic!("expected the deadline, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(session(&p, s.id).await.state, "open");
    assert!(read_dest(&p, "slow.bin").await.is_none());
    // The session row is free again.
    let mut tx = p.ingest.store.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM upload_sessions WHERE id = $1 FOR UPDATE NOWAIT")
        .bind(s.id)
        .execute(&mut *tx)
        .await
        .expect("no lock left behind");
    tx.rollback().await.unwrap();

    assert!(matches!(
        p.ingest.complete(s.id).await.unwrap(),
        Completion::Completed { .. }
    ));
    let (_, data) = read_dest(&p, "slow.bin").await.unwrap();
    assert_eq!(md5_hex(&data), md5);
    collect_all_garbage(&p).await;
    assert!(p.staging_files().await.is_empty());
}

/// Issue 12 item 4: a destination that is a directory is refused when the
/// request is checked (with or without `overwrite`), and a directory that
/// appears there later fails the session at its completion with a clear
/// reason (instead of a rename retried until the session expires); the
/// directory is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_directory_destination_is_refused_up_front_and_fails_the_completion() {
    let p = Pipeline::new("dirdest").await;
    let (url, _) = p.source("d.bin", 100_000, 25);
    std::fs::create_dir_all(p.mount_path("adir/inside")).unwrap();
    for overwrite in [false, true] {
        let mut req = p.request(&format!("dir-{overwrite}"), &url, "adir");
        req.overwrite = overwrite;
        match p.ingest.submit(&req).await {
            Err(e) if e.is_client_error() && e.to_string().contains("is a directory") => {}
            other => panic!("overwrite {overwrite}: expected a refusal, got {other:?}"),
        }
    }

    for (i, part_size) in [None, Some(65536)].into_iter().enumerate() {
        let dest = format!("later{i}");
        let mut req = p.request(&dest, &url, &dest);
        req.overwrite = true;
        req.part_size = part_size;
        let (s, _) = p.ingest.submit(&req).await.unwrap();
        std::fs::create_dir_all(p.mount_path(&format!("{dest}/inside"))).unwrap();
        run_parts(&p.ingest, &s).await;
        let s = session(&p, s.id).await;
        assert_eq!(s.state, "failed", "{dest}");
        assert!(
            s.error.as_deref().unwrap_or("").contains("is a directory"),
            "{:?}",
            s.error
        );
        assert!(p.mount_path(&format!("{dest}/inside")).is_dir());
    }
    collect_all_garbage(&p).await;
    assert!(p.staging_files().await.is_empty());
}
