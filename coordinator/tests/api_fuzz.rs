//! A fuzz run of the HTTP API against the real services: 10,000 requests of
//! random and boundary JSON for every field of the request bodies (wrong
//! types, huge and negative numbers, unicode, control and bidi characters,
//! deep nesting, very long strings, missing and unknown fields, broken JSON,
//! batches of such items), sent to the real API served in-process (see
//! `testkit::TestApi`) with a private PostgreSQL database and MooseFS root.
//!
//! It asserts: no 5xx, no panic, no dropped connection; every 4xx is a
//! problem document; and nothing exists for rejected input: the sessions in
//! the database are exactly the ones the API answered "created" for, every
//! outbox row belongs to one of them, and the MooseFS root is still empty.
//! The seed is printed; `API_FUZZ_SEED` replays a run, `API_FUZZ_REQUESTS`
//! changes the count.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use coordinator::api::Auth;
use coordinator::auth::ApiTokens;
use coordinator::server::HttpLimits;
use futures::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use testkit::{PrivateDb, TestApi};

const TOKEN: &str = "fuzz-token-0123456789";
/// Requests in flight at once.
const PARALLEL: usize = 16;
/// The whole run must finish within this (CI budget: 2 minutes).
const TIME_BOUND: Duration = Duration::from_secs(120);

fn env_u64(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.parse().ok())
}

/// The generator: valid sources and a run prefix, plus the seeded RNG.
struct Gen {
    rng: StdRng,
    prefix: String,
    sources: Vec<String>,
    foreign_dir: String,
}

/// Integers at and around every boundary a field may have.
const BOUNDARY_INTS: &[i128] = &[
    0,
    1,
    2,
    3,
    9,
    10,
    255,
    256,
    999,
    1000,
    1001,
    65535,
    65536,
    65537,
    131072,
    4 << 20,
    64 << 20,
    (64 << 20) + 1,
    5 << 30,
    (5 << 30) + 65536,
    i32::MAX as i128,
    i32::MAX as i128 + 1,
    u32::MAX as i128,
    u32::MAX as i128 + 1,
    1 << 40,
    1 << 53,
    (1 << 53) + 1,
    i64::MAX as i128 - 65535,
    i64::MAX as i128,
    i64::MAX as i128 + 1,
    u64::MAX as i128,
    u64::MAX as i128 + 1,
    -1,
    -65536,
    i32::MIN as i128,
    i64::MIN as i128,
    i64::MIN as i128 - 1,
];

