--
-- bg_fdw: transactions, waiting, settings, roles
--
SET deadlock_timeout = '100ms';
CREATE TABLE regress_auto (a int);

-- A job is an autonomous transaction: it commits though the caller rolls back
BEGIN;
SELECT bg_launch('INSERT INTO regress_auto VALUES (1)') AS pid \gset
SELECT bg_wait(:pid);
ROLLBACK;
SELECT count(*) FROM regress_auto;
-- the result table went with the transaction; the job's result did not
SELECT to_regclass('bg_result_' || :pid) IS NULL AS table_gone;
SELECT * FROM bg_result(:pid) AS r(command text);

-- A job that leaves a transaction block open has its work rolled back, and
-- fails
SELECT bg_launch('BEGIN; INSERT INTO regress_auto VALUES (2); SELECT 42') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
SELECT count(*) FROM regress_auto WHERE a = 2;

-- bg_detach is transactional: rolled back, the job and its table are back
SELECT bg_launch('SELECT 7 AS seven') AS pid \gset
BEGIN;
SELECT bg_detach(:pid);
SELECT to_regclass('bg_result_' || :pid) IS NULL AS table_dropped;
ROLLBACK;
SELECT * FROM bg_result_:pid;
BEGIN;
SAVEPOINT s;
SELECT bg_detach(:pid);
ROLLBACK TO s;
SELECT * FROM bg_result_:pid;
SELECT bg_detach(:pid);
COMMIT;
-- the outcome is still known to the registry, as for any session's job
SELECT bg_wait(:pid) AS outcome_after_detach;

-- A job needs a lock the reader holds: a deadlock, found and reported
BEGIN;
LOCK TABLE regress_auto;
SELECT bg_launch('SELECT count(*) FROM regress_auto') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
ROLLBACK;
SELECT bg_wait(:pid);

-- ... also while another job keeps waking the reader: the check runs every
-- deadlock_timeout of waiting, whatever wakes the wait (the busy job, with a
-- scan open on it, sends a row every 10 ms for days (the sleep depends on
-- the row, so it is not run once and kept); a check it starved
-- would let the statement_timeout, far longer than any machine needs to
-- find the deadlock, end the read instead)
SET deadlock_timeout = '1s';
SELECT bg_launch($$SELECT g FROM generate_series(1, 100000000) g, LATERAL pg_sleep(0.01 + 0 * g)$$) AS busy \gset
BEGIN;
DECLARE busy_rows CURSOR FOR SELECT * FROM bg_result_:busy;
FETCH 1 FROM busy_rows;
LOCK TABLE regress_auto;
SELECT bg_launch('SELECT count(*) FROM regress_auto') AS pid \gset
SET LOCAL statement_timeout = '5min';
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
ROLLBACK;
SELECT bg_wait(:pid);
SELECT bg_cancel(:busy);
SELECT bg_detach(:busy);
SET deadlock_timeout = '100ms';

-- CREATE INDEX CONCURRENTLY waits for the reader's snapshot, taken here
-- before the job starts: bg_wait reports the deadlock; CALL bg_await waits
-- holding no snapshot.
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) FROM regress_auto;
SELECT bg_launch('CREATE INDEX CONCURRENTLY regress_auto_a ON regress_auto (a)') AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
ROLLBACK;
CALL bg_await(:pid);
SELECT bg_wait(:pid);
SELECT indisvalid FROM pg_index WHERE indexrelid = 'regress_auto_a'::regclass;

-- A read-only transaction: no table, but the job runs and bg_result reads it
BEGIN READ ONLY;
SELECT bg_launch('SELECT 42 AS answer') AS pid \gset
SELECT * FROM bg_result(:pid) AS r(answer int);
COMMIT;

-- The job runs with the session's settings
CREATE SCHEMA regress_s;
CREATE FUNCTION regress_s.where_am_i() RETURNS text LANGUAGE sql AS $$ SELECT 'regress_s' $$;
SET search_path = regress_s, public;
SET TimeZone = 'Asia/Tokyo';
SET DateStyle = 'SQL, DMY';
SET IntervalStyle = 'iso_8601';
SET lock_timeout = '1234ms';
SET statement_timeout = '1h';
SELECT bg_launch($$SELECT where_am_i(), current_setting('TimeZone') AS tz,
    '2020-03-04'::date::text AS d, '1 day 2 hours'::interval::text AS i,
    current_setting('lock_timeout') AS lt, current_setting('statement_timeout') AS st$$) AS pid \gset
SELECT * FROM bg_result_:pid;
RESET search_path;
RESET TimeZone;
RESET DateStyle;
RESET IntervalStyle;
RESET lock_timeout;
-- statement_timeout applies to the job, which fails with 57014
SELECT regress_launch_timed_out($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);

