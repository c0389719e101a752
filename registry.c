/*-------------------------------------------------------------------------
 *
 * registry.c
 *		  The job registry: what each job of the database is doing, or how
 *		  it ended, for any session to see (the bg_jobs view), and the
 *		  functions that act on a job by PID from any session.
 *
 * bg_fdw needs no shared_preload_libraries and PostgreSQL 15 has no DSM
 * registry, so the durable part lives in a table the extension owns,
 * bg_job_registry.  The live part (rows so far, whether the worker still
 * runs, whether a session reads the result) is read from the job's DSM
 * segment, whose handle the registry keeps.
 *
 * The worker writes its own row.  It inserts it before it runs anything, in
 * a transaction of its own, so the job is listed even if its work is later
 * rolled back; it records the outcome inside the job's last transaction when
 * it can, so that "finished" commits with the work.  A worker that vanished
 * without recording an outcome leaves "running" behind; readers show that as
 * "lost".
 *
 * The registry's SQL runs as the table's owner, with a fixed search_path,
 * and reads the latest committed state whatever the caller's isolation.
 *
 * Copyright (c) 2025-2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/registry.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/shm_toc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_FUNCTION_INFO_V1(bg_list_jobs);
PG_FUNCTION_INFO_V1(bg_forget);

/* How long finished jobs stay listed, in seconds; -1 keeps them */
int			bg_job_retention = 86400;

/* Running jobs a role may have in a database; -1 means no limit */
int			bg_max_jobs_per_role = -1;

#define BG_REGISTRY_TABLE		"bg_job_registry"
#define BG_JOBS_COLUMNS			13

/* Columns of bg_job_registry, as bg_fdw--1.0.sql creates it (0-based) */
#define BG_REGISTRY_NATTS		14
#define BG_REG_ID				0
#define BG_REG_PID				1
#define BG_REG_ROLE				2
#define BG_REG_DATABASE			3
#define BG_REG_LAUNCHER_PID		4
#define BG_REG_SEGMENT			5
#define BG_REG_QUERY			6
#define BG_REG_STATE			7
#define BG_REG_LAUNCHED_AT		8
#define BG_REG_FINISHED_AT		9
#define BG_REG_ROWS				10
#define BG_REG_COMMAND			11
#define BG_REG_SQLSTATE			12
#define BG_REG_ERROR			13
#define BG_DETACHED_TABLE		"bg_job_detached"

/*
 * The registry's rows as bg_jobs shows them, for a table name and a
 * condition.  A session holds a job's result until it detaches it or ends;
 * a PID alive since before the launch is still the launching session.
 */
#define BG_LIST_QUERY \
	"SELECT r.id, r.pid, r.role, r.segment, r.state, r.command, r.sqlstate, " \
	"r.error, r.query, r.launched_at, r.finished_at, r.rows, " \
	"a.backend_start <= r.launched_at AND NOT EXISTS " \
	"(SELECT FROM %s d WHERE d.id = r.id) " \
	"FROM %s r LEFT JOIN pg_stat_get_activity(NULL) a " \
	"ON a.pid = r.launcher_pid WHERE %s ORDER BY r.id"

/* Did this worker insert its registry row? */
static bool bg_row_inserted = false;

/* State kept across a call into the registry's SQL */
typedef struct BgRegistryCall
{
	char	   *relname;		/* qualified, quoted name of the registry */
	char	   *detachname;		/* and of the table of detached jobs */
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	bool		pushed_snapshot;	/* we set the active snapshot */
} BgRegistryCall;

/* How a job ended, for the registry */
typedef struct BgOutcome
{
	const char *state;
	const char *tag;			/* completion tag, if finished */
	ErrorData  *edata;			/* the error, if failed or cancelled */
	bool		discard;		/* the launch failed: remove the row */
} BgOutcome;

/* A registry row, as the functions acting on a job need it */
typedef struct BgJobEntry
{
	int64		id;
	int			pid;
	Oid			role;
	dsm_handle	segment;
	char	   *state;
	char	   *command;
	char	   *sqlstate;
	char	   *error;
} BgJobEntry;

/* What a job's segment says of it, if it still exists */
typedef struct BgJobProbe
{
	bool		found;			/* the segment exists and is this job's */
	bool		worker_alive;	/* its worker has not exited */
	uint64		rows;			/* rows sent so far */
} BgJobProbe;

static bool bg_registry_open(BgRegistryCall *call);
static void bg_registry_close(BgRegistryCall *call);
static void bg_registry_internal_xact(void);
static void bg_registry_own_xact(void (*work) (BgJobShared *shared, BgOutcome *outcome),
								 BgJobShared *shared, BgOutcome *outcome);
static void bg_registry_write_outcome(BgJobShared *shared, BgOutcome *outcome);
static void bg_registry_expire_only(BgJobShared *shared, BgOutcome *outcome);
static void bg_registry_no_lock_timeout(void);
static Relation bg_registry_open_rel(BgJobShared *shared);
static void bg_registry_insert(BgJobShared *shared, const char *sql,
							   dsm_handle handle);
static void bg_registry_exec(const char *sql, int nargs, Oid *types,
							 Datum *values, int expected);
