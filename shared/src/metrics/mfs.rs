//! The MooseFS client's wire events (the `moosefs` crate's [`Observer`]),
//! counted in the `mfs_ingest_mfs_*` metrics.

use std::net::SocketAddrV4;
use std::sync::Arc;

use prometheus::{Histogram, IntCounter, IntCounterVec};

use super::labels::MfsOutcome;
use super::{metrics, Metrics};
use moosefs::{Observer, Status};

/// Write statuses whose series are created at start (others appear when
/// they happen): success and the ones a write meets in practice.
const WRITE_STATUSES_CREATED_FIRST: [Status; 13] = [
    Status::OK,
    Status::NOCHUNK,
    Status::CHUNKBUSY,
    Status::NOTDONE,
    Status::WRONGVERSION,
    Status::NOSPACE,
    Status::IO,
    Status(23), // BNUMTOOBIG
    Status(24), // WRONGSIZE
    Status(25), // WRONGOFFSET
    Status::CANTCONNECT,
    Status::DISCONNECTED,
    Status::CRC,
];

/// Creates the write-status series known in advance (at 0).
pub(super) fn create_write_statuses(statuses: &IntCounterVec) {
    for status in WRITE_STATUSES_CREATED_FIRST {
        statuses.with_label_values(&[status.name()]);
    }
}

/// Counts the MooseFS client's wire events (see [`Observer`]).
pub struct MfsObserver;

/// The observer to pass to `MfsClient::connect_observed`.
pub fn mfs_observer() -> Arc<dyn Observer> {
    Arc::new(MfsObserver)
}

/// The series of one master operation, created together on its first use.
#[derive(Clone)]
pub(super) struct MfsOp {
    duration: Histogram,
    /// One counter per [`MfsOutcome`], in `MfsOutcome::ALL` order.
    outcomes: Vec<IntCounter>,
}

impl Metrics {
    fn mfs_op(&self, op: &'static str) -> MfsOp {
        let mut ops = self.mfs_ops.lock().expect("mfs_ops lock");
        ops.entry(op)
            .or_insert_with(|| {
                // "write chunk end" -> "write_chunk_end"
                let label = op.replace(' ', "_");
                MfsOp {
                    duration: self.mfs_request_duration.with_label_values(&[&label]),
                    outcomes: MfsOutcome::ALL
                        .iter()
                        .map(|o| {
                            self.mfs_requests
                                .with_label_values(&[label.as_str(), o.as_str()])
                        })
                        .collect(),
                }
            })
            .clone()
    }
}

impl Observer for MfsObserver {
    fn master_request(&self, op: &'static str, seconds: f64, outcome: &'static str) {
        let op = metrics().mfs_op(op);
        op.duration.observe(seconds);
        op.outcomes[MfsOutcome::of(outcome) as usize].inc();
    }

    fn write_status(&self, status: Status) {
        metrics()
            .mfs_write_statuses
            .with_label_values(&[status.name()])
            .inc();
    }

    fn chain_length(&self, servers: usize) {
        metrics().mfs_chain_length.observe(servers as f64);
    }

    fn chunkserver_error(&self, server: SocketAddrV4) {
        metrics()
            .mfs_chunkserver_errors
            .with_label_values(&[&server.to_string()])
            .inc();
    }

    fn master_reconnect(&self) {
        metrics().mfs_master_reconnects.inc();
    }

    fn bytes_written(&self, bytes: u64) {
        metrics().mfs_written_bytes.inc_by(bytes);
    }

    fn chunk_write_retry(&self) {
        metrics().mfs_chunk_write_retries.inc();
    }

    fn replica_mismatch(&self) {
        metrics().mfs_replica_mismatches.inc();
    }
}
