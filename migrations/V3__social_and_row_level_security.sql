-- V3: characters, collections and the gallery's social layer, behind row-level security.
--
-- * Tables the seed design mentions but never defines: character_likes, content_reports.
-- * Derived columns on characters, maintained by triggers so counters never drift from the
--   rows they count (also under concurrent writes: each bump is a single-row UPDATE that
--   takes the row lock), and so the gallery can be served from partial indexes.
-- * Row-level security as the second wall behind the handlers' own checks: HTTP handlers run
--   their statements as the role app_api, with the caller's users.id in the transaction-local
--   setting app.user_id; the worker, scheduler and webhooks keep the owning (system) role.
--   Policies read the setting through a sub-select, so it is evaluated once per statement.
-- * Column privileges: app_api can only write the columns a user may set, so counters,
--   is_featured, user_id, status fields and derived columns cannot be mass-assigned even by a
--   handler that forgot to filter its input.

-- ===========================================================================================
-- The API role
-- ===========================================================================================

DO $$
BEGIN
  CREATE ROLE app_api NOLOGIN;
EXCEPTION
  -- Roles are cluster-wide: another database of the cluster may have created it already.
  WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The service's own login role switches to app_api per transaction (SET LOCAL ROLE).
GRANT app_api TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO app_api;

-- The caller's users.id, or NULL for anonymous callers and system work.
CREATE FUNCTION app_current_user_id() RETURNS text
LANGUAGE sql STABLE AS $$
  SELECT nullif(current_setting('app.user_id', true), '')
$$;

-- ===========================================================================================
-- Characters: derived columns
-- ===========================================================================================

ALTER TABLE characters
  -- Ratings aggregate, kept by trg_character_ratings_aggregate.
  ADD COLUMN rating_count INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN rating_sum INTEGER NOT NULL DEFAULT 0,
  ADD COLUMN rating_average NUMERIC(3,2)
    GENERATED ALWAYS AS (CASE WHEN rating_count > 0 THEN round(rating_sum::numeric / rating_count, 2) END) STORED,
  -- The gallery's "popular" score: views + likes + downloads.
  ADD COLUMN popularity INTEGER
    GENERATED ALWAYS AS (coalesce(view_count, 0) + coalesce(like_count, 0) + coalesce(download_count, 0)) STORED,
  -- Distinct users with an open report against the character, kept by trg_content_reports_count.
  ADD COLUMN open_report_count INTEGER NOT NULL DEFAULT 0,
  -- Public, and the owner allows gallery showcase and is active: kept by triggers on
  -- characters and users. (The report threshold is applied by the gallery query.)
  ADD COLUMN in_gallery BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN search_vector TSVECTOR
    GENERATED ALWAYS AS (
      to_tsvector('simple', coalesce(name, '') || ' ' || coalesce(description, '') || ' ' || coalesce(prompt, ''))
    ) STORED,
  ADD CONSTRAINT characters_counts_non_negative CHECK (
    coalesce(view_count, 0) >= 0 AND coalesce(like_count, 0) >= 0 AND coalesce(download_count, 0) >= 0
    AND coalesce(share_count, 0) >= 0 AND rating_count >= 0 AND open_report_count >= 0
  );

-- "Mine", newest first, keyset-paginated.
CREATE INDEX idx_characters_user_recent ON characters (user_id, created_at DESC, id DESC);
-- The gallery's three sorts and the featured list, over gallery rows only.
CREATE INDEX idx_characters_gallery_recent ON characters (published_at DESC, id DESC) WHERE in_gallery;
CREATE INDEX idx_characters_gallery_popular ON characters (popularity DESC, id DESC) WHERE in_gallery;
CREATE INDEX idx_characters_gallery_top_rated
  ON characters (rating_average DESC, rating_count DESC, id DESC) WHERE in_gallery AND rating_count > 0;
CREATE INDEX idx_characters_gallery_featured ON characters (published_at DESC, id DESC) WHERE in_gallery AND is_featured;
CREATE INDEX idx_characters_search ON characters USING GIN (search_vector);

