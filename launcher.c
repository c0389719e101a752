/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		  Launching a background job: bg_launch, in the launching session.
 *
 * A job is one dynamic background worker and one DSM segment.  bg_launch
 * parses the job's SQL and describes its result without running it, lays
 * out the segment, starts the worker, creates the result table and, once
 * the worker has listed the job in the registry, hands the job to the
 * session (job.c).  It never waits for the job's work.  The segment holds a
 * fixed header (BgJobShared), the SQL text, the launcher's GUC state and
 * loaded libraries, a shared file set for what the queues cannot take, and
 * two shm_mqs from the worker to the launcher: one
 * carrying the result rows as MinimalTuples, as parallel query does, the
 * other carrying protocol messages (notices, errors, the descriptor, the
 * outcome), as pqmq.c does for parallel workers.
 *
 * What runs in the worker is in worker.c.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/launcher.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_foreign_table.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/tablecmds.h"
#include "foreign/foreign.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "storage/shm_toc.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(bg_launch);

static TupleDesc bg_describe_last(List *raw_list, const char *sql);
static bool bg_statement_error(int sqlerrcode);
static bool bg_describable_after(RawStmt *raw);
static void bg_check_statement_timeout(TimestampTz started);
static void bg_launch_error_callback(void *arg);
static int	bg_queue_size_arg(FunctionCallInfo fcinfo);
/* What bg_launch was asked for besides the SQL */
typedef struct BgLaunchOptions
{
	int			queue_size;
	bool		stream;
	bool		keep;
	const char *label;			/* or NULL */
	const char *notify;			/* or NULL */
	bool		result_table;	/* make pg_temp.bg_result_<pid> */
	bool		role_at_limit;	/* the role runs bg_fdw.max_jobs_per_role
								 * jobs: the job is queued */
} BgLaunchOptions;

static void bg_launch_options(FunctionCallInfo fcinfo, BgLaunchOptions *opts);
static int	bg_launch_job(const char *sql, TupleDesc desc,
						  BgLaunchOptions *opts);
static BgJob *bg_start_job(const char *sql, TupleDesc desc,
						   BgLaunchOptions *opts, int *queued,
						   int64 *queued_id);
static void bg_no_slot(BgLaunchOptions *opts, bool max_jobs);
static int	bg_hand_over(dsm_segment **seg);
static dsm_segment *bg_create_segment(const char *sql,
									  BgLaunchOptions *opts);
static void bg_segment_queue(dsm_segment *seg, shm_toc *toc, uint64 key,
							 Size size, bool launcher);
static bool bg_job_role_may_connect(Oid role);
static int64 bg_new_job_id(void);
static void bg_launcher_detach(dsm_segment *seg, Datum arg);
static void bg_job_go(BgJobShared *shared);
static void bg_check_table_privileges(void);
static void bg_create_result_table(int pid, int64 job_id, TupleDesc desc);
static void bg_drop_stale_table(Oid nspid, const char *relname);

/*
 * bg_launch(sql text, queue_size integer DEFAULT NULL,
 *			 stream boolean DEFAULT false, keep boolean DEFAULT true,
 *			 label text DEFAULT NULL, notify text DEFAULT NULL,
 *			 result_table boolean DEFAULT true)
 *			 RETURNS integer
 *
 * Start a background job and return its worker's PID, at once: it never
 * waits for the job's work.  The result table pg_temp.bg_result_<pid>
 * exists when this returns, if the result's columns could be told then
 * (bg_describe_last) and result_table is true.  With "keep", the job
 * keeps its result for any session (keep.c) until bg_forget or expiry;
 * stream mode keeps nothing.
 *
 * Later versions add arguments at the end: an argument after "sql" is read
 * only if PG_NARGS() says the SQL declaration has it, so that this library
 * serves an older declaration until ALTER EXTENSION UPDATE.
 */
