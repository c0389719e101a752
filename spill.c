/*-------------------------------------------------------------------------
 *
 * spill.c
 *		  A job never waits on its reader: what its queues cannot take when
 *		  it is produced is kept aside, and the reader collects it later.
 *
 * Rows: the worker sends each row to the tuple queue.  While its reader
 * keeps taking rows, a full queue is waited on, as parallel query does: the
 * rows then cross shared memory only.  Once the reader has taken nothing for
 * BG_SPILL_PATIENCE_MS (it is not reading, or reads slowly), the row and
 * every later one go to a file in the job's shared file set; when the reader
 * takes rows again, the worker moves the oldest of them from the file into
 * the queue before it produces more.  So the job finishes, commits and
 * releases its locks however slow its reader is, and its worker exits.
 *
 * A job that keeps its result has written every row to its kept file
 * (keep.c) before it offers it to the queue, one after the other: there the
 * rows the queue did not take are already, and no second file is written.
 * The worker notes where in the kept file the next row to push starts, and
 * reads it back from there (or from its write buffer) to push it; at the
 * end it tells the reader where in the kept file the rows the queue did not
 * carry start.
 *
 * Protocol messages (notices, the descriptor, the outcome) are redirected
 * through the same kind of overflow, kept in the worker's memory while the
 * job runs (a message is produced when the job says so, not per row).
 *
 * A message the queue took only in part stays where it was kept: when the
 * worker detaches, the reader's queue drops the partial message.  So every
 * kept message carries its index, and the reader, having read the queue to
 * its end, takes from the file the messages whose index it has not seen.
 *
 * The file set lives in the job's segment; the launcher created it, so its
 * files go away once both the worker and the launching session (a detach,
 * or the session's end) have let go of the segment.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/spill.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>

#include "access/xact.h"
#include "libpq/libpq.h"
#include "libpq/pqformat.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/buffile.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/guc.h"
#include "utils/resowner.h"

#include "bg_fdw.h"
#include "compat.h"

#define BG_ROWS_FILE		"rows"

/*
 * How long a worker with a full queue waits for its reader before it keeps
 * rows in a file.  A reader that keeps up takes a quarter of the queue (the
 * point where it wakes the worker) in well under a millisecond.
 */
#define BG_SPILL_PATIENCE_MS	10
#define BG_MESSAGES_FILE	"messages"
/* A kept record standing for notices dropped (not a protocol message type) */
#define BG_DROPPED_RECORD	'n'

/* Header of a kept message, in a file or in memory */
typedef struct BgKeptHeader
{
	uint64		index;			/* position among the queue's messages */
	uint32		len;			/* bytes that follow */
} BgKeptHeader;

/*
 * The worker's side of one queue.  Messages [0, pushed) are wholly in the
 * queue; [pushed, next) are kept, the first of them perhaps partly in the
 * queue ("in_flight").
 */
typedef struct BgSpill
{
	shm_mq_handle *mqh;			/* the queue; NULL once the reader is gone */
	uint64		next;			/* index of the next message */
	uint64		pushed;			/* messages wholly in the queue */
	bool		in_flight;		/* message "pushed" is partly in the queue */
	TimestampTz stalled_at;		/* since when the queue takes nothing, or 0 */
	StringInfoData flight;		/* its bytes */
	SharedFileSet *fileset;		/* the job's file set: where kept ones go */
	/* a job that keeps its result has its rows in its kept file */
	BgKeepWriter *keep;
	off_t		keep_read;		/* there, the next row to push */
	off_t		keep_pushed;	/* there, the end of the rows wholly pushed */
	/* other jobs' rows are kept in a file as they come */
	BufFile    *file;
	int			read_fileno;	/* the next kept row to push */
	off_t		read_offset;
	int			write_fileno;	/* the end of the file */
	off_t		write_offset;
	bool		at_write;		/* the file is positioned at the end */
	/* messages are kept in memory: headers and bytes */
	StringInfoData backlog;
	int			backlog_read;	/* offset of the next kept message to push */
	uint64		dropped;		/* notices not kept since the last one kept */
} BgSpill;

static BgSpill bg_rows;
static BgSpill bg_messages;
bool		bg_spill_messages_pending = false;
static BgJobShared *bg_messages_shared;
static ResourceOwner bg_spill_owner;
static bool bg_messages_busy = false;

