# Copyright (c) 2026, The bg_fdw Authors
#
# A launch that fails after its job has started (several statements run
# before the launcher learns the result's columns) must leave no trace: its
# job is stopped at once and does not commit.
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
$node->append_conf('postgresql.conf', "max_worker_processes = 16\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE TABLE t (a int);
	CREATE TABLE l (a int);
});
create_gate($node, 'postgres');

# Session B holds a lock the job's second statement needs.
my $b = $node->background_psql('postgres');

# A session launches a job that inserts a row and then waits for B's lock;
# bg_launch waits for the job to reach its last statement.  Returns the
# session and its PID once the job waits for the lock.
sub launch_blocked_job
{
	$b->query_safe('BEGIN; LOCK TABLE l');
	my $s = $node->background_psql('postgres', on_error_stop => 0);
	my $s_pid = $s->query_safe('SELECT pg_backend_pid()');
	chomp $s_pid;
	$s->query_until(qr/launching/, q{
		\echo launching
		SELECT bg_launch('INSERT INTO t VALUES (1); LOCK TABLE l; SELECT 1');
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
