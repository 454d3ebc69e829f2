-- V1: initial schema, from shared/seed/database-design.md.
--
-- Every table, column, default, CHECK, UNIQUE, foreign key and index of the seed design is
-- created here with the seed's names. Where the seed is wrong, the fix is made in the open
-- and marked with a "-- Fix (seed): ..." comment next to it.
--
-- Applied by refinery in one transaction: nothing here may need to run outside one.

-- ===========================================================================================
-- Helpers
-- ===========================================================================================

-- Keeps updated_at honest whatever code path writes the row.
CREATE FUNCTION set_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  NEW.updated_at := now();
  RETURN NEW;
END;
$$;

COMMENT ON FUNCTION set_updated_at() IS
  'BEFORE UPDATE trigger function: sets NEW.updated_at to now().';

-- ===========================================================================================
-- 1. User information system
-- ===========================================================================================

CREATE TABLE users (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  email TEXT UNIQUE NOT NULL,
  auth0_id TEXT UNIQUE,
  username TEXT UNIQUE,
  display_name TEXT,
  avatar_url TEXT,

  -- Subscription and Limits
  subscription_tier TEXT DEFAULT 'FREE'
    CHECK (subscription_tier IN ('FREE', 'PREMIUM', 'PRO', 'ENTERPRISE')),
  subscription_start_date TIMESTAMP WITH TIME ZONE,
  subscription_end_date TIMESTAMP WITH TIME ZONE,

  -- Daily Usage Tracking
  daily_quota INTEGER DEFAULT 3 NOT NULL,
  daily_used INTEGER DEFAULT 0 NOT NULL,
  last_reset_date TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  -- Profile Settings
  preferred_language TEXT DEFAULT 'en' CHECK (preferred_language IN ('en', 'zh', 'ja', 'ko')),
  timezone TEXT DEFAULT 'UTC',
  notification_settings JSONB DEFAULT '{"email": true, "push": false}',

  -- Privacy and Preferences
  profile_visibility TEXT DEFAULT 'private'
    CHECK (profile_visibility IN ('public', 'friends', 'private')),
  allow_gallery_showcase BOOLEAN DEFAULT false,
  content_filter_level TEXT DEFAULT 'moderate'
    CHECK (content_filter_level IN ('strict', 'moderate', 'relaxed')),

  -- Statistics
  total_characters_created INTEGER DEFAULT 0 NOT NULL,
  total_images_generated INTEGER DEFAULT 0 NOT NULL,
  account_status TEXT DEFAULT 'active'
    CHECK (account_status IN ('active', 'suspended', 'banned', 'deleted')),

  -- Metadata
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  last_login_at TIMESTAMP WITH TIME ZONE,
  email_verified_at TIMESTAMP WITH TIME ZONE,

  -- Constraints
  CONSTRAINT users_email_format
    CHECK (email ~ '^[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}$'),
  CONSTRAINT users_daily_quota_positive CHECK (daily_quota >= 0),
  CONSTRAINT users_daily_used_positive CHECK (daily_used >= 0),
  CONSTRAINT users_username_format CHECK (username ~ '^[a-zA-Z0-9_]{3,30}$')
);

COMMENT ON TABLE users IS
  'Accounts: identity (Auth0), subscription tier, free daily generations, preferences, privacy.';

CREATE INDEX idx_users_email ON users(email);
CREATE INDEX idx_users_auth0_id ON users(auth0_id);
CREATE INDEX idx_users_username ON users(username);
CREATE INDEX idx_users_subscription_tier ON users(subscription_tier);
CREATE INDEX idx_users_last_login ON users(last_login_at);
CREATE INDEX idx_users_created_at ON users(created_at);
CREATE INDEX idx_users_account_status ON users(account_status);

-- Fix (seed): the seed's UNIQUE(email) is case-sensitive, so 'Ann@x.io' and 'ann@x.io' could
-- be two accounts. The seed's constraint and idx_users_email stay; this index adds
-- case-insensitive uniqueness (look users up with lower(email) = lower($1) to use it).
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));
-- Fix (seed): same for usernames, which appear in URLs (/api/v1/users/{username}).
CREATE UNIQUE INDEX users_username_lower_key ON users (lower(username));

