# Copyright (c) 2026, The bg_fdw Authors
#
# Jobs that find no free worker slot, or bg_fdw.max_jobs running, wait in
# the queue (queue.c): bg_launch returns at once, with a name above any PID;
# the supervisor starts them in launch order as slots free up; a queued job
# is listed, waited for, read (from any session), imported, cancelled and
# detached like any other; the queue's caps hold; a restart cancels it.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use BgFdwTest;

my $first_name = 4194305;

my $node = PostgreSQL::Test::Cluster->new('queue');
$node->init;
# 12 slots: the supervisor and the logical replication launcher take two
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'bg_fdw'
max_worker_processes = 12
max_parallel_workers = 0
bg_fdw.max_idle_workers = 0
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE regress_user LOGIN;
	GRANT bg_fdw_user TO regress_user;
	GRANT CREATE ON SCHEMA public TO regress_user;
	GRANT TEMP ON DATABASE postgres TO regress_user;
});
create_gate($node, 'postgres');

# Set settings in postgresql.conf and reload, until this session sees them.
sub reload_settings
{
	my ($name, @settings) = @_;
	my (@lines, @checks);
	while (my ($setting, $value) = splice(@settings, 0, 2))
	{
		push @lines, "$setting = '$value'";
		push @checks, "current_setting('$setting') = '$value'";
	}
	$node->append_conf('postgresql.conf', join("\n", @lines));
	$node->reload;
	ok($node->poll_query_until('postgres', 'SELECT ' . join(' AND ', @checks)), $name);
}
$node->safe_psql('postgres', q{GRANT SELECT ON gates TO PUBLIC});
# the sweep after start takes a slot of its own until it is done
ok( $node->poll_query_until('postgres',
		q{SELECT state = 'running' FROM bg_supervisor()}),
	'the supervisor runs');

# 30 jobs on 10 free slots, from one session: each waits at the gate.
my $session = $node->background_psql('postgres');
my @names;
for my $i (1 .. 30)
{
	push @names, $session->query_safe(
		"SELECT bg_launch(\$\$SELECT $i AS i, gate('many') AS g FROM generate_series(1, $i)\$\$)");
}
my $names = join(',', @names);
is( $node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE state IN ('running', 'queued'))
		FROM bg_jobs WHERE pid IN ($names)}),
	'30', 'every launch returned at once: its job runs or is queued');
my $queued = $node->safe_psql('postgres',
	"SELECT count(*) FROM bg_jobs WHERE state = 'queued' AND pid IN ($names)");
cmp_ok($queued, '>=', 19, 'the jobs beyond the free slots are queued');
is( $node->safe_psql('postgres', qq{
		SELECT bool_and(pid >= $first_name AND worker_pid IS NULL AND query LIKE 'SELECT % AS i%')
		FROM bg_jobs WHERE state = 'queued'}),
	't', 'a queued job has a name above any PID, no worker yet, and its query');
is( $node->safe_psql('postgres', q{SELECT queued_jobs FROM bg_supervisor()}),
	$queued, 'bg_supervisor counts them');
ok( $node->poll_query_until('postgres', q{
		SELECT running_jobs = (SELECT count(*) FROM bg_jobs WHERE state = 'running')
		   AND running_jobs = 30 - queued_jobs AND queued_bytes > 0
		FROM bg_supervisor()}),
	'bg_supervisor counts the running jobs and the bytes queued');
is( $session->query_safe(
		"SELECT count(*) FROM pg_class WHERE relname IN (SELECT 'bg_result_' || unnest(ARRAY[$names]))"),
	'30', 'each has its result table at once');

# A reader of a queued job, in another session, waits until it runs.
my $last = $names[-1];
my $reader = $node->background_psql('postgres');
my $reader_pid = $reader->query_safe('SELECT pg_backend_pid()');
$reader->query_until(qr/reading/,
	"\\echo reading\nSELECT sum(i) FROM bg_result($last) AS r(i int, g boolean);\n");
ok( $node->poll_query_until('postgres',
		"SELECT wait_event IN ('BgFdwQueued', 'Extension') FROM pg_stat_activity WHERE pid = $reader_pid"),
	'a reader of a queued job waits for it');

