# How much two busy cores slow each other on this machine: the direct
# transport-bound query on one core, alone and while a busy loop spins on
# the other.  Every job runs beside its reader, so this bounds what any
# two-process plan (a Gather, a job) can gain.  Sourced by bench/run.sh
# after bench.sql created table t.

bench_contention_report() {
	local rounds=${1:-7} ncpu pid r alone busy spin
	ncpu=$(nproc)
	if [ "$ncpu" -lt 2 ] || ! command -v taskset >/dev/null; then
		echo "Contention: skipped (needs two cores and taskset)"
		return
	fi
	coproc BENCH_PSQL { as_pg psql -X -q -At; }
	echo "SELECT pg_backend_pid();" >&"${BENCH_PSQL[1]}"
	read -r pid <&"${BENCH_PSQL[0]}"
	taskset -pc 0 "$pid" >/dev/null
	: >"$SCRATCH/contention"
	for r in $(seq "$rounds"); do
		echo "SELECT bench_ms('SELECT count(*), sum(length(b)) FROM t');" >&"${BENCH_PSQL[1]}"
		read -r alone <&"${BENCH_PSQL[0]}"
		taskset -c 1 sh -c 'while :; do :; done' &
		spin=$!
		# measure once the loop runs, not while it is still being started
		until [ "$(cat "/proc/$spin/comm" 2>/dev/null)" = sh ] ||
			! kill -0 "$spin" 2>/dev/null; do :; done
		echo "SELECT bench_ms('SELECT count(*), sum(length(b)) FROM t');" >&"${BENCH_PSQL[1]}"
		read -r busy <&"${BENCH_PSQL[0]}"
		kill "$spin"
		wait "$spin" 2>/dev/null || true
		echo "$alone $busy" >>"$SCRATCH/contention"
	done
	echo "\\q" >&"${BENCH_PSQL[1]}"
	wait "$BENCH_PSQL_PID" 2>/dev/null || true
	echo
	echo "Contention: the direct query on core 0, alone and with core 1 busy, medians of $rounds"
	sort -n -k1 "$SCRATCH/contention" | awk '{ a[NR] = $1 } END { printf "  alone:            %8.2f ms\n", a[int((NR + 1) / 2)] }'
	sort -n -k2 "$SCRATCH/contention" | awk '{ b[NR] = $2 } END { printf "  other core busy:  %8.2f ms\n", b[int((NR + 1) / 2)] }'
	awk '{ print $2 / $1 }' "$SCRATCH/contention" | sort -n |
		awk '{ q[NR] = $1 } END { printf "  slowdown (median of per-round ratios): %.2f\n", q[int((NR + 1) / 2)] }'
}
