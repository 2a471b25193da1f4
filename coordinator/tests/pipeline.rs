//! The whole pipeline on the real services (PostgreSQL, RabbitMQ, Redis,
//! MooseFS) with the real `coordinator serve` and `worker run` binaries: a
//! mixed batch through the queue, copy-free assembly of a multi-part file,
//! duplicate deliveries, the stalled-retry race, workers killed mid-part, and
//! malformed queue input dead-lettered with its reason.

use std::sync::Arc;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use moosefs::{MfsPath, CHUNK_SIZE};
use shared::ingest::{AttemptHooks, Completion, PartOutcome};
use shared::queue::{
    EventBatch, Outgoing, PartGroup, PartJob, PartMessage, UploadEvent, EVENTS_EXCHANGE,
    EVENTS_PER_MESSAGE, EVENTS_QUEUE, PARTS_QUEUE, PART_GROUP_MAX_JOBS, REQUESTS_QUEUE,
};
use shared::store::Session;
use testkit::*;

const MIB: usize = 1 << 20;

/// Checks every completed file: md5 through the mount equals the source's,
/// and every replica of every chunk is identical with 3 valid copies.
async fn check_files(p: &Pipeline, files: &[(String, String)]) {
    for (dest, md5) in files {
        assert_eq!(
            &md5_file(&p.mount_path(dest)),
            md5,
            "{dest}: md5 through mfsmount"
        );
        let full = MfsPath::parse(&format!("{}/{dest}", p.mfs_root)).unwrap();
        let (inode, _) = p.ingest.mfs.resolve(&full).await.unwrap();
        for r in p.ingest.mfs.replica_report(inode).await.unwrap() {
            assert!(
                r.copies_identical(),
                "{dest} chunk {}: copies differ",
                r.index
            );
            assert!(
                r.valid_copies() >= 3,
                "{dest} chunk {}: {} valid copies",
                r.index,
                r.valid_copies()
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_mixed_files_through_the_queue_with_two_workers() {
    let p = Pipeline::new("mixed500").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "8")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "8")]);
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..500usize {
        let size = match i % 50 {
            0 => 70 * MIB + 12345, // two parts
            1 => 0,
            2 => 65536,
            3..=9 => 1 + (i * 7919) % (3 * MIB),
            _ => 1 + (i * 104_729) % (256 * 1024),
        };
        let (url, md5) = p.source(&format!("in/{i:03}.bin"), size, i as u64);
        let dest = format!("out/{:02}/{i:03}.bin", i % 7);
        requests.push(p.request(&format!("f{i}"), &url, &dest));
        expected.push((dest, md5));
    }
    p.submit(&requests).await;
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.clone()).collect();
    let sessions = p.wait_finished(&ids, Duration::from_secs(400)).await;
    assert_all_completed(&sessions);
    check_files(&p, &expected).await;
    check_completion_events(&p, &sessions).await;
    p.wait_staging_clean(Duration::from_secs(60)).await;
}

