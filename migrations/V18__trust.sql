-- V18: trust (issue #12, items 3 and 9): the gallery cannot be manipulated cheaply, and
-- smaller trust gaps.
--
-- * Weighted reports. Until now three distinct reporters with an open report took a
--   character out of the gallery (characters.open_report_count >= GALLERY_REPORT_THRESHOLD),
--   so three throwaway accounts could hide anything. Now each report carries a weight,
--   computed by the API (shared::social::trust) from the reporter when the report is filed
--   (account age, verified email, the share of their past reports moderators actioned) and
--   written as the system role: app_api's INSERT privilege on content_reports (V3) does not
--   include it, so no request sets its own weight. characters.report_score is the sum of the
--   weights of the open reports filed after the last moderator review
--   (characters.moderation_reviewed_at), kept by the V5 trigger function, which now counts
--   both; the gallery leaves out characters whose score reaches the threshold.
--   open_report_count stays, for the moderators' queue.
-- * Moderator review: resolving a report of a character, or unhiding it, sets
--   moderation_reviewed_at. Reports filed before it no longer count towards the score, so
--   a character a moderator looked at and kept is not hidden again by the same reports
--   (they stay open in the queue: a dismissal resolves only its own report).
-- * Reports filed before this migration keep the weight they had in effect: 1 each.
-- * View counting: character_view_keys holds one row per (character, UTC day, viewer
--   digest). The API counts a view only when its key is new, in batches (see
--   shared::characters::views): a digest is an HMAC, never a user id, address or user agent
--   in clear, and rotates daily. UNLOGGED: it is a deduplication set, not the count (the count
--   is characters.view_count), so it need not pay for WAL; a server crash empties it, which
--   at worst counts a viewer once more that day. The scheduler's idempotency-purge task
--   drops days before yesterday. count_character_view(), which counted every read, is no
--   longer the API's to call.
-- * user_profiles gets row-level security for app_api, consistent with GET
--   /api/v1/users/{username}: a profile is readable by its owner, and by anyone when its
--   owner's profile_visibility is public and the account is active; only the owner writes it
--   (columns granted as the PUT /api/v1/me/profile handler writes them; no DELETE).
-- * Erasure: gdpr_scrub_identifiers replaces the person's identifiers only in the JSON fields
--   that hold identifiers (from_username, to_username, ...) and only where the whole value is
--   one of them (case-insensitively), and as whole words in the fields holding free text
--   (a gift's message, a note); keys and every other value are left alone. V13's
--   gdpr_scrub_jsonb rewrote every string and key containing a needle: a user named `amount`
--   turned other people's {"amount": 5} into {"[erased]": 5}. In free texts (ledger
--   descriptions, refund reasons, report details and notes) gdpr_scrub_words replaces a
--   needle only where it stands as a whole word, not inside another word.

-- ===========================================================================================
-- Weighted reports
-- ===========================================================================================

ALTER TABLE content_reports
  ADD COLUMN weight NUMERIC(6,3) NOT NULL DEFAULT 0 CHECK (weight >= 0);

COMMENT ON COLUMN content_reports.weight IS
  'How much the report counts towards hiding its character, computed from the reporter when filed (shared::social::trust).';

UPDATE content_reports SET weight = 1;

ALTER TABLE characters
  ADD COLUMN report_score NUMERIC(10,3) NOT NULL DEFAULT 0 CHECK (report_score >= 0),
  ADD COLUMN moderation_reviewed_at TIMESTAMP WITH TIME ZONE;

COMMENT ON COLUMN characters.report_score IS
  'Sum of the weights of open reports filed after moderation_reviewed_at; the gallery leaves the character out at GALLERY_REPORT_THRESHOLD.';
COMMENT ON COLUMN characters.moderation_reviewed_at IS
  'Last time a moderator resolved a report of the character or unhid it; earlier reports no longer count towards report_score.';

-- Recounts open_report_count and report_score of the given characters. The caller holds
-- their row locks (see V5: the statement that counts must start after the lock is granted).
CREATE FUNCTION recount_character_reports(ids text[]) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
  UPDATE characters c SET
    open_report_count = (
      SELECT count(DISTINCT r.reporter_id) FROM content_reports r
      WHERE r.character_id = c.id AND r.status = 'open'
    ),
    report_score = (
      SELECT coalesce(sum(r.weight), 0) FROM content_reports r
      WHERE r.character_id = c.id AND r.status = 'open'
        AND r.created_at > coalesce(c.moderation_reviewed_at, '-infinity'::timestamptz)
    )
  WHERE c.id = ANY(ids);
$$;

CREATE OR REPLACE FUNCTION content_reports_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  target text := coalesce(NEW.character_id, OLD.character_id);
  previous text := CASE WHEN TG_OP = 'UPDATE' AND OLD.character_id IS DISTINCT FROM NEW.character_id
                        THEN OLD.character_id END;
BEGIN
  -- As V5: lock both rows in one statement, in id order, then count in a later statement.
  PERFORM 1 FROM characters
  WHERE id IN (target, previous)
  ORDER BY id
  FOR NO KEY UPDATE;
  PERFORM recount_character_reports(ARRAY[target, previous]);
  RETURN NULL;
END
$$;

DROP TRIGGER trg_content_reports_count ON content_reports;
CREATE TRIGGER trg_content_reports_count
  AFTER INSERT OR UPDATE OF status, character_id, weight OR DELETE ON content_reports
  FOR EACH ROW EXECUTE FUNCTION content_reports_count();

-- A reporter's record: how many of their reports moderators actioned and dismissed.
CREATE INDEX idx_content_reports_reporter_status ON content_reports (reporter_id, status)
  WHERE status <> 'open';

SELECT recount_character_reports(array_agg(id)) FROM characters WHERE open_report_count > 0;

REVOKE EXECUTE ON FUNCTION recount_character_reports(text[]) FROM PUBLIC;

-- ===========================================================================================
-- View counting
-- ===========================================================================================

CREATE UNLOGGED TABLE character_view_keys (
  character_id TEXT NOT NULL,
  day DATE NOT NULL,
  viewer_digest BYTEA NOT NULL CHECK (octet_length(viewer_digest) = 16),
  PRIMARY KEY (character_id, day, viewer_digest)
);

CREATE INDEX idx_character_view_keys_day ON character_view_keys (day);

COMMENT ON TABLE character_view_keys IS
  'Views already counted: (character, UTC day, HMAC of the viewer). A deduplication set, not the count; purged after a day.';

-- Functions are executable by PUBLIC unless revoked: V3's grant to app_api was not the only
-- way in.
REVOKE EXECUTE ON FUNCTION count_character_view(text) FROM PUBLIC, app_api;

-- ===========================================================================================
-- user_profiles behind row-level security
-- ===========================================================================================

GRANT INSERT (user_id, first_name, last_name, bio, website_url, social_links, profession, company,
              industry, experience_level, primary_use_case, favorite_art_styles)
  ON user_profiles TO app_api;
GRANT UPDATE (first_name, last_name, bio, website_url, social_links, profession, company,
              industry, experience_level, primary_use_case, favorite_art_styles)
  ON user_profiles TO app_api;

ALTER TABLE user_profiles ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_profiles_read ON user_profiles FOR SELECT TO app_api
  USING (
    user_id = (SELECT app_current_user_id())
    OR EXISTS (SELECT 1 FROM users u
               WHERE u.id = user_id AND u.profile_visibility = 'public' AND u.account_status = 'active')
  );
CREATE POLICY user_profiles_insert ON user_profiles FOR INSERT TO app_api
  WITH CHECK (user_id = (SELECT app_current_user_id()));
CREATE POLICY user_profiles_update ON user_profiles FOR UPDATE TO app_api
  USING (user_id = (SELECT app_current_user_id()))
  WITH CHECK (user_id = (SELECT app_current_user_id()));

-- ===========================================================================================
-- Erasure: scrub identifier fields, not every string and key
-- ===========================================================================================

-- The fields of the platform's JSON documents (activity metadata, ledger metadata, stored
-- responses) that hold a person's identifiers.
CREATE FUNCTION gdpr_identifier_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY['username', 'from_username', 'to_username', 'counterpart_username', 'owner_username',
               'display_name', 'first_name', 'last_name', 'email', 'admin_email', 'customer_email',
               'auth0_id']