static bool bg_spill_try(BgSpill *s, const char *data, Size len, bool flush);
static bool bg_spill_tryv(BgSpill *s, shm_mq_iovec *iov, int iovcnt, bool flush);
static void bg_spill_flightv(BgSpill *s, shm_mq_iovec *iov, int iovcnt);
static void bg_spill_flight(BgSpill *s, const char *data, Size len);
static bool bg_spill_push(BgSpill *s, bool (*next_kept) (BgSpill *),
						  bool flush);
static bool bg_spill_wait_reader(BgSpill *s);
static void bg_spill_seek(BgSpill *s, bool to_end);
static void bg_spill_keep_row(BgSpill *s, uint64 index, shm_mq_iovec *iov,
							  int iovcnt);
static void bg_spill_hand_kept_rows(BgSpill *s, BgJobShared *shared);
static bool bg_spill_next_row(BgSpill *s);
static void bg_spill_keep_message(BgSpill *s, const char *data, Size len);
static void bg_spill_append_message(BgSpill *s, const char *data, Size len);
static void bg_spill_keep_dropped(BgSpill *s);
static void bg_spill_expand(const char *rec, Size len, StringInfo buf);
static bool bg_spill_is_notice(const char *rec);
static void bg_spill_dropped_note(StringInfo buf, uint64 dropped,
								  const char *setting);
static bool bg_spill_next_message(BgSpill *s);
static bool bg_spill_write_messages(void);
static int64 bg_spill_unpushed_bytes(BgSpill *s, bool with_notices,
									  uint64 *notices);
static void bg_spill_mark(BgJobShared *shared, bool rows);
static void bg_messages_detach(dsm_segment *seg, Datum arg);
static void bg_messages_comm_reset(void);
static int	bg_messages_flush(void);
static int	bg_messages_flush_if_writable(void);
static bool bg_messages_is_send_pending(void);
static int	bg_messages_put(char msgtype, const char *s, size_t len);
static void bg_messages_put_noblock(char msgtype, const char *s, size_t len);

static const PQcommMethods bg_messages_methods = {
	bg_messages_comm_reset,
	bg_messages_flush,
	bg_messages_flush_if_writable,
	bg_messages_is_send_pending,
	bg_messages_put,
	bg_messages_put_noblock
};

/* ----------------------------------------------------------------
 *		Worker: sending without waiting
 * ----------------------------------------------------------------
 */

/*
 * Offer a message to the queue.  False if the queue could not take it
 * whole: then it may be partly in the queue, and only the same bytes may
 * follow.
 */
static bool
bg_spill_tryv(BgSpill *s, shm_mq_iovec *iov, int iovcnt, bool flush)
{
	shm_mq_result res = shm_mq_sendv(s->mqh, iov, iovcnt, true, flush);

	if (res == SHM_MQ_DETACHED)
		s->mqh = NULL;
	return res == SHM_MQ_SUCCESS;
}

static bool
bg_spill_try(BgSpill *s, const char *data, Size len, bool flush)
{
	shm_mq_iovec iov;

	iov.data = data;
	iov.len = len;
	return bg_spill_tryv(s, &iov, 1, flush);
}

/* Make the message the one in flight. */
static void
bg_spill_flightv(BgSpill *s, shm_mq_iovec *iov, int iovcnt)
{
	int			i;

	if (s->flight.data == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&s->flight);
		MemoryContextSwitchTo(oldcxt);
	}
	resetStringInfo(&s->flight);
	for (i = 0; i < iovcnt; i++)
		appendBinaryStringInfo(&s->flight, iov[i].data, iov[i].len);
	s->in_flight = true;
}

static void
bg_spill_flight(BgSpill *s, const char *data, Size len)
{
	shm_mq_iovec iov;

	iov.data = data;
	iov.len = len;
	bg_spill_flightv(s, &iov, 1);
}

/*
 * Move kept messages into the queue, oldest first, while it takes them;
 * next_kept makes the next one the one in flight.  True once all are in.
 */
static bool
bg_spill_push(BgSpill *s, bool (*next_kept) (BgSpill *), bool flush)
{
	while (s->mqh != NULL)
	{
		if (s->in_flight)
		{
			if (!bg_spill_try(s, s->flight.data, s->flight.len, flush))
				return false;
			s->in_flight = false;
			s->pushed++;
			if (s->keep)
				s->keep_pushed += sizeof(BgKeepRecord) + s->flight.len;
		}
		if (s->pushed == s->next)
			return true;
		if (!next_kept(s))
			return false;
	}
	return false;
}

