//! The `/v1` handlers: create an upload (alone or in a batch), read one
//! with its parts, abort one. Each request is validated by
//! [`shared::ingest::Ingest::submit`] before anything is written.

use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::header::{self, HeaderValue};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;
use shared::queue::IngestRequest;
use shared::store::SessionState;

use super::problem::{
    bounded, json_problem, parse_id, request_problem, store_problem, upload_not_found, Problem,
};
use super::views::{view_of, SessionView};
use super::{
    ApiState, AppState, ABORT_TIMEOUT, BATCH_CONCURRENCY, MAX_BATCH_ITEMS, READ_TIMEOUT,
    SUBMIT_TIMEOUT,
};

pub(super) async fn create_upload(
    State(st): State<AppState>,
    body: Result<Json<IngestRequest>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(req) = body.map_err(|r| json_problem(r, st.body_limit))?;
    let (session, created) = bounded(
        "creating the upload",
        SUBMIT_TIMEOUT,
        st.ingest.submit(&req),
    )
    .await?
    .map_err(request_problem)?;
    if created {
        tracing::info!(id = %session.id, request_id = %session.request_id, dest = %session.dest,
            size = session.size, parts = session.part_count, "upload created");
    }
    let location = format!("/v1/uploads/{}", session.id);
    let view = view_of(&st, session).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(view)).into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, v);
    }
    Ok(response)
}

/// A batch body: the items are parsed one by one, so a malformed item is
/// reported on its own and does not stop the others.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchBody {
    items: Vec<serde_json::Value>,
}

pub(super) async fn create_batch(
    State(st): State<AppState>,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Response, Problem> {
    let Json(batch) = body.map_err(|r| json_problem(r, st.body_limit))?;
    if batch.items.is_empty() || batch.items.len() > MAX_BATCH_ITEMS {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid-batch",
            "Invalid batch",
            format!(
                "a batch has 1..={MAX_BATCH_ITEMS} items, this one has {}",
                batch.items.len()
            ),
        ));
    }
    let results: Vec<serde_json::Value> =
        futures::stream::iter(batch.items.into_iter().enumerate())
            .map(|(index, item)| {
                let st = st.clone();
                async move { batch_item(&st, index, item).await }
            })
            .buffered(BATCH_CONCURRENCY)
            .collect()
            .await;
    Ok((StatusCode::OK, Json(json!({ "items": results }))).into_response())
}

async fn batch_item(st: &ApiState, index: usize, item: serde_json::Value) -> serde_json::Value {
    let request_id = item
        .get("request_id")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    let req: IngestRequest = match serde_json::from_value(item) {
        Ok(r) => r,
        Err(e) => {
            let p = Problem::new(
                StatusCode::BAD_REQUEST,
                "invalid-body",
                "Invalid request body",
                format!("items[{index}]: {e}"),
            );
            return json!({ "request_id": request_id, "error": p.body() });
        }
    };
    let outcome = bounded(
        "creating the upload",
        SUBMIT_TIMEOUT,
        st.ingest.submit(&req),
    )
    .await
    .and_then(|r| r.map_err(request_problem));
    match outcome {
        Ok((session, created)) => {
            if created {
                tracing::info!(id = %session.id, request_id = %session.request_id,
                    dest = %session.dest, size = session.size, parts = session.part_count,
                    "upload created (batch)");
            }
            json!({
                "request_id": session.request_id,
                "id": session.id,
                "state": session.state,
                "created": created,
            })
        }
        Err(p) => json!({ "request_id": req.request_id, "error": p.body() }),
    }
}

pub(super) async fn get_upload(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, Problem> {
    let id = parse_id(path)?;
    let session = read_session(&st, id).await?;
    Ok(Json(view_of(&st, session).await?))
}

/// The session row of `id` (bounded); a 404 if there is none.
async fn read_session(st: &ApiState, id: uuid::Uuid) -> Result<shared::store::Session, Problem> {
    bounded(
        "reading the upload",
        READ_TIMEOUT,
        st.ingest.store.session(id),
    )
    .await?
    .map_err(|e| store_problem(&e))?
    .ok_or_else(|| upload_not_found(id))
}

pub(super) async fn abort_upload(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<SessionView>, Problem> {
    let id = parse_id(path)?;
    let ended = bounded(
        "aborting the upload",
        ABORT_TIMEOUT,
        st.ingest
            .end_session(id, SessionState::Aborted, "aborted by request"),
    )
    .await?
    .map_err(|e| store_problem(&e))?;
    let session = read_session(&st, id).await?;
    if !ended {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            "upload-not-open",
            "Upload cannot be aborted",
            format!(
                "upload {id} is {}; only open uploads can be aborted",
                session.state
            ),
        ));
    }
    tracing::info!(%id, request_id = %session.request_id, "upload aborted by request");
    Ok(Json(view_of(&st, session).await?))
}
