//! The S3 and SQS adapters against moto (`testkit::moto`): what the worker
//! and dispatch rely on, and the SQS behaviour the worker's exactly-once
//! design assumes (visibility timeout, redrive to a dead-letter queue).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use shared::ports::queue::sqs::SqsJobQueue;
use shared::ports::queue::{JobQueue, OutgoingMessage, QueueError};
use shared::ports::storage::s3::S3ObjectStore;
use shared::ports::storage::{ObjectStore, StorageError};
use testkit::moto;

async fn store() -> S3ObjectStore {
    let bucket = moto::create_bucket("images").await;
    S3ObjectStore::new(&moto::sdk_config().await, bucket)
}

async fn create_queue(
    sqs: &aws_sdk_sqs::Client,
    attributes: &[(QueueAttributeName, String)],
) -> String {
    let mut request = sqs.create_queue().queue_name(moto::unique_name("jobs"));
    for (name, value) in attributes {
        request = request.attributes(name.clone(), value);
    }
    request.send().await.unwrap().queue_url.unwrap()
}

async fn receive(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    visibility: Option<i32>,
) -> Vec<aws_sdk_sqs::types::Message> {
    sqs.receive_message()
        .queue_url(queue_url)
        .max_number_of_messages(10)
        .set_visibility_timeout(visibility)
        .message_attribute_names("All")
        .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default()
}

/// Long-polls `queue_url` (one second at a time) until a receive returns
/// messages, failing the test after `within`; with how long after `since`
/// they came. Waiting for a message that is due is done by asking SQS,
/// never by sleeping for a guessed time.
async fn receive_within(
    sqs: &aws_sdk_sqs::Client,
    queue_url: &str,
    visibility: Option<i32>,
    since: Instant,
    within: Duration,
) -> (Vec<aws_sdk_sqs::types::Message>, Duration) {
    let deadline = Instant::now() + within;
    loop {
        let got = sqs
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .set_visibility_timeout(visibility)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default();
        if !got.is_empty() {
            return (got, since.elapsed());
        }
        assert!(
            Instant::now() < deadline,
            "nothing arrived on {queue_url} within {within:?}"
        );
    }
}

