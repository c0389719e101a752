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
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/registry.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_extension.h"
#include "commands/dbcommands.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/bufmgr.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/shm_toc.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
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
int			bg_max_kept_size_per_role = BG_DEFAULT_MAX_KEPT_PER_ROLE_KB;

/* A column the C code needs in a table of the extension */
typedef struct BgColumn
{
	const char *name;
	Oid			type;
	bool		notnull;		/* the C code reads it without a NULL test */
} BgColumn;

/* bg_job_registry's columns, by Anum_bg_job_registry_* - 1 */
static const BgColumn bg_registry_columns[Natts_bg_job_registry] = {
	{"id", INT8OID, true},
	{"pid", INT4OID, true},
	{"role", OIDOID, true},
	{"database", OIDOID, true},
	{"launcher_pid", INT4OID, true},
	{"segment", INT8OID, false},
	{"query", TEXTOID, true},
	{"state", TEXTOID, true},
	{"launched_at", TIMESTAMPTZOID, true},
	{"finished_at", TIMESTAMPTZOID, false},
	{"rows", INT8OID, false},
	{"command", TEXTOID, false},
	{"sqlstate", TEXTOID, false},
	{"error", TEXTOID, false}
};

/* bg_job_detached's columns, by Anum_bg_job_detached_* - 1 */
static const BgColumn bg_detached_columns[Natts_bg_job_detached] = {
	{"id", INT8OID, true}
};

/*
 * The text of each job state in bg_job_registry.state.  Rows are written
 * without checking the table's CHECK constraint, so the C code must: a
 * worker records only the first four, and "lost" is recorded only by
 * bg_registry_mark_lost, in a registry of 1.1 or later (1.0's constraint
 * does not allow it).
 */
static const char *const bg_statuses[BG_NUM_STATUSES] = {
	[BG_STATUS_RUNNING] = "running",
	[BG_STATUS_FINISHED] = "finished",
	[BG_STATUS_FAILED] = "failed",
	[BG_STATUS_CANCELLED] = "cancelled",
	[BG_STATUS_LOST] = "lost"
};

/*
 * The columns of bg_list_jobs() (and so of the bg_jobs view) this library
 * fills, found by name in the descriptor the function's SQL declaration
 * gives: a declaration with more columns gets NULL in those, one with fewer
 * simply lacks them.
 */
typedef enum BgListColumn
{
	BG_LIST_ID,
	BG_LIST_PID,
	BG_LIST_ROLE,
	BG_LIST_DATABASE,
	BG_LIST_QUERY_TEXT,
	BG_LIST_STATE,
	BG_LIST_LAUNCHED_AT,
	BG_LIST_FINISHED_AT,
	BG_LIST_ROWS,
	BG_LIST_COMMAND,
	BG_LIST_SQLSTATE,
	BG_LIST_ERROR,
	BG_LIST_ATTACHED,
	BG_LIST_KEPT,
	BG_LIST_KEPT_BYTES,
	BG_LIST_LABEL,
	BG_LIST_PROGRESS,
	BG_LIST_PROGRESS_MESSAGE,
	BG_LIST_WORKER_PID,
	BG_LIST_NCOLUMNS
} BgListColumn;

static const BgColumn bg_list_columns[BG_LIST_NCOLUMNS] = {
	[BG_LIST_ID] = {"id", INT8OID},
	[BG_LIST_PID] = {"pid", INT4OID},
	[BG_LIST_ROLE] = {"role", REGROLEOID},
	[BG_LIST_DATABASE] = {"database", NAMEOID},
	[BG_LIST_QUERY_TEXT] = {"query", TEXTOID},
	[BG_LIST_STATE] = {"state", TEXTOID},
	[BG_LIST_LAUNCHED_AT] = {"launched_at", TIMESTAMPTZOID},
	[BG_LIST_FINISHED_AT] = {"finished_at", TIMESTAMPTZOID},
	[BG_LIST_ROWS] = {"rows", INT8OID},
	[BG_LIST_COMMAND] = {"command", TEXTOID},
	[BG_LIST_SQLSTATE] = {"sqlstate", TEXTOID},
	[BG_LIST_ERROR] = {"error", TEXTOID},
	[BG_LIST_ATTACHED] = {"attached", BOOLOID},
	[BG_LIST_KEPT] = {"kept", BOOLOID},
	[BG_LIST_KEPT_BYTES] = {"kept_bytes", INT8OID},
	[BG_LIST_LABEL] = {"label", TEXTOID},
	[BG_LIST_PROGRESS] = {"progress", NUMERICOID},
	[BG_LIST_PROGRESS_MESSAGE] = {"progress_message", TEXTOID},
	[BG_LIST_WORKER_PID] = {"worker_pid", INT4OID}
};

/*
 * The columns of a registry row (r) that bg_entry_from_tuple reads, the last
 * of them the kept size, whose SQL (BgRegistryCall.kept) follows this.
 */
#define BG_ENTRY_COLUMNS \
	"r.id, r.pid, r.role, r.segment, r.state, r.command, r.sqlstate, " \
	"r.error, "

/*
 * The registry's rows as bg_jobs shows them, for the kept size's SQL, the
 * table names and a condition.  A session holds a job's result until it
 * detaches it or ends; a PID alive since before the launch is still the
 * launching session.
 */
#define BG_LIST_QUERY \
	"SELECT " BG_ENTRY_COLUMNS "%s, r.query, r.launched_at, r.finished_at, " \
	"r.rows, a.backend_start <= r.launched_at AND NOT EXISTS " \
	"(SELECT FROM %s d WHERE d.id = r.id), %s " \
	"FROM %s r LEFT JOIN pg_stat_get_activity(NULL) a " \
	"ON a.pid = r.launcher_pid WHERE %s ORDER BY r.id"

/* Did this worker insert its registry row? */
static bool bg_row_inserted = false;

/* This worker's job segment, as its row names it */
static dsm_handle bg_my_segment = DSM_HANDLE_INVALID;

/* State kept across a call into the registry's SQL */
typedef struct BgRegistryCall
{
	char	   *relname;		/* qualified, quoted name of the registry */
	char	   *detachname;		/* and of the table of detached jobs */
	const char *kept;			/* SQL for a row's kept_bytes */
	const char *messages;		/* and for its kept messages */
	const char *control;		/* and for its label and progress */
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	bool		pushed_snapshot;	/* we set the active snapshot */
} BgRegistryCall;

/* How a job ended, for the registry */
typedef struct BgOutcome
{
	BgJobStatus status;
	const char *tag;			/* completion tag, if finished */
	ErrorData  *edata;			/* the error, if failed or cancelled */
	bool		discard;		/* the launch failed: remove the row */
	const char *synchronous_commit; /* the job's, for recording its file */
	bool		recorded;		/* the registry row took the kept file */
} BgOutcome;

/* A registry row, as the functions acting on a job need it */
typedef struct BgJobEntry
{
	int64		id;
	int			pid;
	Oid			role;
	dsm_handle	segment;
	BgJobStatus status;
	char	   *command;
	char	   *sqlstate;
	char	   *error;
	int64		kept_bytes;		/* size of its kept result, or -1 */
} BgJobEntry;

/* What a job's segment says of it, if it still exists */
typedef struct BgJobProbe
{
	bool		found;			/* the segment exists and is this job's */
	bool		worker_alive;	/* its worker has not exited */
	pid_t		worker_pid;		/* and is this process */
	uint64		rows;			/* rows sent so far */
	uint64		kept_size;		/* bytes of its kept file so far */
	bool		keeps;			/* it keeps its result */
	uint64		messages_valid; /* bytes of its messages file so far */
	uint64		messages_sent;	/* messages it sent so far */
	bool		has_progress;	/* it reported progress: */
	double		progress;
	char		progress_message[BG_PROGRESS_MESSAGE_LEN];
	bool		launcher_waiting;	/* its launcher waits for it */
	bool		worker_waiting; /* its worker waits for its launcher */
	int			waiters[BG_MAX_WAITERS];	/* others that wait for it, or 0 */
} BgJobProbe;

static BgJobStatus bg_status_from_name(const char *name);
static char *bg_layout_problem(Relation rel, const BgColumn *columns,
							   int ncolumns);
static char *bg_index_problem(Relation rel);
static bool bg_layout_known_good(Relation rel, const BgColumn *columns);
static void bg_layout_remember(Relation rel, const BgColumn *columns);
static void bg_layout_forget(Datum arg, Oid relid);
static char *bg_layout_check(Relation rel, const BgColumn *columns,
							 int ncolumns);
static void bg_check_layout(Relation rel, const BgColumn *columns, int ncolumns);
static bool bg_registry_usable(BgJobShared *shared);
static int *bg_list_map(TupleDesc desc);
static bool bg_registry_check_tables(Oid registry, Oid detached);
static bool bg_rel_has_kept(Relation rel);
static bool bg_keep_file_wanted(int64 job_id, void *arg);
static bool bg_registry_open(BgRegistryCall *call);
static void bg_registry_close(BgRegistryCall *call);
static void bg_registry_internal_xact(void);
static bool bg_registry_own_xact(void (*work) (BgJobShared *shared, BgOutcome *outcome),
								 BgJobShared *shared, BgOutcome *outcome);
static void bg_registry_write_outcome(BgJobShared *shared, BgOutcome *outcome);
static void bg_registry_tidy_work(BgJobShared *shared, BgOutcome *outcome);
static bool bg_extension_find(Oid *nspid);
static bool bg_registry_stores_lost(Relation rel);
static void bg_registry_mark_lost(Oid relid);
static void bg_registry_set_lost(Relation rel, ItemPointer tid, TimestampTz now);
static void bg_registry_no_lock_timeout(void);
static Relation bg_registry_open_rel(Oid relid);
static void bg_registry_insert(BgJobShared *shared, const char *sql,
							   dsm_handle handle);
static void bg_registry_exec(const char *sql, int nargs, Oid *types,
							 Datum *values, int expected);
static SPITupleTable *bg_registry_query(const char *sql, int nargs,
										Oid *types, Datum *values);
static void bg_registry_update(BgJobShared *shared, BgJobStatus status,
							   const char *tag, ErrorData *edata);
static void bg_registry_expire(Oid registry, Oid detached);
static void bg_registry_set_progress(BgJobShared *shared, Datum *values,
									 bool *nulls, bool *replace);
static bool bg_cancel_entry(BgJobEntry *entry);
static void bg_check_like_pattern(const char *pattern);
static bool bg_registry_modify(Relation rel, int64 job_id, Datum *values,
							   bool *nulls, bool *replace);
static void bg_registry_write_kept(BgJobShared *shared, BgOutcome *outcome);
static bool bg_delete_if_free(Relation rel, ItemPointer tid);
static void bg_delete_detach_mark(Relation det, Datum id);
static Oid	bg_finished_at_index(Relation rel);
static Oid	bg_registry_index(Relation rel, AttrNumber first, AttrNumber second);
static int64 bg_registry_role_jobs(Oid role, int *running);
static bool bg_registry_lock_row(Relation rel, ItemPointer tid,
								 HeapTuple locked, Buffer *buffer);
static void bg_registry_clear_stale_segments(Relation rel);
static bool bg_registry_row_of(Relation rel, HeapTuple tuple, Oid role,
							   AttrNumber null);
static int64 bg_registry_int8(Relation rel, HeapTuple tuple, AttrNumber column);
static void bg_registry_delete(int64 job_id);
static TimestampTz bg_retention_horizon(void);
static void bg_probe(int64 job_id, dsm_handle handle, BgJobProbe *probe);
static bool bg_entry_lookup(int pid, BgJobEntry *entry);
static void bg_entry_from_tuple(HeapTuple tuple, TupleDesc desc,
								BgJobEntry *entry);
static void bg_entry_check_privileges(BgJobEntry *entry);
static bool bg_entry_state(BgJobEntry *entry, BgJobProbe *probe,
						   BgJobStatus *status);
static bool bg_entry_reread(BgJobEntry *entry);
static bool bg_kept_pending(BgJobEntry *entry, BgJobProbe *probe);
static void bg_await_kept_record(int pid, BgJobEntry *entry);
static List *bg_wait_edge(List *edges, int from, int to);
static void bg_registry_wait_check(int pid, pid_t worker, BgWaitCycle *cycle);
static bool bg_entry_settle(BgJobEntry *entry, BgJobProbe *probe);
static bool bg_kept_interrupted(BgJobEntry *entry, BgJobProbe *probe);
static bool bg_kept_to_record(BgJobShared *shared, BgJobStatus status);
static bool bg_entry_fetch(const char *cond, int nargs, Oid *types,
						   Datum *values, BgJobEntry *entry);
static void bg_list_put_kept(Datum *vals, bool *isnulls, BgJobEntry *entry,
							 BgJobStatus status, BgJobProbe *probe,
							 bool privileged);
static void bg_list_put_control(Datum *vals, bool *isnulls, HeapTuple tuple,
								TupleDesc desc, bool running,
								BgJobProbe *probe, bool privileged);
static void bg_list_put(ReturnSetInfo *rsinfo, int *map, Datum dbname,
						HeapTuple tuple, TupleDesc desc, BgJobEntry *entry,
						BgJobProbe *probe, Oid caller);
static void bg_list_emit(ReturnSetInfo *rsinfo, int *map, Datum *vals,
						 bool *isnulls);
static void bg_list_put_queued(ReturnSetInfo *rsinfo, int *map, Datum dbname,
							   BgQueuedInfo *info, Oid caller);
static void bg_entry_raise(BgJobEntry *entry);
static void bg_raise_lost(BgJobEntry *entry);
pg_noreturn static void bg_raise_unknown(int pid);

/* ----------------------------------------------------------------
 *		The registry's layout and states
 * ----------------------------------------------------------------
 */

/* The text a state is recorded or shown as */
const char *
bg_status_name(BgJobStatus status)
{
	Assert(status >= 0 && status < BG_NUM_STATUSES);
	return bg_statuses[status];
}

