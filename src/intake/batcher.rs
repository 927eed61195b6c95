//! Group commit: one writer task takes every notification waiting in its
//! bounded queue and commits them in a single transaction, then answers each
//! caller. One fsync serves many requests; a full queue answers "overloaded"
//! at once so Alertmanager retries rather than waiting on a stuck store.

use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::domain::{Notification, now_millis};
use crate::store::{BatchOutcome, RecordError, Store};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("intake queue is full")]
    Overloaded,
    #[error("store could not commit: {0}")]
    Store(String),
    #[error("intake is shutting down")]
    Closed,
    /// The store refused this notification's data; it would never commit.
    #[error("store refused the notification: {0}")]
    Refused(String),
}

struct Pending {
    notification: Notification,
    reply: oneshot::Sender<Result<BatchOutcome, SubmitError>>,
}

/// Handle to the writer task. Cloning it is cheap; the writer stops once
/// every handle is dropped and the queue is drained.
#[derive(Clone)]
pub struct Intake {
    queue: mpsc::Sender<Pending>,
}

impl Intake {
    /// Starts the writer. `work_ready` is notified when a batch queued work.
    #[must_use]
    pub fn start(
        store: Store,
        queue_capacity: usize,
        max_batch: usize,
        work_ready: Arc<Notify>,
    ) -> (Self, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(queue_capacity.max(1));
        let writer = tokio::spawn(write_batches(store, rx, max_batch.max(1), work_ready));
        (Self { queue }, writer)
    }

    /// Resolves once the notification is committed (or known to be a
    /// repeat of a committed one).
    pub async fn submit(&self, notification: Notification) -> Result<BatchOutcome, SubmitError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .try_send(Pending {
                notification,
                reply,
            })
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => SubmitError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => SubmitError::Closed,
            })?;
        answer.await.map_err(|_| SubmitError::Closed)?
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<Pending>,
    max_batch: usize,
    work_ready: Arc<Notify>,
) {
    let mut writer = store.intake_writer();
    let mut batch: Vec<Pending> = Vec::with_capacity(max_batch);
    loop {
        let received = tokio::select! {
            n = rx.recv_many(&mut batch, max_batch) => n,
            () = writer.store_closing() => {
                writer.release();
                rx.recv_many(&mut batch, max_batch).await
            }
        };
        if received == 0 {
            break;
        }
        let notifications: Vec<&Notification> = batch.iter().map(|p| &p.notification).collect();
        let results = writer.record(&notifications, now_millis()).await;
        metrics::histogram!("remedy_intake_batch_size").record(batch.len() as f64);
        if results
            .iter()
            .any(|r| r.as_ref().is_ok_and(BatchOutcome::queued_work))
        {
            work_ready.notify_one();
        }
        for (pending, result) in batch.drain(..).zip(results) {
            let answer = result.map_err(|error| match error {
                RecordError::Unavailable(message) => {
                    tracing::error!(%message, "notification not committed");
                    SubmitError::Store(message)
                }
                RecordError::Refused(message) => {
                    tracing::warn!(%message, "notification refused by the store");
                    SubmitError::Refused(message)
                }
            });
            // A caller that went away (client disconnected) needs no answer.
            let _ = pending.reply.send(answer);
        }
    }
}
