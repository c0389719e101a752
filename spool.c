/*-------------------------------------------------------------------------
 *
 * spool.c
 *		  The rows of a job's result, kept in the launching session so that
 *		  the result reads like a table: an append-only log of rows, in
 *		  memory up to work_mem, then in the job's kept file or, for a job
 *		  that keeps none, in a temporary file.
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
 * A job that keeps its result (keep.c) has written every row to its kept
 * file before the row reached the queue: past work_mem the spool copies no
 * row to a file of its own, it reads the job's.  It needs only the offset
 * of each row there, which it counts as rows arrive, and a copy of the rows
 * the worker has not written out yet (it writes out every 1 MB and on its
 * flush timer): a tail that mirrors the file from the end of what the
 * worker had published when the tail last filled (the session looks only
 * then), bounded by the worker's write buffer, and holds the newest row,
 * which the scan that took it reads next.  The session
 * holds the file open for as long as the job, so that bg_forget or expiry
 * of the job's registry row, which remove the file, do not take the rows
 * from a session that still holds the job.  Without a free file descriptor
 * the spool writes a file of its own, as for a job that keeps nothing.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/spool.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/stat.h>
#include <unistd.h>

#include "access/htup_details.h"
#include "commands/tablespace.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/fd.h"
#include "utils/memutils.h"
#include "utils/wait_event.h"

#include "bg_fdw.h"

#define BG_SPOOL_BLOCK_SIZE		(64 * 1024)
/* the first block's, doubling up to BG_SPOOL_BLOCK_SIZE */
#define BG_SPOOL_FIRST_BLOCK_SIZE	1024
#define BG_SPOOL_IO_SIZE		(256 * 1024)

/*
 * Kept files a session holds open at most: the descriptors come from the
 * budget it shares with postgres_fdw's and dblink's connections.  Past it,
 * a spool writes a file of its own.
 */
#define BG_SPOOL_MAX_KEPT_FDS	16

static int	bg_spool_kept_fds = 0;

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
	/* rows past memory in the job's kept file, see above */
	int64		kept_job;		/* the job, or 0 if it keeps no file */
	int			kept_fd;		/* the file, open, or -1 */
	char	   *kept_path;
	uint64		kept_bytes;		/* bytes of the records of the rows so far */
	off_t		kept_start;		/* file offset of the first row past memory */
	off_t		kept_end;		/* and of the end of the last row */
	off_t		kept_valid;		/* bytes of the file the worker has written */
	char	   *tail;			/* file bytes [tail_off, kept_end), from */
	Size		tail_head;		/* tail + tail_head */
	Size		tail_len;
	Size		tail_size;
	off_t		tail_off;		/* all before it is written out */
	uint32		file_no;		/* changes when the rows past memory move to
								 * another file: readers' buffers then hold
								 * nothing */
	BgSpoolReader copy;			/* bg_spool_unkeep's reader */
};

static char *bg_spool_reserve(BgSpool *sp, Size len);
static char *bg_spool_reserve_file(BgSpool *sp, Size len);
static void bg_spool_flush(BgSpool *sp);
static char *bg_spool_read_file(BgSpool *sp, BgSpoolReader *rd, Size need);
static void bg_spool_unpack(BgSpool *sp, BgSpoolReader *rd, const char *rec,
							uint32 body, HeapTuple tuple);
static void bg_spool_append_file(BgSpool *sp, MinimalTuple tuple);
static bool bg_spool_open_kept(BgSpool *sp);
static void bg_spool_close_kept(BgSpool *sp);
static void bg_spool_append_kept(BgSpool *sp, MinimalTuple tuple);
static void bg_spool_trim_tail(BgSpool *sp);
static inline bool bg_spool_tail_has_room(BgSpool *sp, Size len);
static void bg_spool_free_tail(BgSpool *sp);
static void bg_spool_read_kept(BgSpool *sp, BgSpoolReader *rd, HeapTuple tuple);
static char *bg_spool_check_kept(BgSpool *sp, BgSpoolReader *rd, uint32 len);
static char *bg_spool_row_buf(BgSpool *sp, BgSpoolReader *rd, Size len);
static const char *bg_spool_path(BgSpool *sp);

