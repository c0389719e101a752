# Copyright (c) 2026, The bg_fdw Authors
#
# Deadlocks the lock manager cannot see, because a session waits for a job
# (or a job for its session) on a latch: through a third session's lock
# request, through a safe snapshot, through a stream job waiting for its
# reader, and between nested jobs.  Each ends with 40P01 in one member
# instead of a wait for ever, and the others then go on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('waitgraph');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
deadlock_timeout = '100ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE TABLE t (a int);
	INSERT INTO t SELECT generate_series(1, 10);
	CREATE TABLE r (id int PRIMARY KEY, v int);
	INSERT INTO r VALUES (1, 0);
});

# Poll until backend $pid waits under a wait event of type $type.
sub waits_on
{
	my ($pid, $type, $name) = @_;
	ok( $node->poll_query_until('postgres',
			"SELECT wait_event_type = '$type' FROM pg_stat_activity WHERE pid = $pid"),
		$name);
}

# 1. S1 holds a lock on t and reads a job that reads t; S2's ALTER TABLE
# queues between them: the job waits behind S2, S2 for S1, S1 for the job.
my $s1 = $node->background_psql('postgres', on_error_stop => 0);
my $s1_pid = $s1->query_safe('SELECT pg_backend_pid()');
$s1->query_safe('BEGIN');
$s1->query_safe('SELECT count(*) FROM t');
my $s2 = $node->background_psql('postgres', on_error_stop => 0);
my $s2_pid = $s2->query_safe('SELECT pg_backend_pid()');
$s2->query_until(qr/altering/, "\\echo altering\nALTER TABLE t ADD COLUMN y int;\n");
waits_on($s2_pid, 'Lock', 'S2 queues for its lock behind S1');
my $job = $s1->query_safe(q{SELECT bg_launch('SELECT count(*) AS n FROM t')});
waits_on($job, 'Lock', 'the job queues behind S2');
my $err = try_query($s1, "SELECT n FROM bg_result_$job");
like($err, qr/ERROR:  deadlock detected/, 'S1 reading the job fails with a deadlock');
like($err,
	qr/DETAIL:  Process $job waits for process $s2_pid, which waits for this process\./,
	'naming the chain: the job, S2, S1');
try_query($s1, 'ROLLBACK');
$s2->{stderr} = '';
$s2->query_safe('SELECT 1');
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_attribute WHERE attrelid = 't'::regclass AND attname = 'y'"),
	'1', 'S2 then runs');
is($s1->query_safe("SELECT bg_wait($job)"), 'SELECT 1', 'and so does the job');
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $job"),
	'finished', 'which finishes');

# 2. A SERIALIZABLE transaction that wrote launches a job that waits for a
# safe snapshot, which waits for that transaction, and waits for the job.
$s1->query_safe('BEGIN ISOLATION LEVEL SERIALIZABLE');
$s1->query_safe('INSERT INTO t VALUES (11)');
$job = $s1->query_safe(q{SELECT bg_launch('BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; SELECT count(*) FROM t; COMMIT')});
$err = try_query($s1, "SELECT bg_wait($job)");
like($err, qr/ERROR:  deadlock detected/,
	'waiting for a job that waits for a safe snapshot this transaction holds back fails');
like($err, qr/DETAIL:  Process $job waits for this process\./,
	'saying that the job waits for this session');
try_query($s1, 'ROLLBACK');
ok($node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM bg_jobs WHERE pid = $job"),
	'the job then gets its snapshot and finishes');

# 3. Two jobs of one session: a stream job that updated a row waits for
# room in its queue, a second job waits for that row, and the session reads
# the second.  The stream job checks for the cycle too, and whichever checks
# first fails, as with the lock manager's deadlock_timeout: the job gets a
# far longer one (a job runs with its launcher's settings), so that the
# session is the one to fail here.
$s1->query_safe(q{SET deadlock_timeout = '1h'});
my $a = $s1->query_safe(q{
	SELECT bg_launch($$WITH u AS (UPDATE r SET v = v + 1 WHERE id = 1 RETURNING v)
	                   SELECT g FROM u, generate_series(1, 100000) g$$,
	                 stream => true)});
$s1->query_safe('RESET deadlock_timeout');
waits_on($a, 'IPC', 'the stream job waits for room in its queue');
my $b = $s1->query_safe(q{SELECT bg_launch('UPDATE r SET v = v + 10 WHERE id = 1')});
waits_on($b, 'Lock', 'the second job waits for the row the first holds');
$err = try_query($s1, "SELECT * FROM bg_result_$b");
like($err, qr/ERROR:  deadlock detected/,
	'reading the second job fails with a deadlock');
