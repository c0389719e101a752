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
 * Copyright (c) 2025-2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *	  bg_fdw/handshake.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"

#include "bg_fdw.h"

/* Is the backend with this PID waiting for a lock this backend holds? */
bool
bg_blocked_by_me(int pid)
{
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
	pfree(blockers);
	return found;
}
