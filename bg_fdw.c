/*-------------------------------------------------------------------------
 *
 * bg_fdw.c
 *		  Foreign-data wrapper over the results of background jobs, and the
 *		  SQL functions that act on jobs.
 *
 * A result table is a foreign table on server bg_server whose options name
 * a job: its worker's pid, and the job identifier that is never reused.  A
 * scan reads the job's spool and, once it has caught up, the job's tuple
 * queue (see job.c).
 *
 * Copyright (c) 2026, The bg_fdw Authors
 * Portions Copyright (c) 1996-2025, PostgreSQL Global Development Group
 *
 * IDENTIFICATION
 *		  bg_fdw/bg_fdw.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <signal.h>

#include "access/htup_details.h"
#include "access/reloptions.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_foreign_server.h"
#include "catalog/pg_foreign_table.h"
#include "commands/defrem.h"
#include "commands/explain.h"
#include "executor/spi.h"
#include "foreign/fdwapi.h"
#include "foreign/foreign.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "optimizer/pathnode.h"
#include "optimizer/planmain.h"
#include "optimizer/restrictinfo.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

PG_MODULE_MAGIC;

/* Default queue_size of bg_launch, in bytes (bg_fdw.queue_size) */
int			bg_default_queue_size = BG_DEFAULT_QUEUE_SIZE;
int			bg_max_queue_size = BG_DEFAULT_MAX_QUEUE_SIZE;

/* Rows assumed for a result whose size is not known yet */
#define BG_DEFAULT_ROWS		1000.0

/*
 * Valid options for a bg_fdw foreign table.
 */
struct BgFdwOption
{
	const char *optname;
	Oid			optcontext;		/* Oid of catalog in which option may appear */
};

static const struct BgFdwOption valid_options[] = {
	{"pid", ForeignTableRelationId},
	{"job", ForeignTableRelationId},
	/* Sentinel */
	{NULL, InvalidOid}
};

/*
 * The job a foreign table names.
 */
typedef struct BgTableOptions
{
	int			pid;			/* worker's pid */
	int64		job_id;			/* job identifier, or 0 if not given */
} BgTableOptions;

/*
 * FDW-specific information for ForeignScanState.fdw_state.
 */
typedef struct BgScanState
{
	BgJob	   *job;			/* the job whose result we read, if this
								 * session holds it */
	int			reader;			/* our reader of the job's spool */
	BgKeepReader *kept;			/* else the reader of its kept result */
} BgScanState;

void		_PG_init(void);

PG_FUNCTION_INFO_V1(bg_fdw_handler);
PG_FUNCTION_INFO_V1(bg_fdw_validator);
PG_FUNCTION_INFO_V1(bg_result);
PG_FUNCTION_INFO_V1(bg_wait);
PG_FUNCTION_INFO_V1(bg_await);
PG_FUNCTION_INFO_V1(bg_cancel);
PG_FUNCTION_INFO_V1(bg_detach);

/*
 * FDW callback routines
 */
static void bgGetForeignRelSize(PlannerInfo *root, RelOptInfo *baserel,
								Oid foreigntableid);
static void bgGetForeignPaths(PlannerInfo *root, RelOptInfo *baserel,
							  Oid foreigntableid);
static ForeignScan *bgGetForeignPlan(PlannerInfo *root, RelOptInfo *baserel,
									 Oid foreigntableid, ForeignPath *best_path,
									 List *tlist, List *scan_clauses,
									 Plan *outer_plan);
static void bgExplainForeignScan(ForeignScanState *node, ExplainState *es);
static void bgBeginForeignScan(ForeignScanState *node, int eflags);
static TupleTableSlot *bgIterateForeignScan(ForeignScanState *node);
static void bgReScanForeignScan(ForeignScanState *node);
static void bgEndForeignScan(ForeignScanState *node);
static List *bgImportForeignSchema(ImportForeignSchemaStmt *stmt,
								   Oid serverOid);

/*
 * Helper functions
 */
static bool is_valid_option(const char *option, Oid context);
static int	bg_parse_pid(const char *value);
static int64 bg_parse_job_id(const char *value);
static void bg_table_options(Oid relid, BgTableOptions *opts);
static void bg_check_table_matches(Relation rel, TupleDesc jdesc, int pid,
								   bool reshaped);
static BgKeepReader *bg_open_kept(int pid, int64 job_id);
static Datum bg_result_kept(FunctionCallInfo fcinfo, int pid);
static void bg_check_definition_list(TupleDesc given, TupleDesc desc, int pid);
static List *bg_import_kept(ImportForeignSchemaStmt *stmt,
							ForeignServer *server, List *session_jobs);
static bool bg_import_wanted(ImportForeignSchemaStmt *stmt, const char *name);
static List *bg_import_one(List *commands, const char *name, BgKeptJob *kj,
						   ForeignServer *server);
static void bg_drop_job_tables(BgJob *job);
pg_noreturn static void bg_detach_in_use(int pid);
static bool bg_table_in_use(Oid relid);
static void bg_detach_queued(int name);
static List *bg_import_queued(ImportForeignSchemaStmt *stmt,
							  ForeignServer *server, List *session_jobs);
static char *bg_describe_types(TupleDesc desc);
static char *bg_table_definition(const char *name, int pid, int64 job_id,
								 TupleDesc desc, ForeignServer *server);
static char *bg_collation_name(Oid collid);

