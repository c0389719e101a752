/*-------------------------------------------------------------------------
 *
 * launcher.c
 *		  Launching background jobs (bg_launch) and the worker that runs them.
 *
 * A job is one dynamic background worker and one DSM segment.  The segment
 * holds a fixed header (BgJobShared), the SQL text, the launcher's GUC state,
 * the expected result descriptor (when the launcher could describe the
 * statement) and two shm_mqs from the worker to the launcher: one carrying
 * the result rows as MinimalTuples, as parallel query does, the other
 * carrying protocol messages (notices, errors, the descriptor, the outcome),
 * as pqmq.c does for parallel workers.
 *
 * The worker runs the statements the way exec_simple_query does: one
 * implicit transaction, a portal per statement, utility statements at top
 * level so that VACUUM, CREATE INDEX CONCURRENTLY and CALL of a procedure
 * that commits work.  Only the last statement's rows are sent.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/parallel.h"
#include "access/printtup.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_class.h"
#include "catalog/pg_foreign_table.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/tablecmds.h"
#include "executor/executor.h"
#include "foreign/foreign.h"
#include "funcapi.h"
#include "libpq/libpq.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/analyze.h"
#include "pgstat.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/shm_toc.h"
#include "tcop/pquery.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/plancache.h"
#include "utils/ps_status.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(bg_launch);

/*
 * Rows are handed to the queue in batches (a quarter of the queue) to spare
 * both processes cache-line traffic, as parallel query does.  So that a
 * reader also sees the first rows of a job at once, and the rows of a slow
 * one within a fraction of a second, the first rows are flushed one by one
 * and a timer forces a flush every BG_FLUSH_INTERVAL_MS while rows flow.
 */
#define BG_FLUSH_EAGER_ROWS		64
#define BG_FLUSH_INTERVAL_MS	100

static volatile sig_atomic_t bg_flush_due = false;
static TimeoutId bg_flush_timeout = MAX_TIMEOUTS;

/* The job's segment, for the worker's exit callback */
static dsm_segment *bg_worker_segment = NULL;

/* pg_terminate_backend or shutdown: the job is recorded as failed on exit */
static volatile sig_atomic_t bg_terminate_requested = false;

/*
 * DestReceiver of the worker's last statement: sends each row as a
 * MinimalTuple on the tuple queue, after turning columns whose type cannot
 * be a table column into their text form.
 */
typedef struct BgDestReceiver
{
	DestReceiver pub;			/* publicly-known function pointers */
	shm_mq_handle *mqh;			/* tuple queue */
	BgJobShared *shared;		/* for the live row counter */
	SharedFileSet *fileset;		/* where rows the queue cannot take go, or
								 * NULL (stream: wait for the reader) */
	TupleDesc	desc;			/* the result's columns, as sent */
	bool		command_shape;	/* statement has no rows: send its tag */
	bool		convert;		/* some columns are sent as text */
	FmgrInfo   *out_funcs;		/* output functions of the source columns */
	TupleTableSlot *text_slot;	/* row with converted columns, or the tag */
	MemoryContext row_cxt;		/* per-row context for the conversion */
	int		   *varlena_atts;	/* columns that may hold TOAST pointers */
	int			nvarlena;		/* length of varlena_atts */
	TupleTableSlot *detoast_slot;	/* row with TOAST pointers replaced */
	MemoryContext detoast_cxt;	/* per-row context for detoasting */
	uint64		rows;			/* rows sent so far */
	bool		detached;		/* the launcher stopped listening */
} BgDestReceiver;

/* Launcher side */
static void bg_check_statements(List *raw_list);
static TupleDesc bg_describe(RawStmt *raw, const char *sql);
static void bg_launch_error_callback(void *arg);
static int	bg_check_queue_size(FunctionCallInfo fcinfo);
static int	bg_launch_job(const char *sql, int queue_size, TupleDesc desc,
						  bool stream);
static BgJob *bg_start_job(const char *sql, int queue_size, TupleDesc desc,
							bool stream);
static dsm_segment *bg_create_segment(const char *sql, int queue_size,
									  TupleDesc desc, bool stream);
static void bg_launcher_detach(dsm_segment *seg, Datum arg);
static void bg_job_go(BgJobShared *shared);
static void bg_check_table_privileges(void);
static void bg_create_result_table(BgJob *job);
static void bg_drop_stale_table(Oid nspid, const char *relname);

