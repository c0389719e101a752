--
-- bg_fdw: bad input gets a clear error, and nothing leaks
--
-- Segments are counted by bg_segments(), the extension's own count of the
-- job segments this session has mapped: it sees them whatever
-- dynamic_shared_memory_type and min_dynamic_shared_memory say, where a
-- look at /dev/shm would not.  A worker's mapping goes with its process
-- (regress_no_workers).
CREATE FUNCTION regress_temp_files() RETURNS bigint
LANGUAGE sql AS $$
  SELECT count(*) FROM pg_ls_dir('base/pgsql_tmp', true, false)
$$;
-- Poll until this session's job segments are back to a count
CREATE FUNCTION regress_dsm_back_to(n int) RETURNS boolean
LANGUAGE sql AS $$
  SELECT regress_poll(format('bg_segments() = %s', n))
$$;

SELECT regress_no_workers();
SELECT bg_segments() AS dsm_before \gset
SELECT :dsm_before AS segments_at_start;

-- NULL or empty SQL
SELECT bg_launch(NULL);
SELECT bg_launch('');
SELECT bg_launch(' ; ');
-- syntax errors are raised by bg_launch itself
SELECT bg_launch('SELEC 1');
-- so are errors of parse analysis of a single statement
SELECT bg_launch('SELECT * FROM regress_no_such_table');
-- queue_size out of range
SELECT bg_launch('SELECT 1', 100);
SELECT bg_launch('SELECT 1', -1);
SET bg_fdw.queue_size = 100;
SET bg_fdw.queue_size = '1MB';
SELECT bg_launch('SELECT 1', 1048576) AS pid \gset
SELECT bg_wait(:pid);
SELECT bg_detach(:pid);
RESET bg_fdw.queue_size;
SET bg_fdw.no_such_setting = 1;
-- COPY to or from the client
CREATE TABLE regress_e (a int);
SELECT bg_launch('COPY regress_e TO STDOUT');
SELECT bg_launch('SELECT 1; COPY regress_e FROM STDIN');
-- an unknown pid
SELECT bg_wait(1);
SELECT bg_cancel(1);
SELECT bg_detach(1);
SELECT * FROM bg_result(1) AS r(x int);
-- bg_result's column list must match
SELECT bg_launch('SELECT 1 AS a, ''b''::text AS b') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result(' || :pid || ') AS r(a int)', :pid);
SELECT regress_try('SELECT * FROM bg_result(' || :pid || ') AS r(a int, b varchar)', :pid);
SELECT * FROM bg_result(:pid) AS r(x int, y text);
-- bg_wait with a timeout: NULL when it passes first
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS sleeper \gset
SELECT bg_segments() > :dsm_before AS running_job_counted;
SELECT bg_wait(:sleeper, '10 ms') IS NULL AS timed_out;
SELECT bg_wait(:sleeper, '-1 s');
-- bg_cancel: true while running, false afterwards; the job ends as cancelled
SELECT bg_cancel(:sleeper);
SELECT regress_try('SELECT bg_wait(' || :sleeper || ')', :sleeper);
SELECT bg_cancel(:sleeper);
SELECT regress_try('SELECT * FROM bg_result_' || :sleeper, :sleeper);
-- a worker terminated by pg_terminate_backend: a clear error, not a hang
SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS victim \gset
SELECT regress_wait_active(:victim);
SELECT pg_terminate_backend(:victim);
SELECT regress_try('SELECT * FROM bg_result_' || :victim, :victim);
SELECT regress_try('SELECT bg_wait(' || :victim || ')', :victim);
SELECT bg_cancel(:victim);
SELECT bg_detach(:victim);
-- reading after bg_detach: what the job kept
SELECT bg_wait(:pid);
SELECT bg_detach(:pid);
-- detaching again is a no-op with a NOTICE (its text is checked in t/)
SET client_min_messages = warning;
SELECT bg_detach(:pid);
RESET client_min_messages;
SELECT * FROM bg_result(:pid) AS r(a int, b text);
-- the outcome is still known to the registry, as for any session's job
SELECT bg_wait(:pid) AS outcome_after_detach;
-- detaching a job whose result is being read
SELECT bg_launch('SELECT 1 AS x') AS pid \gset
SELECT regress_try('SELECT bg_detach(' || :pid || ') FROM bg_result_' || :pid, :pid);
-- bg_await is a procedure for top level
SELECT regress_try('CALL bg_await(' || :pid || ')', :pid);
BEGIN;
CALL bg_await(:pid);
ROLLBACK;

