#!/bin/bash
# Build and install bg_fdw, start a scratch cluster, run bench/bench.sql and
# print its table.  ROWS sets the size of the transport-bound case.
source "$(dirname "$0")/../scripts/lib.sh"

bg_install_deps
bg_scratch
bg_build
bg_start_cluster
cp "$TOP/bench/bench.sql" "$SCRATCH/"
as_pg psql -X -q -v rows="${ROWS:-1000000}" -f "$SCRATCH/bench.sql"
