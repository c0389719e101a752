/*-------------------------------------------------------------------------
 *
 * queue.c
 *		  Jobs that wait for a worker slot: a launch that finds none free (or
 *		  bg_fdw.max_jobs reached) is queued, and bg_launch returns at once.
 *
 * The queue lives beside the supervisor's state (supervisor.c) and needs a
 * supervisor that is always there to start its jobs as slots free up: it
 * exists where bg_fdw is preloaded.  A queued job holds no DSM segment: what
 * its segment would hold (the launcher's half of BgJobShared, the SQL, the
 * settings, the libraries, and the columns bg_launch described) is copied
 * into a DSA area of bg_fdw's own, within bg_fdw.max_queued_size, and the
 * queue's entries are bounded by bg_fdw.max_queued_jobs and, for each role,
 * bg_fdw.max_queued_jobs_per_role.
 *
 * An entry's life, under the queue's mutex:
 *
 *		launcher:   WAITING, with a name from the pool's counter (pool.c)
 *		supervisor: STARTING, once it registered a worker for it
 *		worker:     sets worker_pid, lays out the job's segment from the
 *		            entry, lists the job in the registry, then FREE
 *
 * A queued job is read like a job of another session: from the file that
 * keeps its result (so only jobs that keep theirs are queued), following it
 * as it grows.  Until its worker has listed it in the registry, readers and
 * waiters find it here, and sleep on the queue's condition variable.  A
 * queued job cancelled is marked so; the worker the supervisor starts for it
 * in its turn records it as cancelled without running anything.  A queued
 * job lives in shared memory, which a restart clears: a record of it in the
 * data directory lets the sweep after the restart list it as cancelled.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/queue.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/condition_variable.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/procarray.h"
#include "storage/shm_toc.h"
#include "storage/spin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/dsa.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

/* Entries of the queue: the most bg_fdw.max_queued_jobs may ask for */
#define BG_QUEUE_SLOTS		1024

/*
 * Names of queued jobs never reach the registry before they run, and a
 * restart drops the queue: so that none is given again after a restart,
 * the names handed out are reserved ahead in blocks, the end of the block
 * kept in this file of the data directory, made durable before a name of
 * the block is handed out.
 */
#define BG_NAMES_FILE		"bg_fdw.names"
#define BG_NAMES_BLOCK		1000

/*
 * A queued job's outcome must be known after a restart too: each job, once
 * its bg_launch has returned, has a record in this directory of the data
 * directory (a file named after its identifier), removed when it leaves the
 * queue, before its entry is freed.  The sweep of each database after a
 * restart lists the jobs whose records remain as cancelled, with the reason
 * (bg_queue_sweep_records).
 */
#define BG_QUEUE_DIR		"bg_fdw.queue"
#define BG_QUEUE_RECORD_MAGIC	0x42475131	/* "BGQ1" */

typedef struct BgQueueRecord
{
	uint32		magic;
	Oid			database_id;
	Oid			role;
	int32		name;
	int64		job_id;
	TimestampTz launched_at;
	char		label[BG_LABEL_LEN];
	char		notify[NAMEDATALEN];
	uint32		sql_len;		/* the SQL follows, unterminated */
} BgQueueRecord;

typedef enum BgQueuedState
{
	BG_QUEUED_FREE,				/* the entry is nobody's */
	BG_QUEUED_WAITING,			/* the job waits for a slot */
	BG_QUEUED_STARTING			/* a worker was registered for it */
} BgQueuedState;

/* What a queued job's segment will hold, in the DSA area */
typedef struct BgQueuedData
{
	BgJobShared shared;			/* the launcher's half */
	int			queue_size;
	Size		sql_len;		/* each with its terminator, where it has one */
	Size		guc_len;
	Size		library_len;
	Size		desc_len;		/* 0: bg_launch described no columns */
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* sql, guc, libraries, desc */
} BgQueuedData;

typedef struct BgQueued
{
	BgQueuedState state;
	int			name;
	int64		job_id;
	uint64		seq;			/* launch order */
	Oid			database_id;
	Oid			role;			/* the role the job runs as */
	TimestampTz launched_at;
	bool		held;			/* its bg_launch has not returned yet: not
								 * started, and dropped if its launcher
								 * fails or exits first */
	pid_t		launcher_pid;
	bool		cancelled;		/* bg_cancel asked: it runs nothing */
	bool		deferred;		/* its role ran bg_fdw.max_jobs_per_role
								 * jobs when its worker looked: not started
								 * again before a job of the role ends in
								 * its database (bg_queue_job_ended) */
	TimestampTz cancelled_at;
	uint32		attempt;		/* workers registered for it so far: only
								 * the latest may claim it */
	pid_t		worker_pid;		/* the worker the supervisor started, once
								 * it has claimed the entry */
	dsa_pointer data;			/* BgQueuedData */
	Size		size;
} BgQueued;

/* Whose job ended, for bg_queue_defer; InvalidOid: the settings were reloaded */
typedef struct BgQueueEnd
{
	Oid			database_id;
	Oid			role;
} BgQueueEnd;

#define BG_QUEUE_ENDS		64

typedef struct BgQueue
{
	slock_t		mutex;
	uint64		next_seq;
	int			waiting;		/* entries WAITING, but deferred and held
								 * ones */
	int			deferred;		/* deferred ones */
	uint64		ended;			/* jobs ended (bg_queue_job_ended) */
	BgQueueEnd	ends[BG_QUEUE_ENDS];	/* the latest: ended n at n % size */
	Size		bytes;			/* of all entries' data */
	int64		started;		/* jobs started from the queue */
	int			tranche_id;
	LWLock		area_lock;		/* creating the area */
	LWLock		names_lock;		/* reserving names (BG_NAMES_FILE) */
	bool		names_loaded;	/* names_floor was read from the file */
	int			names_floor;	/* names below it may have been handed out
								 * before the server started */
	int			names_end;		/* names below it are reserved */
	bool		area_made;		/* the first queued job made the area */
	dsa_handle	area;
	ConditionVariable cv;		/* an entry left the queue or was cancelled */
	BgQueued	jobs[BG_QUEUE_SLOTS];
} BgQueue;

int			bg_max_jobs = -1;
int			bg_max_queued_jobs = 256;
int			bg_max_queued_jobs_per_role = 64;
int			bg_max_queued_size = 64 * 1024;
int			bg_max_queued_size_per_role = 16 * 1024;

/* This process's mapping of the area */
static dsa_area *bg_queue_dsa = NULL;

/* The entry this worker was started for, until its job is listed */
static int	bg_queue_my_slot = -1;
static int64 bg_queue_my_job = 0;

/* Jobs this session queued, and whether it detached them */
typedef struct BgQueuedLaunch
{
	int			name;
	int64		job_id;
	Oid			role;			/* the role the job runs as */
	bool		detached;		/* by a committed bg_detach */
	SubTransactionId detach_subid;	/* bg_detach'ed in this (sub)transaction */
} BgQueuedLaunch;
static List *bg_queued_launches = NIL;

static uint32 bg_wait_event_queued_id = 0;

static BgQueue *bg_queue(void);
static dsa_area *bg_queue_area(BgQueue *q);
static int	bg_queue_find_slot(BgQueue *q, int name, int64 job_id);
static int	bg_queue_reserve(BgQueue *q, Oid role, Size size);
static int	bg_queue_take_name(BgQueue *q);
static int	bg_queue_read_names(void);
static void bg_queue_write_names(int32 end);
static dsa_pointer bg_queue_copy(BgQueue *q, shm_toc *toc, int queue_size,
								 StringInfo descbuf, Size size, int name);
static void bg_queue_exit_callback(void);
static void bg_queue_launcher_exit(int code, Datum arg);
static void bg_queue_read_data(BgQueue *q, int slot, BgQueuedInfo *info,
							   bool desc);
