/*-------------------------------------------------------------------------
 *
 * worker.c
 *		  What runs in a job's background worker: its entry point, its
 *		  signal handler and exit callbacks, its side of the hand-shake with
 *		  the launching session, and the loop that runs the job's statements.
 *
 * The worker attaches to the job's segment, redirects its protocol messages
 * to the message queue, connects as the launching session's user and takes
 * on its settings, role and security context, as ParallelWorkerMain does.
 * It lists the job in the registry, waits for the launcher's "go", then runs
 * the statements the way exec_simple_query does: one implicit transaction,
 * a portal per statement, utility statements at top level so that VACUUM,
 * CREATE INDEX CONCURRENTLY and CALL of a procedure that commits work.  Only
 * the last statement's rows are sent, through the DestReceiver of dest.c.
 *
 * The launching session's side is in launcher.c and job.c.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 * Portions Copyright (c) 1996-2025, PostgreSQL Global Development Group
 *
 * IDENTIFICATION
 *		  bg_fdw/worker.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/parallel.h"
#include "access/xact.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "parser/analyze.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/procsignal.h"
#include "storage/shm_toc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/ps_status.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"

#include "bg_fdw.h"
#include "compat.h"

/* found by the postmaster by name */
PGDLLEXPORT void bg_worker_main(Datum main_arg);
PGDLLEXPORT void bg_queued_main(Datum main_arg);

/* The job's segment, for the worker's exit callback */
static dsm_segment *bg_worker_segment = NULL;

/* The job's shared state, in a job's worker; for bg_progress */
static BgJobShared *bg_worker_shared = NULL;

/* The role the worker connected as, and the jobs it ran (pool.c) */
static Oid	bg_worker_connected_as = InvalidOid;
static bool bg_worker_connected_superuser = false;
static int	bg_worker_jobs_run = 0;

/* What the job's queues need while it runs (pool.c: per job) */
static MemoryContext bg_worker_job_cxt = NULL;

/* The job's table of contents and its tuple queue */
static shm_toc *bg_worker_toc = NULL;
static shm_mq_handle *bg_worker_tuple_mqh = NULL;

/* pg_terminate_backend or shutdown: the job is recorded as failed on exit */
static volatile sig_atomic_t bg_terminate_requested = false;

/* The job's last transaction committed: nothing may record it as failed */
static bool bg_committed = false;

/* The state recorded for a job that failed, to NOTIFY once its launch is
 * decided (a launch that fails leaves no job to tell of), or -1 */
static int	bg_failed_status = -1;

static void bg_worker_signals(void);
static bool bg_worker_role_at_limit(BgJobShared *launched);
static void bg_worker_connect(BgJobShared *shared);
static void bg_worker_serve(BgJobShared *shared);
static BgJobShared *bg_worker_attach(dsm_handle handle, int64 job_id);
static BgJobShared *bg_worker_adopt(dsm_segment *seg, int64 job_id);
static void bg_worker_run(BgJobShared *shared);
pg_noreturn static void bg_worker_cancelled_in_queue(BgJobShared *shared);
static void bg_worker_leave_queue(BgJobShared *shared);
static void bg_worker_check_kept_caps(BgJobShared *shared);
static void bg_worker_end_job(void);
static void bg_worker_sigterm(SIGNAL_ARGS);
static void bg_worker_exit(dsm_segment *seg, Datum arg);
static void bg_worker_wake_launcher(BgJobShared *shared);
static void bg_worker_before_exit(int code, Datum arg);
static bool bg_launch_failed(BgJobShared *shared);
static bool bg_launch_undecided(BgJobShared *shared);
static void bg_worker_await_launch(BgJobShared *shared);
static void bg_worker_detach_at_exit(int code, Datum arg);
pg_noreturn static void bg_worker_failed(BgJobShared *shared);
static void bg_wait_for_launcher(BgJobShared *shared, bool launched);
static void bg_check_launcher_deadlock(BgJobShared *shared);
static void bg_enable_statement_timeout(void);
static void bg_disable_statement_timeout(void);
static void bg_exec_sql(const char *sql, shm_mq_handle *tuple_mqh,
						BgJobShared *shared, SharedFileSet *fileset);
static void bg_worker_keep_durable(BgJobShared *shared);
static void bg_worker_committed(BgJobShared *shared, const char *tag,
								bool recorded);
static DestReceiver *bg_start_result(Portal portal, shm_mq_handle *mqh,
									 BgJobShared *shared, SharedFileSet *fileset);
static void bg_completion_tag(char *buf, const QueryCompletion *qc);
static void bg_send_message(char msgtype, const char *str, TupleDesc desc);

