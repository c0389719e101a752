# Copyright (c) 2026, The bg_fdw Authors
#
# A launch that fails after its job has started must leave no trace: its job
# is stopped at once and does not commit.  bg_launch waits for its job only
# until the job is listed in the registry; session B makes that wait by
# holding the registry in SHARE mode.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('main');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE TABLE t (a int);
	CREATE TABLE l (a int);
});
create_gate($node, 'postgres');

my $b = $node->background_psql('postgres');

# A session launches a job that inserts a row; B keeps the job from being
# listed, so bg_launch waits.  Returns the session and its PID once the job
# waits for B's lock.
sub launch_blocked_job
{
	$b->query_safe('BEGIN; LOCK TABLE bg_job_registry IN SHARE MODE');
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $s_pid = $s->query_safe('SELECT pg_backend_pid()');
	chomp $s_pid;
	$s->query_until(qr/launching/, q{
		\echo launching
		SELECT bg_launch('INSERT INTO t VALUES (1); SELECT 1');
	});
	$node->poll_query_until('postgres', q{
		SELECT count(*) = 1 FROM pg_locks k JOIN pg_stat_activity s USING (pid)
		 WHERE NOT k.granted AND s.backend_type = 'bg_fdw worker'
	}) or die 'the job never waited for the lock';
	return ($s, $s_pid);
}

my $no_workers = q{SELECT count(*) = 0 FROM pg_stat_activity
	WHERE backend_type = 'bg_fdw worker'};

# The launch is cancelled.
my ($a, $a_pid) = launch_blocked_job();
$node->safe_psql('postgres', "SELECT pg_cancel_backend($a_pid)");
$node->poll_query_until('postgres',
	"SELECT state = 'idle' FROM pg_stat_activity WHERE pid = $a_pid")
  or die 'the launch was not cancelled';

# The job is stopped at once, though the lock it waits for is still held
# (its worker gone, it holds no lock and no worker slot), commits nothing and
# is not listed.
ok($node->poll_query_until('postgres', $no_workers),
	'the job of a cancelled launch is stopped at once');
$b->query_safe('COMMIT');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '0',
	'a job whose launch failed does not commit');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 0 FROM bg_jobs'),
	'and is not listed');

# The same when the launching session is terminated during the launch.
my ($e, $e_pid) = launch_blocked_job();
$node->safe_psql('postgres', "SELECT pg_terminate_backend($e_pid)");
ok($node->poll_query_until('postgres', $no_workers),
	'the job of a launch whose session was terminated is stopped at once');
$b->query_safe('COMMIT');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '0',
	'and does not commit');
eval { $e->quit };

# bg_launch never waits for the job's work.  B holds l in ACCESS EXCLUSIVE
# mode: a job whose first statement waits for it is launched at once, and so
# is one whose last statement reads l, which bg_launch cannot describe
# without waiting for B (it makes no table: the job reports its columns).
$b->query_safe('BEGIN; LOCK TABLE l');
my $f = $node->background_psql('postgres');
my $slow = $f->query_safe(
	q{SELECT bg_launch('LOCK TABLE l; INSERT INTO t VALUES (3); SELECT 3 AS three')});
my $undescribed = $f->query_safe(q{SELECT bg_launch('SELECT a FROM l')});
is($f->query_safe("SELECT state FROM bg_jobs WHERE pid = $slow"), 'running',
	'a job whose first statement waits for a lock is launched at once');
is($f->query_safe(
		"SELECT to_regclass('pg_temp.bg_result_$slow') IS NOT NULL, to_regclass('pg_temp.bg_result_$undescribed') IS NULL"),
	't|t', 'with its table, and one that could not be described without one');
ok($node->poll_query_until('postgres', q{
	SELECT count(*) = 2 FROM pg_stat_activity
	 WHERE backend_type = 'bg_fdw worker' AND wait_event_type = 'Lock'}),
	'both jobs wait for B');
$f->{stderr} = '';
$f->query(
	"IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_$undescribed) FROM SERVER bg_server INTO pg_temp");
like($f->{stderr},
	qr/WARNING:  skipping background job $undescribed: its columns are not known yet/,
	'IMPORT skips the job until it has started its last statement');
$f->{stderr} = '';
$b->query_safe('INSERT INTO l VALUES (5); COMMIT');
is($f->query_safe("SELECT three FROM bg_result_$slow"), '3',
	'the first job is read through its table');
$f->query_safe("SELECT bg_wait($slow)");
is($f->query_safe("SELECT count(*) FROM t WHERE a = 3"), '1',
	'and did its work');
is($f->query_safe("SELECT a FROM bg_result($undescribed) AS r(a int)"), '5',
	'the other is read with bg_result');
$f->query_safe(
	"IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_$undescribed) FROM SERVER bg_server INTO pg_temp");
is($f->query_safe("SELECT a FROM bg_result_$undescribed"), '5',
	'and through the table IMPORT FOREIGN SCHEMA makes for it');
$f->quit;
$node->safe_psql('postgres', 'DELETE FROM t');

# A launch that succeeds commits, even if the session then goes away.
my $c = $node->background_psql('postgres');
my $c_pid = $c->query_safe('SELECT pg_backend_pid()');
chomp $c_pid;
$c->query_safe(q{SELECT bg_launch($$INSERT INTO t VALUES (2); SELECT gate('c')$$)});
$c->quit;
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $c_pid)")
  or die 'the launching session did not end';
is($node->safe_psql('postgres',
		"SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'bg_fdw worker'"),
	'1', 'its job still runs after the launching session ended');
open_gate($node, 'postgres', 'c');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM t WHERE a = 2}),
	'a launched job commits after its session went away');

# A bg_detach pending in the transaction counts: CALL bg_await after it,
# whose commit carries the detach out, is refused rather than waiting on a
# job that is gone.
my ($ret, $stdout, $stderr) = $node->psql('postgres', q{
	SELECT set_config('regress.pid', bg_launch('SELECT 8')::text, false) IS NOT NULL;
	DO $$
	BEGIN
	  PERFORM bg_detach(current_setting('regress.pid')::int);
	  CALL bg_await(current_setting('regress.pid')::int);
	END
	$$;
	SELECT 'still here'});
like($stderr, qr/background job \d+ was detached from this session/,
	'bg_await after a pending bg_detach is refused');
is($node->safe_psql('postgres', 'SELECT 1'), '1', 'and the server is fine');

$a->quit;
$b->quit;
$node->stop;
done_testing();