CREATE TRIGGER users_set_updated_at
  BEFORE UPDATE ON users
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE user_profiles (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  -- Personal Information
  first_name TEXT,
  last_name TEXT,
  bio TEXT,
  website_url TEXT,
  social_links JSONB DEFAULT '{}', -- {"twitter": "username", "instagram": "username"}

  -- Professional Information
  profession TEXT,
  company TEXT,
  industry TEXT,
  experience_level TEXT CHECK (experience_level IN ('beginner', 'intermediate', 'advanced', 'professional')),

  -- Content Creation Focus
  primary_use_case TEXT[], -- Array: ["gaming", "writing", "marketing", "education"]
  favorite_art_styles TEXT[], -- Array: ["anime", "realistic", "cartoon", "fantasy"]

  -- Achievements and Badges
  badges JSONB DEFAULT '[]', -- [{"type": "early_adopter", "earned_at": "2024-01-01"}]
  total_likes_received INTEGER DEFAULT 0,
  total_downloads INTEGER DEFAULT 0,
  featured_character_count INTEGER DEFAULT 0,

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  UNIQUE(user_id)
);

COMMENT ON TABLE user_profiles IS
  'Optional extended profile of a user (one row per user): personal/professional info, badges, totals.';

CREATE INDEX idx_user_profiles_user_id ON user_profiles(user_id);
CREATE INDEX idx_user_profiles_profession ON user_profiles(profession);
CREATE INDEX idx_user_profiles_industry ON user_profiles(industry);

CREATE TRIGGER user_profiles_set_updated_at
  BEFORE UPDATE ON user_profiles
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ===========================================================================================
-- 2. Image generation system
-- ===========================================================================================

CREATE TABLE characters (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  -- Basic Character Information
  name TEXT NOT NULL,
  description TEXT,
  prompt TEXT NOT NULL,
  negative_prompt TEXT,

  -- Generation Parameters
  style_type TEXT NOT NULL CHECK (style_type IN (
    'anime', 'realistic', 'cartoon', 'fantasy', 'cyberpunk',
    'steampunk', 'minimalist', 'comic', 'portrait', 'artistic'
  )),
  art_style TEXT,
  mood TEXT,
  color_palette TEXT[],

  -- Technical Parameters
  model_version TEXT DEFAULT 'v1.0',
  generation_seed INTEGER,
  cfg_scale DECIMAL(3,1) DEFAULT 7.5,
  steps INTEGER DEFAULT 20,
  sampler TEXT DEFAULT 'DPM++ 2M Karras',

  -- Images and Assets
  primary_image_url TEXT,
  thumbnail_url TEXT,
  additional_images JSONB DEFAULT '[]', -- Array of image URLs
  image_metadata JSONB DEFAULT '{}', -- Generation metadata, file sizes, etc.

  -- Status and Processing
  generation_status TEXT DEFAULT 'pending' CHECK (generation_status IN (
    'pending', 'processing', 'completed', 'failed', 'cancelled'
  )),
  processing_started_at TIMESTAMP WITH TIME ZONE,
  processing_completed_at TIMESTAMP WITH TIME ZONE,
  processing_time_seconds INTEGER,
  error_message TEXT,
  retry_count INTEGER DEFAULT 0,

  -- Organization and Sharing
  collection_id TEXT, -- foreign key added below, once collections exists
  tags TEXT[] DEFAULT '{}',
  is_public BOOLEAN DEFAULT false,
  is_featured BOOLEAN DEFAULT false,
  allow_commercial_use BOOLEAN DEFAULT false,
  license_type TEXT DEFAULT 'standard' CHECK (license_type IN ('standard', 'commercial', 'creative_commons')),

  -- Engagement Metrics
  view_count INTEGER DEFAULT 0,
  like_count INTEGER DEFAULT 0,
  download_count INTEGER DEFAULT 0,
  share_count INTEGER DEFAULT 0,

  -- Versioning and Variants
  -- Fix (seed): the seed's REFERENCES characters(id) had the implicit ON DELETE NO ACTION, so
  -- deleting a character that has variants (or erasing a user whose characters were used as
  -- parents by others) failed. A variant outlives its parent and just loses the link.
  parent_character_id TEXT REFERENCES characters(id) ON DELETE SET NULL,
  version_number INTEGER DEFAULT 1,
  variant_type TEXT CHECK (variant_type IN ('original', 'style_transfer', 'pose_change', 'outfit_change', 'expression_change')),

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  published_at TIMESTAMP WITH TIME ZONE
);