/* The state a registry row records */
static BgJobStatus
bg_status_from_name(const char *name)
{
	int			i;

	if (name == NULL)
		elog(ERROR, "background job without a state in the job registry");
	for (i = 0; i < BG_NUM_STATUSES; i++)
	{
		if (strcmp(bg_statuses[i], name) == 0)
			return (BgJobStatus) i;
	}
	elog(ERROR, "unrecognized background job state \"%s\" in the job registry",
		 name);
	return BG_STATUS_LOST;		/* keep compiler quiet */
}

/*
 * Why a table of the extension cannot be used by this library, or NULL if
 * it can: the columns the C code needs, by name, type and NOT NULL at their
 * positions.  Columns after them, which a later version may add, are left
 * NULL by the rows written here, so they must allow that.
 */
static char *
bg_layout_problem(Relation rel, const BgColumn *columns, int ncolumns)
{
	char	   *problem;

	if (bg_layout_known_good(rel, columns))
		return NULL;
	problem = bg_layout_check(rel, columns, ncolumns);
	if (problem == NULL)
		bg_layout_remember(rel, columns);
	return problem;
}

/*
 * Tables found usable, until their relcache entries are invalidated (ALTER
 * TABLE, CREATE or DROP INDEX): the registry is opened many times a job,
 * and a waiting session polls it.
 */
typedef struct BgLayoutGood
{
	const BgColumn *columns;	/* the layout checked */
	Oid			relid;			/* the table that has it, or InvalidOid */
} BgLayoutGood;

static BgLayoutGood bg_layout_good[2];
static bool bg_layout_callback_registered = false;

static bool
bg_layout_known_good(Relation rel, const BgColumn *columns)
{
	int			i;

	for (i = 0; i < lengthof(bg_layout_good); i++)
	{
		if (bg_layout_good[i].columns == columns &&
			bg_layout_good[i].relid == RelationGetRelid(rel))
			return true;
	}
	return false;
}

static void
bg_layout_remember(Relation rel, const BgColumn *columns)
{
	int			i;

	if (!bg_layout_callback_registered)
	{
		CacheRegisterRelcacheCallback(bg_layout_forget, (Datum) 0);
		bg_layout_callback_registered = true;
	}
	/* a slot for this layout, or a free one */
	for (i = 0; i < lengthof(bg_layout_good) - 1; i++)
	{
		if (bg_layout_good[i].columns == columns ||
			bg_layout_good[i].columns == NULL)
			break;
	}
	bg_layout_good[i].columns = columns;
	bg_layout_good[i].relid = RelationGetRelid(rel);
}

static void
bg_layout_forget(Datum arg, Oid relid)
{
	int			i;

	for (i = 0; i < lengthof(bg_layout_good); i++)
	{
		if (!OidIsValid(relid) || bg_layout_good[i].relid == relid)
			bg_layout_good[i].relid = InvalidOid;
	}
}

/* bg_layout_problem, without the memory of tables found usable */
static char *
bg_layout_check(Relation rel, const BgColumn *columns, int ncolumns)
{
	TupleDesc	desc = RelationGetDescr(rel);
	int			i;
	char	   *problem;

	if (desc->natts < ncolumns)
		return psprintf(_("The table has %d columns; bg_fdw needs at least %d."),
						desc->natts, ncolumns);
	problem = bg_index_problem(rel);
	if (problem != NULL)
		return problem;
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (i >= ncolumns)
		{
			if (!att->attisdropped && (att->attnotnull || att->atthasdef))
				return psprintf(_("Column \"%s\" has a default or is NOT NULL; this version of bg_fdw can only leave it NULL."),
								NameStr(att->attname));
			continue;
		}
		if (att->attisdropped)
			return psprintf(_("Column %d was dropped; bg_fdw needs column \"%s\" of type %s there."),
							i + 1, columns[i].name,
							format_type_be(columns[i].type));
		if (att->atttypid != columns[i].type ||
			strcmp(NameStr(att->attname), columns[i].name) != 0)
			return psprintf(_("Column %d is \"%s\" of type %s; bg_fdw needs column \"%s\" of type %s there."),
							i + 1, NameStr(att->attname),
							format_type_be(att->atttypid), columns[i].name,
							format_type_be(columns[i].type));
		if (columns[i].notnull && !att->attnotnull)
			return psprintf(_("Column \"%s\" allows NULL; bg_fdw needs it NOT NULL."),
							columns[i].name);
	}
	return NULL;
}

/*
 * Rows go in without the executor (CatalogTupleInsert and its kin), which
 * maintains only plain indexes: one with expressions or a predicate would
 * crash the writer.
 */
static char *
bg_index_problem(Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	char	   *problem = NULL;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (problem == NULL &&
			(RelationGetIndexExpressions(index) != NIL ||
			 RelationGetIndexPredicate(index) != NIL))
			problem = psprintf(_("Index \"%s\" has expressions or a predicate; bg_fdw writes the table without the executor and can maintain only plain indexes."),
							   RelationGetRelationName(index));
		index_close(index, AccessShareLock);
	}
	list_free(indexes);
	return problem;
}

/* A table of the extension this library cannot use is an error */
static void
bg_check_layout(Relation rel, const BgColumn *columns, int ncolumns)
{
	char	   *problem = bg_layout_problem(rel, columns, ncolumns);

	if (problem != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" of extension \"bg_fdw\" has an unexpected layout",
						RelationGetRelationName(rel)),
				 errdetail_internal("%s", problem),
				 errhint("The extension's scripts define this table: do not alter it.  After installing a new version of bg_fdw, run ALTER EXTENSION bg_fdw UPDATE.")));
}

/* ----------------------------------------------------------------
 *		Calling the registry's SQL
 * ----------------------------------------------------------------
 */

/*
 * Find the extension in this database: false if it is not installed, else
 * its schema.  (get_extension_schema is not exported before PostgreSQL 17.)
 */
static bool
bg_extension_find(Oid *nspid)
{
	Relation	extrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	bool		found;

	extrel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("bg_fdw"));
	scan = systable_beginscan(extrel, ExtensionNameIndexId, true, NULL, 1, &key);
	tuple = systable_getnext(scan);
	found = HeapTupleIsValid(tuple);
	if (found)
		*nspid = ((Form_pg_extension) GETSTRUCT(tuple))->extnamespace;
	systable_endscan(scan);
	table_close(extrel, AccessShareLock);
	return found;
}

/*
 * The registry table of the extension installed in this database, or
 * InvalidOid if the extension is not installed.  A launch asks several
 * times and pg_extension has no syscache: the last answer stands while a
 * relation of that OID still has the registry's name and schema (a dropped
 * extension takes its table with it; a renamed registry is not one).
 */
Oid
bg_registry_relid(void)
{
	static Oid	cached_relid = InvalidOid;
	static Oid	cached_nspid = InvalidOid;
	Oid			nspid;
	HeapTuple	tuple;

	if (OidIsValid(cached_relid) &&
		HeapTupleIsValid(tuple = SearchSysCache1(RELOID,
												 ObjectIdGetDatum(cached_relid))))
	{
		Form_pg_class form = (Form_pg_class) GETSTRUCT(tuple);
		bool		same = form->relnamespace == cached_nspid &&
			strcmp(NameStr(form->relname), BG_REGISTRY_TABLE) == 0;

		ReleaseSysCache(tuple);
		if (same)
			return cached_relid;
	}
	cached_relid = InvalidOid;
	if (!bg_extension_find(&nspid))
		return InvalidOid;
	cached_relid = get_relname_relid(BG_REGISTRY_TABLE, nspid);
	cached_nspid = nspid;
	return cached_relid;
}

/*
 * Before SQL addresses the registry and the table of detached jobs by column
 * name, check that they are what this library expects.  Returns whether the
 * registry has the column of kept results.
 */
static bool
bg_registry_check_tables(Oid registry, Oid detached)
{
	Relation	rel;
	bool		has_kept;

	rel = table_open(registry, AccessShareLock);
	bg_check_layout(rel, bg_registry_columns, Natts_bg_job_registry);
	has_kept = bg_rel_has_kept(rel);
	table_close(rel, NoLock);
	if (!OidIsValid(detached))
		return has_kept;
	rel = table_open(detached, AccessShareLock);
	bg_check_layout(rel, bg_detached_columns, Natts_bg_job_detached);
	table_close(rel, NoLock);
	return has_kept;
}

/* Is this column of the registry where the library expects it? */
static bool
bg_rel_has_column(Relation rel, int attnum, const char *name, Oid type)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute att;

	if (desc->natts < attnum)
		return false;
	att = TupleDescAttr(desc, attnum - 1);
	return !att->attisdropped && att->atttypid == type &&
		strcmp(NameStr(att->attname), name) == 0;
}

/*
 * Has the registry 1.1's columns (kept results and messages, label, NOTIFY
 * channel, progress)?  They all came in 1.1: a registry has all or none.
 */
static bool
bg_rel_has_kept(Relation rel)
{
	return bg_rel_has_column(rel, Anum_bg_job_registry_kept_bytes,
							 "kept_bytes", INT8OID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_messages,
						  "messages", BYTEAOID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_label, "label", TEXTOID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_notify, "notify", TEXTOID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_progress, "progress",
						  NUMERICOID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_progress_message,
						  "progress_message", TEXTOID) &&
		bg_rel_has_column(rel, Anum_bg_job_registry_worker_pid,
						  "worker_pid", INT4OID);
}

/*
 * Does the registry show the process that runs a job (worker_pid, 1.1)?
 * Only then may a job be named otherwise than by its worker's PID.
 */
bool
bg_registry_shows_worker(Oid relid)
{
	Relation	rel;
	bool		shows;

	if (!OidIsValid(relid))
		return false;
	rel = try_table_open(relid, AccessShareLock);
	if (rel == NULL)
		return false;
	shows = bg_rel_has_kept(rel);
	table_close(rel, AccessShareLock);
	return shows;
}

/*
 * Can a job launched now keep its result?  Not on a standby, whose jobs are
 * not listed, nor with a registry of 1.0, which has nowhere to record it.
 */