/* Worker side */
static void bg_worker_sigterm(SIGNAL_ARGS);
static void bg_worker_exit(dsm_segment *seg, Datum arg);
static void bg_worker_before_exit(int code, Datum arg);
static bool bg_launch_failed(BgJobShared *shared);
static bool bg_launch_undecided(BgJobShared *shared);
static void bg_worker_await_launch(BgJobShared *shared);
static void bg_worker_detach_at_exit(int code, Datum arg);
static void bg_push_descriptor(BgJobShared *shared);
pg_noreturn static void bg_worker_failed(BgJobShared *shared);
static void bg_wait_for_launcher(BgJobShared *shared, bool launched);
static void bg_check_launcher_deadlock(BgJobShared *shared);
static char *bg_exec_sql(const char *sql, shm_mq_handle *tuple_mqh,
						 BgJobShared *shared, SharedFileSet *fileset,
						 TupleDesc expected);
static DestReceiver *bg_start_result(Portal portal, shm_mq_handle *mqh,
									 BgJobShared *shared, SharedFileSet *fileset,
									 TupleDesc expected);
static void bg_completion_tag(char *buf, const QueryCompletion *qc);
static void bg_find_varlena_columns(BgDestReceiver *self, TupleDesc actual);
static TupleTableSlot *bg_detoast_slot(BgDestReceiver *self,
									   TupleTableSlot *slot);
static void bg_send_command_row(DestReceiver *dest, const char *tag);
static void bg_send_message(char msgtype, const char *str, TupleDesc desc);
static bool bg_receive_slot(TupleTableSlot *slot, DestReceiver *self);
static shm_mq_result bg_send_row(BgDestReceiver *self, shm_mq_iovec *iov,
								 int iovcnt, bool flush);
static bool bg_send_stored_tuple(BgDestReceiver *self, TupleTableSlot *slot,
								 bool flush, shm_mq_result *res);
static void bg_dest_startup(DestReceiver *self, int operation, TupleDesc typeinfo);
static void bg_dest_shutdown(DestReceiver *self);
static void bg_dest_destroy(DestReceiver *self);

/*
 * bg_launch(sql text, queue_size integer DEFAULT NULL,
 *			 stream boolean DEFAULT false) RETURNS integer
 *
 * Start a background job and return its worker's PID.  The result table
 * pg_temp.bg_result_<pid> exists when this returns.
 */
Datum
bg_launch(PG_FUNCTION_ARGS)
{
	char	   *sql;
	int			queue_size;
	List	   *raw_list;
	TupleDesc	desc = NULL;
	bool		stream;
	int			pid = 0;
	ErrorContextCallback errcallback;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("SQL of a background job must not be null")));
	sql = text_to_cstring(PG_GETARG_TEXT_PP(0));
	queue_size = bg_check_queue_size(fcinfo);

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
	 * A single statement is described now, as the protocol's Describe does,
	 * so the table can be created before the job runs.  With several, the
	 * last one may depend on what the earlier ones do; the worker reports
	 * its columns when it gets there.
	 */
	if (list_length(raw_list) == 1)
		desc = bg_result_desc(bg_describe(linitial_node(RawStmt, raw_list), sql));
	error_context_stack = errcallback.previous;

	bg_check_table_privileges();
	stream = !PG_ARGISNULL(2) && PG_GETARG_BOOL(2);

	/* bg_fdw.max_jobs_per_role: no other launch by the role until ours is listed */
	if (!bg_registry_lock_role(GetUserId()))
		PG_RETURN_INT32(bg_launch_job(sql, queue_size, desc, stream));
	PG_TRY();
	{
		pid = bg_launch_job(sql, queue_size, desc, stream);
	}
	PG_FINALLY();
	{
		bg_registry_unlock_role(GetUserId());
	}
	PG_END_TRY();
	PG_RETURN_INT32(pid);
}

/*
 * Start the job, give it its result table, and return once it is listed in
 * the registry.
 */
static int
bg_launch_job(const char *sql, int queue_size, TupleDesc desc, bool stream)
{
	BgJob	   *job = bg_start_job(sql, queue_size, desc, stream);

	if (desc == NULL)
	{
		bg_job_go(job->shared);
		bg_job_wait_descriptor(job);
	}
	job->stream = stream;
	bg_create_result_table(job);
	/* the job may run while we wait; it commits only once attached */
	bg_job_go(job->shared);
	bg_job_wait_registered(job);
	bg_job_attach(job);
	return job->pid;
}

/*
 * COPY to or from the client has no client to talk to in a worker.  Refuse
 * it before anything runs.
 */
static void
bg_check_statements(List *raw_list)
{
	ListCell   *lc;

	foreach(lc, raw_list)
	{
		Node	   *stmt = lfirst_node(RawStmt, lc)->stmt;

		if (IsA(stmt, CopyStmt) && ((CopyStmt *) stmt)->filename == NULL &&
			!((CopyStmt *) stmt)->is_program)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("COPY to or from the client is not supported in a background job"),
					 errhint("Copy to or from a server file instead, or read the job's result in this session with COPY (SELECT * FROM bg_result_<pid>) TO STDOUT.")));
	}
}