Datum
bg_launch(PG_FUNCTION_ARGS)
{
	char	   *sql;
	BgLaunchOptions opts;
	List	   *raw_list;
	TupleDesc	desc = NULL;
	int			pid = 0;
	ErrorContextCallback errcallback;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("SQL of a background job must not be null")));
	sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	bg_launch_options(fcinfo, &opts);
	bg_supervisor_prepare();

	/* Syntax errors are raised here, by the launcher, not by the job. */
	errcallback.callback = bg_launch_error_callback;
	errcallback.arg = sql;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;
	raw_list = pg_parse_query(sql);
	if (raw_list == NIL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("SQL of a background job must contain a statement")));
	bg_check_statements(raw_list);

	/*
	 * The last statement is described now, as the protocol's Describe does,
	 * so that the table can be created before the job runs.  Without a
	 * table nothing needs its columns, and parse analysis (with its locks)
	 * is left to the job.
	 */
	if (opts.result_table)
		desc = bg_describe_last(raw_list, sql);
	error_context_stack = errcallback.previous;

	if (opts.result_table)
		bg_check_table_privileges();
	/* segments of ended jobs go back before this one takes another */
	bg_jobs_release_ended();
	bg_jobs_check_ended_segments();
	if (opts.keep)
	{
		bg_registry_check_kept(GetUserId());
		bg_keep_check_cluster();
	}

	/*
	 * bg_fdw.max_jobs_per_role: no other launch by the role until ours is
	 * listed (or queued, where the role runs as many as that already).  The
	 * lock is a session's: whatever fails, release it.
	 */
	PG_TRY();
	{
		opts.role_at_limit =
			bg_registry_lock_role(GetUserId(),
								  bg_max_jobs_per_role >= 0 &&
								  bg_queue_possible(opts.keep, opts.stream,
													bg_registry_relid()));
		pid = bg_launch_job(sql, desc, &opts);
	}
	PG_FINALLY();
	{
		bg_held_slot_drop_pending();
		bg_registry_unlock_role();
	}
	PG_END_TRY();
	/* after the job has its slot, so that the supervisor never takes it */
	bg_supervisor_ensure();
	PG_RETURN_INT32(pid);
}

/*
 * Start the job, give it its result table, and return once it is listed in
 * the registry.
 */
static int
bg_launch_job(const char *sql, TupleDesc desc, BgLaunchOptions *opts)
{
	int			queued = 0;
	int64		queued_id = 0;
	BgJob	   *job = bg_start_job(sql, desc, opts, &queued, &queued_id);

	/* queued: read like another session's job, once it runs (queue.c) */
	if (job == NULL)
	{
		PG_TRY();
		{
			if (desc != NULL)
				bg_create_result_table(queued, queued_id, desc);
			/* so that a restart cannot leave its outcome unknown */
			bg_queue_record(queued, queued_id);
		}
		PG_CATCH();
		{
			bg_queue_drop(queued, queued_id);
			PG_RE_THROW();
		}
		PG_END_TRY();
		bg_queue_launched(queued, queued_id);
		return queued;
	}
	job->stream = opts->stream;
	/* without columns, no table: bg_result and IMPORT read the job */
	if (desc != NULL)
		bg_create_result_table(job->pid, job->job_id, job->desc);
	/* the job may run while we wait; it commits only once attached */
	bg_job_go(job->shared);
	bg_job_wait_registered(job);
	bg_registry_unlock_role();
	bg_job_attach(job);
	return job->pid;
}

/* What bg_describe works out in its subtransaction */
typedef struct BgDescribe
{
	RawStmt    *raw;
	const char *sql;
	TupleDesc	desc;			/* the result, in the caller's context */
} BgDescribe;

static void
bg_describe_work(void *arg)
{
	BgDescribe *d = (BgDescribe *) arg;
	MemoryContext cxt = CurrentMemoryContext;
	CachedPlanSource *psrc;
	List	   *querytrees;

	/* (undone with the subtransaction) */
	if (LockTimeout == 0 || LockTimeout > BG_DESCRIBE_LOCK_TIMEOUT)
		(void) set_config_option("lock_timeout",
								 CppAsString2(BG_DESCRIBE_LOCK_TIMEOUT),
								 PGC_USERSET, PGC_S_SESSION,
								 GUC_ACTION_LOCAL, true, 0, false);

	psrc = CreateCachedPlan(d->raw, d->sql, CreateCommandTag(d->raw->stmt));
	querytrees = pg_analyze_and_rewrite_fixedparams(d->raw, d->sql, NULL, 0,
													NULL);
	CompleteCachedPlan(psrc, querytrees, NULL, NULL, 0, NULL, NULL,
					   CURSOR_OPT_PARALLEL_OK, true);
	if (psrc->resultDesc)
	{
		MemoryContextSwitchTo(cxt);
		d->desc = CreateTupleDescCopy(psrc->resultDesc);
	}
	DropCachedPlan(psrc);
}

