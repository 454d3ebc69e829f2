-- V7: the credit engine's own tables and functions.
--
-- * credit_holds: what a generation job holds, bucket by bucket, until it settles (one usage
--   transaction) or is released (nothing posted). The status moves out of 'held' exactly
--   once: settle and release are conditional updates on it.
-- * purchase_orders, stripe_events: credit pack purchases and the webhook events already
--   processed (both mentioned by the design, never defined).
-- * idempotency_keys: stored responses of credit-moving and job-starting POSTs (24 h).
-- * rate_limit_windows: per user, per priced endpoint counters for the per-minute and daily
--   limits of api_credit_configs.
-- * Daily resets at local midnight in the user's time zone, as SQL functions used lazily by
--   every transaction that reads the counters and in bulk by the scheduler.

-- ===========================================================================================
-- Holds
-- ===========================================================================================

CREATE TABLE credit_holds (
  job_id TEXT PRIMARY KEY REFERENCES generation_jobs(id) ON DELETE RESTRICT,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  config_id TEXT REFERENCES api_credit_configs(id) ON DELETE SET NULL,
  -- The quoted price in credits, and how it is paid: one free daily generation covers the
  -- whole price; otherwise the subscription's daily allowance, then purchased credits.
  price INTEGER NOT NULL CHECK (price >= 0),
  free_generation BOOLEAN NOT NULL DEFAULT false,
  allowance_credits INTEGER NOT NULL DEFAULT 0 CHECK (allowance_credits >= 0),
  reserved_credits INTEGER NOT NULL DEFAULT 0 CHECK (reserved_credits >= 0),
  -- The user's local day the free generation / allowance was taken from: a release after a
  -- daily reset gives nothing back (the counters already started over).
  quota_day DATE NOT NULL,
  cost_calculation JSONB NOT NULL,
  status TEXT NOT NULL DEFAULT 'held' CHECK (status IN ('held', 'settled', 'released')),
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  resolved_at TIMESTAMP WITH TIME ZONE,
  CONSTRAINT credit_holds_buckets_cover_price CHECK (
    (free_generation AND allowance_credits = 0 AND reserved_credits = 0)
    OR (NOT free_generation AND allowance_credits + reserved_credits = price)
  ),
  CONSTRAINT credit_holds_resolved_when_done CHECK ((status = 'held') = (resolved_at IS NULL))
);

CREATE INDEX idx_credit_holds_user_held ON credit_holds (user_id) WHERE status = 'held';

COMMENT ON TABLE credit_holds IS
  'Credits held by a generation job; user_credits.reserved_balance = sum of reserved_credits of held rows.';

-- ===========================================================================================
-- Purchases
-- ===========================================================================================

ALTER TABLE user_credits
  -- Credits clawed back by a refund that the balance could not cover; repaid first from
  -- later credits. The balance itself never goes below zero.
  ADD COLUMN debt_balance INTEGER NOT NULL DEFAULT 0,
  ADD CONSTRAINT user_credits_debt_positive CHECK (debt_balance >= 0);

CREATE TABLE purchase_orders (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT REFERENCES users(id) ON DELETE SET NULL,
  package_id TEXT REFERENCES credit_packages(id) ON DELETE SET NULL,
  -- What was sold, copied from the package at order time.
  credit_amount INTEGER NOT NULL CHECK (credit_amount > 0),
  bonus_credits INTEGER NOT NULL DEFAULT 0 CHECK (bonus_credits >= 0),
  price_usd DECIMAL(10,2) NOT NULL CHECK (price_usd >= 0),
  price_currency TEXT NOT NULL DEFAULT 'USD',
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'paid', 'failed', 'refunded')),
  provider TEXT NOT NULL DEFAULT 'stripe',
  checkout_session_id TEXT UNIQUE,
  checkout_url TEXT,
  payment_intent_id TEXT,
  paid_at TIMESTAMP WITH TIME ZONE,
  failed_at TIMESTAMP WITH TIME ZONE,
  refunded_at TIMESTAMP WITH TIME ZONE,
  refunded_credits INTEGER NOT NULL DEFAULT 0 CHECK (refunded_credits >= 0),
  metadata JSONB NOT NULL DEFAULT '{}',
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

CREATE INDEX idx_purchase_orders_user_id ON purchase_orders (user_id, created_at DESC);
CREATE INDEX idx_purchase_orders_status ON purchase_orders (status);
CREATE INDEX idx_purchase_orders_payment_intent ON purchase_orders (payment_intent_id);

