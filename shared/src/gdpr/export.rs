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
//!
//! Memory stays bounded whatever the account's size: the document is written
//! as it is read, [`BATCH`] rows at a time through a cursor, to a spool file
//! in the temporary directory; then either sent inline (it is small) or
//! streamed from the file to storage. [`ExportDocument`] is the schema of
//! what is written (the tests check every key against it).

use std::io::{BufWriter, Read, Write};
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};
use utoipa::ToSchema;

use crate::activity::{self, Activity};
use crate::characters::images::{self, CharacterImage};
use crate::characters::{CHARACTER_COLUMNS, Character};
use crate::collections::{COLLECTION_COLUMNS, Collection};
use crate::credits::purchases::{ORDER_COLUMNS, PurchaseOrder};
use crate::jobs::{JOB_COLUMNS, Job};
use crate::kernel::error::ApiError;
use crate::ports::db;
use crate::ports::storage::ObjectStore;
use crate::social::{RATING_COLUMNS, REPORT_COLUMNS, Rating, Report};
use crate::users::{Profile, USER_COLUMNS, User, repo};
use crate::web::http::RequestMeta;

/// `format` of the document.
pub const FORMAT: &str = "charplat-export";
/// `format` of the answer that points at a stored document.
pub const LINK_FORMAT: &str = "charplat-export-link";
pub const VERSION: u32 = 1;
/// How long the download link of a stored export works.
pub const LINK_TTL: std::time::Duration = std::time::Duration::from_secs(3600);
/// Rows read (and held) at a time from each section's cursor.
pub const BATCH: i32 = 500;