static SPITupleTable *bg_registry_query(const char *sql, int nargs,
										Oid *types, Datum *values);
static void bg_registry_update(BgJobShared *shared, const char *state,
							   const char *tag, ErrorData *edata);
static void bg_registry_expire(BgJobShared *shared);
static bool bg_delete_if_free(Relation rel, ItemPointer tid);
static void bg_delete_detach_mark(Relation det, Datum id);
static Oid	bg_finished_at_index(Relation rel);
static void bg_registry_delete(int64 job_id);
static TimestampTz bg_retention_horizon(void);
static void bg_probe(int64 job_id, dsm_handle handle, BgJobProbe *probe);
static bool bg_entry_lookup(int pid, BgJobEntry *entry);
static void bg_entry_from_tuple(HeapTuple tuple, TupleDesc desc,
								BgJobEntry *entry);
static void bg_entry_check_privileges(BgJobEntry *entry);
static const char *bg_entry_state(BgJobEntry *entry, BgJobProbe *probe);
static bool bg_entry_reread(BgJobEntry *entry);
static bool bg_entry_fetch(const char *cond, int nargs, Oid *types,
						   Datum *values, BgJobEntry *entry);
static void bg_list_put(ReturnSetInfo *rsinfo, HeapTuple tuple, TupleDesc desc,
						BgJobEntry *entry, BgJobProbe *probe, Oid caller);
static void bg_entry_raise(BgJobEntry *entry);
static void bg_raise_lost(BgJobEntry *entry);
pg_noreturn static void bg_raise_unknown(int pid);

/* ----------------------------------------------------------------
 *		Calling the registry's SQL
 * ----------------------------------------------------------------
 */

/*
 * The registry table of the extension installed in this database, or
 * InvalidOid if the extension is not installed.
 */
Oid
bg_registry_relid(void)
{
	Relation	extrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	Oid			nspid = InvalidOid;

	extrel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("bg_fdw"));
	scan = systable_beginscan(extrel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	if (HeapTupleIsValid(tuple))
		nspid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(extrel, AccessShareLock);
	if (!OidIsValid(nspid))
		return InvalidOid;
	return get_relname_relid(BG_REGISTRY_TABLE, nspid);
}

/*
 * Find the registry table and become its owner, with a search_path nobody
 * can plant objects in, ready to run SQL on it.  False if the extension is
 * not installed (it may have been dropped while the job ran).
 */
static bool
bg_registry_open(BgRegistryCall *call)
{
	HeapTuple	tuple;
	Oid			relid = bg_registry_relid();
	Oid			nspid;
	Oid			owner;

	if (!OidIsValid(relid))
		return false;
	tuple = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tuple))
		return false;
	owner = ((Form_pg_class) GETSTRUCT(tuple))->relowner;
	nspid = ((Form_pg_class) GETSTRUCT(tuple))->relnamespace;
	ReleaseSysCache(tuple);
	call->relname = quote_qualified_identifier(get_namespace_name(nspid),
											   BG_REGISTRY_TABLE);
	call->detachname = quote_qualified_identifier(get_namespace_name(nspid),
												  BG_DETACHED_TABLE);

	GetUserIdAndSecContext(&call->save_userid, &call->save_sec_context);
	SetUserIdAndSecContext(owner, call->save_sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	call->save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_SAVE, true, 0, false);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	/* the worker's own transactions have no statement around them */
	call->pushed_snapshot = !ActiveSnapshotSet();
	if (call->pushed_snapshot)
		PushActiveSnapshot(GetTransactionSnapshot());
	return true;
}

static void
bg_registry_close(BgRegistryCall *call)
{
	if (call->pushed_snapshot)
		PopActiveSnapshot();
	SPI_finish();
	AtEOXact_GUC(false, call->save_nestlevel);
	SetUserIdAndSecContext(call->save_userid, call->save_sec_context);
}

/*
 * Make the worker's own bookkeeping transaction fit to write whatever the
 * job inherited: a job launched in a read-only or serializable transaction
 * still records itself.  Nothing has taken a snapshot yet, so this is what
 * SET TRANSACTION would do.  The row is worth no WAL flush of its own: the
 * job's commits flush it, and a crash before that loses only the listing
 * of a job that committed nothing.
 */
static void
bg_registry_internal_xact(void)
{
	XactReadOnly = false;
	XactIsoLevel = XACT_READ_COMMITTED;
	(void) set_config_option("synchronous_commit", "off",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	bg_registry_no_lock_timeout();
}

/*
 * The job's lock_timeout is for its statements: bookkeeping that timed out
 * would leave the job unlisted, or "lost" when it ended.
 */
static void
bg_registry_no_lock_timeout(void)
{
	(void) set_config_option("lock_timeout", "0",
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

static void
bg_registry_exec(const char *sql, int nargs, Oid *types, Datum *values,
				 int expected)
{
	int			rc = SPI_execute_with_args(sql, nargs, types, values, NULL,
										   false, 0);

	if (rc != expected)
		elog(ERROR, "registry statement failed: %s", SPI_result_code_string(rc));
}

/*
 * Read the registry as it is now, not as the caller's snapshot saw it: a
 * repeatable read transaction waiting for a job must see it end.
 */
static SPITupleTable *
bg_registry_query(const char *sql, int nargs, Oid *types, Datum *values)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);
	int			rc;

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	rc = SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
							  InvalidSnapshot, true, false, 0);
	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry query failed: %s", SPI_result_code_string(rc));
	return SPI_tuptable;
}

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/*
 * Insert the job's row, before it runs.  A standby cannot write; its jobs
 * are not listed.  bg_launch waits for "registered", so that the job is
 * listed by the time it returns.
 */
