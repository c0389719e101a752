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
 * While the job runs, each message it keeps is also appended to a file of
 * its own next to its kept result (<job id>.messages), until that file holds
 * bg_fdw.max_messages_size; the worker publishes in its segment how many
 * bytes of it hold whole messages, and how many it sent.  bg_messages of a
 * running job reads them there, from any session, like tail of nohup's
 * output file.  The worker removes the file when it exits, once its row
 * holds the messages; after a crash the sweep of kept files removes it.
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

#include <fcntl.h>
#include <unistd.h>

#include "funcapi.h"
#include "lib/ilist.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "storage/ipc.h"
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
	BgJobShared *shared;		/* the job's segment */
	bool		live_wanted;	/* create it with the next message */
	int			live_fd;		/* the messages file while the job runs, or
								 * -1 once it is full or failed */
	int			live_errno;		/* why it could not be created */
	uint64		live_bytes;		/* what it holds */
	char		live_path[MAXPGPATH];
} BgKeptMessages;

/* NULL unless this process is a job worker that keeps its messages */
static BgKeptMessages *bg_kept = NULL;

/*
 * The worker goes on to another job (pool.c): after bg_messages_at_exit,
 * forget this job's messages.
 */
void
bg_messages_job_reset(void)
{
	if (bg_kept == NULL)
		return;
	MemoryContextDelete(bg_kept->cxt);
	bg_kept = NULL;
}

static void bg_messages_serialize(StringInfo buf, uint64 position,
								  const char *msg, size_t len);
static void bg_messages_add_latest(BgKeptMessages *k, StringInfo rec);
static void bg_messages_live_start(BgKeptMessages *k);
static void bg_messages_live_create(BgKeptMessages *k);
static void bg_messages_live_write(BgKeptMessages *k, StringInfo rec);
static void bg_messages_live_stop(BgKeptMessages *k);
static void bg_messages_put_row(Tuplestorestate *store, TupleDesc desc,
								uint64 position, StringInfo kept);
static void bg_messages_put_gap(Tuplestorestate *store, TupleDesc desc,
								uint64 position, uint64 *expected,
								bool running);

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
bg_messages_keep_start(BgJobShared *shared)
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
	bg_kept->shared = shared;
	bg_kept->live_fd = -1;
	bg_messages_live_start(bg_kept);
}

/*
 * Get ready for the file that shows the job's messages while it runs,
 * readable by the server only like the kept result: the directory now, the
 * file with the first message, once the job is in the registry (whose sweep
 * would take a file it does not name for a leftover).  Without them the job
 * runs as well; bg_messages then shows only how many it sent until it ends.
 */
static void
bg_messages_live_start(BgKeptMessages *k)
{
	if (k->half == 0 || !bg_keep_make_dir(LOG))
		return;
	bg_keep_messages_path(k->live_path, k->shared->job_id);
	k->live_wanted = true;
}

/* Create the file; called while a message is sent, so it must not fail. */
static void
bg_messages_live_create(BgKeptMessages *k)
{
	k->live_wanted = false;
	if (!AcquireExternalFD())
		return;
	k->live_fd = BasicOpenFilePerm(k->live_path,
								   O_CREAT | O_EXCL | O_WRONLY | PG_BINARY,
								   S_IRUSR | S_IWUSR);
	if (k->live_fd < 0)
	{
		k->live_errno = errno;
		ReleaseExternalFD();
	}
}

/*
 * Append a kept message to the messages file, then publish it.  Called
 * while the message is sent, so it must not fail: a write that fails, or a
 * file that is full, only stops the file.
 */
static void
bg_messages_live_write(BgKeptMessages *k, StringInfo rec)
{
	if (k->shared == NULL)
		return;
	if (k->live_wanted)
		bg_messages_live_create(k);
	if (k->live_fd >= 0)
	{
		if (k->live_bytes + rec->len > 2 * (uint64) k->half ||
			pg_pwrite(k->live_fd, rec->data, rec->len,
					  (off_t) k->live_bytes) != rec->len)
			bg_messages_live_stop(k);
		else
		{
			k->live_bytes += rec->len;
			pg_atomic_write_u64(&k->shared->messages_valid, k->live_bytes);
		}
	}
	pg_atomic_write_u64(&k->shared->messages_sent, k->count);
}

static void
bg_messages_live_stop(BgKeptMessages *k)
{
	close(k->live_fd);
	ReleaseExternalFD();
	k->live_fd = -1;
}

