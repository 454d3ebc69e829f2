//! `GET /api/v1/me/export`: everything the platform holds about the caller,
//! as one versioned JSON document (format `charplat-export`, version 1; the
//! README's "GDPR export format v1" lists its keys).
//!
//! Read in one `REPEATABLE READ` transaction, so every section describes the
//! same instant (the ledger adds up to the balance beside it). Rows the caller
//! owns are read under row-level security as the caller; the credit tables
//! (no API-role access) and the caller's own ratings and likes (RLS shows them
//! only while the rated character is visible, but they are the caller's data
//! either way) are read as the system role, each query scoped to the caller.
//! Nothing of anyone else's is included: other users appear only as the ids
//! and usernames the caller's own rows already hold (a gift's counterpart as
//! the ledger has it).

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::{Client, GenericClient, IsolationLevel};
use utoipa::ToSchema;

use crate::activity::{self, Activity};
use crate::characters::images::{self, CharacterImage};
use crate::characters::{CHARACTER_COLUMNS, Character};
use crate::collections::{COLLECTION_COLUMNS, Collection};
use crate::credits::purchases::{ORDER_COLUMNS, PurchaseOrder};
use crate::db;
use crate::error::ApiError;
use crate::http::RequestMeta;
use crate::jobs::{JOB_COLUMNS, Job};
use crate::social::{RATING_COLUMNS, REPORT_COLUMNS, Rating, Report};
use crate::storage::ObjectStore;
use crate::users::{Profile, USER_COLUMNS, User, repo};

/// `format` of the document.
pub const FORMAT: &str = "charplat-export";
/// `format` of the answer that points at a stored document.
pub const LINK_FORMAT: &str = "charplat-export-link";
pub const VERSION: u32 = 1;
/// How long the download link of a stored export works.
pub const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

/// The export document, format `charplat-export` version 1. Every section is
/// present (empty when the caller has no such rows); rows use their table's
/// column names, oldest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportDocument {
    /// Always `charplat-export`.
    #[schema(example = "charplat-export")]
    pub format: &'static str,
    /// `1`. A change that removes or retypes a key gets a new version.
    pub version: u32,
    pub generated_at: DateTime<Utc>,
    /// The caller's `users` row.
    pub account: User,
    /// The caller's `user_profiles` row.
    pub profile: Option<Profile>,
    /// The caller's characters; image fields are time-limited links (one hour), never
    /// bucket keys.
    pub characters: Vec<Character>,
    /// The caller's generated images (`character_images` rows, variants' included): every
    /// column but the storage keys, with `url` and `thumbnail_url` links valid for an hour.
    pub images: Vec<ExportImage>,
    /// The caller's collections, each with the ids of the characters it files (which may be
    /// other users' public characters: ids only).
    pub collections: Vec<ExportCollection>,
    /// The caller's generation jobs; `output_urls` are time-limited links.
    pub generation_jobs: Vec<Job>,
    /// The caller's `user_credits` row (every column) plus `available`
    /// (`current_balance − reserved_balance`).
    #[schema(value_type = Object)]
    pub credit_account: Value,
    /// How each generation job was paid: the `credit_holds` rows, every column.
    #[schema(value_type = Vec<Object>)]
    pub credit_holds: Vec<Value>,
    /// The whole ledger: every `credit_transactions` row, every column, in posting order.
    #[schema(value_type = Vec<Object>)]
    pub credit_transactions: Vec<Value>,
    pub purchase_orders: Vec<PurchaseOrder>,
    /// Refunds of the caller's jobs (`job_refunds`), without the refunding operator's id.
    #[schema(value_type = Vec<Object>)]
    pub job_refunds: Vec<Value>,
    /// The gifts of the ledger, each with its counterpart's username as the entry holds it.
    pub gifts: ExportGifts,
    /// Ratings the caller gave (not ratings others gave the caller's characters).
    pub ratings: Vec<Rating>,
    /// Characters the caller likes.
    pub likes: Vec<ExportLike>,
    /// Content reports the caller filed.
    pub reports: Vec<Report>,
    /// The caller's `user_activity_logs` rows, every column (address, user agent, referrer
    /// and request id included), oldest first, as far back as the retention period keeps them.
    #[schema(value_type = Vec<Object>)]
    pub activity: Vec<Value>,
}