/// Reads the durable `ingest.events` queue: every session's
/// `upload.completed` event arrives (at least once), with the session's
/// checksums, and the events travel many to a message.
async fn check_completion_events(p: &Pipeline, sessions: &[Session]) {
    let conn = shared::queue::connect(&p.amqp_url, "test events")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut seen: std::collections::HashMap<String, UploadEvent> = Default::default();
    let mut messages = 0usize;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < sessions.len() && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(EVENTS_QUEUE, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(msg) => {
                messages += 1;
                let batch = EventBatch::parse(&msg.delivery.data).expect("an events message");
                assert!(!batch.events.is_empty() && batch.events.len() <= EVENTS_PER_MESSAGE);
                for event in batch.events {
                    seen.insert(event.request_id.clone(), event);
                }
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    for s in sessions {
        let event = seen
            .get(&s.request_id)
            .unwrap_or_else(|| panic!("no event for {}", s.request_id));
        assert_eq!(event.event, "upload.completed");
        assert_eq!(event.session_id, s.id);
        assert_eq!(event.size, s.size as u64);
        assert_eq!(event.md5, s.md5, "{}", s.request_id);
        assert_eq!(event.crc32c, s.crc32c.map(|c| c as u32), "{}", s.request_id);
    }
    assert!(
        messages * 4 <= sessions.len(),
        "{} events came in {messages} messages",
        sessions.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_of_300_mib_in_64_mib_parts_is_assembled_without_copying() {
    let p = Pipeline::new("append300").await;
    // GC stays off until the parts' chunks were compared.
    p.spawn_coordinator(&[("INGEST_MAINTENANCE_SECS", "3600")]);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "3")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "3")]);
    let (url, md5) = p.source("big.bin", 300 * MIB + 4321, 9);
    let mut req = p.request("big", &url, "big.bin");
    req.part_size = Some(64 << 20);
    p.submit(std::slice::from_ref(&req)).await;
    let sessions = p
        .wait_finished(&[req.request_id.clone()], Duration::from_secs(300))
        .await;
    let s = &sessions[0];
    assert_eq!(s.state, "completed", "{:?}", s.error);
    assert_eq!(s.part_count, 5);
    assert_eq!(
        s.md5.as_deref(),
        None,
        "multi-part md5 is only computed when requested"
    );

    // The final file's chunks are the parts' chunks: nothing was copied.
    let parts = p.ingest.store.parts(s.id).await.unwrap();
    let final_inode = s.final_inode.unwrap() as u32;
    for part in &parts {
        let (part_chunk, _, _) = p
            .ingest
            .mfs
            .check_chunk(part.staging_inode.unwrap() as u32, 0)
            .await
            .unwrap();
        let index = (part.part_offset as u64 / CHUNK_SIZE) as u32;
        let (final_chunk, _, _) = p.ingest.mfs.check_chunk(final_inode, index).await.unwrap();
        assert_eq!(final_chunk, part_chunk, "chunk {index} was copied");
    }
    let whole_crc = s.crc32c.unwrap() as u32;
    let data = std::fs::read(url.trim_start_matches("file://")).unwrap();
    assert_eq!(
        whole_crc,
        crc32c::crc32c(&data),
        "crc32c combined from the parts"
    );
    check_files(&p, &[("big.bin".to_string(), md5)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_part_job_delivered_two_or_three_times_commits_once() {
    let p = Pipeline::new("dupes").await;
    p.spawn_coordinator(&[]);
    let mut batch = Batch::default();
    for i in 0..12usize {
        let size = if i % 4 == 0 {
            70 * MIB
        } else {
            100_000 + i * 1000
        };
        let (name, dest) = (format!("{i}.bin"), format!("d/{i}.bin"));
        batch
            .add(&p, &format!("d{i}"), &name, &dest, size, 100 + i as u64)
            .part_size = Some(16 << 20);
    }
    let (requests, expected, ids) = (&batch.requests, &batch.expected, batch.ids());
    // Sessions first, workers later: every job is queued, then duplicated.
    p.submit(requests).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sessions = loop {
        let rows: Vec<shared::store::Session> =
            sqlx::query_as("SELECT * FROM upload_sessions WHERE request_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&p.ingest.store.pool)
                .await
                .unwrap();
        if rows.len() == ids.len() {
            break rows;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "sessions not created"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut dupes = Vec::new();
    let mut total_parts = 0;
    for (n, s) in sessions.iter().enumerate() {
        for part in 0..s.part_count {
            total_parts += 1;
            let job = PartJob {
                session_id: s.id,
                part_number: part,
            };
            for _ in 0..(1 + (n + part as usize) % 2) {
                dupes.push(Outgoing::json(PARTS_QUEUE, &job).unwrap());
            }
        }
    }
    // And the small files' jobs once more, as one group (the coordinator
    // already published them grouped once).
    let small: Vec<PartJob> = sessions
        .iter()
        .filter(|s| s.part_count == 1)
        .map(|s| PartJob {
            session_id: s.id,
            part_number: 0,
        })
        .collect();
    assert!(small.len() > 1);
    dupes.push(Outgoing::json(PARTS_QUEUE, &PartGroup { jobs: small }).unwrap());
    p.publisher.publish_all(&dupes).await.unwrap();
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "6")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "6")]);
    let sessions = p.wait_finished(&ids, Duration::from_secs(300)).await;
    assert!(
        sessions.iter().all(|s| s.state == "completed"),
        "{sessions:?}"
    );
    // One committed part per part number; every other copy of a job did no commit.
    let committed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM upload_parts WHERE session_id = ANY($1) AND committed_token IS NOT NULL",
    )
    .bind(sessions.iter().map(|s| s.id).collect::<Vec<_>>())
    .fetch_one(&p.ingest.store.pool)
    .await
    .unwrap();
    assert_eq!(committed, total_parts);
    assert!(
        dupes.len() >= total_parts as usize,
        "every job was duplicated"
    );
    check_files(&p, expected).await;
}

/// DESIGN.md failure 2: an attempt stalls while its retry succeeds and the
/// session completes; the stale attempt then tries to commit. It must be
/// recorded as abandoned, and GC must delete only its inode.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stalled_attempt_that_commits_after_completion_is_abandoned_and_collected() {
    let p = Pipeline::new("stall").await;
    // Parts of 1 MiB: completion takes the copy path, not APPEND_SLICE.
    let (url, md5) = p.source("s.bin", 3 * MIB + 777, 42);
    let mut req = p.request("stall", &url, "stalled.bin");
    req.part_size = Some(MIB as u64);
    let (session, created) = p.ingest.submit(&req).await.unwrap();
    assert!(created);
    assert_eq!(session.part_count, 4);

    let release = Arc::new(tokio::sync::Notify::new());
    let stalled_writing = Arc::new(tokio::sync::Notify::new());
    let hooks = {
        let (release, stalled_writing) = (release.clone(), stalled_writing.clone());
        AttemptHooks {
            before_commit: Some(Arc::new(move || {
                let (release, stalled_writing) = (release.clone(), stalled_writing.clone());
                Box::pin(async move {
                    stalled_writing.notify_one();
                    // The stall (16 s in the incident); the retry overtakes it meanwhile.
                    let _ = tokio::time::timeout(Duration::from_secs(16), release.notified()).await;
                })
            })),
        }
    };
    let stale_job = PartJob {
        session_id: session.id,
        part_number: 1,
    };
    let stale = {
        let ingest = p.ingest.clone();
        tokio::spawn(async move {
            ingest
                .run_part_with_hooks(&stale_job, "stale-worker", &hooks)
                .await
        })
    };
    stalled_writing.notified().await;

    // The retry of part 1 and the other parts succeed; the last commit completes.
    for part in [1, 0, 2, 3] {
        let job = PartJob {
            session_id: session.id,
            part_number: part,
        };
        let out = p.ingest.run_part(&job, "retry-worker").await.unwrap();
        assert!(
            matches!(out, PartOutcome::Committed { .. }),
            "part {part}: {out:?}"
        );
    }
    let done = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(done.state, "completed", "{:?}", done.error);
    let dest = p.mount_path("stalled.bin");
    assert_eq!(md5_file(&dest), md5);

    // Now the stale attempt finishes and tries to commit.
    release.notify_one();
    let outcome = stale.await.unwrap().unwrap();
    assert_eq!(outcome, PartOutcome::Discarded);
    let abandoned = p.ingest.store.abandoned_of(session.id).await.unwrap();
    let stale_path = p
        .ingest
        .cfg
        .staging_file(
            session.goal as u8,
            session.id,
            1,
            shared::domain::FencingToken(1),
        )
        .to_string();
    assert!(
        abandoned.iter().any(|(_, path, _)| *path == stale_path),
        "stale attempt not recorded as abandoned: {abandoned:?}"
    );
    // GC deletes the abandoned inodes (the stale one and the copied parts) and nothing else.
    while p.ingest.collect_garbage(100).await.unwrap() > 0 {}
    assert!(p.ingest.store.pending_abandoned().await.unwrap().is_empty());
    assert!(
        matches!(
            p.ingest
                .mfs
                .resolve(&MfsPath::parse(&stale_path).unwrap())
                .await,
            Err(moosefs::MfsError::NotFound(_))
        ),
        "stale staging file still exists"
    );
    assert_eq!(
        md5_file(&dest),
        md5,
        "the completed file is intact after GC"
    );
    // A repeated completion is a no-op.
    assert_eq!(
        p.ingest.complete(session.id).await.unwrap(),
        Completion::AlreadyFinished
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_killed_mid_part_still_complete_every_file_once() {
    let p = Pipeline::new("sigkill").await;
    p.spawn_coordinator(&[("INGEST_PART_STALE_SECS", "8")]);
    let mut batch = Batch::default();
    for i in 0..24usize {
        let size = 8 * MIB + i * 100_003;
        let (name, dest) = (format!("{i}.bin"), format!("k/{i}.bin"));
        batch
            .add(&p, &format!("k{i}"), &name, &dest, size, 500 + i as u64)
            .part_size = Some(4 << 20);
    }
    let (requests, expected) = (&batch.requests, &batch.expected);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "3")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "3")]);
    p.submit(requests).await;
    for round in 0..4 {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let victim = if round % 2 == 0 { "w1" } else { "w2" };
        p.kill(victim, "KILL");
        p.spawn_worker(victim, &[("WORKER_CONCURRENCY", "3")]);
    }
    let ids = batch.ids();
    let sessions = p.wait_finished(&ids, Duration::from_secs(300)).await;
    assert_eq!(sessions.len(), requests.len(), "one session per request id");
    assert_all_completed(&sessions);
    check_files(&p, expected).await;
    p.wait_staging_clean(Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn malformed_queue_messages_are_dead_lettered_with_the_reason() {
    let p = Pipeline::new("deadletter").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[]);
    let bad_requests: [&[u8]; 3] = [
        b"{not json",
        br#"{"request_id": 7, "source": "file:///x", "dest": "a"}"#,
        br#"{"request_id": "x", "dest": "a"}"#,
    ];
    let mut out: Vec<Outgoing> = bad_requests
        .iter()
        .map(|b| Outgoing {
            exchange: String::new(),
            queue: REQUESTS_QUEUE.into(),
            payload: b.to_vec(),
            headers: vec![],
            expiration: None,
        })
        .collect();
    // A well-formed request that validation refuses (source outside the roots).
    let refused = p.request("refused", "file:///etc/hostname", "refused.bin");
    out.push(Outgoing::json(REQUESTS_QUEUE, &refused).unwrap());
    for garbage in [
        &b"[garbage part job]"[..],
        br#"{"jobs":[]}"#,
        br#"{"jobs":[{"session_id":"00000000-0000-0000-0000-000000000001","part_number":"x"}]}"#,
    ] {
        out.push(Outgoing {
            exchange: String::new(),
            queue: PARTS_QUEUE.into(),
            payload: garbage.to_vec(),
            headers: vec![],
            expiration: None,
        });
    }
    p.publisher.publish_all(&out).await.unwrap();

    let conn = shared::queue::connect(&p.amqp_url, "test dead letters")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut reasons = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while reasons.len() < out.len() && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(shared::queue::DEAD_QUEUE, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(msg) => reasons.push(
                shared::queue::header_str(&msg.delivery.properties, shared::queue::REASON_HEADER)
                    .unwrap_or_default(),
            ),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert_eq!(reasons.len(), out.len(), "dead letters: {reasons:?}");
    assert!(
        reasons
            .iter()
            .filter(|r| r.starts_with("malformed ingest request"))
            .count()
            == 3,
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("outside the allowed source roots")),
        "{reasons:?}"
    );
    assert_eq!(
        reasons
            .iter()
            .filter(|r| r.starts_with("malformed part job"))
            .count(),
        3,
        "{reasons:?}"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM upload_sessions")
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "bad input changed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_sources_are_read_with_range_requests() {
    let p = Pipeline::new("http").await;
    // A plain HTTP server with Range support, serving the test's source directory.
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(&p.src_dir));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await });
    // The test's own loopback origin must be named to be allowed.
    let hosts = ("INGEST_HTTP_SOURCE_HOSTS", "127.0.0.1");
    p.spawn_coordinator(&[hosts]);
    p.spawn_worker("w1", &[hosts, ("WORKER_CONCURRENCY", "4")]);
    let (_, md5) = p.source("remote.bin", 5 * MIB + 333, 77);
    let mut req = p.request(
        "http",
        &format!("http://127.0.0.1:{port}/remote.bin"),
        "from-http.bin",
    );
    req.part_size = Some(MIB as u64);
    p.submit(std::slice::from_ref(&req)).await;
    let sessions = p
        .wait_finished(&[req.request_id.clone()], Duration::from_secs(120))
        .await;
    assert_eq!(sessions[0].state, "completed", "{:?}", sessions[0].error);
    assert_eq!(sessions[0].part_count, 6);
    check_files(&p, &[("from-http.bin".to_string(), md5)]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checksum_mismatches_fail_the_session_and_leave_no_file() {
    let p = Pipeline::new("checksum").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[]);
    let (url, md5) = p.source("c.bin", 300_000, 5);
    let mut wrong_md5 = p.request("md5", &url, "bad-md5.bin");
    wrong_md5.md5 = Some("0".repeat(32));
    let mut wrong_crc = p.request("crc", &url, "bad-crc.bin");
    wrong_crc.crc32c = Some(12345);
    let mut right = p.request("right", &url, "good.bin");
    right.md5 = Some(md5.clone());
    p.submit(&[wrong_md5.clone(), wrong_crc.clone(), right.clone()])
        .await;
    let ids = vec![wrong_md5.request_id, wrong_crc.request_id, right.request_id];
    let sessions = p.wait_finished(&ids, Duration::from_secs(60)).await;
    for s in &sessions {
        if s.dest == "good.bin" {
            assert_eq!(s.state, "completed", "{:?}", s.error);
            assert_eq!(s.md5.as_deref(), Some(md5.as_str()));
        } else {
            assert_eq!(s.state, "failed", "{}", s.dest);
            let error = s.error.clone().unwrap_or_default();
            assert!(error.contains("mismatch"), "{error}");
            assert!(
                !p.mount_path(&s.dest).exists(),
                "{} was left in place",
                s.dest
            );
        }
    }
    p.wait_staging_clean(Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_lets_a_worker_finish_its_parts_and_exit() {
    let p = Pipeline::new("sigterm").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "2")]);
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..6usize {
        let (url, md5) = p.source(&format!("{i}.bin"), 20 * MIB + i, 60 + i as u64);
        requests.push(p.request(&format!("t{i}"), &url, &format!("t/{i}.bin")));
        expected.push((format!("t/{i}.bin"), md5));
    }
    p.submit(&requests).await;
    // Wait until the worker is busy, then ask it to stop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let started: i64 =
            sqlx::query_scalar("SELECT count(*) FROM upload_parts WHERE attempts > 0")
                .fetch_one(&p.ingest.store.pool)
                .await
                .unwrap();
        if started > 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = p.terminate("w1", Duration::from_secs(60));
    assert!(status.success(), "worker exit after SIGTERM: {status:?}");
    // Nothing it took is lost: another worker finishes the batch.
    p.spawn_worker("w2", &[]);
    let ids: Vec<String> = requests.iter().map(|r| r.request_id.clone()).collect();
    let sessions = p.wait_finished(&ids, Duration::from_secs(180)).await;
    assert!(
        sessions.iter().all(|s| s.state == "completed"),
        "{sessions:?}"
    );
    check_files(&p, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_retries_come_back_to_the_work_queue_after_their_own_delay() {
    let p = Pipeline::new("delay").await;
    let job = PartJob {
        session_id: uuid::Uuid::new_v4(),
        part_number: 3,
    };
    let mut retry = Outgoing::json(shared::queue::PARTS_RETRY_QUEUE, &job).unwrap();
    retry.expiration = Some(Duration::from_millis(1500));
    let sent = std::time::Instant::now();
    p.publisher.publish_all(&[retry]).await.unwrap();
    let conn = shared::queue::connect(&p.amqp_url, "test delay")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let back = loop {
        if let Some(msg) = channel
            .basic_get(PARTS_QUEUE, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            break msg;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(20),
            "the retry never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        sent.elapsed() >= Duration::from_millis(1400),
        "came back after {:?}",
        sent.elapsed()
    );
    let got: PartJob = serde_json::from_slice(&back.delivery.data).unwrap();
    assert_eq!(got, job);
}

/// A single-part session commits its part and completes in one transaction.
/// When the completion fails (here: its commit, after the rename), that
/// transaction rolls back but the part is still committed on its own, and a
/// later completion finishes the file (recognising the renamed part).
/// Staging files take the session's goal from their goal directory (no
/// per-file SETGOAL), and so do assembled files.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn single_part_commit_survives_a_failed_completion_and_files_keep_their_goal() {
    let p = Pipeline::new("onetx").await;
    let (url, md5) = p.source("one.bin", 100_000, 7);
    let mut req = p.request("onetx-single", &url, "blocked/one.bin");
    req.goal = Some(2);
    req.overwrite = true;
    let (session, _) = p.ingest.submit(&req).await.unwrap();
    assert_eq!(session.part_count, 1);
    p.fail_completions(true).await;

    let job = PartJob {
        session_id: session.id,
        part_number: 0,
    };
    let out = p.ingest.run_part(&job, "onetx-worker").await.unwrap();
    assert_eq!(out, PartOutcome::Committed { completed: false });
    let open = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(open.state, "open");
    let parts = p.ingest.store.parts(session.id).await.unwrap();
    assert_eq!(
        parts[0].committed_token,
        Some(1),
        "the part stays committed"
    );
    let staging_inode = parts[0].staging_inode.unwrap() as u32;
    assert_eq!(
        parts[0].staging_path.as_deref(),
        Some(
            p.ingest
                .cfg
                .staging_file(2, session.id, 0, shared::domain::FencingToken(1))
                .to_string()
                .as_str()
        )
    );
    assert_eq!(p.ingest.mfs.get_goal(staging_inode).await.unwrap(), 2);

    p.fail_completions(false).await;
    assert_eq!(
        p.ingest.complete(session.id).await.unwrap(),
        Completion::Completed {
            final_inode: staging_inode
        }
    );
    assert_eq!(md5_file(&p.mount_path("blocked/one.bin")), md5);
    let done = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(done.state, "completed");
    assert_eq!(done.md5.as_deref(), Some(md5.as_str()));
    assert!(p
        .ingest
        .store
        .abandoned_of(session.id)
        .await
        .unwrap()
        .is_empty());

    // Three parts of 64 KiB at goal 1: assembled by copying, in the goal-1 directory.
    let (url, md5) = p.source("three.bin", 150_000, 8);
    let mut req = p.request("onetx-multi", &url, "three.bin");
    req.goal = Some(1);
    req.part_size = Some(65536);
    let (session, _) = p.ingest.submit(&req).await.unwrap();
    assert_eq!(session.part_count, 3);
    for part in 0..3 {
        let job = PartJob {
            session_id: session.id,
            part_number: part,
        };
        p.ingest.run_part(&job, "onetx-worker").await.unwrap();
    }
    let done = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(done.state, "completed", "{:?}", done.error);
    assert_eq!(md5_file(&p.mount_path("three.bin")), md5);
    let final_inode = done.final_inode.unwrap() as u32;
    assert_eq!(p.ingest.mfs.get_goal(final_inode).await.unwrap(), 1);
    while p.ingest.collect_garbage(100).await.unwrap() > 0 {}
    assert!(
        p.staging_files().await.is_empty(),
        "{:?}",
        p.staging_files().await
    );
}

/// The transaction id that last wrote each row (`xmin`): the session row and
/// each part row, in part order.
async fn writers(p: &Pipeline, session: uuid::Uuid) -> (String, Vec<String>) {
    let pool = &p.ingest.store.pool;
    let s: String = sqlx::query_scalar("SELECT xmin::text FROM upload_sessions WHERE id = $1")
        .bind(session)
        .fetch_one(pool)
        .await
        .unwrap();
    let parts: Vec<String> = sqlx::query_scalar(
        "SELECT xmin::text FROM upload_parts WHERE session_id = $1 ORDER BY part_number",
    )
    .bind(session)
    .fetch_all(pool)
    .await
    .unwrap();
    (s, parts)
}

/// Runs one attempt of a part in this process.
async fn run_one_part(p: &Pipeline, session_id: uuid::Uuid, part_number: i32) -> PartOutcome {
    let job = PartJob {
        session_id,
        part_number,
    };
    p.ingest.run_part(&job, "test-worker").await.unwrap()
}

/// The last part of a multi-part file is committed and the file completed
/// in ONE transaction (one commit between the last part and the finished
/// file): the session row and that part row carry the same `xmin`. When
/// that completion fails (its commit, after the rename), the part is
/// committed alone and a later completion finishes the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn last_part_commit_completes_its_file_in_the_same_transaction() {
    let p = Pipeline::new("lastpart").await;
    let run = |session_id, part_number| run_one_part(&p, session_id, part_number);

    let (url, md5) = p.source("three.bin", 150_000, 11);
    let mut req = p.request("lastpart-ok", &url, "three.bin");
    req.part_size = Some(65536);
    let (session, _) = p.ingest.submit(&req).await.unwrap();
    assert_eq!(session.part_count, 3);
    // Out of order: the last part to commit is part 1.
    for part in [2, 0] {
        assert_eq!(
            run(session.id, part).await,
            PartOutcome::Committed { completed: false }
        );
    }
    assert_eq!(
        run(session.id, 1).await,
        PartOutcome::Committed { completed: true }
    );
    let done = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(done.state, "completed", "{:?}", done.error);
    assert_eq!(md5_file(&p.mount_path("three.bin")), md5);
    let (session_writer, part_writers) = writers(&p, session.id).await;
    assert_eq!(
        session_writer, part_writers[1],
        "the last part and the completion are one transaction"
    );
    assert_ne!(part_writers[0], part_writers[1]);
    assert_ne!(part_writers[2], part_writers[1]);

    // The completion cannot commit: the last part is committed on its own.
    let (url, md5) = p.source("blocked.bin", 150_000, 12);
    let mut req = p.request("lastpart-blocked", &url, "blocked/two.bin");
    req.part_size = Some(65536);
    req.overwrite = true;
    let (session, _) = p.ingest.submit(&req).await.unwrap();
    p.fail_completions(true).await;
    // Every part commits, the last one (2) included, and nothing completes.
    for part in 0..3 {
        assert_eq!(
            run(session.id, part).await,
            PartOutcome::Committed { completed: false }
        );
    }
    let open = p.ingest.store.session(session.id).await.unwrap().unwrap();
    assert_eq!(open.state, "open");
    let parts = p.ingest.store.parts(session.id).await.unwrap();
    assert!(
        parts.iter().all(|part| part.committed_token == Some(1)),
        "{parts:?}"
    );
    p.fail_completions(false).await;
    assert!(matches!(
        p.ingest.complete(session.id).await.unwrap(),
        Completion::Completed { .. }
    ));
    assert_eq!(md5_file(&p.mount_path("blocked/two.bin")), md5);
    while p.ingest.collect_garbage(100).await.unwrap() > 0 {}
    assert!(
        p.staging_files().await.is_empty(),
        "{:?}",
        p.staging_files().await
    );
}

