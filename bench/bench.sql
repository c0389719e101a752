-- bg_fdw benchmark: each case is run in turn, round after round, so that
-- every figure is taken side by side with its comparisons; the median of
-- the rounds is reported with its ratio to the direct query.
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS bg_fdw;
CREATE EXTENSION IF NOT EXISTS dblink;

DROP TABLE IF EXISTS t;
CREATE TABLE t (a int, b text);
INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, :rows) g;
VACUUM ANALYZE t;

\ir lib.sql

CREATE TEMP TABLE cases (name text, job text, q text, ord int);
INSERT INTO cases VALUES
 ('direct query', NULL, 'SELECT count(*), sum(length(b)) FROM t', 1),
 ('bg_result_<pid> table', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 2),
 ('bg_result_<pid>, stream mode', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 3),
 ('bg_result_<pid>, keep => false', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 3),
 ('bg_result(pid)', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result(%s) AS r(a int, b text)', 4),
 ('dblink', NULL,
  format($q$SELECT count(*), sum(length(b)) FROM dblink('host=%s port=%s dbname=%s',
         'SELECT a, b FROM t') AS r(a int, b text)$q$,
         split_part(current_setting('unix_socket_directories'), ',', 1),
         current_setting('port'), current_database()), 5);

CALL bench_rounds('cases', 5);

\echo
\echo Transport-bound: SELECT a, b FROM t, :rows rows, count(*) and sum(length(b)) over the result
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('direct query');

-- A parallel Gather with exactly one worker and the leader not taking part:
-- the same transport as a job, for comparison.  The planner prefers the
-- serial plan when the leader does not take part, so the statement is
-- planned (a generic plan, kept) with it on and run with it off; the FILTER
-- keeps the aggregate out of the worker (random() is parallel restricted).
-- Jobs are read with the same aggregate.
SET max_parallel_workers_per_gather = 1;
SET parallel_setup_cost = 0;
SET parallel_tuple_cost = 0;
SET parallel_leader_participation = on;
SET plan_cache_mode = force_generic_plan;
PREPARE gather_q AS SELECT count(*), sum(length(b)) FILTER (WHERE random() >= 0) FROM t;
\echo
\echo The Gather plan compared with (planned once, run with parallel_leader_participation off):
EXPLAIN (COSTS OFF) EXECUTE gather_q;
SET parallel_leader_participation = off;
RESET parallel_setup_cost;
RESET parallel_tuple_cost;
TRUNCATE timings;
CREATE TEMP TABLE cases4 (name text, job text, q text, ord int);
INSERT INTO cases4 VALUES
 ('direct query (same aggregate)', NULL,
  'SELECT count(*), sum(length(b)) FILTER (WHERE random() >= 0) FROM t', 1),
 ('parallel Gather, one worker', NULL, 'EXECUTE gather_q', 2),
 ('bg_result_<pid> table', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FILTER (WHERE random() >= 0) FROM bg_result_%s', 3),
 ('bg_result_<pid>, stream mode', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FILTER (WHERE random() >= 0) FROM bg_result_%s', 4);
-- the direct query runs serially, the Gather with its one worker
CREATE OR REPLACE FUNCTION bench_case_gather(name text, job text, q text) RETURNS float8
LANGUAGE sql AS $$
  SELECT set_config('max_parallel_workers_per_gather',
                    CASE WHEN name LIKE 'parallel%' THEN '1' ELSE '0' END, false);
  SELECT bench_case(name, job, q);
$$;
CREATE OR REPLACE PROCEDURE bench_rounds_gather(rounds int)
LANGUAGE plpgsql AS $$
DECLARE
  c record;
BEGIN
  FOR r IN 1..rounds LOOP
    FOR c IN SELECT * FROM cases4 ORDER BY ord LOOP
      INSERT INTO timings (name, ms) VALUES (c.name, bench_case_gather(c.name, c.job, c.q));
      COMMIT;
    END LOOP;
  END LOOP;
END
$$;
CALL bench_rounds_gather(5);
RESET max_parallel_workers_per_gather;
RESET plan_cache_mode;
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('direct query (same aggregate)');

-- Narrow and wide rows: a single int column, and 20 columns of mixed types.
DROP TABLE IF EXISTS ti;
CREATE TABLE ti AS SELECT g AS a FROM generate_series(1, :rows) g;
CALL bench_make_wide('tw', :rows);
VACUUM ANALYZE ti, tw;
TRUNCATE timings;
CREATE TEMP TABLE cases3 (name text, job text, q text, ord int);
INSERT INTO cases3
  SELECT shape || ': ' || c.name, replace(c.job, '$T', tab), replace(c.q, '$T', tab), 10 * i + c.ord
    FROM (VALUES (1, 'int column', 'ti', 'a', 'a int'),
                 (2, '20 mixed columns', 'tw', 'c1', 'c1 int8')) AS s(i, shape, tab, col, coldef),
         LATERAL (VALUES
   ('direct query', NULL, format('SELECT count(*), sum(%s) FROM $T', col), 1),
   ('bg_result_<pid> table', 'SELECT * FROM $T',
    format('SELECT count(*), sum(%s) FROM bg_result_%%s', col), 2),
   ('bg_result_<pid>, keep => false', 'SELECT * FROM $T',
    format('SELECT count(*), sum(%s) FROM bg_result_%%s', col), 3),
   ('bg_result_<pid>, stream mode', 'SELECT * FROM $T',
    format('SELECT count(*), sum(%s) FROM bg_result_%%s', col), 3),
   ('dblink', NULL,
    format($q$SELECT count(*), sum(%s) FROM dblink('host=%s port=%s dbname=%s',
           'SELECT %s FROM $T') AS r(%s)$q$, col,
           split_part(current_setting('unix_socket_directories'), ',', 1),
           current_setting('port'), current_database(), col, coldef), 4)) AS c(name, job, q, ord);
CALL bench_rounds('cases3', 5);
\echo
\echo Narrow and wide rows, :rows rows each (dblink brings only the summed column)
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('int column: direct query')
 WHERE "case" LIKE 'int%';
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('20 mixed columns: direct query')
 WHERE "case" LIKE '20%';

-- Disk written per result row: the job's kept file (kept_bytes), and the
-- temporary files of the reading session's spool (and of rows the worker
-- kept aside), measured once the result has been read, before it is freed.
-- Each mode runs in a transaction of its own, so that the files of one are
-- gone before the next.
CREATE TEMP TABLE disk (tab text, mode text, kept_per_row numeric,
                        temp_per_row numeric, ord int);
CREATE OR REPLACE PROCEDURE bench_disk()
LANGUAGE plpgsql AS $$
DECLARE
  c record;
  jpid int;
  n bigint;
  k numeric;
  t numeric;
BEGIN
  FOR c IN SELECT tab, mode, 10 * o + mo AS ord
             FROM (VALUES ('t', 1), ('tw', 2)) AS x(tab, o),
                  (VALUES ('default', 1), ('keep => false', 2), ('stream', 3)) AS m(mode, mo)
            ORDER BY 3 LOOP
    jpid := bg_launch(format('SELECT * FROM %s', c.tab), stream => c.mode = 'stream',
                      keep => c.mode = 'default');
    EXECUTE format('SELECT count(*) FROM bg_result_%s', jpid) INTO n;
    SELECT round(coalesce(sum(size), 0)::numeric / n, 1) INTO t FROM pg_ls_tmpdir();
    PERFORM bg_wait(jpid);
    SELECT round(coalesce(j.kept_bytes, 0)::numeric / n, 1) INTO k
      FROM bg_jobs j WHERE j.pid = jpid ORDER BY j.id DESC LIMIT 1;
    PERFORM bg_detach(jpid);
    INSERT INTO disk VALUES (c.tab, c.mode, k, t, c.ord);
    COMMIT;
  END LOOP;
END
$$;
CALL bench_disk();
\echo
\echo Disk bytes written per result row, by mode
SELECT tab AS "table", mode, kept_per_row, temp_per_row FROM disk ORDER BY ord;

-- A reader away: the launching session holds the job in its transaction but
-- reads nothing until the job has ended, so the rows its queue cannot take
-- are set aside.  What the job's file set holds of them then, per result
-- row (the kept file's second name there, "kept", is not a copy and is not
-- counted), and the kept file's size.
CREATE OR REPLACE FUNCTION bench_set_aside() RETURNS bigint
LANGUAGE sql AS $$
  SELECT coalesce(sum((pg_stat_file(format('%s/%s/%s', dir, d, f))).size), 0)::bigint
    FROM (SELECT 'base/pgsql_tmp' AS dir) b,
         LATERAL pg_ls_dir(b.dir, true, false) d,
         LATERAL pg_ls_dir(format('%s/%s', b.dir, d), true, false) f
   WHERE d LIKE '%.fileset' AND f <> 'kept'
$$;
CREATE TEMP TABLE away (tab text, mode text, kept_per_row numeric,
                        set_aside_per_row numeric, ord int);
CREATE OR REPLACE PROCEDURE bench_away()
LANGUAGE plpgsql AS $$
DECLARE
  c record;
  jpid int;
  n bigint;
  a numeric;
  k numeric;
BEGIN
  FOR c IN SELECT tab, mode, 10 * o + mo AS ord
             FROM (VALUES ('t', 1), ('tw', 2)) AS x(tab, o),
                  (VALUES ('default', 1), ('keep => false', 2)) AS m(mode, mo)
            ORDER BY 3 LOOP
    jpid := bg_launch(format('SELECT * FROM %s', c.tab), keep => c.mode = 'default');
    WHILE (SELECT state FROM bg_jobs WHERE pid = jpid ORDER BY id DESC LIMIT 1) = 'running' LOOP
      PERFORM pg_sleep(0.01);
    END LOOP;
    a := bench_set_aside();
    EXECUTE format('SELECT count(*) FROM bg_result_%s', jpid) INTO n;
    SELECT coalesce(j.kept_bytes, 0) INTO k
      FROM bg_jobs j WHERE j.pid = jpid ORDER BY j.id DESC LIMIT 1;
    INSERT INTO away VALUES (c.tab, c.mode, round(k / n, 1), round(a / n, 1), c.ord);
    PERFORM bg_detach(jpid);
    COMMIT;
  END LOOP;
END
$$;
CALL bench_away();
\echo
\echo Disk bytes per result row with the reader away until the job ended
SELECT tab AS "table", mode, kept_per_row, set_aside_per_row FROM away ORDER BY ord;

-- Reading a kept result later, as any session would once its launcher has
-- let it go: from the job's file, every row's CRC checked, against the same
-- aggregate over the table the job read.
SELECT bg_launch('SELECT a, b FROM t') AS later_t \gset
SELECT bg_launch('SELECT * FROM tw') AS later_tw \gset
SELECT bg_wait(:later_t) IS NOT NULL AS t_done, bg_wait(:later_tw) IS NOT NULL AS tw_done \gset
SELECT bg_detach(:later_t), bg_detach(:later_tw) \gset
CREATE SCHEMA IF NOT EXISTS later;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:later_t, bg_result_:later_tw)
  FROM SERVER bg_server INTO later;
TRUNCATE timings;
CREATE TEMP TABLE cases6 (name text, job text, q text, ord int);
INSERT INTO cases6 VALUES
 ('SELECT a, b FROM t: direct query', NULL, 'SELECT count(*), sum(length(b)) FROM t', 1),
 ('SELECT a, b FROM t: its kept result, read later', NULL,
  format('SELECT count(*), sum(length(b)) FROM later.bg_result_%s', :later_t), 2),
 ('SELECT * FROM tw: direct query', NULL, 'SELECT count(*), sum(c1) FROM tw', 3),
 ('SELECT * FROM tw: its kept result, read later', NULL,
  format('SELECT count(*), sum(c1) FROM later.bg_result_%s', :later_tw), 4);
CALL bench_rounds('cases6', 5);
\echo
\echo Reading a kept result later, :rows rows, from its file
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('SELECT a, b FROM t: direct query')
 WHERE "case" LIKE 'SELECT a, b%';
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('SELECT * FROM tw: direct query')
 WHERE "case" LIKE 'SELECT * FROM tw%';
DROP SCHEMA later CASCADE;
SELECT bg_forget(:later_t), bg_forget(:later_tw) \gset

-- Compute-bound: the job computes its rows while the reader consumes them.
TRUNCATE timings;
CREATE TEMP TABLE cases2 (name text, job text, q text, ord int);
INSERT INTO cases2 VALUES
 ('direct query', NULL,
  format('SELECT count(*), sum(length(h)) FROM (SELECT g, md5(g::text) AS h FROM generate_series(1, %s) g) s', :rows), 1),
 ('bg_result_<pid> table', format('SELECT g, md5(g::text) AS h FROM generate_series(1, %s) g', :rows),
  'SELECT count(*), sum(length(h)) FROM bg_result_%s', 2),
 ('bg_result_<pid>, stream mode', format('SELECT g, md5(g::text) AS h FROM generate_series(1, %s) g', :rows),
  'SELECT count(*), sum(length(h)) FROM bg_result_%s', 3),
 ('dblink', NULL,
  format($q$SELECT count(*), sum(length(h)) FROM dblink('host=%s port=%s dbname=%s',
         'SELECT g, md5(g::text) AS h FROM generate_series(1, %s) g') AS r(g int, h text)$q$,
         split_part(current_setting('unix_socket_directories'), ',', 1),
         current_setting('port'), current_database(), :rows), 4);
CALL bench_rounds('cases2', 5);
\echo
\echo Compute-bound: SELECT g, md5(g::text) FROM generate_series(1, :rows), aggregated over the result
SELECT "case", median_ms, ratio AS ratio_to_direct FROM bench_report('direct query');

-- Concurrency (2 cores): compute-bound queries run one after the other in
-- the foreground, against the same queries launched at once as jobs and
-- read together: two joined, eight with UNION ALL; 1,000,000 rows each
-- whatever the size of the throughput tables.
CREATE OR REPLACE FUNCTION bench_jobs(n int, combine text) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  pids int[] := '{}';
  q text;
BEGIN
  FOR i IN 1..n LOOP
    pids := pids || bg_launch(format(
      'SELECT g, md5((g + %s)::text) AS h FROM generate_series(1, %s) g', i, current_setting('bench.rows')));
  END LOOP;
  IF combine = 'join' THEN
    q := format('SELECT count(*) FROM bg_result_%s a JOIN bg_result_%s b USING (g) WHERE a.h <> b.h',
                pids[1], pids[2]);
  ELSE
    SELECT 'SELECT count(*), sum(length(h)) FROM (' ||
           string_agg(format('SELECT h FROM bg_result_%s', p), ' UNION ALL ') || ') u'
      INTO q FROM unnest(pids) p;
  END IF;
  EXECUTE q;
  PERFORM bg_detach(p) FROM unnest(pids) p;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END
$$;
SELECT set_config('bench.rows', '1000000', false) \gset
TRUNCATE timings;
CREATE OR REPLACE PROCEDURE bench_concurrency(rounds int)
LANGUAGE plpgsql AS $$
DECLARE
  n text := current_setting('bench.rows');
  one text := format('SELECT g, md5((g + %%s)::text) AS h FROM generate_series(1, %s) g', n);
BEGIN
  -- the foreground runs its queries one at a time, without parallel workers
  PERFORM set_config('max_parallel_workers_per_gather', '0', false);
  FOR r IN 1..rounds LOOP
    INSERT INTO timings (name, ms) VALUES ('two queries one after the other, joined',
      bench_ms(format('SELECT count(*) FROM (%s) a JOIN (%s) b USING (g) WHERE a.h <> b.h',
                      format(one, 1), format(one, 2))));
    COMMIT;
    INSERT INTO timings (name, ms) VALUES ('two jobs at once, their results joined',
      bench_jobs(2, 'join'));
    COMMIT;
    INSERT INTO timings (name, ms) VALUES ('eight queries one after the other',
      bench_ms((SELECT 'SELECT count(*), sum(length(h)) FROM (' ||
                       string_agg(format(one, i), ' UNION ALL ') || ') u'
                  FROM generate_series(1, 8) i)));
    COMMIT;
    INSERT INTO timings (name, ms) VALUES ('eight jobs at once, read with UNION ALL',
      bench_jobs(8, 'union'));
    COMMIT;
  END LOOP;
END
$$;
CALL bench_concurrency(3);
RESET max_parallel_workers_per_gather;
\echo
\echo Concurrency: SELECT g, md5(g::text) over 1000000 rows per query, medians of 3
SELECT "case", median_ms, ratio AS ratio_to_foreground
  FROM bench_report('two queries one after the other, joined') WHERE "case" LIKE 'two%';
SELECT "case", median_ms, ratio AS ratio_to_foreground
  FROM bench_report('eight queries one after the other') WHERE "case" LIKE 'eight%';
