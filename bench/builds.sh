#!/bin/bash
# Compare builds of bg_fdw on one cluster: bash bench/builds.sh REV [REV...]
# builds each git revision, then for TURNS turns (default 4) installs each
# build's library in turn, restarts the cluster and reads ROWS rows (default
# 1,000,000) of SELECT a, b FROM t in four cases interleaved, ROUNDS rounds
# (default 5).  It prints, turn by turn, each build's medians and the ratios
# of the kept read to the same read with keep => false and in stream mode.
# The builds share the working tree's SQL scripts, so they must not differ
# in their SQL; the working tree's library is installed again at the end.
source "$(dirname "$0")/../scripts/lib.sh"

[ $# -ge 1 ] || { echo "usage: bash bench/builds.sh REV [REV...]" >&2; exit 2; }
bg_install_deps
bg_scratch
LIBDIR=$("$PG_CONFIG" --pkglibdir)
trap '[ "$BASHPID" != "$BG_MAIN_PID" ] || { bg_cleanup; make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" install >/dev/null; }' EXIT

for rev in "$@"; do
	dir=$SCRATCH/build-$(git -C "$TOP" rev-parse --short "$rev")
	git -C "$TOP" archive --prefix=src/ "$rev" | tar -x -C "$SCRATCH"
	mv "$SCRATCH/src" "$dir"
	make -C "$dir" -s PG_CONFIG="$PG_CONFIG" >"$dir/build.log" 2>&1 ||
		{ cat "$dir/build.log"; exit 1; }
done
bg_build
bg_start_cluster
cp "$TOP/bench/lib.sql" "$TOP/bench/builds.sql" "$SCRATCH/"
as_pg psql -X -q -c "CREATE EXTENSION bg_fdw" \
	-c "CREATE TABLE t AS SELECT g AS a, md5(g::text) AS b
	      FROM generate_series(1, $((${ROWS:-1000000}))) g" \
	-c "VACUUM ANALYZE t" -c "CHECKPOINT" >/dev/null

header=on
for turn in $(seq "${TURNS:-4}"); do
	for rev in "$@"; do
		build=$(git -C "$TOP" rev-parse --short "$rev")
		as_pg pg_ctl -D "$PGDATA_SCRATCH" -m fast -w stop >/dev/null
		install -m 755 "$SCRATCH/build-$build/bg_fdw.so" "$LIBDIR/bg_fdw.so"
		as_pg pg_ctl -D "$PGDATA_SCRATCH" -l "$SCRATCH/server.log" -w start >/dev/null
		as_pg psql -X -q -v build="$build" -v turn="$turn" -v header=$header \
			-v rounds="${ROUNDS:-5}" -f "$SCRATCH/builds.sql"
		header=off
	done
done
