//! Unit tests of source parsing, the path and URL checks, and file ranges.

use super::*;
use tokio::io::AsyncReadExt;

#[tokio::test]
async fn a_file_range_is_read_exactly_across_read_boundaries() {
    let root = tempfile::tempdir().unwrap();
    let path = root.path().join("range.bin");
    let data: Vec<u8> = (0..3 * FILE_READ_BYTES as usize + 12_345)
        .map(|i| (i * 7 + i / 4099) as u8)
        .collect();
    std::fs::write(&path, &data).unwrap();
    let cfg = SourceConfig::new(vec![root.path().to_path_buf()]);
    let source = Source::parse(&format!("file://{}", path.display()), &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    assert_eq!(version.size, data.len() as u64);
    let read = |offset: u64, len: u64| {
        let source = source.clone();
        let cfg = cfg.clone();
        let version = version.clone();
        async move {
            let mut out = Vec::new();
            let mut reader = source
                .open_range(offset, len, &version, &cfg)
                .await
                .unwrap();
            reader.read_to_end(&mut out).await.unwrap();
            out
        }
    };
    // A range starting mid-file and spanning several reads.
    let (offset, len) = (FILE_READ_BYTES - 100, 2 * FILE_READ_BYTES + 5_000);
    assert_eq!(
        read(offset, len).await,
        &data[offset as usize..(offset + len) as usize]
    );
    // The whole file, a read-sized range, and nothing at all.
    assert_eq!(read(0, data.len() as u64).await, data);
    assert_eq!(
        read(FILE_READ_BYTES, FILE_READ_BYTES).await,
        &data[FILE_READ_BYTES as usize..2 * FILE_READ_BYTES as usize]
    );
    assert!(read(10, 0).await.is_empty());
    // A file shorter than the range asked for yields what it has.
    let tail = data.len() as u64 - 1_000;
    assert_eq!(read(tail, 50_000).await, &data[tail as usize..]);
    let tail = data.len() as u64 - FILE_READ_BYTES - 1_000;
    assert_eq!(
        read(tail, 3 * FILE_READ_BYTES).await,
        &data[tail as usize..]
    );
    // A small file's range: one read, opened and read together.
    assert_eq!(read(70_000, 65_536).await, &data[70_000..135_536]);
}

#[tokio::test]
async fn file_sources_are_confined_to_the_roots() {
    let root = tempfile::tempdir().unwrap();
    let inside = root.path().join("a.bin");
    std::fs::write(&inside, b"x").unwrap();
    let cfg = SourceConfig::new(vec![root.path().to_path_buf()]);
    let ok = format!("file://{}", inside.display());
    assert!(matches!(Source::parse(&ok, &cfg), Ok(Source::File(_))));
    // Paths no kernel opens and URLs with control characters are
    // invalid input (not a transient I/O error, nothing stored).
    for bad in [
        format!("file://{}%00.bin", inside.display()),
        format!("file://{}\u{0}", inside.display()),
        format!("file://{}\n", inside.display()),
        format!("file://{}/{}", root.path().display(), "n".repeat(256)),
        format!("file://{}/{}", root.path().display(), "d/".repeat(2100)),
        format!(
            "file://{}/{}",
            root.path().display(),
            "x".repeat(MAX_SOURCE_URL_BYTES)
        ),
    ] {
        let e = Source::parse(&bad, &cfg).unwrap_err();
        assert!(matches!(e, SourceError::Invalid { .. }), "{bad:.80}: {e}");
        assert!(!e.is_transient());
    }
    let escape = format!("file://{}/../etc/passwd", root.path().display());
    assert!(matches!(
        Source::parse(&escape, &cfg),
        Err(SourceError::OutsideRoots(_))
    ));
    // No existence oracle outside the roots.
    assert!(matches!(
        Source::parse("file:///no/such/file", &cfg),
        Err(SourceError::OutsideRoots(_))
    ));
    assert!(matches!(
        Source::parse("file:///etc/hostname", &cfg),
        Err(SourceError::OutsideRoots(_))
    ));
    let missing = Source::parse(&format!("file://{}/missing", root.path().display()), &cfg);
    assert!(matches!(
        missing.unwrap().probe(&cfg).await,
        Err(SourceError::Missing(_))
    ));
    assert!(matches!(
        Source::parse(&format!("file://{}/", root.path().display()), &cfg),
        Err(SourceError::NotAFile(_))
    ));
    assert!(matches!(
        Source::parse("ftp://host/x", &cfg),
        Err(SourceError::UnsupportedScheme(_))
    ));
    assert!(matches!(
        Source::parse("not a url", &cfg),
        Err(SourceError::Invalid { .. })
    ));
}

#[test]
fn http_sources_can_be_limited_to_named_hosts() {
    let any = SourceConfig::new(Vec::new());
    assert!(Source::parse("http://files.example:8000/a.bin", &any).is_ok());
    let cfg = SourceConfig::new(Vec::new())
        .with_http_hosts(&["Files.Example".into(), " 127.0.0.1 ".into()]);
    for ok in [
        "http://files.example:8000/a.bin",
        "https://FILES.example/b.bin",
        "http://127.0.0.1:9000/c.bin",
    ] {
        assert!(
            matches!(Source::parse(ok, &cfg), Ok(Source::Http(_))),
            "{ok}"
        );
    }
    for refused in [
        "http://169.254.169.254/latest/meta-data",
        "http://files.example.evil.test/a.bin",
        "http://user@other.example/a.bin",
        "http://[::1]:8000/a.bin",
    ] {
        let e = Source::parse(refused, &cfg).unwrap_err();
        assert!(
            matches!(e, SourceError::HostNotAllowed(_)),
            "{refused}: {e}"
        );
        assert!(!e.is_transient());
    }
    assert!(
        SourceConfig::new(Vec::new())
            .with_http_hosts(&[String::new()])
            .allowed_http_hosts
            .is_none(),
        "an empty list allows any host"
    );
}

#[test]
fn private_ip_literals_are_refused_unless_named() {
    let any = SourceConfig::new(Vec::new());
    for refused in [
        "http://127.0.0.1:9000/a.bin",
        "http://169.254.169.254/latest/meta-data",
        "http://10.213.47.10:9421/",
        "http://192.168.0.1/",
        "http://[::1]/a",
        "http://[::ffff:127.0.0.1]/a",
        "http://[fd00::1]/a",
        "http://0.0.0.0/a",
        "http://2130706433/a", // 127.0.0.1 as one number
    ] {
        let e = Source::parse(refused, &any).unwrap_err();
        assert!(
            matches!(e, SourceError::AddressNotAllowed(_)),
            "{refused}: {e}"
        );
        assert!(!e.is_transient());
    }
    assert!(Source::parse("http://8.8.8.8/a.bin", &any).is_ok());
    let named = SourceConfig::new(Vec::new()).with_http_hosts(&["[::1]".into()]);
    assert!(Source::parse("http://[::1]:8000/a.bin", &named).is_ok());
}
