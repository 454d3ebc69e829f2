//! The SQS adapter. Standard queues have no priorities, so a message's
//! `priority` attribute (1 lowest … 10 highest, as dispatch writes it, 5 by
//! default) delays the jobs below the default: `2 × (5 − priority)` seconds, so
//! a priority-1 job becomes visible 8 s after it was sent while default and
//! higher jobs are visible at once. Under a backlog that lets normal jobs
//! overtake low-priority ones sent just before them without a second queue;
//! it does not reorder messages already visible. A message that sets its own
//! `delay` keeps it.
//!
//! [`JobQueue::change_visibility`] is `ChangeMessageVisibility` on the same
//! queue: the receipt handles SQS hands the worker in its batch events work
//! here as they are.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_sqs::Client;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::operation::change_message_visibility::ChangeMessageVisibilityError;
use aws_sdk_sqs::types::MessageAttributeValue;
use futures::FutureExt;
use futures::future::BoxFuture;

use super::{JobQueue, MAX_VISIBILITY_TIMEOUT, OutgoingMessage, QueueError};

/// SQS's longest delivery delay.
pub const MAX_DELAY: Duration = Duration::from_secs(900);

/// The highest job priority.
pub const MAX_PRIORITY: i64 = 10;
/// The default priority: it and every higher one map to no delay.
pub const DEFAULT_PRIORITY: i64 = 5;

pub struct SqsJobQueue {
    client: Client,
    queue_url: String,
}

impl SqsJobQueue {
    pub fn new(sdk_config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::with_client(Client::new(sdk_config), queue_url)
    }

    pub fn with_client(client: Client, queue_url: impl Into<String>) -> Self {
        Self {
            client,
            queue_url: queue_url.into(),
        }
    }

    pub fn queue_url(&self) -> &str {
        &self.queue_url
    }
}

/// The delivery delay for a message: its own, else the one its `priority`
/// attribute implies, else none; capped at SQS's 15 minutes.
pub fn delivery_delay(message: &OutgoingMessage) -> Duration {
    let delay = message.delay.unwrap_or_else(|| {
        message
            .attributes
            .get("priority")
            .and_then(|p| p.trim().parse::<i64>().ok())
            .map(|priority| {
                let seconds =
                    2 * (DEFAULT_PRIORITY - priority.clamp(1, MAX_PRIORITY)).max(0) as u64;
                Duration::from_secs(seconds)
            })
            .unwrap_or(Duration::ZERO)
    });
    delay.min(MAX_DELAY)
}

impl JobQueue for SqsJobQueue {
    fn send<'a>(
        &'a self,
        message: &'a OutgoingMessage,
    ) -> BoxFuture<'a, Result<String, QueueError>> {
        async move {
            let mut attributes = HashMap::with_capacity(message.attributes.len());
            for (name, value) in &message.attributes {
                let value = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| QueueError::Rejected(e.to_string()))?;
                attributes.insert(name.clone(), value);
            }
            let delay = i32::try_from(delivery_delay(message).as_secs())
                .map_err(|e| QueueError::Rejected(e.to_string()))?;
            let output = self
                .client
                .send_message()
                .queue_url(&self.queue_url)
                .message_body(&message.body)
                .set_message_attributes((!attributes.is_empty()).then_some(attributes))
                .delay_seconds(delay)
                .send()
                .await
                .map_err(|e| QueueError::Backend(DisplayErrorContext(e).to_string()))?;
            output
                .message_id
                .ok_or_else(|| QueueError::Backend("SQS returned no message id".into()))
        }
        .boxed()
    }

    fn change_visibility<'a>(
        &'a self,
        receipt_handle: &'a str,
        visible_in: Duration,
    ) -> BoxFuture<'a, Result<(), QueueError>> {
        async move {
            let seconds = visibility_seconds(visible_in);
            self.client
                .change_message_visibility()
                .queue_url(&self.queue_url)
                .receipt_handle(receipt_handle)
                .visibility_timeout(seconds)
                .send()
                .await
                .map_err(visibility_error)?;
            Ok(())
        }
        .boxed()
    }
}

/// `visible_in` as SQS's `VisibilityTimeout`: whole seconds, at most 12 hours.
fn visibility_seconds(visible_in: Duration) -> i32 {
    let seconds = visible_in.min(MAX_VISIBILITY_TIMEOUT).as_secs();
    // At most 43 200, so it always fits.
    i32::try_from(seconds).unwrap_or(i32::MAX)
}

/// What SQS refuses about the request itself (the handle, the message's
/// state, the timeout) is `Rejected`; anything else is `Backend`.
fn visibility_error(error: SdkError<ChangeMessageVisibilityError>) -> QueueError {
    let refused = error.as_service_error().is_some_and(|e| {
        e.is_receipt_handle_is_invalid()
            || e.is_message_not_inflight()
            || e.code() == Some("InvalidParameterValue")
    });
    let detail = DisplayErrorContext(&error).to_string();
    if refused {
        QueueError::Rejected(format!("SQS refused the visibility change: {detail}"))
    } else {
        QueueError::Backend(detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_priority(priority: &str) -> OutgoingMessage {
        let mut message = OutgoingMessage::default();
        message
            .attributes
            .insert("priority".into(), priority.into());
        message
    }

    #[test]
    fn priority_becomes_a_shorter_delay() {
        assert_eq!(delivery_delay(&with_priority("10")), Duration::ZERO);
        assert_eq!(delivery_delay(&with_priority("5")), Duration::ZERO);
        assert_eq!(delivery_delay(&with_priority("4")), Duration::from_secs(2));
        assert_eq!(delivery_delay(&with_priority("1")), Duration::from_secs(8));
        // Out of range is clamped; junk and absence mean no delay.
        assert_eq!(delivery_delay(&with_priority("0")), Duration::from_secs(8));
        assert_eq!(delivery_delay(&with_priority("99")), Duration::ZERO);
        assert_eq!(delivery_delay(&with_priority("high")), Duration::ZERO);
        assert_eq!(delivery_delay(&OutgoingMessage::default()), Duration::ZERO);
    }

    #[test]
    fn visibility_is_whole_seconds_up_to_twelve_hours() {
        assert_eq!(visibility_seconds(Duration::ZERO), 0);
        assert_eq!(visibility_seconds(Duration::from_millis(30_900)), 30);
        assert_eq!(visibility_seconds(Duration::from_secs(43_200)), 43_200);
        assert_eq!(visibility_seconds(Duration::from_secs(86_400)), 43_200);
        assert_eq!(visibility_seconds(Duration::MAX), 43_200);
    }

    #[test]
    fn an_explicit_delay_wins_and_is_capped() {
        let mut message = with_priority("1");
        message.delay = Some(Duration::from_secs(2));
        assert_eq!(delivery_delay(&message), Duration::from_secs(2));
        message.delay = Some(Duration::from_secs(3600));
        assert_eq!(delivery_delay(&message), MAX_DELAY);
    }
}
