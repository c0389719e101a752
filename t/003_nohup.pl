# Copyright (c) 2026, The bg_fdw Authors
#
# Jobs outlive their session, and bg_jobs always tells how they ended: the
# launcher's client killed mid-stream, a worker terminated, a worker
# killed (a crash restart), a clean restart.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('nohup');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
client_connection_check_interval = '100ms'
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE TABLE t (a int);
	CREATE TABLE t2 (a int);
});
create_gate($node, 'postgres');

# Wait until the job with this PID is no longer running; return its state.
sub job_end
{
	my ($pid, $columns) = @_;
	$columns //= 'state';
	$node->poll_query_until('postgres',
		"SELECT state <> 'running' FROM bg_jobs WHERE pid = $pid")
	  or die "job $pid did not end";
	return $node->safe_psql('postgres',
		"SELECT $columns FROM bg_jobs WHERE pid = $pid ORDER BY id DESC LIMIT 1");
}

# The launcher's client dies while it reads the job's rows: the job runs to
# its end and commits, and a new session finds how it ended.
# (INSERT ... RETURNING would send no row before it ends: the rows come from
# a SELECT that stops half-way at a gate.)
my $pid = launch_and_kill_reader($node, 'postgres', q{
	INSERT INTO t SELECT g FROM generate_series(1, 40) g;
	SELECT g FROM generate_series(1, 40) g WHERE g <= 20 OR gate('a')}, 20);
open_gate($node, 'postgres', 'a');
is(job_end($pid, q{state || ' ' || rows || ' ' || command || ' ' || attached}),
	'finished 40 SELECT 40 false',
	'bg_jobs: the job finished after its launcher went away');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t'), '40',
	'and its work is committed');

# bg_detach, then the session ends: the same.
my $launcher;
($pid, $launcher) = (split /\n/, $node->safe_psql('postgres', q{
	SELECT bg_launch($$INSERT INTO t SELECT g FROM generate_series(1, 10) g
	                   WHERE gate('b')$$) AS p \gset
	SELECT bg_detach(:p);
	SELECT :p UNION ALL SELECT pg_backend_pid();
}))[-2, -1];
ok( $node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $launcher)"),
	'the session that detached the job is gone');
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $pid"),
	'running', 'its job still runs');
open_gate($node, 'postgres', 'b');
is(job_end($pid, q{state || ' ' || command}), 'finished INSERT 0 10',
	'a detached job runs to its end');

# A job never waits on its reader: a million rows nobody reads are kept
# aside, the job commits and its worker exits; the rows are read later.
my $c = $node->background_psql('postgres', on_error_stop => 0);
$pid = $c->query_safe(q{SELECT bg_launch($$
	INSERT INTO t2 SELECT g FROM generate_series(1, 1000000) g RETURNING a$$)});
chomp $pid;
is(job_end($pid, q{state || ' ' || rows || ' ' || command}),
	'finished 1000000 INSERT 0 1000000',
	'a job whose result nobody reads finishes');
is($node->safe_psql('postgres', 'SELECT count(*) FROM t2'), '1000000',
	'its rows are committed');
ok( $node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $pid)"),
	'its worker has exited');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_locks WHERE pid = $pid"),
	'0', 'and holds no lock');
# a read of the kept rows cut short resumes where it stopped
my $timeouts = 0;
for my $ms (1, 2, 4, 8, 16, 32)
{
	$c->{stderr} = '';
	$c->query("SET statement_timeout = '${ms}ms'; SELECT count(*) FROM bg_result_$pid");
	last unless $c->{stderr} =~ /canceling statement due to statement timeout/;
	$timeouts++;
}
$c->{stderr} = '';
$c->query_safe('RESET statement_timeout');
cmp_ok($timeouts, '>', 0, 'reading the kept rows was cut short by statement_timeout');
is($c->query_safe("SELECT count(*) || ' ' || sum(a) FROM bg_result_$pid"),
	'1000000 500000500000', 'the launching session reads every row afterwards');

# Notices too: a job that raises more of them than its queue holds does not
# stall, and the reader gets them all, in order, as long as they stay within
# bg_fdw.max_messages_size (t/007 goes past it).
$c->query_safe("SET bg_fdw.max_messages_size = '64MB'");
my $n = $c->query_safe(q{SELECT bg_launch($q$
	DO $d$BEGIN FOR i IN 1..20000 LOOP RAISE NOTICE 'n %', i; END LOOP; END$d$$q$)});