/*
 * The columns of the job's result, as its last statement would produce
 * them now, or NULL if they cannot be told before the job runs.
 *
 * bg_launch never waits for the job's work, nor for a lock parse analysis
 * would wait for (a table someone holds in ACCESS EXCLUSIVE mode): that
 * wait is cut short at BG_DESCRIBE_LOCK_TIMEOUT, and the job reports the
 * columns when it gets there.  Parse analysis locks the relations it
 * reads; doing it in a subtransaction that is rolled back lets those locks
 * go, so that describing a job does not make the launcher block the job.
 *
 * A single statement that cannot be described otherwise is an error, as a
 * Describe would be.  The last of several is described only when the ones
 * before it leave what it means alone (bg_describable_after), and if that
 * fails (it depends on what they do all the same) the job reports its
 * columns when it gets there.  If they change its columns after all (a DO
 * block alters a table it reads), the job's columns win, and the table
 * made now says it no longer matches when it is read.
 */
static TupleDesc
bg_describe_last(List *raw_list, const char *sql)
{
	BgDescribe	d = {llast_node(RawStmt, raw_list), sql, NULL};
	ErrorData  *edata;
	ListCell   *lc;
	TimestampTz started;
	bool		lock_wait;

	foreach(lc, raw_list)
	{
		if (lfirst(lc) != d.raw && !bg_describable_after(lfirst_node(RawStmt, lc)))
			return NULL;
	}
	if (list_length(raw_list) > 1 &&
		(IsA(d.raw->stmt, ExecuteStmt) || IsA(d.raw->stmt, FetchStmt)))
		return NULL;			/* what the job prepared or declared */

	started = GetCurrentTimestamp();
	edata = bg_rolled_back_call(bg_describe_work, &d);
	if (edata == NULL)
		return bg_result_desc(d.desc);
	lock_wait = edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED;
	if (!lock_wait &&
		(list_length(raw_list) == 1 || !bg_statement_error(edata->sqlerrcode)))
		ReThrowError(edata);
	FreeErrorData(edata);
	if (lock_wait)
		bg_check_statement_timeout(started);
	return NULL;
}

/*
 * Could this error of describing a statement be the statement's doing (an
 * unknown table, a literal that does not read)?  Not a cancel, a shortage,
 * a limit or a broken system.
 */
static bool
bg_statement_error(int sqlerrcode)
{
	switch (ERRCODE_TO_CATEGORY(sqlerrcode))
	{
		case ERRCODE_OPERATOR_INTERVENTION:
		case ERRCODE_INSUFFICIENT_RESOURCES:
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:
		case ERRCODE_SYSTEM_ERROR:
		case ERRCODE_INTERNAL_ERROR:
			return false;
		default:
			return true;
	}
}

/*
 * May the job's last statement be described as the launcher sees it, after
 * this earlier one ran in the job?  Not after one that changes what names
 * mean (search_path, the role, prepared statements, cursors) or defines
 * relations and types: the job reports the columns instead.  DML, SET,
 * transaction control, and DO blocks, procedures and functions (which may
 * do anything, set_config('search_path', ...) included, but are what a job
 * runs its work with) leave the description standing.
 */
static bool
bg_describable_after(RawStmt *raw)
{
	VariableSetStmt *set;

	switch (nodeTag(raw->stmt))
	{
		case T_SelectStmt:
			/* SELECT INTO is a CREATE TABLE AS */
			return ((SelectStmt *) raw->stmt)->intoClause == NULL;
		case T_ExplainStmt:
			{
				RawStmt		inner = *raw;

				inner.stmt = ((ExplainStmt *) raw->stmt)->query;
				return bg_describable_after(&inner);
			}
		case T_InsertStmt:
		case T_UpdateStmt:
		case T_DeleteStmt:
		case T_MergeStmt:
		case T_TransactionStmt:
		case T_VariableShowStmt:
		case T_DoStmt:
		case T_CallStmt:
		case T_LockStmt:
		case T_NotifyStmt:
		case T_CopyStmt:
		case T_CheckPointStmt:
			return true;
		case T_VariableSetStmt:
			set = (VariableSetStmt *) raw->stmt;
			return set->kind != VAR_RESET_ALL &&
				(set->name == NULL ||
				 (pg_strcasecmp(set->name, "search_path") != 0 &&
				  pg_strcasecmp(set->name, "role") != 0 &&
				  pg_strcasecmp(set->name, "session_authorization") != 0));
		default:
			return false;
	}
}

/*
 * Describing, from "started" on, gave up on a lock at
 * BG_DESCRIBE_LOCK_TIMEOUT.  A statement timeout that fell due meanwhile is
 * reported by PostgreSQL as the lock timeout, and would be lost with it:
 * raise it.  (A cancel that
 * arrives in that moment is merged with the lock timeout the same way, and
 * lost; the next one is not.)
 */
