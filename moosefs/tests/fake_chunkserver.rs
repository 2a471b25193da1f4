//! The write-session rule that real servers cannot be made to break on demand,
//! proven against an in-process fake head chunkserver: `WRITE_FINISH` goes out
//! only after the chain set-up status (write id 0) *and* one OK status per data
//! packet, however late they come; a missing, failed or out-of-order status
//! fails the session without `WRITE_FINISH`. Also: a chunkserver's block
//! count above a chunk's 1024 blocks is an error, never a slice bound.

use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use moosefs::chunkserver::{
    ChunkserverTimeouts, CsLink, RawBlock, SessionEvent, WriteSession, WriteTarget,
    WRITE_DATA_HEADER,
};
use moosefs::codec::{FrameReader, Packet};
use moosefs::proto::msg;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const CHUNK_ID: u64 = 0x240;
const VERSION: u32 = 1;
const BLOCKS: u32 = 4;

/// What the fake saw and did, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Wire {
    GotWrite,
    GotData(u32),
    GotNop,
    GotFinish,
    SentStatus(u32, u8),
    Closed,
}

/// How the fake answers the `BLOCKS` data packets.
#[derive(Clone, Copy)]
enum Script {
    /// Chain status only after a delay, then all data statuses.
    LateChainStatus(Duration),
    /// Everything at once except the last data status, which comes late.
    LateLastStatus(Duration),
    /// Chain status, all data statuses but the last, then close.
    DropLastStatus,
    /// Chain status with an error.
    ChainError(u8),
    /// Data statuses 2 before 1.
    OutOfOrder,
}

async fn fake_head(
    script: Script,
) -> (
    SocketAddrV4,
    Arc<Mutex<Vec<Wire>>>,
    tokio::task::JoinHandle<()>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, 1 << 20);
        let (data_tx, mut data_rx) = mpsc::unbounded_channel::<u32>();
        // Reader: logs everything the client sends, forwards data write ids.
        let rlog = log2.clone();
        let reader_task = tokio::spawn(async move {
            while let Ok(Some(frame)) = reader.read_frame().await {
                let event = match frame.kind {
                    msg::CLTOCS_WRITE => Wire::GotWrite,
                    msg::CLTOCS_WRITE_DATA => {
                        let id = u32::from_be_bytes(frame.payload[8..12].try_into().unwrap());
                        let _ = data_tx.send(id);
                        Wire::GotData(id)
                    }
                    msg::CLTOCS_WRITE_FINISH => Wire::GotFinish,
                    msg::ANTOAN_NOP => Wire::GotNop,
                    other => panic!("fake got packet type {other}"),
                };
                rlog.lock().unwrap().push(event);
            }
            rlog.lock().unwrap().push(Wire::Closed);
        });
        let status = |id: u32, st: u8| {
            Packet::new(msg::CSTOCL_WRITE_STATUS, 13)
                .u64(CHUNK_ID)
                .u32(id)
                .u8(st)
                .finish()
        };
        let mut ids = Vec::new();
        for _ in 0..BLOCKS {
            ids.push(data_rx.recv().await.unwrap());
        }
        let send = |id: u32, st: u8| {
            log2.lock().unwrap().push(Wire::SentStatus(id, st));
            status(id, st)
        };
        match script {
            Script::LateChainStatus(delay) => {
                tokio::time::sleep(delay).await;
                wr.write_all(&send(0, 0)).await.unwrap();
                for id in &ids {
                    wr.write_all(&send(*id, 0)).await.unwrap();
                }
            }
            Script::LateLastStatus(delay) => {
                wr.write_all(&send(0, 0)).await.unwrap();
                for id in &ids[..ids.len() - 1] {
                    wr.write_all(&send(*id, 0)).await.unwrap();
                }
                tokio::time::sleep(delay).await;
                wr.write_all(&send(*ids.last().unwrap(), 0)).await.unwrap();
            }
            Script::DropLastStatus => {
                wr.write_all(&send(0, 0)).await.unwrap();
                for id in &ids[..ids.len() - 1] {
                    wr.write_all(&send(*id, 0)).await.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(wr);
                reader_task.abort();
                return;
            }
            Script::ChainError(code) => {
                wr.write_all(&send(0, code)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(wr);
                reader_task.abort();
                return;
            }
            Script::OutOfOrder => {
                wr.write_all(&send(0, 0)).await.unwrap();
                wr.write_all(&send(ids[1], 0)).await.unwrap();
                wr.write_all(&send(ids[0], 0)).await.unwrap();
                tokio::time::sleep(Duration::from_millis(300)).await;
                drop(wr);
                reader_task.abort();
                return;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), reader_task).await;
    });
    (addr, log, task)
}

fn blocks(n: u32) -> mpsc::Receiver<RawBlock> {
    let (tx, rx) = mpsc::channel(n as usize);
    for b in 0..n {
        let mut buf = BytesMut::zeroed(WRITE_DATA_HEADER);
        let data = vec![b as u8 + 1; 65536];
        buf.extend_from_slice(&data);
        tx.try_send(RawBlock {
            buf,
            block: b as u16,
            offset: 0,
            crc: crc32fast::hash(&data),
        })
        .unwrap();
    }
    rx
}

async fn run_session(script: Script) -> (Result<(), String>, Vec<Wire>, Vec<SessionEvent>) {
    let (addr, log, fake) = fake_head(script).await;
    let session = WriteSession::with_event_log(blocks(BLOCKS));
    let timeouts = ChunkserverTimeouts {
        status: Duration::from_secs(5),
        ..ChunkserverTimeouts::default()
    };
    let chain = [addr];
    let target = WriteTarget {
        chunk_id: CHUNK_ID,
        version: VERSION,
        chain: &chain,
    };
    let result = session
        .run(
            &target,
            &timeouts,
            &moosefs::NoObserver,
            &Default::default(),
        )
        .await
        .map_err(|e| e.to_string());
    let _ = tokio::time::timeout(Duration::from_secs(5), fake).await;
    let wire = log.lock().unwrap().clone();
    (result, wire, session.events())
}

