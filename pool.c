/*-------------------------------------------------------------------------
 *
 * pool.c
 *		  Started workers kept for the next job: most of a launch is starting
 *		  a process (fork, loading the library, connecting), so a worker whose
 *		  job ended well waits, connected, for another job of the same kind.
 *
 * The pool lives beside the supervisor's state (supervisor.c): in the main
 * shared memory when bg_fdw is preloaded, in the DSM registry on 17 and
 * later otherwise; where there is no such state (15 and 16 not preloaded)
 * there is no pool and every job starts a worker.
 *
 * An idle worker is connected to one database as one role, ran its last job
 * as one role, and has one set of libraries loaded: a launch hands its job
 * to an idle worker with the same four, else it starts a worker.  The
 * handing over, under the pool's mutex:
 *
 *		worker:   WAITING (it listed itself)
 *		launcher: CLAIMED, with the segment of the job, then sets its latch
 *		worker:   TAKEN, attaches the segment and its queues
 *		worker:   FREE (the entry is nobody's), sets the launcher's latch
 *
 * A worker lists itself ENDING as its job commits, before its launcher
 * learns the outcome, so that the launch that follows finds it; it is
 * WAITING once its job's bookkeeping is done.  A worker that exits before
 * it has attached (terminated meanwhile) frees its entry and wakes the
 * launcher, which starts a worker instead.  The launcher waits for nothing
 * else, but a worker ending a job may wait for a lock the launcher holds:
 * the launcher then takes its claim back.
 *
 * A job handed over needs a name of its own (its worker's PID named its
 * predecessor): a number above any PID, from a counter in the pool, which
 * each session first moves past the names its database's registry holds,
 * so that names stay unique across restarts.
 *
 * Idle workers leave after bg_fdw.worker_idle_timeout, beyond
 * bg_fdw.max_idle_workers, when fewer than max_parallel_workers worker slots
 * would stay free (they never hold slots parallel query could use), and
 * when a command needs their database to themselves (DROP DATABASE, ALTER
 * DATABASE RENAME or SET TABLESPACE, CREATE DATABASE ... TEMPLATE): an idle
 * worker holds a session lock on its database that those commands' locks
 * conflict with, and leaves as soon as one waits for it.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/pool.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/async.h"
#include "commands/prepare.h"
#include "commands/sequence.h"
#include "common/hashfn.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "replication/origin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/spin.h"
#include "utils/backend_status.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/plancache.h"
#include "utils/portal.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

#define BG_JOB_NAMES		((uint32) (PG_INT32_MAX - BG_FIRST_JOB_NAME + 1))

/* An idle worker looks around this often (ms) */
#define BG_IDLE_CHECK_MS	1000

typedef enum BgIdleState
{
	BG_IDLE_FREE,				/* the entry is nobody's */
	BG_IDLE_ENDING,				/* a worker ends its job, then waits */
	BG_IDLE_WAITING,			/* a worker waits for a job */
	BG_IDLE_CLAIMED,			/* a launcher gave it one */
	BG_IDLE_TAKEN,				/* the worker is attaching to it */
	BG_IDLE_LEAVING				/* the worker is about to exit */
} BgIdleState;

typedef struct BgIdleWorker
{
	BgIdleState state;
	pid_t		pid;			/* the worker: set with WAITING */
	PGPROC	   *proc;
	Oid			database_id;	/* what it is: set with WAITING */
	Oid			connected_as;
	Oid			job_role;
	uint64		libraries;
	bool		superuser;		/* connected_as was a superuser at connection */
	bool		light;			/* (ENDING) its job kept no file to sync */
	TimestampTz idle_since;
	dsm_handle	segment;		/* the job: set with CLAIMED */
	int64		job_id;
	PGPROC	   *claimer;
	BgIdleState claimed_from;	/* ENDING or WAITING, for an undo */
} BgIdleWorker;

typedef struct BgPool
{
	slock_t		mutex;
	int			nslots;
	pg_atomic_uint32 next_name; /* the next name, less BG_FIRST_JOB_NAME */
	pg_atomic_uint64 handed_over;	/* jobs handed to idle workers */
	BgIdleWorker idle[FLEXIBLE_ARRAY_MEMBER];
} BgPool;

bool		bg_reuse_workers = true;
int			bg_max_idle_workers = 4;
int			bg_worker_idle_timeout = 60000;

