//! The job queue port. Producers (the job dispatcher, the outbox sweeper)
//! send messages; in AWS, SQS invokes the worker with batches of them. The
//! local stack's [`memory::MemoryQueue`] keeps SQS's semantics in process
//! (at-least-once delivery, visibility timeout, receive count, dead letters
//! after N receives) and feeds the same worker handler real `SqsEvent`
//! batches. In Lambda, [`sqs::SqsJobQueue`] sends to `JOB_QUEUE_URL` and SQS
//! invokes the worker function.
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

pub trait JobQueue: Send + Sync {
    /// Sends one message; returns the queue's message id.
    fn send<'a>(
        &'a self,
        message: &'a OutgoingMessage,
    ) -> BoxFuture<'a, Result<String, QueueError>>;

    /// Makes a received message visible again after `visible_in`.
    fn change_visibility<'a>(
        &'a self,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>>;
}
