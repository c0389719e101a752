# Shared by scripts/demo.sh and scripts/test.sh: install what is missing,
# build and install bg_fdw, and run things as the postgres OS user (the
# server refuses to run as root) in a scratch directory.

set -euo pipefail

TOP=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=${PG_MAJOR:-15}
PG_BINDIR=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BINDIR/pg_config
[ -x "$PG_CONFIG" ] || PG_CONFIG=$(command -v pg_config || true)

# Debian packages the build and the tests need.
bg_packages() {
	echo postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR \
		libkrb5-dev libipc-run-perl make gcc
}

bg_install_deps() {
	local missing=()
	for p in $(bg_packages); do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" ||
			missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "missing packages: ${missing[*]}; run as root to install them" >&2
		return 1
	fi
	echo "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq || return 1
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || return 1
	PG_CONFIG=$PG_BINDIR/pg_config
}

# Each step returns non-zero on failure (callers test it with "if", where
# "set -e" does not apply).
bg_build() {
	make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" clean >/dev/null || return 1
	if ! make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" >"$SCRATCH/build.log" 2>&1; then
		cat "$SCRATCH/build.log"
		echo "bg_fdw: the build failed" >&2
		return 1
	fi
	cat "$SCRATCH/build.log"
	if grep -qE 'warning:|error:' "$SCRATCH/build.log"; then
		echo "bg_fdw: the build printed warnings" >&2
		return 1
	fi
	make -C "$TOP" -s PG_CONFIG="$PG_CONFIG" install >/dev/null || return 1
}

# Run a command as the postgres OS user when we are root.
as_pg() {
	if [ "$(id -u)" -eq 0 ]; then
		runuser -u postgres -- env PATH="$PG_BINDIR:$PATH" "$@"
	else
		env PATH="$PG_BINDIR:$PATH" "$@"
	fi
}

# A scratch directory the postgres user can write, removed on exit.
bg_scratch() {
	SCRATCH=$(mktemp -d /tmp/bg_fdw.XXXXXX)
	chmod 755 "$SCRATCH"
	if [ "$(id -u)" -eq 0 ] && id postgres >/dev/null 2>&1; then
		chown postgres: "$SCRATCH"
	fi
	# only this shell cleans up: a background subshell killed before it
	# execs its command (a busy loop, say) runs the traps it inherited
	BG_MAIN_PID=$BASHPID
	trap '[ "$BASHPID" != "$BG_MAIN_PID" ] || bg_cleanup' EXIT
	trap 'exit 130' INT TERM
}

bg_cleanup() {
	if [ -n "${PGDATA_SCRATCH:-}" ] && [ -f "$PGDATA_SCRATCH/postmaster.pid" ]; then
		as_pg pg_ctl -D "$PGDATA_SCRATCH" -m immediate stop >/dev/null 2>&1 || true
	fi
	[ -n "${KEEP_SCRATCH:-}" ] || rm -rf "$SCRATCH"
}

# Start a scratch cluster listening only on a Unix socket in $SCRATCH.
bg_start_cluster() {
	PGDATA_SCRATCH=$SCRATCH/data
	as_pg initdb -D "$PGDATA_SCRATCH" -A trust -U postgres >/dev/null
	cat >>"$PGDATA_SCRATCH/postgresql.conf" <<CONF
listen_addresses = ''
unix_socket_directories = '$SCRATCH'
max_worker_processes = 16
CONF
	as_pg pg_ctl -D "$PGDATA_SCRATCH" -l "$SCRATCH/server.log" -w start >/dev/null
	export PGHOST=$SCRATCH PGUSER=postgres PGDATABASE=postgres
}
