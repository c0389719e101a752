/*-------------------------------------------------------------------------
 *
 * supervisor.c
 *		  The supervisor: one background worker per cluster, connected to no
 *		  database, that owns what happens between jobs.
 *
 * With shared_preload_libraries = 'bg_fdw' the supervisor is registered at
 * server start, its state lives in the main shared memory, and the
 * postmaster restarts it if it dies.  On PostgreSQL 17 and later without
 * preloading, the first call of bg_fdw after a server start starts it as a
 * dynamic worker, and its state lives in a segment of the DSM registry
 * (GetNamedDSMSegment); a second starter finds the first through that state.
 * Started so, it leaves once it has nothing to do, so as not to hold a
 * worker slot jobs could use: today, once its sweep is done.  On 15 and 16
 * without preloading there is none, and what it does happens lazily (see
 * registry.c, bg_registry_tidy).
 *
 * Work that needs a database runs in short-lived workers it starts for that
 * database, as the autovacuum launcher hands work to its workers: the sweep
 * each database gets once after the supervisor starts (after a server start
 * or a crash restart), in which jobs left "running" by a worker that is gone
 * are recorded as "lost", with the time, so that they expire, and ended
 * jobs past bg_fdw.job_retention are deleted with their kept results; and,
 * where the supervisor stays (preloaded), the same sweep again every
 * bg_fdw.job_retention (between 10 seconds and an hour apart), so that
 * results expire in a database where no job ends.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/supervisor.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "access/stratnum.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(bg_supervisor);

/* found by the postmaster by name */
PGDLLEXPORT void bg_supervisor_main(Datum main_arg);
PGDLLEXPORT void bg_sweep_main(Datum main_arg);

/*
 * A start on demand that has not shown up after this long is taken to have
 * failed (the postmaster could not fork it), and the next call tries again.
 */
#define BG_SUPERVISOR_START_PATIENCE_MS	10000

/* The longest the supervisor waits before it tries a queued job again */
#define BG_SUPERVISOR_RETRY_MAX_MS	1000

/* Expiry rounds are bg_fdw.job_retention apart, within these bounds */
#define BG_EXPIRY_MIN_MS	(10 * 1000L)
#define BG_EXPIRY_MAX_MS	(3600 * 1000L)

/*
 * The supervisor's expiry round: the databases it has still to sweep, the
 * sweep running now, and when the next round is due.  Its own memory.
 */
typedef struct BgExpiryRound
{
	List	   *databases;
	BackgroundWorkerHandle *sweep;
	TimestampTz next;
} BgExpiryRound;

static BgExpiryRound bg_expiry;

/* Did the postmaster ask the supervisor to stop (a shutdown)? */
static volatile sig_atomic_t bg_supervisor_shutdown = false;

/*
 * The supervisor's shared state.  Its fields are written under the mutex,
 * by the processes each comment names.
 */
typedef struct BgSupervisorShared
{
	slock_t		mutex;
	pid_t		pid;			/* the running supervisor, or 0: it sets and
								 * clears it */
	PGPROC	   *proc;			/* set with pid: bg_supervisor_wake */
	TimestampTz started_at;		/* when it started; set with pid */
	TimestampTz start_requested_at; /* a start on demand is under way since:
									 * the starter sets it, the supervisor
									 * clears it */
	int			starts;			/* supervisors started since the server
								 * started: each one, as it claims this */
	int			databases_swept;	/* databases swept since it started: the
									 * supervisor */
	bool		sweep_done;		/* every database swept once since the server
								 * started: the supervisor */
	TimestampTz last_sweep;		/* when a sweep last ended: the supervisor */
} BgSupervisorShared;

/* This process's pointer to the shared state, once found */
static BgSupervisorShared *bg_sup = NULL;

/* Was the library loaded by shared_preload_libraries (in the postmaster)? */
static bool bg_sup_preloaded = false;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

static uint32 bg_wait_event_supervisor_id = 0;