static bool bg_queue_cancelled(BgQueue *q, int slot);
static void bg_queue_release(BgQueue *q, int slot, bool *cancelled);
static void bg_queue_reap(BgQueue *q);
static void bg_queue_drop_orphans(BgQueue *q);
static bool bg_process_alive(pid_t pid);
static void bg_queue_record_path(char *path, int64 job_id);
static void bg_queue_unrecord(int64 job_id);
static bool bg_queue_has_job(int64 job_id);
static char *bg_queue_read_record(const char *path, BgQueueRecord *rec);
static bool bg_queue_next_record(DIR *dir, char *path, BgQueueRecord *rec,
								 char **sql);
static BgQueued *bg_queue_mine(BgQueue *q);
static void bg_queue_undefer(BgQueue *q, BgQueued *e);
static uint32 bg_wait_event_queued(void);

Size
bg_queue_size(void)
{
	return sizeof(BgQueue);
}

void
bg_queue_init(void *ptr)
{
	BgQueue    *q = (BgQueue *) ptr;

	memset(q, 0, sizeof(BgQueue));
	SpinLockInit(&q->mutex);
	q->tranche_id = LWLockNewTrancheId();
	LWLockInitialize(&q->area_lock, q->tranche_id);
	LWLockInitialize(&q->names_lock, q->tranche_id);
	ConditionVariableInit(&q->cv);
}

/* The queue, or NULL where jobs are not queued (bg_fdw not preloaded) */
static BgQueue *
bg_queue(void)
{
	return (BgQueue *) bg_supervisor_queue();
}

/*
 * The area that holds queued jobs' data, created by the first process to
 * queue one, and pinned: it outlives every process that maps it.  Map it
 * before taking area_lock: this takes it too.
 */
static dsa_area *
bg_queue_area(BgQueue *q)
{
	MemoryContext oldcxt;

	if (bg_queue_dsa != NULL)
		return bg_queue_dsa;
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	LWLockRegisterTranche(q->tranche_id, "bg_fdw queue");
	LWLockAcquire(&q->area_lock, LW_EXCLUSIVE);
	if (!q->area_made)
	{
		bg_queue_dsa = dsa_create(q->tranche_id);
		dsa_pin(bg_queue_dsa);
		q->area = dsa_get_handle(bg_queue_dsa);
		q->area_made = true;
	}
	else
		bg_queue_dsa = dsa_attach(q->area);
	dsa_pin_mapping(bg_queue_dsa);
	LWLockRelease(&q->area_lock);
	MemoryContextSwitchTo(oldcxt);
	return bg_queue_dsa;
}

/* Entries WAITING: cheap, for those who would wake the supervisor */
int
bg_queue_waiting(void)
{
	BgQueue    *q = bg_queue();
	int			waiting;

	if (q == NULL)
		return 0;
	SpinLockAcquire(&q->mutex);
	waiting = q->waiting;
	SpinLockRelease(&q->mutex);
	return waiting;
}

/* ----------------------------------------------------------------
 *		The launcher's side
 * ----------------------------------------------------------------
 */

/*
 * May this launch be queued?  Where the queue exists and is not turned off,
 * for a job that keeps its result (a queued job is read from its kept
 * file), launched by a session, not by a job, while a supervisor has
 * started to serve the queue.
 */
bool
bg_queue_available(BgJobShared *shared)
{
	return bg_queue_possible(shared->keep, shared->stream,
							 shared->registry_relid);
}

/* bg_queue_available, before the job's segment is laid out */
bool
bg_queue_possible(bool keep, bool stream, Oid registry)
{
	return bg_queue() != NULL && bg_max_queued_jobs > 0 && keep && !stream &&
		!bg_queue_in_job() && bg_supervisor_started() &&
		bg_registry_keeps(registry) && bg_registry_shows_worker(registry);
}

/*
 * Is this a job launching a job?  Its launch is not queued: a job that
 * waits for the jobs it launches, holding its slot, would wait for ever
 * once every slot is held so.  It fails for want of a slot, as in 1.0.
 */
bool
bg_queue_in_job(void)
{
	return bg_worker_job() != NULL;
}

/*
 * Queue the job laid out in "seg" (which the caller then detaches): copy
 * what its segment holds, and the columns bg_launch described, into the
 * area.  Returns the job's name; the job is held until bg_queue_launched,
 * then the supervisor starts it in its turn.
 */
int
bg_queue_push(dsm_segment *seg, int queue_size, TupleDesc desc)
{
	BgQueue    *q = bg_queue();
	shm_toc    *toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	BgJobShared *shared = shm_toc_lookup(toc, BG_KEY_SHARED, false);
	StringInfoData descbuf;
	Size		size;
	dsa_pointer dp = InvalidDsaPointer;
	int			slot;
	int			name;

	initStringInfo(&descbuf);
	if (desc != NULL)
		bg_desc_serialize(&descbuf, desc);
	size = offsetof(BgQueuedData, data) +
		strlen(shm_toc_lookup(toc, BG_KEY_SQL, false)) + 1 +
		EstimateGUCStateSpace() + EstimateLibraryStateSpace() + descbuf.len;
	/* what may fail comes before anything is taken, or undoes it */
	name = bg_queue_take_name(q);
	(void) bg_queue_area(q);
	bg_queue_exit_callback();
	slot = bg_queue_reserve(q, shared->current_user_id, size);
	PG_TRY();
	{
		dp = bg_queue_copy(q, toc, queue_size, &descbuf, size, name);
	}
	PG_CATCH();
	{
		bg_queue_release(q, slot, NULL);
		PG_RE_THROW();
	}
	PG_END_TRY();
	pfree(descbuf.data);

	SpinLockAcquire(&q->mutex);
	{
		BgQueued   *e = &q->jobs[slot];

		e->name = name;
		e->job_id = shared->job_id;
		e->seq = q->next_seq++;
		e->database_id = shared->database_id;
		e->launched_at = shared->launched_at;
		e->data = dp;
	}
	SpinLockRelease(&q->mutex);
	return name;
}

/*
 * A name for a queued job, from the pool's counter, never one handed out
 * before a restart: past the names the file reserved then, and within those
 * it reserves now.
 */
static int
bg_queue_take_name(BgQueue *q)
{
	int			floor;
	int			name;

	(void) bg_queue_area(q);	/* (registers the tranche's name) */
	LWLockAcquire(&q->names_lock, LW_EXCLUSIVE);
	if (!q->names_loaded)
	{
		q->names_floor = q->names_end = bg_queue_read_names();
		q->names_loaded = true;
	}
	floor = q->names_floor;
	LWLockRelease(&q->names_lock);

	name = bg_pool_take_name(floor);
	LWLockAcquire(&q->names_lock, LW_EXCLUSIVE);
	if (name >= q->names_end)
	{
		int			end = name >= PG_INT32_MAX - BG_NAMES_BLOCK ?
			PG_INT32_MAX : name + BG_NAMES_BLOCK;

		bg_queue_write_names(end);
		q->names_end = end;
	}
	LWLockRelease(&q->names_lock);
	return name;
}

/* The end of the names reserved before, as the file has it, or 0 */
static int
bg_queue_read_names(void)
{
	int			fd = OpenTransientFile(BG_NAMES_FILE, O_RDONLY | PG_BINARY);
	int32		end = 0;

	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not open file \"%s\": %m", BG_NAMES_FILE)));
		return 0;
	}
	if (read(fd, &end, sizeof(end)) != sizeof(end))
		end = 0;				/* torn: written by no complete reservation */
	CloseTransientFile(fd);
	return end;
}

