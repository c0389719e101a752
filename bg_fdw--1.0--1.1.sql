/* bg_fdw--1.0--1.1.sql */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION bg_fdw UPDATE TO '1.1'" to load this file. \quit

-- A fresh install runs bg_fdw--1.0.sql and then this script, so everything
-- since 1.0 is written once, here.  A function that gains parameters is
-- dropped and created again with its grants: CREATE OR REPLACE would add an
-- overload, and calls that name only the old parameters would become
-- ambiguous.

-- bg_fdw--1.0.sql adopts a role named bg_fdw_user if one exists and grants
-- it bg_launch.  Whoever else controls that role could pass bg_launch on:
-- refuse unless it is what 1.0 would have made, a plain NOLOGIN role with no
-- password, and no role other than a superuser holds ADMIN OPTION on it (on
-- PostgreSQL 16 and later a CREATEROLE user who created it does), granted
-- membership in it, or made it a member of another role.  A grant whose
-- grantor was dropped counts as such a grant.  Nothing else (a comment, say)
-- can prove who created the role.
--
-- This runs as a superuser in a schema others may create objects in: every
-- operator and function is written with its schema, so that none planted
-- there can be called instead.
DO $$
DECLARE
  me pg_catalog.oid;
  culprit pg_catalog.text;
  what pg_catalog.text;
BEGIN
  SELECT a.oid INTO me FROM pg_catalog.pg_authid a
   WHERE a.rolname OPERATOR(pg_catalog.=) 'bg_fdw_user'::pg_catalog.name;

  SELECT pg_catalog.concat_ws(', ',
           CASE WHEN a.rolsuper THEN 'SUPERUSER' END,
           CASE WHEN a.rolcreaterole THEN 'CREATEROLE' END,
           CASE WHEN a.rolcreatedb THEN 'CREATEDB' END,
           CASE WHEN a.rolcanlogin THEN 'LOGIN' END,
           CASE WHEN a.rolreplication THEN 'REPLICATION' END,
           CASE WHEN a.rolbypassrls THEN 'BYPASSRLS' END,
           CASE WHEN a.rolpassword IS NOT NULL THEN 'a password' END)
    INTO what
    FROM pg_catalog.pg_authid a WHERE a.oid OPERATOR(pg_catalog.=) me;
  IF what OPERATOR(pg_catalog.<>) '' THEN
    RAISE EXCEPTION 'role "bg_fdw_user" has attributes that bg_fdw does not give it'
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = pg_catalog.format('It has %s; whoever gave it those may use it to launch jobs.', what),
            HINT = 'Make it a plain group role (ALTER ROLE bg_fdw_user NOSUPERUSER NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS PASSWORD NULL), or drop it, and try again.';
  END IF;

  SELECT pg_catalog.format('role "%s"', r.rolname),
         pg_catalog.format('Role "%s" holds ADMIN OPTION on role "bg_fdw_user".', r.rolname)
    INTO culprit, what
    FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_authid r ON r.oid OPERATOR(pg_catalog.=) m.member
   WHERE m.roleid OPERATOR(pg_catalog.=) me AND m.admin_option AND NOT r.rolsuper
  UNION ALL
  SELECT CASE WHEN g.oid IS NULL THEN pg_catalog.format('a dropped role (OID %s)', m.grantor)
              ELSE pg_catalog.format('role "%s"', g.rolname) END,
         pg_catalog.format('It granted membership in role "%s" to role "%s".',
                           (SELECT x.rolname FROM pg_catalog.pg_authid x
                             WHERE x.oid OPERATOR(pg_catalog.=) m.roleid),
                           (SELECT x.rolname FROM pg_catalog.pg_authid x
                             WHERE x.oid OPERATOR(pg_catalog.=) m.member))
    FROM pg_catalog.pg_auth_members m
    LEFT JOIN pg_catalog.pg_authid g ON g.oid OPERATOR(pg_catalog.=) m.grantor
   WHERE (m.roleid OPERATOR(pg_catalog.=) me OR m.member OPERATOR(pg_catalog.=) me)
     AND g.rolsuper IS NOT TRUE
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'role "bg_fdw_user" is controlled by %, which is not a superuser', culprit
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = what OPERATOR(pg_catalog.||) ' It could pass bg_launch on to any role.',
            HINT = 'As a superuser, revoke that membership or ADMIN OPTION (with GRANTED BY where another role granted it) and try again; then grant yourself what is wanted.';
  END IF;