static void bg_supervisor_shmem_request(void);
static void bg_supervisor_shmem_startup(void);
static void bg_supervisor_init_state(void *ptr);
static Size bg_supervisor_size(void);
static BgSupervisorShared *bg_supervisor_state(void);
static void bg_supervisor_fill_worker(BackgroundWorker *worker,
									  const char *function, const char *type,
									  Datum arg);
static bool bg_supervisor_claim(BgSupervisorShared *sup);
static bool bg_supervisor_stays(void);
static void bg_supervisor_release(int code, Datum arg);
static void bg_supervisor_sweep(BgSupervisorShared *sup);
static List *bg_supervisor_databases(bool all);
static bool bg_supervisor_sweep_database(Oid dboid);
static BackgroundWorkerHandle *bg_supervisor_start_sweep(Oid dboid);
static long bg_supervisor_expire(BgSupervisorShared *sup);
static void bg_supervisor_schedule_expiry(void);
static void bg_supervisor_await_workers(void);
static void bg_supervisor_catch_sigterm(void);
static bool bg_supervisor_database_exists(Oid dboid);
static uint32 bg_wait_event_supervisor(void);

/*
 * Called from _PG_init.  When the library is being preloaded, reserve the
 * shared state and register the supervisor with the postmaster.
 */
void
bg_supervisor_init(void)
{
	BackgroundWorker worker;

	if (!process_shared_preload_libraries_in_progress)
		return;
	bg_sup_preloaded = true;
	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = bg_supervisor_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = bg_supervisor_shmem_startup;

	bg_supervisor_fill_worker(&worker, "bg_supervisor_main", BG_SUPERVISOR_TYPE,
							  (Datum) 0);
	/* restarted if it dies; a crash restart restarts it too */
	worker.bgw_restart_time = 1;
	RegisterBackgroundWorker(&worker);
}

static void
bg_supervisor_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(bg_supervisor_size());
}

static void
bg_supervisor_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	bg_sup = ShmemInitStruct("bg_fdw supervisor", bg_supervisor_size(),
							 &found);
	if (!found)
		bg_supervisor_init_state(bg_sup);
	LWLockRelease(AddinShmemInitLock);
}

static void
bg_supervisor_init_state(void *ptr)
{
	BgSupervisorShared *sup = (BgSupervisorShared *) ptr;

	memset(sup, 0, sizeof(BgSupervisorShared));
	SpinLockInit(&sup->mutex);
	bg_pool_init((char *) ptr + MAXALIGN(sizeof(BgSupervisorShared)));
	bg_queue_init((char *) ptr + MAXALIGN(sizeof(BgSupervisorShared)) +
				  MAXALIGN(bg_pool_size()));
}

/*
 * The shared state, after it the pool of idle workers (pool.c), then the
 * queue of jobs waiting for a slot (queue.c)
 */
static Size
bg_supervisor_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(BgSupervisorShared)),
							 MAXALIGN(bg_pool_size())),
					bg_queue_size());
}

/*
 * The queue, or NULL where there is none: it needs a supervisor that is
 * always there, which only preloading gives.
 */
void *
bg_supervisor_queue(void)
{
	BgSupervisorShared *sup = bg_sup_preloaded ? bg_supervisor_state() : NULL;

	return sup ? (char *) sup + MAXALIGN(sizeof(BgSupervisorShared)) +
		MAXALIGN(bg_pool_size()) : NULL;
}

/* Tell the supervisor that queued jobs may start (a slot may be free) */
void
bg_supervisor_wake(void)
{
	BgSupervisorShared *sup = bg_supervisor_state();
	PGPROC	   *proc = NULL;

	if (sup == NULL)
		return;
	SpinLockAcquire(&sup->mutex);
	if (sup->pid != 0)
		proc = sup->proc;
	SpinLockRelease(&sup->mutex);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
}

/* The pool of idle workers, or NULL where there is no shared state */
void *
bg_supervisor_pool(void)
{
	BgSupervisorShared *sup = bg_supervisor_state();

	return sup ? (char *) sup + MAXALIGN(sizeof(BgSupervisorShared)) : NULL;
}

