//! A randomized property test of the credit engine against real PostgreSQL,
//! after TigerBeetle's auditor: it keeps its own model of every user's
//! balances and daily counters, runs random sequences of purchases, holds,
//! settles, releases (and repeated ones), gifts, bonuses, daily resets, admin
//! adjustments and admin job refunds, and after EVERY step checks the
//! ledger invariants (docs/architecture.md) with SQL (`testkit::ledger::assert_invariants`) and
//! compares the model with the database row by row. A failure names the seed,
//! the step and the operation.
//!
//! Reproduce a run with `LEDGER_PROPERTY_SEED=<seed>`; lengthen it with
//! `LEDGER_PROPERTY_STEPS=<n>`.
//!
//! The concurrent variant runs random operations from several tasks on shared
//! users; its model checks the invariants while they run and the exact final
//! sums afterwards.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::response::IntoResponse;
use futures::FutureExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use shared::credits::account::gifts::{self, GiftRequest};
use shared::credits::admin::adjustments::{self, Adjustment};
use shared::credits::admin::refunds::{self, RefundOutcome};
use shared::credits::holds;
use shared::credits::ledger::{self, Entry, LedgerError};
use shared::credits::pricing::Quote;
use shared::kernel::config::CreditsConfig;
use shared::kernel::error::ApiError;
use shared::users::repo::active_user_by_username;
use shared::web::http::RequestMeta;
use testkit::ledger::assert_invariants;
use tokio::sync::Mutex;
use tokio_postgres::{GenericClient, Transaction};

const USERS: usize = 6;
const DEFAULT_STEPS: usize = 600;
/// Fixed seeds run every time; one fresh random seed is added to each run.
const FIXED_SEEDS: [u64; 3] = [0x5eed_0001, 0x5eed_0002, 0xc0ff_ee00_0003];

// ------------------------------------------------------------------------------------------
// Setup
// ------------------------------------------------------------------------------------------

/// A time zone whose local time is daytime now (Etc/GMT zones have no DST), so
/// no real local midnight falls inside a run: the only daily resets are the
/// ones the test makes.
fn daytime_zone(rng: &mut StdRng) -> String {
    use chrono::Timelike;
    let hour = chrono::Utc::now().hour() as i32;
    let offset = (12 - hour + rng.gen_range(-3..=3)).clamp(-12, 14);
    match offset {
        0 => "Etc/GMT".to_string(),
        // The sign of Etc/GMT zones is inverted: Etc/GMT-5 is UTC+5.
        o if o > 0 => format!("Etc/GMT-{o}"),
        o => format!("Etc/GMT+{}", -o),
    }
}

async fn new_user(
    client: &impl GenericClient,
    email: &str,
    zone: &str,
    quota: i32,
    allowance: i32,
) -> String {
    let id: String = client
        .query_one(
            "INSERT INTO users (email, username, timezone, daily_quota) \
             VALUES ($1, split_part($1, '@', 1), $2, $3) RETURNING id",
            &[&email, &zone, &quota],
        )
        .await
        .unwrap()
        .get(0);
    client
        .execute(
            "INSERT INTO user_credits (user_id, daily_allowance, daily_reset_date) \
             VALUES ($1, $2, user_local_date($3))",
            &[&id, &allowance, &zone],
        )
        .await
        .unwrap();
    id
}

async fn new_job(client: &impl GenericClient, user_id: &str) -> String {
    client
        .query_one(
            "INSERT INTO generation_jobs (user_id, job_type, input_parameters) \
             VALUES ($1, 'character_generation', '{}') RETURNING id",
            &[&user_id],
        )
        .await
        .unwrap()
        .get(0)
}

fn quote(price: i32) -> Quote {
    Quote {
        config_id: "cfg_generate".into(),
        price,
        fallback_price: 0,
        calculation: json!({"price": price}),
    }
}

/// A gift from user `from` to user `to` (`user{i}`) through the gifts
/// route's own code (`gifts::transfer`): both `users` rows, then both
/// wallets, locked in id order; the giftable check; the pair of entries.
/// The daily cap is lifted (the model does not count it; the route's tests
/// do). A refusal comes back as a client would see it: (status, problem).
async fn gift(
    tx: &Transaction<'_>,
    from: usize,
    to: usize,
    amount: i32,
) -> Result<Value, (u16, Value)> {
    let config = CreditsConfig {
        gift_daily_cap: i32::MAX,
        ..CreditsConfig::default()
    };
    let sender = active_user_by_username(tx, &format!("user{from}"))
        .await
        .unwrap()
        .expect("the sender is an active user");
    let request = GiftRequest {
        to_username: format!("user{to}"),
        amount,
        message: None,
    };
    match gifts::transfer(tx, &config, &sender, &request, &RequestMeta::default()).await {
        Ok(answer) => Ok(answer),
        Err(refusal) => {
            let response = refusal.into_response();
            let status = response.status().as_u16();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            Err((status, serde_json::from_slice(&body).unwrap_or(Value::Null)))
        }
    }
}

