--
-- bg_fdw: launch a job, read its result as a table
--
-- The objects the extension makes
SELECT fdwname FROM pg_foreign_data_wrapper WHERE fdwname = 'bg_fdw';
SELECT srvname FROM pg_foreign_server WHERE srvname = 'bg_server';
SELECT has_function_privilege('public', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE') AS public_may_launch;
SELECT rolcanlogin,
       has_function_privilege('bg_fdw_user', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE') AS may_launch,
       has_server_privilege('bg_fdw_user', 'bg_server', 'USAGE') AS may_use_server
  FROM pg_roles WHERE rolname = 'bg_fdw_user';

-- The example from the documentation
SELECT bg_launch('SELECT g AS id, md5(g::text) AS hash FROM generate_series(1, 1000000) g') AS pid \gset
SELECT relname = 'bg_result_' || :pid AS named_after_pid,
       relpersistence, relkind
  FROM pg_class WHERE relname = 'bg_result_' || :pid;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute WHERE attrelid = ('bg_result_' || :pid)::regclass AND attnum > 0
  ORDER BY attnum;
SELECT ftoptions[1] = 'pid=' || :pid AS pid_option, ftoptions[2] ~ '^job=\d+$' AS job_option
  FROM pg_foreign_table WHERE ftrelid = ('bg_result_' || :pid)::regclass;

\set t bg_result_:pid
SELECT count(*), sum(id), count(DISTINCT hash) FROM :t;
-- reading again gives the same rows
SELECT * FROM :t ORDER BY id LIMIT 3;
SELECT count(*), sum(id) FROM :t;
-- self-join
SELECT a.id FROM :t a JOIN :t b USING (id) WHERE a.id < 5 ORDER BY 1;
-- rescans under a nested loop
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_material = off;
SELECT regress_explain('SELECT count(*) FROM (VALUES (1), (2), (3)) v(x) JOIN '
                       || :'t' || ' r ON r.id = v.x', :pid);
SELECT v.x, r.hash FROM (VALUES (1), (2), (3)) v(x) JOIN :t r ON r.id = v.x ORDER BY 1;
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_material;
-- CREATE TABLE AS and INSERT ... SELECT
CREATE TABLE regress_copy AS SELECT * FROM :t;
INSERT INTO regress_copy SELECT * FROM :t WHERE id <= 10;
SELECT count(*) FROM regress_copy;
-- cursors, within and across transactions
BEGIN;
DECLARE c CURSOR FOR SELECT * FROM :t ORDER BY id;
FETCH 2 FROM c;
FETCH 2 FROM c;
COMMIT;
BEGIN;
DECLARE h CURSOR WITH HOLD FOR SELECT id FROM :t WHERE id % 250000 = 0;
COMMIT;
FETCH ALL FROM h;
CLOSE h;
-- EXPLAIN shows the job; plain EXPLAIN reads nothing
SELECT regress_explain('SELECT * FROM ' || :'t', :pid);
-- VERBOSE adds the job's identifier, spooled rows and query
SELECT regress_explain('(VERBOSE) SELECT * FROM ' || :'t', :pid);
SELECT bg_wait(:pid);

-- Rows reach the reader while the job still runs: the first row of a job
-- that then sleeps until cancelled is there at once.
SELECT bg_launch($$SELECT 1 AS g UNION ALL SELECT 2 FROM pg_sleep('infinity')$$) AS pid \gset
SELECT g FROM bg_result_:pid LIMIT 1;
SELECT regress_explain('SELECT * FROM bg_result_' || :pid, :pid);
SELECT bg_cancel(:pid);
SELECT bg_detach(:pid);

-- A LIMIT leaves the rest of a result still running to read later.
SELECT bg_launch('SELECT g FROM generate_series(1, 200000) g') AS pid \gset
\set t bg_result_:pid
SELECT * FROM :t LIMIT 2;
SELECT * FROM :t LIMIT 3;
BEGIN;
DECLARE c2 SCROLL CURSOR FOR SELECT g FROM :t;
FETCH 2 FROM c2;
-- another scan overtakes the open cursor, which still sees every row
SELECT count(*), max(g) FROM :t;
FETCH 2 FROM c2;
MOVE FORWARD ALL IN c2;
FETCH BACKWARD 1 FROM c2;
COMMIT;
SELECT bg_wait(:pid);

-- A cursor's nested loop keeps its outer row across FETCHes, while other
-- scans of the same job take the following rows off the queue.
SELECT bg_launch('SELECT g, md5(g::text) AS h FROM generate_series(1, 100000) g') AS pid2 \gset
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_material = off;
BEGIN;
DECLARE n CURSOR FOR
  SELECT r.g, left(r.h, 8) || '/' || x AS v
    FROM bg_result_:pid2 r, LATERAL generate_series(1, 3 + 0 * r.g) x
   WHERE r.g IN (1, 99999);
FETCH 1 FROM n;
SELECT count(*) FROM bg_result_:pid2;
SELECT bg_wait(:pid2);
FETCH ALL FROM n;
COMMIT;
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_material;
SELECT bg_detach(:pid2);

-- bg_result: the same rows through a column definition list
SELECT * FROM bg_result(:pid) AS r(g integer) ORDER BY g LIMIT 3;
SELECT count(*) FROM bg_result(:pid) AS r(g integer);

-- Two jobs still running, joined
SELECT bg_launch('SELECT g AS id, g * 2 AS twice FROM generate_series(1, 50000) g') AS a \gset
SELECT bg_launch('SELECT g AS id, g * 3 AS thrice FROM generate_series(1, 50000) g') AS b \gset
SELECT count(*), sum(twice + thrice)
  FROM bg_result_:a JOIN bg_result_:b USING (id);

-- A table made by hand over a job's result: names may differ
CREATE FOREIGN TABLE regress_by_hand (x int, y int) SERVER bg_server OPTIONS (pid :'a');
SELECT sum(x), sum(y) FROM regress_by_hand;
DROP FOREIGN TABLE regress_by_hand;

-- bg_detach drops the job's tables and releases its spool
SELECT bg_detach(:a);
SELECT count(*) FROM pg_class WHERE relname = 'bg_result_' || :a;
-- DROP FOREIGN TABLE drops only the table; bg_result still reads the job
DROP FOREIGN TABLE bg_result_:b;
SELECT count(*) FROM bg_result(:b) AS r(id int, thrice int);
SELECT bg_detach(:b);
SELECT regress_no_workers();

-- Stream mode: rows go to one reader and are not kept
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g', stream => true) AS pid \gset
SELECT regress_explain('(VERBOSE) SELECT * FROM bg_result_' || :pid, :pid);
SELECT count(*), sum(g) FROM bg_result_:pid;
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid);
SELECT bg_wait(:pid);
-- a self-join needs two reads
SELECT bg_launch('SELECT g FROM generate_series(1, 10) g', stream => true) AS pid \gset
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid || ' a JOIN bg_result_'
                   || :pid || ' b USING (g)', :pid);
