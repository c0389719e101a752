#!/bin/bash
# Install what is missing, build and install bg_fdw, then run the whole
# test suite: pg_regress (sql/, expected/) on a temporary instance and the
# TAP tests (t/) with PostgreSQL::Test::Cluster.
#
# By default it runs on the machine's PostgreSQL 15 and then on
# PostgreSQL 17 and 18, each in a scratch Debian system (scripts/chroot.sh)
# built once and kept for later runs.  --host-only runs only the first.
#
# Prints one line per PostgreSQL version and a closing "N passed, N failed"
# line; exits non-zero if any test failed.  A version that cannot be built,
# installed or started counts as one failure, with the reason, and the run
# goes on to the next version.
source "$(dirname "$0")/lib.sh"
source "$TOP/scripts/chroot.sh"

HOST_ONLY=
[ "${1:-}" = "--host-only" ] && HOST_ONLY=1
OTHER_VERSIONS=${BG_TEST_VERSIONS:-"17 18"}

# Run pg_regress and the TAP tests against the installed build; sets
# $passed and $failed (counted per test file).
bg_run_suites() {
	local PGXS_DIR PG_REGRESS tests r_ok r_bad t_ok=0 t_bad=0 f
	PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..
	PG_REGRESS=$PGXS_DIR/test/regress/pg_regress

	cp -r "$TOP/sql" "$TOP/expected" "$TOP/regress.conf" "$TOP/t" "$SCRATCH/"
	[ "$(id -u)" -eq 0 ] && chown -R postgres: "$SCRATCH"
	tests=$(sed -n 's/^REGRESS = //p' "$TOP/Makefile")
	set +e
	(cd "$SCRATCH" && as_pg "$PG_REGRESS" --bindir="$PG_BINDIR" \
		--temp-instance="$SCRATCH/tmp_regress" --temp-config="$SCRATCH/regress.conf" \
		--inputdir="$SCRATCH" --outputdir="$SCRATCH" $tests) | tee "$SCRATCH/regress.log"
	set -e
	# PostgreSQL 15 prints "test x ... ok", 16 and later "ok 1 - x"
	r_ok=$(grep -cE '^ok [0-9]|\.\.\. ok( |$)' "$SCRATCH/regress.log" || true)
	r_bad=$(grep -cE '^not ok [0-9]|\.\.\. FAILED' "$SCRATCH/regress.log" || true)
	if [ -f "$SCRATCH/regression.diffs" ]; then
		echo "---- regression.diffs ----"
		cat "$SCRATCH/regression.diffs"
		[ "$r_bad" -gt 0 ] || r_bad=1
	fi
	echo "pg_regress (PostgreSQL $PG_MAJOR): $r_ok passed, $r_bad failed"

	# TAP: one prove run per file, so a failing file is counted as one.
	for f in "$SCRATCH"/t/*.pl; do
		if (cd "$SCRATCH" && as_pg env PG_REGRESS="$PG_REGRESS" \
			PERL5LIB="$PGXS_DIR/test/perl" prove -v "t/$(basename "$f")") \
			>"$SCRATCH/tap.log" 2>&1; then
			t_ok=$((t_ok + 1))
			grep -E '^(ok|not ok) ' "$SCRATCH/tap.log" | sed 's/^/    /'
			echo "ok - $(basename "$f")"
		else
			t_bad=$((t_bad + 1))
			cat "$SCRATCH/tap.log"
			find "$SCRATCH/tmp_check" -name '*.log' 2>/dev/null |
				while read -r l; do echo "---- $l"; tail -40 "$l"; done
			echo "not ok - $(basename "$f")"
		fi
		rm -rf "$SCRATCH/tmp_check"
	done
	echo "TAP (PostgreSQL $PG_MAJOR): $t_ok passed, $t_bad failed"
	passed=$((r_ok + t_ok))
	failed=$((r_bad + t_bad))
}

# Count a version whose run could not start as one failure, with why.
bg_no_run() {
	summary+=$'\n'"PostgreSQL $1: FAILED before any test ran: $2"
	total_failed=$((total_failed + 1))
}

summary=
total_passed=0
total_failed=0
deps_ok=1
bg_install_deps || deps_ok=
bg_scratch
trap 'bg_chroot_umount_all; bg_cleanup' EXIT

if [ -z "$deps_ok" ]; then
	bg_no_run "$PG_MAJOR" "the packages it needs could not be installed"
elif ! bg_build; then
	bg_no_run "$PG_MAJOR" "bg_fdw did not build cleanly (see above)"
else
	bg_run_suites
	summary="PostgreSQL $PG_MAJOR: $passed passed, $failed failed"
	total_passed=$passed
	total_failed=$failed
fi

if [ -z "$HOST_ONLY" ]; then
	for major in $OTHER_VERSIONS; do
		echo "==== PostgreSQL $major ===="
		if ! dir=$(bg_chroot_ensure "$major" 2> >(tee "$SCRATCH/chroot.err" >&2)); then
			bg_no_run "$major" "$(tail -1 "$SCRATCH/chroot.err")"
			continue
		fi
		bg_chroot_test "$major" "$dir" 2>&1 | tee "$SCRATCH/chroot-$major.log" || true
		# the inner run's own closing line; absent if it died on the way
		line=$(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$SCRATCH/chroot-$major.log" | tail -1 || true)
		if [ -z "$line" ]; then
			bg_no_run "$major" "$(grep -v '^$' "$SCRATCH/chroot-$major.log" | tail -1)"
			continue
		fi
		summary+=$'\n'"PostgreSQL $major: $line"
		total_passed=$((total_passed + ${line%% passed*}))
		f=${line#*passed, }
		total_failed=$((total_failed + ${f%% failed*}))
	done
fi

echo "==== summary ===="
echo "${summary#$'\n'}"
echo "$total_passed passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
