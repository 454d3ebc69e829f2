-- V17: pricing configs only for routes that are charged.
--
-- * Only POST /api/v1/characters/:id/generate is charged (shared::credits::pricing::
--   CHARGEABLE_ENDPOINTS, the list the dispatcher prices through and the admin routes
--   validate against). A config for any other route was listed in GET /api/v1/pricing but
--   never charged or limited; the admin routes now refuse them (422), and the ones already
--   stored and enabled are disabled here, their description saying why. They are kept, not
--   deleted: rate_limit_windows rows reference them, and an operator may want to read what was
--   meant. This statement spells the chargeable route out once, as the code's list stood when
--   it ran (a migration cannot read the code); the code's list decides from now on.

UPDATE api_credit_configs
SET is_enabled = false,
    description = left(
      'Disabled by V17: no route charges ' || http_method || ' ' || endpoint_pattern
        || ', so this price was listed but never charged or limited.'
        || coalesce(' Was: ' || description, ''),
      500)
WHERE is_enabled
  AND NOT (http_method = 'POST'
           AND endpoint_pattern ~ '^/api/v1/characters/:[a-z_][a-z0-9_]*/generate$');
