# Copyright (c) 2026, The bg_fdw Authors
#
# bg_fdw.max_held_segments_per_role: the segments the sessions of one role
# hold for their jobs, running or, for jobs that keep nothing for other
# sessions (keep => false, stream mode), not read to their end, are bounded
# across all its sessions.  A slot goes back when its result is read, when
# its job is detached, when a job that keeps its result ends, when its
# session ends however it ends, and when the launch that took it fails.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('segments');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_held_segments_per_role = 3
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE alice LOGIN IN ROLE bg_fdw_user;
	CREATE ROLE bob LOGIN IN ROLE bg_fdw_user;
});

# The slots a role's sessions hold, as pg_locks shows them
sub slots
{
	my ($role) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT count(*) FROM pg_locks
		 WHERE locktype = 'userlock' AND database = 0 AND objsubid = 16999
		   AND classid = '$role'::regrole::oid AND granted});
}

# Poll until a role's sessions hold no half of any slot (a session that
# ended gives them back as it exits, just after its client goes)
sub slots_gone
{
	my ($role) = @_;
	return $node->poll_query_until('postgres', qq{
		SELECT count(*) = 0 FROM pg_locks
		 WHERE database = 0 AND objsubid = 16999
		   AND classid = '$role'::regrole::oid});
}

# Both halves of each slot this session holds
sub halves
{
	my ($session) = @_;
	return $session->query_safe(q{
		SELECT string_agg(locktype || ' ' || objid, ', ' ORDER BY objid, locktype)
		  FROM pg_locks
		 WHERE database = 0 AND objsubid = 16999 AND pid = pg_backend_pid()});
}

# Alice holds two segments in one session and one in another: a job of
# each kind, left unread
my $a1 = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
my $a2 = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
my $streamed = $a1->query_safe(
	q{SELECT bg_launch('SELECT g FROM generate_series(1, 10) g', stream => true)});
my $unkept = $a1->query_safe(
	q{SELECT bg_launch('SELECT 1 AS one', keep => false)});
$a2->query_safe(q{SELECT bg_launch('SELECT 2 AS two', keep => false)});
is(slots('alice'), '3', 'three jobs that keep nothing take three slots of the role');

# The fourth is refused, in either session and in a third
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 3', stream => true)},
	extra_params => [ '-U', 'alice' ]);
like($err,
	qr/ERROR:  too many background jobs of role "alice" hold shared memory\nDETAIL:  Sessions of the role hold the segments of as many jobs, running or not read to their end, as "bg_fdw.max_held_segments_per_role" allows \(3\).\nHINT:  Read those results, or release them with bg_detach\(pid\); a job launched with keep => true leaves shared memory once it has ended./,
	'a launch past the role\'s limit is refused from another session');
($rc, $out, $err) = $node->psql('postgres', q{
	\\set VERBOSITY verbose
	SELECT bg_launch('SELECT 3', keep => false)},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  53400:/, 'with SQLSTATE 53400');
($rc, $out, $err) = $node->psql('postgres', q{SELECT bg_launch('SELECT 4 AS four')},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/ERROR:  too many background jobs of role "alice"/,
	'as is one that keeps its result: it takes a slot too');

# Another role has slots of its own
my $b = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'bob' ]);
$b->query_safe(q{SELECT bg_launch('SELECT 1', stream => true)}) for 1 .. 3;
is(slots('bob'), '3', 'another role takes slots of its own');
$b->quit;
ok(slots_gone('bob'), 'a session that ends gives its slots back');

# pg_advisory_unlock_all() releases one half of a slot, an abort the other,
# and the session takes back either before the other can go: even both in
# one transaction give no slot away
is(halves($a2), 'advisory 3, userlock 3', 'a slot is two locks');
$a2->query_safe('BEGIN');
$a2->query_safe('SELECT pg_advisory_unlock_all()');
is(halves($a2), 'userlock 3', 'pg_advisory_unlock_all() releases one');
($rc, $out, $err) = $node->psql('postgres',
	q{SELECT bg_launch('SELECT 3', stream => true)},
	extra_params => [ '-U', 'alice' ]);
like($err, qr/too many background jobs of role "alice"/,
	'the other keeps the slot from another session');
like(try_query($a2, 'SELECT 1 / 0'), qr/division by zero/, 'an error');
try_query($a2, 'ROLLBACK');
is(halves($a2), 'advisory 3, userlock 3',
	'and after an abort the session holds both again');
$a2->query_safe('DISCARD ALL');
is(halves($a2), 'advisory 3, userlock 3', 'as it does after DISCARD ALL');

