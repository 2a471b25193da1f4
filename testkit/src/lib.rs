//! The one test harness of the workspace (a dev-dependency of the crates
//! whose tests use it, never a dependency of a shipped binary):
//!
//! - [`resources`]: a pipeline's private PostgreSQL database, RabbitMQ
//!   vhost, MooseFS root and source directory, named after a tag, created
//!   and removed (also by the `private-pipeline` binary for the scripts).
//! - [`pipeline`]: [`Pipeline`], those resources for one test with an
//!   `Ingest` on them, requests, waits, cleanup on drop.
//! - [`apps`]: the real coordinator and worker apps in-process on port 0.
//! - [`processes`]: the real binaries as child processes of a pipeline.
//! - [`api`]: [`TestApi`], the HTTP API alone in-process.
//! - [`env`], [`digest`]: service addresses, unique names, MD5 helpers.
//! - [`python`]: a python3 with boto3 and aws-cli (the S3 endpoint's tests).
//! - [`s3`]: checks of the objects the S3 endpoint stored.
//!
//! The MooseFS cluster helpers are `moosefs::testing` (re-exported as
//! [`mfs`]). Every helper panics on failure, with a message saying what to
//! check: that is what a test wants.

pub mod api;
pub mod apps;
pub mod digest;
pub mod env;
pub mod pipeline;
pub mod processes;
pub mod python;
pub mod resources;
pub mod s3;

pub use api::TestApi;
pub use apps::RunningApp;
pub use digest::{md5_file, md5_hex};
pub use env::{env_or, free_port, master, mount_dir, unique_tag};
pub use moosefs::testing as mfs;
pub use pipeline::{assert_all_completed, Batch, Pipeline};
pub use resources::{PrivateDb, PrivateResources};