/*
 * The shared state, or NULL where there is none (15 and 16 without
 * preloading).  On 17 and later without preloading, the first process to
 * ask creates it in the DSM registry.
 */
static BgSupervisorShared *
bg_supervisor_state(void)
{
	bool		found;

	if (bg_sup != NULL || bg_sup_preloaded)
		return bg_sup;
	bg_sup = bg_named_dsm_segment("bg_fdw supervisor and pool",
								  bg_supervisor_size(),
								  bg_supervisor_init_state, &found);
	return bg_sup;
}

/* A worker of the supervisor's (itself or a sweep), named after its type */
static void
bg_supervisor_fill_worker(BackgroundWorker *worker, const char *function,
						  const char *type, Datum arg)
{
	memset(worker, 0, sizeof(BackgroundWorker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "bg_fdw");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_name, BGW_MAXLEN, "%s", type);
	snprintf(worker->bgw_type, BGW_MAXLEN, "%s", type);
	worker->bgw_main_arg = arg;
}

/*
 * Find the shared state where a start on demand may need it, so that a
 * failure to do so (out of memory) comes before a launch, not after it.
 */
void
bg_supervisor_prepare(void)
{
	if (BG_HAVE_NAMED_DSM && !bg_sup_preloaded && !RecoveryInProgress())
		(void) bg_supervisor_state();
}

/*
 * Make sure the supervisor runs, where it can be started on demand (17 and
 * later, not preloaded).  Called by bg_launch and bg_jobs.  Never waits for
 * it: a supervisor that cannot start is reported in the server log, and a
 * call after BG_SUPERVISOR_START_PATIENCE_MS tries again.
 */
void
bg_supervisor_ensure(void)
{
	BgSupervisorShared *sup;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	TimestampTz now;
	bool		start;

	if (!BG_HAVE_NAMED_DSM || bg_sup_preloaded || RecoveryInProgress())
		return;
	now = GetCurrentTimestamp();
	sup = bg_supervisor_state();
	SpinLockAcquire(&sup->mutex);
	start = sup->pid == 0 && !sup->sweep_done &&
		(sup->start_requested_at == 0 ||
		 TimestampDifferenceExceeds(sup->start_requested_at, now,
									BG_SUPERVISOR_START_PATIENCE_MS));
	if (start)
		sup->start_requested_at = now;
	SpinLockRelease(&sup->mutex);
	if (!start)
		return;

	bg_supervisor_fill_worker(&worker, "bg_supervisor_main", BG_SUPERVISOR_TYPE,
							  (Datum) 0);
	/* on failure start_requested_at stays: the next try is a while away */
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(LOG,
				(errmsg("could not start the bg_fdw supervisor: no background worker slot is free"),
				 errhint("You may need to increase \"max_worker_processes\".")));
}

/*
 * The supervisor's main.  It claims the shared state (a second supervisor,
 * started on demand by a racing call, finds the first and leaves), sweeps
 * each database once, then waits for work.
 */
