-- bg_fdw benchmark, launch latency; run by bench/run.sh after bench.sql
-- (which defines bench_report), once on the benchmark's cluster as it is
-- and once with the server settings that README suggests for it.
\set ON_ERROR_STOP 1
-- Launch latency: bg_launch of a one-row query plus reading it, against
-- dblink's connect + query + disconnect, 200 of each, interleaved.
-- Each case is timed through the commit of its transaction, as a client in
-- autocommit would wait for it: a launch commits the creation (and, with
-- bg_detach, the drop) of its result table.
-- One case: run "sql" and commit, timed, as a client in autocommit waits.
CREATE OR REPLACE PROCEDURE bench_time(name text, sql text)
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
BEGIN
  EXECUTE sql;
  COMMIT;
  INSERT INTO timings (name, ms) VALUES (name, extract(epoch FROM clock_timestamp() - t0) * 1000);
  COMMIT;
END
$$;
CREATE TABLE IF NOT EXISTS bench_audit (at timestamptz DEFAULT now(), who text);
-- Without a result table no catalog row is written or dropped.  The audit
-- rows are the autonomous-transaction pattern: a row written by a job the
-- caller waits for, against dblink_exec with its own connection.
CREATE OR REPLACE PROCEDURE bench_launch_rounds(n int)
LANGUAGE plpgsql AS $$
DECLARE
  conn text := format('host=%s port=%s dbname=%s',
                      split_part(current_setting('unix_socket_directories'), ',', 1),
                      current_setting('port'), current_database());
  launch text := $q$DO $d$DECLARE p int := bg_launch('SELECT 1 AS x');
                    BEGIN EXECUTE format('SELECT x FROM bg_result_%s', p); PERFORM bg_detach(p); END $d$ $q$;
  ins text := 'INSERT INTO bench_audit (who) VALUES (current_user)';
BEGIN
  FOR r IN 1..n LOOP
    CALL bench_time('dblink connect + query + disconnect',
                    format('SELECT * FROM dblink(%L, %L) AS r(x int)', conn, 'SELECT 1'));
    CALL bench_time('bg_launch + read one row', launch);
    CALL bench_time('bg_launch, result_table => false, + bg_result',
                    $q$SELECT x FROM bg_result(bg_launch('SELECT 1 AS x', result_table => false)) AS r(x int)$q$);
    CALL bench_time('audit: dblink_exec with connect',
                    format('SELECT dblink_exec(%L, %L)', conn, ins));
    CALL bench_time('audit: bg_wait(bg_launch(INSERT, result_table => false))',
                    format('SELECT bg_wait(bg_launch(%L, result_table => false))', ins));
  END LOOP;
END
$$;
-- The job registry's share, in rounds of their own: the same launch with
-- the registry table renamed away, which bg_launch and the worker take as
-- "not installed" (no job is kept, listed or handed to an idle worker, so
-- each starts a process, whose start and exit would weigh on the other
-- cases).  A rename makes every cache that knows the registry load again:
-- one launch after each, untimed, so that neither case pays for the other.
CREATE OR REPLACE PROCEDURE bench_registry_rounds(n int)
LANGUAGE plpgsql AS $$
DECLARE
  launch text := $q$DO $d$DECLARE p int := bg_launch('SELECT 1 AS x');
                    BEGIN EXECUTE format('SELECT x FROM bg_result_%s', p); PERFORM bg_detach(p); END $d$ $q$;
BEGIN
  FOR r IN 1..n LOOP
    CALL bench_time('registry: bg_launch + read one row', launch);
    ALTER TABLE bg_job_registry RENAME TO bg_job_registry_bench;
    COMMIT;
    EXECUTE launch;
    COMMIT;
    CALL bench_time('registry: the same without the job registry', launch);
    ALTER TABLE bg_job_registry_bench RENAME TO bg_job_registry;
    COMMIT;
    EXECUTE launch;
    COMMIT;
  END LOOP;
END
$$;
CREATE TEMP TABLE IF NOT EXISTS timings (seq serial, name text, ms float8);
TRUNCATE timings;
CALL bench_launch_rounds(200);
CALL bench_registry_rounds(50);
\echo
\echo Launch latency, median of 200:title
SELECT "case", median_ms, ratio AS ratio_to_dblink
  FROM bench_report('dblink connect + query + disconnect')
 WHERE "case" NOT LIKE 'audit:%' AND "case" NOT LIKE 'registry:%';
SELECT "case", median_ms, ratio AS ratio_to_dblink_exec
  FROM bench_report('audit: dblink_exec with connect')
 WHERE "case" LIKE 'audit:%';
\echo The share of the job registry, median of 50
SELECT "case", median_ms, ratio AS ratio_to_with_registry
  FROM bench_report('registry: bg_launch + read one row')
 WHERE "case" LIKE 'registry:%';
