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

# The kept file of the job named "pid", relative to the data directory
sub kept_path
{
	my ($node, $pid) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT format('base/%s/pgsql_tmp_bg_fdw/%s', d.oid, j.id)
		FROM bg_job_registry j, pg_database d
		WHERE j.pid = $pid AND d.datname = current_database()
		ORDER BY j.id DESC LIMIT 1});
}

# The kept file of the job running at the crash that had written rows
my $partial;

# Jobs running when the server crashes, one of them (keep => false) with
# rows kept in files for a session that never read them; returns their
# PIDs.
sub jobs_then_crash
{
	my ($node, $victim) = @_;
	my $s = $node->background_psql('postgres');
	my $kept = $s->query_safe(
		q{SELECT bg_launch('SELECT g FROM generate_series(1, 200000) g', keep => false)});
	chomp $kept;
	$node->poll_query_until('postgres',
		"SELECT state = 'finished' FROM bg_jobs WHERE pid = $kept")
	  or die 'the job with kept rows did not finish';
	my @pids = (split /\n/, $node->safe_psql('postgres', q{
		SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS a \gset
		SELECT bg_launch($$SELECT g FROM generate_series(1, 20) g WHERE g <= 10 OR hang()$$) AS b \gset
		SELECT bg_detach(:a), bg_detach(:b);
		SELECT :a UNION ALL SELECT :b;
	}))[-2, -1];
	$node->poll_query_until('postgres', "SELECT rows = 10 FROM bg_jobs WHERE pid = $pids[1]")
	  or die 'the job writing rows did not write them';
	$partial = kept_path($node, $pids[1]);
	is($node->safe_psql('postgres', "SELECT (pg_stat_file('$partial', true)).size IS NOT NULL"),
		't', 'a running job writes its kept rows to its file');
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
	ok( $node->poll_query_until('postgres',
			"SELECT (pg_stat_file('$partial', true)).size IS NULL"),
		"$how: the kept file the running job wrote to is gone");
	$node->safe_psql('postgres', q{
		SET bg_fdw.job_retention = 0;
		SELECT bg_launch('SELECT 1') AS p \gset
		SELECT bg_wait(:p);
	});
	ok( $node->poll_query_until('postgres',
			"SELECT count(*) = 0 FROM bg_job_registry WHERE pid IN ($list)"),
		"$how: they expire by bg_fdw.job_retention");
}

# A job's condition that holds it for ever
my $hang = q{CREATE FUNCTION hang() RETURNS boolean LANGUAGE plpgsql
	AS $$BEGIN PERFORM pg_sleep('infinity'); RETURN true; END$$};

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
$pre->safe_psql('postgres', "CREATE EXTENSION bg_fdw; $hang");
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

# Preloaded, ended jobs and their kept results expire in a database where no
# job ends: the supervisor sweeps each database every bg_fdw.job_retention.
$pre->safe_psql('postgres', "ALTER SYSTEM SET bg_fdw.job_retention = '10s'");
$pre->reload;
my $old = (split /\n/, $pre->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1 AS one') AS p \gset
	SELECT bg_wait(:p);
	SELECT bg_detach(:p);
	SELECT :p;
}))[-1];
my $old_file = kept_path($pre, $old);
is($pre->safe_psql('postgres', "SELECT (pg_stat_file('$old_file', true)).size IS NOT NULL"),
	't', 'preloaded: an ended job keeps its result');
# A sweep never waits for a session: with the registry locked it gives up,
# says so, and the next one does the work.
my $locker = $pre->background_psql('postgres');
$locker->query_safe('BEGIN; LOCK TABLE bg_job_registry IN SHARE MODE');
my $lock_offset = -s $pre->logfile;
ok( $pre->wait_for_log(
		qr/skipping the bg_fdw sweep of database "postgres": its job registry is locked/,
		$lock_offset),
	'preloaded: a sweep that finds the registry locked gives up, and says so');
ok( $pre->poll_query_until('postgres', q{
		SELECT count(*) = 0 FROM pg_stat_activity WHERE backend_type = 'bg_fdw sweep'}),
	'preloaded: and leaves no sweep waiting');
$locker->quit;
ok( $pre->poll_query_until('postgres', qq{
		SELECT (pg_stat_file('$old_file', true)).size IS NULL
		   AND NOT EXISTS (SELECT FROM bg_job_registry WHERE pid = $old)}),
	'preloaded: the supervisor expires it and its kept result, no job ending');
$pre->safe_psql('postgres', 'ALTER SYSTEM RESET bg_fdw.job_retention');
$pre->reload;

# A clean shutdown: the supervisor leaves after the job workers.
$pre->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS p \gset
	SELECT bg_detach(:p);
});
my $offset = -s $pre->logfile;
$pre->stop;
my $log = slurp_file($pre->logfile, $offset);
unlike($log, qr/terminated by signal/,
	'preloaded: the server stops cleanly with its supervisor');
# (whether the job's worker is still there when the supervisor looks is
# the processes' race, so only the supervisor's going is checked)
like($log, qr/LOG:  bg_fdw supervisor shutting down/,
	'preloaded: stopped by the postmaster, the supervisor waits for the job workers');

# Preloaded, the kept files of an extension dropped where its event trigger
# does not run (session_replication_role = replica) go with the drop: the
# library is loaded in every session.
$pre->start;
$pre->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1 AS one') AS p \gset
	SELECT bg_wait(:p);
});
my $kept_dir = $pre->safe_psql('postgres',
	q{SELECT format('base/%s/pgsql_tmp_bg_fdw', oid) FROM pg_database WHERE datname = 'postgres'});
my $kept_files = qq{SELECT count(*) FROM pg_ls_dir('$kept_dir', true, false)};
isnt($pre->safe_psql('postgres', $kept_files), '0', 'preloaded: a job keeps its result');
$pre->safe_psql('postgres', q{
	SET session_replication_role = replica;
	DROP EXTENSION bg_fdw CASCADE;
});
ok($pre->poll_query_until('postgres', $kept_files, '0'),
	'preloaded: a drop its event trigger did not see removes the kept files');
$pre->stop;

# Preloaded, but the supervisor could not be registered (no worker slot at
# all): a launch that finds no slot is refused, never queued to wait for it.
my $noslot = PostgreSQL::Test::Cluster->new('no_slot');
$noslot->init;
$noslot->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'bg_fdw'
max_worker_processes = 0
});
$noslot->start;
$noslot->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
is($noslot->safe_psql('postgres', 'SELECT state FROM bg_supervisor()'),
	'stopped', 'no slot: the supervisor is stopped');
my ($rc, $out, $err) = $noslot->psql('postgres', q{SELECT bg_launch('SELECT 1')});
like($err, qr/could not register background process.*HINT:.*once the bg_fdw supervisor, which starts them, has started/s,
	'no slot: a launch is refused, with a hint, not queued');
$noslot->stop;

# Not preloaded.
my $lazy = PostgreSQL::Test::Cluster->new('not_preloaded');
$lazy->init;
$lazy->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
restart_after_crash = on
});
$lazy->start;
$lazy->safe_psql('postgres', "CREATE EXTENSION bg_fdw; $hang");
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
