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

CREATE OR REPLACE FUNCTION bench_ms(q text) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
BEGIN
  EXECUTE q;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END
$$;

-- One case: a query to time; "%s" in it stands for a job launched from
-- "job" just before the clock starts (launch time is then part of it).
CREATE OR REPLACE FUNCTION bench_case(name text, job text, q text) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  pid int;
BEGIN
  IF job IS NOT NULL THEN
    pid := bg_launch(job, stream => name LIKE '%stream%');
    EXECUTE format(q, pid);
    PERFORM bg_detach(pid);
  ELSE
    EXECUTE q;
  END IF;
  RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END
$$;

CREATE TEMP TABLE cases (name text, job text, q text, ord int);
INSERT INTO cases VALUES
 ('direct query', NULL, 'SELECT count(*), sum(length(b)) FROM t', 1),
 ('bg_result_<pid> table', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 2),
 ('bg_result_<pid>, stream mode', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 3),
 ('bg_result(pid)', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result(%s) AS r(a int, b text)', 4),
 ('dblink', NULL,
  format($q$SELECT count(*), sum(length(b)) FROM dblink('host=%s port=%s dbname=%s',
         'SELECT a, b FROM t') AS r(a int, b text)$q$,
         split_part(current_setting('unix_socket_directories'), ',', 1),
         current_setting('port'), current_database()), 5);

CREATE TEMP TABLE timings (name text, ms float8);
DO $$
DECLARE
  c record;
BEGIN
  FOR r IN 1..5 LOOP
    FOR c IN SELECT * FROM cases ORDER BY ord LOOP
      INSERT INTO timings VALUES (c.name, bench_case(c.name, c.job, c.q));
    END LOOP;
  END LOOP;
END
$$;

\echo
\echo Transport-bound: SELECT a, b FROM t, :rows rows, count(*) and sum(length(b)) over the result
SELECT c.name AS "case",
       round(percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)::numeric, 1) AS median_ms,
       round((percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) /
              (SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY ms)
                 FROM timings WHERE name = 'direct query'))::numeric, 2) AS ratio_to_direct
  FROM timings JOIN cases c USING (name)
 GROUP BY c.name, c.ord ORDER BY c.ord;