/*
 * Wait for the reader to make room in the queue, unless it has taken nothing
 * for BG_SPILL_PATIENCE_MS: then false, and rows are to be kept.  The reader
 * sets our latch when it has taken a quarter of the queue.
 */
static bool
bg_spill_wait_reader(BgSpill *s)
{
	TimestampTz now = GetCurrentTimestamp();
	long		wait_ms;

	/*
	 * (a clock stepped back starts the stall again, as does a reader busy
	 * writing out one of our blocks)
	 */
	if (s->stalled_at == 0 || now < s->stalled_at ||
		(s->keep != NULL && bg_keep_reader_writes(s->keep)))
		s->stalled_at = now;
	wait_ms = BG_SPILL_PATIENCE_MS - (now - s->stalled_at) / 1000;
	if (wait_ms <= 0)
		return false;
	wait_ms = Min(wait_ms, BG_SPILL_PATIENCE_MS);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 wait_ms, bg_wait_event_mq_send());
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
	return true;
}

/*
 * Send a row of the job's result: to the queue, waiting for it while the
 * reader keeps up, else to the file.  Kept rows go first, so a reader that
 * comes back gets them before the worker produces more.  False once the
 * reader is gone, so that rows need not be built.
 */
bool
bg_spill_send_row(shm_mq_handle *mqh, SharedFileSet *fileset,
				  BgKeepWriter *keep, shm_mq_iovec *iov, int iovcnt,
				  bool flush)
{
	BgSpill    *s = &bg_rows;

	if (s->fileset != fileset)
	{
		memset(s, 0, sizeof(BgSpill));
		s->mqh = mqh;
		s->fileset = fileset;
		s->keep = keep;
		if (keep)
		{
			/* this row, the first, was appended last */
			int			i;

			s->keep_pushed = bg_keep_rows_end(keep) - sizeof(BgKeepRecord);
			for (i = 0; i < iovcnt; i++)
				s->keep_pushed -= iov[i].len;
		}
	}
	for (;;)
	{
		uint64		pushed = s->pushed;

		if (s->mqh == NULL)
			return false;
		if (bg_spill_push(s, bg_spill_next_row, false))
		{
			if (s->pushed != pushed)
				s->stalled_at = 0;
			/*
			 * Nothing kept.  A row the queue took only in part is offered
			 * again whole: the queue goes on where it stopped.
			 */
			if (bg_spill_tryv(s, iov, iovcnt, flush))
			{
				s->next++;
				s->pushed++;
				s->stalled_at = 0;
				if (s->keep)
					s->keep_pushed = bg_keep_rows_end(s->keep);
				return true;
			}
			if (s->mqh == NULL)
				return false;
			if (bg_spill_wait_reader(s))
				continue;
			/* perhaps partly in the queue: it is in flight, and kept */
			bg_spill_flightv(s, iov, iovcnt);
			if (s->keep)
			{
				s->keep_read = bg_keep_rows_end(s->keep);
				bg_keep_set_aside(s->keep);
			}
			else
			{
				bg_spill_keep_row(s, s->next, iov, iovcnt);
				s->read_fileno = s->write_fileno;
				s->read_offset = s->write_offset;
			}
			s->next++;
			return true;
		}
		if (s->mqh == NULL)
			return false;
		if (s->pushed != pushed)
			s->stalled_at = 0;
		if (!bg_spill_wait_reader(s))
			break;
	}
	/* (a kept result has it already, after the kept rows before it) */
	if (s->keep)
		bg_keep_set_aside(s->keep);
	else
		bg_spill_keep_row(s, s->next, iov, iovcnt);
	s->next++;
	return true;
}

/*
 * Position the file at its end, to keep a row, or at the next row to push.
 * A BufFile has one position, for reading and writing.
 */
static void
bg_spill_seek(BgSpill *s, bool to_end)
{
	if (s->at_write == to_end)
		return;
	if (s->at_write)
		BufFileTell(s->file, &s->write_fileno, &s->write_offset);
	else
		BufFileTell(s->file, &s->read_fileno, &s->read_offset);
	if (to_end)
		BufFileSeek(s->file, s->write_fileno, s->write_offset, SEEK_SET);
	else
		BufFileSeek(s->file, s->read_fileno, s->read_offset, SEEK_SET);
	s->at_write = to_end;
}