void
bg_registry_register(BgJobShared *shared, const char *sql, dsm_handle handle)
{
	if (!RecoveryInProgress() && OidIsValid(shared->registry_relid))
	{
		StartTransactionCommand();
		bg_registry_internal_xact();
		bg_registry_insert(shared, sql, handle);
		CommitTransactionCommand();
	}

	bg_job_set_flag(shared, &shared->registered, BG_WAKE_LAUNCHER);
}

/*
 * The row goes in without SQL: this runs on the path of every launch, in a
 * process whose caches are cold, and a new row cannot collide with anyone.
 * The launcher looked the table up; it may have been dropped since.
 */
static void
bg_registry_insert(BgJobShared *shared, const char *sql, dsm_handle handle)
{
	Relation	rel = bg_registry_open_rel(shared);
	Datum		values[BG_REGISTRY_NATTS];
	bool		nulls[BG_REGISTRY_NATTS];
	HeapTuple	tuple;

	if (rel == NULL)
		return;
	memset(nulls, true, sizeof(nulls));
	values[BG_REG_ID] = Int64GetDatum(shared->job_id);
	values[BG_REG_PID] = Int32GetDatum(MyProcPid);
	values[BG_REG_ROLE] = ObjectIdGetDatum(shared->current_user_id);
	values[BG_REG_DATABASE] = ObjectIdGetDatum(shared->database_id);
	values[BG_REG_LAUNCHER_PID] = Int32GetDatum(shared->launcher_pid);
	values[BG_REG_SEGMENT] = Int64GetDatum((int64) handle);
	values[BG_REG_QUERY] = CStringGetTextDatum(sql);
	values[BG_REG_STATE] = CStringGetTextDatum("running");
	values[BG_REG_LAUNCHED_AT] = TimestampTzGetDatum(shared->launched_at);
	nulls[BG_REG_ID] = nulls[BG_REG_PID] = nulls[BG_REG_ROLE] = false;
	nulls[BG_REG_DATABASE] = nulls[BG_REG_LAUNCHER_PID] = false;
	nulls[BG_REG_SEGMENT] = nulls[BG_REG_QUERY] = nulls[BG_REG_STATE] = false;
	nulls[BG_REG_LAUNCHED_AT] = false;

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	CatalogTupleInsert(rel, tuple);
	table_close(rel, NoLock);
	bg_row_inserted = true;
}

/*
 * Record that the job finished.  With in_job_xact, inside the job's last
 * transaction, before its commit, so that the two commit together; that is
 * not possible (returns false) when the transaction is read-only or an
 * explicit block whose end the job's own COMMIT or ROLLBACK decides.
 * Otherwise in a transaction of its own, after the job's commit: a failure
 * then is only logged, for the job's work is committed.
 */
bool
bg_registry_finish(BgJobShared *shared, const char *tag, bool in_job_xact)
{
	BgOutcome	outcome;

	if (!bg_row_inserted)
		return true;
	if (in_job_xact)
	{
		if (XactReadOnly || IsTransactionBlock())
			return false;

		/*
		 * A job that wrote nothing would commit without a WAL flush: our
		 * bookkeeping alone must not make it wait for one.
		 */
		if (!TransactionIdIsValid(GetTopTransactionIdIfAny()))
			(void) set_config_option("synchronous_commit", "off",
									 PGC_USERSET, PGC_S_SESSION,
									 GUC_ACTION_LOCAL, true, 0, false);
		bg_registry_no_lock_timeout();
		bg_registry_update(shared, "finished", tag, NULL);
		return true;
	}

	outcome.state = "finished";
	outcome.tag = tag;
	outcome.edata = NULL;
	outcome.discard = false;
	bg_registry_own_xact(bg_registry_write_outcome, shared, &outcome);
	return true;
}

/*
 * Run registry work in a transaction of its own.  A failure is only logged:
 * bookkeeping never changes how a job ends.
 */
static void
bg_registry_own_xact(void (*work) (BgJobShared *shared, BgOutcome *outcome),
					 BgJobShared *shared, BgOutcome *outcome)
{
	PG_TRY();
	{
		StartTransactionCommand();
		bg_registry_internal_xact();
		work(shared, outcome);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(TopMemoryContext);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		ereport(LOG,
				(errmsg("could not update the job registry for background job %d: %s",
						MyProcPid, edata->message)));
	}
	PG_END_TRY();
}

static void
bg_registry_write_outcome(BgJobShared *shared, BgOutcome *outcome)
{
	if (outcome->discard)
		bg_registry_delete(shared->job_id);
	else
		bg_registry_update(shared, outcome->state, outcome->tag, outcome->edata);
	if (outcome->edata != NULL || outcome->discard)
		bg_registry_expire(shared);
}