/*
 * A spool under "cxt", keeping up to mem_limit_kb kilobytes of rows in memory,
 * the later ones in the kept file of job "kept_job" (0: none).  Its file is
 * opened or made when needed and survives transaction ends, like a
 * tuplestore's with interXact: bg_spool_free closes it.
 */
BgSpool *
bg_spool_create(MemoryContext cxt, int mem_limit_kb, int64 kept_job)
{
	BgSpool    *sp = MemoryContextAllocZero(cxt, sizeof(BgSpool));

	sp->cxt = AllocSetContextCreate(cxt, "bg_fdw spool", ALLOCSET_SMALL_SIZES);
	sp->mem_limit = (Size) mem_limit_kb * 1024;
	sp->file = -1;
	sp->kept_job = kept_job;
	sp->kept_fd = -1;
	return sp;
}

/* Close the spool's file and free its memory, and its readers' buffers. */
void
bg_spool_free(BgSpool *sp)
{
	if (sp->file >= 0)
		FileClose(sp->file);
	if (sp->kept_fd >= 0)
		bg_spool_close_kept(sp);
	MemoryContextDelete(sp->cxt);
	pfree(sp);
}

/*
 * The worker has written out the first "valid" bytes of its kept file: the
 * rows there need no copy in the tail.  Called while the job's segment is
 * mapped when bg_spool_needs_valid says so, and with the final size once
 * it has ended.
 */
void
bg_spool_set_valid(BgSpool *sp, uint64 valid)
{
	if ((off_t) valid > sp->kept_valid)
	{
		sp->kept_valid = (off_t) valid;
		if (sp->kept_fd >= 0)
			bg_spool_trim_tail(sp);
	}
}

/*
 * Would appending a row of "len" bytes want to know how far the worker has
 * written out its kept file?  Only where the row goes to the tail and the
 * tail has no room for it, as bg_spool_append_kept finds: that is when rows
 * written out are dropped from it.  Asking the job's segment for every row would cost a transfer of a
 * cache line the worker writes for every row it sends, on each row.
 */
bool
bg_spool_needs_valid(BgSpool *sp, uint32 len)
{
	return sp->kept_fd >= 0 &&
		!bg_spool_tail_has_room(sp, sizeof(BgKeepRecord) + len);
}

/* Can "len" more bytes go at the end of the tail, where it lies now? */
static inline bool
bg_spool_tail_has_room(BgSpool *sp, Size len)
{
	return sp->tail_head + sp->tail_len + len <= sp->tail_size;
}

/*
 * The job has ended with the first "valid" bytes of its kept file written
 * out: every row this session took off its queue is there, and the tail
 * goes.  It grows to twice the worker's write buffer while the job runs,
 * which a session holding many ended jobs would otherwise keep for each.
 */
void
bg_spool_job_ended(BgSpool *sp, uint64 valid)
{
	bg_spool_set_valid(sp, valid);
	bg_spool_free_tail(sp);
}

/* Free the tail if it holds no row. */
static void
bg_spool_free_tail(BgSpool *sp)
{
	if (sp->tail == NULL || sp->tail_len > 0)
		return;
	pfree(sp->tail);
	sp->tail = NULL;
	sp->tail_size = sp->tail_head = 0;
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

	if (sp->kept_fd >= 0 ||
		(sp->file < 0 && sp->mem_used + MAXALIGN(len) > sp->mem_limit &&
		 bg_spool_open_kept(sp)))
		bg_spool_append_kept(sp, tuple);
	else if (sp->file < 0 && sp->mem_used + MAXALIGN(len) <= sp->mem_limit)
	{
		dest = bg_spool_reserve(sp, MAXALIGN(len));
		memset(dest, 0, MINIMAL_TUPLE_OFFSET);
		memcpy(dest + MINIMAL_TUPLE_OFFSET, tuple, tuple->t_len);
		if (MAXALIGN(len) > len)
			memset(dest + len, 0, MAXALIGN(len) - len);
	}
	else
		bg_spool_append_file(sp, tuple);
	sp->kept_bytes += sizeof(BgKeepRecord) + tuple->t_len;
	sp->nrows++;
}

