-- V6: the API role reads only the public columns of users.
--
-- app_api had SELECT on all of users (V3), so a handler query as app_api could read any
-- user's email or identity-provider id. Handlers resolve the caller's own row as the system
-- role before switching to app_api; as app_api they only need what other users may see
-- (gallery owners, raters): name, avatar and the flags that decide visibility.

REVOKE SELECT ON users FROM app_api;
GRANT SELECT (id, username, display_name, avatar_url, profile_visibility, allow_gallery_showcase,
              account_status, created_at)
  ON users TO app_api;