static void
bg_registry_expire_only(BgJobShared *shared, BgOutcome *outcome)
{
	bg_registry_expire(shared);
}

/*
 * Record how the job failed, after its transaction was rolled back.  A job
 * stopped by bg_cancel, or by its launcher giving up, is "cancelled"; a
 * statement_timeout or any other error makes it "failed".  With discard,
 * the job never ran and its row goes.
 */
void
bg_registry_fail(BgJobShared *shared, ErrorData *edata, bool discard)
{
	BgOutcome	outcome;

	if (!bg_row_inserted)
		return;
	outcome.state = "failed";
	outcome.tag = NULL;
	outcome.edata = edata;
	outcome.discard = discard;
	if (edata != NULL && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
	{
		SpinLockAcquire(&shared->mutex);
		if (shared->cancel_requested ||
			(shared->launcher_gone && !shared->launched))
			outcome.state = "cancelled";
		SpinLockRelease(&shared->mutex);
	}
	bg_registry_own_xact(bg_registry_write_outcome, shared, &outcome);
}

/*
 * Write the job's end state into its row.  Only the job's worker updates its
 * row (bg_forget and expiry delete only ended jobs), so this cannot meet a
 * concurrent update, and it goes in without SQL, as the insert did.
 */
static void
bg_registry_update(BgJobShared *shared, const char *state, const char *tag,
				   ErrorData *edata)
{
	Relation	rel = bg_registry_open_rel(shared);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	oldtup;
	Datum		values[BG_REGISTRY_NATTS];
	bool		nulls[BG_REGISTRY_NATTS];
	bool		replace[BG_REGISTRY_NATTS];

	if (rel == NULL)
		return;
	memset(nulls, false, sizeof(nulls));
	memset(replace, false, sizeof(replace));
	values[BG_REG_STATE] = CStringGetTextDatum(state);
	values[BG_REG_FINISHED_AT] = TimestampTzGetDatum(GetCurrentTimestamp());
	values[BG_REG_ROWS] = Int64GetDatum((int64) pg_atomic_read_u64(&shared->rows));
	nulls[BG_REG_SEGMENT] = true;
	nulls[BG_REG_COMMAND] = (tag == NULL);
	if (tag)
		values[BG_REG_COMMAND] = CStringGetTextDatum(tag);
	nulls[BG_REG_SQLSTATE] = nulls[BG_REG_ERROR] = (edata == NULL);
	if (edata)
	{
		values[BG_REG_SQLSTATE] = CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode));
		values[BG_REG_ERROR] = CStringGetTextDatum(edata->message ? edata->message : "");
	}
	replace[BG_REG_STATE] = replace[BG_REG_FINISHED_AT] = replace[BG_REG_ROWS] = true;
	replace[BG_REG_SEGMENT] = replace[BG_REG_COMMAND] = true;
	replace[BG_REG_SQLSTATE] = replace[BG_REG_ERROR] = true;

	ScanKeyInit(&key, BG_REG_ID + 1, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(shared->job_id));
	scan = systable_beginscan(rel, bg_primary_key_index(rel), true, NULL, 1, &key);
	oldtup = systable_getnext(scan);
	if (HeapTupleIsValid(oldtup))
	{
		HeapTuple	newtup = heap_modify_tuple(oldtup, RelationGetDescr(rel),
											   values, nulls, replace);

		CatalogTupleUpdate(rel, &oldtup->t_self, newtup);
	}
	systable_endscan(scan);
	table_close(rel, NoLock);
}

/*
 * Open the registry the launcher looked up, or NULL if that OID is no longer
 * the registry (the extension was dropped while the job ran).
 */
static Relation
bg_registry_open_rel(BgJobShared *shared)
{
	Relation	rel = try_table_open(shared->registry_relid, RowExclusiveLock);

	if (rel != NULL &&
		(RelationGetDescr(rel)->natts != BG_REGISTRY_NATTS ||
		 strcmp(RelationGetRelationName(rel), BG_REGISTRY_TABLE) != 0))
	{
		table_close(rel, RowExclusiveLock);
		rel = NULL;
	}
	return rel;
}

/*
 * Delete the jobs that ended longer than bg_fdw.job_retention ago, and their
 * detach marks.  A row someone else is deleting (bg_forget) is skipped: a
 * job never waits for that.
 */
static void
bg_registry_expire(BgJobShared *shared)
{
	Relation	rel;
	Relation	det;
	Oid			index;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	if (bg_job_retention < 0)
		return;
	rel = bg_registry_open_rel(shared);
	if (rel == NULL)
		return;
	index = bg_finished_at_index(rel);
	det = try_table_open(shared->detached_relid, RowExclusiveLock);
	if (!OidIsValid(index) || det == NULL)
	{
		if (det)
			table_close(det, RowExclusiveLock);
		table_close(rel, RowExclusiveLock);
		return;
	}

	ScanKeyInit(&key, BG_REG_FINISHED_AT + 1, BTLessStrategyNumber,
				F_TIMESTAMPTZ_LT, TimestampTzGetDatum(bg_retention_horizon()));
	scan = systable_beginscan(rel, index, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		id = heap_getattr(tuple, BG_REG_ID + 1,
									  RelationGetDescr(rel), &isnull);

		if (bg_delete_if_free(rel, &tuple->t_self))
			bg_delete_detach_mark(det, id);
	}
	systable_endscan(scan);
	table_close(det, NoLock);
	table_close(rel, NoLock);
}

