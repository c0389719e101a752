/*-------------------------------------------------------------------------
 *
 * shape.c
 *		  The shape of a job's result, as the launching session and the
 *		  worker both see it: the columns of the result table, their
 *		  serialized form in the job segment and on the message queue, and
 *		  the checks on a job's statements that both sides make.
 *
 * The launcher describes the last statement before the worker runs it, to
 * make the result table; the worker works out the columns again when it
 * runs that statement, and reports them: the session reads the rows by
 * those.  Both follow the same rules, so they live here, apart from the
 * code of either process.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/shape.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/heap.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "bg_fdw.h"

static void bg_unique_name(TupleDesc desc, int attno, NameData *name);
static bool bg_type_private(Oid typid);
static bool bg_row_private(Oid relid);

/*
 * Pick a column name no earlier column and no system column uses.  An
 * unnamed column ("?column?") becomes column<N>, N its position; a taken name
 * gets the first free suffix _2, _3, ...
 */
static void
bg_unique_name(TupleDesc desc, int attno, NameData *name)
{
	char		base[NAMEDATALEN];
	char		candidate[NAMEDATALEN];
	int			suffix = 1;

	if (NameStr(*name)[0] == '\0' || strcmp(NameStr(*name), "?column?") == 0)
		snprintf(base, sizeof(base), "column%d", attno + 1);
	else
		strlcpy(base, NameStr(*name), sizeof(base));
	strlcpy(candidate, base, sizeof(candidate));

	for (;;)
	{
		bool		taken = (SystemAttributeByName(candidate) != NULL);
		int			i;

		for (i = 0; i < attno && !taken; i++)
			taken = (strcmp(NameStr(TupleDescAttr(desc, i)->attname),
							candidate) == 0);
		if (!taken)
			break;

		{
			char		sfx[16];
			int			len;

			snprintf(sfx, sizeof(sfx), "_%d", ++suffix);
			len = pg_mbcliplen(base, strlen(base),
							   NAMEDATALEN - 1 - strlen(sfx));
			snprintf(candidate, sizeof(candidate), "%.*s%s", len, base, sfx);
		}
	}
	namestrcpy(name, candidate);
}

/*
 * In a job, was this catalog row written by the job's transaction?  Other
 * sessions do not see it until the job commits.  (In a launching session
 * such a row is the session's own: the job sees it once the session
 * commits, or fails.)
 */
static bool
bg_written_by_job(HeapTuple tup)
{
	return bg_worker_launched_by() != NULL &&
		TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
}

/*
 * Could no other session read values of this type?  A type the job created
 * or changed is not there for them until the job commits, and a temporary
 * one goes with the job's worker; nor can they read a type built on one.
 */
static bool
bg_type_private(Oid typid)
{
	HeapTuple	tup;
	Form_pg_type typ;
	bool		private;

	check_stack_depth();
	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(typid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for type %u", typid);
	typ = (Form_pg_type) GETSTRUCT(tup);
	private = bg_written_by_job(tup) || isAnyTempNamespace(typ->typnamespace);
	if (!private && IsTrueArrayType(typ))
		private = bg_type_private(typ->typelem);
	else if (!private && typ->typtype == TYPTYPE_DOMAIN)
		private = bg_type_private(typ->typbasetype);
	else if (!private && typ->typtype == TYPTYPE_RANGE)
		private = bg_type_private(get_range_subtype(typid));
	else if (!private && typ->typtype == TYPTYPE_MULTIRANGE)
		private = bg_type_private(get_multirange_range(typid));
	else if (!private && typ->typtype == TYPTYPE_COMPOSITE &&
			 OidIsValid(typ->typrelid))
		private = bg_row_private(typ->typrelid);
	ReleaseSysCache(tup);
	return private;
}

/*
 * The same for the row type of a relation: a temporary one, or one whose
 * columns the job added, dropped or changed (their pg_attribute rows, not
 * the relation's, which TRUNCATE or GRANT rewrite too), or of such types.
 */
static bool
bg_row_private(Oid relid)
{
	TupleDesc	desc;
	int			i;
	bool		private = get_rel_persistence(relid) == RELPERSISTENCE_TEMP;

	if (private)
		return true;
	desc = lookup_rowtype_tupdesc(get_rel_type_id(relid), -1);
	for (i = 0; i < desc->natts && !private; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid),
										  Int16GetDatum(att->attnum));

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for attribute %d of relation %u",
				 att->attnum, relid);
		private = bg_written_by_job(tup) ||
			(!att->attisdropped && bg_type_private(att->atttypid));
		ReleaseSysCache(tup);
	}
	ReleaseTupleDesc(desc);
	return private;
}

