/*-------------------------------------------------------------------------
 *
 * job.c
 *		  The launching session's side of a background job: the session's
 *		  list of jobs, the spool that makes a result re-readable, reading
 *		  the tuple and message queues, waiting, and relaying the worker's
 *		  notices and errors.
 *
 * A job's rows arrive once, on a shm_mq.  Every row taken off the queue is
 * appended to the job's spool (spool.c), which outlives transactions and,
 * past work_mem, reads the job's kept file (or writes a temporary file, for
 * a job that keeps none), so that every scan of the result,
 * however many and whenever they run, sees the same rows.  Each scan has
 * its own position in the spool; a scan that has read all of the spool
 * takes the next row off the queue, as CteScan does with its tuplestore.
 *
 * A reader's current row is presented to the executor as a heap tuple that
 * is deformed lazily.  It stays valid until that reader's next row, whatever
 * other readers of the job do meanwhile, since a node above a scan (a nested
 * loop's outer side, a projection) may still point into the scan's row: it
 * is read in place where the spool keeps it in memory, and is otherwise a
 * copy the reader owns (the queue's memory is reused by the next receive,
 * the spool's write buffer by the next append).
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/job.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "executor/executor.h"
#include "libpq/pqformat.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "storage/condition_variable.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/shm_toc.h"
#include "storage/sinval.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(bg_segments);

/*
 * Jobs launched by this session; cells in TopMemoryContext.  bg_jobs holds
 * those that may still need the session's attention (a segment, a spool,
 * readers, a detach to carry out), bg_jobs_quiet those that cannot any more
 * (detached, or released with no detach pending): the loops that run at each
 * launch and at each transaction's end walk bg_jobs only, so that a session
 * holding thousands of ended jobs does not pay for them each time.  "seq"
 * orders them across both.
 */
static List *bg_jobs = NIL;
static List *bg_jobs_quiet = NIL;
static uint64 bg_jobs_seq = 0;

/* Job segments this backend has mapped, see bg_segment_track */
static int	bg_segments_mapped = 0;

/* Segments of ended jobs a session may hold; -1: no limit */
int			bg_max_ended_segments = BG_DEFAULT_MAX_ENDED_SEGMENTS;

/* Segments a role's sessions may hold for their jobs; -1: no limit */
int			bg_max_held_segments_per_role = BG_DEFAULT_MAX_HELD_SEGMENTS_PER_ROLE;

/* The slot a launch in progress took (bg_held_slot_take), and its role */
static int	bg_held_slot_pending = 0;
static Oid	bg_held_slot_pending_role = InvalidOid;

/* Rows taken from another job per wait, so that the awaited one comes first */
#define BG_DRAIN_ROWS	10000
#define BG_DRAIN_BYTES	(4 * 1024 * 1024)
/* what a session following a kept file reads of it at a time */
#define BG_FOLLOW_BYTES	(256 * 1024)

static void bg_segment_untrack(dsm_segment *seg, Datum arg);
static void bg_job_drop_rows_link(BgJobShared *shared);
static void bg_job_detach_rows_link(dsm_segment *seg, Datum arg);
static void bg_job_set_desc(BgJob *job, TupleDesc desc);
static void bg_job_take_desc(BgJob *job, StringInfo msg);
static void bg_job_launched(BgJob *job);
static void bg_job_poll(BgJob *job);
static void bg_job_read_messages(BgJob *job);
static void bg_job_take_queued_messages(BgJob *job);
static void bg_job_handle_message(BgJob *job, StringInfo msg);
static void bg_job_relay(BgJob *job, StringInfo msg, bool is_error);
static void bg_job_lost(BgJob *job);
static void bg_job_tuples_detached(BgJob *job);
static void bg_job_consume_row(void *arg, char *data, uint32 len);
static void bg_job_rows_from_kept(BgJob *job, uint64 from);
static void bg_job_consume_kept_row(void *arg, char *data, uint32 len);
static bool bg_job_leave_queue(BgJob *job);
static bool bg_job_follow_kept(BgJob *job, bool take);
static void bg_job_consume_followed_row(void *arg, char *data, uint32 len);
static bool bg_job_watch_kept(BgJob *job);
static MinimalTuple bg_job_next_rows(BgJob *job, bool *spooled);
static void bg_job_consume_message(void *arg, char *data, uint32 len);
static MinimalTuple bg_job_receive(BgJob *job);
static void bg_job_sleep(BgJob *job, long timeout_ms, TimestampTz *check_at);
static void bg_job_drain_others(BgJob *waiting);
static shm_mq_result bg_job_take_rows(BgJob *job, int max_rows, Size max_bytes);
static void bg_drain_error_callback(void *arg);
static void bg_job_check_deadlock(BgJob *job);
static void bg_reader_copy(BgJob *job, BgReader *rd, MinimalTuple mtup);
static bool bg_job_ended(BgJob *job);
static void bg_job_close_segment(BgJob *job);
static bool bg_job_releasable(BgJob *job);
static void bg_jobs_release_at_commit(void);
static void bg_job_let_go(BgJob *job);
static void bg_held_slot_release(BgJob *job);
static void bg_held_slots_keep(bool aborting);
static void bg_job_give_up(BgJob *job);
static void bg_job_given_up_error(BgJob *job);
static void bg_job_set_error(BgJob *job, int sqlerrcode, const char *message,
							 const char *detail, const char *hint);
static void bg_held_slots_retake(ResourceReleasePhase phase, bool isCommit,
								 bool isTopLevel, void *arg);
static bool bg_job_commit_releasable(BgJob *job);
static void bg_jobs_rearm_wake(void);
static void bg_job_release_kept(BgJob *job);
static void bg_jobs_unkeep_removed(void);
static void bg_jobs_clear_waiting(void);
static void bg_check_spool(BgJob *job);
static void bg_stream_reread_error(BgJob *job);
static void bg_job_spool(BgJob *job, MinimalTuple tuple);
static void bg_xact_callback(XactEvent event, void *arg);
static void bg_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								SubTransactionId parentSubid, void *arg);
static void bg_release_readers(SubTransactionId from_subid);
static void bg_session_exit(int code, Datum arg);

/* ----------------------------------------------------------------
 *		Job segments this backend maps
 * ----------------------------------------------------------------
 */

/*
 * Count a job segment this backend has just created or attached.  However
 * it is let go of later (bg_detach, the end of its job, transaction abort,
 * a probe from another session, process exit), its detach callback counts
 * it out.
 */
void
bg_segment_track(dsm_segment *seg)
{
	bg_segments_mapped++;
	on_dsm_detach(seg, bg_segment_untrack, (Datum) 0);
}

static void
bg_segment_untrack(dsm_segment *seg, Datum arg)
{
	bg_segments_mapped--;
}

/*
 * bg_segments() RETURNS integer
 *
 * How many job segments this backend has mapped: what the tests check for
 * leaks, on any dynamic_shared_memory_type.
 */
Datum
bg_segments(PG_FUNCTION_ARGS)
{
	bg_jobs_release_ended();
	PG_RETURN_INT32(bg_segments_mapped);
}

/* ----------------------------------------------------------------
 *		The session's jobs
 * ----------------------------------------------------------------
 */

/*
 * Make the launcher's side of a job just started.  Everything lives in
 * "cxt", which still hangs off the launching transaction.
 */
BgJob *
bg_job_create(dsm_segment *seg, BackgroundWorkerHandle *handle, int pid,
			  const char *sql, TupleDesc desc, MemoryContext cxt)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
	shm_toc    *toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	BgJob	   *job = palloc0(sizeof(BgJob));

	job->pid = pid;
	job->state = BG_JOB_RUNNING;
	job->cxt = cxt;
	job->sql = pstrdup(sql);
	job->seg = seg;
	job->shared = shm_toc_lookup(toc, BG_KEY_SHARED, false);
	job->job_id = job->shared->job_id;
	job->role = job->shared->current_user_id;
	job->handle = handle;
	job->fileset = shm_toc_lookup(toc, BG_KEY_FILESET, false);
	job->tuple_mqh = shm_mq_attach(shm_toc_lookup(toc, BG_KEY_TUPLE_QUEUE, false),
								   seg, handle);
	job->message_mqh = shm_mq_attach(shm_toc_lookup(toc, BG_KEY_MESSAGE_QUEUE, false),
									 seg, handle);
	/* after the file set's own: runs before it */
	on_dsm_detach(seg, bg_job_detach_rows_link, PointerGetDatum(job->shared));
	if (desc)
		bg_job_set_desc(job, desc);

	/* past work_mem, a kept result's rows are read from the job's file */
	job->spool = bg_spool_create(cxt, work_mem,
								 job->shared->keep && !job->shared->stream ?
								 job->job_id : 0);

	MemoryContextSwitchTo(oldcxt);
	return job;
}

/* Record the result's columns, from bg_launch's describe or the worker. */
static void
bg_job_set_desc(BgJob *job, TupleDesc desc)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);

	job->desc = CreateTupleDescCopy(desc);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * The worker reached the job's last statement and reports its columns: what
 * its rows are, which may not be what bg_launch described (an earlier
 * statement altered a table it reads).  A table made at launch then no
 * longer matches, and says so when it is read.
 */
