//! Where the shared services are: the environment `scripts/stack env`
//! prints, else the default stack's addresses. The MooseFS cluster comes
//! from `moosefs::testing` (`MFS_MASTER`, `MFS_MOUNT`).

pub use moosefs::testing::{master_addr as master, mount_dir};

/// `key` from the environment, else `default`.
pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

/// The PostgreSQL server's URL without a database (`DATABASE_URL`'s base).
pub fn pg_base() -> String {
    let url = env_or(
        "DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/mfs_ingest",
    );
    let mut u = url::Url::parse(&url).expect("DATABASE_URL is a URL");
    u.set_path("");
    u.to_string().trim_end_matches('/').to_string()
}

/// The RabbitMQ URL without a vhost (`AMQP_URL`'s base) and its user.
pub fn amqp_base() -> (String, String) {
    let url = env_or("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f");
    let u = url::Url::parse(&url).expect("AMQP_URL is a URL");
    let base = format!(
        "amqp://{}:{}@{}:{}",
        u.username(),
        u.password().unwrap_or(""),
        u.host_str().unwrap_or("127.0.0.1"),
        u.port().unwrap_or(5672)
    );
    (base, u.username().to_string())
}

/// `REDIS_URL`, shared by every pipeline (its keys carry session ids).
pub fn redis_url() -> String {
    env_or("REDIS_URL", "redis://127.0.0.1:6379/")
}

/// `<name>-<random>`: a tag no other test picks.
pub fn unique_tag(name: &str) -> String {
    format!("{name}-{:08x}", rand::random::<u32>())
}

/// Where the children's logs go.
pub const LOG_DIR: &str = "/var/tmp/mfs-ingest/test-logs";

/// A free loopback port (bound and let go: another process may take it
/// before the caller does, which a test then reports as a failed bind).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("binding a loopback port")
        .local_addr()
        .expect("the bound address")
        .port()
}
