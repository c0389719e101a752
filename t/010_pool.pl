# Copyright (c) 2026, The bg_fdw Authors
#
# Started workers kept for later jobs (pool.c): a job handed to one gets a
# name of its own and sees nothing of its predecessor; idle workers leave
# when their time is up, beyond bg_fdw.max_idle_workers, before parallel
# query runs short of slots, and when a command needs their database.
use strict;
use warnings;
use lib 't';
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Spec;
use BgFdwTest;

my $first_name = 4194305;

# The first random() after setseed(0.42), as any session computes it
my $seeded;

my $node = PostgreSQL::Test::Cluster->new('pool');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'bg_fdw'
max_worker_processes = 16
max_parallel_workers = 4
bg_fdw.max_idle_workers = 2
bg_fdw.worker_idle_timeout = '1h'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE regress_other;
	CREATE SEQUENCE regress_seq;
	SELECT pg_replication_origin_create('regress_origin');
});
create_gate($node, 'postgres');
$seeded = (split /\n/, $node->safe_psql('postgres', 'SELECT setseed(0.42); SELECT random()'))[-1];

my $idle_workers = q{SELECT count(*) FROM pg_stat_activity
	WHERE backend_type = 'bg_fdw worker' AND application_name = 'bg_fdw idle worker'};

# Run a job of one statement returning one text column, in a session of its
# own, and read it: (name, worker PID, result or "ERROR <sqlstate>").
sub run_job
{
	my ($db, $sql) = @_;
	my ($rc, $out, $err) = $node->psql($db, qq{
		SELECT bg_launch(\$bgjob\$$sql\$bgjob\$, result_table => false) AS p \\gset
		SELECT :p || '|' ||
		  (SELECT worker_pid FROM bg_jobs WHERE pid = :p ORDER BY id DESC LIMIT 1);
		SELECT bg_wait(:p) IS NOT NULL AND false;
		SELECT string_agg(v, ',') FROM bg_result(:p) AS r(v text);
	}, on_error_stop => 0);
	die "could not launch: $err" if $out eq '';
	my ($ids, undef, $value) = split /\n/, $out, 3;
	my ($name, $worker) = split /\|/, $ids;
	if (!defined $value)
	{
		my $state = $node->safe_psql($db,
			"SELECT 'ERROR ' || sqlstate FROM bg_jobs WHERE pid = $name ORDER BY id DESC LIMIT 1");
		$value = $state;
	}
	return ($name, $worker, $value);
}

# The first job starts a worker, which its PID names; the next one, from
# another session, is handed to it and has a name above any PID.
my ($n1, $w1, $v1) = run_job('postgres', q{SELECT 'first'});
is($v1, 'first', 'a job runs');
is($n1, $w1, 'a job that started a worker is named by its PID');
my ($n2, $w2, $v2) = run_job('postgres', q{SELECT 'second'});
is($v2, 'second', 'the next job runs too');
is($w2, $w1, 'in the worker the first job left');
cmp_ok($n2, '>=', $first_name, 'with a name above any PID');
is( $node->safe_psql('postgres',
		"SELECT count(*) FROM bg_jobs WHERE pid = $n2 AND worker_pid = $w1 AND state = 'finished'"),
	'1', 'bg_jobs lists it by its name, with its worker');
is( $node->safe_psql('postgres',
		q{SELECT idle_workers >= 1 AND jobs_handed_over >= 1 FROM bg_supervisor()}),
	't', 'bg_supervisor() counts idle workers and jobs handed over');

# The notice that some of a job's messages were not relayed to its idle
# session names the job, not the worker it was handed to.
ok( $node->poll_query_until('postgres',
		"SELECT application_name = 'bg_fdw idle worker' FROM pg_stat_activity WHERE pid = $w1"),
	'the worker is idle again');
