# Copyright (c) 2026, The bg_fdw Authors
#
# Job control across sessions: a job's NOTIFY reaches a listener in another
# session once the job's outcome is committed; progress a job reports is
# seen from another session while it runs; bg_cancel_label cancels the
# jobs of another session of the role.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('control');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE alice LOGIN IN ROLE bg_fdw_user;
	CREATE TABLE audit (note text);
	GRANT INSERT, SELECT ON audit TO alice;
});
create_gate($node, 'postgres');
$node->safe_psql('postgres', 'GRANT ALL ON gates TO alice');

# A listener in another session is told when the job ends, after its
# outcome is committed: what it reads on being told is there.
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN jobs_done');
my $pid = $node->safe_psql('postgres', q{
	SELECT bg_launch($$INSERT INTO audit SELECT 'written' WHERE gate('n')$$,
	                 notify => 'jobs_done')},
	extra_params => [ '-U', 'alice' ]);
my $id = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $pid");
open_gate($node, 'postgres', 'n');
my $told = '';
my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
while ($told !~ /Asynchronous notification/ && time < $deadline)
{
	# psql shows a notification after the next statement it runs
	$told .= $listener->query_safe(
		q{SELECT state || ' ' || (SELECT count(*) FROM audit)
		    FROM bg_jobs WHERE pid = } . $pid);
}
like($told,
	qr/Asynchronous notification "jobs_done" with payload "\{"pid": $pid, "id": $id, "state": "finished"\}"/,
	'the listener gets the job\'s pid, id and state, and nothing else');
like($listener->query_safe("SELECT state || ' ' || (SELECT count(*) FROM audit) FROM bg_jobs WHERE pid = $pid"),
	qr/^finished 1/, 'and finds the outcome and the work committed');

# A failed job notifies too.
$pid = $node->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1 / 0 FROM gates WHERE gate(''f'')', notify => 'jobs_done')},
	extra_params => [ '-U', 'alice' ]);
open_gate($node, 'postgres', 'f');
$told = '';
while ($told !~ /Asynchronous notification/ && time < $deadline)
{
	$told .= $listener->query_safe('SELECT 1');
}
like($told, qr/"pid": $pid, "id": \d+, "state": "failed"/,
	'a failed job notifies with its state');
$listener->quit;

# Progress reported inside a job is seen from another session at once.
$pid = $node->safe_psql('postgres', q{
	SELECT bg_launch($j$DO $d$BEGIN
	    PERFORM bg_progress(25, 'first quarter');
	    PERFORM gate('p');
	  END $d$$j$)},
	extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until('postgres',
		"SELECT progress = 25 AND progress_message = 'first quarter' FROM bg_jobs WHERE pid = $pid"),
	'another session sees the progress of the running job');
open_gate($node, 'postgres', 'p');

# bg_cancel_label from another session of the role cancels the batch.
my @batch = map {
	$node->safe_psql('postgres',
		"SELECT bg_launch(\$\$SELECT gate('never')\$\$, label => 'nightly-$_')",
		extra_params => [ '-U', 'alice' ]) } 1 .. 3;
is($node->safe_psql('postgres', "SELECT bg_cancel_label('nightly-%')",
		extra_params => [ '-U', 'alice' ]),
	'3', 'bg_cancel_label in another session cancels the three jobs of the batch');
my $list = join(', ', @batch);
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 3 FROM bg_jobs WHERE pid IN ($list) AND state = 'cancelled'"),
	'they end cancelled');

# bg_wait_any in another session: woken by the first of two jobs to end.
my ($ja, $jb) = map {
	$node->safe_psql('postgres', "SELECT bg_launch(\$\$SELECT gate('$_')\$\$)",
		extra_params => [ '-U', 'alice' ]) } ('wa', 'wb');
my $w = start_waiting($node, 'postgres', "SELECT bg_wait_any(ARRAY[$ja, $jb])",
	'bg_wait_any waits in another session', '-U', 'alice');
open_gate($node, 'postgres', 'wb');
is($w->query_safe('SELECT 1'), "$jb\n1", 'it returns the job that ended first');
open_gate($node, 'postgres', 'wa');
$w->quit;

# A job that is lost (its worker killed, the server restarted) is NOTIFYed
# as lost once it is found so, by the next job to end or the supervisor.
my $lost = $node->safe_psql('postgres',
	q{SELECT bg_launch($$SELECT gate('never')$$, notify => 'lost_jobs')},
	extra_params => [ '-U', 'alice' ]);
my $lost_id = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $lost");
# the registry row is committed asynchronously: wait until it is on disk
my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
$node->poll_query_until('postgres', "SELECT pg_current_wal_flush_lsn() >= '$lsn'")
  or die 'WAL was not flushed';
kill 'KILL', $lost;
# (nothing of bg_fdw runs before the listener listens)
poll_through_crash($node, 'SELECT true') or die 'the server did not come back';
my $l2 = $node->background_psql('postgres');
$l2->query_safe('LISTEN lost_jobs');
$node->safe_psql('postgres', q{SELECT bg_wait(bg_launch('SELECT 1'))});
$told = '';
$deadline = time + $PostgreSQL::Test::Utils::timeout_default;
while ($told !~ /Asynchronous notification/ && time < $deadline)
{
	$told .= $l2->query_safe('SELECT 1');
}
like($told, qr/"pid": $lost, "id": $lost_id, "state": "lost"/,
	'a lost job is NOTIFYed as lost');
$l2->quit;

$node->stop;
done_testing();