fn position(wire: &[Wire], item: &Wire) -> Option<usize> {
    wire.iter().position(|w| w == item)
}

#[tokio::test]
async fn finish_waits_for_a_late_chain_status() {
    let (result, wire, events) =
        run_session(Script::LateChainStatus(Duration::from_millis(1500))).await;
    result.unwrap();
    let finish = position(&wire, &Wire::GotFinish).expect("FINISH sent");
    let last_status = wire
        .iter()
        .rposition(|w| matches!(w, Wire::SentStatus(..)))
        .unwrap();
    assert!(
        finish > last_status,
        "FINISH before the last status: {wire:?}"
    );
    assert_eq!(
        wire.iter()
            .filter(|w| matches!(w, Wire::SentStatus(..)))
            .count(),
        BLOCKS as usize + 1
    );
    // The link was kept alive with NOPs while the chain status was late.
    assert!(
        wire.contains(&Wire::GotNop),
        "no keep-alive NOP during a 1.5 s wait: {wire:?}"
    );
    // The client's own view: N+1 statuses, then FINISH.
    assert_eq!(events.last(), Some(&SessionEvent::SentFinish));
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, SessionEvent::GotStatus(_)))
            .count(),
        BLOCKS as usize + 1
    );
}

#[tokio::test]
async fn finish_waits_for_a_late_last_data_status() {
    let (result, wire, _) = run_session(Script::LateLastStatus(Duration::from_millis(1500))).await;
    result.unwrap();
    let finish = position(&wire, &Wire::GotFinish).expect("FINISH sent");
    let last = position(&wire, &Wire::SentStatus(BLOCKS, 0)).unwrap();
    assert!(
        finish > last,
        "FINISH before the last data status: {wire:?}"
    );
}

#[tokio::test]
async fn a_missing_last_status_fails_without_finish() {
    let (result, wire, events) = run_session(Script::DropLastStatus).await;
    assert!(
        result.is_err(),
        "session reported success without every status"
    );
    assert!(!wire.contains(&Wire::GotFinish), "FINISH sent: {wire:?}");
    assert!(!events.contains(&SessionEvent::SentFinish));
}

#[tokio::test]
async fn a_failed_chain_status_fails_without_finish() {
    let (result, wire, _) = run_session(Script::ChainError(19)).await;
    let err = result.unwrap_err();
    assert!(err.contains("WRONGVERSION"), "{err}");
    assert!(!wire.contains(&Wire::GotFinish), "FINISH sent: {wire:?}");
}

#[tokio::test]
async fn out_of_order_statuses_fail_without_finish() {
    let (result, wire, _) = run_session(Script::OutOfOrder).await;
    let err = result.unwrap_err();
    assert!(err.contains("expected"), "{err}");
    assert!(!wire.contains(&Wire::GotFinish), "FINISH sent: {wire:?}");
}

/// A chunkserver that answers `GET_CHUNK_CHECKSUM_TAB` with a full table and
/// `GET_CHUNK_BLOCKS` with `blocks` (a real one never says more than 1024).
async fn fake_crc_server(blocks: u16) -> (SocketAddrV4, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = match listener.local_addr().unwrap() {
        std::net::SocketAddr::V4(a) => a,
        _ => unreachable!(),
    };
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let (rd, mut wr) = stream.into_split();
        let mut reader = FrameReader::new(rd, 1 << 20);
        while let Ok(Some(frame)) = reader.read_frame().await {
            let answer = match frame.kind {
                msg::ANTOCS_GET_CHUNK_CHECKSUM_TAB => {
                    let mut p = Packet::new(msg::CSTOAN_CHUNK_CHECKSUM_TAB, 12 + 4096)
                        .u64(CHUNK_ID)
                        .u32(VERSION);
                    for i in 0..1024u32 {
                        p = p.u32(i);
                    }
                    p.finish()
                }
                msg::ANTOCS_GET_CHUNK_BLOCKS => Packet::new(msg::CSTOAN_CHUNK_BLOCKS, 15)
                    .u64(CHUNK_ID)
                    .u32(VERSION)
                    .u16(blocks)
                    .u8(0)
                    .finish(),
                other => panic!("fake got packet type {other}"),
            };
            if wr.write_all(&answer).await.is_err() {
                return;
            }
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_chunkserver_claiming_5000_blocks_is_an_error_not_a_panic() {
    let (addr, fake) = fake_crc_server(5000).await;
    let mut link = CsLink::connect(addr, Duration::from_secs(3)).await.unwrap();
    let result = link
        .crc_table(CHUNK_ID, VERSION, Duration::from_secs(5))
        .await;
    match result {
        Err(e) => assert!(e.to_string().contains("5000 blocks"), "{e}"),
        Ok(table) => panic!(
            "a table of {} blocks was accepted (digest {})",
            table.blocks,
            table.digest()
        ),
    }
    fake.abort();
}

#[tokio::test]
async fn a_chunkserver_claiming_1024_blocks_is_read() {
    let (addr, fake) = fake_crc_server(1024).await;
    let mut link = CsLink::connect(addr, Duration::from_secs(3)).await.unwrap();
    let table = link
        .crc_table(CHUNK_ID, VERSION, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(table.blocks, 1024);
    assert!(table.same_data(&table.clone()));
    fake.abort();
}