static void
bg_check_statement_timeout(TimestampTz started)
{
	TimestampTz due = get_timeout_finish_time(STATEMENT_TIMEOUT);

	if (StatementTimeout > 0 && due >= started && due <= GetCurrentTimestamp())
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("canceling statement due to statement timeout")));
}

/*
 * Error context callback while bg_launch parses and describes the job: a
 * position refers to the job's SQL, not to the query that called bg_launch.
 */
static void
bg_launch_error_callback(void *arg)
{
	int			pos = geterrposition();

	if (pos > 0)
	{
		errposition(0);
		internalerrposition(pos);
		internalerrquery((const char *) arg);
	}
}

/*
 * bg_launch's arguments after the SQL, checked.  An older declaration may
 * lack the later ones: each is read only if PG_NARGS() says it is there.
 */
static void
bg_launch_options(FunctionCallInfo fcinfo, BgLaunchOptions *opts)
{
	memset(opts, 0, sizeof(BgLaunchOptions));
	opts->queue_size = bg_queue_size_arg(fcinfo);
	opts->stream = PG_NARGS() > 2 && !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);
	opts->keep = !opts->stream && !(PG_NARGS() > 3 && !PG_ARGISNULL(3) &&
									!PG_GETARG_BOOL(3));
	if (PG_NARGS() > 4 && !PG_ARGISNULL(4))
	{
		opts->label = text_to_cstring(PG_GETARG_TEXT_PP(4));
		bg_check_name("label", opts->label, BG_LABEL_LEN - 1);
	}
	if (PG_NARGS() > 5 && !PG_ARGISNULL(5))
	{
		opts->notify = text_to_cstring(PG_GETARG_TEXT_PP(5));
		bg_check_name("notify channel", opts->notify, NAMEDATALEN - 1);
	}
	opts->result_table = !(PG_NARGS() > 6 && !PG_ARGISNULL(6) &&
						   !PG_GETARG_BOOL(6));
}

/*
 * The queue size bg_launch was given, checked; bg_fdw.queue_size if it was
 * given none.
 */
static int
bg_queue_size_arg(FunctionCallInfo fcinfo)
{
	int			queue_size;

	/* an older declaration may not have the argument */
	if (PG_NARGS() < 2 || PG_ARGISNULL(1))
		queue_size = bg_default_queue_size;
	else
	{
		queue_size = PG_GETARG_INT32(1);
		if (queue_size < BG_MIN_QUEUE_SIZE || queue_size > BG_MAX_QUEUE_SIZE)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("queue_size %d is out of range", queue_size),
					 errdetail("The queue size must be between %d and %d bytes.",
							   BG_MIN_QUEUE_SIZE, BG_MAX_QUEUE_SIZE)));
	}
	/* queues are shared memory, a server-wide resource: a superuser bounds them */
	if (queue_size > bg_max_queue_size)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("queue size %d exceeds \"bg_fdw.max_queue_size\" (%d bytes)",
						queue_size, bg_max_queue_size),
				 errhint("Ask for a smaller queue_size, or ask a superuser to raise \"bg_fdw.max_queue_size\".")));
	return queue_size;
}

/*
 * Create the job's segment, start its worker and wait until the worker
 * exists.  However a launch ends without success from then on (an error, a
 * cancel, the session's exit), the segment is detached and
 * bg_launcher_detach stops the worker: one waiting for bg_job_go runs
 * nothing, one already running its first statements is terminated.
 *
 * The job's memory hangs off the current transaction until bg_job_attach
 * adopts it for the session.
 */
