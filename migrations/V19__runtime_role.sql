-- The runtime's database role: the functions log in as a role that owns nothing.
--
-- Until now the functions logged in as the role that ran the migrations, so the "system"
-- side of the service (the worker, the scheduler, the credit engine, moderation) was the
-- schema owner: it could ALTER or DROP any table and row-level security never applied to
-- it. From here on the schema belongs to the migration login and the functions log in as
-- a member of `app_service`, which has the data privileges the service uses and nothing
-- else. Row-level security applies to it like to anyone: it sees every row through an
-- explicit `system_all` policy on each protected table, not through ownership, and it can
-- still switch to `app_api` for the caller's part of a request.
--
-- Deploying: the scheduler's `migrate` task runs as the migration login, applies this, and
-- creates (or re-passwords) the runtime login named in the runtime secret as a member of
-- `app_service`. Locally the same split is made when DATABASE_MIGRATION_URL is set; the
-- tests always run the API and the worker through such a login.

DO $$
BEGIN
  CREATE ROLE app_service NOLOGIN;
EXCEPTION
  -- Roles are cluster-wide: another database of the cluster may have created it already.
  WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

-- The caller's part of a request runs as app_api (SET LOCAL ROLE), as before.
GRANT app_api TO app_service;
GRANT USAGE ON SCHEMA public TO app_service;

-- Data, not structure: rows of every table, sequences, functions. No TRUNCATE, REFERENCES
-- or TRIGGER, and no CREATE on the schema.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO app_service;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO app_service;
GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO app_service;

-- The migration history is the migration login's business.
REVOKE ALL ON refinery_schema_history FROM app_service;

-- The ledger is append-only: rows are never deleted, and only the text GDPR erasure
-- scrubs (descriptions and the free-form JSON) is ever rewritten; amounts and balances
-- cannot be.
REVOKE UPDATE, DELETE ON credit_transactions FROM app_service;
GRANT UPDATE (description, metadata, operation_details, cost_calculation)
  ON credit_transactions TO app_service;

-- Later migrations, run by the same login, grant the same on what they create. (A new
-- table with row-level security still needs its own system_all policy: the test
-- `runtime_role` in shared/tests checks that every protected table has one.)
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO app_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT USAGE, SELECT ON SEQUENCES TO app_service;
ALTER DEFAULT PRIVILEGES IN SCHEMA public
  GRANT EXECUTE ON FUNCTIONS TO app_service;

-- Monthly partitions are created and dropped by the scheduler: DDL the runtime role may
-- not run itself, so these two functions run with their owner's rights, with a fixed
-- search_path, and only the runtime role may call them.
ALTER FUNCTION ensure_monthly_partitions(text, date, integer)
  SECURITY DEFINER SET search_path = public, pg_temp;
ALTER FUNCTION drop_monthly_partitions_before(text, date)
  SECURITY DEFINER SET search_path = public, pg_temp;
REVOKE EXECUTE ON FUNCTION ensure_monthly_partitions(text, date, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION drop_monthly_partitions_before(text, date) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION ensure_monthly_partitions(text, date, integer) TO app_service;
GRANT EXECUTE ON FUNCTION drop_monthly_partitions_before(text, date) TO app_service;

-- The system side sees and writes every row of the protected tables, by policy.
DO $$
DECLARE
  protected regclass;
BEGIN
  FOR protected IN
    SELECT c.oid::regclass
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'public' AND c.relrowsecurity
  LOOP
    EXECUTE format(
      'CREATE POLICY system_all ON %s TO app_service USING (true) WITH CHECK (true)',
      protected);
  END LOOP;
END
$$;