/* The worker's entry while it is idle or being handed a job, else -1 */
static int	bg_pool_my_slot = -1;
static bool bg_pool_exit_registered = false;
/* Does this idle worker hold its session lock on its database? */
static bool bg_pool_db_locked = false;
/* Has this session moved the name counter past its registry's names? */
static bool bg_pool_names_checked = false;

static uint32 bg_wait_event_idle_id = 0;

static BgPool *bg_pool(void);
static uint64 bg_libraries_hash(const char *state);
static uint64 bg_my_libraries_hash(void);
static void bg_pool_check_names(BgPool *pool);
static void bg_pool_names_past(BgPool *pool, int name);
static int	bg_pool_new_name(BgPool *pool);
static int	bg_pool_claim(BgPool *pool, BgJobShared *shared, uint64 libraries,
						  bool superuser, dsm_handle segment);
static bool bg_pool_may_connect(BgJobShared *shared, bool *superuser);
static int	bg_pool_await_taken(BgPool *pool, int slot, BgJobShared *shared);
static bool bg_pool_claim_mine(BgIdleWorker *w, BgJobShared *shared);
static bool bg_pool_unclaim(BgPool *pool, int slot, BgJobShared *shared);
static bool bg_pool_list(BgPool *pool, Oid connected_as, Oid job_role,
						 uint64 libraries);
static bool bg_pool_take(BgPool *pool, int64 *job_id);
static bool bg_pool_must_leave(BgPool *pool, TimestampTz idle_since);
static int	bg_pool_slots_missing(int leaving);
static bool bg_pool_set_leaving(BgPool *pool);
static void bg_pool_exit(int code, Datum arg);
static bool bg_database_lock(bool acquire);
static bool bg_database_lock_wanted(void);
static uint32 bg_wait_event_idle(void);
static void bg_pool_reseed(void);
static void bg_pool_send_away(BgPool *pool, int count);

Size
bg_pool_size(void)
{
	return add_size(offsetof(BgPool, idle),
					mul_size(max_worker_processes, sizeof(BgIdleWorker)));
}

void
bg_pool_init(void *ptr)
{
	BgPool	   *pool = (BgPool *) ptr;

	memset(pool, 0, bg_pool_size());
	SpinLockInit(&pool->mutex);
	pool->nslots = max_worker_processes;
	pg_atomic_init_u32(&pool->next_name, 0);
	pg_atomic_init_u64(&pool->handed_over, 0);
}

static BgPool *
bg_pool(void)
{
	return (BgPool *) bg_supervisor_pool();
}

/*
 * An order-free hash of a serialized library state (SerializeLibraryState:
 * names, each ending in a zero byte, then an empty one).
 */
static uint64
bg_libraries_hash(const char *state)
{
	uint64		hash = 0;

	/* a sum: the same whatever the order of loading */
	while (*state != '\0')
	{
		size_t		len = strlen(state);

		hash += hash_bytes_extended((const unsigned char *) state, (int) len, 0);
		state += len + 1;
	}
	return hash;
}

static uint64
bg_my_libraries_hash(void)
{
	Size		len = EstimateLibraryStateSpace();
	char	   *space = palloc(len);
	uint64		hash;

	SerializeLibraryState(len, space);
	hash = bg_libraries_hash(space);
	pfree(space);
	return hash;
}

/* ----------------------------------------------------------------
 *		The launcher's side
 * ----------------------------------------------------------------
 */

/*
 * Hand the job laid out in "seg" to an idle worker.  Returns its name once
 * the worker has attached; 0 if no idle worker took it, "seg" untouched;
 * -1 if the one chosen exited while it attached, leaving "seg" unusable:
 * the caller lays out another and starts a worker.
 */
int
bg_pool_hand_over(dsm_segment *seg, BgJobShared *shared, const char *libraries)
{
	BgPool	   *pool = bg_pool();
	int			slot;
	int			outcome;
	bool		superuser;

	if (pool == NULL || bg_max_idle_workers == 0 || !bg_reuse_workers)
		return 0;
	/* a job name other than a PID needs a registry that shows the PID */
	if (!bg_registry_shows_worker(shared->registry_relid))
		return 0;
	/* what connecting would refuse, a started worker must not allow */
	if (!bg_pool_may_connect(shared, &superuser))
		return 0;
	bg_pool_check_names(pool);
	slot = bg_pool_claim(pool, shared, bg_libraries_hash(libraries),
						 superuser, dsm_segment_handle(seg));
	if (slot >= 0)
	{
		PG_TRY();
		{
			outcome = bg_pool_await_taken(pool, slot, shared);
		}
		PG_CATCH();
		{
			bg_pool_unclaim(pool, slot, shared);
			PG_RE_THROW();
		}
		PG_END_TRY();
		if (outcome > 0)
		{
			pg_atomic_fetch_add_u64(&pool->handed_over, 1);
			return shared->name;
		}
		if (outcome < 0)
			return -1;
	}
	shared->name = 0;
	return 0;
}

