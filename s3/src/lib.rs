//! The S3-compatible endpoint of mfs-ingest (issue 14): clients push objects
//! with any S3 client (aws-cli, boto3, rclone) and each upload is an upload
//! session of the pipeline — parts written into fresh staging inodes under
//! fencing tokens, every replica acknowledged and verified before the ETag
//! is answered, completion in the pipeline's one locked transaction.
//!
//! - [`pipeline`]: the adapter, the only module that calls the shared
//!   crate's pipeline (ingest, store, MooseFS client).
//! - [`service`]: the S3 operations (s3s's `S3` trait), a module per group.
//! - [`index`]: buckets, uploads, parts and the objects index in PostgreSQL
//!   (the crate's own tables).
//! - [`keys`]: access keys, SigV4 secrets, session tokens, per-bucket access.
//! - [`sts`]: STS AssumeRole (`POST /`): temporary credentials of a key.
//! - [`server`]: HTTP serving with body, time and concurrency limits (on
//!   the shared serving loop, `shared::http_server`).
//! - [`aws_chunked`]: aws-chunked bodies re-framed so that s3s never holds
//!   a client-sized chunk in memory.
//!
//! The S3 metrics (requests, latency, bytes, refusals) are families of
//! `shared::metrics`, recorded through its named events, so the documented
//! contract and the dashboards' tests cover them.
//! - [`cli`]: `worker s3 serve` and `worker s3 keys …`.

pub mod aws_chunked;
pub mod cli;
pub mod index;
pub mod keys;
pub mod pipeline;
pub mod server;
pub mod service;
pub mod sts;
