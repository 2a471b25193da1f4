//! Consuming a queue until shutdown (each delivery handled on its own
//! task), and giving a delivery back to its queue.

use std::time::Duration;

use lapin::types::FieldTable;

use super::*;

/// Gives a delivery back to its queue (nack with requeue); failures mean the
/// channel is gone, and the broker redelivers anyway.
pub async fn requeue(delivery: &lapin::message::Delivery) {
    let _ = delivery
        .acker
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            ..lapin::options::BasicNackOptions::default()
        })
        .await;
}

/// Consumes `queue` until `shutdown` is cancelled: per-consumer prefetch,
/// manual acks, one task per delivery (at most `prefetch` at once), and a
/// reconnect with growing delay whenever the connection or channel drops
/// (deliveries not yet acked come back from the broker: handlers must expect
/// duplicates). On shutdown it stops taking deliveries and waits up to
/// `grace` for the running handlers.
pub async fn consume_until<F, Fut>(
    amqp_url: &str,
    name: &str,
    queue: &str,
    prefetch: u16,
    shutdown: tokio_util::sync::CancellationToken,
    grace: Duration,
    handler: F,
) where
    F: Fn(lapin::message::Delivery) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    use futures::StreamExt;
    let deliveries = crate::metrics::metrics().deliveries(queue);
    let tracker = tokio_util::task::TaskTracker::new();
    let mut delay = Duration::from_millis(200);
    while !shutdown.is_cancelled() {
        let (conn, channel, mut consumer) = match open_consumer(amqp_url, name, queue, prefetch)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                tracing::warn!(%queue, error = %e, retry_in = ?delay, "cannot consume; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(10));
                continue;
            }
        };
        tracing::info!(%queue, prefetch, "consuming");
        delay = Duration::from_millis(200);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            match next {
                Some(Ok(delivery)) => {
                    deliveries.delivered(delivery.redelivered);
                    tracker.spawn(handler.clone()(delivery));
                }
                Some(Err(e)) => {
                    tracing::warn!(%queue, error = %e, "consumer failed; reconnecting");
                    crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                    break;
                }
                None => {
                    tracing::warn!(%queue, "consumer ended; reconnecting");
                    crate::metrics::service_error(crate::metrics::Service::RabbitMq);
                    break;
                }
            }
        }
        if shutdown.is_cancelled() {
            return drain(conn, channel, tracker, name, queue, grace).await;
        }
        let _ = conn.close(0, "reconnecting").await;
    }
    tracker.close();
    let _ = tokio::time::timeout(grace, tracker.wait()).await;
}

/// A connection, a channel with `prefetch`, the topology declared, and a
/// consumer of `queue` on it.
async fn open_consumer(
    amqp_url: &str,
    name: &str,
    queue: &str,
    prefetch: u16,
) -> Result<(lapin::Connection, lapin::Channel, lapin::Consumer), JobsError> {
    let conn = connect(amqp_url, name).await?;
    let channel = consumer_channel(&conn, prefetch).await?;
    declare_topology(&channel).await?;
    let consumer = channel
        .basic_consume(
            queue,
            name,
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, consumer))
}

/// At shutdown: stops deliveries, lets running handlers ack (up to
/// `grace`), then closes the channel and the connection.
async fn drain(
    conn: lapin::Connection,
    channel: lapin::Channel,
    tracker: tokio_util::task::TaskTracker,
    name: &str,
    queue: &str,
    grace: Duration,
) {
    let _ = channel
        .basic_cancel(name, lapin::options::BasicCancelOptions::default())
        .await;
    tracker.close();
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        tracing::warn!(%queue, "handlers still running after {grace:?}; their messages will be redelivered");
    }
    let _ = channel.close(200, "shutdown").await;
    let _ = conn.close(200, "shutdown").await;
}
