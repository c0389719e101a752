# Copyright (c) 2026, The bg_fdw Authors
#
# Releases upgrade in place.  The library of the new release serves the 1.0
# SQL objects until ALTER EXTENSION bg_fdw UPDATE; the update then gives the
# objects of a fresh install and keeps every job listed.  CREATE EXTENSION
# (and the update) refuse a role bg_fdw_user that a role other than a
# superuser controls.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use FindBin;
use lib $FindBin::RealBin;
use BgFdwTest;

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$node->start;

# Everything the extension is made of, with what defines each object, so
# that two installations compare as text.
my $objects = q{
	WITH member AS (
	  SELECT classid, objid, objsubid FROM pg_depend
	   WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
	     AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'bg_fdw'))
	SELECT pg_describe_object(classid, objid, objsubid) || E'\n' ||
	       coalesce((SELECT pg_get_functiondef(p.oid) || ' acl ' || coalesce(p.proacl::text, '-')
	                   FROM pg_proc p WHERE classid = 'pg_proc'::regclass AND p.oid = objid),
	                (SELECT (SELECT string_agg(a.attname || ' ' || format_type(a.atttypid, a.atttypmod)
	                                           || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
	                                           ', ' ORDER BY a.attnum)
	                           FROM pg_attribute a
	                          WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped)
	                        || ' acl ' || coalesce(c.relacl::text, '-')
	                        || coalesce(' view ' || pg_get_viewdef(c.oid), '')
	                        || coalesce(' ' || (SELECT string_agg(pg_get_constraintdef(k.oid), '; '
	                                                              ORDER BY pg_get_constraintdef(k.oid))
	                                              FROM pg_constraint k WHERE k.conrelid = c.oid), '')
	                        || coalesce(' ' || (SELECT string_agg(pg_get_indexdef(i.indexrelid), '; '
	                                                              ORDER BY pg_get_indexdef(i.indexrelid))
	                                              FROM pg_index i WHERE i.indrelid = c.oid), '')
	                   FROM pg_class c WHERE classid = 'pg_class'::regclass AND c.oid = objid),
	                (SELECT 'acl ' || coalesce(s.srvacl::text, '-')
	                   FROM pg_foreign_server s
	                  WHERE classid = 'pg_foreign_server'::regclass AND s.oid = objid),
	                (SELECT 'handler ' || w.fdwhandler::regproc || ' validator ' || w.fdwvalidator::regproc
	                   FROM pg_foreign_data_wrapper w
	                  WHERE classid = 'pg_foreign_data_wrapper'::regclass AND w.oid = objid),
	                '')
	  FROM member ORDER BY 1
};

$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('fresh', 'CREATE EXTENSION bg_fdw');
is($node->safe_psql('fresh', "SELECT extversion FROM pg_extension WHERE extname = 'bg_fdw'"),
	'1.1', 'a fresh install is version 1.1');
$node->safe_psql('old', "CREATE EXTENSION bg_fdw VERSION '1.0'");
create_gate($node, 'old');
isnt($node->safe_psql('old', $objects), $node->safe_psql('fresh', $objects),
	'1.0 and 1.1 differ');

# The new library with the 1.0 objects: jobs that finish, fail, are
# cancelled, and one still running when the update comes.
my $out = $node->safe_psql('old', q{
	SELECT bg_launch('SELECT 6 * 7 AS answer') AS p \gset
	SELECT answer FROM bg_result_:p;
	SELECT bg_wait(:p);
	SELECT state || ' ' || command || ' ' || rows FROM bg_jobs WHERE pid = :p;
});
is($out, "42\nSELECT 1\nfinished SELECT 1 1", 'before the update, a job runs and is listed');
my ($ret, $stdout, $stderr) = $node->psql('old', q{
	SELECT bg_launch('SELECT 1 / 0') AS p \gset
	SELECT bg_wait(:p);
});
like($stderr, qr/division by zero/, 'a failing job reports its error');
$node->safe_psql('old', q{
	SELECT bg_launch($$SELECT pg_sleep('infinity')$$) AS p \gset
	SELECT bg_cancel(:p);
});
my $running = $node->safe_psql('old', q{
	SELECT bg_launch($$INSERT INTO gates SELECT 'ran' WHERE gate('go')$$) AS p \gset
	SELECT bg_detach(:p);
	SELECT :p;
});
$running = (split /\n/, $running)[-1];
$node->poll_query_until('old',
	"SELECT count(*) = 3 FROM bg_jobs WHERE state IN ('finished', 'failed', 'cancelled')")
  or die 'the jobs did not end';
my $listed = q{SELECT string_agg(pid || ' ' || state || ' ' || coalesce(sqlstate, '-'), ', ' ORDER BY id)
	FROM bg_jobs};