static void
bg_spill_keep_row(BgSpill *s, uint64 index, shm_mq_iovec *iov, int iovcnt)
{
	BgKeptHeader hdr;
	int			i;

	if (s->file == NULL)
	{
		ResourceOwner oldowner = CurrentResourceOwner;
		MemoryContext oldcxt = MemoryContextSwitchTo(TopTransactionContext);

		/* the file outlives the portal, not the statement's transaction */
		CurrentResourceOwner = TopTransactionResourceOwner;
		s->file = BufFileCreateFileSet(&s->fileset->fs, BG_ROWS_FILE);
		CurrentResourceOwner = oldowner;
		MemoryContextSwitchTo(oldcxt);
		s->at_write = true;
	}
	bg_spill_seek(s, true);
	hdr.index = index;
	hdr.len = 0;
	for (i = 0; i < iovcnt; i++)
		hdr.len += iov[i].len;
	BufFileWrite(s->file, (void *) &hdr, sizeof(hdr));
	for (i = 0; i < iovcnt; i++)
		BufFileWrite(s->file, (void *) iov[i].data, iov[i].len);
	BufFileTell(s->file, &s->write_fileno, &s->write_offset);
}

static bool
bg_spill_next_row(BgSpill *s)
{
	BgKeptHeader hdr;

	if (s->flight.data == NULL)
		bg_spill_flight(s, "", 0);
	if (s->keep)
	{
		s->keep_read += bg_keep_read_back(s->keep, s->keep_read, &s->flight);
		s->in_flight = true;
		return true;
	}
	bg_spill_seek(s, false);
	if (BufFileRead(s->file, &hdr, sizeof(hdr)) != sizeof(hdr))
		elog(ERROR, "could not read a kept row of a background job");
	resetStringInfo(&s->flight);
	enlargeStringInfo(&s->flight, hdr.len);
	if (BufFileRead(s->file, s->flight.data, hdr.len) != hdr.len)
		elog(ERROR, "could not read a kept row of a background job");
	s->flight.len = hdr.len;
	s->in_flight = true;
	BufFileTell(s->file, &s->read_fileno, &s->read_offset);
	return true;
}

/*
 * The last row is sent, or kept: hand what the queue did not take to the
 * reader, before the queue is detached.  Runs inside the job's transaction,
 * which the file must not outlive open.
 */
void
bg_spill_finish_rows(BgJobShared *shared)
{
	BgSpill    *s = &bg_rows;
	bool		all_in = true;

	if (s->keep ? s->pushed == s->next : s->file == NULL)
		return;
	while (s->mqh != NULL)
	{
		uint64		pushed = s->pushed;

		all_in = bg_spill_push(s, bg_spill_next_row, true);
		if (all_in || s->mqh == NULL)
			break;
		if (s->pushed != pushed)
			s->stalled_at = 0;
		if (!bg_spill_wait_reader(s))
			break;
	}
	if (s->keep)
	{
		if (s->mqh != NULL && !all_in)
			bg_spill_hand_kept_rows(s, shared);
		return;
	}
	if (s->mqh != NULL && !all_in)
	{
		BufFileExportFileSet(s->file);
		BufFileClose(s->file);
		bg_spill_mark(shared, true);
	}
	else
	{
		BufFileClose(s->file);
		BufFileDeleteFileSet(&s->fileset->fs, BG_ROWS_FILE, true);
	}
	s->file = NULL;
}

/*
 * The rows the queue did not take are in the job's kept file, the first of
 * them (perhaps partly in the queue, which the reader then drops) at
 * keep_pushed.  The reader takes them from there through a second name of
 * the file in the job's file set: it goes with the segment, as a file of
 * their own would, and so outlives a bg_forget that removes the kept file
 * while the launching session still holds the job.  Where no such name can
 * be made (the file set lies in another file system), they are copied to a
 * file of their own after all.
 */
