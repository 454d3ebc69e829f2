//! An in-process queue with SQS's semantics, for the local stack and tests:
//! - at-least-once: a received message stays in the queue, invisible for the
//!   visibility timeout, and comes back unless deleted with its receipt handle;
//! - every receive increments `ApproximateReceiveCount`; a message received
//!   more than `max_receive_count` times moves to the dead-letter list instead;
//! - a receipt handle is valid only for the latest receive of its message;
//!   changing a message's visibility also needs it still in flight (not yet
//!   visible again), as SQS's `MessageNotInflight` does;
//! - visible messages are received highest `priority` attribute first (1 to 10,
//!   default 5), then oldest first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{JobQueue, MAX_VISIBILITY_TIMEOUT, OutgoingMessage, QueueError};

#[derive(Debug, Clone)]
struct Stored {
    id: String,
    body: String,
    attributes: BTreeMap<String, String>,
    visible_at: Instant,
    receive_count: u32,
    receipt: Option<String>,
    sent_at: chrono::DateTime<chrono::Utc>,
}

/// A message moved to the dead-letter list.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub message_id: String,
    pub body: String,
    pub receive_count: u32,
}

pub struct MemoryQueue {
    name: String,
    visibility_timeout: Duration,
    max_receive_count: u32,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    messages: VecDeque<Stored>,
    dead: Vec<DeadLetter>,
    by_receipt: HashMap<String, String>,
}

