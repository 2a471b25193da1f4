//! The private resources of one pipeline, all named after its tag: a
//! PostgreSQL database `t_<tag>` (migrated), a RabbitMQ vhost
//! `mfs-ingest-<tag>` (the `AMQP_URL` user gets every permission), a MooseFS
//! root `<parent>/pipe-<tag>` (goal 3, trash time 0, below a parent with
//! trash time 0) and a local source directory `<sources>/pipe-<tag>`. Redis
//! is shared (its keys carry session ids). Created by [`PrivateResources::create`],
//! removed by [`PrivateResources::remove`]; the names alone are enough to
//! remove them, so another process (`private-pipeline down`) can.

use std::path::PathBuf;
use std::process::Command;

use moosefs::{ClientConfig, MfsClient, MfsPath};
use shared::store::Store;

use crate::env::{amqp_base, master, pg_base, redis_url};

/// Where MooseFS roots go unless said otherwise.
pub const DEFAULT_MFS_PARENT: &str = moosefs::testing::TESTS_ROOT;
/// Where source directories go unless said otherwise.
pub const DEFAULT_SOURCES_PARENT: &str = "/var/tmp/mfs-ingest/sources";

/// The names of one pipeline's private resources.
#[derive(Debug, Clone)]
pub struct PrivateResources {
    pub tag: String,
    pub db_name: String,
    pub database_url: String,
    pub vhost: String,
    pub amqp_url: String,
    pub mfs_root: String,
    pub src_dir: PathBuf,
}

impl PrivateResources {
    /// The resources of `tag` in the default places.
    pub fn for_tag(tag: &str) -> PrivateResources {
        Self::placed(tag, DEFAULT_MFS_PARENT, DEFAULT_SOURCES_PARENT.as_ref())
    }

    /// The resources of `tag`, the MooseFS root below `mfs_parent`, the
    /// sources below `sources_parent`.
    pub fn placed(tag: &str, mfs_parent: &str, sources_parent: &std::path::Path) -> Self {
        let db_name = format!("t_{}", tag.replace('-', "_"));
        let vhost = format!("mfs-ingest-{tag}");
        PrivateResources {
            tag: tag.to_string(),
            database_url: format!("{}/{db_name}", pg_base()),
            db_name,
            amqp_url: format!("{}/{vhost}", amqp_base().0),
            vhost,
            mfs_root: format!("{}/pipe-{tag}", mfs_parent.trim_end_matches('/')),
            src_dir: sources_parent.join(format!("pipe-{tag}")),
        }
    }

    /// Creates everything; returns the migrated store and a MooseFS client
    /// (`client_info` names it in the master's session list).
    pub async fn create(&self, client_info: &str) -> (Store, MfsClient) {
        create_database(&self.db_name).await;
        let store = Store::connect(&self.database_url, 8)
            .await
            .expect("connect to the private database");
        store.migrate().await.expect("migrate the private database");

        let user = amqp_base().1;
        rabbitmqctl(&["add_vhost", &self.vhost]);
        rabbitmqctl(&[
            "set_permissions",
            "-p",
            &self.vhost,
            &user,
            ".*",
            ".*",
            ".*",
        ]);

        let mut cfg = ClientConfig::new(master());
        cfg.master.client_info = client_info.to_string();
        let mfs = MfsClient::connect(cfg)
            .await
            .expect("MooseFS master (is `scripts/stack up` running, MFS_MASTER set?)");
        let root = MfsPath::parse(&self.mfs_root).expect("valid MooseFS root");
        let (parent, _) = root.split_last().expect("the root has a parent");
        let parent_inode = mfs.mkdir_all(&parent).await.unwrap();
        mfs.set_trash_time(parent_inode, 0, false).await.unwrap();
        let root_inode = mfs.mkdir_all(&root).await.unwrap();
        mfs.set_trash_time(root_inode, 0, false).await.unwrap();
        mfs.set_goal(root_inode, 3, false).await.unwrap();

        std::fs::create_dir_all(&self.src_dir).unwrap();
        (store, mfs)
    }

    /// The environment the binaries need to work on these resources.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("DATABASE_URL", self.database_url.clone()),
            ("AMQP_URL", self.amqp_url.clone()),
            ("REDIS_URL", redis_url()),
            ("MFS_MASTER", master()),
            ("MFS_ROOT", self.mfs_root.clone()),
            ("INGEST_SOURCE_ROOTS", self.src_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Removes everything, as far as it exists; failures are printed, not
    /// raised (cleanup must not hide a test's result). Runs on a thread
    /// and runtime of its own, so it works from `Drop` too.
    pub fn remove(&self) {
        let _ = Command::new("rabbitmqctl")
            .args(["delete_vhost", &self.vhost])
            .output();
        let _ = std::fs::remove_dir_all(&self.src_dir);
        let (root, db_name) = (self.mfs_root.clone(), self.db_name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(mfs) = MfsClient::connect(ClientConfig::new(master())).await {
                    if let Err(e) = mfs.remove(&MfsPath::parse(&root).unwrap(), true).await {
                        eprintln!("cleanup of {root}: {e}");
                    }
                    mfs.close().await;
                }
                drop_database(&db_name).await;
            });
        })
        .join();
    }
}

async fn admin() -> Store {
    Store::connect(&format!("{}/postgres", pg_base()), 1)
        .await
        .expect("connect to PostgreSQL")
}

/// `CREATE DATABASE name` on the server of `DATABASE_URL`.
pub async fn create_database(name: &str) {
    let admin = admin().await;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin.pool)
        .await
        .expect("create the private database");
    admin.pool.close().await;
}

/// Whether a database `name` exists on the server of `DATABASE_URL`.
pub async fn database_exists(name: &str) -> bool {
    let admin = admin().await;
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&admin.pool)
        .await
        .expect("list the databases");
    admin.pool.close().await;
    found.is_some()
}

/// `DROP DATABASE IF EXISTS name WITH (FORCE)`, best effort.
pub async fn drop_database(name: &str) {
    if let Ok(admin) = Store::connect(&format!("{}/postgres", pg_base()), 1).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin.pool)
            .await;
        admin.pool.close().await;
    }
}

/// A private database for a test that needs only that, dropped on drop.
pub struct PrivateDb {
    pub name: String,
    pub url: String,
}

impl PrivateDb {
    /// `t_<name>_<random>` on the server of `DATABASE_URL` (not migrated).
    pub async fn create(name: &str) -> PrivateDb {
        let name = format!("t_{}_{:08x}", name.replace('-', "_"), rand::random::<u32>());
        create_database(&name).await;
        PrivateDb {
            url: format!("{}/{name}", pg_base()),
            name,
        }
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(drop_database(&name));
        })
        .join();
    }
}

fn rabbitmqctl(args: &[&str]) {
    moosefs::testing::run_checked(Command::new("rabbitmqctl").args(args));
}
