//! The mfs-ingest coordinator as a library (the binary only parses its
//! config and wires it): the app ([`app::App`]: build, then run until
//! stopped), the HTTP API and its server, API tokens, the ingest-request
//! consumer, the outbox relay, and the reconciler/garbage-collector loops.

pub mod api;
pub mod app;
pub mod auth;
pub mod server;
pub mod service;
pub mod submit;