-- Hand-made foreign tables: options are checked
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server;
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server OPTIONS (pid 'abc');
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server OPTIONS (pid '-5');
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server OPTIONS (pid '5', job 'x');
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server OPTIONS (pid '5', pdi '5');
CREATE SERVER regress_srv FOREIGN DATA WRAPPER bg_fdw OPTIONS (pid '5');
-- a table for a job that does not exist
CREATE FOREIGN TABLE regress_ft1 (x int) SERVER bg_server OPTIONS (pid '1');
SELECT * FROM regress_ft1;
-- plain EXPLAIN reads no queue, and works even then
EXPLAIN (COSTS OFF) SELECT * FROM regress_ft1;
-- wrong column types, wrong number of columns
CREATE FOREIGN TABLE regress_ft2 (x text) SERVER bg_server OPTIONS (pid :'pid');
SELECT regress_try('SELECT * FROM regress_ft2', :pid);
CREATE FOREIGN TABLE regress_ft3 (x int, y int) SERVER bg_server OPTIONS (pid :'pid');
SELECT regress_try('SELECT * FROM regress_ft3', :pid);
CREATE FOREIGN TABLE regress_ft4 (x numeric(5,1)) SERVER bg_server OPTIONS (pid :'pid');
SELECT regress_try('SELECT * FROM regress_ft4', :pid);
-- a stale table: the right pid with another job's identifier
CREATE FOREIGN TABLE regress_ft5 (x int) SERVER bg_server
  OPTIONS (pid :'pid', job '1234567890123456789');
SELECT regress_try('SELECT * FROM regress_ft5', :pid);
ALTER FOREIGN TABLE regress_ft5 OPTIONS (DROP pid);
DROP FOREIGN TABLE regress_ft1, regress_ft2, regress_ft3, regress_ft4, regress_ft5;
SELECT bg_detach(:pid);

-- No free background worker slot: say which setting to raise.  The failed
-- launch leaves nothing behind; those that succeeded are jobs like any other
-- (launching is not undone by a rollback), so cancel and detach them.
DO $$
DECLARE
  pids int[] := '{}';
  msg text; hint text;
BEGIN
  BEGIN
    FOR i IN 1..50 LOOP
      pids := pids || bg_launch('SELECT pg_sleep(''infinity'')');
    END LOOP;
    RAISE EXCEPTION 'launched 50 jobs';
  EXCEPTION WHEN insufficient_resources THEN
    GET STACKED DIAGNOSTICS msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
    RAISE NOTICE '%', msg;
    RAISE NOTICE '%', hint;
  END;
  RAISE NOTICE 'every job launched was cancelled: %',
    (SELECT bool_and(bg_cancel(p)) FROM unnest(pids) p);
  PERFORM bg_detach(p) FROM unnest(pids) p;
END
$$;
SELECT regress_no_workers();
-- a slot is free again only once the postmaster has reaped the process:
-- poll for it
CREATE FUNCTION regress_launch_when_free(sql text) RETURNS int
LANGUAGE plpgsql AS $$
BEGIN
  FOR i IN 1..600 LOOP
    BEGIN
      RETURN bg_launch(sql);
    EXCEPTION WHEN insufficient_resources THEN
      PERFORM pg_sleep(0.05);
    END;
  END LOOP;
  RETURN NULL;
END
$$;
SELECT regress_launch_when_free('SELECT 42 AS still_works') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT bg_detach(:pid);

-- A job that has ended gives its shared memory back at once; its rows stay.
SELECT bg_launch('SELECT g FROM generate_series(1, 1000) g', 8388608) AS pid \gset
SELECT bg_wait(:pid);
SELECT regress_dsm_back_to(:dsm_before);
SELECT count(*) FROM bg_result_:pid;
SELECT regress_explain('SELECT * FROM bg_result_' || :pid, :pid);

-- Keeping the rows in this session fails (temp_file_limit): the result is
-- then known to be incomplete, and says so, instead of serving part of it.
-- (A job that keeps its result needs no such file: see keep.sql.)
SET work_mem = '64kB';
SELECT bg_launch('SELECT g, md5(g::text) FROM generate_series(1, 50000) g',
                 keep => false) AS pid \gset
SET temp_file_limit = '256kB';
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid);
RESET temp_file_limit;
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid);
SELECT bg_detach(:pid);
RESET work_mem;

-- bg_await wants a PID
CALL bg_await(NULL);

-- the session still works, and nothing is left behind
SELECT bg_detach(:sleeper);
SELECT regress_no_workers();
SELECT regress_dsm_back_to(:dsm_before);
SELECT regress_temp_files();
