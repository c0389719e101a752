/*-------------------------------------------------------------------------
 *
 * messages.c
 *		  A job's kept messages: the NOTICE, INFO and WARNING lines it sent,
 *		  which bg_messages(pid) shows to any session with the privileges of
 *		  the job's role, like the 2>&1 of nohup's output file.
 *
 * The worker keeps every message it sends as a client would get it (so at
 * the job's client_min_messages), in memory bounded by
 * bg_fdw.max_messages_size: the first ones fill half of it, then the latest
 * ones the other half, older ones of those being dropped as new ones come.
 * A job never fails for sending too much; bg_messages shows how many were
 * dropped between the first and the last ones.  The kept messages go into
 * the job's registry row with its outcome, in the same transaction, so that
 * a failed or cancelled job keeps its messages too, and bg_forget, expiry
 * and DROP EXTENSION take them along.
 *
 * The registry's bytea holds the number of messages the job sent, then
 * each kept message: its position among them (from 1), the length of what
 * follows, then its fields as the protocol has them (a code byte and a
 * string, ending with a zero byte), in the database's encoding (see
 * bg_messages_to_db_encoding).
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/messages.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "funcapi.h"
#include "lib/ilist.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "bg_fdw.h"
#include "compat.h"

/* Largest kept messages of one job, in kB */
int			bg_max_messages_size = 1024;

/* The fields of a message that are kept, and bg_messages' columns */
static const char bg_message_fields[] = {
	PG_DIAG_SEVERITY_NONLOCALIZED,
	PG_DIAG_SQLSTATE,
	PG_DIAG_MESSAGE_PRIMARY,
	PG_DIAG_MESSAGE_DETAIL,
	PG_DIAG_MESSAGE_HINT,
	PG_DIAG_CONTEXT
};

#define BG_MESSAGE_NFIELDS	lengthof(bg_message_fields)
/* position, then the fields */
#define BG_MESSAGES_NCOLUMNS	(1 + BG_MESSAGE_NFIELDS)

/* A kept message among the latest ones */
typedef struct BgLatestMessage
{
	dlist_node	node;
	Size		len;			/* bytes of data */
	char		data[FLEXIBLE_ARRAY_MEMBER];	/* as in the registry */
} BgLatestMessage;

/* The worker's kept messages */
typedef struct BgKeptMessages
{
	MemoryContext cxt;
	Size		half;			/* bytes for the first ones, and the latest */
	uint64		count;			/* messages the job sent */
	StringInfoData first;		/* the first ones, serialized */
	bool		first_full;		/* a message did not fit among them */
	dlist_head	latest;			/* then the latest ones, oldest first */
	Size		latest_bytes;
} BgKeptMessages;

/* NULL unless this process is a job worker that keeps its messages */
static BgKeptMessages *bg_kept = NULL;

static void bg_messages_serialize(StringInfo buf, uint64 position,
								  const char *msg, size_t len);
static void bg_messages_add_latest(BgKeptMessages *k, StringInfo rec);
static void bg_messages_put_row(Tuplestorestate *store, TupleDesc desc,
								uint64 position, StringInfo kept);
static void bg_messages_put_gap(Tuplestorestate *store, TupleDesc desc,
								uint64 position, uint64 *expected);

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/*
 * A notice or error as the protocol has it, its strings converted from the
 * job's client encoding (the session's, or one the job set) back to the
 * database's, into "out": a job talks to its session in the database
 * encoding.
 */
void
bg_messages_to_db_encoding(const char *msg, size_t len, StringInfo out)
{
	const char *p = msg;
	const char *end = msg + len;
	int			encoding = pg_get_client_encoding();

	while (p < end && *p != '\0')
	{
		char		code = *p++;
		size_t		vlen = strnlen(p, end - p);
		char	   *value;

		if (p + vlen >= end)
			break;
		value = pg_any_to_server(p, (int) vlen, encoding);
		appendStringInfoChar(out, code);
		appendBinaryStringInfo(out, value, strlen(value) + 1);
		if (value != p)
			pfree(value);
		p += vlen + 1;
	}
	appendStringInfoChar(out, '\0');
}