bool
bg_registry_keeps(Oid relid)
{
	Relation	rel;
	bool		keeps;

	if (!OidIsValid(relid) || RecoveryInProgress())
		return false;
	rel = table_open(relid, AccessShareLock);
	keeps = bg_rel_has_kept(rel);
	table_close(rel, AccessShareLock);
	return keeps;
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
	if (bg_registry_check_tables(relid,
								 get_relname_relid(BG_DETACHED_TABLE, nspid)))
	{
		call->kept = "r.kept_bytes";
		call->messages = "r.messages";
		call->control = "r.label, r.progress, r.progress_message, r.worker_pid";
	}
	else
	{
		call->kept = "NULL::bigint";
		call->messages = "NULL::bytea";
		call->control = "NULL::text, NULL::numeric, NULL::text, NULL::integer";
	}
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

/*
 * Run a registry statement on the registry as it is now, not as the
 * caller's snapshot saw it: a repeatable read transaction waiting for a job
 * must see it end, and one whose snapshot predates a job's row must not find
 * nothing to change.  Returns SPI's result code.
 */
static int
bg_registry_run(const char *sql, int nargs, Oid *types, Datum *values,
				bool read_only)
{
	SPIPlanPtr	plan = SPI_prepare(sql, nargs, types);

	if (plan == NULL)
		elog(ERROR, "SPI_prepare failed: %s", SPI_result_code_string(SPI_result));
	return SPI_execute_snapshot(plan, values, NULL, GetLatestSnapshot(),
								InvalidSnapshot, read_only, !read_only, 0);
}

/* Change the registry; SPI must return "expected" */
static void
bg_registry_exec(const char *sql, int nargs, Oid *types, Datum *values,
				 int expected)
{
	int			rc = bg_registry_run(sql, nargs, types, values, false);

	if (rc != expected)
		elog(ERROR, "registry statement failed: %s", SPI_result_code_string(rc));
}

static SPITupleTable *
bg_registry_query(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			rc = bg_registry_run(sql, nargs, types, values, true);

	if (rc != SPI_OK_SELECT)
		elog(ERROR, "registry query failed: %s", SPI_result_code_string(rc));
	return SPI_tuptable;
}

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/* The worker goes on to another job (pool.c) */
void
bg_registry_job_reset(void)
{
	bg_row_inserted = false;
	bg_my_segment = DSM_HANDLE_INVALID;
}

/*
 * A row for "rel", every column NULL: those a later version added stay so.
 */
static void
bg_blank_row(Relation rel, Datum **values, bool **nulls)
{
	int			natts = RelationGetDescr(rel)->natts;
	int			i;

	*values = palloc0(natts * sizeof(Datum));
	*nulls = palloc(natts * sizeof(bool));
	for (i = 0; i < natts; i++)
		(*nulls)[i] = true;
}

/*
 * Insert the job's row, before it runs.  A standby cannot write; its jobs
 * are not listed.  bg_launch waits for "registered", so that the job is
 * listed by the time it returns.
 */
void
bg_registry_register(BgJobShared *shared, const char *sql, dsm_handle handle)
{
	bg_my_segment = handle;
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
	Relation	rel = bg_registry_open_rel(shared->registry_relid);
	Datum	   *values;
	bool	   *nulls;
	HeapTuple	tuple;

	if (rel == NULL)
		return;
	bg_blank_row(rel, &values, &nulls);
#define BG_SET(col, value) \
	(values[(col) - 1] = (value), nulls[(col) - 1] = false)
	BG_SET(Anum_bg_job_registry_id, Int64GetDatum(shared->job_id));
	BG_SET(Anum_bg_job_registry_pid, Int32GetDatum(shared->name));
	BG_SET(Anum_bg_job_registry_role, ObjectIdGetDatum(shared->current_user_id));
	BG_SET(Anum_bg_job_registry_database, ObjectIdGetDatum(shared->database_id));
	BG_SET(Anum_bg_job_registry_launcher_pid, Int32GetDatum(shared->launcher_pid));
	BG_SET(Anum_bg_job_registry_segment, Int64GetDatum((int64) handle));
	BG_SET(Anum_bg_job_registry_query, CStringGetTextDatum(sql));
	BG_SET(Anum_bg_job_registry_state,
		   CStringGetTextDatum(bg_status_name(BG_STATUS_RUNNING)));
	BG_SET(Anum_bg_job_registry_launched_at,
		   TimestampTzGetDatum(shared->launched_at));
	if (shared->keep && bg_rel_has_kept(rel))
		BG_SET(Anum_bg_job_registry_kept_bytes, Int64GetDatum(0));
	if (shared->label[0] != '\0' && bg_rel_has_kept(rel))
		BG_SET(Anum_bg_job_registry_label, CStringGetTextDatum(shared->label));
	if (shared->notify[0] != '\0' && bg_rel_has_kept(rel))
		BG_SET(Anum_bg_job_registry_notify, CStringGetTextDatum(shared->notify));
	if (bg_rel_has_kept(rel))
		BG_SET(Anum_bg_job_registry_worker_pid, Int32GetDatum(MyProcPid));
#undef BG_SET

	tuple = heap_form_tuple(RelationGetDescr(rel), values, nulls);
	CatalogTupleInsert(rel, tuple);
	table_close(rel, NoLock);
	bg_row_inserted = true;
}

/*
 * A queued job that never started, the server having restarted first
 * (queue.c): list it as cancelled, with the reason, and tell its channel,
 * unless its worker listed it already.  The row is what its worker would
 * have written, had it found the job cancelled.
 */
void
bg_registry_record_unstarted(int64 job_id, int name, Oid role,
							 TimestampTz launched_at, const char *sql,
							 const char *label, const char *notify)
{
	Oid			relid = bg_registry_relid();
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	bool		listed;
	Datum	   *values;
	bool	   *nulls;

	if (!OidIsValid(relid) || RecoveryInProgress() ||
		(rel = bg_registry_open_rel(relid)) == NULL)
		return;
	ScanKeyInit(&key, Anum_bg_job_registry_id, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(job_id));
	scan = systable_beginscan(rel, bg_primary_key_index(rel), true, NULL, 1, &key);
	listed = HeapTupleIsValid(systable_getnext(scan));
	systable_endscan(scan);
	if (listed || !bg_rel_has_kept(rel))
	{
		table_close(rel, RowExclusiveLock);
		return;
	}
	bg_blank_row(rel, &values, &nulls);
#define BG_SET(col, value) \
	(values[(col) - 1] = (value), nulls[(col) - 1] = false)
	BG_SET(Anum_bg_job_registry_id, Int64GetDatum(job_id));
	BG_SET(Anum_bg_job_registry_pid, Int32GetDatum(name));
	BG_SET(Anum_bg_job_registry_role, ObjectIdGetDatum(role));
	BG_SET(Anum_bg_job_registry_database, ObjectIdGetDatum(MyDatabaseId));
	BG_SET(Anum_bg_job_registry_launcher_pid, Int32GetDatum(0));
	BG_SET(Anum_bg_job_registry_query, CStringGetTextDatum(sql));
	BG_SET(Anum_bg_job_registry_state,
		   CStringGetTextDatum(bg_status_name(BG_STATUS_CANCELLED)));
	BG_SET(Anum_bg_job_registry_launched_at, TimestampTzGetDatum(launched_at));
	BG_SET(Anum_bg_job_registry_finished_at,
		   TimestampTzGetDatum(GetCurrentTimestamp()));
	BG_SET(Anum_bg_job_registry_rows, Int64GetDatum(0));
	BG_SET(Anum_bg_job_registry_sqlstate,
		   CStringGetTextDatum(unpack_sql_state(ERRCODE_ADMIN_SHUTDOWN)));
	BG_SET(Anum_bg_job_registry_error,
		   CStringGetTextDatum(psprintf(_("background job %d was cancelled: the server restarted before it started"),
										name)));
	if (label[0] != '\0')
		BG_SET(Anum_bg_job_registry_label, CStringGetTextDatum(label));
	if (notify[0] != '\0')
		BG_SET(Anum_bg_job_registry_notify, CStringGetTextDatum(notify));
#undef BG_SET
	CatalogTupleInsert(rel, heap_form_tuple(RelationGetDescr(rel), values, nulls));
	table_close(rel, NoLock);
	if (notify[0] != '\0')
		bg_notify_end(notify, name, job_id, BG_STATUS_CANCELLED);
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
		if (XactReadOnly || IsTransactionBlock() || !bg_registry_usable(shared))
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
		bg_registry_update(shared, BG_STATUS_FINISHED, tag, NULL);
		return true;
	}

	outcome.status = BG_STATUS_FINISHED;
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
static bool
bg_registry_own_xact(void (*work) (BgJobShared *shared, BgOutcome *outcome),
					 BgJobShared *shared, BgOutcome *outcome)
{
	bool		done = false;

	PG_TRY();
	{
		StartTransactionCommand();
		bg_registry_internal_xact();
		work(shared, outcome);
		CommitTransactionCommand();
		done = true;
	}
	PG_CATCH();
	{
		ErrorData  *edata = bg_worker_take_error();

		ereport(LOG,
				(errmsg("could not update the job registry for background job %d: %s",
						bg_worker_job_name(), edata->message)));
	}
	PG_END_TRY();
	return done;
}

static void
bg_registry_write_outcome(BgJobShared *shared, BgOutcome *outcome)
{
	if (outcome->discard)
		bg_registry_delete(shared->job_id);
	else
		bg_registry_update(shared, outcome->status, outcome->tag, outcome->edata);
	if (outcome->edata != NULL || outcome->discard)
		bg_registry_expire(shared->registry_relid, shared->detached_relid);
}

/*
 * What each job does for the others once it has ended: record the jobs its
 * database lists as running whose worker is gone as "lost" (without a
 * supervisor, this is where that happens), and expire old ones.
 */
static void
bg_registry_tidy_work(BgJobShared *shared, BgOutcome *outcome)
{
	bg_registry_mark_lost(shared->registry_relid);
	bg_registry_expire(shared->registry_relid, shared->detached_relid);
}

/*
 * Record how the job failed, after its transaction was rolled back.  A job
 * stopped by bg_cancel, or by its launcher giving up, is "cancelled"; a
 * statement_timeout or any other error makes it "failed".  With discard,
 * the job never ran and its row goes.  Returns the state recorded, or -1
 * if none was.
 */
int
bg_registry_fail(BgJobShared *shared, ErrorData *edata, bool discard)
{
	BgOutcome	outcome;

	if (!bg_row_inserted)
		return -1;
	outcome.status = BG_STATUS_FAILED;
	outcome.tag = NULL;
	outcome.edata = edata;
	outcome.discard = discard;
	if (edata != NULL && edata->sqlerrcode == ERRCODE_QUERY_CANCELED)
	{
		SpinLockAcquire(&shared->mutex);
		if (shared->cancel_requested ||
			(shared->launcher_gone && !shared->launched))
			outcome.status = BG_STATUS_CANCELLED;
		SpinLockRelease(&shared->mutex);
	}
	if (!bg_registry_own_xact(bg_registry_write_outcome, shared, &outcome) ||
		discard)
		return -1;
	return outcome.status;
}

/*
 * Write the job's end state into its row.  Only the job's worker updates its
 * row (bg_forget and expiry delete only ended jobs), so this cannot meet a
 * concurrent update, and it goes in without SQL, as the insert did.
 */
static void
bg_registry_update(BgJobShared *shared, BgJobStatus status, const char *tag,
				   ErrorData *edata)
{
	Relation	rel;
	int			natts;
	Datum	   *values;
	bool	   *nulls;
	bool	   *replace;

	/* the table's CHECK constraint is not checked on this path */
	if (status == BG_STATUS_LOST)
		elog(ERROR, "background job state \"%s\" cannot be recorded",
			 bg_status_name(status));
	rel = bg_registry_open_rel(shared->registry_relid);
	if (rel == NULL)
		return;
	/* columns a later version added keep their values */
	natts = RelationGetDescr(rel)->natts;
	values = palloc0(natts * sizeof(Datum));
	nulls = palloc0(natts * sizeof(bool));
	replace = palloc0(natts * sizeof(bool));
#define BG_SET(col, isnull, value) \
	(replace[(col) - 1] = true, nulls[(col) - 1] = (isnull), \
	 values[(col) - 1] = (isnull) ? (Datum) 0 : (value))
	BG_SET(Anum_bg_job_registry_state, false,
		   CStringGetTextDatum(bg_status_name(status)));
	BG_SET(Anum_bg_job_registry_finished_at, false,
		   TimestampTzGetDatum(GetCurrentTimestamp()));
	BG_SET(Anum_bg_job_registry_rows, false,
		   Int64GetDatum((int64) pg_atomic_read_u64(&shared->rows)));
	/* readers follow a kept file not yet recorded through the segment */
	BG_SET(Anum_bg_job_registry_segment, !bg_kept_to_record(shared, status),
		   Int64GetDatum((int64) bg_my_segment));
	BG_SET(Anum_bg_job_registry_command, tag == NULL,
		   CStringGetTextDatum(tag));
	BG_SET(Anum_bg_job_registry_sqlstate, edata == NULL,
		   CStringGetTextDatum(unpack_sql_state(edata->sqlerrcode)));
	BG_SET(Anum_bg_job_registry_error, edata == NULL,
		   CStringGetTextDatum(edata->message ? edata->message : ""));
	/*
	 * A job that did not finish keeps no result: its file is gone.  One
	 * that did records a file once it is durable (bg_registry_record_kept);
	 * a completion tag alone is kept now.  Its messages are kept whatever
	 * the outcome.
	 */
	if (bg_rel_has_kept(rel))
	{
		bytea	   *messages = bg_messages_kept();

		BG_SET(Anum_bg_job_registry_kept_bytes,
			   !(shared->keep && status == BG_STATUS_FINISHED &&
				 pg_atomic_read_u64(&shared->kept_size) == 0),
			   Int64GetDatum(0));
		Assert(!bg_kept_to_record(shared, status) ||
			   nulls[Anum_bg_job_registry_kept_bytes - 1]);
		BG_SET(Anum_bg_job_registry_messages, messages == NULL,
			   PointerGetDatum(messages));
		bg_registry_set_progress(shared, values, nulls, replace);
	}
#undef BG_SET

	bg_registry_modify(rel, shared->job_id, values, nulls, replace);
	table_close(rel, NoLock);
}

/* The progress the job last reported, for its row. */
static void
bg_registry_set_progress(BgJobShared *shared, Datum *values, bool *nulls,
						 bool *replace)
{
	bool		has;
	double		progress;
	char		message[BG_PROGRESS_MESSAGE_LEN];

	SpinLockAcquire(&shared->mutex);
	has = shared->has_progress;
	progress = shared->progress;
	memcpy(message, shared->progress_message, sizeof(message));
	SpinLockRelease(&shared->mutex);
	replace[Anum_bg_job_registry_progress - 1] = true;
	nulls[Anum_bg_job_registry_progress - 1] = !has;
	if (has)
		values[Anum_bg_job_registry_progress - 1] =
			DirectFunctionCall1(float8_numeric, Float8GetDatum(progress));
	replace[Anum_bg_job_registry_progress_message - 1] = true;
	nulls[Anum_bg_job_registry_progress_message - 1] = message[0] == '\0';
	if (message[0] != '\0')
		values[Anum_bg_job_registry_progress_message - 1] =
			CStringGetTextDatum(message);
}

/* Replace columns of the job's row, if it is still there. */
static bool
bg_registry_modify(Relation rel, int64 job_id, Datum *values, bool *nulls,
				   bool *replace)
{
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	oldtup;
	bool		found;

	ScanKeyInit(&key, Anum_bg_job_registry_id, BTEqualStrategyNumber, F_INT8EQ,
				Int64GetDatum(job_id));
	scan = systable_beginscan(rel, bg_primary_key_index(rel), true, NULL, 1, &key);
	oldtup = systable_getnext(scan);
	found = HeapTupleIsValid(oldtup);
	if (found)
	{
		HeapTuple	newtup = heap_modify_tuple(oldtup, RelationGetDescr(rel),
											   values, nulls, replace);

		CatalogTupleUpdate(rel, &oldtup->t_self, newtup);
	}
	systable_endscan(scan);
	return found;
}

/* Does the job finish with a kept file, to record once it is durable? */
static bool
bg_kept_to_record(BgJobShared *shared, BgJobStatus status)
{
	return shared->keep && status == BG_STATUS_FINISHED &&
		pg_atomic_read_u64(&shared->kept_size) > 0;
}

/*
 * The job's kept file is durable: record its size, in a transaction of its
 * own after the job's, committed as the job's setting says (a crash must
 * not lose a result the job's commit made durable).  Only the job's worker
 * writes its row.  False where nothing took it: the extension was dropped
 * while the job ran (the drop removed the files there were then, and this
 * one, made since, is the caller's to remove), or its row is gone.
 */
bool
bg_registry_record_kept(BgJobShared *shared)
{
	BgOutcome	outcome;

	if (!bg_row_inserted)
		return false;
	memset(&outcome, 0, sizeof(outcome));
	/* durable as the job's own commit was: with the job's setting */
	outcome.synchronous_commit = pstrdup(GetConfigOption("synchronous_commit",
														 false, false));
	return bg_registry_own_xact(bg_registry_write_kept, shared, &outcome) &&
		outcome.recorded;
}

static void
bg_registry_write_kept(BgJobShared *shared, BgOutcome *outcome)
{
	Relation	rel = bg_registry_open_rel(shared->registry_relid);
	int			natts;
	Datum	   *values;
	bool	   *nulls;
	bool	   *replace;

	if (rel == NULL || !bg_rel_has_kept(rel))
	{
		if (rel != NULL)
			table_close(rel, NoLock);
		return;
	}
	(void) set_config_option("synchronous_commit", outcome->synchronous_commit,
							 PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	natts = RelationGetDescr(rel)->natts;
	values = palloc0(natts * sizeof(Datum));
	nulls = palloc0(natts * sizeof(bool));
	replace = palloc0(natts * sizeof(bool));
	replace[Anum_bg_job_registry_kept_bytes - 1] = true;
	values[Anum_bg_job_registry_kept_bytes - 1] =
		Int64GetDatum((int64) pg_atomic_read_u64(&shared->kept_size));
	replace[Anum_bg_job_registry_segment - 1] = true;
	nulls[Anum_bg_job_registry_segment - 1] = true;
	outcome->recorded = bg_registry_modify(rel, shared->job_id, values, nulls,
										   replace);
	table_close(rel, NoLock);
}

/*
 * Open the registry the launcher looked up, or NULL if that OID is no longer
 * the registry (the extension was dropped while the job ran).  A registry
 * this library cannot use is an error, not a job silently left unlisted.
 */
static Relation
bg_registry_open_rel(Oid relid)
{
	Relation	rel = try_table_open(relid, RowExclusiveLock);

	if (rel == NULL)
		return NULL;
	if (strcmp(RelationGetRelationName(rel), BG_REGISTRY_TABLE) != 0)
	{
		table_close(rel, RowExclusiveLock);
		return NULL;
	}
	bg_check_layout(rel, bg_registry_columns, Natts_bg_job_registry);
	return rel;
}

/*
 * Can the job's last transaction record its outcome?  A registry altered
 * while the job ran must not fail a job whose work succeeded: then the
 * outcome is written after the commit, where a failure is only logged.  The
 * lock taken here keeps the table as it is until the commit.
 */
static bool
bg_registry_usable(BgJobShared *shared)
{
	Relation	rel = try_table_open(shared->registry_relid, RowExclusiveLock);
	bool		usable;

	if (rel == NULL)
		return true;			/* dropped: bg_registry_update skips it */
	usable = bg_layout_problem(rel, bg_registry_columns,
							   Natts_bg_job_registry) == NULL;
	table_close(rel, NoLock);
	return usable;
}

/*
 * For the sweep, which never waits for a session: lock the registry and the
 * table of detached jobs as writing them does, unless someone holds a lock
 * in the way (an open transaction's LOCK TABLE, VACUUM FULL, ALTER TABLE).
 * False if so; true also where the extension is not installed.
 */
bool
bg_registry_try_lock(void)
{
	Oid			relid = bg_registry_relid();
	Oid			detached;

	if (!OidIsValid(relid))
		return true;
	if (!ConditionalLockRelationOid(relid, RowExclusiveLock))
		return false;
	detached = get_relname_relid(BG_DETACHED_TABLE, get_rel_namespace(relid));
	return !OidIsValid(detached) ||
		ConditionalLockRelationOid(detached, RowExclusiveLock);
}

/*
 * The sweep of this database, run by a worker the supervisor starts: jobs
 * left running by a worker that is gone are recorded as lost, and old ones
 * expire.
 */
void
bg_registry_sweep(void)
{
	Oid			relid = bg_registry_relid();

	if (RecoveryInProgress())
		return;
	if (OidIsValid(relid))
	{
		bg_registry_mark_lost(relid);
		bg_registry_expire(relid, get_relname_relid(BG_DETACHED_TABLE,
													get_rel_namespace(relid)));
	}
	bg_registry_sweep_files();
}

/*
 * May the registry record "lost"?  Not the one of 1.0, whose CHECK
 * constraint does not allow it: this library may serve it before ALTER
 * EXTENSION bg_fdw UPDATE.  The table tells: 1.1 added kept_bytes with the
 * new constraint.
 */
static bool
bg_registry_stores_lost(Relation rel)
{
	return bg_rel_has_kept(rel);
}

/*
 * Record as "lost", with the time it was noticed, each job of the database
 * still listed as running whose worker has gone without recording an
 * outcome (a crash restart took it), so that it expires like any ended job.
 * Running jobs have no finished_at: the index on it finds them.  One process
 * marks at a time, under a lock of its own on the registry (not a relation
 * lock, which VACUUM takes too); another that finds it busy leaves the work
 * to it.
 */
static void
bg_registry_mark_lost(Oid relid)
{
	Relation	rel;
	Oid			index;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;
	TimestampTz now = GetCurrentTimestamp();

	if (RecoveryInProgress())
		return;
	rel = bg_registry_open_rel(relid);
	if (rel == NULL)
		return;
	index = bg_finished_at_index(rel);
	if (!OidIsValid(index) || !bg_registry_stores_lost(rel) ||
		!ConditionalLockDatabaseObject(RelationRelationId, relid, 1,
									   ExclusiveLock))
	{
		table_close(rel, RowExclusiveLock);
		return;
	}
	ScanKeyEntryInitialize(&key, SK_ISNULL | SK_SEARCHNULL,
						   Anum_bg_job_registry_finished_at, InvalidStrategy,
						   InvalidOid, InvalidOid, InvalidOid, (Datum) 0);
	scan = systable_beginscan(rel, index, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		d;
		int64		id;
		dsm_handle	handle = DSM_HANDLE_INVALID;
		BgJobProbe	probe;

		d = heap_getattr(tuple, Anum_bg_job_registry_state, desc, &isnull);
		if (bg_status_from_name(TextDatumGetCString(d)) != BG_STATUS_RUNNING)
			continue;
		id = DatumGetInt64(heap_getattr(tuple, Anum_bg_job_registry_id, desc,
										&isnull));
		d = heap_getattr(tuple, Anum_bg_job_registry_segment, desc, &isnull);
		if (!isnull)
			handle = (dsm_handle) DatumGetInt64(d);
		bg_probe(id, handle, &probe);
		if (!(probe.found && probe.worker_alive))
			bg_registry_set_lost(rel, &tuple->t_self, now);
	}
	systable_endscan(scan);
	bg_registry_clear_stale_segments(rel);
	table_close(rel, NoLock);
}

/*
 * Lock a row the scan found, unless it changed since or someone holds it: a
 * sweep never waits for a session.  The caller releases *buffer.
 */
static bool
bg_registry_lock_row(Relation rel, ItemPointer tid, HeapTuple locked,
					 Buffer *buffer)
{
	TM_FailureData tmfd;

	locked->t_self = *tid;
	if (heap_lock_tuple(rel, locked, GetCurrentCommandId(true),
						LockTupleExclusive, LockWaitSkip, false,
						buffer, &tmfd) == TM_Ok)
		return true;
	if (BufferIsValid(*buffer))
		ReleaseBuffer(*buffer);
	return false;
}

/*
 * Ended jobs whose worker stopped before it recorded their kept result (a
 * crash, or a failure in that last step) still name their segment, which is
 * gone, and whose handle a later segment may take: forget the handle, and
 * the file, never recorded as kept.  A worker alive is still recording.
 */
static void
bg_registry_clear_stale_segments(Relation rel)
{
	Oid			index = bg_registry_index(rel, Anum_bg_job_registry_segment,
										  InvalidAttrNumber);
	TupleDesc	desc = RelationGetDescr(rel);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	if (!OidIsValid(index) || !bg_rel_has_kept(rel))
		return;
	ScanKeyEntryInitialize(&key, SK_ISNULL | SK_SEARCHNOTNULL,
						   Anum_bg_job_registry_segment, InvalidStrategy,
						   InvalidOid, InvalidOid, InvalidOid, (Datum) 0);
	scan = systable_beginscan(rel, index, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		int64		id = bg_registry_int8(rel, tuple, Anum_bg_job_registry_id);
		BgJobProbe	probe;
		HeapTupleData locked;
		Buffer		buffer;
		Datum	   *values;
		bool	   *nulls;
		bool	   *replace;

		if (heap_attisnull(tuple, Anum_bg_job_registry_finished_at, desc) ||
			heap_attisnull(tuple, Anum_bg_job_registry_segment, desc))
			continue;
		bg_probe(id, (dsm_handle) bg_registry_int8(rel, tuple,
												   Anum_bg_job_registry_segment),
				 &probe);
		if ((probe.found && probe.worker_alive) ||
			!bg_registry_lock_row(rel, &tuple->t_self, &locked, &buffer))
			continue;
		values = palloc0(desc->natts * sizeof(Datum));
		nulls = palloc0(desc->natts * sizeof(bool));
		replace = palloc0(desc->natts * sizeof(bool));
		replace[Anum_bg_job_registry_segment - 1] = true;
		nulls[Anum_bg_job_registry_segment - 1] = true;
		/* a size recorded meanwhile stays, with its file */
		if (heap_attisnull(&locked, Anum_bg_job_registry_kept_bytes, desc))
			bg_keep_remove_at_commit(id);
		CatalogTupleUpdate(rel, &tuple->t_self,
						   heap_modify_tuple(&locked, desc, values, nulls, replace));
		ReleaseBuffer(buffer);
	}
	systable_endscan(scan);
}

/*
 * Record one job as lost, unless its row changed since the scan found it (its
 * worker recorded an outcome just before it exited) or someone holds it
 * (bg_forget deleting it): a sweep never waits for a session.
 */
static void
bg_registry_set_lost(Relation rel, ItemPointer tid, TimestampTz now)
{
	int			natts = RelationGetDescr(rel)->natts;
	Datum	   *values = palloc0(natts * sizeof(Datum));
	bool	   *nulls = palloc0(natts * sizeof(bool));
	bool	   *replace = palloc0(natts * sizeof(bool));
	HeapTupleData locked;
	Buffer		buffer;
	HeapTuple	newtup;

	if (!bg_registry_lock_row(rel, tid, &locked, &buffer))
		return;
	replace[Anum_bg_job_registry_state - 1] = true;
	values[Anum_bg_job_registry_state - 1] =
		CStringGetTextDatum(bg_status_name(BG_STATUS_LOST));
	replace[Anum_bg_job_registry_finished_at - 1] = true;
	values[Anum_bg_job_registry_finished_at - 1] = TimestampTzGetDatum(now);
	replace[Anum_bg_job_registry_segment - 1] = true;
	nulls[Anum_bg_job_registry_segment - 1] = true;
	/* its partial result goes; its listeners learn it is lost */
	if (bg_rel_has_kept(rel))
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		int64		id = DatumGetInt64(heap_getattr(&locked, Anum_bg_job_registry_id,
													desc, &isnull));
		Datum		channel = heap_getattr(&locked, Anum_bg_job_registry_notify,
										   desc, &isnull);

		replace[Anum_bg_job_registry_kept_bytes - 1] = true;
		nulls[Anum_bg_job_registry_kept_bytes - 1] = true;
		bg_keep_remove_at_commit(id);
		if (!isnull)
			bg_notify_end(TextDatumGetCString(channel),
						  DatumGetInt32(heap_getattr(&locked, Anum_bg_job_registry_pid,
													 desc, &isnull)),
						  id, BG_STATUS_LOST);
	}
	newtup = heap_modify_tuple(&locked, RelationGetDescr(rel), values, nulls,
							   replace);
	ReleaseBuffer(buffer);
	CatalogTupleUpdate(rel, tid, newtup);
}

/*
 * Delete the jobs that ended longer than bg_fdw.job_retention ago, and their
 * detach marks.  A row someone else is deleting (bg_forget) is skipped: a
 * job never waits for that.
 */
static void
bg_registry_expire(Oid registry, Oid detached)
{
	Relation	rel;
	Relation	det;
	Oid			index;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tuple;

	if (bg_job_retention < 0)
		return;
	rel = bg_registry_open_rel(registry);
	if (rel == NULL)
		return;
	index = bg_finished_at_index(rel);
	det = try_table_open(detached, RowExclusiveLock);
	if (!OidIsValid(index) || det == NULL)
	{
		if (det)
			table_close(det, RowExclusiveLock);
		table_close(rel, RowExclusiveLock);
		return;
	}
	bg_check_layout(det, bg_detached_columns, Natts_bg_job_detached);

	ScanKeyInit(&key, Anum_bg_job_registry_finished_at, BTLessStrategyNumber,
				F_TIMESTAMPTZ_LT, TimestampTzGetDatum(bg_retention_horizon()));
	scan = systable_beginscan(rel, index, true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		id = heap_getattr(tuple, Anum_bg_job_registry_id,
									  RelationGetDescr(rel), &isnull);

		if (bg_delete_if_free(rel, &tuple->t_self))
		{
			bg_delete_detach_mark(det, id);
			bg_keep_remove_at_commit(DatumGetInt64(id));
		}
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

	ScanKeyInit(&key, Anum_bg_job_detached_id, BTEqualStrategyNumber,
				F_INT8EQ, id);
	scan = systable_beginscan(det, bg_primary_key_index(det), true, NULL, 1, &key);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		(void) bg_delete_if_free(det, &tuple->t_self);
	systable_endscan(scan);
}

/* The registry's index on finished_at, which expiry scans. */
static Oid
bg_finished_at_index(Relation rel)
{
	return bg_registry_index(rel, Anum_bg_job_registry_finished_at,
							 InvalidAttrNumber);
}

/*
 * The registry's index on exactly these columns (the second one may be
 * InvalidAttrNumber), or InvalidOid.
 */
static Oid
bg_registry_index(Relation rel, AttrNumber first, AttrNumber second)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;
	int			natts = second == InvalidAttrNumber ? 1 : 2;

	foreach(lc, indexes)
	{
		Relation	index = index_open(lfirst_oid(lc), AccessShareLock);

		if (index->rd_index->indnatts == natts &&
			index->rd_index->indkey.values[0] == first &&
			(natts == 1 || index->rd_index->indkey.values[1] == second))
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
	if (!bg_row_inserted)
		return;
	bg_registry_own_xact(bg_registry_tidy_work, shared, NULL);
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
	{
		seg = dsm_attach(handle);
		if (seg == NULL)
			return;
		bg_segment_track(seg);
	}
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc == NULL &&
		shm_toc_attach(BG_FDW_MAGIC_1_0, dsm_segment_address(seg)) != NULL)
	{
		/*
		 * A job segment of 1.0's layout: a job of the older library still
		 * running under sessions that loaded it before new files were
		 * installed.  Its fields mean nothing to us; as long as it exists,
		 * the job is taken to be alive, never marked lost.
		 */
		probe->found = true;
		probe->worker_alive = true;
	}
	else if (toc != NULL)
	{
		BgJobShared *shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);

		if (shared != NULL && shared->job_id == job_id)
		{
			int			i;

			probe->found = true;
			probe->worker_alive = !bg_job_get_flag(shared,
												   &shared->worker_exited);
			probe->rows = pg_atomic_read_u64(&shared->rows);
			probe->kept_size = pg_atomic_read_u64(&shared->kept_size);
			probe->keeps = shared->keep;
			probe->messages_valid = pg_atomic_read_u64(&shared->messages_valid);
			probe->messages_sent = pg_atomic_read_u64(&shared->messages_sent);
			SpinLockAcquire(&shared->mutex);
			probe->worker_pid = shared->worker_pid;
			probe->has_progress = shared->has_progress;
			probe->progress = shared->progress;
			memcpy(probe->progress_message, shared->progress_message,
				   BG_PROGRESS_MESSAGE_LEN);
			for (i = 0; i < BG_MAX_WAITERS; i++)
				probe->waiters[i] = shared->waiters[i] && !shared->waiter_any[i] ?
					shared->waiters[i]->pid : 0;
			SpinLockRelease(&shared->mutex);
			probe->launcher_waiting = shared->launcher_waiting;
			probe->worker_waiting = shared->worker_waiting;
		}
	}
	if (!ours)
		dsm_detach(seg);
}