/* Reserve the names below "end", durably, before any is handed out */
static void
bg_queue_write_names(int32 end)
{
	char		tmp[MAXPGPATH];
	int			fd;

	snprintf(tmp, sizeof(tmp), "%s.tmp", BG_NAMES_FILE);
	fd = OpenTransientFile(tmp, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", tmp)));
	errno = 0;
	if (write(fd, &end, sizeof(end)) != sizeof(end))
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", tmp)));
	}
	if (pg_fsync(fd) != 0)
		ereport(data_sync_elevel(ERROR),
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", tmp)));
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", tmp)));
	(void) durable_rename(tmp, BG_NAMES_FILE, ERROR);
}

/*
 * Copy what the job's segment holds into the area: its data for the
 * worker, named "name".
 */
static dsa_pointer
bg_queue_copy(BgQueue *q, shm_toc *toc, int queue_size, StringInfo descbuf,
			  Size size, int name)
{
	const char *sql = shm_toc_lookup(toc, BG_KEY_SQL, false);
	dsa_pointer dp;
	BgQueuedData *data;
	char	   *p;

	dp = dsa_allocate_extended(bg_queue_area(q), size, DSA_ALLOC_NO_OOM);
	if (!DsaPointerIsValid(dp))
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of shared memory for queued background jobs")));
	data = dsa_get_address(bg_queue_area(q), dp);
	memcpy(&data->shared, shm_toc_lookup(toc, BG_KEY_SHARED, false),
		   sizeof(BgJobShared));
	data->shared.name = name;
	data->queue_size = queue_size;
	data->sql_len = strlen(sql) + 1;
	data->guc_len = EstimateGUCStateSpace();
	data->library_len = EstimateLibraryStateSpace();
	data->desc_len = descbuf->len;
	p = data->data;
	memcpy(p, sql, data->sql_len);
	p += data->sql_len;
	memcpy(p, shm_toc_lookup(toc, BG_KEY_GUC, false), data->guc_len);
	p += data->guc_len;
	memcpy(p, shm_toc_lookup(toc, BG_KEY_LIBRARIES, false), data->library_len);
	p += data->library_len;
	memcpy(p, descbuf->data, descbuf->len);
	return dp;
}

/*
 * bg_launch of a queued job succeeded: the job may start.  (Before, it had
 * its result table made, which may fail: bg_queue_drop then.)
 */
void
bg_queue_launched(int name, int64 job_id)
{
	BgQueue    *q = bg_queue();
	int			slot;
	Oid			role = GetUserId();	/* as the job's, at its launch */

	SpinLockAcquire(&q->mutex);
	slot = bg_queue_find_slot(q, name, job_id);
	if (slot >= 0 && q->jobs[slot].held)
	{
		q->jobs[slot].held = false;
		q->waiting++;
	}
	if (slot >= 0)
		role = q->jobs[slot].role;
	SpinLockRelease(&q->mutex);
	bg_queued_launch_remember(name, job_id, role);
	bg_supervisor_wake();
}

/* bg_launch of a queued job failed: nobody got its name, it goes */
void
bg_queue_drop(int name, int64 job_id)
{
	BgQueue    *q = bg_queue();
	int			slot;

	SpinLockAcquire(&q->mutex);
	slot = bg_queue_find_slot(q, name, job_id);
	SpinLockRelease(&q->mutex);
	if (slot >= 0)
		bg_queue_release(q, slot, NULL);
}

/*
 * The extension was dropped in this database (keep.c, at commit): its
 * queued jobs go with their registry, which nothing can read any more.
 * (Those already starting run, unlisted, as running jobs do.)
 */
void
bg_queue_drop_database(void)
{
	BgQueue    *q = bg_queue();
	int			i;

	if (q == NULL)
		return;
	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		bool		ours;

		SpinLockAcquire(&q->mutex);
		ours = q->jobs[i].state == BG_QUEUED_WAITING && !q->jobs[i].held &&
			q->jobs[i].database_id == MyDatabaseId;
		SpinLockRelease(&q->mutex);
		if (ours)
			bg_queue_release(q, i, NULL);
	}
}

/*
 * before_shmem_exit callback of a session that queued a job: one whose
 * bg_launch did not return (the session was terminated meanwhile) goes.
 */
static void
bg_queue_launcher_exit(int code, Datum arg)
{
	BgQueue    *q = bg_queue();
	int			i;

	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		bool		mine;

		SpinLockAcquire(&q->mutex);
		mine = q->jobs[i].state == BG_QUEUED_WAITING && q->jobs[i].held &&
			q->jobs[i].launcher_pid == MyProcPid;
		SpinLockRelease(&q->mutex);
		if (mine)
			bg_queue_release(q, i, NULL);
	}
}

static void
bg_queue_exit_callback(void)
{
	static bool registered = false;

	if (!registered)
		before_shmem_exit(bg_queue_launcher_exit, (Datum) 0);
	registered = true;
}

/*
 * Take an entry for a job of "role" whose data takes "size" bytes, within
 * the queue's caps: bg_fdw.max_queued_jobs entries and
 * bg_fdw.max_queued_size bytes in all, bg_fdw.max_queued_jobs_per_role
 * entries and bg_fdw.max_queued_size_per_role bytes of one role.  They are
 * checked and the entry and its bytes taken in one step, so that launches
 * at the same moment cannot pass them together.  The entry is held, listed
 * nowhere, until bg_queue_push fills it.
 */
static int
bg_queue_reserve(BgQueue *q, Oid role, Size size)
{
	int			total = 0;
	int			of_role = 0;
	Size		role_bytes = 0;
	Size		bytes;
	int			slot = -1;
	int			i;

	SpinLockAcquire(&q->mutex);
	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		if (q->jobs[i].state == BG_QUEUED_FREE)
		{
			if (slot < 0)
				slot = i;
			continue;
		}
		total++;
		if (q->jobs[i].role == role)
		{
			of_role++;
			role_bytes += q->jobs[i].size;
		}
	}
	bytes = q->bytes;
	if (total < bg_max_queued_jobs && of_role < bg_max_queued_jobs_per_role &&
		bytes + size <= (Size) bg_max_queued_size * 1024 &&
		role_bytes + size <= (Size) bg_max_queued_size_per_role * 1024 &&
		slot >= 0)
	{
		BgQueued   *e = &q->jobs[slot];

		memset(e, 0, sizeof(BgQueued));
		e->state = BG_QUEUED_WAITING;
		e->held = true;
		e->role = role;
		e->launcher_pid = MyProcPid;
		e->data = InvalidDsaPointer;
		e->size = size;
		q->bytes += size;
	}
	else
		slot = -1;
	SpinLockRelease(&q->mutex);
	if (slot >= 0)
		return slot;

	if (total >= bg_max_queued_jobs)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many queued background jobs"),
				 errdetail("The job could not start at once, and %d jobs wait to start; \"bg_fdw.max_queued_jobs\" is %d.",
						   total, bg_max_queued_jobs),
				 errhint("Wait for jobs to end, or ask a superuser to raise \"bg_fdw.max_queued_jobs\".")));
	if (of_role >= bg_max_queued_jobs_per_role)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many queued background jobs for role \"%s\"",
						GetUserNameFromId(role, false)),
				 errdetail("The job could not start at once, and the role has %d jobs waiting to start; \"bg_fdw.max_queued_jobs_per_role\" is %d.",
						   of_role, bg_max_queued_jobs_per_role),
				 errhint("Wait for jobs to end. A queued job cancelled with bg_cancel() counts until a worker slot frees to record its cancel.")));
	if (role_bytes + size > (Size) bg_max_queued_size_per_role * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("queued background jobs of role \"%s\" would exceed \"bg_fdw.max_queued_size_per_role\" (%d kB)",
						GetUserNameFromId(role, false),
						bg_max_queued_size_per_role),
				 errdetail("The job could not start at once; the role's queued jobs take %zu bytes, and this one %zu.",
						   role_bytes, size),
				 errhint("Wait for jobs to end, or launch a shorter job.")));
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("queued background jobs would exceed \"bg_fdw.max_queued_size\" (%d kB)",
					bg_max_queued_size),
			 errdetail("The job could not start at once; queued jobs take %zu bytes, and this one %zu.",
					   bytes, size),
			 errhint("Wait for jobs to end, or launch a shorter job.")));
	return -1;					/* keep compiler quiet */
}

/*
 * A free entry (name 0), or the entry of a job by name and, unless 0,
 * identifier.  Under the mutex.
 */
static int
bg_queue_find_slot(BgQueue *q, int name, int64 job_id)
{
	int			i;

	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		BgQueued   *e = &q->jobs[i];

		if (name == 0 ? e->state == BG_QUEUED_FREE :
			(e->state != BG_QUEUED_FREE && e->name == name &&
			 e->database_id == MyDatabaseId &&
			 (job_id == 0 || e->job_id == job_id)))
			return i;
	}
	return -1;
}