CREATE TRIGGER trg_purchase_orders_updated_at
  BEFORE UPDATE ON purchase_orders
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE purchase_orders IS
  'Credit pack purchases: pending -> paid/failed, paid -> refunded; credited exactly once.';

-- Every processed webhook event, so a redelivered event has no second effect.
CREATE TABLE stripe_events (
  id TEXT PRIMARY KEY,
  event_type TEXT NOT NULL,
  purchase_order_id TEXT REFERENCES purchase_orders(id) ON DELETE SET NULL,
  outcome TEXT NOT NULL,
  received_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

-- ===========================================================================================
-- Idempotency keys (Stripe semantics: same key + same body -> the stored response;
-- same key + different body -> 422; kept 24 h)
-- ===========================================================================================

CREATE TABLE idempotency_keys (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  idempotency_key TEXT NOT NULL CHECK (char_length(idempotency_key) BETWEEN 1 AND 255),
  -- Method and route pattern the key was used on, and a digest of the request body.
  request_method TEXT NOT NULL,
  request_path TEXT NOT NULL,
  request_hash TEXT NOT NULL,
  response_status INTEGER,
  response_body JSONB,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  completed_at TIMESTAMP WITH TIME ZONE,
  PRIMARY KEY (user_id, idempotency_key)
);

CREATE INDEX idx_idempotency_keys_created_at ON idempotency_keys (created_at);

-- ===========================================================================================
-- Rate-limit windows
-- ===========================================================================================

CREATE TABLE rate_limit_windows (
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  config_id TEXT NOT NULL REFERENCES api_credit_configs(id) ON DELETE CASCADE,
  -- 'minute' windows start on the UTC minute; 'day' windows on the user's local midnight.
  window_kind TEXT NOT NULL CHECK (window_kind IN ('minute', 'day')),
  window_start TIMESTAMP WITH TIME ZONE NOT NULL,
  request_count INTEGER NOT NULL DEFAULT 0 CHECK (request_count >= 0),
  PRIMARY KEY (user_id, config_id, window_kind, window_start)
);

CREATE INDEX idx_rate_limit_windows_start ON rate_limit_windows (window_start);

-- ===========================================================================================
-- Daily resets at the user's local midnight
-- ===========================================================================================

-- The local date of an instant in a time zone (UTC when the zone is unset or unknown to
-- the server's time zone database).
CREATE FUNCTION local_date_of(instant timestamptz, zone text) RETURNS date
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN (instant AT TIME ZONE coalesce(nullif(zone, ''), 'UTC'))::date;
EXCEPTION WHEN invalid_parameter_value THEN
  RETURN (instant AT TIME ZONE 'UTC')::date;
END
$$;

-- The user's local date now.
CREATE FUNCTION user_local_date(zone text) RETURNS date
LANGUAGE sql STABLE AS $$
  SELECT local_date_of(now(), zone)
$$;

-- Resets one user's free-generation and allowance counters if their local day has turned.
-- Returns true when something was reset. Callers hold (or take) the users row lock.
CREATE FUNCTION credits_reset_daily(target_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  zone text;
  last_reset timestamptz;
  today date;
  changed boolean := false;
BEGIN
  SELECT u.timezone, u.last_reset_date INTO zone, last_reset FROM users u WHERE u.id = target_user;
  IF NOT FOUND THEN
    RETURN false;
  END IF;
  today := user_local_date(zone);
  UPDATE users SET daily_used = 0, last_reset_date = now()
  WHERE id = target_user
    AND local_date_of(last_reset_date, zone) < today;
  changed := FOUND;
  UPDATE user_credits SET daily_used = 0, daily_reset_date = today
  WHERE user_id = target_user AND daily_reset_date < today;
  RETURN changed OR FOUND;
END
$$;

-- The scheduler's bulk reset: every user whose local day has turned. Returns how many users
-- had a counter reset.
CREATE FUNCTION credits_reset_daily_all() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  reset_users integer;
BEGIN
  WITH due_users AS (
    UPDATE users u SET daily_used = 0, last_reset_date = now()
    WHERE local_date_of(u.last_reset_date, u.timezone) < user_local_date(u.timezone)
    RETURNING u.id
  ), due_credits AS (
    UPDATE user_credits c SET daily_used = 0, daily_reset_date = user_local_date(u.timezone)
    FROM users u
    WHERE u.id = c.user_id AND c.daily_reset_date < user_local_date(u.timezone)
    RETURNING c.user_id
  )
  SELECT count(*) INTO reset_users FROM (SELECT id FROM due_users UNION SELECT user_id FROM due_credits) s;
  RETURN reset_users;
END
$$;