/*
 * The job's state: a running job whose worker is gone is lost.  On a standby
 * the rows are the primary's, whose segments cannot be seen: trust them.
 * False if the job's row has gone meanwhile (bg_forget, expiry).
 */
static bool
bg_entry_state(BgJobEntry *entry, BgJobProbe *probe, BgJobStatus *status)
{
	*status = entry->status;
	if (entry->status != BG_STATUS_RUNNING || RecoveryInProgress() ||
		(probe->found && probe->worker_alive))
		return true;

	/*
	 * The worker records its outcome before it exits: now that it has,
	 * a second look tells an outcome recorded since the first from none.
	 */
	if (!bg_entry_reread(entry))
		return false;
	*status = entry->status == BG_STATUS_RUNNING ? BG_STATUS_LOST :
		entry->status;
	return true;
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
	tt = bg_registry_query(psprintf("SELECT " BG_ENTRY_COLUMNS "%s FROM %s r WHERE %s LIMIT 1",
									call.kept, call.relname, cond),
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
	entry->status = bg_status_from_name(SPI_getvalue(tuple, desc, 5));
	entry->command = SPI_getvalue(tuple, desc, 6);
	entry->sqlstate = SPI_getvalue(tuple, desc, 7);
	entry->error = SPI_getvalue(tuple, desc, 8);
	d = SPI_getbinval(tuple, desc, 9, &isnull);
	entry->kept_bytes = isnull ? -1 : DatumGetInt64(d);
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
	int		   *map;
	Datum		dbname;
	uint64		i;
	List	   *queued;
	ListCell   *lc;

	bg_supervisor_ensure();

	InitMaterializedSRF(fcinfo, 0);
	map = bg_list_map(rsinfo->setDesc);
	dbname = DirectFunctionCall1(namein,
								 CStringGetDatum(get_database_name(MyDatabaseId)));
	/* before the registry: a job leaves the queue once it is listed there */
	queued = bg_queue_list(false);
	if (!bg_registry_open(&call))
		return (Datum) 0;
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = TimestampTzGetDatum(bg_job_retention < 0 ? DT_NOBEGIN :
									bg_retention_horizon());
	tt = bg_registry_query(psprintf(BG_LIST_QUERY, call.kept, call.detachname, call.control, call.relname,
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
		if (entry.status == BG_STATUS_RUNNING && !RecoveryInProgress() &&
			!(probe.found && probe.worker_alive))
		{
			SPITupleTable *again;
			Oid			idtype[1] = {INT8OID};
			Datum		id[1];

			id[0] = Int64GetDatum(entry.id);
			again = bg_registry_query(psprintf(BG_LIST_QUERY, call.kept, call.detachname, call.control, call.relname, "r.id = $1"),
									  1, idtype, id);
			if (again->numvals == 0)
				continue;		/* forgotten meanwhile */
			tuple = again->vals[0];
			bg_entry_from_tuple(tuple, again->tupdesc, &entry);
		}
		bg_list_put(rsinfo, map, dbname, tuple, tt->tupdesc, &entry, &probe,
					caller);
		foreach(lc, queued)
		{
			if (((BgQueuedInfo *) lfirst(lc))->job_id == entry.id)
				queued = foreach_delete_current(queued, lc);
		}
	}
	bg_registry_close(&call);
	foreach(lc, queued)
		bg_list_put_queued(rsinfo, map, dbname, lfirst(lc), caller);
	return (Datum) 0;
}

/*
 * One row of bg_jobs for a job waiting in the queue: "queued", or
 * "cancelled" once bg_cancel reached it there.
 */
static void
bg_list_put_queued(ReturnSetInfo *rsinfo, int *map, Datum dbname,
				   BgQueuedInfo *info, Oid caller)
{
	Datum		vals[BG_LIST_NCOLUMNS];
	bool		isnulls[BG_LIST_NCOLUMNS];
	bool		privileged = has_privs_of_role(caller, info->role);
	int			i;

	memset(vals, 0, sizeof(vals));
	for (i = 0; i < BG_LIST_NCOLUMNS; i++)
		isnulls[i] = true;
	vals[BG_LIST_ID] = Int64GetDatum(info->job_id);
	vals[BG_LIST_PID] = Int32GetDatum(info->name);
	vals[BG_LIST_ROLE] = ObjectIdGetDatum(info->role);
	vals[BG_LIST_DATABASE] = dbname;
	vals[BG_LIST_STATE] = CStringGetTextDatum(info->cancelled ? "cancelled" :
											  "queued");
	vals[BG_LIST_LAUNCHED_AT] = TimestampTzGetDatum(info->launched_at);
	vals[BG_LIST_ATTACHED] = BoolGetDatum(false);
	vals[BG_LIST_KEPT] = BoolGetDatum(false);
	isnulls[BG_LIST_ID] = isnulls[BG_LIST_PID] = isnulls[BG_LIST_ROLE] =
		isnulls[BG_LIST_DATABASE] = isnulls[BG_LIST_STATE] =
		isnulls[BG_LIST_LAUNCHED_AT] = isnulls[BG_LIST_ATTACHED] =
		isnulls[BG_LIST_KEPT] = false;
	if (info->cancelled)
	{
		vals[BG_LIST_FINISHED_AT] = TimestampTzGetDatum(info->cancelled_at);
		isnulls[BG_LIST_FINISHED_AT] = false;
	}
	if (privileged)
	{
		vals[BG_LIST_ROWS] = Int64GetDatum(0);
		isnulls[BG_LIST_ROWS] = false;
		if (info->sql)
		{
			vals[BG_LIST_QUERY_TEXT] = CStringGetTextDatum(info->sql);
			isnulls[BG_LIST_QUERY_TEXT] = false;
		}
		if (info->label)
		{
			vals[BG_LIST_LABEL] = CStringGetTextDatum(info->label);
			isnulls[BG_LIST_LABEL] = false;
		}
		if (info->cancelled)
		{
			vals[BG_LIST_SQLSTATE] = CStringGetTextDatum("57014");
			vals[BG_LIST_ERROR] = CStringGetTextDatum("canceling statement due to user request");
			isnulls[BG_LIST_SQLSTATE] = isnulls[BG_LIST_ERROR] = false;
		}
	}
	bg_list_emit(rsinfo, map, vals, isnulls);
}

/*
 * For each column of bg_list_jobs' result as its SQL declaration gives it,
 * the BgListColumn that fills it, or -1 for a column this library does not
 * know (left NULL).
 */
static int *
bg_list_map(TupleDesc desc)
{
	int		   *map = palloc(desc->natts * sizeof(int));
	int			i;

	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		int			col;

		map[i] = -1;
		if (att->attisdropped)
			continue;
		for (col = 0; col < BG_LIST_NCOLUMNS; col++)
		{
			if (strcmp(NameStr(att->attname), bg_list_columns[col].name) == 0)
				break;
		}
		if (col == BG_LIST_NCOLUMNS)
			continue;
		if (att->atttypid != bg_list_columns[col].type)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("bg_fdw's function \"%s\" has an unexpected result type",
							"bg_list_jobs"),
					 errdetail("Column \"%s\" has type %s; bg_fdw fills it with type %s.",
							   NameStr(att->attname),
							   format_type_be(att->atttypid),
							   format_type_be(bg_list_columns[col].type)),
					 errhint("Update the extension with ALTER EXTENSION bg_fdw UPDATE.")));
		map[i] = col;
	}
	return map;
}