void
_PG_init(void)
{
	DefineCustomIntVariable("bg_fdw.job_retention",
							"How long ended background jobs stay listed in bg_jobs.",
							"-1 keeps them until bg_forget.",
							&bg_job_retention,
							86400,
							-1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_S,
							NULL, NULL, NULL);
	DefineCustomBoolVariable("bg_fdw.reuse_workers",
							 "Hands background jobs to started workers, and keeps their workers for later jobs.",
							 "Off, every job of the session starts a worker of its own, which its PID names.",
							 &bg_reuse_workers,
							 true,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_idle_workers",
							"Started workers kept, idle, for the next background job.",
							"0 starts a worker for every job. They never keep \"max_parallel_workers\" worker slots from being free.",
							&bg_max_idle_workers,
							4,
							0,
							1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.worker_idle_timeout",
							"How long a started worker waits, idle, for another background job.",
							NULL,
							&bg_worker_idle_timeout,
							60000,
							1,
							INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_jobs_per_role",
							"Running background jobs a role may have in a database.",
							"-1 means no limit.",
							&bg_max_jobs_per_role,
							-1,
							-1,
							INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_jobs",
							"Background jobs that may run at once in the cluster.",
							"-1 means as many as worker slots allow. Where bg_fdw is preloaded, the jobs beyond wait in the queue.",
							&bg_max_jobs,
							-1,
							-1,
							INT_MAX,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_queued_jobs",
							"Background jobs that may wait in the queue for a worker slot.",
							"0 queues none: a launch that finds no free slot fails.",
							&bg_max_queued_jobs,
							256,
							0,
							1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_queued_jobs_per_role",
							"Background jobs of one role that may wait in the queue.",
							NULL,
							&bg_max_queued_jobs_per_role,
							64,
							0,
							1024,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_queued_size",
							"Shared memory the queued background jobs' SQL and settings may take.",
							NULL,
							&bg_max_queued_size,
							64 * 1024,
							64,
							MAX_KILOBYTES,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_queued_size_per_role",
							"Shared memory the queued background jobs of one role may take.",
							NULL,
							&bg_max_queued_size_per_role,
							16 * 1024,
							64,
							MAX_KILOBYTES,
							PGC_SIGHUP,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.queue_size",
							"Size of a background job's tuple queue when bg_launch is given none.",
							NULL,
							&bg_default_queue_size,
							BG_DEFAULT_QUEUE_SIZE,
							BG_MIN_QUEUE_SIZE,
							BG_MAX_QUEUE_SIZE,
							PGC_USERSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_result_size",
							"Largest result a background job may keep for later reading.",
							"A job whose kept result grows past it fails. -1 means no limit but \"temp_file_limit\".",
							&bg_max_result_size,
							1024 * 1024,
							-1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_kept_size_per_role",
							"Largest total size of the results one role's background jobs keep in a database.",
							"A launch that would keep a result once the role's kept results take it is refused. -1 means no limit.",
							&bg_max_kept_size_per_role,
							BG_DEFAULT_MAX_KEPT_PER_ROLE_KB,
							-1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_ended_segments",
							"Ended background jobs whose segments one session may hold.",
							"A session holds the segment of an ended job launched with keep => false or in stream mode until it has read the result. A launch past it is refused. -1 means no limit.",
							&bg_max_ended_segments,
							BG_DEFAULT_MAX_ENDED_SEGMENTS,
							-1,
							INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_held_segments_per_role",
							"Segments the sessions of one role may hold for background jobs.",
							"A session holds a job's segment while the job runs, and past its end until the result has been read for a job launched with keep => false or in stream mode. A launch past it is refused. -1 means no limit.",
							&bg_max_held_segments_per_role,
							BG_DEFAULT_MAX_HELD_SEGMENTS_PER_ROLE,
							-1,
							INT_MAX,
							PGC_SUSET,
							0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_kept_size",
							"Largest total size of the results the background jobs of the cluster keep.",
							"A launch that would keep a result once the kept results of all databases take it is refused. -1 means no limit.",
							&bg_max_kept_size,
							BG_DEFAULT_MAX_KEPT_KB,
							-1,
							INT_MAX,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_queue_size",
							"Largest tuple queue a background job may have.",
							"A launch asking for more, or with a larger \"bg_fdw.queue_size\", is refused.",
							&bg_max_queue_size,
							BG_DEFAULT_MAX_QUEUE_SIZE,
							BG_MIN_QUEUE_SIZE,
							BG_MAX_QUEUE_SIZE,
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);
	DefineCustomIntVariable("bg_fdw.max_messages_size",
							"Largest size of the messages a background job keeps for later reading.",
							"Past it, the first and the latest messages are kept, each in half of it; it also bounds the notices waiting in a job for a launching session that does not read.",
							&bg_max_messages_size,
							1024,
							0,
							BG_MAX_MESSAGES_SIZE_KB,
							PGC_SUSET,
							GUC_UNIT_KB,
							NULL, NULL, NULL);
	MarkGUCPrefixReserved("bg_fdw");
	bg_keep_init();
	bg_supervisor_init();
}

/*
 * Foreign-data wrapper handler function: return a struct with pointers
 * to my callback routines.
 */
Datum
bg_fdw_handler(PG_FUNCTION_ARGS)
{
	FdwRoutine *fdwroutine = makeNode(FdwRoutine);

	fdwroutine->GetForeignRelSize = bgGetForeignRelSize;
	fdwroutine->GetForeignPaths = bgGetForeignPaths;
	fdwroutine->GetForeignPlan = bgGetForeignPlan;
	fdwroutine->ExplainForeignScan = bgExplainForeignScan;
	fdwroutine->BeginForeignScan = bgBeginForeignScan;
	fdwroutine->IterateForeignScan = bgIterateForeignScan;
	fdwroutine->ReScanForeignScan = bgReScanForeignScan;
	fdwroutine->EndForeignScan = bgEndForeignScan;
	fdwroutine->ImportForeignSchema = bgImportForeignSchema;

	PG_RETURN_POINTER(fdwroutine);
}