-- Version and variant come from the parent, publication time from the first publication,
-- and gallery membership from the owner's settings: none of them is the client's to set.
CREATE FUNCTION characters_derive() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.parent_character_id IS NULL THEN
      NEW.version_number := 1;
      NEW.variant_type := coalesce(NEW.variant_type, 'original');
    ELSE
      SELECT p.version_number + 1 INTO NEW.version_number
      FROM characters p WHERE p.id = NEW.parent_character_id;
    END IF;
  END IF;
  IF coalesce(NEW.is_public, false) AND NEW.published_at IS NULL THEN
    NEW.published_at := now();
  END IF;
  NEW.in_gallery := coalesce(NEW.is_public, false) AND EXISTS (
    SELECT 1 FROM users u
    WHERE u.id = NEW.user_id AND coalesce(u.allow_gallery_showcase, false) AND u.account_status = 'active'
  );
  RETURN NEW;
END
$$;

CREATE TRIGGER trg_characters_derive
  BEFORE INSERT OR UPDATE OF is_public, user_id ON characters
  FOR EACH ROW EXECUTE FUNCTION characters_derive();

CREATE FUNCTION users_gallery_eligibility() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  UPDATE characters
  SET in_gallery = coalesce(is_public, false)
                   AND coalesce(NEW.allow_gallery_showcase, false)
                   AND NEW.account_status = 'active'
  WHERE user_id = NEW.id;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_users_gallery_eligibility
  AFTER UPDATE OF allow_gallery_showcase, account_status ON users
  FOR EACH ROW
  WHEN (OLD.allow_gallery_showcase IS DISTINCT FROM NEW.allow_gallery_showcase
        OR OLD.account_status IS DISTINCT FROM NEW.account_status)
  EXECUTE FUNCTION users_gallery_eligibility();

-- users.total_characters_created counts every character the user ever created.
CREATE FUNCTION characters_count_created() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  UPDATE users SET total_characters_created = total_characters_created + 1 WHERE id = NEW.user_id;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_characters_count_created
  AFTER INSERT ON characters
  FOR EACH ROW EXECUTE FUNCTION characters_count_created();