COMMENT ON TABLE characters IS
  'Characters a user described: prompt and generation parameters, resulting images, sharing, metrics, variants.';

CREATE INDEX idx_characters_user_id ON characters(user_id);
CREATE INDEX idx_characters_style_type ON characters(style_type);
CREATE INDEX idx_characters_generation_status ON characters(generation_status);
CREATE INDEX idx_characters_is_public ON characters(is_public) WHERE is_public = true;
CREATE INDEX idx_characters_is_featured ON characters(is_featured) WHERE is_featured = true;
CREATE INDEX idx_characters_created_at ON characters(created_at);
CREATE INDEX idx_characters_collection_id ON characters(collection_id);
CREATE INDEX idx_characters_parent_id ON characters(parent_character_id);
CREATE INDEX idx_characters_tags ON characters USING GIN(tags);
CREATE INDEX idx_characters_view_count ON characters(view_count) WHERE is_public = true;

CREATE TRIGGER characters_set_updated_at
  BEFORE UPDATE ON characters
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE generation_jobs (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  character_id TEXT REFERENCES characters(id) ON DELETE SET NULL,

  -- Job Configuration
  job_type TEXT NOT NULL CHECK (job_type IN (
    'character_generation', 'style_transfer', 'upscale', 'variation', 'background_removal'
  )),
  input_parameters JSONB NOT NULL,
  generation_provider TEXT DEFAULT 'primary' CHECK (generation_provider IN ('primary', 'secondary', 'fallback')),

  -- Processing Status
  status TEXT DEFAULT 'queued' CHECK (status IN (
    'queued', 'processing', 'completed', 'failed', 'cancelled', 'timeout'
  )),
  priority INTEGER DEFAULT 5 CHECK (priority BETWEEN 1 AND 10),

  -- Timing Information
  queued_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  started_at TIMESTAMP WITH TIME ZONE,
  completed_at TIMESTAMP WITH TIME ZONE,
  timeout_at TIMESTAMP WITH TIME ZONE,

  -- Results and Metadata
  output_urls JSONB DEFAULT '[]',
  processing_metadata JSONB DEFAULT '{}',
  error_details JSONB,

  -- Resource Usage
  gpu_time_seconds INTEGER,
  memory_used_mb INTEGER,
  cost_credits INTEGER,

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

COMMENT ON TABLE generation_jobs IS
  'Image generation jobs queued for the worker: type, parameters, status, timing, outputs, credit cost.';

CREATE INDEX idx_generation_jobs_user_id ON generation_jobs(user_id);
CREATE INDEX idx_generation_jobs_character_id ON generation_jobs(character_id);
CREATE INDEX idx_generation_jobs_status ON generation_jobs(status);
CREATE INDEX idx_generation_jobs_job_type ON generation_jobs(job_type);
CREATE INDEX idx_generation_jobs_queued_at ON generation_jobs(queued_at);
CREATE INDEX idx_generation_jobs_priority_status ON generation_jobs(priority, status) WHERE status IN ('queued', 'processing');

CREATE TRIGGER generation_jobs_set_updated_at
  BEFORE UPDATE ON generation_jobs
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE collections (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  -- Collection Information
  name TEXT NOT NULL,
  description TEXT,
  cover_image_url TEXT,

  -- Organization
  tags TEXT[] DEFAULT '{}',
  category TEXT,
  theme TEXT,

  -- Sharing and Visibility
  is_public BOOLEAN DEFAULT false,
  allow_collaboration BOOLEAN DEFAULT false,
  collaboration_settings JSONB DEFAULT '{}',

  -- Statistics
  character_count INTEGER DEFAULT 0,
  total_views INTEGER DEFAULT 0,
  total_likes INTEGER DEFAULT 0,

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

COMMENT ON TABLE collections IS
  'Named, optionally public groups of a user''s characters.';

CREATE TRIGGER collections_set_updated_at
  BEFORE UPDATE ON collections
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Fix (seed): characters.collection_id was declared "Will reference collections table" but
-- never got its foreign key, so it could point at a collection that does not (or no longer)
-- exist. Deleting a collection leaves its characters in place, unfiled.
ALTER TABLE characters
  ADD CONSTRAINT characters_collection_id_fkey
  FOREIGN KEY (collection_id) REFERENCES collections(id) ON DELETE SET NULL;

CREATE TABLE collection_characters (
  collection_id TEXT NOT NULL REFERENCES collections(id) ON DELETE CASCADE,
  character_id TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
  added_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  display_order INTEGER,

  PRIMARY KEY (collection_id, character_id)
);

COMMENT ON TABLE collection_characters IS
  'Membership of characters in collections, with their order in the collection.';

CREATE INDEX idx_collections_user_id ON collections(user_id);
CREATE INDEX idx_collections_is_public ON collections(is_public) WHERE is_public = true;
CREATE INDEX idx_collection_characters_character_id ON collection_characters(character_id);

-- ===========================================================================================
-- 3. Credit system
-- ===========================================================================================

CREATE TABLE user_credits (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  -- Current Balance
  current_balance INTEGER NOT NULL DEFAULT 0,
  reserved_balance INTEGER NOT NULL DEFAULT 0, -- Credits reserved for ongoing jobs

  -- Daily Allowance (for subscription plans)
  daily_allowance INTEGER NOT NULL DEFAULT 0,
  daily_used INTEGER NOT NULL DEFAULT 0,
  daily_reset_date DATE NOT NULL DEFAULT CURRENT_DATE,

  -- Lifetime Statistics
  total_earned INTEGER NOT NULL DEFAULT 0,
  total_spent INTEGER NOT NULL DEFAULT 0,
  total_purchased INTEGER NOT NULL DEFAULT 0,
  total_gifted_received INTEGER NOT NULL DEFAULT 0,
  total_gifted_sent INTEGER NOT NULL DEFAULT 0,

  -- Bonus and Rewards
  referral_bonus INTEGER NOT NULL DEFAULT 0,
  achievement_bonus INTEGER NOT NULL DEFAULT 0,
  daily_login_streak INTEGER NOT NULL DEFAULT 0,
  last_daily_bonus_date DATE,

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  UNIQUE(user_id),

  -- Constraints
  CONSTRAINT user_credits_balance_positive CHECK (current_balance >= 0),
  CONSTRAINT user_credits_reserved_positive CHECK (reserved_balance >= 0),
  CONSTRAINT user_credits_daily_allowance_positive CHECK (daily_allowance >= 0),
  CONSTRAINT user_credits_daily_used_positive CHECK (daily_used >= 0),
  -- Fix (seed): DESIGN's ledger invariant 0 <= reserved_balance <= current_balance,
  -- enforced by the database as the last wall behind the credit engine.
  CONSTRAINT user_credits_reserved_within_balance CHECK (reserved_balance <= current_balance)
);

COMMENT ON TABLE user_credits IS
  'Credit wallet of a user (one row per user): balance, credits held by running jobs, daily allowance, lifetime totals, streaks.';

CREATE INDEX idx_user_credits_user_id ON user_credits(user_id);
CREATE INDEX idx_user_credits_daily_reset ON user_credits(daily_reset_date);

CREATE TRIGGER user_credits_set_updated_at
  BEFORE UPDATE ON user_credits
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- Fix (seed): the seed only sketched monthly partitioning in a comment
-- (PARTITION BY RANGE (EXTRACT(EPOCH FROM created_at)), which cannot be added by ALTER TABLE).
-- The table is partitioned by RANGE (created_at), one partition per UTC calendar month,
-- named credit_transactions_yYYYYmMM, plus a DEFAULT partition so that no insert is ever
-- lost; see ensure_monthly_partitions() below. PostgreSQL requires the primary key of a
-- partitioned table to contain the partition key, so the seed's PRIMARY KEY (id) becomes
-- PRIMARY KEY (id, created_at); ids are random UUIDs, so id stays unique in practice.
CREATE TABLE credit_transactions (
  id TEXT NOT NULL DEFAULT gen_random_uuid()::text,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  -- Transaction Details
  transaction_type TEXT NOT NULL CHECK (transaction_type IN (
    'purchase', 'usage', 'refund', 'gift_sent', 'gift_received',
    'daily_allowance', 'bonus', 'referral', 'achievement', 'admin_adjustment'
  )),
  amount INTEGER NOT NULL, -- Can be negative for usage/spending
  balance_after INTEGER NOT NULL,

  -- Related Entities
  related_entity_type TEXT CHECK (related_entity_type IN (
    'generation_job', 'purchase_order', 'gift_transfer', 'achievement', 'referral'
  )),
  related_entity_id TEXT,

  -- Transaction Context
  description TEXT NOT NULL,
  metadata JSONB DEFAULT '{}',

  -- Processing Information
  status TEXT DEFAULT 'completed' CHECK (status IN ('pending', 'completed', 'failed', 'cancelled')),
  processed_at TIMESTAMP WITH TIME ZONE DEFAULT NOW(),

  -- API and Cost Tracking
  api_endpoint TEXT,
  operation_details JSONB,
  cost_calculation JSONB, -- How the cost was calculated

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

COMMENT ON TABLE credit_transactions IS
  'Append-only credit ledger: every movement of a user''s credits with the balance after it. Partitioned by UTC month.';

CREATE TABLE credit_transactions_default PARTITION OF credit_transactions DEFAULT;

COMMENT ON TABLE credit_transactions_default IS
  'Catch-all partition for rows outside the created monthly partitions; ensure_monthly_partitions() moves them out.';

-- Created on the partitioned parent: PostgreSQL creates them on every partition.
CREATE INDEX idx_credit_transactions_user_id ON credit_transactions(user_id);
CREATE INDEX idx_credit_transactions_type ON credit_transactions(transaction_type);
CREATE INDEX idx_credit_transactions_created_at ON credit_transactions(created_at);
CREATE INDEX idx_credit_transactions_status ON credit_transactions(status);
CREATE INDEX idx_credit_transactions_related_entity ON credit_transactions(related_entity_type, related_entity_id);
CREATE INDEX idx_credit_transactions_api_endpoint ON credit_transactions(api_endpoint);

CREATE TABLE api_credit_configs (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,

  -- API Endpoint Configuration
  endpoint_pattern TEXT NOT NULL, -- Supports patterns like '/api/v1/characters/:id/generate'
  http_method TEXT NOT NULL CHECK (http_method IN ('GET', 'POST', 'PUT', 'PATCH', 'DELETE')),

  -- Cost Configuration
  base_cost INTEGER NOT NULL DEFAULT 0,
  cost_formula JSONB, -- For complex cost calculations based on parameters

  -- User Tier Modifiers
  tier_multipliers JSONB DEFAULT '{
    "FREE": 1.0,
    "PREMIUM": 0.8,
    "PRO": 0.6,
    "ENTERPRISE": 0.4
  }',

  -- Usage Rules
  daily_limit INTEGER, -- Per-user daily limit for this endpoint
  rate_limit_per_minute INTEGER,
  requires_subscription BOOLEAN DEFAULT false,
  minimum_tier TEXT CHECK (minimum_tier IN ('FREE', 'PREMIUM', 'PRO', 'ENTERPRISE')),

  -- Configuration
  is_enabled BOOLEAN DEFAULT true,
  description TEXT,
  category TEXT, -- 'generation', 'management', 'social', etc.

  -- Metadata
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  UNIQUE(endpoint_pattern, http_method)
);

COMMENT ON TABLE api_credit_configs IS
  'Pricing of API endpoints in credits (base cost, formula, tier multipliers) and their usage limits.';

CREATE INDEX idx_api_credit_configs_endpoint ON api_credit_configs(endpoint_pattern);
CREATE INDEX idx_api_credit_configs_enabled ON api_credit_configs(is_enabled) WHERE is_enabled = true;
CREATE INDEX idx_api_credit_configs_category ON api_credit_configs(category);

CREATE TRIGGER api_credit_configs_set_updated_at
  BEFORE UPDATE ON api_credit_configs
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE credit_packages (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,

  -- Package Details
  name TEXT NOT NULL,
  description TEXT,
  credit_amount INTEGER NOT NULL,
  bonus_credits INTEGER DEFAULT 0,

  -- Pricing
  price_usd DECIMAL(10,2) NOT NULL,
  price_currency TEXT DEFAULT 'USD',
  discount_percentage INTEGER DEFAULT 0,

  -- Availability
  is_available BOOLEAN DEFAULT true,
  target_tiers TEXT[] DEFAULT '{"FREE", "PREMIUM", "PRO", "ENTERPRISE"}',
  promotion_start_date TIMESTAMP WITH TIME ZONE,
  promotion_end_date TIMESTAMP WITH TIME ZONE,

  -- Package Type
  package_type TEXT DEFAULT 'one_time' CHECK (package_type IN ('one_time', 'subscription_bonus', 'promotional')),

  -- Display
  display_order INTEGER DEFAULT 0,
  highlight_color TEXT,
  badge_text TEXT, -- "BEST VALUE", "POPULAR", etc.

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

COMMENT ON TABLE credit_packages IS
  'Credit packages offered for purchase: credits, bonus, price, availability window, display.';

CREATE INDEX idx_credit_packages_available ON credit_packages(is_available) WHERE is_available = true;
CREATE INDEX idx_credit_packages_promotion ON credit_packages(promotion_start_date, promotion_end_date);

CREATE TRIGGER credit_packages_set_updated_at
  BEFORE UPDATE ON credit_packages
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ===========================================================================================
-- Supporting tables
-- ===========================================================================================

-- Fix (seed): the seed says "Partition by month" but defined a plain table. Partitioned like
-- credit_transactions: RANGE (created_at) by UTC month, a DEFAULT partition, and
-- PRIMARY KEY (id, created_at) because the key must contain the partition key.
CREATE TABLE user_activity_logs (
  id TEXT NOT NULL DEFAULT gen_random_uuid()::text,
  user_id TEXT REFERENCES users(id) ON DELETE SET NULL,

  -- Activity Details
  activity_type TEXT NOT NULL, -- 'login', 'character_created', 'image_generated', etc.
  entity_type TEXT, -- 'character', 'collection', 'user'
  entity_id TEXT,

  -- Context
  session_id TEXT,
  ip_address INET,
  user_agent TEXT,
  referrer TEXT,

  -- Metadata
  metadata JSONB DEFAULT '{}',

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

COMMENT ON TABLE user_activity_logs IS
  'Activity log (logins, creations, generations...) for analytics. Partitioned by UTC month; old months are dropped for retention.';

CREATE TABLE user_activity_logs_default PARTITION OF user_activity_logs DEFAULT;

COMMENT ON TABLE user_activity_logs_default IS
  'Catch-all partition for rows outside the created monthly partitions; ensure_monthly_partitions() moves them out.';

CREATE INDEX idx_user_activity_logs_user_id ON user_activity_logs(user_id, created_at);
CREATE INDEX idx_user_activity_logs_type ON user_activity_logs(activity_type, created_at);

CREATE TABLE character_ratings (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  character_id TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,

  rating INTEGER NOT NULL CHECK (rating BETWEEN 1 AND 5),
  review_text TEXT,

  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,

  UNIQUE(character_id, user_id)
);

COMMENT ON TABLE character_ratings IS
  'One 1-5 star rating (with optional review) per user per character.';

CREATE INDEX idx_character_ratings_character_id ON character_ratings(character_id);
CREATE INDEX idx_character_ratings_rating ON character_ratings(rating);
-- Fix (seed): user_id had no index, so deleting a user (GDPR erasure) scanned the whole table
-- to cascade, and "my ratings" could not use an index.
CREATE INDEX idx_character_ratings_user_id ON character_ratings(user_id);

CREATE TRIGGER character_ratings_set_updated_at
  BEFORE UPDATE ON character_ratings
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

-- ===========================================================================================
-- Monthly partition maintenance (called here and by the scheduler)
-- ===========================================================================================

-- Makes sure <parent>_yYYYYmMM exists for `months` consecutive UTC months starting with the
-- month that contains first_month; returns how many partitions it created (0 when all
-- existed). Rows that already landed in the DEFAULT partition for a month being created are
-- moved into the new partition (PostgreSQL refuses to create a partition whose range has
-- rows in the default partition). Safe to call concurrently: callers serialise on the
-- parent's lock.
CREATE FUNCTION ensure_monthly_partitions(parent text, first_month date, months integer)
RETURNS integer
LANGUAGE plpgsql
-- Fixed settings so partition bounds are rendered and parsed the same in every session.
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
  v_parent      regclass;
  v_schema      name;
  v_default     text;
  v_columns     text;
  v_month       date;
  v_lo          timestamptz;
  v_hi          timestamptz;
  v_name        text;
  v_existing    regclass;
  v_has_rows    boolean;
  v_created     integer := 0;
BEGIN
  IF parent IS NULL OR parent NOT IN ('credit_transactions', 'user_activity_logs') THEN
    RAISE EXCEPTION 'ensure_monthly_partitions: % is not a monthly-partitioned table', parent
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF first_month IS NULL OR months IS NULL OR months < 0 THEN
    RAISE EXCEPTION 'ensure_monthly_partitions: first_month must be set and months >= 0 (got %, %)',
      first_month, months
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  v_parent := to_regclass(format('%I', parent));
  IF v_parent IS NULL THEN
    RAISE EXCEPTION 'ensure_monthly_partitions: table % does not exist', parent
      USING ERRCODE = 'undefined_table';
  END IF;
  SELECT n.nspname INTO v_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = v_parent;
  v_default := format('%s_default', parent);

  -- Serialises concurrent callers (this mode conflicts with itself) without blocking DML.
  EXECUTE format('LOCK TABLE ONLY %I.%I IN SHARE UPDATE EXCLUSIVE MODE', v_schema, parent);

  SELECT string_agg(format('%I', a.attname), ', ' ORDER BY a.attnum) INTO v_columns
    FROM pg_attribute a
   WHERE a.attrelid = v_parent AND a.attnum > 0 AND NOT a.attisdropped;

  FOR i IN 0 .. months - 1 LOOP
    v_month := (date_trunc('month', first_month::timestamp) + make_interval(months => i))::date;
    v_lo := v_month::timestamp AT TIME ZONE 'UTC';
    v_hi := (v_month + interval '1 month')::timestamp AT TIME ZONE 'UTC';
    v_name := format('%s_y%sm%s', parent, to_char(v_month, 'YYYY'), to_char(v_month, 'MM'));

    v_existing := to_regclass(format('%I.%I', v_schema, v_name));
    IF v_existing IS NOT NULL THEN
      IF NOT EXISTS (SELECT 1 FROM pg_inherits WHERE inhrelid = v_existing AND inhparent = v_parent) THEN
        RAISE EXCEPTION 'ensure_monthly_partitions: % exists but is not a partition of %', v_name, parent
          USING ERRCODE = 'duplicate_table';
      END IF;
      CONTINUE;
    END IF;

    -- Creating or attaching a partition scans the default partition under an ACCESS
    -- EXCLUSIVE lock anyway; taking it now keeps new rows from landing there in between.
    EXECUTE format('LOCK TABLE ONLY %I.%I IN ACCESS EXCLUSIVE MODE', v_schema, v_default);
    EXECUTE format('SELECT EXISTS (SELECT 1 FROM ONLY %I.%I WHERE created_at >= %L AND created_at < %L)',
                   v_schema, v_default, v_lo, v_hi)
      INTO v_has_rows;

    IF NOT v_has_rows THEN
      EXECUTE format('CREATE TABLE %I.%I PARTITION OF %I.%I FOR VALUES FROM (%L) TO (%L)',
                     v_schema, v_name, v_schema, parent, v_lo, v_hi);
    ELSE
      EXECUTE format('CREATE TABLE %I.%I (LIKE %I.%I INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE)',
                     v_schema, v_name, v_schema, parent);
      EXECUTE format('WITH moved AS (DELETE FROM ONLY %I.%I WHERE created_at >= %L AND created_at < %L RETURNING %s) '
                     'INSERT INTO %I.%I (%s) SELECT %s FROM moved',
                     v_schema, v_default, v_lo, v_hi, v_columns,
                     v_schema, v_name, v_columns, v_columns);
      -- Attaching creates the parent's indexes, primary key and foreign keys on the table.
      EXECUTE format('ALTER TABLE %I.%I ATTACH PARTITION %I.%I FOR VALUES FROM (%L) TO (%L)',
                     v_schema, parent, v_schema, v_name, v_lo, v_hi);
    END IF;

    v_created := v_created + 1;
  END LOOP;

  RETURN v_created;
END;
$$;

COMMENT ON FUNCTION ensure_monthly_partitions(text, date, integer) IS
  'Creates missing <parent>_yYYYYmMM partitions (UTC months) for credit_transactions or user_activity_logs, moving matching rows out of the DEFAULT partition; returns how many were created.';

-- Detaches and drops every partition of `parent` whose whole range lies before cutoff (UTC
-- midnight at the start of that day); never the DEFAULT partition. Returns how many it
-- dropped. Meant for user_activity_logs retention. Caution with credit_transactions: the
-- ledger rule current_balance = sum of completed amounts needs the full history, so only drop
-- its months after their totals have been carried forward or archived.
CREATE FUNCTION drop_monthly_partitions_before(parent text, cutoff date)
RETURNS integer
LANGUAGE plpgsql
-- Fixed settings so pg_get_expr() renders bounds as 'YYYY-MM-DD hh:mm:ss+00'.
SET timezone = 'UTC'
SET datestyle = 'ISO, YMD'
AS $$
DECLARE
  v_parent   regclass;
  v_schema   name;
  v_cutoff   timestamptz;
  v_part     record;
  v_upper    text;
  v_dropped  integer := 0;
BEGIN
  IF parent IS NULL OR parent NOT IN ('credit_transactions', 'user_activity_logs') THEN
    RAISE EXCEPTION 'drop_monthly_partitions_before: % is not a monthly-partitioned table', parent
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF cutoff IS NULL THEN
    RAISE EXCEPTION 'drop_monthly_partitions_before: cutoff must be set'
      USING ERRCODE = 'invalid_parameter_value';
  END IF;

  v_parent := to_regclass(format('%I', parent));
  IF v_parent IS NULL THEN
    RAISE EXCEPTION 'drop_monthly_partitions_before: table % does not exist', parent
      USING ERRCODE = 'undefined_table';
  END IF;
  SELECT n.nspname INTO v_schema
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE c.oid = v_parent;
  v_cutoff := cutoff::timestamp AT TIME ZONE 'UTC';

  FOR v_part IN
    SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound
      FROM pg_inherits i
      JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent = v_parent
     ORDER BY c.relname
  LOOP
    -- A range bound reads FOR VALUES FROM ('...') TO ('...'); the default partition reads
    -- DEFAULT and an unbounded one MAXVALUE: neither matches, so neither is ever dropped.
    v_upper := substring(v_part.bound FROM '^FOR VALUES FROM \(''[^'']*''\) TO \(''([^'']*)''\)$');
    CONTINUE WHEN v_upper IS NULL OR v_upper::timestamptz > v_cutoff;

    EXECUTE format('ALTER TABLE %I.%I DETACH PARTITION %I.%I', v_schema, parent, v_schema, v_part.relname);
    EXECUTE format('DROP TABLE %I.%I', v_schema, v_part.relname);
    v_dropped := v_dropped + 1;
  END LOOP;

  RETURN v_dropped;
END;
$$;

COMMENT ON FUNCTION drop_monthly_partitions_before(text, date) IS
  'Detaches and drops the partitions of credit_transactions or user_activity_logs whose whole range is before cutoff (never DEFAULT); returns how many were dropped.';

-- Partitions for the previous, current and next three UTC months. The scheduler keeps
-- calling ensure_monthly_partitions() so that future months exist before they start.
SELECT ensure_monthly_partitions(
  'credit_transactions',
  (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date,
  5);
SELECT ensure_monthly_partitions(
  'user_activity_logs',
  (date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date,
  5);