/* Delete a row unless another transaction holds it. */
static bool
bg_delete_if_free(Relation rel, ItemPointer tid)
{
	TM_FailureData tmfd;

	return table_tuple_delete(rel, tid, GetCurrentCommandId(true),
							  GetLatestSnapshot(), InvalidSnapshot,
							  false, &tmfd, false) == TM_Ok;
}

static void
bg_delete_detach_mark(Relation det, Datum id)
{
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	ScanKeyInit(&key, 1, BTEqualStrategyNumber, F_INT8EQ, id);
	scan = systable_beginscan(det, bg_primary_key_index(det), true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		(void) bg_delete_if_free(det, &tuple->t_self);
	systable_endscan(scan);
}

/* The registry's index on finished_at, which expiry scans. */
static Oid
bg_finished_at_index(Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (index->rd_index->indnatts == 1 &&
			index->rd_index->indkey.values[0] == BG_REG_FINISHED_AT + 1)
			found = lfirst_oid(lc);
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	return found;
}

/*
 * A finished job's last chore, once its reader has the outcome (so that it
 * costs the reader no time): expire old jobs.  Failure is only logged.
 */
void
bg_registry_tidy(BgJobShared *shared)
{
	if (!bg_row_inserted || bg_job_retention < 0)
		return;
	bg_registry_own_xact(bg_registry_expire_only, shared, NULL);
}

static TimestampTz
bg_retention_horizon(void)
{
	return GetCurrentTimestamp() - (TimestampTz) bg_job_retention * USECS_PER_SEC;
}

/* ----------------------------------------------------------------
 *		Looking at a job from any session
 * ----------------------------------------------------------------
 */

/*
 * Look into the job's segment.  Its handle may have been reused by another
 * segment since: the job identifier says whether it is still this job's.
 */
static void
bg_probe(int64 job_id, dsm_handle handle, BgJobProbe *probe)
{
	dsm_segment *seg = dsm_find_mapping(handle);
	bool		ours = (seg != NULL);
	shm_toc    *toc;

	memset(probe, 0, sizeof(BgJobProbe));
	if (handle == DSM_HANDLE_INVALID)
		return;
	if (seg == NULL)
		seg = dsm_attach(handle);
	if (seg == NULL)
		return;
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc != NULL)
	{
		BgJobShared *shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);

		if (shared != NULL && shared->job_id == job_id)
		{
			probe->found = true;
			probe->worker_alive = !bg_job_get_flag(shared,
												   &shared->worker_exited);
			probe->rows = pg_atomic_read_u64(&shared->rows);
		}
	}
	if (!ours)
		dsm_detach(seg);
}

/*
 * A running job whose worker is gone is lost.  On a standby the rows are the
 * primary's, whose segments cannot be seen: trust them.
 */
static const char *
bg_entry_state(BgJobEntry *entry, BgJobProbe *probe)
{
	if (strcmp(entry->state, "running") != 0 || RecoveryInProgress() ||
		(probe->found && probe->worker_alive))
		return entry->state;

	/*
	 * The worker records its outcome before it exits: now that it has,
	 * a second look tells an outcome recorded since the first from none.
	 */
	if (!bg_entry_reread(entry))
		return "forgotten";
	if (strcmp(entry->state, "running") == 0)
		return "lost";
	return entry->state;
}

/* Read the entry's row again, with a new snapshot.  False if it is gone. */
static bool
bg_entry_reread(BgJobEntry *entry)
{
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	values[0] = Int64GetDatum(entry->id);
	return bg_entry_fetch("id = $1", 1, types, values, entry);
}

/*
 * Fill entry from the first registry row matching a condition (and an
 * ORDER BY); false if none does.
 */
static bool
bg_entry_fetch(const char *cond, int nargs, Oid *types, Datum *values,
			   BgJobEntry *entry)
{
	BgRegistryCall call;
	SPITupleTable *tt;
	bool		found = false;
	MemoryContext cxt = CurrentMemoryContext;

	if (!bg_registry_open(&call))
		return false;
	tt = bg_registry_query(psprintf("SELECT id, pid, role, segment, state, command, sqlstate, error "
									"FROM %s WHERE %s LIMIT 1", call.relname, cond),
						   nargs, types, values);
	if (tt->numvals > 0)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);

		bg_entry_from_tuple(tt->vals[0], tt->tupdesc, entry);
		MemoryContextSwitchTo(oldcxt);
		found = true;
	}
	bg_registry_close(&call);
	return found;
}

static void
bg_entry_from_tuple(HeapTuple tuple, TupleDesc desc, BgJobEntry *entry)
{
	bool		isnull;
	Datum		d;

	entry->id = DatumGetInt64(SPI_getbinval(tuple, desc, 1, &isnull));
	entry->pid = DatumGetInt32(SPI_getbinval(tuple, desc, 2, &isnull));
	entry->role = DatumGetObjectId(SPI_getbinval(tuple, desc, 3, &isnull));
	d = SPI_getbinval(tuple, desc, 4, &isnull);
	entry->segment = isnull ? DSM_HANDLE_INVALID : (dsm_handle) DatumGetInt64(d);
	entry->state = SPI_getvalue(tuple, desc, 5);
	entry->command = SPI_getvalue(tuple, desc, 6);
	entry->sqlstate = SPI_getvalue(tuple, desc, 7);
	entry->error = SPI_getvalue(tuple, desc, 8);
}

