-- V5: the social layer's fixes and its one index.
--
-- Fix (V3): characters.open_report_count lost reports filed concurrently by different users.
-- content_reports_count() recounts with a sub-select inside an UPDATE of the character row.
-- Under READ COMMITTED, a second report's UPDATE takes its snapshot, then waits for the first
-- report's transaction to release the character row; once it gets the row it re-checks only
-- that row (EvalPlanQual), while the sub-select keeps the snapshot taken before the wait and
-- never sees the first report. 20 concurrent reports by 20 users left counts of 12 to 14, so
-- a reported character could stay in the gallery past the report threshold. Now the row is
-- locked first and counted by a later statement, whose fresh snapshot includes every report
-- committed before the lock was granted. (like_count and the rating aggregate are relative
-- updates, x = x + 1, which EvalPlanQual re-applies to the newest row: they were correct.)

CREATE OR REPLACE FUNCTION content_reports_count() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public AS $$
DECLARE
  target text := coalesce(NEW.character_id, OLD.character_id);
  previous text := CASE WHEN TG_OP = 'UPDATE' AND OLD.character_id IS DISTINCT FROM NEW.character_id
                        THEN OLD.character_id END;
BEGIN
  -- Lock both rows in one statement, in id order, so two moves between the same two
  -- characters cannot deadlock.
  PERFORM 1 FROM characters
  WHERE id IN (target, previous)
  ORDER BY id
  FOR NO KEY UPDATE;
  UPDATE characters c SET open_report_count = (
    SELECT count(DISTINCT r.reporter_id) FROM content_reports r
    WHERE r.character_id = c.id AND r.status = 'open'
  )
  WHERE c.id IN (target, previous);
  RETURN NULL;
END
$$;

-- GET /characters/{id}/ratings pages through one character's ratings newest first by
-- (created_at, id); the seed's index on character_id alone sorts every page.
CREATE INDEX idx_character_ratings_character_recent
  ON character_ratings (character_id, created_at DESC, id DESC);
