-- A short tour of bg_fdw, run by scripts/demo.sh on a scratch cluster.
CREATE EXTENSION bg_fdw;
CREATE TABLE orders AS
  SELECT g AS id, (g % 1000) AS customer, (g % 97)::numeric AS total
  FROM generate_series(1, 200000) g;

-- Run a query in the background; its result is a foreign table at once.
SELECT bg_launch('SELECT customer, sum(total) AS total FROM orders GROUP BY customer') AS pid \gset
\d bg_result_:pid
SELECT * FROM bg_result_:pid ORDER BY total DESC LIMIT 3;
-- Reading again gives the same rows.
SELECT count(*) FROM bg_result_:pid;

-- Two jobs at once, joined while they run.
SELECT bg_launch('SELECT id, total FROM orders WHERE id % 2 = 0') AS a \gset
SELECT bg_launch('SELECT id, customer FROM orders WHERE id % 3 = 0') AS b \gset
SELECT count(*), sum(total) FROM bg_result_:a JOIN bg_result_:b USING (id);

-- Maintenance in the background, with its INFO lines relayed here.
SELECT bg_launch('VACUUM (VERBOSE) orders') AS v \gset
SELECT * FROM bg_result_:v;

-- CREATE INDEX CONCURRENTLY, waited for without holding a snapshot.
SELECT bg_launch('CREATE INDEX CONCURRENTLY orders_customer ON orders (customer)') AS i \gset
CALL bg_await(:i);
SELECT indisvalid FROM pg_index WHERE indexrelid = 'orders_customer'::regclass;

-- An autonomous transaction: the job commits although we roll back.
CREATE TABLE audit (note text);
BEGIN;
SELECT bg_launch($$INSERT INTO audit VALUES ('kept')$$) AS x \gset
SELECT bg_wait(:x);
ROLLBACK;
SELECT * FROM audit;

-- A failing job raises its error, naming the job, wherever it is read.
SELECT bg_launch('SELECT 1 / 0') AS f \gset
\set ON_ERROR_STOP 0
SELECT * FROM bg_result_:f;
\set ON_ERROR_STOP 1

-- The plan shows which job a table reads.
EXPLAIN SELECT * FROM bg_result_:pid;