/*
 * The job with this PID: this session's attached job, else the newest one
 * the registry knows in this database.
 */
static bool
bg_entry_lookup(int pid, BgJobEntry *entry)
{
	BgJob	   *job = bg_job_lookup(pid, 0, true);
	Oid			types[3] = {INT4OID, OIDOID, INT8OID};
	Datum		values[3];

	if (!OidIsValid(bg_registry_relid()))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"bg_fdw\" is not installed in this database")));
	values[0] = Int32GetDatum(pid);
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	values[2] = Int64GetDatum(job && job->state != BG_JOB_DETACHED ? job->job_id : 0);
	return bg_entry_fetch("pid = $1 AND database = $2 ORDER BY id = $3 DESC, id DESC",
						  3, types, values, entry);
}

static void
bg_entry_check_privileges(BgJobEntry *entry)
{
	if (!has_privs_of_role(GetUserId(), entry->role))
		bg_permission_denied(entry->pid, entry->role);
}

/*
 * bg_list_jobs(): the rows of the bg_jobs view.  Everyone may see that a job
 * exists, as pg_stat_activity shows; its query and error only roles with the
 * privileges of the job's role.
 */
Datum
bg_list_jobs(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			caller = GetUserId();
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[2] = {OIDOID, TIMESTAMPTZOID};
	Datum		values[2];
	uint64		i;

	InitMaterializedSRF(fcinfo, 0);
	if (!bg_registry_open(&call))
		return (Datum) 0;
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = TimestampTzGetDatum(bg_job_retention < 0 ? DT_NOBEGIN :
									bg_retention_horizon());
	tt = bg_registry_query(psprintf(BG_LIST_QUERY, call.detachname, call.relname,
									"r.database = $1 AND (r.finished_at IS NULL OR r.finished_at >= $2)"),
						   2, types, values);

	for (i = 0; i < tt->numvals; i++)
	{
		HeapTuple	tuple = tt->vals[i];
		BgJobEntry	entry;
		BgJobProbe	probe;

		bg_entry_from_tuple(tuple, tt->tupdesc, &entry);
		bg_probe(entry.id, entry.segment, &probe);

		/*
		 * A worker records its outcome before it exits: one found gone may
		 * have recorded it since our snapshot.  Look again.
		 */
		if (strcmp(entry.state, "running") == 0 && !RecoveryInProgress() &&
			!(probe.found && probe.worker_alive))
		{
			SPITupleTable *again;
			Oid			idtype[1] = {INT8OID};
			Datum		id[1];

			id[0] = Int64GetDatum(entry.id);
			again = bg_registry_query(psprintf(BG_LIST_QUERY, call.detachname, call.relname, "r.id = $1"),
									  1, idtype, id);
			if (again->numvals == 0)
				continue;		/* forgotten meanwhile */
			tuple = again->vals[0];
			bg_entry_from_tuple(tuple, again->tupdesc, &entry);
		}
		bg_list_put(rsinfo, tuple, tt->tupdesc, &entry, &probe, caller);
	}
	bg_registry_close(&call);
	return (Datum) 0;
}

/* One row of bg_jobs, from a row of BG_LIST_QUERY */
static void
bg_list_put(ReturnSetInfo *rsinfo, HeapTuple tuple, TupleDesc desc,
			BgJobEntry *entry, BgJobProbe *probe, Oid caller)
{
	Datum		out[BG_JOBS_COLUMNS];
	bool		nulls[BG_JOBS_COLUMNS];
	bool		privileged = has_privs_of_role(caller, entry->role);
	bool		running = (strcmp(entry->state, "running") == 0);
	bool		isnull;

	memset(nulls, 0, sizeof(nulls));
	out[0] = Int64GetDatum(entry->id);
	out[1] = Int32GetDatum(entry->pid);
	out[2] = ObjectIdGetDatum(entry->role);
	out[3] = DirectFunctionCall1(namein,
								 CStringGetDatum(get_database_name(MyDatabaseId)));
	out[4] = SPI_getbinval(tuple, desc, 9, &isnull);
	nulls[4] = isnull || !privileged;
	if (running && !RecoveryInProgress() && !(probe->found && probe->worker_alive))
		out[5] = CStringGetTextDatum("lost");
	else
		out[5] = CStringGetTextDatum(entry->state);
	out[6] = SPI_getbinval(tuple, desc, 10, &nulls[6]);
	out[7] = SPI_getbinval(tuple, desc, 11, &nulls[7]);
	if (running && probe->found)
		out[8] = Int64GetDatum((int64) probe->rows);
	else
		out[8] = SPI_getbinval(tuple, desc, 12, &nulls[8]);
	nulls[9] = (entry->command == NULL);
	out[9] = nulls[9] ? (Datum) 0 : CStringGetTextDatum(entry->command);
	nulls[10] = (entry->sqlstate == NULL);
	out[10] = nulls[10] ? (Datum) 0 : CStringGetTextDatum(entry->sqlstate);
	nulls[11] = (entry->error == NULL || !privileged);
	out[11] = nulls[11] ? (Datum) 0 : CStringGetTextDatum(entry->error);
	out[12] = SPI_getbinval(tuple, desc, 13, &isnull);
	if (isnull)
		out[12] = BoolGetDatum(false);
	nulls[12] = RecoveryInProgress();

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, out, nulls);
}

