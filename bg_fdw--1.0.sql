/* bg_fdw--1.0.sql */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION bg_fdw" to load this file. \quit

CREATE FUNCTION @extschema@.bg_fdw_handler()
RETURNS fdw_handler
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT;

CREATE FUNCTION @extschema@.bg_fdw_validator(text[], oid)
RETURNS void
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT;

CREATE FOREIGN DATA WRAPPER bg_fdw
  HANDLER @extschema@.bg_fdw_handler
  VALIDATOR @extschema@.bg_fdw_validator;

CREATE SERVER bg_server FOREIGN DATA WRAPPER bg_fdw;

CREATE FUNCTION @extschema@.bg_launch(sql text, queue_size integer DEFAULT NULL,
                                      stream boolean DEFAULT false)
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.bg_result(pid integer)
RETURNS SETOF record
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.bg_wait(pid integer, timeout interval DEFAULT NULL)
RETURNS text
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE PROCEDURE @extschema@.bg_await(pid integer)
AS 'MODULE_PATHNAME'
LANGUAGE C;

CREATE FUNCTION @extschema@.bg_cancel(pid integer)
RETURNS boolean
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.bg_detach(pid integer)
RETURNS void
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

CREATE FUNCTION @extschema@.bg_forget(pid integer)
RETURNS void
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL UNSAFE;

-- The job registry.  Workers write their own rows (as the table's owner,
-- from C); nobody else may touch it.  Not dumped: it describes processes.
CREATE TABLE @extschema@.bg_job_registry (
  id           bigint PRIMARY KEY,
  pid          integer NOT NULL,
  role         oid NOT NULL,
  database     oid NOT NULL,
  launcher_pid integer NOT NULL,
  segment      bigint,
  query        text NOT NULL,
  state        text NOT NULL
               CHECK (state IN ('running', 'finished', 'failed', 'cancelled')),
  launched_at  timestamptz NOT NULL,
  finished_at  timestamptz,
  rows         bigint,
  command      text,
  sqlstate     text,
  error        text
);
CREATE INDEX ON @extschema@.bg_job_registry (pid);
CREATE INDEX ON @extschema@.bg_job_registry (finished_at);
REVOKE ALL ON @extschema@.bg_job_registry FROM PUBLIC;

-- Jobs whose launching session detached them.  Apart from the registry, so
-- that bg_detach never holds a lock on the row the job's worker updates.
CREATE TABLE @extschema@.bg_job_detached (id bigint PRIMARY KEY);
REVOKE ALL ON @extschema@.bg_job_detached FROM PUBLIC;

CREATE FUNCTION @extschema@.bg_list_jobs(
  OUT id bigint, OUT pid integer, OUT role regrole, OUT database name,
  OUT query text, OUT state text, OUT launched_at timestamptz,
  OUT finished_at timestamptz, OUT rows bigint, OUT command text,
  OUT sqlstate text, OUT error text, OUT attached boolean)
RETURNS SETOF record
AS 'MODULE_PATHNAME'
LANGUAGE C VOLATILE PARALLEL UNSAFE;

CREATE VIEW @extschema@.bg_jobs AS
  SELECT id, pid, role, database, query, state, launched_at, finished_at,
         rows, command, sqlstate, error, attached
  FROM @extschema@.bg_list_jobs();
GRANT SELECT ON @extschema@.bg_jobs TO PUBLIC;

-- Launching runs SQL as the caller in a new process: a role must be granted it.
REVOKE EXECUTE ON FUNCTION @extschema@.bg_launch(text, integer, boolean) FROM PUBLIC;

-- A role to grant to those who may launch jobs.  Roles are cluster-wide and
-- the extension may be installed in several databases: create it only once.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'bg_fdw_user') THEN
    CREATE ROLE bg_fdw_user NOLOGIN;
  END IF;
END
$$;
GRANT EXECUTE ON FUNCTION @extschema@.bg_launch(text, integer, boolean) TO bg_fdw_user;
GRANT USAGE ON FOREIGN SERVER bg_server TO bg_fdw_user;