static void
bg_job_take_desc(BgJob *job, StringInfo msg)
{
	MemoryContext oldcxt;
	TupleDesc	actual;

	/*
	 * A type the job uses that this session cannot find (the worker makes
	 * the job's own types text, but another session may drop one): the rows
	 * are taken all the same, so that the job ends here too, and reading
	 * them says why it cannot be done.
	 */
	job->desc_missing_column = bg_desc_missing_type(msg, &job->desc_missing_type);
	if (job->desc_missing_column > 0)
	{
		if (job->desc != NULL)
			FreeTupleDesc(job->desc);
		job->desc = NULL;
		job->described = true;
		return;
	}
	oldcxt = MemoryContextSwitchTo(job->cxt);
	actual = bg_desc_deserialize(msg);
	MemoryContextSwitchTo(oldcxt);
	if (job->desc != NULL && !bg_desc_equal(job->desc, actual))
	{
		FreeTupleDesc(job->desc);
		job->desc = NULL;
		job->reshaped = true;
	}
	if (job->desc == NULL)
		job->desc = actual;
	else
		FreeTupleDesc(actual);
	job->described = true;
}

/*
 * The session's transaction callbacks and exit callback, once: for the
 * jobs it holds, and for the bg_detach calls of those it queued (queue.c).
 */
void
bg_jobs_register_callbacks(void)
{
	static bool callbacks_registered = false;

	if (callbacks_registered)
		return;
	RegisterXactCallback(bg_xact_callback, NULL);
	RegisterResourceReleaseCallback(bg_held_slots_retake, NULL);
	RegisterSubXactCallback(bg_subxact_callback, NULL);
	before_shmem_exit(bg_session_exit, (Datum) 0);
	callbacks_registered = true;
}

/*
 * The launch succeeded: the job now belongs to the session, whatever
 * becomes of the launching transaction.
 */
void
bg_job_attach(BgJob *job)
{
	MemoryContext oldcxt;

	bg_jobs_register_callbacks();

	MemoryContextSetParent(job->cxt, TopMemoryContext);
	dsm_pin_mapping(job->seg);
	bg_job_launched(job);
	/* the slot its launch took (bg_held_slot_take) is the job's now */
	Assert(bg_held_slot_pending == 0 || bg_held_slot_pending_role == job->role);
	job->held_slot = bg_held_slot_pending;
	bg_held_slot_pending = 0;
	job->seq = ++bg_jobs_seq;
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	bg_jobs = lappend(bg_jobs, job);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Can the job need nothing more of the session's loops?  Its segment is
 * gone (never to come back), nothing reads it, no detach is pending, and
 * its spool, if any, holds no kept file that bg_forget could remove.  A
 * reader or a detach wakes it (bg_job_wake).
 */
static bool
bg_job_quiet(BgJob *job)
{
	return job->state == BG_JOB_DETACHED ||
		(job->seg == NULL && !bg_job_in_use(job) &&
		 job->detach_subid == InvalidSubTransactionId &&
		 job->deferred == NIL &&
		 (job->spool == NULL || !bg_spool_holds_kept(job->spool)));
}

/* Move the jobs that have become quiet out of bg_jobs */
static void
bg_jobs_settle(void)
{
	ListCell   *lc;
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (!bg_job_quiet(job))
			continue;
		job->quiet = true;
		bg_jobs_quiet = lappend(bg_jobs_quiet, job);
		bg_jobs = foreach_delete_current(bg_jobs, lc);
	}
	MemoryContextSwitchTo(oldcxt);
}

/* A quiet job that is to be read or detached needs the loops again */
static void
bg_job_wake(BgJob *job)
{
	MemoryContext oldcxt;

	if (!job->quiet)
		return;
	job->quiet = false;
	bg_jobs_quiet = list_delete_ptr(bg_jobs_quiet, job);
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	bg_jobs = lappend(bg_jobs, job);
	MemoryContextSwitchTo(oldcxt);
}

static int
bg_job_seq_cmp(const ListCell *a, const ListCell *b)
{
	uint64		sa = ((BgJob *) lfirst(a))->seq;
	uint64		sb = ((BgJob *) lfirst(b))->seq;

	return sa < sb ? -1 : sa > sb ? 1 : 0;
}

/*
 * At session exit, let go of the jobs' segments while the process can still
 * report statistics: the last to leave a segment deletes the files of rows
 * its job kept, and deleting a temporary file reports to the statistics
 * system, which shuts down before segments left attached are detached.
 */
static void
bg_session_exit(int code, Datum arg)
{
	ListCell   *lc;

	/*
	 * The slots first, which nothing else gives back at exit (an idle
	 * session's exit runs no abort), whatever becomes of the rest.
	 */
	bg_held_slot_drop_pending();
	foreach(lc, bg_jobs)
		bg_held_slot_release((BgJob *) lfirst(lc));
	foreach(lc, bg_jobs)
		bg_job_close_segment((BgJob *) lfirst(lc));
}

/*
 * The identifier of this session's job with this PID, unless it detached
 * it, else 0: functions given a PID act on the session's own job, even once
 * it has given its segment back, before any newer job with a reused PID.
 */
int64
bg_session_job_id(int pid)
{
	BgJob	   *job = bg_job_lookup(pid, 0, true);

	if (job == NULL || job->state == BG_JOB_DETACHED)
		return 0;
	return job->job_id;
}

/*
 * This session's jobs, oldest first (tombstones of detached ones too), in a
 * list of the caller's.
 */
List *
bg_session_jobs(void)
{
	List	   *all = list_concat_copy(bg_jobs, bg_jobs_quiet);

	list_sort(all, bg_job_seq_cmp);
	return all;
}

bool
bg_session_has_jobs(void)
{
	return bg_jobs != NIL || bg_jobs_quiet != NIL;
}

/* The newest job of "jobs" with this PID (and identifier, if not 0) */
static BgJob *
bg_job_find(List *jobs, int pid, int64 job_id)
{
	BgJob	   *found = NULL;
	ListCell   *lc;

	foreach(lc, jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (job->pid == pid && (job_id == 0 || job->job_id == job_id) &&
			(found == NULL || job->seq > found->seq))
			found = job;
	}
	return found;
}

/*
 * Find this session's job with the given PID (and identifier, if not 0).
 * Where the PID names several jobs over time, the newest wins.
 */
BgJob *
bg_job_lookup(int pid, int64 job_id, bool missing_ok)
{
	BgJob	   *live = bg_job_find(bg_jobs, pid, job_id);
	BgJob	   *quiet = bg_job_find(bg_jobs_quiet, pid, job_id);
	const char *type;

	if (live != NULL || quiet != NULL)
		return (quiet == NULL || (live != NULL && live->seq > quiet->seq)) ?
			live : quiet;
	if (missing_ok)
		return NULL;

	type = GetBackgroundWorkerTypeByPid(pid);
	if (job_id == 0 && type != NULL && strcmp(type, BG_WORKER_TYPE) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("background job %d was not launched by this session", pid),
				 errhint("A job's result can be read only in the session that launched it.")));
	if (job_id != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("background job " INT64_FORMAT " with PID %d is not known to this session",
						job_id, pid),
				 errdetail("The job was launched by another session, or by this one before it was detached or the server restarted.")));
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("background job %d does not exist", pid),
			 errhint("bg_launch returns the PID of the job it starts.")));
	return NULL;				/* keep compiler quiet */
}

/* Like bg_job_lookup, but the job's result must still be readable. */
BgJob *
bg_job_lookup_attached(int pid, int64 job_id)
{
	BgJob	   *job = bg_job_lookup(pid, job_id, false);

	bg_job_check_privileges(job);
	if (job->state == BG_JOB_DETACHED ||
		job->detach_subid != InvalidSubTransactionId)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("background job %d was detached from this session", pid),
				 errdetail("Its result can no longer be read.")));
	return job;
}

/*
 * A job's rows, outcome and control belong to roles with the privileges of
 * the role it runs as: after SET ROLE, or in a SECURITY DEFINER function,
 * the launching session may be someone else by the time it reads.
 */
bool
bg_job_visible(BgJob *job)
{
	return job->state == BG_JOB_DETACHED ||
		has_privs_of_role(GetUserId(), job->role);
}

void
bg_job_check_privileges(BgJob *job)
{
	if (!bg_job_visible(job))
		bg_permission_denied(job->pid, job->role);
}

void
bg_permission_denied(int pid, Oid role)
{
	/* (the job's role may have been dropped since) */
	char	   *name = GetUserNameFromId(role, true);

	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for background job %d", pid),
			 name ?
			 errdetail("Only roles with the privileges of role \"%s\" may act on it.",
					   name) :
			 errdetail("The job's role (OID %u) has been dropped.", role)));
}

const char *
bg_job_state_name(BgJob *job)
{
	switch (job->state)
	{
		case BG_JOB_RUNNING:
			return "running";
		case BG_JOB_FINISHED:
			return "finished";
		case BG_JOB_FAILED:
			return "failed";
		case BG_JOB_DETACHED:
			return "detached";
	}
	return "unknown";
}