/*
 * Validate the generic options given to a FOREIGN DATA WRAPPER, SERVER,
 * USER MAPPING or FOREIGN TABLE that uses bg_fdw.
 */
Datum
bg_fdw_validator(PG_FUNCTION_ARGS)
{
	List	   *options_list = untransformRelOptions(PG_GETARG_DATUM(0));
	Oid			catalog = PG_GETARG_OID(1);
	bool		have_pid = false;
	ListCell   *cell;

	foreach(cell, options_list)
	{
		DefElem    *def = (DefElem *) lfirst(cell);

		if (!is_valid_option(def->defname, catalog))
		{
			const struct BgFdwOption *opt;
			StringInfoData buf;

			initStringInfo(&buf);
			for (opt = valid_options; opt->optname; opt++)
			{
				if (catalog == opt->optcontext)
					appendStringInfo(&buf, "%s%s", (buf.len > 0) ? ", " : "",
									 opt->optname);
			}
			ereport(ERROR,
					(errcode(ERRCODE_FDW_INVALID_OPTION_NAME),
					 errmsg("invalid option \"%s\"", def->defname),
					 buf.len > 0
					 ? errhint("Valid options in this context are: %s", buf.data)
					 : errhint("There are no valid options in this context.")));
		}

		if (strcmp(def->defname, "pid") == 0)
		{
			(void) bg_parse_pid(defGetString(def));
			have_pid = true;
		}
		else if (strcmp(def->defname, "job") == 0)
			(void) bg_parse_job_id(defGetString(def));
	}

	if (catalog == ForeignTableRelationId && !have_pid)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_OPTION_NAME_NOT_FOUND),
				 errmsg("option \"pid\" is required for a bg_fdw foreign table"),
				 errhint("Give the PID bg_launch returned, as in OPTIONS (pid '12345').")));

	PG_RETURN_VOID();
}

/*
 * Check if the provided option is one of the valid options.
 * context is the Oid of the catalog holding the object the option is for.
 */
static bool
is_valid_option(const char *option, Oid context)
{
	const struct BgFdwOption *opt;

	for (opt = valid_options; opt->optname; opt++)
	{
		if (context == opt->optcontext && strcmp(opt->optname, option) == 0)
			return true;
	}
	return false;
}

static int
bg_parse_pid(const char *value)
{
	char	   *end;
	long		pid;

	errno = 0;
	pid = strtol(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || pid <= 0 || pid > PG_INT32_MAX)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
				 errmsg("invalid value for option \"pid\": \"%s\"", value),
				 errdetail("The value must be the PID of a background job, a positive integer.")));
	return (int) pid;
}

static int64
bg_parse_job_id(const char *value)
{
	char	   *end;
	long long	id;

	errno = 0;
	id = strtoll(value, &end, 10);
	if (errno != 0 || end == value || *end != '\0' || id <= 0)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_INVALID_ATTRIBUTE_VALUE),
				 errmsg("invalid value for option \"job\": \"%s\"", value),
				 errdetail("The value must be a job identifier, a positive integer.")));
	return (int64) id;
}

/* Read the job a foreign table names from its options. */
static void
bg_table_options(Oid relid, BgTableOptions *opts)
{
	ForeignTable *table = GetForeignTable(relid);
	ListCell   *lc;

	opts->pid = 0;
	opts->job_id = 0;
	foreach(lc, table->options)
	{
		DefElem    *def = (DefElem *) lfirst(lc);

		if (strcmp(def->defname, "pid") == 0)
			opts->pid = bg_parse_pid(defGetString(def));
		else if (strcmp(def->defname, "job") == 0)
			opts->job_id = bg_parse_job_id(defGetString(def));
	}
	if (opts->pid == 0)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_OPTION_NAME_NOT_FOUND),
				 errmsg("foreign table \"%s\" has no \"pid\" option",
						get_rel_name(relid))));
}

/*
 * OID of the server CREATE EXTENSION made, which our tables use.
 */
Oid
bg_server_oid(bool missing_ok)
{
	ForeignServer *server = GetForeignServerByName(BG_SERVER_NAME, missing_ok);

	return server ? server->serverid : InvalidOid;
}

/*
 * bgGetForeignRelSize
 *		A finished job's row count is exact.  A running job's count so far is
 *		only a floor: one that has just started has produced next to nothing,
 *		and planning for that would put it on the inner side of nested loops.
 */
static void
bgGetForeignRelSize(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	BgTableOptions opts;
	BgJob	   *job;
	double		rows = BG_DEFAULT_ROWS;

	bg_table_options(foreigntableid, &opts);
	job = bg_job_lookup(opts.pid, opts.job_id, true);
	if (job && job->state != BG_JOB_DETACHED && bg_job_visible(job))
	{
		rows = (double) bg_job_rows(job);
		if (job->state == BG_JOB_RUNNING)
			rows = Max(rows, BG_DEFAULT_ROWS);
	}
	baserel->rows = clamp_row_est(rows);
}

/*
 * bgGetForeignPaths
 *		One path: read the result in order; nothing can be pushed down.
 */
static void
bgGetForeignPaths(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid)
{
	Cost		startup_cost = 10;
	Cost		total_cost = startup_cost + cpu_tuple_cost * baserel->rows;

	add_path(baserel, (Path *) bg_create_foreignscan_path(root, baserel,
														  baserel->rows,
														  startup_cost,
														  total_cost));
}

static ForeignScan *
bgGetForeignPlan(PlannerInfo *root, RelOptInfo *baserel, Oid foreigntableid,
				 ForeignPath *best_path, List *tlist, List *scan_clauses,
				 Plan *outer_plan)
{
	scan_clauses = extract_actual_clauses(scan_clauses, false);
	return make_foreignscan(tlist, scan_clauses, baserel->relid,
							NIL, NIL, NIL, NIL, outer_plan);
}