/*
 * Return the columns a statement would produce, or NULL if it produces
 * none, without running it.  Parse analysis locks the relations it reads;
 * doing it in a subtransaction that is rolled back lets those locks go, so
 * that describing a job does not make the launcher block the job.
 */
static TupleDesc
bg_describe(RawStmt *raw, const char *sql)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	CachedPlanSource *psrc;
	List	   *querytrees;
	TupleDesc	desc = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		psrc = CreateCachedPlan(raw, sql, CreateCommandTag(raw->stmt));
		querytrees = pg_analyze_and_rewrite_fixedparams(raw, sql, NULL, 0, NULL);
		CompleteCachedPlan(psrc, querytrees, NULL, NULL, 0, NULL, NULL,
						   CURSOR_OPT_PARALLEL_OK, true);
		if (psrc->resultDesc)
		{
			MemoryContextSwitchTo(oldcxt);
			desc = CreateTupleDescCopy(psrc->resultDesc);
		}
		DropCachedPlan(psrc);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		/* An internal subtransaction must be ended here, or ours is left aborted. */
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		ReThrowError(edata);
	}
	PG_END_TRY();

	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;

	return desc;
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

static int
bg_check_queue_size(FunctionCallInfo fcinfo)
{
	int			queue_size;

	if (PG_ARGISNULL(1))
		return bg_default_queue_size;
	queue_size = PG_GETARG_INT32(1);
	if (queue_size < BG_MIN_QUEUE_SIZE || queue_size > BG_MAX_QUEUE_SIZE)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("queue_size %d is out of range", queue_size),
				 errdetail("The queue size must be between %d and %d bytes.",
						   BG_MIN_QUEUE_SIZE, BG_MAX_QUEUE_SIZE)));
	return queue_size;
}

/*
 * Create the job's segment, start its worker and wait until the worker
 * exists.  The worker then waits for bg_job_go before running anything, so
 * that a launch that fails after this point runs nothing: the segment is
 * detached by transaction abort, and bg_launcher_detach tells the worker.
 *
 * The job's memory hangs off the current transaction until bg_job_attach
 * adopts it for the session.
 */
static BgJob *
bg_start_job(const char *sql, int queue_size, TupleDesc desc, bool stream)
{
	MemoryContext cxt;
	MemoryContext oldcxt;
	dsm_segment *seg;
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BgwHandleStatus status;
	pid_t		pid;

	cxt = AllocSetContextCreate(CurTransactionContext, "bg_fdw job",
								ALLOCSET_DEFAULT_SIZES);
	oldcxt = MemoryContextSwitchTo(cxt);

	seg = bg_create_segment(sql, queue_size, desc, stream);

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS |
		BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "bg_fdw");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "bg_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "bg_fdw job launched by PID %d",
			 MyProcPid);
	snprintf(worker.bgw_type, BGW_MAXLEN, BG_WORKER_TYPE);
	worker.bgw_main_arg = UInt32GetDatum(dsm_segment_handle(seg));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not register background process for a background job"),
				 errdetail("All background worker slots are in use."),
				 errhint("You may need to increase max_worker_processes (each running job takes one slot, shared with parallel query).")));

	status = WaitForBackgroundWorkerStartup(handle, &pid);
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
 * Lay out a job's segment.  The launcher is the receiver of both queues.
 */