static BgJob *
bg_start_job(const char *sql, TupleDesc desc, BgLaunchOptions *opts,
			 int *queued, int64 *queued_id)
{
	MemoryContext cxt;
	MemoryContext oldcxt;
	dsm_segment *seg;
	BgJobShared *shared;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BgwHandleStatus status;
	pid_t		pid;
	bool		over;
	bool		wait;

	/* a session may hold many ended jobs: each takes little */
	cxt = AllocSetContextCreate(CurTransactionContext, "bg_fdw job",
								ALLOCSET_SMALL_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);

	seg = bg_create_segment(sql, opts);
	shared = shm_toc_lookup(shm_toc_attach(BG_FDW_MAGIC,
										   dsm_segment_address(seg)),
							BG_KEY_SHARED, false);
	over = opts->role_at_limit ||
		(bg_max_jobs >= 0 && bg_jobs_running() >= bg_max_jobs);
	/* jobs queued before this one go first */
	wait = (over || bg_queue_waiting() > 0) && bg_queue_available(shared);
	if (over && !wait)
		bg_no_slot(opts, true);
	if (!wait)
	{
		/*
		 * The session holds the segment of a job that starts now (one queued
		 * holds none): bg_fdw.max_held_segments_per_role.  A launch queued
		 * after all, for want of a worker slot, gives it back (bg_launch).
		 */
		bg_held_slot_take(GetUserId());
		pid = bg_hand_over(&seg);
		if (pid > 0)
		{
			MemoryContextSwitchTo(oldcxt);
			return bg_job_create(seg, NULL, pid, sql, desc, cxt);
		}
		if (seg == NULL)
			seg = bg_create_segment(sql, opts);
	}

	bg_job_worker(&worker, "bg_worker_main",
				  UInt32GetDatum(dsm_segment_handle(seg)));
	snprintf(worker.bgw_name, BGW_MAXLEN, "bg_fdw job launched by PID %d",
			 MyProcPid);
	if (!wait)
	{
		/* idle workers must not keep parallel query from its slots */
		bg_pool_make_room();
	}

	if (wait || !RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		shared = shm_toc_lookup(shm_toc_attach(BG_FDW_MAGIC,
											   dsm_segment_address(seg)),
								BG_KEY_SHARED, false);
		if (!wait && !bg_queue_available(shared))
			bg_no_slot(opts, false);
		/* the queue holds a copy of what the segment holds */
		*queued = bg_queue_push(seg, opts->queue_size, desc);
		*queued_id = shared->job_id;
		dsm_detach(seg);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextDelete(cxt);
		return NULL;
	}

	/* cancelled meanwhile, the worker must not start later */
	PG_TRY();
	{
		status = WaitForBackgroundWorkerStartup(handle, &pid);
	}
	PG_CATCH();
	{
		TerminateBackgroundWorker(handle);
		PG_RE_THROW();
	}
	PG_END_TRY();
	if (status == BGWH_STOPPED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not start background process for a background job"),
				 errhint("More details may be available in the server log.")));
	if (status == BGWH_POSTMASTER_DIED)
		ereport(ERROR,
				(errcode(ERRCODE_ADMIN_SHUTDOWN),
				 errmsg("cannot start background processes without postmaster"),
				 errhint("Kill all remaining database processes and restart the database.")));
	Assert(status == BGWH_STARTED);

	MemoryContextSwitchTo(oldcxt);
	return bg_job_create(seg, handle, pid, sql, desc, cxt);
}

/*
 * A job's worker, started at "function" with "arg", which tells this
 * process when it starts and ends.
 */
void
bg_job_worker(BackgroundWorker *worker, const char *function, Datum arg)
{
	memset(worker, 0, sizeof(BackgroundWorker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_ConsistentState;
	worker->bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "bg_fdw");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_type, BGW_MAXLEN, BG_WORKER_TYPE);
	worker->bgw_main_arg = arg;
	worker->bgw_notify_pid = MyProcPid;
}

/*
 * The job can start no worker now, nor wait in the queue for one: no slot
 * is free, or ("max_jobs") bg_fdw.max_jobs jobs run.
 */
static void
bg_no_slot(BgLaunchOptions *opts, bool max_jobs)
{
	const char *why;

	if (bg_supervisor_queue() == NULL)
		why = _("With bg_fdw in \"shared_preload_libraries\", jobs wait in a queue for a free slot instead.");
	else if (bg_queue_in_job())
		why = _("A job launched by a background job is not queued.");
	else if (!opts->keep || opts->stream)
		why = _("A job launched with keep => false or in stream mode is not queued: launch it with keep => true to have it wait for a slot.");
	else if (bg_max_queued_jobs <= 0)
		why = _("The queue is off: jobs wait in it for a slot when \"bg_fdw.max_queued_jobs\" is above 0.");
	else if (!bg_supervisor_started())
		why = _("Jobs wait in the queue once the bg_fdw supervisor, which starts them, has started: see the server log.");
	else
		why = NULL;				/* the queue is off, or the registry is 1.0's */
	if (max_jobs)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many background jobs"),
				 errdetail("\"bg_fdw.max_jobs\" is %d.", bg_max_jobs),
				 why ? errhint("Wait for a job to end. %s", why) :
				 errhint("Wait for a job to end.")));
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
			 errmsg("could not register background process for a background job"),
			 errdetail("All background worker slots are in use."),
			 why ? errhint("You may need to increase \"max_worker_processes\" (each running job takes one slot, shared with parallel query and the bg_fdw supervisor). %s", why) :
			 errhint("You may need to increase \"max_worker_processes\" (each running job takes one slot, shared with parallel query and the bg_fdw supervisor).")));
}

