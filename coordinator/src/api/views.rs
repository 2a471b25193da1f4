//! What the API shows of an upload: the session and its per-part progress
//! (a password in an http(s) source URL is never shown back).

use serde::Serialize;
use shared::store::{Part, Session};

use super::problem::{bounded, store_problem, Problem};
use super::{ApiState, READ_TIMEOUT};

/// An upload as the API shows it: the session row (a password in an
/// http(s) source URL masked) and its parts.
#[derive(Debug, Serialize)]
pub struct SessionView {
    #[serde(flatten)]
    pub session: Session,
    pub parts: PartsView,
}

#[derive(Debug, Serialize)]
pub struct PartsView {
    pub total: usize,
    pub committed: usize,
    pub items: Vec<PartView>,
}

#[derive(Debug, Serialize)]
pub struct PartView {
    pub part_number: i32,
    pub offset: i64,
    pub size: i64,
    pub attempts: i32,
    pub committed: bool,
    /// The worker of the latest attempt.
    pub worker: Option<String>,
}

impl SessionView {
    pub fn new(s: Session, parts: Vec<Part>) -> Self {
        let items: Vec<PartView> = parts
            .into_iter()
            .map(|p| PartView {
                part_number: p.part_number,
                offset: p.part_offset,
                size: p.size,
                attempts: p.attempts,
                committed: p.committed_token.is_some(),
                worker: p.worker,
            })
            .collect();
        let mut session = s;
        // A password in an http(s) source URL is not shown back.
        session.source = shared::config::mask_url(&session.source);
        SessionView {
            session,
            parts: PartsView {
                total: items.len(),
                committed: items.iter().filter(|p| p.committed).count(),
                items,
            },
        }
    }
}

/// The view of a session whose row was just read: its parts are read now.
pub(super) async fn view_of(st: &ApiState, session: Session) -> Result<SessionView, Problem> {
    let parts = bounded(
        "reading the upload's parts",
        READ_TIMEOUT,
        st.ingest.store.parts(session.id),
    )
    .await?
    .map_err(|e| store_problem(&e))?;
    Ok(SessionView::new(session, parts))
}
