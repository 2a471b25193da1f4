//! The real `coordinator serve` and `worker run` binaries as child
//! processes of a [`Pipeline`], for tests that need a process of their own
//! (to kill it, to read its log, to test its command line): started with
//! the pipeline's environment, named by a key, killed on drop. Logs go to
//! `/var/tmp/mfs-ingest/test-logs/<tag>-<key>.log`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::env::LOG_DIR;
use crate::pipeline::Pipeline;

/// A binary of the workspace (`coordinator`, `worker`), next to the test
/// executable's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let mut dir = exe.parent().expect("its directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built (run the tests for the whole workspace)",
        path.display()
    );
    path
}

impl Pipeline {
    /// The log file of the child `key`.
    pub fn log_path(&self, key: &str) -> PathBuf {
        PathBuf::from(LOG_DIR).join(format!("{}-{key}.log", self.tag))
    }

    /// Starts a process; `key` names it for [`Pipeline::kill`].
    pub fn spawn(&self, key: &str, binary: &str, args: &[&str], extra_env: &[(&str, &str)]) {
        std::fs::create_dir_all(LOG_DIR).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(key))
            .unwrap();
        let mut cmd = Command::new(self::binary(binary));
        // The API's authentication comes from the test, never from the
        // environment the tests run in.
        for var in [
            "INGEST_API_TOKEN",
            "INGEST_API_TOKENS",
            "INGEST_API_TOKENS_FILE",
        ] {
            cmd.env_remove(var);
        }
        cmd.args(args)
            .envs(self.env())
            .envs(
                extra_env
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string())),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = cmd.spawn().expect("spawn");
        self.children.lock().unwrap().insert(key.to_string(), child);
    }

    /// `coordinator serve --insecure-no-auth` with fast maintenance.
    pub fn spawn_coordinator(&self, extra_env: &[(&str, &str)]) {
        let mut env = vec![
            ("INGEST_MAINTENANCE_SECS", "1"),
            ("INGEST_STAGING_GRACE_SECS", "2"),
            ("INGEST_PART_STALE_SECS", "20"),
        ];
        env.extend_from_slice(extra_env);
        // The pipeline tests do not use the HTTP API; it listens on loopback.
        self.spawn(
            "coordinator",
            "coordinator",
            &["serve", "--insecure-no-auth"],
            &env,
        );
    }

    /// `worker run` named `key` (its WORKER_ID) with 10 s leases.
    pub fn spawn_worker(&self, key: &str, extra_env: &[(&str, &str)]) {
        let mut env = vec![("WORKER_ID", key), ("WORKER_LEASE_SECS", "10")];
        env.extend_from_slice(extra_env);
        self.spawn(key, "worker", &["run"], &env);
    }

    /// Takes the child `key` out of the pipeline's care and sends it `signal`.
    fn signal(&self, key: &str, signal: &str) -> Child {
        let child = self
            .children
            .lock()
            .unwrap()
            .remove(key)
            .expect("known child");
        let _ = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status();
        child
    }

    /// Sends `signal` (e.g. "KILL", "TERM") to a child and reaps it.
    pub fn kill(&self, key: &str, signal: &str) {
        let _ = self.signal(key, signal).wait();
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit.
    pub fn terminate(&self, key: &str, limit: Duration) -> std::process::ExitStatus {
        let mut child = self.signal(key, "TERM");
        let deadline = std::time::Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{key} did not exit within {limit:?} after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills and reaps every child still running.
    pub(crate) fn kill_all(&self) {
        for (_, mut child) in self.children.lock().unwrap().drain() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