/* The job's segment is going: publish nothing more in it. */
void
bg_messages_keep_detached(void)
{
	if (bg_kept != NULL)
		bg_kept->shared = NULL;
}

/*
 * before_shmem_exit callback of the worker, run after the one that records
 * a terminated job's end: the row holds the messages now, or the job is
 * lost, and its messages with it.
 */
void
bg_messages_at_exit(int code, Datum arg)
{
	BgKeptMessages *k = bg_kept;

	if (k == NULL)
		return;
	k->shared = NULL;
	k->live_wanted = false;
	if (k->live_fd >= 0)
		bg_messages_live_stop(k);
	if (k->live_errno != 0)
	{
		errno = k->live_errno;
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", k->live_path)));
	}
	if (k->live_path[0] != '\0' && unlink(k->live_path) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", k->live_path)));
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
	{
		if (k->shared != NULL)
			pg_atomic_write_u64(&k->shared->messages_sent, k->count);
		return;
	}
	oldcxt = MemoryContextSwitchTo(k->cxt);
	initStringInfo(&rec);
	bg_messages_serialize(&rec, k->count, msg, len);
	bg_messages_live_write(k, &rec);
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

/*
 * The messages a running job has sent so far, in the registry's form: the
 * first "valid" bytes of its messages file, which hold whole messages, and
 * the count "sent".  NULL if the file is gone (the worker exited
 * meanwhile: its row holds the messages now), unless missing_ok, which
 * shows none of them.
 */
bytea *
bg_messages_live(int64 job_id, uint64 valid, uint64 sent, bool missing_ok)
{
	char		path[MAXPGPATH];
	bytea	   *result;
	uint64		count = pg_hton64(sent);
	int			fd = -1;
	ssize_t		nread = 0;

	/* the worker never writes more than a setting of at most 256 MB */
	if (valid > MaxAllocSize - VARHDRSZ - sizeof(count))
		elog(ERROR, "messages file of background job " INT64_FORMAT " is %llu bytes",
			 job_id, (unsigned long long) valid);
	if (valid > 0)
	{
		bg_keep_messages_path(path, job_id);
		fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
		if (fd < 0 && errno != ENOENT)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not open file \"%s\": %m", path)));
		if (fd < 0 && !missing_ok)
			return NULL;
		if (fd < 0)
			valid = 0;
	}
	result = palloc(VARHDRSZ + sizeof(count) + valid);
	SET_VARSIZE(result, VARHDRSZ + sizeof(count) + valid);
	memcpy(VARDATA(result), &count, sizeof(count));
	if (fd >= 0)
	{
		pgstat_report_wait_start(WAIT_EVENT_BUFFILE_READ);
		nread = pg_pread(fd, VARDATA(result) + sizeof(count), valid, 0);
		pgstat_report_wait_end();
		if (nread != (ssize_t) valid)
			ereport(ERROR,
					(errcode_for_file_access(),
					 nread < 0 ? errmsg("could not read file \"%s\": %m", path) :
					 errmsg("could not read file \"%s\": read %zd of %llu bytes",
							path, nread, (unsigned long long) valid)));
		CloseTransientFile(fd);
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
	bool		running;
	bytea	   *kept = bg_registry_messages(PG_GETARG_INT32(0),
											bg_session_job_id(PG_GETARG_INT32(0)),
											&running);
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
							&expected, false);
		bg_messages_put_row(rsinfo->setResult, rsinfo->setDesc, position,
							&buf);
	}
	bg_messages_put_gap(rsinfo->setResult, rsinfo->setDesc, count + 1,
						&expected, running);
	return (Datum) 0;
}

/*
 * Before the message at "position" (or after the last one), a row saying
 * how many were not kept, if any; "expected" is the position that follows
 * the last message returned.  After the last one of a running job, those
 * are the ones past what its messages file holds: it may keep some of them
 * still, the latest ones.
 */
static void
bg_messages_put_gap(Tuplestorestate *store, TupleDesc desc, uint64 position,
					uint64 *expected, bool running)
{
	Datum		values[BG_MESSAGES_NCOLUMNS];
	bool		nulls[BG_MESSAGES_NCOLUMNS];
	uint64		missing = position - *expected;

	if (position > *expected)
	{
		memset(nulls, true, sizeof(nulls));
		nulls[3] = false;
		values[3] = CStringGetTextDatum(running ?
										psprintf(ngettext("%llu later message is not shown while the job runs",
														  "%llu later messages are not shown while the job runs",
														  missing),
												 (unsigned long long) missing) :
										psprintf(ngettext("%llu message was not kept",
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