/// A batch message's requests are answered one by one but created together:
/// a request id seen before, the same new request id twice, a refused item,
/// an existing destination and a conflicting reuse of a request id, in one
/// batch. Only the two new sessions (and their part rows) appear.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_batch_creates_its_sessions_together_and_answers_each_item() {
    use shared::ingest::RequestError;
    let p = Pipeline::new("batch").await;
    let (a, _) = p.source("a.bin", 1000, 1);
    let (b, _) = p.source("b.bin", 200_000, 2);
    let earlier = p.request("b-earlier", &a, "b/earlier.bin");
    let (first, created) = p.ingest.submit(&earlier).await.unwrap();
    assert!(created);
    std::fs::create_dir_all(p.mount_path("b")).unwrap();
    std::fs::write(p.mount_path("b/taken.bin"), b"x").unwrap();

    let mut twice = p.request("b-twice", &b, "b/twice.bin");
    twice.part_size = Some(65536);
    let new_one = p.request("b-new", &a, "b/new.bin");
    let mut bad_goal = p.request("b-bad-goal", &a, "b/bad.bin");
    bad_goal.goal = Some(12);
    let taken = p.request("b-taken", &a, "b/taken.bin");
    let mut reused = earlier.clone();
    reused.dest = "b/elsewhere.bin".into();
    let batch = vec![
        earlier.clone(),
        twice.clone(),
        new_one,
        twice,
        bad_goal,
        taken,
        reused,
    ];
    let results = p.ingest.submit_batch(&batch).await;
    assert_eq!(results.len(), batch.len());
    let ok = |i: usize| results[i].as_ref().map_err(|e| e.to_string()).unwrap();
    assert_eq!(ok(0).0.id, first.id);
    assert!(!ok(0).1, "a request seen before is not created again");
    assert!(ok(1).1);
    assert_eq!(ok(1).0.part_count, 4);
    assert!(ok(2).1);
    assert_eq!(
        ok(3).0.id,
        ok(1).0.id,
        "the same request twice is one session"
    );
    assert!(!ok(3).1);
    assert!(
        matches!(results[4], Err(RequestError::BadGoal)),
        "{:?}",
        results[4]
    );
    assert!(
        matches!(results[5], Err(RequestError::DestExists(_))),
        "{:?}",
        results[5]
    );
    assert!(
        matches!(results[6], Err(RequestError::Conflict(id)) if id == first.id),
        "{:?}",
        results[6]
    );
    for (i, parts) in [(1, 4), (2, 1)] {
        let session = &ok(i).0;
        let rows = p.ingest.store.parts(session.id).await.unwrap();
        assert_eq!(rows.len(), parts, "part rows of item {i}");
    }
    for id in ["b-bad-goal", "b-taken"] {
        let rid = format!("{}/{id}", p.tag);
        assert!(
            p.ingest
                .store
                .session_by_request(&rid)
                .await
                .unwrap()
                .is_none(),
            "{id} changed nothing"
        );
    }
}

