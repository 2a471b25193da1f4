//! Tests of the coordinator's HTTP API against the real services: PostgreSQL
//! (`DATABASE_URL`) and the MooseFS cluster (`MFS_MASTER`). RabbitMQ is not
//! needed: no relay and no worker run, so created sessions stay `open` with no
//! part committed, and their outbox rows simply wait.
//!
//! Every test serves the router (`testkit::TestApi`) on 127.0.0.1:0 with sources in a temp dir of
//! its own under /var/tmp/mfs-ingest/sources/ and a MooseFS root of its own,
//! `/tests/api-<pid>-<random>` (trash time 0). A guard aborts the sessions the
//! test left open and removes both directories, also when the test panics.

mod origin_support;

use std::time::Duration;

use coordinator::api::Auth;
use coordinator::auth::ApiTokens;
use coordinator::server::HttpLimits;
use moosefs::{ClientConfig, MfsClient, Name};
use reqwest::StatusCode;
use serde_json::{json, Value};
use shared::ingest::Ingest;
use shared::store::Store;
use testkit::api::ApiPlace;
use testkit::TestApi;
use uuid::Uuid;

const MIB: u64 = 1 << 20;

fn request_id() -> String {
    format!("api-test-{}", Uuid::new_v4())
}

/// An API with its own sources and MooseFS root; with a `token`, /v1/*
/// wants it and the test's requests send it.
async fn start(token: Option<&str>) -> TestApi {
    start_with(token, &[]).await
}

/// An API whose `http(s)://` sources may name these hosts (whatever
/// their addresses); none: only hosts with public addresses.
async fn start_with(token: Option<&str>, http_source_hosts: &[&str]) -> TestApi {
    let mut place = TestApi::prepare("api");
    place.args.http_source_hosts = http_source_hosts.iter().map(|h| h.to_string()).collect();
    let ingest = place
        .args
        .ingest("mfs-ingest coordinator api tests", 4)
        .await
        .expect("PostgreSQL and MooseFS (is `scripts/stack up` running?)");
    let auth = match token {
        Some(t) => {
            let mut tokens = ApiTokens::default();
            tokens.add_plain("test", "default", t).unwrap();
            Auth::Tokens(tokens)
        }
        None => Auth::Open,
    };
    let mut api = TestApi::start_with(ingest, place, auth, HttpLimits::default()).await;
    api.token = token.map(str::to_string);
    api
}

/// A second open API on `store` and `mfs` (one of them down), sharing
/// `up`'s root and settings; it leaves the root to `up`.
async fn serve_beside(up: &TestApi, store: Store, mfs: MfsClient) -> TestApi {
    let ingest = Ingest {
        cfg: up.ingest.cfg.clone(),
        store,
        mfs,
        dirs: Default::default(),
        write_budget: Default::default(),
    };
    let place = ApiPlace {
        args: up.args.clone(),
        sources: TestApi::source_dir("api"),
        mfs_root: up.mfs_root.clone(),
    };
    let mut api = TestApi::serve(ingest, place, Auth::Open, HttpLimits::default()).await;
    api.owns_root = false;
    api
}

/// Checks an error response: status, problem+json, the four members.
async fn problem(resp: reqwest::Response, status: StatusCode, case: &str) -> Value {
    let got = resp.status();
    let content_type = resp
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{case}: unexpected status; body {text}");
    assert_eq!(
        content_type, "application/problem+json",
        "{case}: content type; body {text}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    for key in ["type", "title", "detail"] {
        assert!(body[key].is_string(), "{case}: {key} missing in {body}");
    }
    assert_eq!(body["status"], status.as_u16(), "{case}: {body}");
    body
}

async fn json_body(resp: reqwest::Response, status: StatusCode, case: &str) -> Value {
    let got = resp.status();
    let text = resp.text().await.unwrap();
    assert_eq!(got, status, "{case}: unexpected status; body {text}");
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn create_then_repeat_returns_the_same_session() {
    let api = start(None).await;
    let rid = request_id();
    let source = api.source("one.bin", 1000);
    let req = json!({"request_id": rid, "source": source, "dest": "a/one.bin", "size": 1000});

    let resp = api.post("/v1/uploads", &req).await;
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .map(|v| v.to_str().unwrap().to_string());
    let first = json_body(resp, StatusCode::CREATED, "create").await;
    let id = first["id"].as_str().unwrap().to_string();
    assert_eq!(
        location.as_deref(),
        Some(format!("/v1/uploads/{id}").as_str())
    );
    assert_eq!(first["request_id"], rid);
    assert_eq!(first["state"], "open");
    assert_eq!(first["dest"], "a/one.bin");
    assert_eq!(first["source"], source);
    assert_eq!(first["size"], 1000);
    assert_eq!(first["part_count"], 1);
    assert_eq!(first["goal"], api.args.default_goal);
    assert_eq!(first["parts"]["total"], 1);
    assert_eq!(first["parts"]["committed"], 0);
    assert!(first["finished_at"].is_null());

    let again = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::OK,
        "repeat",
    )
    .await;
    assert_eq!(again["id"], id.as_str());
    assert_eq!(again["state"], "open");
    assert_eq!(api.sessions_with_request_id(&rid).await, 1);

    // The same request id for something else is a conflict, not a new session.
    let other = json!({"request_id": rid, "source": source, "dest": "a/other.bin"});
    let p = problem(
        api.post("/v1/uploads", &other).await,
        StatusCode::CONFLICT,
        "reuse",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains(&id), "{p}");
    assert_eq!(api.sessions_with_request_id(&rid).await, 1);
    assert_eq!(api.sessions_from_my_sources().await, 1);
}

