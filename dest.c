/*-------------------------------------------------------------------------
 *
 * dest.c
 *		  The worker's DestReceiver: the rows of a job's last statement, onto
 *		  the job's tuple queue.
 *
 * Like tqueue.c's TupleQueueDestReceiver, each row crosses as a
 * MinimalTuple, with no text or binary conversion.  Unlike it, a full queue
 * never stops the job (spill.c keeps the rows its reader has not taken),
 * a reader that went away is not an error (the job runs on and commits),
 * columns whose type cannot be a table column are sent as text, and TOAST
 * pointers are replaced by their values, since the rows may be read after
 * the job has committed.
 *
 * Only the worker uses this file; it is apart from worker.c as tqueue.c is
 * apart from execParallel.c, so that the transport can change without the
 * statement loop.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/dest.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/htup_details.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/latch.h"
#include "tcop/dest.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timeout.h"
#include "utils/timestamp.h"

#include "bg_fdw.h"
#include "compat.h"

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
	BgKeepWriter *keep;			/* the job's kept file, or NULL */
} BgDestReceiver;

static void bg_find_varlena_columns(BgDestReceiver *self, TupleDesc actual);
static TupleTableSlot *bg_detoast_slot(BgDestReceiver *self,
									   TupleTableSlot *slot);
static TupleTableSlot *bg_convert_slot(BgDestReceiver *self,
									   TupleTableSlot *slot);
static bool bg_receive_slot(TupleTableSlot *slot, DestReceiver *self);
static void bg_check_reader_deadlock(BgJobShared *shared);
static shm_mq_result bg_send_row_stream(BgDestReceiver *self,
										shm_mq_iovec *iov, int iovcnt,
										bool flush);
static shm_mq_result bg_send_row(BgDestReceiver *self, shm_mq_iovec *iov,
								 int iovcnt, bool flush);
static bool bg_send_stored_tuple(BgDestReceiver *self, TupleTableSlot *slot,
								 bool flush, shm_mq_result *res);
static void bg_flush_timeout_handler(void);
static void bg_dest_startup(DestReceiver *self, int operation, TupleDesc typeinfo);
static void bg_dest_shutdown(DestReceiver *self);
static void bg_dest_destroy(DestReceiver *self);

/*
 * Make the receiver of the last statement's rows.  "actual" is what the
 * statement produces (NULL: no rows), "desc" the result's columns as
 * bg_result_desc made them from it.  Rows the queue cannot take go to the
 * job's file set, except in a stream job, which waits for its reader.
 */
DestReceiver *
bg_create_dest_receiver(shm_mq_handle *mqh, BgJobShared *shared,
						SharedFileSet *fileset, TupleDesc actual,
						TupleDesc desc)
{
	BgDestReceiver *self = palloc0(sizeof(BgDestReceiver));
	int			i;

	self->pub.receiveSlot = bg_receive_slot;
	self->pub.rStartup = bg_dest_startup;
	self->pub.rShutdown = bg_dest_shutdown;
	self->pub.rDestroy = bg_dest_destroy;
	self->pub.mydest = DestTupleQueue;
	self->mqh = mqh;
	self->shared = shared;
	self->desc = desc;
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
	/* a tag alone is kept in the registry row */
	if (shared->keep && !self->command_shape)
		self->keep = bg_keep_create(shared, desc);
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

/*
 * The statement had no rows: send its completion tag as the result's one
 * row.  Does nothing for a statement that had rows.
 */
void
bg_dest_send_command(DestReceiver *dest, const char *tag)
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
 * Every row is kept: finish the kept file.  Its size (0 if only the tag is
 * kept) is published for the registry.
 */
void
bg_dest_finish_keep(DestReceiver *dest)
{
	BgDestReceiver *self = (BgDestReceiver *) dest;

	if (self->keep)
		pg_atomic_write_u64(&self->shared->kept_size,
							(uint64) bg_keep_finish(self->keep));
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

/*
 * Send a row: keep it if the queue is full, or wait there in stream mode.
 * A kept result has it before the queue does.
 */
static shm_mq_result
bg_send_row(BgDestReceiver *self, shm_mq_iovec *iov, int iovcnt, bool flush)
{
	if (self->keep)
		bg_keep_append(self->keep, iov, iovcnt);
	if (self->detached)
		return SHM_MQ_DETACHED;
	if (self->fileset == NULL)
		return bg_send_row_stream(self, iov, iovcnt, flush);
	return bg_spill_send_row(self->mqh, self->fileset, self->keep, iov,
							 iovcnt, flush) ?
		SHM_MQ_SUCCESS : SHM_MQ_DETACHED;
}

/*
 * A stream job's row waits for room in the queue.  While it does, the
 * worker waits for its launcher, which the wait-for graph (waitgraph.c)
 * must know, and which it checks itself every deadlock_timeout: a reader
 * waiting for a lock the job holds (in an ordinary lock wait, which checks
 * no edge of ours) would wait for ever.  It keeps pushing its messages out
 * meanwhile, since its reader takes no row before it has the result's
 * columns, which are among them.  A shm_mq that would block is offered the
 * row again, whole, as shm_mq_sendv asks.
 */
static void
bg_check_reader_deadlock(BgJobShared *shared)
{
	static BgWaitCycle cycle;

	bg_check_session_deadlock(shared->launcher_pid, &cycle,
							  _("The session reading this stream job waits for a lock the job holds, and the job waits for room in its queue."),
							  _("Do not wait for locks a stream job holds while reading it, or launch the job without stream mode."));
}

static shm_mq_result
bg_send_row_stream(BgDestReceiver *self, shm_mq_iovec *iov, int iovcnt,
				   bool flush)
{
	shm_mq_result res = shm_mq_sendv(self->mqh, iov, iovcnt, true, flush);

	if (res != SHM_MQ_WOULD_BLOCK)
		return res;
	self->shared->worker_waiting = true;
	PG_TRY();
	{
		while ((res = shm_mq_sendv(self->mqh, iov, iovcnt, true, flush)) ==
			   SHM_MQ_WOULD_BLOCK)
		{
			int			rc;

			bg_spill_push_messages();
			rc = WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   DeadlockTimeout, BG_WAIT_EVENT_MQ_SEND);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
			if (rc & WL_TIMEOUT)
				bg_check_reader_deadlock(self->shared);
		}
	}
	PG_FINALLY();
	{
		self->shared->worker_waiting = false;
	}
	PG_END_TRY();
	return res;
}

/*
 * Send one row.  A reader that went away is not an error: the job runs on
 * to its end and commits, and its rows are dropped, unless they are kept.
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

	if (!self->detached || self->keep)
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
		/* readers following the kept file get rows when the queue's does */
		if (flush && self->keep)
			bg_keep_publish(self->keep);
	}
	pg_atomic_write_u64(&self->shared->rows, ++self->rows);
	return true;
}

/* Timer handler: the next row is to flush the queue. */
static void
bg_flush_timeout_handler(void)
{
	bg_flush_due = true;
}

/* The portal starts: flush on a timer while rows flow. */
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

/* The portal is done: no more timed flushes. */
static void
bg_dest_shutdown(DestReceiver *self)
{
	disable_timeout(bg_flush_timeout, false);
}

/* Free the receiver and what it made; the queue is not ours to detach. */
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