my $before = $node->safe_psql('old', $listed);
like($before, qr/^\d+ finished -, \d+ failed 22012, \d+ cancelled 57014, $running running -$/,
	'the 1.0 registry lists every job');

# A grant of bg_launch a superuser made goes to its new declaration.
$node->safe_psql('postgres', 'CREATE ROLE regress_granted');
$node->safe_psql('old',
	'GRANT EXECUTE ON FUNCTION bg_launch(text, integer, boolean) TO regress_granted');
$node->safe_psql('fresh',
	'GRANT EXECUTE ON FUNCTION bg_launch(text, integer, boolean, boolean, text, text, boolean) TO regress_granted');

$node->safe_psql('old', 'ALTER EXTENSION bg_fdw UPDATE');
is($node->safe_psql('old', q{
	SELECT has_function_privilege('regress_granted', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE'),
	       has_function_privilege('public', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE'),
	       has_function_privilege('bg_fdw_user', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE')}),
	't|f|t', 'the update carries the grants of bg_launch over to its new declaration');
is($node->safe_psql('old', "SELECT extversion FROM pg_extension WHERE extname = 'bg_fdw'"),
	'1.1', 'ALTER EXTENSION bg_fdw UPDATE reaches 1.1');
is($node->safe_psql('old', $objects), $node->safe_psql('fresh', $objects),
	'the updated objects equal those of a fresh install');
is($node->safe_psql('old', $listed), $before, 'the update keeps every job listed');

# The job launched before the update ends after it and records its outcome.
open_gate($node, 'old', 'go');
ok( $node->poll_query_until('old',
		"SELECT state || ' ' || command FROM bg_jobs WHERE pid = $running",
		'finished INSERT 0 1'),
	'a job running across the update records its outcome');
is($node->safe_psql('old', q{
	SELECT bg_launch('SELECT 7 AS seven') AS p \gset
	SELECT seven FROM bg_result_:p;
	SELECT bg_segments();
	SELECT bg_detach(:p);
	SELECT bg_segments();
}), "7\n0\n\n0", 'after the update, jobs run as before');
is($node->safe_psql('old', q{
	SELECT bg_launch('SELECT 8 AS eight') AS p \gset
	SELECT bg_wait(:p);
	SELECT bg_detach(:p);
	SELECT eight FROM bg_result(:p) AS r(eight int);
	SELECT string_agg(kept::text, ',' ORDER BY id) FROM bg_jobs;
}), "SELECT 1\n\n8\nfalse,false,false,false,true,true",
	'after the update, results are kept; jobs of before the update kept none');

# A role bg_fdw_user that a CREATEROLE user made and granted onward is not
# adopted: that user could hand bg_launch to anyone.
my $roles = PostgreSQL::Test::Cluster->new('roles');
$roles->init;
$roles->append_conf('postgresql.conf', "max_worker_processes = 16\nbg_fdw.max_idle_workers = 0\n");
$roles->start;
$roles->safe_psql('postgres', q{
	CREATE ROLE mallory CREATEROLE;
	CREATE ROLE eve;
	SET ROLE mallory;
	CREATE ROLE bg_fdw_user;
	GRANT bg_fdw_user TO eve;
	RESET ROLE;
});
($ret, $stdout, $stderr) = $roles->psql('postgres', 'CREATE EXTENSION bg_fdw');
like($stderr,
	qr/ERROR:  role "bg_fdw_user" is controlled by role "mallory", which is not a superuser\nDETAIL:  (Role "mallory" holds ADMIN OPTION on role "bg_fdw_user"|It granted membership in role "bg_fdw_user" to role "eve")\. It could pass bg_launch on to any role\.\nHINT:  As a superuser, revoke that membership or ADMIN OPTION/,
	'CREATE EXTENSION refuses a bg_fdw_user another role controls');
is($roles->safe_psql('postgres', "SELECT count(*) FROM pg_extension WHERE extname = 'bg_fdw'"),
	'0', 'and creates nothing');
# 1.0 adopted such a role; updating from it is refused the same way
$roles->safe_psql('postgres', "CREATE EXTENSION bg_fdw VERSION '1.0'");
($ret, $stdout, $stderr) = $roles->psql('postgres', 'ALTER EXTENSION bg_fdw UPDATE');
like($stderr, qr/role "bg_fdw_user" is controlled by role "mallory"/,
	'ALTER EXTENSION UPDATE refuses it too');
$roles->safe_psql('postgres', 'DROP EXTENSION bg_fdw; DROP ROLE bg_fdw_user');
if ($roles->pg_version < 16)
{
	# on 15 a grant outlives the role that made it: its grantor is unknown
	$roles->safe_psql('postgres', q{
		CREATE ROLE bg_fdw_user;
		CREATE ROLE trudy CREATEROLE;
		SET ROLE trudy;
		GRANT bg_fdw_user TO eve;
		RESET ROLE;
		DROP ROLE trudy;
	});
	($ret, $stdout, $stderr) = $roles->psql('postgres', 'CREATE EXTENSION bg_fdw');
	like($stderr,
		qr/role "bg_fdw_user" is controlled by a dropped role \(OID \d+\), which is not a superuser/,
		'on 15, a membership granted by a role since dropped is refused');
	$roles->safe_psql('postgres', 'DROP ROLE bg_fdw_user');
}
else
{
	# creating the role is enough: its creator holds ADMIN OPTION on it
	$roles->safe_psql('postgres', 'SET ROLE mallory; CREATE ROLE bg_fdw_user');
	($ret, $stdout, $stderr) = $roles->psql('postgres', 'CREATE EXTENSION bg_fdw');
	like($stderr, qr/DETAIL:  Role "mallory" holds ADMIN OPTION on role "bg_fdw_user"\./,
		'on 16 and later, a role a CREATEROLE user created is refused');
	$roles->safe_psql('postgres', 'DROP ROLE bg_fdw_user');
}
# nor one that can log in, whose password another role may know
$roles->safe_psql('postgres', "CREATE ROLE bg_fdw_user LOGIN PASSWORD 'known'");
($ret, $stdout, $stderr) = $roles->psql('postgres', 'CREATE EXTENSION bg_fdw');
like($stderr,
	qr/ERROR:  role "bg_fdw_user" has attributes that bg_fdw does not give it\n.*DETAIL:  It has LOGIN, a password;/s,
	'CREATE EXTENSION refuses a bg_fdw_user that can log in');
$roles->safe_psql('postgres', 'DROP ROLE bg_fdw_user');
$roles->safe_psql('postgres', 'CREATE EXTENSION bg_fdw');
is($roles->safe_psql('postgres', q{
	SELECT has_function_privilege('bg_fdw_user', 'bg_launch(text, integer, boolean, boolean, text, text, boolean)', 'EXECUTE')}),
	't', 'once the role is gone, CREATE EXTENSION makes its own');
$roles->safe_psql('postgres', 'CREATE DATABASE second');
$roles->safe_psql('second', 'CREATE EXTENSION bg_fdw');
is($roles->safe_psql('second', "SELECT extversion FROM pg_extension WHERE extname = 'bg_fdw'"),
	'1.1', 'and a second database of the cluster installs it too');

# The checks run as a superuser in a schema the database's owner may create
# objects in: an operator or function planted there is never called.
# (pg_auth_members gets a row, for a comparison over it to be made at all)
$roles->safe_psql('postgres', q{
	CREATE ROLE owner LOGIN;
	CREATE DATABASE planted OWNER owner;
	GRANT pg_read_all_stats TO owner;
});
$roles->safe_psql('planted', q{
	SET ROLE owner;
	CREATE FUNCTION public.trojan() RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
	  IF (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user) THEN
	    EXECUTE 'ALTER ROLE owner SUPERUSER';
	  END IF;
	  RETURN true;
	END $$;
	CREATE FUNCTION public.trojan_eq(oid, regrole) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM public.trojan();
	  RETURN $1 OPERATOR(pg_catalog.=) $2::oid;
	END $$;
	CREATE OPERATOR public.= (leftarg = oid, rightarg = regrole, function = public.trojan_eq);
	CREATE FUNCTION public.trojan_eq(oid, oid) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM public.trojan();
	  RETURN $1 OPERATOR(pg_catalog.=) $2;
	END $$;
	CREATE OPERATOR public.= (leftarg = oid, rightarg = oid, function = public.trojan_eq);
	CREATE FUNCTION public.format(text, text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM public.trojan();
	  RETURN pg_catalog.format($1, $2);
	END $$;
	CREATE FUNCTION public.format(text, name) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
	  PERFORM public.trojan();
	  RETURN pg_catalog.format($1, $2);
	END $$;
});
# The traps work: an unqualified call by a superuser springs each of them.
for my $call (q{SELECT format('%s', 'x'::name)}, q{SELECT 10::oid = 'owner'::regrole})
{
	$roles->safe_psql('planted', $call);
	is($roles->safe_psql('planted', "SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'"),
		't', "a planted object is called by an unqualified $call");
	$roles->safe_psql('postgres', 'ALTER ROLE owner NOSUPERUSER');
}
$roles->safe_psql('planted', 'CREATE EXTENSION bg_fdw');
is($roles->safe_psql('planted', "SELECT rolsuper FROM pg_roles WHERE rolname = 'owner'"),
	'f', 'objects planted in the extension\'s schema are not called by its scripts');

$roles->stop;
$node->stop;
done_testing();