/*
 * Hand the job to an idle worker of the pool (pool.c): its name, or 0 if
 * none fits.  If the one chosen exited before it attached, the segment is
 * no good any more (the worker may have attached to its queues): *seg is
 * detached and NULL, for the caller to lay out another and start a worker.
 */
static int
bg_hand_over(dsm_segment **seg)
{
	shm_toc    *toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(*seg));
	int			name;

	name = bg_pool_hand_over(*seg, shm_toc_lookup(toc, BG_KEY_SHARED, false),
							 shm_toc_lookup(toc, BG_KEY_LIBRARIES, false));
	if (name >= 0)
		return name;
	dsm_detach(*seg);
	*seg = NULL;
	return 0;
}

/*
 * Lay out a job's segment, from this session's state.  The launcher is the
 * receiver of both queues.
 */
static dsm_segment *
bg_create_segment(const char *sql, BgLaunchOptions *opts)
{
	BgLaunchParts parts;
	BgJobShared *shared = &parts.shared;
	char	   *space;

	memset(shared, 0, sizeof(BgJobShared));
	shared->job_id = bg_new_job_id();
	shared->database_id = MyDatabaseId;
	shared->authenticated_user_id = GetAuthenticatedUserId();
	shared->outer_user_id = GetCurrentRoleId();
	GetUserIdAndSecContext(&shared->current_user_id, &shared->sec_context);
	shared->role_is_superuser = bg_current_role_is_superuser();
	shared->connect_as_job_role = bg_job_role_may_connect(shared->current_user_id);
	/* a job's job was launched by whoever launched the first */
	strlcpy(shared->launched_by, bg_worker_launched_by() ?
			bg_worker_launched_by() : GetUserNameFromId(GetSessionUserId(), false),
			NAMEDATALEN);
	shared->launcher_pid = MyProcPid;
	shared->launcher_proc = MyProc;
	shared->launched_at = GetCurrentTimestamp();
	shared->stream = opts->stream;
	shared->registry_relid = bg_registry_relid();
	shared->keep = opts->keep && bg_registry_keeps(shared->registry_relid);
	if (opts->label)
		strlcpy(shared->label, opts->label, sizeof(shared->label));
	if (opts->notify)
		strlcpy(shared->notify, opts->notify, sizeof(shared->notify));
	shared->detached_relid = bg_detached_relid(shared->registry_relid);

	parts.sql = sql;
	parts.sql_len = strlen(sql) + 1;
	parts.guc_len = EstimateGUCStateSpace();
	space = palloc(parts.guc_len);
	SerializeGUCState(parts.guc_len, space);
	parts.guc = space;
	/* the libraries this session loaded: their hooks apply to the job too */
	parts.library_len = EstimateLibraryStateSpace();
	space = palloc(parts.library_len);
	SerializeLibraryState(parts.library_len, space);
	parts.libraries = space;
	parts.queue_size = opts->queue_size;
	return bg_segment_layout(&parts, true);
}

/*
 * Lay out a job's segment from its parts: in the launching session
 * ("launcher"), which receives from both queues, or in the worker of a
 * queued job (queue.c), where nobody does: the job reads as one whose
 * launcher has gone, and readers follow its kept file.
 */