impl Gen {
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.rng.random_range(0..items.len())]
    }

    fn number(&mut self) -> Value {
        match self.rng.random_range(0..6) {
            0..=2 => {
                let n = *self.pick(BOUNDARY_INTS);
                // Beyond u64/i64: sent as a raw JSON number below.
                serde_json::from_str(&n.to_string()).unwrap_or(Value::Null)
            }
            3 => json!(self.rng.random::<u64>() >> self.rng.random_range(0..64)),
            4 => json!(-(self.rng.random::<i64>().abs() >> self.rng.random_range(0..63))),
            _ => self
                .pick(&[
                    json!(1.5),
                    json!(-0.0),
                    json!(1e308),
                    json!(-1e308),
                    json!(65536.0),
                    json!(3.0),
                ])
                .clone(),
        }
    }

    fn string(&mut self) -> String {
        let pieces = [
            "",
            " ",
            "a",
            "é",
            "𝔘𝔫𝔦",
            "日本語",
            "\u{202e}evil",
            "\u{200f}",
            "\u{2066}x\u{2069}",
            "\u{0}",
            "\u{1}",
            "\n",
            "\r\n",
            "\t",
            "\u{7f}",
            "\u{85}",
            "\u{feff}",
            "..",
            ".",
            "/",
            "//",
            "a/../..",
            "../x",
            "%2e%2e",
            "\\",
            "?",
            "#",
            "*",
            "'",
            "\"",
            "%00",
            "~",
            ".mfs-ingest",
            "CON",
            "\u{fffd}",
            "\u{10ffff}",
            "\u{d7ff}",
        ];
        let mut s = String::new();
        for _ in 0..self.rng.random_range(1..6) {
            let piece = *self.pick(&pieces[..]);
            s.push_str(piece);
        }
        match self.rng.random_range(0..12) {
            0 => s.push_str(&"x".repeat(*self.pick(&[255, 256, 1024, 4096, 70_000]))),
            1 => s.push_str(&"d/".repeat(*self.pick(&[100, 1000, 5000]))),
            2 => s.push_str(&"é".repeat(200)),
            _ => {}
        }
        s
    }

    fn nested(&mut self) -> Value {
        let depth = *self.pick(&[2usize, 64, 127, 128, 129, 300]);
        let mut v = json!(1);
        for _ in 0..depth {
            v = if self.rng.random_bool(0.5) {
                json!([v])
            } else {
                json!({ "a": v })
            };
        }
        v
    }

    /// Any JSON value, of any type.
    fn any(&mut self) -> Value {
        match self.rng.random_range(0..9) {
            0 => Value::Null,
            1 => json!(self.rng.random_bool(0.5)),
            2 | 3 => self.number(),
            4 | 5 => json!(self.string()),
            6 => json!([]),
            7 => json!({}),
            _ => self.nested(),
        }
    }

    fn md5(&mut self) -> Value {
        match self.rng.random_range(0..5) {
            0 => json!("0123456789abcdef0123456789ABCDEF"),
            1 => json!("g".repeat(32)),
            2 => json!("0".repeat(self.rng.random_range(0..70))),
            _ => self.any(),
        }
    }

    fn source(&mut self) -> Value {
        match self.rng.random_range(0..8) {
            0 => json!(format!(
                "{}/missing-{}.bin",
                self.foreign_dir,
                self.rng.random::<u16>()
            )),
            1 => json!(*self.pick(&[
                "file:///etc/passwd",
                "file:///proc/self/environ",
                "file://",
                "file:///",
                "ftp://127.0.0.1/x",
                "http://",
                "http://[::1",
                "data:,hello",
                "not a url",
                "file:///var/tmp/mfs-ingest/sources/../../../etc/hostname",
            ])),
            2 => {
                let s = self.pick(&self.sources.clone()).clone();
                json!(format!("{s}{}", self.string()))
            }
            3 => self.any(),
            _ => json!(self.pick(&self.sources.clone()).clone()),
        }
    }

    fn dest(&mut self, n: u64) -> Value {
        match self.rng.random_range(0..4) {
            0 => json!(self.string()),
            1 => self.any(),
            _ => json!(format!("f/{n}.bin")),
        }
    }

    fn field(&mut self, key: &str, n: u64) -> Value {
        match key {
            "request_id" => match self.rng.random_range(0..3) {
                0 => {
                    let tail = self.string();
                    json!(format!("{}-{n}{tail}", self.prefix))
                }
                _ => self.any(),
            },
            "source" => self.source(),
            "dest" => self.dest(n),
            "md5" => self.md5(),
            "goal" => {
                if self.rng.random_bool(0.5) {
                    json!(self.rng.random_range(0..12))
                } else {
                    self.any()
                }
            }
            "overwrite" => self.any(),
            _ => self.number(),
        }
    }

    /// One request: valid, then 0 to 3 fields changed, removed or added.
    fn request(&mut self, n: u64) -> Value {
        let mut obj = Map::new();
        obj.insert("request_id".into(), json!(format!("{}-{n}", self.prefix)));
        obj.insert(
            "source".into(),
            json!(self.pick(&self.sources.clone()).clone()),
        );
        obj.insert("dest".into(), json!(format!("f/{n}.bin")));
        let keys = [
            "request_id",
            "source",
            "dest",
            "size",
            "md5",
            "crc32c",
            "goal",
            "overwrite",
            "part_size",
        ];
        for _ in 0..self.rng.random_range(0..4) {
            let key = *self.pick(&keys);
            match self.rng.random_range(0..10) {
                0 => {
                    obj.remove(key);
                }
                1 => {
                    obj.insert(self.string(), self.any());
                }
                _ => {
                    let value = self.field(key, n);
                    obj.insert(key.into(), value);
                }
            }
        }
        Value::Object(obj)
    }

    /// A raw body that is not a valid request document.
    fn raw_body(&mut self, n: u64) -> Vec<u8> {
        let valid = self.request(n).to_string();
        match self.rng.random_range(0..7) {
            0 => valid.as_bytes()[..self.rng.random_range(0..valid.len())].to_vec(),
            1 => format!("{valid}{valid}").into_bytes(),
            2 => "[".repeat(self.rng.random_range(1..20_000)).into_bytes(),
            3 => {
                let mut b = valid.into_bytes();
                let i = self.rng.random_range(0..b.len());
                b[i] = *self.pick(&[0xff, 0xc3, 0x00, 0x80]);
                b
            }
            4 => Vec::new(),
            5 => json!([self.request(n)]).to_string().into_bytes(),
            _ => self.any().to_string().into_bytes(),
        }
    }
}

/// What one request did.
#[derive(Default)]
struct Tally {
    created: Vec<String>,
    statuses: Vec<u16>,
    failures: Vec<String>,
}