/* Keep this job's messages from now on, within bg_fdw.max_messages_size. */
void
bg_messages_keep_start(void)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext,
											  "bg_fdw kept messages",
											  ALLOCSET_DEFAULT_SIZES);

	bg_kept = MemoryContextAllocZero(cxt, sizeof(BgKeptMessages));
	bg_kept->cxt = cxt;
	bg_kept->half = (Size) bg_max_messages_size * 1024 / 2;
	dlist_init(&bg_kept->latest);
	bg_kept->first.data = MemoryContextAlloc(cxt, 1024);
	bg_kept->first.maxlen = 1024;
	resetStringInfo(&bg_kept->first);
}

/*
 * Keep a message the job sends, as the protocol has it ('N' stripped).
 * Called while the message is being sent: a message too large to keep is
 * only counted, before anything is copied, so that it cannot fail the
 * send.
 */
void
bg_messages_keep(const char *msg, size_t len)
{
	BgKeptMessages *k = bg_kept;
	MemoryContext oldcxt;
	StringInfoData rec;

	if (k == NULL)
		return;
	k->count++;
	/* a message that could not be kept at all is only counted */
	if (len + 64 > k->half)
		return;
	oldcxt = MemoryContextSwitchTo(k->cxt);
	initStringInfo(&rec);
	bg_messages_serialize(&rec, k->count, msg, len);
	if (!k->first_full && k->first.len + rec.len <= k->half)
		appendBinaryStringInfo(&k->first, rec.data, rec.len);
	else
	{
		k->first_full = true;
		bg_messages_add_latest(k, &rec);
	}
	pfree(rec.data);
	MemoryContextSwitchTo(oldcxt);
}

/* Record the kept fields of a protocol message, in the database encoding. */
static void
bg_messages_serialize(StringInfo buf, uint64 position, const char *msg,
					  size_t len)
{
	const char *p = msg;
	const char *end = msg + len;
	int			len_at;

	pq_sendint64(buf, position);
	len_at = buf->len;
	pq_sendint32(buf, 0);
	while (p < end && *p != '\0')
	{
		char		code = *p++;
		size_t		vlen = strnlen(p, end - p);

		if (p + vlen >= end)
			break;				/* not terminated: not a protocol message */
		if (memchr(bg_message_fields, code, BG_MESSAGE_NFIELDS) != NULL)
		{
			/* not pq_sendstring, which converts to the client encoding */
			pq_sendbyte(buf, code);
			appendBinaryStringInfo(buf, p, vlen + 1);
		}
		p += vlen + 1;
	}
	pq_sendbyte(buf, '\0');
	/* the length of the fields, where its place was kept */
	*(uint32 *) (buf->data + len_at) = pg_hton32(buf->len - len_at - 4);
}

/* Keep a message among the latest ones, dropping the oldest beyond half. */
static void
bg_messages_add_latest(BgKeptMessages *k, StringInfo rec)
{
	BgLatestMessage *m = palloc(offsetof(BgLatestMessage, data) + rec->len);

	m->len = rec->len;
	memcpy(m->data, rec->data, rec->len);
	dlist_push_tail(&k->latest, &m->node);
	k->latest_bytes += m->len;
	while (k->latest_bytes > k->half)
	{
		BgLatestMessage *old = dlist_container(BgLatestMessage, node,
											   dlist_pop_head_node(&k->latest));

		k->latest_bytes -= old->len;
		pfree(old);
	}
}

/*
 * The kept messages, for the registry row that records the job's outcome,
 * or NULL if this job keeps none.
 */
bytea *
bg_messages_kept(void)
{
	BgKeptMessages *k = bg_kept;
	bytea	   *result;
	char	   *p;
	uint64		count;
	dlist_iter	iter;

	if (k == NULL)
		return NULL;
	result = palloc(VARHDRSZ + sizeof(uint64) + k->first.len + k->latest_bytes);
	SET_VARSIZE(result, VARHDRSZ + sizeof(uint64) + k->first.len + k->latest_bytes);
	p = VARDATA(result);
	count = pg_hton64(k->count);
	memcpy(p, &count, sizeof(count));
	p += sizeof(count);
	memcpy(p, k->first.data, k->first.len);
	p += k->first.len;
	dlist_foreach(iter, &k->latest)
	{
		BgLatestMessage *m = dlist_container(BgLatestMessage, node, iter.cur);

		memcpy(p, m->data, m->len);
		p += m->len;
	}
	return result;
}

