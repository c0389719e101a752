-- bg_fdw benchmark, wide rows at scale: :rows rows of 20 columns of mixed
-- types, read in each mode, 3 rounds side by side.  The default mode keeps
-- the result in the job's file; the reading session keeps no second copy
-- past work_mem, so the default mode is to stay within 1.5 times stream
-- mode, which keeps nothing.  Run by bench/run.sh, or alone with
-- bench/wide.sh.
\set ON_ERROR_STOP 1
CREATE EXTENSION IF NOT EXISTS bg_fdw;
\ir lib.sql
-- a kept result of this size is past the default bound of 1GB
SET bg_fdw.max_result_size = -1;

DROP TABLE IF EXISTS tw10;
CREATE TABLE tw10 AS
  SELECT g::int8 AS c1, g::numeric * 1.5 AS c2, md5(g::text) AS c3,
         timestamptz '2020-01-01' + g * interval '1 second' AS c4,
         jsonb_build_object('k', g, 'v', md5(g::text)) AS c5, g % 2 = 0 AS c6,
         date '2020-01-01' + g % 1000 AS c7, g / 7.0::float8 AS c8, (g % 100)::int2 AS c9,
         g::int4 AS c10, repeat('x', g % 20) AS c11, g::numeric(12, 2) AS c12,
         interval '1 hour' * (g % 24) AS c13, (g % 255)::text AS c14, g::float4 AS c15,
         md5((g + 1)::text)::uuid AS c16, time '00:00' + g % 86400 * interval '1 s' AS c17,
         g::int8 * 3 AS c18, ('p' || g)::varchar(20) AS c19, g % 3 = 0 AS c20
    FROM generate_series(1, :rows) g;
VACUUM ANALYZE tw10;
CREATE TEMP TABLE cases_wide (name text, job text, q text, ord int);
INSERT INTO cases_wide VALUES
 ('direct query', NULL, 'SELECT count(*), sum(c1) FROM tw10', 1),
 ('bg_result_<pid> table', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 2),
 ('bg_result_<pid>, keep => false', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 3),
 ('bg_result_<pid>, stream mode', 'SELECT * FROM tw10',
  'SELECT count(*), sum(c1) FROM bg_result_%s', 4);
CALL bench_rounds('cases_wide', 3);
\echo
\echo 20 mixed columns, :rows rows, count(*) and sum(c1) over the result; medians of 3
SELECT "case", median_ms, ratio AS ratio_to_stream
  FROM bench_report('bg_result_<pid>, stream mode');
DROP TABLE tw10;