/* Is a scan of the job open in this session? */
bool
bg_job_in_use(BgJob *job)
{
	int			i;

	for (i = 0; i < job->nreaders; i++)
		if (job->readers[i]->in_use)
			return true;
	return false;
}

/* Rows the job has sent so far. */
uint64
bg_job_rows(BgJob *job)
{
	return job->shared ? pg_atomic_read_u64(&job->shared->rows) : job->rows;
}

/*
 * Tell the worker its launch succeeded.  Until then it may run its
 * statements but not commit them: a launch that fails must leave no trace.
 */
static void
bg_job_launched(BgJob *job)
{
	/* "go" was given before: the worker may now commit */
	bg_job_set_flag(job->shared, &job->shared->launched, BG_WAKE_WORKER);
}

/*
 * Once the job has ended and its rows are all in the spool, its segment is
 * of no more use: give it back, for DSM segments are a server-wide pool
 * (shared with parallel query) and a queue may be large.
 */
static void
bg_job_close_segment(BgJob *job)
{
	dsm_segment *seg = job->seg;
	shm_mq_handle *tuple_mqh = job->tuple_mqh;
	shm_mq_handle *message_mqh = job->message_mqh;

	if (seg == NULL)
	{
		bg_held_slot_release(job);
		return;
	}
	job->rows = pg_atomic_read_u64(&job->shared->rows);
	bg_ring_let_go();
	/* the job has ended: what its worker wrote out of its file is final */
	if (job->spool)
		bg_spool_job_ended(job->spool,
						   pg_atomic_read_u64(&job->shared->kept_valid));
	/* (forgotten first: an error below, at an abort, must not come back here) */
	job->seg = NULL;
	job->shared = NULL;
	job->tuple_mqh = NULL;
	job->message_mqh = NULL;
	job->tuples_done = true;
	job->messages_done = true;
	/* (a session following the kept file let the tuple queue go) */
	if (tuple_mqh != NULL)
		shm_mq_detach(tuple_mqh);
	shm_mq_detach(message_mqh);
	dsm_detach(seg);
	bg_held_slot_release(job);
}

/*
 * Could the job's segment go?  It kept its result, it has ended, and
 * nothing in this session uses the segment or is about to detach it.
 */
static bool
bg_job_releasable(BgJob *job)
{
	return job->seg != NULL && !job->released && !job->stream &&
		job->shared->keep &&
		job->detach_subid == InvalidSubTransactionId &&
		!bg_job_in_use(job) &&
		bg_job_get_flag(job->shared, &job->shared->worker_exited);
}

/*
 * Give back the segments of jobs that have ended and kept their result,
 * whether or not this session read them: DSM segments are a server-wide
 * pool, shared with parallel query, and an unread job must not hold one.
 * Such a job's rows are in its kept file and its outcome in the registry,
 * so it is then read as any other session reads it; the messages still on
 * its queue are relayed first (bg_job_release_kept says what becomes of
 * the rows the session took).  Only jobs no scan has open are given back,
 * and only once the registry records the kept result, so that the file is
 * there to read.  A launch and bg_segments run this; each commit runs the
 * part that needs neither a catalog nor a file (bg_jobs_release_at_commit).
 */
void
bg_jobs_release_ended(void)
{
	ListCell   *lc;

	if (!IsTransactionState())
		return;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		bg_job_take_deferred(job);
		if (!bg_job_releasable(job))
			continue;
		bg_job_read_messages(job);
		bg_job_let_go(job);
	}
	bg_jobs_unkeep_removed();
	bg_jobs_settle();
}

/*
 * At each commit, give back what bg_jobs_release_ended can without a
 * catalog or a file: the segments of ended jobs that kept their result,
 * have all their messages on their queue and were never read (or failed).
 * A worker whose job ends wakes its idle session (bg_worker_wake_launcher)
 * into an empty transaction that commits here, so that an idle session
 * holds no segment of such a job; a busy one gives it back at its next
 * commit.  This runs in whatever transaction commits, so it does nothing
 * that can fail: the rest waits for the session's next bg_fdw call.
 */
static void
bg_jobs_release_at_commit(void)
{
	ListCell   *lc;

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (!bg_job_commit_releasable(job))
			continue;
		/* tried once: an error here must not bring the next commit back */
		job->commit_tried = true;
		bg_job_take_queued_messages(job);
		bg_job_let_go(job);
	}
}

/*
 * The messages of an ended job that kept its result have been taken: let
 * its segment go if it failed (its error is here, and it has no rows) or
 * its kept result is recorded.
 */
static void
bg_job_let_go(BgJob *job)
{
	if (job->state == BG_JOB_FAILED)
		bg_job_close_segment(job);
	else if (job->state == BG_JOB_FINISHED &&
			 bg_job_get_flag(job->shared, &job->shared->kept_recorded))
		bg_job_release_kept(job);
}

/*
 * Could the next commit let the job's segment go?  That is, is it worth
 * waking the session for?
 */
static bool
bg_job_commit_releasable(BgJob *job)
{
	return bg_job_releasable(job) && job->nspooled == 0 && !job->commit_tried &&
		!bg_job_get_flag(job->shared, &job->shared->messages_kept);
}

/*
 * At a transaction's end, ask for another wake if a job's segment could go
 * and the commit did not let it: the transaction aborted, or the job ended
 * after bg_jobs_release_at_commit looked.  Anything that takes in the
 * invalidation messages consumes the wake its worker sent, so it may be
 * gone.  An idle session then commits an empty transaction at once; one
 * idle in a transaction block waits for its end.  That commit tries each
 * job once (commit_tried), so the wakes come to an end.
 */
static void
bg_jobs_rearm_wake(void)
{
	ListCell   *lc;

	foreach(lc, bg_jobs)
	{
		if (bg_job_commit_releasable(lfirst(lc)))
		{
			catchupInterruptPending = true;
			SetLatch(MyLatch);
			return;
		}
	}
}

/*
 * Handle the messages a commit took off the job's queue but left for now
 * (notices, the result's description): a notice is passed on where the
 * session next deals with the job or launches one, as it would have been
 * had the session read it there.
 */
void
bg_job_take_deferred(BgJob *job)
{
	while (job->deferred != NIL)
	{
		StringInfo	msg = linitial(job->deferred);

		job->deferred = list_delete_first(job->deferred);
		bg_job_handle_message(job, msg);
		pfree(msg->data);
		pfree(msg);
	}
}

/*
 * A job this session holds whose kept file was removed (bg_forget, expiry)
 * while the session held it open: the session keeps the rows in a file of
 * its own from now on, and the removed file's disk goes back.  A copy that
 * fails (temp_file_limit) leaves the result readable as it was, until the
 * next try; it does not fail the caller (a launch, bg_segments).
 */
static void
bg_jobs_unkeep_removed(void)
{
	ListCell   *lc;

	/* (no subtransaction there; the next call copies) */
	if (IsInParallelMode())
		return;

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);
		MemoryContext oldcxt = CurrentMemoryContext;
		ResourceOwner oldowner = CurrentResourceOwner;

		if (job->state == BG_JOB_DETACHED || job->spool == NULL ||
			job->seg != NULL || bg_job_in_use(job) ||
			!bg_spool_kept_removed(job->spool))
			continue;
		/* a failed job's rows are never read (its error is): no copy */
		if (job->state == BG_JOB_FAILED)
		{
			bg_spool_free(job->spool);
			job->spool = bg_spool_create(job->cxt, work_mem, 0);
			job->nspooled = 0;
			job->nreaders = 0;
			continue;
		}
		BeginInternalSubTransaction(NULL);
		PG_TRY();
		{
			bg_spool_unkeep(job->spool);
			ReleaseCurrentSubTransaction();
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(oldcxt);
			edata = CopyErrorData();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
			MemoryContextSwitchTo(oldcxt);
			CurrentResourceOwner = oldowner;
			bg_spool_unkeep_cleanup(job->spool, false);
			/* a cancel or a timeout is the caller's, not the copy's */
			if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_INSUFFICIENT_RESOURCES &&
				ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_SYSTEM_ERROR)
				ReThrowError(edata);
			ereport(WARNING,
					(errcode(edata->sqlerrcode),
					 errmsg("could not copy the rows of background job %d, whose kept result was forgotten: %s",
							job->pid, edata->message)));
			FreeErrorData(edata);
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
}

/*
 * An ended job's kept file has every row: let its segment go.  One this
 * session never read is then read as any other session reads it, unless
 * it was forgotten before: it then keeps its segment, the session still
 * holding it, as bg_forget promises.  One it
 * has read in part keeps its spool, which reads the rest from the file it
 * holds open, so that the rows stay readable here as long as the session
 * holds the job, even once bg_forget removes the file; if the file cannot
 * be held open, the job keeps its segment, and with it its slot of
 * bg_fdw.max_held_segments_per_role.
 */