chomp $n;
is(job_end($n), 'finished', 'a job raising 20000 notices, unread, finishes');
$c->{stderr} = '';
$c->query("SELECT bg_wait($n)");
my @notices = $c->{stderr} =~ /NOTICE:  n (\d+)/g;
is(scalar(@notices), 20000, 'its reader gets every notice');
is(join(',', @notices[0, 9999, 19999]), '1,10000,20000', 'in order');
$c->{stderr} = '';
$c->query_safe('RESET bg_fdw.max_messages_size');

# Rows of a job launched with keep => false that its queue could not take
# live in files as long as someone can read them: the session's end removes
# them.  (A kept result's session reads its file instead, and lets these go
# with the segment once the job has ended.)
my $kept = q{SELECT count(*) FROM pg_ls_dir('base/pgsql_tmp', true, false) d
	WHERE d LIKE 'pgsql_tmp%fileset'};
$pid = $c->query_safe(q{SELECT bg_launch('SELECT g FROM generate_series(1, 200000) g', keep => false)});
chomp $pid;
job_end($pid);
isnt($node->safe_psql('postgres', $kept), '0', 'rows are kept aside for the session');
$c->query_safe("SELECT bg_detach($pid)");
ok($node->poll_query_until('postgres', "SELECT ($kept) = 0"),
	'and removed when the session detaches the job');
$pid = $c->query_safe(q{SELECT bg_launch('SELECT g FROM generate_series(1, 200000) g', keep => false)});
chomp $pid;
job_end($pid);
isnt($node->safe_psql('postgres', $kept), '0', 'rows are kept aside again');
$c->quit;
ok($node->poll_query_until('postgres', "SELECT ($kept) = 0"),
	'and removed when the session ends without reading them');

# A worker terminated mid-job: its reader gets a clear error, bg_jobs says
# failed.
my $b = $node->background_psql('postgres', on_error_stop => 0);
$pid = $b->query_safe(q{SELECT bg_launch($$SELECT pg_sleep('infinity')$$)});
chomp $pid;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
$b->query("SELECT * FROM bg_result_$pid");
like($b->{stderr},
	qr/ERROR:  terminating background worker "bg_fdw worker" due to administrator command\nCONTEXT:  background job $pid/,
	'the reader of a terminated job is told why');
is(job_end($pid, q{state || ' ' || sqlstate || ' ' || error}),
	'failed 57P01 terminating background worker "bg_fdw worker" due to administrator command',
	'bg_jobs: the terminated job failed');
$b->quit;

# Termination cannot be caught by the job's own exception handlers.
$pid = $node->safe_psql('postgres', q{
	SELECT bg_launch($o$DO $x$ BEGIN LOOP BEGIN PERFORM pg_sleep(0.1);
	  EXCEPTION WHEN query_canceled THEN NULL; END; END LOOP; END $x$$o$) AS p \gset
	SELECT bg_detach(:p);
	SELECT :p;
});
$pid = (split /\n/, $pid)[-1];
$node->safe_psql('postgres', "SELECT bg_cancel($pid)");
$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
is(job_end($pid, q{state || ' ' || sqlstate}), 'failed 57P01',
	'a job that catches cancels is still terminated');

# A clean restart while a job runs: the worker is terminated the same way.
$pid = $node->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS p \gset
	SELECT bg_detach(:p);
	SELECT :p;
});
$node->restart;
is(job_end($pid, q{state || ' ' || sqlstate}), 'failed 57P01',
	'bg_jobs: a job stopped by a clean restart failed');

# A worker killed with SIGKILL makes the postmaster restart the cluster:
# that job and the other one running show "lost" afterwards.
my $done = $node->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1') AS p \gset
	SELECT bg_wait(:p);
	SELECT :p;
});
$done = (split /\n/, $done)[-1];
my ($victim, $bystander) = (split /\n/, $node->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS v \gset
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS w \gset
	SELECT bg_detach(:v), bg_detach(:w);
	SELECT :v UNION ALL SELECT :w;
}))[-2, -1];
# the registry rows are committed asynchronously: wait until they are on disk
my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
$node->poll_query_until('postgres', "SELECT pg_current_wal_flush_lsn() >= '$lsn'")
  or die 'WAL was not flushed';
