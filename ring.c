/*-------------------------------------------------------------------------
 *
 * ring.c
 *		  The blocks of a large kept file, written out by whichever of the
 *		  job's worker and its launching session is free.
 *
 * Writing a kept file costs its worker the copy of every block into the
 * page cache and the start of its writeback: for wide rows the larger part
 * of what the default mode costs over stream mode, on the worker's core,
 * while the launching session, which reads the same rows off the queue,
 * waits for them more than half of the time (BENCHMARKS.md).  So once a
 * kept file is past its first few blocks (keep.c), the worker hands its
 * full blocks to a ring of BG_RING_SLOTS blocks in a segment of its own,
 * and goes on with the next.  The launching session, whenever its queue is
 * empty, writes the oldest block handed off; the worker writes it itself
 * when it needs the slot back, so it never waits on its session: a session
 * away, slow or gone only leaves the worker to write its blocks, as it did
 * before.  A block is written
 * by one of them only (a slot's state, under the ring's mutex), at its
 * own offset, so they may finish out of order; what readers may read
 * (kept_valid) advances only over the blocks written out in a row.
 *
 * Each block is written as the worker would have written it (the slot says
 * how): cached within the file's first BG_KEEP_CACHED bytes, uncached past
 * them, where the worker hands off blocks only once the kernel took one of
 * its own so.  The session stops helping a ring at its first failed write,
 * leaving the block to the worker, whose own write then fails the job with
 * the error, cut back, as any write of its kept file does.  Blocks the
 * worker reads back (spill.c), the end of the file and the blocks written
 * early for readers that follow the job wait for the ring to be written
 * out first (bg_ring_next with "drain").
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/ring.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/uio.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/fd.h"
#include "storage/spin.h"
#include "utils/wait_event.h"

#include "bg_fdw.h"

#define BG_RING_MAGIC		0x62677269

/*
 * Uncached writes (RWF_DONTCACHE, Linux 6.14 and later): see keep.c.  The
 * value is the kernel's ABI, for C libraries older than the flag.
 */
#if defined(__linux__) && defined(RWF_HIPRI)
#define BG_RING_UNCACHED
#ifndef RWF_DONTCACHE
#define RWF_DONTCACHE	0x00000080
#endif
#endif

/* the blocks start on a page, as the kernel copies them best */
#define BG_RING_ALIGN		4096

typedef enum BgSlotState
{
	BG_SLOT_FREE,				/* the worker may fill it */
	BG_SLOT_FULL,				/* handed off, to be written */
	BG_SLOT_WRITING,			/* being written, by "writer" */
	BG_SLOT_DONE				/* written, not yet published */
} BgSlotState;

typedef struct BgRingSlot
{
	BgSlotState state;
	pid_t		writer;
	off_t		offset;			/* where the block goes in the file */
	Size		len;
	off_t		valid_end;		/* end of the last whole row it holds */
	bool		uncached;		/* written with RWF_DONTCACHE */
} BgRingSlot;

struct BgRing
{
	uint32		magic;
	int64		job_id;			/* whose kept file */
	Size		block_size;
	slock_t		mutex;			/* protects what follows */
	uint64		filled;			/* blocks handed off */
	uint64		published;		/* blocks written and published */
	BgRingSlot	slot[BG_RING_SLOTS];
	ConditionVariable cv;		/* a block was written or given back */
	/* the blocks follow, at BG_RING_DATA */
};

#define BG_RING_DATA		TYPEALIGN(BG_RING_ALIGN, sizeof(BgRing))
#define BG_RING_BLOCK(ring, seq) \
	((char *) (ring) + BG_RING_DATA + \
	 ((seq) % BG_RING_SLOTS) * (ring)->block_size)

/* The ring this session helps, mapped until its transaction ends */
static dsm_segment *bg_helped_seg = NULL;
static BgRing *bg_helped = NULL;
static File bg_helped_file = -1;
static dsm_handle bg_refused = DSM_HANDLE_INVALID;

