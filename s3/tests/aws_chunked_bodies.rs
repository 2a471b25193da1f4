//! aws-chunked request bodies on the real stack, sent by a raw HTTP client
//! so that the test decides the chunk sizes (a client may send any) and
//! when bytes arrive:
//!
//! - an unsigned chunk of many MiB (the AWS CRT client sends each part as
//!   one chunk) streams into MooseFS while it is still arriving: the
//!   endpoint does not hold it whole (s3s alone would), and its trailing
//!   checksum is still checked;
//! - signed chunks within the limit are accepted and their signatures
//!   checked; a signed chunk over the limit fails the request before its
//!   data is buffered.
//!
//! One test, steps in order: the streaming proof reads the process's
//! counter of bytes acknowledged by the chunkservers, which no other test
//! of this binary moves meanwhile.
//!
//! Needs `scripts/stack up` (MFS_MASTER, DATABASE_URL).

use std::net::SocketAddr;
use std::time::Duration;

use base64::Engine as _;
use s3::pipeline::Pipeline;
use s3::server::ServerLimits;
use tokio::io::AsyncWriteExt;

mod common;

use common::raw::*;

/// Bytes the chunkservers of this process's writes acknowledged.
fn written_bytes() -> f64 {
    Pipeline::render_metrics()
        .lines()
        .find(|l| l.starts_with("mfs_ingest_mfs_written_bytes_total"))
        .and_then(|l| l.rsplit(' ').next())
        .map_or(0.0, |v| v.parse().unwrap())
}

fn crc32_base64(data: &[u8]) -> String {
    let crc = crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data) as u32;
    base64::engine::general_purpose::STANDARD.encode(crc.to_be_bytes())
}

/// The head of a PutObject with an aws-chunked body (`payload`: its
/// `x-amz-content-sha256`) of `decoded` object bytes and `encoded` bytes
/// on the wire, a CRC32 trailer announced if `trailer`.
fn chunked_head(
    signer: &Signer,
    addr: SocketAddr,
    path: &str,
    payload: &str,
    (decoded, encoded): (usize, usize),
    trailer: bool,
) -> (String, ChunkSigning) {
    let mut extra = vec![
        ("Content-Encoding", "aws-chunked".to_string()),
        ("x-amz-decoded-content-length", decoded.to_string()),
    ];
    if trailer {
        extra.push(("x-amz-trailer", "x-amz-checksum-crc32".to_string()));
    }
    signer.signed_head("PUT", addr, path, payload, &extra, Some(encoded))
}

/// A PutObject of `data` as one unsigned aws-chunked chunk, the final
/// chunk and a CRC32 trailer of `crc_of`: its head and body.
fn unsigned_put(
    signer: &Signer,
    addr: SocketAddr,
    path: &str,
    data: &[u8],
    crc_of: &[u8],
) -> (String, Vec<u8>) {
    let mut body = format!("{:x}\r\n", data.len()).into_bytes();
    body.extend_from_slice(data);
    let trailer = format!("x-amz-checksum-crc32:{}", crc32_base64(crc_of));
    body.extend_from_slice(format!("\r\n0\r\n{trailer}\r\n\r\n").as_bytes());
    let payload = "STREAMING-UNSIGNED-PAYLOAD-TRAILER";
    let wire = (data.len(), body.len());
    let (head, _) = chunked_head(signer, addr, path, payload, wire, true);
    (head, body)
}

/// A signed aws-chunked body of these chunks (and the final one).
fn signed_body(chunks: &[&[u8]], signing: &mut ChunkSigning) -> Vec<u8> {
    let mut body = Vec::new();
    for chunk in chunks.iter().copied().chain([&b""[..]]) {
        let signature = signing.sign(chunk);
        body.extend_from_slice(
            format!("{:x};chunk-signature={signature}\r\n", chunk.len()).as_bytes(),
        );
        body.extend_from_slice(chunk);
        body.extend_from_slice(b"\r\n");
    }
    body
}

/// The encoded length of a signed body of chunks of these sizes.
fn signed_length(sizes: &[usize]) -> usize {
    sizes
        .iter()
        .chain([&0])
        .map(|&n| format!("{n:x}").len() + ";chunk-signature=".len() + 64 + 2 + n + 2)
        .sum()
}

