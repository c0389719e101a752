/*
 * bench/write_modes.c: what writing a kept file costs the kernel, by the
 * way it is written.  Writes SIZE_MB megabytes in 1 MB blocks to a file in
 * DIR, each way in turn, ROUNDS rounds side by side, and prints the median
 * wall time, the writer's system time and the whole machine's busy time
 * (which counts the writeback done elsewhere):
 *
 *   window     pwrite, then sync_file_range and posix_fadvise(DONTNEED)
 *              32 MB behind the end (the writeback window, keep.c)
 *   uncached   pwritev2(RWF_DONTCACHE), Linux 6.14 and later
 *   misaligned the same, each block 1000 bytes off a block boundary
 *
 * each with the disk given 16 MB ahead (fallocate), as keep.c does, and an
 * fsync at the end.  Build and run:
 *
 *   cc -O2 -o /tmp/write_modes bench/write_modes.c
 *   /tmp/write_modes DIR [SIZE_MB [ROUNDS]]    (default 2600 and 5)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE 0x00000080
#endif
#define BLOCK (1024 * 1024)
#define CACHED (32L * BLOCK)
#define EXTEND (16L * BLOCK)
#define NMODES 3
#define MAXROUNDS 99

static const char *names[NMODES] = {"window", "uncached", "misaligned"};

static double
now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

/* seconds of the whole machine not idle, from /proc/stat */
static double
busy(void)
{
	long long	v[8] = {0};
	FILE	   *f = fopen("/proc/stat", "r");

	if (!f || fscanf(f, "cpu %lld %lld %lld %lld %lld %lld %lld %lld",
					 &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		exit(1);
	fclose(f);
	return (v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double) sysconf(_SC_CLK_TCK);
}

static double
systime(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static void
one(int mode, const char *path, long blocks, char *buf, double out[3])
{
	int			fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0600);
	off_t		shift = mode == 2 ? 1000 : 0;
	off_t		extended = 0;
	double		t0 = now(), b0 = busy(), s0 = systime();
	struct iovec iov = {buf, BLOCK};

	if (fd < 0)
	{
		perror(path);
		exit(1);
	}
	for (long i = 0; i < blocks; i++)
	{
		off_t		off = i * BLOCK + shift;
		ssize_t		n;

		if (off >= CACHED && off + BLOCK > extended)
		{
			extended = (extended > off ? extended : off) + EXTEND;
			(void) fallocate(fd, FALLOC_FL_KEEP_SIZE, extended - EXTEND, EXTEND);
		}
		if (mode > 0 && off >= CACHED)
			n = pwritev2(fd, &iov, 1, off, RWF_DONTCACHE);
		else
			n = pwrite(fd, buf, BLOCK, off);
		if (n != BLOCK)
		{
			fprintf(stderr, "%s: write: %s\n", names[mode], strerror(errno));
			exit(1);
		}
		if (mode == 0 || off < CACHED)
		{
			sync_file_range(fd, off, BLOCK, SYNC_FILE_RANGE_WRITE);
			if (off >= CACHED)
				posix_fadvise(fd, off - CACHED, BLOCK, POSIX_FADV_DONTNEED);
		}
	}
	fsync(fd);
	out[0] = now() - t0;
	out[1] = systime() - s0;
	out[2] = busy() - b0;
	close(fd);
	unlink(path);
}

static int
cmp(const void *a, const void *b)
{
	double		x = *(const double *) a, y = *(const double *) b;

	return (x > y) - (x < y);
}

int
main(int argc, char **argv)
{
	char		path[4096];
	long		mb = argc > 2 ? atol(argv[2]) : 2600;
	int			rounds = argc > 3 ? atoi(argv[3]) : 5;
	static double r[NMODES][3][MAXROUNDS];
	char	   *buf = aligned_alloc(4096, BLOCK);

	if (argc < 2 || rounds < 1 || rounds > MAXROUNDS || mb < 64)
	{
		fprintf(stderr, "usage: %s DIR [SIZE_MB [ROUNDS]]\n", argv[0]);
		return 2;
	}
	snprintf(path, sizeof(path), "%s/write_modes.%d", argv[1], (int) getpid());
	memset(buf, 'x', BLOCK);
	for (int k = 0; k < rounds; k++)
		for (int m = 0; m < NMODES; m++)
		{
			double		out[3];

			one(m, path, mb, buf, out);
			for (int j = 0; j < 3; j++)
				r[m][j][k] = out[j];
		}
	printf("%ld MB in 1 MB blocks, medians of %d\n", mb, rounds);
	printf("%-12s %10s %12s %14s\n", "mode", "wall s", "writer sys s", "machine busy s");
	for (int m = 0; m < NMODES; m++)
	{
		for (int j = 0; j < 3; j++)
			qsort(r[m][j], rounds, sizeof(double), cmp);
		printf("%-12s %10.2f %12.2f %14.2f\n", names[m], r[m][0][rounds / 2],
			   r[m][1][rounds / 2], r[m][2][rounds / 2]);
	}
	return 0;
}
