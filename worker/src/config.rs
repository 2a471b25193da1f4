//! [`Config`]: the settings of `worker run`, parsed by clap from flags or
//! the environment (never read by the app itself).

use std::net::SocketAddr;

use clap::Parser;
use shared::config::{PartLimitArgs, ServiceArgs};

/// Settings of `worker run`: flags, or the environment variables named in
/// `--help` (read by clap when the config is parsed, never by the app).
#[derive(Parser, Debug, Clone)]
pub struct Config {
    #[command(flatten)]
    pub services: ServiceArgs,
    #[command(flatten)]
    pub part_limits: PartLimitArgs,
    /// Parts handled at the same time (also the RabbitMQ prefetch).
    #[arg(long, env = "WORKER_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// MiB of parts written at the same time: small parts all run at once,
    /// 64 MiB parts one at a time (0 = no bound beyond --concurrency).
    #[arg(long, env = "WORKER_MAX_IN_FLIGHT_MIB", default_value_t = 64)]
    pub max_in_flight_mib: u32,
    /// Runtime threads: 1 runs every part on one thread (least CPU per
    /// part); more spread hashing over cores.
    #[arg(long, env = "WORKER_THREADS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub threads: u16,
    /// Metrics and health listener.
    #[arg(long, env = "WORKER_HTTP_ADDR", default_value = "127.0.0.1:9101")]
    pub http_addr: SocketAddr,
    /// Name of this worker in leases and part rows (default: host-pid).
    #[arg(long, env = "WORKER_ID")]
    pub worker_id: Option<String>,
    /// Attempts of one part job before its session fails.
    #[arg(long, env = "WORKER_MAX_ATTEMPTS", default_value_t = 8, value_parser = clap::value_parser!(i64).range(1..=1000))]
    pub max_attempts: i64,
    /// Lifetime of a part lease in Redis, seconds; renewed every third of it
    /// while the part runs.
    #[arg(long, env = "WORKER_LEASE_SECS", default_value_t = 30)]
    pub lease_secs: u64,
    /// How long a shutdown waits for in-flight parts, seconds.
    #[arg(long, env = "WORKER_SHUTDOWN_GRACE_SECS", default_value_t = 60)]
    pub shutdown_grace_secs: u64,
}