my $quiet = $node->background_psql('postgres', on_error_stop => 0);
my $noisy = $quiet->query_safe(q{
	SELECT bg_launch($j$DO $d$ BEGIN
	  FOR i IN 1..5000 LOOP RAISE NOTICE '% %', i, repeat('x', 1000); END LOOP;
	END $d$$j$)});
chomp $noisy;
ok( $node->poll_query_until('postgres',
		"SELECT worker_pid = $w1 AND state = 'finished' FROM bg_jobs WHERE pid = $noisy"),
	'a job talking to an idle session finishes in the worker handed it');
$quiet->{stderr} = '';
is($quiet->query("SELECT bg_wait($noisy)"), "DO", "the launching session gets the outcome");
like($quiet->{stderr},
	qr/NOTICE:  \d+ messages of background job $noisy were not relayed.*bg_messages\($noisy\)/s,
	'the notice of messages not relayed names the job');
$quiet->quit;

# A job handed to a worker sees nothing of its predecessor.  Each pair runs
# in one worker (checked); the second job shows what a new session shows.
$node->safe_psql('postgres', q{ALTER ROLE postgres SET lock_timeout = '7s'});
my @isolation = (
	[ 'settings', q{SET work_mem = '77MB'; SELECT 'x'},
	  q{SELECT current_setting('work_mem')}, '4MB' ],
	[ 'settings from ALTER ROLE ... SET', q{SET lock_timeout = '1s'; SELECT 'x'},
	  q{SELECT current_setting('lock_timeout')}, '7s' ],
	[ 'role', q{SET ROLE regress_other; SELECT 'x'},
	  q{SELECT current_user || ',' || current_setting('role') || ',' || session_user},
	  'postgres,none,postgres' ],
	[ 'session authorization', q{SET SESSION AUTHORIZATION regress_other; SELECT 'x'},
	  q{SELECT current_user || ',' || session_user}, 'postgres,postgres' ],
	[ 'prepared statements', q{PREPARE regress_p AS SELECT 1; SELECT 'x'},
	  q{SELECT count(*)::text FROM pg_prepared_statements}, '0' ],
	[ 'cursors', q{BEGIN; DECLARE regress_c CURSOR WITH HOLD FOR SELECT 1; COMMIT; SELECT 'x'},
	  q{SELECT count(*)::text FROM pg_cursors}, '0' ],
	[ 'advisory locks', q{SELECT pg_advisory_lock(4711); SELECT 'x'},
	  q{SELECT count(*)::text FROM pg_locks
	    WHERE locktype = 'advisory' AND pid = pg_backend_pid()}, '0' ],
	[ 'sequence state', q{SELECT nextval('regress_seq'); SELECT 'x'},
	  q{SELECT currval('regress_seq')::text}, 'ERROR 55000' ],
	[ 'random() seed', q{SELECT setseed(0.42); SELECT 'x'},
	  qq{SELECT (random() <> $seeded)::text}, 'true' ]);
foreach my $case (@isolation)
{
	my ($what, $before, $probe, $expected) = @$case;
	my (undef, $wa, $va) = run_job('postgres', $before);
	is($va, 'x', "$what: the first job runs");
	my (undef, $wb, $vb) = run_job('postgres', $probe);
	is($wb, $wa, "$what: the next job runs in the same worker");
	is($vb, $expected, "$what: and sees none of it");
}
$node->safe_psql('postgres', q{ALTER ROLE postgres RESET lock_timeout});
is($node->safe_psql('postgres', 'SELECT pg_try_advisory_lock(4711)'), 't',
	'a job\'s advisory lock is gone with the job');

# What a reset cannot undo makes the worker leave: the next job starts one.
my @not_reused = (
	[ 'jobs of the job', q{SELECT bg_wait(bg_launch('SELECT 1', result_table => false)); SELECT 'x'}, 'x' ],
	[ 'temporary tables', q{CREATE TEMP TABLE regress_t AS SELECT 1; SELECT 'x'}, 'x' ],
	[ 'custom settings', q{SET regress.custom = 'a'; SELECT 'x'}, 'x' ],
	[ 'a replication origin', q{SELECT pg_replication_origin_session_setup('regress_origin'); SELECT 'x'}, 'x' ],
	[ 'an error', q{SELECT (1/0)::text}, 'ERROR 22012' ]);