END
$$;

-- How many job segments this backend has mapped: none once every job it
-- launched has ended and its rows were received.
CREATE FUNCTION @extschema@.bg_segments()
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

-- A job left running by a worker that is gone is recorded as lost, with the
-- time it was noticed, so that it expires like any ended job.
ALTER TABLE @extschema@.bg_job_registry
  DROP CONSTRAINT bg_job_registry_state_check;
ALTER TABLE @extschema@.bg_job_registry
  ADD CONSTRAINT bg_job_registry_state_check
  CHECK (state OPERATOR(pg_catalog.=) ANY
         (ARRAY['running', 'finished', 'failed', 'cancelled', 'lost']::pg_catalog.text[]));

-- The supervisor, as this server has it: "running", "sweeping" (each
-- database, once per server start), "idle" (started on demand, it left with
-- nothing to do), "stopped", or "unavailable" where there is none
-- (PostgreSQL 15 and 16 without shared_preload_libraries); its pool: the
-- started workers idle now, the jobs handed to one so far; and its queue
-- (NULL where bg_fdw is not preloaded): the jobs waiting for a worker slot
-- now, the jobs started from the queue so far; and what the cluster-wide
-- quotas count now: running jobs (bg_fdw.max_jobs), the bytes of the queued
-- jobs (bg_fdw.max_queued_size; NULL without a queue), and the bytes of the
-- kept results of all databases (bg_fdw.max_kept_size).
CREATE FUNCTION @extschema@.bg_supervisor(
  OUT state text, OUT pid integer, OUT started_at timestamptz,
  OUT preloaded boolean, OUT starts integer, OUT databases_swept integer,
  OUT last_sweep timestamptz, OUT idle_workers integer,
  OUT jobs_handed_over bigint, OUT queued_jobs integer,
  OUT jobs_dequeued bigint, OUT running_jobs integer,
  OUT queued_bytes bigint, OUT kept_bytes bigint)
RETURNS record
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

-- A job keeps its result, for any session with the privileges of its role,
-- until bg_forget or expiry: the size of its kept file (keep.c), 0 when only
-- the completion tag is kept (in this row), NULL when nothing is.
ALTER TABLE @extschema@.bg_job_registry ADD COLUMN kept_bytes bigint;

-- A job keeps the NOTICE, INFO and WARNING messages it sent, within
-- bg_fdw.max_messages_size, written with its outcome (messages.c); NULL when
-- it keeps none.
ALTER TABLE @extschema@.bg_job_registry ADD COLUMN messages bytea;

-- Its kept messages, in order, for roles with the privileges of its role
-- (checked in C).  Where messages were dropped, a row with no position says
-- how many.
CREATE FUNCTION @extschema@.bg_messages(pid integer,
  OUT "position" bigint, OUT severity text, OUT sqlstate text,
  OUT message text, OUT detail text, OUT hint text, OUT context text)
RETURNS SETOF record
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;

-- A job's label, the channel NOTIFYed when it ends, and the progress it
-- last reported (bg_progress), recorded when it ends.
ALTER TABLE @extschema@.bg_job_registry
  ADD COLUMN label text,
  ADD COLUMN notify text,
  ADD COLUMN progress numeric,
  ADD COLUMN progress_message text;

-- The process that ran the job.  The job's name ("pid") is that process's PID
-- when the job had a new worker; a job handed to a started worker has a name
-- above any PID.
ALTER TABLE @extschema@.bg_job_registry ADD COLUMN worker_pid integer;

-- What each launch reads, found by index however many jobs are listed: a
-- role's kept results (bg_fdw.max_kept_size_per_role), and the jobs still
-- running or recording their result, which alone have a segment.
CREATE INDEX ON @extschema@.bg_job_registry (role, kept_bytes);
CREATE INDEX ON @extschema@.bg_job_registry (segment);