/*
 * Whether the job's result is kept (while it runs, whether it is keeping
 * it), and its size, which like the row count is its role's business.
 */
static void
bg_list_put_kept(Datum *vals, bool *isnulls, BgJobEntry *entry,
				 BgJobStatus status, BgJobProbe *probe, bool privileged)
{
	bool		kept = (entry->kept_bytes >= 0 &&
						(status == BG_STATUS_RUNNING ||
						 status == BG_STATUS_FINISHED)) ||
		bg_kept_pending(entry, probe);

	vals[BG_LIST_KEPT] = BoolGetDatum(kept);
	vals[BG_LIST_KEPT_BYTES] = Int64GetDatum(entry->kept_bytes < 0 ||
											 (status == BG_STATUS_RUNNING &&
											  probe->found) ?
											 (int64) probe->kept_size :
											 entry->kept_bytes);
	isnulls[BG_LIST_KEPT_BYTES] = !kept || !privileged;
}

/*
 * bg_jobs' label and progress: the label as recorded; progress live from a
 * running job's segment, else as recorded at its end.  Both are the job
 * role's business, like its query.
 */
static void
bg_list_put_control(Datum *vals, bool *isnulls, HeapTuple tuple,
					TupleDesc desc, bool running, BgJobProbe *probe,
					bool privileged)
{
	vals[BG_LIST_LABEL] = SPI_getbinval(tuple, desc, 15, &isnulls[BG_LIST_LABEL]);
	if (running && probe->found)
	{
		isnulls[BG_LIST_PROGRESS] = !probe->has_progress;
		vals[BG_LIST_PROGRESS] = DirectFunctionCall1(float8_numeric,
													 Float8GetDatum(probe->progress));
		isnulls[BG_LIST_PROGRESS_MESSAGE] = probe->progress_message[0] == '\0';
		vals[BG_LIST_PROGRESS_MESSAGE] =
			CStringGetTextDatum(probe->progress_message);
	}
	else
	{
		vals[BG_LIST_PROGRESS] = SPI_getbinval(tuple, desc, 16,
											   &isnulls[BG_LIST_PROGRESS]);
		vals[BG_LIST_PROGRESS_MESSAGE] =
			SPI_getbinval(tuple, desc, 17, &isnulls[BG_LIST_PROGRESS_MESSAGE]);
	}
	isnulls[BG_LIST_LABEL] |= !privileged;
	isnulls[BG_LIST_PROGRESS] |= !privileged;
	isnulls[BG_LIST_PROGRESS_MESSAGE] |= !privileged;
	/* a running job's process, as pg_stat_activity shows it to everyone */
	if (running && probe->found && probe->worker_pid > 0)
		vals[BG_LIST_WORKER_PID] = Int32GetDatum(probe->worker_pid);
	else
		vals[BG_LIST_WORKER_PID] = SPI_getbinval(tuple, desc, 18,
												 &isnulls[BG_LIST_WORKER_PID]);
}

/* Put a row of bg_jobs, its columns in the order of the SQL declaration */
static void
bg_list_emit(ReturnSetInfo *rsinfo, int *map, Datum *vals, bool *isnulls)
{
	TupleDesc	outdesc = rsinfo->setDesc;
	Datum	   *out = palloc(outdesc->natts * sizeof(Datum));
	bool	   *nulls = palloc(outdesc->natts * sizeof(bool));
	int			i;

	for (i = 0; i < outdesc->natts; i++)
	{
		out[i] = map[i] < 0 ? (Datum) 0 : vals[map[i]];
		nulls[i] = map[i] < 0 ? true : isnulls[map[i]];
	}
	tuplestore_putvalues(rsinfo->setResult, outdesc, out, nulls);
	pfree(out);
	pfree(nulls);
}

