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