static void
bg_job_release_kept(BgJob *job)
{
	int64		rows = (int64) pg_atomic_read_u64(&job->shared->rows);
	uint64		valid = pg_atomic_read_u64(&job->shared->kept_valid);

	if (job->nspooled == 0)
	{
		/* forgotten meanwhile: the queue and the file set have its rows */
		if (pg_atomic_read_u64(&job->shared->kept_size) > 0 &&
			bg_keep_file_removed(job->shared->job_id))
			return;
		job->released = true;
		bg_job_close_segment(job);
		bg_spool_free(job->spool);
		job->spool = NULL;
		job->nreaders = 0;
		return;
	}
	if (!bg_spool_adopt_kept(job->spool, rows, valid))
		return;
	job->nspooled = rows;
	bg_job_close_segment(job);
}

/* ----------------------------------------------------------------
 *		bg_fdw.max_held_segments_per_role
 * ----------------------------------------------------------------
 */

/*
 * A session holds the segment of each job it launched while the job runs,
 * and past its end for as long as it needs it: a job launched with keep =>
 * false or in stream mode has nowhere else to keep its rows, until the
 * session has read them (or detached the job); a job that keeps its result
 * while a scan has it open, while read in part with no kept file held open
 * for it (bg_job_release_kept), or once its kept file was forgotten.  Each
 * is one of the server's DSM slots, which parallel query and every other
 * session share.  So that no role takes them all, however many sessions it
 * opens, each such segment takes one of the role's numbered slots, from
 * the launch until the session lets the segment go; the lock manager
 * counts them across the server, and a session's exit, however it ends,
 * gives them back.
 *
 * A slot is two session locks on tags of bg_fdw's own (in no database, so
 * that no SQL names them), each taken without waiting, and a session takes
 * a slot only when it gets both.  One is of the default lock method, which
 * a top-level abort releases; the other is of the advisory method, which
 * pg_advisory_unlock_all() and DISCARD ALL release.  Nothing releases both
 * at once, and the holder takes back what one released before the other can
 * go: the advisory lock at the end of every transaction (before an abort's
 * locks go), the other right after an abort's locks have gone.  So a slot
 * is never free while its holder holds its segment.
 */
#define BG_HELD_SLOT_TAG_FIELD4	0x4267	/* "Bg"; SQL's advisory locks use 1, 2 */
#define BG_HELD_SLOT_RETRIES	1000	/* 100 us apart, for all slots */

/* The default-method locks need taking again once an abort's locks go */
static bool bg_held_slots_lost = false;

static void
bg_held_slot_tags(LOCKTAG *abort_proof, LOCKTAG *unlock_proof, Oid role,
				  int slot)
{
	/* released by pg_advisory_unlock_all(), not by an abort */
	SET_LOCKTAG_ADVISORY(*abort_proof, InvalidOid, role, (uint32) slot,
						 BG_HELD_SLOT_TAG_FIELD4);
	/* released by an abort, not by pg_advisory_unlock_all() */
	*unlock_proof = *abort_proof;
	unlock_proof->locktag_type = LOCKTAG_USERLOCK;
	unlock_proof->locktag_lockmethodid = DEFAULT_LOCKMETHOD;
}

/* Does this session already hold the role's slot? */
static bool
bg_held_slot_mine(Oid role, int slot)
{
	ListCell   *lc;

	if (bg_held_slot_pending == slot && bg_held_slot_pending_role == role)
		return true;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (job->held_slot == slot && job->role == role)
			return true;
	}
	return false;
}

/*
 * Take a lock this session may hold already: true if it holds it now,
 * once, as before.  Never waits, never fails.
 */
static bool
bg_held_slot_lock(const LOCKTAG *tag)
{
	LockAcquireResult res = bg_lock_try_quietly(tag, ExclusiveLock);

	if (res == LOCKACQUIRE_ALREADY_HELD || res == LOCKACQUIRE_ALREADY_CLEAR)
		LockRelease(tag, ExclusiveLock, true);
	return res != LOCKACQUIRE_NOT_AVAIL;
}

static void
bg_held_slot_unlock(const LOCKTAG *tag)
{
	if (bg_lock_held_by_me(tag, ExclusiveLock))
		LockRelease(tag, ExclusiveLock, true);
}

/*
 * Take a free slot of the role that this session does not hold yet, and
 * return its number, or 0 if every slot up to the limit is taken.
 */
static int
bg_held_slot_find(Oid role)
{
	int			slot;

	for (slot = 1; slot <= bg_max_held_segments_per_role; slot++)
	{
		LOCKTAG		abort_proof;
		LOCKTAG		unlock_proof;
		LockAcquireResult res;

		if (bg_held_slot_mine(role, slot))
			continue;
		bg_held_slot_tags(&abort_proof, &unlock_proof, role, slot);
		/* (a full lock table is an error here, not a slot taken) */
		res = LockAcquire(&unlock_proof, ExclusiveLock, true, true);
		if (res != LOCKACQUIRE_OK)
		{
			if (res != LOCKACQUIRE_NOT_AVAIL)
				LockRelease(&unlock_proof, ExclusiveLock, true);
			continue;
		}
		if (bg_lock_try_quietly(&abort_proof, ExclusiveLock) == LOCKACQUIRE_OK)
			return slot;
		/* its holder is between an unlock and taking it back */
		LockRelease(&unlock_proof, ExclusiveLock, true);
	}
	return 0;
}

/*
 * A launch takes a free slot of its role, or is refused.  The slot is the
 * launch's until bg_job_attach hands it to the job; a launch that fails
 * gives it back (bg_held_slot_drop_pending).
 */
void
bg_held_slot_take(Oid role)
{
	int			slot;

	Assert(bg_held_slot_pending == 0);
	if (bg_max_held_segments_per_role < 0)
		return;
	/* the callbacks give the slots back at exit */
	bg_jobs_register_callbacks();
	slot = bg_held_slot_find(role);
	if (slot == 0)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many background jobs of role \"%s\" hold shared memory",
						GetUserNameFromId(role, false)),
				 errdetail("Sessions of the role hold the segments of as many jobs, running or not read to their end, as \"bg_fdw.max_held_segments_per_role\" allows (%d).",
						   bg_max_held_segments_per_role),
				 errhint("Read those results, or release them with bg_detach(pid); a job launched with keep => true leaves shared memory once it has ended.")));
	bg_held_slot_pending = slot;
	bg_held_slot_pending_role = role;
}

static void
bg_held_slot_free(Oid role, int slot)
{
	LOCKTAG		abort_proof;
	LOCKTAG		unlock_proof;

	bg_held_slot_tags(&abort_proof, &unlock_proof, role, slot);
	bg_held_slot_unlock(&unlock_proof);
	bg_held_slot_unlock(&abort_proof);
}

/* The launch failed: the slot it took is free again. */
void
bg_held_slot_drop_pending(void)
{
	if (bg_held_slot_pending == 0)
		return;
	bg_held_slot_free(bg_held_slot_pending_role, bg_held_slot_pending);
	bg_held_slot_pending = 0;
}

/* The job's segment is let go: so is its slot. */
static void
bg_held_slot_release(BgJob *job)
{
	if (job->held_slot > 0)
		bg_held_slot_free(job->role, job->held_slot);
	job->held_slot = 0;
}

/*
 * The session cannot take back half of the job's slot (the shared lock
 * table is full), and the other half is about to go: rather than hold a
 * segment no slot counts, it gives the segment up, and with it what the
 * segment held of the result.  Reading the job then says so.  The job
 * itself runs on, as bg_jobs shows.  Runs at an abort: nothing may fail.
 */
static void
bg_job_give_up(BgJob *job)
{
	/* (its error is made when it is raised: nothing is allocated here) */
	if (!bg_job_ended(job))
	{
		job->given_up = true;
		job->state = BG_JOB_FAILED;
	}
	bg_job_close_segment(job);
}

/* The error of a job whose result the session gave up (bg_job_give_up) */
static void
bg_job_given_up_error(BgJob *job)
{
	bg_job_set_error(job, ERRCODE_OUT_OF_MEMORY,
					 psprintf("result of background job %d was given up",
							  job->pid),
					 "The shared lock table was full when the session had to take back the job's slot of \"bg_fdw.max_held_segments_per_role\", so it let the job's segment go.  The job ran on: bg_jobs shows how it ended.",
					 "Increase \"max_locks_per_transaction\".");
}

/*
 * At the end of every transaction (at an abort, before the lock manager
 * lets go of its session locks of the default method), take back the
 * advisory half of each slot, which pg_advisory_unlock_all() or DISCARD
 * ALL may have released: the other half kept it from anyone else.  An
 * abort then takes the other half back (bg_held_slots_retake).
 */
static void
bg_held_slots_keep(bool aborting)
{
	ListCell   *lc;

	if (proc_exit_inprogress)
		return;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);
		LOCKTAG		abort_proof;
		LOCKTAG		unlock_proof;

		if (job->held_slot <= 0)
			continue;
		bg_held_slot_tags(&abort_proof, &unlock_proof, job->role,
						  job->held_slot);
		if (bg_held_slot_lock(&abort_proof))
			bg_held_slots_lost |= aborting;
		else if (aborting)
			bg_job_give_up(job);	/* the abort would free the slot */
	}
}