PG_FUNCTION_INFO_V1(bg_launched_by);

/*
 * In a job, the session_user of the session that launched it (for a job a
 * job launched, of the first session); NULL elsewhere.
 */
const char *
bg_worker_launched_by(void)
{
	return bg_worker_shared ? bg_worker_shared->launched_by : NULL;
}

/*
 * bg_launched_by() RETURNS name
 *
 * bg_worker_launched_by for SQL: the job connects as the role it runs as,
 * so its session_user is that role; audit code asks this instead.  Nothing
 * in a session can make it say anything else.
 */
Datum
bg_launched_by(PG_FUNCTION_ARGS)
{
	const char *who = bg_worker_launched_by();
	Name		name;

	if (who == NULL)
		PG_RETURN_NULL();
	name = (Name) palloc0(NAMEDATALEN);
	namestrcpy(name, who);
	PG_RETURN_NAME(name);
}

/*
 * Entry point of a job's background worker.  An error while the job runs is
 * caught only to record the job's failure (bg_worker_failed) and is then
 * thrown again: with no outer handler it becomes FATAL, as in a parallel
 * worker, reaches the launcher on the message queue, and the process exits.
 * Errors before the job runs are not caught at all.
 */
void
bg_worker_main(Datum main_arg)
{
	BgJobShared *shared;

	bg_worker_signals();
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "bg_fdw worker");
	shared = bg_worker_attach(DatumGetUInt32(main_arg), 0);
	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not map dynamic shared memory segment of a background job")));
	bg_worker_connect(shared);
	bg_worker_serve(shared);
}

/*
 * Entry point of the worker the supervisor starts for a queued job
 * (queue.c): the job's segment is laid out here, from the queue's copy,
 * once connected; from then on the job runs as any other.
 */
void
bg_queued_main(Datum main_arg)
{
	BgJobShared launched;

	bg_worker_signals();
	if (!bg_queue_claim(DatumGetInt32(main_arg), &launched))
		proc_exit(0);
	CurrentResourceOwner = ResourceOwnerCreate(NULL, "bg_fdw worker");
	bg_worker_connect(&launched);
	if (bg_worker_role_at_limit(&launched))
		proc_exit(0);
	bg_worker_serve(bg_worker_adopt(bg_queue_segment(), 0));
}

/*
 * Does the role of the queued job this worker took already run
 * bg_fdw.max_jobs_per_role jobs in the database?  Then the job waits
 * again.  Otherwise the role's lock, which launches take too, is held
 * until the job is listed (bg_worker_run).
 */
static bool
bg_worker_role_at_limit(BgJobShared *launched)
{
	uint64		seen = bg_queue_ended_count();
	bool		over;

	if (!OidIsValid(launched->registry_relid))
		return false;
	/* the limit as the supervisor knows it, once it has seen a reload */
	if (ConfigReloadPending)
	{
		ConfigReloadPending = false;
		ProcessConfigFile(PGC_SIGHUP);
	}
	StartTransactionCommand();
	over = bg_registry_lock_role(launched->current_user_id, true);
	CommitTransactionCommand();
	if (!over)
		return false;
	bg_registry_unlock_role();
	bg_queue_defer(seen);
	return true;
}

static void
bg_worker_signals(void)
{
	pqsignal(SIGTERM, bg_worker_sigterm);
	/* read while idle (pool.c) */
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
}

/*
 * Connect as the job's role where it may (bg_job_role_may_connect), else
 * as the session's authenticated user; the job then takes on the
 * launcher's settings, role and security context (bg_worker_run).
 */
static void
bg_worker_connect(BgJobShared *shared)
{
	bg_worker_connected_as = bg_job_connect_role(shared);
	BackgroundWorkerInitializeConnectionByOid(shared->database_id,
											  bg_worker_connected_as,
											  shared->connect_as_job_role ?
											  BG_CONNECT_AS_ROLE_FLAGS : 0);
	SetClientEncoding(GetDatabaseEncoding());
	/*
	 * These run before InitPostgres's own exit callbacks abort and close
	 * things, the detach last: it must happen even if the other is cut short
	 * by an error (which is FATAL during exit).
	 */
	/* (run in the reverse order) */
	before_shmem_exit(bg_messages_at_exit, (Datum) 0);
	before_shmem_exit(bg_worker_detach_at_exit, (Datum) 0);
	before_shmem_exit(bg_worker_before_exit, (Datum) 0);
}

/*
 * Run the job, then, while the pool offers this worker another job of the
 * same database and role (pool.c), that one.
 */
