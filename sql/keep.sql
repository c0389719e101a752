--
-- Kept results: a job keeps its result in a file of its own, readable by any
-- session with the privileges of its role until bg_forget or expiry.  Here
-- one session stands for the others: once it has detached a job, it reads
-- the job's result as any other session would.
--

-- Whether a job's kept file is there
CREATE FUNCTION regress_kept_file(job bigint) RETURNS boolean
LANGUAGE sql AS $$
  SELECT EXISTS (SELECT FROM pg_ls_dir(
    (SELECT 'base/' || oid || '/pgsql_tmp_bg_fdw' FROM pg_database
      WHERE datname = current_database()), true, false) f
    WHERE f = job::text)
$$;

-- Take advisory lock "lock" and launch a job of 30,010 rows of 100-byte pads
-- on a 64kB queue that blocks on it before its row 30,001
CREATE FUNCTION regress_blocked_job(lock int) RETURNS int
LANGUAGE sql AS $$
  SELECT pg_advisory_lock(lock);
  SELECT bg_launch(format($j$SELECT g, repeat('x', 100) AS pad,
                     CASE WHEN g = 30001 THEN pg_advisory_lock_shared(%s) END AS w
                     FROM generate_series(1, 30010) g$j$, lock), queue_size => 65536)
$$;

-- A result is kept by default: the file holds every row, in exact types
SELECT bg_launch($$SELECT g AS id, g::numeric / 7 AS frac, repeat('x', g % 50) AS pad
                   FROM generate_series(1, 20000) g$$) AS pid \gset
SELECT bg_wait(:pid);
SELECT id AS job FROM bg_jobs WHERE pid = :pid \gset
SELECT kept, kept_bytes > 20000 * 8 AS sized, regress_kept_file(:job) AS file
  FROM bg_jobs WHERE pid = :pid;
SELECT bg_detach(:pid);
-- read through bg_result, many times
SELECT count(*), sum(id), sum(frac)::numeric(20, 6), sum(length(pad))
  FROM bg_result(:pid) AS r(id int, frac numeric, pad text);
SELECT count(*) FROM bg_result(:pid) AS r(id int, frac numeric, pad text);
-- a column definition list must match
SELECT regress_try('SELECT * FROM bg_result(' || :pid || ') AS r(id bigint, frac numeric, pad text)', :pid);
-- through a table IMPORT FOREIGN SCHEMA makes, in a permanent schema
CREATE SCHEMA regress_reports;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:pid) FROM SERVER bg_server INTO regress_reports;
SELECT attname, format_type(atttypid, atttypmod)
  FROM pg_attribute
 WHERE attrelid = ('regress_reports.bg_result_' || :pid)::regclass AND attnum > 0
 ORDER BY attnum;
\set t regress_reports.bg_result_:pid
SELECT count(*), sum(id) FROM :t;
-- rescans under a nested loop, a self-join, a cursor that goes back
SET enable_hashjoin = off;
SET enable_mergejoin = off;
SET enable_material = off;
SELECT v.x, r.pad FROM (VALUES (3), (1), (2)) v(x) JOIN :t r ON r.id = v.x ORDER BY 1;
RESET enable_hashjoin;
RESET enable_mergejoin;
RESET enable_material;
SELECT count(*) FROM :t a JOIN :t b USING (id);
BEGIN;
DECLARE c SCROLL CURSOR FOR SELECT id FROM :t;
FETCH 2 FROM c;
FETCH ABSOLUTE 1 FROM c;
FETCH LAST FROM c;
COMMIT;
-- through a table made by hand, naming the job by its identifier
CREATE FOREIGN TABLE regress_reports.by_hand (id int, frac numeric, pad text)
  SERVER bg_server OPTIONS (pid :'pid', job :'job');
SELECT max(id) FROM regress_reports.by_hand;
-- long rows, some longer than the worker's write buffer, read while a
-- filter allocates between them
SELECT bg_launch($$SELECT g AS id, repeat(chr(65 + g % 26), 20000 + g + (g % 10 = 0)::int * 1100000) AS pad
                   FROM generate_series(1, 50) g$$) AS long \gset
SELECT bg_wait(:long);
SELECT bg_detach(:long);
CREATE FOREIGN TABLE regress_reports.long (id int, pad text)
  SERVER bg_server OPTIONS (pid :'long');
SELECT count(*) FILTER (WHERE pad = repeat(chr(65 + id % 26), 20000 + id + (id % 10 = 0)::int * 1100000)) AS intact,
       min(xmin::text) AS xmin
  FROM regress_reports.long WHERE lower(pad) IS NOT NULL;
