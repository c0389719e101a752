# Copyright (c) 2026, The bg_fdw Authors
#
# A job's result outlives its session, like nohup's output file: read from
# other sessions after the launcher was killed mid-read, by two at once,
# after a clean restart and after a crash; never by a role without the job
# role's privileges; and its file goes with bg_forget, DROP EXTENSION and
# DROP DATABASE.  A running job's partial file goes when the job is found
# lost.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use File::Path ();
use Time::HiRes qw(usleep);
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('keep');
$node->init;
$node->append_conf('postgresql.conf', qq{
max_worker_processes = 16
bg_fdw.max_idle_workers = 0
client_connection_check_interval = '100ms'
});
$node->start;
$node->safe_psql('postgres', q{
	CREATE EXTENSION bg_fdw;
	CREATE ROLE alice LOGIN IN ROLE bg_fdw_user;
	CREATE ROLE mallory LOGIN;
	CREATE SCHEMA reports AUTHORIZATION alice;
});
create_gate($node, 'postgres');
$node->safe_psql('postgres', 'GRANT ALL ON gates TO alice');

my $dboid = $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'postgres'");
my $dir = $node->data_dir . "/base/$dboid/pgsql_tmp_bg_fdw";

sub kept_file
{
	my ($id) = @_;
	return -e "$dir/$id" ? 'present' : 'absent';
}

# Poll until a process has exited (the test runs as the server's user).
sub process_gone
{
	my ($pid) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (kill(0, $pid))
	{
		return 0 if time > $deadline;
		usleep(10_000);
	}
	return 1;
}

# Poll until a file is gone: a file another process removes when its
# transaction commits goes just after the commit.
sub file_gone
{
	my ($path) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (-e $path)
	{
		return 0 if time > $deadline;
		usleep(10_000);
	}
	return 1;
}

# Alice's client dies while it reads; the job finishes after it.
my $pid = launch_and_kill_reader($node, 'postgres', q{
	SELECT g, g * 2 AS twice, md5(g::text) AS hash
	  FROM generate_series(1, 50000) g WHERE g <= 20 OR gate('a')}, 20,
	'-U', 'alice');

# While it runs, another session of the role follows its kept result as it
# grows, like tail -f: the rows so far, then the rest once the job goes on.
my $f = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
$f->query_safe(qq{
	CREATE FOREIGN TABLE reports.following (g int, twice int, hash text)
	  SERVER bg_server OPTIONS (pid '$pid');
	BEGIN;
	DECLARE c CURSOR FOR SELECT g FROM reports.following});
is($f->query_safe('FETCH 20 FROM c'), join("\n", 1 .. 20),
	'another session reads the rows of the running job so far');
is($node->safe_psql('postgres', "SELECT state FROM bg_jobs WHERE pid = $pid"),
	'running', 'while it still runs');
open_gate($node, 'postgres', 'a');
is($f->query_safe('MOVE FORWARD ALL IN c'), '',
	'the reader follows the job to its end');
is($f->query_safe(q{SELECT count(*), sum(g), sum(twice), count(DISTINCT hash)
	FROM reports.following}), '50000|1250025000|2500050000|50000',
	'and reads every row');
$f->query_safe('COMMIT');
$f->quit;
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $pid"),
	'the job finished and kept its result');
my $job = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $pid");
is(kept_file($job), 'present', 'in a file of its own');

my $sums = "SELECT count(*), sum(g), sum(twice), count(DISTINCT hash)";
my $expected = '50000|1250025000|2500050000|50000';
is($node->safe_psql('postgres', qq{
	IMPORT FOREIGN SCHEMA jobs LIMIT TO (bg_result_$pid) FROM SERVER bg_server INTO reports;
	$sums FROM reports.bg_result_$pid;
}, extra_params => [ '-U', 'alice' ]), $expected,
	'another session of the role imports it and reads every row');
is($node->safe_psql('postgres',
	"$sums FROM bg_result($pid) AS r(g int, twice int, hash text)",
	extra_params => [ '-U', 'alice' ]), $expected,
	'and reads it through bg_result');

# A reader that waits for a job whose last statement returns no rows gets
# its completion tag once the job ends, and its session carries on.
my $quiet = $node->safe_psql('postgres',
	q{SELECT bg_launch($j$DO $d$BEGIN PERFORM gate('q'); END$d$$j$)},
	extra_params => [ '-U', 'alice' ]);
my $w = start_waiting($node, 'postgres',
	"SELECT * FROM bg_result($quiet) AS r(command text)",
	'a reader in another session waits for a running job without rows',
	'-U', 'alice');