/*
 * Would a new worker of this job connect?  Its role must still exist, may
 * log in (unless a worker may connect as any role), and may connect to the
 * database, which must allow connections: as InitPostgres checks.  Sets
 * *superuser to whether the role is one now: a worker that connected while
 * it was (or was not) one has its session authorization decided by that.
 */
static bool
bg_pool_may_connect(BgJobShared *shared, bool *superuser)
{
	Oid			role = bg_job_connect_role(shared);
	bool		check_login = !(shared->connect_as_job_role &&
								BG_CONNECT_AS_ROLE_FLAGS != 0);
	HeapTuple	tuple;
	bool		ok;

	tuple = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	if (!HeapTupleIsValid(tuple))
		return false;
	*superuser = ((Form_pg_authid) GETSTRUCT(tuple))->rolsuper;
	ok = !check_login || ((Form_pg_authid) GETSTRUCT(tuple))->rolcanlogin;
	ReleaseSysCache(tuple);
	if (!ok)
		return false;
	tuple = SearchSysCache1(DATABASEOID, ObjectIdGetDatum(MyDatabaseId));
	if (!HeapTupleIsValid(tuple))
		return false;
	ok = ((Form_pg_database) GETSTRUCT(tuple))->datallowconn;
	ReleaseSysCache(tuple);
	return ok && (*superuser ||
				  bg_database_connect_aclcheck(role) == ACLCHECK_OK);
}

/*
 * A session's first hand-over moves the name counter past every name its
 * database's registry holds, which may come from before a restart.
 */
static void
bg_pool_check_names(BgPool *pool)
{
	int			highest;

	if (bg_pool_names_checked)
		return;
	highest = bg_registry_highest_name(BG_FIRST_JOB_NAME);
	bg_pool_names_past(pool, highest);
	bg_pool_names_checked = true;
}

/* Move the name counter past "name", if it is not yet */
static void
bg_pool_names_past(BgPool *pool, int name)
{
	uint32		past;
	uint32		next;

	past = name >= BG_FIRST_JOB_NAME ?
		(uint32) (name - BG_FIRST_JOB_NAME + 1) % BG_JOB_NAMES : 0;
	next = pg_atomic_read_u32(&pool->next_name);
	while (next < past &&
		   !pg_atomic_compare_exchange_u32(&pool->next_name, &next, past))
		;
}

/*
 * A name for a job handed over, taken as it is claimed (so that a launch
 * that starts a worker uses none), before the worker can see the claim.
 */
static int
bg_pool_new_name(BgPool *pool)
{
	uint32		next = pg_atomic_fetch_add_u32(&pool->next_name, 1);

	/* after 2^31 names or so the counter starts over */
	if (next >= BG_JOB_NAMES)
	{
		uint32		expected = next + 1;

		(void) pg_atomic_compare_exchange_u32(&pool->next_name, &expected, 1);
		next %= BG_JOB_NAMES;
	}
	return BG_FIRST_JOB_NAME + (int) next;
}

/* A name for a queued job (queue.c), "floor" or above */
int
bg_pool_take_name(int floor)
{
	BgPool	   *pool = bg_pool();

	bg_pool_check_names(pool);
	bg_pool_names_past(pool, floor - 1);
	return bg_pool_new_name(pool);
}

/*
 * Jobs running now, for bg_fdw.max_jobs: bg_fdw's workers less those idle
 * or leaving.  Counted over the processes, as bg_pool_slots_missing does.
 */
int
bg_pool_running_jobs(void)
{
	BgPool	   *pool = bg_pool();
	int			workers = bg_count_workers(BG_WORKER_TYPE, true);
	int			idle = 0;
	int			i;

	if (pool == NULL)
		return workers;
	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		BgIdleState st = pool->idle[i].state;

		idle += (st == BG_IDLE_WAITING || st == BG_IDLE_ENDING ||
				 st == BG_IDLE_LEAVING);
	}
	SpinLockRelease(&pool->mutex);
	return Max(workers - idle, 0);
}