-- one whose columns do not match is an error, not garbage
CREATE FOREIGN TABLE regress_reports.wrong (id text, frac numeric, pad text)
  SERVER bg_server OPTIONS (pid :'pid', job :'job');
SELECT regress_try('SELECT * FROM regress_reports.wrong', :pid);
-- plain EXPLAIN does not open it
SELECT regress_explain('SELECT * FROM regress_reports.by_hand', :pid);

-- A role without the privileges of the job's role may not read it
CREATE ROLE regress_outsider;
SET ROLE regress_outsider;
SELECT regress_try('SELECT count(*) FROM bg_result(' || :pid || ') AS r(id int, frac numeric, pad text)', :pid);
SELECT kept, kept_bytes FROM bg_jobs WHERE pid = :pid;
RESET ROLE;

-- A job that returns only a command tag keeps it in its registry row: no
-- file
CREATE TABLE regress_keep_t (x int);
SELECT bg_launch('INSERT INTO regress_keep_t SELECT generate_series(1, 3)') AS ins \gset
SELECT bg_wait(:ins);
SELECT bg_detach(:ins);
SELECT kept, kept_bytes FROM bg_jobs WHERE pid = :ins;
SELECT * FROM bg_result(:ins) AS r(command text);
SELECT id AS ins_job FROM bg_jobs WHERE pid = :ins \gset
SELECT regress_kept_file(:ins_job) AS file;

-- keep => false and stream mode keep nothing once the session lets go
SELECT bg_launch('SELECT 1 AS one', keep => false) AS nokeep \gset
SELECT bg_wait(:nokeep);
SELECT kept, kept_bytes FROM bg_jobs WHERE pid = :nokeep;
SELECT bg_detach(:nokeep);
SELECT regress_try('SELECT * FROM bg_result(' || :nokeep || ') AS r(one int)', :nokeep);
SELECT bg_launch('SELECT 1 AS one', stream => true) AS streamed \gset
SELECT * FROM bg_result(:streamed) AS r(one int);
SELECT kept FROM bg_jobs WHERE pid = :streamed;
SELECT bg_detach(:streamed);

-- A failed job keeps nothing, and reading it raises its error
SELECT bg_launch('SELECT g / (g - 5000) FROM generate_series(1, 10000) g') AS failed \gset
SELECT regress_try('SELECT bg_wait(' || :failed || ')', :failed);
SELECT id AS failed_job FROM bg_jobs WHERE pid = :failed \gset
SELECT bg_detach(:failed);
SELECT kept, kept_bytes, regress_kept_file(:failed_job) AS file
  FROM bg_jobs WHERE pid = :failed;
SELECT regress_try('SELECT * FROM bg_result(' || :failed || ') AS r(x int)', :failed);

-- The launching session reads the rows of a kept result past work_mem from
-- the job's file and writes no file of its own (temp_file_limit = 0 allows
-- none); it holds the file open while it holds the job, so that the rows
-- stay readable here after bg_forget removed the job for everyone else.
-- (It reads the job before a commit: at a commit, or while the session is
-- idle, an ended job nobody read lets its segment go, and is then read from
-- the kept file as in any other session.)
SET work_mem = '64kB';
SELECT md5(string_agg(md5(g::text), '')) AS want FROM generate_series(1, 50000) g \gset
BEGIN;
SELECT bg_launch('SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g') AS big \gset
SET temp_file_limit = 0;
SELECT count(*), sum(g), md5(string_agg(h, '')) = :'want' AS same FROM bg_result_:big;
COMMIT;
SELECT max(id) AS big_job FROM bg_jobs WHERE pid = :big \gset
SELECT bg_forget(:big);
SELECT count(*) AS listed, regress_kept_file(:big_job) AS file
  FROM bg_jobs WHERE id = :big_job;
SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) AS intact
  FROM bg_result_:big;
RESET temp_file_limit;
RESET work_mem;
SELECT bg_detach(:big);

-- bg_forget at once after bg_wait, in a repeatable read transaction whose
-- snapshot predates the job, finds the job to forget (and t/006_keep.pl
-- has bg_forget come before the worker has recorded the kept result).
CREATE FUNCTION regress_wait_forget() RETURNS bigint
LANGUAGE plpgsql AS $f$
DECLARE
  p int;
  j bigint;
BEGIN
  p := bg_launch($q$SELECT g, repeat('x', 500) AS pad FROM generate_series(1, 20000) g$q$);
  SELECT max(id) INTO j FROM bg_jobs WHERE pid = p;
  PERFORM bg_wait(p);
  PERFORM bg_forget(p);
  PERFORM bg_detach(p);
  RETURN j;