/// The queue's (visible, in flight, delayed) message counts.
async fn queue_depths(sqs: &aws_sdk_sqs::Client, queue_url: &str) -> (String, String, String) {
    let mut attributes = sqs
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap_or_default();
    let mut take = |name| attributes.remove(&name).unwrap_or_default();
    (
        take(QueueAttributeName::ApproximateNumberOfMessages),
        take(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        take(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
    )
}

fn receive_count(message: &aws_sdk_sqs::types::Message) -> String {
    message
        .attributes
        .as_ref()
        .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn s3_store_puts_gets_presigns_and_deletes() {
    let store = store().await;
    let key = "users/u1/characters/c1/j1/image.png";
    let bytes = b"\x89PNG\r\n\x1a\nnot really a png".to_vec();
    store.put(key, bytes.clone(), "image/png").await.unwrap();

    assert_eq!(store.get(key).await.unwrap(), bytes);
    let head = moto::s3_client()
        .await
        .head_object()
        .bucket(store.bucket())
        .key(key)
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_type(), Some("image/png"));

    // The presigned URL works without credentials and says when it expires.
    let before = chrono::Utc::now();
    let link = store
        .presign_get(key, Duration::from_secs(120))
        .await
        .unwrap();
    let lifetime = link.expires_at - before;
    assert!(
        (115..=125).contains(&lifetime.num_seconds()),
        "{lifetime:?}"
    );
    assert!(link.url.contains("X-Amz-Expires=120"), "{}", link.url);
    let response = reqwest::get(&link.url).await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.bytes().await.unwrap().to_vec(), bytes);

    store.delete(key).await.unwrap();
    store.delete(key).await.unwrap(); // idempotent
    assert!(matches!(
        store.get(key).await,
        Err(StorageError::NotFound(k)) if k == key
    ));
    assert!(matches!(
        store.get("users/u1/never-written.png").await,
        Err(StorageError::NotFound(_))
    ));
}

#[tokio::test]
async fn s3_store_refuses_keys_outside_its_scheme() {
    let store = store().await;
    for key in ["../etc/passwd", "/abs.png", "a//b", "a b.png"] {
        assert!(matches!(
            store.put(key, vec![1], "image/png").await,
            Err(StorageError::InvalidKey(_))
        ));
        assert!(matches!(
            store.presign_get(key, Duration::from_secs(60)).await,
            Err(StorageError::InvalidKey(_))
        ));
    }
}

#[tokio::test]
async fn s3_store_reports_a_missing_bucket_as_a_backend_error() {
    let store = S3ObjectStore::new(&moto::sdk_config().await, moto::unique_name("absent"));
    assert!(matches!(
        store.get("users/u/a.png").await,
        Err(StorageError::Backend(_))
    ));
}

#[tokio::test]
async fn sqs_queue_sends_attributes_and_delays_by_priority() {
    let sqs = moto::sqs_client().await;
    let queue_url = create_queue(&sqs, &[]).await;
    let queue = SqsJobQueue::new(&moto::sdk_config().await, &queue_url);

    // Priority 10: no delay.
    let urgent = OutgoingMessage {
        body: r#"{"job_id":"job-urgent"}"#.into(),
        attributes: BTreeMap::from([
            ("job_id".to_string(), "job-urgent".to_string()),
            ("job_type".to_string(), "character_generation".to_string()),
            ("priority".to_string(), "10".to_string()),
        ]),
        delay: None,
    };
    let id = queue.send(&urgent).await.unwrap();
    assert!(!id.is_empty());
    // Visible at once: one waiting, none delayed, and the next receive gets it.
    assert_eq!(
        queue_depths(&sqs, &queue_url).await,
        ("1".into(), "0".into(), "0".into())
    );
    let now = receive(&sqs, &queue_url, Some(60)).await;
    assert_eq!(now.len(), 1, "{now:?}");
    let message = &now[0];
    assert_eq!(message.body(), Some(r#"{"job_id":"job-urgent"}"#));
    let attributes = message.message_attributes.clone().unwrap_or_default();
    for (name, value) in [
        ("job_id", "job-urgent"),
        ("job_type", "character_generation"),
        ("priority", "10"),
    ] {
        let attribute = &attributes[name];
        assert_eq!(attribute.data_type(), "String");
        assert_eq!(attribute.string_value(), Some(value), "{name}");
    }

    // Priority 4 (one below the default): held back two seconds, then
    // delivered. However slow the machine, it cannot arrive sooner than that
    // after it was sent (less 50 ms: moto's clock is the wall clock, ours is
    // monotonic).
    let mut later = urgent.clone();
    later.body = r#"{"job_id":"job-later"}"#.into();
    later.attributes.insert("priority".into(), "4".into());
    let sent_later = Instant::now();
    queue.send(&later).await.unwrap();
    let (delayed, after) = receive_within(
        &sqs,
        &queue_url,
        Some(60),
        sent_later,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(delayed.len(), 1, "{delayed:?}");
    assert_eq!(delayed[0].body(), Some(r#"{"job_id":"job-later"}"#));
    assert!(
        after >= Duration::from_millis(1950),
        "delivered {after:?} after the send, before its two-second delay"
    );
}

#[tokio::test]
async fn sqs_message_not_deleted_comes_back_after_the_visibility_timeout() {
    let sqs = moto::sqs_client().await;
    let queue_url =
        create_queue(&sqs, &[(QueueAttributeName::VisibilityTimeout, "1".into())]).await;
    let queue = SqsJobQueue::new(&moto::sdk_config().await, &queue_url);
    let mut message = OutgoingMessage {
        body: r#"{"job_id":"j1"}"#.into(),
        ..OutgoingMessage::default()
    };
    message.attributes.insert("priority".into(), "10".into());
    queue.send(&message).await.unwrap();

    let received_at = Instant::now();
    let first = receive(&sqs, &queue_url, None).await;
    assert_eq!(first.len(), 1);
    assert_eq!(receive_count(&first[0]), "1");
    // In flight, it is invisible until the timeout has passed (however slow
    // the machine, not sooner: less 50 ms for moto's wall clock), then back.
    let (again, after) =
        receive_within(&sqs, &queue_url, None, received_at, Duration::from_secs(30)).await;
    assert!(
        after >= Duration::from_millis(950),
        "back {after:?} after the receive, within its visibility timeout"
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].body(), Some(r#"{"job_id":"j1"}"#));
    assert_eq!(receive_count(&again[0]), "2");

    // Deleted with its receipt handle, it is gone for good.
    sqs.delete_message()
        .queue_url(&queue_url)
        .receipt_handle(again[0].receipt_handle().unwrap())
        .send()
        .await
        .unwrap();
    // Nothing is left to come back: none visible, in flight or delayed.
    assert_eq!(
        queue_depths(&sqs, &queue_url).await,
        ("0".into(), "0".into(), "0".into())
    );
    assert!(receive(&sqs, &queue_url, None).await.is_empty());
}

#[tokio::test]
async fn sqs_redrives_to_the_dead_letter_queue_after_max_receive_count() {
    let sqs = moto::sqs_client().await;
    let dlq_url = create_queue(&sqs, &[]).await;
    let dlq_arn = sqs
        .get_queue_attributes()
        .queue_url(&dlq_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .unwrap();
    let max_receives = 3;
    let queue_url = create_queue(
        &sqs,
        &[(
            QueueAttributeName::RedrivePolicy,
            serde_json::json!({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": max_receives})
                .to_string(),
        )],
    )
    .await;
    let queue = SqsJobQueue::new(&moto::sdk_config().await, &queue_url);
    let mut message = OutgoingMessage {
        body: r#"{"job_id":"poison"}"#.into(),
        ..OutgoingMessage::default()
    };
    message.attributes.insert("priority".into(), "10".into());
    queue.send(&message).await.unwrap();

    // Received and never deleted (visibility 0: back at once), max_receives times.
    for n in 1..=max_receives {
        let got = receive(&sqs, &queue_url, Some(0)).await;
        assert_eq!(got.len(), 1, "receive {n}");
        assert_eq!(receive_count(&got[0]), n.to_string());
    }
    // The next receive finds it over the limit: it moves to the DLQ.
    assert!(receive(&sqs, &queue_url, Some(0)).await.is_empty());
    let dead = receive(&sqs, &dlq_url, None).await;
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].body(), Some(r#"{"job_id":"poison"}"#));
}

#[tokio::test]
async fn sqs_visibility_changes_bring_a_message_back_or_keep_it_away() {
    let sqs = moto::sqs_client().await;
    // In flight for ten minutes after a receive, unless told otherwise.
    let queue_url = create_queue(
        &sqs,
        &[(QueueAttributeName::VisibilityTimeout, "600".into())],
    )
    .await;
    let queue = SqsJobQueue::new(&moto::sdk_config().await, &queue_url);
    let mut message = OutgoingMessage {
        body: r#"{"job_id":"retry-me"}"#.into(),
        ..OutgoingMessage::default()
    };
    message.attributes.insert("priority".into(), "10".into());
    queue.send(&message).await.unwrap();

    // Zero: receivable again at once.
    let first = receive(&sqs, &queue_url, None).await;
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        receive(&sqs, &queue_url, None).await.is_empty(),
        "in flight"
    );
    queue
        .change_visibility(first[0].receipt_handle().unwrap(), Duration::ZERO)
        .await
        .unwrap();
    let again = receive(&sqs, &queue_url, Some(1)).await;
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!(again[0].body(), Some(r#"{"job_id":"retry-me"}"#));
    assert_eq!(receive_count(&again[0]), "2");

    // Received for one second, then pushed out to a minute: a receive that
    // waits past that second still finds nothing.
    queue
        .change_visibility(again[0].receipt_handle().unwrap(), Duration::from_secs(60))
        .await
        .unwrap();
    let waited = sqs
        .receive_message()
        .queue_url(&queue_url)
        .wait_time_seconds(3)
        .send()
        .await
        .unwrap()
        .messages
        .unwrap_or_default();
    assert!(waited.is_empty(), "{waited:?}");
}

#[tokio::test]
async fn sqs_visibility_change_errors_say_who_is_at_fault() {
    let sqs = moto::sqs_client().await;
    let queue_url = create_queue(&sqs, &[]).await;
    let queue = SqsJobQueue::new(&moto::sdk_config().await, &queue_url);
    match queue
        .change_visibility("not-a-receipt-handle", Duration::ZERO)
        .await
    {
        Err(QueueError::Rejected(reason)) => {
            assert!(reason.contains("ReceiptHandleIsInvalid"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // SQS counts its 12 hours from the receive (moto: from the send), so the
    // clamped maximum asked for a message received a moment ago is refused too.
    let mut message = OutgoingMessage {
        body: "{}".into(),
        ..OutgoingMessage::default()
    };
    message.attributes.insert("priority".into(), "10".into());
    queue.send(&message).await.unwrap();
    let received = receive(&sqs, &queue_url, Some(60)).await;
    assert_eq!(received.len(), 1, "{received:?}");
    match queue
        .change_visibility(received[0].receipt_handle().unwrap(), Duration::MAX)
        .await
    {
        Err(QueueError::Rejected(reason)) => {
            assert!(reason.contains("InvalidParameterValue"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }

    // A queue that is not there is the backend's failure, not the handle's.
    let gone = SqsJobQueue::new(
        &moto::sdk_config().await,
        format!(
            "{}/000000000000/{}",
            moto::endpoint(),
            moto::unique_name("absent")
        ),
    );
    match gone.change_visibility("any", Duration::ZERO).await {
        Err(QueueError::Backend(reason)) => {
            assert!(reason.contains("QueueDoesNotExist"), "{reason}")
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
}