open_gate($node, 'postgres', 'q');
is($w->query_safe('SELECT 1'), "DO\n1",
	'it gets the tag once the job ends, and its next statement runs');
$w->quit;

# Two sessions at once: one stops half-way in a cursor while the other reads.
my $b = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
$b->query_safe("BEGIN; DECLARE c SCROLL CURSOR FOR SELECT g FROM reports.bg_result_$pid");
is($b->query_safe('FETCH 3 FROM c'), "1\n2\n3", 'a reader stops after three rows');
is($node->safe_psql('postgres', "$sums FROM reports.bg_result_$pid",
	extra_params => [ '-U', 'alice' ]), $expected,
	'a second reader reads every row meanwhile');
is($b->query_safe('MOVE FORWARD ALL IN c; FETCH BACKWARD 1 FROM c'), '50000',
	'the first reader goes on to the end');
$b->query_safe('COMMIT');
$b->quit;

# A result larger than what its writer leaves in the kernel's cache (the
# last 32MB): what was dropped is read back from disk, every row of it, by
# another session and by the launching session's rescans.
my $s = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
my $big = $s->query_safe(q{SELECT bg_launch($$SELECT g, md5(g::text) AS h
	FROM generate_series(1, 1000000) g$$)});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $big"),
	'a job keeps a result of a million rows');
cmp_ok($node->safe_psql('postgres',
	"SELECT kept_bytes FROM bg_jobs WHERE pid = $big"), '>', 48 * 1024 * 1024,
	'larger than the part left in the cache');
# Past that part, its writer gave the file its disk ahead of the writes
# (fallocate); what it did not use went back at the job's end.
my $big_job = $node->safe_psql('postgres',
	"SELECT max(id) FROM bg_job_registry WHERE pid = $big");
my ($big_size, $big_blocks) = (stat("$dir/$big_job"))[ 7, 12 ];
cmp_ok($big_blocks * 512, '<=', $big_size + 65536,
	'the kept file holds no disk past its end');
my $big_sums = 'SELECT count(*), sum(g), count(DISTINCT h), max(h)';
my $big_expected = $node->safe_psql('postgres',
	"$big_sums FROM (SELECT g, md5(g::text) AS h FROM generate_series(1, 1000000) g) s");
is($node->safe_psql('postgres',
	"$big_sums FROM bg_result($big) AS r(g int, h text)",
	extra_params => [ '-U', 'alice' ]), $big_expected,
	'another session reads every row of it');
is($s->query_safe(qq{SET work_mem = '64kB';
	SELECT count(*) FROM (VALUES (1), (2), (3)) v(n),
	  LATERAL (SELECT g FROM bg_result_$big WHERE g % 250000 = n OFFSET 0) r}),
	'12', 'the launching session rescans it from the file');
$s->quit;

# Past that part, the launching session, while it waits for rows, writes
# blocks of the kept file for the worker (ring.c): read as the job runs,
# every row arrives, and the file the two wrote holds every row too.
$s = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
my $ringed = $s->query_safe(q{SELECT bg_launch($$SELECT g, md5(g::text) AS h
	FROM generate_series(1, 1000000) g$$)});
is($s->query_safe("$big_sums FROM bg_result_$ringed"), $big_expected,
	'the launching session reads every row of a large result as it comes');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $ringed"),
	'the job ends keeping its result');
is($node->safe_psql('postgres',
	"$big_sums FROM bg_result($ringed) AS r(g int, h text)",
	extra_params => [ '-U', 'alice' ]), $big_expected,
	'another session reads every row of the file written by both');
$s->quit;

# A launching session killed while it reads leaves its worker to write the
# rest of the file alone.
my $left = launch_and_kill_reader($node, 'postgres', q{
	SELECT g, md5(g::text) AS h FROM generate_series(1, 1000000) g
	 WHERE g <= 900000 OR gate('ring left')}, 900000, '-U', 'alice');
open_gate($node, 'postgres', 'ring left');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $left"),
	'the job of a killed reader ends keeping its result');
is($node->safe_psql('postgres',
	"$big_sums FROM bg_result($left) AS r(g int, h text)",
	extra_params => [ '-U', 'alice' ]), $big_expected,
	'every row of it is read from the file');

# Others may not read it.
my ($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT count(*) FROM bg_result($pid) AS r(g int, twice int, hash text)",
	extra_params => [ '-U', 'mallory' ]);
like($stderr, qr/ERROR:  permission denied for background job $pid/,
	'a role without the privileges of the job role is refused');