/// Small single-part files are queued in groups; a group's files are
/// written side by side and committed in ONE transaction, yet each file
/// ends on its own: a source that changed fails only its session, a
/// destination taken by a directory fails only its session, the rest
/// complete with the right bytes; a second delivery of the group finds
/// nothing to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_group_of_small_files_commits_together_and_each_ends_on_its_own() {
    let p = Pipeline::new("group").await;
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..20usize {
        let (url, md5) = p.source(&format!("g{i}.bin"), 1 + i * 9_973, 500 + i as u64);
        requests.push(p.request(&format!("g{i}"), &url, &format!("g/{i}.bin")));
        expected.push((format!("g/{i}.bin"), md5));
    }
    let (changing, _) = p.source("changing.bin", 5000, 1);
    requests.push(p.request("g-changing", &changing, "g/changing.bin"));
    let (blocked, _) = p.source("blocked.bin", 5000, 2);
    requests.push(p.request("g-blocked", &blocked, "g/blocked.bin"));
    // A 70 MiB file has two parts: never grouped.
    let (big, big_md5) = p.source("big.bin", 70 * MIB, 3);
    requests.push(p.request("g-big", &big, "g/big.bin"));
    let sessions: Vec<shared::store::Session> = p
        .ingest
        .submit_batch(&requests)
        .await
        .into_iter()
        .map(|r| r.map_err(|e| e.to_string()).unwrap().0)
        .collect();

    // No coordinator runs: the part messages wait in the outbox.
    let payloads: Vec<serde_json::Value> =
        sqlx::query_scalar("SELECT payload FROM outbox WHERE routing_key = $1 ORDER BY id")
            .bind(PARTS_QUEUE)
            .fetch_all(&p.ingest.store.pool)
            .await
            .unwrap();
    let messages: Vec<PartMessage> = payloads
        .iter()
        .map(|v| PartMessage::parse(&serde_json::to_vec(v).unwrap()).unwrap())
        .collect();
    let groups: Vec<&PartMessage> = messages
        .iter()
        .filter(|m| matches!(m, PartMessage::Group(_)))
        .collect();
    let sizes: Vec<usize> = groups.iter().map(|g| g.jobs().len()).collect();
    assert_eq!(sizes, vec![PART_GROUP_MAX_JOBS, 22 - PART_GROUP_MAX_JOBS]);
    assert_eq!(
        messages.len(),
        2 + 2,
        "the big file's two parts travel alone"
    );

    // Now break two of them, then run the groups.
    std::fs::write(p.src_dir.join("changing.bin"), b"shorter").unwrap();
    std::fs::create_dir_all(p.mount_path("g/blocked.bin")).unwrap();
    let mut outcomes = std::collections::HashMap::new();
    for group in &groups {
        let results = p.ingest.run_parts_together(group.jobs(), "w-group").await;
        assert_eq!(results.len(), group.jobs().len());
        for (job, result) in group.jobs().iter().zip(results) {
            outcomes.insert(job.session_id, result);
        }
    }
    let by_request = |id: &str| {
        let rid = format!("{}/{id}", p.tag);
        sessions.iter().find(|s| s.request_id == rid).unwrap().id
    };
    for i in 0..20 {
        let outcome = &outcomes[&by_request(&format!("g{i}"))];
        assert!(
            matches!(outcome, Ok(PartOutcome::Committed { completed: true })),
            "g{i}: {outcome:?}"
        );
    }
    assert!(
        matches!(&outcomes[&by_request("g-changing")],
            Err(shared::ingest::PartError::SessionFailed(why)) if why.contains("changed size")),
        "{:?}",
        outcomes[&by_request("g-changing")]
    );
    assert!(
        matches!(
            &outcomes[&by_request("g-blocked")],
            Ok(PartOutcome::Committed { completed: false })
        ),
        "{:?}",
        outcomes[&by_request("g-blocked")]
    );
    let store = &p.ingest.store;
    let changing = store
        .session(by_request("g-changing"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changing.state, "failed");
    let blocked = store
        .session(by_request("g-blocked"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(blocked.state, "failed");
    assert!(
        blocked
            .error
            .as_deref()
            .unwrap_or("")
            .contains("is a directory"),
        "{blocked:?}"
    );

    // The same group delivered again: nothing left to do, nothing changes.
    for group in &groups {
        for result in p.ingest.run_parts_together(group.jobs(), "w-again").await {
            assert!(matches!(result, Ok(PartOutcome::AlreadyDone)), "{result:?}");
        }
    }
    // The big file's parts, the usual way.
    for message in &messages {
        if let PartMessage::Single(job) = message {
            p.ingest.run_part(job, "w-single").await.unwrap();
        }
    }
    expected.push(("g/big.bin".into(), big_md5));
    check_files(&p, &expected).await;
    for (dest, _) in &expected {
        let id = sessions
            .iter()
            .find(|s| &s.dest == dest || s.dest.ends_with(&format!("/{dest}")))
            .unwrap()
            .id;
        let session = store.session(id).await.unwrap().unwrap();
        assert_eq!(session.state, "completed", "{dest}");
    }
    // One event per ended session waits in the outbox (a group's
    // completions share one row).
    let events: i64 = sqlx::query_scalar(
        "SELECT sum(jsonb_array_length(payload->'events'))::bigint FROM outbox
          WHERE exchange = $1",
    )
    .bind(EVENTS_EXCHANGE)
    .fetch_one(&p.ingest.store.pool)
    .await
    .unwrap();
    assert_eq!(events, 23);
    // The failed sessions' staging files are garbage; GC leaves nothing.
    p.ingest.collect_garbage(100).await.unwrap();
    assert!(
        p.staging_files().await.is_empty(),
        "{:?}",
        p.staging_files().await
    );
}

/// After statistics were gathered while every upload was finished, a burst of
/// new uploads must not make starting a group's attempts walk the partial
/// indexes of pending parts and open sessions (once per job): the plan goes
/// through the primary keys, and the statement still starts exactly the
/// uncommitted parts of open sessions. The same for the backlog gauges'
/// query (once per pending part), with the right counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starting_a_group_uses_the_primary_keys_after_a_burst_of_new_uploads() {
    let p = Pipeline::new("plan").await;
    let pool = &p.ingest.store.pool;
    let sessions = |prefix: &str, n: i32, state: &str| {
        format!(
            "WITH s AS (
                 INSERT INTO upload_sessions (id, request_id, source, dest, size, part_size,
                                              part_count, goal, state)
                 SELECT gen_random_uuid(), '{prefix}-' || g, 'file:///x/' || g, '{prefix}/' || g,
                        65536, 67108864, 1, 3, '{state}'
                   FROM generate_series(1, {n}) g
                 RETURNING id)
             INSERT INTO upload_parts (session_id, part_number, part_offset, size, committed_token)
             SELECT id, 0, 0, 65536, {token} FROM s",
            token = if state == "open" { "NULL" } else { "1" }
        )
    };
    sqlx::query(&sessions("done", 20_000, "completed"))
        .execute(pool)
        .await
        .unwrap();
    sqlx::query("ANALYZE upload_sessions, upload_parts")
        .execute(pool)
        .await
        .unwrap();
    sqlx::query(&sessions("new", 5_000, "open"))
        .execute(pool)
        .await
        .unwrap();

    let jobs: Vec<PartJob> = sqlx::query_as::<_, (uuid::Uuid,)>(
        "SELECT session_id FROM upload_parts WHERE committed_token IS NULL
          ORDER BY session_id LIMIT 16",
    )
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .map(|(session_id,)| PartJob {
        session_id,
        part_number: 0,
    })
    .collect();
    let ids: Vec<uuid::Uuid> = jobs.iter().map(|j| j.session_id).collect();
    let numbers = vec![0i32; jobs.len()];

    let mut tx = pool.begin().await.unwrap();
    let plan: Vec<(String,)> =
        sqlx::query_as(&format!("EXPLAIN {}", shared::store::START_ATTEMPTS_SQL))
            .bind(&ids)
            .bind(&numbers)
            .bind("plan-test")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    let plan: String = plan.into_iter().map(|(l,)| l + "\n").collect();
    assert!(
        plan.contains("upload_parts_pkey") && plan.contains("upload_sessions_pkey"),
        "{plan}"
    );
    assert!(
        !plan.contains("upload_parts_pending") && !plan.contains("upload_sessions_open"),
        "{plan}"
    );

    let started = p
        .ingest
        .store
        .start_attempts(&jobs, "plan-test")
        .await
        .unwrap();
    assert!(started
        .iter()
        .all(|s| s.as_ref().map(|s| s.token) == Some(shared::domain::FencingToken(1))));
    // A finished upload's part is not started again.
    let finished: (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM upload_sessions WHERE state = 'completed' LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    let again = p
        .ingest
        .store
        .start_attempts(
            &[PartJob {
                session_id: finished.0,
                part_number: 0,
            }],
            "plan-test",
        )
        .await
        .unwrap();
    assert!(again[0].is_none());

    // The backlog gauges: each pending part's session through the primary
    // key, never a walk of the open sessions per pending part.
    let plan: Vec<(String,)> = sqlx::query_as(&format!(
        "EXPLAIN (ANALYZE, FORMAT TEXT) {}",
        shared::store::BACKLOG_SQL
    ))
    .fetch_all(pool)
    .await
    .unwrap();
    let plan: String = plan.into_iter().map(|(l,)| l + "\n").collect();
    assert!(plan.contains("upload_sessions_pkey"), "{plan}");
    assert!(!plan.contains("Rows Removed by Join Filter"), "{plan}");
    let backlog = p.ingest.store.backlog().await.unwrap();
    assert_eq!(backlog.pending_parts, 5_000);
    assert_eq!(backlog.open_sessions, 5_000);

    // The reconciler re-publishes stale pending parts, 1,000 per round.
    sqlx::query(
        "UPDATE upload_parts SET published_at = now() - interval '1 hour'
          WHERE committed_token IS NULL",
    )
    .execute(pool)
    .await
    .unwrap();
    let republished = p
        .ingest
        .store
        .republish_stale_parts(Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(republished, 1_000);
}

/// Dead letters of a pipeline's vhost: (reason, source queue, body), as
/// many as arrive within `limit`, up to `want`.
async fn dead_letters(
    p: &Pipeline,
    want: usize,
    limit: Duration,
) -> Vec<(String, String, Vec<u8>)> {
    let conn = shared::queue::connect(&p.amqp_url, "test dead letters")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + limit;
    while got.len() < want && tokio::time::Instant::now() < deadline {
        match channel
            .basic_get(shared::queue::DEAD_QUEUE, BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(msg) => {
                let props = &msg.delivery.properties;
                got.push((
                    shared::queue::header_str(props, shared::queue::REASON_HEADER)
                        .unwrap_or_default(),
                    shared::queue::header_str(props, "x-source-queue").unwrap_or_default(),
                    msg.delivery.data.clone(),
                ))
            }
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    got
}

/// Requests that fail on every delivery (their source's server is down),
/// that overflow a field, or that come in a batch over the cap are
/// dead-lettered with the reason instead of being requeued forever, and
/// create nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_request_messages_are_dead_lettered_after_bounded_deliveries() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let p = Pipeline::new("poison").await;
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    let origin = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            (axum::http::StatusCode::SERVICE_UNAVAILABLE, "down")
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, origin).await });
    p.spawn_coordinator(&[
        ("INGEST_REQUEST_MAX_DELIVERIES", "3"),
        ("INGEST_HTTP_SOURCE_HOSTS", "127.0.0.1"),
    ]);
    let (url, _) = p.source("ok.bin", 1000, 1);
    let down = p.request(
        "down",
        &format!("http://127.0.0.1:{port}/down.bin"),
        "down.bin",
    );
    let mut overflow = p.request("overflow", &url, "overflow.bin");
    overflow.part_size = Some(1 << 63);
    let oversize = shared::queue::IngestBatch {
        items: (0..1001)
            .map(|i| p.request(&format!("big-{i}"), &url, &format!("big/{i}.bin")))
            .collect(),
    };
    let oversize_body = serde_json::to_vec(&oversize).unwrap();
    p.publisher
        .publish_all(&[
            Outgoing::json(REQUESTS_QUEUE, &down).unwrap(),
            Outgoing::json(REQUESTS_QUEUE, &overflow).unwrap(),
            Outgoing::json(REQUESTS_QUEUE, &oversize).unwrap(),
        ])
        .await
        .unwrap();

    let dead = dead_letters(&p, 3, Duration::from_secs(90)).await;
    let reasons: Vec<&str> = dead.iter().map(|(r, _, _)| r.as_str()).collect();
    assert_eq!(dead.len(), 3, "dead letters: {reasons:?}");
    assert!(
        dead.iter().all(|(_, q, _)| q == REQUESTS_QUEUE),
        "{reasons:?}"
    );
    let find = |needle: &str| {
        dead.iter()
            .find(|(r, _, _)| r.contains(needle))
            .unwrap_or_else(|| panic!("no dead letter says {needle:?}: {reasons:?}"))
    };
    let (reason, _, _) = find("503");
    assert!(reason.contains("3 deliveries"), "{reason}");
    find("part_size");
    let (reason, _, body) = find("1001 items");
    assert!(reason.contains("1000"), "{reason}");
    assert_eq!(
        body, &oversize_body,
        "the oversize batch is dead-lettered whole"
    );
    let hits = hits.load(Ordering::SeqCst);
    assert!(
        (1..=6).contains(&hits),
        "the down source was asked {hits} times"
    );
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM upload_sessions")
        .fetch_one(&p.ingest.store.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "refused messages created nothing");
}