/// Ends the user's daily window now, as if its midnight had come: the stored
/// end moves to the past (the first window is opened first if there is none
/// yet), and the lazy reset opens the next window.
async fn daily_reset(client: &impl GenericClient, user_id: &str) -> bool {
    ledger::reset_daily(client, user_id).await.unwrap();
    client
        .execute(
            "UPDATE users SET quota_resets_at = now() - interval '1 second' WHERE id = $1",
            &[&user_id],
        )
        .await
        .unwrap();
    ledger::reset_daily(client, user_id).await.unwrap()
}

async fn set_job_status(client: &impl GenericClient, job_id: &str, status: &str) {
    client
        .execute(
            "UPDATE generation_jobs SET status = $2 WHERE id = $1",
            &[&job_id, &status],
        )
        .await
        .unwrap();
}

/// The admin who adjusts and refunds (never one of the users under test).
async fn admin(client: &impl GenericClient) -> String {
    new_user(client, "admin@example.com", "UTC", 0, 0).await
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic".into())
}

/// `assert_invariants`, with the context of the step that broke them.
async fn invariants(client: &tokio_postgres::Client, context: &str) {
    if let Err(payload) = AssertUnwindSafe(assert_invariants(client))
        .catch_unwind()
        .await
    {
        panic!("{context}: invariant broken: {}", panic_text(&*payload));
    }
}

// ------------------------------------------------------------------------------------------
// The model
// ------------------------------------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct UserModel {
    id: String,
    current: i64,
    reserved: i64,
    free_quota: i32,
    free_used: i32,
    allowance: i32,
    allowance_used: i32,
    /// How many daily windows have ended in the run (holds are keyed to theirs).
    window: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobState {
    Held,
    Settled,
    Released,
}

#[derive(Debug, Clone)]
struct JobModel {
    id: String,
    user: usize,
    state: JobState,
    free: bool,
    allowance: i32,
    reserved: i32,
    refunded: bool,
    /// The user's window when the hold was placed.
    window: u32,
}

#[derive(Debug, Clone)]
enum Op {
    Purchase { user: usize, amount: i32 },
    Bonus { user: usize, amount: i32 },
    Hold { user: usize, price: i32 },
    Settle { job: usize },
    Release { job: usize },
    Gift { from: usize, to: usize, amount: i32 },
    Adjust { user: usize, amount: i32 },
    DailyReset { user: usize },
    Refund { job: usize },
}

fn random_op(rng: &mut StdRng, job_models: &[JobModel]) -> Op {
    let jobs = job_models.len();
    let user = rng.gen_range(0..USERS);
    let roll = rng.gen_range(0..100);
    match roll {
        _ if jobs == 0 && roll >= 40 => Op::Hold {
            user,
            price: rng.gen_range(0..=30),
        },
        0..=9 => Op::Purchase {
            user,
            amount: rng.gen_range(1..=100),
        },
        10..=14 => Op::Bonus {
            user,
            amount: rng.gen_range(1..=20),
        },
        15..=39 => Op::Hold {
            user,
            // Mostly affordable; now and then far beyond any balance.
            price: if rng.gen_bool(0.1) {
                rng.gen_range(50..=400)
            } else {
                rng.gen_range(0..=30)
            },
        },
        40..=54 => Op::Settle {
            job: rng.gen_range(0..jobs),
        },
        55..=66 => Op::Release {
            job: rng.gen_range(0..jobs),
        },
        67..=76 => {
            let to = (user + rng.gen_range(1..USERS)) % USERS;
            Op::Gift {
                from: user,
                to,
                amount: rng.gen_range(1..=60),
            }
        }
        77..=86 => Op::Adjust {
            user,
            amount: if rng.gen_bool(0.5) {
                rng.gen_range(1..=80)
            } else {
                -rng.gen_range(1..=80)
            },
        },
        87..=91 => Op::DailyReset { user },
        _ => {
            // Mostly jobs that were charged, so that refunds really happen.
            let charged: Vec<usize> = (0..jobs)
                .filter(|k| {
                    job_models[*k].state == JobState::Settled && job_models[*k].reserved > 0
                })
                .collect();
            let job = if !charged.is_empty() && rng.gen_bool(0.7) {
                charged[rng.gen_range(0..charged.len())]
            } else {
                rng.gen_range(0..jobs)
            };
            Op::Refund { job }
        }
    }
}

struct Run {
    seed: u64,
    client: tokio_postgres::Client,
    admin: String,
    users: Vec<UserModel>,
    jobs: Vec<JobModel>,
    refunds: usize,
}