/* ----------------------------------------------------------------
 *		bg_messages(pid)
 * ----------------------------------------------------------------
 */

PG_FUNCTION_INFO_V1(bg_messages);

/*
 * bg_messages(pid integer) RETURNS TABLE (position bigint, severity text,
 *		sqlstate text, message text, detail text, hint text, context text)
 *
 * The kept messages of this session's job with this PID, else of the
 * newest one the caller may act on, in order.  Where messages were dropped, a row with no position and no
 * severity says how many.
 */
Datum
bg_messages(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bytea	   *kept = bg_registry_messages(PG_GETARG_INT32(0),
											bg_session_job_id(PG_GETARG_INT32(0)));
	StringInfoData buf;
	uint64		expected = 1;
	uint64		count;

	InitMaterializedSRF(fcinfo, 0);
	if (rsinfo->setDesc->natts != BG_MESSAGES_NCOLUMNS)
		elog(ERROR, "bg_messages() is declared with %d columns, not %d",
			 rsinfo->setDesc->natts, (int) BG_MESSAGES_NCOLUMNS);
	bg_init_read_only_stringinfo(&buf, VARDATA_ANY(kept),
								 VARSIZE_ANY_EXHDR(kept));
	count = (uint64) pq_getmsgint64(&buf);
	while (buf.cursor < buf.len)
	{
		uint64		position = (uint64) pq_getmsgint64(&buf);

		bg_messages_put_gap(rsinfo->setResult, rsinfo->setDesc, position,
							&expected);
		bg_messages_put_row(rsinfo->setResult, rsinfo->setDesc, position,
							&buf);
	}
	bg_messages_put_gap(rsinfo->setResult, rsinfo->setDesc, count + 1,
						&expected);
	return (Datum) 0;
}

/*
 * Before the message at "position" (or after the last one), a row saying
 * how many were not kept, if any; "expected" is the position that follows
 * the last message returned.
 */
static void
bg_messages_put_gap(Tuplestorestate *store, TupleDesc desc, uint64 position,
					uint64 *expected)
{
	Datum		values[BG_MESSAGES_NCOLUMNS];
	bool		nulls[BG_MESSAGES_NCOLUMNS];
	uint64		missing = position - *expected;

	if (position > *expected)
	{
		memset(nulls, true, sizeof(nulls));
		nulls[3] = false;
		values[3] = CStringGetTextDatum(psprintf(ngettext("%llu message was not kept",
														  "%llu messages were not kept",
														  missing),
												 (unsigned long long) missing));
		tuplestore_putvalues(store, desc, values, nulls);
	}
	*expected = position + 1;
}

/* Add the kept message at "position", whose fields come next in "kept". */
static void
bg_messages_put_row(Tuplestorestate *store, TupleDesc desc, uint64 position,
					StringInfo kept)
{
	Datum		values[BG_MESSAGES_NCOLUMNS];
	bool		nulls[BG_MESSAGES_NCOLUMNS];
	StringInfoData fields;
	int			len = pq_getmsgint(kept, 4);
	char		code;

	memset(nulls, true, sizeof(nulls));
	values[0] = Int64GetDatum((int64) position);
	nulls[0] = false;
	bg_init_read_only_stringinfo(&fields, (char *) pq_getmsgbytes(kept, len),
								 len);
	while ((code = pq_getmsgbyte(&fields)) != '\0')
	{
		const char *value = pq_getmsgrawstring(&fields);
		const char *at = memchr(bg_message_fields, code, BG_MESSAGE_NFIELDS);

		if (at != NULL)
		{
			values[1 + (at - bg_message_fields)] = CStringGetTextDatum(value);
			nulls[1 + (at - bg_message_fields)] = false;
		}
	}
	tuplestore_putvalues(store, desc, values, nulls);
}
