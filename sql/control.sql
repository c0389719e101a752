--
-- Job control: labels, progress reported from inside a job, the NOTIFY
-- channel a job is given, bg_cancel_label.
--

-- A label is shown in bg_jobs
SELECT pg_advisory_lock(4300);
SELECT bg_launch($$SELECT pg_advisory_lock_shared(4300)$$, label => 'regress-batch-1') AS b1 \gset
SELECT bg_launch($$SELECT pg_advisory_lock_shared(4300)$$, label => 'regress-batch-2') AS b2 \gset
SELECT bg_launch($$SELECT pg_advisory_lock_shared(4300)$$, label => 'regress-other') AS o1 \gset
SELECT label, state FROM bg_jobs WHERE pid IN (:b1, :b2, :o1) ORDER BY id;
-- others see no label, like the query
CREATE ROLE regress_stranger;
SET ROLE regress_stranger;
SELECT label IS NULL AS label_hidden FROM bg_jobs WHERE pid = :b1;
-- nor may they cancel the jobs by label
SELECT bg_cancel_label('regress-%');
RESET ROLE;
-- bg_cancel_label cancels the matching running jobs, and says how many
SELECT bg_cancel_label('regress-batch-%');
SELECT regress_try('SELECT bg_wait(' || :b1 || ')', :b1);
SELECT regress_try('SELECT bg_wait(' || :b2 || ')', :b2);
SELECT bg_cancel_label('regress-batch-%') AS none_left;
SELECT pg_advisory_unlock(4300);
SELECT bg_wait(:o1);
SELECT label, state FROM bg_jobs WHERE pid IN (:b1, :b2, :o1) ORDER BY id;
SELECT bg_detach(:b1), bg_detach(:b2), bg_detach(:o1);

-- a pattern ending with its escape character is refused before any label
-- is looked at
SELECT bg_cancel_label('regress-batch\');

-- Bad labels and channel names are refused at launch
SELECT bg_launch('SELECT 1', label => '');
SELECT bg_launch('SELECT 1', label => repeat('x', 64));
SELECT bg_launch('SELECT 1', label => E'two\nlines');
SELECT bg_launch('SELECT 1', notify => '');
SELECT bg_launch('SELECT 1', notify => repeat('c', 64));
SELECT bg_launch('SELECT 1', notify => E'tab\there');
-- a label of 63 bytes is fine
SELECT bg_launch('SELECT 1', label => repeat('x', 63)) AS long_label \gset
SELECT bg_wait(:long_label);
SELECT length(label) FROM bg_jobs WHERE pid = :long_label;
SELECT bg_detach(:long_label);

-- Progress: reported from inside the job, seen at once while it runs, and
-- kept once it has ended
SELECT pg_advisory_lock(4301);
SELECT bg_launch($j$DO $d$BEGIN
    PERFORM bg_progress(42.5, 'halfway there');
    PERFORM pg_advisory_lock_shared(4301);
    PERFORM bg_progress(100);
  END $d$$j$) AS prog \gset
SELECT regress_poll(format('(SELECT progress = 42.5 FROM bg_jobs WHERE pid = %s)', :prog)) AS seen_running;
SELECT state, progress, progress_message FROM bg_jobs WHERE pid = :prog;
SELECT pg_advisory_unlock(4301);
SELECT bg_wait(:prog);
SELECT state, progress, progress_message FROM bg_jobs WHERE pid = :prog;
SELECT bg_detach(:prog);
-- outside a job it is an error, and so is bad input
SELECT bg_progress(10);
SELECT bg_launch('SELECT bg_progress(101)') AS bad \gset
SELECT regress_try('SELECT bg_wait(' || :bad || ')', :bad);
SELECT bg_detach(:bad);
SELECT bg_launch('SELECT bg_progress(-1)') AS bad \gset
SELECT regress_try('SELECT bg_wait(' || :bad || ')', :bad);
SELECT bg_detach(:bad);
SELECT bg_launch('SELECT bg_progress(NULL)') AS bad \gset
SELECT regress_try('SELECT bg_wait(' || :bad || ')', :bad);
SELECT bg_detach(:bad);
SELECT bg_launch($$SELECT bg_progress(1, E'escape \x1b[2J')$$) AS bad \gset
SELECT regress_try('SELECT bg_wait(' || :bad || ')', :bad);
SELECT bg_detach(:bad);
SELECT bg_launch($$SELECT bg_progress(1, repeat('m', 256))$$) AS bad \gset
SELECT regress_try('SELECT bg_wait(' || :bad || ')', :bad);
SELECT bg_detach(:bad);
-- others see no progress
SELECT bg_launch($$SELECT bg_progress(7, 'secret step')$$) AS p7 \gset
SELECT bg_wait(:p7);
SET ROLE regress_stranger;
SELECT progress IS NULL AND progress_message IS NULL AS progress_hidden FROM bg_jobs WHERE pid = :p7;
RESET ROLE;
SELECT bg_detach(:p7);

DROP ROLE regress_stranger;
SELECT regress_no_workers();

-- bg_wait_any: the first job of the list to end
SELECT pg_advisory_lock(4302);
SELECT bg_launch($$SELECT pg_advisory_lock_shared(4302)$$) AS slow \gset
SELECT bg_launch('SELECT 1') AS quick \gset
SELECT bg_wait_any(ARRAY[:slow, :quick]) = :quick AS quick_first;
-- one that ended already counts at once, in the list's order
SELECT bg_wait_any(ARRAY[:quick, :slow]) = :quick AS ended_counts;
-- NULL when the timeout passes first
SELECT bg_wait_any(ARRAY[:slow], '10 ms') IS NULL AS timed_out;
-- waiting for a job that waits for this session is a deadlock
SELECT regress_try('SELECT bg_wait_any(ARRAY[' || :slow || '])', :slow);
-- a timeout of centuries waits (here until the deadlock is found)
SELECT regress_try('SELECT bg_wait_any(ARRAY[' || :slow || '], ''300000 years'')', :slow);
SELECT pg_advisory_unlock(4302);
SELECT bg_wait_any(ARRAY[:slow]) = :slow AS slow_ended;
-- a PID given twice is waited for once
SELECT bg_wait_any(ARRAY[:quick, :quick]) = :quick AS duplicates;
-- a job may not wait for itself
SELECT bg_launch('SELECT bg_wait_any(ARRAY[pg_backend_pid()])') AS self \gset
SELECT regress_try('SELECT bg_wait(' || :self || ')', :self);
SELECT bg_detach(:self);
SELECT bg_launch('SELECT bg_wait(pg_backend_pid())') AS self \gset
SELECT regress_try('SELECT bg_wait(' || :self || ')', :self);
SELECT bg_detach(:self);
-- bad input, unknown and foreign jobs are errors, as with bg_wait
SELECT bg_wait_any(NULL);
SELECT bg_wait_any('{}');
SELECT bg_wait_any(ARRAY[:quick, NULL]);
SELECT bg_wait_any(ARRAY[-7]);
CREATE ROLE regress_stranger2;
SELECT bg_detach(:quick);
SET ROLE regress_stranger2;
SELECT regress_try('SELECT bg_wait_any(ARRAY[' || :quick || '])', :quick);
RESET ROLE;
DROP ROLE regress_stranger2;
SELECT bg_detach(:slow);
SELECT regress_no_workers();