impl Run {
    async fn start(seed: u64) -> Self {
        let url = testkit::fresh_database().await;
        let client = testkit::connect(&url).await;
        let mut rng = StdRng::seed_from_u64(seed ^ 0xa5a5_a5a5);
        let admin = admin(&client).await;
        let mut users = Vec::new();
        for i in 0..USERS {
            let zone = daytime_zone(&mut rng);
            let quota = rng.gen_range(0..=2);
            let allowance = if rng.gen_bool(0.5) {
                0
            } else {
                rng.gen_range(1..=25)
            };
            let id = new_user(
                &client,
                &format!("user{i}@example.com"),
                &zone,
                quota,
                allowance,
            )
            .await;
            users.push(UserModel {
                id,
                current: 0,
                reserved: 0,
                free_quota: quota,
                free_used: 0,
                allowance,
                allowance_used: 0,
                window: 0,
            });
        }
        Self {
            seed,
            client,
            admin,
            users,
            jobs: Vec::new(),
            refunds: 0,
        }
    }

    /// Runs one operation against the database and the model.
    async fn step(&mut self, n: usize, op: &Op) {
        let ctx = format!("seed {}, step {n} ({op:?})", self.seed);
        let meta = RequestMeta::default();
        let tx = self.client.transaction().await.unwrap();
        match *op {
            Op::Purchase { user, amount } | Op::Bonus { user, amount } => {
                let kind = if matches!(op, Op::Purchase { .. }) {
                    "purchase"
                } else {
                    "bonus"
                };
                let u = &mut self.users[user];
                let posted = ledger::post(&tx, &u.id, Entry::new(kind, amount, "property"))
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                u.current += i64::from(amount);
                assert_eq!(
                    i64::from(posted.balance_after),
                    u.current,
                    "{ctx}: balance_after"
                );
                tx.commit().await.unwrap();
            }
            Op::Hold { user, price } => {
                let u = &mut self.users[user];
                let job = new_job(&tx, &u.id).await;
                let outcome = holds::hold(&tx, &u.id, &job, &quote(price)).await;
                // The model's prediction.
                let purchased_left = u.current - u.reserved;
                let allowance_left = (u.allowance - u.allowance_used).max(0);
                if u.free_used < u.free_quota {
                    let hold =
                        outcome.unwrap_or_else(|e| panic!("{ctx}: expected a free hold: {e}"));
                    assert!(
                        hold.free_generation
                            && hold.allowance_credits == 0
                            && hold.reserved_credits == 0,
                        "{ctx}: expected a free generation, got {hold:?}"
                    );
                    u.free_used += 1;
                    self.jobs.push(JobModel {
                        id: job,
                        user,
                        state: JobState::Held,
                        free: true,
                        allowance: 0,
                        reserved: 0,
                        refunded: false,
                        window: u.window,
                    });
                    tx.commit().await.unwrap();
                } else {
                    let from_allowance = allowance_left.min(price);
                    let reserved = price - from_allowance;
                    if i64::from(reserved) > purchased_left {
                        match outcome {
                            Err(LedgerError::Insufficient { needed, available }) => {
                                assert_eq!(needed, i64::from(price), "{ctx}: needed");
                                assert_eq!(
                                    available,
                                    i64::from(allowance_left) + purchased_left,
                                    "{ctx}: available"
                                );
                            }
                            other => panic!("{ctx}: expected Insufficient, got {other:?}"),
                        }
                        tx.rollback().await.unwrap();
                    } else {
                        let hold =
                            outcome.unwrap_or_else(|e| panic!("{ctx}: expected a hold: {e}"));
                        assert_eq!(
                            (
                                hold.free_generation,
                                hold.allowance_credits,
                                hold.reserved_credits
                            ),
                            (false, from_allowance, reserved),
                            "{ctx}: buckets"
                        );
                        u.allowance_used += from_allowance;
                        u.reserved += i64::from(reserved);
                        self.jobs.push(JobModel {
                            id: job,
                            user,
                            state: JobState::Held,
                            free: false,
                            allowance: from_allowance,
                            reserved,
                            refunded: false,
                            window: u.window,
                        });
                        tx.commit().await.unwrap();
                    }
                }
            }
            Op::Settle { job } => {
                let j = &mut self.jobs[job];
                let settled = holds::settle(&tx, &j.id)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                match (j.state, settled) {
                    (JobState::Held, Some(settlement)) => {
                        assert_eq!(settlement.hold.reserved_credits, j.reserved, "{ctx}");
                        let u = &mut self.users[j.user];
                        u.current -= i64::from(j.reserved);
                        u.reserved -= i64::from(j.reserved);
                        assert_eq!(
                            i64::from(settlement.balance_after),
                            u.current,
                            "{ctx}: balance_after"
                        );
                        j.state = JobState::Settled;
                        set_job_status(&tx, &j.id, "completed").await;
                    }
                    (JobState::Held, None) => panic!("{ctx}: a held job did not settle"),
                    (state, Some(s)) => panic!("{ctx}: a {state:?} job settled again: {s:?}"),
                    (_, None) => {}
                }
                tx.commit().await.unwrap();
            }
            Op::Release { job } => {
                let j = &mut self.jobs[job];
                let released = holds::release(&tx, &j.id)
                    .await
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                match (j.state, released) {
                    (JobState::Held, true) => {
                        let u = &mut self.users[j.user];
                        u.reserved -= i64::from(j.reserved);
                        // In the window of the hold, the free generation and the allowance
                        // come back; once that window has ended, only purchased credits do.
                        if j.window == u.window {
                            if j.free {
                                u.free_used = (u.free_used - 1).max(0);
                            }
                            u.allowance_used = (u.allowance_used - j.allowance).max(0);
                        }
                        j.state = JobState::Released;
                        set_job_status(&tx, &j.id, "failed").await;
                    }
                    (JobState::Held, false) => panic!("{ctx}: a held job did not release"),
                    (state, true) => panic!("{ctx}: a {state:?} job released again"),
                    (_, false) => {}
                }
                tx.commit().await.unwrap();
            }
            Op::Gift { from, to, amount } => {
                let outcome = gift(&tx, from, to, amount).await;
                // No debt and no purchase orders here: all that is available is giftable.
                let available = self.users[from].current - self.users[from].reserved;
                if i64::from(amount) > available {
                    match outcome {
                        Err((402, problem)) => assert_eq!(
                            (problem["needed"].as_i64(), problem["available"].as_i64()),
                            (Some(i64::from(amount)), Some(available)),
                            "{ctx}: {problem}"
                        ),
                        other => panic!("{ctx}: expected a 402, got {other:?}"),
                    }
                    tx.rollback().await.unwrap();
                } else {
                    let answer = outcome.unwrap_or_else(|e| panic!("{ctx}: {e:?}"));
                    self.users[from].current -= i64::from(amount);
                    self.users[to].current += i64::from(amount);
                    assert_eq!(
                        answer["balance_after"].as_i64(),
                        Some(self.users[from].current),
                        "{ctx}: {answer}"
                    );
                    tx.commit().await.unwrap();
                }
            }
            Op::Adjust { user, amount } => {
                let u = &mut self.users[user];
                let adjustment = Adjustment {
                    user_id: u.id.clone(),
                    amount,
                    description: format!("property adjustment of {amount}"),
                };
                let outcome = adjustments::adjust(&tx, &self.admin, &adjustment, &meta).await;
                let available = u.current - u.reserved;
                if amount < 0 && i64::from(-amount) > available {
                    match outcome {
                        Err(ApiError::PaymentRequired {
                            needed,
                            available: seen,
                            ..
                        }) => assert_eq!((needed, seen), (i64::from(-amount), available), "{ctx}"),
                        other => panic!("{ctx}: expected a refusal, got {other:?}"),
                    }
                    tx.rollback().await.unwrap();
                } else {
                    let transaction = outcome.unwrap_or_else(|e| panic!("{ctx}: {e}"));
                    u.current += i64::from(amount);
                    assert_eq!(i64::from(transaction.balance_after), u.current, "{ctx}");
                    tx.commit().await.unwrap();
                }
            }
            Op::DailyReset { user } => {
                let u = &mut self.users[user];
                assert!(daily_reset(&tx, &u.id).await, "{ctx}: nothing was reset");
                u.free_used = 0;
                u.allowance_used = 0;
                u.window += 1;
                tx.commit().await.unwrap();
            }
            Op::Refund { job } => {
                let j = &mut self.jobs[job];
                let outcome = refunds::refund_job(&tx, &self.admin, &j.id, None, &meta).await;
                match (j.state, j.refunded, j.reserved, outcome) {
                    (JobState::Settled, false, charged, Ok(RefundOutcome::Refunded(refund)))
                        if charged > 0 =>
                    {
                        assert_eq!(refund.amount, charged, "{ctx}");
                        let u = &mut self.users[j.user];
                        u.current += i64::from(charged);
                        assert_eq!(
                            i64::from(refund.transaction.balance_after),
                            u.current,
                            "{ctx}"
                        );
                        j.refunded = true;
                        self.refunds += 1;
                        tx.commit().await.unwrap();
                    }
                    (JobState::Settled, true, _, Ok(RefundOutcome::AlreadyRefunded(_))) => {
                        tx.commit().await.unwrap();
                    }
                    (JobState::Settled, false, 0, Err(ApiError::Conflict(_)))
                    | (JobState::Held | JobState::Released, false, _, Err(ApiError::Conflict(_))) =>
                    {
                        tx.rollback().await.unwrap();
                    }
                    (state, refunded, charged, other) => panic!(
                        "{ctx}: refund of a {state:?} job (refunded {refunded}, charged {charged}) gave {other:?}"
                    ),
                }
            }
        }
        self.check(&ctx).await;
    }