# The job's role may be dropped while its result is kept: others are still
# refused, and superusers may read it.
$node->safe_psql('postgres', 'CREATE ROLE dora LOGIN IN ROLE bg_fdw_user');
my $dora = $node->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 7 AS seven', result_table => false) AS p \gset
	SELECT bg_wait(:p) IS NULL;
	SELECT :p;
}, extra_params => [ '-U', 'dora' ]);
$dora = (split /\n/, $dora)[-1];
$node->safe_psql('postgres', 'DROP ROLE dora');
($ret, $stdout, $stderr) = $node->psql('postgres',
	"SELECT * FROM bg_result($dora) AS r(seven int)",
	extra_params => [ '-U', 'mallory', '-v', 'VERBOSITY=verbose' ]);
like($stderr, qr/ERROR:  42501: permission denied for background job $dora\nDETAIL:  The job's role \(OID \d+\) has been dropped\./,
	'a job whose role was dropped is refused to others, saying so');
is($node->safe_psql('postgres', "SELECT * FROM bg_result($dora) AS r(seven int)"),
	'7', 'and read by a superuser');

# A clean restart keeps it.
$node->restart;
is($node->safe_psql('postgres', "$sums FROM reports.bg_result_$pid",
	extra_params => [ '-U', 'alice' ]), $expected,
	'after a clean restart, the table reads every row');

# A crash: the ended job's result is kept; a running job is lost and its
# partial file goes.
my $running = $node->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT g FROM generate_series(1, 1000) g WHERE g <= 10 OR gate('never')$$) AS p \gset
	SELECT bg_detach(:p);
	SELECT :p;
}, extra_params => [ '-U', 'alice' ]);
$running = (split /\n/, $running)[-1];
my $running_job = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $running");
ok($node->poll_query_until('postgres', "SELECT rows = 10 FROM bg_jobs WHERE pid = $running"),
	'a second job is producing rows');
is(kept_file($running_job), 'present', 'into its file');
$node->stop('immediate');
$node->start;
is($node->safe_psql('postgres', "$sums FROM reports.bg_result_$pid",
	extra_params => [ '-U', 'alice' ]), $expected,
	'after a crash, the ended job\'s result is whole');
# without a supervisor, the next job to end notices the lost one
$node->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1') AS p \gset
	SELECT bg_wait(:p);
});
ok( $node->poll_query_until('postgres',
		"SELECT state = 'lost' AND NOT kept FROM bg_jobs WHERE pid = $running"),
	'the running job is recorded as lost, with nothing kept');
ok(file_gone("$dir/$running_job"), 'and its partial file is gone');
# (a result is recorded as kept just after its job's outcome: poll)
ok( $node->poll_query_until('postgres', q{
		SELECT kept_bytes = (SELECT sum(kept_bytes) FROM bg_jobs) FROM bg_supervisor()}),
	'bg_supervisor() counts the bytes of the kept results');

# bg_forget removes the file; the table then says the job is gone.
$node->safe_psql('postgres', "SELECT bg_forget($pid)", extra_params => [ '-U', 'alice' ]);
is(kept_file($job), 'absent', 'bg_forget removes the kept file');
($ret, $stdout, $stderr) = $node->psql('postgres', "SELECT * FROM reports.bg_result_$pid",
	extra_params => [ '-U', 'alice' ]);
like($stderr, qr/background job $pid with identifier $job does not exist/,
	'a table of a forgotten job is a clear error');

# The rows a job's queue cannot take while its reader is away are only in
# its kept file: the worker writes no second copy.  A launching session that
# holds the job (here, in a transaction block) past its end reads them
# through a second name of the kept file in the job's file set, which a
# bg_forget meanwhile leaves, and which goes with the job's segment.
sub away_job
{
	my ($label, $launch_opts) = @_;
	my $holder = $node->background_psql('postgres');
	my $pid = $holder->query_safe(
		"BEGIN; SELECT bg_launch(\$\$SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g\$\$, queue_size => 65536$launch_opts)");
	$pid =~ s/.*\n//s;
	ok( $node->poll_query_until('postgres',
			"SELECT state = 'finished' FROM bg_jobs WHERE pid = $pid ORDER BY id DESC LIMIT 1"),
		"$label: the job has ended, its reader away");
	my $job = $node->safe_psql('postgres',
		"SELECT max(id) FROM bg_job_registry WHERE pid = $pid");
	my @files = map { s{.*/}{}r } glob($node->data_dir . '/base/pgsql_tmp/*.fileset/*'),
	  map { glob("$_/pgsql_tmp/*.fileset/*") } glob($node->data_dir . '/pg_tblspc/*/*');
	my ($link) = grep { m{/kept$} } glob($node->data_dir . '/base/pgsql_tmp/*.fileset/*');
	return ($holder, $pid, $job, join(' ', sort @files), $link);
}
$node->safe_psql('postgres', q{
	ALTER SYSTEM SET log_temp_files = 0;
	SELECT pg_reload_conf();
});
ok($node->poll_query_until('postgres', q{SELECT current_setting('log_temp_files') = '0'}),
	'temporary files are logged');