static void
bg_worker_serve(BgJobShared *shared)
{
	int64		job_id = 0;

	for (;;)
	{
		dsm_handle	segment;

		bg_worker_run(shared);
		bg_worker_jobs_run++;
		if (!bg_pool_offered() || bg_terminate_requested)
			break;
		bg_worker_end_job();
		segment = bg_pool_wait(&job_id);
		if (segment == DSM_HANDLE_INVALID)
			break;
		shared = bg_worker_attach(segment, job_id);
		if (shared == NULL)
		{
			/* the launcher gave up meanwhile */
			bg_pool_not_taken();
			break;
		}
		bg_pool_taken(shared);
	}
}

/*
 * Attach to the job's segment and its queues, and tell the launcher we did
 * (worker_proc).  NULL if the segment is gone or, handed over by the pool,
 * is not job "job_id"'s (its handle was reused).
 */
static BgJobShared *
bg_worker_attach(dsm_handle handle, int64 job_id)
{
	dsm_segment *seg = dsm_attach(handle);

	if (seg == NULL)
		return NULL;
	return bg_worker_adopt(seg, job_id);
}

/* bg_worker_attach, of a segment mapped already */
static BgJobShared *
bg_worker_adopt(dsm_segment *seg, int64 job_id)
{
	shm_toc    *toc;
	BgJobShared *shared;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	SharedFileSet *fileset;
	MemoryContext oldcxt;

	/* the queue handles go with the job: a started worker runs many */
	bg_worker_job_cxt = AllocSetContextCreate(TopMemoryContext, "bg_fdw job",
											  ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(bg_worker_job_cxt);
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	shared = toc ? shm_toc_lookup(toc, BG_KEY_SHARED, true) : NULL;
	if (shared == NULL || (job_id != 0 && shared->job_id != job_id))
	{
		MemoryContextSwitchTo(oldcxt);
		MemoryContextDelete(bg_worker_job_cxt);
		bg_worker_job_cxt = NULL;
		dsm_detach(seg);
		if (job_id != 0)
			return NULL;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("invalid magic number in dynamic shared memory segment of a background job")));
	}
	on_dsm_detach(seg, bg_worker_exit, PointerGetDatum(shared));
	bg_worker_segment = seg;
	bg_worker_shared = shared;
	bg_worker_toc = toc;

	fileset = shm_toc_lookup(toc, BG_KEY_FILESET, false);
	SharedFileSetAttach(fileset, seg);

	/* From here on, our errors and notices reach the launcher. */
	mq = shm_toc_lookup(toc, BG_KEY_MESSAGE_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);
	bg_spill_redirect_messages(seg, mqh, shared, fileset);
	mq = shm_toc_lookup(toc, BG_KEY_TUPLE_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	bg_worker_tuple_mqh = shm_mq_attach(mq, seg, NULL);

	MemoryContextSwitchTo(oldcxt);

	SpinLockAcquire(&shared->mutex);
	shared->worker_proc = MyProc;
	shared->worker_pid = MyProcPid;
	if (shared->name == 0)
		shared->name = MyProcPid;
	SpinLockRelease(&shared->mutex);
	return shared;
}

/*
 * Run the job: take on the launcher's libraries, settings, role and
 * security context, in the order ParallelWorkerMain uses, then its
 * statements.  An error while the job runs is caught only to record the
 * job's failure (bg_worker_failed) and is then thrown again: with no outer
 * handler it becomes FATAL, as in a parallel worker, reaches the launcher on
 * the message queue, and the process exits.  Errors before the job runs
 * are not caught at all.
 */
