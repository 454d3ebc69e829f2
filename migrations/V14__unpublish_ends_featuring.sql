-- V14: a character its owner makes private stops being featured.
--
-- Featuring is an editorial choice about a published character. Before, an owner who made a
-- featured character private and published it again months later found it back on the
-- featured list without any moderator choosing it; only the admin routes (unpublish, hide)
-- cleared is_featured. characters_derive() (V12) now clears it whenever is_public is false,
-- whoever changed it. It runs as SECURITY DEFINER, so the owner's request (app_api, which has
-- no UPDATE privilege on is_featured) still cannot set it, only lose it.

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
