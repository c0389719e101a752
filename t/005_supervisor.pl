# Copyright (c) 2026, The bg_fdw Authors
#
# The supervisor: started at boot when bg_fdw is preloaded, on demand on
# PostgreSQL 17 and later without it, absent on 15 and 16 without it.  It
# is restarted when it dies; after a crash restart, jobs that were running
# end up "lost" with a finished_at, expire by bg_fdw.job_retention, and
# leave no files.  Where there is no supervisor, the next job to end does
# the same.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

# Jobs running when the server crashes, one of them with rows kept in files
# by a session that never read them; returns their PIDs.
sub jobs_then_crash
{
	my ($node, $victim) = @_;
	my $s = $node->background_psql('postgres');
	my $kept = $s->query_safe(
		q{SELECT bg_launch('SELECT g FROM generate_series(1, 200000) g')});
	chomp $kept;
	$node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM bg_jobs WHERE pid = $kept")
	  or die 'the job with kept rows did not finish';
	my @pids = (split /\n/, $node->safe_psql('postgres', q{
		SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS a \gset
		SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS b \gset
		SELECT bg_detach(:a), bg_detach(:b);
		SELECT :a UNION ALL SELECT :b;
	}))[-2, -1];
	isnt($node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_ls_dir('base/pgsql_tmp', true, false)}),
		'0', 'rows nobody read are kept in files');
	# the registry rows are committed asynchronously: wait until on disk
	my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
	$node->poll_query_until('postgres',
		"SELECT pg_current_wal_flush_lsn() >= '$lsn'")
	  or die 'WAL was not flushed';
	kill 'KILL', ($victim // $pids[0]);
	poll_through_crash($node,
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid IN ($pids[0], $pids[1])")
	  or die 'the crash restart did not happen';
	eval { $s->quit };
	return @pids;
}

# The jobs that were running are recorded as lost, with a finished_at, and
# expire by bg_fdw.job_retention; no file is left.
sub lost_and_expired
{
	my ($node, $how, @pids) = @_;
	my $list = join(', ', @pids);
	my $n = scalar @pids;
	ok( $node->poll_query_until('postgres', qq{
			SELECT count(*) = $n FROM bg_job_registry
			 WHERE pid IN ($list) AND state = 'lost' AND finished_at IS NOT NULL}),
		"$how: the jobs running at the crash are recorded as lost, with finished_at");
	is($node->safe_psql('postgres',
			q{SELECT count(*) FROM pg_ls_dir('base/pgsql_tmp', true, false)}),
		'0', "$how: no file is left");
	$node->safe_psql('postgres', q{
		SET bg_fdw.job_retention = 0;
		SELECT bg_launch('SELECT 1') AS p \gset
		SELECT bg_wait(:p);
	});
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 0 FROM bg_job_registry WHERE pid IN ($list)"),
		"$how: they expire by bg_fdw.job_retention");
}

my $supervisors = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'bg_fdw supervisor'};

# Preloaded: started at boot, restarted when it dies.
my $pre = PostgreSQL::Test::Cluster->new('preloaded');
$pre->init;
$pre->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'bg_fdw'
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
restart_after_crash = on
});
$pre->start;
$pre->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
ok( $pre->poll_query_until('postgres',
		q{SELECT state || ' ' || preloaded FROM bg_supervisor()}, 'running true'),
	'preloaded: the supervisor runs from server start');
is($pre->safe_psql('postgres', $supervisors), '1',
	'preloaded: one supervisor, with its own backend_type');
my $sup = $pre->safe_psql('postgres', 'SELECT pid FROM bg_supervisor()');
$pre->safe_psql('postgres', "SELECT pg_terminate_backend($sup)");
ok( $pre->poll_query_until('postgres',
		"SELECT state = 'running' AND pid <> $sup FROM bg_supervisor()"),
	'preloaded: a terminated supervisor is restarted');
$sup = $pre->safe_psql('postgres', 'SELECT pid FROM bg_supervisor()');
my @pids = jobs_then_crash($pre, $sup);
ok( $pre->poll_query_until('postgres',
		"SELECT state = 'running' AND pid <> $sup FROM bg_supervisor()"),
	'preloaded: a supervisor killed with SIGKILL is back after the crash restart');
lost_and_expired($pre, 'preloaded', @pids);
my $offset = -s $pre->logfile;
$pre->stop;
unlike(slurp_file($pre->logfile, $offset), qr/terminated by signal/,
	'preloaded: the server stops cleanly with its supervisor');

# Not preloaded.
my $lazy = PostgreSQL::Test::Cluster->new('not_preloaded');
$lazy->init;
$lazy->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
restart_after_crash = on
});
$lazy->start;
$lazy->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
if ($lazy->pg_version >= 17)
{
	# the first call starts it; racing calls start no second one
	my @calls = map {
		IPC::Run::start(
			[ 'psql', '-X', '-At', '-d', $lazy->connstr('postgres'),
			  '-c', 'SELECT state FROM bg_supervisor()' ])
	} 1 .. 4;
	$_->finish for @calls;
	ok( $lazy->poll_query_until('postgres',
			q{SELECT state || ' ' || preloaded || ' ' || starts FROM bg_supervisor()},
			'idle false 1'),
		'17+: the first call starts one supervisor, which leaves once it has swept');
	is($lazy->safe_psql('postgres', 'SELECT last_sweep IS NOT NULL FROM bg_supervisor()'),
		't', '17+: its sweep is done');
	@pids = jobs_then_crash($lazy);
	is($lazy->safe_psql('postgres', $supervisors), '0',
		'17+: no supervisor after the crash restart until a call');
	$lazy->safe_psql('postgres', 'SELECT state FROM bg_supervisor()');
	lost_and_expired($lazy, '17+ on demand', @pids);
	ok( $lazy->poll_query_until('postgres',
			q{SELECT state || ' ' || starts FROM bg_supervisor()}, 'idle 1'),
		'17+: the call started it again, and it left when done');
}
else
{
	is($lazy->safe_psql('postgres', 'SELECT state FROM bg_supervisor()'),
		'unavailable', '15/16: there is no supervisor');
	@pids = jobs_then_crash($lazy);
	is($lazy->safe_psql('postgres', $supervisors), '0',
		'15/16: no supervisor runs');
	# The next job to end records them; a row a session holds (bg_forget
	# in an open transaction) is left, and the job does not wait for it.
	my $holder = $lazy->background_psql('postgres');
	$holder->query_safe("BEGIN; SELECT bg_forget($pids[0])");
	$lazy->safe_psql('postgres', q{
		SELECT bg_launch('SELECT 1') AS p \gset
		SELECT bg_wait(:p);
	});
	ok( $lazy->poll_query_until('postgres', q{
			SELECT count(*) = 0 FROM pg_stat_activity
			 WHERE backend_type = 'bg_fdw worker'}),
		'15/16: the next job ends though a session holds a lost job\'s row');
	ok( $lazy->poll_query_until('postgres',
			"SELECT state = 'lost' FROM bg_job_registry WHERE pid = $pids[1]"),
		'15/16: it recorded the free one as lost');
	is($lazy->safe_psql('postgres',
			"SELECT state FROM bg_job_registry WHERE pid = $pids[0]"),
		'running', '15/16: and left the held one');
	$holder->query_safe('COMMIT');
	$holder->quit;
	lost_and_expired($lazy, '15/16, at the next job', $pids[1]);
}
$offset = -s $lazy->logfile;
$lazy->stop;
unlike(slurp_file($lazy->logfile, $offset), qr/terminated by signal/,
	'not preloaded: the server stops cleanly');

done_testing();
