//! The job queue port. Producers (the job dispatcher, the outbox sweeper)
//! send messages; in AWS, SQS invokes the worker with batches of them. The
//! local stack's [`memory::MemoryQueue`] keeps SQS's semantics in process
//! (at-least-once delivery, visibility timeout, receive count, dead letters
//! after N receives) and feeds the same worker handler real `SqsEvent`
//! batches.

pub mod memory;

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
}