static void
bg_spill_hand_kept_rows(BgSpill *s, BgJobShared *shared)
{
	ResourceOwner oldowner = CurrentResourceOwner;
	char		link_path[MAXPGPATH];
	bool		linked;

	CurrentResourceOwner = TopTransactionResourceOwner;
	linked = bg_keep_link(s->keep, &s->fileset->fs, BG_KEPT_ROWS_LINK, link_path);
	CurrentResourceOwner = oldowner;
	if (linked)
	{
		SpinLockAcquire(&shared->mutex);
		shared->rows_kept_from = (uint64) s->keep_pushed;
		shared->rows_in_kept_file = true;
		strlcpy(shared->rows_link, link_path, MAXPGPATH);
		SpinLockRelease(&shared->mutex);
	}
	else
	{
		off_t		offset = s->keep_pushed;
		uint64		index;
		StringInfoData row;
		shm_mq_iovec iov;

		initStringInfo(&row);
		for (index = s->pushed; index < s->next; index++)
		{
			offset += bg_keep_read_back(s->keep, offset, &row);
			iov.data = row.data;
			iov.len = row.len;
			bg_spill_keep_row(s, index, &iov, 1);
			CHECK_FOR_INTERRUPTS();
		}
		pfree(row.data);
		BufFileExportFileSet(s->file);
		BufFileClose(s->file);
		s->file = NULL;
	}
	bg_spill_mark(shared, true);
}

/* Tell the reader to look for kept messages once the queue is detached. */
static void
bg_spill_mark(BgJobShared *shared, bool rows)
{
	bg_job_set_flag(shared, rows ? &shared->rows_kept : &shared->messages_kept,
					BG_WAKE_NONE);
}

/* ----------------------------------------------------------------
 *		Worker: protocol messages
 * ----------------------------------------------------------------
 */

/*
 * Send this process's protocol messages (what the client of a backend would
 * get) to the launcher, as pq_redirect_to_shm_mq does, but never wait.
 */
void
bg_spill_redirect_messages(dsm_segment *seg, shm_mq_handle *mqh,
						   BgJobShared *shared, SharedFileSet *fileset)
{
	memset(&bg_messages, 0, sizeof(BgSpill));
	bg_messages.mqh = mqh;
	bg_messages_shared = shared;
	bg_messages.fileset = fileset;
	/* (one for every job a started worker runs) */
	if (bg_spill_owner == NULL)
		bg_spill_owner = ResourceOwnerCreate(NULL, "bg_fdw kept messages");

	PqCommMethods = &bg_messages_methods;
	whereToSendOutput = DestRemote;
	FrontendProtocol = PG_PROTOCOL_LATEST;
	/* registered after the queue's own: runs before it is detached */
	on_dsm_detach(seg, bg_messages_detach, (Datum) 0);
}

static int
bg_messages_put(char msgtype, const char *str, size_t len)
{
	BgSpill    *s = &bg_messages;
	StringInfoData msg;
	StringInfoData converted = {0};

	/* in the database encoding, whatever the job's client_encoding */
	if ((msgtype == 'N' || msgtype == 'E') && !bg_messages_busy &&
		pg_get_client_encoding() != GetDatabaseEncoding())
	{
		initStringInfo(&converted);
		bg_messages_to_db_encoding(str, len, &converted);
		str = converted.data;
		len = converted.len;
	}
	if (msgtype == 'N' && !bg_messages_busy)
		bg_messages_keep(str, len);
	/* an error while sending an error: give up on the queue */
	if (bg_messages_busy || s->mqh == NULL)
	{
		s->mqh = NULL;
		if (converted.data)
			pfree(converted.data);
		return EOF;
	}
	bg_messages_busy = true;
	PG_TRY();
	{
		initStringInfo(&msg);
		appendStringInfoChar(&msg, msgtype);
		appendBinaryStringInfo(&msg, str, len);

		/* after dropped notices, the note saying so goes first */
		if (s->dropped == 0 && bg_spill_push(s, bg_spill_next_message, true))
		{
			if (bg_spill_try(s, msg.data, msg.len, true))
				s->pushed++;
			else if (s->mqh != NULL)
				bg_spill_flight(s, msg.data, msg.len);
			s->next++;
		}
		else if (s->mqh != NULL)
			bg_spill_keep_message(s, msg.data, msg.len);
		bg_spill_messages_pending = (s->mqh != NULL && s->pushed != s->next);
		pfree(msg.data);
	}
	PG_FINALLY();
	{
		bg_messages_busy = false;
	}
	PG_END_TRY();
	if (converted.data)
		pfree(converted.data);
	return 0;
}

/*
 * Move kept messages into the queue as far as it takes them.  Called where
 * the worker waits or produces rows, so that a reader gets notices (and a
 * launcher the descriptor it waits for) without a later message to push
 * them.
 */
void
bg_spill_push_messages_slow(void)
{
	BgSpill    *s = &bg_messages;

	if (bg_messages_busy || s->mqh == NULL)
		return;
	bg_messages_busy = true;
	PG_TRY();
	{
		(void) bg_spill_push(s, bg_spill_next_message, true);
		bg_spill_messages_pending = (s->mqh != NULL && s->pushed != s->next);
	}
	PG_FINALLY();
	{
		bg_messages_busy = false;
	}
	PG_END_TRY();
}

