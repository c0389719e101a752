/*-------------------------------------------------------------------------
 *
 * spool.c
 *		  The rows of a job's result, kept in the launching session so that
 *		  the result reads like a table: an append-only log of rows, in
 *		  memory up to work_mem, then in a temporary file.
 *
 * A tuplestore would do, but it pallocs, copies and frees every row and
 * writes its file 8kB at a time.  Here a row is copied once, into a block of
 * memory or into a large write buffer.  Each reader has its own position,
 * read buffer and row buffer, so scans of one result at different points (a
 * self-join, the rescans of a nested loop) do not disturb each other.
 *
 * In memory a row is kept as a heap tuple whose header is zero up to the
 * minimal tuple, the layout heap_tuple_from_minimal_tuple makes, MAXALIGNed:
 * a scan's slot points at it without a copy.  In the file, where bytes cost
 * I/O, a row is its length and the minimal tuple's data without its padding
 * (as a tuplestore writes it), and a reader rebuilds the heap layout in its
 * row buffer.  The file holds whole rows only, the rest waits in the write
 * buffer.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/spool.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "commands/tablespace.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "bg_fdw.h"

#define BG_SPOOL_BLOCK_SIZE		(64 * 1024)
#define BG_SPOOL_IO_SIZE		(256 * 1024)

struct BgSpool
{
	MemoryContext cxt;			/* holds the spool and its blocks */
	Size		mem_limit;		/* bytes of rows to keep in memory */
	Size		mem_used;
	int64		mem_rows;		/* rows in memory: the first ones */
	char	  **blocks;			/* memory blocks, in order */
	Size	   *block_used;		/* bytes of rows in each */
	Size	   *block_size;
	int			nblocks;
	int			maxblocks;
	File		file;			/* the later rows, or -1 */
	off_t		file_size;		/* bytes written to it */
	char	   *wbuf;			/* rows that follow file_size */
	Size		wbuf_used;
	Size		wbuf_size;
	int64		nrows;
};

static char *bg_spool_reserve(BgSpool *sp, Size len);
static char *bg_spool_reserve_file(BgSpool *sp, Size len);
static void bg_spool_flush(BgSpool *sp);
static char *bg_spool_read_file(BgSpool *sp, BgSpoolReader *rd, Size need);
static void bg_spool_unpack(BgSpool *sp, BgSpoolReader *rd, const char *rec,
							uint32 body, HeapTuple tuple);

/*
 * A spool in "cxt", keeping up to mem_limit_kb kilobytes of rows in memory.
 * Its file is made when needed and survives transaction ends, like a
 * tuplestore's with interXact: bg_spool_free closes it.
 */
BgSpool *
bg_spool_create(MemoryContext cxt, int mem_limit_kb)
{
	BgSpool    *sp = MemoryContextAllocZero(cxt, sizeof(BgSpool));

	sp->cxt = cxt;
	sp->mem_limit = (Size) mem_limit_kb * 1024;
	sp->file = -1;
	return sp;
}

void
bg_spool_free(BgSpool *sp)
{
	if (sp->file >= 0)
		FileClose(sp->file);
	sp->file = -1;
}

/*
 * Append a row.  On error (temp_file_limit, a full disk) the row may be
 * kept in part: the caller must not use the spool again.
 */
void
bg_spool_append(BgSpool *sp, MinimalTuple tuple)
{
	Size		len = MINIMAL_TUPLE_OFFSET + tuple->t_len;
	char	   *dest;

	if (sp->file < 0 && sp->mem_used + MAXALIGN(len) <= sp->mem_limit)
	{
		dest = bg_spool_reserve(sp, MAXALIGN(len));
		memset(dest, 0, MINIMAL_TUPLE_OFFSET);
		memcpy(dest + MINIMAL_TUPLE_OFFSET, tuple, tuple->t_len);
		if (MAXALIGN(len) > len)
			memset(dest + len, 0, MAXALIGN(len) - len);
	}
	else
	{
		uint32		body = tuple->t_len - MINIMAL_TUPLE_DATA_OFFSET;

		dest = bg_spool_reserve_file(sp, sizeof(uint32) + body);
		memcpy(dest, &body, sizeof(uint32));
		memcpy(dest + sizeof(uint32),
			   (char *) tuple + MINIMAL_TUPLE_DATA_OFFSET, body);
	}
	sp->nrows++;
}

