#!/bin/bash
# Build and install bg_fdw, start a scratch cluster and run bench/wide.sql
# alone: ROWS rows of 20 columns (default 10,000,000) in each mode.
source "$(dirname "$0")/../scripts/lib.sh"

bg_install_deps
bg_scratch
bg_build
bg_start_cluster
cp "$TOP/bench/lib.sql" "$TOP/bench/wide.sql" "$SCRATCH/"
as_pg psql -X -q -v rows="${ROWS:-10000000}" -f "$SCRATCH/wide.sql"