/// Sends a whole request (the server may answer before reading all of
/// it); its status and body.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, String) {
    let mut stream = connect(addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let _ = stream.write_all(body).await;
    let response = read_head(stream).await;
    let status = response.status;
    (
        status,
        String::from_utf8_lossy(&response.read_to_end().await).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_chunked_bodies_stream_and_signed_chunks_are_bounded() {
    let (private, signer, bucket) = set_up("chunked").await;
    let limits = ServerLimits {
        max_signed_chunk: 256 << 10,
        ..ServerLimits::default()
    };
    let server = Instance::start(&private, limits).await;
    create_bucket(&signer, server.addr, &bucket).await;

    // 1. One unsigned chunk of 24 MiB, of which 12 MiB are sent, then a
    // pause: bytes reach the chunkservers before the chunk has ended.
    let path = format!("/{bucket}/one-chunk");
    let data = random_bytes(24 * MIB);
    let (head, body) = unsigned_put(&signer, server.addr, &path, &data, &data);
    let before = written_bytes();
    let mut stream = connect(server.addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    let half = 12 * MIB;
    stream.write_all(&body[..half]).await.unwrap();
    let streamed = eventually(
        Duration::from_secs(30),
        "8 MiB of an unfinished 24 MiB chunk acknowledged by the chunkservers",
        || async { written_bytes() - before >= (8 * MIB) as f64 },
    )
    .await;
    println!(
        "{:.1} MiB of the chunk acknowledged {streamed:?} into its first 12 MiB, before its end",
        (written_bytes() - before) / MIB as f64
    );
    stream.write_all(&body[half..]).await.unwrap();
    let response = read_head(stream).await;
    let status = response.status;
    let answer = String::from_utf8_lossy(&response.read_to_end().await).into_owned();
    assert_eq!(status, 200, "{answer}");
    let (status, got) = call(&signer, "GET", server.addr, &path, None).await;
    assert_eq!((status, md5_hex(&got)), (200, md5_hex(&data)), "read back");
    let mut failures = Vec::new();
    let (db, mfs) = (private.pipeline.pool(), &private.mfs);
    let stored = (bucket.as_str(), "one-chunk");
    testkit::s3::check_stored_object(db, mfs, stored, data.len() as i64, 3, &mut failures).await;
    assert!(failures.is_empty(), "{failures:?}");

    // 2. The trailer is still checked: a wrong CRC32 stores nothing.
    let path = format!("/{bucket}/bad-trailer");
    let data = random_bytes(3 * MIB);
    let (head, body) = unsigned_put(&signer, server.addr, &path, &data, b"other bytes");
    let (status, answer) = exchange(server.addr, &head, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.contains("BadDigest"), "{answer}");
    let (status, _) = call(&signer, "HEAD", server.addr, &path, None).await;
    assert_eq!(status, 404, "a body failing its trailer stored an object");

    // 3. Signed chunks within the limit: accepted, their signatures checked.
    let path = format!("/{bucket}/signed");
    let data = random_bytes(300 << 10);
    let (first, second) = data.split_at(200 << 10);
    let sizes = [first.len(), second.len()];
    let payload = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD";
    let wire = (data.len(), signed_length(&sizes));
    let (head, mut signing) = chunked_head(&signer, server.addr, &path, payload, wire, false);
    let body = signed_body(&[first, second], &mut signing);
    assert_eq!(body.len(), wire.1);
    let (status, answer) = exchange(server.addr, &head, &body).await;
    assert_eq!(status, 200, "{answer}");
    let (status, got) = call(&signer, "GET", server.addr, &path, None).await;
    assert_eq!((status, md5_hex(&got)), (200, md5_hex(&data)));
    // A chunk whose signature is wrong is refused.
    let (head, mut signing) = chunked_head(&signer, server.addr, &path, payload, wire, false);
    let mut body = signed_body(&[first, second], &mut signing);
    let flipped = body.len() - 200;
    body[flipped] ^= 1;
    let (status, answer) = exchange(server.addr, &head, &body).await;
    assert!((400..500).contains(&status), "{status} {answer}");

    // 4. A signed chunk over the limit (256 KiB here) fails the request.
    let path = format!("/{bucket}/signed-too-big");
    let data = random_bytes(300 << 10);
    let wire = (data.len(), signed_length(&[data.len()]));
    let (head, mut signing) = chunked_head(&signer, server.addr, &path, payload, wire, false);
    let body = signed_body(&[&data], &mut signing);
    let (status, answer) = exchange(server.addr, &head, &body).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer.contains("signed chunk of 307200 bytes is larger than the limit of 262144"),
        "{answer}"
    );
    let (status, _) = call(&signer, "HEAD", server.addr, &path, None).await;
    assert_eq!(status, 404);

    server.stop().await;
    private.clean_up().await;
}
