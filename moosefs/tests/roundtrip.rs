//! Writes and reads through the native client against the real cluster at goal 3:
//! every size boundary, unaligned writes, many concurrent small files; each result
//! checked through the client, through the FUSE mount, and replica by replica.

use moosefs::testing::*;
use moosefs::{ReplicaChoice, WriteOptions, CHUNK_SIZE};

const MIB: usize = 1 << 20;

async fn put_and_check(client: &moosefs::MfsClient, dir: &TestDir, name: &str, data: &[u8]) {
    let (parent, _) = client.resolve(&dir.path).await.unwrap();
    let file = client
        .create(parent, &moosefs::Name::parse(name).unwrap(), 0o644)
        .await
        .unwrap();
    let outcome = client
        .write_stream(file.inode, 0, data, &WriteOptions::default())
        .await
        .unwrap_or_else(|e| panic!("write {name} ({} bytes): {e}", data.len()));
    let want = md5_hex(data);
    assert_eq!(outcome.length, data.len() as u64, "{name}");
    assert_eq!(
        outcome.md5_hex().unwrap(),
        want,
        "{name}: md5 of the stream"
    );
    assert_eq!(
        outcome.crc32c,
        crc32c::crc32c(data),
        "{name}: crc32c of the stream"
    );
    assert_eq!(
        client.getattr(file.inode).await.unwrap().length,
        data.len() as u64
    );

    let back = client.read_all(file.inode).await.unwrap();
    assert_eq!(
        md5_hex(&back),
        want,
        "{name}: md5 read back through the client"
    );
    assert_eq!(
        md5_through_mount(&dir.mount_path(name)),
        want,
        "{name}: md5 through mfsmount"
    );
    assert_replicas_identical(client, dir, name, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn small_sizes_round_trip_with_identical_replicas() {
    let client = client().await;
    let dir = TestDir::new(&client, "small-sizes").await;
    for (i, size) in [0usize, 1, 65535, 65536, 65537, 3 * 65536 + 12345]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, i as u64);
        put_and_check(&client, &dir, &format!("f{size}.bin"), &data).await;
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_boundary_sizes_round_trip_with_identical_replicas() {
    let client = client().await;
    let dir = TestDir::new(&client, "chunk-sizes").await;
    let chunk = CHUNK_SIZE as usize;
    for (i, size) in [chunk - 1, chunk, chunk + 1].into_iter().enumerate() {
        let data = random_bytes(size, 100 + i as u64);
        put_and_check(&client, &dir, &format!("f{size}.bin"), &data).await;
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_of_150_mib_round_trips_and_reads_identically_from_every_replica() {
    let client = client().await;
    let dir = TestDir::new(&client, "big").await;
    let data = random_bytes(150 * MIB + 4321, 7);
    put_and_check(&client, &dir, "big.bin", &data).await;

    // Read the whole file from each chunkserver separately.
    let (inode, _) = client.resolve(&dir.file("big.bin")).await.unwrap();
    let report = client.chunk_report(inode, 0).await.unwrap();
    let want = md5_hex(&data);
    for copy in &report.copies {
        let mut out = Vec::new();
        client
            .read_to(inode, 0, None, &mut out, ReplicaChoice::Only(copy.server))
            .await
            .unwrap();
        assert_eq!(md5_hex(&out), want, "read from {}", copy.server);
    }
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unaligned_writes_match_a_model_of_the_file() {
    let client = client().await;
    let dir = TestDir::new(&client, "unaligned").await;
    let (parent, _) = client.resolve(&dir.path).await.unwrap();
    let file = client
        .create(parent, &moosefs::Name::parse("u.bin").unwrap(), 0o644)
        .await
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    let chunk = CHUNK_SIZE as usize;
    // (offset, length): inside a block, overlapping blocks, across the chunk
    // boundary beyond EOF (leaves a hole), and at an odd offset in chunk 1.
    let writes = [
        (0usize, 3 * 65536 + 12345),
        (208_953, 5000),
        (1000, 70_000),
        (65_535, 2),
        (chunk - 100_000, 200_000),
        (chunk + 77_777, 131_072),
    ];
    for (i, (offset, len)) in writes.into_iter().enumerate() {
        let data = random_bytes(len, 1000 + i as u64);
        let outcome = client
            .write_stream(
                file.inode,
                offset as u64,
                &data[..],
                &WriteOptions::default(),
            )
            .await
            .unwrap_or_else(|e| panic!("write {i} at {offset}: {e}"));
        assert_eq!(outcome.length, len as u64);
        if model.len() < offset + len {
            model.resize(offset + len, 0);
        }
        model[offset..offset + len].copy_from_slice(&data);
        let mut part = Vec::new();
        client
            .read_to(
                file.inode,
                offset as u64,
                Some(len as u64),
                &mut part,
                ReplicaChoice::Any,
            )
            .await
            .unwrap();
        assert_eq!(part, data, "range read after write {i}");
    }
    let back = client.read_all(file.inode).await.unwrap();
    assert_eq!(back.len(), model.len());
    assert_eq!(
        md5_hex(&back),
        md5_hex(&model),
        "whole file through the client"
    );
    assert_eq!(
        md5_through_mount(&dir.mount_path("u.bin")),
        md5_hex(&model),
        "through mfsmount"
    );
    assert_replicas_identical(&client, &dir, "u.bin", 3).await;
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_small_files_from_sixteen_tasks_have_identical_replicas() {
    let client = client().await;
    let dir = TestDir::new(&client, "many-small").await;
    let (parent, _) = client.resolve(&dir.path).await.unwrap();
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(16));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u64 {
        let client = client.clone();
        let sem = sem.clone();
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let size = 1 + (i as usize * 7919) % (3 * 65536);
            let data = random_bytes(size, 5000 + i);
            let name = moosefs::Name::parse(&format!("s{i:03}.bin")).unwrap();
            let file = client.create(parent, &name, 0o644).await.unwrap();
            let out = client
                .write_stream(file.inode, 0, &data[..], &WriteOptions::default())
                .await
                .unwrap();
            assert_eq!(out.length, size as u64);
            (name, md5_hex(&data))
        });
    }
    let mut written = Vec::new();
    while let Some(r) = tasks.join_next().await {
        written.push(r.unwrap());
    }
    assert_eq!(written.len(), 200);
    for (name, md5) in &written {
        assert_eq!(
            md5_through_mount(&dir.mount_path(name.as_str())),
            *md5,
            "{name}"
        );
    }
    for (name, _) in written.iter().step_by(10) {
        assert_replicas_identical(&client, &dir, name.as_str(), 3).await;
    }
    // And by our own report for every file.
    for (name, _) in &written {
        let (inode, _) = client.resolve(&dir.file(name.as_str())).await.unwrap();
        for r in client.replica_report(inode).await.unwrap() {
            assert!(
                r.copies_identical() && r.valid_copies() == 3,
                "{name}: {r:?}"
            );
        }
    }
    assert_eq!(
        client
            .stats()
            .replica_mismatches
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    client.close().await;
}
