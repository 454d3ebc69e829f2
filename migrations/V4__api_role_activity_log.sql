-- V4: the API role writes the audit trail of its own actions.
--
-- Handlers running as app_api (V3) record what they do in user_activity_logs in the same
-- transaction as the action. They may only write rows about the caller, and read only their
-- own; the system role (sign-in, worker, scheduler, admin) is unaffected.

GRANT INSERT (user_id, activity_type, entity_type, entity_id, session_id, ip_address,
              user_agent, referrer, metadata)
  ON user_activity_logs TO app_api;
GRANT SELECT ON user_activity_logs TO app_api;

ALTER TABLE user_activity_logs ENABLE ROW LEVEL SECURITY;
CREATE POLICY user_activity_logs_own_read ON user_activity_logs FOR SELECT TO app_api
  USING (user_id = (SELECT app_current_user_id()));
CREATE POLICY user_activity_logs_own_write ON user_activity_logs FOR INSERT TO app_api
  WITH CHECK (user_id = (SELECT app_current_user_id()));
