# Peak memory of the reading backend and of the worker while a job's rows
# are read, in each mode; sourced by bench/run.sh after the cluster started.
# RssAnon (private memory, not shared buffers) is sampled every 50 ms from
# /proc; "idle" is the reading backend's own before it launches anything.

bench_rss_kb() {
	awk '/^RssAnon:/ { print $2 }' "/proc/$1/status" 2>/dev/null
}

# bench_memory ROWS STREAM: print "mode idle_kb reader_peak_kb worker_peak_kb"
bench_memory() {
	local rows=$1 stream=$2
	local dir=$SCRATCH/mem.$stream reader worker r w
	local reader_peak=0 worker_peak=0
	mkdir -p "$dir" && chown postgres "$dir"
	as_pg psql -X -q -At >/dev/null <<SQL &
SELECT (regexp_match(pg_read_file('/proc/self/status'), 'RssAnon:\s+(\d+)'))[1] \g $dir/idle
SELECT pg_backend_pid() \g $dir/reader
SELECT bg_launch('SELECT g, md5(g::text) AS h FROM generate_series(1, $rows) g',
                 stream => $stream) AS job \gset
SELECT :job \g $dir/worker
SELECT count(*), sum(length(h)) FROM bg_result_:job;
SQL
	local psql_pid=$!
	while kill -0 "$psql_pid" 2>/dev/null; do
		reader=$(cat "$dir/reader" 2>/dev/null)
		worker=$(cat "$dir/worker" 2>/dev/null)
		if [ -n "$reader" ]; then
			r=$(bench_rss_kb "$reader")
			[ -n "$r" ] && [ "$r" -gt "$reader_peak" ] && reader_peak=$r
		fi
		if [ -n "$worker" ]; then
			w=$(bench_rss_kb "$worker")
			[ -n "$w" ] && [ "$w" -gt "$worker_peak" ] && worker_peak=$w
		fi
		sleep 0.05
	done
	wait "$psql_pid"
	echo "$(cat "$dir/idle") $reader_peak $worker_peak"
}

bench_memory_report() {
	local rows=$1 mode line
	echo
	echo "Memory: reading $rows rows of SELECT g, md5(g::text), peak RssAnon in MB"
	printf '%-14s | %9s | %11s | %11s | %14s | %14s\n' mode idle reader_peak worker_peak reader_over_idle worker_over_idle
	for mode in false true; do
		read -r idle r w <<<"$(bench_memory "$rows" "$mode")"
		[ "$mode" = true ] && line=stream || line=table
		awk -v m="$line" -v i="$idle" -v r="$r" -v w="$w" 'BEGIN {
			printf "%-14s | %9.1f | %11.1f | %11.1f | %14.1f | %14.1f\n",
				m, i / 1024, r / 1024, w / 1024, (r - i) / 1024, (w - i) / 1024 }'
	done
}
