-- bg_fdw benchmark, wide rows at scale: :rows rows of 20 columns of mixed
-- types, read in each mode, :rounds rounds side by side (default 5).  The
-- default mode keeps the result in the job's file; the reading session
-- keeps no second copy past work_mem, so the default mode is to stay within
-- 1.5 times stream mode, which keeps nothing.  Run by bench/run.sh, or
-- alone with bench/wide.sh.
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS bg_fdw;
\ir lib.sql
\if :{?rounds}
\else
\set rounds 5
\endif
-- a kept result of this size is past the default bound of 1GB
SET bg_fdw.max_result_size = -1;

CALL bench_make_wide('tw10', :rows);
VACUUM ANALYZE tw10;
-- what loading and vacuuming the table left dirty is written out now, not
-- by the checkpointer during the rounds, where it would take the disk from
-- the kept files being written
CHECKPOINT;
CREATE TEMP TABLE cases_wide (name text, job text, q text, ord int);
INSERT INTO cases_wide VALUES
 ('direct query', NULL, 'SELECT count(*), sum(c1) FROM tw10', 1),
 ('bg_result_<pid> table', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 2),
 ('bg_result_<pid>, keep => false', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 3),
 ('bg_result_<pid>, stream mode', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 4);
CALL bench_rounds('cases_wide', :rounds);
\echo
\echo 20 mixed columns, :rows rows, count(*) and sum(c1) over the result; medians of :rounds
SELECT "case", median_ms, ratio AS ratio_to_stream
  FROM bench_report('bg_result_<pid>, stream mode');
DROP TABLE tw10;
