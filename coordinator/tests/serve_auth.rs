//! Authentication of the real `coordinator serve` binary, on a private
//! pipeline (its own database, vhost and MooseFS root; see
//! `testkit::Pipeline`): it refuses to start without a token unless
//! `--insecure-no-auth` is given, accepts several named tokens (stored as
//! SHA-256 digests, from the environment and from a file), and logs each
//! mutating request with the token's name, never the token.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
use sha2::{Digest, Sha256};
use testkit::*;

const AUTH_VARS: [&str; 3] = [
    "INGEST_API_TOKEN",
    "INGEST_API_TOKENS",
    "INGEST_API_TOKENS_FILE",
];

fn sha256_hex(token: &str) -> String {
    Sha256::digest(token.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn log_path(p: &Pipeline) -> PathBuf {
    PathBuf::from(format!(
        "/var/tmp/mfs-ingest/test-logs/{}-coordinator.log",
        p.tag
    ))
}

/// Waits for the "HTTP API listening" line of the coordinator's log.
fn listening_addr(p: &Pipeline, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let log = std::fs::read_to_string(log_path(p)).unwrap_or_default();
        if let Some(line) = log.lines().find(|l| l.contains("HTTP API listening")) {
            let addr = line.split("addr=").nth(1).unwrap();
            return addr.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "the coordinator did not listen in {limit:?}: {log}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `coordinator serve` with these settings and no others of the auth
/// family; returns (exit status, stderr) once it has exited (bounded).
fn serve_expecting_exit(p: &Pipeline, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let coordinator = PathBuf::from(env!("CARGO_BIN_EXE_coordinator"));
    let mut cmd = Command::new(coordinator);
    cmd.arg("serve").args(args).envs(p.env());
    for var in AUTH_VARS {
        cmd.env_remove(var);
    }
    let mut child = cmd
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "`coordinator serve {args:?}` with {env:?} kept running: it should refuse to start"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    (status.code().unwrap_or(-1), stderr)
}

#[tokio::test]
async fn serve_refuses_to_start_without_a_token() {
    let p = Pipeline::new("noauth").await;
    let (code, stderr) = serve_expecting_exit(&p, &[], &[]);
    assert_ne!(code, 0, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("--insecure-no-auth") && stderr.contains("INGEST_API_TOKENS"),
        "{stderr}"
    );
    // Malformed token settings are refused too, without echoing them.
    for (var, value) in [
        ("INGEST_API_TOKENS", "alice"),
        ("INGEST_API_TOKENS", "alice:not-a-digest"),
        (
            "INGEST_API_TOKENS",
            "bad name:0000000000000000000000000000000000000000000000000000000000000000",
        ),
        ("INGEST_API_TOKENS_FILE", "/nonexistent/tokens"),
    ] {
        let (code, stderr) = serve_expecting_exit(&p, &[], &[(var, value)]);
        assert_ne!(code, 0, "{var}={value}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{var}={value}: {stderr}");
        assert!(!stderr.contains("not-a-digest"), "{stderr}");
    }
    // With the explicit flag it starts, open, and says so.
    p.spawn(
        "coordinator",
        "coordinator",
        &["serve", "--insecure-no-auth"],
        &[],
    );
    let addr = listening_addr(&p, Duration::from_secs(30));
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "http://{addr}/v1/uploads/00000000-0000-0000-0000-000000000000"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), reqwest::StatusCode::NOT_FOUND);
    let log = std::fs::read_to_string(log_path(&p)).unwrap();
    assert!(log.contains("WITHOUT authentication"), "{log}");
}

#[tokio::test]
async fn named_tokens_are_accepted_and_logged_by_name() {
    let p = Pipeline::new("tokens").await;
    let (alice, bob, legacy) = ("alice-s3cret-0001", "bob-s3cret-0002", "legacy-s3cret-0003");
    let tokens_file = p.src_dir.join("tokens.conf");
    std::fs::write(
        &tokens_file,
        format!("# API tokens\n\nbob:{}\n", sha256_hex(bob)),
    )
    .unwrap();
    let list = format!(
        "alice:{},carol:{}",
        sha256_hex(alice),
        sha256_hex("carol-unused")
    );
    p.spawn(
        "coordinator",
        "coordinator",
        &["serve"],
        &[
            ("INGEST_API_TOKENS", &list),
            ("INGEST_API_TOKENS_FILE", tokens_file.to_str().unwrap()),
            ("INGEST_API_TOKEN", legacy),
        ],
    );
    let addr = listening_addr(&p, Duration::from_secs(30));
    let http = reqwest::Client::new();
    let (src, _) = p.source("a.bin", 100, 1);
    for (i, (token, name)) in [(alice, "alice"), (bob, "bob"), (legacy, "default")]
        .into_iter()
        .enumerate()
    {
        let body = json!({"request_id": format!("{}/r{i}", p.tag), "source": src,
            "dest": format!("t/{name}.bin")});
        let resp = http
            .post(format!("http://{addr}/v1/uploads"))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "{name}");
    }
    for wrong in [sha256_hex(alice).as_str(), "alice", "alice-s3cret-000", ""] {
        let resp = http
            .post(format!("http://{addr}/v1/uploads"))
            .bearer_auth(wrong)
            .json(&json!({"request_id": format!("{}/w", p.tag), "source": src, "dest": "w.bin"}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            reqwest::StatusCode::UNAUTHORIZED,
            "{wrong:?}"
        );
    }
    // Let the log lines land.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = std::fs::read_to_string(log_path(&p)).unwrap();
    for name in ["alice", "bob", "default"] {
        assert!(
            log.lines()
                .any(|l| l.contains(&format!("token={name}")) && l.contains("POST")),
            "no mutating request logged for {name}: {log}"
        );
    }
    for secret in [alice, bob, legacy] {
        assert!(!log.contains(secret), "a token is in the log: {log}");
    }
    assert!(!log.contains("WITHOUT authentication"), "{log}");
}
