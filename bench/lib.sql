-- bg_fdw benchmark helpers, included by bench.sql and wide.sql: each case
-- is run in turn, round after round, so that every figure is taken side by
-- side with its comparisons, and the median of the rounds is reported with
-- its ratio to a baseline case.
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
-- A kept result is forgotten once its file is durable, outside the time:
-- the next case then starts with no writeback of this one's file going on.
CREATE OR REPLACE FUNCTION bench_case(name text, job text, q text) RETURNS float8
LANGUAGE plpgsql AS $$
DECLARE
  t0 timestamptz := clock_timestamp();
  pid int;
  ms float8;
BEGIN
  IF job IS NULL THEN
    EXECUTE q;
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
  END IF;
  pid := bg_launch(job, stream => name LIKE '%stream%',
                   keep => name NOT LIKE '%keep => false%');
  EXECUTE format(q, pid);
  PERFORM bg_detach(pid);
  ms := extract(epoch FROM clock_timestamp() - t0) * 1000;
  PERFORM bg_wait(pid);
  LOOP
    BEGIN
      PERFORM bg_forget(pid);
      RETURN ms;
    EXCEPTION WHEN object_in_use THEN
      -- its worker is still making the kept file durable
      PERFORM pg_sleep(0.01);
    END;
  END LOOP;
END
$$;

CREATE TEMP TABLE timings (seq serial, name text, ms float8);

-- Run every case of a cases table in turn, round after round, into timings.
-- Each case is a transaction of its own, as a client's statement would be:
-- bg_detach frees a job's spool when its transaction commits.
CREATE OR REPLACE PROCEDURE bench_rounds(cases regclass, rounds int)
LANGUAGE plpgsql AS $$
DECLARE
  c record;
BEGIN
  FOR r IN 1..rounds LOOP
    FOR c IN EXECUTE format('SELECT * FROM %s ORDER BY ord', cases) LOOP
      INSERT INTO timings (name, ms) VALUES (c.name, bench_case(c.name, c.job, c.q));
      COMMIT;
    END LOOP;
  END LOOP;
END
$$;

-- Medians of each case in timings, in the order first run, with the ratio
-- to the baseline case.
CREATE OR REPLACE FUNCTION bench_report(baseline text)
RETURNS TABLE ("case" text, median_ms numeric, ratio numeric)
LANGUAGE sql AS $$
  WITH m AS (
    SELECT name, min(seq) AS first,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY ms) AS med
      FROM timings GROUP BY name)
  SELECT name, round(med::numeric, 2),
         round((med / (SELECT med FROM m WHERE name = baseline))::numeric, 2)
    FROM m ORDER BY first
$$;

-- The table of 20 columns of mixed types that wide rows are measured on,
-- made afresh with "rows" rows.
CREATE OR REPLACE PROCEDURE bench_make_wide(name text, rows bigint)
LANGUAGE plpgsql AS $$
BEGIN
  EXECUTE format('DROP TABLE IF EXISTS %I', name);
  EXECUTE format($q$CREATE TABLE %I AS
  SELECT g::int8 AS c1, g::numeric * 1.5 AS c2, md5(g::text) AS c3,
         timestamptz '2020-01-01' + g * interval '1 second' AS c4,
         jsonb_build_object('k', g, 'v', md5(g::text)) AS c5, g %% 2 = 0 AS c6,
         date '2020-01-01' + g %% 1000 AS c7, g / 7.0::float8 AS c8, (g %% 100)::int2 AS c9,
         g::int4 AS c10, repeat('x', g %% 20) AS c11, g::numeric(12, 2) AS c12,
         interval '1 hour' * (g %% 24) AS c13, (g %% 255)::text AS c14, g::float4 AS c15,
         md5((g + 1)::text)::uuid AS c16, time '00:00' + g %% 86400 * interval '1 s' AS c17,
         g::int8 * 3 AS c18, ('p' || g)::varchar(20) AS c19, g %% 3 = 0 AS c20
    FROM generate_series(1, %s) g$q$, name, rows);
END
$$;