/* ----------------------------------------------------------------
 *		Other sessions: finding, waiting for, cancelling a queued job
 * ----------------------------------------------------------------
 */

/*
 * The queued job of this database with this name (and identifier, unless
 * 0), copied into *info; false if there is none.  Raises the permission
 * error for a caller without the privileges of the job's role.
 */
bool
bg_queue_find(int name, int64 job_id, BgQueuedInfo *info)
{
	BgQueue    *q = bg_queue();
	int			slot;

	if (q == NULL || name < BG_FIRST_JOB_NAME)
		return false;
	SpinLockAcquire(&q->mutex);
	slot = bg_queue_find_slot(q, name, job_id);
	if (slot >= 0)
	{
		BgQueued   *e = &q->jobs[slot];

		info->name = e->name;
		info->job_id = e->job_id;
		info->role = e->role;
		info->launched_at = e->launched_at;
		info->cancelled = e->cancelled;
		info->cancelled_at = e->cancelled_at;
		info->starting = (e->state == BG_QUEUED_STARTING);
	}
	SpinLockRelease(&q->mutex);
	if (slot < 0)
		return false;
	if (!has_privs_of_role(GetUserId(), info->role))
		bg_permission_denied(name, info->role);
	return true;
}

/* The error of a job cancelled while it was queued */
void
bg_queue_raise_cancelled(int name)
{
	ereport(ERROR,
			(errcode(ERRCODE_QUERY_CANCELED),
			 errmsg("canceling statement due to user request"),
			 errdetail("Background job %d was cancelled before it started.", name),
			 errcontext("background job %d", name)));
}

/*
 * Wait until the queued job has been listed in the registry (or cancelled):
 * its readers follow it from then on.  Returns at once if it is not queued.
 */
void
bg_queue_await_start(int name, int64 job_id)
{
	BgQueue    *q = bg_queue();
	BgQueuedInfo info;

	if (!bg_queue_find(name, job_id, &info))
		return;
	for (;;)
	{
		if (info.cancelled)
			bg_queue_raise_cancelled(name);
		ConditionVariableSleep(&q->cv, bg_wait_event_queued());
		if (!bg_queue_find(name, info.job_id, &info))
			break;
	}
	ConditionVariableCancelSleep();
}

/*
 * bg_cancel of a queued job: it will run nothing.  False if it is not
 * queued; the caller then finds it in the registry.
 */
bool
bg_queue_cancel(int name)
{
	BgQueue    *q = bg_queue();
	BgQueuedInfo info;
	int			slot;

	if (!bg_queue_find(name, 0, &info))
		return false;
	SpinLockAcquire(&q->mutex);
	slot = bg_queue_find_slot(q, name, info.job_id);
	if (slot >= 0 && !q->jobs[slot].cancelled)
	{
		q->jobs[slot].cancelled = true;
		q->jobs[slot].cancelled_at = GetCurrentTimestamp();
		/* its worker records the cancel, whatever its role runs */
		bg_queue_undefer(q, &q->jobs[slot]);
	}
	SpinLockRelease(&q->mutex);
	ConditionVariableBroadcast(&q->cv);
	if (slot >= 0)
		bg_supervisor_wake();
	return slot >= 0;
}

/*
 * Copy the SQL, label and (with "desc") the described columns of a waiting
 * job into *info.  Its data goes once its worker has laid out its segment:
 * it is read under the area's lock, which that takes exclusively.
 */
static void
bg_queue_read_data(BgQueue *q, int slot, BgQueuedInfo *info, bool desc)
{
	dsa_area   *area = bg_queue_area(q);
	dsa_pointer dp;

	LWLockAcquire(&q->area_lock, LW_SHARED);
	SpinLockAcquire(&q->mutex);
	dp = q->jobs[slot].job_id == info->job_id ? q->jobs[slot].data :
		InvalidDsaPointer;
	SpinLockRelease(&q->mutex);
	if (DsaPointerIsValid(dp))
	{
		BgQueuedData *data = dsa_get_address(area, dp);

		info->sql = pstrdup(data->data);
		info->label = data->shared.label[0] ? pstrdup(data->shared.label) : NULL;
		if (desc && data->desc_len > 0)
		{
			StringInfoData msg;

			initStringInfo(&msg);
			appendBinaryStringInfo(&msg, data->data + data->sql_len +
								   data->guc_len + data->library_len,
								   data->desc_len);
			info->desc_msg = msg.data;
			info->desc_len = msg.len;
		}
	}
	LWLockRelease(&q->area_lock);
}

/*
 * The queued jobs of this database, for bg_jobs and IMPORT FOREIGN SCHEMA:
 * a list of BgQueuedInfo, in launch order, with each job's SQL, label and
 * (with "desc") described columns for callers with the privileges of its
 * role, while it waits.
 */
List *
bg_queue_list(bool desc)
{
	BgQueue    *q = bg_queue();
	BgQueued   *copy;
	int		   *slots;
	List	   *result = NIL;
	int			n = 0;
	int			i;

	if (q == NULL)
		return NIL;
	copy = palloc(sizeof(BgQueued) * BG_QUEUE_SLOTS);
	slots = palloc(sizeof(int) * BG_QUEUE_SLOTS);
	SpinLockAcquire(&q->mutex);
	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		/* (a held job's launch has not returned, and may yet fail) */
		if (q->jobs[i].state != BG_QUEUED_FREE && !q->jobs[i].held &&
			q->jobs[i].database_id == MyDatabaseId)
		{
			slots[n] = i;
			copy[n++] = q->jobs[i];
		}
	}
	SpinLockRelease(&q->mutex);

	for (i = 0; i < n; i++)
	{
		BgQueuedInfo *info = palloc0(sizeof(BgQueuedInfo));
		ListCell   *lc;
		int			pos = 0;

		info->name = copy[i].name;
		info->job_id = copy[i].job_id;
		info->role = copy[i].role;
		info->launched_at = copy[i].launched_at;
		info->cancelled = copy[i].cancelled;
		info->cancelled_at = copy[i].cancelled_at;
		info->starting = copy[i].state == BG_QUEUED_STARTING;
		info->seq = copy[i].seq;
		if (has_privs_of_role(GetUserId(), info->role))
			bg_queue_read_data(q, slots[i], info, desc);
		foreach(lc, result)
		{
			if (((BgQueuedInfo *) lfirst(lc))->seq > info->seq)
				break;
			pos++;
		}
		result = list_insert_nth(result, pos, info);
	}
	pfree(copy);
	pfree(slots);
	return result;
}

/* ----------------------------------------------------------------
 *		The session's own queued jobs, for bg_detach
 * ----------------------------------------------------------------
 */

void
bg_queued_launch_remember(int name, int64 job_id, Oid role)
{
	MemoryContext oldcxt;
	BgQueuedLaunch *l;

	bg_jobs_register_callbacks();
	oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	l = palloc(sizeof(BgQueuedLaunch));
	l->name = name;
	l->job_id = job_id;
	l->role = role;
	l->detached = false;
	l->detach_subid = InvalidSubTransactionId;
	bg_queued_launches = lappend(bg_queued_launches, l);
	MemoryContextSwitchTo(oldcxt);
}

/* The newest job this session queued with this name, or NULL */
static BgQueuedLaunch *
bg_queued_launch_find(int name)
{
	int			i;

	for (i = list_length(bg_queued_launches) - 1; i >= 0; i--)
	{
		BgQueuedLaunch *l = list_nth(bg_queued_launches, i);

		if (l->name == name)
			return l;
	}
	return NULL;
}

/*
 * The identifier of the newest job this session queued with this name, or
 * 0; *detached says whether bg_detach let it go (in this transaction, or
 * one committed).
 */
int64
bg_queued_launch(int name, bool *detached)
{
	BgQueuedLaunch *l = bg_queued_launch_find(name);

	*detached = l != NULL &&
		(l->detached || l->detach_subid != InvalidSubTransactionId);
	return l != NULL ? l->job_id : 0;
}

/*
 * bg_detach of a job this session queued: for a caller with the privileges
 * of the job's role, as for any job; undone if the (sub)transaction aborts.
 */