-- The job runs as the current role, with its rights and no more
CREATE ROLE regress_nologin NOLOGIN;
GRANT EXECUTE ON FUNCTION bg_launch(text, integer, boolean, boolean, text, text, boolean) TO regress_nologin;
GRANT USAGE ON FOREIGN SERVER bg_server TO regress_nologin;
GRANT CREATE ON SCHEMA public TO regress_nologin;
CREATE TABLE regress_secret (s text);
SET ROLE regress_nologin;
SELECT bg_launch(format('SELECT current_user, bg_launched_by() = %L AS launched_by_me',
                        session_user)) AS pid \gset
SELECT * FROM bg_result_:pid;
-- a job's job was launched by whoever launched the first
SELECT bg_launch(format('SELECT * FROM bg_result(bg_launch(%L)) AS r(launched_by_me boolean)',
  format('SELECT bg_launched_by() = %L AS launched_by_me', session_user))) AS pid \gset
SELECT * FROM bg_result_:pid;
-- outside a job, bg_launched_by() is NULL
SELECT bg_launched_by() IS NULL AS outside;
-- privileges are checked when the job runs its statement
SELECT bg_launch('SELECT * FROM regress_secret') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
-- several statements: bg_launch returns, and the job's failure is read
SELECT bg_launch('SELECT 1; SELECT * FROM regress_secret') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
RESET ROLE;
-- what the result table needs is checked before the job starts, so a failed
-- launch runs nothing, even with several statements
CREATE ROLE regress_no_usage NOLOGIN;
GRANT EXECUTE ON FUNCTION bg_launch(text, integer, boolean, boolean, text, text, boolean) TO regress_no_usage;
GRANT INSERT ON regress_auto TO regress_no_usage;
SET ROLE regress_no_usage;
SELECT bg_launch('INSERT INTO regress_auto VALUES (3); SELECT 1');
RESET ROLE;
SELECT regress_no_workers();
SELECT count(*) FROM regress_auto WHERE a = 3;
-- a member of bg_fdw_user may launch (TEMP on the database it has here)
CREATE ROLE regress_member NOLOGIN IN ROLE bg_fdw_user;
SET ROLE regress_member;
SELECT bg_launch('SELECT current_user AS who') AS pid \gset
SELECT * FROM bg_result_:pid;
RESET ROLE;
-- only a role that was granted bg_launch may launch
CREATE ROLE regress_plain NOLOGIN;
SET ROLE regress_plain;
SELECT bg_launch('SELECT 1');
RESET ROLE;
-- but a SECURITY DEFINER function can launch for it, and the job runs as
-- the definer
CREATE FUNCTION regress_definer_launch() RETURNS int
LANGUAGE sql SECURITY DEFINER SET search_path = public
AS $$ SELECT bg_launch('SELECT current_user::text AS who, count(*) AS secrets FROM regress_secret') $$;
ALTER FUNCTION regress_definer_launch() OWNER TO regress_nologin;
GRANT SELECT ON regress_secret TO regress_nologin;
DO $$ BEGIN
  EXECUTE format('GRANT TEMP ON DATABASE %I TO regress_nologin', current_database());