my $log_from = -s $node->logfile;
my ($holder, $away, $away_job, $files, $link) = away_job('kept');
is($files, 'kept', 'the rows the queue did not take have no file of their own');
is((stat($link))[1], (stat("$dir/$away_job"))[1], 'the file set names the kept file itself');
$node->safe_psql('postgres', "SELECT bg_forget($away)");
is(kept_file($away_job), 'absent', 'bg_forget removes the kept file');
is( $holder->query_safe(
		"SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) FROM bg_result_$away"),
	'50000|1250025000|50000',
	'the launching session, holding the job, still reads every row');
$holder->query_safe("COMMIT; SELECT bg_detach($away)");
is($holder->query_safe('SELECT bg_segments()'), '0', 'once detached, the job has no segment');
is(scalar(glob($node->data_dir . '/base/pgsql_tmp/*.fileset')), undef,
	'and no file set: the second name went with it');
$holder->quit;
unlike(slurp_file($node->logfile, $log_from), qr/temporary file: .*kept/,
	'the second name is not reported as a temporary file');

# A launching session that ends without taking the rows through that name
# removes it as it lets the job's segment go, before the file set's
# cleanup, which would report it.
($holder, $away, $away_job, $files, $link) = away_job('session ended unread');
ok(defined $link && -e $link, 'session ended unread: the rows are in the file set');
my $holder_pid = $holder->query_safe('SELECT pg_backend_pid()');
$holder->quit;
ok(process_gone($holder_pid), 'the session has exited');
ok(!-e $link, 'the second name went with it');
is(scalar(glob($node->data_dir . '/base/pgsql_tmp/*.fileset')), undef,
	'and so did the file set');
is(kept_file($away_job), 'present', 'the kept file stays');
unlike(slurp_file($node->logfile, $log_from), qr/temporary file: .*kept/,
	'and the name was not reported as a temporary file');

# Forgotten before this session let the job's segment go (it held the job
# unread in a transaction block, its worker gone), the job keeps its
# segment: a later bg_segments() or launch does not give it back, and the
# rows are read from the queue and the file set.  (A worker of its own, so
# that its exit can be seen.)
$holder = $node->background_psql('postgres');
$away = $holder->query_safe(q{
	SET bg_fdw.reuse_workers = off;
	BEGIN;
	SELECT bg_launch($$SELECT g, md5(g::text) AS h FROM generate_series(1, 50000) g$$,
	                 queue_size => 65536)});
$away =~ s/.*\n//s;
ok( $node->poll_query_until('postgres', qq{
		SELECT (SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $away)
		   AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $away)}),
	'an unread job has ended, its worker gone');
$node->safe_psql('postgres', "SELECT bg_forget($away)");
is($holder->query_safe('SELECT bg_segments()'), '1',
	'forgotten meanwhile, it keeps its segment');
is( $holder->query_safe(
		"SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) FROM bg_result_$away"),
	'50000|1250025000|50000',
	'and the session reads every row');
$holder->query_safe("COMMIT; SELECT bg_detach($away)");
is($holder->query_safe('SELECT bg_segments()'), '0', 'detached, it has none');
$holder->quit;

# A job that keeps nothing keeps those rows in a file of its own: the check
# above can see one.
($holder, $away, $away_job, $files) = away_job('keep => false', ', keep => false');
is($files, 'rows.0', 'the rows of a job that keeps nothing are in a file of their own');
$holder->quit;
ok($node->wait_for_log(qr/temporary file: path ".*rows\.0"/, $log_from),
	'which is reported as a temporary file once it goes');
$node->safe_psql('postgres', q{
	ALTER SYSTEM RESET log_temp_files;
	SELECT pg_reload_conf();
});

