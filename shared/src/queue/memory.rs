//! An in-process queue with SQS's semantics, for the local stack and tests:
//! - at-least-once: a received message stays in the queue, invisible for the
//!   visibility timeout, and comes back unless deleted with its receipt handle;
//! - every receive increments `ApproximateReceiveCount`; a message received
//!   more than `max_receive_count` times moves to the dead-letter list instead;
//! - a receipt handle is valid only for the latest receive of its message;
//! - visible messages are received highest `priority` attribute first (1 to 10,
//!   default 5), then oldest first.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{JobQueue, OutgoingMessage, QueueError};

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

    /// Makes a received message visible again after `delay` (0 = now).
    pub fn change_visibility(&self, receipt_handle: &str, delay: Duration) -> bool {
        let mut state = self.lock();
        let Some(id) = state.by_receipt.get(receipt_handle).cloned() else {
            return false;
        };
        match state.messages.iter_mut().find(|m| m.id == id) {
            Some(message) => {
                message.visible_at = Instant::now() + delay;
                true
            }
            None => false,
        }
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
            if MemoryQueue::change_visibility(self, receipt_handle, visible_in) {
                Ok(())
            } else {
                Err(QueueError::Rejected("stale receipt handle".into()))
            }
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
        assert!(queue.change_visibility(&receipt, Duration::ZERO));
        assert_eq!(queue.receive(1).records.len(), 1, "visible again at once");
    }
}
