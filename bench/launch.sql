-- bg_fdw benchmark, launch latency; run by bench/run.sh after bench.sql
-- (which defines bench_report), once on the benchmark's cluster as it is
-- and once with the server settings that README suggests for it.
\set ON_ERROR_STOP 1
-- Launch latency: bg_launch of a one-row query plus reading it, against
-- dblink's connect + query + disconnect, 200 of each, interleaved.
-- Each case is timed through the commit of its transaction, as a client in
-- autocommit would wait for it: a launch commits the creation (and, with
-- bg_detach, the drop) of its result table.
CREATE OR REPLACE PROCEDURE bench_launch_1(name text)
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  pid int;
BEGIN
  pid := bg_launch('SELECT 1 AS x');
  EXECUTE format('SELECT x FROM bg_result_%s', pid);
  PERFORM bg_detach(pid);
  COMMIT;
  INSERT INTO timings (name, ms) VALUES (name, extract(epoch FROM clock_timestamp() - t0) * 1000);
  COMMIT;
END
$$;
CREATE OR REPLACE PROCEDURE bench_dblink_1()
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
BEGIN
  PERFORM * FROM dblink(format('host=%s port=%s dbname=%s',
                               split_part(current_setting('unix_socket_directories'), ',', 1),
                               current_setting('port'), current_database()),
                        'SELECT 1') AS r(x int);
  COMMIT;
  INSERT INTO timings (name, ms) VALUES ('dblink connect + query + disconnect',
                                         extract(epoch FROM clock_timestamp() - t0) * 1000);
  COMMIT;
END
$$;
-- The same without a result table: no catalog row is written or dropped.
CREATE OR REPLACE PROCEDURE bench_launch_no_table()
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
BEGIN
  PERFORM x FROM bg_result(bg_launch('SELECT 1 AS x', result_table => false)) AS r(x int);
  COMMIT;
  INSERT INTO timings (name, ms) VALUES ('bg_launch, result_table => false, + bg_result',
                                         extract(epoch FROM clock_timestamp() - t0) * 1000);
  COMMIT;
END
$$;
-- The autonomous-transaction pattern: an audit row written by a job the
-- caller waits for, against dblink_exec with its own connection.
CREATE TABLE IF NOT EXISTS bench_audit (at timestamptz DEFAULT now(), who text);
CREATE OR REPLACE PROCEDURE bench_audit_1(how text)
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  ins text := 'INSERT INTO bench_audit (who) VALUES (current_user)';
BEGIN
  IF how = 'bg_fdw' THEN
    PERFORM bg_wait(bg_launch(ins, result_table => false));
  ELSE
    PERFORM dblink_exec(format('host=%s port=%s dbname=%s',
                               split_part(current_setting('unix_socket_directories'), ',', 1),
                               current_setting('port'), current_database()), ins);
  END IF;
  COMMIT;
  INSERT INTO timings (name, ms)
    VALUES (CASE how WHEN 'bg_fdw' THEN 'audit: bg_wait(bg_launch(INSERT, result_table => false))'
                     ELSE 'audit: dblink_exec with connect' END,
            extract(epoch FROM clock_timestamp() - t0) * 1000);
  COMMIT;
END
$$;
-- The job registry's share: the same launch with the registry table
-- renamed away, which bg_launch and the worker take as "not installed".
CREATE OR REPLACE PROCEDURE bench_launch_rounds(n int)
LANGUAGE plpgsql AS $$
BEGIN
  FOR r IN 1..n LOOP
    CALL bench_dblink_1();
    CALL bench_launch_1('bg_launch + read one row');
    CALL bench_launch_no_table();
    CALL bench_audit_1('dblink');
    CALL bench_audit_1('bg_fdw');
    ALTER TABLE bg_job_registry RENAME TO bg_job_registry_bench;
    COMMIT;
    CALL bench_launch_1('the same without the job registry');
    ALTER TABLE bg_job_registry_bench RENAME TO bg_job_registry;
    COMMIT;
  END LOOP;
END
$$;
CREATE TEMP TABLE IF NOT EXISTS timings (seq serial, name text, ms float8);
TRUNCATE timings;
CALL bench_launch_rounds(200);
\echo
\echo Launch latency, median of 200:title
SELECT "case", median_ms, ratio AS ratio_to_dblink
  FROM bench_report('dblink connect + query + disconnect')
 WHERE "case" NOT LIKE 'audit:%';
SELECT "case", median_ms, ratio AS ratio_to_dblink_exec
  FROM bench_report('audit: dblink_exec with connect')
 WHERE "case" LIKE 'audit:%';