void
bg_supervisor_main(Datum main_arg)
{
	BgSupervisorShared *sup;
	long		nap_ms = 1;

	bg_supervisor_catch_sigterm();
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	sup = bg_supervisor_state();
	if (sup == NULL || !bg_supervisor_claim(sup))
		proc_exit(0);
	/* before_shmem_exit: the state may live in a DSM segment, gone later */
	before_shmem_exit(bg_supervisor_release, PointerGetDatum(sup));

	bg_supervisor_sweep(sup);
	bg_supervisor_schedule_expiry();
	while (!ShutdownRequestPending && bg_supervisor_stays())
	{
		long		timeout = -1;
		long		expiry;

		/*
		 * A queued job that found no free slot is tried again soon: a slot
		 * frees when the postmaster reaps a worker, which tells only the
		 * process that started it.
		 */
		if (bg_queue_start_jobs())
		{
			timeout = nap_ms;
			nap_ms = Min(nap_ms * 2, BG_SUPERVISOR_RETRY_MAX_MS);
		}
		else
			nap_ms = 1;
		expiry = bg_supervisor_expire(sup);
		if (expiry >= 0 && (timeout < 0 || expiry < timeout))
			timeout = expiry;
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_EXIT_ON_PM_DEATH |
						 (timeout >= 0 ? WL_TIMEOUT : 0),
						 timeout, bg_wait_event_supervisor());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
			/* bg_fdw.max_jobs_per_role may have been raised */
			bg_queue_undefer_all();
			/* and bg_fdw.job_retention shortened */
			bg_supervisor_schedule_expiry();
		}
	}
	if (bg_supervisor_shutdown)
		bg_supervisor_await_workers();
	/* a preloaded supervisor that leaves otherwise is restarted */
	proc_exit(bg_supervisor_stays() ? 1 : 0);
}

/*
 * SIGTERM, as SignalHandlerForShutdownRequest takes it, noting whether the
 * postmaster sent it: at a shutdown the supervisor waits for bg_fdw's other
 * workers, but one terminated on its own (pg_terminate_backend) leaves at
 * once, to be started again.
 */
static void
bg_supervisor_sigterm(int signo, siginfo_t *info, void *context)
{
	int			save_errno = errno;

	if (info != NULL && info->si_pid == PostmasterPid)
		bg_supervisor_shutdown = true;
	ShutdownRequestPending = true;
	SetLatch(MyLatch);
	errno = save_errno;
}

static void
bg_supervisor_catch_sigterm(void)
{
	struct sigaction act;

	memset(&act, 0, sizeof(act));
	act.sa_sigaction = bg_supervisor_sigterm;
	sigemptyset(&act.sa_mask);
	act.sa_flags = SA_RESTART | SA_SIGINFO;
	if (sigaction(SIGTERM, &act, NULL) < 0)
		pqsignal(SIGTERM, SignalHandlerForShutdownRequest);
}

/*
 * At a clean shutdown, leave after bg_fdw's other workers: the postmaster
 * asks them all to stop at once, and job workers may still be recording
 * their outcome.  It tells the supervisor of none of their exits, so look
 * again every 100 ms.
 */
static void
bg_supervisor_await_workers(void)
{
	int			first = -1;
	int			n;

	while ((n = bg_count_workers(BG_WORKER_TYPE, true) +
			bg_count_workers(BG_SWEEP_TYPE, true)) > 0)
	{
		if (first < 0)
			first = n;
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100L, bg_wait_event_supervisor());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	ereport(LOG,
			(errmsg("bg_fdw supervisor shutting down"),
			 first > 0 ?
			 errdetail_plural("It waited for %d other worker of bg_fdw to exit.",
							  "It waited for %d other workers of bg_fdw to exit.",
							  first, first) : 0));
}

/*
 * Is the supervisor there to start queued jobs?  Where bg_fdw is preloaded,
 * once it has started: a supervisor the postmaster could not register
 * (other preloaded workers took every slot) never starts, and a launch must
 * not wait for it in the queue.
 */
bool
bg_supervisor_started(void)
{
	BgSupervisorShared *sup = bg_supervisor_state();
	int			starts;

	if (sup == NULL)
		return false;
	SpinLockAcquire(&sup->mutex);
	starts = sup->starts;
	SpinLockRelease(&sup->mutex);
	return starts > 0;
}

/*
 * Does the supervisor stay once its work is done?  A preloaded one does; one
 * started on demand leaves, and the next call that finds work due starts it
 * again.
 */
static bool
bg_supervisor_stays(void)
{
	return bg_sup_preloaded;
}

/*
 * Become the supervisor, unless another one runs or (started on demand)
 * there is nothing to do: a start registered twice, the second one long
 * after the first, leaves the count of starts at one.
 */
