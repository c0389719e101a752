--
-- bg_fdw: result shapes, several statements, utility statements
--
CREATE TABLE regress_m (a int);
CREATE TABLE regress_v (id int, payload text);
INSERT INTO regress_v SELECT g, repeat('x', g % 10) FROM generate_series(1, 1000) g;

-- Columns keep their exact types and typmods
SELECT bg_launch($$SELECT 1::int2 AS i2, 2::int8 AS i8, 3.5::numeric(5,2) AS n,
                          'ab'::varchar(7) AS v, 'c'::char(3) AS c,
                          '2020-01-02 03:04:05+00'::timestamptz(2) AS ts,
                          '{"a": 1}'::jsonb AS j, ARRAY[1,2] AS arr,
                          (SELECT regress_v FROM regress_v WHERE id = 3) AS rowtype,
                          'x' COLLATE "C" AS coll$$) AS pid \gset
SELECT attname, format_type(atttypid, atttypmod), attcollation::regcollation
  FROM pg_attribute WHERE attrelid = ('bg_result_' || :pid)::regclass AND attnum > 0
  ORDER BY attnum;
SELECT * FROM bg_result_:pid;

-- Unnamed and duplicate columns get unique names; system column names too
SELECT bg_launch('SELECT 1, 2 AS a, 3 AS a, 4 AS a_2, 5, 6 AS ctid, 7 AS a') AS pid \gset
SELECT attname FROM pg_attribute
  WHERE attrelid = ('bg_result_' || :pid)::regclass AND attnum > 0 ORDER BY attnum;
SELECT * FROM bg_result_:pid;

-- Types that cannot be table columns arrive as text
CREATE FUNCTION regress_maintenance() RETURNS void LANGUAGE sql AS $$ SELECT $$;
SELECT bg_launch('SELECT regress_maintenance() AS v, pg_sleep(0) AS s, row(1, ''x'', NULL) AS r, NULL::record AS n') AS pid \gset
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
  WHERE attrelid = ('bg_result_' || :pid)::regclass AND attnum > 0 ORDER BY attnum;
SELECT v IS NULL AS null_void, s = '' AS void_is_empty, r, n IS NULL AS null_record FROM bg_result_:pid;

-- Statements without rows: one column "command", the completion tag
SELECT bg_launch('INSERT INTO regress_m SELECT generate_series(1, 5)') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT bg_launch('UPDATE regress_m SET a = a + 1 WHERE a > 3') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT bg_launch('CREATE TABLE regress_made_by_job (x int)') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT to_regclass('regress_made_by_job') IS NOT NULL AS created;
SELECT bg_launch('VACUUM (ANALYZE) regress_v') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT bg_wait(:pid);
-- INSERT ... RETURNING has rows
SELECT bg_launch('INSERT INTO regress_m VALUES (100), (101) RETURNING a, a * 2 AS b') AS pid \gset
SELECT * FROM bg_result_:pid ORDER BY a;

-- Utility statements that return rows
SET TimeZone = 'America/New_York';
SELECT bg_launch('SHOW TimeZone') AS pid \gset
SELECT * FROM bg_result_:pid;
RESET TimeZone;
SELECT bg_launch('EXPLAIN (COSTS OFF) SELECT * FROM regress_v WHERE id = 1') AS pid \gset
SELECT * FROM bg_result_:pid;
CREATE PROCEDURE regress_out(IN x int, OUT doubled int, OUT label text)
LANGUAGE plpgsql AS $$ BEGIN doubled := x * 2; label := 'x' || x; END $$;
SELECT bg_launch('CALL regress_out(21, NULL, NULL)') AS pid \gset
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
  WHERE attrelid = ('bg_result_' || :pid)::regclass AND attnum > 0 ORDER BY attnum;
SELECT * FROM bg_result_:pid;