foreach my $case (@not_reused)
{
	my ($what, $sql, $expected) = @$case;
	my (undef, $wa, $va) = run_job('postgres', $sql);
	is($va, $expected, "$what: the job runs");
	ok( $node->poll_query_until('postgres',
			"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $wa)"),
		"$what: its worker leaves");
	my (undef, $wb, $vb) = run_job('postgres', q{SELECT 'y'});
	is($vb, 'y', "$what: the next job runs elsewhere");
}

# A worker that loaded a library fits only sessions that have it loaded.
{
	my (undef, $wa, $va) = run_job('postgres', q{LOAD 'auto_explain'; SELECT 'x'});
	is($va, 'x', 'a library loaded: the job runs');
	my (undef, $wb, $vb) = run_job('postgres', q{SELECT 'y'});
	isnt($wb, $wa, 'a library loaded: a session without it gets another worker');
	my ($rc, $out) = $node->psql('postgres', qq{
		LOAD 'auto_explain';
		SELECT bg_launch('SELECT 1', result_table => false) AS p \\gset
		SELECT bg_wait(:p) IS NOT NULL AND false;
		SELECT worker_pid FROM bg_jobs WHERE pid = :p;
	});
	is((split /\n/, $out)[-1], $wa, 'a library loaded: a session with it gets that worker');
}

# A cancel that reaches a worker after its job cancels nothing of the next.
{
	my (undef, $wc) = run_job('postgres', q{SELECT 'c1'});
	ok( $node->poll_query_until('postgres',
			"SELECT application_name = 'bg_fdw idle worker' FROM pg_stat_activity WHERE pid = $wc"),
		'late cancel: the worker is idle');
	$node->safe_psql('postgres', "SELECT pg_cancel_backend($wc)");
	my (undef, $wc2, $vc2) = run_job('postgres', q{SELECT 'c2'});
	is($wc2, $wc, 'late cancel: the worker stays for the next job');
	is($vc2, 'c2', 'late cancel: which runs');
}

# What a new connection would refuse, a started worker refuses too.
$node->safe_psql('postgres', q{
	CREATE ROLE regress_super LOGIN SUPERUSER;
	CREATE ROLE regress_plain LOGIN;
	GRANT bg_fdw_user TO regress_plain, regress_super;
	CREATE TABLE regress_secret AS SELECT 'secret' AS s;
	REVOKE ALL ON regress_secret FROM PUBLIC;
});
{
	my $launch = sub {
		my ($role, $sql) = @_;
		my ($rc, $out, $err) = $node->psql('postgres', qq{
			SELECT bg_launch(\$bgjob\$$sql\$bgjob\$, result_table => false) AS p \\gset
			SELECT bg_wait(:p);
			SELECT worker_pid FROM bg_jobs WHERE pid = :p;
		}, extra_params => [ '-U', $role ]);
		return ($out, $err);
	};
	my ($out) = $launch->('regress_super', 'SELECT 1');
	my $ws = (split /\n/, $out)[-1];
	$node->safe_psql('postgres', 'ALTER ROLE regress_super NOSUPERUSER');
	my ($out2, $err2) = $launch->('regress_super',
		'SET SESSION AUTHORIZATION postgres; SELECT s FROM regress_secret');
	like($err2, qr/permission denied to set session authorization/,
		'a superuser made a plain role gets no superuser worker');
	($out) = $launch->('regress_plain', 'SELECT 1');
	$node->safe_psql('postgres', q{
		REVOKE CONNECT ON DATABASE postgres FROM PUBLIC;
	});
	my (undef, $err3) = $launch->('regress_plain', 'SELECT 1');
	like($err3, qr/permission denied for database/,
		'a role that may no longer connect gets no started worker');
	$node->safe_psql('postgres', q{GRANT CONNECT ON DATABASE postgres TO PUBLIC});
}

