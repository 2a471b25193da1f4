//! Configuration from flags and environment (flags win): the service
//! addresses both binaries share, and the pieces built from them. Each binary
//! flattens [`ServiceArgs`] into its own clap struct and prints the effective
//! configuration at start with secrets masked.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use crate::ingest::{Ingest, IngestConfig};
use crate::limits::RequestLimits;
use crate::source::{PartLimits, S3Settings, SourceConfig};
use crate::store::Store;
use moosefs::{ClientConfig, MfsClient, MfsPath};

/// How `s3://` sources are read (`source::s3`): whether they are on at
/// all, the store, the further stores requests may name, and the
/// credentials, from the environment the AWS SDKs read.
#[derive(Args, Debug, Clone, Default)]
pub struct S3SourceArgs {
    /// Turns `s3://` sources on (off unless set: credentials in the
    /// environment alone, e.g. exported for aws-cli, never turn them on).
    #[arg(
        long = "s3-sources",
        env = "INGEST_S3_SOURCES",
        default_value_t = false,
        action = clap::ArgAction::Set,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub enabled: bool,
    /// The store `s3://BUCKET/KEY` reads from (unset: AWS S3 in AWS_REGION).
    #[arg(long = "s3-source-endpoint", env = "AWS_ENDPOINT_URL")]
    pub endpoint: Option<String>,
    /// Further stores requests may name with `?endpoint=URL`
    /// (comma-separated `http(s)://host[:port]`, whatever their addresses).
    #[arg(
        long = "s3-source-endpoints",
        env = "INGEST_S3_SOURCE_ENDPOINTS",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,
    #[arg(
        long = "s3-source-region",
        env = "AWS_REGION",
        default_value = "us-east-1"
    )]
    pub region: String,
    /// Without an access key, `s3://` sources are refused.
    #[arg(long = "s3-source-access-key-id", env = "AWS_ACCESS_KEY_ID")]
    pub access_key_id: Option<String>,
    #[arg(
        long = "s3-source-secret-access-key",
        env = "AWS_SECRET_ACCESS_KEY",
        hide_env_values = true
    )]
    pub secret_access_key: Option<String>,
    #[arg(
        long = "s3-source-session-token",
        env = "AWS_SESSION_TOKEN",
        hide_env_values = true
    )]
    pub session_token: Option<String>,
}

impl S3SourceArgs {
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            enabled: self.enabled,
            default_endpoint: self.endpoint.clone(),
            endpoints: self.endpoints.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            session_token: self.session_token.clone(),
        }
    }

    /// The settings for the start-up line (never the secret).
    pub fn describe(&self) -> String {
        match (&self.access_key_id, self.enabled) {
            (_, false) => "off".to_string(),
            (None, true) => "on, without credentials".to_string(),
            (Some(id), true) => format!(
                "endpoint={} endpoints={} region={} access_key_id={id}",
                self.endpoint.as_deref().unwrap_or("aws"),
                if self.endpoints.is_empty() {
                    "none".to_string()
                } else {
                    self.endpoints.join(",")
                },
                self.region
            ),
        }
    }
}

