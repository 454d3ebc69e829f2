-- V10: admin refunds of generation jobs, exactly once per job.
--
-- An admin may refund the credits a completed generation job was charged (its settled `usage`
-- transaction) with one `refund` transaction. "Exactly once" must hold under concurrent and
-- repeated requests, so it is a constraint, not an application check:
--
-- * not a unique index on credit_transactions: the table is partitioned by created_at, and a
--   unique index on a partitioned table must include the partition key, so
--   (related_entity_id, created_at) would let two refunds posted at different instants coexist;
-- * not a marker in generation_jobs.processing_metadata: that document belongs to the worker,
--   which may rewrite it (a redelivered completion), silently erasing the marker; and a
--   conditional JSON update is a convention every writer must follow, not a constraint;
-- * a row per refunded job, keyed by the job: a second refund of the same job cannot insert
--   its row. A concurrent duplicate waits on the key until the first commits, then finds it;
--   if the first rolled back, the duplicate goes ahead. The row also records who refunded what
--   and why.
--
-- The row is claimed before the ledger entry is posted, in the same transaction, and
-- refund_transaction_id is filled in before that transaction commits.

CREATE TABLE job_refunds (
  job_id TEXT PRIMARY KEY REFERENCES generation_jobs(id) ON DELETE CASCADE,
  -- Whose credits came back (the payer of the usage transactions).
  user_id TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  amount INTEGER NOT NULL CHECK (amount > 0),
  usage_transaction_ids TEXT[] NOT NULL,
  refund_transaction_id TEXT,
  refunded_by TEXT REFERENCES users(id) ON DELETE SET NULL,
  reason TEXT,
  created_at TIMESTAMP WITH TIME ZONE DEFAULT NOW() NOT NULL
);

CREATE INDEX idx_job_refunds_user_id ON job_refunds (user_id, created_at DESC);

COMMENT ON TABLE job_refunds IS
  'Admin refunds of completed generation jobs: at most one per job (the primary key), with the refund transaction.';
