# Copyright (c) 2026, The bg_fdw Authors
#
# A job's messages are kept, like the 2>&1 of nohup's output file: any
# session with the job role's privileges reads them with bg_messages once
# the job has ended.  A job that sends far more than bg_fdw.max_messages_size
# while its launching session does not read (11,000 notices of 100 kB)
# finishes all the same, in bounded memory: the first and the latest
# messages are kept, and the launching session, when it reads, gets the
# first ones and a notice saying how many were not relayed.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('messages');
$node->init(extra => [ '--encoding=UTF8', '--locale=C' ]);
$node->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE alice LOGIN IN ROLE bg_fdw_user;
	CREATE ROLE mallory LOGIN;
	-- the message of the error a job ends with, as its session gets it
	CREATE FUNCTION regress_error(pid int) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM bg_wait(pid);
	  RETURN NULL;
	EXCEPTION WHEN OTHERS THEN
	  RETURN SQLERRM;
	END $$;
});

# The launching session stays idle, reading nothing, while the job talks.
my $launcher = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
my $pid = $launcher->query_safe(q{
	SELECT bg_launch($j$DO $d$ BEGIN
	  FOR i IN 1..11000 LOOP
	    RAISE NOTICE '% %', i, repeat('x', 100000);
	  END LOOP;
	END $d$$j$)});
chomp $pid;
ok( $node->poll_query_until('postgres',
		"SELECT state FROM bg_jobs WHERE pid = $pid", 'finished'),
	'a job sending 1.1 GB of notices to an idle session finishes');

# Another session of the role reads them.
my $summary = q{
	SELECT count(position), min(position), max(position),
	       bool_and(message = position || ' ' || repeat('x', 100000)),
	       count(*) FILTER (WHERE position IS NULL
	                        AND message ~ '^\d+ messages were not kept$')
	  FROM bg_messages(%d)};
my ($kept, $first, $last, $intact, $gaps) = split /\|/,
  $node->safe_psql('postgres', sprintf($summary, $pid),
	extra_params => [ '-U', 'alice' ]);
ok($kept > 2 && $kept < 20, "some of them are kept ($kept)");
is("$first|$last|$intact|$gaps", '1|11000|t|1',
	'the first and the last, whole, with one row for those dropped');
my ($head, $tail, $missing) = split /\|/, $node->safe_psql('postgres', qq{
	WITH m AS (SELECT row_number() OVER () AS n, * FROM bg_messages($pid))
	SELECT (SELECT max(n) FROM m WHERE n = position),
	       (SELECT count(*) FROM m WHERE n <> position),
	       (SELECT substring(message from '^\\d+') FROM m WHERE position IS NULL)},
	extra_params => [ '-U', 'alice' ]);
is($head + $tail + $missing, 11000,
	'the first ones and the latest ones are each in a row, and the count of the others is right');

my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT count(*) FROM bg_messages($pid)", extra_params => [ '-U', 'mallory' ]);
like($stderr, qr/ERROR:  permission denied for background job $pid/,
	'a role without the privileges of the job role may not read them');

# The launching session reads now: it gets what was kept for it, bounded.
$launcher->{stderr} = '';
is($launcher->query("SELECT bg_wait($pid)"), 'DO',
	'the launching session gets the outcome');
my $relayed = () = $launcher->{stderr} =~ /NOTICE:  \d+ x{50000}x{50000}/g;
ok($relayed > 0 && $relayed < 20,
	"it got some of the notices relayed ($relayed)");
like($launcher->{stderr},
	qr/NOTICE:  \d+ messages of background job $pid were not relayed/,
	'and a notice saying how many were not');
$launcher->quit;

# A job talks to its session in the database encoding, whatever
# client_encoding the session has or the job sets: its notices, its error
# and its column names arrive whole.
is($node->safe_psql('postgres', q{
	SET client_encoding = 'LATIN1';
	SET client_min_messages = warning;
	SELECT bg_launch(format($j$SET client_encoding = 'LATIN1';
	  SET client_min_messages = notice;
	  DO $d$BEGIN RAISE NOTICE 'caf%%', chr(233); END$d$;
	  SELECT 1 AS %I$j$, 'caf' || chr(233))) AS p \gset
	SELECT bg_wait(:p);
	SELECT attname = 'caf' || chr(233) FROM pg_attribute
	 WHERE attrelid = ('bg_result_' || :p)::regclass AND attnum = 1;
	SELECT message = 'caf' || chr(233) FROM bg_messages(:p);
	SELECT bg_launch($j$SET client_encoding = 'LATIN1';
	  DO $d$BEGIN RAISE EXCEPTION 'na%ve', chr(239); END$d$$j$) AS f \gset
	SELECT regress_error(:f) = 'na' || chr(239) || 've';
}), "SELECT 1\nt\nt\nt", 'notices, errors and column names keep their characters');

# Once the launching session is gone, they are still kept.
is($node->safe_psql('postgres', "SELECT count(position) FROM bg_messages($pid)"),
	$kept, 'the messages outlive the launching session');

# While a job runs, any session with its role's privileges reads the
# messages it has sent so far, from a file of the job's that goes with its
# worker, even one that is terminated.
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(77)');
my $running = $node->safe_psql('postgres', q{
	SELECT bg_launch($j$SET client_min_messages = notice;
	  DO $d$ BEGIN RAISE NOTICE 'first'; RAISE WARNING 'second'; END $d$;
	  SELECT pg_advisory_lock(77)$j$)}, extra_params => [ '-U', 'alice' ]);
ok( $node->poll_query_until('postgres',
		"SELECT wait_event = 'advisory' FROM pg_stat_activity WHERE pid = $running"),
	'the job waits, having talked');
is($node->safe_psql('postgres', qq{
	SELECT string_agg(position || ' ' || severity || ' ' || message, ', ' ORDER BY position)
	  FROM bg_messages($running)}, extra_params => [ '-U', 'alice' ]),
	'1 NOTICE first, 2 WARNING second',
	'another session reads the messages of a running job');
($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT count(*) FROM bg_messages($running)", extra_params => [ '-U', 'mallory' ]);
like($stderr, qr/ERROR:  permission denied for background job $running/,
	'but not a role without the privileges of the job role');
my $messages_files = q{
	SELECT count(*) FROM pg_ls_dir((SELECT 'base/' || oid || '/pgsql_tmp_bg_fdw'
	                                  FROM pg_database WHERE datname = 'postgres')) f
	 WHERE f LIKE '%.messages'};
is($node->safe_psql('postgres', $messages_files), '1', 'they are in a file');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($running)");
ok($node->poll_query_until('postgres', "$messages_files", '0'),
	'which goes with its worker');
$gate->quit;

$node->stop;
done_testing();