/*
 * Resource release callback: once an aborting transaction's locks are
 * gone, take back the other half of each slot.  Another session may hold
 * it for an instant, while it finds the advisory half taken: try again a
 * little later.  Nothing here may fail.
 */
static void
bg_held_slots_retake(ResourceReleasePhase phase, bool isCommit,
					 bool isTopLevel, void *arg)
{
	ListCell   *lc;
	int			tries = 0;	/* for all the slots: an abort waits 0.1 s at most */

	if (phase != RESOURCE_RELEASE_AFTER_LOCKS || isCommit || !isTopLevel ||
		!bg_held_slots_lost)
		return;
	bg_held_slots_lost = false;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);
		LOCKTAG		abort_proof;
		LOCKTAG		unlock_proof;
		bool		taken;

		if (job->held_slot <= 0)
			continue;
		bg_held_slot_tags(&abort_proof, &unlock_proof, job->role,
						  job->held_slot);
		while (!(taken = bg_held_slot_lock(&unlock_proof)) &&
			   ++tries < BG_HELD_SLOT_RETRIES)
			pg_usleep(100);
		if (!taken)
			bg_job_give_up(job);
	}
}

/*
 * Refuse a launch while this session holds bg_fdw.max_ended_segments
 * segments of ended jobs: those launched with keep => false or in stream
 * mode whose result it has not read to its end (the others it has just
 * given back).  Each holds a slot of the server's dynamic shared memory,
 * which parallel query and every other session share.
 */
void
bg_jobs_check_ended_segments(void)
{
	ListCell   *lc;
	int			ended = 0;

	if (bg_max_ended_segments < 0)
		return;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		/*
		 * Kept results give their segment back once recorded, unless a scan
		 * has them open or the session cannot hold their file open (more
		 * than 16 read in part): those count.
		 */
		if (job->seg != NULL && !bg_job_in_use(job) &&
			bg_job_get_flag(job->shared, &job->shared->worker_exited) &&
			(!job->shared->keep || job->stream ||
			 bg_job_get_flag(job->shared, &job->shared->kept_recorded)))
			ended++;
	}
	if (ended >= bg_max_ended_segments)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many ended background jobs hold shared memory in this session"),
				 errdetail_plural("The session holds the segment of %d ended job whose result it has not read; \"bg_fdw.max_ended_segments\" is %d.",
								  "The session holds the segments of %d ended jobs whose results it has not read; \"bg_fdw.max_ended_segments\" is %d.",
								  ended, ended, bg_max_ended_segments),
				 errhint("Read those results, or release them with bg_detach(pid); results of jobs launched with keep => true leave shared memory once the job has ended.")));
}

/*
 * bg_detach: record that the job is to be detached when the transaction
 * commits, with the drop of its tables; bg_job_release then stops listening
 * to it and frees its spool.  The job runs on: its worker finds the queues
 * detached and drops what it would have sent.
 */
void
bg_job_record_detach(BgJob *job)
{
	Assert(job->state != BG_JOB_DETACHED);
	Assert(!bg_job_in_use(job));
	job->detach_subid = GetCurrentSubTransactionId();
	bg_job_wake(job);
}

/*
 * Carry out a committed bg_detach.  A small tombstone stays so that later
 * calls can say what became of the job.
 */
static void
bg_job_release(BgJob *job)
{
	BgJob	   *tomb = MemoryContextAllocZero(TopMemoryContext, sizeof(BgJob));
	ListCell   *lc;

	bg_job_close_segment(job);
	if (job->spool)
		bg_spool_free(job->spool);
	job->spool = NULL;

	tomb->pid = job->pid;
	tomb->job_id = job->job_id;
	tomb->seq = job->seq;
	tomb->state = BG_JOB_DETACHED;
	foreach(lc, bg_jobs)
	{
		if (lfirst(lc) == job)
			lfirst(lc) = tomb;
	}
	MemoryContextDelete(job->cxt);
}

/* ----------------------------------------------------------------
 *		Messages from the worker
 * ----------------------------------------------------------------
 */

/*
 * Take every message that has arrived, without waiting.  The queue's
 * detaching without an outcome means the worker died.
 */
static void
bg_job_read_messages(BgJob *job)
{
	/* first those a commit took off the queue and left for now */
	bg_job_take_deferred(job);
	while (!job->messages_done)
	{
		Size		nbytes;
		void	   *data;
		StringInfoData msg;
		shm_mq_result res;

		res = shm_mq_receive(job->message_mqh, &nbytes, &data, true);
		if (res == SHM_MQ_WOULD_BLOCK)
			return;
		if (res == SHM_MQ_DETACHED)
		{
			/*
			 * The worker kept what the queue could not take.  Each message
			 * taken counts as received, so that a collection cut short by
			 * an interrupt resumes where it stopped.
			 */
			(void) bg_spill_collect(job->shared, job->fileset, false,
									job->messages_received,
									bg_job_consume_message, job);
			job->messages_done = true;
			/* an outcome that could not be sent may still be recorded */
			if (job->state == BG_JOB_RUNNING &&
				!bg_registry_outcome(job->job_id, job))
				bg_job_lost(job);
			return;
		}
		job->messages_received++;
		bg_init_read_only_stringinfo(&msg, data, nbytes);
		bg_job_handle_message(job, &msg);
	}
}

/*
 * Take the messages on the queue of a job whose worker has exited, and
 * nothing else: those it could not put there, and its outcome when it sent
 * none, are for bg_job_read_messages, which a detached queue sends there.
 * Only the outcome is handled now; the rest waits in "deferred", for a
 * notice sent now could fail the commit (a character the client encoding
 * lacks), and a description needs the catalog.
 */
static void
bg_job_take_queued_messages(BgJob *job)
{
	Size		nbytes;
	void	   *data;
	StringInfoData msg;

	while (!job->messages_done &&
		   shm_mq_receive(job->message_mqh, &nbytes, &data, true) == SHM_MQ_SUCCESS)
	{
		job->messages_received++;
		if (nbytes > 0 &&
			(((char *) data)[0] == BG_MSG_COMPLETE || ((char *) data)[0] == 'E'))
		{
			bg_init_read_only_stringinfo(&msg, data, nbytes);
			bg_job_handle_message(job, &msg);
		}
		else
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);
			StringInfo	copy = makeStringInfo();

			appendBinaryStringInfo(copy, data, nbytes);
			job->deferred = lappend(job->deferred, copy);
			MemoryContextSwitchTo(oldcxt);
		}
	}
}

static void
bg_job_handle_message(BgJob *job, StringInfo msg)
{
	char		msgtype = pq_getmsgbyte(msg);

	switch (msgtype)
	{
		case 'N':
		case 'E':
			bg_job_relay(job, msg, msgtype == 'E');
			break;
		case BG_MSG_DESCRIPTOR:
			bg_job_take_desc(job, msg);
			break;
		case BG_MSG_COMPLETE:
			if (job->state == BG_JOB_RUNNING)
			{
				job->command_tag = MemoryContextStrdup(job->cxt,
													   pq_getmsgrawstring(msg));
				job->state = BG_JOB_FINISHED;
			}
			break;
		default:
			elog(ERROR, "background job %d sent invalid message type \"%c\"",
				 job->pid, msgtype);
			break;
	}
}

/*
 * A notice is passed on to our client now, once.  An error is kept: every
 * read of the result raises it.  Either way it says which job it came from,
 * and a position in the job's SQL is shown against the job's SQL.
 */
static void
bg_job_relay(BgJob *job, StringInfo msg, bool is_error)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(is_error ? job->cxt :
												 CurrentMemoryContext);
	ErrorData  *edata = palloc0(sizeof(ErrorData));
	char	   *context;

	pq_parse_errornotice(msg, edata);
	context = psprintf("background job %d", job->pid);
	edata->context = edata->context ?
		psprintf("%s\n%s", edata->context, context) : context;
	if (edata->cursorpos > 0)
	{
		edata->internalpos = edata->cursorpos;
		edata->internalquery = job->sql;
		edata->cursorpos = 0;
	}
	MemoryContextSwitchTo(oldcxt);

	if (is_error || edata->elevel >= ERROR)
	{
		if (job->state == BG_JOB_RUNNING)
		{
			edata->elevel = ERROR;
			job->error = edata;
			job->state = BG_JOB_FAILED;
		}
		return;
	}
	ThrowErrorData(edata);
}

/* The worker went away without saying how its job ended. */
static void
bg_job_lost(BgJob *job)
{
	bg_job_set_error(job, ERRCODE_CONNECTION_FAILURE,
					 psprintf("background job %d terminated without reporting its outcome",
							  job->pid),
					 "Its worker process was terminated or crashed; whether its work was committed is unknown.",
					 NULL);
	job->state = BG_JOB_FAILED;
}

/* An error of the session's own about the job, kept to raise at each read */
static void
bg_job_set_error(BgJob *job, int sqlerrcode, const char *message,
				 const char *detail, const char *hint)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(job->cxt);
	ErrorData  *edata = palloc0(sizeof(ErrorData));

	edata->elevel = ERROR;
	edata->sqlerrcode = sqlerrcode;
	edata->message = pstrdup(message);
	edata->detail = pstrdup(detail);
	edata->hint = hint ? pstrdup(hint) : NULL;
	edata->context = psprintf("background job %d", job->pid);
	edata->domain = TEXTDOMAIN;
	job->error = edata;
	MemoryContextSwitchTo(oldcxt);
}