static bool bg_ring_publish(BgRing *ring, BgJobShared *shared);
static void bg_ring_broadcast(BgRing *ring, BgJobShared *shared, bool published);
static int	bg_ring_oldest_full(BgRing *ring);
static void bg_ring_reclaim(BgRing *ring);
static bool bg_ring_attach(BgJobShared *shared, int64 job_id, dsm_handle handle);

/*
 * Make the ring of a worker's kept file, and tell its session.  NULL where
 * no segment is to be had: the worker then writes its blocks itself.  One
 * segment per running worker at most, so no role makes more of them than
 * it may run jobs; the server sizes its table of segments by its processes,
 * workers included.
 */
BgRing *
bg_ring_create(BgJobShared *shared, Size block_size, dsm_segment **segp)
{
	dsm_segment *seg;
	BgRing	   *ring;

	seg = dsm_create(BG_RING_DATA + BG_RING_SLOTS * block_size,
					 DSM_CREATE_NULL_IF_MAXSEGMENTS);
	if (seg == NULL)
		return NULL;
	/* the worker lets go of it itself (bg_ring_end), on every path */
	dsm_pin_mapping(seg);
	ring = dsm_segment_address(seg);
	memset(ring, 0, sizeof(BgRing));
	ring->magic = BG_RING_MAGIC;
	ring->job_id = shared->job_id;
	ring->block_size = block_size;
	SpinLockInit(&ring->mutex);
	ConditionVariableInit(&ring->cv);
	*segp = seg;
	pg_atomic_write_u32(&shared->ring_handle, dsm_segment_handle(seg));
	return ring;
}

/* The block the worker fills now */
char *
bg_ring_block(BgRing *ring)
{
	return BG_RING_BLOCK(ring, ring->filled);
}

/* Hand the block the worker filled to the ring, to be written at "offset". */
void
bg_ring_hand_off(BgRing *ring, off_t offset, Size len, off_t valid_end,
				 bool uncached)
{
	BgRingSlot *s = &ring->slot[ring->filled % BG_RING_SLOTS];

	SpinLockAcquire(&ring->mutex);
	Assert(s->state == BG_SLOT_FREE);
	s->state = BG_SLOT_FULL;
	s->offset = offset;
	s->len = len;
	s->valid_end = valid_end;
	s->uncached = uncached;
	ring->filled++;
	SpinLockRelease(&ring->mutex);
}

/*
 * The worker's next block to fill, once its slot is free; with "drain",
 * wait instead until every block handed off is written out, and return
 * NULL.  What no session is writing, the worker writes itself, through
 * "write", which raises an error where the write fails.
 */
char *
bg_ring_next(BgRing *ring, BgJobShared *shared, bool drain,
			 BgRingWrite write, void *arg)
{
	for (;;)
	{
		bool		published;
		bool		ready;
		int			i = -1;

		SpinLockAcquire(&ring->mutex);
		published = bg_ring_publish(ring, shared);
		ready = drain ? ring->published == ring->filled :
			ring->filled - ring->published < BG_RING_SLOTS;
		if (!ready && (i = bg_ring_oldest_full(ring)) >= 0)
		{
			ring->slot[i].state = BG_SLOT_WRITING;
			ring->slot[i].writer = MyProcPid;
		}
		SpinLockRelease(&ring->mutex);
		bg_ring_broadcast(ring, shared, published);
		if (ready)
			break;
		if (i >= 0)
		{
			BgRingSlot *s = &ring->slot[i];

			write(arg, (char *) ring + BG_RING_DATA + i * ring->block_size,
				  s->len, s->offset, s->uncached);
			SpinLockAcquire(&ring->mutex);
			s->state = BG_SLOT_DONE;
			SpinLockRelease(&ring->mutex);
			continue;
		}
		/* a session is writing the oldest: wait for it */
		(void) ConditionVariableTimedSleep(&ring->cv, 1000,
										   WAIT_EVENT_BUFFILE_WRITE);
		bg_ring_reclaim(ring);
	}
	ConditionVariableCancelSleep();
	return drain ? NULL : BG_RING_BLOCK(ring, ring->filled);
}

/*
 * Is a session writing one of the worker's blocks?  A reader that does is
 * not away, however long the write takes (spill.c).
 */