/// Addresses of the services and the MooseFS subtree.
#[derive(Args, Debug, Clone)]
pub struct ServiceArgs {
    /// PostgreSQL URL.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/mfs_ingest"
    )]
    pub database_url: String,
    /// RabbitMQ URL.
    #[arg(
        long,
        env = "AMQP_URL",
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL.
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379/")]
    pub redis_url: String,
    /// MooseFS master client address.
    #[arg(long, env = "MFS_MASTER", default_value = "10.213.47.10:9421")]
    pub mfs_master: String,
    /// MooseFS subtree the system writes under; staging lives in `<root>/.mfs-ingest/`.
    #[arg(long, env = "MFS_ROOT", default_value = "/")]
    pub mfs_root: String,
    /// Directories `file://` sources must be inside (colon-separated).
    #[arg(
        long,
        env = "INGEST_SOURCE_ROOTS",
        value_delimiter = ':',
        default_value = "/var/tmp/mfs-ingest/sources"
    )]
    pub source_roots: Vec<PathBuf>,
    /// Hosts `http(s)://` sources may name, whatever their addresses
    /// (comma-separated; unset or empty: any host whose addresses are all
    /// public — loopback, private, link-local and reserved ones refused).
    #[arg(long, env = "INGEST_HTTP_SOURCE_HOSTS", value_delimiter = ',')]
    pub http_source_hosts: Vec<String>,
    #[command(flatten)]
    pub s3_sources: S3SourceArgs,
    /// Goal for uploads that do not ask for one.
    #[arg(long, env = "INGEST_DEFAULT_GOAL", default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=9))]
    pub default_goal: u8,
    /// Part size for uploads that do not ask for one (a multiple of 64 MiB
    /// keeps completion copy-free).
    #[arg(long, env = "INGEST_PART_SIZE", default_value_t = 64 << 20)]
    pub part_size: u64,
    /// Most parts of one upload; without a part_size, uploads get the
    /// smallest multiple of the default part size that keeps within it.
    #[arg(long, env = "INGEST_MAX_PARTS", default_value_t = crate::limits::DEFAULT_MAX_PARTS)]
    pub max_parts: u64,
    /// Smallest part_size a request may ask for (a multiple of 65536).
    #[arg(long, env = "INGEST_MIN_PART_SIZE", default_value_t = crate::limits::DEFAULT_MIN_PART_SIZE)]
    pub min_part_size: u64,
    /// Largest part_size a request may ask for (a multiple of 65536).
    #[arg(long, env = "INGEST_MAX_PART_SIZE", default_value_t = crate::limits::DEFAULT_MAX_PART_SIZE)]
    pub max_part_size: u64,
    /// Most path components of a destination.
    #[arg(long, env = "INGEST_MAX_DEST_DEPTH", default_value_t = crate::limits::DEFAULT_MAX_DEST_DEPTH)]
    pub max_dest_depth: usize,
    /// Longest destination, in bytes.
    #[arg(long, env = "INGEST_MAX_DEST_BYTES", default_value_t = crate::limits::DEFAULT_MAX_DEST_BYTES)]
    pub max_dest_bytes: usize,
    /// Deliveries of one ingest.requests message that failed on our side
    /// (the first included) before it is dead-lettered with the reason.
    #[arg(long, env = "INGEST_REQUEST_MAX_DELIVERIES", default_value_t = crate::limits::DEFAULT_MAX_REQUEST_DELIVERIES)]
    pub request_max_deliveries: u32,
    /// PostgreSQL `statement_timeout` of every pooled connection, seconds
    /// (longest statement, lock waits included).
    #[arg(long, env = "INGEST_DB_STATEMENT_TIMEOUT_SECS", default_value_t = crate::store::DEFAULT_STATEMENT_TIMEOUT_SECS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub db_statement_timeout_secs: u64,
    /// PostgreSQL `idle_in_transaction_session_timeout`, seconds; must exceed
    /// the completion deadline.
    #[arg(long, env = "INGEST_DB_IDLE_IN_TRANSACTION_SECS", default_value_t = crate::store::DEFAULT_IDLE_IN_TRANSACTION_SECS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub db_idle_in_transaction_secs: u64,
    /// Bound on one completion's MooseFS work under the session row lock
    /// (assembly, MD5 read, rename), seconds; on expiry it is retried later.
    #[arg(long, env = "INGEST_COMPLETION_DEADLINE_SECS", default_value_t = crate::ingest::DEFAULT_COMPLETION_DEADLINE_SECS, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub completion_deadline_secs: u64,
}

/// Limits on reading one part of a source (the worker's settings).
#[derive(Args, Debug, Clone)]
pub struct PartLimitArgs {
    /// Seconds a part may take to read from its source, opening it included
    /// (0 = no deadline); then the attempt is abandoned and retried.
    #[arg(long, env = "WORKER_PART_DEADLINE_SECS", default_value_t = PartLimits::default().deadline.as_secs())]
    pub part_deadline_secs: u64,
    /// Bytes per second a source must deliver in every throughput window
    /// (0 = no minimum).
    #[arg(long, env = "WORKER_MIN_SOURCE_BYTES_PER_SEC", default_value_t = PartLimits::default().min_bytes_per_sec)]
    pub min_source_bytes_per_sec: u64,
    /// Seconds of the window the minimum throughput is measured over (the
    /// first window is the grace period of a new read).
    #[arg(long, env = "WORKER_SOURCE_RATE_WINDOW_SECS", default_value_t = PartLimits::default().window.as_secs(), value_parser = clap::value_parser!(u64).range(1..))]
    pub source_rate_window_secs: u64,
}

impl PartLimitArgs {
    pub fn limits(&self) -> PartLimits {
        PartLimits {
            deadline: std::time::Duration::from_secs(self.part_deadline_secs),
            min_bytes_per_sec: self.min_source_bytes_per_sec,
            window: std::time::Duration::from_secs(self.source_rate_window_secs),
        }
    }

    /// One line for the start-up log.
    pub fn describe(&self) -> String {
        format!(
            "part_deadline_secs={} min_source_bytes_per_sec={} source_rate_window_secs={}",
            self.part_deadline_secs, self.min_source_bytes_per_sec, self.source_rate_window_secs
        )
    }
}

/// Hides the password of a URL.
pub fn mask_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