like($err,
	qr/DETAIL:  Process $b waits for process $a, which waits for this process\./,
	'through the stream job waiting for this session');
$s1->query_safe("SELECT bg_detach($a)");
is($s1->query_safe("SELECT bg_wait($b)"), 'UPDATE 1',
	'once the stream job is let go, both end');
is($node->safe_psql('postgres', 'SELECT v FROM r WHERE id = 1'), '11',
	'and both updates are in');

# 4. Nested jobs: job A launches C and reads it, and C waits for A.
my $outer = $s1->query_safe(q{
	SELECT bg_launch($$SELECT x FROM bg_result(bg_launch(format(
	                     'SELECT bg_wait(%s) AS x', pg_backend_pid()))) AS r(x text)$$)});
$err = try_query($s1, "SELECT bg_wait($outer)");
like($err, qr/ERROR:  deadlock detected/,
	'a job reading a job that waits for it fails with a deadlock');
is($node->safe_psql('postgres',
		"SELECT string_agg(state || ' ' || sqlstate, ', ' ORDER BY id) FROM bg_jobs WHERE id >= (SELECT id FROM bg_jobs WHERE pid = $outer)"),
	'failed 40P01, failed 40P01', 'both jobs failed with 40P01');

# 5. bg_wait_any of two jobs that each wait for this session (through S2's
# queued ALTER TABLE): every job waited for is deadlocked.
$s1->query_safe('BEGIN');
$s1->query_safe('SELECT count(*) FROM t');
$s2->query_until(qr/altering again/,
	"\\echo altering again\nALTER TABLE t ADD COLUMN z int;\n");
waits_on($s2_pid, 'Lock', 'S2 queues again behind S1');
my $j1 = $s1->query_safe(q{SELECT bg_launch('SELECT count(*) AS n FROM t')});
my $j2 = $s1->query_safe(q{SELECT bg_launch('SELECT count(*) AS n FROM t')});
waits_on($j1, 'Lock', 'a first job queues behind S2');
waits_on($j2, 'Lock', 'and a second');
$err = try_query($s1, "SELECT bg_wait_any(ARRAY[$j1, $j2])");
like($err, qr/ERROR:  deadlock detected/,
	'waiting for any of two jobs that both wait for this session fails');
try_query($s1, 'ROLLBACK');
$s2->{stderr} = '';
$s2->query_safe('SELECT 1');
is($s1->query_safe("SELECT bg_wait_any(ARRAY[$j1]) = $j1 AND bg_wait_any(ARRAY[$j2]) = $j2"),
	't', 'both jobs then end');

# 6. Two sessions, each holding a lock the other's job needs, each waiting
# for its own job with bg_wait_any: a cycle through both sessions.
$node->safe_psql('postgres', 'CREATE TABLE t1 (a int); CREATE TABLE t2 (a int)');
$s1->query_safe('BEGIN');
$s1->query_safe('LOCK t1');
$s2->query_safe('BEGIN');
$s2->query_safe('LOCK t2');
# (a DO block: describing a query of t2 at launch would wait for S2's lock)
my $k1 = $s1->query_safe(
	q{SELECT bg_launch('DO $d$BEGIN PERFORM count(*) FROM t2; END$d$')});
my $k2 = $s2->query_safe(
	q{SELECT bg_launch('DO $d$BEGIN PERFORM count(*) FROM t1; END$d$')});
waits_on($k1, 'Lock', 'the first session\'s job waits for the second session');
waits_on($k2, 'Lock', 'and the second\'s for the first');
$s1->query_until(qr/waiting 1/, "\\echo waiting 1\nSELECT bg_wait_any(ARRAY[$k1]);\n");
$s2->query_until(qr/waiting 2/, "\\echo waiting 2\nSELECT bg_wait_any(ARRAY[$k2]);\n");
# each ROLLBACK runs once its session's wait has ended, one way or the other
my $e1 = try_query($s1, 'ROLLBACK');
my $e2 = try_query($s2, 'ROLLBACK');
ok($e1 =~ /deadlock detected/ || $e2 =~ /deadlock detected/,
	'one of the two waits fails with a deadlock, and both end');

$s1->quit;
$s2->quit;
is($node->safe_psql('postgres', 'SELECT count(*) FROM bg_jobs WHERE state = \'running\''),
	'0', 'no job is left running');
$node->stop;
done_testing();