# bg_fdw.reuse_workers = off: the session's jobs start workers of their own.
my (undef, $wr) = run_job('postgres', q{SELECT 'z'});
my $off = $node->safe_psql('postgres', q{
	SET bg_fdw.reuse_workers = off;
	SELECT bg_launch('SELECT 1', result_table => false) AS p \gset
	SELECT bg_wait(:p) IS NOT NULL AND false;
	SELECT :p = worker_pid FROM bg_jobs WHERE pid = :p;
});
is((split /\n/, $off)[-1], 't', 'reuse_workers off: the job starts a worker');

# A job handed over is cancelled, waited for and read by its name.
my $sess = $node->background_psql('postgres');
my $name = $sess->query_safe(
	q{SELECT bg_launch($$SELECT gate('cancel')::text$$, result_table => false)});
chomp $name;
cmp_ok($name, '>=', $first_name, 'a job waiting at a gate was handed over');
ok( $node->poll_query_until('postgres',
		"SELECT wait_event IS DISTINCT FROM 'BgFdwIdle' AND application_name LIKE 'bg_fdw job $name %'
		   FROM pg_stat_activity a JOIN bg_jobs j ON a.pid = j.worker_pid WHERE j.pid = $name"),
	'its worker runs it, as pg_stat_activity shows');
is($sess->query_safe("SELECT bg_cancel($name)"), 't', 'bg_cancel of its name');
$sess->quit;
my ($rc, $out, $err) = $node->psql('postgres', "SELECT bg_wait($name)");
like($err, qr/canceling statement due to user request/,
	'bg_wait of its name, from another session, reports the cancel');
is( $node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $name"),
	'cancelled', 'and bg_jobs records it');

# An idle worker terminated by an administrator is simply gone.
my (undef, $wt) = run_job('postgres', q{SELECT 't'});
$node->safe_psql('postgres', "SELECT pg_terminate_backend($wt)");
ok( $node->poll_query_until('postgres',
		"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $wt)"),
	'an idle worker is terminated');
my (undef, $wn, $vn) = run_job('postgres', q{SELECT 'after'});
is($vn, 'after', 'the next job runs');

# No more idle workers than bg_fdw.max_idle_workers (2).
my @sessions;
foreach my $i (1 .. 4)
{
	my $s = $node->background_psql('postgres');
	$s->query_safe(qq{SELECT bg_launch(\$\$SELECT gate('many')::text\$\$, result_table => false) AS p \\gset});
	push @sessions, $s;
}
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 4 FROM bg_jobs WHERE state = 'running'}),
	'four jobs run at once');
open_gate($node, 'postgres', 'many');
$_->query_safe('SELECT bg_wait(:p)') foreach @sessions;
$_->quit foreach @sessions;
ok( $node->poll_query_until('postgres',
		q{SELECT count(*) = 2 FROM pg_stat_activity WHERE backend_type = 'bg_fdw worker'}),
	'two workers stay, idle, of four');
is($node->safe_psql('postgres', $idle_workers), '2', 'the two idle ones');