/* Raise the job's error in this session, as an ERROR. */
void
bg_job_raise_error(BgJob *job)
{
	Assert(job->state == BG_JOB_FAILED);
	if (job->error == NULL && job->given_up)
		bg_job_given_up_error(job);
	ThrowErrorData(job->error);
	/* ThrowErrorData returns only for levels below ERROR */
	elog(ERROR, "background job %d failed", job->pid);
}

/* ----------------------------------------------------------------
 *		Waiting
 * ----------------------------------------------------------------
 */

/*
 * Sleep until the worker sends something, we are interrupted, or the timeout
 * passes.  Every deadlock_timeout of one wait for the job (*check_at, 0 when
 * the wait begins), whatever wakes us meanwhile (another job's rows arrive
 * every fraction of a second), we look for a deadlock between the two of us.
 */
static void
bg_job_sleep(BgJob *job, long timeout_ms, TimestampTz *check_at)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait_ms;

	if (*check_at == 0)
		*check_at = TimestampTzPlusMilliseconds(now, DeadlockTimeout);
	wait_ms = TimestampDifferenceMilliseconds(now, *check_at);
	if (timeout_ms >= 0 && timeout_ms < wait_ms)
		wait_ms = timeout_ms;
	/*
	 * For the wait-for graph of other backends (waitgraph.c), through our
	 * own check too: two sessions checking in step must each see the other
	 * wait.  An error on the way leaves it set: transaction abort clears it.
	 */
	job->shared->launcher_waiting = true;
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 wait_ms, bg_wait_event_job());
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	now = GetCurrentTimestamp();
	if (now >= *check_at)
	{
		*check_at = TimestampTzPlusMilliseconds(now, DeadlockTimeout);
		bg_job_check_deadlock(job);
	}
	job->shared->launcher_waiting = false;
}

/* After an error: no job of ours is waited for any more. */
static void
bg_jobs_clear_waiting(void)
{
	ListCell   *lc;

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (job->state != BG_JOB_DETACHED && job->shared != NULL)
			job->shared->launcher_waiting = false;
	}
}

/*
 * While a scan waits for its job's next row, move the rows other jobs with
 * an open scan have sent into their spools.  In a join of two jobs the side
 * not being read (the outer side, while a hash join reads the inner one to
 * its end) then keeps its worker sending through the queue, instead of
 * keeping its rows on disk for us to copy later; the waits are when the
 * reader has time for it.  Messages stay for each job's own reader, and
 * stream jobs keep nothing, so they are left alone.  Keeping a row can fail
 * (temp_file_limit): the error names the job whose rows they were.
 */
static void
bg_job_drain_others(BgJob *waiting)
{
	ListCell   *lc;
	ErrorContextCallback errcallback;

	errcallback.callback = bg_drain_error_callback;
	errcallback.previous = error_context_stack;
	foreach(lc, bg_jobs)
	{
		BgJob	   *job = (BgJob *) lfirst(lc);
		if (job == waiting || job->seg == NULL || job->stream ||
			!job->described || job->tuples_done || job->spool_broken ||
			job->follows_kept || !bg_job_in_use(job))
			continue;
		errcallback.arg = job;
		error_context_stack = &errcallback;
		(void) bg_job_take_rows(job, BG_DRAIN_ROWS, BG_DRAIN_BYTES);
		error_context_stack = errcallback.previous;
	}
}

static void
bg_drain_error_callback(void *arg)
{
	errcontext("keeping rows of background job %d", ((BgJob *) arg)->pid);
}

/*
 * The worker may wait for us: for a lock our transaction holds, or (CREATE
 * INDEX CONCURRENTLY) for our snapshot to go away.  The lock manager cannot
 * see that we wait for the worker, so look for it ourselves.
 */
static void
bg_job_check_deadlock(BgJob *job)
{
	char	   *hint = psprintf(_("Wait for the job with CALL bg_await(%d), which holds no snapshot or lock while it waits, or from another session."),
								job->pid);
	pid_t		worker = bg_shared_worker_pid(job->shared);

	if (bg_blocked_by_me(worker))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("Background job %d is waiting for a lock or snapshot held by this session, which is waiting for the job.",
						   job->pid),
				 errhint("%s", hint)));
	bg_check_wait_cycle(worker, &job->cycle, hint);
	pfree(hint);
}

/*
 * Take whatever rows have arrived into the spool, and the messages.
 */
static void
bg_job_poll(BgJob *job)
{
	bool		described = job->described;

	bg_check_spool(job);
	if (job->follows_kept)
		(void) bg_job_follow_kept(job, false);
	else if (!job->tuples_done && described &&
			 bg_job_take_rows(job, INT_MAX, SIZE_MAX) == SHM_MQ_DETACHED)
		bg_job_tuples_detached(job);
	bg_job_read_messages(job);
	/* the columns just came, and the rows behind them may be all there */
	if (!described && job->described && !job->tuples_done &&
		bg_job_take_rows(job, INT_MAX, SIZE_MAX) == SHM_MQ_DETACHED)
		bg_job_tuples_detached(job);
	if (bg_job_ended(job))
		bg_job_close_segment(job);
}

/*
 * Take up to max_rows rows (and about max_bytes) that have arrived into the
 * spool, without waiting.  Returns why it stopped: SHM_MQ_SUCCESS at a
 * limit, else what the queue said.
 */
static shm_mq_result
bg_job_take_rows(BgJob *job, int max_rows, Size max_bytes)
{
	Size		bytes = 0;
	int			n;

	for (n = 0; n < max_rows && bytes < max_bytes; n++)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res;

		res = shm_mq_receive(job->tuple_mqh, &nbytes, &data, true);
		if (res != SHM_MQ_SUCCESS)
			return res;
		job->rows_received++;
		/* a stream job's rows cannot be kept: waiting consumes them */
		job->stream_taken = job->stream;
		if (!job->stream)
			bg_job_spool(job, (MinimalTuple) data);
		bytes += nbytes;
		CHECK_FOR_INTERRUPTS();
	}
	return SHM_MQ_SUCCESS;
}

/* Take the messages that have arrived, without touching the rows. */
void
bg_job_poll_messages(BgJob *job)
{
	bg_job_read_messages(job);
	if (bg_job_ended(job))
		bg_job_close_segment(job);
}

/* Has the job ended, with all its rows in the spool? */
static bool
bg_job_ended(BgJob *job)
{
	return job->state == BG_JOB_FAILED ||
		(job->state == BG_JOB_FINISHED && job->tuples_done);
}

/*
 * Wait until the job ends, keeping its rows in the spool meanwhile so that it
 * never waits for us.  timeout_ms < 0 waits for good.  Returns false if the
 * timeout passed first.  Does not raise the job's error.
 */
bool
bg_job_wait(BgJob *job, long timeout_ms)
{
	TimestampTz deadline = 0;
	TimestampTz check_at = 0;

	/* waiting takes a stream job's rows, which an open scan is reading */
	if (job->stream && bg_job_in_use(job))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot wait for background job %d while its result is being read",
						job->pid),
				 errdetail("The job was launched with stream => true: waiting would take the rows the open scan has not read yet."),
				 errhint("Read the result to its end, or close the scan, first.")));

	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);

	for (;;)
	{
		long		remaining = -1;

		bg_job_poll(job);
		if (bg_job_ended(job))
			return true;
		if (timeout_ms >= 0)
		{
			remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
														deadline);
			if (remaining <= 0)
				return false;
		}
		bg_job_sleep(job, remaining, &check_at);
	}
}

/*
 * Before its rows are read: wait until the worker reaches the job's last
 * statement and reports its columns, which may not be those bg_launch
 * described (or it could describe none).  A job that fails before that has
 * its error raised here.
 */
void
bg_job_wait_descriptor(BgJob *job)
{
	TimestampTz check_at = 0;

	for (;;)
	{
		bg_job_read_messages(job);
		if (job->described || job->state == BG_JOB_FAILED ||
			job->state == BG_JOB_FINISHED)
			break;
		bg_job_sleep(job, -1, &check_at);
	}
	if (!job->described && job->state == BG_JOB_FAILED)
		bg_job_raise_error(job);
	if (!job->described)
		elog(ERROR, "background job %d finished without describing its result",
			 job->pid);
	if (job->desc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("cannot read the result of background job %d", job->pid),
				 errdetail("Its column %d has type %u, which this session cannot find.",
						   job->desc_missing_column, job->desc_missing_type),
				 errhint("Another session dropped the type while the job ran.")));
}

/*
 * bg_launch: wait until the worker has listed the job in the registry, which
 * it does while we create the result table.
 */