/// The export document, format `charplat-export` version 1. Every section is
/// present (empty when the caller has no such rows); rows use their table's
/// column names, oldest first. The document is written section by section
/// (see [`export`]); this type is its schema in the OpenAPI document, and the
/// tests hold the written keys to it.
#[derive(Debug, Serialize, ToSchema)]
#[allow(dead_code)]
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
    /// `{code, referred_by, made}`: the caller's referral code (`null` until first asked
    /// for), how the caller's own referral was settled (`null` if not referred; the
    /// referrer is not named) and the referrals the caller made (when and how each was
    /// settled; the referred accounts are not named).
    #[schema(value_type = Object)]
    pub referrals: Value,
    /// `{following, followers}`: the people the caller follows (`username`, `since`) and how
    /// many people follow the caller (not who).
    #[schema(value_type = Object)]
    pub follows: Value,
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
    let generated_at = Utc::now();
    let mut doc = DocWriter::new(Spool::create().map_err(spool_failed)?);
    write_document(&tx, user, storage, generated_at, &mut doc).await?;
    let spool = doc.finish().map_err(spool_failed)?;
    let size = spool.len().map_err(spool_failed)?;
    let (delivery, metadata) = if size <= inline_max_bytes as u64 {
        (
            Delivery::Inline(spool.read_all().map_err(spool_failed)?),
            json!({"delivery": "inline", "bytes": size, "version": VERSION}),
        )
    } else {
        let storage = storage.ok_or_else(|| ApiError::ServiceUnavailable {
            detail: "the export is too large to send inline and no storage is configured".into(),
            retry_after: 60,
        })?;
        let key = format!("exports/{}/{}.json", user.id, uuid::Uuid::new_v4());
        storage
            .put_file(&key, &spool.path, "application/json")
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
                generated_at,
                download_url: link.url,
                expires_at: link.expires_at,
                bytes: size,
            }),
            // The key lets an erasure delete the file before the bucket's lifecycle does.
            json!({"delivery": "storage", "bytes": size, "version": VERSION, "object_key": key}),
        )
    };
    drop(spool);
    activity::record(
        &tx,
        Activity {
            user_id: Some(&user.id),
            activity_type: crate::activity::ActivityType::Export,
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

fn unavailable(error: crate::ports::storage::StorageError) -> ApiError {
    tracing::error!(%error, "cannot store an export");
    ApiError::ServiceUnavailable {
        detail: "the export could not be stored; retry shortly".into(),
        retry_after: 30,
    }
}

fn spool_failed(error: std::io::Error) -> ApiError {
    tracing::error!(%error, "cannot write an export to the temporary directory");
    ApiError::ServiceUnavailable {
        detail: "the export could not be written; retry shortly".into(),
        retry_after: 30,
    }
}

/// Writes every section, reading each through a cursor.
async fn write_document(
    tx: &Transaction<'_>,
    user: &User,
    storage: Option<&dyn ObjectStore>,
    generated_at: DateTime<Utc>,
    doc: &mut DocWriter,
) -> Result<(), ApiError> {
    let id = &user.id;
    write_account(tx, user, generated_at, doc).await?;
    let mut rows = Section::new(tx, doc, id);
    write_credit_sections(&mut rows).await?;
    write_ratings_and_likes(&mut rows).await?;

    // The rest as the caller, under row-level security.
    db::act_as(tx, Some(id)).await?;
    let profile = repo::profile(tx, id).await?;
    rows.doc().field("profile", &profile)?;
    write_characters_and_images(&mut rows, storage).await?;
    rows.doc()
        .field("collections", &read_collections(tx, id).await?)?;
    write_jobs_reports_and_activity(&mut rows, storage).await?;
    Ok(())
}

/// Writes the header (format, version, time) and the account and credit
/// account rows.
async fn write_account(
    tx: &Transaction<'_>,
    user: &User,
    generated_at: DateTime<Utc>,
    doc: &mut DocWriter,
) -> Result<(), ApiError> {
    let id = &user.id;
    doc.field("format", &FORMAT)?;
    doc.field("version", &VERSION)?;
    doc.field("generated_at", &generated_at)?;
    // As the system role, scoped to the caller (see the module documentation).
    let account = User::from_row(
        &tx.query_one(
            &format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"),
            &[id],
        )
        .await?,
    )?;
    doc.field("account", &account)?;
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
    doc.field("credit_account", &credit_account)?;
    doc.field("referrals", &referrals(tx, id).await?)?;
    doc.field("follows", &follows(tx, id).await?)?;
    Ok(())
}

/// Whom the caller follows (by username, with when) and how many follow them.
async fn follows(tx: &Transaction<'_>, id: &str) -> Result<Value, ApiError> {
    let row = tx
        .query_one(
            "SELECT coalesce((SELECT jsonb_agg(jsonb_build_object('username', u.username, \
                              'since', f.created_at) ORDER BY f.created_at) \
                       FROM follows f JOIN users u ON u.id = f.followed_id \
                       WHERE f.follower_id = $1), '[]'::jsonb), \
                    (SELECT count(*) FROM follows WHERE followed_id = $1)",
            &[&id],
        )
        .await?;
    let following: Value = row.try_get(0)?;
    let followers: i64 = row.try_get(1)?;
    Ok(serde_json::json!({"following": following, "followers": followers}))
}

/// The caller's referral code, who referred them (how it was settled, not who) and the
/// referrals they made (when and how each was settled; never the other accounts' ids).
async fn referrals(tx: &Transaction<'_>, id: &str) -> Result<Value, ApiError> {
    let row = tx
        .query_one(
            "SELECT (SELECT referral_code FROM users WHERE id = $1), \
                    (SELECT jsonb_build_object('created_at', created_at, 'outcome', outcome, \
                              'settled_at', settled_at, 'credits_each', credits_each) \
                       FROM referrals WHERE referred_user_id = $1), \
                    coalesce((SELECT jsonb_agg(jsonb_build_object('created_at', created_at, \
                              'outcome', outcome, 'settled_at', settled_at, \
                              'credits_each', credits_each) ORDER BY created_at) \
                       FROM referrals WHERE referrer_id = $1), '[]'::jsonb)",
            &[&id],
        )
        .await?;
    let code: Option<String> = row.try_get(0)?;
    let referred_by: Option<Value> = row.try_get(1)?;
    let made: Value = row.try_get(2)?;
    Ok(serde_json::json!({"code": code, "referred_by": referred_by, "made": made}))
}

/// Writes the credit sections: transactions, holds, refunds, purchase
/// orders and gifts (sent and received).
async fn write_credit_sections(rows: &mut Section<'_, '_>) -> Result<(), ApiError> {
    rows.json(
        "credit_transactions",
        "SELECT to_jsonb(t) FROM credit_transactions t WHERE t.user_id = $1 ORDER BY t.created_at, t.id",
    )
    .await?;
    rows.json(
        "credit_holds",
        "SELECT to_jsonb(h) FROM credit_holds h WHERE h.user_id = $1 ORDER BY h.created_at, h.job_id",
    )
    .await?;
    rows.json(
        "job_refunds",
        "SELECT to_jsonb(r) - 'refunded_by' FROM job_refunds r WHERE r.user_id = $1 ORDER BY r.created_at, r.job_id",
    )
    .await?;
    rows.each(
        "purchase_orders",
        &format!(
            "SELECT {ORDER_COLUMNS} FROM purchase_orders WHERE user_id = $1 ORDER BY created_at, id"
        ),
        |row| Ok(PurchaseOrder::from_row(row)?),
    )
    .await?;
    rows.doc().open_object("gifts")?;
    for (key, kind) in [("sent", "gift_sent"), ("received", "gift_received")] {
        rows.each(
            key,
            &format!(
                "SELECT to_jsonb(t) FROM credit_transactions t WHERE t.user_id = $1 \
                 AND t.transaction_type = '{kind}' ORDER BY t.created_at, t.id"
            ),
            |row| Ok(gift_of(&row.try_get::<_, Value>(0)?)),
        )
        .await?;
    }
    rows.doc().close_object()?;
    Ok(())
}

/// Writes the caller's ratings and likes.
async fn write_ratings_and_likes(rows: &mut Section<'_, '_>) -> Result<(), ApiError> {
    rows.each(
        "ratings",
        &format!("SELECT {RATING_COLUMNS} FROM character_ratings WHERE user_id = $1 ORDER BY created_at, id"),
        |row| Ok(Rating::from_row(row)?),
    )
    .await?;
    rows.each(
        "likes",
        "SELECT character_id, created_at FROM character_likes WHERE user_id = $1 \
         ORDER BY created_at, character_id",
        |row| {
            Ok(ExportLike {
                character_id: row.try_get(0)?,
                created_at: row.try_get(1)?,
            })
        },
    )
    .await?;
    Ok(())
}

/// Writes the caller's characters and images, each presented (with its
/// image URLs).
async fn write_characters_and_images(
    rows: &mut Section<'_, '_>,
    storage: Option<&dyn ObjectStore>,
) -> Result<(), ApiError> {
    let portal = rows.open(&format!(
        "SELECT {CHARACTER_COLUMNS} FROM characters c WHERE c.user_id = $1 ORDER BY c.created_at, c.id"
    ))
    .await?;
    rows.doc().open_array("characters")?;
    while let Some(batch) = rows.next(&portal).await? {
        for row in &batch {
            let mut character = Character::from_row(row)?;
            character.present(storage).await;
            rows.doc().item(&character)?;
        }
    }
    rows.doc().close_array()?;
    let portal = rows.open(&images::of_user_sql()).await?;
    rows.doc().open_array("images")?;
    while let Some(batch) = rows.next(&portal).await? {
        for row in &batch {
            let record = images::ImageRecord::from_row(row)?;
            let image = ExportImage {
                user_id: record.user_id.clone(),
                image: record.present(storage).await,
            };
            rows.doc().item(&image)?;
        }
    }
    rows.doc().close_array()?;
    Ok(())
}

/// Writes the caller's generation jobs (presented), reports and activity.
async fn write_jobs_reports_and_activity(
    rows: &mut Section<'_, '_>,
    storage: Option<&dyn ObjectStore>,
) -> Result<(), ApiError> {
    let portal = rows
        .open(&format!(
            "SELECT {JOB_COLUMNS} FROM generation_jobs WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .await?;
    rows.doc().open_array("generation_jobs")?;
    while let Some(batch) = rows.next(&portal).await? {
        for row in &batch {
            let mut job = Job::from_row(row)?;
            job.present(storage).await;
            rows.doc().item(&job)?;
        }
    }
    rows.doc().close_array()?;
    rows.each(
        "reports",
        &format!("SELECT {REPORT_COLUMNS} FROM content_reports WHERE reporter_id = $1 ORDER BY created_at, id"),
        |row| Ok(Report::from_row(row)?),
    )
    .await?;
    rows.json(
        "activity",
        "SELECT to_jsonb(a) FROM user_activity_logs a WHERE a.user_id = $1 ORDER BY a.created_at, a.id",
    )
    .await?;
    Ok(())
}

/// Reads the caller's rows of one section through a cursor, [`BATCH`] at a
/// time, and writes each as it comes.
struct Section<'t, 'a> {
    tx: &'t Transaction<'a>,
    doc: &'t mut DocWriter,
    user_id: &'t String,
}

impl<'t, 'a> Section<'t, 'a> {
    fn new(tx: &'t Transaction<'a>, doc: &'t mut DocWriter, user_id: &'t String) -> Self {
        Self { tx, doc, user_id }
    }

    fn doc(&mut self) -> &mut DocWriter {
        self.doc
    }

    async fn open(&self, sql: &str) -> Result<tokio_postgres::Portal, ApiError> {
        let params: [&(dyn ToSql + Sync); 1] = [self.user_id];
        Ok(self.tx.bind(sql, &params).await?)
    }

    /// The next batch, `None` once the cursor is exhausted.
    async fn next(&self, portal: &tokio_postgres::Portal) -> Result<Option<Vec<Row>>, ApiError> {
        let rows = self.tx.query_portal(portal, BATCH).await?;
        Ok((!rows.is_empty()).then_some(rows))
    }

    /// A section whose rows are one `jsonb` column.
    async fn json(&mut self, key: &str, sql: &str) -> Result<(), ApiError> {
        self.each(key, sql, |row| Ok(row.try_get::<_, Value>(0)?))
            .await
    }

    /// A section of rows, each turned into what the document holds.
    async fn each<T: Serialize>(
        &mut self,
        key: &str,
        sql: &str,
        convert: impl Fn(&Row) -> Result<T, ApiError>,
    ) -> Result<(), ApiError> {
        let portal = self.open(sql).await?;
        self.doc().open_array(key)?;
        while let Some(batch) = self.next(&portal).await? {
            for row in &batch {
                self.doc.item(&convert(row)?)?;
            }
        }
        self.doc().close_array()?;
        Ok(())
    }
}

/// A JSON object written piece by piece: fields, arrays item by item, one
/// level of nested objects.
struct DocWriter {
    out: BufWriter<Spool>,
    /// Whether the innermost open object or array has no member yet.
    empty: Vec<bool>,
}

impl DocWriter {
    fn new(spool: Spool) -> Self {
        let mut out = BufWriter::with_capacity(64 * 1024, spool);
        // Written on the first use; a failure then is reported there.
        let _ = out.write_all(b"{");
        Self {
            out,
            empty: vec![true],
        }
    }

    fn separator(&mut self) -> std::io::Result<()> {
        if let Some(empty) = self.empty.last_mut() {
            if !*empty {
                self.out.write_all(b",")?;
            }
            *empty = false;
        }
        Ok(())
    }

    fn key(&mut self, key: &str) -> std::io::Result<()> {
        self.separator()?;
        serde_json::to_writer(&mut self.out, key)?;
        self.out.write_all(b":")
    }

    fn field<T: Serialize + ?Sized>(&mut self, key: &str, value: &T) -> Result<(), ApiError> {
        self.key(key).map_err(spool_failed)?;
        serde_json::to_writer(&mut self.out, value).map_err(ApiError::internal)
    }

    fn open_array(&mut self, key: &str) -> Result<(), ApiError> {
        self.key(key).map_err(spool_failed)?;
        self.out.write_all(b"[").map_err(spool_failed)?;
        self.empty.push(true);
        Ok(())
    }

    fn item<T: Serialize>(&mut self, value: &T) -> Result<(), ApiError> {
        self.separator().map_err(spool_failed)?;
        serde_json::to_writer(&mut self.out, value).map_err(ApiError::internal)
    }

    fn close_array(&mut self) -> Result<(), ApiError> {
        self.empty.pop();
        self.out.write_all(b"]").map_err(spool_failed)
    }

    fn open_object(&mut self, key: &str) -> Result<(), ApiError> {
        self.key(key).map_err(spool_failed)?;
        self.out.write_all(b"{").map_err(spool_failed)?;
        self.empty.push(true);
        Ok(())
    }

    fn close_object(&mut self) -> Result<(), ApiError> {
        self.empty.pop();
        self.out.write_all(b"}").map_err(spool_failed)
    }

    /// Closes the document and hands back its file.
    fn finish(mut self) -> std::io::Result<Spool> {
        self.out.write_all(b"}")?;
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// A file in the temporary directory (Lambda's `/tmp`), removed when dropped.
struct Spool {
    path: PathBuf,
    file: std::fs::File,
}

impl Spool {
    fn create() -> std::io::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("charplat-export-{}.json", uuid::Uuid::new_v4()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(Self { path, file })
    }

    fn len(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// The whole file (only for small documents: see `inline_max_bytes`).
    fn read_all(&self) -> std::io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        std::fs::File::open(&self.path)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    }
}

impl Write for Spool {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn read_collections(
    tx: &Transaction<'_>,
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

/// A gift, as its `gift_sent` or `gift_received` ledger entry holds it.
fn gift_of(entry: &Value) -> ExportGift {
    let text = |key: &str| entry.get(key).and_then(Value::as_str).map(str::to_string);
    let meta = |key: &str| {
        entry
            .get("metadata")
            .and_then(|m| m.get(key))
            .and_then(Value::as_str)
            .map(str::to_string)
    };
    let counterpart = match entry.get("transaction_type").and_then(Value::as_str) {
        Some("gift_sent") => meta("to_username"),
        _ => meta("from_username"),
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
    ExportGift {
        gift_id: text("related_entity_id"),
        transaction_id: text("id").unwrap_or_default(),
        amount,
        counterpart_username: counterpart,
        message: meta("message"),
        created_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gifts_come_from_the_ledger_entries_with_their_counterparts() {
        let sent = gift_of(
            &json!({"id": "t2", "transaction_type": "gift_sent", "amount": -25,
               "related_entity_id": "g1", "created_at": "2025-01-02T03:04:05.123456+00:00",
               "metadata": {"to_username": "bob", "message": "hi"}}),
        );
        assert_eq!(sent.amount, 25);
        assert_eq!(sent.counterpart_username.as_deref(), Some("bob"));
        assert_eq!(sent.message.as_deref(), Some("hi"));
        assert_eq!(sent.gift_id.as_deref(), Some("g1"));
        assert_eq!(sent.transaction_id, "t2");
        assert_eq!(
            sent.created_at.to_rfc3339(),
            "2025-01-02T03:04:05.123456+00:00"
        );
        let received = gift_of(
            &json!({"id": "t3", "transaction_type": "gift_received", "amount": 7,
               "related_entity_id": "g2", "created_at": "2025-01-03T00:00:00+00:00",
               "metadata": {"from_username": "cy", "message": null}}),
        );
        assert_eq!(received.counterpart_username.as_deref(), Some("cy"));
        assert_eq!(received.message, None);
        assert_eq!(received.amount, 7);
    }

    #[test]
    fn the_writer_makes_one_valid_json_object() {
        let mut doc = DocWriter::new(Spool::create().unwrap());
        doc.field("format", &FORMAT).unwrap();
        doc.open_array("rows").unwrap();
        for i in 0..3 {
            doc.item(&json!({"i": i, "text": "a \"quoted\" line\n"}))
                .unwrap();
        }
        doc.close_array().unwrap();
        doc.open_array("empty").unwrap();
        doc.close_array().unwrap();
        doc.open_object("gifts").unwrap();
        doc.open_array("sent").unwrap();
        doc.item(&1).unwrap();
        doc.close_array().unwrap();
        doc.open_array("received").unwrap();
        doc.close_array().unwrap();
        doc.close_object().unwrap();
        doc.field("last", &Value::Null).unwrap();
        let spool = doc.finish().unwrap();
        let path = spool.path.clone();
        let parsed: Value = serde_json::from_slice(&spool.read_all().unwrap()).unwrap();
        assert_eq!(
            parsed,
            json!({"format": FORMAT, "rows": [{"i": 0, "text": "a \"quoted\" line\n"},
                    {"i": 1, "text": "a \"quoted\" line\n"}, {"i": 2, "text": "a \"quoted\" line\n"}],
                   "empty": [], "gifts": {"sent": [1], "received": []}, "last": null})
        );
        drop(spool);
        assert!(!path.exists(), "the spool file is removed");
    }
}