static void
bg_worker_run(BgJobShared *shared)
{
	shm_toc    *toc = bg_worker_toc;
	char	   *sql;
	char		appname[NAMEDATALEN];

	/*
	 * Some check hooks refuse values a leader may legitimately have, such as
	 * transaction_read_only = off on a hot standby; like a parallel worker,
	 * we only replay settings the launcher already has.
	 */
	StartTransactionCommand();
	/*
	 * Load what the session had loaded (its session_preload_libraries and
	 * local_preload_libraries, and what it LOADed), before the settings
	 * that may belong to them, as ParallelWorkerMain does: a policy hook
	 * such as passwordcheck then holds for the job as for its session.
	 */
	RestoreLibraryState(shm_toc_lookup(toc, BG_KEY_LIBRARIES, false));
	/* as connecting found it, which decides SET SESSION AUTHORIZATION */
	if (bg_worker_jobs_run == 0)
		bg_worker_connected_superuser = superuser_arg(bg_worker_connected_as);
	InitializingParallelWorker = true;
	RestoreGUCState(shm_toc_lookup(toc, BG_KEY_GUC, false));
	InitializingParallelWorker = false;
	/*
	 * The job keeps the session's client_encoding, which server-side COPY
	 * and convert functions follow as in the session; what it sends its
	 * session (notices, errors) is converted back to the database encoding
	 * on the way (bg_messages_put), and column names go raw.
	 */
	CommitTransactionCommand();
	/* with the launcher's client_min_messages and bg_fdw.max_messages_size */
	if (shared->keep)
		bg_messages_keep_start(shared);
	SetCurrentRoleId(shared->outer_user_id, shared->role_is_superuser);
	SetUserIdAndSecContext(shared->current_user_id, shared->sec_context);

	if (shared->launcher_pid != 0)
		snprintf(appname, sizeof(appname), "bg_fdw job %d (launcher %d)",
				 shared->name, (int) shared->launcher_pid);
	else
		snprintf(appname, sizeof(appname), "bg_fdw job %d (queued)",
				 shared->name);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);

	sql = pstrdup(shm_toc_lookup(toc, BG_KEY_SQL, false));

	PG_TRY();
	{
		bg_registry_register(shared, sql, dsm_segment_handle(bg_worker_segment));
		/* a queued job is found in the registry from now on */
		bg_registry_unlock_role();
		bg_worker_leave_queue(shared);
		bg_wait_for_launcher(shared, false);
		/* the job starts now, not when the worker connected */
		SetCurrentStatementStartTimestamp();
		pgstat_report_activity(STATE_RUNNING, sql);
		bg_exec_sql(sql, bg_worker_tuple_mqh, shared,
					shm_toc_lookup(toc, BG_KEY_FILESET, false));
	}
	PG_CATCH();
	{
		bg_worker_failed(shared);
	}
	PG_END_TRY();
	pfree(sql);
	pgstat_report_activity(STATE_IDLE, NULL);
	bg_registry_tidy(shared);
}

/*
 * A job that waited in the queue leaves it, and starts unless it was
 * cancelled there or its kept result would now be past the caps.
 */
static void
bg_worker_leave_queue(BgJobShared *shared)
{
	bool		queued = bg_queue_holds(shared);

	if (bg_queue_started(shared))
		bg_worker_cancelled_in_queue(shared);
	if (queued && shared->keep)
		bg_worker_check_kept_caps(shared);
}

/*
 * A queued job passed the caps on kept results when it was launched, which
 * may be long ago; the role's other jobs may have kept since what takes it
 * past them.  Then it fails as its launch would have now.
 */
static void
bg_worker_check_kept_caps(BgJobShared *shared)
{
	StartTransactionCommand();
	bg_registry_check_kept(shared->current_user_id);
	bg_keep_check_cluster();
	CommitTransactionCommand();
}

/* The job was cancelled while it waited in the queue: it runs nothing. */
static void
bg_worker_cancelled_in_queue(BgJobShared *shared)
{
	SpinLockAcquire(&shared->mutex);
	shared->cancel_requested = true;
	SpinLockRelease(&shared->mutex);
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("canceling statement due to user request"),
			 errdetail("Background job %d was cancelled before it started.",
					   shared->name)));
}

/*
 * The job ended well and the worker stays: do for it what exiting does
 * (bg_worker_before_exit and the other exit callbacks), then give the
 * session the state of a new one for the next job.
 */
static void
bg_worker_end_job(void)
{
	bg_worker_before_exit(0, (Datum) 0);
	bg_worker_detach_at_exit(0, (Datum) 0);
	bg_messages_at_exit(0, (Datum) 0);
	bg_messages_job_reset();
	bg_spill_job_reset();
	bg_registry_job_reset();
	bg_worker_shared = NULL;
	bg_worker_toc = NULL;
	bg_worker_tuple_mqh = NULL;
	MemoryContextDelete(bg_worker_job_cxt);
	bg_worker_job_cxt = NULL;
	bg_committed = false;
	bg_failed_status = -1;
	bg_pool_reset_session();
}

static void
bg_worker_sigterm(SIGNAL_ARGS)
{
	bg_terminate_requested = true;
	die(postgres_signal_arg);
}

/*
 * before_shmem_exit callback of the worker.  A worker terminated (FATAL)
 * never reaches bg_worker_failed: record its end here, while the process
 * can still run a transaction; and hand the messages the queue has not
 * taken to the reader.
 */
