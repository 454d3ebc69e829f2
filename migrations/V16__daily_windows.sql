-- V16: daily windows. A user's daily counters (free generations, the subscription allowance,
-- the daily bonus, the gift cap and the `daily_limit` of every priced endpoint) belong to one
-- stored window per user, which ends at the instant computed when it started.
--
-- Until V15 every check recomputed "today" from the user's *current* time zone, so changing
-- `timezone` to the zone whose midnight had passed most recently started a new day at once:
-- repeated hourly, that was ~24 days' worth of free generations, gifts, bonuses and endpoint
-- calls a day (issue #12, item 1). Now:
--
-- * users.quota_day: the window's label, a local date. Labels only grow, at least by one per
--   window, so a label names one window of the user (credit_holds.quota_day keys a hold to the
--   window it took from; user_credits.last_daily_bonus_date is the label of the claim's window).
-- * users.last_reset_date (seed column): the instant the window started.
-- * users.quota_resets_at: the instant it ends, computed once, when it started. NULL until the
--   first window opens (the first transaction that reads a counter), so the zone a new user
--   sets before using anything is the one their first window follows.
-- * user_credits.daily_reset_date (seed column): the label the allowance counter belongs to,
--   always users.quota_day once a window is open (both are written by the same statements).
-- * user_credits.last_daily_bonus_date (seed column): the label of the last claim's window;
--   user_credits.last_daily_bonus_window_end: when that window ended. A daily bonus streak
--   counts windows: it grows when the last claim's label is this window's minus one, or its
--   window ended when this one started (labels skip a date when a zone change at the turn of a
--   window puts the next date already behind, crossing the date line eastward).
-- * users.daily_used / user_credits.daily_used (seed columns): what the window has used.
--
-- A time zone change never touches the open window; it takes effect from the next one.
-- credits_reset_daily(user) (lazily, in every transaction that reads the counters) and
-- credits_reset_daily_all() (the scheduler's daily-reset task) open the next window when
-- now() >= quota_resets_at, with daily_window_next() in the user's time zone at that moment:
--
--   label  = the later of (previous label + 1) and the local date now
--   end    = the local midnight that ends that label's date
--   start  = the previous end when the label is the previous one + 1 (windows follow each other
--            without a gap), else the later of the previous end and the label's local midnight
--            (the user was away for a whole local day or more)
--
-- The "+ 1" is what keeps a zone change from shortening days: a user whose window ended at UTC
-- midnight and who moved to New York (where it is 19:00 of the same date) gets the label of the
-- next date, ending at New York's *next* midnight (29 h), not in 5 h; without it, hopping one
-- zone west before each window ended gave one-hour windows. Each label's window ends at that
-- date's midnight in some zone (UTC-12 to UTC+14, 26 hours apart), so at most N + 3 windows
-- start in any N days, whatever zones are chosen, against N for a user who keeps one zone
-- (local/tests/daily_windows.rs checks it against adversarial and random zone changes).
--
-- rate_limit_windows gains window_end: the 'day' rows are keyed by the user's window start and
-- end where they ended at the local midnight of the current zone.

ALTER TABLE users
  ADD COLUMN quota_day DATE,
  ADD COLUMN quota_resets_at TIMESTAMP WITH TIME ZONE;

ALTER TABLE user_credits ADD COLUMN last_daily_bonus_window_end TIMESTAMP WITH TIME ZONE;

CREATE INDEX idx_users_quota_resets_at ON users (quota_resets_at);

COMMENT ON COLUMN users.quota_day IS
  'Label of the current daily window: a local date, growing by at least one per window (NULL before the first window).';
COMMENT ON COLUMN users.quota_resets_at IS
  'When the current daily window ends, computed when it started in the time zone of that moment (NULL before the first window).';
COMMENT ON COLUMN users.last_reset_date IS
  'When the current daily window started (before the first window: when the account was made).';
COMMENT ON COLUMN users.daily_used IS
  'Free generations used in the current daily window.';
COMMENT ON COLUMN user_credits.daily_used IS
  'Allowance credits used in the current daily window.';
COMMENT ON COLUMN user_credits.daily_reset_date IS
  'Label of the daily window the allowance counter belongs to: users.quota_day once a window is open.';
COMMENT ON COLUMN user_credits.last_daily_bonus_date IS
  'Label (users.quota_day) of the daily window in which the last daily bonus was claimed.';
COMMENT ON COLUMN user_credits.last_daily_bonus_window_end IS
  'When the window of the last daily bonus claim ended (NULL for claims before V16).';
COMMENT ON COLUMN credit_holds.quota_day IS
  'Label (users.quota_day) of the daily window the free generation or allowance was taken from.';

-- ===========================================================================================
-- The next window
-- ===========================================================================================

CREATE FUNCTION daily_window_next(prev_day date, prev_end timestamptz, zone text, at timestamptz,
                                  OUT day date, OUT starts_at timestamptz, OUT ends_at timestamptz)
LANGUAGE plpgsql STABLE AS $$
DECLARE
  today date := local_date_of(at, zone);
BEGIN
  IF prev_day IS NULL OR prev_end IS NULL THEN
    day := today;
    starts_at := local_midnight(day, zone);
  ELSE
    day := greatest(prev_day + 1, today);
    starts_at := CASE WHEN day = prev_day + 1 THEN prev_end
                      ELSE greatest(prev_end, local_midnight(day, zone)) END;
  END IF;
  ends_at := local_midnight(day + 1, zone);
END
$$;

COMMENT ON FUNCTION daily_window_next(date, timestamptz, text, timestamptz) IS
  'The daily window that opens at `at` in time zone `zone` after the one labelled `prev_day` that ended at `prev_end` (both NULL: the first window): its label, start and end.';

-- ===========================================================================================
-- Resets
-- ===========================================================================================

-- Opens the user's next window if the stored one has ended (or none is open yet), resetting
-- the free-generation and allowance counters. Returns true when counters were reset (opening
-- the first window resets nothing: it adopts the counters as they are). Takes the users row
-- lock itself when there is something to do, so concurrent calls open one window.
CREATE OR REPLACE FUNCTION credits_reset_daily(target_user text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  zone text;
  current_day date;
  ends timestamptz;
  next record;
BEGIN
  -- Most calls find the window open: no lock for them.
  SELECT u.quota_resets_at INTO ends FROM users u WHERE u.id = target_user;
  IF NOT FOUND OR now() < ends THEN
    RETURN false;
  END IF;
  SELECT u.timezone, u.quota_day, u.quota_resets_at INTO zone, current_day, ends
  FROM users u WHERE u.id = target_user FOR NO KEY UPDATE;
  IF now() < ends THEN
    RETURN false;
  END IF;
  SELECT * INTO next FROM daily_window_next(current_day, ends, zone, now());
  UPDATE users
  SET daily_used = CASE WHEN ends IS NULL THEN daily_used ELSE 0 END,
      quota_day = next.day, last_reset_date = next.starts_at, quota_resets_at = next.ends_at
  WHERE id = target_user;
  UPDATE user_credits
  SET daily_used = CASE WHEN ends IS NULL THEN daily_used ELSE 0 END,
      daily_reset_date = next.day
  WHERE user_id = target_user;
  RETURN ends IS NOT NULL;
END
$$;

-- The scheduler's bulk reset: the same function for every user whose window has ended, in id
-- order (the lock order of multi-user transactions). Returns how many were reset.
CREATE OR REPLACE FUNCTION credits_reset_daily_all() RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
  due text;
  reset_users integer := 0;
BEGIN
  FOR due IN SELECT u.id FROM users u WHERE u.quota_resets_at <= now() ORDER BY u.id LOOP
    IF credits_reset_daily(due) THEN
      reset_users := reset_users + 1;
    END IF;
  END LOOP;
  RETURN reset_users;
END
$$;

-- ===========================================================================================
-- Existing users: the day V15 was counting becomes their open window
-- ===========================================================================================

-- Under V15 the free counter belonged to the local date of last_reset_date and the allowance to
-- daily_reset_date (in the zone of the moment). The later of the two labels the window; a
-- counter of an earlier date is reset here, as V15's next read would have done. A window that
-- has already ended is due at the first reset. updated_at is left alone: nobody changed these
-- accounts.
ALTER TABLE users DISABLE TRIGGER users_set_updated_at;
ALTER TABLE user_credits DISABLE TRIGGER user_credits_set_updated_at;

WITH old AS (
  SELECT u.id, u.timezone AS zone, local_date_of(u.last_reset_date, u.timezone) AS free_day,
         greatest(local_date_of(u.last_reset_date, u.timezone), c.daily_reset_date) AS day
  FROM users u LEFT JOIN user_credits c ON c.user_id = u.id
)
UPDATE users u
SET daily_used = CASE WHEN old.free_day < old.day THEN 0 ELSE u.daily_used END,
    quota_day = old.day,
    last_reset_date = least(local_midnight(old.day, old.zone), now()),
    quota_resets_at = local_midnight(old.day + 1, old.zone)
FROM old WHERE old.id = u.id;

UPDATE user_credits c
SET daily_used = CASE WHEN c.daily_reset_date < u.quota_day THEN 0 ELSE c.daily_used END,
    daily_reset_date = u.quota_day
FROM users u WHERE u.id = c.user_id;

ALTER TABLE users ENABLE TRIGGER users_set_updated_at;
ALTER TABLE user_credits ENABLE TRIGGER user_credits_set_updated_at;

-- ===========================================================================================
-- Per-endpoint windows
-- ===========================================================================================

ALTER TABLE rate_limit_windows ADD COLUMN window_end TIMESTAMP WITH TIME ZONE;

-- 'minute' rows end a minute after they start; V15's 'day' rows at the local midnight after
-- their start (the current one: the migrated window's end).
UPDATE rate_limit_windows w
SET window_end = CASE w.window_kind
  WHEN 'minute' THEN w.window_start + interval '1 minute'
  ELSE local_midnight(local_date_of(w.window_start, u.timezone) + 1, u.timezone) END
FROM users u WHERE u.id = w.user_id;

ALTER TABLE rate_limit_windows
  ALTER COLUMN window_end SET NOT NULL,
  ADD CONSTRAINT rate_limit_windows_end_after_start CHECK (window_end > window_start);

COMMENT ON COLUMN rate_limit_windows.window_start IS
  '''minute'': the UTC minute; ''day'': the start of the user''s daily window (users.last_reset_date), unique per window.';
COMMENT ON COLUMN rate_limit_windows.window_end IS
  '''minute'': a minute after the start; ''day'': the end of the user''s daily window (users.quota_resets_at when it was counted).';