-- A read by someone other than the owner counts one view; a download counts one download.
-- SECURITY DEFINER: the reader may not write the owner's row, only bump its counter.
CREATE FUNCTION count_character_view(character_id text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
  UPDATE characters SET view_count = coalesce(view_count, 0) + 1
  WHERE id = character_id AND coalesce(is_public, false)
    AND user_id IS DISTINCT FROM app_current_user_id();
$$;

CREATE FUNCTION count_character_download(character_id text) RETURNS integer
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
  UPDATE characters SET download_count = coalesce(download_count, 0) + 1
  WHERE id = character_id AND (coalesce(is_public, false) OR user_id = app_current_user_id())
  RETURNING download_count;
$$;

-- ===========================================================================================
-- Likes (the seed mentions like_count but never defines the likes themselves)
-- ===========================================================================================

CREATE TABLE character_likes (
  character_id TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  PRIMARY KEY (character_id, user_id)
);

CREATE INDEX idx_character_likes_user_id ON character_likes(user_id, created_at DESC);

COMMENT ON TABLE character_likes IS
  'One row per user who likes a character; characters.like_count counts them (trigger).';

CREATE FUNCTION character_likes_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE characters SET like_count = coalesce(like_count, 0) + 1 WHERE id = NEW.character_id;
  ELSE
    UPDATE characters SET like_count = coalesce(like_count, 0) - 1 WHERE id = OLD.character_id;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_character_likes_count
  AFTER INSERT OR DELETE ON character_likes
  FOR EACH ROW EXECUTE FUNCTION character_likes_count();

-- ===========================================================================================
-- Ratings aggregate
-- ===========================================================================================

CREATE FUNCTION character_ratings_aggregate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    UPDATE characters SET rating_count = rating_count - 1, rating_sum = rating_sum - OLD.rating
    WHERE id = OLD.character_id;
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    UPDATE characters SET rating_count = rating_count + 1, rating_sum = rating_sum + NEW.rating
    WHERE id = NEW.character_id;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_character_ratings_aggregate
  AFTER INSERT OR UPDATE OF rating, character_id OR DELETE ON character_ratings
  FOR EACH ROW EXECUTE FUNCTION character_ratings_aggregate();

-- ===========================================================================================
-- Content reports (the seed's "flagging and review system", never defined)
-- ===========================================================================================

CREATE TABLE content_reports (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  character_id TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
  reporter_id TEXT REFERENCES users(id) ON DELETE SET NULL,
  reason TEXT NOT NULL CHECK (reason IN (
    'spam', 'sexual_content', 'violence', 'hate', 'harassment', 'copyright', 'minor_safety', 'other'
  )),
  details TEXT CHECK (char_length(details) <= 2000),
  status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'actioned', 'dismissed')),
  resolution_note TEXT,
  resolved_by TEXT REFERENCES users(id) ON DELETE SET NULL,
  resolved_at TIMESTAMP WITH TIME ZONE,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL,
  updated_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

-- One open report per reporter and character: repeated reports do not stack up.
CREATE UNIQUE INDEX content_reports_one_open_per_reporter
  ON content_reports (character_id, reporter_id) WHERE status = 'open';
CREATE INDEX idx_content_reports_status ON content_reports (status, created_at);
CREATE INDEX idx_content_reports_reporter_id ON content_reports (reporter_id);

COMMENT ON TABLE content_reports IS
  'User reports against characters; open reports from enough distinct users take a character out of the gallery until reviewed.';

CREATE TRIGGER trg_content_reports_updated_at
  BEFORE UPDATE ON content_reports
  FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE FUNCTION content_reports_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  target text := coalesce(NEW.character_id, OLD.character_id);
BEGIN
  UPDATE characters c SET open_report_count = (
    SELECT count(DISTINCT r.reporter_id) FROM content_reports r
    WHERE r.character_id = c.id AND r.status = 'open'
  )
  WHERE c.id = target;
  IF TG_OP = 'UPDATE' AND OLD.character_id IS DISTINCT FROM NEW.character_id THEN
    UPDATE characters c SET open_report_count = (
      SELECT count(DISTINCT r.reporter_id) FROM content_reports r
      WHERE r.character_id = c.id AND r.status = 'open'
    )
    WHERE c.id = OLD.character_id;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_content_reports_count
  AFTER INSERT OR UPDATE OF status, character_id OR DELETE ON content_reports
  FOR EACH ROW EXECUTE FUNCTION content_reports_count();

-- ===========================================================================================
-- Collections: character_count follows collection_characters
-- ===========================================================================================

CREATE INDEX idx_collections_user_recent ON collections (user_id, created_at DESC, id DESC);
CREATE INDEX idx_collection_characters_order ON collection_characters (collection_id, display_order, added_at, character_id);

ALTER TABLE collections
  ADD CONSTRAINT collections_counts_non_negative CHECK (coalesce(character_count, 0) >= 0);

CREATE FUNCTION collection_characters_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    UPDATE collections SET character_count = coalesce(character_count, 0) + 1 WHERE id = NEW.collection_id;
  ELSE
    UPDATE collections SET character_count = coalesce(character_count, 0) - 1 WHERE id = OLD.collection_id;
    -- A character whose home collection it leaves has no home collection any more.
    UPDATE characters SET collection_id = NULL
    WHERE id = OLD.character_id AND collection_id = OLD.collection_id;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_collection_characters_count
  AFTER INSERT OR DELETE ON collection_characters
  FOR EACH ROW EXECUTE FUNCTION collection_characters_count();

-- ===========================================================================================
-- Privileges of the API role
-- ===========================================================================================

GRANT SELECT ON users, user_profiles, characters, collections, collection_characters,
  character_ratings, character_likes, content_reports TO app_api;

GRANT INSERT (user_id, name, description, prompt, negative_prompt, style_type, art_style, mood,
              color_palette, model_version, generation_seed, cfg_scale, steps, sampler,
              collection_id, tags, is_public, allow_commercial_use, license_type,
              parent_character_id, variant_type)
  ON characters TO app_api;
GRANT UPDATE (name, description, prompt, negative_prompt, style_type, art_style, mood,
              color_palette, model_version, generation_seed, cfg_scale, steps, sampler,
              collection_id, tags, is_public, allow_commercial_use, license_type)
  ON characters TO app_api;
GRANT DELETE ON characters TO app_api;

GRANT INSERT (user_id, name, description, cover_image_url, tags, category, theme, is_public,
              allow_collaboration, collaboration_settings)
  ON collections TO app_api;
GRANT UPDATE (name, description, cover_image_url, tags, category, theme, is_public,
              allow_collaboration, collaboration_settings)
  ON collections TO app_api;
GRANT DELETE ON collections TO app_api;

GRANT INSERT (collection_id, character_id, display_order) ON collection_characters TO app_api;
GRANT UPDATE (display_order) ON collection_characters TO app_api;
GRANT DELETE ON collection_characters TO app_api;

GRANT INSERT (character_id, user_id, rating, review_text) ON character_ratings TO app_api;
GRANT UPDATE (rating, review_text) ON character_ratings TO app_api;
GRANT DELETE ON character_ratings TO app_api;

GRANT INSERT (character_id, user_id) ON character_likes TO app_api;
GRANT DELETE ON character_likes TO app_api;

GRANT INSERT (character_id, reporter_id, reason, details) ON content_reports TO app_api;

GRANT EXECUTE ON FUNCTION app_current_user_id(), count_character_view(text),
  count_character_download(text) TO app_api;

-- ===========================================================================================
-- Row-level security policies (app_api only; the owning role is the system role)
-- ===========================================================================================

ALTER TABLE characters ENABLE ROW LEVEL SECURITY;
CREATE POLICY characters_read ON characters FOR SELECT TO app_api
  USING (user_id = (SELECT app_current_user_id()) OR coalesce(is_public, false));
CREATE POLICY characters_insert ON characters FOR INSERT TO app_api
  WITH CHECK (user_id = (SELECT app_current_user_id()));
CREATE POLICY characters_update ON characters FOR UPDATE TO app_api
  USING (user_id = (SELECT app_current_user_id()))
  WITH CHECK (user_id = (SELECT app_current_user_id()));
CREATE POLICY characters_delete ON characters FOR DELETE TO app_api
  USING (user_id = (SELECT app_current_user_id()));

ALTER TABLE collections ENABLE ROW LEVEL SECURITY;
CREATE POLICY collections_read ON collections FOR SELECT TO app_api
  USING (user_id = (SELECT app_current_user_id()) OR coalesce(is_public, false));
CREATE POLICY collections_insert ON collections FOR INSERT TO app_api
  WITH CHECK (user_id = (SELECT app_current_user_id()));
CREATE POLICY collections_update ON collections FOR UPDATE TO app_api
  USING (user_id = (SELECT app_current_user_id()))
  WITH CHECK (user_id = (SELECT app_current_user_id()));
CREATE POLICY collections_delete ON collections FOR DELETE TO app_api
  USING (user_id = (SELECT app_current_user_id()));

-- Membership rows are visible with their collection; only the collection's owner changes
-- them, and only with characters the owner can see (their own or public ones).
ALTER TABLE collection_characters ENABLE ROW LEVEL SECURITY;
CREATE POLICY collection_characters_read ON collection_characters FOR SELECT TO app_api
  USING (EXISTS (SELECT 1 FROM collections c WHERE c.id = collection_id));
CREATE POLICY collection_characters_insert ON collection_characters FOR INSERT TO app_api
  WITH CHECK (
    EXISTS (SELECT 1 FROM collections c WHERE c.id = collection_id AND c.user_id = (SELECT app_current_user_id()))
    AND EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id)
  );