END
$f$;
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT count(*) > 0 AS snapshot_taken FROM pg_class;
SELECT regress_wait_forget() AS dur_job \gset
COMMIT;
SELECT count(*) AS listed, regress_kept_file(:dur_job) AS file
  FROM bg_jobs WHERE id = :dur_job;
DROP FUNCTION regress_wait_forget();

-- A reader away while the job runs: the rows its small queue cannot take
-- are only in the job's kept file (no second file), from where the reader,
-- back, takes them, and what is left when the job has ended.
SELECT pg_advisory_lock(4245);
SELECT bg_launch($$SELECT g, md5(g::text) AS h,
                   CASE WHEN g = 30000 THEN pg_advisory_lock_shared(4245) END AS w
                   FROM generate_series(1, 60000) g$$, queue_size => 65536) AS away \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :away || ')') AS job_waits;
SELECT pg_advisory_unlock(4245);
SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) AS intact
  FROM bg_result_:away;
SELECT bg_detach(:away);
-- Back while the job is still blocked: the reader takes what the queue
-- holds, then reads on from the kept file rather than wait for the worker,
-- which pushes the rows it left there only as it produces more.  Rows up
-- to 20,000 are written out: the job appended more than its 1 MB write
-- buffer after them (10,000 rows of 129 bytes) before it blocked.
SELECT regress_blocked_job(4246) AS blocked \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :blocked || ')') AS job_waits;
BEGIN;
DECLARE c CURSOR FOR SELECT g, pad = repeat('x', 100) AS intact FROM bg_result_:blocked;
MOVE 19999 IN c;
FETCH c;
SELECT state FROM bg_jobs WHERE pid = :blocked;
COMMIT;
SELECT pg_advisory_unlock(4246);
-- the session holds the kept file it reads: a bg_forget takes no row from it
SELECT regress_poll(format('(SELECT state = %L AND kept FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                           'finished', :blocked)) AS blocked_kept;
SELECT max(id) AS blocked_job FROM bg_jobs WHERE pid = :blocked \gset
SELECT bg_forget(:blocked);
SELECT regress_kept_file(:blocked_job) AS file;
SELECT count(*), sum(g), count(*) FILTER (WHERE pad = repeat('x', 100)) AS intact
  FROM bg_result_:blocked;
SELECT bg_detach(:blocked);
-- A job cancelled after its session read on from its kept file: the file
-- goes with the failure, and the rows the session took are not copied to
-- a file of its own (they are never read: the job's error is)
SELECT regress_blocked_job(4247) AS cancelled \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :cancelled || ')') AS job_waits;
BEGIN;
DECLARE c CURSOR FOR SELECT g FROM bg_result_:cancelled;
MOVE 19999 IN c;
FETCH c;
COMMIT;
SELECT bg_cancel(:cancelled);
SELECT pg_advisory_unlock(4247);
SELECT regress_poll(format('(SELECT state = %L FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                           'cancelled', :cancelled)) AS job_cancelled;
-- a scan of it raises its error at once, not the rows it sent before it
SELECT regress_try('SELECT count(*) FROM (SELECT g FROM bg_result_' || :cancelled || ' LIMIT 15000) s',
                   :cancelled) AS first_rows;
SELECT bg_segments() >= 0 AS looked;
SELECT count(*) AS temp_files FROM pg_ls_tmpdir();
SELECT regress_try('SELECT count(*) FROM bg_result_' || :cancelled, :cancelled);
SELECT bg_detach(:cancelled);
-- Past work_mem, the session keeps in memory a copy of the rows the worker
-- has not written out yet (up to its 1 MB write buffer); that copy goes
-- once the job has ended, here read to its end after it blocked
SET work_mem = '64kB';
SELECT coalesce(sum(total_bytes), 0) AS spools_before
  FROM pg_backend_memory_contexts WHERE name = 'bg_fdw spool' \gset
SELECT regress_blocked_job(4248) AS mirrored \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :mirrored || ')') AS job_waits;
BEGIN;
DECLARE c CURSOR FOR SELECT g FROM bg_result_:mirrored;
MOVE 19999 IN c;
FETCH c;
SELECT pg_advisory_unlock(4248);
FETCH ALL FROM c \g /dev/null
SELECT sum(total_bytes) - :spools_before < 512 * 1024 AS copy_freed
  FROM pg_backend_memory_contexts WHERE name = 'bg_fdw spool';
COMMIT;
SELECT count(*), sum(g) FROM bg_result_:mirrored;
SELECT bg_detach(:mirrored);
RESET work_mem;
-- ended while this session, in a transaction block, held it unread
BEGIN;
SELECT bg_launch($$SELECT g, md5(g::text) AS h FROM generate_series(1, 60000) g$$,
                 queue_size => 65536) AS away \gset
SELECT regress_poll(format('(SELECT state = %L FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                           'finished', :away)) AS ended;
SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) AS intact
  FROM bg_result_:away;
-- and again: the rows taken off the queue, then those in the kept file
SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) AS intact
  FROM bg_result_:away;
COMMIT;
SELECT bg_detach(:away);

-- A job keeps the messages it sends (at its own client_min_messages) for
-- bg_messages, in order, with their fields.  Here the launching session
-- shows none of those it gets relayed: they come when they come.
SELECT pg_advisory_lock(4243);
SET client_min_messages = error;
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN
    -- INFO goes to every client: it comes here, once this session waits
    PERFORM pg_advisory_xact_lock(4243);
    RAISE NOTICE 'first %', 1 USING DETAIL = 'a detail', HINT = 'a hint';
    RAISE WARNING 'second' USING ERRCODE = 'R0001';
    RAISE INFO 'third';
    RAISE DEBUG 'not sent';
  END $d$$j$) AS talky \gset
SELECT pg_advisory_unlock(4243);
SELECT bg_wait(:talky);
RESET client_min_messages;
SELECT * FROM bg_messages(:talky);
-- a failed job keeps its messages too
SET client_min_messages = error;
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN RAISE NOTICE 'before the failure'; PERFORM 1 / 0; END $d$$j$) AS failing \gset
SELECT regress_try('SELECT bg_wait(' || :failing || ')', :failing);
RESET client_min_messages;
SELECT position, severity, message FROM bg_messages(:failing);
-- a job that sends nothing keeps nothing, and says so by no rows
SELECT count(*) FROM bg_messages(:ins);
-- past bg_fdw.max_messages_size the first and the latest ones are kept,
-- each in half of it, with a row saying how many are not
SET bg_fdw.max_messages_size = '1kB';
SET client_min_messages = error;
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN FOR i IN 1..100 LOOP RAISE NOTICE 'message %', i; END LOOP; END $d$$j$) AS many \gset
SELECT bg_wait(:many);
RESET client_min_messages;
RESET bg_fdw.max_messages_size;
SELECT position, severity, message FROM bg_messages(:many);
-- with none allowed, none is kept but the count
SET bg_fdw.max_messages_size = 0;
SET client_min_messages = error;
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN FOR i IN 1..3 LOOP RAISE NOTICE 'message %', i; END LOOP; END $d$$j$) AS none \gset
SELECT bg_wait(:none);
RESET client_min_messages;
RESET bg_fdw.max_messages_size;
SELECT position, severity, message FROM bg_messages(:none);
-- while a job runs, the messages it has sent so far (tail of the output
-- file), here from a job that waits for this session after three (the
-- notices it relays to this session are not shown)
SET client_min_messages = error;
SELECT pg_advisory_lock(4242);
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN FOR i IN 1..3 LOOP RAISE NOTICE 'so far %', i; END LOOP; END $d$;
  SELECT pg_advisory_lock(4242)$j$) AS held \gset
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :held || ')') AS job_waits;
SELECT position, severity, message FROM bg_messages(:held);
SELECT pg_advisory_unlock(4242);
SELECT bg_wait(:held);
SELECT position, severity, message FROM bg_messages(:held);
-- past what the file takes, a running job's later messages are counted
SELECT pg_advisory_lock(4242);
SET bg_fdw.max_messages_size = '1kB';
SELECT bg_launch($j$SET client_min_messages = notice;
  DO $d$ BEGIN FOR i IN 1..100 LOOP RAISE NOTICE 'message %', i; END LOOP; END $d$;
  SELECT pg_advisory_lock(4242)$j$) AS held \gset