static void
bg_worker_before_exit(int code, Datum arg)
{
	BgJobShared *shared = bg_worker_job();
	bool		ended;

	/* (idle between jobs: pool.c's own callback leaves the pool) */
	if (shared == NULL)
		return;

	/* whatever was under way holds no lock while we wait below */
	AbortOutOfAnyTransaction();
	/* (a kept file not yet recorded, even of a committed job, is nobody's) */
	bg_keep_discard();
	SpinLockAcquire(&shared->mutex);
	ended = shared->ended;
	shared->ended = true;
	SpinLockRelease(&shared->mutex);
	if (bg_terminate_requested && !ended)
	{
		ErrorData	edata;

		memset(&edata, 0, sizeof(edata));
		edata.sqlerrcode = ERRCODE_ADMIN_SHUTDOWN;
		edata.message = psprintf("terminating background worker \"%s\" due to administrator command",
								 BG_WORKER_TYPE);
		AbortOutOfAnyTransaction();
		bg_failed_status = bg_registry_fail(shared, &edata,
											bg_launch_failed(shared));
	}
	if (bg_launch_undecided(shared))
		bg_worker_await_launch(shared);
	/* the launch failed, before or after our failure was recorded */
	if (bg_launch_failed(shared))
		bg_registry_fail(shared, NULL, true);
	else if (bg_failed_status >= 0)
		bg_control_notify(shared, (BgJobStatus) bg_failed_status);
	bg_spill_messages_exit();
}

/*
 * In a PG_CATCH of the worker's bookkeeping after the job's outcome (which
 * only logs what fails): the error, copied out of the error state, with
 * whatever transaction it left aborted.
 */
ErrorData *
bg_worker_take_error(void)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	return edata;
}

/* The name of the job this process runs, or 0 in any other process */
int
bg_worker_job_name(void)
{
	return bg_worker_job() ? bg_worker_shared->name : 0;
}

/* The PID of the job's worker, once it has attached, else 0 */
pid_t
bg_shared_worker_pid(BgJobShared *shared)
{
	pid_t		pid;

	SpinLockAcquire(&shared->mutex);
	pid = shared->worker_pid;
	SpinLockRelease(&shared->mutex);
	return pid;
}

/* The shared state of the job this process runs, or NULL in any other */
BgJobShared *
bg_worker_job(void)
{
	return bg_worker_segment != NULL ? bg_worker_shared : NULL;
}

/*
 * Leave the segment before statistics shut down: if the launcher has gone,
 * we are the last, and deleting the job's files reports to them.
 */
static void
bg_worker_detach_at_exit(int code, Datum arg)
{
	if (bg_worker_segment != NULL)
		dsm_detach(bg_worker_segment);
	bg_worker_segment = NULL;
}

/* The launcher gave up before bg_launch returned: nobody got the job's PID */
static bool
bg_launch_failed(BgJobShared *shared)
{
	bool		failed;

	SpinLockAcquire(&shared->mutex);
	failed = shared->launcher_gone && !shared->launched;
	SpinLockRelease(&shared->mutex);
	return failed;
}

static bool
bg_launch_undecided(BgJobShared *shared)
{
	bool		undecided;

	SpinLockAcquire(&shared->mutex);
	undecided = !shared->launcher_gone && !shared->launched;
	SpinLockRelease(&shared->mutex);
	return undecided;
}

/*
 * A job that failed while its bg_launch was still running was recorded as
 * failed; if the launch turns out to fail (the launcher gets our error and
 * gives up), the job was never anybody's, and its row goes.  Wait for the
 * decision, keeping the launcher supplied with our messages meanwhile: it
 * may be waiting for them.
 */
static void
bg_worker_await_launch(BgJobShared *shared)
{
	while (bg_launch_undecided(shared))
	{
		bg_spill_push_messages();
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, bg_wait_event_launch());
		ResetLatch(MyLatch);
	}
}

/* on_dsm_detach callback of the worker: whoever looks can tell it is gone */
static void
bg_worker_exit(dsm_segment *seg, Datum arg)
{
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);

	PGPROC	   *waiters[BG_MAX_WAITERS];
	int			i;

	bg_job_set_flag(shared, &shared->worker_exited, BG_WAKE_NONE);
	/* its slot may go to a queued job */
	bg_queue_job_ended(shared->database_id, shared->current_user_id);
	/* readers following the kept file now find the outcome in the registry */
	ConditionVariableBroadcast(&shared->kept_cv);
	/* and sessions in bg_wait_any learn that the job has ended */
	SpinLockAcquire(&shared->mutex);
	memcpy(waiters, shared->waiters, sizeof(waiters));
	SpinLockRelease(&shared->mutex);
	for (i = 0; i < BG_MAX_WAITERS; i++)
	{
		if (waiters[i] != NULL)
			SetLatch(&waiters[i]->procLatch);
	}
	bg_worker_wake_launcher(shared);
}

