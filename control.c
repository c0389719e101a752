/*-------------------------------------------------------------------------
 *
 * control.c
 *		  Job control for scripts and DBAs: labels, progress reported from
 *		  inside a job, and the NOTIFY a job sends when it ends.
 *
 * A label and a NOTIFY channel are given to bg_launch and travel in the
 * job's segment; the worker records the label in the registry.  Progress
 * lives in the job's segment while the job runs (bg_jobs reads it there,
 * without a transaction of the job's) and goes into the registry row with
 * the outcome.  The NOTIFY is sent by the worker once the outcome (and the
 * kept result) is committed, in a transaction of its own, so that a full
 * notification queue never fails the job's work, and a listener that reads
 * bg_jobs or the result on being woken finds them.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/control.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "commands/async.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/shm_toc.h"
#include "utils/array.h"
#include "utils/timestamp.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "bg_fdw.h"

PG_FUNCTION_INFO_V1(bg_progress);
PG_FUNCTION_INFO_V1(bg_cancel_label);
PG_FUNCTION_INFO_V1(bg_wait_any);

/* Most jobs bg_wait_any waits for at once */
#define BG_WAIT_ANY_MAX		1000

/* A job bg_wait_any waits for */
typedef struct BgWaitTarget
{
	int			pid;
	BgJob	   *job;			/* this session's job, or NULL */
	int64		job_id;			/* another session's: its identifier, once
								 * found */
	dsm_segment *seg;			/* its segment, mapped by us, or NULL */
	BgJobShared *shared;		/* where we are registered as a waiter */
	bool		any;			/* one of several jobs waited for */
	BgWaitCycle cycle;			/* what the last deadlock check saw */
} BgWaitTarget;

static int	bg_wait_targets(ArrayType *pids, BgWaitTarget **targets);
static void bg_check_printable(const char *what, const char *value);
static bool bg_wait_target_ended(BgWaitTarget *t, bool look);
static bool bg_wait_register(BgWaitTarget *t, dsm_handle handle);
static pid_t bg_wait_target_worker(BgWaitTarget *t);
static void bg_wait_unregister(dsm_segment *seg, Datum arg);
static void bg_wait_release(BgWaitTarget *targets, int n);
static void bg_wait_check_deadlock(BgWaitTarget *targets, int n);
static void bg_wait_publish(BgWaitTarget *targets, int n, bool waiting);

/*
 * A label, a channel name or a progress message: not empty, at most maxlen
 * bytes, no control characters (it is shown in bg_jobs and in psql's
 * output, where they could rewrite a terminal).
 */
void
bg_check_name(const char *what, const char *value, int maxlen)
{
	if (*value == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of a background job must not be empty", what)));
	if (strlen(value) > (size_t) maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s of a background job is too long", what),
				 errdetail("It is %zu bytes; at most %d are allowed.",
						   strlen(value), maxlen)));
	bg_check_printable(what, value);
}

/* No control characters: the text is shown in bg_jobs and in psql. */
static void
bg_check_printable(const char *what, const char *value)
{
	const unsigned char *p;

	for (p = (const unsigned char *) value; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s of a background job must not contain control characters",
							what)));
	}
}

/*
 * bg_progress(percent numeric, message text DEFAULT NULL) RETURNS void
 *
 * Called from inside a job: what bg_jobs shows as its progress, at once,
 * from any session with the job role's privileges.  No transaction is
 * involved, so it works inside a long statement.
 */
Datum
bg_progress(PG_FUNCTION_ARGS)
{
	BgJobShared *shared = bg_worker_job();
	double		percent;
	char	   *message = NULL;

	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bg_progress() can only be called inside a background job"),
				 errhint("Call it from the SQL a job launched with bg_launch() runs.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("percent must not be null")));
	percent = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
												 PG_GETARG_DATUM(0)));
	if (!(percent >= 0 && percent <= 100))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("percent must be between 0 and 100")));
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
	{
		message = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (strlen(message) >= BG_PROGRESS_MESSAGE_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("progress message is too long"),
					 errdetail("It is %zu bytes; at most %d are allowed.",
							   strlen(message), BG_PROGRESS_MESSAGE_LEN - 1)));
		bg_check_printable("progress message", message);
	}

	SpinLockAcquire(&shared->mutex);
	shared->has_progress = true;
	shared->progress = percent;
	if (message)
		memcpy(shared->progress_message, message, strlen(message) + 1);
	else
		shared->progress_message[0] = '\0';
	SpinLockRelease(&shared->mutex);
	PG_RETURN_VOID();
}