-- Several statements run as psql -c runs them: one transaction, each
-- seeing the ones before; the table shows the last one's result.
TRUNCATE regress_m;
SELECT bg_launch('INSERT INTO regress_m VALUES (7); SELECT count(*) FROM regress_m') AS pid \gset
SELECT * FROM bg_result_:pid;
-- the last statement may read a table an earlier one creates: bg_launch
-- cannot describe it and makes no table; the job reports its columns
SELECT bg_launch('CREATE TABLE regress_later (k int, v text);
                  INSERT INTO regress_later VALUES (1, ''one''), (2, ''two'');
                  SELECT * FROM regress_later ORDER BY k') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT * FROM bg_result(:pid) AS r(k int, v text);
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO pg_temp;
SELECT * FROM bg_result_:pid;
-- until the job has started its last statement, IMPORT skips it
SELECT pg_advisory_lock(4402);
SELECT bg_launch('SELECT pg_advisory_lock(4402); CREATE TABLE regress_later2 AS SELECT 2 AS two;
                  SELECT * FROM regress_later2') AS pid \gset
SET client_min_messages = error;  -- (the warning names the job: t/002_launch.pl)
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO pg_temp;
RESET client_min_messages;
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT pg_advisory_unlock(4402);
SELECT bg_wait(:pid);
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO pg_temp;
SELECT * FROM bg_result_:pid;
-- an earlier statement changes the last one's columns: the job's win, and
-- the table made at launch says it no longer matches
CREATE TABLE regress_reshaped (a int);
INSERT INTO regress_reshaped VALUES (1);
SELECT bg_launch('DO $$BEGIN ALTER TABLE regress_reshaped ADD b text DEFAULT ''new''; END$$;
                  SELECT * FROM regress_reshaped') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
DROP FOREIGN TABLE bg_result_:pid;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO pg_temp;
SELECT * FROM bg_result_:pid;
SELECT * FROM bg_result(:pid) AS r(a int, b text);
-- after a statement that changes what names mean, or defines relations or
-- types, the last is not described: no table, and the job's columns
SELECT bg_launch('ALTER TABLE regress_reshaped ADD c int DEFAULT 3;
                  SELECT * FROM regress_reshaped') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT * FROM bg_result(:pid) AS r(a int, b text, c int);
SELECT bg_launch('SELECT 2 AS a INTO TEMP regress_into; SELECT * FROM regress_into') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT bg_launch('EXPLAIN ANALYZE CREATE TEMP TABLE regress_into AS SELECT 3 AS a;
                  SELECT * FROM regress_into') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT bg_launch('SET "Search_Path" TO pg_catalog; SELECT 1') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
-- a table the job only truncates keeps its row type: the table made at
-- launch reads it
SELECT bg_launch('DO $$BEGIN TRUNCATE regress_reshaped; INSERT INTO regress_reshaped VALUES (7, ''seven'', 7); END$$;
                  SELECT r FROM regress_reshaped r') AS pid \gset
SELECT * FROM bg_result_:pid;
-- a statement timeout caught before the launch is not raised again by it
SET statement_timeout = '100ms';
DO $$BEGIN
  BEGIN PERFORM pg_sleep(60); EXCEPTION WHEN query_canceled THEN NULL; END;
  PERFORM bg_detach(bg_launch('DO $x$BEGIN NULL; END$x$; SELECT * FROM regress_created_later'));
END$$;
RESET statement_timeout;
PREPARE regress_p AS SELECT 1 AS mine;
SELECT bg_launch('PREPARE regress_p AS SELECT 1 AS x, 2 AS y; EXECUTE regress_p') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT * FROM bg_result(:pid) AS r(x int, y int);
DEALLOCATE regress_p;
-- an error describing the last of several is no error of the launch: the
-- earlier ones may make it right
SELECT bg_launch('SET DateStyle = ''DMY''; SELECT ''31/12/2020''::date AS d') AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT * FROM bg_result(:pid) AS r(d date);
-- a type the job creates is text in its result: no other session could
-- read it before the job commits
SELECT bg_launch('CREATE TYPE regress_job_mood AS ENUM (''sad'', ''ok'');
                  CREATE TEMP TABLE regress_moods (m regress_job_mood, arr regress_job_mood[]);
                  INSERT INTO regress_moods VALUES (''ok'', ''{sad,ok}'');
                  SELECT m, arr, regress_moods AS whole FROM regress_moods') AS pid \gset
SELECT * FROM bg_result(:pid) AS r(m text, arr text, whole text);
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO pg_temp;
SELECT attname, atttypid::regtype FROM pg_attribute
 WHERE attrelid = ('pg_temp.bg_result_' || :pid)::regclass AND attnum > 0 ORDER BY attnum;
-- a stream job that sends many notices before its rows is read all the
-- same: it pushes its messages, among them its columns, while it waits
SET client_min_messages = error;
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$BEGIN FOR i IN 1..2000 LOOP RAISE NOTICE '%', repeat('x', 100); END LOOP; END$d$;
  SELECT g, repeat('y', 1000) AS y FROM generate_series(1, 20000) g$j$,
  stream => true, queue_size => 65536) AS pid \gset
SELECT count(*), sum(length(y)) FROM bg_result_:pid;
RESET client_min_messages;
-- a stream job waiting for room in its queue while its reader waits for a
-- lock the job holds: the job sees the deadlock, and fails
CREATE TABLE regress_acct (id int PRIMARY KEY, bal int);
INSERT INTO regress_acct SELECT g, 0 FROM generate_series(1, 200) g;
SET deadlock_timeout = '100ms';
SELECT bg_launch($$UPDATE regress_acct SET bal = bal + 1 RETURNING id, repeat('p', 100) AS pad$$,
                 queue_size => 4096, stream => true) AS pid \gset
SELECT regress_try(format('DO $d$DECLARE r record;
  BEGIN
    FOR r IN SELECT id FROM bg_result_%s LOOP
      UPDATE regress_acct SET bal = bal + 100 WHERE id = r.id;
    END LOOP;
  END$d$', :pid), :pid);
RESET deadlock_timeout;
SELECT count(*), sum(bal) FROM regress_acct;
-- waiting for a job that has ended does not sleep: with deadlock_timeout
-- (between checks of the wait) an hour, this would hit statement_timeout
SELECT bg_launch('SELECT 1') AS pid \gset
SELECT regress_poll('NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = ' || :pid || ')') AS worker_gone;
SET deadlock_timeout = '1h';
SET statement_timeout = '5min';
SELECT bg_wait(:pid);
RESET statement_timeout;
RESET deadlock_timeout;
-- bg_launch never waits for the job's work: a job whose first statement
-- waits for a lock this session holds is launched, and waits
SELECT pg_advisory_lock(4401);
SELECT bg_launch('SELECT pg_advisory_lock(4401); SELECT 42 AS answer') AS pid \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :pid || ')') AS job_waits;
SELECT state FROM bg_jobs WHERE pid = :pid;
SELECT pg_advisory_unlock(4401);
SELECT * FROM bg_result_:pid;
-- result_table => false: no table, no catalog row; bg_wait and bg_result
-- read the job
-- (this backend's unflushed counts, which grow inside a transaction block)
-- (and the session holds little memory for each ended job)
BEGIN;
SELECT n_tup_ins AS class_ins FROM pg_stat_xact_sys_tables
 WHERE relid = 'pg_class'::regclass \gset
SELECT coalesce(sum(total_bytes), 0) AS job_mem FROM pg_backend_memory_contexts
 WHERE name LIKE 'bg_fdw%' \gset
SELECT count(bg_wait(bg_launch('INSERT INTO regress_m VALUES (30)', result_table => false)))
  FROM generate_series(1, 200);
SELECT n_tup_ins - :class_ins AS class_inserts FROM pg_stat_xact_sys_tables
 WHERE relid = 'pg_class'::regclass;
SELECT (sum(total_bytes) - :job_mem) / 200 < 16384 AS little_per_job
  FROM pg_backend_memory_contexts WHERE name LIKE 'bg_fdw%';
COMMIT;
SELECT count(*) FROM regress_m WHERE a = 30;
SELECT bg_launch('SELECT 31 AS a', result_table => false) AS pid \gset
SELECT to_regclass('pg_temp.bg_result_' || :pid) IS NULL AS no_table;
SELECT * FROM bg_result(:pid) AS r(a int);
-- (a table made at launch is a catalog row)
BEGIN;
SELECT n_tup_ins AS class_ins FROM pg_stat_xact_sys_tables
 WHERE relid = 'pg_class'::regclass \gset
SELECT bg_wait(bg_launch('SELECT 1')) IS NOT NULL AS waited;
SELECT n_tup_ins - :class_ins AS class_inserts FROM pg_stat_xact_sys_tables
 WHERE relid = 'pg_class'::regclass;
COMMIT;
-- one transaction: a failure undoes the earlier statements
SELECT bg_launch('INSERT INTO regress_m VALUES (8); SELECT 1; SELECT 1 / (a - a) FROM regress_m') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
SELECT count(*) FROM regress_m WHERE a = 8;
-- explicit transaction control inside a job
SELECT bg_launch('BEGIN; INSERT INTO regress_m VALUES (9); COMMIT; INSERT INTO regress_m VALUES (10)') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT count(*) FROM regress_m WHERE a IN (9, 10);

-- VACUUM, CREATE INDEX CONCURRENTLY and CALL of a procedure that commits
-- run as the only statement of a job, and fail like psql with others.
SELECT bg_launch('VACUUM regress_v') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT bg_launch('CREATE INDEX CONCURRENTLY regress_v_id ON regress_v (id)') AS pid \gset
CALL bg_await(:pid);
SELECT * FROM bg_result_:pid;
SELECT indisvalid FROM pg_index WHERE indexrelid = 'regress_v_id'::regclass;
CREATE PROCEDURE regress_commits() LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO regress_m VALUES (20);
  COMMIT;
  INSERT INTO regress_m VALUES (21);
END $$;
SELECT bg_launch('CALL regress_commits()') AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT count(*) FROM regress_m WHERE a IN (20, 21);
SELECT bg_launch('VACUUM regress_v; SELECT 1') AS pid \gset
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
SELECT bg_launch('SELECT 1; VACUUM regress_v') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
SELECT bg_launch('SELECT 1; CREATE INDEX CONCURRENTLY regress_v_id2 ON regress_v (id)') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
SELECT bg_launch('SELECT 1; CALL regress_commits()') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);

-- Notices reach the reading session's client, once
\set VERBOSITY terse
SELECT bg_launch($q$DO $$ BEGIN RAISE NOTICE 'hello from the job'; RAISE WARNING 'careful'; END $$$q$) AS pid \gset
SELECT * FROM bg_result_:pid;
SELECT * FROM bg_result_:pid;
\set VERBOSITY default

-- Errors keep the job's SQLSTATE, message, detail and hint, and name the job
SELECT bg_launch($q$DO $$ BEGIN RAISE EXCEPTION 'custom failure'
  USING ERRCODE = 'P0042', DETAIL = 'some detail', HINT = 'some hint'; END $$$q$) AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
-- every read raises it again
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid);
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
-- a failure part way through the rows
SELECT bg_launch('SELECT 10 / (3 - g) FROM generate_series(1, 5) g') AS pid \gset
\set VERBOSITY terse
BEGIN;
DECLARE c CURSOR FOR SELECT * FROM bg_result_:pid;
FETCH ALL FROM c;
ROLLBACK;
\set VERBOSITY default
-- an error at COMMIT is an error of the job
CREATE TABLE regress_deferred (id int PRIMARY KEY DEFERRABLE INITIALLY DEFERRED);
SELECT bg_launch('INSERT INTO regress_deferred VALUES (1), (1) RETURNING id') AS pid \gset
SELECT regress_try('SELECT * FROM bg_result_' || :pid, :pid);
SELECT count(*) FROM regress_deferred;

-- Large values are sent inline, not as pointers into TOAST tables: the
-- result outlives the job's transaction, and here the table itself.
CREATE TABLE regress_docs (id int, body text);
INSERT INTO regress_docs
  SELECT g, (SELECT string_agg(md5(g::text || i::text), '') FROM generate_series(1, 200) i)
  FROM generate_series(1, 20) g;
SELECT count(*) > 0 AS toasted FROM regress_docs
  WHERE pg_column_size(body) < length(body) OR pg_column_size(body) > 2000;
SELECT bg_launch('SELECT id, body FROM regress_docs') AS pid \gset
SELECT bg_wait(:pid);
CREATE TEMP TABLE regress_docs_sums AS SELECT id, md5(body) AS m FROM regress_docs;
DROP TABLE regress_docs;
SELECT count(*) AS rows, bool_and(md5(r.body) = s.m) AS bodies_intact,
       min(length(r.body)) AS len
  FROM bg_result_:pid r JOIN regress_docs_sums s USING (id);


-- Each statement of a job has its own start, as a session's would:
-- statement_timestamp() moves on from the now() of the job's transaction
SELECT bg_launch('SELECT pg_sleep(0.01); SELECT statement_timestamp() > now() AS own_start') AS pid \gset
SELECT * FROM bg_result_:pid;

SELECT regress_no_workers();
