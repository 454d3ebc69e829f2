-- V13: GDPR export and erasure (`shared::gdpr`).
--
-- * account_erasures: which identities erased their account, and when, so that access tokens
--   issued before the erasure are refused (403) while a sign-in with a newer token starts a
--   fresh account, and so that a repeated DELETE /api/v1/me is an idempotent no-op. It holds
--   a SHA-256 digest of the identity provider's subject, never the subject itself, no link to
--   the tombstone users row, and each row only as long as a token issued before the erasure
--   can still be valid (expires_at); expired rows are purged by the next erasure.
-- * gdpr_scrub_text / gdpr_scrub_jsonb: replace every occurrence of a person's identifiers
--   (email, username, names...) in rows that are kept after erasure (the ledger, purchase
--   orders, the activity log, other users' gift entries), case-insensitively, inside JSON
--   strings and keys only, so JSON stays well-formed whatever characters a name contains.
-- * An index to find the activity rows *about* a user or a gift (admin actions on an
--   account, the counterpart's gift entries), written by someone else.

CREATE TABLE account_erasures (
  subject_digest TEXT PRIMARY KEY CHECK (subject_digest ~ '^[0-9a-f]{64}$'),
  erased_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
  expires_at TIMESTAMP WITH TIME ZONE NOT NULL,
  CHECK (expires_at > erased_at)
);

CREATE INDEX idx_account_erasures_expires_at ON account_erasures (expires_at);

COMMENT ON TABLE account_erasures IS
  'Erased identities (SHA-256 of the token subject), kept while tokens issued before the erasure may still be valid.';

-- The replacement is '[erased]'. Identifiers shorter than 3 characters are not searched
-- for: they would match inside unrelated words (the columns holding them are cleared).
CREATE FUNCTION gdpr_scrub_text(value text, needles text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  needle text;
  result text := value;
BEGIN
  IF value IS NULL OR needles IS NULL THEN
    RETURN value;
  END IF;
  FOREACH needle IN ARRAY needles LOOP
    IF needle IS NOT NULL AND char_length(needle) >= 3 THEN
      -- '***=' makes the rest of the pattern a literal string (no regex metacharacters).
      result := regexp_replace(result, '***=' || needle, '[erased]', 'gi');
    END IF;
  END LOOP;
  RETURN result;
END
$$;

CREATE FUNCTION gdpr_scrub_jsonb(value jsonb, needles text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
  IF value IS NULL THEN
    RETURN NULL;
  END IF;
  CASE jsonb_typeof(value)
    WHEN 'string' THEN
      RETURN to_jsonb(gdpr_scrub_text(value #>> '{}', needles));
    WHEN 'array' THEN
      RETURN coalesce(
        (SELECT jsonb_agg(gdpr_scrub_jsonb(e.item, needles) ORDER BY e.position)
         FROM jsonb_array_elements(value) WITH ORDINALITY AS e(item, position)),
        '[]'::jsonb);
    WHEN 'object' THEN
      RETURN coalesce(
        (SELECT jsonb_object_agg(gdpr_scrub_text(e.key, needles), gdpr_scrub_jsonb(e.value, needles))
         FROM jsonb_each(value) AS e),
        '{}'::jsonb);
    ELSE
      RETURN value;
  END CASE;
END
$$;

COMMENT ON FUNCTION gdpr_scrub_jsonb(jsonb, text[]) IS
  'The document with every occurrence of the needles in its strings and keys replaced by [erased].';

CREATE INDEX idx_user_activity_logs_about ON user_activity_logs (entity_id)
  WHERE entity_type IN ('user', 'gift_transfer');