/*
 * Claim the idle worker that fits the job: one waiting, the one idle the
 * shortest time (the others may then time out), else one ending a job that
 * has no kept file to make durable first.  Its entry, or -1.
 */
static int
bg_pool_claim(BgPool *pool, BgJobShared *shared, uint64 libraries,
			  bool superuser, dsm_handle segment)
{
	Oid			connected_as = bg_job_connect_role(shared);
	int			best = -1;
	PGPROC	   *proc = NULL;
	int			i;

	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		BgIdleWorker *w = &pool->idle[i];

		if (!(w->state == BG_IDLE_WAITING ||
			  (w->state == BG_IDLE_ENDING && w->light)) ||
			w->database_id != shared->database_id ||
			w->connected_as != connected_as ||
			w->job_role != shared->current_user_id ||
			w->libraries != libraries ||
			w->superuser != superuser)
			continue;
		if (best < 0 ||
			(w->state == BG_IDLE_WAITING) > (pool->idle[best].state == BG_IDLE_WAITING) ||
			(w->state == pool->idle[best].state &&
			 w->idle_since > pool->idle[best].idle_since))
			best = i;
	}
	if (best >= 0)
	{
		BgIdleWorker *w = &pool->idle[best];

		shared->name = bg_pool_new_name(pool);
		w->claimed_from = w->state;
		w->state = BG_IDLE_CLAIMED;
		w->segment = segment;
		w->job_id = shared->job_id;
		w->claimer = MyProc;
		proc = w->proc;
	}
	SpinLockRelease(&pool->mutex);
	if (proc != NULL)
		SetLatch(&proc->procLatch);
	return best;
}

/* Is the entry still claimed by us for this job? */
static bool
bg_pool_claim_mine(BgIdleWorker *w, BgJobShared *shared)
{
	return (w->state == BG_IDLE_CLAIMED || w->state == BG_IDLE_TAKEN) &&
		w->claimer == MyProc && w->job_id == shared->job_id;
}

/*
 * Wait until the worker has attached to the job's segment (1).  A worker
 * ending its previous job may first wait for a lock of ours (that job's
 * bookkeeping); then the claim is undone (0) and the caller starts a
 * worker.  A worker that exited while it attached leaves the entry
 * (-1).  The worker attaches at once once idle; if we are cancelled
 * meanwhile, bg_pool_unclaim undoes the claim, or the worker finds the
 * segment gone.
 */
static int
bg_pool_await_taken(BgPool *pool, int slot, BgJobShared *shared)
{
	BgIdleWorker *w = &pool->idle[slot];
	TimestampTz check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   DeadlockTimeout);
	BgWaitCycle cycle = {0};

	for (;;)
	{
		bool		mine;
		bool		attached;
		pid_t		worker;

		/* (the worker sets worker_proc before it lets go of the entry) */
		SpinLockAcquire(&pool->mutex);
		mine = bg_pool_claim_mine(w, shared);
		worker = w->pid;
		SpinLockRelease(&pool->mutex);
		SpinLockAcquire(&shared->mutex);
		attached = shared->worker_proc != NULL;
		SpinLockRelease(&shared->mutex);
		if (attached)
			return 1;
		if (!mine)
			return -1;
		if (GetCurrentTimestamp() >= check_at)
		{
			if ((bg_blocked_by_me(worker) || bg_wait_cycle_found(worker, &cycle)) &&
				bg_pool_unclaim(pool, slot, shared))
				return 0;
			check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   DeadlockTimeout);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 DeadlockTimeout, bg_wait_event_launch());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Undo our claim if the worker has not taken the job yet: true if undone,
 * with the segment untouched.
 */
static bool
bg_pool_unclaim(BgPool *pool, int slot, BgJobShared *shared)
{
	BgIdleWorker *w = &pool->idle[slot];
	bool		undone = false;

	SpinLockAcquire(&pool->mutex);
	if (w->state == BG_IDLE_CLAIMED && bg_pool_claim_mine(w, shared))
	{
		w->state = w->claimed_from;
		w->claimer = NULL;
		w->job_id = 0;
		undone = true;
	}
	SpinLockRelease(&pool->mutex);
	return undone;
}