/* One row of bg_jobs, from a row of BG_LIST_QUERY */
static void
bg_list_put(ReturnSetInfo *rsinfo, int *map, Datum dbname, HeapTuple tuple,
			TupleDesc desc, BgJobEntry *entry, BgJobProbe *probe, Oid caller)
{
	Datum		vals[BG_LIST_NCOLUMNS];
	bool		isnulls[BG_LIST_NCOLUMNS];
	bool		privileged = has_privs_of_role(caller, entry->role);
	bool		running = (entry->status == BG_STATUS_RUNNING);
	BgJobStatus status = entry->status;
	bool		isnull;

	memset(isnulls, 0, sizeof(isnulls));
	vals[BG_LIST_ID] = Int64GetDatum(entry->id);
	vals[BG_LIST_PID] = Int32GetDatum(entry->pid);
	vals[BG_LIST_ROLE] = ObjectIdGetDatum(entry->role);
	vals[BG_LIST_DATABASE] = dbname;
	vals[BG_LIST_QUERY_TEXT] = SPI_getbinval(tuple, desc, 10, &isnull);
	isnulls[BG_LIST_QUERY_TEXT] = isnull || !privileged;
	if (running && !RecoveryInProgress() && !(probe->found && probe->worker_alive))
		status = BG_STATUS_LOST;
	vals[BG_LIST_STATE] = CStringGetTextDatum(bg_status_name(status));
	vals[BG_LIST_LAUNCHED_AT] = SPI_getbinval(tuple, desc, 11,
											  &isnulls[BG_LIST_LAUNCHED_AT]);
	vals[BG_LIST_FINISHED_AT] = SPI_getbinval(tuple, desc, 12,
											  &isnulls[BG_LIST_FINISHED_AT]);
	if (running && probe->found)
		vals[BG_LIST_ROWS] = Int64GetDatum((int64) probe->rows);
	else
		vals[BG_LIST_ROWS] = SPI_getbinval(tuple, desc, 13,
										   &isnulls[BG_LIST_ROWS]);
	/* what the job did is its role's business, as pg_stat_activity has it */
	isnulls[BG_LIST_ROWS] = isnulls[BG_LIST_ROWS] || !privileged;
	isnulls[BG_LIST_COMMAND] = (entry->command == NULL || !privileged);
	vals[BG_LIST_COMMAND] = isnulls[BG_LIST_COMMAND] ? (Datum) 0 :
		CStringGetTextDatum(entry->command);
	isnulls[BG_LIST_SQLSTATE] = (entry->sqlstate == NULL || !privileged);
	vals[BG_LIST_SQLSTATE] = isnulls[BG_LIST_SQLSTATE] ? (Datum) 0 :
		CStringGetTextDatum(entry->sqlstate);
	isnulls[BG_LIST_ERROR] = (entry->error == NULL || !privileged);
	vals[BG_LIST_ERROR] = isnulls[BG_LIST_ERROR] ? (Datum) 0 :
		CStringGetTextDatum(entry->error);
	vals[BG_LIST_ATTACHED] = SPI_getbinval(tuple, desc, 14, &isnull);
	if (isnull)
		vals[BG_LIST_ATTACHED] = BoolGetDatum(false);
	isnulls[BG_LIST_ATTACHED] = RecoveryInProgress();
	bg_list_put_kept(vals, isnulls, entry, status, probe, privileged);
	bg_list_put_control(vals, isnulls, tuple, desc, running, probe, privileged);

	bg_list_emit(rsinfo, map, vals, isnulls);
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
			 entry->pid, bg_status_name(entry->status));
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
	TimestampTz check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
													   DeadlockTimeout);
	BgWaitCycle cycle = {0};
	long		nap_ms = 1;
	pid_t		worker = 0;
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
		BgJobStatus status;
		BgQueuedInfo queued;

		/* each look leaves its strings behind: keep them to one look */
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(poll_cxt);
		MemoryContextSwitchTo(poll_cxt);
		if (bg_queue_find(pid, 0, &queued))
		{
			if (queued.cancelled)
				bg_queue_raise_cancelled(pid);
			status = BG_STATUS_RUNNING;
			memset(&probe, 0, sizeof(probe));
		}
		else
		{
			if (!bg_entry_lookup(pid, &entry))
				bg_raise_unknown(pid);
			bg_entry_check_privileges(&entry);
			bg_probe(entry.id, entry.segment, &probe);
			if (!bg_entry_state(&entry, &probe, &status))
				bg_raise_unknown(pid);	/* forgotten meanwhile */
		}
		/* (as in the launching session, until the result is recorded kept) */
		if (status == BG_STATUS_FINISHED && !bg_kept_pending(&entry, &probe))
		{
			MemoryContextSwitchTo(oldcxt);
			return cstring_to_text(entry.command ? entry.command : "");
		}
		if (status == BG_STATUS_LOST)
			bg_raise_lost(&entry);
		if (status != BG_STATUS_RUNNING && status != BG_STATUS_FINISHED)
			bg_entry_raise(&entry);
		worker = probe.worker_pid;

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
		if (GetCurrentTimestamp() >= check_at && worker != 0)
		{
			bg_registry_wait_check(pid, worker, &cycle);
			check_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
												   DeadlockTimeout);
		}
	}
}

/*
 * bg_wait of a job this session does not hold: a job that waits for us,
 * directly for a lock we hold or through others, never ends.
 */
static void
bg_registry_wait_check(int pid, pid_t worker, BgWaitCycle *cycle)
{
	const char *hint = _("Wait for the job outside the transaction that holds the lock, or from another session.");

	if (bg_blocked_by_me(worker))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("Background job %d is waiting for a lock or snapshot held by this session, which is waiting for the job.",
						   pid),
				 errhint("%s", hint)));
	bg_check_wait_cycle(worker, cycle, hint);
}

/*
 * Ask the job's worker to cancel its statement: note that it was asked, so
 * that the job is recorded as "cancelled" rather than failed.  False if the
 * worker has already ended.
 */
bool
bg_cancel_shared(BgJobShared *shared)
{
	bool		exited;
	pid_t		pid;

	bool		sent = false;

	/*
	 * The signal goes out under the mutex: the worker marks the job ended
	 * under it, and a started worker may then take another job, which a
	 * late signal would cancel (pool.c drops those that came before).
	 */
	SpinLockAcquire(&shared->mutex);
	exited = shared->worker_exited || shared->ended;
	pid = shared->worker_pid;
	if (!exited && pid > 0)
	{
		shared->cancel_requested = true;
		sent = (kill(pid, SIGINT) == 0);
	}
	SpinLockRelease(&shared->mutex);
	return sent;
}

/*
 * A LIKE pattern that ends with its escape character is an error, raised
 * before any label is looked at.
 */
static void
bg_check_like_pattern(const char *pattern)
{
	size_t		len = strlen(pattern);
	size_t		n = 0;

	while (n < len && pattern[len - 1 - n] == '\\')
		n++;
	if (n % 2 == 1)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_ESCAPE_SEQUENCE),
				 errmsg("LIKE pattern must not end with escape character")));
}

/*
 * bg_cancel_label: cancel the running jobs of this database whose label
 * matches the LIKE pattern and that the caller may act on.  Returns how
 * many were cancelled.
 */
int
bg_registry_cancel_label(const char *pattern)
{
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	Oid			caller = GetUserId();	/* before we become the owner */
	List	   *entries = NIL;
	ListCell   *lc;
	int			n = 0;
	uint64		i;
	MemoryContext cxt = CurrentMemoryContext;

	Datum		pattern_datum = CStringGetTextDatum(pattern);

	bg_check_like_pattern(pattern);
	if (!bg_registry_open(&call))
		return 0;
	/*
	 * The pattern is matched in C against the labels of permitted jobs only:
	 * matched in SQL, over every row, an error LIKE raises part way through
	 * a label would tell other roles' labels.
	 */
	if (strcmp(call.kept, "NULL::bigint") != 0)
	{
		values[0] = ObjectIdGetDatum(MyDatabaseId);
		values[1] = CStringGetTextDatum(bg_status_name(BG_STATUS_RUNNING));
		tt = bg_registry_query(psprintf("SELECT " BG_ENTRY_COLUMNS "%s, r.label "
										"FROM %s r WHERE database = $1 AND state = $2 "
										"AND label IS NOT NULL ORDER BY id",
										call.kept, call.relname),
							   2, types, values);
		for (i = 0; i < tt->numvals; i++)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
			BgJobEntry *entry = palloc(sizeof(BgJobEntry));
			bool		isnull;

			bg_entry_from_tuple(tt->vals[i], tt->tupdesc, entry);
			if (has_privs_of_role(caller, entry->role) &&
				DatumGetBool(DirectFunctionCall2Coll(textlike, DEFAULT_COLLATION_OID,
													 SPI_getbinval(tt->vals[i], tt->tupdesc,
																   10, &isnull),
													 pattern_datum)))
				entries = lappend(entries, entry);
			MemoryContextSwitchTo(oldcxt);
		}
	}
	bg_registry_close(&call);
	foreach(lc, entries)
	{
		if (bg_cancel_entry((BgJobEntry *) lfirst(lc)))
			n++;
	}
	/* and the queued ones (bg_queue_list reads labels of permitted jobs) */
	foreach(lc, bg_queue_list(false))
	{
		BgQueuedInfo *info = lfirst(lc);

		if (info->label != NULL && !info->cancelled &&
			DatumGetBool(DirectFunctionCall2Coll(textlike, DEFAULT_COLLATION_OID,
												 CStringGetTextDatum(info->label),
												 pattern_datum)) &&
			bg_queue_cancel(info->name))
			n++;
	}
	return n;
}

/*
 * For bg_wait_any: the job of another session with this PID (or, once
 * found, with the identifier in *job_id), found and checked the first time
 * as bg_wait finds it (the same errors); its identifier and segment.
 * Returns whether it has ended, however (lost, or forgotten, too).
 */
bool
bg_registry_job_ended(int pid, int64 *job_id, dsm_handle *segment)
{
	BgJobEntry	entry;
	BgJobProbe	probe;
	BgJobStatus status;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	BgQueuedInfo queued;

	/* queued: not ended, unless cancelled there */
	if (bg_queue_find(pid, *job_id, &queued))
	{
		*job_id = queued.job_id;
		*segment = DSM_HANDLE_INVALID;
		return queued.cancelled;
	}
	/* found once by PID; then by identifier, whatever the PID names now */
	if (*job_id != 0)
	{
		values[0] = Int64GetDatum(*job_id);
		if (!bg_entry_fetch("id = $1", 1, types, values, &entry))
			return true;		/* forgotten: it has ended */
	}
	else
	{
		if (!bg_entry_lookup(pid, &entry))
			bg_raise_unknown(pid);
		bg_entry_check_privileges(&entry);
	}
	bg_probe(entry.id, entry.segment, &probe);
	if (!bg_entry_state(&entry, &probe, &status))
		return true;			/* forgotten meanwhile */
	*job_id = entry.id;
	*segment = entry.segment;
	return status != BG_STATUS_RUNNING;
}

/*
 * The highest job name at or above "floor" the registry holds, or 0: names
 * of jobs handed to started workers (pool.c) must not repeat one.
 */
int
bg_registry_highest_name(int floor)
{
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[1] = {INT4OID};
	Datum		values[1];
	bool		isnull;
	int			highest = 0;
	Datum		d;

	if (!bg_registry_open(&call))
		return 0;
	values[0] = Int32GetDatum(floor);
	tt = bg_registry_query(psprintf("SELECT max(pid) FROM %s WHERE pid >= $1",
									call.relname),
						   1, types, values);
	d = SPI_getbinval(tt->vals[0], tt->tupdesc, 1, &isnull);
	if (!isnull)
		highest = DatumGetInt32(d);
	bg_registry_close(&call);
	return highest;
}

/* bg_cancel of a job this session does not hold */
bool
bg_registry_cancel(int pid)
{
	BgJobEntry	entry;

	if (bg_queue_cancel(pid))
		return true;
	if (!bg_entry_lookup(pid, &entry))
		bg_raise_unknown(pid);
	bg_entry_check_privileges(&entry);
	return bg_cancel_entry(&entry);
}

/* Cancel the job of a registry row, if it still runs. */
static bool
bg_cancel_entry(BgJobEntry *entry)
{
	dsm_segment *seg;
	shm_toc    *toc;
	bool		ours;
	bool		done = false;

	if (entry->status != BG_STATUS_RUNNING || entry->segment == DSM_HANDLE_INVALID)
		return false;

	/* this session may still map it: a job it detached in this transaction */
	seg = dsm_find_mapping(entry->segment);
	ours = (seg != NULL);
	if (seg == NULL)
	{
		seg = dsm_attach(entry->segment);
		if (seg == NULL)
			return false;
		bg_segment_track(seg);
	}
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc != NULL)
	{
		BgJobShared *shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);

		if (shared != NULL && shared->job_id == entry->id)
			done = bg_cancel_shared(shared);
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
	BgJobStatus status;
	BgQueuedInfo queued;

	if (bg_queue_find(pid, 0, &queued))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot forget background job %d because it is queued",
						pid),
				 errhint("Cancel it with bg_cancel(), or wait for it with bg_wait().")));
	if (!bg_entry_lookup(pid, &entry))
		bg_raise_unknown(pid);
	bg_entry_check_privileges(&entry);
	bg_probe(entry.id, entry.segment, &probe);
	if (bg_kept_pending(&entry, &probe))
	{
		bg_await_kept_record(pid, &entry);
		if (!bg_entry_reread(&entry))
			bg_raise_unknown(pid);	/* forgotten meanwhile */
		bg_probe(entry.id, entry.segment, &probe);
	}
	if (bg_entry_state(&entry, &probe, &status) && status == BG_STATUS_RUNNING)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("cannot forget background job %d because it is still running",
						pid),
				 errhint("Cancel it with bg_cancel(), or wait for it with bg_wait().")));

	bg_registry_delete(entry.id);
	PG_RETURN_VOID();
}

/*
 * A finished job's worker makes its kept file durable after the commit that
 * recorded the outcome, so bg_wait may return before it is done: wait until
 * it has recorded the file as kept, or has exited without.  The fsync takes
 * moments; a worker that waits for a lock this session holds is a deadlock.
 */
static void
bg_await_kept_record(int pid, BgJobEntry *entry)
{
	dsm_segment *seg = dsm_find_mapping(entry->segment);
	bool		ours = (seg != NULL);
	BgJobShared *shared = NULL;
	shm_toc    *toc;
	BgWaitCycle cycle = {0};

	if (seg == NULL)
	{
		seg = dsm_attach(entry->segment);
		if (seg == NULL)
			return;				/* gone: its worker has exited */
		bg_segment_track(seg);
	}
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(seg));
	if (toc != NULL)
		shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);
	if (shared != NULL && shared->job_id == entry->id)
	{
		ConditionVariablePrepareToSleep(&shared->kept_cv);
		while (!bg_job_get_flag(shared, &shared->kept_recorded) &&
			   !bg_job_get_flag(shared, &shared->worker_exited))
		{
			if (ConditionVariableTimedSleep(&shared->kept_cv, DeadlockTimeout,
											bg_wait_event_job()))
				bg_registry_wait_check(pid, bg_shared_worker_pid(shared),
									   &cycle);
		}
		ConditionVariableCancelSleep();
	}
	if (!ours)
		dsm_detach(seg);
}

