#!/bin/bash
# Install what is missing, build and install bg_fdw, start a scratch
# cluster and run a short tour of its features (scripts/demo.sql).
source "$(dirname "$0")/lib.sh"

bg_install_deps
bg_scratch
bg_build
bg_start_cluster
cp "$TOP/scripts/demo.sql" "$SCRATCH/demo.sql"
as_pg psql -X -v ON_ERROR_STOP=1 -e -f "$SCRATCH/demo.sql"