-- bg_launch gains "keep", "label", "notify" and "result_table".  Its grants, to bg_fdw_user
-- and to whoever a superuser granted it since, go to the new declaration.
CREATE FUNCTION @extschema@.bg_launch(sql text, queue_size integer DEFAULT NULL,
                                      stream boolean DEFAULT false,
                                      keep boolean DEFAULT true,
                                      label text DEFAULT NULL,
                                      notify text DEFAULT NULL,
                                      result_table boolean DEFAULT true)
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
REVOKE EXECUTE ON FUNCTION @extschema@.bg_launch(text, integer, boolean, boolean, text, text, boolean) FROM PUBLIC;

DO $$
DECLARE
  old pg_catalog.regprocedure :=
    '@extschema@.bg_launch(pg_catalog.text, pg_catalog.int4, pg_catalog.bool)';
  g record;
BEGIN
  FOR g IN
    SELECT a.grantee, a.is_grantable
      FROM pg_catalog.pg_proc p, pg_catalog.aclexplode(p.proacl) a
     WHERE p.oid OPERATOR(pg_catalog.=) old
       AND a.grantee OPERATOR(pg_catalog.<>) p.proowner
  LOOP
    EXECUTE pg_catalog.format(
      'GRANT EXECUTE ON FUNCTION @extschema@.bg_launch(pg_catalog.text, pg_catalog.int4, pg_catalog.bool, pg_catalog.bool, pg_catalog.text, pg_catalog.text, pg_catalog.bool) TO %s%s',
      CASE WHEN g.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
           ELSE g.grantee::pg_catalog.regrole::pg_catalog.text END,
      CASE WHEN g.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
  END LOOP;
END
$$;
DROP FUNCTION @extschema@.bg_launch(text, integer, boolean);

-- bg_jobs gains columns at the end.  Its rows come from a function whose
-- result is a composite type, so that a later version adds attributes to
-- the type and replaces the view, and views built on bg_jobs keep working.
CREATE TYPE @extschema@.bg_job_info AS (
  id bigint, pid integer, role regrole, database name, query text,
  state text, launched_at timestamptz, finished_at timestamptz, rows bigint,
  command text, sqlstate text, error text, attached boolean,
  kept boolean, kept_bytes bigint, label text, progress numeric,
  progress_message text, worker_pid integer);

CREATE FUNCTION @extschema@.bg_job_list()
RETURNS SETOF @extschema@.bg_job_info
AS 'MODULE_PATHNAME', 'bg_list_jobs'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE OR REPLACE VIEW @extschema@.bg_jobs AS
  SELECT id, pid, role, database, query, state, launched_at, finished_at,
         rows, command, sqlstate, error, attached, kept, kept_bytes, label,
         progress, progress_message, worker_pid
  FROM @extschema@.bg_job_list();
DROP FUNCTION @extschema@.bg_list_jobs();

-- Kept results are files that only the registry names: when the extension
-- is dropped, they go with it.  The library sees the drop through an object
-- access hook, and this trigger, which fires before any drop that may take
-- the extension along, makes sure the library is loaded to see it.
CREATE FUNCTION @extschema@.bg_fdw_drop_start()
RETURNS event_trigger
AS 'MODULE_PATHNAME'
LANGUAGE C;

CREATE EVENT TRIGGER bg_fdw_drop_start ON ddl_command_start
  WHEN TAG IN ('DROP EXTENSION', 'DROP SCHEMA', 'DROP OWNED')
  EXECUTE FUNCTION @extschema@.bg_fdw_drop_start();

-- Progress reported from inside a job (a loop, a procedure, a function it
-- calls): shown in bg_jobs at once, without a transaction.
CREATE FUNCTION @extschema@.bg_progress(percent numeric, message text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;

-- Cancel the caller's permitted running jobs whose label matches (LIKE).
CREATE FUNCTION @extschema@.bg_cancel_label(pattern text)
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

-- The PID of the first of several jobs to end (one that has ended counts
-- at once), NULL on timeout; sleeps until a job wakes it.
CREATE FUNCTION @extschema@.bg_wait_any(pids integer[], timeout interval DEFAULT NULL)
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

-- In a job, the session_user of the session that launched it (of the first
-- one, for a job launched by a job); NULL elsewhere.  The job connects as
-- the role it runs as, so audit code asks this, not session_user.
CREATE FUNCTION @extschema@.bg_launched_by()
RETURNS name
AS 'MODULE_PATHNAME'
LANGUAGE C STABLE PARALLEL RESTRICTED;