/*
 * bg_wait in the launching session: the job has finished, and its worker
 * may still be making its kept result durable.  A job that keeps its
 * result has ended, for bg_wait, once it is recorded kept, as
 * bg_registry_wait has it in other sessions.
 */
void
bg_registry_await_kept(int pid, int64 job_id)
{
	BgJobEntry	entry;
	BgJobProbe	probe;

	entry.id = job_id;
	if (!bg_entry_reread(&entry))
		return;					/* forgotten meanwhile */
	bg_probe(entry.id, entry.segment, &probe);
	if (bg_kept_pending(&entry, &probe))
		bg_await_kept_record(pid, &entry);
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
	bg_keep_remove_at_commit(job_id);
}

/*
 * bg_detach: note in the registry that no session holds the result any more,
 * as part of the detaching transaction.  Where that cannot write (read-only
 * transactions, standbys), bg_jobs learns it when the session ends.
 */
void
bg_registry_detached(int64 job_id)
{
	Oid			relid = bg_detached_relid(bg_registry_relid());
	Relation	rel;
	Datum	   *values;
	bool	   *nulls;

	if (XactReadOnly || RecoveryInProgress() || !OidIsValid(relid))
		return;
	rel = table_open(relid, RowExclusiveLock);
	bg_check_layout(rel, bg_detached_columns, Natts_bg_job_detached);
	bg_blank_row(rel, &values, &nulls);
	values[Anum_bg_job_detached_id - 1] = Int64GetDatum(job_id);
	nulls[Anum_bg_job_detached_id - 1] = false;
	CatalogTupleInsert(rel, heap_form_tuple(RelationGetDescr(rel), values, nulls));
	table_close(rel, NoLock);
}

/* bg_job_detached, beside the registry */
Oid
bg_detached_relid(Oid registry)
{
	if (!OidIsValid(registry))
		return InvalidOid;
	return get_relname_relid(BG_DETACHED_TABLE, get_rel_namespace(registry));
}

/* ----------------------------------------------------------------
 *		bg_fdw.max_jobs_per_role
 * ----------------------------------------------------------------
 */

/* The role whose launch lock this session holds, or InvalidOid */
static Oid	bg_launch_locked_role = InvalidOid;

/*
 * Lock out other launches by the role until ours is registered, and refuse
 * it if the role already runs bg_fdw.max_jobs_per_role jobs here, unless
 * "may_queue": then return true, and the job waits in the queue (queue.c)
 * until one of them ends.  Without a limit no lock is taken.
 * bg_registry_unlock_role releases it, as soon as the job is listed.
 */
bool
bg_registry_lock_role(Oid role, bool may_queue)
{
	LOCKTAG		tag;
	int			running = 0;

	if (bg_max_jobs_per_role < 0 || RecoveryInProgress())
		return false;
	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, AuthIdRelationId, role, 0);
	(void) LockAcquire(&tag, ExclusiveLock, true, false);
	bg_launch_locked_role = role;

	(void) bg_registry_role_jobs(role, &running);

	if (running < bg_max_jobs_per_role)
		return false;
	if (may_queue)
		return true;
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("too many background jobs for role \"%s\"",
					GetUserNameFromId(role, false)),
			 errdetail_plural("The role runs %d job in this database; \"bg_fdw.max_jobs_per_role\" is %d.",
							  "The role runs %d jobs in this database; \"bg_fdw.max_jobs_per_role\" is %d.",
							  running, running, bg_max_jobs_per_role),
			 errhint("Wait for a job to end, or cancel one with bg_cancel().")));
	return false;				/* keep compiler quiet */
}

/*
 * What a launch checks of its role's jobs in this database: the bytes their
 * kept results take (running jobs and those still recording theirs with
 * what they wrote so far), returned, and, if "running" is given, how many
 * run.  Read at each launch, so through the registry's indexes, whatever it
 * holds: on (role, kept_bytes) the recorded results, on (segment) the jobs
 * that still have a segment, running or recording.  A 1.0 registry keeps
 * nothing and lacks the indexes: its rows are all read for running jobs.
 */
static int64
bg_registry_role_jobs(Oid role, int *running)
{
	Oid			relid = bg_registry_relid();
	Relation	rel;
	Oid			kept_index;
	Oid			segment_index;
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tuple;
	int64		total = 0;

	if (running)
		*running = 0;
	if (!OidIsValid(relid) ||
		(rel = try_table_open(relid, AccessShareLock)) == NULL)
		return 0;
	bg_check_layout(rel, bg_registry_columns, Natts_bg_job_registry);
	kept_index = bg_registry_index(rel, Anum_bg_job_registry_role,
								   Anum_bg_job_registry_kept_bytes);
	segment_index = bg_registry_index(rel, Anum_bg_job_registry_segment,
									  InvalidAttrNumber);
	if (bg_rel_has_kept(rel) && OidIsValid(kept_index))
	{
		ScanKeyInit(&keys[0], Anum_bg_job_registry_role, BTEqualStrategyNumber, F_OIDEQ,
					ObjectIdGetDatum(role));
		ScanKeyInit(&keys[1], Anum_bg_job_registry_kept_bytes, BTGreaterStrategyNumber, F_INT8GT,
					Int64GetDatum(0));
		scan = systable_beginscan(rel, kept_index, true, NULL, 2, keys);
		while (HeapTupleIsValid(tuple = systable_getnext(scan)))
		{
			if (bg_registry_row_of(rel, tuple, role, Anum_bg_job_registry_segment))
				total += bg_registry_int8(rel, tuple, Anum_bg_job_registry_kept_bytes);
		}
		systable_endscan(scan);
	}

	/* (a heap scan cannot search for NOT NULL: it is checked below) */
	ScanKeyEntryInitialize(&keys[0], SK_ISNULL | SK_SEARCHNOTNULL,
						   Anum_bg_job_registry_segment,
						   InvalidStrategy, InvalidOid, InvalidOid, InvalidOid,
						   (Datum) 0);
	scan = systable_beginscan(rel, segment_index, OidIsValid(segment_index),
							  NULL, OidIsValid(segment_index) ? 1 : 0, keys);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		BgJobProbe	probe;
		int64		size;

		if (!bg_registry_row_of(rel, tuple, role, InvalidAttrNumber) ||
			heap_attisnull(tuple, Anum_bg_job_registry_segment,
						   RelationGetDescr(rel)))
			continue;
		bg_probe(bg_registry_int8(rel, tuple, Anum_bg_job_registry_id),
				 (dsm_handle) bg_registry_int8(rel, tuple, Anum_bg_job_registry_segment),
				 &probe);
		size = probe.found ? (int64) probe.kept_size :
			bg_rel_has_kept(rel) ?
			bg_registry_int8(rel, tuple, Anum_bg_job_registry_kept_bytes) : 0;
		total += Max(size, 0);
		if (running && probe.found && probe.worker_alive)
			(*running)++;
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return total;
}

/*
 * Is this registry row one of the role's in this database (and, if "null"
 * is a column, is that column NULL)?
 */
static bool
bg_registry_row_of(Relation rel, HeapTuple tuple, Oid role, AttrNumber null)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool		isnull;

	if (DatumGetObjectId(heap_getattr(tuple, Anum_bg_job_registry_role, desc,
									  &isnull)) != role ||
		DatumGetObjectId(heap_getattr(tuple, Anum_bg_job_registry_database,
									  desc, &isnull)) != MyDatabaseId)
		return false;
	if (null != InvalidAttrNumber)
		(void) heap_getattr(tuple, null, desc, &isnull);
	return null == InvalidAttrNumber || isnull;
}

/* An int8 column of a registry row, 0 if NULL */
static int64
bg_registry_int8(Relation rel, HeapTuple tuple, AttrNumber column)
{
	bool		isnull;
	Datum		d = heap_getattr(tuple, column, RelationGetDescr(rel), &isnull);

	return isnull ? 0 : DatumGetInt64(d);
}

/*
 * Refuse to launch a job that keeps its result while the role's kept
 * results in this database already take bg_fdw.max_kept_size_per_role: a
 * role must not fill the disk with results it never forgets.  A running job
 * counts with what it has written so far; jobs launched at once may each
 * pass, each then bounded by bg_fdw.max_result_size.  Counting reads every
 * kept result of the role, so a session that found the role under the
 * limit trusts that for a second (as bg_keep_check_cluster does): launches
 * in a loop then read them once a second, not once each.  A count over the
 * limit is never reused, so a launch after bg_forget counts again.
 */
void
bg_registry_check_kept(Oid role)
{
	static TimestampTz counted_at = 0;
	static Oid	counted_role = InvalidOid;
	static Oid	counted_db = InvalidOid;
	static int64 total = 0;
	TimestampTz now = GetCurrentTimestamp();
	int64		limit = (int64) bg_max_kept_size_per_role * 1024;

	if (bg_max_kept_size_per_role < 0)
		return;
	if (role == counted_role && MyDatabaseId == counted_db &&
		now - counted_at < USECS_PER_SEC && total < limit)
	{
		/* what a count would have found wrong with the table, all the same */
		Oid			relid = bg_registry_relid();
		Relation	rel;

		if (OidIsValid(relid) &&
			(rel = try_table_open(relid, AccessShareLock)) != NULL)
		{
			bg_check_layout(rel, bg_registry_columns, Natts_bg_job_registry);
			table_close(rel, AccessShareLock);
		}
		return;
	}
	counted_role = InvalidOid;
	total = bg_registry_role_jobs(role, NULL);
	counted_at = now;
	counted_role = role;
	counted_db = MyDatabaseId;
	if (total >= limit)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("kept results of role \"%s\" exceed \"bg_fdw.max_kept_size_per_role\" (%dkB)",
						GetUserNameFromId(role, false), bg_max_kept_size_per_role),
				 errdetail("The role's jobs in this database keep " INT64_FORMAT " bytes.",
						   total),
				 errhint("Forget results no longer needed with bg_forget(pid), or launch with keep => false.")));
}

/*
 * The waits between backends that only bg_fdw knows of, for the wait-for
 * graph (waitgraph.c), as a List of BgWaitEdge: for each job of this
 * database that runs, whether its launching session waits for it, who else
 * waits for it (bg_wait_any), and whether its worker waits for its
 * launching session.  Empty without the registry.
 */
List *
bg_registry_wait_edges(void)
{
	MemoryContext cxt = CurrentMemoryContext;
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	List	   *edges = NIL;
	Oid			relid = bg_registry_relid();
	uint64		i;

	/* a wait must not wait for the registry: this look is skipped then */
	if (!OidIsValid(relid) ||
		!ConditionalLockRelationOid(relid, AccessShareLock))
		return NIL;
	if (!bg_registry_open(&call))
	{
		UnlockRelationOid(relid, AccessShareLock);
		return NIL;
	}
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = CStringGetTextDatum(bg_status_name(BG_STATUS_RUNNING));
	tt = bg_registry_query(psprintf("SELECT id, pid, launcher_pid, segment FROM %s "
									"WHERE database = $1 AND state = $2 "
									"AND segment IS NOT NULL",
									call.relname),
						   2, types, values);
	for (i = 0; i < tt->numvals; i++)
	{
		HeapTuple	row = tt->vals[i];
		bool		isnull;
		int64		id = DatumGetInt64(SPI_getbinval(row, tt->tupdesc, 1, &isnull));
		int			worker;
		int			launcher = DatumGetInt32(SPI_getbinval(row, tt->tupdesc, 3, &isnull));
		dsm_handle	seg = (dsm_handle) DatumGetInt64(SPI_getbinval(row, tt->tupdesc, 4, &isnull));
		BgJobProbe	probe;
		MemoryContext oldcxt;
		int			w;

		bg_probe(id, seg, &probe);
		if (!probe.found || !probe.worker_alive)
			continue;
		oldcxt = MemoryContextSwitchTo(cxt);
		worker = probe.worker_pid;
		if (probe.launcher_waiting)
			edges = bg_wait_edge(edges, launcher, worker);
		if (probe.worker_waiting)
			edges = bg_wait_edge(edges, worker, launcher);
		/* (a wait for any of several jobs is no edge: see bg_wait_publish) */
		for (w = 0; w < BG_MAX_WAITERS; w++)
			edges = bg_wait_edge(edges, probe.waiters[w], worker);
		MemoryContextSwitchTo(oldcxt);
	}
	bg_registry_close(&call);
	UnlockRelationOid(relid, AccessShareLock);
	return edges;
}

static List *
bg_wait_edge(List *edges, int from, int to)
{
	BgWaitEdge *e;

	if (from <= 0 || to <= 0)
		return edges;
	e = palloc(sizeof(BgWaitEdge));
	e->from = from;
	e->to = to;
	return lappend(edges, e);
}

/* Release the launch lock, if this session holds one */
void
bg_registry_unlock_role(void)
{
	LOCKTAG		tag;

	if (!OidIsValid(bg_launch_locked_role))
		return;
	SET_LOCKTAG_OBJECT(tag, MyDatabaseId, AuthIdRelationId,
					   bg_launch_locked_role, 0);
	bg_launch_locked_role = InvalidOid;
	LockRelease(&tag, ExclusiveLock, true);
}

/* ----------------------------------------------------------------
 *		Kept results
 * ----------------------------------------------------------------
 */

/*
 * The newest job with this PID (and identifier, unless 0) in this database
 * that the caller may act on; with "messages", also its kept messages (NULL
 * if it kept none).  Raises the error for a job that does not exist or that
 * only other roles may act on.
 */