/* ----------------------------------------------------------------
 *		Acting on another session's job
 * ----------------------------------------------------------------
 */

/*
 * A job's error, raised in the waiting session.  The registry keeps its
 * SQLSTATE and message, not the whole report.
 */
static void
bg_entry_raise(BgJobEntry *entry)
{
	if (entry->sqlstate == NULL || strlen(entry->sqlstate) != 5)
		elog(ERROR, "background job %d ended in state \"%s\"",
			 entry->pid, entry->state);
	ereport(ERROR,
			(errcode(MAKE_SQLSTATE(entry->sqlstate[0], entry->sqlstate[1],
								   entry->sqlstate[2], entry->sqlstate[3],
								   entry->sqlstate[4])),
			 errmsg_internal("%s", entry->error),
			 errcontext("background job %d", entry->pid)));
}

static void
bg_raise_unknown(int pid)
{
	ereport(ERROR,
			(errcode(ERRCODE_UNDEFINED_OBJECT),
			 errmsg("background job %d does not exist", pid),
			 errhint("bg_launch returns the PID of the job it starts.")));
}

static void
bg_raise_lost(BgJobEntry *entry)
{
	ereport(ERROR,
			(errcode(ERRCODE_CONNECTION_FAILURE),
			 errmsg("background job %d was lost", entry->pid),
			 errdetail("Its worker process ended without recording an outcome; whether its work was committed is unknown.")));
}

/*
 * bg_wait for a job this session does not hold: poll the registry until it
 * records an end.  Returns NULL if the timeout passes first.
 */
text *
bg_registry_wait(int pid, long timeout_ms)
{
	TimestampTz deadline = 0;
	long		nap_ms = 1;
	MemoryContext poll_cxt = AllocSetContextCreate(CurrentMemoryContext,
												   "bg_fdw wait",
												   ALLOCSET_SMALL_SIZES);
	MemoryContext oldcxt = CurrentMemoryContext;

	if (timeout_ms >= 0)
		deadline = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), timeout_ms);
	for (;;)
	{
		BgJobEntry	entry;
		BgJobProbe	probe;
		const char *state;

		/* each look leaves its strings behind: keep them to one look */
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(poll_cxt);
		MemoryContextSwitchTo(poll_cxt);
		if (!bg_entry_lookup(pid, &entry))
			bg_raise_unknown(pid);
		bg_entry_check_privileges(&entry);
		bg_probe(entry.id, entry.segment, &probe);
		state = bg_entry_state(&entry, &probe);
		if (strcmp(state, "finished") == 0)
		{
			MemoryContextSwitchTo(oldcxt);
			return cstring_to_text(entry.command ? entry.command : "");
		}
		if (strcmp(state, "lost") == 0)
			bg_raise_lost(&entry);
		if (strcmp(state, "forgotten") == 0)
			bg_raise_unknown(pid);
		if (strcmp(state, "running") != 0)
			bg_entry_raise(&entry);

		if (timeout_ms >= 0)
		{
			long		remaining = TimestampDifferenceMilliseconds(GetCurrentTimestamp(),
																	deadline);

			if (remaining <= 0)
			{
				MemoryContextSwitchTo(oldcxt);
				return NULL;
			}
			nap_ms = Min(nap_ms, remaining);
		}
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 nap_ms, bg_wait_event_job());
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
		nap_ms = Min(nap_ms * 2, 100);
	}
}

/*
 * Ask the job's worker to cancel its statement: note that it was asked, so
 * that the job is recorded as "cancelled" rather than failed.  False if the
 * worker has already ended.
 */
bool
bg_cancel_shared(BgJobShared *shared, pid_t pid)
{
	bool		exited;

	SpinLockAcquire(&shared->mutex);
	exited = shared->worker_exited || shared->ended;
	if (!exited)
		shared->cancel_requested = true;
	SpinLockRelease(&shared->mutex);
	return !exited && kill(pid, SIGINT) == 0;
}

/* bg_cancel of a job this session does not hold */
bool
bg_registry_cancel(int pid)
{
	BgJobEntry	entry;
	dsm_segment *seg;
	shm_toc    *toc;
	bool		ours;
	bool		done = false;

	if (!bg_entry_lookup(pid, &entry))
		bg_raise_unknown(pid);
	bg_entry_check_privileges(&entry);
	if (strcmp(entry.state, "running") != 0 || entry.segment == DSM_HANDLE_INVALID)
		return false;

	/* this session may still map it: a job it detached in this transaction */
	seg = dsm_find_mapping(entry.segment);
	ours = (seg != NULL);
	if (seg == NULL)
		seg = dsm_attach(entry.segment);
	if (seg == NULL)
		return false;
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc != NULL)
	{
		BgJobShared *shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);

		if (shared != NULL && shared->job_id == entry.id)
			done = bg_cancel_shared(shared, entry.pid);
	}
	if (!ours)
		dsm_detach(seg);
	return done;
}