-- and so does a rescan
SELECT bg_launch('SELECT g FROM generate_series(1, 10) g', stream => true) AS pid \gset
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_material = off;
SELECT regress_try('SELECT count(*) FROM (VALUES (1), (2)) v(x) JOIN bg_result_'
                   || :pid || ' r ON r.g = v.x', :pid);
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_material;
-- bg_wait consumes a stream job's rows
SELECT bg_launch('SELECT g FROM generate_series(1, 10) g', stream => true) AS pid \gset
SELECT bg_wait(:pid);
SELECT regress_try('SELECT count(*) FROM bg_result_' || :pid, :pid);
SELECT regress_no_workers();
-- a scan that takes no rows does not use a stream job's result up
SELECT bg_launch('SELECT g FROM generate_series(1, 100) g', stream => true) AS pid \gset
SELECT * FROM bg_result_:pid LIMIT 0;
SELECT count(*) FROM bg_result_:pid;
-- waiting would take the rows an open scan of a stream job has not read
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g', stream => true) AS pid \gset
BEGIN;
DECLARE s CURSOR FOR SELECT * FROM bg_result_:pid;
FETCH 2 FROM s;
SAVEPOINT w;
SELECT regress_try('SELECT bg_wait(' || :pid || ')', :pid);
-- (cancelling takes no rows either: those sent stay readable)
SELECT regress_poll('(SELECT rows >= 64 FROM bg_jobs WHERE pid = ' || :pid || ')') AS rows_sent;
SELECT regress_try('SELECT bg_cancel(' || :pid || ')', :pid);
FETCH 2 FROM s;
COMMIT;
SELECT bg_detach(:pid);
SELECT regress_no_workers();

-- The spool keeps work_mem of rows in memory and the rest in a file: the
-- job's kept file, or one of the session's own for a job that keeps none.
SET work_mem = '64kB';
\getenv abs_srcdir PG_ABS_SRCDIR
\set spool_reads :abs_srcdir '/sql/spool_reads.inc'
\set keep true
\i :spool_reads
\set keep false
\i :spool_reads
RESET work_mem;
-- rows bigger than the spool's blocks and buffers (with the default
-- work_mem) in memory
SELECT bg_launch($$SELECT g, repeat(md5(g::text), 10000) AS big
                   FROM generate_series(1, 5) g$$) AS pid \gset
SELECT sum(length(big)), count(DISTINCT md5(big)) FROM bg_result_:pid;
SELECT sum(length(big)), count(DISTINCT md5(big)) FROM bg_result_:pid;
SELECT bg_detach(:pid);

-- While the session waits for one job, the rows of another job it has a
-- scan open on move into that job's spool: all of them, in order.
SELECT bg_launch('SELECT g FROM generate_series(1, 50000) g') AS a \gset
SELECT bg_launch($$SELECT g FROM generate_series(1, 3) g, LATERAL pg_sleep(0.2)$$) AS b \gset
SELECT (SELECT count(*) FROM bg_result_:b) AS b_rows,
       (SELECT count(*) FILTER (WHERE g = n) FROM
          (SELECT g, row_number() OVER () AS n FROM bg_result_:a) s) AS a_in_order;
SELECT bg_detach(:a), bg_detach(:b);
-- a job that fails while its rows are taken that way fails its own reads
SELECT bg_launch('SELECT g, 1 / (g - 40000) AS x FROM generate_series(1, 50000) g') AS a \gset
SELECT bg_launch($$SELECT g FROM generate_series(1, 3) g, LATERAL pg_sleep(0.2)$$) AS b \gset
SELECT regress_try('SELECT (SELECT count(*) FROM bg_result_' || :b || '),
                           (SELECT count(*) FROM bg_result_' || :a || ')', :a);
SELECT count(*) FROM bg_result_:b;
SELECT bg_detach(:a), bg_detach(:b);
SELECT regress_no_workers();