/* Write a row to the spool's own file: its length, then its data. */
static void
bg_spool_append_file(BgSpool *sp, MinimalTuple tuple)
{
	uint32		body = tuple->t_len - MINIMAL_TUPLE_DATA_OFFSET;
	char	   *dest = bg_spool_reserve_file(sp, sizeof(uint32) + body);

	memcpy(dest, &body, sizeof(uint32));
	memcpy(dest + sizeof(uint32), (char *) tuple + MINIMAL_TUPLE_DATA_OFFSET,
		   body);
}

/* Does the spool hold the job's kept file open, to read rows from it? */
bool
bg_spool_holds_kept(BgSpool *sp)
{
	return sp->kept_fd >= 0;
}

/* Has the kept file this spool reads been removed (bg_forget, expiry)? */
bool
bg_spool_kept_removed(BgSpool *sp)
{
	struct stat st;

	return sp->kept_fd >= 0 && fstat(sp->kept_fd, &st) == 0 &&
		st.st_nlink == 0;
}

/*
 * Go on in the job's kept file now, before the memory part is full: the
 * session is to read the job's rows from there (bg_job_follow_kept).
 * False if it cannot (no descriptor to spare, the file gone, or the rows
 * past memory already in a file of the session's own).
 */
bool
bg_spool_hold_kept(BgSpool *sp)
{
	return sp->kept_fd >= 0 || (sp->file < 0 && bg_spool_open_kept(sp));
}

/* Where in the kept file the row after the spool's last one starts */
off_t
bg_spool_kept_end(BgSpool *sp)
{
	Assert(sp->kept_fd >= 0);
	return sp->kept_end;
}

/*
 * Pass the rows of the kept file past the spool's last one, up to "valid"
 * (what the worker has written out) and those that begin in the first
 * "limit" bytes, to "consume", which appends each.  Read through the
 * descriptor the spool holds, so that a bg_forget that removes the file
 * meanwhile takes none of them.
 */
void
bg_spool_follow_kept(BgSpool *sp, uint64 valid, Size limit,
					 void (*consume) (void *arg, char *data, uint32 len),
					 void *arg)
{
	Assert(sp->kept_fd >= 0);
	if ((off_t) valid > sp->kept_end)
		bg_keep_scan_rows_fd(sp->kept_fd, sp->kept_path, sp->kept_end,
							 (off_t) valid, limit, consume, arg);
}

/*
 * Copy the rows this spool reads from the job's kept file into a file of
 * its own, and let the kept file go.  For a kept file that was removed:
 * the session keeps the rows it holds, and the disk the removed file takes,
 * which no kept-size limit counts any more, is given back; the spool's own
 * file counts against temp_file_limit.  No reader may be open (positions
 * are offsets in the kept file), and the job has ended (nothing is
 * appended).  On error the kept file stays in use and the copy is dropped
 * at the next attempt.
 */
void
bg_spool_unkeep(BgSpool *sp)
{
	BgSpoolReader *rd = &sp->copy;
	HeapTupleData tuple;
	int64		row;

	Assert(sp->kept_fd >= 0 && sp->file < 0);
	memset(rd, 0, sizeof(BgSpoolReader));
	rd->row = sp->mem_rows;
	rd->in_file = true;
	rd->offset = sp->kept_start;
	for (row = sp->mem_rows; row < sp->nrows; row++)
	{
		bg_spool_read_kept(sp, rd, &tuple);
		bg_spool_append_file(sp, (MinimalTuple) ((char *) tuple.t_data +
												 MINIMAL_TUPLE_OFFSET));
		CHECK_FOR_INTERRUPTS();
	}
	bg_spool_unkeep_cleanup(sp, true);
}