void
bg_queued_launch_detach(int name)
{
	BgQueuedLaunch *l = bg_queued_launch_find(name);

	Assert(l != NULL);
	if (!has_privs_of_role(GetUserId(), l->role))
		bg_permission_denied(name, l->role);
	l->detach_subid = GetCurrentSubTransactionId();
}

/*
 * The transaction or subtransaction "from_subid" (and those below it) ends:
 * its bg_detach calls of queued jobs hold if it commits, and are forgotten
 * if it aborts.  (job.c's transaction callbacks call this.)
 */
void
bg_queued_launch_end_detaches(bool commit, SubTransactionId from_subid)
{
	ListCell   *lc;

	foreach(lc, bg_queued_launches)
	{
		BgQueuedLaunch *l = lfirst(lc);

		if (l->detach_subid == InvalidSubTransactionId ||
			l->detach_subid < from_subid)
			continue;
		l->detached |= commit;
		l->detach_subid = InvalidSubTransactionId;
	}
}

/* A committed subtransaction's bg_detach calls belong to its parent now */
void
bg_queued_launch_subcommit(SubTransactionId mySubid,
						   SubTransactionId parentSubid)
{
	ListCell   *lc;

	foreach(lc, bg_queued_launches)
	{
		BgQueuedLaunch *l = lfirst(lc);

		if (l->detach_subid == mySubid)
			l->detach_subid = parentSubid;
	}
}

/* Has the transaction detached a queued job?  (PREPARE refuses it.) */
bool
bg_queued_launch_detaching(void)
{
	ListCell   *lc;

	foreach(lc, bg_queued_launches)
	{
		if (((BgQueuedLaunch *) lfirst(lc))->detach_subid != InvalidSubTransactionId)
			return true;
	}
	return false;
}

/* ----------------------------------------------------------------
 *		The supervisor's side
 * ----------------------------------------------------------------
 */

/* A worker this supervisor registered for an entry */
typedef struct BgQueueStart
{
	int64		job_id;
	uint32		attempt;
	BackgroundWorkerHandle *handle;
} BgQueueStart;
static BgQueueStart *bg_queue_starts = NULL;

/* What the supervisor passes its worker in bgw_extra */
typedef struct BgQueueStartArg
{
	int64		job_id;
	uint32		attempt;
} BgQueueStartArg;

static int	bg_queue_next(BgQueue *q);
static bool bg_queue_set_starting(BgQueue *q, int slot, BgQueueStartArg *arg,
								  int *name);
static void bg_queue_set_waiting(BgQueue *q, int slot, BgQueueStartArg *arg);

/*
 * Start workers for waiting jobs, the oldest first, while slots are free
 * and bg_fdw.max_jobs allows; notice workers that ended before they listed
 * their job.  Returns true if a job still waits for a slot: the supervisor
 * then tries again soon.
 */
bool
bg_queue_start_jobs(void)
{
	BgQueue    *q = bg_queue();

	if (q == NULL)
		return false;
	if (bg_queue_starts == NULL)
		bg_queue_starts = MemoryContextAllocZero(TopMemoryContext,
												 sizeof(BgQueueStart) * BG_QUEUE_SLOTS);
	bg_queue_reap(q);
	bg_queue_drop_orphans(q);
	for (;;)
	{
		int			oldest = bg_queue_next(q);
		BgQueueStartArg arg;
		BackgroundWorker worker;
		BackgroundWorkerHandle *handle;
		int			name;

		if (oldest < 0)
			return false;
		/* a cancelled job is recorded by its worker, which runs nothing */
		if (bg_max_jobs >= 0 && bg_jobs_running() >= bg_max_jobs &&
			!bg_queue_cancelled(q, oldest))
			return true;
		/* STARTING first: the worker may look before we are back */
		if (!bg_queue_set_starting(q, oldest, &arg, &name))
			continue;

		bg_job_worker(&worker, "bg_queued_main", Int32GetDatum(oldest));
		snprintf(worker.bgw_name, BGW_MAXLEN, "bg_fdw queued job %d", name);
		memcpy(worker.bgw_extra, &arg, sizeof(arg));
		if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		{
			bg_queue_set_waiting(q, oldest, &arg);
			/* idle workers give their slots to queued jobs */
			bg_pool_make_room_for_queue();
			return true;
		}
		if (bg_queue_starts[oldest].handle != NULL)
			pfree(bg_queue_starts[oldest].handle);
		bg_queue_starts[oldest].job_id = arg.job_id;
		bg_queue_starts[oldest].attempt = arg.attempt;
		bg_queue_starts[oldest].handle = handle;
	}
}

/* What bg_queue_next reads of an entry */
typedef struct BgQueueLook
{
	bool		eligible;		/* WAITING, may be started now */
	bool		blocks;			/* its role's younger jobs wait behind it */
	uint64		seq;
	Oid			database_id;
	Oid			role;
} BgQueueLook;

/*
 * The waiting entry to start next, or -1: the oldest that is not held, nor
 * deferred (unless cancelled: its worker only records that).  Under
 * bg_fdw.max_jobs_per_role, one of a role's jobs starts only once its older
 * jobs there have started or been cancelled, so that they start in launch
 * order: not while an older one is deferred, or has a worker that has not
 * yet counted the role's jobs.
 */
static int
bg_queue_next(BgQueue *q)
{
	BgQueueLook *look = palloc(sizeof(BgQueueLook) * BG_QUEUE_SLOTS);
	bool		per_role = bg_max_jobs_per_role >= 0;
	int			i;

	SpinLockAcquire(&q->mutex);
	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		BgQueued   *e = &q->jobs[i];

		look[i].eligible = e->state == BG_QUEUED_WAITING && !e->held &&
			(!e->deferred || e->cancelled);
		look[i].blocks = per_role && !e->cancelled &&
			((e->state == BG_QUEUED_WAITING && e->deferred) ||
			 e->state == BG_QUEUED_STARTING);
		look[i].seq = e->seq;
		look[i].database_id = e->database_id;
		look[i].role = e->role;
	}
	SpinLockRelease(&q->mutex);

	for (;;)
	{
		int			oldest = -1;
		bool		blocked = false;

		for (i = 0; i < BG_QUEUE_SLOTS; i++)
		{
			if (look[i].eligible &&
				(oldest < 0 || look[i].seq < look[oldest].seq))
				oldest = i;
		}
		if (oldest < 0 || !per_role)
		{
			pfree(look);
			return oldest;
		}
		for (i = 0; i < BG_QUEUE_SLOTS && !blocked; i++)
			blocked = look[i].blocks && look[i].seq < look[oldest].seq &&
				look[i].database_id == look[oldest].database_id &&
				look[i].role == look[oldest].role;
		if (!blocked)
		{
			pfree(look);
			return oldest;
		}
		look[oldest].eligible = false;
	}
}

/*
 * The supervisor registers a worker for a WAITING entry: STARTING, with a
 * new attempt number, which *arg gets.  False if the entry changed
 * meanwhile.
 */
static bool
bg_queue_set_starting(BgQueue *q, int slot, BgQueueStartArg *arg, int *name)
{
	BgQueued   *e = &q->jobs[slot];
	bool		ok;

	SpinLockAcquire(&q->mutex);
	ok = e->state == BG_QUEUED_WAITING && !e->held;
	if (ok)
	{
		e->state = BG_QUEUED_STARTING;
		e->worker_pid = 0;
		e->attempt++;
		if (e->deferred)
			q->deferred--;
		else
			q->waiting--;
		e->deferred = false;
		arg->job_id = e->job_id;
		arg->attempt = e->attempt;
		*name = e->name;
	}
	SpinLockRelease(&q->mutex);
	return ok;
}

/*
 * The entry's worker could not be registered, or (a new supervisor) one
 * registered before is not known to have taken it: WAITING again, unless
 * it changed meanwhile.  (A late worker of that attempt finds it is not its
 * own any more.)
 */