# IMPORT FOREIGN SCHEMA in another session brings in a queued job's table.
$node->safe_psql('postgres', qq{
	CREATE SCHEMA imported;
	IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_$last) FROM SERVER bg_server INTO imported;
});
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(attname || ' ' || format_type(atttypid, atttypmod), ', ' ORDER BY attnum)
		FROM pg_attribute WHERE attrelid = 'imported.bg_result_$last'::regclass AND attnum > 0}),
	'i integer, g boolean', 'IMPORT FOREIGN SCHEMA makes the table of a queued job');

# Cancelled while queued, a job runs nothing and says so.
my $cancelled = $names[-2];
is($node->safe_psql('postgres', "SELECT bg_cancel($cancelled)"), 't',
	'bg_cancel of a queued job');
is( $node->safe_psql('postgres',
		"SELECT state || ' ' || sqlstate || ' ' || (finished_at IS NOT NULL) FROM bg_jobs WHERE pid = $cancelled"),
	'cancelled 57014 true', 'bg_jobs shows it cancelled at once');
my ($rc, $out, $err) = $node->psql('postgres', "SELECT bg_wait($cancelled)");
like($err, qr/canceling statement due to user request/,
	'bg_wait of it raises the cancel');

# Detached while queued: its table goes, when the transaction commits.
my $detached = $names[-3];
$session->query_safe("BEGIN; SELECT bg_detach($detached); ROLLBACK");
is( $session->query_safe(
		"SELECT count(*) FROM pg_class WHERE relname = 'bg_result_$detached'"),
	'1', 'bg_detach of a queued job rolled back leaves its table');
$session->query_safe(
	"BEGIN; SAVEPOINT s; SELECT bg_detach($detached); ROLLBACK TO SAVEPOINT s; COMMIT");
is( $session->query_safe(
		"SELECT count(*) FROM pg_class WHERE relname = 'bg_result_$detached'"),
	'1', 'bg_detach of a queued job rolled back to a savepoint leaves its table');
$session->query_safe(q{
	CREATE FUNCTION pg_temp.detach_as_user(n int) RETURNS text
	LANGUAGE plpgsql AS $$
	BEGIN
	  SET LOCAL ROLE regress_user;
	  PERFORM bg_detach(n);
	  RETURN 'detached';
	EXCEPTION WHEN insufficient_privilege THEN
	  RETURN SQLERRM;
	END $$});
is( $session->query_safe("SELECT pg_temp.detach_as_user($detached)"),
	"permission denied for background job $detached",
	'bg_detach of a queued job needs the privileges of its role');
$session->query_safe(
	"BEGIN; SAVEPOINT s; SELECT bg_detach($detached); RELEASE SAVEPOINT s; COMMIT");
is( $session->query_safe(
		"SELECT count(*) FROM pg_class WHERE relname = 'bg_result_$detached'"),
	'0', 'bg_detach of a queued job drops its table');
$session->query("SELECT bg_detach($detached)");
like($session->{stderr}, qr/background job $detached is already detached, skipping/,
	'detaching it again says so');
$session->{stderr} = '';

# Open the gate: every job runs, in turn, and every result reads whole.
open_gate($node, 'postgres', 'many');
my $reader_out = $reader->query_safe('SELECT 1');
like($reader_out, qr/^\Q@{[30 * 30]}\E\n1$/m,
	'the reader read the queued job once it ran');
$reader->quit;
my @expected;
my @got;
for my $i (1 .. 30)
{
	next if $names[ $i - 1 ] == $cancelled;
	my $n = $names[ $i - 1 ];
	push @expected, "$i:" . ($i * $i);
	push @got, $session->query_safe(
		"SELECT bg_wait($n); SELECT '$i:' || coalesce(sum(i), 0) FROM bg_result($n) AS r(i int, g boolean)");
}
s/^SELECT \d+\n//s for @got;
is(join(' ', @got), join(' ', @expected), 'all 29 jobs ran and read whole');
is( $node->safe_psql('postgres', "SELECT sum(i) FROM imported.bg_result_$last"),
	30 * 30, 'the imported table reads the job');
is( $node->safe_psql('postgres', qq{
		SELECT state || ' ' || sqlstate FROM bg_jobs WHERE pid = $cancelled}),
	'cancelled 57014', 'the cancelled job is recorded cancelled');