/* Room for a row of "len" bytes at the end of the memory part. */
static char *
bg_spool_reserve(BgSpool *sp, Size len)
{
	char	   *dest;
	int			last = sp->nblocks - 1;

	if (last < 0 || sp->block_used[last] + len > sp->block_size[last])
	{
		if (sp->nblocks == sp->maxblocks)
		{
			/* maxblocks last: an allocation that fails leaves all consistent */
			int			max = Max(16, sp->maxblocks * 2);

			if (sp->blocks == NULL)
			{
				sp->blocks = MemoryContextAlloc(sp->cxt, max * sizeof(char *));
				sp->block_used = MemoryContextAlloc(sp->cxt, max * sizeof(Size));
				sp->block_size = MemoryContextAlloc(sp->cxt, max * sizeof(Size));
			}
			else
			{
				sp->blocks = repalloc(sp->blocks, max * sizeof(char *));
				sp->block_used = repalloc(sp->block_used, max * sizeof(Size));
				sp->block_size = repalloc(sp->block_size, max * sizeof(Size));
			}
			sp->maxblocks = max;
		}
		last = sp->nblocks++;
		sp->block_size[last] = Max(BG_SPOOL_BLOCK_SIZE, len);
		sp->block_used[last] = 0;
		sp->blocks[last] = MemoryContextAllocHuge(sp->cxt, sp->block_size[last]);
	}
	dest = sp->blocks[last] + sp->block_used[last];
	sp->block_used[last] += len;
	sp->mem_used += len;
	sp->mem_rows++;
	return dest;
}

static char *
bg_spool_reserve_file(BgSpool *sp, Size len)
{
	char	   *dest;

	if (sp->file < 0)
	{
		/* interXact: the spool is read across transactions */
		PrepareTempTablespaces();
		sp->file = OpenTemporaryFile(true);
		sp->wbuf_size = BG_SPOOL_IO_SIZE;
		sp->wbuf = MemoryContextAlloc(sp->cxt, sp->wbuf_size);
	}
	if (sp->wbuf_used + len > sp->wbuf_size)
	{
		bg_spool_flush(sp);
		if (len > sp->wbuf_size)
		{
			pfree(sp->wbuf);
			sp->wbuf_size = len;
			sp->wbuf = MemoryContextAllocHuge(sp->cxt, sp->wbuf_size);
		}
	}
	dest = sp->wbuf + sp->wbuf_used;
	sp->wbuf_used += len;
	return dest;
}

static void
bg_spool_flush(BgSpool *sp)
{
	Size		done = 0;

	while (done < sp->wbuf_used)
	{
		int			chunk = (int) Min(sp->wbuf_used - done, (Size) MaxAllocSize);
		int			written;

		written = FileWrite(sp->file, sp->wbuf + done, chunk,
							sp->file_size, WAIT_EVENT_BUFFILE_WRITE);
		if (written <= 0)
			ereport(ERROR,
					(errcode_for_file_access(),
					 errmsg("could not write to file \"%s\": %m",
							FilePathName(sp->file))));
		done += written;
		sp->file_size += written;
	}
	sp->wbuf_used = 0;
}

/* Position a reader at the first row. */
void
bg_spool_rewind(BgSpoolReader *rd)
{
	rd->row = 0;
	rd->block = 0;
	rd->offset = 0;
	rd->in_file = false;
}

/*
 * The reader's next row as a heap tuple, or false at the end of the spool.
 * The tuple's data stays valid until this reader reads again.
 */