static void
bg_queue_set_waiting(BgQueue *q, int slot, BgQueueStartArg *arg)
{
	BgQueued   *e = &q->jobs[slot];

	SpinLockAcquire(&q->mutex);
	if (e->state == BG_QUEUED_STARTING && e->job_id == arg->job_id &&
		e->attempt == arg->attempt && e->worker_pid == 0)
	{
		e->state = BG_QUEUED_WAITING;
		e->attempt++;
		q->waiting++;
	}
	SpinLockRelease(&q->mutex);
}

/* Has bg_cancel reached the entry? */
static bool
bg_queue_cancelled(BgQueue *q, int slot)
{
	bool		cancelled;

	SpinLockAcquire(&q->mutex);
	cancelled = q->jobs[slot].cancelled;
	SpinLockRelease(&q->mutex);
	return cancelled;
}

/*
 * Jobs running now, for bg_fdw.max_jobs: bg_fdw's workers at work, and
 * queued jobs whose worker was registered but has not taken them yet (it
 * takes one only once it is counted among the processes).
 */
int
bg_jobs_running(void)
{
	BgQueue    *q = bg_queue();
	int			starting = 0;
	int			i;

	if (q != NULL)
	{
		SpinLockAcquire(&q->mutex);
		for (i = 0; i < BG_QUEUE_SLOTS; i++)
			starting += (q->jobs[i].state == BG_QUEUED_STARTING &&
						 q->jobs[i].worker_pid == 0);
		SpinLockRelease(&q->mutex);
	}
	return bg_pool_running_jobs() + starting;
}

/*
 * The entry leaves the queue: FREE, its data and bytes given back, those
 * who wait for it woken.  *cancelled, if given, says whether bg_cancel
 * reached it first: read in the same step, so that a cancel either lands
 * before it leaves or finds it gone (and the job in the registry).
 */
static void
bg_queue_release(BgQueue *q, int slot, bool *cancelled)
{
	BgQueued   *e = &q->jobs[slot];
	dsa_area   *area = bg_queue_area(q);
	dsa_pointer dp;
	int64		job_id;

	/* its record goes first: a sweep takes one without an entry as stale */
	SpinLockAcquire(&q->mutex);
	job_id = e->job_id;
	SpinLockRelease(&q->mutex);
	bg_queue_unrecord(job_id);

	SpinLockAcquire(&q->mutex);
	if (cancelled)
		*cancelled = e->cancelled;
	if (e->state == BG_QUEUED_WAITING && !e->held)
	{
		if (e->deferred)
			q->deferred--;
		else
			q->waiting--;
	}
	e->state = BG_QUEUED_FREE;
	dp = e->data;
	e->data = InvalidDsaPointer;
	q->bytes -= e->size;
	e->size = 0;
	SpinLockRelease(&q->mutex);
	/* readers of the data hold the lock shared (bg_queue_read_data) */
	if (DsaPointerIsValid(dp))
	{
		LWLockAcquire(&q->area_lock, LW_EXCLUSIVE);
		dsa_free(area, dp);
		LWLockRelease(&q->area_lock);
	}
	ConditionVariableBroadcast(&q->cv);
}

/*
 * Entries STARTING whose worker ended before it listed the job.  One whose
 * worker never took it (it could not be started) waits for the next slot;
 * one whose worker took it and failed (its database or role was dropped
 * meanwhile) could record nothing, and the job is dropped with a message
 * in the server log.  An entry STARTING that this supervisor did not start
 * (its predecessor did, and exited) is looked at through its worker's PID.
 */
static void
bg_queue_reap(BgQueue *q)
{
	int			i;

	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		BgQueueStart *st = &bg_queue_starts[i];
		BgQueued	e;
		pid_t		pid;
		bool		ours;

		SpinLockAcquire(&q->mutex);
		e = q->jobs[i];
		SpinLockRelease(&q->mutex);
		ours = st->handle != NULL && e.state == BG_QUEUED_STARTING &&
			e.job_id == st->job_id && e.attempt == st->attempt;
		if (st->handle != NULL && !ours)
		{
			pfree(st->handle);
			st->handle = NULL;
		}
		if (e.state != BG_QUEUED_STARTING)
			continue;
		if (ours)
		{
			if (GetBackgroundWorkerPid(st->handle, &pid) != BGWH_STOPPED)
				continue;
			pfree(st->handle);
			st->handle = NULL;
		}
		else if (e.worker_pid != 0 && bg_process_alive(e.worker_pid))
			continue;
		if (e.worker_pid == 0)
		{
			BgQueueStartArg arg = {e.job_id, e.attempt};

			bg_queue_set_waiting(q, i, &arg);
			continue;
		}
		ereport(LOG,
				(errmsg("queued background job %d was dropped: its worker exited before it could list the job",
						e.name),
				 errhint("More details may be available in the server log.")));
		bg_queue_release(q, i, NULL);
	}
}

/*
 * Jobs whose launcher exited before its bg_launch returned, without its
 * exit callback (bg_queue_launcher_exit): nobody got their names, and they
 * go.
 */
static void
bg_queue_drop_orphans(BgQueue *q)
{
	int			i;

	for (i = 0; i < BG_QUEUE_SLOTS; i++)
	{
		pid_t		launcher = 0;

		SpinLockAcquire(&q->mutex);
		if (q->jobs[i].state == BG_QUEUED_WAITING && q->jobs[i].held)
			launcher = q->jobs[i].launcher_pid;
		SpinLockRelease(&q->mutex);
		if (launcher != 0 && BackendPidGetProc(launcher) == NULL)
			bg_queue_release(q, i, NULL);
	}
}

/*
 * Is a process of the server running with this PID?  Through the PGPROCs,
 * where a worker has one from its start: the backends' array lists it only
 * once it has connected, and an entry's worker claims it before.
 */
static bool
bg_process_alive(pid_t pid)
{
	uint32		i;

	for (i = 0; i < ProcGlobal->allProcCount; i++)
	{
		if (*(volatile pid_t *) &ProcGlobal->allProcs[i].pid == pid)
			return kill(pid, 0) == 0 || errno != ESRCH;
	}
	return false;
}

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/*
 * Wait until the postmaster has recorded this worker's PID in its slot.  It
 * does so just after the fork, but a loaded machine may run the child
 * first; until then bg_jobs_running, which counts the processes of
 * bg_fdw's workers, does not see this one, and counts it over its queue
 * entry instead: the entry must stay untaken, or bg_fdw.max_jobs would let
 * the supervisor start one job too many.
 */
static void
bg_queue_await_counted(void)
{
	long		nap_ms = 1;

	while (GetBackgroundWorkerTypeByPid(MyProcPid) == NULL)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap_ms, bg_wait_event_queued());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		nap_ms = Min(nap_ms * 2, 100);
	}
}

/*
 * In the worker the supervisor started for the job in entry "slot": take
 * the entry, copying the launcher's half of the job's shared state into
 * *shared.  False if the entry is not (any more) this attempt's.
 */
bool
bg_queue_claim(int slot, BgJobShared *shared)
{
	BgQueue    *q = bg_queue();
	BgQueueStartArg arg;
	dsa_pointer dp = InvalidDsaPointer;
	bool		ok;

	if (q == NULL || slot < 0 || slot >= BG_QUEUE_SLOTS)
		return false;
	memcpy(&arg, MyBgworkerEntry->bgw_extra, sizeof(arg));
	(void) bg_queue_area(q);
	bg_queue_await_counted();
	SpinLockAcquire(&q->mutex);
	ok = q->jobs[slot].state == BG_QUEUED_STARTING &&
		q->jobs[slot].job_id == arg.job_id &&
		q->jobs[slot].attempt == arg.attempt &&
		q->jobs[slot].worker_pid == 0;
	if (ok)
	{
		q->jobs[slot].worker_pid = MyProcPid;
		dp = q->jobs[slot].data;
	}
	SpinLockRelease(&q->mutex);
	if (!ok)
		return false;
	bg_queue_my_slot = slot;
	bg_queue_my_job = arg.job_id;
	/* (the entry's data stays until we free it) */
	memcpy(shared, dsa_get_address(bg_queue_area(q), dp), sizeof(BgJobShared));
	return true;
}

