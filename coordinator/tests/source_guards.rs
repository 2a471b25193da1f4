//! The source reader's guards against real loopback origins and the real
//! filesystem: names that resolve to loopback, redirects to addresses not
//! allowed, a source that changes between validation and a part read, a
//! wrong `Content-Range`, and a `file://` path whose directory is swapped
//! for a symbolic link after validation.

mod origin_support;

use origin_support::{Behaviour, Origin};
use shared::source::{Source, SourceConfig, SourceError};
use tokio::io::AsyncReadExt;

const BODY: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";

fn allowing(hosts: &[&str]) -> SourceConfig {
    let hosts: Vec<String> = hosts.iter().map(|h| h.to_string()).collect();
    SourceConfig::new(Vec::new()).with_http_hosts(&hosts)
}

async fn read_all(mut r: shared::source::SourceReader) -> Vec<u8> {
    let mut out = Vec::new();
    r.read_to_end(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn a_name_resolving_to_loopback_is_refused_before_connecting() {
    let origin = Origin::start("127.0.0.1", BODY.to_vec(), Behaviour::Plain).await;
    let url = format!("http://localhost:{}/a.bin", origin.addr.port());
    let open = SourceConfig::new(Vec::new());
    let source = Source::parse(&url, &open).unwrap();
    let e = source.probe(&open).await.unwrap_err();
    assert!(matches!(e, SourceError::AddressNotAllowed(_)), "{e}");
    assert!(!e.is_transient());
    assert_eq!(origin.connections(), 0, "no connection may be made");
    // Named in the allow-list, the same name is served.
    let named = allowing(&["localhost"]);
    let version = source.probe(&named).await.unwrap();
    assert_eq!(version.size, BODY.len() as u64);
    assert!(origin.connections() > 0);
}

#[tokio::test]
async fn redirects_are_followed_only_to_allowed_addresses() {
    let denied = Origin::start("127.0.0.2", b"internal secret".to_vec(), Behaviour::Plain).await;
    let allowed = Origin::start("127.0.0.1", BODY.to_vec(), Behaviour::Plain).await;
    let to_denied = Origin::start(
        "127.0.0.1",
        Vec::new(),
        Behaviour::RedirectTo(denied.url("/secret")),
    )
    .await;
    let to_allowed = Origin::start(
        "127.0.0.1",
        Vec::new(),
        Behaviour::RedirectTo(allowed.url("/a.bin")),
    )
    .await;
    let cfg = allowing(&["127.0.0.1"]);

    let source = Source::parse(&to_denied.url("/a.bin"), &cfg).unwrap();
    let e = source.probe(&cfg).await.unwrap_err();
    assert!(matches!(e, SourceError::RedirectRefused(_)), "{e}");
    assert!(!e.to_string().contains("secret"), "{e}");
    let pinned = shared::source::SourceVersion {
        size: 15,
        validator: None,
    };
    let e = match source.open_range(0, 15, &pinned, &cfg).await {
        Err(e) => e,
        Ok(_) => panic!("a redirect to 127.0.0.2 was followed"),
    };
    assert!(matches!(e, SourceError::RedirectRefused(_)), "{e}");
    assert_eq!(
        denied.connections(),
        0,
        "no connection to the denied address"
    );

    // A redirect to an allowed host is followed, and checked again.
    let source = Source::parse(&to_allowed.url("/a.bin"), &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    assert_eq!(version.size, BODY.len() as u64);
    let got = read_all(source.open_range(3, 5, &version, &cfg).await.unwrap()).await;
    assert_eq!(got, &BODY[3..8]);
}

#[tokio::test]
async fn a_part_read_is_pinned_to_the_version_seen_at_validation() {
    let origin = Origin::start("127.0.0.1", BODY.to_vec(), Behaviour::ChangeAfterFirstGet).await;
    let cfg = allowing(&["127.0.0.1"]);
    let source = Source::parse(&origin.url("/a.bin"), &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    assert!(
        version.validator.is_some(),
        "the ETag is taken at validation"
    );
    // The first read is of the old version; then the source changes.
    let first = read_all(source.open_range(0, 10, &version, &cfg).await.unwrap()).await;
    assert_eq!(first, &BODY[..10]);
    let e = match source.open_range(10, 10, &version, &cfg).await {
        Err(e) => e,
        Ok(r) => panic!("read a changed source: {:?}", read_all(r).await),
    };
    assert!(matches!(e, SourceError::Changed { .. }), "{e}");
    assert!(!e.is_transient(), "a changed source fails the session");
}

#[tokio::test]
async fn a_wrong_content_range_is_refused() {
    let origin = Origin::start("127.0.0.1", BODY.to_vec(), Behaviour::WrongContentRange).await;
    let cfg = allowing(&["127.0.0.1"]);
    let source = Source::parse(&origin.url("/a.bin"), &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    let e = match source.open_range(10, 10, &version, &cfg).await {
        Err(e) => e,
        Ok(r) => panic!("accepted a misplaced range: {:?}", read_all(r).await),
    };
    assert!(matches!(e, SourceError::BadRange { .. }), "{e}");
    assert!(e.to_string().contains("Content-Range"), "{e}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn a_symlink_swapped_in_after_validation_is_refused_at_the_part_read() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let size = 100_000;
    std::fs::create_dir(root.path().join("d")).unwrap();
    std::fs::write(root.path().join("d/a.bin"), vec![b'i'; size]).unwrap();
    std::fs::write(outside.path().join("a.bin"), vec![b'X'; size]).unwrap();
    let cfg = SourceConfig::new(vec![root.path().to_path_buf()]);
    let url = format!("file://{}/d/a.bin", root.path().display());
    let source = Source::parse(&url, &cfg).unwrap();
    let version = source.probe(&cfg).await.unwrap();
    assert_eq!(version.size, size as u64);

    // After validation, the directory is swapped for a link out of the root.
    std::fs::rename(root.path().join("d"), root.path().join("d-old")).unwrap();
    std::os::unix::fs::symlink(outside.path(), root.path().join("d")).unwrap();
    match source.open_range(0, size as u64, &version, &cfg).await {
        Err(e) => {
            assert!(matches!(e, SourceError::Escape(_)), "{e}");
            assert!(!e.is_transient(), "the session fails: {e}");
        }
        Ok(r) => {
            let got = read_all(r).await;
            panic!(
                "read {} bytes through the link ({} from outside the root)",
                got.len(),
                got.iter().filter(|b| **b == b'X').count()
            );
        }
    }
    // The size check refuses it too.
    assert!(matches!(
        source.probe(&cfg).await,
        Err(SourceError::Escape(_))
    ));
}
