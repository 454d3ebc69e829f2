-- V9: what the caller's own credit routes need (history, gifts, daily bonus, pricing usage).
--
-- * GET /api/v1/credits/transactions pages one user's ledger newest first by the keyset
--   (created_at, id), optionally of one transaction_type; the gift cap sums one user's
--   gift_sent entries since their local midnight. The seed's single-column indexes
--   (user_id), (transaction_type), (created_at) make both scan every row of the user (or of
--   the type); these composite indexes let each query read exactly the rows it returns.
--   Created on the partitioned parent, so every monthly partition gets them.
-- * local_midnight(day, zone): the instant a local date starts in a time zone. Time zones
--   are validated against chrono-tz when users set them, and the server's time zone
--   database may not know every name chrono-tz does: like local_date_of() (V7), an unknown
--   or empty zone falls back to UTC instead of failing the request.

CREATE INDEX idx_credit_transactions_user_created
  ON credit_transactions (user_id, created_at, id);

CREATE INDEX idx_credit_transactions_user_type_created
  ON credit_transactions (user_id, transaction_type, created_at, id);

CREATE FUNCTION local_midnight(day date, zone text) RETURNS timestamptz
LANGUAGE plpgsql STABLE AS $$
BEGIN
  RETURN day::timestamp AT TIME ZONE coalesce(nullif(zone, ''), 'UTC');
EXCEPTION WHEN invalid_parameter_value THEN
  RETURN day::timestamp AT TIME ZONE 'UTC';
END
$$;

COMMENT ON FUNCTION local_midnight(date, text) IS
  'The instant the local date `day` starts in time zone `zone` (UTC when the zone is empty or unknown).';