/// Unacknowledged messages of a queue in the pipeline's vhost.
fn unacked(p: &Pipeline, queue: &str) -> Option<u64> {
    let vhost = p.amqp_url.rsplit('/').next().unwrap().to_string();
    let out = std::process::Command::new("rabbitmqctl")
        .args([
            "-q",
            "list_queues",
            "-p",
            &vhost,
            "name",
            "messages_unacknowledged",
        ])
        .output()
        .expect("rabbitmqctl");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| {
            let mut cols = line.split_whitespace();
            (cols.next() == Some(queue)).then(|| cols.next()?.parse().ok())?
        })
}

/// Part messages whose `x-attempt` header is negative, huge or of the wrong
/// type are handled at once (clamped): the worker's only thread never spins
/// through billions of backoff steps, nothing panics, and a normal part
/// published after them completes promptly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hostile_attempt_headers_never_stall_a_worker() {
    use lapin::types::{AMQPValue, LongString};
    let p = Pipeline::new("attempt").await;
    let (held_url, _) = p.source("held.bin", 1000, 3);
    let (probe_url, probe_md5) = p.source("probe.bin", 2000, 4);
    let (held, _) = p
        .ingest
        .submit(&p.request("held", &held_url, "held.bin"))
        .await
        .unwrap();
    let (probe, _) = p
        .ingest
        .submit(&p.request("probe", &probe_url, "probe.bin"))
        .await
        .unwrap();
    // Someone else holds the held part's lease: each delivery of it takes
    // the "retry later" path, which computes the next attempt and its delay.
    let redis =
        shared::idempotency::Idempotency::new(&env_or("REDIS_URL", "redis://127.0.0.1:6379/"));
    let (done_key, lease_key) = (
        shared::idempotency::part_done_key(held.id, 0),
        shared::idempotency::part_lease_key(held.id, 0),
    );
    let claim = redis
        .claim_parts(
            &[(done_key.as_str(), lease_key.as_str())],
            "someone-else",
            Duration::from_secs(300),
        )
        .await;
    assert_eq!(
        claim[0],
        shared::idempotency::PartClaim::Lease(shared::idempotency::Lease::Acquired)
    );
    p.spawn_worker(
        "w1",
        &[("WORKER_THREADS", "1"), ("WORKER_MAX_ATTEMPTS", "3")],
    );
    let job = |session_id| {
        serde_json::to_vec(&PartJob {
            session_id,
            part_number: 0,
        })
        .unwrap()
    };
    let hostile = [
        AMQPValue::LongLongInt(-1),
        AMQPValue::LongLongInt(-2),
        AMQPValue::LongLongInt(i64::MIN),
        AMQPValue::LongLongInt(i64::MAX),
        AMQPValue::LongInt(-5),
        AMQPValue::LongUInt(u32::MAX),
        AMQPValue::LongString(LongString::from("-3")),
        AMQPValue::Double(-1e300),
    ];
    let mut out: Vec<Outgoing> = hostile
        .iter()
        .map(|v| Outgoing {
            exchange: String::new(),
            queue: PARTS_QUEUE.into(),
            payload: job(held.id),
            headers: vec![(shared::queue::ATTEMPT_HEADER.into(), v.clone())],
            expiration: None,
        })
        .collect();
    out.push(Outgoing {
        exchange: String::new(),
        queue: PARTS_QUEUE.into(),
        payload: job(probe.id),
        headers: vec![(
            shared::queue::ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(-7),
        )],
        expiration: None,
    });
    let sent = std::time::Instant::now();
    p.publisher.publish_all(&out).await.unwrap();
    let sessions = p
        .wait_finished(
            std::slice::from_ref(&probe.request_id),
            Duration::from_secs(30),
        )
        .await;
    assert_eq!(sessions[0].state, "completed", "{:?}", sessions[0].error);
    check_files(&p, &[("probe.bin".to_string(), probe_md5)]).await;
    // Every hostile delivery was settled (acked after its retry was
    // published): none is stuck unacknowledged in a dead handler.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while unacked(&p, PARTS_QUEUE) != Some(0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "hostile deliveries stay unacknowledged: {:?}",
            unacked(&p, PARTS_QUEUE)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        sent.elapsed() < Duration::from_secs(40),
        "took {:?}",
        sent.elapsed()
    );
    // What went back to the retry queue carries a clamped attempt.
    let conn = shared::queue::connect(&p.amqp_url, "test retries")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    while let Some(msg) = channel
        .basic_get(
            shared::queue::PARTS_RETRY_QUEUE,
            BasicGetOptions { no_ack: true },
        )
        .await
        .unwrap()
    {
        let attempt =
            shared::queue::header_i64(&msg.delivery.properties, shared::queue::ATTEMPT_HEADER);
        assert!(
            matches!(attempt, Some(1..=12)),
            "retry with x-attempt {attempt:?}"
        );
    }
    redis
        .finish_parts(
            &[(done_key.as_str(), lease_key.as_str(), false)],
            "someone-else",
        )
        .await;
}