/*
 * After bg_spool_unkeep, done or cut short by an error: free its reader's
 * buffers; once done, let the kept file go, else drop the partial copy and
 * its buffer (the kept file is still read, and the next attempt starts
 * afresh).
 */
void
bg_spool_unkeep_cleanup(BgSpool *sp, bool done)
{
	if (sp->copy.buf)
		pfree(sp->copy.buf);
	if (sp->copy.row_buf)
		pfree(sp->copy.row_buf);
	memset(&sp->copy, 0, sizeof(BgSpoolReader));
	if (done)
	{
		bg_spool_close_kept(sp);
		sp->file_no++;
		return;
	}
	if (sp->file >= 0)
		FileClose(sp->file);
	sp->file = -1;
	sp->file_size = 0;
	if (sp->wbuf)
		pfree(sp->wbuf);
	sp->wbuf = NULL;
	sp->wbuf_size = 0;
	sp->wbuf_used = 0;
}

static void
bg_spool_close_kept(BgSpool *sp)
{
	close(sp->kept_fd);
	ReleaseExternalFD();
	bg_spool_kept_fds--;
	sp->kept_fd = -1;
	sp->kept_job = 0;
	sp->tail_len = 0;
	bg_spool_free_tail(sp);
}

/*
 * The memory part is full: go on in the job's kept file, if it keeps one
 * and a file descriptor is free to hold it open.
 */
static bool
bg_spool_open_kept(BgSpool *sp)
{
	off_t		rows_start;

	if (sp->kept_job == 0 || bg_spool_kept_fds >= BG_SPOOL_MAX_KEPT_FDS)
		return false;
	sp->kept_path = MemoryContextAlloc(sp->cxt, MAXPGPATH);
	sp->kept_fd = bg_keep_open_rows(sp->kept_job, sp->kept_path, &rows_start);
	if (sp->kept_fd < 0)
	{
		sp->kept_job = 0;
		return false;
	}
	bg_spool_kept_fds++;
	sp->kept_start = rows_start + sp->kept_bytes;
	sp->kept_end = sp->kept_start;
	sp->tail_off = sp->kept_start;
	return true;
}

/*
 * A row past memory is in the kept file at kept_end, or will be once the
 * worker writes it out: keep a copy in the tail until then.  The newest row
 * stays there in any case, for the scan that took it off the queue reads it
 * next: from memory, not with a read of the file for each row.
 */
static void
bg_spool_append_kept(BgSpool *sp, MinimalTuple tuple)
{
	BgKeepRecord rec;
	Size		len = sizeof(rec) + tuple->t_len;
	char	   *dest;

	bg_spool_trim_tail(sp);
	if (!bg_spool_tail_has_room(sp, len))
	{
		/* move the tail to the start of its buffer, or grow it */
		if (sp->tail_len > 0)
			memmove(sp->tail, sp->tail + sp->tail_head, sp->tail_len);
		sp->tail_head = 0;
		if (sp->tail_len + len > sp->tail_size)
		{
			Size		size = Max(BG_SPOOL_IO_SIZE, 2 * (sp->tail_len + len));
			char	   *tail = MemoryContextAllocHuge(sp->cxt, size);

			if (sp->tail)
			{
				memcpy(tail, sp->tail, sp->tail_len);
				pfree(sp->tail);
			}
			sp->tail = tail;
			sp->tail_size = size;
		}
	}
	/* read back from here only, by this session: no CRC */
	rec.len = tuple->t_len;
	rec.crc = 0;
	dest = sp->tail + sp->tail_head + sp->tail_len;
	memcpy(dest, &rec, sizeof(rec));
	memcpy(dest + sizeof(rec), tuple, tuple->t_len);
	sp->tail_len += len;
	sp->kept_end += len;
}

/*
 * The job has ended with "nrows" rows, whose records end at "valid" in its
 * kept file, and its queue is to go: the rows this session has not taken
 * off it are read from the file too, from where the taken ones end.  False
 * if the file cannot be held open (no descriptor to spare, the file gone,
 * or the rows past memory already in a file of the session's own).
 */