/*
 * The columns of a job's result table for a statement that produces "src"
 * (NULL: no rows).  Types that cannot be table columns become text, and so
 * do those no other session can read (bg_type_private); names are made
 * unique.
 */
TupleDesc
bg_result_desc(TupleDesc src)
{
	TupleDesc	desc;
	int			i;

	if (src == NULL)
	{
		desc = CreateTemplateTupleDesc(1);
		TupleDescInitEntry(desc, 1, "command", TEXTOID, -1, 0);
		TupleDescInitEntryCollation(desc, 1, DEFAULT_COLLATION_OID);
		return desc;
	}

	desc = CreateTemplateTupleDesc(src->natts);
	for (i = 0; i < src->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(src, i);
		Form_pg_attribute dst = TupleDescAttr(desc, i);

		if (get_typtype(att->atttypid) == TYPTYPE_PSEUDO ||
			bg_type_private(att->atttypid))
		{
			TupleDescInitEntry(desc, i + 1, NameStr(att->attname), TEXTOID, -1, 0);
			TupleDescInitEntryCollation(desc, i + 1, DEFAULT_COLLATION_OID);
		}
		else
		{
			TupleDescInitEntry(desc, i + 1, NameStr(att->attname),
							   att->atttypid, att->atttypmod, 0);
			TupleDescInitEntryCollation(desc, i + 1, att->attcollation);
		}
		bg_unique_name(desc, i, &dst->attname);
	}
	return desc;
}

/*
 * Append a descriptor to a message: what bg_desc_deserialize reads back in
 * the other process.  Types cross as OIDs, which both processes share.
 */
void
bg_desc_serialize(StringInfo buf, TupleDesc desc)
{
	int			i;

	pq_sendint16(buf, desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		/* in the database encoding, whatever the client's */
		appendBinaryStringInfo(buf, NameStr(att->attname),
							   strlen(NameStr(att->attname)) + 1);
		pq_sendint32(buf, att->atttypid);
		pq_sendint32(buf, att->atttypmod);
		pq_sendint32(buf, att->attcollation);
	}
}

/*
 * The first column (from 1) of a descriptor bg_desc_serialize wrote whose
 * type this process cannot find, with the type in *typid; 0 if there is
 * none.  The message is not consumed.
 */
int
bg_desc_missing_type(StringInfo msg, Oid *typid)
{
	StringInfoData copy = *msg;
	int			natts = pq_getmsgint(&copy, 2);
	int			i;

	for (i = 1; i <= natts; i++)
	{
		(void) pq_getmsgrawstring(&copy);
		*typid = pq_getmsgint(&copy, 4);
		(void) pq_getmsgint(&copy, 4);
		(void) pq_getmsgint(&copy, 4);
		if (!SearchSysCacheExists1(TYPEOID, ObjectIdGetDatum(*typid)))
			return i;
	}
	return 0;
}

/* Read a descriptor bg_desc_serialize wrote, in the current context. */
TupleDesc
bg_desc_deserialize(StringInfo msg)
{
	int			natts = pq_getmsgint(msg, 2);
	TupleDesc	desc = CreateTemplateTupleDesc(natts);
	int			i;

	for (i = 1; i <= natts; i++)
	{
		const char *name = pq_getmsgrawstring(msg);
		Oid			typid = pq_getmsgint(msg, 4);
		int32		typmod = pq_getmsgint(msg, 4);
		Oid			collation = pq_getmsgint(msg, 4);

		TupleDescInitEntry(desc, i, name, typid, typmod, 0);
		TupleDescInitEntryCollation(desc, i, collation);
	}
	return desc;
}

/*
 * Do two descriptors lay out tuples alike?  Names and collations do not
 * matter; dropped columns would.
 */
bool
bg_desc_equal(TupleDesc a, TupleDesc b)
{
	int			i;

	if (a->natts != b->natts)
		return false;
	for (i = 0; i < a->natts; i++)
	{
		Form_pg_attribute aa = TupleDescAttr(a, i);
		Form_pg_attribute ba = TupleDescAttr(b, i);

		if (aa->attisdropped || ba->attisdropped ||
			aa->atttypid != ba->atttypid || aa->atttypmod != ba->atttypmod)
			return false;
	}
	return true;
}

/* ----------------------------------------------------------------
 *		Statement checks
 * ----------------------------------------------------------------
 */

/*
 * COPY to or from the client has no client to talk to in a worker.  Refuse
 * it before anything runs: bg_launch checks the statements it parses, and
 * the worker checks them again, since it parses the text anew.
 */
void
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