$$;

-- The text with every whole-word occurrence of the needles (case-insensitive; not preceded
-- or followed by a letter, digit or underscore) replaced by '[erased]'. As V13's
-- gdpr_scrub_text, needles shorter than 3 characters are not searched for.
CREATE FUNCTION gdpr_scrub_words(value text, needles text[]) RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  needle text;
  result text := value;
BEGIN
  IF value IS NULL OR needles IS NULL THEN
    RETURN value;
  END IF;
  FOREACH needle IN ARRAY needles LOOP
    IF needle IS NOT NULL AND char_length(btrim(needle)) >= 3 THEN
      -- Every character that is not a letter or digit is escaped, so the needle is literal.
      result := regexp_replace(
        result,
        '(?<![[:alnum:]_])' || regexp_replace(btrim(needle), '([^[:alnum:]])', '\\\1', 'g') || '(?![[:alnum:]_])',
        '[erased]', 'gi');
    END IF;
  END LOOP;
  RETURN result;
END
$$;

-- Fields of the same documents that hold free text someone wrote (a gift's message, a
-- moderator's note...), where a person's identifiers may stand among other words.
CREATE FUNCTION gdpr_free_text_fields() RETURNS text[]
LANGUAGE sql IMMUTABLE AS $$
  SELECT ARRAY['message', 'note', 'reason', 'description', 'details', 'resolution_note',
               'review_text', 'bio']
$$;

-- The document with every identifier field (at any depth) whose value is one of the needles,
-- compared case-insensitively and trimmed, replaced by '[erased]', and the needles replaced
-- where they stand as whole words in free-text fields (gdpr_scrub_words, above). Keys, and
-- every other value (other fields, or an identifier field naming someone else), are kept as
-- they are.
CREATE FUNCTION gdpr_scrub_identifiers(value jsonb, needles text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
  lowered text[];
BEGIN
  IF value IS NULL OR needles IS NULL THEN
    RETURN value;
  END IF;
  SELECT array_agg(lower(btrim(n))) INTO lowered FROM unnest(needles) n WHERE n IS NOT NULL;
  CASE jsonb_typeof(value)
    WHEN 'array' THEN
      RETURN coalesce(
        (SELECT jsonb_agg(gdpr_scrub_identifiers(e.item, needles) ORDER BY e.position)
         FROM jsonb_array_elements(value) WITH ORDINALITY AS e(item, position)),
        '[]'::jsonb);
    WHEN 'object' THEN
      RETURN coalesce(
        (SELECT jsonb_object_agg(
                  e.key,
                  CASE
                    WHEN e.key = ANY(gdpr_identifier_fields())
                         AND jsonb_typeof(e.value) = 'string'
                         AND lower(btrim(e.value #>> '{}')) = ANY(lowered)
                      THEN to_jsonb('[erased]'::text)
                    WHEN e.key = ANY(gdpr_free_text_fields()) AND jsonb_typeof(e.value) = 'string'
                      THEN to_jsonb(gdpr_scrub_words(e.value #>> '{}', needles))
                    ELSE gdpr_scrub_identifiers(e.value, needles)
                  END)
         FROM jsonb_each(value) AS e),
        '{}'::jsonb);
    ELSE
      RETURN value;
  END CASE;
END
$$;

COMMENT ON FUNCTION gdpr_scrub_identifiers(jsonb, text[]) IS
  'The document with identifier fields (gdpr_identifier_fields) whose whole value is one of the needles, and whole-word needles in free-text fields (gdpr_free_text_fields), replaced by [erased]; keys and other values untouched.';
