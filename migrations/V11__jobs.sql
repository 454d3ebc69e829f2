-- V11: dispatching generation jobs.
--
-- A job is inserted (queued, with its credit hold) and committed before its SQS message is
-- sent; enqueued_at records the send. A job still queued without enqueued_at after a short
-- while is a straggler whose send failed or whose sender died: the scheduler's outbox sweep
-- sends it again. Duplicate messages are harmless: the worker claims a job with a
-- conditional queued -> processing update.

ALTER TABLE generation_jobs
  ADD COLUMN enqueued_at TIMESTAMP WITH TIME ZONE,
  ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0);

CREATE INDEX idx_generation_jobs_unsent ON generation_jobs (queued_at) WHERE status = 'queued' AND enqueued_at IS NULL;
CREATE INDEX idx_generation_jobs_user_recent ON generation_jobs (user_id, created_at DESC, id DESC);
CREATE INDEX idx_generation_jobs_processing_timeout ON generation_jobs (timeout_at) WHERE status = 'processing';

-- Users read their own jobs as the API role; every write is the system role's.
GRANT SELECT ON generation_jobs TO app_api;
ALTER TABLE generation_jobs ENABLE ROW LEVEL SECURITY;
CREATE POLICY generation_jobs_own_read ON generation_jobs FOR SELECT TO app_api
  USING (user_id = (SELECT app_current_user_id()));
