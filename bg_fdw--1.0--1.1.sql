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
-- refuse while a role that is not a superuser holds ADMIN OPTION on it
-- (on PostgreSQL 16 and later a CREATEROLE user who created it does) or
-- has granted membership in it.  Nothing about the role itself (a comment,
-- its attributes) can prove who created it, so only its grants are judged.
DO $$
DECLARE
  culprit record;
BEGIN
  SELECT m.member::regrole AS who, 'holds ADMIN OPTION on it' AS what
    INTO culprit
    FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_roles r ON r.oid = m.member
   WHERE m.roleid = 'bg_fdw_user'::regrole AND m.admin_option
     AND NOT r.rolsuper
  UNION ALL
  SELECT m.grantor::regrole,
         format('granted membership in it to role %s', m.member::regrole)
    FROM pg_catalog.pg_auth_members m
    JOIN pg_catalog.pg_roles g ON g.oid = m.grantor
   WHERE m.roleid = 'bg_fdw_user'::regrole AND NOT g.rolsuper
  LIMIT 1;
  IF FOUND THEN
    RAISE EXCEPTION 'role "bg_fdw_user" is controlled by role %, which is not a superuser',
                    culprit.who
      USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('Role %s %s; it could grant bg_launch to anyone.',
                            culprit.who, culprit.what),
            HINT = 'Revoke those grants from role "bg_fdw_user", or drop the role, and try again.';
  END IF;
END
$$;

-- How many job segments this backend has mapped: none once every job it
-- launched has ended and its rows were received.
CREATE FUNCTION @extschema@.bg_segments()
RETURNS integer
AS 'MODULE_PATHNAME'
LANGUAGE C STRICT VOLATILE PARALLEL RESTRICTED;