static dsm_segment *
bg_create_segment(const char *sql, int queue_size, TupleDesc desc,
				  bool stream)
{
	shm_toc_estimator e;
	StringInfoData descbuf;
	Size		sql_len = strlen(sql) + 1;
	Size		guc_len = EstimateGUCStateSpace();
	Size		segsize;
	dsm_segment *seg;
	shm_toc    *toc;
	BgJobShared *shared;
	SharedFileSet *fileset;
	char	   *space;
	shm_mq	   *mq;

	initStringInfo(&descbuf);
	if (desc)
		bg_desc_serialize(&descbuf, desc);

	shm_toc_initialize_estimator(&e);
	shm_toc_estimate_chunk(&e, sizeof(BgJobShared));
	shm_toc_estimate_chunk(&e, sql_len);
	shm_toc_estimate_chunk(&e, guc_len);
	shm_toc_estimate_chunk(&e, sizeof(int32) + descbuf.len);
	shm_toc_estimate_chunk(&e, queue_size);
	shm_toc_estimate_chunk(&e, BG_MESSAGE_QUEUE_SIZE);
	shm_toc_estimate_chunk(&e, sizeof(SharedFileSet));
	shm_toc_estimate_keys(&e, 7);
	segsize = shm_toc_estimate(&e);

	seg = dsm_create(segsize, 0);
	toc = shm_toc_create(BG_FDW_MAGIC, dsm_segment_address(seg), segsize);

	shared = shm_toc_allocate(toc, sizeof(BgJobShared));
	memset(shared, 0, sizeof(BgJobShared));
	shared->job_id = bg_new_job_id();
	shared->database_id = MyDatabaseId;
	shared->authenticated_user_id = GetAuthenticatedUserId();
	shared->outer_user_id = GetCurrentRoleId();
	GetUserIdAndSecContext(&shared->current_user_id, &shared->sec_context);
	shared->role_is_superuser = bg_current_role_is_superuser();
	shared->launcher_pid = MyProcPid;
	shared->launcher_proc = MyProc;
	shared->launched_at = GetCurrentTimestamp();
	shared->stream = stream;
	shared->registry_relid = bg_registry_relid();
	shared->detached_relid = bg_detached_relid();
	pg_atomic_init_u64(&shared->rows, 0);
	SpinLockInit(&shared->mutex);
	shm_toc_insert(toc, BG_KEY_SHARED, shared);
	on_dsm_detach(seg, bg_launcher_detach, PointerGetDatum(shared));

	space = shm_toc_allocate(toc, sql_len);
	memcpy(space, sql, sql_len);
	shm_toc_insert(toc, BG_KEY_SQL, space);

	space = shm_toc_allocate(toc, guc_len);
	SerializeGUCState(guc_len, space);
	shm_toc_insert(toc, BG_KEY_GUC, space);

	if (desc)
	{
		space = shm_toc_allocate(toc, sizeof(int32) + descbuf.len);
		*(int32 *) space = descbuf.len;
		memcpy(space + sizeof(int32), descbuf.data, descbuf.len);
		shm_toc_insert(toc, BG_KEY_DESC, space);
	}

	mq = shm_mq_create(shm_toc_allocate(toc, queue_size), queue_size);
	shm_mq_set_receiver(mq, MyProc);
	shm_toc_insert(toc, BG_KEY_TUPLE_QUEUE, mq);

	mq = shm_mq_create(shm_toc_allocate(toc, BG_MESSAGE_QUEUE_SIZE),
					   BG_MESSAGE_QUEUE_SIZE);
	shm_mq_set_receiver(mq, MyProc);
	shm_toc_insert(toc, BG_KEY_MESSAGE_QUEUE, mq);

	fileset = shm_toc_allocate(toc, sizeof(SharedFileSet));
	SharedFileSetInit(fileset, seg);
	shm_toc_insert(toc, BG_KEY_FILESET, fileset);

	pfree(descbuf.data);
	return seg;
}

/*
 * A job's identifier must never be reused, across sessions and restarts,
 * and must not need a write (launching works in read-only transactions and
 * on standbys).  It is the launch time in milliseconds since 2000 in the high
 * 41 bits and the launcher's PID in the low 22: two backends never share a
 * PID at once, and one backend never hands out the same millisecond twice.
 */
int64
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
 * on_dsm_detach callback of the launcher: the worker must learn that nobody
 * will say "go" any more (a launch that failed, or a session that ended).
 */
static void
bg_launcher_detach(dsm_segment *seg, Datum arg)
{
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);
	PGPROC	   *proc;

	SpinLockAcquire(&shared->mutex);
	shared->launcher_gone = true;
	proc = shared->worker_proc;
	SpinLockRelease(&shared->mutex);
	if (proc)
		SetLatch(&proc->procLatch);
}