fn check_problem(status: u16, content_type: &str, body: &[u8], what: &str) -> Result<(), String> {
    if content_type != "application/problem+json" {
        return Err(format!(
            "{what}: {status} with content type {content_type:?}"
        ));
    }
    let doc: Value = serde_json::from_slice(body)
        .map_err(|e| format!("{what}: {status} body is not JSON: {e}"))?;
    let members = ["type", "title", "detail"]
        .iter()
        .all(|k| doc[k].is_string());
    if !members || doc["status"] != status {
        return Err(format!("{what}: malformed problem document {doc}"));
    }
    Ok(())
}

/// Sends one request; records what was created and any broken rule.
async fn send(
    api: &TestApi,
    n: u64,
    kind: u8,
    path: String,
    body: Vec<u8>,
    content_type: &str,
) -> Tally {
    let what = format!(
        "#{n} {path} {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    let mut tally = Tally::default();
    let request = if kind == 2 {
        api.http.get(api.url(&path))
    } else {
        api.http
            .post(api.url(&path))
            .header("content-type", content_type)
            .body(body)
    };
    let resp = match request.bearer_auth(TOKEN).send().await {
        Ok(resp) => resp,
        Err(e) => {
            tally.failures.push(format!(
                "{what}: no response ({e}): a panic or a dropped connection"
            ));
            return tally;
        }
    };
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let bytes = resp.bytes().await.unwrap_or_default();
    tally.statuses.push(status);
    if status >= 500 {
        tally.failures.push(format!(
            "{what}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    } else if status >= 400 {
        if let Err(e) = check_problem(status, &content_type, &bytes, &what) {
            tally.failures.push(e);
        }
    } else if kind == 0 && status == 201 {
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        tally
            .created
            .push(doc["id"].as_str().unwrap_or_default().to_string());
    } else if kind == 1 && status == 200 {
        let doc: Value = serde_json::from_slice(&bytes).unwrap_or_default();
        for item in doc["items"].as_array().into_iter().flatten() {
            if item["created"] == true {
                tally
                    .created
                    .push(item["id"].as_str().unwrap_or_default().to_string());
            }
            let item_status = item["error"]["status"].as_u64().unwrap_or(0);
            if item_status >= 500 {
                tally.failures.push(format!("{what}: batch item {item}"));
            }
        }
    }
    tally
}

/// Builds request `n`: (kind 0 upload / 1 batch / 2 get / 3 other post, path, body, content type).
fn build(g: &mut Gen, n: u64) -> (u8, String, Vec<u8>, &'static str) {
    let json_type = "application/json";
    match g.rng.random_range(0..100) {
        0..=59 => (
            0,
            "/v1/uploads".into(),
            g.request(n).to_string().into_bytes(),
            json_type,
        ),
        60..=74 => (0, "/v1/uploads".into(), g.raw_body(n), json_type),
        75..=87 => {
            let count = *g.pick(&[0usize, 1, 2, 5, 20]);
            let items: Vec<Value> = (0..count)
                .map(|i| {
                    if g.rng.random_bool(0.8) {
                        g.request(n * 100 + i as u64)
                    } else {
                        g.any()
                    }
                })
                .collect();
            let body = if g.rng.random_bool(0.9) {
                json!({ "items": items })
            } else {
                json!({ "items": g.any() })
            };
            (
                1,
                "/v1/batches".into(),
                body.to_string().into_bytes(),
                json_type,
            )
        }
        88..=93 => {
            let id = match g.rng.random_range(0..3) {
                0 => uuid::Uuid::new_v4().to_string(),
                1 => "00000000-0000-0000-0000-000000000000".into(),
                _ => urlencode(&g.string()),
            };
            (2, format!("/v1/uploads/{id}"), Vec::new(), json_type)
        }
        94..=96 => {
            let id = if g.rng.random_bool(0.5) {
                uuid::Uuid::new_v4().to_string()
            } else {
                urlencode(&g.string())
            };
            (
                3,
                format!("/v1/uploads/{id}/abort"),
                g.any().to_string().into_bytes(),
                json_type,
            )
        }
        _ => {
            let ct = *g.pick(&[
                "text/plain",
                "",
                "application/json; charset=latin1",
                "multipart/form-data",
            ]);
            (
                0,
                "/v1/uploads".into(),
                g.request(n).to_string().into_bytes(),
                ct,
            )
        }
    }
}

/// Every `session_id` string anywhere in an outbox payload.
fn session_ids(v: &Value) -> Vec<&str> {
    match v {
        Value::Object(m) => m
            .iter()
            .flat_map(|(k, v)| match (k.as_str(), v.as_str()) {
                ("session_id", Some(id)) => vec![id],
                _ => session_ids(v),
            })
            .collect(),
        Value::Array(a) => a.iter().flat_map(session_ids).collect(),
        _ => Vec::new(),
    }
}

fn urlencode(s: &str) -> String {
    s.bytes().take(2000).map(|b| format!("%{b:02X}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_random_requests_find_no_5xx_and_create_nothing_for_rejected_input() {
    let panics = Arc::new(AtomicU64::new(0));
    let counted = panics.clone();
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        counted.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    let seed = env_u64("API_FUZZ_SEED").unwrap_or_else(rand::random);
    let total = env_u64("API_FUZZ_REQUESTS").unwrap_or(10_000);
    eprintln!("api fuzz: seed {seed} (API_FUZZ_SEED={seed} replays it), {total} requests");

    let mut place = TestApi::prepare("api-fuzz");
    let db = PrivateDb::create("api_fuzz").await;
    place.args.database_url = db.url.clone();
    let ingest = place
        .args
        .ingest("api fuzz", 16)
        .await
        .expect("PostgreSQL and MooseFS");
    let mut tokens = ApiTokens::default();
    tokens.add_plain("test", "fuzz", TOKEN).unwrap();
    let limits = HttpLimits::default();
    let mut api = TestApi::start_with(ingest, place, Auth::Tokens(tokens), limits).await;
    api.abort_open_sessions = false;
    let source_urls = vec![
        api.source("small.bin", 1000),
        api.source("empty.bin", 0),
        api.source("exact.bin", 65536),
        api.source("mid.bin", 200 << 20),
        api.source("large.bin", 1 << 30),
    ];
    let mut g = Gen {
        rng: StdRng::seed_from_u64(seed),
        prefix: format!("fuzz-{seed:x}"),
        foreign_dir: api.source_prefix().trim_end_matches('/').to_string(),
        sources: source_urls,
    };
    let requests: Vec<_> = (0..total).map(|n| (n, build(&mut g, n))).collect();

    let started = Instant::now();
    let tallies: Vec<Tally> = futures::stream::iter(requests)
        .map(|(n, (kind, path, body, ct))| {
            let api = &api;
            async move { send(api, n, kind, path, body, ct).await }
        })
        .buffer_unordered(PARALLEL)
        .collect()
        .await;
    let took = started.elapsed();
    let checks_started = Instant::now();

    let mut created = HashSet::new();
    let mut failures = Vec::new();
    let mut by_class = [0u64; 6];
    for t in tallies {
        created.extend(t.created);
        failures.extend(t.failures);
        for s in t.statuses {
            by_class[(s / 100) as usize] += 1;
        }
    }
    eprintln!(
        "api fuzz: {total} requests in {took:?}: 2xx {}, 4xx {}, 5xx {}; {} sessions created",
        by_class[2],
        by_class[4],
        by_class[5],
        created.len()
    );
    assert_eq!(
        panics.load(Ordering::SeqCst),
        0,
        "seed {seed}: a panic happened"
    );
    assert!(took < TIME_BOUND, "the run took {took:?}");

    // Nothing exists for rejected input.
    let pool = &api.ingest.store.pool;
    let sessions: Vec<String> = sqlx::query_scalar("SELECT id::text FROM upload_sessions")
        .fetch_all(pool)
        .await
        .unwrap();
    let sessions: HashSet<String> = sessions.into_iter().collect();
    if sessions != created {
        failures.push(format!(
            "sessions in the database that were not answered created: {:?}; answered created but absent: {:?}",
            sessions.difference(&created).collect::<Vec<_>>(),
            created.difference(&sessions).collect::<Vec<_>>()
        ));
    }
    let payloads: Vec<Value> = sqlx::query_scalar("SELECT payload FROM outbox")
        .fetch_all(pool)
        .await
        .unwrap();
    let stray = payloads
        .iter()
        .filter(|p| {
            let ids = session_ids(p);
            ids.is_empty() || ids.iter().any(|id| !sessions.contains(*id))
        })
        .count();
    if stray != 0 {
        failures.push(format!("{stray} outbox rows of no created session"));
    }
    let (root, _) = api.ingest.mfs.resolve(&api.mfs_root).await.unwrap();
    let entries = api.ingest.mfs.readdir(root).await.unwrap();
    let names: Vec<_> = entries
        .iter()
        .map(|e| e.name.to_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    if !names.is_empty() {
        failures.push(format!(
            "MooseFS entries appeared under the root: {names:?}"
        ));
    }
    eprintln!(
        "api fuzz: consistency checks took {:?}",
        checks_started.elapsed()
    );
    let count = failures.len();
    failures.sort();
    failures.truncate(40);
    assert!(
        failures.is_empty(),
        "seed {seed}: {count} broken rules, first ones:\n{}",
        failures.join("\n")
    );
}