# Where the file set lies in another file system (a temporary tablespace in
# /dev/shm) no second name can be made: the rows are copied there instead.
my $shm = "/dev/shm/bg_fdw_tap_$$";
END { File::Path::rmtree($shm) if defined $shm && -d $shm; }
SKIP:
{
	skip 'no /dev/shm on a file system of its own', 8
	  unless -d '/dev/shm'
	  && (stat('/dev/shm'))[0] != (stat($node->data_dir))[0]
	  && mkdir($shm);
	$node->safe_psql('postgres', qq{
		CREATE TABLESPACE shm LOCATION '$shm';
		GRANT CREATE ON TABLESPACE shm TO PUBLIC;
		ALTER SYSTEM SET temp_tablespaces = 'shm';
		SELECT pg_reload_conf();
	});
	($holder, $away, $away_job, $files) = away_job('file set elsewhere');
	is($files, 'rows.0', 'in another file system the rows are copied to a file of their own');
	$node->safe_psql('postgres', "SELECT bg_forget($away)");
	is( $holder->query_safe(
			"SELECT count(*), sum(g), count(*) FILTER (WHERE h = md5(g::text)) FROM bg_result_$away"),
		'50000|1250025000|50000',
		'which the launching session reads whole after bg_forget');
	$holder->query_safe("COMMIT; SELECT bg_detach($away)");
	$holder->quit;

	# The copy reads the rows back from the kept file, where they may have
	# been damaged: a row's length is checked before anything is allocated
	# for it, and the job fails with XX001.
	$holder = $node->background_psql('postgres', on_error_stop => 0);
	$away = $holder->query_safe(q{
		BEGIN;
		SELECT bg_launch($$SELECT g, repeat('x', 1000) AS pad FROM generate_series(1, 4000) g
		                   WHERE g <= 2000 OR gate('damaged back')$$, queue_size => 65536)});
	$away =~ s/.*\n//s;
	ok($node->poll_query_until('postgres', "SELECT rows = 2000 FROM bg_jobs WHERE pid = $away"),
		'a job sets its rows aside, its reader away');
	$away_job = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $away");
	my $kept = slurp_file("$dir/$away_job");
	my $end = index($kept, 'x' x 1000, length($kept) / 2) + 1000;
	is( unpack('V', substr($kept, $end, 4)),
		unpack('V', substr($kept, $end + 8, 4)),
		'a row\'s length is found in the middle of its kept file');
	open(my $kfh, '+<', "$dir/$away_job") or die "could not open $dir/$away_job: $!";
	binmode($kfh);
	seek($kfh, $end, 0);
	print $kfh pack('V', 0x7fffff00);
	close($kfh);
	open_gate($node, 'postgres', 'damaged back');
	ok($node->poll_query_until('postgres', "SELECT state <> 'running' FROM bg_jobs WHERE pid = $away"),
		'the job ends');
	is($node->safe_psql('postgres', "SELECT state, sqlstate FROM bg_jobs WHERE pid = $away"),
		'failed|XX001', 'failed, its kept result damaged');
	like(
		try_query($holder, "SELECT count(*) FROM bg_result_$away"),
		qr/kept result in file ".*" is damaged\n.*A row at offset $end has a wrong length/,
		'the damaged length was found before anything was allocated for it');
	$holder->query_safe("ROLLBACK; SELECT bg_detach($away)");
	$holder->quit;
	$node->safe_psql('postgres', q{
		ALTER SYSTEM RESET temp_tablespaces;
		SELECT pg_reload_conf();
	});
	ok($node->poll_query_until('postgres', q{SELECT current_setting('temp_tablespaces') = ''}),
		'temp_tablespaces reset');
}

# A finished job's worker makes its kept file durable and records it after
# the commit that ends the job, so that readers need not wait for the
# fsync.  bg_wait, in the launching session or in another, returns once it
# is recorded; bg_forget of a job listed as finished before that waits for
# the worker rather than fail.  With fsync on (the test cluster runs
# without), the record comes late enough for both to be seen.
$node->append_conf('postgresql.conf', 'fsync = on');
$node->reload;
ok($node->poll_query_until('postgres', q{SELECT current_setting('fsync') = 'on'}),
	'fsync on');
$node->safe_psql('postgres', q{
	CREATE FUNCTION launch_kept(OUT pid int, OUT job bigint)
	LANGUAGE plpgsql AS $f$
	BEGIN
	  pid := bg_launch($q$SELECT g, repeat('x', 500) FROM generate_series(1, 20000) g$q$);
	  SELECT max(id) INTO job FROM bg_jobs j WHERE j.pid = launch_kept.pid;
	END
	$f$;
	CREATE FUNCTION recorded(job bigint) RETURNS boolean
	LANGUAGE sql AS $$SELECT kept_bytes IS NOT NULL FROM bg_job_registry WHERE id = job$$;
	CREATE FUNCTION wait_recorded(any_of boolean, OUT job bigint, OUT recorded boolean)
	LANGUAGE plpgsql AS $f$
	DECLARE
	  p int;
	BEGIN
	  SELECT * INTO p, job FROM launch_kept();
	  IF any_of THEN
	    PERFORM bg_wait_any(ARRAY[p]);
	  ELSE
	    PERFORM bg_wait(p);
	  END IF;
	  recorded := recorded(job);
	  PERFORM bg_detach(p);
	END
	$f$;
	CREATE FUNCTION finished_forget(OUT job bigint, OUT forgot_first boolean)
	LANGUAGE plpgsql AS $f$
	DECLARE
	  p int;
	BEGIN
	  SELECT * INTO p, job FROM launch_kept();
	  WHILE (SELECT state FROM bg_jobs WHERE id = job) IN ('queued', 'running') LOOP
	  END LOOP;
	  forgot_first := NOT recorded(job);
	  PERFORM bg_forget(p);
	  PERFORM bg_detach(p);
	END
	$f$});