/*
 * The launching session may give back its mapping of the segment of a job
 * that kept its result, now that the job has ended; but an idle session
 * runs no code of ours until its client speaks.  A catchup interrupt makes
 * an idle backend start and commit an empty transaction (sinval.c), and
 * bg_fdw's commit callback in it lets the segment go (job.c); a busy
 * backend only takes it up once idle, and lets the segment go at its next
 * commit anyway.  The slot is checked against the PID, so a session that
 * has just ended is not mistaken for another.
 */
static void
bg_worker_wake_launcher(BgJobShared *shared)
{
	PGPROC	   *proc;
	pid_t		pid;

	if (!shared->keep || shared->stream)
		return;
	SpinLockAcquire(&shared->mutex);
	proc = shared->launcher_gone ? NULL : shared->launcher_proc;
	pid = shared->launcher_pid;
	SpinLockRelease(&shared->mutex);
	if (proc != NULL)
		(void) SendProcSignal(pid, PROCSIG_CATCHUP_INTERRUPT,
							  bg_proc_signal_id(proc));
}

/*
 * The job failed: roll it back, record how, and end the process with the
 * error, which reaches the launcher as the job's outcome.  A job whose
 * launch failed before it ran ends quietly: nobody listens any more.
 */
static void
bg_worker_failed(BgJobShared *shared)
{
	ErrorData  *edata;
	bool		quiet;

	MemoryContextSwitchTo(TopMemoryContext);
	edata = CopyErrorData();
	FlushErrorState();
	disable_all_timeouts(false);
	QueryCancelPending = false;
	AbortOutOfAnyTransaction();

	SpinLockAcquire(&shared->mutex);
	quiet = shared->launcher_gone && !shared->go;
	shared->ended = true;
	SpinLockRelease(&shared->mutex);

	/*
	 * A launch that failed returned no PID: it leaves no job to list.  One
	 * still under way is decided on exit, once the launcher has our error.
	 * A job that failed after its commit (sending its outcome ran out of
	 * memory) is recorded as finished, which it is.
	 */
	if (!bg_committed)
	{
		bg_keep_discard();
		bg_failed_status = bg_registry_fail(shared, edata,
											bg_launch_failed(shared));
	}
	if (quiet)
		proc_exit(0);
	ReThrowError(edata);
}

/*
 * Wait for the launcher: until it says "go", or with "launched", until its
 * bg_launch has succeeded.  A launcher that gave up first ends the job:
 * quietly before it ran anything, with an error (which rolls the job back)
 * after.
 */