/*
 * Lay out the segment of the job this worker took (connected to its
 * database by now), as its launcher would have, with nobody at the
 * receiving end of its queues; the entry's data then goes.
 */
dsm_segment *
bg_queue_segment(void)
{
	BgQueue    *q = bg_queue();
	BgQueued   *e = bg_queue_mine(q);
	BgQueuedData *data;
	BgLaunchParts parts;
	dsm_segment *seg;
	dsa_pointer dp;

	/* (the entry's data stays until we free it) */
	SpinLockAcquire(&q->mutex);
	dp = e->data;
	SpinLockRelease(&q->mutex);
	data = dsa_get_address(bg_queue_area(q), dp);
	memcpy(&parts.shared, &data->shared, sizeof(BgJobShared));
	parts.sql = data->data;
	parts.sql_len = data->sql_len;
	parts.guc = data->data + data->sql_len;
	parts.guc_len = data->guc_len;
	parts.libraries = parts.guc + data->guc_len;
	parts.library_len = data->library_len;
	parts.queue_size = data->queue_size;
	seg = bg_segment_layout(&parts, false);

	/* its bytes count until the entry goes */
	LWLockAcquire(&q->area_lock, LW_EXCLUSIVE);
	SpinLockAcquire(&q->mutex);
	dp = e->data;
	e->data = InvalidDsaPointer;
	SpinLockRelease(&q->mutex);
	dsa_free(bg_queue_area(q), dp);
	LWLockRelease(&q->area_lock);
	return seg;
}

/*
 * The entry this worker claimed, still its own: a supervisor takes an entry
 * back only from a worker that has exited, so this cannot fail but by a
 * fault, which it reports rather than act on another job's entry.
 */
static BgQueued *
bg_queue_mine(BgQueue *q)
{
	BgQueued   *e = &q->jobs[bg_queue_my_slot];
	bool		mine;

	SpinLockAcquire(&q->mutex);
	mine = e->state == BG_QUEUED_STARTING && e->job_id == bg_queue_my_job &&
		e->worker_pid == MyProcPid;
	SpinLockRelease(&q->mutex);
	if (!mine)
		elog(ERROR, "queue entry %d of background job was taken from its worker",
			 bg_queue_my_slot);
	return e;
}

/* Is this worker's job the queued one it took?  (Not once started.) */
bool
bg_queue_holds(BgJobShared *shared)
{
	return bg_queue_my_slot >= 0 && shared->job_id == bg_queue_my_job;
}

/*
 * The job this worker took from the queue is listed in the registry: its
 * entry goes, and from now on it is found there.  True if it was cancelled
 * while queued: the worker then records it so, running nothing.
 */
bool
bg_queue_started(BgJobShared *shared)
{
	BgQueue    *q = bg_queue();
	bool		cancelled;
	bool		wake;

	if (bg_queue_my_slot < 0 || shared->job_id != bg_queue_my_job)
		return false;
	(void) bg_queue_mine(q);
	bg_queue_release(q, bg_queue_my_slot, &cancelled);
	SpinLockAcquire(&q->mutex);
	q->started++;
	wake = q->waiting > 0;
	SpinLockRelease(&q->mutex);
	bg_queue_my_slot = -1;
	bg_queue_my_job = 0;
	/* its role's next job may have waited behind it (bg_queue_next) */
	if (wake)
		bg_supervisor_wake();
	return cancelled;
}

/*
 * Jobs ended so far: a worker about to check its role's jobs against
 * bg_fdw.max_jobs_per_role reads it first, for bg_queue_defer.
 */
uint64
bg_queue_ended_count(void)
{
	BgQueue    *q = bg_queue();
	uint64		ended;

	if (q == NULL)
		return 0;
	SpinLockAcquire(&q->mutex);
	ended = q->ended;
	SpinLockRelease(&q->mutex);
	return ended;
}

/*
 * The job this worker took may not run yet: its role runs
 * bg_fdw.max_jobs_per_role jobs in its database.  It waits again, deferred:
 * not started before a job of the role ends there.  If one did since "seen"
 * (an ended count read before the role's jobs were counted), the count may
 * have missed it, and bg_queue_job_ended this entry: it is then tried again
 * at once instead.  (So too if more jobs ended than are remembered.)
 */
void
bg_queue_defer(uint64 seen)
{
	BgQueue    *q = bg_queue();
	BgQueued   *e = &q->jobs[bg_queue_my_slot];
	bool		missed;
	uint64		n;

	SpinLockAcquire(&q->mutex);
	missed = q->ended - seen > BG_QUEUE_ENDS;
	for (n = seen; n < q->ended && !missed; n++)
	{
		BgQueueEnd *end = &q->ends[n % BG_QUEUE_ENDS];

		/* (a reload, bg_queue_undefer_all, may have raised the limit) */
		missed = !OidIsValid(end->database_id) ||
			(end->database_id == e->database_id && end->role == e->role);
	}
	if (e->state == BG_QUEUED_STARTING && e->job_id == bg_queue_my_job &&
		e->worker_pid == MyProcPid)
	{
		e->state = BG_QUEUED_WAITING;
		e->worker_pid = 0;
		e->deferred = !missed;
		if (e->deferred)
			q->deferred++;
		else
			q->waiting++;
	}
	SpinLockRelease(&q->mutex);
	bg_queue_my_slot = -1;
	bg_queue_my_job = 0;
	bg_supervisor_wake();
}

/* A deferred entry may be started again.  Under the mutex. */
static void
bg_queue_undefer(BgQueue *q, BgQueued *e)
{
	if (e->state != BG_QUEUED_WAITING || !e->deferred)
		return;
	e->deferred = false;
	q->deferred--;
	if (!e->held)
		q->waiting++;
}

/*
 * A job's worker has ended it (its segment goes): a slot may be free for a
 * queued job, and the oldest job deferred for bg_fdw.max_jobs_per_role of
 * the same role and database may start.  Only that one: in launch order,
 * and without a worker started for each deferred job at each job's end.
 */
void
bg_queue_job_ended(Oid database_id, Oid role)
{
	BgQueue    *q = bg_queue();
	BgQueued   *oldest = NULL;
	bool		wake;
	int			i;

	if (q == NULL)
		return;
	SpinLockAcquire(&q->mutex);
	q->ends[q->ended % BG_QUEUE_ENDS].database_id = database_id;
	q->ends[q->ended % BG_QUEUE_ENDS].role = role;
	q->ended++;
	for (i = 0; q->deferred > 0 && i < BG_QUEUE_SLOTS; i++)
	{
		BgQueued   *e = &q->jobs[i];

		if (e->state == BG_QUEUED_WAITING && e->deferred &&
			e->database_id == database_id && e->role == role &&
			(oldest == NULL || e->seq < oldest->seq))
			oldest = e;
	}
	if (oldest != NULL)
		bg_queue_undefer(q, oldest);
	wake = q->waiting > 0;
	SpinLockRelease(&q->mutex);
	if (wake)
		bg_supervisor_wake();
}

/*
 * The settings were reloaded (the supervisor): bg_fdw.max_jobs_per_role may
 * have been raised, and every deferred job may be tried again.
 */
void
bg_queue_undefer_all(void)
{
	BgQueue    *q = bg_queue();
	int			i;

	if (q == NULL)
		return;
	SpinLockAcquire(&q->mutex);
	for (i = 0; q->deferred > 0 && i < BG_QUEUE_SLOTS; i++)
		bg_queue_undefer(q, &q->jobs[i]);
	/* and a worker counting with the old limit now does not defer its job */
	q->ends[q->ended % BG_QUEUE_ENDS].database_id = InvalidOid;
	q->ends[q->ended % BG_QUEUE_ENDS].role = InvalidOid;
	q->ended++;
	SpinLockRelease(&q->mutex);
}

/* For bg_supervisor(): jobs waiting, and started from the queue so far */
void
bg_queue_counts(int *queued, int64 *started, int64 *bytes)
{
	BgQueue    *q = bg_queue();
	int			i;

	*queued = 0;
	*started = 0;
	*bytes = 0;
	if (q == NULL)
		return;
	SpinLockAcquire(&q->mutex);
	for (i = 0; i < BG_QUEUE_SLOTS; i++)
		*queued += (q->jobs[i].state != BG_QUEUED_FREE);
	*started = q->started;
	*bytes = (int64) q->bytes;
	SpinLockRelease(&q->mutex);
}