static bool
bg_supervisor_claim(BgSupervisorShared *sup)
{
	TimestampTz now = GetCurrentTimestamp();
	pid_t		other;
	bool		claimed = false;

	SpinLockAcquire(&sup->mutex);
	other = sup->pid;
	SpinLockRelease(&sup->mutex);
	/* a supervisor whose exit callback did not run is gone */
	if (other != 0 && other != MyProcPid && kill(other, 0) == 0)
		return false;

	SpinLockAcquire(&sup->mutex);
	/* started on demand, it has nothing to do once the sweep is done */
	if (sup->pid == other && (bg_sup_preloaded || !sup->sweep_done))
	{
		sup->pid = MyProcPid;
		sup->proc = MyProc;
		sup->started_at = now;
		sup->start_requested_at = 0;
		sup->starts++;
		claimed = true;
	}
	SpinLockRelease(&sup->mutex);
	return claimed;
}

static void
bg_supervisor_release(int code, Datum arg)
{
	BgSupervisorShared *sup = (BgSupervisorShared *) DatumGetPointer(arg);

	SpinLockAcquire(&sup->mutex);
	if (sup->pid == MyProcPid)
		sup->pid = 0;
	SpinLockRelease(&sup->mutex);
}

/*
 * Sweep every database once per server start (a crash restart included),
 * one at a time, each in a worker of its own.  A database whose sweep cannot
 * start (no free worker slot) is tried again after a pause; a shutdown ends
 * the sweep.
 */