static void
bg_job_go(BgJobShared *shared)
{
	PGPROC	   *proc;

	SpinLockAcquire(&shared->mutex);
	shared->go = true;
	proc = shared->worker_proc;
	SpinLockRelease(&shared->mutex);
	if (proc)
		SetLatch(&proc->procLatch);
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
 * Create pg_temp.bg_result_<pid> for the job.  Where no table can be
 * created (a read-only transaction, a hot standby) the job still runs and
 * bg_result(pid) reads it.
 */
static void
bg_create_result_table(BgJob *job)
{
	CreateForeignTableStmt *stmt;
	char	   *relname = psprintf("bg_result_%d", job->pid);
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

	for (i = 0; i < job->desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(job->desc, i);

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
										   (Node *) makeString(psprintf("%d", job->pid)),
										   -1),
							   makeDefElem("job",
										   (Node *) makeString(psprintf(INT64_FORMAT, job->job_id)),
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

/* ----------------------------------------------------------------
 *		The worker
 * ----------------------------------------------------------------
 */

/*
 * Entry point of a job's background worker.  Errors are not caught: as in
 * parallel workers, an ERROR becomes FATAL, is sent to the launcher on the
 * message queue, and the process exits, which aborts the transaction.
 */
void
bg_worker_main(Datum main_arg)
{
	dsm_segment *seg;
	shm_toc    *toc;
	BgJobShared *shared;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	shm_mq_handle *tuple_mqh;
	SharedFileSet *fileset;
	char	   *desc_space;
	TupleDesc	expected = NULL;
	char	   *sql;
	char	   *tag;
	char		appname[NAMEDATALEN];

	pqsignal(SIGTERM, bg_worker_sigterm);
	BackgroundWorkerUnblockSignals();

	CurrentResourceOwner = ResourceOwnerCreate(NULL, "bg_fdw worker");
	bg_worker_segment = seg = dsm_attach(DatumGetUInt32(main_arg));
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("could not map dynamic shared memory segment of a background job")));
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("invalid magic number in dynamic shared memory segment of a background job")));
	shared = shm_toc_lookup(toc, BG_KEY_SHARED, false);
	on_dsm_detach(seg, bg_worker_exit, PointerGetDatum(shared));

	fileset = shm_toc_lookup(toc, BG_KEY_FILESET, false);
	SharedFileSetAttach(fileset, seg);

	/* From here on, our errors and notices reach the launcher. */
	mq = shm_toc_lookup(toc, BG_KEY_MESSAGE_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);
	bg_spill_redirect_messages(seg, mqh, shared, fileset);
	mq = shm_toc_lookup(toc, BG_KEY_TUPLE_QUEUE, false);
	shm_mq_set_sender(mq, MyProc);
	tuple_mqh = shm_mq_attach(mq, seg, NULL);

	SpinLockAcquire(&shared->mutex);
	shared->worker_proc = MyProc;
	SpinLockRelease(&shared->mutex);

	/*
	 * Connect as the session's authenticated user (a NOLOGIN current role
	 * could not connect), then take on the launcher's settings, role and
	 * security context, in the order ParallelWorkerMain uses.
	 */
	BackgroundWorkerInitializeConnectionByOid(shared->database_id,
											  shared->authenticated_user_id,
											  0);
	SetClientEncoding(GetDatabaseEncoding());
	/*
	 * These run before InitPostgres's own exit callbacks abort and close
	 * things, the detach last: it must happen even if the other is cut short
	 * by an error (which is FATAL during exit).
	 */
	before_shmem_exit(bg_worker_detach_at_exit, (Datum) 0);
	before_shmem_exit(bg_worker_before_exit, PointerGetDatum(shared));
	/*
	 * Some check hooks refuse values a leader may legitimately have, such as
	 * transaction_read_only = off on a hot standby; like a parallel worker,
	 * we only replay settings the launcher already has.
	 */
	StartTransactionCommand();
	InitializingParallelWorker = true;
	RestoreGUCState(shm_toc_lookup(toc, BG_KEY_GUC, false));
	InitializingParallelWorker = false;
	desc_space = shm_toc_lookup(toc, BG_KEY_DESC, true);
	if (desc_space)
	{
		StringInfoData buf;
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		bg_init_read_only_stringinfo(&buf, desc_space + sizeof(int32),
									 *(int32 *) desc_space);
		expected = bg_desc_deserialize(&buf);
		MemoryContextSwitchTo(oldcxt);
	}
	CommitTransactionCommand();
	SetCurrentRoleId(shared->outer_user_id, shared->role_is_superuser);
	SetUserIdAndSecContext(shared->current_user_id, shared->sec_context);

	snprintf(appname, sizeof(appname), "bg_fdw job %d (launcher %d)",
			 MyProcPid, (int) shared->launcher_pid);
	SetConfigOption("application_name", appname, PGC_USERSET, PGC_S_SESSION);

	sql = pstrdup(shm_toc_lookup(toc, BG_KEY_SQL, false));

	PG_TRY();
	{
		bg_registry_register(shared, sql, dsm_segment_handle(seg));
		bg_wait_for_launcher(shared, false);
		pgstat_report_activity(STATE_RUNNING, sql);
		tag = bg_exec_sql(sql, tuple_mqh, shared, fileset, expected);
	}
	PG_CATCH();
	{
		bg_worker_failed(shared);
	}
	PG_END_TRY();
	bg_send_message(BG_MSG_COMPLETE, tag, NULL);
	/* the outcome is out: being terminated from here on changes nothing */
	RESUME_INTERRUPTS();
	pgstat_report_activity(STATE_IDLE, NULL);
	bg_registry_tidy(shared);
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
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);
	bool		ended;

	/* whatever was under way holds no lock while we wait below */
	AbortOutOfAnyTransaction();
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
		bg_registry_fail(shared, &edata, bg_launch_failed(shared));
	}
	if (bg_launch_undecided(shared))
		bg_worker_await_launch(shared);
	/* the launch failed, before or after our failure was recorded */
	if (bg_launch_failed(shared))
		bg_registry_fail(shared, NULL, true);
	bg_spill_messages_exit();
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

/*
 * A launcher waiting for the descriptor of the last statement must get it
 * even if notices of earlier statements filled the message queue, and even
 * if the statement then produces no row for a long time (or, in stream
 * mode, waits on a full tuple queue): push until it is out.
 */