($rc, $out, $err) = $node->psql('postgres', "SELECT * FROM bg_result($cancelled) AS r(i int, g boolean)");
like($err, qr/canceling statement due to user request/,
	'reading the cancelled job raises the cancel');
ok( $node->poll_query_until('postgres',
		q{SELECT queued_jobs = 0 AND queued_bytes = 0 AND jobs_dequeued >= 19 FROM bg_supervisor()}),
	'the queue is empty, the jobs were started from it');
$session->quit;

# bg_fdw.max_jobs_per_role counts running jobs: a launch over it is queued,
# and starts once one of the role's jobs has ended; other roles' jobs do not
# wait behind it.
reload_settings('bg_fdw.max_jobs_per_role set',
	'bg_fdw.max_jobs_per_role' => '1');
my $role_session = $node->background_psql('postgres', extra_params => [ '-U', 'regress_user' ]);
my $first = $role_session->query_safe(q{SELECT bg_launch($$SELECT gate('role')$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $first"),
	'the role runs one job');
my $second = $role_session->query_safe(q{SELECT bg_launch($$SELECT 'second'$$)});
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $second"),
	'queued', 'its second job is queued, not refused');
is( $node->safe_psql('postgres', q{SELECT bg_wait(bg_launch($$SELECT 'other'$$))}),
	'SELECT 1', 'another role runs a job meanwhile');
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $second"),
	'queued', 'the second job still waits for the first');
open_gate($node, 'postgres', 'role');
is( $role_session->query_safe(
		"CALL bg_await($second); SELECT v FROM bg_result($second) AS r(v text)"),
	"second", 'once the first ended, the second runs (CALL bg_await waits for it)');

# Jobs deferred for the role's limit start in launch order, one per job of
# the role that ends, and all may start again when the limit is raised.
$first = $role_session->query_safe(q{SELECT bg_launch($$SELECT gate('role1')$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $first"),
	'the role runs one job again');
$second = $role_session->query_safe(q{SELECT bg_launch($$SELECT gate('role2')$$)});
my $third = $role_session->query_safe(q{SELECT bg_launch($$SELECT 'third'$$)});
$node->append_conf('postgresql.conf', 'bg_fdw.max_jobs_per_role = 2');
$node->reload;
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $second"),
	'bg_fdw.max_jobs_per_role raised: the oldest deferred job starts');
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $third"),
	'queued', 'the next waits while the role runs two');
open_gate($node, 'postgres', 'role1');
is( $role_session->query_safe(
		"CALL bg_await($third); SELECT v FROM bg_result($third) AS r(v text)"),
	"third", 'once one of the two ended, the next runs');
open_gate($node, 'postgres', 'role2');
is( $role_session->query_safe("SELECT bg_wait($second)"), 'SELECT 1',
	'and the other ends');
$role_session->quit;
reload_settings('bg_fdw.max_jobs_per_role reset',
	'bg_fdw.max_jobs_per_role' => '-1');

# A queued job passed the caps on kept results at its launch; it checks them
# again when it starts, and fails as a launch would then.
reload_settings('bg_fdw.max_jobs_per_role and bg_fdw.max_kept_size_per_role set',
	'bg_fdw.max_jobs_per_role' => '1', 'bg_fdw.max_kept_size_per_role' => '1MB');
$role_session = $node->background_psql('postgres', extra_params => [ '-U', 'regress_user' ]);
$first = $role_session->query_safe(q{SELECT bg_launch($$SELECT gate('cap1');
	SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 3000) g WHERE g < 3000 OR gate('cap2')$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $first"),
	'the role runs a job that keeps nothing yet');
$second = $role_session->query_safe(q{SELECT bg_launch($$SELECT 'late'$$)});
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $second"),
	'queued', 'a second job passes the caps and is queued');
open_gate($node, 'postgres', 'cap1');
ok( $node->poll_query_until('postgres',
		"SELECT kept_bytes >= 1048576 FROM bg_jobs WHERE pid = $first"),
	'the first job keeps more than the role may');
open_gate($node, 'postgres', 'cap2');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'failed' FROM bg_jobs WHERE pid = $second"),
	'once it ends, the queued job starts and fails');
