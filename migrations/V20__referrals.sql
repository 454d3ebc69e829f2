-- V20: referrals. Every user may share a referral code; a new account may name one at its
-- first sign-in, which links it to the code's owner once and for good. When the new account
-- first pays for a purchase, both get the configured `referral` credits through the ledger,
-- at most REFERRAL_MONTHLY_CAP referrals per referrer and calendar month (UTC).

-- Eight characters of an alphabet without look-alikes (no 0/O, 1/I/L), given out on first
-- use; NULL until then.
ALTER TABLE users ADD COLUMN referral_code TEXT
  CONSTRAINT users_referral_code_format CHECK (referral_code ~ '^[A-HJKMNP-Z2-9]{8}$');
CREATE UNIQUE INDEX users_referral_code_key ON users (referral_code)
  WHERE referral_code IS NOT NULL;
COMMENT ON COLUMN users.referral_code IS
  'The code others name at sign-up to be referred by this user; NULL until first asked for.';

CREATE TABLE referrals (
  -- One referrer per account, ever.
  referred_user_id TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
  referrer_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  -- Settled once, when the referred account has a paid purchase: `rewarded` (both got the
  -- credits), `capped` (the referrer had reached the month's cap), `referrer_inactive` (the
  -- referrer was suspended, banned or erased by then); NULL while waiting.
  outcome TEXT CONSTRAINT referrals_outcome CHECK (outcome IN ('rewarded', 'capped', 'referrer_inactive')),
  settled_at TIMESTAMP WITH TIME ZONE,
  qualifying_order_id TEXT REFERENCES purchase_orders(id) ON DELETE SET NULL,
  credits_each INTEGER NOT NULL DEFAULT 0 CHECK (credits_each >= 0),
  CONSTRAINT referrals_not_self CHECK (referred_user_id <> referrer_id),
  CONSTRAINT referrals_settled_together CHECK ((outcome IS NULL) = (settled_at IS NULL))
);
COMMENT ON TABLE referrals IS
  'Who referred whom (one referrer per account) and how the referral was settled.';
-- The referrer's page and the monthly cap.
CREATE INDEX idx_referrals_referrer ON referrals (referrer_id, settled_at);
-- The sweep of referrals waiting to be settled.
CREATE INDEX idx_referrals_waiting ON referrals (created_at) WHERE outcome IS NULL;
