--
-- bg_fdw: the extension, and the helpers the other test files use
--
-- Every other file needs this one and no other: run "setup" first, then
-- any of them.
CREATE EXTENSION bg_fdw;

-- The server has room for the jobs the tests run at once, and runs out of
-- it where sql/errors.sql expects (README: "make installcheck")
SELECT current_setting('max_worker_processes')::int BETWEEN 12 AND 40 AS worker_slots_fit;

-- Every job here starts a worker of its own, which its PID names (the tests
-- look for it in pg_stat_activity by that PID); reused workers have tests
-- of their own, in t/010_pool.pl.
DO $$ BEGIN
  EXECUTE format('ALTER DATABASE %I SET bg_fdw.reuse_workers = off', current_database());
END $$;

-- Outcomes that carry a PID or a job identifier are masked so the expected
-- output does not depend on them.
CREATE FUNCTION regress_mask(msg text, pid int) RETURNS text
LANGUAGE sql AS $$
  SELECT regexp_replace(regexp_replace(regexp_replace(msg,
           '(?<!\d)' || pid || '(?!\d)', '<pid>', 'g'),
           '([Bb]ackground job |bg_await\(|bg_result_|bg_result\()\d+', '\1<pid>', 'g'),
           '\m\d{16,}\M', '<job>', 'g')
$$;

CREATE FUNCTION regress_try(sql text, pid int DEFAULT 0) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
  st text; msg text; det text; hnt text; ctx text;
BEGIN
  EXECUTE sql;
  RETURN 'ok';
EXCEPTION WHEN OTHERS OR query_canceled THEN
  GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT,
    det = PG_EXCEPTION_DETAIL, hnt = PG_EXCEPTION_HINT, ctx = PG_EXCEPTION_CONTEXT;
  -- the SQLSTATE stays unmasked: a job's PID may happen to equal it
  RETURN st || ': ' || regress_mask(msg
    || coalesce(E'\nDETAIL: ' || nullif(det, ''), '')
    || coalesce(E'\nHINT: ' || nullif(hnt, ''), '')
    || coalesce(E'\nCONTEXT: ' || (SELECT string_agg(l, ' / ')
                                   FROM regexp_split_to_table(ctx, E'\n') l
                                   WHERE l LIKE 'background job%'), ''),
    pid);
END
$$;

-- EXPLAIN with the PID masked
CREATE FUNCTION regress_explain(query text, pid int) RETURNS SETOF text
LANGUAGE plpgsql AS $$
DECLARE
  line text;
BEGIN
  FOR line IN EXECUTE 'EXPLAIN (COSTS OFF' ||
      CASE WHEN query LIKE '(VERBOSE)%' THEN ', VERBOSE) ' || substr(query, 10)
           ELSE ') ' || query END LOOP
    RETURN NEXT regress_mask(line, pid);
  END LOOP;
END
$$;

-- Poll until a condition holds (never a fixed sleep).  It gives up, false,
-- only after five minutes, so that a test fails instead of hanging when the
-- state it waits for never comes, however slow the machine.
CREATE FUNCTION regress_poll(cond text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
  done boolean;
  give_up timestamptz := clock_timestamp() + interval '5 min';
BEGIN
  LOOP
    EXECUTE 'SELECT ' || cond INTO done;
    IF done THEN
      RETURN true;
    END IF;
    IF clock_timestamp() > give_up THEN
      RETURN false;
    END IF;
    PERFORM pg_sleep(0.05);
    PERFORM pg_stat_clear_snapshot();
  END LOOP;
END
$$;
-- Poll until no job of this database runs (other databases of the server
-- may have theirs).
CREATE FUNCTION regress_no_workers() RETURNS boolean
LANGUAGE sql AS $$
  SELECT regress_poll($c$NOT EXISTS (SELECT FROM pg_stat_activity
                                     WHERE backend_type = 'bg_fdw worker'
                                       AND datname = current_database())$c$)
$$;

-- Poll until a job's statement is running.
CREATE FUNCTION regress_wait_active(p int) RETURNS boolean
LANGUAGE sql AS $$
  SELECT regress_poll(format('EXISTS (SELECT FROM pg_stat_activity WHERE pid = %s AND state = %L)',
                             p, 'active'))
$$;

-- Launch a job whose statement_timeout is 50ms.  The SET clause changes the
-- setting the job inherits, not the timer of the statement that calls
-- bg_launch (armed when that statement began), so only the job is timed
-- out, never the launch itself, however slow the machine.
CREATE FUNCTION regress_launch_timed_out(sql text) RETURNS int
LANGUAGE sql SET statement_timeout = '50ms' AS $$ SELECT bg_launch(sql) $$;