/// One of the caller's images: its record (as `GET /api/v1/characters/{id}/images` shows
/// it) and whose it is.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportImage {
    pub user_id: String,
    #[serde(flatten)]
    pub image: CharacterImage,
}

/// A collection and the ids of the characters it files, in display order.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportCollection {
    #[serde(flatten)]
    pub collection: Collection,
    pub character_ids: Vec<String>,
}

/// One like of the caller's.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportLike {
    pub character_id: String,
    pub created_at: DateTime<Utc>,
}

/// Gifts sent and received, from the caller's `gift_sent`/`gift_received` ledger entries.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct ExportGifts {
    pub sent: Vec<ExportGift>,
    pub received: Vec<ExportGift>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ExportGift {
    pub gift_id: Option<String>,
    /// The caller's ledger entry.
    pub transaction_id: String,
    /// Credits, always positive.
    pub amount: i32,
    /// The other side's username, as the ledger entry recorded it (`to_username` of a gift
    /// sent, `from_username` of a gift received).
    pub counterpart_username: Option<String>,
    pub message: Option<String>,
    pub created_at: DateTime<Utc>,
}

/// The answer when the document was too large to send inline: a link to it.
/// Clients tell the two answers apart by `format`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ExportLink {
    /// Always `charplat-export-link`.
    #[schema(example = "charplat-export-link")]
    pub format: &'static str,
    /// The version of the linked document's format.
    pub version: u32,
    pub generated_at: DateTime<Utc>,
    /// A time-limited link to the document (`application/json`).
    pub download_url: String,
    pub expires_at: DateTime<Utc>,
    /// The document's size.
    pub bytes: u64,
}

/// `200` of `GET /api/v1/me/export`: the document itself, or a link to it.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(crate) enum ExportAnswer {
    Document(Box<ExportDocument>),
    Link(ExportLink),
}

/// What to send back.
pub enum Delivery {
    /// The serialized document.
    Inline(Vec<u8>),
    Stored(ExportLink),
}

/// Builds the caller's export, stores it when it is larger than
/// `inline_max_bytes`, and logs an `export` activity row in the same
/// transaction as the reads (nothing is logged when storing fails).
pub async fn export(
    client: &mut Client,
    user: &User,
    storage: Option<&dyn ObjectStore>,
    inline_max_bytes: usize,
    meta: &RequestMeta,
) -> Result<Delivery, ApiError> {
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await?;
    // to_jsonb writes timestamps in the session's time zone: make it UTC.
    tx.batch_execute("SET LOCAL TimeZone = 'UTC'").await?;
    let document = read(&tx, user, storage).await?;
    let bytes = serde_json::to_vec(&document).map_err(ApiError::internal)?;
    let size = bytes.len() as u64;
    let (delivery, metadata) = if bytes.len() <= inline_max_bytes {
        (
            Delivery::Inline(bytes),
            json!({"delivery": "inline", "bytes": size, "version": VERSION}),
        )
    } else {
        let storage = storage.ok_or_else(|| ApiError::ServiceUnavailable {
            detail: "the export is too large to send inline and no storage is configured".into(),
            retry_after: 60,
        })?;
        let key = format!("exports/{}/{}.json", user.id, uuid::Uuid::new_v4());
        storage
            .put(&key, bytes, "application/json")
            .await
            .map_err(unavailable)?;
        let link = storage
            .presign_get(&key, LINK_TTL)
            .await
            .map_err(unavailable)?;
        (
            Delivery::Stored(ExportLink {
                format: LINK_FORMAT,
                version: VERSION,
                generated_at: document.generated_at,
                download_url: link.url,
                expires_at: link.expires_at,
                bytes: size,
            }),
            // The key lets an erasure delete the file before the bucket's lifecycle does.
            json!({"delivery": "storage", "bytes": size, "version": VERSION, "object_key": key}),
        )
    };
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: "export",
            entity_type: Some("user"),
            entity_id: Some(&user.id),
            metadata,
        },
        meta,
    )
    .await?;
    tx.commit().await?;
    Ok(delivery)
}

