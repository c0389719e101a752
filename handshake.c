/*-------------------------------------------------------------------------
 *
 * handshake.c
 *		  What both processes of a job use to hand control to each other
 *		  through the job segment's fixed header (BgJobShared): setting a
 *		  flag and waking the other side, the wait events they wait under,
 *		  and the test for a wait between them that the lock manager cannot
 *		  see.
 *
 * The launching session (launcher.c, job.c) and the worker (worker.c) each
 * call in here; nothing here calls either of them.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/handshake.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"

#include "bg_fdw.h"
#include "compat.h"

/* Wait event IDs, looked up once (on 17 and later a lookup takes a lock) */
static uint32 bg_wait_event_job_id = 0;
static uint32 bg_wait_event_launch_id = 0;

/*
 * Set a flag of the job's shared header under its mutex, and wake the side
 * that waits for it.  "flag" points into "shared".
 */
void
bg_job_set_flag(BgJobShared *shared, bool *flag, BgWake wake)
{
	PGPROC	   *proc = NULL;

	Assert((char *) flag >= (char *) shared &&
		   (char *) flag < (char *) (shared + 1));
	SpinLockAcquire(&shared->mutex);
	*flag = true;
	if (wake == BG_WAKE_WORKER)
		proc = shared->worker_proc;
	else if (wake == BG_WAKE_LAUNCHER)
		proc = shared->launcher_proc;
	SpinLockRelease(&shared->mutex);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

/* Read a flag of the job's shared header under its mutex. */
bool
bg_job_get_flag(BgJobShared *shared, bool *flag)
{
	bool		value;

	Assert((char *) flag >= (char *) shared &&
		   (char *) flag < (char *) (shared + 1));
	SpinLockAcquire(&shared->mutex);
	value = *flag;
	SpinLockRelease(&shared->mutex);
	return value;
}

/* What a session waits under while it waits for a job: "BgFdwJob" */
uint32
bg_wait_event_job(void)
{
	return bg_wait_event_cached("BgFdwJob", &bg_wait_event_job_id);
}

/* What a worker waits under while it waits for its launch: "BgFdwLaunch" */
uint32
bg_wait_event_launch(void)
{
	return bg_wait_event_cached("BgFdwLaunch", &bg_wait_event_launch_id);
}

/* Is the backend with this PID waiting for a lock this backend holds? */
bool
bg_blocked_by_me(int pid)
{
	/* the lock manager's view is large: run where it can all be freed */
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "bg_fdw blockers",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	ArrayType  *blockers;
	int32	   *pids;
	int			n;
	int			i;
	bool		found = false;

	blockers = DatumGetArrayTypeP(DirectFunctionCall1(pg_blocking_pids,
													  Int32GetDatum(pid)));
	pids = (int32 *) ARR_DATA_PTR(blockers);
	n = ArrayGetNItems(ARR_NDIM(blockers), ARR_DIMS(blockers));
	for (i = 0; i < n && !found; i++)
		found = (pids[i] == MyProcPid);
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	return found;
}