bool
bg_spool_adopt_kept(BgSpool *sp, int64 nrows, uint64 valid)
{
	if (sp->kept_fd < 0 && (sp->file >= 0 || !bg_spool_open_kept(sp)))
		return false;
	bg_spool_set_valid(sp, valid);
	/* the rows taken off the queue are all in the file: the tail goes */
	bg_spool_trim_tail(sp);
	Assert(sp->tail_len == 0 && sp->kept_end <= (off_t) valid);
	sp->kept_end = sp->tail_off = (off_t) valid;
	bg_spool_free_tail(sp);
	sp->nrows = nrows;
	return true;
}

/* Drop from the tail the rows the worker has written out. */
static void
bg_spool_trim_tail(BgSpool *sp)
{
	off_t		upto = Min(sp->kept_valid, sp->kept_end);

	if (upto <= sp->tail_off)
		return;
	Assert((Size) (upto - sp->tail_off) <= sp->tail_len);
	sp->tail_head += upto - sp->tail_off;
	sp->tail_len -= upto - sp->tail_off;
	sp->tail_off = upto;
	if (sp->tail_len == 0)
		sp->tail_head = 0;
}

/* Room for a row of "len" bytes at the end of the memory part. */
static char *
bg_spool_reserve(BgSpool *sp, Size len)
{
	char	   *dest;
	int			last = sp->nblocks - 1;
	Size		size;
	char	   *block;

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
		/* small results, as most are, take little of the session's memory */
		size = Max(Min(BG_SPOOL_BLOCK_SIZE,
					   BG_SPOOL_FIRST_BLOCK_SIZE << Min(sp->nblocks, 6)), len);
		block = MemoryContextAllocHuge(sp->cxt, size);
		last = sp->nblocks++;
		sp->block_size[last] = size;
		sp->block_used[last] = 0;
		sp->blocks[last] = block;
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
		rd->offset = sp->kept_fd >= 0 ? sp->kept_start : 0;
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
	else if (sp->kept_fd >= 0)
		bg_spool_read_kept(sp, rd, tuple);
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

/*
 * The kept row of "len" bytes at the reader's offset, read, with its CRC
 * checked; the CRCs of the whole rows after it that its read buffer holds
 * are checked with it, three side by side.
 */
static char *
bg_spool_check_kept(BgSpool *sp, BgSpoolReader *rd, uint32 len)
{
	char	   *data = bg_spool_read_file(sp, rd, sizeof(BgKeepRecord) + len);
	char	   *end;

	if (rd->offset < rd->checked_to)
		return data;
	end = rd->buf + Min((off_t) rd->buf_len, sp->kept_end - rd->buf_start);
	rd->checked_to = rd->offset + (bg_keep_crc_records(data, end, false) - data);
	if (rd->checked_to <= rd->offset)
		bg_keep_row_damaged(sp->kept_path, rd->offset, true);
	return data;
}

/*
 * The reader's next row past memory, from the job's kept file or the tail,
 * copied into the reader's buffer as a heap tuple.  The rows were written
 * by the job's worker as it sent them here: a row read from the file must
 * end within what this session counted, and match its CRC.
 */
static void
bg_spool_read_kept(BgSpool *sp, BgSpoolReader *rd, HeapTuple tuple)
{
	BgKeepRecord rec;
	const char *data;
	bool		from_file = rd->offset < sp->tail_off;

	if (from_file)
		data = bg_spool_read_file(sp, rd, sizeof(rec));
	else
		data = sp->tail + sp->tail_head + (rd->offset - sp->tail_off);
	memcpy(&rec, data, sizeof(rec));
	if (rec.len < SizeofMinimalTupleHeader || rec.len > MaxAllocSize ||
		rd->offset + (off_t) (sizeof(rec) + rec.len) > sp->kept_end)
		bg_keep_row_damaged(sp->kept_path, rd->offset, false);
	if (from_file)
		data = bg_spool_check_kept(sp, rd, rec.len);
	tuple->t_len = MINIMAL_TUPLE_OFFSET + rec.len;
	tuple->t_data = (HeapTupleHeader) bg_spool_row_buf(sp, rd, tuple->t_len);
	/* the heap header a MinimalTuple lacks reads as zeroes (xmin, ...) */
	memset(tuple->t_data, 0, MINIMAL_TUPLE_OFFSET);
	memcpy((char *) tuple->t_data + MINIMAL_TUPLE_OFFSET, data + sizeof(rec),
		   rec.len);
	/* (a row that says it is longer than its record would be read past it) */
	if (((MinimalTuple) ((char *) tuple->t_data + MINIMAL_TUPLE_OFFSET))->t_len !=
		rec.len)
		bg_keep_row_damaged(sp->kept_path, rd->offset, false);
	rd->offset += sizeof(rec) + rec.len;
}

/* The reader's row buffer, of at least len bytes */
static char *
bg_spool_row_buf(BgSpool *sp, BgSpoolReader *rd, Size len)
{
	if (len > rd->row_size)
	{
		if (rd->row_buf)
			pfree(rd->row_buf);
		rd->row_size = Max(len, 2 * rd->row_size);
		rd->row_buf = MemoryContextAllocHuge(sp->cxt, rd->row_size);
	}
	return rd->row_buf;
}

/* Rebuild a row kept in the file as a heap tuple in the reader's buffer. */
static void
bg_spool_unpack(BgSpool *sp, BgSpoolReader *rd, const char *rec, uint32 body,
				HeapTuple tuple)
{
	Size		len = offsetof(HeapTupleHeaderData, t_infomask2) + body;
	uint32		t_len = MINIMAL_TUPLE_DATA_OFFSET + body;

	(void) bg_spool_row_buf(sp, rd, len);
	memset(rd->row_buf, 0, offsetof(HeapTupleHeaderData, t_infomask2));
	memcpy(rd->row_buf + MINIMAL_TUPLE_OFFSET, &t_len, sizeof(uint32));
	memcpy(rd->row_buf + offsetof(HeapTupleHeaderData, t_infomask2),
		   rec + sizeof(uint32), body);
	tuple->t_len = len;
	tuple->t_data = (HeapTupleHeader) rd->row_buf;
}

static const char *
bg_spool_path(BgSpool *sp)
{
	return sp->kept_fd >= 0 ? sp->kept_path : FilePathName(sp->file);
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

	if (rd->buf != NULL && rd->buf_file == sp->file_no &&
		off >= rd->buf_start && off + need <= rd->buf_start + rd->buf_len)
		return rd->buf + (off - rd->buf_start);

	if (need > rd->buf_size)
	{
		if (rd->buf)
			pfree(rd->buf);
		rd->buf_size = Max(need, BG_SPOOL_IO_SIZE);
		rd->buf = MemoryContextAllocHuge(sp->cxt, rd->buf_size);
	}
	if (sp->kept_fd >= 0)
	{
		/* the kept file, as far as the worker has written it out */
		pgstat_report_wait_start(WAIT_EVENT_BUFFILE_READ);
		got = (int) pg_pread(sp->kept_fd, rd->buf,
							 Min(rd->buf_size, (Size) (sp->tail_off - off)), off);
		pgstat_report_wait_end();
	}
	else
		got = FileRead(sp->file, rd->buf,
					   (int) Min(rd->buf_size, (Size) (sp->file_size - off)),
					   off, WAIT_EVENT_BUFFILE_READ);
	if (got < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read from file \"%s\": %m",
						bg_spool_path(sp))));
	if ((Size) got < need)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("could not read from file \"%s\": read only %d of %zu bytes",
						bg_spool_path(sp), got, need)));
	rd->buf_start = off;
	rd->buf_len = got;
	rd->buf_file = sp->file_no;
	rd->checked_to = 0;
	return rd->buf;
}