RESET bg_fdw.max_messages_size;
SELECT regress_poll('(SELECT wait_event = ''advisory'' FROM pg_stat_activity WHERE pid = ' || :held || ')') AS job_waits;
SELECT position, severity, message FROM bg_messages(:held);
SELECT pg_advisory_unlock(4242);
SELECT bg_wait(:held);
RESET client_min_messages;
-- errors: a job that keeps nothing, still running or not, unknown, another
-- role's; the setting is a superuser's
SELECT pg_advisory_lock(4242);
SELECT bg_launch('SELECT pg_advisory_lock(4242)', keep => false) AS held \gset
SELECT regress_try('SELECT * FROM bg_messages(' || :held || ')', :held);
SELECT pg_advisory_unlock(4242);
SELECT bg_wait(:held);
SELECT regress_try('SELECT * FROM bg_messages(' || :nokeep || ')', :nokeep);
SELECT regress_try('SELECT * FROM bg_messages(-7)');
SET ROLE regress_outsider;
SELECT regress_try('SELECT * FROM bg_messages(' || :talky || ')', :talky);
SET bg_fdw.max_messages_size = '10MB';
RESET ROLE;
SELECT bg_detach(:talky), bg_detach(:failing), bg_detach(:many),
       bg_detach(:none), bg_detach(:held);