/*
 * A worker is about to be started: if parallel query would then miss
 * slots, the workers idle the longest leave now, rather than at their next
 * look around.  (Their slots are free once the postmaster has reaped them.)
 */
void
bg_pool_make_room(void)
{
	BgPool	   *pool = bg_pool();
	int			leaving = 0;
	bool		idle = false;
	int			i;

	if (pool == NULL)
		return;
	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		idle |= (pool->idle[i].state == BG_IDLE_WAITING);
		leaving += (pool->idle[i].state == BG_IDLE_LEAVING);
	}
	SpinLockRelease(&pool->mutex);
	if (!idle)
		return;
	bg_pool_send_away(pool, bg_pool_slots_missing(leaving) + 1);
}

/*
 * Jobs wait in the queue for worker slots (queue.c): as many idle workers
 * leave, the longest idle first.
 */
void
bg_pool_make_room_for_queue(void)
{
	bg_pool_make_room_for(bg_queue_waiting());
}

/* The supervisor needs "count" slots: as many idle workers leave. */
void
bg_pool_make_room_for(int count)
{
	BgPool	   *pool = bg_pool();

	if (pool != NULL && count > 0)
		bg_pool_send_away(pool, count);
}

/* The "count" workers idle the longest leave now. */
static void
bg_pool_send_away(BgPool *pool, int count)
{
	PGPROC	   *wake[64];
	int			nwake = 0;
	int			i;

	SpinLockAcquire(&pool->mutex);
	while (count-- > 0 && nwake < lengthof(wake))
	{
		int			oldest = -1;

		for (i = 0; i < pool->nslots; i++)
		{
			if (pool->idle[i].state == BG_IDLE_WAITING &&
				(oldest < 0 ||
				 pool->idle[i].idle_since < pool->idle[oldest].idle_since))
				oldest = i;
		}
		if (oldest < 0)
			break;
		pool->idle[oldest].state = BG_IDLE_LEAVING;
		wake[nwake++] = pool->idle[oldest].proc;
	}
	SpinLockRelease(&pool->mutex);
	for (i = 0; i < nwake; i++)
		SetLatch(&wake[i]->procLatch);
}

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/*
 * The job has committed and is about to tell its launcher: if this worker
 * may run another job, list it now, ENDING, so that a launch coming right
 * after the outcome finds it (the worker still has its job's bookkeeping to
 * do).  Not without a pool, nor with temporary tables' state (their buffers
 * fix temp_buffers), custom settings or jobs of its own, nor after
 * BG_WORKER_MAX_JOBS jobs.  "light": the job kept no file, which makes the
 * worker's bookkeeping short enough for a launch to wait for it.
 */
void
bg_pool_offer(Oid connected_as, bool superuser, Oid job_role, bool light,
			  int jobs_run)
{
	BgPool	   *pool = bg_pool();
	Oid			temp_namespace;
	Oid			temp_toast;

	/* (bg_fdw.reuse_workers as the job's session has it) */
	if (pool == NULL || bg_max_idle_workers == 0 || !bg_reuse_workers ||
		jobs_run >= BG_WORKER_MAX_JOBS)
		return;
	GetTempNamespaceState(&temp_namespace, &temp_toast);
	if (OidIsValid(temp_namespace) || NLocBuffer != 0)
		return;
	/* a custom setting's name would outlive the job: no reset removes it */
	if (bg_have_guc_placeholders())
		return;
	/* nor would the jobs the job launched, which are its session's */
	if (bg_session_has_jobs())
		return;
	/* nor a replication origin set up for the session */
	if (replorigin_session_origin != InvalidRepOriginId)
		return;
	if (!bg_pool_exit_registered)
	{
		before_shmem_exit(bg_pool_exit, (Datum) 0);
		bg_pool_exit_registered = true;
	}
	if (bg_pool_list(pool, connected_as, job_role, bg_my_libraries_hash()))
	{
		SpinLockAcquire(&pool->mutex);
		pool->idle[bg_pool_my_slot].superuser = superuser;
		pool->idle[bg_pool_my_slot].light = light;
		SpinLockRelease(&pool->mutex);
	}
}

/* Did this worker offer itself for another job? */
bool
bg_pool_offered(void)
{
	return bg_pool_my_slot >= 0;
}

