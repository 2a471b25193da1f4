//! A GET holds what it reads until its body ends, on the real stack: the
//! object's file stays open in the endpoint's MooseFS master session (an
//! overwrite and a delete by another endpoint instance — another master
//! session — leave its bytes readable, and the master frees them once the
//! GET is over), and the request's concurrency slot is held by the body,
//! released at its end or when a client that stopped reading is cut off.
//!
//! The client is raw HTTP/1.1 over a TCP socket with a small receive buffer
//! (SigV4-signed headers, `UNSIGNED-PAYLOAD`), so the test decides exactly
//! when bytes are read and when reading stops.
//!
//! Needs `scripts/stack up` (MFS_MASTER, DATABASE_URL).

use std::time::{Duration, Instant};

use moosefs::MfsError;
use s3::server::ServerLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod common;

use common::raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_reads_the_old_object_to_the_end_through_an_overwrite_and_a_delete_by_another_instance(
) {
    let (private, signer, bucket) = set_up("held").await;
    let a = Instance::start(&private, ServerLimits::default()).await;
    let b = Instance::start(&private, ServerLimits::default()).await;
    assert_ne!(
        a.pipeline.master_session_id(),
        b.pipeline.master_session_id(),
        "two master sessions"
    );
    create_bucket(&signer, a.addr, &bucket).await;
    let path = format!("/{bucket}/big");
    // Over one 64 MiB chunk: two chunks.
    let old = random_bytes(70 * MIB + 12345);
    let old_md5 = md5_hex(&old);
    put(&signer, a.addr, &path, &old).await;
    let old_inode = object_inode(&a.pipeline, &bucket, "big").await.unwrap();

    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    assert_eq!(get.length, Some(old.len()));
    get.read(MIB).await.unwrap();
    let session = a.pipeline.master_session_id();
    assert!(
        holds(&private, session, old_inode).await,
        "the GET holds inode {old_inode} open in session {session}"
    );

    // Overwritten through the other instance: the key names a new inode,
    // the old one is unlinked but sustained (its bytes still counted).
    let new = random_bytes(3 * MIB);
    put(&signer, b.addr, &path, &new).await;
    let new_inode = object_inode(&a.pipeline, &bucket, "big").await.unwrap();
    assert_ne!(new_inode, old_inode);
    let detached = private.mfs.getattr_detached(old_inode).await.unwrap();
    assert_eq!(detached.length, old.len() as u64);
    let sustained = private.mfs.statfs().await.unwrap().sustained_bytes;
    assert!(sustained >= old.len() as u64, "sustained {sustained} bytes");
    // A GET started now answers the new object.
    let (status, body) = call(&signer, "GET", a.addr, &path, None).await;
    assert_eq!((status, md5_hex(&body)), (200, md5_hex(&new)));
    // Deleted through the other instance.
    let (status, _) = call(&signer, "DELETE", b.addr, &path, None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&signer, "HEAD", a.addr, &path, None).await;
    assert_eq!(status, 404);

    // The first GET, read slowly, answers the old object, whole.
    let started = Instant::now();
    while get.body.len() < old.len() {
        if get.read(8 * MIB).await.unwrap() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    println!(
        "old object read in {:?} after its overwrite and delete",
        started.elapsed()
    );
    assert_eq!(get.body.len(), old.len(), "the GET was cut short");
    assert_eq!(
        md5_hex(&get.body),
        old_md5,
        "the GET's bytes are not the old object"
    );
    drop(get);

    // Its body over, the session releases the inode, and the master frees
    // it (the sustained bucket sweep: one of 256 buckets a second).
    let released = eventually(Duration::from_secs(10), "the inode released", || {
        let private = &private;
        async move { !holds(private, session, old_inode).await }
    })
    .await;
    println!("inode {old_inode} released by the session {released:?} after the body ended");
    let freed = eventually(Duration::from_secs(300), "the old inode freed", || {
        let mfs = &private.mfs;
        async move {
            matches!(
                mfs.getattr_detached(old_inode).await,
                Err(MfsError::NotFound(_))
            )
        }
    })
    .await;
    println!("inode {old_inode} freed by the master {freed:?} after its release");
    // A GET that finds the row's inode gone reads the row again: here the
    // inode is gone for good, and opening it finds nothing.
    assert!(a
        .pipeline
        .open_object(old_inode.into(), old.len() as i64)
        .await
        .unwrap()
        .is_none());

    a.stop().await;
    b.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_get_holds_its_slot_until_its_body_ends() {
    let (private, signer, bucket) = set_up("slot").await;
    let setup = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, setup.addr, &bucket).await;
    let path = format!("/{bucket}/obj");
    let data = random_bytes(24 * MIB);
    put(&signer, setup.addr, &path, &data).await;
    setup.stop().await;

    let one = ServerLimits {
        concurrency: 1,
        ..ServerLimits::default()
    };
    let a = Instance::start(&private, one).await;
    let refused_before = limited("concurrency");
    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    get.read(MIB).await.unwrap();
    // The GET's head was answered long ago; its body holds the only slot.
    for _ in 0..3 {
        let (status, body) = call(&signer, "GET", a.addr, &path, None).await;
        assert_eq!(status, 503, "{}", String::from_utf8_lossy(&body));
        assert!(String::from_utf8_lossy(&body).contains("SlowDown"));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(limited("concurrency") >= refused_before + 3.0);
    let body = get.read_to_end().await;
    assert_eq!(md5_hex(&body), md5_hex(&data));
    // The body over, the slot is free again.
    let waited = eventually(Duration::from_secs(5), "the slot released", || async {
        call(&signer, "HEAD", a.addr, &path, None).await.0 == 200
    })
    .await;
    println!("slot free {waited:?} after the body was read");

    a.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_cut_off_and_frees_its_slot_and_inode() {
    let (private, signer, bucket) = set_up("stall").await;
    let setup = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, setup.addr, &bucket).await;
    let path = format!("/{bucket}/obj");
    let data = random_bytes(24 * MIB);
    put(&signer, setup.addr, &path, &data).await;
    let inode = object_inode(&setup.pipeline, &bucket, "obj").await.unwrap();
    setup.stop().await;

    let idle = Duration::from_secs(3);
    let limits = ServerLimits {
        concurrency: 1,
        send_idle_timeout: idle,
        ..ServerLimits::default()
    };
    let a = Instance::start(&private, limits).await;
    let session = a.pipeline.master_session_id();
    let stalled_before = limited("stalled");
    let mut get = send(&signer, "GET", a.addr, &path, None).await;
    assert_eq!(get.status, 200);
    get.read(MIB).await.unwrap();
    let stopped = Instant::now();
    // The client reads nothing more: slot and inode stay held until the cut.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (status, _) = call(&signer, "HEAD", a.addr, &path, None).await;
    assert_eq!(status, 503, "the stalled GET holds the slot");
    assert!(holds(&private, session, inode).await);
    let freed = eventually(idle * 4, "the slot freed", || async {
        call(&signer, "HEAD", a.addr, &path, None).await.0 == 200
    })
    .await;
    let cut_after = stopped.elapsed();
    println!("stalled GET cut, slot free {cut_after:?} after the client stopped reading");
    assert!(
        cut_after >= idle,
        "cut after {cut_after:?}, before the idle timeout {idle:?} ({freed:?} polling)"
    );
    assert!(limited("stalled") > stalled_before);
    eventually(Duration::from_secs(5), "the inode released", || {
        let private = &private;
        async move { !holds(private, session, inode).await }
    })
    .await;
    // The client finds its response cut short.
    let got = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match get.read(8 * MIB).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        get.body.len()
    })
    .await
    .expect("the connection was closed");
    assert!(got < data.len(), "the whole body arrived ({got} bytes)");

    a.stop().await;
    private.clean_up().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_before_the_body_of_an_expect_100_continue_request_closes_the_connection() {
    // botocore sends PutObject and UploadPart with `Expect: 100-continue`
    // and sends the body anyway when no answer came within a second. An
    // error answered before the body (here: a bucket the key may not use)
    // must close the connection, or those bytes are read as the next
    // request and the client's next call gets a bare `400 Bad Request`.
    let (private, signer, bucket) = set_up("expect").await;
    let a = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, a.addr, &bucket).await;
    let body = b"the body the server never asked for";
    let (head, _) = signer.signed_head(
        "PUT",
        a.addr,
        &format!("/{bucket}-not-allowed/k"),
        "UNSIGNED-PAYLOAD",
        &[("Expect", "100-continue".to_string())],
        Some(body.len()),
    );
    let mut stream = connect(a.addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let answer = read_head(stream).await;
    let response_head = answer.head.to_lowercase();
    assert!(response_head.starts_with("http/1.1 403"), "{response_head}");
    assert!(
        response_head.contains("\r\nconnection: close\r\n"),
        "{response_head}"
    );
    let (mut stream, mut rest) = (answer.stream, answer.body);
    // The client gave up waiting for 100 Continue: the body, then its next
    // request on the same connection.
    let _ = stream.write_all(body).await;
    let next = signer.head("GET", a.addr, &format!("/{bucket}"), None);
    let _ = stream.write_all(next.as_bytes()).await;
    let read_all = tokio::time::timeout(Duration::from_secs(10), async {
        let mut chunk = [0u8; 16 << 10];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => rest.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    assert!(read_all.is_ok(), "the connection was kept open");
    let rest = String::from_utf8_lossy(&rest);
    assert!(
        !rest.contains("HTTP/1.1"),
        "a second response on the connection: {rest}"
    );
    a.stop().await;
    private.clean_up().await;
}

/// UploadPartCopy's source is held open like a GET's: a copy whose source
/// is deleted after it was opened still reads the bytes it opened, whole,
/// and the file is released when the read ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_part_copy_reads_its_opened_source_to_the_end_through_a_delete() {
    let (private, signer, bucket) = set_up("copysrc").await;
    let a = Instance::start(&private, ServerLimits::default()).await;
    create_bucket(&signer, a.addr, &bucket).await;
    let path = format!("/{bucket}/src");
    let data = random_bytes(10 * MIB + 7);
    put(&signer, a.addr, &path, &data).await;
    let inode = object_inode(&a.pipeline, &bucket, "src").await.unwrap();
    let opened = a
        .pipeline
        .open_object(inode.into(), data.len() as i64)
        .await
        .unwrap()
        .expect("the object's file opens");
    let (status, _) = call(&signer, "DELETE", a.addr, &path, None).await;
    assert_eq!(status, 204);
    let session = a.pipeline.master_session_id();
    assert!(
        holds(&private, session, inode).await,
        "held after the delete"
    );

    let (offset, len) = (MIB as u64 + 3, 8 * MIB as u64);
    let (mut pipe, reader) = a.pipeline.read_source(opened, offset, len);
    let mut copied = Vec::new();
    pipe.read_to_end(&mut copied).await.unwrap();
    assert!(reader.failure().await.is_none(), "the source read failed");
    let range = offset as usize..(offset + len) as usize;
    assert_eq!(md5_hex(&copied), md5_hex(&data[range]), "the copied bytes");
    eventually(Duration::from_secs(10), "the source released", || {
        let private = &private;
        async move { !holds(private, session, inode).await }
    })
    .await;

    a.stop().await;
    private.clean_up().await;
}