void
bg_job_wait_registered(BgJob *job)
{
	TimestampTz check_at = 0;

	for (;;)
	{
		if (bg_job_get_flag(job->shared, &job->shared->registered))
			return;
		bg_job_read_messages(job);
		if (job->state == BG_JOB_FAILED)
			bg_job_raise_error(job);
		bg_job_sleep(job, -1, &check_at);
	}
}

/*
 * The tuple queue is drained and detached.  Rows the worker kept because the
 * queue was full follow the queue's rows, into the spool.
 */
static void
bg_job_tuples_detached(BgJob *job)
{
	BgJobShared *shared = job->shared;
	bool		in_kept_file;
	uint64		from;

	SpinLockAcquire(&shared->mutex);
	in_kept_file = shared->rows_in_kept_file;
	from = shared->rows_kept_from;
	SpinLockRelease(&shared->mutex);
	/* as for messages, an interrupted collection resumes where it stopped */
	if (job->stream)
		;
	else if (in_kept_file)
	{
		bg_job_rows_from_kept(job, from);
		bg_job_drop_rows_link(shared);
	}
	else
		(void) bg_spill_collect(shared, job->fileset, true,
								job->rows_received, bg_job_consume_row, job);
	job->tuples_done = true;
}

/*
 * Remove the kept file's second name in the job's file set once the rows
 * are taken from it, or the session lets the segment go without them (an
 * error, its end): by an unlink of our own, not the file set's cleanup,
 * which would report a temporary file of the kept file's size
 * (log_temp_files, temp_bytes) where none was written.
 */
static void
bg_job_drop_rows_link(BgJobShared *shared)
{
	char		path[MAXPGPATH];

	SpinLockAcquire(&shared->mutex);
	strlcpy(path, shared->rows_link, MAXPGPATH);
	shared->rows_link[0] = '\0';
	SpinLockRelease(&shared->mutex);
	if (path[0] != '\0' && unlink(path) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", path)));
}

/* on_dsm_detach callback of the launching session */
static void
bg_job_detach_rows_link(dsm_segment *seg, Datum arg)
{
	bg_job_drop_rows_link((BgJobShared *) DatumGetPointer(arg));
}

/*
 * The rows the queue did not carry are in the job's kept file, the first of
 * them at "from": the spool reads them from there, holding the file open as
 * it does for rows past work_mem; or, with no file descriptor to spare for
 * that, or the file forgotten meanwhile, it takes a copy of each.
 */
static void
bg_job_rows_from_kept(BgJob *job, uint64 from)
{
	int64		rows = (int64) pg_atomic_read_u64(&job->shared->rows);
	uint64		valid = pg_atomic_read_u64(&job->shared->kept_valid);
	File		file;

	if (job->nspooled >= rows)
		return;
	if (job->kept_next == 0)
	{
		if (bg_spool_adopt_kept(job->spool, rows, valid))
		{
			job->nspooled = rows;
			return;
		}
		job->kept_next = from;
	}
	/* (by its name in the file set, which a bg_forget leaves) */
	file = FileSetOpen(&job->fileset->fs, BG_KEPT_ROWS_LINK, O_RDONLY | PG_BINARY);
	if (file <= 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the rows of background job %d kept in its file set: %m",
						job->pid)));
	bg_keep_scan_rows(file, (off_t) job->kept_next, (off_t) valid,
					  bg_job_consume_kept_row, job);
	FileClose(file);
}

static void
bg_job_consume_row(void *arg, char *data, uint32 len)
{
	BgJob	   *job = (BgJob *) arg;

	bg_job_spool(job, (MinimalTuple) data);
	job->rows_received++;
}

/* (where the next row starts moves on only once this one is in) */
static void
bg_job_consume_kept_row(void *arg, char *data, uint32 len)
{
	BgJob	   *job = (BgJob *) arg;

	bg_job_spool(job, (MinimalTuple) data);
	job->kept_next += sizeof(BgKeepRecord) + len;
}

/*
 * A reader that comes back to a job that keeps its result, after the worker
 * had to leave rows in the kept file for want of room in the queue, takes
 * what the queue holds, then reads on from the kept file, like any other
 * session: the worker pushes the rows it left there only as it produces
 * more, and it may be busy in its query, or blocked, for long.  The queue
 * is let go, and with it whatever the worker had put there past the rows
 * taken (they are in the file too); the worker then only writes its file.
 * The spool reads rows past the ones it has from the file, so it must hold
 * it: where it cannot, the session stays on the queue.
 */
static bool
bg_job_leave_queue(BgJob *job)
{
	shm_mq_handle *tuple_mqh = job->tuple_mqh;

	if (job->stream || !job->described || job->spool_broken ||
		!job->shared->keep ||
		!bg_job_get_flag(job->shared, &job->shared->rows_aside) ||
		!bg_spool_hold_kept(job->spool))
		return false;
	/* the worker has written out no row we lack yet: wait on the queue */
	if ((off_t) pg_atomic_read_u64(&job->shared->kept_valid) <=
		bg_spool_kept_end(job->spool))
		return false;
	job->follows_kept = true;
	job->tuple_mqh = NULL;
	shm_mq_detach(tuple_mqh);
	return true;
}

/*
 * With "take", take into the spool rows the worker has written out past
 * those it has, a block's worth (a scan that wants a few rows gets them at
 * once, not after the whole file).  Once the job has finished, the spool
 * takes the rest where it lies in the file it holds, reading none: all of
 * the job's rows are then in.  Returns whether rows came.  The messages are
 * read first: once the outcome is among them, what the worker wrote out is
 * final.
 */
static bool
bg_job_follow_kept(BgJob *job, bool take)
{
	int64		nspooled = job->nspooled;
	int64		rows;
	uint64		valid;

	bg_job_read_messages(job);
	if (job->tuples_done || job->state == BG_JOB_FAILED)
		return false;
	rows = (int64) pg_atomic_read_u64(&job->shared->rows);
	valid = pg_atomic_read_u64(&job->shared->kept_valid);
	if (job->state == BG_JOB_FINISHED &&
		bg_spool_adopt_kept(job->spool, rows, valid))
		job->nspooled = rows;
	else if (take)
		bg_spool_follow_kept(job->spool, valid, BG_FOLLOW_BYTES,
							 bg_job_consume_followed_row, job);
	if (job->state == BG_JOB_FINISHED && job->nspooled >= rows)
		job->tuples_done = true;
	return job->nspooled != nspooled;
}

static void
bg_job_consume_followed_row(void *arg, char *data, uint32 len)
{
	bg_job_spool((BgJob *) arg, (MinimalTuple) data);
}

/*
 * Before a wait for the job's rows: where they may come through the kept
 * file, be woken when the worker writes more of it out.  The caller cancels
 * the sleep, before the segment can go.
 */
static bool
bg_job_watch_kept(BgJob *job)
{
	if (job->tuples_done || job->stream || !job->shared->keep ||
		!(job->follows_kept ||
		  bg_job_get_flag(job->shared, &job->shared->rows_aside)))
		return false;
	ConditionVariablePrepareToSleep(&job->shared->kept_cv);
	return true;
}

static void
bg_job_consume_message(void *arg, char *data, uint32 len)
{
	StringInfoData msg;

	bg_init_read_only_stringinfo(&msg, data, len);
	((BgJob *) arg)->messages_received++;
	bg_job_handle_message((BgJob *) arg, &msg);
}

/* ----------------------------------------------------------------
 *		The spool
 * ----------------------------------------------------------------
 */

/*
 * Append a row taken off the queue.  The row is gone from the queue, so an
 * append that fails (temp_file_limit, a full disk) leaves the result
 * incomplete for good; remember that rather than serve a partial result.
 */
static void
bg_job_spool(BgJob *job, MinimalTuple tuple)
{
	job->spool_broken = true;
	if (bg_spool_needs_valid(job->spool, tuple->t_len))
		bg_spool_set_valid(job->spool,
						   pg_atomic_read_u64(&job->shared->kept_valid));
	bg_spool_append(job->spool, tuple);
	job->spool_broken = false;
	job->nspooled++;
}

/*
 * A stream job's rows go to the first reader and are not kept.
 */
static void
bg_stream_reread_error(BgJob *job)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("result of background job %d cannot be read again", job->pid),
			 errdetail("The job was launched with stream => true, which keeps no rows for another read."),
			 errhint("Launch it with stream => false for a result that reads like a table, or keep it with CREATE TABLE ... AS SELECT.")));
}

static void
bg_check_spool(BgJob *job)
{
	if (job->spool_broken)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("result of background job %d is incomplete", job->pid),
				 errdetail("Keeping its rows in this session failed earlier."),
				 errhint("Detach the job with bg_detach(%d) and launch it again.",
						 job->pid)));
}

/* ----------------------------------------------------------------
 *		Readers
 * ----------------------------------------------------------------
 */

/*
 * Open a reader of the job's result, positioned at its first row.  A closed
 * reader's slot in the job's array is reused; its memory lives as long as
 * the job, as do its buffers.
 */
