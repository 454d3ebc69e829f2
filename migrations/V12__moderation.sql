-- V12: moderation.
--
-- A moderator can hide a character from the gallery. That must be a decision of its own,
-- separate from the owner's is_public: the owner may re-publish (is_public = true) a character
-- a moderator unpublished, but a hidden character stays out of every gallery listing (the
-- sorts of GET /gallery and GET /gallery/featured) until a moderator unhides it.
--
-- * characters.moderation_hidden: set and cleared only by the admin routes, which run as the
--   system role. app_api's UPDATE privilege on characters is granted column by column (V3) and
--   does not include it, so no user request can clear it, even through a handler that forgot
--   to filter its input. app_api may read it (table-wide SELECT), so owners see why their
--   public character is not in the gallery.
-- * characters.moderation_hidden_at: when it was hidden (NULL while not hidden); who hid it is
--   in the admin's user_activity_logs row.
-- * in_gallery (V3: public, owner active and allowing showcase) now also requires NOT
--   moderation_hidden. characters_derive() computes it on insert and on updates of is_public,
--   user_id and now moderation_hidden; users_gallery_eligibility() recomputes it for all of a
--   user's characters when the owner's status or showcase setting changes. Both are the V3
--   functions with that one condition added. The gallery's partial indexes are all
--   "WHERE in_gallery", so they keep serving the listings unchanged.

ALTER TABLE characters
  ADD COLUMN moderation_hidden BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN moderation_hidden_at TIMESTAMP WITH TIME ZONE,
  ADD CONSTRAINT characters_hidden_at_when_hidden
    CHECK (moderation_hidden = (moderation_hidden_at IS NOT NULL));

COMMENT ON COLUMN characters.moderation_hidden IS
  'Hidden from the gallery by a moderator; only the admin routes change it, re-publishing does not.';

CREATE OR REPLACE FUNCTION characters_derive() RETURNS trigger
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
  NEW.in_gallery := coalesce(NEW.is_public, false) AND NOT NEW.moderation_hidden AND EXISTS (
    SELECT 1 FROM users u
    WHERE u.id = NEW.user_id AND coalesce(u.allow_gallery_showcase, false) AND u.account_status = 'active'
  );
  RETURN NEW;
END
$$;

DROP TRIGGER trg_characters_derive ON characters;
CREATE TRIGGER trg_characters_derive
  BEFORE INSERT OR UPDATE OF is_public, user_id, moderation_hidden ON characters
  FOR EACH ROW EXECUTE FUNCTION characters_derive();

CREATE OR REPLACE FUNCTION users_gallery_eligibility() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
BEGIN
  UPDATE characters
  SET in_gallery = coalesce(is_public, false)
                   AND NOT moderation_hidden
                   AND coalesce(NEW.allow_gallery_showcase, false)
                   AND NEW.account_status = 'active'
  WHERE user_id = NEW.id;
  RETURN NULL;
END
$$;