my (@forgotten, @first);
for my $round (1 .. 3)
{
	is( $node->safe_psql('postgres', 'SELECT recorded FROM wait_recorded(false)'),
		't', "bg_wait in the launching session returns once the result is recorded, round $round");
	is( $node->safe_psql('postgres', 'SELECT recorded FROM wait_recorded(true)'),
		't', "so does bg_wait_any, round $round");
	my $other = $node->background_psql('postgres');
	my ($pid, $job) = split /\|/, $other->query_safe('SELECT * FROM launch_kept()');
	is( $node->safe_psql('postgres', "SELECT bg_wait($pid) IS NOT NULL AND recorded($job)"),
		't', "so does bg_wait in another session, round $round");
	($pid, $job) = split /\|/, $other->query_safe('SELECT * FROM launch_kept()');
	is( $node->safe_psql('postgres', "SELECT bg_wait_any(ARRAY[$pid]) = $pid AND recorded($job)"),
		't', "and bg_wait_any in another session, round $round");
	$other->quit;
	my ($id, $early) = split /\|/,
	  $node->safe_psql('postgres', 'SELECT * FROM finished_forget()');
	push @forgotten, $id;
	push @first, $early;
	is(kept_file($id), 'absent',
		"bg_forget of a job just listed finished, round $round: the file is gone");
}
note("bg_forget came before the worker's record in rounds: @first");
is( $node->safe_psql('postgres',
		'SELECT count(*) FROM bg_job_registry WHERE id IN (' . join(',', @forgotten) . ')'),
	'0', 'and the jobs are forgotten');
$node->append_conf('postgresql.conf', 'fsync = off');
$node->reload;

# A thousand launches whose transactions roll back: the jobs run on (a job
# is autonomous) and end, and their session, never reading them, is back to
# no segment mapped.
is($node->safe_psql('postgres', q{
	SELECT max(id) AS before FROM bg_jobs \gset
	DO $$BEGIN
	  FOR i IN 1..1000 LOOP
	    PERFORM bg_launch('SELECT 1');
	    ROLLBACK;
	  END LOOP;
	END$$;
	DO $$
	DECLARE
	  give_up timestamptz := clock_timestamp() + interval '5 min';
	BEGIN
	  WHILE bg_segments() > 0 AND clock_timestamp() < give_up LOOP
	    PERFORM pg_sleep(0.01);
	  END LOOP;
	END$$;
	SELECT count(*) FROM bg_jobs WHERE id > :before AND state = 'finished';
	SELECT bg_segments();
}), "1000\n0", '1,000 launch/ROLLBACK cycles leave their session with no segment');

# An idle session holds no segment of a job that ended while it was idle:
# ten rounds of ten jobs, launched and left unread, end at a gate opened
# while their session waits for its client.  Each segment is a file in
# /dev/shm (posix, no min_dynamic_shared_memory), seen from outside.
my $idle = $node->background_psql('postgres');
my $idle_backend = $idle->query_safe('SELECT pg_backend_pid()');
chomp $idle_backend;
my ($jobs_seen, $mapped, $gone, $still_idle, $read_sums) = (0, 0, 0, 0, '');
for my $round (1 .. 10)
{
	my $pids = $idle->query_safe(qq{
		SELECT string_agg(bg_launch(\$\$SELECT g FROM generate_series(1, 100) g
		                              WHERE gate('idle$round')\$\$)::text, ',')
		FROM generate_series(1, 10)});
	chomp $pids;
	my @handles = split /\n/, $node->safe_psql('postgres', qq{
		SELECT segment FROM bg_job_registry
		WHERE pid IN ($pids) AND state = 'running' AND segment IS NOT NULL});
	$jobs_seen += @handles;
	$mapped += grep { -e "/dev/shm/PostgreSQL.$_" } @handles;
	open_gate($node, 'postgres', "idle$round");
	$gone += grep { file_gone("/dev/shm/PostgreSQL.$_") } @handles;
	$still_idle += $node->safe_psql('postgres', qq{
		SELECT count(*) FROM pg_stat_activity
		WHERE pid = $idle_backend AND state = 'idle'});
	my $sum = $idle->query_safe(qq{
		SELECT sum(r.g) FROM unnest('{$pids}'::int[]) p,
		  LATERAL bg_result(p) AS r(g int)});
	chomp $sum;
	$read_sums .= "$sum ";
}
is($jobs_seen, 100, 'a hundred jobs run, each with a segment of its own');
is($mapped, 100, 'each segment is a file in /dev/shm while its job runs');
is($gone, 100, 'each goes once its job ends, its session idle and unread');
is($still_idle, 10, 'the session was idle meanwhile');
is($read_sums, '50500 ' x 10, 'the session then reads every result whole');
is($idle->query_safe('SELECT bg_segments()'), '0', 'and maps no segment');
# A notice left on the queue is passed on where the session next deals with
# the job, as if it had read it there, not at whatever statement comes first.
my $noisy = $idle->query_safe(q{
	SELECT bg_launch($$SELECT gate('noisy'); DO 'BEGIN RAISE NOTICE ''job says hi''; END'$$)});