/*
 * bgExplainForeignScan
 *		Show which job the table reads and how it is doing.  Only looks at
 *		this session's record of the job: plain EXPLAIN reads no queue.
 */
static void
bgExplainForeignScan(ForeignScanState *node, ExplainState *es)
{
	BgTableOptions opts;
	BgJob	   *job;

	bg_table_options(RelationGetRelid(node->ss.ss_currentRelation), &opts);
	job = bg_job_lookup(opts.pid, opts.job_id, true);

	ExplainPropertyInteger("Background Job", NULL, opts.pid, es);
	ExplainPropertyText("Job State",
						job ? bg_job_state_name(job) : "not attached", es);
	if (es->verbose && job && bg_job_visible(job))
	{
		char		id[32];

		snprintf(id, sizeof(id), INT64_FORMAT, job->job_id);
		ExplainPropertyText("Job Identifier", id, es);
		if (job->state != BG_JOB_DETACHED)
		{
			ExplainPropertyText("Job Mode", job->stream ? "stream" : "spool", es);
			ExplainPropertyInteger("Rows Spooled", NULL, job->nspooled, es);
			ExplainPropertyText("Job Query", job->sql, es);
		}
	}
}

/*
 * Refuse to read a job's rows through a table whose columns lay tuples out
 * differently: that would be garbage, or worse.  reshaped: the job's last
 * statement returns other columns than bg_launch described, so the table
 * made at launch no longer matches.
 */
static void
bg_check_table_matches(Relation rel, TupleDesc jdesc, int pid, bool reshaped)
{
	TupleDesc	tdesc = RelationGetDescr(rel);
	char	   *detail = NULL;
	int			i;

	if (bg_desc_equal(tdesc, jdesc))
		return;
	if (tdesc->natts != jdesc->natts)
		detail = psprintf(_("The table has %d columns, the job's result has %d."),
						  tdesc->natts, jdesc->natts);
	for (i = 0; detail == NULL && i < tdesc->natts; i++)
	{
		Form_pg_attribute ta = TupleDescAttr(tdesc, i);
		Form_pg_attribute ja = TupleDescAttr(jdesc, i);

		if (ta->attisdropped)
			detail = pstrdup(_("The table has a dropped column."));
		else if (ta->atttypid != ja->atttypid || ta->atttypmod != ja->atttypmod)
			detail = psprintf(_("Column %d \"%s\" has type %s, the job's result has type %s."),
							  i + 1, NameStr(ta->attname),
							  format_type_with_typemod(ta->atttypid, ta->atttypmod),
							  format_type_with_typemod(ja->atttypid, ja->atttypmod));
	}
	if (reshaped)
		detail = psprintf("%s %s", detail,
						  _("The job's last statement returns other columns than bg_launch described: an earlier statement of the job changed them."));
	ereport(ERROR,
			(errcode(ERRCODE_DATATYPE_MISMATCH),
			 errmsg("foreign table \"%s\" does not match the result of background job %d",
					RelationGetRelationName(rel), pid),
			 errdetail_internal("%s", detail),
			 errhint("IMPORT FOREIGN SCHEMA jobs imports a table that matches; bg_result(%d) reads the result through a column definition list.",
					 pid)));
}

static void
bgBeginForeignScan(ForeignScanState *node, int eflags)
{
	Relation	rel = node->ss.ss_currentRelation;
	BgTableOptions opts;
	BgScanState *state;

	/* Plain EXPLAIN: touch no queue. */
	if (eflags & EXEC_FLAG_EXPLAIN_ONLY)
		return;

	bg_table_options(RelationGetRelid(rel), &opts);
	state = palloc0(sizeof(BgScanState));
	node->fdw_state = state;
	if (!bg_job_held(opts.pid, opts.job_id))
	{
		/* a job of another session, or one this session let go of */
		BgJob	   *own = bg_job_lookup(opts.pid, opts.job_id, true);

		state->kept = bg_open_kept(opts.pid, opts.job_id ? opts.job_id :
								   bg_session_job_id(opts.pid));
		bg_check_table_matches(rel, bg_keep_desc(state->kept), opts.pid,
							   own != NULL && own->reshaped);
		return;
	}
	state->job = bg_job_lookup_attached(opts.pid, opts.job_id);
	bg_job_wait_descriptor(state->job);
	bg_check_table_matches(rel, state->job->desc, opts.pid,
						   state->job->reshaped);
	state->reader = bg_reader_open(state->job, node->ss.ss_ScanTupleSlot);
}

static TupleTableSlot *
bgIterateForeignScan(ForeignScanState *node)
{
	BgScanState *state = (BgScanState *) node->fdw_state;

	if (state->kept)
		(void) bg_keep_next(state->kept, node->ss.ss_ScanTupleSlot);
	else
		(void) bg_reader_next(state->job, state->reader);
	return node->ss.ss_ScanTupleSlot;
}

static void
bgReScanForeignScan(ForeignScanState *node)
{
	BgScanState *state = (BgScanState *) node->fdw_state;

	if (state->kept)
		bg_keep_rewind(state->kept);
	else
		bg_reader_rescan(state->job, state->reader);
}

static void
bgEndForeignScan(ForeignScanState *node)
{
	BgScanState *state = (BgScanState *) node->fdw_state;

	if (state == NULL)
		return;
	if (state->kept)
		bg_keep_close(state->kept);
	else
		bg_reader_close(state->job, state->reader);
}