dsm_segment *
bg_segment_layout(BgLaunchParts *parts, bool launcher)
{
	shm_toc_estimator e;
	Size		segsize;
	dsm_segment *seg;
	shm_toc    *toc;
	BgJobShared *shared;
	SharedFileSet *fileset;
	char	   *space;

	shm_toc_initialize_estimator(&e);
	shm_toc_estimate_chunk(&e, sizeof(BgJobShared));
	shm_toc_estimate_chunk(&e, parts->sql_len);
	shm_toc_estimate_chunk(&e, parts->guc_len);
	shm_toc_estimate_chunk(&e, parts->queue_size);
	shm_toc_estimate_chunk(&e, BG_MESSAGE_QUEUE_SIZE);
	shm_toc_estimate_chunk(&e, sizeof(SharedFileSet));
	shm_toc_estimate_chunk(&e, parts->library_len);
	shm_toc_estimate_keys(&e, 7);
	segsize = shm_toc_estimate(&e);

	seg = dsm_create(segsize, 0);
	if (launcher)
		bg_segment_track(seg);
	toc = shm_toc_create(BG_FDW_MAGIC, dsm_segment_address(seg), segsize);

	shared = shm_toc_allocate(toc, sizeof(BgJobShared));
	memcpy(shared, &parts->shared, sizeof(BgJobShared));
	pg_atomic_init_u64(&shared->rows, 0);
	pg_atomic_init_u64(&shared->kept_size, 0);
	pg_atomic_init_u64(&shared->kept_valid, 0);
	pg_atomic_init_u32(&shared->ring_handle, DSM_HANDLE_INVALID);
	pg_atomic_init_u64(&shared->messages_valid, 0);
	pg_atomic_init_u64(&shared->messages_sent, 0);
	ConditionVariableInit(&shared->kept_cv);
	SpinLockInit(&shared->mutex);
	shm_toc_insert(toc, BG_KEY_SHARED, shared);
	if (launcher)
		on_dsm_detach(seg, bg_launcher_detach, PointerGetDatum(shared));
	else
	{
		/* nobody to say "go", nor to launch: it was launched when queued */
		shared->launcher_proc = NULL;
		shared->launcher_pid = 0;
		shared->go = true;
		shared->launched = true;
	}

	space = shm_toc_allocate(toc, parts->sql_len);
	memcpy(space, parts->sql, parts->sql_len);
	shm_toc_insert(toc, BG_KEY_SQL, space);

	space = shm_toc_allocate(toc, parts->guc_len);
	memcpy(space, parts->guc, parts->guc_len);
	shm_toc_insert(toc, BG_KEY_GUC, space);

	space = shm_toc_allocate(toc, parts->library_len);
	memcpy(space, parts->libraries, parts->library_len);
	shm_toc_insert(toc, BG_KEY_LIBRARIES, space);

	bg_segment_queue(seg, toc, BG_KEY_TUPLE_QUEUE, parts->queue_size, launcher);
	bg_segment_queue(seg, toc, BG_KEY_MESSAGE_QUEUE, BG_MESSAGE_QUEUE_SIZE,
					 launcher);

	fileset = shm_toc_allocate(toc, sizeof(SharedFileSet));
	SharedFileSetInit(fileset, seg);
	shm_toc_insert(toc, BG_KEY_FILESET, fileset);

	return seg;
}

/*
 * One of the segment's queues from the worker.  Without a launcher, its
 * receiving end is left detached from the start, so that the worker sends
 * nothing there and waits for nobody.
 */
static void
bg_segment_queue(dsm_segment *seg, shm_toc *toc, uint64 key, Size size,
				 bool launcher)
{
	shm_mq	   *mq = shm_mq_create(shm_toc_allocate(toc, size), size);

	shm_mq_set_receiver(mq, MyProc);
	shm_toc_insert(toc, key, mq);
	if (!launcher)
		shm_mq_detach(shm_mq_attach(mq, seg, NULL));
}

/*
 * Does the job's worker connect as the job's role?  Then the rest of the
 * server sees the job as that role's: pg_stat_activity shows its query only
 * to roles with that role's privileges, and only they may cancel it (a job
 * launched by a SECURITY DEFINER function belongs to the function's owner,
 * not to its caller).  On 17 and later a worker may connect as any role; on
 * 15 and 16 only as one that may log in, else it connects as the session's
 * login role and switches, as the session did (README says what the caller
 * then sees).
 */
static bool
bg_job_role_may_connect(Oid role)
{
	HeapTuple	tuple;
	bool		canlogin;

	if (BG_CONNECT_AS_ROLE_FLAGS != 0)
		return true;
	tuple = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));
	if (!HeapTupleIsValid(tuple))
		return false;
	canlogin = ((Form_pg_authid) GETSTRUCT(tuple))->rolcanlogin;
	ReleaseSysCache(tuple);
	return canlogin;
}

/*
 * A job's identifier must never be reused, across sessions and restarts,
 * and must not need a write (launching works in read-only transactions and
 * on standbys).  It is the launch time in milliseconds since 2000 in the high
 * 41 bits and the launcher's PID in the low 22: two backends never share a
 * PID at once, and one backend never hands out the same millisecond twice.
 */
static int64
bg_new_job_id(void)
{
	static int64 last_ms = 0;
	int64		ms = GetCurrentTimestamp() / 1000;

	if (ms <= last_ms)
		ms = last_ms + 1;
	last_ms = ms;
	return (ms << 22) | (MyProcPid & 0x3FFFFF);
}