static void
bg_entry_permitted(int pid, int64 job_id, BgJobEntry *entry, bytea **messages)
{
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[3] = {INT4OID, OIDOID, INT8OID};
	Datum		values[3];
	Oid			caller = GetUserId();	/* before we become the owner */
	Oid			denied = InvalidOid;
	bool		found = false;
	MemoryContext cxt = CurrentMemoryContext;
	uint64		i;
	BgQueuedInfo queued;

	/* a reader of a queued job follows it once it runs */
	if (messages == NULL)
		bg_queue_await_start(pid, job_id);
	else if (bg_queue_find(pid, job_id, &queued))
	{
		if (queued.cancelled)
			bg_queue_raise_cancelled(pid);
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("background job %d has not started yet", pid),
				 errdetail("It waits in the queue for a worker slot, and has sent no message.")));
	}
	if (!bg_registry_open(&call))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"bg_fdw\" is not installed in this database")));
	values[0] = Int32GetDatum(pid);
	values[1] = ObjectIdGetDatum(MyDatabaseId);
	values[2] = Int64GetDatum(job_id);
	tt = bg_registry_query(psprintf("SELECT " BG_ENTRY_COLUMNS "%s, %s "
									"FROM %s r WHERE pid = $1 AND database = $2 "
									"AND ($3 = 0 OR id = $3) ORDER BY id DESC",
									call.kept,
									messages ? call.messages : "NULL::bytea",
									call.relname),
						   3, types, values);
	for (i = 0; i < tt->numvals && !found; i++)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
		bool		isnull;
		Datum		d;

		bg_entry_from_tuple(tt->vals[i], tt->tupdesc, entry);
		found = has_privs_of_role(caller, entry->role);
		if (!found && !OidIsValid(denied))
			denied = entry->role;
		if (found && messages)
		{
			d = SPI_getbinval(tt->vals[i], tt->tupdesc, 10, &isnull);
			*messages = isnull ? NULL : DatumGetByteaPCopy(d);
		}
		MemoryContextSwitchTo(oldcxt);
	}
	bg_registry_close(&call);
	if (!found && OidIsValid(denied))
		bg_permission_denied(pid, denied);
	if (!found && job_id != 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("background job %d with identifier " INT64_FORMAT " does not exist",
						pid, job_id),
				 errdetail("It was forgotten or expired, or the table was made for another job.")));
	if (!found)
		bg_raise_unknown(pid);
}

/*
 * The job with this PID (and identifier, unless 0) whose kept result the
 * caller would read: the newest one the caller may act on.  Raises the
 * error a reader must get for any other: unknown, not permitted, failed,
 * lost, still running, or not kept.
 */
void
bg_registry_kept_job(int pid, int64 job_id, BgKeptJob *kj)
{
	BgJobEntry	entry;
	BgJobProbe	probe;
	BgJobStatus status;

	bg_entry_permitted(pid, job_id, &entry, NULL);

	/* a job that ended since is read again, kept size included */
	bg_probe(entry.id, entry.segment, &probe);
	if (!bg_entry_state(&entry, &probe, &status) ||
		!bg_entry_settle(&entry, &probe))
		bg_raise_unknown(pid);	/* forgotten meanwhile */
	if (status == BG_STATUS_LOST)
		bg_raise_lost(&entry);
	if (status == BG_STATUS_FAILED || status == BG_STATUS_CANCELLED)
		bg_entry_raise(&entry);
	if (bg_kept_interrupted(&entry, &probe))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("result of background job %d was not kept", pid),
				 errdetail("The job finished, but its worker stopped (a crash, or it was killed) or failed before its result was made durable and recorded.")));
	kj->id = entry.id;
	kj->pid = entry.pid;
	kj->kept_bytes = entry.kept_bytes;
	kj->command = entry.command;
	kj->running = (status == BG_STATUS_RUNNING) || bg_kept_pending(&entry, &probe);
	kj->segment = entry.segment;
	/* a running job that keeps its result is followed as its file grows */
	if (status == BG_STATUS_RUNNING && entry.kept_bytes < 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("background job %d is still running", pid),
				 errdetail("It does not keep its result: only the session that launched it reads it."),
				 errhint("Wait for it with bg_wait(%d), then read it.", pid)));
	if (entry.kept_bytes < 0 && !kj->running)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("result of background job %d was not kept", pid),
				 errdetail("Only the session that launched it could read it: it was launched with keep => false, in stream mode, or before the extension was updated to 1.1.")));
}

/*
 * A job of this session whose worker exited without sending its outcome
 * (it did not fit in temp_file_limit): take the outcome from the registry,
 * if it was recorded.  False if not (the job is lost).
 */
bool
bg_registry_outcome(int64 job_id, BgJob *job)
{
	BgJobEntry	entry;
	Oid			types[1] = {INT8OID};
	Datum		values[1];
	MemoryContext oldcxt;

	if (!IsTransactionState())
		return false;
	values[0] = Int64GetDatum(job_id);
	if (!bg_entry_fetch("id = $1", 1, types, values, &entry) ||
		entry.status == BG_STATUS_RUNNING || entry.status == BG_STATUS_LOST)
		return false;
	oldcxt = MemoryContextSwitchTo(job->cxt);
	if (entry.status == BG_STATUS_FINISHED)
	{
		job->command_tag = pstrdup(entry.command ? entry.command : "");
		job->state = BG_JOB_FINISHED;
	}
	else
	{
		ErrorData  *edata = palloc0(sizeof(ErrorData));

		edata->elevel = ERROR;
		edata->sqlerrcode = entry.sqlstate && strlen(entry.sqlstate) == 5 ?
			MAKE_SQLSTATE(entry.sqlstate[0], entry.sqlstate[1],
						  entry.sqlstate[2], entry.sqlstate[3],
						  entry.sqlstate[4]) : ERRCODE_INTERNAL_ERROR;
		edata->message = pstrdup(entry.error ? entry.error : "");
		edata->context = psprintf("background job %d", entry.pid);
		edata->domain = TEXTDOMAIN;
		job->error = edata;
		job->state = BG_JOB_FAILED;
	}
	MemoryContextSwitchTo(oldcxt);
	return true;
}

/*
 * Has the job finished, its worker still making its kept file durable
 * before recording it?  Its readers then follow it as if it still ran.
 */
static bool
bg_kept_pending(BgJobEntry *entry, BgJobProbe *probe)
{
	return entry->status == BG_STATUS_FINISHED && entry->kept_bytes < 0 &&
		probe->found && probe->worker_alive && probe->keeps;
}

/*
 * A finished row without its kept size, read before the probe found the
 * worker gone: the worker may have recorded the size and exited in
 * between.  Read the row again, so that the entry says what the worker
 * left.  False if the row is gone.
 */
static bool
bg_entry_settle(BgJobEntry *entry, BgJobProbe *probe)
{
	if (entry->status != BG_STATUS_FINISHED || entry->kept_bytes >= 0 ||
		entry->segment == DSM_HANDLE_INVALID ||
		(probe->found && probe->worker_alive))
		return true;
	return bg_entry_reread(entry);
}

/* Did the job's worker stop before its finished result was made durable? */
static bool
bg_kept_interrupted(BgJobEntry *entry, BgJobProbe *probe)
{
	return entry->status == BG_STATUS_FINISHED && entry->kept_bytes < 0 &&
		entry->segment != DSM_HANDLE_INVALID &&
		!(probe->found && probe->worker_alive);
}

/*
 * bg_registry_kept_job for a job whose worker has exited: the registry has
 * its outcome by now.
 */
void
bg_registry_ended_kept_job(int pid, int64 job_id, BgKeptJob *kj)
{
	bg_registry_kept_job(pid, job_id, kj);
	if (kj->running)
		elog(ERROR, "background job %d is listed as running after its worker exited",
			 pid);
}

/*
 * The kept messages of the job with this PID (and identifier, unless 0)
 * the caller may act on, the newest: once it has ended, from its row; while
 * it runs (*running), those it has sent so far.  Raises an error if there
 * are none to show.
 */
bytea *
bg_registry_messages(int pid, int64 job_id, bool *running)
{
	BgJobEntry	entry;
	BgJobProbe	probe;
	BgJobStatus status;
	bool		was_running;
	bytea	   *messages = NULL;
	bool		retried = false;

	*running = false;
	for (;;)
	{
		bg_entry_permitted(pid, job_id, &entry, &messages);
		was_running = entry.status == BG_STATUS_RUNNING;
		bg_probe(entry.id, entry.segment, &probe);
		if (!bg_entry_state(&entry, &probe, &status))
			bg_raise_unknown(pid);	/* forgotten meanwhile */
		/* it ended since: its messages are in its row now */
		if (was_running && status != BG_STATUS_RUNNING &&
			status != BG_STATUS_LOST)
			bg_entry_permitted(pid, entry.id, &entry, &messages);
		if (status != BG_STATUS_RUNNING || !probe.found || !probe.keeps)
			break;
		/* the messages so far, from the file the worker writes */
		messages = bg_messages_live(entry.id, probe.messages_valid,
									probe.messages_sent, retried);
		if (messages != NULL)
		{
			*running = true;
			return messages;
		}
		/* the worker removed its file as it exited: look again */
		job_id = entry.id;
		retried = true;
	}
	/* on a standby, whose rows are the primary's, no segment is found */
	if (status == BG_STATUS_RUNNING && !probe.found)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("background job %d is still running", pid),
				 errhint("Wait for it with bg_wait(%d), then read them.", pid)));
	if (status == BG_STATUS_LOST)
		bg_raise_lost(&entry);
	if (messages == NULL || status == BG_STATUS_RUNNING)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("messages of background job %d were not kept", pid),
				 status == BG_STATUS_RUNNING ?
				 errdetail("Only the session that launched it receives them: it was launched with keep => false, in stream mode, or before the extension was updated to 1.1.") :
				 errdetail("Only the session that launched it received them: it was launched with keep => false, in stream mode, or before the extension was updated to 1.1.")));
	return messages;
}

/*
 * The jobs of this database whose kept result the caller may read, finished
 * or still running, by PID, the newest first for each.
 */
List *
bg_registry_kept_jobs(void)
{
	BgRegistryCall call;
	SPITupleTable *tt;
	Oid			types[3] = {OIDOID, TEXTOID, TEXTOID};
	Datum		values[3];
	List	   *jobs = NIL;
	MemoryContext cxt = CurrentMemoryContext;
	Oid			caller = GetUserId();	/* before we become the owner */
	uint64		i;

	if (!bg_registry_open(&call))
		return NIL;
	values[0] = ObjectIdGetDatum(MyDatabaseId);
	values[1] = CStringGetTextDatum(bg_status_name(BG_STATUS_FINISHED));
	values[2] = CStringGetTextDatum(bg_status_name(BG_STATUS_RUNNING));
	tt = bg_registry_query(psprintf("SELECT " BG_ENTRY_COLUMNS "%s FROM %s r "
									"WHERE database = $1 AND state IN ($2, $3) "
									"AND (%s IS NOT NULL OR segment IS NOT NULL) "
									"ORDER BY pid, id DESC",
									call.kept, call.relname, call.kept),
						   3, types, values);
	for (i = 0; i < tt->numvals; i++)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(cxt);
		BgJobEntry	entry;
		BgJobProbe	probe;
		BgKeptJob  *kj;

		bg_entry_from_tuple(tt->vals[i], tt->tupdesc, &entry);
		/*
		 * A running job, or a finished one whose file is about to be
		 * recorded, is followed as it runs; a lost one has nothing.
		 */
		memset(&probe, 0, sizeof(probe));
		if (entry.status == BG_STATUS_RUNNING || entry.kept_bytes < 0)
			bg_probe(entry.id, entry.segment, &probe);
		if (!bg_entry_settle(&entry, &probe))
			entry.kept_bytes = -1;	/* forgotten meanwhile: left out */
		if (has_privs_of_role(caller, entry.role) &&
			(entry.status == BG_STATUS_RUNNING ?
			 (probe.found && probe.worker_alive && entry.kept_bytes >= 0) :
			 (entry.kept_bytes >= 0 || bg_kept_pending(&entry, &probe))))
		{
			kj = palloc(sizeof(BgKeptJob));
			kj->id = entry.id;
			kj->pid = entry.pid;
			kj->kept_bytes = entry.kept_bytes;
			kj->command = entry.command;
			kj->running = (entry.status == BG_STATUS_RUNNING) ||
				entry.kept_bytes < 0;
			kj->segment = entry.segment;
			jobs = lappend(jobs, kj);
		}
		MemoryContextSwitchTo(oldcxt);
	}
	bg_registry_close(&call);
	return jobs;
}

/*
 * Remove this database's kept files that the registry does not name as
 * kept by a running or finished job: those of jobs lost in a crash, and all
 * of them once the extension is gone.
 */
void
bg_registry_sweep_files(void)
{
	BgRegistryCall call;

	if (!bg_registry_open(&call))
	{
		bg_keep_sweep(NULL, NULL);
		return;
	}
	bg_keep_sweep(bg_keep_file_wanted, &call);
	bg_registry_close(&call);
}

static bool
bg_keep_file_wanted(int64 job_id, void *arg)
{
	BgRegistryCall *call = (BgRegistryCall *) arg;
	Oid			types[3] = {INT8OID, TEXTOID, TEXTOID};
	Datum		values[3];

	SPITupleTable *tt;
	BgJobEntry	entry;
	BgJobProbe	probe;

	values[0] = Int64GetDatum(job_id);
	values[1] = CStringGetTextDatum(bg_status_name(BG_STATUS_RUNNING));
	values[2] = CStringGetTextDatum(bg_status_name(BG_STATUS_FINISHED));
	tt = bg_registry_query(psprintf("SELECT " BG_ENTRY_COLUMNS "%s FROM %s r "
									"WHERE id = $1 AND state IN ($2, $3)",
									call->kept, call->relname),
						   3, types, values);
	if (tt->numvals == 0)
		return false;
	bg_entry_from_tuple(tt->vals[0], tt->tupdesc, &entry);
	if (entry.kept_bytes >= 0)
		return true;
	/* a finished job's file that its worker is about to record */
	bg_probe(entry.id, entry.segment, &probe);
	if (!bg_entry_settle(&entry, &probe))
		return false;
	return entry.kept_bytes >= 0 || bg_kept_pending(&entry, &probe);
}