impl ServiceArgs {
    /// One line per setting, secrets masked.
    pub fn describe(&self) -> String {
        format!(
            "database_url={} amqp_url={} redis_url={} mfs_master={} mfs_root={} source_roots={:?} http_source_hosts={} s3_sources=[{}] default_goal={} part_size={} limits={:?} db_statement_timeout_secs={} db_idle_in_transaction_secs={} completion_deadline_secs={}",
            mask_url(&self.database_url),
            mask_url(&self.amqp_url),
            mask_url(&self.redis_url),
            self.mfs_master,
            self.mfs_root,
            self.source_roots,
            if self.http_source_hosts.is_empty() {
                "any".to_string()
            } else {
                self.http_source_hosts.join(",")
            },
            self.s3_sources.describe(),
            self.default_goal,
            self.part_size,
            self.request_limits(),
            self.db_statement_timeout_secs,
            self.db_idle_in_transaction_secs,
            self.completion_deadline_secs
        )
    }

    /// The request limits these settings make.
    pub fn request_limits(&self) -> RequestLimits {
        RequestLimits {
            max_parts: self.max_parts,
            min_part_size: self.min_part_size,
            max_part_size: self.max_part_size,
            max_dest_depth: self.max_dest_depth,
            max_dest_bytes: self.max_dest_bytes,
            max_request_deliveries: self.request_max_deliveries,
        }
    }

    pub fn ingest_config(&self) -> Result<IngestConfig, ConfigError> {
        let root =
            MfsPath::parse(&self.mfs_root).map_err(|e| ConfigError(format!("MFS_ROOT: {e}")))?;
        let limits = self.request_limits();
        limits
            .validate(self.part_size)
            .map_err(|e| ConfigError(format!("request limits: {e}")))?;
        if self.db_idle_in_transaction_secs <= self.completion_deadline_secs {
            return Err(ConfigError(format!(
                "INGEST_DB_IDLE_IN_TRANSACTION_SECS ({}) must exceed INGEST_COMPLETION_DEADLINE_SECS ({}): a completion waits that long inside its transaction",
                self.db_idle_in_transaction_secs, self.completion_deadline_secs
            )));
        }
        Ok(IngestConfig {
            root,
            default_goal: self.default_goal,
            default_part_size: self.part_size,
            limits,
            sources: SourceConfig::new(self.source_roots.clone())
                .with_http_hosts(&self.http_source_hosts)
                .with_s3(&self.s3_sources.settings())
                .map_err(|e| ConfigError(e.to_string()))?,
            completion_deadline: std::time::Duration::from_secs(self.completion_deadline_secs),
        })
    }

    /// The pool's session timeouts.
    pub fn db_timeouts(&self) -> crate::store::DbTimeouts {
        crate::store::DbTimeouts {
            statement: std::time::Duration::from_secs(self.db_statement_timeout_secs),
            idle_in_transaction: std::time::Duration::from_secs(self.db_idle_in_transaction_secs),
        }
    }

    /// Connects to PostgreSQL and MooseFS (the client reports to the
    /// process's metrics).
    pub async fn ingest(
        &self,
        client_info: &str,
        db_connections: u32,
    ) -> Result<Ingest, ConfigError> {
        let cfg = self.ingest_config()?;
        let store = Store::connect_with(&self.database_url, db_connections, self.db_timeouts())
            .await
            .map_err(|e| {
                ConfigError(format!("PostgreSQL {}: {e}", mask_url(&self.database_url)))
            })?;
        let mut mfs_cfg = ClientConfig::new(&self.mfs_master);
        mfs_cfg.master.client_info = client_info.to_string();
        let mfs = MfsClient::connect_observed(mfs_cfg, crate::metrics::mfs_observer())
            .await
            .map_err(|e| ConfigError(e.to_string()))?;
        Ok(Ingest {
            cfg: Arc::new(cfg),
            store,
            mfs,
            dirs: Default::default(),
            write_budget: Default::default(),
        })
    }
}

/// A configuration or start-up problem, as one readable line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Args {
        #[command(flatten)]
        services: ServiceArgs,
    }

    fn args(extra: &[&str]) -> ServiceArgs {
        let mut argv = vec!["test"];
        argv.extend_from_slice(extra);
        Args::try_parse_from(argv).unwrap().services
    }

    #[test]
    fn the_idle_transaction_timeout_must_exceed_the_completion_deadline() {
        let defaults = args(&[]);
        assert!(defaults.ingest_config().is_ok());
        assert!(
            defaults.db_idle_in_transaction_secs > defaults.completion_deadline_secs,
            "the defaults agree"
        );
        let short = args(&[
            "--completion-deadline-secs",
            "600",
            "--db-idle-in-transaction-secs",
            "600",
        ]);
        let e = short.ingest_config().err().expect("refused");
        assert!(e.0.contains("INGEST_DB_IDLE_IN_TRANSACTION_SECS"), "{e}");
        let timeouts = args(&["--db-statement-timeout-secs", "5"]).db_timeouts();
        assert_eq!(timeouts.statement, std::time::Duration::from_secs(5));
        assert!(Args::try_parse_from(["test", "--db-statement-timeout-secs", "0"]).is_err());
    }
}