int
bg_reader_open(BgJob *job, TupleTableSlot *slot)
{
	int			i;
	BgReader   *rd;

	for (i = 0; i < job->nreaders; i++)
		if (!job->readers[i]->in_use)
			break;
	if (i == job->nreaders)
	{
		/* Readers are allocated one by one: slots point into them. */
		if (job->nreaders % 8 == 0)
		{
			Size		size = (job->nreaders + 8) * sizeof(BgReader *);

			job->readers = job->readers ? repalloc(job->readers, size) :
				MemoryContextAlloc(job->cxt, size);
		}
		rd = MemoryContextAllocZero(job->cxt, sizeof(BgReader));
		job->readers[job->nreaders++] = rd;
	}
	rd = job->readers[i];
	/* a stream job has one reader at a time, and only until it took rows */
	if (job->stream && (job->stream_taken || bg_job_in_use(job)))
		bg_stream_reread_error(job);
	rd->in_use = true;
	bg_job_wake(job);
	rd->nread = 0;
	rd->subid = GetCurrentSubTransactionId();
	rd->slot = slot;
	bg_reader_rescan(job, i);
	return i;
}

void
bg_reader_close(BgJob *job, int reader)
{
	BgReader   *rd = job->readers[reader];

	rd->in_use = false;
	rd->slot = NULL;
}

void
bg_reader_rescan(BgJob *job, int reader)
{
	if (job->stream && job->readers[reader]->nread > 0)
		bg_stream_reread_error(job);
	job->readers[reader]->nread = 0;
	bg_spool_rewind(&job->readers[reader]->pos);
}

/*
 * Make a row taken off the queue the reader's current row: a copy in the
 * reader's own buffer, since the queue's memory is reused by the next
 * receive, behind a heap tuple header as heap_tuple_from_minimal_tuple lays
 * it out.
 */
static void
bg_reader_copy(BgJob *job, BgReader *rd, MinimalTuple mtup)
{
	uint32		total = mtup->t_len + MINIMAL_TUPLE_OFFSET;

	if (total > rd->bufsize)
	{
		rd->bufsize = Max(total, 2 * rd->bufsize);
		if (rd->buf)
			pfree(rd->buf);
		rd->buf = MemoryContextAlloc(job->cxt, rd->bufsize);
	}
	memset(rd->buf, 0, offsetof(HeapTupleHeaderData, t_infomask2));
	memcpy(rd->buf + MINIMAL_TUPLE_OFFSET, mtup, mtup->t_len);
	rd->tuple.t_len = total;
	rd->tuple.t_data = (HeapTupleHeader) rd->buf;
	ItemPointerSetInvalid(&rd->tuple.t_self);
	rd->tuple.t_tableOid = InvalidOid;
}

/*
 * The next row off the tuple queue, or, once the session follows the kept
 * file, the rows the worker has written out, into the spool (*spooled).
 * NULL if none came.  A row off the queue is valid until the next receive.
 */
static MinimalTuple
bg_job_next_rows(BgJob *job, bool *spooled)
{
	*spooled = false;
	for (;;)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res;

		if (job->follows_kept)
		{
			*spooled = bg_job_follow_kept(job, true);
			return NULL;
		}
		res = shm_mq_receive(job->tuple_mqh, &nbytes, &data, true);
		if (res == SHM_MQ_SUCCESS)
		{
			job->rows_received++;
			return (MinimalTuple) data;
		}
		if (res == SHM_MQ_DETACHED)
		{
			bg_job_tuples_detached(job);
			return NULL;
		}
		if (!bg_job_leave_queue(job))
			return NULL;
	}
}

/*
 * Take the next row, waiting for it if need be.  Returns NULL once the job
 * has ended well and every row has been taken, or when rows joined the
 * spool (the caller reads them there); raises the job's error if it
 * failed.
 */
static MinimalTuple
bg_job_receive(BgJob *job)
{
	TimestampTz check_at = 0;
	bool		watching = false;

	for (;;)
	{
		if (!job->tuples_done)
		{
			bool		spooled;
			MinimalTuple tuple = bg_job_next_rows(job, &spooled);

			if (tuple != NULL || spooled)
			{
				if (watching)
					ConditionVariableCancelSleep();
				return tuple;
			}
		}
		bg_job_read_messages(job);
		if (bg_job_ended(job))
		{
			if (watching)
				ConditionVariableCancelSleep();
			bg_job_close_segment(job);
			if (job->state == BG_JOB_FAILED)
				bg_job_raise_error(job);
			return NULL;
		}
		/* what the worker writes out wakes us only once we watch: look again */
		if (!watching && bg_job_watch_kept(job))
		{
			watching = true;
			continue;
		}
		/* rather than wait, write out a block of the worker's kept file */
		if (job->shared != NULL && bg_ring_help(job->shared, job->job_id))
		{
			CHECK_FOR_INTERRUPTS();
			continue;
		}
		bg_job_sleep(job, -1, &check_at);
		if (watching)
			ConditionVariableCancelSleep();
		watching = false;
		bg_job_drain_others(job);
	}
}

/*
 * Store the reader's next row in its slot; false at the end of the result.
 */
bool
bg_reader_next(BgJob *job, int reader)
{
	BgReader   *rd = job->readers[reader];
	MinimalTuple tuple;

	/* the rows a failed job sent before its error are not its result */
	if (job->state == BG_JOB_FAILED)
		bg_job_raise_error(job);
	bg_check_spool(job);

	for (;;)
	{
		int64		nspooled = job->nspooled;

		if (!job->stream && bg_spool_read(job->spool, &rd->pos, &rd->tuple))
			break;

		/* This reader has read the whole spool: the next row is on the queue. */
		tuple = bg_job_receive(job);
		if (tuple != NULL && job->stream)
		{
			job->stream_taken = true;
			bg_reader_copy(job, rd, tuple);
			break;
		}
		/* a row that joins the spool is read from there, as is the end */
		if (tuple != NULL)
			bg_job_spool(job, tuple);
		else if (job->nspooled == nspooled)
		{
			ExecClearTuple(rd->slot);
			return false;
		}
	}
	rd->nread++;
	ExecStoreHeapTuple(&rd->tuple, rd->slot, false);
	return true;
}

/* ----------------------------------------------------------------
 *		Transaction end
 * ----------------------------------------------------------------
 */

/*
 * Scans that an abort cut short never reach EndForeignScan; their executor
 * memory is gone, so close their readers, which forgets their slots.
 */
static void
bg_release_readers(SubTransactionId from_subid)
{
	ListCell   *lc;

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);
		int			i;

		for (i = 0; i < job->nreaders; i++)
		{
			BgReader   *rd = job->readers[i];

			if (rd->in_use && rd->subid >= from_subid)
				bg_reader_close(job, i);
		}
	}
}

/*
 * At commit, carry out the bg_detach calls of the transaction; at abort,
 * forget those of the aborted (sub)transactions.
 */
static void
bg_end_detaches(bool commit, SubTransactionId from_subid)
{
	ListCell   *lc;

	foreach(lc, bg_jobs)
	{
		BgJob	   *job = lfirst(lc);

		if (job->detach_subid == InvalidSubTransactionId ||
			job->detach_subid < from_subid)
			continue;
		if (commit)
			bg_job_release(job);
		else
			job->detach_subid = InvalidSubTransactionId;
	}
}

static void
bg_xact_callback(XactEvent event, void *arg)
{
	if (event == XACT_EVENT_PRE_PREPARE)
	{
		ListCell   *lc;
		bool		detaching = bg_queued_launch_detaching();

		foreach(lc, bg_jobs)
			detaching |= ((BgJob *) lfirst(lc))->detach_subid != InvalidSubTransactionId;
		if (detaching)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("cannot PREPARE a transaction that has detached a background job")));
	}
	if (event == XACT_EVENT_PRE_COMMIT)
	{
		HOLD_INTERRUPTS();
		bg_jobs_release_at_commit();
		RESUME_INTERRUPTS();
	}
	if (event == XACT_EVENT_ABORT)
		bg_jobs_clear_waiting();
	if (event == XACT_EVENT_ABORT || event == XACT_EVENT_COMMIT ||
		event == XACT_EVENT_PREPARE)
	{
		bg_ring_let_go();
		bg_release_readers(InvalidSubTransactionId);
		bg_end_detaches(event == XACT_EVENT_COMMIT, InvalidSubTransactionId);
		bg_queued_launch_end_detaches(event == XACT_EVENT_COMMIT,
									  InvalidSubTransactionId);
		/* (with no reader left to lose a segment it gives up) */
		bg_held_slots_keep(event == XACT_EVENT_ABORT);
		/* (once readers are closed and detaches undone) */
		if (event != XACT_EVENT_PREPARE)
			bg_jobs_rearm_wake();
		bg_jobs_settle();
	}
}

static void
bg_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		bg_jobs_clear_waiting();
		bg_release_readers(mySubid);
		bg_end_detaches(false, mySubid);
		bg_queued_launch_end_detaches(false, mySubid);
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		ListCell   *lc;

		/* a committed subtransaction's detach now belongs to its parent */
		foreach(lc, bg_jobs)
		{
			BgJob	   *job = lfirst(lc);

			if (job->detach_subid == mySubid)
				job->detach_subid = parentSubid;
		}
		bg_queued_launch_subcommit(mySubid, parentSubid);
	}
}