# Idle workers leave room for parallel query: with 16 worker slots and
# max_parallel_workers = 4, at most 16 - 4 - 2 (the supervisor, the logical
# replication launcher) may be idle, however many are allowed.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET bg_fdw.max_idle_workers = 12;
	SELECT pg_reload_conf();
	CREATE TABLE regress_big AS SELECT g FROM generate_series(1, 10000) g;
	ALTER TABLE regress_big SET (parallel_workers = 4);
	ANALYZE regress_big;
	CREATE FUNCTION regress_workers_launched() RETURNS int
	LANGUAGE plpgsql
	SET max_parallel_workers_per_gather = 4 SET parallel_setup_cost = 0
	SET parallel_tuple_cost = 0 AS $$
	DECLARE line text;
	BEGIN
	  FOR line IN EXECUTE 'EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF) SELECT count(*) FROM regress_big'
	  LOOP
	    IF line ~ 'Workers Launched' THEN
	      RETURN substring(line FROM 'Workers Launched: (\d+)')::int;
	    END IF;
	  END LOOP;
	  RETURN 0;
	END $$;
});
@sessions = ();
foreach my $i (1 .. 12)
{
	my $s = $node->background_psql('postgres');
	$s->query_safe(qq{SELECT bg_launch(\$\$SELECT gate('twelve')::text\$\$, result_table => false) AS p \\gset});
	push @sessions, $s;
}
open_gate($node, 'postgres', 'twelve');
$_->query_safe('SELECT bg_wait(:p)') foreach @sessions;
$_->quit foreach @sessions;
ok( $node->poll_query_until('postgres',
		'SELECT regress_workers_launched() = 4'),
	'parallel query gets all its workers');
cmp_ok($node->safe_psql('postgres', $idle_workers), '<=', 10,
	'no more workers stay idle than leave parallel query its slots');

# An idle worker holds up no command that needs its database alone.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET bg_fdw.max_idle_workers = 2;
	SELECT pg_reload_conf();
	CREATE DATABASE regress_db;
});
$node->safe_psql('regress_db', 'CREATE EXTENSION bg_fdw');
my $tablespace_dir = File::Spec->rel2abs(PostgreSQL::Test::Utils::tempdir);
$node->safe_psql('postgres', "CREATE TABLESPACE regress_ts LOCATION '$tablespace_dir'");
my @commands = (
	[ 'regress_db', 'ALTER DATABASE regress_db RENAME TO regress_db2' ],
	[ 'regress_db2', 'CREATE DATABASE regress_copy TEMPLATE regress_db2' ],
	[ 'regress_db2', 'ALTER DATABASE regress_db2 SET TABLESPACE regress_ts' ],
	[ 'regress_db2', 'DROP DATABASE regress_db2' ]);
foreach my $case (@commands)
{
	my ($db, $command) = @$case;
	run_job($db, q{SELECT 'in the database'});
	ok( $node->poll_query_until('postgres',
			"SELECT EXISTS (SELECT FROM pg_stat_activity WHERE datname = '$db'
			   AND application_name = 'bg_fdw idle worker')"),
		"an idle worker is connected to $db");
	my ($rc, $out, $err) = $node->psql('postgres', $command);
	is($rc, 0, "$command succeeds") or diag($err);
}

# Idle workers leave after bg_fdw.worker_idle_timeout.
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET bg_fdw.worker_idle_timeout = '1s';
	SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', "SELECT ($idle_workers) = 0"),
	'idle workers leave once their time is up');
ok( $node->poll_query_until('postgres',
		q{SELECT idle_workers = 0 FROM bg_supervisor()}),
	'and the pool says so');
$node->stop;
unlike(slurp_file($node->logfile), qr/you don't own a lock/,
	'an idle worker asks only about the lock it holds');

# Without preloading: on 17 and later the pool lives in the DSM registry;
# on 15 and 16 there is none, and every job starts a worker.
my $lazy = PostgreSQL::Test::Cluster->new('lazy');
$lazy->init;
$lazy->append_conf('postgresql.conf', qq{
max_worker_processes = 16
max_parallel_workers = 4
});
$lazy->start;
$lazy->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
$node = $lazy;
my ($l1, $lw1) = run_job('postgres', q{SELECT 'a'});
my ($l2, $lw2, $lv2) = run_job('postgres', q{SELECT 'b'});
is($lv2, 'b', 'not preloaded: jobs run');
if ($lazy->pg_version >= 17)
{
	is($lw2, $lw1, '17+ not preloaded: the second job runs in the first one\'s worker');
}
else
{
	isnt($lw2, $lw1, '15/16 not preloaded: every job starts a worker');
	is($l2, $lw2, '15/16 not preloaded: named by its PID');
}
$lazy->stop;

done_testing();
