/*-------------------------------------------------------------------------
 *
 * waitgraph.c
 *		  Deadlocks through other backends: a backend that waits for a job
 *		  (or a worker that waits for its launcher) follows who waits for
 *		  whom, transitively, and fails if the chain comes back to it.
 *
 * The lock manager's deadlock detector sees lock waits only.  A session
 * waiting for its job's rows, a session in bg_wait, a worker waiting for its
 * launch or for room in a stream job's queue wait on latches, so a cycle
 * through them is invisible to it: S1 reads a job, the job waits for a lock
 * behind S2's request, S2 waits for a lock S1 holds; all three would wait
 * for ever.  Every bg_fdw wait checks, every deadlock_timeout, whether what
 * it waits for waits (directly or through others) for it.
 *
 * The edges of the graph:
 *		- lock waits, as pg_blocking_pids reports them (with the waiters
 *		  ahead in a lock's queue, which block too);
 *		- waits for a safe snapshot (SERIALIZABLE READ ONLY DEFERRABLE), as
 *		  pg_safe_snapshot_blocking_pids reports them;
 *		- bg_fdw's own waits, which each job publishes in its segment
 *		  (launcher_waiting, worker_waiting, the bg_wait_any waiters) and the
 *		  registry lists, for the jobs of this database.
 *
 * Each call of pg_blocking_pids is consistent in itself, but a walk over
 * several calls is not: it may see a cycle that never existed at any one
 * moment.  So a cycle is acted on only when two consecutive checks of the
 * same wait see the same one.  What stays invisible: waits on LWLocks,
 * buffer pins and condition variables outside bg_fdw, jobs of other
 * databases, and sessions reading another session's kept result.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/waitgraph.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/array.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "bg_fdw.h"
#include "compat.h"

static int	bg_find_cycle(int start, int *path);
static bool bg_may_wait_in_bg_fdw(int pid);
static void bg_walk_add(int *nodes, int *parent, int *n, int from, int pid);
static void bg_walk_add_array(int *nodes, int *parent, int *n, int from,
							  Datum array);

/*
 * This backend waits for backend "pid" (a job's worker, or a worker's
 * launcher).  Does "pid" wait for us, through any chain of waits, as this
 * check sees it and as the previous check of the same wait ("seen", which
 * the caller keeps for each thing it waits for) saw it?  The direct case,
 * "pid" waiting for a lock we hold, callers check first with
 * bg_blocked_by_me, which needs no second look.
 */
bool
bg_wait_cycle_found(int pid, BgWaitCycle *seen)
{
	int			path[BG_WALK_MAX];
	int			len = bg_find_cycle(pid, path);
	bool		again;

	again = len > 0 && len == seen->len &&
		memcmp(path, seen->path, len * sizeof(int)) == 0;
	seen->len = len;
	memcpy(seen->path, path, len * sizeof(int));
	return again;
}

/* Raise 40P01 for the chain bg_wait_cycle_found found, naming it. */
void
bg_raise_wait_cycle(BgWaitCycle *seen, const char *hint)
{
	StringInfoData detail;
	int			i;

	initStringInfo(&detail);
	appendStringInfo(&detail, "Process %d waits for ", seen->path[0]);
	for (i = 1; i < seen->len; i++)
		appendStringInfo(&detail, "process %d, which waits for ", seen->path[i]);
	appendStringInfoString(&detail, "this process.");
	seen->len = 0;
	ereport(ERROR,
			(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
			 errmsg("deadlock detected"),
			 errdetail_internal("%s", detail.data),
			 errhint("%s", hint)));
}

void
bg_check_wait_cycle(int pid, BgWaitCycle *seen, const char *hint)
{
	if (bg_wait_cycle_found(pid, seen))
		bg_raise_wait_cycle(seen, hint);
}

/*
 * Walk the waits from "start" breadth first.  If one leads back to this
 * backend, store the chain (start first, this backend not included) in
 * "path" and return its length; else 0.
 */