-- bg_fdw.max_queue_size bounds the shared memory of one job's queue, asked
-- for or by default; the setting is a superuser's
SELECT regress_try($$SELECT bg_launch('SELECT 1', queue_size => 100000000)$$);
SET bg_fdw.queue_size = '128MB';
SELECT regress_try($$SELECT bg_launch('SELECT 1')$$);
RESET bg_fdw.queue_size;
SET bg_fdw.max_queue_size = '16kB';
SELECT regress_try($$SELECT bg_launch('SELECT 1', queue_size => 32768)$$);
RESET bg_fdw.max_queue_size;
SET ROLE regress_outsider;
SET bg_fdw.max_queue_size = '1GB';
RESET ROLE;

-- While a job runs, another session (here this one, once it has detached
-- the job) reads its kept result as it grows, like tail -f, to its end.
-- The job stops after five rows until this session lets it go on.
SELECT pg_advisory_lock(4244);
SELECT bg_launch($$SELECT g FROM generate_series(1, 10) g
                   WHERE g <= 5 OR pg_advisory_lock_shared(4244) IS NOT NULL$$) AS tail \gset
SELECT regress_poll('(SELECT rows = 5 FROM bg_jobs WHERE pid = ' || :tail || ')') AS five_rows;
SELECT bg_detach(:tail);
SELECT state, kept FROM bg_jobs WHERE pid = :tail;
CREATE SCHEMA regress_tail;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:tail) FROM SERVER bg_server INTO regress_tail;
-- waiting for rows of a job that waits for this session is a deadlock
SELECT regress_try('SELECT count(*) FROM bg_result(' || :tail || ') AS r(g int)', :tail);
BEGIN;
DECLARE c CURSOR FOR SELECT g FROM regress_tail.bg_result_:tail;
FETCH 5 FROM c;
-- more readers of the running job at once, in one statement
SELECT count(*), sum(a.g * b.g)
  FROM (SELECT g FROM regress_tail.bg_result_:tail LIMIT 5) a,
       (SELECT g FROM regress_tail.bg_result_:tail LIMIT 5) b;
SELECT pg_advisory_unlock(4244);
FETCH ALL FROM c;
COMMIT;
SELECT count(*), sum(g) FROM bg_result(:tail) AS r(g int);
SELECT state, kept FROM bg_jobs WHERE pid = :tail;

