//! Every decoder of a master or chunkserver answer, fed arbitrary bytes: it
//! answers a value or an error and never panics, and whatever it accepts
//! stays within MooseFS's bounds (block counts, copies, lengths). Cases per
//! decoder: `PROPTEST_CASES` (default 2,000; seconds in all).

use bytes::Bytes;
use moosefs::codec::{decode_frame_header, Packet, PayloadReader};
use moosefs::decode;
use moosefs::master::{parse_new_session, reconnect_status};
use moosefs::proto::{BLOCKS_PER_CHUNK, BLOCK_SIZE, MAX_CHUNK_COPIES, MAX_FILE_LENGTH};
use proptest::prelude::*;

/// Cases per decoder: `PROPTEST_CASES` if set, else 2,000.
fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Arbitrary payloads, biased towards the sizes the answers really have
/// (a CRC table is 4,108 bytes) so that deep fields are reached too.
fn payload() -> impl Strategy<Value = Bytes> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::collection::vec(any::<u8>(), 0..600),
        proptest::collection::vec(any::<u8>(), 4_100..4_120),
    ]
    .prop_map(Bytes::from)
}

/// A payload made of a valid-looking prefix (what the decoder reads first:
/// ids, counts, lengths) chosen from the values that break bounds, and
/// arbitrary bytes after it.
fn prefixed_payload() -> impl Strategy<Value = Bytes> {
    let edgy_u16 = prop_oneof![Just(0u16), Just(1023), Just(1024), Just(5000), any::<u16>()];
    let edgy_u32 = prop_oneof![
        Just(0u32),
        Just(BLOCK_SIZE),
        Just(BLOCK_SIZE + 1),
        Just(u32::MAX),
        any::<u32>()
    ];
    (
        any::<u64>(),
        edgy_u16.clone(),
        edgy_u16,
        edgy_u32,
        proptest::collection::vec(any::<u8>(), 0..300),
    )
        .prop_map(|(id, a, b, n, tail)| {
            let mut p = Packet::new(0, 16 + tail.len())
                .u64(id)
                .u16(a)
                .u16(b)
                .u32(n)
                .bytes(&tail)
                .finish();
            p.split_off(8)
        })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_headers_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..16),
                                 max in 0usize..(1 << 20)) {
        if let Ok(Some((_, len))) = decode_frame_header(&buf, max) {
            prop_assert!(len <= max);
        }
    }

    #[test]
    fn master_answers_never_panic(p in payload()) {
        let _ = decode::statfs(p.clone());
        for attr in [decode::attr(p.clone()), decode::truncated(p.clone()), decode::opened(p.clone())].into_iter().flatten() {
            prop_assert!(attr.length <= MAX_FILE_LENGTH);
        }
        for (_, attr) in [decode::inode_attr(p.clone()), decode::created(p.clone())]
            .into_iter()
            .flatten()
        {
            prop_assert!(attr.length <= MAX_FILE_LENGTH);
        }
        let _ = decode::renamed(p.clone());
        if let Ok(entries) = decode::dir_entries(p.clone()) {
            prop_assert!(entries.len() <= p.len() / 41);
        }
        let _ = decode::set_goal_counts(p.clone());
        let _ = decode::goal(p.clone());
        if let Ok(loc) = decode::chunk_location(p.clone()) {
            prop_assert!(loc.servers.len() <= MAX_CHUNK_COPIES);
        }
        if let Ok((_, _, copies)) = decode::chunk_copies(p.clone()) {
            prop_assert!(copies.len() <= MAX_CHUNK_COPIES);
        }
        let _ = parse_new_session(&p);
        let _ = reconnect_status(&p);
    }

    #[test]
    fn chunkserver_answers_never_panic(p in prop_oneof![payload(), prefixed_payload()]) {
        if let Ok(data) = decode::read_data(p.clone()) {
            prop_assert!((data.block as usize) < BLOCKS_PER_CHUNK);
            prop_assert!(data.offset as usize + data.data.len() <= BLOCK_SIZE as usize);
        }
        let _ = decode::read_status(p.clone());
        let _ = decode::write_status(p.clone());
        if let Ok(Ok(crcs)) = decode::checksum_tab(p.clone()) {
            prop_assert_eq!(crcs.len(), BLOCKS_PER_CHUNK);
        }
        if let Ok(Ok(blocks)) = decode::chunk_blocks(p.clone()) {
            prop_assert!(blocks as usize <= BLOCKS_PER_CHUNK);
        }
    }

    #[test]
    fn payload_reader_never_reads_past_the_end(p in payload(), n in 0usize..10_000) {
        let mut r = PayloadReader::new(p.clone());
        let _ = r.name();
        let _ = r.bytes(n);
        prop_assert!(r.remaining() <= p.len());
    }
}

#[test]
fn a_replica_table_claiming_5000_blocks_never_panics() {
    let table = moosefs::ReplicaCrcTable {
        blocks: 5000,
        crcs: vec![0; BLOCKS_PER_CHUNK],
    };
    assert!(!table.same_data(&table.clone()));
    assert_eq!(table.digest().len(), 32);
    assert!(table.data_crcs().is_none());
}