/* A job waiting for itself would wait for ever. */
void
bg_check_not_self(int pid)
{
	if (pid == bg_worker_job_name())
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("background job %d cannot wait for itself", pid)));
}

/*
 * bg_cancel_label(pattern text) RETURNS integer
 *
 * Cancel the running jobs of this database whose label matches the LIKE
 * pattern and that the caller may act on; returns how many.
 */
Datum
bg_cancel_label(PG_FUNCTION_ARGS)
{
	char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_INT32(bg_registry_cancel_label(pattern));
}

/*
 * Queue the NOTIFY of a job's end on its channel, sent when the current
 * transaction commits.  The payload says only which job and how it ended
 * (any role may LISTEN on any channel).
 */
void
bg_notify_end(const char *channel, int pid, int64 job_id, BgJobStatus status)
{
	char		payload[128];

	snprintf(payload, sizeof(payload),
			 "{\"pid\": %d, \"id\": " INT64_FORMAT ", \"state\": \"%s\"}",
			 pid, job_id, bg_status_name(status));
	Async_Notify(channel, payload);
}

/*
 * The job has ended in "status" and its outcome is committed: NOTIFY its
 * channel, if it has one, in a transaction of its own.  A failure is only
 * logged: the job's outcome stands.  A standby sends none.
 */
void
bg_control_notify(BgJobShared *shared, BgJobStatus status)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (shared->notify[0] == '\0' || RecoveryInProgress())
		return;
	PG_TRY();
	{
		StartTransactionCommand();
		bg_notify_end(shared->notify, shared->name, shared->job_id, status);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata = bg_worker_take_error();

		MemoryContextSwitchTo(cxt);
		ereport(LOG,
				(errmsg("background job %d could not notify channel \"%s\": %s",
						shared->name, shared->notify, edata->message)));
	}
	PG_END_TRY();
}

/* ----------------------------------------------------------------
 *		bg_wait_any
 * ----------------------------------------------------------------
 */

/*
 * bg_wait_any(pids integer[], timeout interval DEFAULT NULL)
 *		RETURNS integer
 *
 * The PID of the first job of the list to end, in the list's order among
 * those that have (one that ended already counts at once); NULL if the
 * timeout passes first.  Each PID is found and checked as bg_wait finds
 * it, then followed by its identifier.  The session sleeps until a job
 * wakes it: this session's jobs do through their queues, other sessions'
 * jobs through the waiter slots of their segments; one whose slots are all
 * taken is looked at again every deadlock_timeout, as is any job for a
 * deadlock.
 */
