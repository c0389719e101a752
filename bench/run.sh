#!/bin/bash
# Build and install bg_fdw, start a scratch cluster, run bench/bench.sql and
# print its tables.  ROWS sets the rows per query (default 1,000,000);
# MEMORY_ROWS the rows read while memory is sampled and WIDE_ROWS the rows of
# 20 columns read in each mode (both default 10,000,000).
source "$(dirname "$0")/../scripts/lib.sh"

bg_install_deps
bg_scratch
bg_build
bg_start_cluster
cp "$TOP/bench/lib.sql" "$TOP/bench/bench.sql" "$TOP/bench/wide.sql" "$SCRATCH/"
as_pg psql -X -q -v rows="${ROWS:-1000000}" -f "$SCRATCH/bench.sql"
cp "$TOP/bench/launch.sql" "$SCRATCH/"
as_pg psql -X -q -v title= -f "$SCRATCH/launch.sql"
source "$TOP/bench/contention.sh"
bench_contention_report 7
source "$TOP/bench/memory.sh"
bench_memory_report "${MEMORY_ROWS:-10000000}"
as_pg psql -X -q -v rows="${WIDE_ROWS:-10000000}" -f "$SCRATCH/wide.sql"

# Launch latency again, with bg_fdw preloaded (each worker then finds the
# library loaded) and job segments taken from preallocated shared memory.
cat >>"$PGDATA_SCRATCH/postgresql.conf" <<CONF
shared_preload_libraries = 'bg_fdw'
min_dynamic_shared_memory = '64MB'
CONF
as_pg pg_ctl -D "$PGDATA_SCRATCH" -l "$SCRATCH/server.log" -w restart >/dev/null
as_pg psql -X -q -v title=", with shared_preload_libraries = 'bg_fdw' and min_dynamic_shared_memory = '64MB'" \
	-f "$SCRATCH/launch.sql"
