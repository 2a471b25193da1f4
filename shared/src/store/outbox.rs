//! The `outbox` table: messages written in the transaction whose state they
//! announce, relayed to RabbitMQ afterwards and deleted once confirmed.

use sqlx::FromRow;

use super::{Store, StoreError, Tx};
use crate::queue::{Outgoing, PartGroup, PartJob, PARTS_QUEUE, PART_GROUP_MAX_JOBS};

/// An unsent outbox row.
#[derive(Debug, Clone, FromRow)]
pub struct OutboxRow {
    pub id: i64,
    pub exchange: String,
    pub routing_key: String,
    pub payload: serde_json::Value,
}

/// An outgoing message's body as the outbox's jsonb column holds it.
fn outbox_payload(m: &Outgoing) -> Result<serde_json::Value, StoreError> {
    Ok(serde_json::from_slice(&m.payload)?)
}

/// Queues one message in the outbox (inside the caller's transaction; a
/// trigger wakes the relay).
pub(super) async fn enqueue(tx: &mut Tx, m: &Outgoing) -> Result<(), StoreError> {
    let payload = outbox_payload(m)?;
    sqlx::query("INSERT INTO outbox (exchange, routing_key, payload) VALUES ($1, $2, $3)")
        .bind(&m.exchange)
        .bind(&m.queue)
        .bind(payload)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Queues part jobs: `single` one message each, `grouped` (parts of small
/// single-part files) up to [`PART_GROUP_MAX_JOBS`] per message.
pub(super) async fn enqueue_jobs(
    tx: &mut Tx,
    single: &[PartJob],
    grouped: &[PartJob],
) -> Result<(), StoreError> {
    let mut payloads: Vec<serde_json::Value> = single
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    for jobs in grouped.chunks(PART_GROUP_MAX_JOBS) {
        payloads.push(match jobs {
            [job] => serde_json::to_value(job)?,
            _ => serde_json::to_value(PartGroup {
                jobs: jobs.to_vec(),
            })?,
        });
    }
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO outbox (exchange, routing_key, payload)
         SELECT '', $1, * FROM UNNEST($2::jsonb[])",
    )
    .bind(PARTS_QUEUE)
    .bind(&payloads)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Why one relay pass failed; nothing was removed from the outbox.
#[derive(Debug, thiserror::Error)]
pub enum OutboxRelayError<E: std::error::Error + 'static> {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Publish(#[source] E),
}

impl Store {
    /// One relay pass, one transaction: claims up to `limit` unsent rows
    /// (`FOR UPDATE SKIP LOCKED`, so several relays can run), hands them to
    /// `publish`, and deletes them once it returned `Ok` (the broker
    /// confirmed them). Returns how many rows were sent; 0 without calling
    /// `publish` when there are none.
    pub async fn relay_outbox<E, F, Fut>(
        &self,
        limit: i64,
        publish: F,
    ) -> Result<usize, OutboxRelayError<E>>
    where
        E: std::error::Error + 'static,
        F: FnOnce(Vec<OutboxRow>) -> Fut,
        Fut: std::future::Future<Output = Result<(), E>>,
    {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let rows: Vec<OutboxRow> = sqlx::query_as(
            "SELECT id, exchange, routing_key, payload FROM outbox
              ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .bind(limit)
        .fetch_all(&mut *tx)
        .await
        .map_err(StoreError::from)?;
        if rows.is_empty() {
            let _ = tx.rollback().await;
            return Ok(0);
        }
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        publish(rows).await.map_err(OutboxRelayError::Publish)?;
        remove_sent(&mut tx, &ids).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(ids.len())
    }
}

/// Deletes published rows (the outbox holds only what is still to send).
async fn remove_sent(tx: &mut Tx, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM outbox WHERE id = ANY($1)")
        .bind(ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