CREATE POLICY collection_characters_update ON collection_characters FOR UPDATE TO app_api
  USING (EXISTS (SELECT 1 FROM collections c WHERE c.id = collection_id AND c.user_id = (SELECT app_current_user_id())));
CREATE POLICY collection_characters_delete ON collection_characters FOR DELETE TO app_api
  USING (EXISTS (SELECT 1 FROM collections c WHERE c.id = collection_id AND c.user_id = (SELECT app_current_user_id())));

-- Ratings and likes are visible with their character; each user writes only their own.
ALTER TABLE character_ratings ENABLE ROW LEVEL SECURITY;
CREATE POLICY character_ratings_read ON character_ratings FOR SELECT TO app_api
  USING (EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id));
CREATE POLICY character_ratings_write ON character_ratings FOR ALL TO app_api
  USING (user_id = (SELECT app_current_user_id()))
  WITH CHECK (user_id = (SELECT app_current_user_id())
              AND EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id));

ALTER TABLE character_likes ENABLE ROW LEVEL SECURITY;
CREATE POLICY character_likes_read ON character_likes FOR SELECT TO app_api
  USING (EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id));
CREATE POLICY character_likes_write ON character_likes FOR ALL TO app_api
  USING (user_id = (SELECT app_current_user_id()))
  WITH CHECK (user_id = (SELECT app_current_user_id())
              AND EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id));

-- Reporters see and file only their own reports; moderators work as the system role.
ALTER TABLE content_reports ENABLE ROW LEVEL SECURITY;
CREATE POLICY content_reports_own ON content_reports FOR SELECT TO app_api
  USING (reporter_id = (SELECT app_current_user_id()));
CREATE POLICY content_reports_file ON content_reports FOR INSERT TO app_api
  WITH CHECK (reporter_id = (SELECT app_current_user_id())
              AND EXISTS (SELECT 1 FROM characters ch WHERE ch.id = character_id));