static void
bg_messages_put_noblock(char msgtype, const char *str, size_t len)
{
	(void) bg_messages_put(msgtype, str, len);
}

static void
bg_messages_comm_reset(void)
{
}

static int
bg_messages_flush(void)
{
	return 0;
}

static int
bg_messages_flush_if_writable(void)
{
	return 0;
}

static bool
bg_messages_is_send_pending(void)
{
	return false;
}

/*
 * Keep a message the queue cannot take now, for the reader.  A job must not
 * fail, nor its memory grow without bound, because its reader does not
 * read: past bg_fdw.max_messages_size of kept messages, notices are dropped
 * (bg_messages keeps its own), and the next message kept is preceded by a
 * notice saying how many.  Other messages (the result's columns, the
 * outcome) are few and always kept.
 */
static void
bg_spill_keep_message(BgSpill *s, const char *data, Size len)
{
	if (data[0] == 'N' &&
		(Size) (s->backlog.len - s->backlog_read) + len >
		(Size) bg_max_messages_size * 1024)
	{
		s->dropped++;
		return;
	}
	bg_spill_keep_dropped(s);
	bg_spill_append_message(s, data, len);
}

/*
 * Keep the count of the notices dropped so far, as a record of our own
 * ('n' and the count) that becomes a notice saying so when it is sent: if
 * it is dropped in turn, the count it stands for is not lost.
 */
static void
bg_spill_keep_dropped(BgSpill *s)
{
	char		rec[1 + sizeof(uint64)];

	if (s->dropped == 0)
		return;
	rec[0] = BG_DROPPED_RECORD;
	memcpy(rec + 1, &s->dropped, sizeof(uint64));
	s->dropped = 0;
	bg_spill_append_message(s, rec, sizeof(rec));
}

/* The protocol message a kept record stands for, into "buf". */
static void
bg_spill_expand(const char *rec, Size len, StringInfo buf)
{
	uint64		dropped;

	resetStringInfo(buf);
	if (rec[0] != BG_DROPPED_RECORD)
	{
		appendBinaryStringInfo(buf, rec, len);
		return;
	}
	memcpy(&dropped, rec + 1, sizeof(uint64));
	bg_spill_dropped_note(buf, dropped, "bg_fdw.max_messages_size");
}

static void
bg_spill_append_message(BgSpill *s, const char *data, Size len)
{
	BgKeptHeader hdr;

	if (s->backlog.data == NULL)
	{
		MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

		initStringInfo(&s->backlog);
		MemoryContextSwitchTo(oldcxt);
	}
	hdr.index = s->next++;
	hdr.len = len;
	appendBinaryStringInfo(&s->backlog, (char *) &hdr, sizeof(hdr));
	appendBinaryStringInfo(&s->backlog, data, len);
}

/* Is a kept record a notice, or one standing for notices? */
static bool
bg_spill_is_notice(const char *rec)
{
	return rec[0] == 'N' || rec[0] == BG_DROPPED_RECORD;
}

/*
 * A notice, as the protocol has it, that "dropped" notices were dropped
 * because of a setting.
 */
static void
bg_spill_dropped_note(StringInfo buf, uint64 dropped, const char *setting)
{
	char	   *text;

	appendStringInfoChar(buf, 'N');
	appendStringInfoChar(buf, PG_DIAG_SEVERITY);
	appendStringInfoString(buf, "NOTICE");
	appendStringInfoChar(buf, '\0');
	appendStringInfoChar(buf, PG_DIAG_SEVERITY_NONLOCALIZED);
	appendStringInfoString(buf, "NOTICE");
	appendStringInfoChar(buf, '\0');
	appendStringInfoChar(buf, PG_DIAG_SQLSTATE);
	appendStringInfoString(buf, "01000");
	appendStringInfoChar(buf, '\0');
	text = psprintf("%llu messages of background job %d were not relayed",
					(unsigned long long) dropped, bg_worker_job_name());
	appendStringInfoChar(buf, PG_DIAG_MESSAGE_PRIMARY);
	appendStringInfoString(buf, text);
	appendStringInfoChar(buf, '\0');
	pfree(text);
	text = psprintf("They came while this session was not reading the job, and exceeded \"%s\".",
					setting);
	appendStringInfoChar(buf, PG_DIAG_MESSAGE_DETAIL);
	appendStringInfoString(buf, text);
	appendStringInfoChar(buf, '\0');
	pfree(text);
	text = psprintf("Once the job has ended, bg_messages(%d) shows its first and latest messages.",
					bg_worker_job_name());
	appendStringInfoChar(buf, PG_DIAG_MESSAGE_HINT);
	appendStringInfoString(buf, text);
	appendStringInfoChar(buf, '\0');
	pfree(text);
	appendStringInfoChar(buf, '\0');
}