# A session that aborts over and over while another launches in a loop:
# whatever the interleaving, no launch finds the slot free
$node->safe_psql('postgres', q{
	CREATE FUNCTION steal(n int) RETURNS int LANGUAGE plpgsql AS $$
	DECLARE
	  got int := 0;
	BEGIN
	  FOR i IN 1..n LOOP
	    BEGIN
	      PERFORM bg_detach(bg_launch('SELECT 1', stream => true,
	                                  result_table => false));
	      got := got + 1;
	    EXCEPTION WHEN configuration_limit_exceeded THEN
	    END;
	  END LOOP;
	  RETURN got;
	END
	$$;
	GRANT EXECUTE ON FUNCTION steal(int) TO alice;
});
my $thief = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
$thief->query_until(qr/stealing/, "\\echo stealing\nSELECT steal(5000);\n");
# (a ROLLBACK aborts as an error does, with nothing on stderr)
$a2->query_until(qr/aborted/,
	("BEGIN;\nSELECT pg_advisory_unlock_all();\nROLLBACK;\n" x 300)
	  . "\\echo aborted\n");
is((split /\n/, $thief->query_safe('SELECT 0'))[0], '0',
	'no launch took a slot of a session that aborted 300 times');
is(halves($a2), 'advisory 3, userlock 3', 'which holds both halves still');
$thief->quit;

# Reading a result to its end gives its slot back: a launch passes again
is($a1->query_safe("SELECT count(*) FROM bg_result_$streamed"), '10',
	'the stream job is read to its end');
is(slots('alice'), '2', 'which gives its slot back');
$a2->query_safe(q{SELECT bg_launch('SELECT 6 AS six', stream => true)});
is(slots('alice'), '3', 'so the next launch passes');

# So does bg_detach, and a session killed
$a1->query_safe("SELECT bg_detach($unkept)");
is(slots('alice'), '2', 'a job detached gives its slot back');
my $a2_pid = $a2->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($a2_pid)");
$a2->quit;
ok(slots_gone('alice'), 'a session terminated gives its slots back');

# A job that keeps its result holds its slot while it runs, and gives it
# back once it has ended, its session idle and the result unread
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(4242)');
my $kept = $a1->query_safe(q{SELECT bg_launch('SELECT pg_advisory_xact_lock(4242)')});
is(slots('alice'), '1', 'a job that keeps its result takes a slot while it runs');
$gate->query_safe('SELECT pg_advisory_unlock(4242)');
$gate->quit;
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $kept"),
	'it ends');
ok(slots_gone('alice'), 'and its slot goes back, unread');

# A launch that fails after it took its slot (no job may start) gives it
# back: more such failures than the role has slots leave none taken
$node->append_conf('postgresql.conf', 'bg_fdw.max_jobs = 0');
$node->reload;
ok($node->poll_query_until('postgres',
		q{SELECT current_setting('bg_fdw.max_jobs') = '0'}),
	'bg_fdw.max_jobs 0');
my $failed = 0;
foreach my $i (1 .. 5)
{
	($rc, $out, $err) = $node->psql('postgres', q{
		BEGIN;
		SELECT bg_launch('SELECT 1', stream => true);
		SELECT bg_launch('SELECT 1', keep => false);
		COMMIT;},
		extra_params => [ '-U', 'alice' ]);
	$failed++ if $err =~ /ERROR:  too many background jobs\n/;
}
is($failed, 5, 'launches fail while no job may start');
$a1->query_until(qr/launched/, q{
	DO $$BEGIN
	  FOR i IN 1..5 LOOP
	    BEGIN
	      PERFORM bg_launch('SELECT 1', stream => true);
	    EXCEPTION WHEN configuration_limit_exceeded THEN
	    END;
	  END LOOP;
	END$$;
	\echo launched
});
is(slots('alice'), '0', 'and leave no slot taken');
$node->adjust_conf('postgresql.conf', 'bg_fdw.max_jobs', '-1');
$node->reload;
ok($node->poll_query_until('postgres',
		q{SELECT current_setting('bg_fdw.max_jobs') = '-1'}),
	'bg_fdw.max_jobs -1');
$a1->query_safe(q{SELECT bg_launch('SELECT 1', stream => true)}) for 1 .. 3;
is(slots('alice'), '3', 'all the role\'s slots can be taken again');
$a1->quit;
ok(slots_gone('alice'), 'and the session that held them ends');

# A session that cannot take back half of a slot, because the shared lock
# table is full, gives up the job's segment rather than hold one that no
# slot counts; reading the job then says so
my $c = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
my $given = $c->query_safe(
	q{SELECT bg_launch('SELECT g FROM generate_series(1, 10) g', stream => true)});
is(halves($c), 'advisory 1, userlock 1', 'a session holds a slot');
$c->query_safe('BEGIN');
$c->query_safe('SELECT pg_advisory_unlock_all()');
like(
	try_query($c, q{DO $$BEGIN
		FOR i IN 1..100000000 LOOP PERFORM pg_advisory_xact_lock(i); END LOOP;
	END$$}),
	qr/ERROR:  out of shared memory/,
	'the lock table fills up in the transaction that released one half');
try_query($c, 'ROLLBACK');
is(halves($c), '', 'the abort leaves the session neither half of the slot');
is($c->query_safe('SELECT bg_segments()'), '0', 'nor the job\'s segment');
like(try_query($c, "SELECT count(*) FROM bg_result_$given"),
	qr/ERROR:  result of background job $given was given up\nDETAIL:  The shared lock table was full/,
	'reading the job says its result was given up');
is(slots('alice'), '0', 'and the role holds no slot');
$c->quit;

done_testing();