Datum
bg_wait_any(PG_FUNCTION_ARGS)
{
	BgWaitTarget *targets;
	int			n;
	int			i;
	long		timeout_ms = -1;
	TimestampTz deadline = 0;
	TimestampTz check_at;
	bool		look = true;
	bool		first = true;
	MemoryContext pass_cxt;
	MemoryContext oldcxt = CurrentMemoryContext;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("PIDs of the background jobs must not be null")));
	n = bg_wait_targets(PG_GETARG_ARRAYTYPE_P(0), &targets);
	for (i = 0; i < n; i++)
		targets[i].any = n > 1;
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
	{
		timeout_ms = bg_interval_ms(PG_GETARG_INTERVAL_P(1));
		if (timeout_ms >= 0)
			deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	}

	pass_cxt = AllocSetContextCreate(CurrentMemoryContext, "bg_fdw wait any",
									 ALLOCSET_DEFAULT_SIZES);
	check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), DeadlockTimeout);
	for (;;)
	{
		long		wait_ms = DeadlockTimeout;
		TimestampTz now;
		int			ended = -1;

		/*
		 * Each look leaves its strings behind: keep them to one pass.  The
		 * first pass looks at every job, so that each is found and checked.
		 */
		MemoryContextReset(pass_cxt);
		MemoryContextSwitchTo(pass_cxt);
		for (i = 0; i < n && (ended < 0 || first); i++)
		{
			if (bg_wait_target_ended(&targets[i], look) && ended < 0)
				ended = i;
		}
		MemoryContextSwitchTo(oldcxt);
		first = false;
		if (ended >= 0)
		{
			BgWaitTarget *t = &targets[ended];
			int64		job_id = t->job ? t->job->job_id : t->job_id;
			bool		finished = t->job ? t->job->state == BG_JOB_FINISHED :
				job_id != 0;

			bg_wait_release(targets, n);
			MemoryContextDelete(pass_cxt);
			/* as for bg_wait, a finished job has ended once its result is kept */
			if (finished)
				bg_registry_await_kept(t->pid, job_id);
			PG_RETURN_INT32(t->pid);
		}
		look = false;
		now = GetCurrentTimestamp();
		if (timeout_ms >= 0)
		{
			long		remaining = TimestampDifferenceMilliseconds(now, deadline);

			if (remaining <= 0)
			{
				bg_wait_release(targets, n);
				MemoryContextDelete(pass_cxt);
				PG_RETURN_NULL();
			}
			wait_ms = Min(wait_ms, remaining);
		}
		bg_wait_publish(targets, n, true);
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 wait_ms, bg_wait_event_job());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		/* on elapsed time, whatever wakes the wait */
		now = GetCurrentTimestamp();
		if (now >= check_at)
		{
			check_at = TimestampTzPlusMilliseconds(now, DeadlockTimeout);
			bg_wait_check_deadlock(targets, n);
			look = true;
		}
		bg_wait_publish(targets, n, false);
	}
}

/*
 * A wait for one job of this session is published in the job's segment for
 * the wait-for graph (waitgraph.c), as bg_wait's is.  A wait for any of
 * several is not: the graph knows only waits for all of what they wait for.
 * An error on the way leaves it set: transaction abort clears it.
 */
static void
bg_wait_publish(BgWaitTarget *targets, int n, bool waiting)
{
	if (n == 1 && targets[0].job != NULL && targets[0].job->shared != NULL)
		targets[0].job->shared->launcher_waiting = waiting;
}

/* The jobs of the array, each PID once, in order; returns how many. */
static int
bg_wait_targets(ArrayType *pids, BgWaitTarget **targets)
{
	Datum	   *elems;
	bool	   *nulls;
	int			nelems;
	int			n = 0;
	int			i;
	int			j;

	deconstruct_array(pids, INT4OID, 4, true, TYPALIGN_INT,
					  &elems, &nulls, &nelems);
	if (nelems == 0 || nelems > BG_WAIT_ANY_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("bg_wait_any() needs between 1 and %d PIDs", BG_WAIT_ANY_MAX)));
	*targets = palloc0(nelems * sizeof(BgWaitTarget));
	for (i = 0; i < nelems; i++)
	{
		int			pid = DatumGetInt32(elems[i]);

		if (nulls[i])
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("PIDs of the background jobs must not be null")));
		bg_check_not_self(pid);
		for (j = 0; j < n && (*targets)[j].pid != pid; j++)
			;
		if (j == n)
			(*targets)[n++].pid = pid;
	}
	return n;
}

/*
 * Has the job ended?  The first look finds it (raising bg_wait's errors)
 * and, for another session's job, registers us to be woken.  Later, a job
 * holding our slot is asked at every wake-up; one without a slot is looked
 * up again only where "look" says (every deadlock_timeout).  A job
 * forgotten meanwhile has ended.
 */
static bool
bg_wait_target_ended(BgWaitTarget *t, bool look)
{
	dsm_handle	handle;
	bool		ended;

	if (t->job == NULL && t->job_id == 0 && bg_job_held(t->pid, 0))
		t->job = bg_job_lookup_attached(t->pid, 0);
	/* (takes its rows into the spool, so that it never waits for us) */
	if (t->job != NULL)
		return bg_job_wait(t->job, 0);
	if (t->shared != NULL)
		return bg_job_get_flag(t->shared, &t->shared->worker_exited);
	if (!look)
		return false;
	ended = bg_registry_job_ended(t->pid, &t->job_id, &handle);
	if (!ended)
		ended = bg_wait_register(t, handle);
	return ended;
}

