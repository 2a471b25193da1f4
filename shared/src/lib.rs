//! The mfs-ingest library shared by the coordinator and the worker.
//!
//! - [`moosefs`]: the native MooseFS client (no FUSE).
//! - [`jobs`]: message schemas and the RabbitMQ topology, publisher, dead letters.
//! - [`store`]: PostgreSQL (sessions, parts, abandoned inodes, outbox).
//! - [`idempotency`]: Redis leases and markers.
//! - [`source`]: `file://` and `http(s)://` sources.
//! - [`ingest`]: the pipeline's steps (submit, part attempt, completion).
//! - [`gc`]: garbage collection of staging inodes and the staging sweep.
//! - [`process`]: logging and the shutdown signal.
//! - [`retry`]: bounded exponential backoff, the one retry mechanism.
//! - [`limits`]: what one ingest request may ask for (parts, destinations, deliveries).

pub mod config;
pub mod gc;
pub mod idempotency;
pub mod ingest;
pub mod jobs;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod source;
pub mod store;

// The native MooseFS client and the one retry module are the `moosefs` crate;
// re-exported so `crate::moosefs::…` and `crate::retry::…` keep their paths.
pub use moosefs;
pub use moosefs::retry;
