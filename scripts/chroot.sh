# Scratch Debian systems for testing against other PostgreSQL versions,
# sourced by scripts/test.sh.  Each is built once with debootstrap and kept
# in $BG_CHROOT_DIR (outside the checkout, so fresh clones on the same
# machine reuse it); mounts made to run in one are always undone.

BG_CHROOT_DIR=${BG_CHROOT_DIR:-/var/tmp/bg_fdw-chroots}
BG_MIRROR=${BG_MIRROR:-http://deb.debian.org/debian}
BG_CHROOT_MOUNTS=()

# The Debian suite that ships a PostgreSQL major version.
bg_suite_for() {
	case "$1" in
		17) echo trixie ;;
		18) echo sid ;;
		*) return 1 ;;
	esac
}

# Make sure the chroot for a version exists; print its path.  On failure
# print the reason on stderr and return non-zero.
bg_chroot_ensure() {
	local major=$1 suite dir tmp
	suite=$(bg_suite_for "$major") || { echo "no Debian suite known for PostgreSQL $major" >&2; return 1; }
	dir=$BG_CHROOT_DIR/$suite-pg$major
	if [ -f "$dir/.bg_fdw-ready" ]; then
		# a system built by an older script may have a 0700 root
		chmod 755 "$dir"
		echo "$dir"
		return 0
	fi
	# a machine whose package lists were never fetched needs an update first
	command -v debootstrap >/dev/null ||
		apt-get install -y -qq debootstrap >/dev/null 2>&1 ||
		{ apt-get update -qq >/dev/null 2>&1 &&
			apt-get install -y -qq debootstrap >/dev/null 2>&1; } ||
		{ echo "debootstrap is not installed and could not be installed" >&2; return 1; }
	mkdir -p "$BG_CHROOT_DIR"
	tmp=$(mktemp -d "$BG_CHROOT_DIR/.build-$suite.XXXXXX")
	# mktemp makes it 0700; as the system's / it must let postgres in
	chmod 755 "$tmp"
	echo "building a $suite system with PostgreSQL $major in $dir (once)" >&2
	if ! debootstrap --variant=minbase \
		--include=postgresql-$major,postgresql-server-dev-$major,make,gcc,libkrb5-dev,libipc-run-perl,perl \
		"$suite" "$tmp" "$BG_MIRROR" >"$tmp.log" 2>&1; then
		echo "debootstrap of $suite failed: $(grep -E '^(E|W):' "$tmp.log" | tail -3 | tr '\n' ' ')" >&2
		rm -rf "$tmp" "$tmp.log"
		return 1
	fi
	rm -f "$tmp.log"
	rm -rf "$tmp/var/cache/apt/archives"/*.deb
	touch "$tmp/.bg_fdw-ready"
	rm -rf "$dir"
	mv "$tmp" "$dir"
	echo "$dir"
}

bg_chroot_mount() {
	local dir=$1
	mount -t proc proc "$dir/proc" && BG_CHROOT_MOUNTS+=("$dir/proc")
	mount --bind /dev "$dir/dev" && BG_CHROOT_MOUNTS+=("$dir/dev")
	mount --make-private "$dir/dev"
	mount -t tmpfs -o mode=1777,size=1g shm "$dir/dev/shm" && BG_CHROOT_MOUNTS+=("$dir/dev/shm")
	mount -t devpts -o newinstance,ptmxmode=0666 devpts "$dir/dev/pts" && BG_CHROOT_MOUNTS+=("$dir/dev/pts")
}

# Undo every mount, innermost first; called on exit whatever happened.
bg_chroot_umount_all() {
	local i m
	for ((i = ${#BG_CHROOT_MOUNTS[@]} - 1; i >= 0; i--)); do
		m=${BG_CHROOT_MOUNTS[$i]}
		mountpoint -q "$m" && { umount "$m" 2>/dev/null || umount -l "$m"; }
	done
	BG_CHROOT_MOUNTS=()
}

# Run the host-only test suite of this checkout inside the chroot for a
# version; its output goes to stdout.
bg_chroot_test() {
	local major=$1 dir=$2 rc
	rm -rf "$dir/build/bg_fdw"
	mkdir -p "$dir/build"
	tar -C "$TOP" --exclude=.git --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
		-cf - . | tar -C "$dir/build" --one-top-level=bg_fdw -xf -
	bg_chroot_mount "$dir"
	set +e
	chroot "$dir" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		PG_MAJOR="$major" ${KEEP_SCRATCH:+KEEP_SCRATCH=1} bash /build/bg_fdw/scripts/test.sh --host-only
	rc=$?
	set -e
	bg_chroot_umount_all
	return $rc
}