    /// The invariants, then the model against the database, row by row.
    async fn check(&self, ctx: &str) {
        invariants(&self.client, ctx).await;
        let rows = self
            .client
            .query(
                "SELECT c.user_id, c.current_balance, c.reserved_balance, c.daily_used, c.debt_balance, \
                        u.daily_used AS free_used \
                 FROM user_credits c JOIN users u ON u.id = c.user_id",
                &[],
            )
            .await
            .unwrap();
        let db: HashMap<String, (i32, i32, i32, i32, i32)> = rows
            .iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    (r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)),
                )
            })
            .collect();
        for (i, u) in self.users.iter().enumerate() {
            let (current, reserved, allowance_used, debt, free_used) = db
                .get(&u.id)
                .copied()
                .unwrap_or_else(|| panic!("{ctx}: user {i} has no credit account"));
            let compare = [
                ("current_balance", i64::from(current), u.current),
                ("reserved_balance", i64::from(reserved), u.reserved),
                (
                    "daily allowance used",
                    i64::from(allowance_used),
                    i64::from(u.allowance_used),
                ),
                (
                    "free generations used",
                    i64::from(free_used),
                    i64::from(u.free_used),
                ),
                ("debt_balance", i64::from(debt), 0),
            ];
            for (what, database, model) in compare {
                assert_eq!(
                    database, model,
                    "{ctx}: user {i} {what}: database {database}, model {model}"
                );
            }
        }
        let holds: HashMap<String, String> = self
            .client
            .query("SELECT job_id, status FROM credit_holds", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(holds.len(), self.jobs.len(), "{ctx}: number of holds");
        for (k, j) in self.jobs.iter().enumerate() {
            let want = match j.state {
                JobState::Held => "held",
                JobState::Settled => "settled",
                JobState::Released => "released",
            };
            assert_eq!(
                holds.get(&j.id).map(String::as_str),
                Some(want),
                "{ctx}: job {k} status"
            );
        }
        let refunds: i64 = self
            .client
            .query_one(
                "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'refund'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(refunds, self.refunds as i64, "{ctx}: refund entries");
    }
}