/* Open the kept result of a job, as the registry finds it for the caller. */
static BgKeepReader *
bg_open_kept(int pid, int64 job_id)
{
	BgKeptJob	kj;
	BgKeepReader *r;

	bg_registry_kept_job(pid, job_id, &kj);
	if (kj.running)
	{
		r = bg_keep_open_live(&kj, true);
		if (r != NULL)
			return r;
		/* it ended meanwhile: the registry has its outcome */
		bg_registry_ended_kept_job(kj.pid, kj.id, &kj);
	}
	return bg_keep_open(kj.pid, kj.id, kj.kept_bytes, kj.command);
}

/*
 * bgImportForeignSchema
 *		The server has one schema, "jobs": a table for each job of this
 *		session whose result it can still read, and for each finished job
 *		of the database whose kept result the caller may read.  This is how
 *		a result table comes back after the transaction that created it
 *		rolled back, or appears in another schema or another session.
 *		LIMIT TO and EXCEPT are applied by the core code to the names
 *		returned.
 */
static List *
bgImportForeignSchema(ImportForeignSchemaStmt *stmt, Oid serverOid)
{
	ForeignServer *server = GetForeignServer(serverOid);
	List	   *commands = NIL;
	List	   *session_jobs = NIL;
	ListCell   *lc;

	if (strcmp(stmt->remote_schema, "jobs") != 0)
		ereport(ERROR,
				(errcode(ERRCODE_FDW_SCHEMA_NOT_FOUND),
				 errmsg("schema \"%s\" does not exist on server \"%s\"",
						stmt->remote_schema, server->servername),
				 errhint("The only schema is \"jobs\": the results of this session's background jobs.")));

	foreach(lc, bg_session_jobs())
	{
		BgJob	   *job = lfirst(lc);
		char	   *name = psprintf("bg_result_%d", job->pid);

		/* the columns it reported, else those bg_launch described */
		if (job->state != BG_JOB_DETACHED && bg_job_visible(job))
			bg_job_take_deferred(job);
		if (job->state != BG_JOB_DETACHED && !job->described && job->seg != NULL)
			bg_job_poll_messages(job);
		if (job->state == BG_JOB_DETACHED || job->state == BG_JOB_FAILED ||
			job->detach_subid != InvalidSubTransactionId ||
			job->stream_taken || !bg_job_visible(job))
			continue;
		session_jobs = lappend(session_jobs, job);
		if (job->desc == NULL && job->described)
		{
			if (bg_import_wanted(stmt, name))
				ereport(WARNING,
						(errmsg("skipping background job %d: its column %d has type %u, which this session cannot find",
								job->pid, job->desc_missing_column,
								job->desc_missing_type)));
			continue;
		}
		if (job->desc == NULL)
		{
			if (bg_import_wanted(stmt, name))
				ereport(WARNING,
						(errmsg("skipping background job %d: its columns are not known yet",
								job->pid),
						 errdetail("bg_launch made no table for it, and it has not reported them yet: it does when it starts its last statement."),
						 errhint("Import it once it has, or read it with bg_result(%d) and a column definition list.",
								 job->pid)));
			continue;
		}
		commands = lappend(commands,
						   bg_table_definition(name, job->pid, job->job_id,
											   job->desc, server));
	}
	commands = list_concat(commands, bg_import_kept(stmt, server, session_jobs));
	return list_concat(commands, bg_import_queued(stmt, server, session_jobs));
}

/*
 * Tables for the queued jobs (queue.c) the caller may read, with the
 * columns bg_launch described; a job it could not describe is left out,
 * with a warning, until it runs.
 */
static List *
bg_import_queued(ImportForeignSchemaStmt *stmt, ForeignServer *server,
				 List *session_jobs)
{
	List	   *commands = NIL;
	ListCell   *lc;

	foreach(lc, bg_queue_list(true))
	{
		BgQueuedInfo *info = lfirst(lc);
		char	   *name = psprintf("bg_result_%d", info->name);
		StringInfoData msg;
		Oid			typid;
		ListCell   *lc2;

		if (info->cancelled || info->sql == NULL ||
			!bg_import_wanted(stmt, name))
			continue;
		foreach(lc2, session_jobs)
		{
			if (((BgJob *) lfirst(lc2))->pid == info->name)
				break;
		}
		if (lc2 != NULL)
			continue;
		if (info->desc_msg == NULL)
		{
			ereport(WARNING,
					(errmsg("skipping background job %d: its columns are not known yet",
							info->name),
					 errdetail("It waits in the queue, and bg_launch could not describe its result."),
					 errhint("Import it once it has started its last statement.")));
			continue;
		}
		msg.data = info->desc_msg;
		msg.len = info->desc_len;
		msg.maxlen = info->desc_len + 1;
		msg.cursor = 0;
		if (bg_desc_missing_type(&msg, &typid) > 0)
			continue;
		commands = lappend(commands,
						   bg_table_definition(name, info->name, info->job_id,
											   bg_desc_deserialize(&msg),
											   server));
	}
	return commands;
}

/*
 * Tables for the kept results the caller may read, other than those of the
 * jobs this session holds (session_jobs).  A PID names the newest such job,
 * unless the session holds a job with that PID; an older job with the same
 * PID (PIDs are reused) is bg_result_<pid>_<job id>.
 */
static List *
bg_import_kept(ImportForeignSchemaStmt *stmt, ForeignServer *server,
			   List *session_jobs)
{
	List	   *commands = NIL;
	int			prev_pid = 0;
	ListCell   *lc;

	/* by PID, the newest first for each */
	foreach(lc, bg_registry_kept_jobs())
	{
		BgKeptJob  *kj = lfirst(lc);
		bool		newest = (kj->pid != prev_pid);
		ListCell   *lc2;
		char	   *name;

		prev_pid = kj->pid;
		foreach(lc2, session_jobs)
		{
			if (((BgJob *) lfirst(lc2))->pid == kj->pid)
				newest = false;
			if (((BgJob *) lfirst(lc2))->job_id == kj->id)
				break;
		}
		if (lc2 != NULL)
			continue;
		name = newest ? psprintf("bg_result_%d", kj->pid) :
			psprintf("bg_result_%d_" INT64_FORMAT, kj->pid, kj->id);
		if (!bg_import_wanted(stmt, name))
			continue;
		commands = bg_import_one(commands, name, kj, server);
	}
	return commands;
}