static bool
bg_spill_next_message(BgSpill *s)
{
	BgKeptHeader hdr;

	if (s->backlog.data == NULL || s->backlog_read >= s->backlog.len)
		elog(ERROR, "kept messages of a background job are missing");
	memcpy(&hdr, s->backlog.data + s->backlog_read, sizeof(hdr));
	if (s->flight.data == NULL)
		bg_spill_flight(s, "", 0);
	bg_spill_expand(s->backlog.data + s->backlog_read + sizeof(hdr), hdr.len,
					&s->flight);
	s->in_flight = true;
	s->backlog_read += sizeof(hdr) + hdr.len;
	if (s->backlog_read == s->backlog.len)
	{
		resetStringInfo(&s->backlog);
		s->backlog_read = 0;
	}
	return true;
}

/*
 * At exit (a before_shmem_exit callback, while temporary files may still be
 * made): the messages the queue has not taken go to a file for the reader.
 */
void
bg_spill_messages_exit(void)
{
	BgSpill    *s = &bg_messages;

	if (s->mqh == NULL)
		return;
	bg_spill_keep_dropped(s);
	if (bg_spill_push(s, bg_spill_next_message, true) || s->mqh == NULL)
		return;
	if (bg_spill_write_messages())
		bg_spill_mark(bg_messages_shared, false);
}

/*
 * The worker goes on to another job (pool.c), its segment detached: start
 * from nothing, and send messages nowhere until the next job's queue.
 */
void
bg_spill_job_reset(void)
{
	BgSpill    *spills[2] = {&bg_rows, &bg_messages};
	int			i;

	for (i = 0; i < 2; i++)
	{
		if (spills[i]->flight.data)
			pfree(spills[i]->flight.data);
		if (spills[i]->backlog.data)
			pfree(spills[i]->backlog.data);
		memset(spills[i], 0, sizeof(BgSpill));
	}
	bg_messages_shared = NULL;
	bg_spill_messages_pending = false;
	whereToSendOutput = DestNone;
}

/* on_dsm_detach callback: the queue is going away, send nothing more */
static void
bg_messages_detach(dsm_segment *seg, Datum arg)
{
	bg_messages.mqh = NULL;
	bg_spill_messages_pending = false;
	bg_messages_keep_detached();
}

/*
 * Write the messages the queue has not taken to a file of the job's file
 * set, within temp_file_limit, which holds for everything a job writes.
 * This runs while the process exits, where an error cannot be caught: so
 * if they do not all fit, notices are left out, a notice saying how many
 * goes first, and the other messages (the outcome) follow; if even those do
 * not fit, nothing is written, and the reader finds the outcome in the
 * registry.  The job's other temporary files are closed by now, so the
 * limit is all theirs.  Returns whether a file was written.
 */
