-- V15: generation keeps what people made and charges only for what it delivered.
--
-- * character_images: every image a job produced is a row of its own (its job, provider,
--   size, seed, parameters, storage keys). Before, each completed job overwrote the
--   character's primary_image_url, thumbnail_url and additional_images, losing the images
--   the person already had.
-- * characters.primary_image_id: the image the person chose (the first image of a character
--   becomes primary by itself). The seed's primary_image_url, thumbnail_url,
--   additional_images and image_metadata stay, derived from the images by a trigger, so
--   they cannot drift from the records and every reader of the seed's columns keeps working.
-- * Variants are characters: a variation / style transfer / pose, outfit or expression change
--   creates a child character (parent_character_id, variant_type, version_number), recorded
--   on its job as result_character_id.
-- * Fix (seed): the job type 'variation' had no variant type to record it by; variant_type
--   now also allows 'variation'.
-- * Versions number a whole family: a variant gets the family's highest version_number + 1
--   (V3 gave every child of one parent the same number).
-- * Honest charges: a hold records the price of a placeholder (the procedural fallback) and
--   what settling actually charged.
-- * Jobs whose queue message cannot come back are found by the scheduler: redeliveries counts
--   the times it had to send a job's message again.

-- ===========================================================================================
-- Images
-- ===========================================================================================