static void
bg_supervisor_sweep(BgSupervisorShared *sup)
{
	List	   *databases;
	ListCell   *lc;
	bool		done;

	SpinLockAcquire(&sup->mutex);
	done = sup->sweep_done;
	if (!done)
		sup->databases_swept = 0;
	SpinLockRelease(&sup->mutex);
	if (done)
		return;
	databases = bg_supervisor_databases(false);
	foreach(lc, databases)
	{
		Oid			dboid = lfirst_oid(lc);
		bool		logged = false;

		while (!ShutdownRequestPending && !bg_supervisor_sweep_database(dboid))
		{
			if (!logged)
				ereport(LOG,
						(errmsg("could not start the bg_fdw sweep of database %u: no background worker slot is free",
								dboid),
						 errdetail("It is tried again each second."),
						 errhint("You may need to increase \"max_worker_processes\".")));
			logged = true;
			(void) WaitLatch(MyLatch,
							 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
							 1000L, bg_wait_event_supervisor());
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
		if (ShutdownRequestPending)
			return;
		SpinLockAcquire(&sup->mutex);
		sup->databases_swept++;
		SpinLockRelease(&sup->mutex);
	}
	bg_queue_forget_records(bg_supervisor_databases(true));
	SpinLockAcquire(&sup->mutex);
	sup->sweep_done = true;
	sup->last_sweep = GetCurrentTimestamp();
	SpinLockRelease(&sup->mutex);
}

/*
 * The databases to sweep, read from the shared catalog: those a worker can
 * connect to, templates aside; or, with "all", every database.
 */
static List *
bg_supervisor_databases(bool all)
{
	List	   *result = NIL;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	MemoryContext cxt = CurrentMemoryContext;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tuple = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		MemoryContext old;

		/* a sweep of a template would hold up CREATE DATABASE */
		if (!all && (!db->datallowconn || db->datistemplate))
			continue;
		old = MemoryContextSwitchTo(cxt);
		result = lappend_oid(result, db->oid);
		MemoryContextSwitchTo(old);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

/*
 * Sweep one database in a worker of its own, and wait for it to end.  False
 * if no worker slot was free.
 */
static bool
bg_supervisor_sweep_database(Oid dboid)
{
	BackgroundWorkerHandle *handle = bg_supervisor_start_sweep(dboid);
	pid_t		pid;

	if (handle == NULL)
		return false;
	/* stopped already: it ran, or could not connect (the database went) */
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
		(void) WaitForBackgroundWorkerShutdown(handle);
	pfree(handle);
	return true;
}

/* Does the database still exist?  (Read from the shared catalog.) */
static bool
bg_supervisor_database_exists(Oid dboid)
{
	Relation	rel;
	ScanKeyData key;
	TableScanDesc scan;
	bool		found;

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_database_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(dboid));
	scan = table_beginscan_catalog(rel, 1, &key);
	found = HeapTupleIsValid(heap_getnext(scan, ForwardScanDirection));
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return found;
}

/* Start the sweep of a database; NULL if no worker slot is free */
static BackgroundWorkerHandle *
bg_supervisor_start_sweep(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;

	bg_supervisor_fill_worker(&worker, "bg_sweep_main", BG_SWEEP_TYPE,
							  ObjectIdGetDatum(dboid));
	snprintf(worker.bgw_name, BGW_MAXLEN, "bg_fdw sweep of database %u", dboid);
	worker.bgw_notify_pid = MyProcPid;
	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		return NULL;
	return handle;
}

/*
 * The next expiry round is due bg_fdw.job_retention from now, bounded, or
 * sooner if it was due sooner already.
 */
static void
bg_supervisor_schedule_expiry(void)
{
	int64		ms = (int64) bg_job_retention * 1000;
	TimestampTz next;

	/* -1 here may be another value in a database (ALTER DATABASE ... SET) */
	if (bg_job_retention < 0)
		ms = BG_EXPIRY_MAX_MS;
	ms = Max(ms, BG_EXPIRY_MIN_MS);
	ms = Min(ms, BG_EXPIRY_MAX_MS);
	next = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
	if (bg_expiry.next == 0 || next < bg_expiry.next)
		bg_expiry.next = next;
}

/*
 * Go on with the expiry round, where the supervisor stays: when one is due
 * and bg_fdw.job_retention expires anything, sweep each database in turn,
 * one worker at a time, without waiting for it (the postmaster wakes the
 * supervisor when it stops).  Returns how long the supervisor may sleep, in
 * ms, or -1 for as long as it likes.
 */
static long
bg_supervisor_expire(BgSupervisorShared *sup)
{
	TimestampTz now = GetCurrentTimestamp();
	pid_t		pid;
	Oid			dboid;

	if (!bg_supervisor_stays())
		return -1;
	if (bg_expiry.sweep != NULL)
	{
		if (GetBackgroundWorkerPid(bg_expiry.sweep, &pid) != BGWH_STOPPED)
			return -1;
		pfree(bg_expiry.sweep);
		bg_expiry.sweep = NULL;
		SpinLockAcquire(&sup->mutex);
		sup->databases_swept++;
		if (bg_expiry.databases == NIL)
			sup->last_sweep = now;
		SpinLockRelease(&sup->mutex);
	}
	if (bg_expiry.databases == NIL)
	{
		if (now < bg_expiry.next)
			return (long) ((bg_expiry.next - now + 999) / 1000);
		bg_expiry.next = 0;
		bg_supervisor_schedule_expiry();
		bg_expiry.databases = bg_supervisor_databases(false);
		if (bg_expiry.databases == NIL)
			return bg_supervisor_expire(sup);
	}
	dboid = linitial_oid(bg_expiry.databases);
	/* a database dropped since the round began is not swept */
	if (!bg_supervisor_database_exists(dboid))
	{
		bg_expiry.databases = list_delete_first(bg_expiry.databases);
		return bg_supervisor_expire(sup);
	}
	bg_expiry.sweep = bg_supervisor_start_sweep(dboid);
	/*
	 * No free slot: an idle worker leaves to make one, as for a queued job,
	 * and the sweep is tried again in a second (without a word: it recurs).
	 */
	if (bg_expiry.sweep == NULL)
	{
		bg_pool_make_room_for(1);
		return BG_SUPERVISOR_RETRY_MAX_MS;
	}
	bg_expiry.databases = list_delete_first(bg_expiry.databases);
	return -1;
}

/*
 * The sweep of one database, in a worker the supervisor started for it:
 * record as "lost" the jobs left running by a worker that is gone, and
 * delete those past bg_fdw.job_retention.
 */
void
bg_sweep_main(Datum main_arg)
{
	Oid			dboid = DatumGetObjectId(main_arg);
	List	   *records;
	ListCell   *lc;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(dboid, InvalidOid, 0);
	pgstat_report_activity(STATE_RUNNING, "bg_fdw sweep");

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	if (!bg_registry_try_lock())
	{
		ereport(LOG,
				(errmsg("skipping the bg_fdw sweep of database \"%s\": its job registry is locked",
						get_database_name(MyDatabaseId)),
				 errdetail("The next sweep tries again.")));
		AbortCurrentTransaction();
		proc_exit(0);
	}
	bg_registry_sweep();
	CommitTransactionCommand();

	/* jobs that were queued when the server stopped are cancelled */
	StartTransactionCommand();
	records = bg_registry_try_lock() ? bg_queue_sweep_records() : NIL;
	CommitTransactionCommand();
	foreach(lc, records)
	{
		if (unlink((char *) lfirst(lc)) != 0 && errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not remove file \"%s\": %m",
							(char *) lfirst(lc))));
	}
	pgstat_report_activity(STATE_IDLE, NULL);
	proc_exit(0);
}