-- An ended job gives back its shared memory whether or not its session
-- reads it (here at this session's next bg_segments or bg_launch): its rows
-- are then read from its kept file, its outcome from the registry
SELECT bg_segments() AS segs_before \gset
SELECT bg_launch('SELECT g FROM generate_series(1, 1000) g') AS r1 \gset
SELECT bg_launch('SELECT 42 AS answer') AS r2 \gset
SELECT bg_launch('SELECT 1 / 0 AS never') AS r3 \gset
SELECT regress_poll(format('NOT EXISTS (SELECT FROM bg_jobs WHERE pid IN (%s, %s, %s) AND state = %L)',
                           :r1, :r2, :r3, 'running')) AS all_ended;
SELECT regress_poll(format('bg_segments() = %s', :segs_before)) AS segments_given_back;
SELECT count(*), sum(g) FROM bg_result_:r1;
SELECT * FROM bg_result_:r2;
SELECT bg_wait(:r2);
SELECT regress_try('SELECT * FROM bg_result_' || :r3, :r3);
SELECT bg_detach(:r1), bg_detach(:r2), bg_detach(:r3);
-- so does a job this session has read in part (a scan that stopped early);
-- the session goes on reading the rest from the kept file, which it holds
-- open, so a bg_forget then does not take the rows from it
BEGIN;
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g') AS part \gset
SELECT g FROM bg_result_:part LIMIT 2;
COMMIT;
SELECT regress_poll(format('(SELECT kept FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                           :part)) AS part_kept;
SELECT regress_poll(format('bg_segments() = %s', :segs_before)) AS partly_read_given_back;
SELECT coalesce(sum(size), 0) AS temp_bytes FROM pg_ls_tmpdir();
SELECT bg_forget(:part);
SELECT count(*), sum(g) FROM bg_result_:part;
-- at its next call (a launch, bg_segments) the session copies those rows to
-- a file of its own, so that the forgotten file's disk goes back; a copy
-- that does not fit (temp_file_limit) is dropped, with a warning, and tried
-- again at the next call
SET temp_file_limit = '64kB';
SET client_min_messages = error;
SELECT bg_segments() = :segs_before AS none;
RESET client_min_messages;
RESET temp_file_limit;
SELECT coalesce(sum(size), 0) AS temp_bytes FROM pg_ls_tmpdir();
SELECT count(*), sum(g) FROM bg_result_:part;
SELECT bg_segments() = :segs_before AS none;
SELECT sum(size) > 0 AS own_copy FROM pg_ls_tmpdir();
SELECT count(*), sum(g) FROM bg_result_:part;
SELECT bg_detach(:part);
SELECT coalesce(sum(size), 0) AS temp_bytes FROM pg_ls_tmpdir();
-- forgotten before the session gave its segment back, the job keeps it:
-- its rows are then read from the queue, until the end
BEGIN;
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g') AS part \gset
SELECT g FROM bg_result_:part LIMIT 2;
COMMIT;
SELECT max(id) AS part_job FROM bg_jobs WHERE pid = :part \gset
SELECT regress_poll(format($$(SELECT state = 'finished' AND segment IS NULL
                                FROM bg_job_registry WHERE id = %s)$$, :part_job)) AS part_recorded;
SELECT bg_forget(:part);
SELECT bg_segments() = :segs_before + 1 AS segment_kept;
SELECT count(*), sum(g) FROM bg_result_:part;
SELECT bg_segments() = :segs_before AS read_and_given_back;
SELECT count(*), sum(g) FROM bg_result_:part;
SELECT bg_detach(:part);
-- a session holds at most 16 kept files open: past them, a job read in part
-- keeps its segment, which bg_fdw.max_ended_segments counts
CREATE TEMP TABLE regress_parts (p int);
DO $$
DECLARE
  p int;
BEGIN
  FOR i IN 1..17 LOOP
    p := bg_launch('SELECT g FROM generate_series(1, 100000) g');
    EXECUTE format('SELECT g FROM bg_result_%s LIMIT 1', p);
    INSERT INTO regress_parts VALUES (p);
  END LOOP;
END
$$;
SELECT array_agg(p) AS parts FROM regress_parts \gset
SELECT regress_poll(format($$NOT EXISTS (SELECT FROM bg_job_registry
                                WHERE pid = ANY (%L) AND (state = 'running' OR segment IS NOT NULL))$$,
                           :'parts')) AS all_recorded;
SELECT bg_segments() - :segs_before AS segments_kept;
SELECT set_config('bg_fdw.max_ended_segments', (bg_segments() - :segs_before)::text, false) IS NOT NULL AS set;
SELECT regress_try($$SELECT bg_launch('SELECT 1')$$) AS refused;
RESET bg_fdw.max_ended_segments;
SELECT sum(n), count(*) FROM unnest(:'parts'::int[]) p,
  LATERAL bg_result(p) AS r(n int);
SELECT count(bg_detach(p)) FROM unnest(:'parts'::int[]) p;
SELECT bg_segments() = :segs_before AS none_left;
-- a hundred jobs, launched one after the other in one transaction and
-- never read, hold no segment once ended
SELECT max(id) AS id_before FROM bg_jobs \gset
DO $$
DECLARE
  p int;
BEGIN
  FOR i IN 1..100 LOOP
    p := bg_launch('SELECT 1 AS one');
    PERFORM regress_poll(format('(SELECT state <> %L FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                                'running', p));
  END LOOP;
END
$$;
SELECT regress_poll(format('bg_segments() = %s', :segs_before)) AS hundred_segments_given_back;
SELECT count(*) AS hundred_jobs FROM bg_jobs
 WHERE id > :id_before AND attached AND state = 'finished' AND kept;
-- a job launched with no result table and let go at a commit before any
-- read is imported with the columns it reported
SELECT bg_launch('SELECT 7 AS seven, ''x''::text AS ex', result_table => false) AS rt \gset
SELECT regress_poll(format('(SELECT state = %L AND kept FROM bg_jobs WHERE pid = %s ORDER BY id DESC LIMIT 1)',
                           'finished', :rt)) AS rt_kept;
CREATE SCHEMA regress_rt;
IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_:rt) FROM SERVER bg_server INTO regress_rt;
SELECT * FROM regress_rt.bg_result_:rt;
SELECT bg_detach(:rt);
DROP FOREIGN TABLE regress_rt.bg_result_:rt;
DROP SCHEMA regress_rt;

-- bg_fdw.max_kept_size_per_role bounds what one role keeps in a database: a
-- launch that would keep more is refused; keep => false is not
SELECT sum(kept_bytes) > 1024 AS keeps_more_than_1kb FROM bg_jobs
 WHERE role = current_user::regrole;
SET bg_fdw.max_kept_size_per_role = '1kB';
SELECT regexp_replace(regress_try($$SELECT bg_launch('SELECT 1')$$), 'keep \d+ bytes', 'keep <n> bytes');
SELECT bg_launch('SELECT 1', keep => false) AS unkept \gset
SELECT bg_wait(:unkept);
SELECT bg_detach(:unkept);
RESET bg_fdw.max_kept_size_per_role;
SET ROLE regress_outsider;
SET bg_fdw.max_kept_size_per_role = -1;
RESET ROLE;
-- bg_fdw.max_kept_size bounds what the jobs of all databases keep together,
-- counted from the files (here this database's, over 1kB)
SET bg_fdw.max_kept_size = '1kB';
SELECT regexp_replace(regress_try($$SELECT bg_launch('SELECT 1')$$), 'keep \d+ bytes', 'keep <n> bytes');
SELECT bg_launch('SELECT 1', keep => false) AS unkept \gset
SELECT bg_wait(:unkept);
SELECT bg_detach(:unkept);
RESET bg_fdw.max_kept_size;
SET ROLE regress_outsider;
SET bg_fdw.max_kept_size = -1;
RESET ROLE;

-- bg_fdw.max_ended_segments bounds the segments of ended jobs a session
-- holds: here two more than this session holds now, taken by a
-- keep => false job and a stream job left unread
SELECT regress_no_workers();
SELECT set_config('bg_fdw.max_ended_segments', (bg_segments() + 2)::text, false) IS NOT NULL AS set;
SELECT bg_launch('SELECT 1 AS one', keep => false) AS held1 \gset
SELECT bg_launch('SELECT 2 AS two', stream => true) AS held2 \gset
SELECT regress_no_workers();
SELECT regexp_replace(regress_try($$SELECT bg_launch('SELECT 1')$$),
                      '\d+ ended jobs(.*) is \d+', '<n> ended jobs\1 is <n>') AS refused;
-- reading a result to its end gives its segment back: the launch passes
SELECT * FROM bg_result_:held2;
SELECT bg_launch('SELECT 3 AS three', keep => false) AS held3 \gset
SELECT bg_detach(:held1), bg_detach(:held2), bg_detach(:held3);
RESET bg_fdw.max_ended_segments;
SET ROLE regress_outsider;
SET bg_fdw.max_ended_segments = -1;
RESET ROLE;

-- bg_fdw.max_held_segments_per_role bounds the segments all sessions of a
-- role hold for their jobs, running or, for jobs that keep nothing for
-- other sessions, not read to their end (t/012 has several sessions): each
-- takes a slot of the role, two session locks in no database that pg_locks
-- shows: an abort releases one, pg_advisory_unlock_all() the other, and the
-- session takes either back before the other can go
SELECT regress_no_workers();
SET bg_fdw.max_held_segments_per_role = 2;
SELECT bg_launch('SELECT 1 AS one', keep => false) AS held1 \gset
SELECT bg_launch('SELECT 2 AS two', stream => true) AS held2 \gset
SELECT 1 / 0;
BEGIN;
SELECT pg_advisory_unlock_all();
SELECT 1 / 0;
ROLLBACK;
SELECT objid AS slot, locktype, mode FROM pg_locks
 WHERE database = 0 AND objsubid = 16999
   AND classid = current_user::regrole::oid AND pid = pg_backend_pid()
 ORDER BY objid, locktype;
SELECT replace(regress_try($$SELECT bg_launch('SELECT 3', stream => true)$$),
               current_user, '<superuser>') AS refused;
-- a job that keeps its result takes one too
SELECT replace(regress_try($$SELECT bg_launch('SELECT 4 AS four')$$),
               current_user, '<superuser>') AS refused_kept;
-- reading a result to its end gives the slot back, as does bg_detach
SELECT * FROM bg_result_:held2;
SELECT bg_launch('SELECT 3 AS three', keep => false) AS held3 \gset
SELECT bg_detach(:held1), bg_detach(:held3);
SELECT count(*) AS slots_left FROM pg_locks
 WHERE database = 0 AND objsubid = 16999 AND pid = pg_backend_pid();
-- one that keeps its result gives it back once it has ended and no scan
-- has it open, read or not
SELECT count(*) FROM bg_result(bg_launch('SELECT 4 AS four')) AS r(four int);
SELECT bg_launch('SELECT 5 AS five') AS unread \gset
SELECT bg_wait(:unread);
SELECT bg_segments();
SELECT count(*) AS slots_left FROM pg_locks
 WHERE database = 0 AND objsubid = 16999 AND pid = pg_backend_pid();
RESET bg_fdw.max_held_segments_per_role;

-- bg_fdw.max_result_size bounds one job's kept result: past it, the job
-- fails with 53400 and leaves no file; the session goes on
SET bg_fdw.max_result_size = '64kB';
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g') AS big \gset
SELECT regress_try('SELECT bg_wait(' || :big || ')', :big);
SELECT id AS big_job FROM bg_jobs WHERE pid = :big \gset
SELECT state, kept, regress_kept_file(:big_job) AS file FROM bg_jobs WHERE pid = :big;
SELECT bg_detach(:big);
RESET bg_fdw.max_result_size;
-- and temp_file_limit does too
SET temp_file_limit = '64kB';
SELECT bg_launch('SELECT g FROM generate_series(1, 100000) g') AS big \gset
-- (fd.c or bg_fdw notices first, as the job's temporary files grow; 17+
-- quotes the name)
SELECT split_part(replace(regress_try('SELECT bg_wait(' || :big || ')', :big),
                          '"temp_file_limit"', 'temp_file_limit'), E'\n', 1) AS error;
SELECT bg_detach(:big);
RESET temp_file_limit;
-- the setting is a superuser's
SET ROLE regress_outsider;
SET bg_fdw.max_result_size = -1;
RESET ROLE;
SELECT 1 AS session_usable;

-- A type dropped while its values are kept: a clear error, not garbage;
-- IMPORT FOREIGN SCHEMA leaves that job out with a warning
CREATE TYPE regress_mood AS ENUM ('sad', 'happy');
SELECT bg_launch($$SELECT 'happy'::regress_mood AS mood$$) AS moody \gset
SELECT bg_wait(:moody);
SELECT bg_detach(:moody);
SELECT * FROM bg_result(:moody) AS r(mood regress_mood);
DROP TYPE regress_mood;
CREATE SCHEMA regress_moods;
SELECT regexp_replace(regress_try('SELECT * FROM bg_result(' || :moody || ') AS r(mood text)', :moody),
                      'OID \d+', 'OID <oid>');
SET client_min_messages = error;
IMPORT FOREIGN SCHEMA jobs FROM SERVER bg_server INTO regress_moods;
RESET client_min_messages;
SELECT count(*) AS moody_tables FROM pg_class
 WHERE relnamespace = 'regress_moods'::regnamespace AND relname = 'bg_result_' || :moody;
SELECT bg_forget(:moody);

-- bg_forget removes the kept file; a table still naming the job says it
-- is gone
SELECT bg_forget(:pid);
SELECT regress_kept_file(:job) AS file;
SELECT regress_try('SELECT * FROM regress_reports.by_hand', :pid);
SELECT regress_try('SELECT * FROM bg_result(' || :pid || ') AS r(id int, frac numeric, pad text)', :pid);
-- a bg_forget that rolls back removes nothing
BEGIN;
SELECT bg_forget(:ins);
ROLLBACK;
SELECT * FROM bg_result(:ins) AS r(command text);

-- Expiry removes kept files with the registry rows
SELECT bg_launch('SELECT 1 AS one') AS last \gset
SELECT bg_wait(:last);
SELECT id AS last_job FROM bg_jobs WHERE pid = :last \gset
SELECT regress_kept_file(:last_job) AS file;
SET bg_fdw.job_retention = 0;
SELECT bg_launch('SELECT 2 AS two') AS expirer \gset
SELECT bg_wait(:expirer);
SELECT regress_poll(format('NOT regress_kept_file(%s)', :last_job)) AS expired_file_removed;
RESET bg_fdw.job_retention;
SELECT bg_detach(:last);
SELECT bg_detach(:expirer);

SET client_min_messages = warning;
DROP SCHEMA regress_reports, regress_moods, regress_tail CASCADE;
RESET client_min_messages;
DROP TABLE regress_keep_t;
DROP ROLE regress_outsider;
SELECT regress_no_workers();