static void
bg_push_descriptor(BgJobShared *shared)
{
	while (bg_spill_messages_pending && bg_launch_undecided(shared))
	{
		bg_spill_push_messages();
		if (!bg_spill_messages_pending)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 100, bg_wait_event("BgFdwLaunch"));
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
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
						 100, bg_wait_event("BgFdwLaunch"));
		ResetLatch(MyLatch);
	}
}

/* on_dsm_detach callback of the worker: whoever looks can tell it is gone */
static void
bg_worker_exit(dsm_segment *seg, Datum arg)
{
	BgJobShared *shared = (BgJobShared *) DatumGetPointer(arg);

	SpinLockAcquire(&shared->mutex);
	shared->worker_exited = true;
	SpinLockRelease(&shared->mutex);
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
	 */
	bg_registry_fail(shared, edata, bg_launch_failed(shared));
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
		bool		gone;
		int			rc;

		SpinLockAcquire(&shared->mutex);
		ready = launched ? shared->launched : shared->go;
		gone = shared->launcher_gone;
		SpinLockRelease(&shared->mutex);

		if (ready)
			return;
		if (gone)
			ereport(ERROR,
					(errcode(ERRCODE_QUERY_CANCELED),
					 errmsg("canceling background job because its launch failed")));

		/* the launcher may be waiting for a message the queue could not take */
		bg_spill_push_messages();
		rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					   DeadlockTimeout, bg_wait_event("BgFdwLaunch"));
		if ((rc & WL_TIMEOUT) && launched)
			bg_check_launcher_deadlock(shared);
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
	if (bg_blocked_by_me(shared->launcher_pid))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("The session launching this background job waits for a lock the job holds, and the job waits for its launch to finish.")));
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
 * to the tuple queue.  Returns the last statement's completion tag, after
 * the commit.
 */
static char *
bg_exec_sql(const char *sql, shm_mq_handle *tuple_mqh, BgJobShared *shared,
			SharedFileSet *fileset, TupleDesc expected)
{
	MemoryContext stmt_cxt;
	List	   *parsetree_list;
	ListCell   *lc;
	bool		use_implicit_block;
	bool		xact_started = false;
	bool		recorded = false;
	char		tag[COMPLETION_TAG_BUFSIZE];

	stmt_cxt = AllocSetContextCreate(TopMemoryContext, "bg_fdw statement",
									 ALLOCSET_DEFAULT_SIZES);
	debug_query_string = sql;

	StartTransactionCommand();
	xact_started = true;
	parsetree_list = pg_parse_query(sql);
	MemoryContextSwitchTo(TopMemoryContext);
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
			receiver = bg_start_result(portal, tuple_mqh, shared, fileset, expected);
		else
			receiver = CreateDestReceiver(DestNone);
		MemoryContextSwitchTo(oldcxt);

		bg_portal_run(portal, receiver, &qc);
		PortalDrop(portal, false);

		if (last)
		{
			bg_completion_tag(tag, &qc);
			bg_send_command_row(receiver, tag);
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
			/* committed: a late cancel or terminate must not make it look failed */
			HOLD_INTERRUPTS();
			SpinLockAcquire(&shared->mutex);
			shared->ended = true;
			SpinLockRelease(&shared->mutex);
			if (IsTransactionBlock())
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TRANSACTION_STATE),
						 errmsg("background job ended inside a transaction block"),
						 errdetail("Its work since BEGIN was rolled back."),
						 errhint("End the job's SQL with COMMIT.")));
			if (!recorded)
				(void) bg_registry_finish(shared, tag, false);
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
	return pstrdup(tag);
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

/* ----------------------------------------------------------------
 *		The worker's DestReceiver
 * ----------------------------------------------------------------
 */

/*
 * Prepare to send the last statement's result: work out the columns the
 * reader sees, check them against what the launcher described, report them,
 * and make the receiver.
 */
