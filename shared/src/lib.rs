//! The mfs-ingest library shared by the coordinator and the worker.
//!
//! - [`domain`]: the values parsed at the edge (destination, goal, part size, fencing token).
//! - [`queue`]: message schemas and the RabbitMQ topology, publisher, consumer.
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
