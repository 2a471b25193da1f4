//! What the S3 integration tests share: a private PostgreSQL database, a
//! private MooseFS root, the pipeline handle on both, and their cleanup.

#![allow(dead_code)] // each test file uses a part of it

pub mod raw;

use clap::Parser;
use moosefs::{ClientConfig, MfsClient, MfsPath};
use s3::pipeline::{Pipeline, ServiceArgs};

pub fn env_or(key: &str, default: &str) -> String {
    std::env::var(key).unwrap_or_else(|_| default.to_string())
}

#[derive(Parser)]
pub struct Args {
    #[command(flatten)]
    pub services: ServiceArgs,
}

/// A private database, dropped at the end.
pub struct Db {
    admin: String,
    name: String,
    pub url: String,
}

impl Db {
    pub async fn new(tag: &str) -> Db {
        let base = env_or(
            "DATABASE_URL",
            "postgres://postgres@127.0.0.1:5432/mfs_ingest",
        );
        let mut u = url::Url::parse(&base).unwrap();
        u.set_path("/postgres");
        let admin = u.to_string();
        let name = format!("t_s3_{tag}");
        let pool = sqlx::PgPool::connect(&admin).await.unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
        u.set_path(&format!("/{name}"));
        Db {
            admin,
            name,
            url: u.to_string(),
        }
    }

    pub async fn drop_db(&self) {
        let pool = sqlx::PgPool::connect(&self.admin).await.unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&pool)
        .await;
        pool.close().await;
    }
}

/// A private pipeline of the endpoint: database (migrated), MooseFS root
/// (trash time 0) and a MooseFS client of the test's own.
pub struct Private {
    pub tag: String,
    pub db: Db,
    pub mfs_root: String,
    pub mfs: MfsClient,
    pub args: Args,
    pub pipeline: Pipeline,
}

impl Private {
    pub async fn new() -> Private {
        let tag = format!("{:08x}", rand::random::<u32>());
        let db = Db::new(&tag).await;
        let mfs_root = format!("/tests-s3/{tag}");
        let master = env_or("MFS_MASTER", "10.213.47.10:9421");
        let args = Args::parse_from([
            "test",
            "--database-url",
            &db.url,
            "--mfs-master",
            &master,
            "--mfs-root",
            &mfs_root,
        ]);
        let mut cfg = ClientConfig::new(master);
        cfg.master.client_info = "mfs-ingest s3 tests".into();
        let mfs = MfsClient::connect(cfg).await.expect("MooseFS master");
        let root_inode = mfs
            .mkdir_all(&MfsPath::parse(&mfs_root).unwrap())
            .await
            .unwrap();
        mfs.set_trash_time(root_inode, 0, true).await.unwrap();
        let pipeline = Pipeline::connect(&args.services, "s3", "mfs-ingest s3 test", 16)
            .await
            .expect("pipeline");
        Pipeline::migrate(pipeline.pool()).await.unwrap();
        Private {
            tag,
            db,
            mfs_root,
            mfs,
            args,
            pipeline,
        }
    }

    /// Removes the MooseFS root and drops the database.
    pub async fn clean_up(self) {
        self.pipeline.close().await;
        let _ = self
            .mfs
            .remove(&MfsPath::parse(&self.mfs_root).unwrap(), true)
            .await;
        self.mfs.close().await;
        self.db.drop_db().await;
    }
}