/* What bg_import_one works out in its subtransaction */
typedef struct BgImportOne
{
	const char *name;
	BgKeptJob  *kj;
	ForeignServer *server;
	char	   *def;			/* CREATE FOREIGN TABLE, in the caller's
								 * context */
} BgImportOne;

static void
bg_import_one_work(void *arg)
{
	BgImportOne *one = (BgImportOne *) arg;
	BgKeptJob	kj = *one->kj;
	BgKeepReader *r = NULL;

	/* a running job has its columns once it has started its last statement */
	if (kj.running)
		r = bg_keep_open_live(&kj, false);
	/* (one that ended meanwhile is read as the registry has it now) */
	if (r == NULL && kj.running)
		bg_registry_ended_kept_job(kj.pid, kj.id, &kj);
	if (r == NULL)
		r = bg_keep_open(kj.pid, kj.id, kj.kept_bytes, kj.command);

	one->def = bg_table_definition(one->name, one->kj->pid, one->kj->id,
								   bg_keep_desc(r), one->server);
	bg_keep_close(r);
}

/*
 * Add the table of one kept result.  One that cannot be read (its file is
 * damaged or gone, a type it uses was dropped) is left out with a warning,
 * so that it does not keep every other job from being imported.
 */
static List *
bg_import_one(List *commands, const char *name, BgKeptJob *kj,
			  ForeignServer *server)
{
	BgImportOne one = {name, kj, server, NULL};
	ErrorData  *edata = bg_rolled_back_call(bg_import_one_work, &one);

	if (edata == NULL)
		return lappend(commands, one.def);
	ereport(WARNING,
			(errcode(edata->sqlerrcode),
			 errmsg("skipping the kept result of background job %d: %s",
					kj->pid, edata->message),
			 edata->detail ? errdetail_internal("%s", edata->detail) : 0));
	FreeErrorData(edata);
	return commands;
}

/*
 * Run work(arg) in a subtransaction that is then rolled back, whatever
 * happens, so that it leaves no lock, file or other resource behind.
 * Returns its error, or NULL.  What work keeps must be allocated in the
 * context current on entry, which it is called in.
 */
ErrorData *
bg_rolled_back_call(void (*work) (void *arg), void *arg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	ErrorData  *edata = NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		work(arg);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return edata;
}

/*
 * Would LIMIT TO or EXCEPT keep this table?  Core code applies them too; a
 * kept result they leave out is not even opened.
 */
static bool
bg_import_wanted(ImportForeignSchemaStmt *stmt, const char *name)
{
	ListCell   *lc;

	if (stmt->list_type == FDW_IMPORT_SCHEMA_ALL)
		return true;
	foreach(lc, stmt->table_list)
	{
		if (strcmp(((RangeVar *) lfirst(lc))->relname, name) == 0)
			return stmt->list_type == FDW_IMPORT_SCHEMA_LIMIT_TO;
	}
	return stmt->list_type == FDW_IMPORT_SCHEMA_EXCEPT;
}

/* A collation's schema-qualified, quoted name */
static char *
bg_collation_name(Oid collid)
{
	HeapTuple	tuple = SearchSysCache1(COLLOID, ObjectIdGetDatum(collid));
	Form_pg_collation coll;
	char	   *name;

	if (!HeapTupleIsValid(tuple))
		elog(ERROR, "cache lookup failed for collation %u", collid);
	coll = (Form_pg_collation) GETSTRUCT(tuple);
	name = quote_qualified_identifier(get_namespace_name(coll->collnamespace),
									  NameStr(coll->collname));
	ReleaseSysCache(tuple);
	return name;
}

/*
 * CREATE FOREIGN TABLE for a job's result, safe under any search_path.
 */
static char *
bg_table_definition(const char *name, int pid, int64 job_id, TupleDesc desc,
					ForeignServer *server)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	appendStringInfo(&buf, "CREATE FOREIGN TABLE %s (", quote_identifier(name));
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		appendStringInfo(&buf, "%s%s %s", i > 0 ? ", " : "",
						 quote_identifier(NameStr(att->attname)),
						 format_type_extended(att->atttypid, att->atttypmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN |
											  FORMAT_TYPE_FORCE_QUALIFY));
		if (OidIsValid(att->attcollation) &&
			att->attcollation != get_typcollation(att->atttypid))
			appendStringInfo(&buf, " COLLATE %s",
							 bg_collation_name(att->attcollation));
	}
	appendStringInfo(&buf, ") SERVER %s OPTIONS (pid '%d', job '" INT64_FORMAT "')",
					 quote_identifier(server->servername), pid, job_id);
	return buf.data;
}

/* ----------------------------------------------------------------
 *		SQL functions on jobs
 * ----------------------------------------------------------------
 */

/*
 * bg_result(pid integer) RETURNS SETOF record
 *
 * The job's rows through a column definition list, for code that does not
 * want a table.  Waits for the job to end if this session holds it; else
 * reads what the job kept.
 */
