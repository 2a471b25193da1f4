//! The backlog gauges: what is waiting, computed from PostgreSQL by every
//! coordinator (see `Store::backlog`) and set here in one call.

use super::metrics;

/// Values of the backlog gauges.
#[derive(Debug, Clone, Copy, Default)]
pub struct BacklogValues {
    pub pending_parts: i64,
    pub oldest_pending_part_secs: f64,
    pub open_sessions: i64,
    pub oldest_open_session_secs: f64,
    pub outbox_pending: i64,
    pub oldest_outbox_secs: f64,
    pub gc_pending: i64,
}

/// Sets the backlog gauges.
pub fn set_backlog(v: &BacklogValues) {
    let m = metrics();
    m.pending_parts.set(v.pending_parts);
    m.oldest_pending_part_age.set(v.oldest_pending_part_secs);
    m.open_sessions.set(v.open_sessions);
    m.oldest_open_session_age.set(v.oldest_open_session_secs);
    m.outbox_pending.set(v.outbox_pending);
    m.oldest_outbox_message_age.set(v.oldest_outbox_secs);
    m.gc_pending_inodes.set(v.gc_pending);
}
