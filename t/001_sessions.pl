# Copyright (c) 2026, The bg_fdw Authors
#
# bg_fdw across sessions: another session's job, notices relayed to the
# reader, and a hot standby.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('primary');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');

# Another session sees a job in bg_jobs and, with the job role's
# privileges, may wait for it and cancel it; it cannot read its rows while
# it runs (once it has ended, its kept result: t/006_keep.pl).
my $a = $node->background_psql('postgres', on_error_stop => 0);
my $pid = $a->query_safe(q{SELECT bg_launch($$SELECT pg_sleep('infinity')$$)});
chomp $pid;
like($pid, qr/^\d+$/, 'session A launched a job');

is($node->safe_psql('postgres', "SELECT state || ' ' || attached FROM bg_jobs WHERE pid = $pid"),
	'running true', 'another session sees the job running, its result held');
is($node->safe_psql('postgres', "SELECT bg_wait($pid, '10ms') IS NULL"),
	't', 'another session waits for the job, up to a timeout');

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"CREATE FOREIGN TABLE r (x void) SERVER bg_server OPTIONS (pid '$pid'); SELECT * FROM r");
like($stderr, qr/column "x" has pseudo-type void/,
	'void cannot be a column of a hand-made table either');
# (the job never produces a row: the reader waits until statement_timeout)
($ret, $stdout, $stderr) = $node->psql('postgres',
	"CREATE FOREIGN TABLE r (x text) SERVER bg_server OPTIONS (pid '$pid');
	 SET statement_timeout = '200ms'; SELECT * FROM r");
like($stderr, qr/canceling statement due to statement timeout/,
	'a hand-made table in another session follows the running job, and its wait honours statement_timeout');

is($node->safe_psql('postgres', "SELECT bg_cancel($pid)"), 't',
	'another session cancels the job');
($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT bg_wait($pid)");
like($stderr, qr/ERROR:  canceling statement due to user request/,
	'and its wait ends with the job\'s error');
is($node->safe_psql('postgres', "SELECT state || ' ' || sqlstate FROM bg_jobs WHERE pid = $pid"),
	'cancelled 57014', 'bg_jobs says it was cancelled');
$a->query("SELECT bg_wait($pid)");
like($a->{stderr}, qr/canceling statement due to user request/,
	'the launching session reads the same outcome');
$a->quit;

# A session waiting for its job says so in pg_stat_activity: a named wait
# event on PostgreSQL 17 and later.
my $w = $node->background_psql('postgres', on_error_stop => 0);
my $w_pid = $w->query_safe('SELECT pg_backend_pid()');
chomp $w_pid;
$w->query_until(qr/waiting/, q{
	\echo waiting
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS p \gset
	SELECT bg_wait(:p);
});
my $event = $node->pg_version >= 17 ? 'Extension:BgFdwJob' : 'Extension:Extension';
ok( $node->poll_query_until('postgres',
		"SELECT wait_event_type || ':' || wait_event FROM pg_stat_activity WHERE pid = $w_pid",
		$event),
	"a session waiting for its job shows wait event $event");
$node->safe_psql('postgres',
	"SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE backend_type = 'bg_fdw worker'");
$w->quit;

# Detaching twice: the second time is a no-op with a NOTICE.
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 1') AS pid \gset
	  SELECT bg_detach(:pid);
	  SELECT bg_detach(:pid);});
is($ret, 0, 'detaching twice is no error');
like($stderr, qr/NOTICE:  background job \d+ is already detached, skipping/,
	'the second detach says so');

# VACUUM (VERBOSE) in the background relays its INFO lines to the reader.
$node->safe_psql('postgres', 'CREATE TABLE foo AS SELECT g FROM generate_series(1, 1000) g');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT bg_launch('VACUUM (VERBOSE) foo') AS pid \gset
	  SELECT * FROM bg_result_:pid});
is($ret, 0, 'VACUUM (VERBOSE) in the background');
is($stdout, 'VACUUM', 'its table says VACUUM');
my @vacuuming = ($stderr =~ /INFO:  vacuuming "postgres\.public\.foo"/g);
is(scalar @vacuuming, 1, 'its INFO lines reach the reader, once');

# On a hot standby no table can be created: the job runs and bg_result
# reads it.
$node->backup('b');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'b', has_streaming => 1);
$standby->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$standby->start;
$node->wait_for_catchup($standby);
($ret, $stdout, $stderr) = $standby->psql('postgres',
	q{SELECT bg_launch('SELECT count(*) FROM foo') AS pid \gset
	  SELECT * FROM bg_result(:pid) AS r(n bigint)});
is($ret, 0, 'a job runs on a hot standby');
is($stdout, '1000', 'and bg_result reads it');
like($stderr, qr/no result table was created for the background job because the transaction is read-only/,
	'the reader is told there is no table');
# bg_jobs on a standby shows the primary's registry: the standby's own jobs
# cannot be written there.
is($standby->safe_psql('postgres',
		"SELECT count(*) FROM bg_jobs WHERE state = 'cancelled'"),
	$node->safe_psql('postgres', "SELECT count(*) FROM bg_jobs WHERE state = 'cancelled'"),
	'bg_jobs on the standby lists the primary\'s jobs');
($ret, $stdout, $stderr) = $standby->psql('postgres',
	q{SELECT bg_launch('SELECT 1') AS p \gset
	  SELECT bg_wait(:p);
	  SELECT count(*) FROM bg_jobs WHERE pid = :p});
is($stdout, "SELECT 1\n0", 'a job of the standby is waited for, and not listed');

# A role's session_preload_libraries hold in its jobs as in its sessions:
# passwordcheck refuses a short password in both.
$node->safe_psql('postgres', q{
	CREATE ROLE carol LOGIN IN ROLE bg_fdw_user;
	ALTER ROLE carol SET session_preload_libraries = 'passwordcheck';
});
($ret, $stdout, $stderr) = $node->psql('postgres', "ALTER ROLE carol PASSWORD 'a'",
	extra_params => [ '-U', 'carol' ]);
like($stderr, qr/password is too short/, 'the session loads its role\'s libraries');
($ret, $stdout, $stderr) = $node->psql('postgres',
	q{SELECT bg_wait(bg_launch($$ALTER ROLE carol PASSWORD 'a'$$))},
	extra_params => [ '-U', 'carol' ]);
like($stderr, qr/password is too short/, 'and so does its job');

$standby->stop;
$node->stop;
done_testing();