/*
 * Give the session of the job that ended back the state of a new one, as
 * far as the next job's own start (RestoreGUCState, its role) does not:
 * what DISCARD ALL drops, with the settings back at their connection-time
 * values.
 */
void
bg_pool_reset_session(void)
{
	StartTransactionCommand();
	PortalHashTableDeleteAll();
	SetPGVariable("session_authorization", NIL, false);
	SetPGVariable("role", NIL, false);
	ResetAllOptions();
	DropAllPreparedStatements();
	Async_UnlistenAll();
	LockReleaseAll(USER_LOCKMETHOD, true);
	ResetPlanCache();
	ResetSequenceCaches();
	if (MyReplicationSlot != NULL)
		ReplicationSlotRelease();
	bg_replication_slot_cleanup();
	bg_pool_reseed();
	CommitTransactionCommand();
	SetUserIdAndSecContext(GetSessionUserId(), 0);
	SetConfigOption("application_name", "bg_fdw idle worker", PGC_USERSET,
					PGC_S_SESSION);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * random() as a new session has it, not where setseed() left it: seeded
 * from strong randomness.
 */
static void
bg_pool_reseed(void)
{
	uint32		bits;

	if (!pg_strong_random(&bits, sizeof(bits)))
		bits = (uint32) MyProcPid ^ (uint32) GetCurrentTimestamp();
	DirectFunctionCall1(setseed,
						Float8GetDatum((double) bits / PG_UINT32_MAX * 2.0 - 1.0));
}

/*
 * The worker that offered itself has done its job's bookkeeping: wait, idle,
 * for a job.  Returns the segment of the job handed over (and its
 * identifier in *job_id), or DSM_HANDLE_INVALID when the worker is to exit.
 */
dsm_handle
bg_pool_wait(int64 *job_id)
{
	BgPool	   *pool = bg_pool();
	TimestampTz idle_since = GetCurrentTimestamp();

	if (bg_pool_my_slot < 0)
		return DSM_HANDLE_INVALID;
	/* claimed already: no need to look around */
	if (bg_pool_take(pool, job_id))
		return pool->idle[bg_pool_my_slot].segment;
	if (!bg_pool_must_leave(pool, idle_since))
		(void) bg_database_lock(true);
	/* a cancel while idle is for no job: held, and dropped at the next */
	HOLD_CANCEL_INTERRUPTS();
	SpinLockAcquire(&pool->mutex);
	if (pool->idle[bg_pool_my_slot].state == BG_IDLE_ENDING &&
		bg_pool_db_locked)
		pool->idle[bg_pool_my_slot].state = BG_IDLE_WAITING;
	SpinLockRelease(&pool->mutex);

	for (;;)
	{
		bool		leave;

		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		leave = !bg_pool_db_locked || bg_pool_must_leave(pool, idle_since);
		if (bg_pool_take(pool, job_id))
		{
			/* a job runs as any session would: DROP DATABASE then fails */
			bg_database_lock(false);
			RESUME_CANCEL_INTERRUPTS();
			return pool->idle[bg_pool_my_slot].segment;
		}
		/* (a claim that comes before we exit is refused by bg_pool_exit) */
		if (leave && bg_pool_set_leaving(pool))
		{
			bg_database_lock(false);
			RESUME_CANCEL_INTERRUPTS();
			return DSM_HANDLE_INVALID;
		}
		(void) WaitLatch(MyLatch,
						 WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 BG_IDLE_CHECK_MS, bg_wait_event_idle());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * Mark this worker as leaving, so that the others no longer count it among
 * the idle; false if a launcher claimed it meanwhile.
 */
static bool
bg_pool_set_leaving(BgPool *pool)
{
	BgIdleWorker *w = &pool->idle[bg_pool_my_slot];
	bool		leaving = false;

	SpinLockAcquire(&pool->mutex);
	if (w->state == BG_IDLE_WAITING || w->state == BG_IDLE_ENDING ||
		w->state == BG_IDLE_LEAVING)
	{
		w->state = BG_IDLE_LEAVING;
		leaving = true;
	}
	SpinLockRelease(&pool->mutex);
	return leaving;
}

/* If a launcher claimed this worker, take the job: true. */
static bool
bg_pool_take(BgPool *pool, int64 *job_id)
{
	BgIdleWorker *w = &pool->idle[bg_pool_my_slot];
	bool		taken = false;

	SpinLockAcquire(&pool->mutex);
	if (w->state == BG_IDLE_CLAIMED)
	{
		w->state = BG_IDLE_TAKEN;
		*job_id = w->job_id;
		taken = true;
	}
	SpinLockRelease(&pool->mutex);
	/* a cancel that came after the last job is none of the next one's */
	if (taken)
		QueryCancelPending = false;
	return taken;
}

/*
 * Take an entry of the pool for this worker, ENDING.  False if none is
 * free.  Past bg_fdw.max_idle_workers, the worker idle the longest is woken
 * to leave (bg_pool_must_leave): the newest stay.
 */
static bool
bg_pool_list(BgPool *pool, Oid connected_as, Oid job_role, uint64 libraries)
{
	int			listed = 0;
	int			slot = -1;
	int			oldest = -1;
	PGPROC	   *wake = NULL;
	int			i;

	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		BgIdleWorker *w = &pool->idle[i];

		if (w->state == BG_IDLE_FREE)
		{
			if (slot < 0)
				slot = i;
			continue;
		}
		if (w->state != BG_IDLE_WAITING && w->state != BG_IDLE_ENDING)
			continue;
		listed++;
		if (w->state == BG_IDLE_WAITING &&
			(oldest < 0 || w->idle_since < pool->idle[oldest].idle_since))
			oldest = i;
	}
	if (slot >= 0)
	{
		BgIdleWorker *w = &pool->idle[slot];

		memset(w, 0, sizeof(BgIdleWorker));
		w->state = BG_IDLE_ENDING;
		w->pid = MyProcPid;
		w->proc = MyProc;
		w->database_id = MyDatabaseId;
		w->connected_as = connected_as;
		w->job_role = job_role;
		w->libraries = libraries;
		w->idle_since = GetCurrentTimestamp();
		bg_pool_my_slot = slot;
		if (listed >= bg_max_idle_workers && oldest >= 0)
			wake = pool->idle[oldest].proc;
	}
	SpinLockRelease(&pool->mutex);
	if (wake != NULL)
		SetLatch(&wake->procLatch);
	return bg_pool_my_slot >= 0;
}

/*
 * Should this idle worker leave: shut down, its time up, as many workers
 * idle for a shorter time as bg_fdw.max_idle_workers now allows, someone
 * waiting to have its database alone, or worker slots short for parallel
 * query?  In the last case the longest idle leave first, as many as the
 * slots missing.
 */
static bool
bg_pool_must_leave(BgPool *pool, TimestampTz idle_since)
{
	BgIdleWorker *me = &pool->idle[bg_pool_my_slot];
	int			newer = 0;
	int			older = 0;
	int			leaving = 0;
	int			i;

	if (ShutdownRequestPending || me->state == BG_IDLE_LEAVING ||
		TimestampDifferenceExceeds(idle_since, GetCurrentTimestamp(),
								   bg_worker_idle_timeout))
		return true;
	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		BgIdleWorker *w = &pool->idle[i];

		if (w->state == BG_IDLE_LEAVING)
			leaving++;
		if (i == bg_pool_my_slot ||
			(w->state != BG_IDLE_WAITING && w->state != BG_IDLE_ENDING))
			continue;
		if (w->idle_since < me->idle_since ||
			(w->idle_since == me->idle_since && i < bg_pool_my_slot))
			older++;
		else
			newer++;
	}
	SpinLockRelease(&pool->mutex);
	if (newer >= bg_max_idle_workers ||
		(bg_pool_db_locked && bg_database_lock_wanted()))
		return true;
	return older < bg_pool_slots_missing(leaving);
}

/*
 * Background workers running now of type "type" (with "same"), or of any
 * other type.  Counted over the processes, not the backends' status, whose
 * snapshot belongs to the caller's transaction.
 */
int
bg_count_workers(const char *type, bool same)
{
	int			n = 0;
	uint32		i;

	for (i = 0; i < ProcGlobal->allProcCount; i++)
	{
		pid_t		pid = *(volatile pid_t *) &ProcGlobal->allProcs[i].pid;
		const char *t;

		if (pid == 0)
			continue;
		t = GetBackgroundWorkerTypeByPid(pid);
		if (t != NULL && (strcmp(t, type) == 0) == same)
			n++;
	}
	return n;
}

/*
 * How many worker slots parallel query would miss: max_parallel_workers
 * less those free when every worker but the parallel ones and those
 * leaving ("leaving", still running) keeps its slot.  Counted over the
 * processes, not the backends' status, whose snapshot belongs to the
 * caller's transaction.  A slot whose worker has exited but not yet been
 * reaped counts as free here; the next look sees the difference.
 */
static int
bg_pool_slots_missing(int leaving)
{
	int			used = bg_count_workers("parallel worker", false);

	return max_parallel_workers - (max_worker_processes - (used - leaving));
}

/*
 * The worker is attached to the job it took: its entry is nobody's now.
 * Wake the launcher, which waits for that.
 */
void
bg_pool_taken(BgJobShared *shared)
{
	BgPool	   *pool = bg_pool();

	if (bg_pool_my_slot < 0)
		return;
	SpinLockAcquire(&pool->mutex);
	pool->idle[bg_pool_my_slot].state = BG_IDLE_FREE;
	SpinLockRelease(&pool->mutex);
	bg_pool_my_slot = -1;
	SetLatch(&shared->launcher_proc->procLatch);
}

/*
 * The segment handed over is gone (the launcher gave up) or is not the
 * job's: forget the claim and wait again.
 */
void
bg_pool_not_taken(void)
{
	BgPool	   *pool = bg_pool();

	if (bg_pool_my_slot < 0)
		return;
	SpinLockAcquire(&pool->mutex);
	pool->idle[bg_pool_my_slot].state = BG_IDLE_FREE;
	SpinLockRelease(&pool->mutex);
	bg_pool_my_slot = -1;
}

/*
 * before_shmem_exit callback of a worker that was idle once: leave the
 * pool; a launcher whose job we had not attached to yet starts a worker.
 */
static void
bg_pool_exit(int code, Datum arg)
{
	BgPool	   *pool = bg_pool();
	PGPROC	   *claimer = NULL;
	BgIdleWorker *w;

	/*
	 * Nothing releases a session lock at exit outside a transaction abort:
	 * left, it would pass to the next process with our PGPROC.
	 */
	bg_database_lock(false);
	if (bg_pool_my_slot < 0 || pool == NULL)
		return;
	w = &pool->idle[bg_pool_my_slot];
	SpinLockAcquire(&pool->mutex);
	if (w->state == BG_IDLE_CLAIMED || w->state == BG_IDLE_TAKEN)
		claimer = w->claimer;
	w->state = BG_IDLE_FREE;
	SpinLockRelease(&pool->mutex);
	bg_pool_my_slot = -1;
	if (claimer != NULL)
		SetLatch(&claimer->procLatch);
	/* its slot may go to a queued job */
	if (bg_queue_waiting() > 0)
		bg_supervisor_wake();
}

/*
 * Take (or give back) the idle worker's session lock on its database.  The
 * commands that need a database to themselves lock it first, so they wait
 * for this lock, and the worker leaves when it sees them waiting.
 */
static bool
bg_database_lock(bool acquire)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	if (!acquire)
	{
		if (bg_pool_db_locked)
			LockRelease(&tag, RowExclusiveLock, true);
		bg_pool_db_locked = false;
		return true;
	}
	bg_pool_db_locked =
		LockAcquire(&tag, RowExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
	return bg_pool_db_locked;
}

static bool
bg_database_lock_wanted(void)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, InvalidOid, DatabaseRelationId, MyDatabaseId, 0);
	return LockHasWaiters(&tag, RowExclusiveLock, true);
}

/* ----------------------------------------------------------------
 *		What the pool holds, for bg_supervisor()
 * ----------------------------------------------------------------
 */

void
bg_pool_counts(int *idle, int64 *handed_over)
{
	BgPool	   *pool = bg_pool();
	int			i;

	*idle = 0;
	*handed_over = 0;
	if (pool == NULL)
		return;
	SpinLockAcquire(&pool->mutex);
	for (i = 0; i < pool->nslots; i++)
	{
		if (pool->idle[i].state == BG_IDLE_WAITING)
			(*idle)++;
	}
	SpinLockRelease(&pool->mutex);
	*handed_over = (int64) pg_atomic_read_u64(&pool->handed_over);
}

/* What an idle worker waits under: "BgFdwIdle" */
static uint32
bg_wait_event_idle(void)
{
	return bg_wait_event_cached("BgFdwIdle", &bg_wait_event_idle_id);
}
