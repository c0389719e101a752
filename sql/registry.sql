--
-- bg_fdw: the job registry (bg_jobs), bg_forget, and the limits on jobs
--
-- The newest job with a PID, as bg_jobs shows it
CREATE FUNCTION regress_job(pid int) RETURNS SETOF bg_jobs
LANGUAGE sql AS $$
  SELECT * FROM bg_jobs WHERE pid = $1 ORDER BY id DESC LIMIT 1
$$;

-- The registry table is the extension's own; bg_jobs is for everyone
SELECT has_table_privilege('public', 'bg_job_registry', 'SELECT') AS public_reads_registry,
       has_table_privilege('public', 'bg_jobs', 'SELECT') AS public_reads_bg_jobs;

-- A finished job: what it ran, its rows, its tag; its result still held
SELECT bg_launch($$SELECT g FROM generate_series(1, 3) g$$) AS pid \gset
SELECT bg_wait(:pid);
SELECT role, database = current_database() AS this_db, query, state, rows,
       command, sqlstate, error, attached, launched_at <= finished_at AS ordered
  FROM regress_job(:pid);
-- a job with a worker of its own is named by its worker's PID
SELECT worker_pid = :pid AS named_by_worker FROM regress_job(:pid);
-- bg_detach: no session holds the result any more
SELECT bg_detach(:pid);
SELECT state, attached FROM regress_job(:pid);

-- Rows are counted live: a stream job waits on its full queue, unread
SELECT bg_launch($$SELECT g, repeat('x', 500) FROM generate_series(1, 100000) g$$,
                 queue_size => 4096, stream => true) AS pid \gset
SELECT regress_poll('(SELECT rows > 0 FROM regress_job(' || :pid || '))') AS rows_counted;
SELECT state, finished_at IS NULL AS unfinished, attached FROM regress_job(:pid);
SELECT a.backend_type, j.worker_pid = j.pid AS named_by_worker
  FROM regress_job(:pid) j JOIN pg_stat_activity a ON a.pid = j.worker_pid;
-- bg_cancel makes it "cancelled"
SELECT bg_cancel(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT state, sqlstate, error, rows > 0 AS rows_kept FROM regress_job(:pid);

-- Rows the queue cannot take are kept in files, under temp_file_limit
SET temp_file_limit = '1MB';
SELECT bg_launch($$SELECT g, repeat('x', 1000) FROM generate_series(1, 10000) g$$) AS pid \gset
RESET temp_file_limit;
SELECT regress_poll('(SELECT state <> ''running'' FROM regress_job(' || :pid || '))') AS ended;
SELECT state, sqlstate, error LIKE 'temporary file size exceeds%' AS over_limit FROM regress_job(:pid);
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid) LIKE '53400: temporary file size exceeds%' AS reader_told;

-- A message the queue cannot take does not hold up a launch that waits for
-- the job's columns
SET client_min_messages = warning;
SELECT bg_launch($o$DO $x$BEGIN RAISE NOTICE '%', repeat('x', 100000); END$x$;
                   SELECT 1 AS one$o$) AS pid \gset
RESET client_min_messages;
SELECT * FROM bg_result_:pid;

-- nor one whose last statement produces no row for a while, or waits for its
-- reader (stream mode) after notices filled the message queue
SET client_min_messages = warning;
SELECT bg_launch($o$DO $x$BEGIN FOR i IN 1..300 LOOP RAISE NOTICE '%', repeat('x', 100); END LOOP; END$x$;
                   SELECT g FROM generate_series(1, 100000) g$o$, stream => true) AS pid \gset