kill 'KILL', $victim;
ok( poll_through_crash($node,
		"SELECT state = 'lost' FROM bg_jobs WHERE pid = $victim"),
	'bg_jobs: the killed job is lost after the crash restart');
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $bystander"),
	'lost', 'and so is the job the restart took down');
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $done"),
	'finished', 'a job that ended before keeps its outcome');
my ($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT bg_wait($victim)");
like($stderr, qr/ERROR:  background job $victim was lost/,
	'bg_wait of a lost job says so');
$node->safe_psql('postgres', "SELECT bg_forget($victim)");
is($node->safe_psql('postgres', "SELECT count(*) FROM bg_jobs WHERE pid = $victim"),
	'0', 'a lost job can be forgotten');

# bg_fdw.max_jobs_per_role holds under concurrent launches: of two
# sessions launching at once, one gets the role's only place.
$node->safe_psql('postgres', q{
	LOAD 'bg_fdw';
	ALTER SYSTEM SET bg_fdw.max_jobs_per_role = 1;
	SELECT pg_reload_conf();
});
my @out = ('', '');
my @err = ('', '');
my @launch = map {
	IPC::Run::start(
		[ 'psql', '-X', '-At', '-d', $node->connstr('postgres'),
		  '-c', q{SELECT bg_launch('SELECT gate(''m'')')} ],
		'>', \$out[$_], '2>', \$err[$_])
} 0, 1;
$_->finish for @launch;
is(scalar(grep { /^\d+$/ } @out), 1, 'of two concurrent launches, one starts a job');
is(scalar(grep { /too many background jobs for role/ } @err), 1,
	'and the other is refused');
open_gate($node, 'postgres', 'm');
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'bg_fdw worker')")
  or die 'the job of the concurrent launch did not end';

# The role's launch lock is held only until the job is listed: a job still
# running its first statements does not hold up the role's next launch.
$node->safe_psql('postgres', q{
	LOAD 'bg_fdw';
	ALTER SYSTEM SET bg_fdw.max_jobs_per_role = 5;
	SELECT pg_reload_conf();
});
my $slow = $node->background_psql('postgres');
$slow->query_until(qr/launching/, q{
	\echo launching
	SELECT bg_launch($$SELECT gate('s'); SELECT 1 AS one$$);
});
$node->poll_query_until('postgres', q{
	SELECT count(*) = 1 FROM bg_jobs WHERE state = 'running' AND query LIKE '%gate(''s'')%'})
  or die 'the slow job was not listed';
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 2') IS NOT NULL},
	timeout => $PostgreSQL::Test::Utils::timeout_default);
is($stdout, 't', 'a launch of the role does not wait for another one still running its first statement');
open_gate($node, 'postgres', 's');
$slow->quit;
$node->poll_query_until('postgres',
	"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE backend_type = 'bg_fdw worker')")
  or die 'the jobs did not end';
$node->safe_psql('postgres', q{
	LOAD 'bg_fdw';
	ALTER SYSTEM RESET bg_fdw.max_jobs_per_role;
	SELECT pg_reload_conf();
});

# DROP EXTENSION while a job runs: refused while a session holds a result
# table; once none does, the job runs on and commits, unrecorded.
$node->safe_psql('postgres', 'CREATE TABLE t3 (a int)');
my $d = $node->background_psql('postgres', on_error_stop => 0);
$pid = $d->query_safe(q{SELECT bg_launch($$INSERT INTO t3 SELECT 1 WHERE gate('d')$$)});
chomp $pid;
($ret, $stdout, $stderr) = $node->psql('postgres', 'DROP EXTENSION bg_fdw');
like($stderr, qr/cannot drop extension bg_fdw because other objects depend on it/,
	'DROP EXTENSION is refused while a session holds a result table');
$d->query_safe("SELECT bg_detach($pid)");
$node->safe_psql('postgres', 'DROP EXTENSION bg_fdw');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_stat_activity WHERE pid = $pid"),
	'1', 'the job still runs after DROP EXTENSION');
open_gate($node, 'postgres', 'd');
ok($node->poll_query_until('postgres', 'SELECT count(*) = 1 FROM t3'),
	'after DROP EXTENSION the running job commits');
$node->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
is($node->safe_psql('postgres', 'SELECT count(*) FROM bg_jobs'), '0',
	'and its outcome is not recorded');
$d->quit;

$node->stop;
done_testing();
