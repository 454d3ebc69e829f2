-- V21: follows, and what `profile_visibility = 'friends'` means: a person's friends are the
-- people they follow who follow them back. A `friends` profile (and the person's public work
-- listed under it) is visible to its owner and to their friends; `private` to its owner only.

CREATE TABLE follows (
  follower_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  followed_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  created_at TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT NOW(),
  PRIMARY KEY (follower_id, followed_id),
  CONSTRAINT follows_not_self CHECK (follower_id <> followed_id)
);
COMMENT ON TABLE follows IS
  'Who follows whom; two people who follow each other are friends.';
-- Followers of a person (the primary key serves the people a person follows).
CREATE INDEX idx_follows_followed ON follows (followed_id, created_at);

-- Whether `a` and `b` follow each other.
CREATE FUNCTION are_friends(a text, b text) RETURNS boolean
LANGUAGE sql STABLE AS $$
  SELECT a IS NOT NULL AND b IS NOT NULL
     AND EXISTS (SELECT 1 FROM follows WHERE follower_id = a AND followed_id = b)
     AND EXISTS (SELECT 1 FROM follows WHERE follower_id = b AND followed_id = a)
$$;
GRANT EXECUTE ON FUNCTION are_friends(text, text) TO app_api;

-- The API role follows and unfollows as the caller, and sees the follows the caller is part of
-- (which is all `are_friends` needs when one of the two is the caller).
GRANT SELECT, DELETE ON follows TO app_api;
GRANT INSERT (follower_id, followed_id) ON follows TO app_api;
ALTER TABLE follows ENABLE ROW LEVEL SECURITY;
CREATE POLICY follows_read ON follows FOR SELECT TO app_api
  USING (follower_id = (SELECT app_current_user_id())
         OR followed_id = (SELECT app_current_user_id()));
CREATE POLICY follows_insert ON follows FOR INSERT TO app_api
  WITH CHECK (follower_id = (SELECT app_current_user_id()));
CREATE POLICY follows_delete ON follows FOR DELETE TO app_api
  USING (follower_id = (SELECT app_current_user_id()));
CREATE POLICY system_all ON follows TO app_service USING (true) WITH CHECK (true);

-- A `friends` profile is readable by the owner's friends too.
DROP POLICY user_profiles_read ON user_profiles;
CREATE POLICY user_profiles_read ON user_profiles FOR SELECT TO app_api
  USING (
    user_id = (SELECT app_current_user_id())
    OR EXISTS (SELECT 1 FROM users u
               WHERE u.id = user_id AND u.account_status = 'active'
                 AND (u.profile_visibility = 'public'
                      OR (u.profile_visibility = 'friends'
                          AND are_friends(u.id, (SELECT app_current_user_id())))))
  );