chomp $noisy;
my ($noisy_handle) = $node->safe_psql('postgres', qq{
	SELECT segment FROM bg_job_registry WHERE pid = $noisy AND state = 'running'});
open_gate($node, 'postgres', 'noisy');
ok(file_gone("/dev/shm/PostgreSQL.$noisy_handle"), 'a job raising a notice ends, its session idle');
$idle->{stderr} = '';
$idle->query('SELECT 1');
is($idle->{stderr}, '', 'another statement gets no notice of it');
$idle->query("SELECT bg_wait($noisy)");
like($idle->{stderr}, qr/NOTICE:  job says hi/, 'its wait does');
$idle->{stderr} = '';
# Idle inside a transaction block, the session keeps the segment of a job
# that ends meanwhile; once the block rolls back, it lets it go unasked.
my $inblock = $idle->query_safe(q{SELECT bg_launch($$SELECT gate('inblock')$$)});
chomp $inblock;
my ($inblock_handle) = $node->safe_psql('postgres', qq{
	SELECT segment FROM bg_job_registry WHERE pid = $inblock AND state = 'running'});
$idle->query_safe('BEGIN');
open_gate($node, 'postgres', 'inblock');
ok( $node->poll_query_until('postgres', qq{
		SELECT kept_bytes IS NOT NULL FROM bg_job_registry WHERE pid = $inblock}),
	'a job ends while its session is idle in a transaction block');
ok(-e "/dev/shm/PostgreSQL.$inblock_handle", 'the block keeps its segment');
$idle->query_safe('ROLLBACK');
ok(file_gone("/dev/shm/PostgreSQL.$inblock_handle"),
	'the segment goes once the block has rolled back');
$idle->quit;

# A reader in another session maps a running job's segment only while it
# waits for rows: left idle with its cursor open in a transaction, it does
# not keep alive the segment of a job that has ended meanwhile.
my $followed = $node->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT g FROM generate_series(1, 200000) g
	                   WHERE g <= 10 OR gate('followed')$$)},
	extra_params => [ '-U', 'alice' ]);
my ($followed_handle) = $node->safe_psql('postgres', qq{
	SELECT segment FROM bg_job_registry WHERE pid = $followed AND state = 'running'});
my $follower = $node->background_psql('postgres', on_error_stop => 0,
	extra_params => [ '-U', 'alice' ]);
$follower->query_safe(qq{
	CREATE FOREIGN TABLE reports.followed (g int)
	  SERVER bg_server OPTIONS (pid '$followed');
	BEGIN;
	DECLARE c SCROLL CURSOR FOR SELECT g FROM reports.followed});
is($follower->query_safe('FETCH 10 FROM c'), join("\n", 1 .. 10),
	'a reader in another session follows a running job');
open_gate($node, 'postgres', 'followed');
ok(file_gone("/dev/shm/PostgreSQL.$followed_handle"),
	'the job ends and its segment goes, its reader idle in its transaction');
is($follower->query_safe('MOVE FORWARD ALL IN c; FETCH BACKWARD 1 FROM c'),
	'200000', 'the reader then reads the rest from the file');
$follower->query_safe('COMMIT');

# One whose wait an error cuts short in a subtransaction lets the segment go
# with it, though its transaction goes on.
my $waited = $node->safe_psql('postgres', q{
	SELECT bg_launch($$SELECT g FROM generate_series(1, 1000) g
	                   WHERE g <= 10 OR gate('waited')$$)},
	extra_params => [ '-U', 'alice' ]);
$follower->query_safe(qq{
	CREATE FOREIGN TABLE reports.waited (g int)
	  SERVER bg_server OPTIONS (pid '$waited');
	BEGIN;
	SAVEPOINT s;
	SET LOCAL statement_timeout = '100ms'});