static int
bg_find_cycle(int start, int *path)
{
	/* the lock manager's view is large: run where it can all be freed */
	MemoryContext cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "bg_fdw wait graph",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	List	   *edges = NIL;
	bool		edges_read = false;
	int			nodes[BG_WALK_MAX];
	int			parent[BG_WALK_MAX];
	int			n = 0;
	int			i;
	int			len = 0;

	bg_walk_add(nodes, parent, &n, -1, start);
	for (i = 0; i < n && len == 0; i++)
	{
		int			first = n;
		ListCell   *lc;
		int			j;

		bg_walk_add_array(nodes, parent, &n, i,
						  DirectFunctionCall1(pg_blocking_pids,
											  Int32GetDatum(nodes[i])));
		bg_walk_add_array(nodes, parent, &n, i,
						  DirectFunctionCall1(pg_safe_snapshot_blocking_pids,
											  Int32GetDatum(nodes[i])));
		/* bg_fdw's own waits cost a look at every job: only when needed */
		if (!edges_read && bg_may_wait_in_bg_fdw(nodes[i]))
		{
			edges = bg_registry_wait_edges();
			edges_read = true;
		}
		foreach(lc, edges)
		{
			BgWaitEdge *e = lfirst(lc);

			if (e->from == nodes[i])
				bg_walk_add(nodes, parent, &n, i, e->to);
		}
		/* this backend among the new ones: the chain is the way to it */
		for (j = first; j < n && len == 0; j++)
		{
			int			chain[BG_WALK_MAX];
			int			k;

			if (nodes[j] != MyProcPid)
				continue;
			for (k = parent[j]; k >= 0; k = parent[k])
				chain[len++] = nodes[k];
			for (k = 0; k < len; k++)
				path[k] = chain[len - 1 - k];
		}
	}
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	return len;
}

/*
 * Might backend "pid" be in one of bg_fdw's own waits: waiting for a job
 * (or, on 15 and 16, in any extension's wait), for its launch, or for room
 * in a queue (a stream job's worker)?
 */
static bool
bg_may_wait_in_bg_fdw(int pid)
{
	PGPROC	   *proc = BackendPidGetProc(pid);
	uint32		event;

	if (proc == NULL)
		return false;
	event = *(volatile uint32 *) &proc->wait_event_info;
	return event == bg_wait_event_job() || event == bg_wait_event_launch() ||
		event == BG_WAIT_EVENT_MQ_SEND;
}

/* Visit backend "pid", reached from nodes[from], unless already visited. */
static void
bg_walk_add(int *nodes, int *parent, int *n, int from, int pid)
{
	int			i;

	if (pid <= 0 || *n >= BG_WALK_MAX)
		return;
	for (i = 0; i < *n; i++)
	{
		if (nodes[i] == pid)
			return;
	}
	nodes[*n] = pid;
	parent[*n] = from;
	(*n)++;
}

/* Visit each backend of an int4[] of PIDs, reached from nodes[from]. */
static void
bg_walk_add_array(int *nodes, int *parent, int *n, int from, Datum array)
{
	ArrayType  *a = DatumGetArrayTypeP(array);
	int32	   *pids = (int32 *) ARR_DATA_PTR(a);
	int			count = ArrayGetNItems(ARR_NDIM(a), ARR_DIMS(a));
	int			i;

	for (i = 0; i < count; i++)
		bg_walk_add(nodes, parent, n, from, pids[i]);
}

/*
 * A worker waits for its session "pid": if that session waits for a lock
 * this worker holds, raise 40P01 with "detail" at once; else follow the
 * chain from it (bg_check_wait_cycle).
 */
void
bg_check_session_deadlock(int pid, BgWaitCycle *cycle, const char *detail,
						  const char *hint)
{
	if (bg_blocked_by_me(pid))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail_internal("%s", detail),
				 errhint("%s", hint)));
	bg_check_wait_cycle(pid, cycle, hint);
}