RESET client_min_messages;
SELECT count(*) FROM bg_result_:pid;
-- The outcome reaches the reader whatever temp_file_limit says, even when
-- the notices kept past the queue do not fit in it (they are then dropped)
SET temp_file_limit = '64kB';
SELECT bg_launch($o$DO $x$BEGIN FOR i IN 1..3000 LOOP RAISE NOTICE '%', repeat('x', 200); END LOOP; END$x$$o$) AS pid \gset
RESET temp_file_limit;
SELECT regress_poll('(SELECT state <> ''running'' FROM regress_job(' || :pid || '))') AS ended;
SET client_min_messages = warning;
SELECT bg_wait(:pid);
RESET client_min_messages;

-- A launch that fails after its worker started leaves no job listed, once
-- the worker has gone.  bg_launch waits for its job to be listed: holding
-- the registry so that it cannot be is a deadlock, which bg_launch reports.
SELECT count(*) AS jobs_before FROM bg_jobs \gset
BEGIN;
LOCK TABLE bg_job_registry IN SHARE MODE;
SELECT split_part(regress_try($$SELECT bg_launch('SELECT 1')$$), ':', 1) AS launch;
COMMIT;
SELECT regress_poll('(SELECT count(*) FROM bg_jobs) = ' || :jobs_before) AS no_new_job;
-- A job that fails in its first statement is launched, and fails
SELECT bg_launch('SELECT 1/0; SELECT 1') AS pid \gset
SELECT split_part(regress_try('SELECT bg_wait(' || :pid || ')', :pid), ':', 1) AS outcome;
SELECT state, sqlstate FROM regress_job(:pid);