END $$;
SET ROLE regress_plain;
SELECT regress_definer_launch() AS pid \gset
-- ... and only a role with the definer's privileges may read it
SELECT regress_try('SELECT * FROM bg_result(' || :pid || ') AS r(who text, secrets bigint)', :pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_cancel(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_detach(' || :pid || ')', :pid);
RESET ROLE;
SET ROLE regress_nologin;
SELECT * FROM bg_result(:pid) AS r(who text, secrets bigint);
RESET ROLE;
-- a superuser has every role's privileges
SELECT bg_wait(:pid);
-- The job is its role's to the rest of the server: its worker connects as
-- the role it runs as (one that may log in; on 17 and later any), so the
-- caller of a SECURITY DEFINER function that launched it sees neither its
-- query in pg_stat_activity nor may cancel it; bg_launched_by() tells the
-- job who launched it.
CREATE ROLE regress_owner LOGIN;
GRANT EXECUTE ON FUNCTION bg_launch(text, integer, boolean, boolean, text, text, boolean) TO regress_owner;
GRANT USAGE ON FOREIGN SERVER bg_server TO regress_owner;
GRANT CREATE ON SCHEMA public TO regress_owner;
DO $$ BEGIN
  EXECUTE format('GRANT TEMP ON DATABASE %I TO regress_owner', current_database());
END $$;
CREATE FUNCTION regress_owner_launch(who text) RETURNS int
LANGUAGE sql SECURITY DEFINER SET search_path = public
AS $$ SELECT bg_launch(format(
  'SELECT pg_advisory_lock_shared(4307)::text AS locked, session_user::text AS s,
          current_user::text AS c, bg_launched_by() = %L AS launched_by_caller',
  who)) $$;
ALTER FUNCTION regress_owner_launch(text) OWNER TO regress_owner;
SELECT pg_advisory_lock(4307);
SET ROLE regress_plain;
SELECT regress_owner_launch(session_user) AS pid \gset
RESET ROLE;
SELECT regress_poll(format('(SELECT wait_event_type = %L FROM pg_stat_activity WHERE pid = %s)',
                           'Lock', :pid)) AS job_waits;
SET ROLE regress_plain;
SELECT usename, query FROM pg_stat_activity WHERE pid = :pid;
SELECT split_part(regress_try('SELECT pg_cancel_backend(' || :pid || ')'), ':', 1) AS cancel;
RESET ROLE;
SELECT pg_advisory_unlock(4307);
SET ROLE regress_owner;
SELECT s, c, launched_by_caller FROM bg_result(:pid) AS r(locked text, s text, c text, launched_by_caller boolean);
-- connected as its role, a job launched after SET ROLE cannot RESET ROLE or
-- SET SESSION AUTHORIZATION its way back to the session's role
SELECT bg_launch('RESET ROLE; SET SESSION AUTHORIZATION DEFAULT;
                  SELECT current_user::text AS c, session_user::text AS s') AS pid \gset
SELECT * FROM bg_result(:pid) AS r(c text, s text);
SELECT bg_launch('SET SESSION AUTHORIZATION regress_nologin; SELECT 1') AS pid \gset
SELECT split_part(regress_try('SELECT bg_wait(' || :pid || ')', :pid), ':', 1)
  AS other_authorization;
RESET ROLE;

-- Jobs are easy to spot in pg_stat_activity
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT regress_wait_active(:pid);
SELECT backend_type, application_name ~ '^bg_fdw job \d+ \(launcher \d+\)$' AS appname,
       query, state
  FROM pg_stat_activity WHERE pid = :pid;
SELECT bg_cancel(:pid);
SELECT regress_no_workers();

-- IMPORT FOREIGN SCHEMA brings back a table whose transaction rolled back,
-- in any schema, with the job's exact columns
BEGIN;
SELECT bg_launch($$SELECT 5 AS five, 'x'::varchar(3) COLLATE "C" AS "Mixed Case"$$) AS pid \gset
ROLLBACK;
SELECT to_regclass('bg_result_' || :pid) IS NULL AS table_gone;
CREATE SCHEMA regress_imp;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO regress_imp;
SELECT attname, format_type(atttypid, atttypmod), attcollation::regcollation
  FROM pg_attribute
 WHERE attrelid = ('regress_imp.bg_result_' || :pid)::regclass AND attnum > 0 ORDER BY attnum;
SELECT * FROM regress_imp.bg_result_:pid;
-- EXCEPT leaves it out; a detached job whose result was not kept is not
-- imported
SELECT bg_launch('SELECT 1 AS one') AS other \gset
SELECT bg_launch('SELECT 2 AS two', keep => false) AS gone \gset
SELECT bg_detach(:gone);
CREATE SCHEMA regress_imp2;
IMPORT FOREIGN SCHEMA jobs EXCEPT (bg_result_:pid) FROM SERVER bg_server INTO regress_imp2;
SELECT relname = 'bg_result_' || :pid AS excepted, relname = 'bg_result_' || :gone AS detached,
       count(*)
  FROM pg_class WHERE relnamespace = 'regress_imp2'::regnamespace
   AND relname IN ('bg_result_' || :pid, 'bg_result_' || :gone, 'bg_result_' || :other)
 GROUP BY 1, 2;
SELECT * FROM regress_imp2.bg_result_:other;
-- once detached, the table reads what the job kept; once the job is
-- forgotten, it is an error, not another job's rows
SELECT bg_wait(:pid);
SELECT bg_detach(:pid);
SELECT * FROM regress_imp.bg_result_:pid;
SELECT bg_forget(:pid);
SELECT regress_try('SELECT * FROM regress_imp.bg_result_' || :pid, :pid);
IMPORT FOREIGN SCHEMA public FROM SERVER bg_server INTO regress_imp;
SET client_min_messages = warning;
DROP SCHEMA regress_imp, regress_imp2 CASCADE;
RESET client_min_messages;

-- A job read to its end and set aside by the session (its segment gone) is
-- read again by a cursor whose transaction aborts: the abort closes that
-- reader too, so the job can then be detached, and other launches go on
SELECT bg_launch('SELECT g FROM generate_series(1, 3) g', keep => false) AS again \gset
SELECT bg_wait(:again);
SELECT sum(g) FROM bg_result_:again;
SELECT bg_wait(bg_launch('SELECT 1', result_table => false));
BEGIN;
DECLARE again CURSOR FOR SELECT g FROM bg_result_:again;
FETCH 2 FROM again;
ROLLBACK;
SELECT bg_detach(:again);
SELECT attached FROM bg_jobs WHERE pid = :again;

-- Roles belong to the whole server: leave none behind
DROP OWNED BY regress_nologin, regress_no_usage, regress_member, regress_plain,
  regress_owner;
DROP ROLE regress_nologin, regress_no_usage, regress_member, regress_plain,
  regress_owner;