static void
bg_wait_for_launcher(BgJobShared *shared, bool launched)
{
	for (;;)
	{
		bool		ready;
		bool		failed;
		int			rc;

		SpinLockAcquire(&shared->mutex);
		ready = launched ? shared->launched : shared->go;
		failed = shared->launcher_gone && !shared->launched;
		SpinLockRelease(&shared->mutex);

		/* gone before the launch succeeded: even a "go" given is void */
		if (failed)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling background job because its launch failed")));
		if (ready)
			return;

		/* the launcher may be waiting for a message the queue could not take */
		bg_spill_push_messages();
		/* published through our own check too (see bg_job_sleep) */
		shared->worker_waiting = true;
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   DeadlockTimeout, bg_wait_event_launch());
		if ((rc & WL_TIMEOUT) && launched)
			bg_check_launcher_deadlock(shared);
		shared->worker_waiting = false;
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * The launcher, creating the result table, may wait for a lock this job
 * holds (the job's statements changed a type the table uses) while the job
 * waits for the launch to finish: a deadlock the lock manager cannot see.
 */
static void
bg_check_launcher_deadlock(BgJobShared *shared)
{
	static BgWaitCycle cycle;

	bg_check_session_deadlock(shared->launcher_pid, &cycle,
							  _("The session launching this background job waits for a lock the job holds, and the job waits for its launch to finish."),
							  _("Launch the job outside the transaction that holds the lock."));
}

/*
 * Arm statement_timeout for one statement: the worker inherits the setting
 * but, unlike a client backend, nothing else arms it.
 */
static void
bg_enable_statement_timeout(void)
{
	if (StatementTimeout > 0)
		enable_timeout_after(STATEMENT_TIMEOUT, StatementTimeout);
}

static void
bg_disable_statement_timeout(void)
{
	if (get_timeout_active(STATEMENT_TIMEOUT))
		disable_timeout(STATEMENT_TIMEOUT, false);
}

/*
 * Run the statements as exec_simple_query would, sending the last one's rows
 * to the tuple queue, then report the outcome.
 */
static void
bg_exec_sql(const char *sql, shm_mq_handle *tuple_mqh, BgJobShared *shared,
			SharedFileSet *fileset)
{
	MemoryContext job_cxt;
	MemoryContext stmt_cxt;
	List	   *parsetree_list;
	ListCell   *lc;
	bool		use_implicit_block;
	bool		xact_started = false;
	bool		recorded = false;
	char		tag[COMPLETION_TAG_BUFSIZE];

	/* gone with the job: a started worker runs one job after another */
	job_cxt = AllocSetContextCreate(TopMemoryContext, "bg_fdw statements",
									ALLOCSET_DEFAULT_SIZES);
	stmt_cxt = AllocSetContextCreate(job_cxt, "bg_fdw statement",
									 ALLOCSET_DEFAULT_SIZES);
	debug_query_string = sql;

	StartTransactionCommand();
	xact_started = true;
	parsetree_list = pg_parse_query(sql);
	MemoryContextSwitchTo(job_cxt);
	parsetree_list = copyObject(parsetree_list);
	use_implicit_block = (list_length(parsetree_list) > 1);
	bg_check_statements(parsetree_list);

	foreach(lc, parsetree_list)
	{
		RawStmt    *parsetree = lfirst_node(RawStmt, lc);
		bool		last = (lnext(parsetree_list, lc) == NULL);
		bool		snapshot_set = false;
		CommandTag	commandTag;
		QueryCompletion qc;
		List	   *querytree_list;
		List	   *plantree_list;
		Portal		portal;
		DestReceiver *receiver;
		MemoryContext oldcxt;

		commandTag = CreateCommandTag(parsetree->stmt);
		set_ps_display(GetCommandTagName(commandTag));

		/*
		 * statement_timestamp() is this statement's start; now(), the start
		 * of the transaction, that of the statement that starts one.
		 */
		SetCurrentStatementStartTimestamp();
		if (!xact_started)
		{
			StartTransactionCommand();
			xact_started = true;
		}
		bg_enable_statement_timeout();
		if (use_implicit_block)
			BeginImplicitTransactionBlock();
		CHECK_FOR_INTERRUPTS();

		if (analyze_requires_snapshot(parsetree))
		{
			PushActiveSnapshot(GetTransactionSnapshot());
			snapshot_set = true;
		}

		oldcxt = MemoryContextSwitchTo(stmt_cxt);
		querytree_list = pg_analyze_and_rewrite_fixedparams(parsetree, sql,
															NULL, 0, NULL);
		plantree_list = pg_plan_queries(querytree_list, sql,
										CURSOR_OPT_PARALLEL_OK, NULL);
		if (snapshot_set)
			PopActiveSnapshot();
		CHECK_FOR_INTERRUPTS();

		portal = CreatePortal("", true, true);
		portal->visible = false;
		PortalDefineQuery(portal, NULL, sql, commandTag, plantree_list, NULL);
		PortalStart(portal, NULL, 0, InvalidSnapshot);

		if (last)
			receiver = bg_start_result(portal, tuple_mqh, shared, fileset);
		else
			receiver = CreateDestReceiver(DestNone);
		MemoryContextSwitchTo(oldcxt);

		bg_portal_run(portal, receiver, &qc);
		PortalDrop(portal, false);

		if (last)
		{
			bg_completion_tag(tag, &qc);
			bg_dest_send_command(receiver, tag);
			bg_dest_finish_keep(receiver);
			receiver->rDestroy(receiver);
			/* every row is sent or kept: a reader may now see the end */
			bg_spill_finish_rows(shared);
			shm_mq_detach(tuple_mqh);
			if (use_implicit_block)
				EndImplicitTransactionBlock();
			bg_disable_statement_timeout();
			bg_wait_for_launcher(shared, true);
			recorded = bg_registry_finish(shared, tag, true);
			CommitTransactionCommand();
			xact_started = false;
			if (IsTransactionBlock())
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
						 errmsg("background job ended inside a transaction block"),
						 errdetail("Its work since BEGIN was rolled back."),
						 errhint("End the job's SQL with COMMIT.")));
			bg_worker_committed(shared, tag, recorded);
			bg_worker_keep_durable(shared);
			bg_control_notify(shared, BG_STATUS_FINISHED);
		}
		else
		{
			receiver->rDestroy(receiver);
			if (IsA(parsetree->stmt, TransactionStmt) ||
				(MyXactFlags & XACT_FLAGS_NEEDIMMEDIATECOMMIT))
			{
				bg_disable_statement_timeout();
				CommitTransactionCommand();
				xact_started = false;
			}
			else
			{
				CommandCounterIncrement();
				bg_disable_statement_timeout();
			}
		}
		MemoryContextReset(stmt_cxt);
	}

	debug_query_string = NULL;
	MemoryContextSwitchTo(TopMemoryContext);
	MemoryContextDelete(job_cxt);
}

