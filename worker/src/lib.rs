//! The mfs-ingest worker as a library (the binary only parses its config
//! and wires it): the app ([`app::App`]: build, then run until stopped),
//! the part-job handler and the metrics/health listener.

pub mod app;
pub mod config;
mod http;
mod run;
