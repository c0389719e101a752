-- One turn of bench/builds.sh: the build installed now, four cases
-- interleaved round by round over table t, one line of medians and ratios.
\set ON_ERROR_STOP 1
\ir lib.sql
CREATE TEMP TABLE cases (name text, job text, q text, ord int);
INSERT INTO cases VALUES
 ('direct query', NULL, 'SELECT count(*), sum(length(b)) FROM t', 1),
 ('table (keep)', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 2),
 ('table, keep => false', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 3),
 ('table, stream mode', 'SELECT a, b FROM t',
  'SELECT count(*), sum(length(b)) FROM bg_result_%s', 4);
CALL bench_rounds('cases', :rounds);
\pset footer off
\if :header
\else
\pset tuples_only on
\endif
SELECT :'build' AS build, :turn AS turn,
       max(median_ms) FILTER (WHERE "case" = 'direct query') AS direct_ms,
       max(median_ms) FILTER (WHERE "case" = 'table (keep)') AS keep_ms,
       max(median_ms) FILTER (WHERE "case" = 'table, keep => false') AS no_keep_ms,
       max(median_ms) FILTER (WHERE "case" = 'table, stream mode') AS stream_ms,
       round(max(median_ms) FILTER (WHERE "case" = 'table (keep)') /
             max(median_ms) FILTER (WHERE "case" = 'table, keep => false'), 2)
         AS keep_to_no_keep,
       round(max(median_ms) FILTER (WHERE "case" = 'table (keep)') /
             max(median_ms) FILTER (WHERE "case" = 'table, stream mode'), 2)
         AS keep_to_stream
  FROM bench_report('direct query');