static DestReceiver *
bg_start_result(Portal portal, shm_mq_handle *mqh, BgJobShared *shared,
				SharedFileSet *fileset, TupleDesc expected)
{
	BgDestReceiver *self = palloc0(sizeof(BgDestReceiver));
	TupleDesc	actual = portal->tupDesc;
	int			i;

	self->desc = bg_result_desc(actual);
	if (expected && !bg_desc_equal(expected, self->desc))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("result of the background job changed since it was launched"),
				 errdetail("The columns the statement returns are not those it was described with when bg_launch ran.")));
	bg_send_message(BG_MSG_DESCRIPTOR, NULL, self->desc);
	if (expected == NULL)
		bg_push_descriptor(shared);

	self->pub.receiveSlot = bg_receive_slot;
	self->pub.rStartup = bg_dest_startup;
	self->pub.rShutdown = bg_dest_shutdown;
	self->pub.rDestroy = bg_dest_destroy;
	self->pub.mydest = DestTupleQueue;
	self->mqh = mqh;
	self->shared = shared;
	/* a stream job's reader takes every row as it comes: none is kept */
	self->fileset = shared->stream ? NULL : fileset;
	self->row_cxt = AllocSetContextCreate(CurrentMemoryContext,
										  "bg_fdw row", ALLOCSET_SMALL_SIZES);

	/* A statement without rows sends one row: its completion tag. */
	self->command_shape = (actual == NULL);
	self->convert = (actual != NULL && !bg_desc_equal(actual, self->desc));
	if (self->command_shape || self->convert)
		self->text_slot = MakeSingleTupleTableSlot(self->desc, &TTSOpsVirtual);
	bg_find_varlena_columns(self, actual);
	if (self->convert)
	{
		self->out_funcs = palloc0(sizeof(FmgrInfo) * actual->natts);
		for (i = 0; i < actual->natts; i++)
		{
			Oid			outfunc;
			bool		isvarlena;

			getTypeOutputInfo(TupleDescAttr(actual, i)->atttypid,
							  &outfunc, &isvarlena);
			fmgr_info(outfunc, &self->out_funcs[i]);
		}
	}
	return (DestReceiver *) self;
}

static void
bg_send_command_row(DestReceiver *dest, const char *tag)
{
	BgDestReceiver *self = (BgDestReceiver *) dest;
	TupleTableSlot *slot = self->text_slot;

	if (!self->command_shape)
		return;
	ExecClearTuple(slot);
	slot->tts_values[0] = CStringGetTextDatum(tag);
	slot->tts_isnull[0] = false;
	ExecStoreVirtualTuple(slot);
	bg_receive_slot(slot, dest);
}

/*
 * A row may point into TOAST tables by reference, which parallel query can
 * afford because the leader reads them in the same transaction.  A spooled
 * row is read after the job has committed, when VACUUM may have removed
 * those values or the table may be gone: send them inline.
 */
static void
bg_find_varlena_columns(BgDestReceiver *self, TupleDesc actual)
{
	int			i;

	if (actual == NULL)
		return;
	self->varlena_atts = palloc(sizeof(int) * actual->natts);
	for (i = 0; i < actual->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(actual, i);

		/* columns sent as text are made afresh, inline */
		if (att->attlen == -1 &&
			att->atttypid == TupleDescAttr(self->desc, i)->atttypid)
			self->varlena_atts[self->nvarlena++] = i;
	}
	if (self->nvarlena == 0)
		return;
	self->detoast_slot = MakeSingleTupleTableSlot(self->desc, &TTSOpsVirtual);
	self->detoast_cxt = AllocSetContextCreate(CurrentMemoryContext,
											  "bg_fdw detoast",
											  ALLOCSET_DEFAULT_SIZES);
}

static TupleTableSlot *
bg_detoast_slot(BgDestReceiver *self, TupleTableSlot *slot)
{
	TupleTableSlot *out = NULL;
	int			natts = self->desc->natts;
	int			i;

	slot_getsomeattrs(slot, self->varlena_atts[self->nvarlena - 1] + 1);
	for (i = 0; i < self->nvarlena; i++)
	{
		int			att = self->varlena_atts[i];
		MemoryContext oldcxt;

		if (slot->tts_isnull[att] ||
			!VARATT_IS_EXTERNAL(DatumGetPointer(slot->tts_values[att])))
			continue;
		if (out == NULL)
		{
			slot_getallattrs(slot);
			out = self->detoast_slot;
			ExecClearTuple(out);
			MemoryContextReset(self->detoast_cxt);
			memcpy(out->tts_values, slot->tts_values, natts * sizeof(Datum));
			memcpy(out->tts_isnull, slot->tts_isnull, natts * sizeof(bool));
		}
		oldcxt = MemoryContextSwitchTo(self->detoast_cxt);
		out->tts_values[att] = PointerGetDatum(detoast_external_attr((struct varlena *)
																	 DatumGetPointer(slot->tts_values[att])));
		MemoryContextSwitchTo(oldcxt);
	}
	return out ? ExecStoreVirtualTuple(out) : slot;
}

/*
 * Turn the columns that cannot be table columns (void, record, other
 * pseudo-types) into their text form.
 */
static TupleTableSlot *
bg_convert_slot(BgDestReceiver *self, TupleTableSlot *slot)
{
	TupleTableSlot *out = self->text_slot;
	int			natts = self->desc->natts;
	int			i;

	slot_getallattrs(slot);
	ExecClearTuple(out);
	MemoryContextReset(self->row_cxt);
	for (i = 0; i < natts; i++)
	{
		out->tts_isnull[i] = slot->tts_isnull[i];
		if (slot->tts_isnull[i] ||
			TupleDescAttr(slot->tts_tupleDescriptor, i)->atttypid ==
			TupleDescAttr(self->desc, i)->atttypid)
			out->tts_values[i] = slot->tts_values[i];
		else
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(self->row_cxt);

			out->tts_values[i] =
				CStringGetTextDatum(OutputFunctionCall(&self->out_funcs[i],
													   slot->tts_values[i]));
			MemoryContextSwitchTo(oldcxt);
		}
	}
	return ExecStoreVirtualTuple(out);
}