like(try_query($follower, 'SELECT count(*) FROM reports.waited'),
	qr/canceling statement due to statement timeout/,
	'a reader waiting in a savepoint for rows of a running job times out');
$follower->query_safe('ROLLBACK TO s');
is($follower->query_safe('SELECT bg_segments()'), '0',
	'the rollback to the savepoint lets the job\'s segment go');
open_gate($node, 'postgres', 'waited');
is($follower->query_safe('SELECT count(*), sum(g) FROM reports.waited'),
	'1000|500500', 'and the transaction then reads the job to its end');
$follower->query_safe('COMMIT');
$follower->quit;

# A damaged kept file is an error, never wrong rows: the launching
# session's rescans of rows past work_mem and other sessions' reads check
# every row's CRC.
my $launcher = $node->background_psql('postgres', on_error_stop => 0);
$launcher->query_safe("SET work_mem = '64kB'");
my $dpid = $launcher->query_safe(q{
	SELECT bg_launch($$SELECT g, repeat('x', 1000) AS pad
					   FROM generate_series(1, 2000) g$$)});
is($launcher->query_safe("SELECT count(*), sum(g) FROM bg_result_$dpid"),
	'2000|2001000', 'a result read once by its launching session');
ok( $node->poll_query_until('postgres',
		"SELECT state = 'finished' AND kept FROM bg_jobs WHERE pid = $dpid"),
	'and kept');
my $djob = $node->safe_psql('postgres', "SELECT id FROM bg_jobs WHERE pid = $dpid");
my $bytes = slurp_file("$dir/$djob");
my $at = index($bytes, 'x' x 16, length($bytes) / 2) + 8;
ok($at > 8, 'the middle of a row is found in its kept file');
open(my $fh, '+<', "$dir/$djob") or die "could not open $dir/$djob: $!";
binmode($fh);
seek($fh, $at, 0);
print $fh 'y';
close($fh);
like(
	try_query($launcher, "SELECT count(*), sum(g) FROM bg_result_$dpid"),
	qr/kept result in file ".*" is damaged\n.*A row's checksum at offset \d+ does not match/,
	'a rescan past work_mem finds the damaged row');
my ($rc, $out, $derr) = $node->psql('postgres',
	"SELECT count(*) FROM bg_result($dpid) AS r(g int, pad text)");
like($derr,
	qr/kept result of background job $dpid is damaged\n.*a row's checksum does not match/,
	'another session finds it');
$launcher->quit;

# DROP EXTENSION and DROP DATABASE take the files with them.  A job still
# in an earlier statement at the drop makes its file after it, and nothing
# records it: the job removes it at its end.
$node->safe_psql('postgres', q{
	SELECT bg_launch('SELECT 1 AS one') AS p \gset
	SELECT bg_wait(:p);
	SELECT bg_detach(:p);
});
my $late = $node->safe_psql('postgres',
	q{SELECT bg_launch($$SELECT gate('late'); SELECT g FROM generate_series(1, 1000) g$$)});
ok(scalar(glob("$dir/*")), 'a kept file is there');
$node->safe_psql('postgres', 'DROP EXTENSION bg_fdw CASCADE');
ok(!scalar(glob("$dir/*")), 'DROP EXTENSION removes the kept files');
my $late_log = -s $node->logfile;
open_gate($node, 'postgres', 'late');
ok( $node->poll_query_until('postgres',
		"SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = $late"),
	'a job in its first statement at the drop ends');
unlike(slurp_file($node->logfile, $late_log), qr/(ERROR|FATAL|WARNING):/,
	'with no error');
ok(!scalar(glob("$dir/*")), 'and leaves no file, though it made one after the drop');
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', q{
	CREATE EXTENSION bg_fdw;
	SELECT bg_launch('SELECT 1 AS one') AS p \gset
	SELECT bg_wait(:p);
});
my $other = $node->safe_psql('postgres',
	"SELECT oid FROM pg_database WHERE datname = 'other'");
ok(scalar(glob($node->data_dir . "/base/$other/pgsql_tmp_bg_fdw/*")),
	'a job of another database keeps its result there');
ok( $node->poll_query_until('other', q{
		SELECT s.kept_bytes = j.sum AND j.sum > 0
		FROM bg_supervisor() s, (SELECT sum(kept_bytes) FROM bg_jobs) j}),
	'bg_supervisor() counts them in every database');
$node->safe_psql('postgres', 'DROP DATABASE other');
ok(!-e $node->data_dir . "/base/$other", 'DROP DATABASE removes them');

$node->stop;
done_testing();