bool
bg_spool_read(BgSpool *sp, BgSpoolReader *rd, HeapTuple tuple)
{
	char	   *data;
	uint32		body;

	if (rd->row >= sp->nrows)
		return false;
	if (!rd->in_file && rd->row == sp->mem_rows)
	{
		/* past the memory part, which is complete once the file exists */
		rd->in_file = true;
		rd->offset = 0;
	}
	if (!rd->in_file)
	{
		if (rd->offset >= sp->block_used[rd->block])
		{
			rd->block++;
			rd->offset = 0;
		}
		data = sp->blocks[rd->block] + rd->offset;
		tuple->t_len = MINIMAL_TUPLE_OFFSET +
			((MinimalTuple) (data + MINIMAL_TUPLE_OFFSET))->t_len;
		tuple->t_data = (HeapTupleHeader) data;
		rd->offset += MAXALIGN(tuple->t_len);
	}
	else
	{
		if (rd->offset >= sp->file_size)
			data = sp->wbuf + (rd->offset - sp->file_size);
		else
			data = bg_spool_read_file(sp, rd, sizeof(uint32));
		memcpy(&body, data, sizeof(uint32));
		if (rd->offset < sp->file_size)
			data = bg_spool_read_file(sp, rd, sizeof(uint32) + body);
		bg_spool_unpack(sp, rd, data, body, tuple);
		rd->offset += sizeof(uint32) + body;
	}
	rd->row++;
	ItemPointerSetInvalid(&tuple->t_self);
	tuple->t_tableOid = InvalidOid;
	return true;
}

/* Rebuild a row kept in the file as a heap tuple in the reader's buffer. */
static void
bg_spool_unpack(BgSpool *sp, BgSpoolReader *rd, const char *rec, uint32 body,
				HeapTuple tuple)
{
	Size		len = offsetof(HeapTupleHeaderData, t_infomask2) + body;
	uint32		t_len = MINIMAL_TUPLE_DATA_OFFSET + body;

	if (len > rd->row_size)
	{
		if (rd->row_buf)
			pfree(rd->row_buf);
		rd->row_size = Max(len, 2 * rd->row_size);
		rd->row_buf = MemoryContextAllocHuge(sp->cxt, rd->row_size);
	}
	memset(rd->row_buf, 0, offsetof(HeapTupleHeaderData, t_infomask2));
	memcpy(rd->row_buf + MINIMAL_TUPLE_OFFSET, &t_len, sizeof(uint32));
	memcpy(rd->row_buf + offsetof(HeapTupleHeaderData, t_infomask2),
		   rec + sizeof(uint32), body);
	tuple->t_len = len;
	tuple->t_data = (HeapTupleHeader) rd->row_buf;
}

/*
 * The "need" bytes at the reader's file offset, in its read buffer, which
 * is refilled from the file when they are not there.
 */
static char *
bg_spool_read_file(BgSpool *sp, BgSpoolReader *rd, Size need)
{
	off_t		off = rd->offset;
	int			got;

	if (rd->buf != NULL && off >= rd->buf_start &&
		off + need <= rd->buf_start + rd->buf_len)
		return rd->buf + (off - rd->buf_start);

	if (need > rd->buf_size)
	{
		if (rd->buf)
			pfree(rd->buf);
		rd->buf_size = Max(need, BG_SPOOL_IO_SIZE);
		rd->buf = MemoryContextAllocHuge(sp->cxt, rd->buf_size);
	}
	got = FileRead(sp->file, rd->buf,
				   (int) Min(rd->buf_size, (Size) (sp->file_size - off)),
				   off, WAIT_EVENT_BUFFILE_READ);
	if (got < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read from file \"%s\": %m",
						FilePathName(sp->file))));
	if ((Size) got < need)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("could not read from file \"%s\": read only %d of %zu bytes",
						FilePathName(sp->file), got, need)));
	rd->buf_start = off;
	rd->buf_len = got;
	return rd->buf;
}