/*
 * on_dsm_detach callback of the launcher.  After a successful launch this
 * changes nothing.  Otherwise the worker must not run on until it finds out
 * (holding locks and a slot): one that is running statements is terminated
 * at once; one still waiting for "go" learns that none will come.
 */
static void
bg_launcher_detach(dsm_segment *seg, Datum arg)
{
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);
	PGPROC	   *worker;
	pid_t		stop = 0;

	SpinLockAcquire(&shared->mutex);
	shared->launcher_gone = true;
	worker = shared->worker_proc;
	if (worker != NULL && !shared->launched && !shared->worker_exited)
		stop = worker->pid;
	SpinLockRelease(&shared->mutex);
	if (stop != 0)
		(void) kill(stop, SIGTERM);
	else if (worker != NULL)
		SetLatch(&worker->procLatch);
}

/* Let the worker run its statements. */
static void
bg_job_go(BgJobShared *shared)
{
	bg_job_set_flag(shared, &shared->go, BG_WAKE_WORKER);
}

/*
 * Check now what creating the result table will need, so that a launch
 * does not fail for want of it after the job has started.
 */
static void
bg_check_table_privileges(void)
{
	Oid			serverid = bg_server_oid(false);

	if (XactReadOnly)
		return;
	if (bg_foreign_server_aclcheck(serverid) != ACLCHECK_OK)
		aclcheck_error(ACLCHECK_NO_PRIV, OBJECT_FOREIGN_SERVER, BG_SERVER_NAME);
	if (bg_database_temp_aclcheck() != ACLCHECK_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to create temporary tables in database \"%s\"",
						get_database_name(MyDatabaseId)),
				 errhint("A background job's result table is a temporary table: grant TEMP on the database.")));
}

/*
 * Create pg_temp.bg_result_<pid> for the job, with the columns "desc".
 * Where no table can be created (a read-only transaction, a hot standby)
 * the job still runs and bg_result(pid) reads it.
 */
static void
bg_create_result_table(int pid, int64 job_id, TupleDesc desc)
{
	CreateForeignTableStmt *stmt;
	char	   *relname = psprintf("bg_result_%d", pid);
	List	   *cols = NIL;
	ObjectAddress address;
	int			i;

	if (XactReadOnly)
	{
		ereport(NOTICE,
				(errmsg("no result table was created for the background job because the transaction is read-only"),
				 errhint("Read its result with bg_result(), giving the PID bg_launch returns.")));
		return;
	}

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		cols = lappend(cols, makeColumnDef(NameStr(att->attname),
										   att->atttypid, att->atttypmod,
										   att->attcollation));
	}

	stmt = makeNode(CreateForeignTableStmt);
	stmt->base.relation = makeRangeVar(NULL, relname, -1);
	stmt->base.relation->relpersistence = RELPERSISTENCE_TEMP;
	stmt->base.tableElts = cols;
	stmt->base.oncommit = ONCOMMIT_NOOP;
	stmt->servername = BG_SERVER_NAME;
	stmt->options = list_make2(makeDefElem("pid",
										   (Node *) makeString(psprintf("%d", pid)),
										   -1),
							   makeDefElem("job",
										   (Node *) makeString(psprintf(INT64_FORMAT, job_id)),
										   -1));

	bg_drop_stale_table(LookupCreationNamespace("pg_temp"), relname);
	address = DefineRelation(&stmt->base, RELKIND_FOREIGN_TABLE, InvalidOid,
							 NULL, NULL);
	CreateForeignTable(stmt, address.objectId);
	CommandCounterIncrement();
}

/*
 * PIDs are reused: a long session may meet a new job with the PID of an old
 * one whose table it still has.  That table belongs to a job that has ended;
 * replace it.  A table of the same name that is not ours is left alone and
 * DefineRelation reports the conflict.
 */
static void
bg_drop_stale_table(Oid nspid, const char *relname)
{
	Oid			relid = get_relname_relid(relname, nspid);
	ObjectAddress object;

	if (!OidIsValid(relid) || get_rel_relkind(relid) != RELKIND_FOREIGN_TABLE ||
		GetForeignTable(relid)->serverid != bg_server_oid(false))
		return;

	ObjectAddressSet(object, RelationRelationId, relid);
	performDeletion(&object, DROP_RESTRICT, PERFORM_DELETION_INTERNAL);
	CommandCounterIncrement();
}
