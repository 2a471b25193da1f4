//! Who may call the API and what is recorded of each call: bearer-token
//! authentication of `/v1/*` (and the log line of every mutating request),
//! and the per-route request counter and timer.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::Problem;
use super::AppState;
use crate::auth::ApiTokens;

/// Who may call `/v1/*`.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A bearer token naming one of these (none configured: nobody).
    Tokens(ApiTokens),
    /// Anybody: only with the explicit `--insecure-no-auth`.
    Open,
}

/// The caller of a request, as authentication found it (a request
/// extension): the token's name, or `anonymous` without authentication.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// Whether `path` is under `/v1` (the authenticated, limited part).
pub fn is_v1(path: &str) -> bool {
    path == "/v1" || path.starts_with("/v1/")
}

/// Checks the bearer token on `/v1/*` and logs every mutating request with
/// the caller's token name (never the token).
pub async fn authenticate(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if !is_v1(req.uri().path()) {
        return next.run(req).await;
    }
    let caller = match &st.auth {
        Auth::Open => "anonymous".to_string(),
        Auth::Tokens(tokens) => {
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(bearer_token);
            match presented.map(|token| tokens.verify(token)) {
                Some(Some(name)) => name.to_string(),
                presented => return unauthorized(&req, presented.is_some()),
            }
        }
    };
    let method = req.method().clone();
    let mutating = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let path = req.uri().path().to_string();
    req.extensions_mut().insert(Caller(caller.clone()));
    let response = next.run(req).await;
    if mutating {
        tracing::info!(token = %caller, %method, %path, status = response.status().as_u16(),
            "API request");
    }
    response
}

/// The answer to a `/v1/*` request without a valid token.
fn unauthorized(req: &Request, had_token: bool) -> Response {
    tracing::warn!(method = %req.method(), path = %req.uri().path(), had_token,
        "API request refused: no valid bearer token");
    let (detail, challenge) = if had_token {
        (
            "the bearer token is not valid",
            "Bearer error=\"invalid_token\"",
        )
    } else {
        (
            "this endpoint needs an Authorization: Bearer <token> header",
            "Bearer",
        )
    };
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Unauthorized",
        detail,
    )
    .header(header::WWW_AUTHENTICATE, challenge)
    .into_response()
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    (!token.is_empty()).then_some(token)
}

/// Counts every HTTP request by route template (never the raw path, so ids
/// do not become labels), method and status class, and times it.
pub async fn track_http(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    shared::metrics::http_request(
        &route,
        method.as_str(),
        response.status().as_u16(),
        started.elapsed(),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_parsed() {
        assert_eq!(bearer_token("Bearer abc"), Some("abc"));
        assert_eq!(bearer_token("bearer  abc "), Some("abc"));
        assert_eq!(bearer_token("Basic abc"), None);
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Bearer"), None);
    }
}