/*
 * A row that lies in a table page, or is a heap tuple already, with no
 * TOAST pointers, goes to the queue as it is: the heap tuple header is
 * replaced by a minimal one on the fly, which saves forming a MinimalTuple
 * copy of every row.  Returns false if the row is not such a one.
 */
static bool
bg_send_stored_tuple(BgDestReceiver *self, TupleTableSlot *slot, bool flush,
					 shm_mq_result *res)
{
	HeapTuple	tuple;
	MinimalTupleData hdr;
	shm_mq_iovec iov[2];

	if (self->convert || !(TTS_IS_BUFFERTUPLE(slot) || TTS_IS_HEAPTUPLE(slot)))
		return false;
	tuple = ExecFetchSlotHeapTuple(slot, false, NULL);
	if (HeapTupleHasExternal(tuple))
		return false;

	memset(&hdr, 0, offsetof(MinimalTupleData, t_infomask2));
	hdr.t_len = tuple->t_len - MINIMAL_TUPLE_OFFSET;
	iov[0].data = (char *) &hdr;
	iov[0].len = offsetof(MinimalTupleData, t_infomask2);
	iov[1].data = (char *) tuple->t_data + offsetof(HeapTupleHeaderData, t_infomask2);
	iov[1].len = tuple->t_len - offsetof(HeapTupleHeaderData, t_infomask2);
	*res = bg_send_row(self, iov, 2, flush);
	return true;
}

/* Send a row: keep it if the queue is full, or wait there in stream mode. */
static shm_mq_result
bg_send_row(BgDestReceiver *self, shm_mq_iovec *iov, int iovcnt, bool flush)
{
	if (self->fileset == NULL)
		return shm_mq_sendv(self->mqh, iov, iovcnt, false, flush);
	return bg_spill_send_row(self->mqh, self->fileset, iov, iovcnt, flush) ?
		SHM_MQ_SUCCESS : SHM_MQ_DETACHED;
}

/*
 * Send one row.  A reader that went away is not an error: the job runs on
 * to its end and commits, and its rows are dropped.
 */
static bool
bg_receive_slot(TupleTableSlot *slot, DestReceiver *dest)
{
	BgDestReceiver *self = (BgDestReceiver *) dest;
	MinimalTuple tuple;
	bool		should_free;

	if (self->convert)
		slot = bg_convert_slot(self, slot);
	bg_spill_push_messages();

	if (!self->detached)
	{
		bool		flush = (self->rows < BG_FLUSH_EAGER_ROWS || bg_flush_due);
		shm_mq_result res;
		shm_mq_iovec iov;

		if (flush)
			bg_flush_due = false;
		if (!bg_send_stored_tuple(self, slot, flush, &res))
		{
			if (self->nvarlena > 0)
				slot = bg_detoast_slot(self, slot);
			tuple = ExecFetchSlotMinimalTuple(slot, &should_free);
			iov.data = (char *) tuple;
			iov.len = tuple->t_len;
			res = bg_send_row(self, &iov, 1, flush);
			if (should_free)
				pfree(tuple);
		}
		if (res == SHM_MQ_DETACHED)
			self->detached = true;
	}
	pg_atomic_write_u64(&self->shared->rows, ++self->rows);
	return true;
}

static void
bg_flush_timeout_handler(void)
{
	bg_flush_due = true;
}

static void
bg_dest_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	if (bg_flush_timeout == MAX_TIMEOUTS)
		bg_flush_timeout = RegisterTimeout(USER_TIMEOUT, bg_flush_timeout_handler);
	enable_timeout_every(bg_flush_timeout,
						 TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													 BG_FLUSH_INTERVAL_MS),
						 BG_FLUSH_INTERVAL_MS);
}

static void
bg_dest_shutdown(DestReceiver *self)
{
	disable_timeout(bg_flush_timeout, false);
}

static void
bg_dest_destroy(DestReceiver *dest)
{
	BgDestReceiver *self = (BgDestReceiver *) dest;

	if (self->text_slot)
		ExecDropSingleTupleTableSlot(self->text_slot);
	if (self->detoast_slot)
	{
		ExecDropSingleTupleTableSlot(self->detoast_slot);
		MemoryContextDelete(self->detoast_cxt);
	}
	MemoryContextDelete(self->row_cxt);
	pfree(self);
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
		pq_sendstring(&buf, str);
	pq_endmessage(&buf);
}