bool
bg_ring_helped(BgRing *ring)
{
	bool		helped = false;
	int			i;

	SpinLockAcquire(&ring->mutex);
	for (i = 0; i < BG_RING_SLOTS; i++)
		helped |= (ring->slot[i].state == BG_SLOT_WRITING &&
				   ring->slot[i].writer != MyProcPid);
	SpinLockRelease(&ring->mutex);
	return helped;
}

/*
 * A block whose writer is gone without a word (it cannot be but by a crash,
 * which restarts the server, for a session writes a block with no
 * interrupt in between) goes back to be written.
 */
static void
bg_ring_reclaim(BgRing *ring)
{
	int			i;

	SpinLockAcquire(&ring->mutex);
	for (i = 0; i < BG_RING_SLOTS; i++)
	{
		BgRingSlot *s = &ring->slot[i];

		if (s->state == BG_SLOT_WRITING && s->writer != MyProcPid &&
			kill(s->writer, 0) != 0 && errno == ESRCH)
			s->state = BG_SLOT_FULL;
	}
	SpinLockRelease(&ring->mutex);
}

/*
 * The worker is done with its ring: every block is written out (or the
 * job failed and its file goes).  The session lets go of its mapping at
 * its next look, or at the end of its transaction.
 */
void
bg_ring_end(BgJobShared *shared, dsm_segment *seg)
{
	pg_atomic_write_u32(&shared->ring_handle, DSM_HANDLE_INVALID);
	dsm_detach(seg);
}

/*
 * With the mutex held: publish the blocks written out in a row from the
 * oldest, which readers may then read.  True if any.
 */
static bool
bg_ring_publish(BgRing *ring, BgJobShared *shared)
{
	bool		any = false;

	while (ring->published < ring->filled)
	{
		BgRingSlot *s = &ring->slot[ring->published % BG_RING_SLOTS];

		if (s->state != BG_SLOT_DONE)
			break;
		s->state = BG_SLOT_FREE;
		ring->published++;
		pg_atomic_write_u64(&shared->kept_size, (uint64) (s->offset + s->len));
		if ((uint64) s->valid_end > pg_atomic_read_u64(&shared->kept_valid))
			pg_atomic_write_u64(&shared->kept_valid, (uint64) s->valid_end);
		any = true;
	}
	return any;
}

static void
bg_ring_broadcast(BgRing *ring, BgJobShared *shared, bool published)
{
	if (!published)
		return;
	ConditionVariableBroadcast(&shared->kept_cv);
	ConditionVariableBroadcast(&ring->cv);
}

/* With the mutex held: the slot of the oldest block to write, or -1 */
static int
bg_ring_oldest_full(BgRing *ring)
{
	uint64		seq;

	for (seq = ring->published; seq < ring->filled; seq++)
	{
		int			i = seq % BG_RING_SLOTS;

		if (ring->slot[i].state == BG_SLOT_FULL)
			return i;
	}
	return -1;
}

/*
 * Write one block at "offset", with "uncached" uncached.  Returns what
 * pwrite does, with errno set on a short write; -1 with EOPNOTSUPP or
 * ENOSYS where the kernel writes nothing uncached.
 */
ssize_t
bg_ring_pwrite(int fd, const char *data, Size len, off_t offset,
			   bool uncached)
{
	ssize_t		n;

#ifndef BG_RING_UNCACHED
	if (uncached)
	{
		errno = EOPNOTSUPP;
		return -1;
	}
#endif
	pgstat_report_wait_start(WAIT_EVENT_BUFFILE_WRITE);
	do
	{
		errno = 0;
#ifdef BG_RING_UNCACHED
		if (uncached)
		{
			struct iovec iov;

			iov.iov_base = unconstify(char *, data);
			iov.iov_len = len;
			n = pwritev2(fd, &iov, 1, offset, RWF_DONTCACHE);
		}
		else
#endif
			n = pwrite(fd, data, len, offset);
	} while (n < 0 && errno == EINTR);
	pgstat_report_wait_end();
	if (n >= 0 && n != (ssize_t) len && errno == 0)
		errno = ENOSPC;
	return n;
}

/* ----------------------------------------------------------------
 *		The launching session's side
 * ----------------------------------------------------------------
 */