impl MemoryQueue {
    pub fn new(
        name: impl Into<String>,
        visibility_timeout: Duration,
        max_receive_count: u32,
    ) -> Self {
        Self {
            name: name.into(),
            visibility_timeout,
            max_receive_count: max_receive_count.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means another thread panicked mid-update of
        // plain data; the queue's contents are still consistent enough to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Receives up to `max` visible messages as an SQS batch event, making
    /// them invisible for the visibility timeout. Messages past their receive
    /// limit go to the dead-letter list instead.
    pub fn receive(&self, max: usize) -> SqsEvent {
        let now = Instant::now();
        let mut state = self.lock();
        // Past their receive limit: to the dead letters, never delivered again.
        let mut index = 0;
        while index < state.messages.len() {
            let message = &state.messages[index];
            if message.visible_at <= now && message.receive_count >= self.max_receive_count {
                if let Some(message) = state.messages.remove(index) {
                    if let Some(receipt) = &message.receipt {
                        state.by_receipt.remove(receipt);
                    }
                    state.dead.push(DeadLetter {
                        message_id: message.id,
                        body: message.body,
                        receive_count: message.receive_count,
                    });
                }
            } else {
                index += 1;
            }
        }
        let mut visible: Vec<usize> = (0..state.messages.len())
            .filter(|&i| state.messages[i].visible_at <= now)
            .collect();
        visible.sort_by_key(|&i| (std::cmp::Reverse(priority_of(&state.messages[i])), i));
        visible.truncate(max);
        let mut records = Vec::new();
        for index in visible {
            let receipt = uuid::Uuid::new_v4().to_string();
            let previous = {
                let message = &mut state.messages[index];
                message.receive_count += 1;
                message.visible_at = now + self.visibility_timeout;
                message.receipt.replace(receipt.clone())
            };
            if let Some(previous) = previous {
                state.by_receipt.remove(&previous);
            }
            let message = state.messages[index].clone();
            state.by_receipt.insert(receipt.clone(), message.id.clone());
            records.push(self.record(&message, &receipt));
        }
        let mut event = SqsEvent::default();
        event.records = records;
        event
    }

    fn record(&self, message: &Stored, receipt: &str) -> SqsMessage {
        let mut record = SqsMessage::default();
        record.message_id = Some(message.id.clone());
        record.receipt_handle = Some(receipt.to_string());
        record.body = Some(message.body.clone());
        record.event_source = Some("aws:sqs".into());
        record.event_source_arn = Some(format!("arn:aws:sqs:local:000000000000:{}", self.name));
        record.aws_region = Some("local".into());
        record.attributes = HashMap::from([
            (
                "ApproximateReceiveCount".to_string(),
                message.receive_count.to_string(),
            ),
            (
                "SentTimestamp".to_string(),
                message.sent_at.timestamp_millis().to_string(),
            ),
        ]);
        record.message_attributes = message
            .attributes
            .iter()
            .map(|(k, v)| {
                let mut attribute = SqsMessageAttribute::default();
                attribute.string_value = Some(v.clone());
                attribute.data_type = Some("String".into());
                (k.clone(), attribute)
            })
            .collect();
        record
    }

    /// Deletes a received message; `false` if the handle is stale (the
    /// message was received again since, or is gone).
    pub fn delete(&self, receipt_handle: &str) -> bool {
        let mut state = self.lock();
        let Some(id) = state.by_receipt.remove(receipt_handle) else {
            return false;
        };
        let before = state.messages.len();
        state.messages.retain(|m| m.id != id);
        state.messages.len() < before
    }

    /// Messages waiting or in flight.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dead_letters(&self) -> Vec<DeadLetter> {
        self.lock().dead.clone()
    }
}

fn priority_of(message: &Stored) -> i64 {
    message
        .attributes
        .get("priority")
        .and_then(|p| p.parse().ok())
        .unwrap_or(5)
}

impl JobQueue for MemoryQueue {
    fn send<'a>(
        &'a self,
        message: &'a OutgoingMessage,
    ) -> BoxFuture<'a, Result<String, QueueError>> {
        async move {
            if message.body.len() > 256 * 1024 {
                return Err(QueueError::Rejected("message body over 256 KiB".into()));
            }
            let id = uuid::Uuid::new_v4().to_string();
            self.lock().messages.push_back(Stored {
                id: id.clone(),
                body: message.body.clone(),
                attributes: message.attributes.clone(),
                visible_at: Instant::now() + message.delay.unwrap_or_default(),
                receive_count: 0,
                receipt: None,
                sent_at: chrono::Utc::now(),
            });
            Ok(id)
        }
        .boxed()
    }

    fn change_visibility<'a>(
        &'a self,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        async move {
            let now = Instant::now();
            let mut state = self.lock();
            let Some(id) = state.by_receipt.get(receipt_handle).cloned() else {
                return Err(QueueError::Rejected(
                    "unknown or stale receipt handle: the message was deleted or received again since"
                        .into(),
                ));
            };
            let Some(message) = state.messages.iter_mut().find(|m| m.id == id) else {
                return Err(QueueError::Rejected(
                    "unknown or stale receipt handle: the message is gone".into(),
                ));
            };
            if message.visible_at <= now {
                return Err(QueueError::Rejected(
                    "the message is not in flight: its visibility timeout has run out".into(),
                ));
            }
            message.visible_at = now + visible_in.min(MAX_VISIBILITY_TIMEOUT);
            Ok(())
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(body: &str) -> OutgoingMessage {
        OutgoingMessage {
            body: body.into(),
            attributes: BTreeMap::from([("job_id".to_string(), body.to_string())]),
            delay: None,
        }
    }

    #[tokio::test]
    async fn received_messages_come_back_unless_deleted() {
        let queue = MemoryQueue::new("jobs", Duration::from_millis(50), 5);
        queue.send(&message("a")).await.unwrap();
        let first = queue.receive(10);
        assert_eq!(first.records.len(), 1);
        assert_eq!(first.records[0].attributes["ApproximateReceiveCount"], "1");
        assert_eq!(
            first.records[0].message_attributes["job_id"]
                .string_value
                .as_deref(),
            Some("a")
        );
        assert!(
            queue.receive(10).records.is_empty(),
            "invisible while in flight"
        );
        tokio::time::sleep(Duration::from_millis(60)).await;
        let second = queue.receive(10);
        assert_eq!(second.records[0].attributes["ApproximateReceiveCount"], "2");
        // The first receipt is stale now; the second deletes.
        assert!(!queue.delete(first.records[0].receipt_handle.as_deref().unwrap()));
        assert!(queue.delete(second.records[0].receipt_handle.as_deref().unwrap()));
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn messages_past_the_receive_limit_become_dead_letters() {
        let queue = MemoryQueue::new("jobs", Duration::ZERO, 3);
        queue.send(&message("poison")).await.unwrap();
        for expected in 1..=3 {
            let batch = queue.receive(1);
            assert_eq!(
                batch.records[0].attributes["ApproximateReceiveCount"],
                expected.to_string()
            );
        }
        assert!(queue.receive(1).records.is_empty());
        let dead = queue.dead_letters();
        assert_eq!(dead.len(), 1);
        assert_eq!(
            (dead[0].body.as_str(), dead[0].receive_count),
            ("poison", 3)
        );
        assert!(queue.is_empty());
    }

    #[tokio::test]
    async fn higher_priorities_are_received_first() {
        let queue = MemoryQueue::new("jobs", Duration::from_secs(60), 5);
        for (body, priority) in [
            ("low", "2"),
            ("high", "9"),
            ("normal", "5"),
            ("high-2", "9"),
        ] {
            let mut m = message(body);
            m.attributes.insert("priority".into(), priority.into());
            queue.send(&m).await.unwrap();
        }
        let order: Vec<String> = queue
            .receive(10)
            .records
            .into_iter()
            .map(|r| r.body.unwrap())
            .collect();
        assert_eq!(order, ["high", "high-2", "normal", "low"]);
    }

    #[tokio::test]
    async fn delays_and_visibility_changes_are_honoured() {
        let queue = MemoryQueue::new("jobs", Duration::from_secs(60), 5);
        queue
            .send(&OutgoingMessage {
                delay: Some(Duration::from_millis(40)),
                ..message("later")
            })
            .await
            .unwrap();
        assert!(queue.receive(1).records.is_empty());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch = queue.receive(1);
        let receipt = batch.records[0].receipt_handle.clone().unwrap();
        queue
            .change_visibility(&receipt, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(queue.receive(1).records.len(), 1, "visible again at once");
    }

    fn receipt_of(batch: &SqsEvent) -> String {
        assert_eq!(batch.records.len(), 1, "{batch:?}");
        batch.records[0].receipt_handle.clone().unwrap()
    }

    fn visible_at(queue: &MemoryQueue) -> Instant {
        queue.lock().messages[0].visible_at
    }

    /// Sets the visibility and returns the window the new deadline must be in.
    async fn change(
        queue: &MemoryQueue,
        receipt: &str,
        visible_in: Duration,
    ) -> (Instant, Instant) {
        let before = Instant::now();
        queue.change_visibility(receipt, visible_in).await.unwrap();
        (before, Instant::now())
    }

    #[tokio::test]
    async fn visibility_changes_bring_a_message_back_or_keep_it_away() {
        let queue = MemoryQueue::new("jobs", Duration::from_secs(60), 5);
        queue.send(&message("retry")).await.unwrap();
        let first = receipt_of(&queue.receive(1));
        assert!(queue.receive(1).records.is_empty(), "in flight");

        // Zero: receivable again at once, as a new receive.
        change(&queue, &first, Duration::ZERO).await;
        let again = queue.receive(1);
        assert_eq!(again.records[0].attributes["ApproximateReceiveCount"], "2");
        let second = receipt_of(&again);

        // Thirty minutes: still in the queue, not receivable, due then.
        let backoff = Duration::from_secs(30 * 60);
        let (before, after) = change(&queue, &second, backoff).await;
        assert!(queue.receive(1).records.is_empty());
        assert_eq!(queue.len(), 1);
        let due = visible_at(&queue);
        assert!(before + backoff <= due && due <= after + backoff);

        // Beyond SQS's 12 hours: clamped to them (and no overflow).
        let (before, after) = change(&queue, &second, Duration::MAX).await;
        let due = visible_at(&queue);
        assert!(before + MAX_VISIBILITY_TIMEOUT <= due && due <= after + MAX_VISIBILITY_TIMEOUT);
        assert!(queue.receive(1).records.is_empty());
    }

    #[tokio::test]
    async fn unknown_stale_and_settled_receipt_handles_are_refused() {
        let queue = MemoryQueue::new("jobs", Duration::from_secs(60), 5);
        queue.send(&message("a")).await.unwrap();
        let refused = |result: Result<(), QueueError>| match result {
            Err(QueueError::Rejected(reason)) => reason,
            other => panic!("expected a rejection, got {other:?}"),
        };

        let reason = refused(queue.change_visibility("bogus", Duration::ZERO).await);
        assert!(reason.contains("receipt handle"), "{reason}");

        // Received again since: the first handle is stale, the second works.
        let first = receipt_of(&queue.receive(1));
        change(&queue, &first, Duration::ZERO).await;
        let second = receipt_of(&queue.receive(1));
        let reason = refused(
            queue
                .change_visibility(&first, Duration::from_secs(5))
                .await,
        );
        assert!(reason.contains("stale"), "{reason}");
        change(&queue, &second, Duration::ZERO).await;

        // Visible again and not received since: no longer in flight.
        let reason = refused(
            queue
                .change_visibility(&second, Duration::from_secs(5))
                .await,
        );
        assert!(reason.contains("not in flight"), "{reason}");

        // Deleted: its handle names nothing.
        let third = receipt_of(&queue.receive(1));
        assert!(queue.delete(&third));
        refused(queue.change_visibility(&third, Duration::ZERO).await);
        assert!(queue.is_empty());
    }
}