Datum
bg_result(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BgJob	   *job;
	TupleTableSlot *slot;
	int			reader;

	if (!bg_job_held(PG_GETARG_INT32(0), 0))
		return bg_result_kept(fcinfo, PG_GETARG_INT32(0));
	job = bg_job_lookup_attached(PG_GETARG_INT32(0), 0);
	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	bg_job_wait_descriptor(job);
	bg_check_definition_list(rsinfo->setDesc, job->desc, job->pid);

	slot = MakeSingleTupleTableSlot(rsinfo->setDesc, &TTSOpsHeapTuple);
	reader = bg_reader_open(job, slot);
	while (bg_reader_next(job, reader))
		tuplestore_puttupleslot(rsinfo->setResult, slot);
	bg_reader_close(job, reader);
	ExecDropSingleTupleTableSlot(slot);

	return (Datum) 0;
}

/* bg_result of a job this session does not hold: its kept result */
static Datum
bg_result_kept(FunctionCallInfo fcinfo, int pid)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	BgKeepReader *r = bg_open_kept(pid, bg_session_job_id(pid));
	TupleTableSlot *slot;

	InitMaterializedSRF(fcinfo, MAT_SRF_USE_EXPECTED_DESC);
	bg_check_definition_list(rsinfo->setDesc, bg_keep_desc(r), pid);
	slot = MakeSingleTupleTableSlot(rsinfo->setDesc, &TTSOpsHeapTuple);
	while (bg_keep_next(r, slot))
		tuplestore_puttupleslot(rsinfo->setResult, slot);
	bg_keep_close(r);
	ExecDropSingleTupleTableSlot(slot);
	return (Datum) 0;
}

/* Refuse a column definition list that does not lay rows out as the result */
static void
bg_check_definition_list(TupleDesc given, TupleDesc desc, int pid)
{
	if (!bg_desc_equal(given, desc))
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column definition list does not match the result of background job %d",
						pid),
				 errdetail("The result has %d columns of types %s.",
						   desc->natts, bg_describe_types(desc))));
}

/* List a descriptor's types, for messages. */
static char *
bg_describe_types(TupleDesc desc)
{
	StringInfoData buf;
	int			i;

	initStringInfo(&buf);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
						 format_type_with_typemod(att->atttypid, att->atttypmod));
	}
	return buf.data;
}

long
bg_interval_ms(Interval *interval)
{
	double		ms;

	ms = interval->time / 1000.0 +
		((double) interval->month * DAYS_PER_MONTH + interval->day) *
		SECS_PER_DAY * 1000.0;
	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("timeout must not be negative")));
	/*
	 * A century is as good as no timeout, and a deadline beyond it could
	 * overflow a timestamp.
	 */
	return ms >= Min(100.0 * DAYS_PER_YEAR * SECS_PER_DAY * 1000.0,
					 (double) LONG_MAX) ? -1 : (long) ms;
}

/* Finish bg_wait and bg_await: the tag, or the job's error. */
static text *
bg_outcome(BgJob *job)
{
	if (job->state == BG_JOB_FAILED)
		bg_job_raise_error(job);
	return cstring_to_text(job->command_tag);
}

/*
 * bg_wait(pid integer, timeout interval DEFAULT NULL) RETURNS text
 *
 * Wait for the job to end and return its completion tag; NULL if the
 * timeout passes first.  A job that failed raises its error.
 */
Datum
bg_wait(PG_FUNCTION_ARGS)
{
	BgJob	   *job;
	long		timeout_ms = -1;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
		timeout_ms = bg_interval_ms(PG_GETARG_INTERVAL_P(1));
	bg_check_not_self(PG_GETARG_INT32(0));
	/* a job of ours whose segment went: we took its outcome before it did */
	job = bg_job_lookup(PG_GETARG_INT32(0), 0, true);
	if (job != NULL && job->released &&
		job->detach_subid == InvalidSubTransactionId)
	{
		bg_job_check_privileges(job);
		bg_job_take_deferred(job);
		PG_RETURN_TEXT_P(bg_outcome(job));
	}
	if (!bg_job_held(PG_GETARG_INT32(0), 0))
	{
		text	   *tag = bg_registry_wait(PG_GETARG_INT32(0), timeout_ms);

		if (tag == NULL)
			PG_RETURN_NULL();
		PG_RETURN_TEXT_P(tag);
	}
	job = bg_job_lookup_attached(PG_GETARG_INT32(0), 0);

	if (!bg_job_wait(job, timeout_ms))
		PG_RETURN_NULL();
	if (job->state == BG_JOB_FINISHED)
		bg_registry_await_kept(job->pid, job->job_id);
	PG_RETURN_TEXT_P(bg_outcome(job));
}

/*
 * bg_await(pid integer): a procedure
 *
 * Commit the caller's transaction, then wait for the job holding no snapshot
 * and no lock.  This is how to wait for a job that itself waits for older
 * snapshots, such as CREATE INDEX CONCURRENTLY.
 */