/*
 * The job has committed: mark it ended, record it as finished if its last
 * transaction could not, and send the launcher the outcome.  A cancel or
 * terminate that arrives meanwhile must not make it look failed, so
 * interrupts are held until the outcome is out; from then on, being
 * terminated changes nothing.
 */
static void
bg_worker_committed(BgJobShared *shared, const char *tag, bool recorded)
{
	HOLD_INTERRUPTS();
	bg_committed = true;
	bg_job_set_flag(shared, &shared->ended, BG_WAKE_NONE);
	if (!recorded)
		(void) bg_registry_finish(shared, tag, false);
	/* before the launcher can launch again, knowing the outcome */
	bg_pool_offer(bg_worker_connected_as, bg_worker_connected_superuser,
				  shared->current_user_id,
				  pg_atomic_read_u64(&shared->kept_size) == 0,
				  bg_worker_jobs_run + 1);
	bg_send_message(BG_MSG_COMPLETE, tag, NULL);
	RESUME_INTERRUPTS();
}

/*
 * The job has committed and its reader has the outcome: make the kept file
 * durable, then record it as kept.  This comes after the commit so that no
 * reader waits for the fsync; until the record, readers of other sessions
 * follow the job as if it still ran, and a crash leaves the job finished
 * with nothing kept and a file the sweep removes.  A failure here changes
 * nothing of the job but that: its file goes.
 */
static void
bg_worker_keep_durable(BgJobShared *shared)
{
	PG_TRY();
	{
		/* (a completion tag alone was recorded with the outcome) */
		if (!bg_keep_sync() || bg_registry_record_kept(shared))
		{
			bg_job_set_flag(shared, &shared->kept_recorded, BG_WAKE_NONE);
			/* a bg_forget from another session may wait for it */
			ConditionVariableBroadcast(&shared->kept_cv);
		}
		else
			bg_keep_discard();	/* not recorded: nobody's */
		bg_keep_release();
	}
	PG_CATCH();
	{
		ErrorData  *edata = bg_worker_take_error();

		bg_keep_discard();
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("background job %d did not keep its result: %s",
						shared->name, edata->message)));
	}
	PG_END_TRY();
}

/*
 * Prepare to send the last statement's result: work out the columns the
 * reader sees, report them, and make the receiver.  They may not be those
 * bg_launch described (earlier statements altered a table, or it could
 * describe none): the job goes on, and its reader takes the ones reported.
 */
static DestReceiver *
bg_start_result(Portal portal, shm_mq_handle *mqh, BgJobShared *shared,
				SharedFileSet *fileset)
{
	TupleDesc	actual = portal->tupDesc;
	TupleDesc	desc = bg_result_desc(actual);

	/*
	 * The session reads the rows by these columns.  Out now if the message
	 * queue has room, but never waiting for it: the job does not wait for
	 * its reader, nor for the reader's client, to which the reader relays
	 * the job's notices.  What stays behind goes with the first row, or, in
	 * a stream job, while it waits for room for one.
	 */
	bg_send_message(BG_MSG_DESCRIPTOR, NULL, desc);
	bg_spill_push_messages();
	return bg_create_dest_receiver(mqh, shared, fileset, actual, desc);
}

/*
 * The completion tag psql would print, as EndCommand builds it.
 */
static void
bg_completion_tag(char *buf, const QueryCompletion *qc)
{
	const char *name = GetCommandTagName(qc->commandTag);

	if (!command_tag_display_rowcount(qc->commandTag))
		strlcpy(buf, name, COMPLETION_TAG_BUFSIZE);
	else if (qc->commandTag == CMDTAG_INSERT)
		snprintf(buf, COMPLETION_TAG_BUFSIZE, "%s 0 " UINT64_FORMAT,
				 name, qc->nprocessed);
	else
		snprintf(buf, COMPLETION_TAG_BUFSIZE, "%s " UINT64_FORMAT,
				 name, qc->nprocessed);
}

/*
 * Send a message of our own on the message queue: the result descriptor or
 * the completion tag.
 */
static void
bg_send_message(char msgtype, const char *str, TupleDesc desc)
{
	StringInfoData buf;

	pq_beginmessage(&buf, msgtype);
	if (desc)
		bg_desc_serialize(&buf, desc);
	else
		appendBinaryStringInfo(&buf, str ? str : "", str ? strlen(str) + 1 : 1);
	pq_endmessage(&buf);
}