/*
 * Take a waiter slot in the job's segment, and hold the segment meanwhile;
 * the slot is given back when we let go of the segment, even on an error.
 * Returns whether the job has ended meanwhile.
 */
static bool
bg_wait_register(BgWaitTarget *t, dsm_handle handle)
{
	shm_toc    *toc;
	BgJobShared *shared = NULL;
	int			i;

	if (handle == DSM_HANDLE_INVALID || dsm_find_mapping(handle) != NULL)
		return false;			/* (looked at every deadlock_timeout) */
	t->seg = dsm_attach(handle);
	if (t->seg == NULL)
		return false;
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(t->seg));
	if (toc != NULL)
		shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);
	if (shared == NULL || shared->job_id != t->job_id)
	{
		dsm_detach(t->seg);
		t->seg = NULL;
		return false;
	}
	/* before the slot is taken: nothing may fail in between */
	on_dsm_detach(t->seg, bg_wait_unregister, PointerGetDatum(shared));
	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < BG_MAX_WAITERS; i++)
	{
		if (shared->waiters[i] == NULL)
		{
			shared->waiters[i] = MyProc;
			shared->waiter_any[i] = t->any;
			t->shared = shared;
			break;
		}
	}
	SpinLockRelease(&shared->mutex);
	if (t->shared == NULL)
	{
		/* all slots taken: looked at every deadlock_timeout */
		dsm_detach(t->seg);
		t->seg = NULL;
		return false;
	}
	/* it may have exited before we took the slot, and woken nobody */
	return bg_job_get_flag(shared, &shared->worker_exited);
}

/* on_dsm_detach callback: give back our waiter slot */
static void
bg_wait_unregister(dsm_segment *seg, Datum arg)
{
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);
	int			i;

	SpinLockAcquire(&shared->mutex);
	for (i = 0; i < BG_MAX_WAITERS; i++)
	{
		if (shared->waiters[i] == MyProc)
			shared->waiters[i] = NULL;
	}
	SpinLockRelease(&shared->mutex);
}

static void
bg_wait_release(BgWaitTarget *targets, int n)
{
	int			i;

	for (i = 0; i < n; i++)
	{
		if (targets[i].seg != NULL)
			dsm_detach(targets[i].seg);
		targets[i].seg = NULL;
		targets[i].shared = NULL;
	}
}

/* The process running a job waited for, where we know it, else 0 */
static pid_t
bg_wait_target_worker(BgWaitTarget *t)
{
	BgJobShared *shared = t->shared;

	if (shared == NULL && t->job != NULL)
		shared = t->job->shared;
	return shared != NULL ? bg_shared_worker_pid(shared) : 0;
}

/*
 * A job that waits for this session, for a lock it holds or through others
 * (waitgraph.c), never ends while we wait for it: when every job waited for
 * does, that is a deadlock, as in bg_wait.  One that may still end lets the
 * wait end.
 */
static void
bg_wait_check_deadlock(BgWaitTarget *targets, int n)
{
	const char *hint = _("Wait for the jobs from another session, or outside the transaction that holds the lock.");
	int			direct = -1;
	int			cycle = -1;
	int			free = 0;
	int			i;

	/* every target, so that each remembers what this check saw */
	for (i = 0; i < n; i++)
	{
		pid_t		worker = bg_wait_target_worker(&targets[i]);

		if (bg_blocked_by_me(worker))
			direct = i;
		else if (bg_wait_cycle_found(worker, &targets[i].cycle))
			cycle = i;
		else
			free++;
	}
	if (free > 0)
		return;
	if (direct >= 0)
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("Background job %d is waiting for a lock or snapshot held by this session, which is waiting for the job.",
						   targets[direct].pid),
				 errhint("%s", hint)));
	bg_raise_wait_cycle(&targets[cycle].cycle, hint);
}