-- Detaching, then waiting for or cancelling the job in the same transaction,
-- whatever the isolation level
SET default_transaction_isolation = 'repeatable read';
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS pid \gset
BEGIN;
SELECT bg_detach(:pid);
SELECT bg_cancel(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
COMMIT;
SELECT state, attached FROM regress_job(:pid);
SELECT bg_launch('SELECT 42 AS answer') AS pid \gset
BEGIN;
SELECT bg_detach(:pid);
SELECT bg_wait(:pid);
COMMIT;
RESET default_transaction_isolation;
SELECT state, command FROM regress_job(:pid);

-- An error makes it "failed", with the SQLSTATE and message
SELECT bg_launch('SELECT 1/0') AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT state, sqlstate, error, command, finished_at IS NOT NULL AS ended FROM regress_job(:pid);
-- and so does the statement_timeout it inherits
SELECT regress_launch_timed_out($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT state, sqlstate, error FROM regress_job(:pid);

-- "finished" commits with the work: a commit that fails is a failure
CREATE TABLE regress_parent (id int PRIMARY KEY);
CREATE TABLE regress_child (parent int REFERENCES regress_parent DEFERRABLE INITIALLY DEFERRED);
SELECT bg_launch('INSERT INTO regress_child VALUES (1)') AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT state, sqlstate, command FROM regress_job(:pid);
SELECT count(*) AS child_rows FROM regress_child;

-- Jobs that end their own transaction are recorded after it
SELECT bg_launch('BEGIN; INSERT INTO regress_parent VALUES (1); COMMIT') AS pid \gset
SELECT bg_wait(:pid);
SELECT state, command FROM regress_job(:pid);
SELECT bg_launch('BEGIN; INSERT INTO regress_parent VALUES (2); ROLLBACK') AS pid \gset
SELECT bg_wait(:pid);
SELECT state, command FROM regress_job(:pid);
SELECT array_agg(id) AS parents FROM regress_parent;

-- A job launched in a read-only transaction is listed too
BEGIN READ ONLY;
SET LOCAL client_min_messages = warning;
SELECT bg_launch('SELECT 42 AS answer') AS pid \gset
COMMIT;
SELECT bg_wait(:pid);
SELECT state, command, rows FROM regress_job(:pid);

-- bg_forget: only a job that has ended
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT regress_try('SELECT bg_forget(' || :pid || ')', :pid);
SELECT bg_cancel(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT bg_forget(:pid);
SELECT count(*) AS listed FROM bg_jobs WHERE pid = :pid;
-- its result, held by this session, can still be waited for and read
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_forget(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_forget(1)');
SELECT bg_forget(NULL);

-- Two roles: another role sees that a job exists, not what it runs, and may
-- not wait for it, cancel it or forget it
CREATE ROLE regress_alice NOLOGIN IN ROLE bg_fdw_user;
CREATE ROLE regress_bob NOLOGIN IN ROLE bg_fdw_user;
SET ROLE regress_alice;
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT role, query, state FROM regress_job(:pid);
SET ROLE regress_bob;
SELECT role, query IS NULL AS query_hidden, state FROM regress_job(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_cancel(' || :pid || ')', :pid);
-- the same through the registry, once this session no longer holds it
SET ROLE regress_alice;
SELECT bg_detach(:pid);
SET ROLE regress_bob;
SELECT regress_try('SELECT bg_wait(' || :pid || ', ''10ms'')', :pid);
SELECT regress_try('SELECT bg_cancel(' || :pid || ')', :pid);
SELECT regress_try('SELECT bg_forget(' || :pid || ')', :pid);
SET ROLE regress_alice;
SELECT bg_wait(:pid, '10ms') IS NULL AS still_running;
SELECT bg_cancel(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
-- what the job did shows only to roles with its role's privileges
SELECT state, rows, sqlstate, error IS NOT NULL AS error_shown FROM regress_job(:pid);
SET ROLE regress_bob;
SELECT state, rows, sqlstate, error IS NOT NULL AS error_shown FROM regress_job(:pid);
SELECT bg_launch('SELECT 1 AS one') AS bob_pid \gset
SELECT bg_wait(:bob_pid);
SET ROLE regress_alice;
SELECT role, state, query, rows, command FROM regress_job(:bob_pid);
SET ROLE regress_bob;
SELECT role, state, query, rows, command FROM regress_job(:bob_pid);
RESET ROLE;
SELECT role, state, error FROM regress_job(:pid);

-- bg_fdw.max_jobs_per_role, a superuser's setting
SHOW bg_fdw.max_jobs_per_role;
SET bg_fdw.max_jobs_per_role = 1;
SET ROLE regress_alice;
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS pid \gset
SELECT regress_try($$SELECT bg_launch('SELECT 1')$$);
SET bg_fdw.max_jobs_per_role = 5;
SET ROLE regress_bob;
SELECT bg_launch('SELECT 1') AS bob_pid \gset
SELECT bg_wait(:bob_pid);
SET ROLE regress_alice;
SELECT bg_cancel(:pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
-- a job that ended frees its place
SELECT bg_launch('SELECT 1') AS pid \gset
SELECT bg_wait(:pid);
RESET ROLE;
RESET bg_fdw.max_jobs_per_role;
SET bg_fdw.max_jobs_per_role = -2;

-- bg_fdw.job_retention: ended jobs leave bg_jobs when it has passed
SHOW bg_fdw.job_retention;
SELECT count(*) > 0 AS ended_jobs_listed FROM bg_jobs WHERE state <> 'running';
SET bg_fdw.job_retention = 0;
SELECT count(*) AS ended_jobs_listed FROM bg_jobs WHERE state <> 'running';
-- the next job to end deletes them from the registry, once its reader has
-- its outcome
SELECT now() AS before \gset
SELECT count(*) > 0 AS expired_rows_present FROM bg_job_registry WHERE finished_at < :'before';
SELECT bg_launch('SELECT 1') AS pid \gset
SELECT bg_wait(:pid);
SELECT regress_poll(format($$NOT EXISTS (SELECT FROM bg_job_registry WHERE finished_at < %L)$$,
                           :'before')) AS expired_rows_deleted;
RESET bg_fdw.job_retention;
SET ROLE regress_alice;
SET bg_fdw.job_retention = '1h';
RESET ROLE;

-- The registry's layout is checked where it is used: a column a later
-- version might add is left NULL; one this library could not fill, or a
-- needed column gone or changed, is a clear error, never a crash.
ALTER TABLE bg_job_registry ADD COLUMN regress_later int;
SELECT bg_launch('SELECT 1') AS pid \gset
SELECT bg_wait(:pid);
SELECT state, regress_later FROM bg_job_registry WHERE pid = :pid;
ALTER TABLE bg_job_registry DROP COLUMN regress_later;
ALTER TABLE bg_job_registry ADD COLUMN regress_later int NOT NULL DEFAULT 42;
SELECT regress_try($$SELECT bg_launch('SELECT 1')$$);
SELECT count(*) FROM bg_jobs;
ALTER TABLE bg_job_registry DROP COLUMN regress_later;
ALTER TABLE bg_job_registry ALTER COLUMN state DROP NOT NULL;
SELECT count(*) FROM bg_jobs;
ALTER TABLE bg_job_registry ALTER COLUMN state SET NOT NULL;
-- rows go in without the executor, which maintains only plain indexes
CREATE INDEX regress_expr ON bg_job_registry ((lower(state)));
SELECT regress_try($$SELECT bg_launch('SELECT 1')$$);
DROP INDEX regress_expr;
-- a registry altered while a job runs does not fail the job: its work
-- commits, and only its outcome goes unrecorded
CREATE TABLE regress_gates (name text);
CREATE FUNCTION regress_gate() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
  WHILE NOT EXISTS (SELECT FROM regress_gates) LOOP
    PERFORM pg_sleep(0.01);
  END LOOP;
  RETURN true;
END $$;
CREATE TABLE regress_work (a int);
SELECT bg_launch('INSERT INTO regress_work VALUES (1); SELECT regress_gate() AS opened') AS pid \gset
ALTER TABLE bg_job_registry ALTER COLUMN error TYPE varchar;
INSERT INTO regress_gates VALUES ('go');
SELECT * FROM bg_result_:pid;
SELECT count(*) AS work_committed FROM regress_work;
ALTER TABLE bg_job_registry ALTER COLUMN error TYPE text;
SELECT regress_poll('(SELECT state = ''lost'' FROM regress_job(' || :pid || '))') AS shown_lost;
SELECT bg_detach(:pid);
DROP TABLE regress_gates, regress_work;
DROP FUNCTION regress_gate();

-- A finished job whose worker stopped before it recorded its kept result
-- (a crash between the two steps, made here by hand) still names its
-- segment, which is gone: the next job's end forgets the handle, and the
-- file that was never recorded as kept
SELECT bg_launch('SELECT 1 AS one') AS stale \gset
SELECT bg_wait(:stale);
SELECT bg_detach(:stale);
SELECT format('base/%s/pgsql_tmp_bg_fdw/%s', d.oid, r.id) AS stale_file
  FROM bg_job_registry r, pg_database d
 WHERE r.pid = :stale AND d.datname = current_database() \gset
-- (once the job has recorded its kept result, which follows its outcome)
SELECT regress_poll(format('(SELECT kept_bytes IS NOT NULL FROM bg_job_registry WHERE pid = %s)', :stale))
  AS recorded;
SELECT (pg_stat_file(:'stale_file', true)).size IS NOT NULL AS kept_file;
UPDATE bg_job_registry SET segment = 1234567, kept_bytes = NULL WHERE pid = :stale;
SELECT bg_wait(bg_launch('SELECT 1', result_table => false));
SELECT regress_poll(format('(SELECT segment IS NULL FROM bg_job_registry WHERE pid = %s)', :stale))
  AS handle_forgotten;
SELECT state, kept_bytes, kept FROM bg_jobs WHERE pid = :stale;
SELECT regress_poll(format('(pg_stat_file(%L, true)).size IS NULL', :'stale_file')) AS file_gone;

SELECT regress_no_workers();
DROP TABLE regress_child, regress_parent;
DROP FUNCTION regress_job(int);
DROP OWNED BY regress_alice, regress_bob;
DROP ROLE regress_alice, regress_bob;