/*
 * SQL: the supervisor's state, one row.  Where there is no supervisor (15
 * and 16 without preloading) it says so.
 */
Datum
bg_supervisor(PG_FUNCTION_ARGS)
{
	BgSupervisorShared *sup;
	BgSupervisorShared copy;
	TupleDesc	desc;
	Datum		values[14];
	bool		nulls[14];
	int			queued;
	int64		dequeued;
	int64		queued_bytes;
	const char *state;
	int			idle;
	int64		handed_over;

	if (get_call_result_type(fcinfo, NULL, &desc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	bg_supervisor_ensure();
	sup = bg_supervisor_state();
	memset(&copy, 0, sizeof(copy));
	if (sup != NULL)
	{
		SpinLockAcquire(&sup->mutex);
		copy = *sup;
		SpinLockRelease(&sup->mutex);
	}
	if (sup == NULL)
		state = "unavailable";
	else if (copy.pid != 0)
		state = copy.sweep_done ? "running" : "sweeping";
	else if (copy.sweep_done && !bg_sup_preloaded)
		state = "idle";
	else
		state = "stopped";

	memset(nulls, 0, sizeof(nulls));
	values[0] = CStringGetTextDatum(state);
	values[1] = Int32GetDatum(copy.pid);
	nulls[1] = (copy.pid == 0);
	values[2] = TimestampTzGetDatum(copy.started_at);
	nulls[2] = (copy.starts == 0);
	values[3] = BoolGetDatum(bg_sup_preloaded);
	values[4] = Int32GetDatum(copy.starts);
	values[5] = Int32GetDatum(copy.databases_swept);
	values[6] = TimestampTzGetDatum(copy.last_sweep);
	nulls[6] = !copy.sweep_done;
	bg_pool_counts(&idle, &handed_over);
	values[7] = Int32GetDatum(idle);
	values[8] = Int64GetDatum(handed_over);
	nulls[7] = nulls[8] = (sup == NULL);
	bg_queue_counts(&queued, &dequeued, &queued_bytes);
	values[9] = Int32GetDatum(queued);
	values[10] = Int64GetDatum(dequeued);
	nulls[9] = nulls[10] = (bg_supervisor_queue() == NULL);
	/* what the cluster-wide quotas count */
	values[11] = Int32GetDatum(bg_jobs_running());
	values[12] = Int64GetDatum(queued_bytes);
	nulls[12] = nulls[9];
	values[13] = Int64GetDatum(bg_keep_cluster_bytes(false));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(desc, values, nulls)));
}

/* What the supervisor waits under: "BgFdwSupervisor" */
static uint32
bg_wait_event_supervisor(void)
{
	return bg_wait_event_cached("BgFdwSupervisor", &bg_wait_event_supervisor_id);
}