fn steps() -> usize {
    std::env::var("LEDGER_PROPERTY_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_STEPS)
}

fn seeds() -> Vec<u64> {
    if let Some(seed) = std::env::var("LEDGER_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let mut seeds = FIXED_SEEDS.to_vec();
    seeds.push(rand::random());
    seeds
}

// ------------------------------------------------------------------------------------------
// Single-threaded
// ------------------------------------------------------------------------------------------

#[tokio::test]
async fn random_sequences_keep_the_model_and_every_invariant_after_every_step() {
    let steps = steps();
    for seed in seeds() {
        // Printed first, so a failure can be replayed with LEDGER_PROPERTY_SEED.
        eprintln!("ledger property: seed {seed}, {steps} steps");
        let mut run = Run::start(seed).await;
        let mut rng = StdRng::seed_from_u64(seed);
        let mut counts: HashMap<&'static str, usize> = HashMap::new();
        for n in 1..=steps {
            let op = random_op(&mut rng, &run.jobs);
            *counts.entry(op_name(&op)).or_default() += 1;
            run.step(n, &op).await;
        }
        // Every kind of operation ran, and so did the refusals the model predicts.
        for name in [
            "purchase", "bonus", "hold", "settle", "release", "gift", "adjust", "reset", "refund",
        ] {
            assert!(
                counts.get(name).copied().unwrap_or(0) > 0,
                "seed {seed}: no {name} ran"
            );
        }
        let held = run
            .jobs
            .iter()
            .filter(|j| j.state == JobState::Held)
            .count();
        eprintln!(
            "ledger property: seed {seed} done: {:?}; {} jobs ({held} still held), {} refunds",
            counts,
            run.jobs.len(),
            run.refunds
        );
        // Finally everything still held is released: nothing stays reserved.
        let held: Vec<usize> = (0..run.jobs.len())
            .filter(|k| run.jobs[*k].state == JobState::Held)
            .collect();
        for (i, k) in held.into_iter().enumerate() {
            run.step(steps + i + 1, &Op::Release { job: k }).await;
        }
        assert!(run.users.iter().all(|u| u.reserved == 0));
    }
}

fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Purchase { .. } => "purchase",
        Op::Bonus { .. } => "bonus",
        Op::Hold { .. } => "hold",
        Op::Settle { .. } => "settle",
        Op::Release { .. } => "release",
        Op::Gift { .. } => "gift",
        Op::Adjust { .. } => "adjust",
        Op::DailyReset { .. } => "reset",
        Op::Refund { .. } => "refund",
    }
}

// ------------------------------------------------------------------------------------------
// Concurrent
// ------------------------------------------------------------------------------------------

const TASKS: usize = 8;
const OPS_PER_TASK: usize = 80;

