-- V17: payment disputes, purchased credits that cannot be gifted while young, and pricing
-- configs only for routes that are charged.
--
-- Disputes (Stripe's charge.dispute.* events)
-- * payment_disputes: one row per Stripe dispute (`dp_...`), written only by the webhook (no
--   grant to app_api). A dispute is tied to the order whose payment_intent_id is the
--   dispute's `payment_intent`. `status` is what the dispute means for the account:
--   'open' (any of Stripe's open statuses, inquiries included), 'won' (won, or an inquiry
--   closed without a chargeback) or 'lost' (anything else it closes as); once closed it never
--   reopens, so an event that arrives late changes nothing. `applied_at` is when its effect
--   reached the order and the buyer: a dispute of an order not credited yet (or not known
--   yet) waits, unapplied, and is applied in the transaction that credits the order.
-- * `credits` is the dispute's share of the order's credits (the disputed amount's share of
--   the price, rounded down; all of them when the amounts cannot be compared). While a
--   dispute is applied and open or lost, its credits count in the order's disputed_credits.
-- * purchase_orders.disputed_credits: Σ credits of the order's applied open and lost
--   disputes. What an order has taken back from its buyer is always
--   least(credit_amount + bonus_credits, refunded_credits + disputed_credits): a refund and a
--   dispute of the same money never take it twice, and a won dispute gives back exactly what
--   the refunds do not cover.
-- * An applied open dispute freezes the buyer's gifts and purchases (the partial index below
--   answers "does this user have one" from the index alone).
--
-- Giftable credits
-- * The credits of a purchase (and its bonus) that a refund or a dispute could still take
--   back, credit_amount + bonus_credits − least(that, refunded_credits + disputed_credits),
--   cannot be gifted for GIFT_HOLD_DAYS after paid_at. That is computed from purchase_orders
--   at the moment of the gift, under the buyer's row lock, so nothing needs to expire; the
--   index below reads one user's recent paid orders.
--
-- Pricing configs
-- * Only POST /api/v1/characters/:id/generate is charged (shared::credits::pricing::
--   CHARGEABLE_ENDPOINTS, the list the dispatcher prices through and the admin routes
--   validate against). A config for any other route was listed in GET /api/v1/pricing but
--   never charged or limited; the admin routes now refuse them (422), and the ones already
--   stored and enabled are disabled here, their description saying why. They are kept, not
--   deleted: rate_limit_windows rows reference them, and an operator may want to read what was
--   meant. This statement spells the chargeable route out once, as the code's list stood when
--   it ran (a migration cannot read the code); the code's list decides from now on.

CREATE TABLE payment_disputes (
  id TEXT PRIMARY KEY,
  -- Orders are kept for the accounts (erasure keeps them too), and so is what disputed them.
  purchase_order_id TEXT REFERENCES purchase_orders(id) ON DELETE RESTRICT,
  -- The buyer, once applied (the order's user_id then).
  user_id TEXT REFERENCES users(id) ON DELETE SET NULL,
  charge_id TEXT,
  payment_intent_id TEXT,
  -- The disputed amount in the currency's smallest unit, as Stripe last sent it.
  amount BIGINT CHECK (amount >= 0),
  currency TEXT,
  reason TEXT,
  -- Stripe's status as last seen (warning_needs_response, needs_response, under_review,
  -- won, lost, warning_closed, ...).
  stripe_status TEXT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('open', 'won', 'lost')),
  credits INTEGER NOT NULL DEFAULT 0 CHECK (credits >= 0),
  applied_at TIMESTAMP WITH TIME ZONE,
  closed_at TIMESTAMP WITH TIME ZONE,
  -- Every event id delivered about it, in order (for review).
  event_ids TEXT[] NOT NULL DEFAULT '{}',
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  CONSTRAINT payment_disputes_closed_when_decided CHECK ((status = 'open') = (closed_at IS NULL)),
  CONSTRAINT payment_disputes_applied_to_a_buyer CHECK (
    applied_at IS NULL OR purchase_order_id IS NOT NULL
  )
);

CREATE INDEX idx_payment_disputes_open_by_user ON payment_disputes (user_id)
  WHERE status = 'open' AND applied_at IS NOT NULL;
CREATE INDEX idx_payment_disputes_waiting ON payment_disputes (payment_intent_id)
  WHERE applied_at IS NULL;
CREATE INDEX idx_payment_disputes_order ON payment_disputes (purchase_order_id);

CREATE TRIGGER trg_payment_disputes_updated_at
  BEFORE UPDATE ON payment_disputes
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

COMMENT ON TABLE payment_disputes IS
  'Stripe disputes of credit purchases: an applied open dispute has taken its share of the order''s credits back and freezes the buyer''s gifts and purchases; won gives it back, lost keeps it.';

ALTER TABLE purchase_orders
  ADD COLUMN disputed_credits INTEGER NOT NULL DEFAULT 0,
  ADD CONSTRAINT purchase_orders_disputed_credits_positive CHECK (disputed_credits >= 0);

COMMENT ON COLUMN purchase_orders.disputed_credits IS
  'Credits of the order''s applied open and lost disputes; the order has taken back least(credit_amount + bonus_credits, refunded_credits + disputed_credits).';

CREATE INDEX idx_purchase_orders_user_paid ON purchase_orders (user_id, paid_at)
  WHERE status IN ('paid', 'refunded');

UPDATE api_credit_configs
SET is_enabled = false,
    description = left(
      'Disabled by V17: no route charges ' || http_method || ' ' || endpoint_pattern
        || ', so this price was listed but never charged or limited.'
        || coalesce(' Was: ' || description, ''),
      500)
WHERE is_enabled
  AND NOT (http_method = 'POST'
           AND endpoint_pattern ~ '^/api/v1/characters/:[a-z_][a-z0-9_]*/generate$');
