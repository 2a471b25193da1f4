//! The real coordinator and worker apps started in-process on a
//! [`Pipeline`]'s resources, listening on 127.0.0.1:0: built from a config
//! the test may adjust first, stopped through their shutdown token (on
//! [`RunningApp::stop`] or drop).

use std::net::SocketAddr;

use clap::Parser;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::pipeline::Pipeline;

/// An app running on the test's runtime.
pub struct RunningApp {
    /// Where its HTTP listener is (the API, or the worker's metrics).
    pub addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl RunningApp {
    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Cancels its shutdown token and waits until it has stopped.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.expect("the app panicked");
        }
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Pipeline {
    /// The service flags every app of this pipeline gets.
    fn service_flags(&self) -> Vec<String> {
        let mut flags = Vec::new();
        for (key, value) in self.resources.env() {
            let flag = match key.as_str() {
                "DATABASE_URL" => "--database-url",
                "AMQP_URL" => "--amqp-url",
                "REDIS_URL" => "--redis-url",
                "MFS_MASTER" => "--mfs-master",
                "MFS_ROOT" => "--mfs-root",
                "INGEST_SOURCE_ROOTS" => "--source-roots",
                _ => continue,
            };
            flags.push(flag.to_string());
            flags.push(value);
        }
        flags
    }

    /// A coordinator config on this pipeline: open API on 127.0.0.1:0,
    /// maintenance every second, staging grace 2 s, parts stale after 20 s
    /// (as [`Pipeline::spawn_coordinator`]).
    pub fn coordinator_config(&self) -> coordinator::app::Config {
        let mut argv = vec!["coordinator".to_string()];
        argv.extend(self.service_flags());
        argv.extend(
            [
                "--http-addr=127.0.0.1:0",
                "--maintenance-secs=1",
                "--staging-grace-secs=2",
                "--part-stale-secs=20",
            ]
            .map(String::from),
        );
        let mut config =
            coordinator::app::Config::try_parse_from(argv).expect("coordinator config");
        // The API's authentication comes from the test, never from the
        // environment the tests run in.
        config.auth = coordinator::app::AuthArgs {
            api_tokens: None,
            api_tokens_file: None,
            api_token: None,
            insecure_no_auth: true,
        };
        config
    }

    /// A worker config on this pipeline named `id`: metrics on
    /// 127.0.0.1:0, 10 s leases (as [`Pipeline::spawn_worker`]).
    pub fn worker_config(&self, id: &str) -> worker::config::Config {
        let mut argv = vec!["worker".to_string()];
        argv.extend(self.service_flags());
        argv.extend([
            "--http-addr=127.0.0.1:0".to_string(),
            format!("--worker-id={id}"),
            "--lease-secs=10".to_string(),
        ]);
        worker::config::Config::try_parse_from(argv).expect("worker config")
    }

    /// Starts a coordinator with [`Pipeline::coordinator_config`].
    pub async fn start_coordinator(&self) -> RunningApp {
        start_coordinator(self.coordinator_config()).await
    }

    /// Starts a worker named `id` with [`Pipeline::worker_config`].
    pub async fn start_worker(&self, id: &str) -> RunningApp {
        start_worker(self.worker_config(id)).await
    }
}

/// Builds and runs a coordinator in-process.
pub async fn start_coordinator(config: coordinator::app::Config) -> RunningApp {
    let app = coordinator::app::App::build(config)
        .await
        .expect("build the coordinator");
    let (addr, shutdown) = (app.local_addr(), app.shutdown_token());
    let task = tokio::spawn(async move {
        app.run_until_stopped().await.expect("the coordinator");
    });
    RunningApp {
        addr,
        shutdown,
        task: Some(task),
    }
}

/// Builds and runs a worker in-process.
pub async fn start_worker(config: worker::config::Config) -> RunningApp {
    let app = worker::app::App::build(config)
        .await
        .expect("build the worker");
    let (addr, shutdown) = (app.local_addr(), app.shutdown_token());
    let task = tokio::spawn(app.run_until_stopped());
    RunningApp {
        addr,
        shutdown,
        task: Some(task),
    }
}