Datum
bg_await(PG_FUNCTION_ARGS)
{
	BgJob	   *job;
	int			pid;
	int64		job_id;

	if (!fcinfo->context || !IsA(fcinfo->context, CallContext) ||
		((CallContext *) fcinfo->context)->atomic)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_TRANSACTION_TERMINATION),
				 errmsg("bg_await must be called with CALL outside a transaction block"),
				 errhint("Use bg_wait() inside a transaction.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("PID of the background job must not be null")));
	bg_check_not_self(PG_GETARG_INT32(0));
	/* a job this session never held (queued, another's): as bg_wait */
	if (bg_job_lookup(PG_GETARG_INT32(0), 0, true) == NULL)
	{
		if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
			elog(ERROR, "SPI_connect_ext failed");
		SPI_commit();
		(void) bg_registry_wait(PG_GETARG_INT32(0), -1);
		SPI_finish();
		PG_RETURN_VOID();
	}
	job = bg_job_lookup_attached(PG_GETARG_INT32(0), 0);
	pid = job->pid;
	job_id = job->job_id;

	if (SPI_connect_ext(SPI_OPT_NONATOMIC) != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect_ext failed");
	SPI_commit();
	/* the commit may have carried out a bg_detach: look the job up again */
	job = bg_job_lookup_attached(pid, job_id);
	(void) bg_job_wait(job, -1);
	if (job->state == BG_JOB_FINISHED)
		bg_registry_await_kept(pid, job_id);
	SPI_finish();

	(void) bg_outcome(job);
	PG_RETURN_VOID();
}

/*
 * bg_cancel(pid integer) RETURNS boolean
 *
 * Cancel the job's running statement, as pg_cancel_backend would.  False if
 * the job had already ended.
 */
Datum
bg_cancel(PG_FUNCTION_ARGS)
{
	BgJob	   *job;

	if (!bg_job_held(PG_GETARG_INT32(0), 0))
		PG_RETURN_BOOL(bg_registry_cancel(PG_GETARG_INT32(0)));
	job = bg_job_lookup_attached(PG_GETARG_INT32(0), 0);
	/* one whose segment the session gave up runs on: the registry knows */
	if (job->given_up)
		PG_RETURN_BOOL(bg_registry_cancel(PG_GETARG_INT32(0)));
	bg_job_poll_messages(job);
	if (job->state != BG_JOB_RUNNING || job->shared == NULL)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(bg_cancel_shared(job->shared));
}

/*
 * Does this session hold the result of this job (or of the newest job it
 * launched with this PID, if job_id is 0)?  Otherwise bg_wait and bg_cancel
 * act through the registry, from any session, and readers read what the
 * job kept.
 */
bool
bg_job_held(int pid, int64 job_id)
{
	BgJob	   *job = bg_job_lookup(pid, job_id, true);

	if (job != NULL && bg_job_visible(job))
		bg_job_take_deferred(job);
	return job != NULL && job->state != BG_JOB_DETACHED && !job->released &&
		job->detach_subid == InvalidSubTransactionId;
}

/*
 * bg_detach(pid integer) RETURNS void
 *
 * Stop listening to the job: drop this session's tables of it and free its
 * spool, both when the transaction commits.  The job runs on to its end.
 */
Datum
bg_detach(PG_FUNCTION_ARGS)
{
	BgJob	   *job = bg_job_lookup(PG_GETARG_INT32(0), 0, true);
	bool		detached;

	if (job == NULL && bg_queued_launch(PG_GETARG_INT32(0), &detached) != 0)
	{
		if (detached)
			ereport(NOTICE,
					(errmsg("background job %d is already detached, skipping",
							PG_GETARG_INT32(0))));
		else
			bg_detach_queued(PG_GETARG_INT32(0));
		PG_RETURN_VOID();
	}
	if (job == NULL)
		job = bg_job_lookup(PG_GETARG_INT32(0), 0, false);
	bg_job_check_privileges(job);
	if (job->state == BG_JOB_DETACHED ||
		job->detach_subid != InvalidSubTransactionId)
	{
		ereport(NOTICE,
				(errmsg("background job %d is already detached, skipping",
						job->pid)));
		PG_RETURN_VOID();
	}
	if (bg_job_in_use(job))
		bg_detach_in_use(job->pid);

	bg_drop_job_tables(job);
	bg_registry_detached(job->job_id);
	bg_job_record_detach(job);
	PG_RETURN_VOID();
}

/*
 * bg_detach of a job this session queued (queue.c), which it never held:
 * its tables go, and it is marked detached for bg_jobs.
 */
static void
bg_detach_queued(int name)
{
	BgJob		job;
	bool		detached;

	memset(&job, 0, sizeof(job));
	job.pid = name;
	job.job_id = bg_queued_launch(name, &detached);
	bg_drop_job_tables(&job);
	bg_registry_detached(job.job_id);
	bg_queued_launch_detach(name);
}

static void
bg_detach_in_use(int pid)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("cannot detach background job %d because its result is being read",
					pid),
			 errhint("Close the cursors and end the queries that read it first.")));
}

/*
 * Is a scan of the table open in this session?  One that reads the job's
 * kept file, as it does once the session let the job's segment go, is not
 * among the job's readers.
 */
static bool
bg_table_in_use(Oid relid)
{
	Relation	rel = RelationIdGetRelation(relid);
	bool		in_use;

	if (!RelationIsValid(rel))
		return false;
	in_use = rel->rd_refcnt > 1;
	RelationClose(rel);
	return in_use;
}

/*
 * Drop the tables in this session's temporary schema that read the job,
 * for its detach.
 */
static void
bg_drop_job_tables(BgJob *job)
{
	Oid			serverid = bg_server_oid(true);
	ObjectAddresses *objects = new_object_addresses();
	Relation	ftrel;
	SysScanDesc scan;
	HeapTuple	tuple;

	ftrel = table_open(ForeignTableRelationId, AccessShareLock);
	scan = systable_beginscan(ftrel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tuple = systable_getnext(scan)))
	{
		Form_pg_foreign_table ft = (Form_pg_foreign_table) GETSTRUCT(tuple);
		BgTableOptions opts;
		ObjectAddress object;

		if (ft->ftserver != serverid ||
			!isTempNamespace(get_rel_namespace(ft->ftrelid)))
			continue;
		bg_table_options(ft->ftrelid, &opts);
		if (opts.pid != job->pid ||
			(opts.job_id != 0 && opts.job_id != job->job_id))
			continue;
		if (bg_table_in_use(ft->ftrelid))
			bg_detach_in_use(job->pid);
		ObjectAddressSet(object, RelationRelationId, ft->ftrelid);
		add_exact_object_address(&object, objects);
	}
	systable_endscan(scan);
	table_close(ftrel, AccessShareLock);

	performMultipleDeletions(objects, DROP_RESTRICT, 0);
	free_object_addresses(objects);
}