like( $node->safe_psql('postgres',
		"SELECT sqlstate || ' ' || error FROM bg_jobs WHERE pid = $second"),
	qr/^53400 kept results of role "regress_user" exceed "bg_fdw.max_kept_size_per_role" \(1024kB\)$/,
	'with the error its launch would get now');
$role_session->quit;
reload_settings('both reset',
	'bg_fdw.max_jobs_per_role' => '-1', 'bg_fdw.max_kept_size_per_role' => '10GB');

# bg_fdw.max_jobs: the launch beyond it waits in the queue though slots
# are free; one that keeps nothing is refused.
reload_settings('bg_fdw.max_jobs set',
	'bg_fdw.max_jobs' => '1');
$session = $node->background_psql('postgres');
my $one = $session->query_safe(q{SELECT bg_launch($$SELECT gate('max')$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $one"),
	'one job runs');
my $two = $session->query_safe(q{SELECT bg_launch($$SELECT gate('max'), 'two'$$)});
my $three = $session->query_safe(q{SELECT bg_launch($$SELECT gate('max'), 'three'$$)});
is( $node->safe_psql('postgres', "SELECT string_agg(state, ',') FROM bg_jobs WHERE pid IN ($two, $three)"),
	'queued,queued', 'the next ones wait in the queue');

# The supervisor killed: the one the postmaster starts again takes over.
my $old_sup = $node->safe_psql('postgres', 'SELECT pid FROM bg_supervisor()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_sup)");
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' AND pid <> $old_sup FROM bg_supervisor()"),
	'a killed supervisor is started again');

# bg_fdw.max_jobs raised to 2: exactly one more starts.
$node->append_conf('postgresql.conf', 'bg_fdw.max_jobs = 2');
$node->reload;
ok( $node->poll_query_until('postgres', qq{
		SELECT count(*) FILTER (WHERE state = 'running') = 2
		   AND count(*) FILTER (WHERE state = 'queued') = 1
		FROM bg_jobs WHERE pid IN ($one, $two, $three)}),
	'bg_fdw.max_jobs raised: the new supervisor starts one more queued job');
is( $node->safe_psql('postgres', qq{
		SELECT string_agg(state, ',' ORDER BY id) FROM bg_jobs WHERE pid IN ($one, $two, $three)}),
	'running,running,queued', 'in launch order, and no more than bg_fdw.max_jobs');
reload_settings('bg_fdw.max_jobs 1 again',
	'bg_fdw.max_jobs' => '1');
my $labelled = $session->query_safe(
	q{SELECT bg_launch('SELECT 3', label => 'regress_queued')});
is( $node->safe_psql('postgres', q{SELECT bg_cancel_label('regress_%')}),
	'1', 'bg_cancel_label cancels a queued job');
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $labelled"),
	'cancelled', 'which is cancelled at once');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 1', keep => false)});
like($err, qr/too many background jobs.*\n.*"bg_fdw.max_jobs" is 1/,
	'a job that keeps nothing is refused, not queued');
open_gate($node, 'postgres', 'max');
is( $session->query_safe(
		"SELECT bg_wait($three); SELECT v FROM bg_result($three) AS r(g boolean, v text)"),
	"SELECT 1\nthree", 'the queued jobs run once the first have ended');

# A job's own launch is not queued: a job waiting for the jobs it launches,
# holding its slot, would wait for ever once every slot is held so.
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT bg_wait(bg_launch($$SELECT bg_wait(bg_launch('SELECT 1'))$$))});
like($err, qr/too many background jobs.*\n.*\n.*A job launched by a background job is not queued/,
	'a job launching a job past bg_fdw.max_jobs fails, it does not queue');

# The queue's caps, here per role.
reload_settings('bg_fdw.max_queued_jobs_per_role set',
	'bg_fdw.max_queued_jobs_per_role' => '2');