/*
 * Write the oldest block of the job's ring that no one writes yet; false
 * if there is none (or no ring, or this session does not help it).  Called
 * by the launching session when its queue is empty, before it sleeps.
 */
bool
bg_ring_help(BgJobShared *shared, int64 job_id)
{
	dsm_handle	handle = pg_atomic_read_u32(&shared->ring_handle);
	BgRing	   *ring;
	BgRingSlot *s;
	int			fd;
	int			i;
	bool		ok;
	bool		published;

	if (handle == DSM_HANDLE_INVALID || handle == bg_refused)
	{
		/* (the job's worker is done with it: so are we) */
		if (bg_helped_seg != NULL)
			bg_ring_let_go();
		return false;
	}
	if (bg_helped_seg != NULL && dsm_segment_handle(bg_helped_seg) != handle)
		bg_ring_let_go();
	if (bg_helped_seg == NULL && !bg_ring_attach(shared, job_id, handle))
		return false;
	ring = bg_helped;
	/* (fd.c may have closed it meanwhile, for others: open it again) */
	fd = FileGetRawDesc(bg_helped_file);
	if (fd < 0)
	{
		bg_ring_let_go();
		return false;
	}

	SpinLockAcquire(&ring->mutex);
	i = bg_ring_oldest_full(ring);
	if (i >= 0)
	{
		ring->slot[i].state = BG_SLOT_WRITING;
		ring->slot[i].writer = MyProcPid;
	}
	SpinLockRelease(&ring->mutex);
	if (i < 0)
		return false;

	/* no interrupt from here until the slot is given back */
	s = &ring->slot[i];
	ok = bg_ring_pwrite(fd, (char *) ring + BG_RING_DATA + i * ring->block_size,
						s->len, s->offset, s->uncached) == (ssize_t) s->len;
	SpinLockAcquire(&ring->mutex);
	s->state = ok ? BG_SLOT_DONE : BG_SLOT_FULL;
	published = ok && bg_ring_publish(ring, shared);
	SpinLockRelease(&ring->mutex);
	bg_ring_broadcast(ring, shared, published);
	if (!ok)
	{
		/* the worker writes it, and fails the job if it fails again */
		ConditionVariableBroadcast(&ring->cv);
		bg_refused = handle;
		bg_ring_let_go();
	}
	return ok;
}

/* Map the ring "handle" names, if it is still this job's, and open its file */
static bool
bg_ring_attach(BgJobShared *shared, int64 job_id, dsm_handle handle)
{
	dsm_segment *seg;
	BgRing	   *ring;
	char		path[MAXPGPATH];

	/*
	 * (a handle of a ring gone may name a segment this session maps by now,
	 * or none)
	 */
	if (dsm_find_mapping(handle) != NULL ||
		(seg = dsm_attach(handle)) == NULL)
	{
		bg_refused = handle;
		return false;
	}
	dsm_pin_mapping(seg);
	ring = dsm_segment_address(seg);
	/* (the handle may name another segment by now, the ring having gone) */
	if (dsm_segment_map_length(seg) < sizeof(BgRing) ||
		ring->magic != BG_RING_MAGIC || ring->job_id != job_id)
	{
		dsm_detach(seg);
		bg_refused = handle;
		return false;
	}
	/* (held before the open, which may fail, so that it is let go) */
	bg_helped_seg = seg;
	bg_helped = ring;
	bg_keep_file_path(path, job_id);
	bg_helped_file = PathNameOpenFile(path, O_WRONLY | PG_BINARY);
	if (bg_helped_file < 0)
	{
		bg_ring_let_go();
		bg_refused = handle;
		return false;
	}
	return true;
}

/*
 * Let go of the ring this session helps: its job ended, its transaction
 * ends, or the session turns to another job's.
 */
void
bg_ring_let_go(void)
{
	dsm_segment *seg = bg_helped_seg;
	File		file = bg_helped_file;

	bg_helped_seg = NULL;
	bg_helped = NULL;
	bg_helped_file = -1;
	if (file >= 0)
		FileClose(file);
	if (seg != NULL)
		dsm_detach(seg);
}