fn unavailable(error: crate::storage::StorageError) -> ApiError {
    tracing::error!(%error, "cannot store an export");
    ApiError::ServiceUnavailable {
        detail: "the export could not be stored; retry shortly".into(),
        retry_after: 30,
    }
}

async fn read(
    tx: &tokio_postgres::Transaction<'_>,
    user: &User,
    storage: Option<&dyn ObjectStore>,
) -> Result<ExportDocument, ApiError> {
    let id = &user.id;
    // As the system role, scoped to the caller (see the module documentation).
    let account = User::from_row(
        &tx.query_one(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[id],
        )
        .await?,
    )?;
    let credit_account: Value = tx
        .query_opt(
            "SELECT to_jsonb(c) || jsonb_build_object('available', c.current_balance - c.reserved_balance) \
             FROM user_credits c WHERE c.user_id = $1",
            &[id],
        )
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(Value::Null);
    let credit_transactions = json_rows(
        tx,
        "SELECT to_jsonb(t) FROM credit_transactions t WHERE t.user_id = $1 ORDER BY t.created_at, t.id",
        id,
    )
    .await?;
    let credit_holds = json_rows(
        tx,
        "SELECT to_jsonb(h) FROM credit_holds h WHERE h.user_id = $1 ORDER BY h.created_at, h.job_id",
        id,
    )
    .await?;
    let job_refunds = json_rows(
        tx,
        "SELECT to_jsonb(r) - 'refunded_by' FROM job_refunds r WHERE r.user_id = $1 ORDER BY r.created_at, r.job_id",
        id,
    )
    .await?;
    let purchase_orders = tx
        .query(
            &format!(
                "SELECT {ORDER_COLUMNS} FROM purchase_orders WHERE user_id = $1 ORDER BY created_at, id"
            ),
            &[id],
        )
        .await?
        .iter()
        .map(PurchaseOrder::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let ratings = tx
        .query(
            &format!(
                "SELECT {RATING_COLUMNS} FROM character_ratings WHERE user_id = $1 ORDER BY created_at, id"
            ),
            &[id],
        )
        .await?
        .iter()
        .map(Rating::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let likes = tx
        .query(
            "SELECT character_id, created_at FROM character_likes WHERE user_id = $1 \
             ORDER BY created_at, character_id",
            &[id],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(ExportLike {
                character_id: row.try_get(0)?,
                created_at: row.try_get(1)?,
            })
        })
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;

    // The rest as the caller, under row-level security.
    db::act_as(tx, Some(id)).await?;
    let profile = repo::profile(tx, id).await?;
    let mut characters = tx
        .query(
            &format!(
                "SELECT {CHARACTER_COLUMNS} FROM characters c WHERE c.user_id = $1 \
                 ORDER BY c.created_at, c.id"
            ),
            &[id],
        )
        .await?
        .iter()
        .map(Character::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for character in &mut characters {
        character.present(storage).await;
    }
    let mut exported_images = Vec::new();
    for record in images::of_user(tx, id).await? {
        exported_images.push(ExportImage {
            user_id: record.user_id.clone(),
            image: record.present(storage).await,
        });
    }
    let collections = read_collections(tx, id).await?;
    let mut generation_jobs = tx
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM generation_jobs WHERE user_id = $1 ORDER BY created_at, id"
            ),
            &[id],
        )
        .await?
        .iter()
        .map(Job::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    for job in &mut generation_jobs {
        job.present(storage).await;
    }
    let reports = tx
        .query(
            &format!(
                "SELECT {REPORT_COLUMNS} FROM content_reports WHERE reporter_id = $1 \
                 ORDER BY created_at, id"
            ),
            &[id],
        )
        .await?
        .iter()
        .map(Report::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let activity = json_rows(
        tx,
        "SELECT to_jsonb(a) FROM user_activity_logs a WHERE a.user_id = $1 ORDER BY a.created_at, a.id",
        id,
    )
    .await?;
    let gifts = gifts(&credit_transactions);
    Ok(ExportDocument {
        format: FORMAT,
        version: VERSION,
        generated_at: Utc::now(),
        account,
        profile,
        characters,
        images: exported_images,
        collections,
        generation_jobs,
        credit_account,
        credit_holds,
        credit_transactions,
        purchase_orders,
        job_refunds,
        gifts,
        ratings,
        likes,
        reports,
        activity,
    })
}

/// Each row's single `jsonb` column.
async fn json_rows(
    client: &impl GenericClient,
    sql: &str,
    user_id: &String,
) -> Result<Vec<Value>, ApiError> {
    client
        .query(sql, &[user_id])
        .await?
        .iter()
        .map(|row| row.try_get(0).map_err(ApiError::from))
        .collect()
}

async fn read_collections(
    tx: &tokio_postgres::Transaction<'_>,
    user_id: &String,
) -> Result<Vec<ExportCollection>, ApiError> {
    let collections = tx
        .query(
            &format!(
                "SELECT {COLLECTION_COLUMNS} FROM collections WHERE user_id = $1 ORDER BY created_at, id"
            ),
            &[user_id],
        )
        .await?
        .iter()
        .map(Collection::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let members = tx
        .query(
            "SELECT cc.collection_id, cc.character_id FROM collection_characters cc \
             JOIN collections c ON c.id = cc.collection_id WHERE c.user_id = $1 \
             ORDER BY cc.display_order NULLS LAST, cc.added_at, cc.character_id",
            &[user_id],
        )
        .await?;
    let mut out: Vec<ExportCollection> = collections
        .into_iter()
        .map(|collection| ExportCollection {
            collection,
            character_ids: Vec::new(),
        })
        .collect();
    for row in &members {
        let collection_id: String = row.try_get(0)?;
        let character_id: String = row.try_get(1)?;
        if let Some(entry) = out.iter_mut().find(|c| c.collection.id == collection_id) {
            entry.character_ids.push(character_id);
        }
    }
    Ok(out)
}

/// The gifts of the ledger, as its `gift_sent`/`gift_received` entries hold them.
fn gifts(ledger: &[Value]) -> ExportGifts {
    let mut gifts = ExportGifts::default();
    for entry in ledger {
        let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
        let meta = |key: &str| {
            entry
                .get("metadata")
                .and_then(|m| m.get(key))
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        let (list, counterpart) = match entry.get("transaction_type").and_then(Value::as_str) {
            Some("gift_sent") => (&mut gifts.sent, meta("to_username")),
            Some("gift_received") => (&mut gifts.received, meta("from_username")),
            _ => continue,
        };
        let amount = entry
            .get("amount")
            .and_then(Value::as_i64)
            .and_then(|a| i32::try_from(a.unsigned_abs()).ok())
            .unwrap_or_default();
        let created_at = entry
            .get("created_at")
            .and_then(Value::as_str)
            .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        list.push(ExportGift {
            gift_id: text("related_entity_id"),
            transaction_id: text("id").unwrap_or_default(),
            amount,
            counterpart_username: counterpart,
            message: meta("message"),
            created_at,
        });
    }
    gifts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gifts_come_from_the_ledger_entries_with_their_counterparts() {
        let ledger = vec![
            json!({"id": "t1", "transaction_type": "purchase", "amount": 100}),
            json!({"id": "t2", "transaction_type": "gift_sent", "amount": -25,
                   "related_entity_id": "g1", "created_at": "2025-01-02T03:04:05.123456+00:00",
                   "metadata": {"to_username": "bob", "message": "hi"}}),
            json!({"id": "t3", "transaction_type": "gift_received", "amount": 7,
                   "related_entity_id": "g2", "created_at": "2025-01-03T00:00:00+00:00",
                   "metadata": {"from_username": "cy", "message": null}}),
        ];
        let gifts = gifts(&ledger);
        assert_eq!(gifts.sent.len(), 1);
        assert_eq!(gifts.sent[0].amount, 25);
        assert_eq!(gifts.sent[0].counterpart_username.as_deref(), Some("bob"));
        assert_eq!(gifts.sent[0].message.as_deref(), Some("hi"));
        assert_eq!(gifts.sent[0].gift_id.as_deref(), Some("g1"));
        assert_eq!(
            gifts.sent[0].created_at.to_rfc3339(),
            "2025-01-02T03:04:05.123456+00:00"
        );
        assert_eq!(gifts.received.len(), 1);
        assert_eq!(
            gifts.received[0].counterpart_username.as_deref(),
            Some("cy")
        );
        assert_eq!(gifts.received[0].message, None);
    }
}