struct Shared {
    users: Vec<String>,
    admin: String,
    /// Jobs placed on hold (id, user index); any task may settle, release or refund any.
    jobs: Mutex<Vec<(String, usize)>>,
    /// Σ of the balance changes each user's committed operations made.
    expected: Mutex<Vec<i64>>,
    /// Transactions PostgreSQL aborted (deadlock or serialization failure).
    collisions: AtomicUsize,
    committed: AtomicUsize,
}

fn is_collision_code(code: Option<&tokio_postgres::error::SqlState>) -> bool {
    use tokio_postgres::error::SqlState;
    code.is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Whether a failed operation was refused for a reason the engine expects
/// (not enough credits, nothing to refund...) or aborted by a collision;
/// anything else fails the test.
fn expected_failure(shared: &Shared, what: &str, text: String, collision: bool) {
    if collision {
        eprintln!("{what}: aborted by PostgreSQL: {text}");
        shared.collisions.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let expected = text.contains("not enough credits")
        || text.contains("payment required")
        || text.contains("conflict");
    assert!(expected, "{what}: unexpected failure: {text}");
}

fn ledger_collision(err: &LedgerError) -> bool {
    matches!(err, LedgerError::Database(e) if is_collision_code(e.code()))
}

/// A ledger error with PostgreSQL's own message (`db error` says nothing).
fn describe(err: &LedgerError) -> String {
    match err {
        LedgerError::Database(e) => e
            .as_db_error()
            .map(|d| format!("{} ({})", d.message(), d.where_().unwrap_or_default()))
            .unwrap_or_else(|| e.to_string()),
        other => other.to_string(),
    }
}

/// A deadlock or serialization failure as the API answers it (a 503 asking
/// to retry), not any 503.
fn api_collision(err: &ApiError) -> bool {
    matches!(err, ApiError::ServiceUnavailable { detail, .. } if detail.contains("collided"))
}

async fn concurrent_task(shared: Arc<Shared>, pool: shared::ports::db::DbPool, seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let meta = RequestMeta::default();
    for n in 0..OPS_PER_TASK {
        let mut conn = pool.get().await.unwrap();
        let tx = (**conn).transaction().await.unwrap();
        let user = rng.gen_range(0..USERS);
        let uid = shared.users[user].clone();
        let roll = rng.gen_range(0..100);
        let what = format!("task seed {seed}, op {n} (roll {roll})");
        // (user index, balance change) pairs to record once committed.
        let mut deltas: Vec<(usize, i64)> = Vec::new();
        let mut placed: Option<(String, usize)> = None;
        let pick_job = |rng: &mut StdRng, jobs: &[(String, usize)]| {
            (!jobs.is_empty()).then(|| jobs[rng.gen_range(0..jobs.len())].clone())
        };
        let ok = match roll {
            0..=14 => {
                let amount = rng.gen_range(1..=60);
                ledger::post(&tx, &uid, Entry::new("purchase", amount, "concurrent"))
                    .await
                    .map(|_| deltas.push((user, i64::from(amount))))
                    .map_err(|e| {
                        expected_failure(&shared, &what, describe(&e), ledger_collision(&e))
                    })
                    .is_ok()
            }
            15..=44 => {
                let price = rng.gen_range(0..=25);
                let job = new_job(&tx, &uid).await;
                match holds::hold(&tx, &uid, &job, &quote(price)).await {
                    Ok(_) => {
                        placed = Some((job, user));
                        true
                    }
                    Err(e) => {
                        expected_failure(&shared, &what, describe(&e), ledger_collision(&e));
                        false
                    }
                }
            }
            45..=59 => {
                let job = pick_job(&mut rng, &shared.jobs.lock().await);
                match job {
                    None => true,
                    Some((job, owner)) => match holds::settle(&tx, &job).await {
                        Ok(Some(s)) => {
                            set_job_status(&tx, &job, "completed").await;
                            deltas.push((owner, -i64::from(s.hold.reserved_credits)));
                            true
                        }
                        Ok(None) => true,
                        Err(e) => {
                            expected_failure(&shared, &what, describe(&e), ledger_collision(&e));
                            false
                        }
                    },
                }
            }
            60..=71 => {
                let job = pick_job(&mut rng, &shared.jobs.lock().await);
                match job {
                    None => true,
                    Some((job, _)) => match holds::release(&tx, &job).await {
                        Ok(released) => {
                            if released {
                                set_job_status(&tx, &job, "failed").await;
                            }
                            true
                        }
                        Err(e) => {
                            expected_failure(&shared, &what, describe(&e), ledger_collision(&e));
                            false
                        }
                    },
                }
            }
            72..=81 => {
                let to = (user + rng.gen_range(1..USERS)) % USERS;
                let amount = rng.gen_range(1..=40);
                match gift(&tx, user, to, amount).await {
                    Ok(_) => {
                        deltas.push((user, -i64::from(amount)));
                        deltas.push((to, i64::from(amount)));
                        true
                    }
                    Err((status, problem)) => {
                        let text = format!("{status} {problem}");
                        let collision = status == 503 && text.contains("collided");
                        if collision {
                            expected_failure(&shared, &what, text, true);
                        } else {
                            // Refused for more than the sender has available; nothing else.
                            assert_eq!(status, 402, "{what}: gift refused: {text}");
                        }
                        false
                    }
                }
            }
            82..=89 => {
                let amount = if rng.gen_bool(0.5) {
                    rng.gen_range(1..=50)
                } else {
                    -rng.gen_range(1..=50)
                };
                let adjustment = Adjustment {
                    user_id: uid.clone(),
                    amount,
                    description: "concurrent adjustment".into(),
                };
                match adjustments::adjust(&tx, &shared.admin, &adjustment, &meta).await {
                    Ok(_) => {
                        deltas.push((user, i64::from(amount)));
                        true
                    }
                    Err(e) => {
                        expected_failure(&shared, &what, e.to_string(), api_collision(&e));
                        false
                    }
                }
            }
            90..=93 => {
                daily_reset(&tx, &uid).await;
                true
            }
            _ => {
                let job = pick_job(&mut rng, &shared.jobs.lock().await);
                match job {
                    None => true,
                    Some((job, owner)) => {
                        match refunds::refund_job(&tx, &shared.admin, &job, None, &meta).await {
                            Ok(RefundOutcome::Refunded(r)) => {
                                deltas.push((owner, i64::from(r.amount)));
                                true
                            }
                            Ok(RefundOutcome::AlreadyRefunded(_)) => true,
                            Err(e) => {
                                expected_failure(&shared, &what, e.to_string(), api_collision(&e));
                                false
                            }
                        }
                    }
                }
            }
        };
        if !ok {
            tx.rollback().await.unwrap();
            continue;
        }
        match tx.commit().await {
            Ok(()) => {
                shared.committed.fetch_add(1, Ordering::Relaxed);
                let mut expected = shared.expected.lock().await;
                for (u, delta) in deltas {
                    expected[u] += delta;
                }
                if let Some(job) = placed {
                    shared.jobs.lock().await.push(job);
                }
            }
            Err(e) if is_collision_code(e.code()) => {
                shared.collisions.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => panic!("{what}: commit failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_random_operations_keep_every_invariant_and_the_exact_sums() {
    let seed: u64 = std::env::var("LEDGER_PROPERTY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("ledger property (concurrent): seed {seed}");
    let url = testkit::fresh_database().await;
    let mut client = testkit::connect(&url).await;
    let mut rng = StdRng::seed_from_u64(seed);
    let admin = admin(&client).await;
    let mut users = Vec::new();
    for i in 0..USERS {
        let zone = daytime_zone(&mut rng);
        let quota = rng.gen_range(0..=2);
        let allowance = rng.gen_range(0..=10);
        let id = new_user(
            &client,
            &format!("user{i}@example.com"),
            &zone,
            quota,
            allowance,
        )
        .await;
        // A starting balance, so that debits and spends have something to race for.
        ledger::post(&client, &id, Entry::new("purchase", 50, "starting balance"))
            .await
            .unwrap();
        users.push(id);
    }
    let shared = Arc::new(Shared {
        users,
        admin,
        jobs: Mutex::new(Vec::new()),
        expected: Mutex::new(vec![50; USERS]),
        collisions: AtomicUsize::new(0),
        committed: AtomicUsize::new(0),
    });
    let pool = shared::ports::db::create_pool(&shared::kernel::config::DatabaseConfig {
        migration_url: None,
        url: url.clone(),
        sslmode: shared::kernel::config::SslMode::Disable,
        ssl_root_cert: None,
        pool_size: TASKS,
        connect_timeout: std::time::Duration::from_secs(30),
    })
    .unwrap();

    // The invariants are checked over and over while the tasks run.
    let running = Arc::new(AtomicBool::new(true));
    let checker = {
        let running = running.clone();
        let url = url.clone();
        tokio::spawn(async move {
            let client = testkit::connect(&url).await;
            let mut checks = 0;
            while running.load(Ordering::Relaxed) {
                invariants(
                    &client,
                    &format!("seed {seed}, while running (check {checks})"),
                )
                .await;
                let counters_ok: bool = client
                    .query_one(
                        "SELECT bool_and(u.daily_used BETWEEN 0 AND u.daily_quota \
                                     AND c.daily_used BETWEEN 0 AND c.daily_allowance) \
                         FROM users u JOIN user_credits c ON c.user_id = u.id",
                        &[],
                    )
                    .await
                    .unwrap()
                    .get(0);
                assert!(counters_ok, "seed {seed}: a daily counter left its bounds");
                checks += 1;
            }
            checks
        })
    };
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            tokio::spawn(concurrent_task(
                shared.clone(),
                pool.clone(),
                seed.wrapping_add(t as u64 + 1),
            ))
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    running.store(false, Ordering::Relaxed);
    let checks = checker.await.unwrap();
    invariants(&client, &format!("seed {seed}, after the run")).await;

    // Release whatever is still held; then every balance is exactly the sum of
    // the committed operations, and nothing is reserved.
    let held: Vec<String> = client
        .query("SELECT job_id FROM credit_holds WHERE status = 'held'", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for job in &held {
        let tx = client.transaction().await.unwrap();
        assert!(holds::release(&tx, job).await.unwrap());
        tx.commit().await.unwrap();
    }
    invariants(&client, &format!("seed {seed}, after releasing")).await;
    let expected = shared.expected.lock().await.clone();
    for (i, id) in shared.users.iter().enumerate() {
        let row = client
            .query_one(
                "SELECT current_balance, reserved_balance, debt_balance FROM user_credits WHERE user_id = $1",
                &[id],
            )
            .await
            .unwrap();
        let (current, reserved, debt): (i32, i32, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (i64::from(current), reserved, debt),
            (expected[i], 0, 0),
            "seed {seed}: user {i}"
        );
    }
    // Each job settled or released at most once, was charged at most once and
    // refunded at most once.
    let repeated: i64 = client
        .query_one(
            "SELECT count(*) FROM ( \
               SELECT related_entity_id, transaction_type FROM credit_transactions \
               WHERE related_entity_type = 'generation_job' \
               GROUP BY 1, 2 HAVING count(*) > 1) t",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        repeated, 0,
        "seed {seed}: a job was charged or refunded twice"
    );
    let unmatched_refunds: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_transactions r \
             WHERE r.transaction_type = 'refund' AND r.related_entity_type = 'generation_job' \
               AND r.amount <> -(SELECT sum(u.amount) FROM credit_transactions u \
                                 WHERE u.transaction_type = 'usage' AND u.related_entity_id = r.related_entity_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        unmatched_refunds, 0,
        "seed {seed}: a refund differs from its usage"
    );
    let total: i64 = client
        .query_one("SELECT sum(current_balance)::int8 FROM user_credits", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        total,
        expected.iter().sum::<i64>(),
        "seed {seed}: total credits"
    );
    eprintln!(
        "ledger property (concurrent): seed {seed}: {} committed, {} collisions, {} held at the end, {checks} invariant checks while running",
        shared.committed.load(Ordering::Relaxed),
        shared.collisions.load(Ordering::Relaxed),
        held.len(),
    );
    // The gifts raced the rest through the route's own code, and some went through.
    let gifts: i64 = client
        .query_one(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'gift_sent'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(gifts > 0, "seed {seed}: no gift committed");
    // Transactions PostgreSQL aborted changed nothing (the exact sums above
    // include only what committed), but each is a 503 to a client. Every
    // writer locks `users` rows, then `user_credits` rows, each in user id
    // order, so there is no cycle for PostgreSQL to break and no isolation
    // level that fails on conflict: any collision is a lock-order bug.
    // The bound is therefore zero.
    assert_eq!(
        shared.collisions.load(Ordering::Relaxed),
        0,
        "seed {seed}: transactions aborted as deadlocks or serialization failures"
    );
}

/// Two requests of one user that each create a job and hold credits for it
/// (what the job dispatcher does) must both go through. Every balance change
/// takes the `users` row `FOR NO KEY UPDATE` first (`ledger::lock_user`),
/// which does not conflict with the `FOR KEY SHARE` lock of the foreign-key
/// checks on `generation_jobs` and `credit_transactions` inserts; with
/// `FOR UPDATE` PostgreSQL aborted one of them as a deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_dispatches_of_one_user_never_deadlock() {
    let url = testkit::fresh_database().await;
    let client = testkit::connect(&url).await;
    let ann = new_user(&client, "ann@example.com", "UTC", 0, 0).await;
    ledger::post(&client, &ann, Entry::new("purchase", 1000, "pack"))
        .await
        .unwrap();
    let pool = shared::ports::db::create_pool(&shared::kernel::config::DatabaseConfig {
        migration_url: None,
        url: url.clone(),
        sslmode: shared::kernel::config::SslMode::Disable,
        ssl_root_cert: None,
        pool_size: 10,
        connect_timeout: std::time::Duration::from_secs(30),
    })
    .unwrap();
    let outcomes = futures::future::join_all((0..10).map(|_| {
        let pool = pool.clone();
        let ann = ann.clone();
        async move {
            let mut conn = pool.get().await.unwrap();
            let tx = (**conn).transaction().await.unwrap();
            let job = new_job(&tx, &ann).await;
            let held = holds::hold(&tx, &ann, &job, &quote(5))
                .await
                .map_err(|e| describe(&e))?;
            tx.commit().await.map_err(|e| e.to_string())?;
            Ok::<_, String>(held)
        }
    }))
    .await;
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 10 dispatches failed: {failed:?}",
        failed.len()
    );
    assert_invariants(&client).await;
}