static bool
bg_spill_write_messages(void)
{
	BgSpill    *s = &bg_messages;
	ResourceOwner oldowner = CurrentResourceOwner;
	BufFile    *file;
	BgKeptHeader hdr;
	int64		budget = temp_file_limit < 0 ? -1 : (int64) temp_file_limit * 1024;
	StringInfoData note;
	uint64		skipped = 0;

	initStringInfo(&note);
	if (budget >= 0 && bg_spill_unpushed_bytes(s, true, &skipped) > budget)
	{
		bg_spill_dropped_note(&note, skipped, "temp_file_limit");
		if (bg_spill_unpushed_bytes(s, false, &skipped) + sizeof(hdr) +
			note.len > budget)
			return false;
		resetStringInfo(&note);
	}
	else
		skipped = 0;
	CurrentResourceOwner = bg_spill_owner;
	file = BufFileCreateFileSet(&s->fileset->fs, BG_MESSAGES_FILE);
	if (s->in_flight && (skipped == 0 || s->flight.data[0] != 'N'))
	{
		hdr.index = s->pushed;
		hdr.len = s->flight.len;
		BufFileWrite(file, (void *) &hdr, sizeof(hdr));
		BufFileWrite(file, s->flight.data, s->flight.len);
	}
	while (s->backlog.data != NULL && s->backlog_read < s->backlog.len)
	{
		char	   *rec = s->backlog.data + s->backlog_read;

		memcpy(&hdr, rec, sizeof(hdr));
		if (skipped == 0 || !bg_spill_is_notice(rec + sizeof(hdr)))
		{
			bg_spill_expand(rec + sizeof(hdr), hdr.len, &note);
			hdr.len = note.len;
			BufFileWrite(file, (void *) &hdr, sizeof(hdr));
			BufFileWrite(file, note.data, note.len);
		}
		memcpy(&hdr, rec, sizeof(hdr));
		s->backlog_read += sizeof(hdr) + hdr.len;
	}
	if (skipped > 0)
	{
		/*
		 * Last, after every index the file holds: a reader that resumes
		 * after it never skips a message it has not seen.
		 */
		bg_spill_dropped_note(&note, skipped, "temp_file_limit");
		hdr.index = s->next;
		hdr.len = note.len;
		BufFileWrite(file, (void *) &hdr, sizeof(hdr));
		BufFileWrite(file, note.data, note.len);
	}
	BufFileExportFileSet(file);
	BufFileClose(file);
	CurrentResourceOwner = oldowner;
	return true;
}

/*
 * Bytes the file of unpushed messages takes, with or without notices;
 * "notices" counts those.
 */
static int64
bg_spill_unpushed_bytes(BgSpill *s, bool with_notices, uint64 *notices)
{
	int64		bytes = 0;
	int			pos;
	BgKeptHeader hdr;

	*notices = 0;
	if (s->in_flight)
	{
		if (s->flight.data[0] == 'N')
			(*notices)++;
		if (with_notices || s->flight.data[0] != 'N')
			bytes += sizeof(hdr) + s->flight.len;
	}
	for (pos = s->backlog_read; s->backlog.data != NULL && pos < s->backlog.len;
		 pos += sizeof(hdr) + hdr.len)
	{
		const char *rec = s->backlog.data + pos + sizeof(hdr);
		uint64		count = 1;

		memcpy(&hdr, s->backlog.data + pos, sizeof(hdr));
		if (rec[0] == BG_DROPPED_RECORD)
			memcpy(&count, rec + 1, sizeof(uint64));
		if (bg_spill_is_notice(rec))
			*notices += count;
		/* (a note of dropped notices takes well under 512 bytes) */
		if (with_notices)
			bytes += sizeof(hdr) + (rec[0] == BG_DROPPED_RECORD ? 512 : hdr.len);
		else if (!bg_spill_is_notice(rec))
			bytes += sizeof(hdr) + hdr.len;
	}
	return bytes;
}

/* ----------------------------------------------------------------
 *		Reader: collecting what was kept
 * ----------------------------------------------------------------
 */

/*
 * Once a queue is detached and drained (seen = the messages it delivered),
 * pass each kept message the reader has not seen to "consume", in order.
 * Returns whether there were kept messages.
 */
bool
bg_spill_collect(BgJobShared *shared, SharedFileSet *fileset, bool rows,
				 uint64 seen, void (*consume) (void *arg, char *data, uint32 len),
				 void *arg)
{
	BufFile    *file;
	BgKeptHeader hdr;
	char	   *buf = NULL;
	uint32		bufsize = 0;
	bool		kept;

	kept = bg_job_get_flag(shared, rows ? &shared->rows_kept :
						   &shared->messages_kept);
	if (!kept)
		return false;

	file = BufFileOpenFileSet(&fileset->fs, rows ? BG_ROWS_FILE : BG_MESSAGES_FILE,
							  O_RDONLY, false);
	while (BufFileRead(file, &hdr, sizeof(hdr)) == sizeof(hdr))
	{
		if (hdr.len > bufsize)
		{
			bufsize = Max(hdr.len, 2 * bufsize);
			buf = buf ? repalloc(buf, bufsize) : palloc(bufsize);
		}
		if (BufFileRead(file, buf, hdr.len) != hdr.len)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not read the kept result of a background job")));
		if (hdr.index >= seen)
			consume(arg, buf, hdr.len);
		CHECK_FOR_INTERRUPTS();
	}
	BufFileClose(file);
	if (buf)
		pfree(buf);
	return true;
}
