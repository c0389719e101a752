#!/bin/bash
# Install what is missing, build and install bg_fdw, then run the whole
# test suite: pg_regress (sql/, expected/) on a temporary instance and the
# TAP tests (t/) with PostgreSQL::Test::Cluster.  Prints one line per suite
# and a closing "N passed, N failed" line; exits non-zero on any failure.
source "$(dirname "$0")/lib.sh"

bg_install_deps
bg_scratch
bg_build

PGXS_DIR=$(dirname "$("$PG_CONFIG" --pgxs)")/..
PG_REGRESS=$PGXS_DIR/test/regress/pg_regress
passed=0
failed=0

# pg_regress: copy the inputs where the postgres user can write results.
cp -r "$TOP/sql" "$TOP/expected" "$TOP/regress.conf" "$SCRATCH/"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$SCRATCH"
tests=$(sed -n 's/^REGRESS = //p' "$TOP/Makefile")
set +e
(cd "$SCRATCH" && as_pg "$PG_REGRESS" --bindir="$PG_BINDIR" \
	--temp-instance="$SCRATCH/tmp_regress" --temp-config="$SCRATCH/regress.conf" \
	--inputdir="$SCRATCH" --outputdir="$SCRATCH" $tests) | tee "$SCRATCH/regress.log"
set -e
r_ok=$(grep -cE '^(ok|test) .* ok( |$)|\.\.\. ok' "$SCRATCH/regress.log" || true)
r_bad=$(grep -cE 'FAILED|failed \(ignored\)' "$SCRATCH/regress.log" || true)
if [ -f "$SCRATCH/regression.diffs" ]; then
	echo "---- regression.diffs ----"
	cat "$SCRATCH/regression.diffs"
	[ "$r_bad" -gt 0 ] || r_bad=1
fi
echo "pg_regress (PostgreSQL $PG_MAJOR): $r_ok passed, $r_bad failed"
passed=$((passed + r_ok))
failed=$((failed + r_bad))

# TAP: one prove run per file, so a failing file is counted as one.
cp -r "$TOP/t" "$SCRATCH/"
[ "$(id -u)" -eq 0 ] && chown -R postgres: "$SCRATCH"
t_ok=0
t_bad=0
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
		find "$SCRATCH/tmp_check" -name '*.log' -path '*log*' 2>/dev/null |
			while read -r l; do echo "---- $l"; tail -40 "$l"; done
		echo "not ok - $(basename "$f")"
	fi
done
echo "TAP (PostgreSQL $PG_MAJOR): $t_ok passed, $t_bad failed"
passed=$((passed + t_ok))
failed=$((failed + t_bad))

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
