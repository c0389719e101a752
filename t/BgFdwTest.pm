# Copyright (c) 2026, The bg_fdw Authors
#
# What the TAP tests of bg_fdw share: a gate a job waits at until the test
# opens it, so that no outcome depends on how long a job takes.
package BgFdwTest;

use strict;
use warnings;
use Exporter 'import';

our @EXPORT = qw(create_gate open_gate);

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

1;