#[tokio::test]
async fn status_shows_every_part() {
    let api = start(None).await;
    let rid = request_id();
    let size = 130 * MIB;
    let req = json!({
        "request_id": rid,
        "source": api.source("big.bin", size),
        "dest": "big.bin",
        "goal": 2,
        "md5": "0123456789ABCDEF0123456789abcdef",
        "crc32c": 305419896u32,
    });
    let created = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::CREATED,
        "create",
    )
    .await;
    let id = created["id"].as_str().unwrap();

    let view = json_body(
        api.get(&format!("/v1/uploads/{id}")).await,
        StatusCode::OK,
        "get",
    )
    .await;
    assert_eq!(view["id"], id);
    assert_eq!(view["request_id"], rid);
    assert_eq!(view["state"], "open");
    assert_eq!(view["size"], size);
    assert_eq!(view["part_size"], 64 * MIB);
    assert_eq!(view["part_count"], 3);
    assert_eq!(view["goal"], 2);
    assert_eq!(view["expected_md5"], "0123456789abcdef0123456789abcdef");
    assert_eq!(view["expected_crc32c"], 305419896u32);
    assert!(view["md5"].is_null() && view["crc32c"].is_null() && view["error"].is_null());
    assert!(view["created_at"].is_string());
    assert!(view["finished_at"].is_null());
    let parts = &view["parts"];
    assert_eq!(parts["total"], 3);
    assert_eq!(parts["committed"], 0);
    let items = parts["items"].as_array().unwrap();
    let expected = [
        (0, 0, 64 * MIB),
        (1, 64 * MIB, 64 * MIB),
        (2, 128 * MIB, 2 * MIB),
    ];
    assert_eq!(items.len(), 3);
    for (item, (number, offset, size)) in items.iter().zip(expected) {
        assert_eq!(item["part_number"], number, "{item}");
        assert_eq!(item["offset"], offset, "{item}");
        assert_eq!(item["size"], size, "{item}");
        assert_eq!(item["attempts"], 0, "{item}");
        assert_eq!(item["committed"], false, "{item}");
        assert!(item["worker"].is_null(), "{item}");
    }

    // Unknown and malformed ids.
    let unknown = Uuid::new_v4();
    let p = problem(
        api.get(&format!("/v1/uploads/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "unknown id",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains(&unknown.to_string()));
    problem(
        api.get("/v1/uploads/not-a-uuid").await,
        StatusCode::BAD_REQUEST,
        "malformed id",
    )
    .await;
}

#[tokio::test]
async fn batch_items_are_independent() {
    let api = start(None).await;
    let (r1, r2, r3, r4) = (request_id(), request_id(), request_id(), request_id());
    let batch = json!({"items": [
        {"request_id": r1, "source": api.source("b1.bin", 10), "dest": "b/1.bin"},
        {"request_id": r2, "source": api.source("b2.bin", 20), "dest": "b/2.bin", "size": 20},
        {"request_id": r3, "source": format!("{}missing.bin", api.source_prefix()), "dest": "b/3.bin"},
        {"request_id": r4, "source": api.source("b4.bin", 40), "dest": "b/4.bin", "goal": "three"},
    ]});
    let body = json_body(
        api.post("/v1/batches", &batch).await,
        StatusCode::OK,
        "batch",
    )
    .await;
    let items = body["items"].as_array().unwrap();
    assert_eq!(items.len(), 4, "{body}");
    for (item, rid) in items[..2].iter().zip([&r1, &r2]) {
        assert_eq!(item["request_id"], rid.as_str(), "{item}");
        assert_eq!(item["state"], "open", "{item}");
        assert_eq!(item["created"], true, "{item}");
        assert!(item.get("error").is_none(), "{item}");
        let id: Uuid = item["id"].as_str().unwrap().parse().unwrap();
        let stored = api.ingest.store.session(id).await.unwrap().unwrap();
        assert_eq!(&stored.request_id, rid);
    }
    assert_eq!(items[2]["request_id"], r3.as_str());
    assert_eq!(items[2]["error"]["status"], 422, "{}", items[2]);
    assert!(items[2]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("does not exist"));
    assert!(items[2].get("id").is_none());
    assert_eq!(items[3]["request_id"], r4.as_str());
    assert_eq!(items[3]["error"]["status"], 400, "{}", items[3]);
    assert!(items[3]["error"]["detail"]
        .as_str()
        .unwrap()
        .contains("invalid type"));
    for item in &items[2..] {
        for key in ["type", "title", "status", "detail"] {
            assert!(item["error"].get(key).is_some(), "{item}");
        }
    }
    api.assert_no_session(&r3, "batch: missing source").await;
    api.assert_no_session(&r4, "batch: wrong type").await;
    assert_eq!(api.sessions_from_my_sources().await, 2);

    // A repeated item finds its session.
    let again = json!({"items": [batch["items"][0].clone()]});
    let body = json_body(
        api.post("/v1/batches", &again).await,
        StatusCode::OK,
        "repeat",
    )
    .await;
    assert_eq!(body["items"][0]["id"], items[0]["id"]);
    assert_eq!(body["items"][0]["created"], false);
    assert_eq!(api.sessions_with_request_id(&r1).await, 1);

    // Whole-batch errors.
    problem(
        api.post("/v1/batches", &json!({"items": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "empty",
    )
    .await;
    let rid = request_id();
    let many: Vec<Value> = (0..1001)
        .map(|i| json!({"request_id": format!("{rid}-{i}"), "source": "file:///x", "dest": "x"}))
        .collect();
    problem(
        api.post("/v1/batches", &json!({ "items": many })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "1001 items",
    )
    .await;
    api.assert_no_session(&format!("{rid}-0"), "1001 items")
        .await;
    problem(
        api.post_raw("/v1/batches", "{\"items\": [", "application/json")
            .await,
        StatusCode::BAD_REQUEST,
        "bad JSON",
    )
    .await;
    problem(
        api.post("/v1/batches", &json!({"items": [], "x": 1})).await,
        StatusCode::BAD_REQUEST,
        "unknown field",
    )
    .await;
    problem(
        api.post("/v1/batches", &json!({"things": []})).await,
        StatusCode::BAD_REQUEST,
        "no items",
    )
    .await;
    assert_eq!(api.sessions_from_my_sources().await, 2);
}

#[tokio::test]
async fn abort_ends_an_open_session_once() {
    let api = start(None).await;
    let rid = request_id();
    let req =
        json!({"request_id": rid, "source": api.source("ab.bin", 100 * MIB), "dest": "ab.bin"});
    let created = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::CREATED,
        "create",
    )
    .await;
    let id = created["id"].as_str().unwrap();

    let aborted = json_body(
        api.post(&format!("/v1/uploads/{id}/abort"), &json!({}))
            .await,
        StatusCode::OK,
        "abort",
    )
    .await;
    assert_eq!(aborted["id"], id);
    assert_eq!(aborted["state"], "aborted");
    assert_eq!(aborted["error"], "aborted by request");
    assert!(aborted["finished_at"].is_string());
    assert_eq!(aborted["parts"]["total"], 2);

    let view = json_body(
        api.get(&format!("/v1/uploads/{id}")).await,
        StatusCode::OK,
        "get",
    )
    .await;
    assert_eq!(view["state"], "aborted");

    let p = problem(
        api.post(&format!("/v1/uploads/{id}/abort"), &json!({}))
            .await,
        StatusCode::CONFLICT,
        "abort again",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("aborted"), "{p}");
    let stored = api
        .ingest
        .store
        .session(id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.state, "aborted");
    assert_eq!(stored.error.as_deref(), Some("aborted by request"));

    // The same request id again shows the ended session; nothing new.
    let again = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::OK,
        "repeat",
    )
    .await;
    assert_eq!(again["id"], id);
    assert_eq!(again["state"], "aborted");
    assert_eq!(api.sessions_with_request_id(&rid).await, 1);

    problem(
        api.post(&format!("/v1/uploads/{}/abort", Uuid::new_v4()), &json!({}))
            .await,
        StatusCode::NOT_FOUND,
        "abort unknown",
    )
    .await;
    problem(
        api.post("/v1/uploads/nope/abort", &json!({})).await,
        StatusCode::BAD_REQUEST,
        "abort malformed id",
    )
    .await;
}

#[tokio::test]
async fn bearer_token_guards_the_v1_routes_only() {
    let mut api = start(Some("s3cret-token")).await;
    let rid = request_id();
    let req = json!({"request_id": rid, "source": api.source("auth.bin", 5), "dest": "auth.bin"});

    let no_token = api
        .http
        .post(api.url("/v1/uploads"))
        .json(&req)
        .send()
        .await
        .unwrap();
    let challenge = no_token
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .cloned();
    problem(no_token, StatusCode::UNAUTHORIZED, "no token").await;
    assert!(challenge.unwrap().to_str().unwrap().starts_with("Bearer"));

    for wrong in ["s3cret-tokeN", "s3cret-token-and-more", "s3cret", "x"] {
        let resp = api
            .http
            .post(api.url("/v1/uploads"))
            .bearer_auth(wrong)
            .json(&req)
            .send()
            .await
            .unwrap();
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .cloned();
        problem(resp, StatusCode::UNAUTHORIZED, wrong).await;
        assert!(challenge.unwrap().to_str().unwrap().starts_with("Bearer"));
    }
    let basic = api
        .http
        .post(api.url("/v1/uploads"))
        .basic_auth("user", Some("s3cret-token"))
        .json(&req)
        .send()
        .await
        .unwrap();
    problem(basic, StatusCode::UNAUTHORIZED, "basic auth").await;
    // Authentication comes before the body is looked at.
    let bad_body = api
        .http
        .post(api.url("/v1/uploads"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    problem(bad_body, StatusCode::UNAUTHORIZED, "no token, bad body").await;
    for path in [
        "/v1/uploads/00000000-0000-0000-0000-000000000000",
        "/v1/nothing-here",
    ] {
        let resp = api.http.get(api.url(path)).send().await.unwrap();
        problem(resp, StatusCode::UNAUTHORIZED, path).await;
    }
    api.assert_no_session(&rid, "unauthenticated").await;

    // The right token.
    let created = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::CREATED,
        "right token",
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    json_body(
        api.get(&format!("/v1/uploads/{id}")).await,
        StatusCode::OK,
        "get",
    )
    .await;
    let lower = api
        .http
        .get(api.url(&format!("/v1/uploads/{id}")))
        .header(reqwest::header::AUTHORIZATION, "bearer s3cret-token")
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), StatusCode::OK);

    // Probes and metrics need none.
    api.token = None;
    let health = api.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");
    assert_eq!(api.get("/readyz").await.status(), StatusCode::OK);
    assert_eq!(api.get("/metrics").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let api = start(None).await;
    let src = api.source("in.bin", 1000);
    let dir = src.rsplit_once('/').unwrap().0.to_string();
    // Every case gets a fresh request id in place of RID.
    let valid = json!({"request_id": "RID", "source": src, "dest": "in/ok.bin"});
    let with = |key: &str, value: Value| {
        let mut v = valid.clone();
        v[key] = value;
        v
    };
    let (bad, unprocessable) = (StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY);
    #[rustfmt::skip]
    let cases: Vec<(&str, Value, StatusCode, &str)> = vec![
        ("wrong type: size", with("size", json!("big")), bad, "invalid type"),
        ("wrong type: goal", with("goal", json!("3")), bad, "invalid type"),
        ("wrong type: goal beyond u8", with("goal", json!(300)), bad, "goal"),
        ("wrong type: overwrite", with("overwrite", json!("yes")), bad, "invalid type"),
        ("wrong type: negative size", with("size", json!(-1)), bad, "size"),
        ("wrong type: request_id", with("request_id", json!(7)), bad, "request_id"),
        ("missing field: dest", json!({"request_id": "RID", "source": src}), bad, "missing field `dest`"),
        ("missing field: source", json!({"request_id": "RID", "dest": "x"}), bad, "missing field `source`"),
        ("unknown field", with("colour", json!("red")), bad, "unknown field `colour`"),
        ("not an object", json!("a string"), bad, "invalid type"),
        ("blank request_id", with("request_id", json!(" ")), unprocessable, "request_id"),
        ("request_id with NUL", with("request_id", json!("r\u{0}x")), unprocessable, "request_id"),
        ("dest escapes the root", with("dest", json!("../x")), unprocessable, "invalid dest"),
        ("dest escapes in the middle", with("dest", json!("a/../../x")), unprocessable, "invalid dest"),
        ("dest with NUL", with("dest", json!("a\u{0}b")), unprocessable, "NUL"),
        ("dest name too long", with("dest", json!(format!("a/{}", "n".repeat(256)))), unprocessable, "255"),
        ("dest is the root", with("dest", json!("/")), unprocessable, "root"),
        ("dest in the system dir", with("dest", json!(".mfs-ingest/x")), unprocessable, "reserved"),
        ("dest in the system dir, leading slash", with("dest", json!("/.mfs-ingest/staging/y")), unprocessable, "reserved"),
        ("source missing", with("source", json!(format!("{dir}/missing.bin"))), unprocessable, "does not exist"),
        ("source outside the roots", with("source", json!("file:///etc/hostname")), unprocessable, "outside the allowed source roots"),
        ("source escaping with ..", with("source", json!(format!("{dir}/../../../../../../../../etc/hostname"))), unprocessable, "outside"),
        ("source is a directory", with("source", json!(dir)), unprocessable, "not a regular file"),
        ("unsupported scheme", with("source", json!("ftp://example.com/x.bin")), unprocessable, "unsupported source URL scheme"),
        ("source not a URL", with("source", json!("just words")), unprocessable, "invalid source URL"),
        ("declared size shorter", with("size", json!(999)), unprocessable, "declared size 999"),
        ("declared size longer", with("size", json!(1001)), unprocessable, "declared size 1001"),
        ("md5 not hex", with("md5", json!("z".repeat(32))), unprocessable, "md5"),
        ("md5 too short", with("md5", json!("abc")), unprocessable, "md5"),
        ("goal 0", with("goal", json!(0)), unprocessable, "goal"),
        ("goal 10", with("goal", json!(10)), unprocessable, "goal"),
        ("part size not a block multiple", with("part_size", json!(1000)), unprocessable, "part_size"),
        ("part size 0", with("part_size", json!(0)), unprocessable, "part_size"),
    ];
    for (case, mut body, status, needle) in cases {
        let rid = request_id();
        if body.get("request_id") == Some(&json!("RID")) {
            body["request_id"] = json!(rid);
        }
        let p = problem(api.post("/v1/uploads", &body).await, status, case).await;
        let detail = p["detail"].as_str().unwrap();
        assert!(
            detail.contains(needle),
            "{case}: detail {detail:?} lacks {needle:?}"
        );
        api.assert_no_session(&rid, case).await;
    }
    let valid = |rid: &str| {
        let mut v = valid.clone();
        v["request_id"] = json!(rid);
        v
    };

    // Bodies that are not JSON objects at all.
    let rid = request_id();
    let truncated = format!("{{\"request_id\":\"{rid}\",\"source\":\"{src}\",");
    let p = problem(
        api.post_raw("/v1/uploads", truncated, "application/json")
            .await,
        StatusCode::BAD_REQUEST,
        "invalid JSON",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("EOF"), "{p}");
    let trailing = format!("{} x", valid(&rid));
    problem(
        api.post_raw("/v1/uploads", trailing, "application/json")
            .await,
        StatusCode::BAD_REQUEST,
        "trailing garbage",
    )
    .await;
    problem(
        api.post_raw("/v1/uploads", "", "application/json").await,
        StatusCode::BAD_REQUEST,
        "empty body",
    )
    .await;
    problem(
        api.post_raw("/v1/uploads", valid(&rid).to_string(), "text/plain")
            .await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "not JSON content type",
    )
    .await;
    api.assert_no_session(&rid, "invalid JSON").await;

    // Over the body limit (1 MiB).
    let rid = request_id();
    let mut huge = valid(&rid);
    huge["dest"] = json!("d".repeat(1 << 20));
    let p = problem(
        api.post("/v1/uploads", &huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "oversize body",
    )
    .await;
    assert!(p["detail"].as_str().unwrap().contains("1048576"), "{p}");
    api.assert_no_session(&rid, "oversize body").await;

    // Nothing at all was created for this test's sources.
    assert_eq!(api.sessions_from_my_sources().await, 0);
}

#[tokio::test]
async fn existing_dest_needs_overwrite() {
    let api = start(None).await;
    let root = api.ingest.mfs.resolve(&api.mfs_root).await.unwrap().0;
    let name = Name::parse("exists.bin").unwrap();
    drop(api.ingest.mfs.create(root, &name, 0o644).await.unwrap());
    let src = api.source("ex.bin", 10);

    let rid = request_id();
    let req = json!({"request_id": rid, "source": src, "dest": "exists.bin"});
    assert_refused(&api, &req, StatusCode::CONFLICT, "dest exists", "overwrite").await;

    let rid = request_id();
    let req = json!({"request_id": rid, "source": src, "dest": "exists.bin/below"});
    problem(
        api.post("/v1/uploads", &req).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "parent is a file",
    )
    .await;
    api.assert_no_session(&rid, "parent is a file").await;

    let rid = request_id();
    let req = json!({"request_id": rid, "source": src, "dest": "exists.bin", "overwrite": true});
    let created = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::CREATED,
        "overwrite",
    )
    .await;
    assert_eq!(created["overwrite"], true);
    assert_eq!(api.sessions_from_my_sources().await, 1);
}

/// Issue 12 item 4: a destination that is a directory is a 409
/// `dest-is-directory`, with or without `overwrite`, and nothing is created.
#[tokio::test]
async fn directory_dest_is_refused() {
    let api = start(None).await;
    let root = api.ingest.mfs.resolve(&api.mfs_root).await.unwrap().0;
    let name = Name::parse("a-directory").unwrap();
    api.ingest.mfs.mkdir(root, &name, 0o755).await.unwrap();
    let src = api.source("dir.bin", 10);
    for overwrite in [false, true] {
        let rid = request_id();
        let req = json!({"request_id": rid, "source": src, "dest": "a-directory",
                         "overwrite": overwrite});
        let case = format!("directory dest, overwrite {overwrite}");
        let p = problem(
            api.post("/v1/uploads", &req).await,
            StatusCode::CONFLICT,
            &case,
        )
        .await;
        assert!(
            p["type"].as_str().unwrap().ends_with("dest-is-directory"),
            "{p}"
        );
        api.assert_no_session(&rid, &case).await;
    }
}

#[tokio::test]
async fn probes_metrics_and_unknown_routes() {
    let api = start(None).await;
    let health = api.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(health.text().await.unwrap(), "ok");

    let ready = json_body(api.get("/readyz").await, StatusCode::OK, "readyz").await;
    assert_eq!(ready["checks"]["postgresql"], "ok");
    assert_eq!(ready["checks"]["moosefs"], "ok");

    let metrics = api.get("/metrics").await;
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        metrics.headers()[reqwest::header::CONTENT_TYPE],
        "text/plain; version=0.0.4"
    );
    assert!(metrics.text().await.unwrap().contains("api_test_metric 1"));

    problem(
        api.get("/nothing-here").await,
        StatusCode::NOT_FOUND,
        "unknown route",
    )
    .await;
    problem(
        api.get("/v1/uploads").await,
        StatusCode::METHOD_NOT_ALLOWED,
        "GET on a POST route",
    )
    .await;
    let delete = api.http.delete(api.url("/healthz")).send().await.unwrap();
    problem(delete, StatusCode::METHOD_NOT_ALLOWED, "DELETE /healthz").await;
}

/// `/readyz` of `api` is 503 naming the service `down` and not `up`.
async fn readyz_names_only(api: &TestApi, down: &str, up: &str) -> Value {
    let p = problem(
        api.get("/readyz").await,
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("readyz, {down} down"),
    )
    .await;
    let detail = p["detail"].as_str().unwrap();
    assert!(detail.contains(down) && !detail.contains(up), "{p}");
    p
}

#[tokio::test]
async fn service_failures_are_503_without_internals() {
    // MooseFS gone (a closed client), PostgreSQL fine.
    let up = start(None).await;
    let closed = MfsClient::connect(ClientConfig::new(up.args.mfs_master.clone()))
        .await
        .unwrap();
    closed.close().await;
    let no_mfs = serve_beside(&up, up.ingest.store.clone(), closed).await;
    let p = readyz_names_only(&no_mfs, "MooseFS", "PostgreSQL").await;
    assert_eq!(p["checks"]["moosefs"], "down");
    assert_eq!(p["checks"]["postgresql"], "ok");
    // Validation of the dest against MooseFS fails: nothing is written.
    let rid = request_id();
    let src = up.source("s.bin", 10);
    let req = json!({"request_id": rid, "source": src, "dest": "s.bin"});
    let p = problem(
        no_mfs.post("/v1/uploads", &req).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "submit, MooseFS down",
    )
    .await;
    assert!(
        !p["detail"].as_str().unwrap().contains(&up.args.mfs_master),
        "{p}"
    );
    up.assert_no_session(&rid, "MooseFS down").await;
    // Client errors are still client errors.
    let bad = json!({"request_id": request_id(), "source": src, "dest": "../s.bin"});
    problem(
        no_mfs.post("/v1/uploads", &bad).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "bad dest, MooseFS down",
    )
    .await;

    // PostgreSQL gone (nothing listens on the port), MooseFS fine.
    let dead_url = "postgres://postgres@127.0.0.1:1/mfs_ingest";
    let pool = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_secs(1))
        .connect_lazy(dead_url)
        .unwrap();
    let no_db = serve_beside(&up, Store { pool }, up.ingest.mfs.clone()).await;
    readyz_names_only(&no_db, "PostgreSQL", "MooseFS").await;
    let p = problem(
        no_db.post("/v1/uploads", &req).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "submit, PostgreSQL down",
    )
    .await;
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("PostgreSQL")
            && !detail.contains("127.0.0.1")
            && !detail.contains("postgres://"),
        "{p}"
    );
    problem(
        no_db.get(&format!("/v1/uploads/{}", Uuid::new_v4())).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "get, PostgreSQL down",
    )
    .await;
    let batch = json!({"items": [req]});
    let body = json_body(
        no_db.post("/v1/batches", &batch).await,
        StatusCode::OK,
        "batch, PostgreSQL down",
    )
    .await;
    assert_eq!(body["items"][0]["error"]["status"], 503, "{body}");
    up.assert_no_session(&rid, "PostgreSQL down").await;
}

#[tokio::test]
async fn http_source_failures_are_told_apart() {
    let api = start_with(None, &["127.0.0.1"]).await;
    let origin = axum::Router::new()
        .route("/ok.bin", axum::routing::get(|| async { "hello" }))
        .route(
            "/boom.bin",
            axum::routing::get(|| async {
                (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "boom")
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let origin_task = tokio::spawn(async move { axum::serve(listener, origin).await.unwrap() });

    // The source's server fails: not the request's fault, not ours either.
    let rid = request_id();
    let req =
        json!({"request_id": rid, "source": format!("{base}/boom.bin"), "dest": "h/boom.bin"});
    assert_refused(
        &api,
        &req,
        StatusCode::BAD_GATEWAY,
        "source answers 500",
        "500",
    )
    .await;

    let rid = request_id();
    let req =
        json!({"request_id": rid, "source": format!("{base}/gone.bin"), "dest": "h/gone.bin"});
    problem(
        api.post("/v1/uploads", &req).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "source 404",
    )
    .await;
    api.assert_no_session(&rid, "source 404").await;

    let rid = request_id();
    let req = json!({"request_id": rid, "source": format!("{base}/ok.bin"), "dest": "h/ok.bin", "size": 6});
    problem(
        api.post("/v1/uploads", &req).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "http size mismatch",
    )
    .await;
    api.assert_no_session(&rid, "http size mismatch").await;

    let req = json!({"request_id": rid, "source": format!("{base}/ok.bin"), "dest": "h/ok.bin", "size": 5});
    let created = json_body(
        api.post("/v1/uploads", &req).await,
        StatusCode::CREATED,
        "http source",
    )
    .await;
    assert_eq!(created["size"], 5);
    let id = created["id"].as_str().unwrap();
    // Not from this test's file sources: end it here rather than in the guard.
    let aborted = json_body(
        api.post(&format!("/v1/uploads/{id}/abort"), &json!({}))
            .await,
        StatusCode::OK,
        "abort http upload",
    )
    .await;
    assert_eq!(aborted["state"], "aborted");
    origin_task.abort();
}

/// Posts each case as a fresh request; each must be refused with `status`,
/// a detail containing every needle, and no session.
async fn refused_cases(api: &TestApi, cases: Vec<(&str, Value, StatusCode, Vec<&str>)>) {
    for (case, mut body, status, needles) in cases {
        let rid = request_id();
        body["request_id"] = json!(rid);
        let p = problem(api.post("/v1/uploads", &body).await, status, case).await;
        let detail = p["detail"].as_str().unwrap();
        for needle in needles {
            assert!(
                detail.contains(needle),
                "{case}: detail {detail:?} lacks {needle:?}"
            );
        }
        api.assert_no_session(&rid, case).await;
    }
}

#[tokio::test]
async fn part_count_and_part_size_limits_are_refused_naming_the_limit() {
    let api = start(None).await;
    let gib = api.source("one-gib.bin", 1 << 30);
    let tib = api.source("one-tib.bin", 1 << 40);
    let small = api.source("small.bin", 1000);
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    #[rustfmt::skip]
    let cases = vec![
        // 16,384 parts of 64 KiB.
        ("1 GiB in 64 KiB parts", json!({"source": gib, "dest": "l/gib.bin", "part_size": 65536}),
            unprocessable, vec!["10000", "part_size"]),
        // 16.7 million parts.
        ("1 TiB in 64 KiB parts", json!({"source": tib, "dest": "l/tib.bin", "part_size": 65536}),
            unprocessable, vec!["10000", "part_size"]),
        ("part size above 5 GiB", json!({"source": small, "dest": "l/s.bin", "part_size": (5u64 << 30) + 65536}),
            unprocessable, vec!["part_size", "5368709120"]),
        ("part size below 64 KiB", json!({"source": small, "dest": "l/s.bin", "part_size": 32768}),
            unprocessable, vec!["part_size", "65536"]),
    ];
    refused_cases(&api, cases).await;
    // The largest part size and the most parts are fine.
    let mut many_parts = Vec::new();
    for (name, body) in [
        (
            "5 GiB parts",
            json!({"source": small, "dest": "l/five.bin", "part_size": 5u64 << 30}),
        ),
        (
            "10,000 parts",
            json!({"source": api.source("ten-k.bin", 10_000 * 65536), "dest": "l/ten-k.bin", "part_size": 65536}),
        ),
        // Without a part size the coordinator picks a multiple of its
        // default that stays within the limit: 1 TiB in 128 MiB parts.
        (
            "1 TiB with the default part size",
            json!({"source": tib, "dest": "l/tib-default.bin"}),
        ),
    ] {
        let mut body = body;
        body["request_id"] = json!(request_id());
        let created = json_body(
            api.post("/v1/uploads", &body).await,
            StatusCode::CREATED,
            name,
        )
        .await;
        many_parts.push(created);
    }
    assert_eq!(many_parts[1]["part_count"], 10_000);
    assert_eq!(many_parts[2]["part_size"], 128 * MIB, "{}", many_parts[2]);
    assert_eq!(many_parts[2]["part_count"], 8192, "{}", many_parts[2]);
    // No relay runs here: drop the part jobs waiting in the (shared) outbox.
    let ids: Vec<String> = many_parts
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    sqlx::query("DELETE FROM outbox WHERE payload->>'session_id' = ANY($1)")
        .bind(&ids)
        .execute(&api.ingest.store.pool)
        .await
        .unwrap();
}

#[tokio::test]
async fn sizes_beyond_the_signed_range_are_refused_naming_the_field() {
    let api = start(None).await;
    let src = api.source("in.bin", 1000);
    let with = |key: &str, value: Value| {
        let mut v = json!({"source": src, "dest": "o/in.bin"});
        v[key] = value;
        v
    };
    let (bad, unprocessable) = (StatusCode::BAD_REQUEST, StatusCode::UNPROCESSABLE_ENTITY);
    let two_63 = json!(9_223_372_036_854_775_808u64);
    #[rustfmt::skip]
    let cases = vec![
        ("part_size 2^63", with("part_size", two_63.clone()), unprocessable, vec!["part_size", "5368709120"]),
        ("part_size u64::MAX - 65535", with("part_size", json!(u64::MAX - 65535)), unprocessable, vec!["part_size"]),
        ("part_size u64::MAX", with("part_size", json!(u64::MAX)), unprocessable, vec!["part_size"]),
        ("size 2^63", with("size", two_63), unprocessable, vec!["size", "1099511627776"]),
        ("size u64::MAX", with("size", json!(u64::MAX)), unprocessable, vec!["size", "1099511627776"]),
        ("size beyond u64", with("size", json!(18_446_744_073_709_551_616f64)), bad, vec!["size"]),
        ("crc32c beyond u32", with("crc32c", json!(4_294_967_296u64)), bad, vec!["crc32c"]),
    ];
    refused_cases(&api, cases).await;
    assert_eq!(api.sessions_from_my_sources().await, 0);
}

#[tokio::test]
async fn dest_depth_length_and_invisible_characters_are_refused() {
    let api = start(None).await;
    let src = api.source("in.bin", 1000);
    let dest = |d: String| json!({"source": src, "dest": d});
    let unprocessable = StatusCode::UNPROCESSABLE_ENTITY;
    let deep = |n: usize| vec!["d"; n].join("/");
    // 4 names of 254 bytes and 3 slashes: 1019 bytes, then `extra`.
    let long = |extra: &str| format!("{}{extra}", vec!["n".repeat(254); 4].join("/"));
    #[rustfmt::skip]
    let cases = vec![
        ("65 components", dest(deep(65)), unprocessable, vec!["dest", "64"]),
        ("1025 bytes", dest(long("/abcde")), unprocessable, vec!["dest", "1024"]),
        ("right-to-left override", dest("invoice\u{202E}fdp.exe".into()), unprocessable, vec!["dest", "U+202E"]),
        ("left-to-right mark", dest("a/\u{200E}b".into()), unprocessable, vec!["dest", "U+200E"]),
        ("first strong isolate", dest("a\u{2068}b".into()), unprocessable, vec!["dest", "U+2068"]),
        ("arabic letter mark", dest("a\u{061C}b".into()), unprocessable, vec!["dest", "U+061C"]),
        ("escape", dest("a\u{1b}[31mred".into()), unprocessable, vec!["dest", "U+001B"]),
        ("newline", dest("a\nb".into()), unprocessable, vec!["dest", "U+000A"]),
        ("C1 control", dest("a\u{85}b".into()), unprocessable, vec!["dest", "U+0085"]),
        ("DEL", dest("a\u{7f}b".into()), unprocessable, vec!["dest", "U+007F"]),
    ];
    refused_cases(&api, cases).await;
    assert_eq!(api.sessions_from_my_sources().await, 0);
    // At the limits is fine.
    for (name, d) in [("64 components", deep(64)), ("1024 bytes", long("/abcd"))] {
        let body = json!({"request_id": request_id(), "source": src, "dest": d});
        json_body(
            api.post("/v1/uploads", &body).await,
            StatusCode::CREATED,
            name,
        )
        .await;
    }
}

#[tokio::test]
async fn goal_above_the_connected_chunkservers_is_refused() {
    let api = start(None).await;
    let src = api.source("in.bin", 1000);
    let rid = request_id();
    let p = problem(
        api.post(
            "/v1/uploads",
            &json!({"request_id": rid, "source": src, "dest": "g/four.bin", "goal": 4}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "goal 4",
    )
    .await;
    assert_eq!(p["type"], "urn:mfs-ingest:problem:invalid-goal", "{p}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("goal 4") && detail.contains("3 chunkservers"),
        "{detail}"
    );
    api.assert_no_session(&rid, "goal 4").await;
    // Goal 3 (every chunkserver) is fine.
    let body = json!({"request_id": request_id(), "source": src, "dest": "g/three.bin", "goal": 3});
    json_body(
        api.post("/v1/uploads", &body).await,
        StatusCode::CREATED,
        "goal 3",
    )
    .await;
}

#[tokio::test]
async fn sources_at_addresses_not_allowed_are_refused_without_contact() {
    use origin_support::{Behaviour, Origin};
    let secret = b"internal secret".to_vec();
    // No allow-list: loopback (by address or by name) is refused.
    let api = start(None).await;
    let origin = Origin::start("127.0.0.1", secret.clone(), Behaviour::Plain).await;
    let port = origin.addr.port();
    for source in [
        origin.url("/a.bin"),
        format!("http://localhost:{port}/a.bin"),
        format!("http://[::ffff:127.0.0.1]:{port}/a.bin"),
    ] {
        let rid = request_id();
        let req = json!({"request_id": rid, "source": source, "dest": "ssrf/a.bin"});
        let p = problem(
            api.post("/v1/uploads", &req).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            &source,
        )
        .await;
        assert!(!p.to_string().contains("secret"), "{p}");
        api.assert_no_session(&rid, &source).await;
    }
    assert_eq!(origin.connections(), 0, "a refused source was contacted");

    // Allowed by name, the origin redirects to an address that is not.
    let named = start_with(None, &["127.0.0.1"]).await;
    let denied = Origin::start("127.0.0.2", secret, Behaviour::Plain).await;
    let redirect = Origin::start(
        "127.0.0.1",
        Vec::new(),
        Behaviour::RedirectTo(denied.url("/secret.bin")),
    )
    .await;
    let rid = request_id();
    let req = json!({"request_id": rid, "source": redirect.url("/a.bin"), "dest": "ssrf/r.bin"});
    let p = problem(
        named.post("/v1/uploads", &req).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "redirect to 127.0.0.2",
    )
    .await;
    assert!(!p.to_string().contains("secret"), "{p}");
    named.assert_no_session(&rid, "redirect to 127.0.0.2").await;
    assert_eq!(denied.connections(), 0, "the redirect was followed");
}

/// Posts `req` to `/v1/uploads` and checks the refusal: a problem document
/// with `status` whose detail names `says`, and no session created for it.
async fn assert_refused(api: &TestApi, req: &Value, status: StatusCode, case: &str, says: &str) {
    let p = problem(api.post("/v1/uploads", req).await, status, case).await;
    assert!(p["detail"].as_str().unwrap().contains(says), "{case}: {p}");
    let rid = req["request_id"].as_str().expect("a request id");
    api.assert_no_session(rid, case).await;
}