/* ----------------------------------------------------------------
 *		Records of queued jobs, for after a restart
 * ----------------------------------------------------------------
 */

static void
bg_queue_record_path(char *path, int64 job_id)
{
	snprintf(path, MAXPGPATH, "%s/" INT64_FORMAT, BG_QUEUE_DIR, job_id);
}

/*
 * Write the record of a queued job whose bg_launch is about to return.  It
 * is not fsync'ed: it outlives a restart or a crash of the server, which
 * is what drops the queue, not one of the operating system (then the job
 * is forgotten, as it was never listed).
 */
void
bg_queue_record(int name, int64 job_id)
{
	BgQueue    *q = bg_queue();
	BgQueueRecord rec;
	StringInfoData buf;
	char		path[MAXPGPATH];
	dsa_pointer dp = InvalidDsaPointer;
	int			slot;
	int			fd;

	memset(&rec, 0, sizeof(rec));
	initStringInfo(&buf);
	LWLockAcquire(&q->area_lock, LW_SHARED);
	SpinLockAcquire(&q->mutex);
	slot = bg_queue_find_slot(q, name, job_id);
	if (slot >= 0)
		dp = q->jobs[slot].data;
	SpinLockRelease(&q->mutex);
	if (DsaPointerIsValid(dp))
	{
		BgQueuedData *data = dsa_get_address(bg_queue_area(q), dp);

		rec.magic = BG_QUEUE_RECORD_MAGIC;
		rec.database_id = data->shared.database_id;
		rec.role = data->shared.current_user_id;
		rec.name = name;
		rec.job_id = job_id;
		rec.launched_at = data->shared.launched_at;
		strlcpy(rec.label, data->shared.label, sizeof(rec.label));
		strlcpy(rec.notify, data->shared.notify, sizeof(rec.notify));
		rec.sql_len = strlen(data->data);
		appendBinaryStringInfo(&buf, (char *) &rec, sizeof(rec));
		appendBinaryStringInfo(&buf, data->data, rec.sql_len);
	}
	LWLockRelease(&q->area_lock);
	if (buf.len == 0)
		elog(ERROR, "queued background job %d has no entry", name);

	if (MakePGDirectory(BG_QUEUE_DIR) < 0 && errno != EEXIST)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", BG_QUEUE_DIR)));
	bg_queue_record_path(path, job_id);
	fd = OpenTransientFile(path, O_WRONLY | O_CREAT | O_TRUNC | PG_BINARY);
	if (fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", path)));
	errno = 0;
	if (write(fd, buf.data, buf.len) != buf.len)
	{
		if (errno == 0)
			errno = ENOSPC;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write file \"%s\": %m", path)));
	}
	if (CloseTransientFile(fd) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not close file \"%s\": %m", path)));
	pfree(buf.data);
}

/* The job left the queue: its record goes, if it has one */
static void
bg_queue_unrecord(int64 job_id)
{
	char		path[MAXPGPATH];

	if (job_id == 0)
		return;
	bg_queue_record_path(path, job_id);
	if (unlink(path) != 0 && errno != ENOENT)
		ereport(WARNING,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", path)));
}

/* Is a job with this identifier in the queue now? */
static bool
bg_queue_has_job(int64 job_id)
{
	BgQueue    *q = bg_queue();
	bool		found = false;
	int			i;

	if (q == NULL)
		return false;
	SpinLockAcquire(&q->mutex);
	for (i = 0; i < BG_QUEUE_SLOTS && !found; i++)
		found = q->jobs[i].state != BG_QUEUED_FREE && q->jobs[i].job_id == job_id;
	SpinLockRelease(&q->mutex);
	return found;
}

/*
 * Read a record into *rec; returns its SQL, or NULL if the file is gone
 * (its job left the queue meanwhile) or torn.
 */
static char *
bg_queue_read_record(const char *path, BgQueueRecord *rec)
{
	int			fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	char	   *sql = NULL;

	if (fd < 0)
	{
		if (errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not open file \"%s\": %m", path)));
		return NULL;
	}
	if (read(fd, rec, sizeof(*rec)) == sizeof(*rec) &&
		rec->magic == BG_QUEUE_RECORD_MAGIC && rec->sql_len < MaxAllocSize)
	{
		sql = palloc(rec->sql_len + 1);
		if (read(fd, sql, rec->sql_len) == rec->sql_len)
			sql[rec->sql_len] = '\0';
		else
		{
			pfree(sql);
			sql = NULL;
		}
		rec->label[sizeof(rec->label) - 1] = '\0';
		rec->notify[sizeof(rec->notify) - 1] = '\0';
	}
	CloseTransientFile(fd);
	return sql;
}

/*
 * The next record in "dir" of a job not in the queue now (one left from
 * before the server started): its path, and its SQL, or NULL if it is torn
 * (the operating system crashed).  False at the end of the directory.
 */
static bool
bg_queue_next_record(DIR *dir, char *path, BgQueueRecord *rec, char **sql)
{
	struct dirent *de;

	while ((de = ReadDir(dir, BG_QUEUE_DIR)) != NULL)
	{
		char	   *end;
		int64		job_id;

		errno = 0;
		job_id = strtoi64(de->d_name, &end, 10);
		if (errno != 0 || *end != '\0' || end == de->d_name ||
			bg_queue_has_job(job_id))
			continue;
		bg_queue_record_path(path, job_id);
		*sql = bg_queue_read_record(path, rec);
		/* (gone meanwhile: it was a job's that left the queue) */
		if (*sql == NULL && access(path, F_OK) != 0)
			continue;
		if (*sql != NULL && rec->job_id != job_id)
			*sql = NULL;
		return true;
	}
	return false;
}

/*
 * In the sweep of a database after the server started (supervisor.c): the
 * records of this database's jobs that were queued when the server stopped
 * (none in the queue now has its identifier) are listed in the registry as
 * cancelled, with the reason.  Returns the paths of the records done with,
 * to remove once that has committed.  A torn record is removed, with a
 * message in the server log.
 */
List *
bg_queue_sweep_records(void)
{
	DIR		   *dir = AllocateDir(BG_QUEUE_DIR);
	List	   *done = NIL;
	char		path[MAXPGPATH];
	BgQueueRecord rec;
	char	   *sql;

	if (dir == NULL && errno == ENOENT)
		return NIL;
	while (bg_queue_next_record(dir, path, &rec, &sql))
	{
		if (sql == NULL)
			ereport(LOG,
					(errmsg("removing torn record \"%s\" of a queued background job", path)));
		else if (rec.database_id != MyDatabaseId)
			continue;
		else
			bg_registry_record_unstarted(rec.job_id, rec.name, rec.role,
										 rec.launched_at, sql, rec.label,
										 rec.notify);
		done = lappend(done, pstrdup(path));
	}
	FreeDir(dir);
	return done;
}

/*
 * The supervisor, once every database is swept: the records of databases
 * that were not (they were dropped) go, but those of jobs queued now.
 */
void
bg_queue_forget_records(List *databases)
{
	DIR		   *dir = AllocateDir(BG_QUEUE_DIR);
	char		path[MAXPGPATH];
	BgQueueRecord rec;
	char	   *sql;

	if (dir == NULL && errno == ENOENT)
		return;
	while (bg_queue_next_record(dir, path, &rec, &sql))
	{
		if (sql != NULL && !list_member_oid(databases, rec.database_id) &&
			unlink(path) != 0 && errno != ENOENT)
			ereport(WARNING,
					(errcode_for_file_access(),
					 errmsg("could not remove file \"%s\": %m", path)));
	}
	FreeDir(dir);
}

/* What a reader of a queued job waits under: "BgFdwQueued" */
static uint32
bg_wait_event_queued(void)
{
	return bg_wait_event_cached("BgFdwQueued", &bg_wait_event_queued_id);
}
