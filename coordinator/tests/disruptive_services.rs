//! Service outages in the middle of a batch (tests named "disruptive" run
//! alone, after the rest): Redis stopped (it only accelerates, PostgreSQL
//! decides), and RabbitMQ restarted (workers and coordinator reconnect;
//! unacked jobs come back; duplicates are harmless).

use std::process::Command;
use std::time::Duration;

use testkit::*;

const MIB: usize = 1 << 20;

fn redis_up() -> bool {
    Command::new("redis-cli")
        .arg("ping")
        .output()
        .map(|o| o.status.success() && o.stdout.starts_with(b"PONG"))
        .unwrap_or(false)
}

fn start_redis() {
    if redis_up() {
        return;
    }
    let status = Command::new("redis-server")
        .args([
            "--daemonize",
            "yes",
            "--bind",
            "127.0.0.1",
            "-::1",
            "--port",
            "6379",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            "/var/lib/redis",
            "--logfile",
            "/var/log/redis/ci.log",
        ])
        .status()
        .expect("start redis-server");
    assert!(status.success());
    for _ in 0..50 {
        if redis_up() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("redis did not come back");
}

/// Restarts Redis / RabbitMQ even when the test fails.
struct Restore(fn());

impl Drop for Restore {
    fn drop(&mut self) {
        (self.0)();
    }
}

fn start_rabbit_app() {
    let _ = Command::new("rabbitmqctl").arg("start_app").output();
    let _ = Command::new("rabbitmqctl")
        .args(["await_startup", "--timeout", "60"])
        .output();
}

async fn batch(p: &Pipeline, prefix: &str, n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let mut batch = Batch::default();
    for i in 0..n {
        let size = if i % 5 == 0 {
            9 * MIB + i
        } else {
            200_000 + i * 4099
        };
        let id = format!("{prefix}{i}");
        let (name, dest) = (format!("{id}.bin"), format!("{prefix}/{i}.bin"));
        batch
            .add(p, &id, &name, &dest, size, 900 + i as u64)
            .part_size = Some(4 << 20);
    }
    p.submit(&batch.requests).await;
    (batch.ids(), batch.expected)
}

async fn assert_all_correct(p: &Pipeline, ids: &[String], expected: &[(String, String)]) {
    let sessions = p.wait_finished(ids, Duration::from_secs(400)).await;
    assert_eq!(sessions.len(), ids.len());
    assert_all_completed(&sessions);
    for (dest, md5) in expected {
        assert_eq!(&md5_file(&p.mount_path(dest)), md5, "{dest}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_redis_stopped_during_a_batch_still_completes_correctly() {
    let p = Pipeline::new("noredis").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "4")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "4")]);
    let (ids, expected) = batch(&p, "r", 40).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restore = Restore(start_redis);
    let _ = Command::new("redis-cli")
        .args(["shutdown", "nosave"])
        .output();
    assert!(!redis_up(), "redis still up");
    // Half the batch or more runs without Redis.
    tokio::time::sleep(Duration::from_secs(6)).await;
    start_redis();
    assert_all_correct(&p, &ids, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disruptive_rabbitmq_restarted_during_a_batch_reconnects_and_finishes() {
    let p = Pipeline::new("rabbitrestart").await;
    p.spawn_coordinator(&[]);
    p.spawn_worker("w1", &[("WORKER_CONCURRENCY", "4")]);
    p.spawn_worker("w2", &[("WORKER_CONCURRENCY", "4")]);
    let (ids, expected) = batch(&p, "q", 40).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let _restore = Restore(start_rabbit_app);
    let out = Command::new("rabbitmqctl")
        .arg("stop_app")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    start_rabbit_app();
    assert_all_correct(&p, &ids, &expected).await;
}
