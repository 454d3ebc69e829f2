//! The job queue port. Producers (the job dispatcher, the outbox sweeper)
//! send messages; in AWS, SQS invokes the worker with batches of them. The
//! local stack's [`memory::MemoryQueue`] keeps SQS's semantics in process
//! (at-least-once delivery, visibility timeout, receive count, dead letters
//! after N receives) and feeds the same worker handler real `SqsEvent`
//! batches. In Lambda, [`sqs::SqsJobQueue`] sends to `JOB_QUEUE_URL` and SQS
//! invokes the worker function.
//!
//! Retries: a message the worker gives back (a `batchItemFailures` entry)
//! would come back only when its visibility timeout runs out; the worker
//! shortens that with [`JobQueue::change_visibility`] (SQS's
//! `ChangeMessageVisibility`) to back off per attempt instead.
//!
//! Priority: the `priority` attribute (1–10) is honoured by each adapter its
//! own way; SQS standard queues have none, so the SQS adapter turns it into a
//! delivery delay of `10 − priority` seconds (see [`sqs`]).

pub mod memory;
pub mod sqs;

use std::collections::BTreeMap;
use std::time::Duration;

use futures::future::BoxFuture;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue backend: {0}")]
    Backend(String),
    #[error("message rejected: {0}")]
    Rejected(String),
}

/// A message to send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub body: String,
    /// String message attributes (`job_id`, `priority`...).
    pub attributes: BTreeMap<String, String>,
    /// Delivery delay (SQS allows up to 15 minutes).
    pub delay: Option<Duration>,
}

/// SQS's longest visibility timeout (12 hours); longer requests are clamped to it.
pub const MAX_VISIBILITY_TIMEOUT: Duration = Duration::from_secs(12 * 60 * 60);

pub trait JobQueue: Send + Sync {
    /// Sends one message; returns the queue's message id.
    fn send<'a>(
        &'a self,
        message: &'a OutgoingMessage,
    ) -> BoxFuture<'a, Result<String, QueueError>>;

    /// Makes a received (in-flight) message visible again `visible_in` from
    /// now (zero: at once), instead of when its visibility timeout runs out.
    /// `visible_in` is clamped to [`MAX_VISIBILITY_TIMEOUT`] (whole seconds on
    /// SQS, rounded down). SQS also counts its 12 hours from the receive and
    /// refuses a change that would go past them (`InvalidParameterValue`, so
    /// [`QueueError::Rejected`]); the memory queue only clamps. Backoffs of
    /// minutes are far from either limit.
    ///
    /// A receipt handle the queue refuses is [`QueueError::Rejected`]: an
    /// unknown one, a stale one (the message was received again since, or
    /// deleted), one of a message no longer in flight. The memory queue
    /// refuses all three; SQS answers `ReceiptHandleIsInvalid` or
    /// `MessageNotInflight` as it sees fit (moto accepts an older handle of a
    /// message still queued). A failure to reach the queue is
    /// [`QueueError::Backend`].
    fn change_visibility<'a>(
        &'a self,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}