/*
 * bg_forget(pid integer) RETURNS void
 *
 * Remove an ended job from bg_jobs.  A result this session still holds stays
 * readable until bg_detach.
 */
Datum
bg_forget(PG_FUNCTION_ARGS)
{
	int			pid = PG_GETARG_INT32(0);
	BgJobEntry	entry;
	BgJobProbe	probe;

	if (!bg_entry_lookup(pid, &entry))
		bg_raise_unknown(pid);
	bg_entry_check_privileges(&entry);
	bg_probe(entry.id, entry.segment, &probe);
	if (strcmp(bg_entry_state(&entry, &probe), "running") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot forget background job %d because it is still running",
						pid),
				 errhint("Cancel it with bg_cancel(), or wait for it with bg_wait().")));

	bg_registry_delete(entry.id);
	PG_RETURN_VOID();
}

static void
bg_registry_delete(int64 job_id)
{
	BgRegistryCall call;
	Oid			types[1] = {INT8OID};
	Datum		values[1];

	if (!bg_registry_open(&call))
		return;
	values[0] = Int64GetDatum(job_id);
	bg_registry_exec(psprintf("DELETE FROM %s WHERE id = $1", call.relname),
					 1, types, values, SPI_OK_DELETE);
	bg_registry_exec(psprintf("DELETE FROM %s WHERE id = $1", call.detachname),
					 1, types, values, SPI_OK_DELETE);
	bg_registry_close(&call);
}

/*
 * bg_detach: note in the registry that no session holds the result any more,
 * as part of the detaching transaction.  Where that cannot write (read-only
 * transactions, standbys), bg_jobs learns it when the session ends.
 */
void
bg_registry_detached(int64 job_id)
{
	Oid			relid = bg_detached_relid();
	Relation	rel;
	Datum		values[1];
	bool		nulls[1] = {false};

	if (XactReadOnly || RecoveryInProgress() || !OidIsValid(relid))
		return;
	rel = table_open(relid, RowExclusiveLock);
	values[0] = Int64GetDatum(job_id);
	CatalogTupleInsert(rel, heap_form_tuple(RelationGetDescr(rel), values, nulls));
	table_close(rel, NoLock);
}

/* bg_job_detached, beside the registry */
Oid
bg_detached_relid(void)
{
	Oid			registry = bg_registry_relid();

	if (!OidIsValid(registry))
		return InvalidOid;
	return get_relname_relid(BG_DETACHED_TABLE, get_rel_namespace(registry));
}

/* ----------------------------------------------------------------
 *		bg_fdw.max_jobs_per_role
 * ----------------------------------------------------------------
 */

/*
 * Lock out other launches by the role until ours is registered, and refuse
 * it if the role already runs bg_fdw.max_jobs_per_role jobs here.  Returns
 * whether the lock was taken; bg_registry_unlock_role releases it.
 */
bool
bg_registry_lock_role(Oid role)
{
	LOCKTAG		tag;
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[2] = {OIDOID, OIDOID};
	Datum		values[2];
	int			running = 0;
	uint64		i;

	if (bg_max_jobs_per_role < 0 || RecoveryInProgress())
		return false;
	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, AuthIdRelationId, role, 0);
	(void) LockAcquire(&tag, ExclusiveLock, true, false);

	if (bg_registry_open(&call))
	{
		values[0] = ObjectIdGetDatum(role);
		values[1] = ObjectIdGetDatum(MyDatabaseId);
		tt = bg_registry_query(psprintf("SELECT id, segment FROM %s WHERE role = $1 "
										"AND database = $2 AND state = 'running'",
										call.relname),
							   2, types, values);
		for (i = 0; i < tt->numvals; i++)
		{
			BgJobProbe	probe;
			bool		isnull;
			int64		id = DatumGetInt64(SPI_getbinval(tt->vals[i], tt->tupdesc, 1, &isnull));
			Datum		seg = SPI_getbinval(tt->vals[i], tt->tupdesc, 2, &isnull);

			bg_probe(id, isnull ? DSM_HANDLE_INVALID : (dsm_handle) DatumGetInt64(seg),
					 &probe);
			if (probe.found && probe.worker_alive)
				running++;
		}
		bg_registry_close(&call);
	}

	if (running >= bg_max_jobs_per_role)
	{
		bg_registry_unlock_role(role);
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("too many background jobs for role \"%s\"",
						GetUserNameFromId(role, false)),
				 errdetail_plural("The role runs %d job in this database; bg_fdw.max_jobs_per_role is %d.",
								  "The role runs %d jobs in this database; bg_fdw.max_jobs_per_role is %d.",
								  running, running, bg_max_jobs_per_role),
				 errhint("Wait for a job to end, or cancel one with bg_cancel().")));
	}
	return true;
}

void
bg_registry_unlock_role(Oid role)
{
	LOCKTAG		tag;

	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, AuthIdRelationId, role, 0);
	LockRelease(&tag, ExclusiveLock, true);
}