my $user = $node->background_psql('postgres', extra_params => [ '-U', 'regress_user' ]);
$one = $user->query_safe(q{SELECT bg_launch($$SELECT gate('caps')$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'running' FROM bg_jobs WHERE pid = $one"),
	'a job of the role runs');
$user->query_safe(q{SELECT bg_launch('SELECT 2')}) for 1 .. 2;
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 3')}, extra_params => [ '-U', 'regress_user' ]);
like($err, qr/too many queued background jobs for role "regress_user"/,
	'a role cannot queue beyond bg_fdw.max_queued_jobs_per_role');
is( $node->safe_psql('postgres', q{SELECT queued_jobs FROM bg_supervisor()}),
	'2', 'and nothing of the refused launch stays queued');

# A restart cancels the queued jobs, which any session then finds so, with
# the reason; names stay above those the registry holds.
my @left = split /\n/, $node->safe_psql('postgres',
	"SELECT pid FROM bg_jobs WHERE state = 'queued' ORDER BY pid");
my $left_query = $node->safe_psql('postgres', "SELECT query FROM bg_jobs WHERE pid = $left[0]");
my $records = $node->data_dir . '/bg_fdw.queue';
opendir(my $dh, $records) or die "could not open $records: $!";
is(scalar(grep { /^\d+$/ } readdir($dh)), scalar(@left),
	'each queued job has a record in the data directory');
closedir($dh);
$user->quit;
$session->quit;
$node->restart;
my $left = join(',', @left);
ok( $node->poll_query_until('postgres', qq{
		SELECT count(*) = @{[ scalar(@left) ]} FROM bg_jobs
		WHERE pid IN ($left) AND state = 'cancelled'}),
	'after a restart, the jobs that were queued are listed cancelled');
($rc, $out, $err) = $node->psql('postgres', "SELECT bg_wait($left[0])");
like($err, qr/background job $left[0] was cancelled: the server restarted before it started/,
	'bg_wait of one says why');
is( $node->safe_psql('postgres', qq{
		SELECT sqlstate || ' ' || query FROM bg_jobs WHERE pid = $left[0]}),
	"57P01 $left_query", 'with its SQLSTATE and query');
opendir($dh, $records) or die "could not open $records: $!";
is(scalar(grep { /^\d+$/ } readdir($dh)), 0, 'and their records are gone');
closedir($dh);
my $highest = $node->safe_psql('postgres', 'SELECT max(pid) FROM bg_job_registry');
reload_settings('bg_fdw.max_jobs 0',
	'bg_fdw.max_jobs' => '0');
my $after = $node->safe_psql('postgres', q{SELECT bg_launch('SELECT 1')});
cmp_ok($after, '>', $highest, 'a name after a restart is above every name listed');
cmp_ok($after, '>', $left[-1],
	'and above every name a queued job had before the restart');

# A launch that fails after its job was queued (its result table cannot be
# made) leaves nothing queued.
my $next = $after + 1;
($rc, $out, $err) = $node->psql('postgres', qq{
	CREATE TEMP TABLE bg_result_$next (x int);
	SELECT bg_launch('SELECT 1');});
like($err, qr/relation "bg_result_$next" already exists/,
	'a launch whose table cannot be made fails');
is( $node->safe_psql('postgres',
		q{SELECT string_agg(pid::text, ',') FROM bg_jobs WHERE state = 'queued'}),
	$after, 'and its job does not stay queued');

# A crash restart cancels the queued jobs too.
my $victim = $node->background_psql('postgres');
my $victim_pid = $victim->query_safe('SELECT pg_backend_pid()');
kill 'KILL', $victim_pid;
ok( poll_through_crash($node,
		"SELECT state = 'cancelled' FROM bg_jobs WHERE pid = $after"),
	'after a crash restart, the job that was queued is listed cancelled');
eval { $victim->quit };

# DROP EXTENSION takes the database's queued jobs with it.
$node->safe_psql('postgres', q{SELECT bg_launch('SELECT 1')});
is( $node->safe_psql('postgres', q{SELECT queued_jobs FROM bg_supervisor()}),
	'1', 'a job is queued');
$node->safe_psql('postgres', q{
	DROP EXTENSION bg_fdw CASCADE;
	CREATE EXTENSION bg_fdw;
});
is( $node->safe_psql('postgres', q{SELECT queued_jobs FROM bg_supervisor()}),
	'0', 'DROP EXTENSION drops the queued jobs of its database');

# A launch that is queued holds no segment, so it takes no slot of
# bg_fdw.max_held_segments_per_role: it passes however few the role has.
my $unslotted = $node->safe_psql('postgres', q{
	SET bg_fdw.max_held_segments_per_role = 0;
	SELECT bg_launch('SELECT 1')});
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $unslotted"),
	'queued', 'a launch queued passes when its role may hold no segment');

$node->stop;
done_testing();
