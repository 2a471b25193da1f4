//! The mfs-ingest library shared by the coordinator and the worker.
//!
//! - [`moosefs`]: the native MooseFS client (no FUSE).
//! - [`domain`]: the values parsed at the edge (destination, goal, part size, fencing token).
//! - [`queue`]: message schemas and the RabbitMQ topology, publisher, consumer
//!   (also reachable as `jobs`, its former name).
//! - [`store`]: PostgreSQL, by table (sessions, parts, abandoned inodes,
//!   outbox, placements), owning its transactions.
//! - [`idempotency`]: Redis leases and markers.
//! - [`source`]: `file://` and `http(s)://` sources.
//! - [`ingest`]: the pipeline's steps, a module each (request, attempt,
//!   commit, complete, assemble, staging).
//! - [`gc`]: garbage collection of staging inodes and the staging sweep.
//! - [`http_server`]: the HTTP/1 serving loop (header timeout, connection
//!   limit, graceful drain) and request shedding of every HTTP endpoint.
//! - [`process`]: logging and the shutdown signal.
//! - [`retry`]: bounded exponential backoff, the one retry mechanism.
//! - [`limits`]: what one ingest request may ask for (parts, destinations, deliveries).

pub mod config;
pub mod domain;
pub mod gc;
pub mod http_server;
pub mod idempotency;
pub mod ingest;
pub mod limits;
pub mod metrics;
pub mod process;
pub mod queue;
pub mod source;
pub mod store;

// The native MooseFS client and the one retry module are the `moosefs` crate;
// re-exported so `crate::moosefs::…` and `crate::retry::…` keep their paths.
pub use moosefs;
pub use moosefs::retry;

/// The former name of [`queue`], kept so that callers' paths stay.
pub use queue as jobs;