CREATE TABLE character_images (
  id TEXT PRIMARY KEY DEFAULT gen_random_uuid()::text,
  character_id TEXT NOT NULL REFERENCES characters(id) ON DELETE CASCADE,
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  -- The job that made it; NULL for images recorded before V15 without a known job, or once
  -- the job row is gone.
  job_id TEXT REFERENCES generation_jobs(id) ON DELETE SET NULL,
  job_type TEXT CHECK (job_type IN (
    'character_generation', 'style_transfer', 'upscale', 'variation', 'background_removal'
  )),
  -- Position in its job's batch.
  batch_index INTEGER NOT NULL DEFAULT 0 CHECK (batch_index >= 0),
  storage_key TEXT NOT NULL UNIQUE,
  thumbnail_key TEXT,
  width INTEGER CHECK (width > 0),
  height INTEGER CHECK (height > 0),
  byte_size BIGINT CHECK (byte_size >= 0),
  content_type TEXT NOT NULL DEFAULT 'image/png',
  seed BIGINT,
  -- 'fallback' is the procedural placeholder, never AI output.
  generation_provider TEXT CHECK (generation_provider IN ('primary', 'secondary', 'fallback')),
  -- What the provider was asked for (the composed prompt, sizes, model...) and reported.
  parameters JSONB NOT NULL DEFAULT '{}',
  -- The image an upscale, img2img or background removal started from.
  source_image_id TEXT REFERENCES character_images(id) ON DELETE SET NULL,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

CREATE INDEX idx_character_images_character_recent ON character_images (character_id, created_at DESC, id DESC);
CREATE INDEX idx_character_images_user ON character_images (user_id);
CREATE INDEX idx_character_images_job ON character_images (job_id);
CREATE INDEX idx_character_images_source ON character_images (source_image_id) WHERE source_image_id IS NOT NULL;

COMMENT ON TABLE character_images IS
  'Every image generated for a character; characters.primary_image_id points at the chosen one.';

ALTER TABLE characters
  ADD COLUMN primary_image_id TEXT REFERENCES character_images(id) ON DELETE SET NULL;

-- How many of a character's other images additional_images lists (newest first); the whole
-- history is GET /api/v1/characters/{id}/images.
CREATE FUNCTION character_additional_images_max() RETURNS integer
LANGUAGE sql IMMUTABLE AS 'SELECT 8';

-- The seed's image columns, derived from the primary image. Runs whenever primary_image_id is
-- written (even to the same value), so character_images_refresh() only has to write it.
CREATE FUNCTION characters_derive_images() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  img character_images%ROWTYPE;
BEGIN
  IF NEW.primary_image_id IS NOT NULL THEN
    SELECT * INTO img FROM character_images WHERE id = NEW.primary_image_id;
    IF NOT FOUND OR img.character_id <> NEW.id THEN
      RAISE EXCEPTION 'image % is not an image of character %', NEW.primary_image_id, NEW.id
        USING ERRCODE = 'foreign_key_violation';
    END IF;
    NEW.primary_image_url := img.storage_key;
    NEW.thumbnail_url := img.thumbnail_key;
    NEW.image_metadata := jsonb_build_object(
      'image_id', img.id, 'job_id', img.job_id, 'job_type', img.job_type,
      'provider', img.generation_provider, 'placeholder', img.generation_provider = 'fallback',
      'width', img.width, 'height', img.height,
      'images', (SELECT count(*) FROM character_images WHERE character_id = NEW.id));
  ELSE
    NEW.primary_image_url := NULL;
    NEW.thumbnail_url := NULL;
    NEW.image_metadata := '{}'::jsonb;
  END IF;
  NEW.additional_images := coalesce((
    SELECT jsonb_agg(o.storage_key ORDER BY o.created_at DESC, o.id DESC)
    FROM (SELECT storage_key, created_at, id FROM character_images
          WHERE character_id = NEW.id AND id IS DISTINCT FROM NEW.primary_image_id
          ORDER BY created_at DESC, id DESC LIMIT character_additional_images_max()) o
  ), '[]'::jsonb);
  RETURN NEW;
END
$$;

CREATE TRIGGER trg_characters_derive_images
  BEFORE UPDATE OF primary_image_id ON characters
  FOR EACH ROW EXECUTE FUNCTION characters_derive_images();

-- Keeps the primary choice valid: the current primary if it is still the character's image,
-- else the oldest image (a new character's first image), else none.
CREATE FUNCTION character_images_refresh(p_character_id text) RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = public AS $$
  UPDATE characters c
  SET primary_image_id = coalesce(
    (SELECT i.id FROM character_images i WHERE i.id = c.primary_image_id AND i.character_id = c.id),
    (SELECT i.id FROM character_images i WHERE i.character_id = c.id ORDER BY i.created_at, i.id LIMIT 1))
  WHERE c.id = p_character_id;
$$;

CREATE FUNCTION character_images_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  IF TG_OP = 'INSERT' THEN
    PERFORM character_images_refresh(d.character_id) FROM (SELECT DISTINCT character_id FROM new_rows) d;
  ELSE
    PERFORM character_images_refresh(d.character_id) FROM (SELECT DISTINCT character_id FROM old_rows) d;
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER trg_character_images_inserted
  AFTER INSERT ON character_images REFERENCING NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION character_images_changed();
CREATE TRIGGER trg_character_images_deleted
  AFTER DELETE ON character_images REFERENCING OLD TABLE AS old_rows
  FOR EACH STATEMENT EXECUTE FUNCTION character_images_changed();

-- ===========================================================================================
-- Variants
-- ===========================================================================================

ALTER TABLE characters DROP CONSTRAINT characters_variant_type_check;
ALTER TABLE characters ADD CONSTRAINT characters_variant_type_check CHECK (variant_type IN (
  'original', 'style_transfer', 'pose_change', 'outfit_change', 'expression_change', 'variation'));

-- The first character of a family (following parent_character_id up).
CREATE FUNCTION character_family_root(p_character_id text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
  WITH RECURSIVE up(id, parent, depth) AS (
    SELECT id, parent_character_id, 0 FROM characters WHERE id = p_character_id
    UNION ALL
    SELECT c.id, c.parent_character_id, up.depth + 1
    FROM characters c JOIN up ON c.id = up.parent
    WHERE up.depth < 1000
  )
  SELECT id FROM up ORDER BY depth DESC LIMIT 1;
$$;

-- Every member of the family of a character (its root and all the root's descendants).
CREATE FUNCTION character_family(p_character_id text) RETURNS SETOF text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public AS $$
  WITH RECURSIVE down(id, depth) AS (
    SELECT character_family_root(p_character_id), 0
    UNION ALL
    SELECT c.id, down.depth + 1 FROM characters c JOIN down ON c.parent_character_id = down.id
    WHERE down.depth < 1000
  )
  SELECT id FROM down WHERE id IS NOT NULL;
$$;

CREATE INDEX idx_characters_parent ON characters (parent_character_id) WHERE parent_character_id IS NOT NULL;

-- As V14, but a variant's version is the next number in its whole family. Families are
-- numbered under a transaction-scoped advisory lock on the root, so two variants made at
-- once never share a number.
CREATE OR REPLACE FUNCTION characters_derive() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  root text;
BEGIN
  IF TG_OP = 'INSERT' THEN
    IF NEW.parent_character_id IS NULL THEN
      NEW.version_number := 1;
      NEW.variant_type := coalesce(NEW.variant_type, 'original');
    ELSE
      root := character_family_root(NEW.parent_character_id);
      PERFORM pg_advisory_xact_lock(hashtextextended('character_family:' || root, 0));
      SELECT coalesce(max(c.version_number), 0) + 1 INTO NEW.version_number
      FROM characters c WHERE c.id IN (SELECT character_family(root));
    END IF;
  END IF;
  IF coalesce(NEW.is_public, false) AND NEW.published_at IS NULL THEN
    NEW.published_at := now();
  END IF;
  IF NOT coalesce(NEW.is_public, false) THEN
    NEW.is_featured := false;
  END IF;
  NEW.in_gallery := coalesce(NEW.is_public, false) AND NOT NEW.moderation_hidden AND EXISTS (
    SELECT 1 FROM users u
    WHERE u.id = NEW.user_id AND coalesce(u.allow_gallery_showcase, false) AND u.account_status = 'active'
  );
  RETURN NEW;
END
$$;

-- ===========================================================================================
-- Jobs and holds
-- ===========================================================================================

ALTER TABLE generation_jobs
  -- The variant character a variation / style transfer job created.
  ADD COLUMN result_character_id TEXT REFERENCES characters(id) ON DELETE SET NULL,
  -- Times the scheduler sent the message again because the last one could not come back.
  ADD COLUMN redeliveries INTEGER NOT NULL DEFAULT 0 CHECK (redeliveries >= 0);

CREATE INDEX idx_generation_jobs_queued_sent ON generation_jobs (enqueued_at)
  WHERE status = 'queued' AND enqueued_at IS NOT NULL;
CREATE INDEX idx_generation_jobs_result_character ON generation_jobs (result_character_id)
  WHERE result_character_id IS NOT NULL;

ALTER TABLE credit_holds
  -- What the job costs when only the procedural placeholder could serve it.
  ADD COLUMN fallback_price INTEGER NOT NULL DEFAULT 0,
  -- What settling charged: price for AI output, fallback_price for a placeholder.
  ADD COLUMN charged INTEGER,
  ADD CONSTRAINT credit_holds_fallback_price_within_price CHECK (fallback_price BETWEEN 0 AND price),
  ADD CONSTRAINT credit_holds_charged_within_price CHECK (charged IS NULL OR charged BETWEEN 0 AND price);

UPDATE credit_holds SET charged = price WHERE status = 'settled';
UPDATE credit_holds SET charged = 0 WHERE status = 'released';

-- ===========================================================================================
-- Backfill: the images characters already show become records
-- ===========================================================================================

-- The primary image and the additional ones, with what the job that made them recorded.
-- Thumbnails follow the worker's naming (image-N.png beside thumb-N.png); sizes are known
-- where the output size is the requested one.
WITH shown AS (
  SELECT c.id AS character_id, c.user_id, c.primary_image_url AS key, c.thumbnail_url AS thumb,
         0 AS ord, c.image_metadata->>'job_id' AS job_id, c.created_at
  FROM characters c
  WHERE c.primary_image_url IS NOT NULL AND c.primary_image_url !~ '^https?://'
  UNION ALL
  SELECT c.id, c.user_id, a.key, NULL, a.ord::int, c.image_metadata->>'job_id', c.created_at
  FROM characters c, jsonb_array_elements_text(
         CASE WHEN jsonb_typeof(c.additional_images) = 'array' THEN c.additional_images ELSE '[]'::jsonb END
       ) WITH ORDINALITY AS a(key, ord)
  WHERE a.key !~ '^https?://'
)
INSERT INTO character_images (character_id, user_id, job_id, job_type, batch_index, storage_key,
                              thumbnail_key, width, height, seed, generation_provider, parameters,
                              created_at)
SELECT s.character_id, s.user_id, j.id, j.job_type, s.ord,
       s.key,
       coalesce(s.thumb, CASE WHEN s.key LIKE '%/image-%' THEN replace(s.key, '/image-', '/thumb-') END),
       CASE WHEN j.job_type IN ('character_generation', 'style_transfer', 'variation')
            THEN (j.input_parameters->>'width')::int END,
       CASE WHEN j.job_type IN ('character_generation', 'style_transfer', 'variation')
            THEN (j.input_parameters->>'height')::int END,
       (j.input_parameters->>'seed')::bigint,
       j.generation_provider,
       jsonb_build_object('recorded_by', 'V15 backfill'),
       -- Keep the shown order: the primary first, then the additional ones.
       coalesce(j.completed_at, s.created_at) + make_interval(secs => s.ord * 0.001)
FROM shown s
LEFT JOIN generation_jobs j ON j.id = s.job_id AND j.user_id = s.user_id
ON CONFLICT (storage_key) DO NOTHING;

UPDATE characters c SET primary_image_id = i.id
FROM character_images i
WHERE i.character_id = c.id AND i.storage_key = c.primary_image_url;

-- ===========================================================================================
-- The API role
-- ===========================================================================================

-- Anyone reads the images of a character they can see (RLS on characters applies inside the
-- policy); owners delete their own. Inserts are the worker's (system role).
GRANT SELECT, DELETE ON character_images TO app_api;
ALTER TABLE character_images ENABLE ROW LEVEL SECURITY;
CREATE POLICY character_images_read ON character_images FOR SELECT TO app_api
  USING (EXISTS (SELECT 1 FROM characters c WHERE c.id = character_images.character_id));
CREATE POLICY character_images_delete ON character_images FOR DELETE TO app_api
  USING (user_id = (SELECT app_current_user_id()));

-- The owner picks the primary image (characters_update's policy: own rows only; the trigger
-- refuses an image of another character).
GRANT UPDATE (primary_image_id) ON characters TO app_api;
GRANT EXECUTE ON FUNCTION character_family(text), character_family_root(text) TO app_api;
