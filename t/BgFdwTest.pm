# Copyright (c) 2026, The bg_fdw Authors
#
# What the TAP tests of bg_fdw share: a gate a job waits at until the test
# opens it, so that no outcome depends on how long a job takes.
package BgFdwTest;

use strict;
use warnings;
use Exporter 'import';
use Test::More ();
use PostgreSQL::Test::Utils ();

our @EXPORT = qw(create_gate open_gate launch_and_kill_reader poll_through_crash
  start_waiting try_query);

# In a database of a node: a table of open gates, and gate(name), which
# returns true once that gate is open.  A job calls it where it must wait.
sub create_gate
{
	my ($node, $db) = @_;
	$node->safe_psql($db, q{
		CREATE TABLE gates (name text PRIMARY KEY);
		CREATE FUNCTION gate(n text) RETURNS boolean LANGUAGE plpgsql AS $$
		BEGIN
		  WHILE NOT EXISTS (SELECT FROM gates WHERE name = n) LOOP
		    PERFORM pg_sleep(0.01);
		  END LOOP;
		  RETURN true;
		END $$;
	});
}

sub open_gate
{
	my ($node, $db, $name) = @_;
	$node->safe_psql($db, "INSERT INTO gates VALUES ('$name')");
}

# Launch a job in a session of its own and start reading its result there;
# once the job has produced $rows rows, kill the session's client and wait
# until its backend is gone, checking each.  The job is to stop at a gate
# after $rows rows.  @params go to psql (-U role, say).  Returns the job's
# PID.
sub launch_and_kill_reader
{
	my ($node, $db, $sql, $rows, @params) = @_;
	my $session = $node->background_psql($db, on_error_stop => 0,
		extra_params => \@params);
	my $backend = $session->query_safe('SELECT pg_backend_pid()');
	chomp $backend;
	my $pid = $session->query_safe("SELECT bg_launch(\$bg\$$sql\$bg\$)");
	chomp $pid;
	$session->query_until(qr/reading/,
		"\\echo reading\nSELECT * FROM bg_result_$pid;\n");
	Test::More::ok(
		$node->poll_query_until($db,
			"SELECT state = 'running' AND rows = $rows FROM bg_jobs WHERE pid = $pid"),
		'the job produces rows while its launcher reads them');
	$session->{run}->kill_kill;
	Test::More::ok(
		$node->poll_query_until($db,
			"SELECT NOT EXISTS (SELECT FROM pg_stat_activity WHERE pid = $backend)"),
		'the launching session is gone');
	return $pid;
}

# poll_query_until on database postgres while the server goes through a
# crash restart: a psql refused a connection may exit before it reads its
# query, which IPC::Run reports by dying ("Broken pipe").  Such an attempt is
# simply made again.
sub poll_through_crash
{
	my ($node, $query) = @_;
	my $deadline = time + $PostgreSQL::Test::Utils::timeout_default;
	while (time < $deadline)
	{
		my $ok = eval { $node->poll_query_until('postgres', $query) };
		return $ok if defined $ok;
		die $@ unless $@ =~ /Broken pipe/;
	}
	return 0;
}

# Start $sql in a session of its own (@params go to psql) and check, by its
# wait event, that it waits for a job; returns the session, whose next
# query_safe gets $sql's output first.
sub start_waiting
{
	my ($node, $db, $sql, $name, @params) = @_;
	my $session = $node->background_psql($db, extra_params => \@params);
	my $pid = $session->query_safe('SELECT pg_backend_pid()');
	$session->query_until(qr/waiting/, "\\echo waiting\n$sql;\n");
	Test::More::ok(
		$node->poll_query_until($db,
			"SELECT wait_event IN ('BgFdwJob', 'Extension') FROM pg_stat_activity WHERE pid = $pid"),
		$name);
	return $session;
}

# Run $sql, which may fail, in a background session; returns its stderr (the
# error), leaving the session's stderr empty for the next query_safe.
sub try_query
{
	my ($session, $sql) = @_;
	$session->{stderr} = '';
	$session->query($sql);
	my $err = $session->{stderr};
	$session->{stderr} = '';
	return $err;
}

1;
