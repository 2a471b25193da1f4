//! Namespace and metadata operations against the real cluster: append slice,
//! snapshot, rename, truncate, readdir, statfs, goal and trash time, bad input as
//! typed errors, and the master session's reconnect, sustained-inode release
//! and open files (readable after another session unlinks them).

use moosefs::testing::*;
use moosefs::{MfsError, MfsPath, Name, WriteOptions, CHUNK_SIZE};

fn name(s: &str) -> Name {
    Name::parse(s).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_slice_of_three_chunk_files_is_their_exact_concatenation() {
    let client = client().await;
    let dir = TestDir::new(&client, "append").await;
    let chunk = CHUNK_SIZE as usize;
    let mut expected = Vec::new();
    let mut part_chunk_ids = Vec::new();
    let mut parts = Vec::new();
    for i in 0..3u64 {
        // The last part is shorter: only the destination must be chunk-aligned.
        let len = if i == 2 { chunk / 3 } else { chunk };
        let data = random_bytes(len, 300 + i);
        let f = client
            .create(dir.inode, &name(&format!("part{i}")), 0o644)
            .await
            .unwrap();
        client
            .write_stream(f.inode, 0, &data[..], &WriteOptions::default())
            .await
            .unwrap();
        part_chunk_ids.push(client.check_chunk(f.inode, 0).await.unwrap().0);
        expected.extend_from_slice(&data);
        parts.push(f);
    }
    let dst = client
        .create(dir.inode, &name("joined"), 0o644)
        .await
        .unwrap();
    for p in &parts {
        client.append_slice(dst.inode, p.inode).await.unwrap();
    }
    assert_eq!(
        client.getattr(dst.inode).await.unwrap().length,
        expected.len() as u64
    );
    // No data was copied: the result's chunks are the parts' chunks.
    for (i, id) in part_chunk_ids.iter().enumerate() {
        assert_eq!(
            client.check_chunk(dst.inode, i as u32).await.unwrap().0,
            *id,
            "chunk {i}"
        );
    }
    let want = md5_hex(&expected);
    assert_eq!(md5_hex(&client.read_all(dst.inode).await.unwrap()), want);
    assert_eq!(md5_through_mount(&dir.mount_path("joined")), want);

    // Appending to a destination that is not chunk-aligned is refused, not padded.
    let err = client
        .append_slice(parts[2].inode, parts[0].inode)
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::InvalidArgument(_)), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_is_a_copy_that_later_writes_to_the_source_do_not_change() {
    let client = client().await;
    let dir = TestDir::new(&client, "snapshot").await;
    let original = random_bytes(300_000, 11);
    let src = client.create(dir.inode, &name("src"), 0o644).await.unwrap();
    client
        .write_stream(src.inode, 0, &original[..], &WriteOptions::default())
        .await
        .unwrap();
    let (snap, attr) = client
        .snapshot_file(src.inode, dir.inode, &name("snap"))
        .await
        .unwrap();
    assert_eq!(attr.length, original.len() as u64);
    assert_eq!(
        client.lookup(dir.inode, &name("snap")).await.unwrap().0,
        snap
    );
    // No data moved: the copy references the source's chunks.
    let shared_ids = client.chunk_ids(src.inode).await.unwrap();
    assert_eq!(shared_ids.len(), 1);
    assert_ne!(shared_ids[0], 0);
    assert_eq!(client.chunk_ids(snap).await.unwrap(), shared_ids);

    let patch = random_bytes(1000, 12);
    client
        .write_stream(src.inode, 0, &patch[..], &WriteOptions::default())
        .await
        .unwrap();
    let mut changed = original.clone();
    changed[..1000].copy_from_slice(&patch);
    assert_eq!(
        md5_hex(&client.read_all(src.inode).await.unwrap()),
        md5_hex(&changed)
    );
    assert_eq!(
        md5_hex(&client.read_all(snap).await.unwrap()),
        md5_hex(&original)
    );
    assert_eq!(
        md5_through_mount(&dir.mount_path("snap")),
        md5_hex(&original)
    );
    // The write gave the source a new chunk; the copy kept the old one.
    assert_eq!(client.chunk_ids(snap).await.unwrap(), shared_ids);
    assert_ne!(client.chunk_ids(src.inode).await.unwrap(), shared_ids);
    // snapshot_file never replaces a name; a source that is gone is NotFound.
    let err = client
        .snapshot_file(src.inode, dir.inode, &name("snap"))
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::AlreadyExists(_)), "{err}");
    let err = client
        .snapshot_file(u32::MAX - 7, dir.inode, &name("from-nothing"))
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::NotFound(_)), "{err}");
    // A snapshot onto an existing name needs overwrite.
    let err = client
        .snapshot(src.inode, dir.inode, &name("snap"), false)
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::AlreadyExists(_)), "{err}");
    client
        .snapshot(src.inode, dir.inode, &name("snap"), true)
        .await
        .unwrap();
    let (snap, _) = client.lookup(dir.inode, &name("snap")).await.unwrap();
    assert_eq!(
        md5_hex(&client.read_all(snap).await.unwrap()),
        md5_hex(&changed)
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rename_truncate_readdir_goal_trash_and_statfs() {
    let client = client().await;
    let dir = TestDir::new(&client, "meta").await;
    let data = random_bytes(213_953, 21);
    let f = client.create(dir.inode, &name("a"), 0o640).await.unwrap();
    client
        .write_stream(f.inode, 0, &data[..], &WriteOptions::default())
        .await
        .unwrap();
    client.mkdir(dir.inode, &name("sub"), 0o755).await.unwrap();

    let renamed = client
        .rename(dir.inode, &name("a"), dir.inode, &name("b"))
        .await
        .unwrap();
    assert_eq!(renamed, f.inode);
    let mut names: Vec<String> = client
        .readdir(dir.inode)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    names.sort();
    assert_eq!(names, ["b", "sub"]);

    let attr = client.truncate(f.inode, 100_000).await.unwrap();
    assert_eq!(attr.length, 100_000);
    client.truncate(f.inode, 150_000).await.unwrap();
    let mut expected = data[..100_000].to_vec();
    expected.resize(150_000, 0);
    assert_eq!(
        md5_hex(&client.read_all(f.inode).await.unwrap()),
        md5_hex(&expected)
    );
    assert_eq!(md5_through_mount(&dir.mount_path("b")), md5_hex(&expected));

    assert_eq!(
        client.get_goal(f.inode).await.unwrap(),
        3,
        "inherited from the directory"
    );
    client.set_goal(f.inode, 2, false).await.unwrap();
    assert_eq!(client.get_goal(f.inode).await.unwrap(), 2);
    assert!(matches!(
        client.set_goal(f.inode, 10, false).await,
        Err(MfsError::InvalidArgument(_))
    ));
    client.set_trash_time(f.inode, 0, false).await.unwrap();

    let fs = client.statfs().await.unwrap();
    assert!(
        fs.total_bytes > 0 && fs.avail_bytes <= fs.total_bytes,
        "{fs:?}"
    );

    // mkdir -p is idempotent and refuses to go through a file.
    let deep = dir.path.join(&name("x")).join(&name("y")).join(&name("z"));
    let z = client.mkdir_all(&deep).await.unwrap();
    assert_eq!(client.mkdir_all(&deep).await.unwrap(), z);
    let through_file = dir.file("b").join(&name("nope"));
    assert!(matches!(
        client.mkdir_all(&through_file).await,
        Err(MfsError::NotDirectory(_))
    ));

    // Removing a non-empty directory needs recursion.
    let x = dir.path.join(&name("x"));
    assert!(matches!(
        client.remove(&x, false).await,
        Err(MfsError::DirectoryNotEmpty(_))
    ));
    client.remove(&x, true).await.unwrap();
    assert!(matches!(
        client.resolve(&x).await,
        Err(MfsError::NotFound(_))
    ));
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_a_typed_error() {
    let client = client().await;
    let dir = TestDir::new(&client, "bad-input").await;
    for bad in ["/a/../b", "../etc", "/a/./b", "a\0b"] {
        assert!(
            matches!(MfsPath::parse(bad), Err(MfsError::InvalidPath { .. })),
            "{bad:?}"
        );
    }
    let long = "n".repeat(256);
    assert!(matches!(
        Name::parse(&long),
        Err(MfsError::InvalidPath { .. })
    ));
    assert!(matches!(
        MfsPath::parse(&format!("/x/{long}")),
        Err(MfsError::InvalidPath { .. })
    ));

    // Writing to a directory.
    let err = client
        .write_stream(dir.inode, 0, &b"data"[..], &WriteOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::IsDirectory(_)), "{err}");
    // Reading a missing file.
    let err = client.resolve(&dir.file("missing")).await.unwrap_err();
    assert!(matches!(err, MfsError::NotFound(_)), "{err}");
    // Creating over an existing name.
    client
        .create(dir.inode, &name("once"), 0o644)
        .await
        .unwrap();
    let err = client
        .create(dir.inode, &name("once"), 0o644)
        .await
        .err()
        .unwrap();
    assert!(matches!(err, MfsError::AlreadyExists(_)), "{err}");
    // A path through a file.
    let err = client
        .resolve(&dir.file("once").join(&name("x")))
        .await
        .unwrap_err();
    assert!(matches!(err, MfsError::NotDirectory(_)), "{err}");
    // Master unreachable (nothing listens on port 1 of loopback).
    let mut cfg = moosefs::ClientConfig::new("127.0.0.1:1");
    cfg.master.connect_timeout = std::time::Duration::from_secs(2);
    let err = moosefs::MfsClient::connect(cfg).await.err().unwrap();
    assert!(matches!(err, MfsError::MasterUnreachable { .. }), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_session_resumes_after_the_link_drops() {
    let client = client().await;
    let dir = TestDir::new(&client, "reconnect").await;
    let session = client.session().session_id;
    client.master().simulate_link_failure().await;
    // Requests issued while the link is down wait for the reconnect.
    let f = client
        .create(dir.inode, &name("after"), 0o644)
        .await
        .unwrap();
    let data = random_bytes(100_000, 31);
    client
        .write_stream(f.inode, 0, &data[..], &WriteOptions::default())
        .await
        .unwrap();
    assert_eq!(md5_through_mount(&dir.mount_path("after")), md5_hex(&data));
    assert!(client.master().reconnect_count() >= 1);
    assert_eq!(
        client.session().session_id,
        session,
        "the session was resumed, not replaced"
    );

    // The keep-alive holds an idle session open past the master's 10 s limit.
    tokio::time::sleep(std::time::Duration::from_secs(12)).await;
    let reconnects = client.master().reconnect_count();
    client.statfs().await.unwrap();
    assert_eq!(
        client.master().reconnect_count(),
        reconnects,
        "idle link was dropped"
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_inodes_are_released_when_their_handle_drops() {
    let client = client().await;
    let dir = TestDir::new(&client, "sustained").await;
    let f = client
        .create(dir.inode, &name("held"), 0o644)
        .await
        .unwrap();
    let inode = f.inode;
    assert!(client.master().open_inodes().contains(&inode));
    drop(f);
    assert!(!client.master().open_inodes().contains(&inode));
    client.master().flush_open_inodes().await.unwrap();
    // Once released and unlinked (trash time 0), the inode is really gone.
    client.unlink(dir.inode, &name("held")).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let err = client.getattr(inode).await.unwrap_err();
    assert!(matches!(err, MfsError::NotFound(_)), "{err}");
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opened_file_stays_readable_after_another_session_unlinks_it() {
    let (reader, other) = (client().await, client().await);
    let dir = TestDir::new(&other, "opened").await;
    let data = random_bytes(300_000, 47);
    let f = other.create(dir.inode, &name("held"), 0o644).await.unwrap();
    other
        .write_stream(f.inode, 0, &data[..], &WriteOptions::default())
        .await
        .unwrap();
    let inode = f.inode;
    drop(f);
    other.master().flush_open_inodes().await.unwrap();

    let opened = reader.open_file(inode).await.unwrap();
    assert_eq!(opened.attr.length, data.len() as u64);
    let session = reader.session().session_id;
    let listed = moosefs::admin::list_open_files(&reader.config().master, session)
        .await
        .unwrap();
    assert!(listed.contains(&inode), "{listed:?}");
    // Unlinked by the other session (trash time 0): sustained, still readable.
    other.unlink(dir.inode, &name("held")).await.unwrap();
    let detached = other.getattr_detached(inode).await.unwrap();
    assert_eq!((detached.nlink, detached.length), (0, data.len() as u64));
    let mut read = Vec::new();
    reader
        .read_opened_to(&opened, 0, None, &mut read, Default::default())
        .await
        .unwrap();
    assert!(read == data, "the sustained file's bytes differ");
    // Released: the session no longer lists it (the master frees it in its
    // sustained sweep, up to 256 s later).
    drop(opened);
    let mut released = false;
    for _ in 0..50 {
        let listed = moosefs::admin::list_open_files(&reader.config().master, session)
            .await
            .unwrap();
        if !listed.contains(&inode) {
            released = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "inode {inode} still open after its handle dropped"
    );
    // Opening an inode that does not exist is NotFound.
    let err = reader.open_file(u32::MAX - 7).await.err().unwrap();
    assert!(matches!(err, MfsError::NotFound(_)), "{err}");
    reader.close().await;
    other.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_export_needs_the_right_password() {
    // scripts/stack exports /password-test with password "mfs-ingest-test".
    let admin = client().await;
    admin
        .mkdir_all(&MfsPath::parse("/password-test").unwrap())
        .await
        .unwrap();
    let connect = |password: Option<&str>| {
        let mut cfg = moosefs::ClientConfig::new(master_addr());
        cfg.master.subfolder = "/password-test".into();
        cfg.master.password = password.map(str::to_string);
        moosefs::MfsClient::connect(cfg)
    };
    let ok = connect(Some("mfs-ingest-test"))
        .await
        .expect("right password");
    ok.statfs().await.unwrap();
    ok.readdir(1).await.unwrap();
    ok.close().await;
    let wrong = connect(Some("not-the-password"))
        .await
        .err()
        .expect("wrong password accepted");
    assert!(matches!(wrong, MfsError::SessionRefused(_)), "{wrong}");
    assert!(wrong.to_string().contains("password"), "{wrong}");
    let none = connect(None)
        .await
        .err()
        .expect("missing password accepted");
    assert!(matches!(none, MfsError::SessionRefused(_)), "{none}");
    admin.close().await;
}
