/*-------------------------------------------------------------------------
 *
 * keep.c
 *		  A job's kept result: the file its worker writes as its rows go out,
 *		  which any session with the job role's privileges reads later, like
 *		  nohup's output file.
 *
 * A kept result must outlive the job's segment, its session and a restart,
 * so it cannot be a BufFile of a file set (those live in base/pgsql_tmp,
 * which every server start wipes).  Each is a plain file of fd.c,
 * base/<database>/pgsql_tmp_bg_fdw/<job id>: inside the database's directory
 * it goes away with DROP DATABASE; the "pgsql_tmp" prefix keeps it out of
 * base backups, pg_checksums and pg_rewind; the startup sweep of temporary
 * files does not look there.  The registry row records the file's size once
 * the job has committed: a size in the registry always names a whole file.
 *
 * The layout:
 *		header	magic, the length and CRC of the column list, the column list:
 *				each column's type, with its length, by-value and alignment,
 *				which a reader checks against the catalog before anything
 *				else (a type may be dropped or recreated while the result is
 *				kept), then bg_desc_serialize's description
 *		rows	per row: length, CRC-32C of the bytes, the MinimalTuple
 *		footer	a length of BG_KEEP_FOOTER, then the row count and the offset
 *				where the rows end, and their CRC
 *
 * The worker appends every row before it offers it to its queue, so what
 * the queue delivered is always in the file too.  It buffers its writes,
 * enforces bg_fdw.max_result_size and temp_file_limit itself (fd.c does so
 * only for temporary files), and at the end writes the footer.  Once the
 * job has committed (so that its readers do not wait for it), it fsyncs the
 * file and its directory, then records the size in the registry: a size in
 * the registry always names a durable, whole file.  A job that fails
 * removes its file; a crash leaves files that the registry does not name as
 * kept, which the sweep removes.
 *
 * Readers open the file as a transient file, closed with their transaction
 * whatever happens, and check each record's CRC.
 *
 * Removing a kept result (bg_forget, expiry, a lost job) happens when the
 * transaction that removed its registry row commits.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/keep.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_database.h"
#include "catalog/objectaccess.h"
#include "catalog/pg_extension.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "catalog/pg_type.h"
#include "common/relpath.h"
#include "libpq/pqformat.h"
#include "miscadmin.h"
#include "port/pg_crc32c.h"
#include "storage/condition_variable.h"
#include "storage/fd.h"
#include "storage/fileset.h"
#include "storage/shm_toc.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/resowner.h"
#include "utils/syscache.h"
#include "utils/wait_event.h"

#include "bg_fdw.h"

#define BG_KEEP_DIR			"pgsql_tmp_bg_fdw"
/* after the job id: the messages file of a running job (messages.c) */
#define BG_KEEP_MESSAGES_SUFFIX	".messages"
#define BG_KEEP_MAGIC		"BGFDWKR1"
#define BG_KEEP_FOOTER		0xFFFFFFFF
/*
 * The worker writes its rows out in blocks of BG_KEEP_WRITE_SIZE: the
 * kernel then gives the page cache large folios and starts the writeback
 * of each block as one (BG_KEEP_WRITEBACK_AFTER), which made the default
 * mode read wide rows a tenth faster than 256 kB blocks did, and 512 kB or
 * 2 MB no faster (BENCHMARKS.md).  A block the job wrote out early, for
 * readers following it (bg_keep_publish), is followed by a shorter one,
 * so that blocks end on multiples of BG_KEEP_WRITE_SIZE again: the
 * kernel's pages and folios are then written whole, not twice, the second
 * time after they have gone to disk.  Readers read BG_KEEP_READ_SIZE at a
 * time, which keeps what they read in the CPU's cache.
 */
#define BG_KEEP_WRITE_SIZE	(1024 * 1024)
#define BG_KEEP_READ_SIZE	(256 * 1024)

/*
 * A kept result is written once and read mostly through the job's queue,
 * so its pages are of little use in the kernel's page cache, where a large
 * one would push out the database's own.  As PostgreSQL's bulk writes go
 * through a small ring of buffers, the writer asks the kernel to start
 * writing back every BG_KEEP_WRITEBACK_AFTER bytes it writes (as
 * backend_flush_after does), and drops from the cache what lies more than
 * BG_KEEP_CACHED behind the end, once written back.  The kernel then reuses
 * the same few pages for the whole file instead of taking new ones for
 * every block, which is most of what writing the file costs where fresh
 * memory is slow to come by (a virtual machine whose host takes back freed
 * memory), and the fsync at the end has little left to write.  Results
 * within BG_KEEP_CACHED stay cached whole, and readers that follow the job
 * read what it wrote last, unless the kernel took the writes uncached (see
 * below).
 */
#define BG_KEEP_WRITEBACK_AFTER	(1024 * 1024)
#define BG_KEEP_CACHED		(32 * 1024 * 1024)

/*
 * Past BG_KEEP_CACHED, the writer also gives the file its disk ahead of the
 * writes, BG_KEEP_EXTEND bytes at a time, without changing its size
 * (fallocate with FALLOC_FL_KEEP_SIZE): the file system then maps each page
 * written to blocks it already has instead of reserving and allocating them
 * one page at a time, which took a tenth of what the default mode's reads
 * of wide rows cost (BENCHMARKS.md).  Readers see nothing of it, for the
 * size is that of what was written, and the end of the job gives back what
 * was not used (the truncate in bg_keep_finish).
 */
#define BG_KEEP_EXTEND		(16 * 1024 * 1024)

/*
 * Where the kernel can (Linux 6.14 and later, on file systems that support
 * it), the writer writes past BG_KEEP_CACHED uncached (RWF_DONTCACHE): the
 * kernel starts the writeback of each block itself and drops its pages once
 * they are on disk.  That does what the writeback window does at a third of
 * its cost in system time, for the window's calls walk the page cache again
 * and drop only what is clean when they come, leaving the rest for memory
 * pressure to find: reading wide rows in the default mode took from 14%
 * to 35% less time (BENCHMARKS.md).  Readers that follow the job then
 * read its latest blocks from disk.  Elsewhere pwritev2 refuses the flag
 * before it writes anything (EOPNOTSUPP, or ENOSYS where the call itself is
 * filtered out), and the writer falls back to the window for good
 * (bg_ring_pwrite).
 */

/*
 * Past its first BG_KEEP_RING_AFTER bytes, the writer hands its blocks to a
 * ring that the launching session helps write out while it waits for rows
 * (ring.c): in a narrow result read as it comes, that is most of what
 * keeping costs over not keeping (BENCHMARKS.md).  A result of a few
 * blocks is not worth the ring's segment.  The first block past
 * BG_KEEP_CACHED the worker writes itself, after the ring is written out:
 * the ring goes on with it uncached if the kernel took it so, and ends
 * otherwise, leaving the rest to the writeback window.
 */
#define BG_KEEP_RING_AFTER	(4 * BG_KEEP_WRITE_SIZE)

/*
 * The CRC-32C instruction of x86-64 takes three cycles to give its result
 * but can start one every cycle: the CRCs of three rows computed side by
 * side take the time of one.  Rows that fit in the write buffer get theirs
 * when it is written out, three at a time (bg_keep_crc_records), and
 * readers check the rows of each block they read the same way.  Computed
 * one row at a time, as the rows came, the CRCs made a narrow result 18%
 * slower to read than one not kept (BENCHMARKS.md).
 */
#if defined(__x86_64__) && defined(__GNUC__)
#define BG_KEEP_CRC_X3
#include <nmmintrin.h>
#endif

/* Largest kept result of one job, in kB; -1: no limit but temp_file_limit */
int			bg_max_result_size = 1024 * 1024;

/* Largest total of the kept results of the cluster, in kB; -1: no limit */
int			bg_max_kept_size = BG_DEFAULT_MAX_KEPT_KB;

typedef struct BgKeepFileHeader
{
	char		magic[8];		/* BG_KEEP_MAGIC */
	uint32		cols_len;		/* bytes of the column list that follows */
	pg_crc32c	cols_crc;		/* its CRC-32C */
} BgKeepFileHeader;

typedef struct BgKeepFooter
{
	uint64		rows;			/* rows kept */
	uint64		rows_end;		/* offset where the rows end */
} BgKeepFooter;

/*
 * Bytes of a kept file read a block at a time, for those who read it through
 * fd.c in order: the worker reading rows back (spill.c) and the launching
 * session copying them (bg_keep_scan_rows).  A row at a time, that was two
 * reads per row.
 */
typedef struct BgKeepBlocks
{
	File		file;			/* the file, or -1 with fd below */
	int			fd;				/* a plain descriptor, where file is -1 */
	const char *path;			/* the file's name, for errors */
	char	   *buf;			/* bytes of the file from start */
	Size		size;
	off_t		start;
	Size		len;
	MemoryContext cxt;			/* where buf lives */
} BgKeepBlocks;

/* The worker's kept file, while its last statement runs */
struct BgKeepWriter
{
	File		file;			/* the file, open for the writer's life */
	char		path[MAXPGPATH];
	off_t		written;		/* bytes in the file */
	off_t		writeback;		/* bytes whose writeback was started */
	off_t		extended;		/* the file has its disk up to here */
	bool		extend_failed;	/* the file system refused: no more tries */
	bool		uncached;		/* the last block went uncached */
	bool		uncached_failed;	/* the kernel refused: no more tries */
	BgRing	   *ring;			/* blocks written by whoever is free */
	dsm_segment *ring_seg;
	bool		ring_tried;
	char	   *own_buf;		/* buf, when not a block of the ring */
	char	   *buf;			/* bytes not yet written */
	Size		buf_len;
	Size		buf_room;		/* bytes buf may hold: to a block's end */
	uint64		rows;
	int64		limit;			/* bytes a job may keep, or -1 */
	bool		limit_is_temp;	/* the limit is temp_file_limit's */
	off_t		record_end;		/* end of the last whole record appended */
	/* records in buf[unsummed, unsummed_end) have no CRC yet */
	Size		unsummed;
	Size		unsummed_end;
	BgJobShared *shared;		/* where sizes are published */
	BgKeepBlocks back;			/* for rows read back, once there are some */
};

/* A reader of a kept result, for one scan */
struct BgKeepReader
{
	int			fd;				/* transient file, or -1 (none, or closed) */
	int			pid;			/* for messages */
	char	   *path;
	TupleDesc	desc;			/* the result's columns */
	off_t		rows_start;		/* first row */
	off_t		rows_end;		/* end of the rows */
	off_t		pos;			/* next record */
	char	   *buf;			/* file bytes from buf_start */
	Size		buf_size;
	off_t		buf_start;
	Size		buf_len;
	off_t		checked_to;		/* rows in buf before it match their CRCs */
	MemoryContext cxt;			/* where row lives: not the scan's per-row
								 * context, which is reset between rows */
	char	   *row;			/* the current row, MAXALIGNed for t_data */
	Size		row_size;
	HeapTupleData tuple;		/* the current row */
	char	   *command;		/* the completion tag, if only that is kept */
	bool		command_done;	/* the tag row was returned */
	/* while the job runs, the reader follows its file */
	int64		job_id;
	bool		live;			/* the job's end is not known yet */
	dsm_handle	handle;			/* its segment */
	dsm_segment *seg;			/* mapped, while waiting for more rows */
	uint64		mapping;		/* the serial of that mapping */
	BgJobShared *shared;
	BgWaitCycle cycle;			/* what the last deadlock check saw */
};

/*
 * The writer of this worker, from creation until the job's commit; a job
 * that fails removes the file.  Lives in TopMemoryContext.
 */
static BgKeepWriter *bg_keep_active = NULL;

/* Files whose removal waits for the end of the transaction */
typedef struct BgKeepPending
{
	int64		job_id;
	int			nestlevel;		/* transaction nesting level that asked */
	struct BgKeepPending *next;
} BgKeepPending;

static BgKeepPending *bg_keep_pending = NULL;
static bool bg_keep_callbacks_registered = false;

static object_access_hook_type prev_object_access_hook = NULL;

PG_FUNCTION_INFO_V1(bg_fdw_drop_start);

static void bg_keep_path(char *path, int64 job_id);
static void bg_keep_dir(char *path);
static int64 bg_keep_dir_bytes(const char *dir);
static int64 bg_keep_count_cluster(void);
static void bg_keep_flush(BgKeepWriter *w);
static const char *bg_keep_blocks_get(BgKeepBlocks *b, off_t offset, Size n);
static void bg_keep_scan(BgKeepBlocks *b, off_t from, off_t to, Size limit,
						 void (*consume) (void *arg, char *data, uint32 len),
						 void *arg);
static uint32 bg_keep_record_len(const char *rec);
static bool bg_keep_whole_record(const char *p, const char *end);
static pg_crc32c bg_keep_crc_one(const char *rec);
#ifdef BG_KEEP_CRC_X3
static void bg_keep_crc_x3(char *rec[3], pg_crc32c crc[3]);
#endif
static void bg_keep_writeback(BgKeepWriter *w);
static void bg_keep_extend(BgKeepWriter *w);
static int	bg_keep_write_block(BgKeepWriter *w);
static void bg_keep_hand_off(BgKeepWriter *w);
static void bg_keep_start_ring(BgKeepWriter *w);
static void bg_keep_ring_write(void *arg, const char *data, Size len,
							   off_t offset, bool uncached);
static void bg_keep_drain(BgKeepWriter *w);
static void bg_keep_end_ring(BgKeepWriter *w);
static void bg_keep_write(BgKeepWriter *w, const char *data, Size len);
static void bg_keep_put(BgKeepWriter *w, const char *data, Size len);
static void bg_keep_check_limit(BgKeepWriter *w, Size more);
static void bg_keep_write_header(BgKeepWriter *w, TupleDesc desc);
static void bg_keep_end_writer(bool remove);
static void bg_keep_damaged(BgKeepReader *r, const char *what);
static void bg_keep_check_ahead(BgKeepReader *r, BgKeepRecord *rec,
								const char *body);
static bool bg_keep_open_file(BgKeepReader *r, int64 job_id, bool missing_ok);
static void bg_keep_read_footer(BgKeepReader *r, int64 size);
static bool bg_keep_attach(BgKeepReader *r, dsm_handle handle);
static void bg_keep_detach(BgKeepReader *r);
static void bg_keep_reset_mappings(void);
static void bg_keep_register_callbacks(void);
static void bg_keep_sleep(BgKeepReader *r);
static void bg_keep_follow(BgKeepReader *r);
static void bg_keep_catch_up(BgKeepReader *r);
static void bg_keep_ended(BgKeepReader *r);
static char *bg_keep_read(BgKeepReader *r, off_t offset, Size len);
static void bg_keep_read_header(BgKeepReader *r);
static void bg_keep_check_types(BgKeepReader *r, StringInfo cols);
static void bg_keep_object_access(ObjectAccessType access, Oid classId,
								  Oid objectId, int subId, void *arg);
static void bg_keep_xact_callback(XactEvent event, void *arg);
static void bg_keep_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
									 SubTransactionId parentSubid, void *arg);

/* The directory of this database's kept results */
static void
bg_keep_dir(char *path)
{
	char	   *dbpath = GetDatabasePath(MyDatabaseId, MyDatabaseTableSpace);

	snprintf(path, MAXPGPATH, "%s/%s", dbpath, BG_KEEP_DIR);
	pfree(dbpath);
}

void
bg_keep_file_path(char *path, int64 job_id)
{
	bg_keep_path(path, job_id);
}

static void
bg_keep_path(char *path, int64 job_id)
{
	char		dir[MAXPGPATH];

	bg_keep_dir(dir);
	snprintf(path, MAXPGPATH, "%s/" INT64_FORMAT, dir, job_id);
}

/* The messages a running job has sent so far (messages.c) */
void
bg_keep_messages_path(char *path, int64 job_id)
{
	char		dir[MAXPGPATH];

	bg_keep_dir(dir);
	snprintf(path, MAXPGPATH, "%s/" INT64_FORMAT BG_KEEP_MESSAGES_SUFFIX,
			 dir, job_id);
}

/*
 * Refuse to launch a job that keeps its result while the kept results of
 * the whole cluster take bg_fdw.max_kept_size: roles each within their own
 * limit must not fill the disk together.  The files themselves are counted,
 * in every database's directory, so that running jobs count with what they
 * wrote so far and nothing needs to be shared between databases.  Counting
 * stats every file, so a session counts at most once a second: launches in
 * between reuse a count under the limit (each job is bounded by
 * bg_fdw.max_result_size).
 */
void
bg_keep_check_cluster(void)
{
	int64		total;

	if (bg_max_kept_size < 0)
		return;
	total = bg_keep_cluster_bytes(false);
	/* a count over the limit is never reused: a launch after bg_forget */
	if (total >= (int64) bg_max_kept_size * 1024)
		total = bg_keep_cluster_bytes(true);
	if (total >= (int64) bg_max_kept_size * 1024)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("kept results of the cluster exceed \"bg_fdw.max_kept_size\" (%dkB)",
						bg_max_kept_size),
				 errhint("Forget results no longer needed with bg_forget(pid), or launch with keep => false.")));
}

/*
 * Bytes of the kept results of all databases, running jobs' included, as a
 * count of at most a second ago unless "fresh": counting stats every file,
 * and any role may ask (bg_supervisor()).
 */
int64
bg_keep_cluster_bytes(bool fresh)
{
	static TimestampTz counted_at = 0;
	static int64 total = 0;
	TimestampTz now = GetCurrentTimestamp();

	if (fresh || counted_at == 0 || now - counted_at >= USECS_PER_SEC)
	{
		total = bg_keep_count_cluster();
		counted_at = now;
	}
	return total;
}

/* Count the bytes of the kept results of all databases */
static int64
bg_keep_count_cluster(void)
{
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tuple;
	int64		total = 0;

	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while ((tuple = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tuple);
		char	   *dbpath = GetDatabasePath(db->oid, db->dattablespace);
		char		dir[MAXPGPATH];

		snprintf(dir, MAXPGPATH, "%s/%s", dbpath, BG_KEEP_DIR);
		total += bg_keep_dir_bytes(dir);
		pfree(dbpath);
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	return total;
}

/* Bytes of the files in a kept results' directory, which may not exist */
static int64
bg_keep_dir_bytes(const char *dir)
{
	DIR		   *d = AllocateDir(dir);
	struct dirent *de;
	int64		total = 0;

	if (d == NULL && errno == ENOENT)
		return 0;
	while ((de = ReadDirExtended(d, dir, LOG)) != NULL)
	{
		char		path[MAXPGPATH];
		struct stat st;

		snprintf(path, MAXPGPATH, "%s/%s", dir, de->d_name);
		if (de->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode))
			total += st.st_size;
	}
	FreeDir(d);
	return total;
}

/* ----------------------------------------------------------------
 *		The worker's side
 * ----------------------------------------------------------------
 */

/*
 * Create this database's directory of kept results, if need be, durably.
 * A failure is reported at elevel; below ERROR, false says so.
 */
bool
bg_keep_make_dir(int elevel)
{
	char		dir[MAXPGPATH];
	char	   *dbpath;
	bool		ok;

	bg_keep_dir(dir);
	if (MakePGDirectory(dir) != 0)
	{
		if (errno == EEXIST)
			return true;
		ereport(elevel,
				(errcode_for_file_access(),
				 errmsg("could not create directory \"%s\": %m", dir)));
		return false;
	}

	/*
	 * A failed fsync fails the job, which discards the file and records
	 * nothing: ERROR, not the PANIC data files need.  Below ERROR, the
	 * directory goes, so that the next one to want it makes it again.
	 */
	dbpath = GetDatabasePath(MyDatabaseId, MyDatabaseTableSpace);
	ok = fsync_fname_ext(dir, true, false, elevel) == 0 &&
		fsync_fname_ext(dbpath, true, false, elevel) == 0;
	pfree(dbpath);
	if (!ok)
		(void) rmdir(dir);
	return ok;
}

/*
 * Create the job's kept file, with its header, for a result of these columns.
 */
BgKeepWriter *
bg_keep_create(BgJobShared *shared, TupleDesc desc)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);
	BgKeepWriter *w = palloc0(sizeof(BgKeepWriter));

	(void) bg_keep_make_dir(ERROR);
	bg_keep_path(w->path, shared->job_id);
	w->buf = w->own_buf = palloc(BG_KEEP_WRITE_SIZE);
	w->buf_room = BG_KEEP_WRITE_SIZE;
	w->shared = shared;
	w->limit = bg_max_result_size < 0 ? -1 : (int64) bg_max_result_size * 1024;
	if (temp_file_limit >= 0 &&
		(w->limit < 0 || (int64) temp_file_limit * 1024 < w->limit))
	{
		w->limit = (int64) temp_file_limit * 1024;
		w->limit_is_temp = true;
	}
	/* readable by the server only */
	w->file = PathNameOpenFilePerm(w->path, O_CREAT | O_EXCL | O_RDWR | PG_BINARY,
								   S_IRUSR | S_IWUSR);
	if (w->file < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not create file \"%s\": %m", w->path)));
	bg_keep_active = w;
	MemoryContextSwitchTo(oldcxt);
	bg_keep_write_header(w, desc);
	/* readers following the job wait for the header: it goes out now */
	w->record_end = w->written + w->buf_len;
	bg_keep_flush(w);
	return w;
}

static void
bg_keep_write_header(BgKeepWriter *w, TupleDesc desc)
{
	BgKeepFileHeader hdr;
	StringInfoData cols;
	int			i;

	initStringInfo(&cols);
	pq_sendint16(&cols, desc->natts);
	for (i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		pq_sendint32(&cols, att->atttypid);
		pq_sendint16(&cols, att->attlen);
		pq_sendbyte(&cols, att->attbyval ? 1 : 0);
		pq_sendbyte(&cols, att->attalign);
	}
	bg_desc_serialize(&cols, desc);
	memcpy(hdr.magic, BG_KEEP_MAGIC, sizeof(hdr.magic));
	hdr.cols_len = cols.len;
	INIT_CRC32C(hdr.cols_crc);
	COMP_CRC32C(hdr.cols_crc, cols.data, cols.len);
	FIN_CRC32C(hdr.cols_crc);
	bg_keep_write(w, (char *) &hdr, sizeof(hdr));
	bg_keep_write(w, cols.data, cols.len);
	pfree(cols.data);
}

/*
 * Refuse to grow the file past the limit, as fd.c does for temporary files.
 */
static void
bg_keep_check_limit(BgKeepWriter *w, Size more)
{
	int64		size = (int64) w->written + w->buf_len + more;

	if (w->limit < 0 || size <= w->limit)
		return;
	if (w->limit_is_temp)
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("temporary file size exceeds \"temp_file_limit\" (%dkB)",
						temp_file_limit),
				 errdetail("The kept result of the background job grew past it.")));
	ereport(ERROR,
			(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
			 errmsg("kept result of background job exceeds \"bg_fdw.max_result_size\" (%dkB)",
					bg_max_result_size),
			 errhint("Launch the job with keep => false, or ask a superuser to raise \"bg_fdw.max_result_size\".")));
}

/* Append bytes, through the buffer, within the limit. */
static void
bg_keep_write(BgKeepWriter *w, const char *data, Size len)
{
	bg_keep_check_limit(w, len);
	bg_keep_put(w, data, len);
}

/* Append bytes, through the buffer; the caller checked the limit. */
static void
bg_keep_put(BgKeepWriter *w, const char *data, Size len)
{
	while (len > 0)
	{
		Size		n = Min(len, w->buf_room - w->buf_len);

		memcpy(w->buf + w->buf_len, data, n);
		w->buf_len += n;
		data += n;
		len -= n;
		if (w->buf_len == w->buf_room)
			bg_keep_flush(w);
	}
}

/*
 * Write out the buffer.  A write that failed is cut back, so that the file
 * never holds part of a block; the job then fails with the error.
 */
static void
bg_keep_flush(BgKeepWriter *w)
{
	int			n;

	if (w->buf_len == 0)
		return;
	(void) bg_keep_crc_records(w->buf + w->unsummed, w->buf + w->unsummed_end,
							   true);
	w->unsummed = w->unsummed_end = 0;
	if (w->written + (off_t) w->buf_len > w->extended &&
		w->written >= BG_KEEP_CACHED && !w->extend_failed)
		bg_keep_extend(w);
	if (w->ring != NULL && (w->written < BG_KEEP_CACHED || w->uncached))
	{
		bg_keep_hand_off(w);
		return;
	}
	/* (the first block past the cached part: blocks before it are out) */
	bg_keep_drain(w);
	n = bg_keep_write_block(w);
	if (n != (int) w->buf_len)
	{
		int			save_errno = errno ? errno : ENOSPC;

		(void) FileTruncate(w->file, w->written, WAIT_EVENT_BUFFILE_TRUNCATE);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write to file \"%s\": %m", w->path)));
	}
	w->written += w->buf_len;
	w->buf_len = 0;
	w->buf_room = BG_KEEP_WRITE_SIZE - w->written % BG_KEEP_WRITE_SIZE;
	bg_keep_writeback(w);
	pg_atomic_write_u64(&w->shared->kept_size, (uint64) w->written);
	/* what readers may read: whole records, written out */
	if ((uint64) Min(w->record_end, w->written) >
		pg_atomic_read_u64(&w->shared->kept_valid))
	{
		pg_atomic_write_u64(&w->shared->kept_valid,
							(uint64) Min(w->record_end, w->written));
		ConditionVariableBroadcast(&w->shared->kept_cv);
	}
	if (w->ring != NULL && !w->uncached)
		bg_keep_end_ring(w);
	else if (w->ring == NULL && !w->ring_tried &&
			 w->written >= BG_KEEP_RING_AFTER &&
			 (w->written < BG_KEEP_CACHED || w->uncached))
	{
		w->ring_tried = true;
		bg_keep_start_ring(w);
	}
}

/*
 * Make the ring, where a segment is to be had.  A /dev/shm that is full
 * raises an error in dsm_create, which must not fail the job: it only
 * writes its blocks itself (no subtransaction in parallel mode, though: the
 * worker then writes them itself too).
 */
static void
bg_keep_start_ring(BgKeepWriter *w)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	if (IsInParallelMode() || !IsTransactionState())
		return;
	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		w->ring = bg_ring_create(w->shared, BG_KEEP_WRITE_SIZE, &w->ring_seg);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		/* a cancel is the job's; a shortage of memory is the ring's */
		if (ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_INSUFFICIENT_RESOURCES &&
			ERRCODE_TO_CATEGORY(edata->sqlerrcode) != ERRCODE_SYSTEM_ERROR)
			ReThrowError(edata);
		FreeErrorData(edata);
		w->ring = NULL;
		w->ring_seg = NULL;
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	if (w->ring != NULL)
		w->buf = bg_ring_block(w->ring);
}

/*
 * Hand the buffer to the ring, as the next block of the file, and go on
 * with the ring's next; whoever writes it publishes it to readers.
 */
static void
bg_keep_hand_off(BgKeepWriter *w)
{
	bg_ring_hand_off(w->ring, w->written, w->buf_len,
					 Min(w->record_end, w->written + (off_t) w->buf_len),
					 w->written >= BG_KEEP_CACHED);
	w->written += w->buf_len;
	w->buf_len = 0;
	w->buf_room = BG_KEEP_WRITE_SIZE - w->written % BG_KEEP_WRITE_SIZE;
	w->buf = bg_ring_next(w->ring, w->shared, false, bg_keep_ring_write, w);
}

/*
 * The worker writes a block of its ring itself; a write that failed is
 * cut back to the block's start, as in bg_keep_flush.
 */
static void
bg_keep_ring_write(void *arg, const char *data, Size len, off_t offset,
				   bool uncached)
{
	BgKeepWriter *w = arg;
	int			fd = FileGetRawDesc(w->file);
	ssize_t		n;

	/* (closed by fd.c meanwhile: a write through it opens it again) */
	if (fd < 0)
	{
		errno = 0;
		n = FileWrite(w->file, unconstify(char *, data), (int) len, offset,
					  WAIT_EVENT_BUFFILE_WRITE);
	}
	else
		n = bg_ring_pwrite(fd, data, len, offset, uncached);
	if (n != (ssize_t) len)
	{
		int			save_errno = errno ? errno : ENOSPC;

		(void) FileTruncate(w->file, offset, WAIT_EVENT_BUFFILE_TRUNCATE);
		errno = save_errno;
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not write to file \"%s\": %m", w->path)));
	}
}

/* Is the launching session writing one of our blocks? */
bool
bg_keep_reader_writes(BgKeepWriter *w)
{
	return w->ring != NULL && bg_ring_helped(w->ring);
}

/* Wait until every block handed to the ring is written out. */
static void
bg_keep_drain(BgKeepWriter *w)
{
	if (w->ring != NULL)
		(void) bg_ring_next(w->ring, w->shared, true, bg_keep_ring_write, w);
}

/* The ring is done with: what is left goes through the worker's buffer. */
static void
bg_keep_end_ring(BgKeepWriter *w)
{
	if (w->ring_seg == NULL)
		return;
	if (w->buf != w->own_buf)
	{
		memcpy(w->own_buf, w->buf, w->buf_len);
		w->buf = w->own_buf;
	}
	w->ring = NULL;
	bg_ring_end(w->shared, w->ring_seg);
	w->ring_seg = NULL;
}

/*
 * Write the buffer at the file's end; uncached past BG_KEEP_CACHED where
 * the kernel can (see above).  Returns what write(2) would, with errno set
 * on a short write as FileWrite sets it.
 */
static int
bg_keep_write_block(BgKeepWriter *w)
{
	int			fd = FileGetRawDesc(w->file);

	/* (a descriptor fd.c closed meanwhile is opened again by FileWrite) */
	if (w->written >= BG_KEEP_CACHED && !w->uncached_failed && fd >= 0)
	{
		ssize_t		n = bg_ring_pwrite(fd, w->buf, w->buf_len, w->written, true);

		if (n >= 0 || (errno != EOPNOTSUPP && errno != ENOSYS))
		{
			w->uncached = true;
			return (int) n;
		}
		w->uncached_failed = true;
	}
	w->uncached = false;
	errno = 0;
	return FileWrite(w->file, w->buf, (int) w->buf_len, w->written,
					 WAIT_EVENT_BUFFILE_WRITE);
}

/*
 * Give the file its disk for the next BG_KEEP_EXTEND bytes (see there),
 * never past the job's limit.  Only advice: where the file system refuses
 * (no fallocate, no space), the writes go on as they would without it, and
 * tell of a lack of space themselves.
 */
static void
bg_keep_extend(BgKeepWriter *w)
{
#if defined(__linux__) && defined(FALLOC_FL_KEEP_SIZE)
	int			fd = FileGetRawDesc(w->file);
	off_t		end;

	/* (closed meanwhile by fd.c: the next write opens it again) */
	if (fd < 0)
		return;
	w->extended = Max(w->extended, w->written);
	end = w->extended + BG_KEEP_EXTEND;
	if (w->limit >= 0)
		end = Min(end, (off_t) w->limit);
	if (end <= w->extended)
	{
		w->extend_failed = true;
		return;
	}
	if (fallocate(fd, FALLOC_FL_KEEP_SIZE, w->extended, end - w->extended) != 0)
	{
		/*
		 * Out of space, it may keep what it took before it failed: give that
		 * back now, for the disk is short, and others need it more than
		 * this file does.
		 */
		w->extend_failed = true;
		(void) FileTruncate(w->file, w->written, WAIT_EVENT_BUFFILE_TRUNCATE);
		return;
	}
	w->extended = end;
#else
	w->extend_failed = true;
#endif
}

/*
 * Start the writeback of what was written since the last time, and drop
 * from the cache what was written back long enough ago; see
 * BG_KEEP_CACHED.  Pages still dirty or under writeback stay where they
 * are: the kernel drops only clean ones, so nothing waits for the disk.
 *
 * Not FileWriteback: a failure there is a PANIC unless data_sync_retry is
 * on, since for the database's own files it means data lost; for a kept
 * file the fsync at the end tells (bg_keep_sync), and only the job's kept
 * result is lost.  Both calls are advice whose failures change nothing else.
 */
static void
bg_keep_writeback(BgKeepWriter *w)
{
	off_t		from = w->writeback;
	int			fd;

	if (w->written - from < BG_KEEP_WRITEBACK_AFTER)
		return;
	w->writeback = w->written;
	/* the kernel does it for uncached writes */
	if (w->uncached)
		return;
	/* (closed meanwhile by fd.c, to stay within max_files_per_process) */
	fd = FileGetRawDesc(w->file);
	if (fd < 0 || !enableFsync)
		return;
#ifdef HAVE_SYNC_FILE_RANGE
	pgstat_report_wait_start(WAIT_EVENT_DATA_FILE_FLUSH);
	(void) sync_file_range(fd, from, w->writeback - from, SYNC_FILE_RANGE_WRITE);
	pgstat_report_wait_end();
#endif
#ifdef USE_POSIX_FADVISE
	if (w->writeback > BG_KEEP_CACHED)
	{
		off_t		start = Max(from - BG_KEEP_CACHED, 0);

		(void) posix_fadvise(fd, start, w->writeback - BG_KEEP_CACHED - start,
							 POSIX_FADV_DONTNEED);
	}
#endif
}

/*
 * Write out the rows appended so far, for readers that follow the job
 * while it runs; called on a timer while rows flow.
 */
void
bg_keep_publish(BgKeepWriter *w)
{
	if (w->record_end > w->written)
	{
		bg_keep_flush(w);
		bg_keep_drain(w);
	}
}

/*
 * Keep one row, given as pieces of a MinimalTuple.  A row that fits in the
 * buffer gets its CRC when the buffer is written out; one that does not,
 * now, and goes through the buffer in pieces.
 */
void
bg_keep_append(BgKeepWriter *w, shm_mq_iovec *iov, int iovcnt)
{
	BgKeepRecord rec;
	int			i;

	rec.len = 0;
	for (i = 0; i < iovcnt; i++)
		rec.len += iov[i].len;
	bg_keep_check_limit(w, sizeof(rec) + rec.len);
	if (sizeof(rec) + rec.len <= w->buf_room - w->buf_len)
	{
		char	   *p = w->buf + w->buf_len;

		rec.crc = 0;
		memcpy(p, &rec, sizeof(rec));
		p += sizeof(rec);
		for (i = 0; i < iovcnt; i++)
		{
			memcpy(p, iov[i].data, iov[i].len);
			p += iov[i].len;
		}
		w->buf_len += sizeof(rec) + rec.len;
		w->unsummed_end = w->buf_len;
	}
	else
	{
		INIT_CRC32C(rec.crc);
		for (i = 0; i < iovcnt; i++)
			COMP_CRC32C(rec.crc, iov[i].data, iov[i].len);
		FIN_CRC32C(rec.crc);
		bg_keep_put(w, (char *) &rec, sizeof(rec));
		for (i = 0; i < iovcnt; i++)
			bg_keep_put(w, iov[i].data, iov[i].len);
		/* what the buffer holds now is this row's end */
		w->unsummed = w->unsummed_end = w->buf_len;
	}
	w->rows++;
	w->record_end = w->written + w->buf_len;
}

/*
 * A row stays in the kept file for want of room in the queue (spill.c):
 * the launching session may then be back while this worker is busy in its
 * query, or blocked there, and pushes no row.  Tell it, so that it reads
 * on from the file once its queue is empty rather than wait for us.
 */
void
bg_keep_set_aside(BgKeepWriter *w)
{
	/* (ours to write: a plain read first, this runs for every such row) */
	if (!w->shared->rows_aside)
		bg_job_set_flag(w->shared, &w->shared->rows_aside, BG_WAKE_LAUNCHER);
}

/* Where the rows appended so far end: where the next row's record starts */
off_t
bg_keep_rows_end(BgKeepWriter *w)
{
	return w->record_end;
}

/*
 * Bytes [offset, offset + n) of a file, through the block buffer: a pointer
 * into it, valid until the next call.  The file must hold them all.
 */
static const char *
bg_keep_blocks_get(BgKeepBlocks *b, off_t offset, Size n)
{
	int			got;

	if (offset >= b->start && offset + n <= b->start + b->len)
		return b->buf + (offset - b->start);
	if (b->buf == NULL || n > b->size)
	{
		Size		size = Max(n, BG_KEEP_READ_SIZE);

		if (b->buf)
			pfree(b->buf);
		b->len = 0;
		b->buf = MemoryContextAlloc(b->cxt, size);
		b->size = size;
	}
	if (b->file >= 0)
		got = FileRead(b->file, b->buf, (int) b->size, offset, WAIT_EVENT_BUFFILE_READ);
	else
	{
		pgstat_report_wait_start(WAIT_EVENT_BUFFILE_READ);
		got = pg_pread(b->fd, b->buf, b->size, offset);
		pgstat_report_wait_end();
	}
	if (got < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", b->path)));
	b->start = offset;
	b->len = got;
	if ((Size) got < n)
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("kept result in file \"%s\" is damaged", b->path),
				 errdetail("It is shorter than its worker wrote.")));
	return b->buf;
}

static void
bg_keep_blocks_free(BgKeepBlocks *b)
{
	if (b->buf)
		pfree(b->buf);
	b->buf = NULL;
	b->len = 0;
}

/* Bytes [offset, offset + n) of the file: what is written out, then the buffer */
static void
bg_keep_copy_out(BgKeepWriter *w, off_t offset, char *dst, Size n)
{
	if (offset < w->written)
	{
		Size		from_file = Min(n, (Size) (w->written - offset));

		uint64		kept;

		/* blocks still in the ring are written out first */
		if ((uint64) (offset + from_file) >
			pg_atomic_read_u64(&w->shared->kept_size))
			bg_keep_drain(w);
		kept = pg_atomic_read_u64(&w->shared->kept_size);

		w->back.file = w->file;
		w->back.path = w->path;
		w->back.cxt = TopMemoryContext;
		memcpy(dst, bg_keep_blocks_get(&w->back, offset, from_file), from_file);
		/*
		 * What the read took past the blocks written out then (holes, or a
		 * block the session was writing) is not kept for later reads.
		 */
		if (w->ring != NULL && (uint64) (w->back.start + w->back.len) > kept)
			w->back.len = (uint64) w->back.start < kept ?
				kept - w->back.start : 0;
		dst += from_file;
		offset += from_file;
		n -= from_file;
	}
	if (n > 0)
	{
		Assert(offset - w->written + n <= w->buf_len);
		memcpy(dst, w->buf + (offset - w->written), n);
	}
}

static bool
bg_keep_crc_matches(BgKeepRecord *rec, const char *data)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, data, rec->len);
	FIN_CRC32C(crc);
	return EQ_CRC32C(crc, rec->crc);
}

/*
 * A row of a kept file, read by the worker or the launching session, is bad:
 * its length ("checksum" false) or its checksum.
 */
void
bg_keep_row_damaged(const char *path, off_t offset, bool checksum)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("kept result in file \"%s\" is damaged", path),
			 checksum ?
			 errdetail("A row's checksum at offset " INT64_FORMAT " does not match.",
					   (int64) offset) :
			 errdetail("A row at offset " INT64_FORMAT " has a wrong length.",
					   (int64) offset)));
}

/*
 * Read back into "out" the row whose record starts at "offset": a worker
 * keeps no second copy of the rows its reader has not taken off the queue
 * yet (spill.c).  Returns the record's length.  A record written out is
 * checked against its CRC; one still in the buffer has none yet.  Its
 * length is checked first: what lies on disk may have been damaged there.
 */
Size
bg_keep_read_back(BgKeepWriter *w, off_t offset, StringInfo out)
{
	BgKeepRecord rec;

	if (offset < 0 || bg_keep_rows_end(w) - offset < (off_t) sizeof(rec))
		elog(ERROR, "row to read back lies past the end of kept file \"%s\"",
			 w->path);
	bg_keep_copy_out(w, offset, (char *) &rec, sizeof(rec));
	if (rec.len < SizeofMinimalTupleHeader ||
		rec.len > (uint64) (bg_keep_rows_end(w) - offset) - sizeof(rec))
		bg_keep_row_damaged(w->path, offset, false);
	resetStringInfo(out);
	enlargeStringInfo(out, rec.len);
	bg_keep_copy_out(w, offset + sizeof(rec), out->data, rec.len);
	out->len = rec.len;
	if (offset < w->written && !bg_keep_crc_matches(&rec, out->data))
		bg_keep_row_damaged(w->path, offset, true);
	return sizeof(rec) + rec.len;
}

/*
 * Give the kept file a second name, "name" in the job's file set, for the
 * rows the job's queue did not carry: the launching session reads them
 * there (spill.c).  False where it cannot be made: the file set is in
 * another file system (temp_tablespaces), or linking failed otherwise.
 */
bool
bg_keep_link(BgKeepWriter *w, FileSet *fileset, const char *name,
			 char *path)
{
	File		placeholder;

	/* the file set's directory for the name, made if need be */
	placeholder = FileSetCreate(fileset, name);
	strlcpy(path, FilePathName(placeholder), MAXPGPATH);
	FileClose(placeholder);
	if (unlink(path) != 0 || link(w->path, path) != 0)
	{
		ereport(DEBUG1,
				(errcode_for_file_access(),
				 errmsg_internal("could not link \"%s\" to \"%s\": %m",
								 path, w->path)));
		return false;
	}
	return true;
}

/*
 * Pass the rows of a kept file whose records lie in [from, to) to
 * "consume", in order, each checked against its CRC.  For the launching
 * session, which copies the rows its queue did not carry from there when
 * its spool cannot hold the file open (bg_spool_adopt_kept).
 */
void
bg_keep_scan_rows(File file, off_t from, off_t to,
				  void (*consume) (void *arg, char *data, uint32 len),
				  void *arg)
{
	BgKeepBlocks blocks = {0};

	blocks.file = file;
	blocks.fd = -1;
	blocks.path = FilePathName(file);
	bg_keep_scan(&blocks, from, to, 0, consume, arg);
}

/*
 * The same through a plain descriptor (the spool's, of the kept file), and
 * only the rows that begin in the first "limit" bytes (0: all).
 */
void
bg_keep_scan_rows_fd(int fd, const char *path, off_t from, off_t to,
					 Size limit,
					 void (*consume) (void *arg, char *data, uint32 len),
					 void *arg)
{
	BgKeepBlocks blocks = {0};

	blocks.file = -1;
	blocks.fd = fd;
	blocks.path = path;
	bg_keep_scan(&blocks, from, to, limit, consume, arg);
}

static void
bg_keep_scan(BgKeepBlocks *b, off_t from, off_t to, Size limit,
			 void (*consume) (void *arg, char *data, uint32 len),
			 void *arg)
{
	StringInfoData row;
	off_t		stop = limit > 0 ? Min(to, from + (off_t) limit) : to;

	b->cxt = CurrentMemoryContext;
	initStringInfo(&row);
	while (from < stop)
	{
		BgKeepRecord rec;

		if (to - from < (off_t) sizeof(rec))
			bg_keep_row_damaged(b->path, from, false);
		memcpy(&rec, bg_keep_blocks_get(b, from, sizeof(rec)), sizeof(rec));
		if (rec.len < SizeofMinimalTupleHeader ||
			rec.len > (uint64) (to - from) - sizeof(rec))
			bg_keep_row_damaged(b->path, from, false);
		/* (the row, a MinimalTuple, aligned) */
		resetStringInfo(&row);
		appendBinaryStringInfo(&row,
							   bg_keep_blocks_get(b, from + sizeof(rec), rec.len),
							   rec.len);
		if (!bg_keep_crc_matches(&rec, row.data))
			bg_keep_row_damaged(b->path, from, true);
		/* (a row that says it is longer than its record would be read past it) */
		if (((MinimalTuple) row.data)->t_len != rec.len)
			bg_keep_row_damaged(b->path, from, false);
		consume(arg, row.data, rec.len);
		from += sizeof(rec) + rec.len;
		CHECK_FOR_INTERRUPTS();
	}
	pfree(row.data);
	bg_keep_blocks_free(b);
}

/*
 * Compute the CRCs of the whole records from p on, up to end, three side by
 * side where the CPU can.  With "store", fill them in; else compare them with
 * the stored ones.  Returns where the records end, or the first record
 * whose CRC does not match.
 */
char *
bg_keep_crc_records(char *p, char *end, bool store)
{
#ifdef BG_KEEP_CRC_X3
	static int	have_sse42 = -1;

	if (have_sse42 < 0)
		have_sse42 = __builtin_cpu_supports("sse4.2") ? 1 : 0;
#endif
	while (p < end)
	{
		char	   *rec[3];
		pg_crc32c	crc[3];
		char	   *next = p;
		int			n;
		int			k;

		for (n = 0; n < 3 && bg_keep_whole_record(next, end); n++)
		{
			rec[n] = next;
			next += sizeof(BgKeepRecord) + bg_keep_record_len(next);
		}
		if (n == 0)
			break;
#ifdef BG_KEEP_CRC_X3
		if (n == 3 && have_sse42)
			bg_keep_crc_x3(rec, crc);
		else
#endif
			for (k = 0; k < n; k++)
				crc[k] = bg_keep_crc_one(rec[k]);
		for (k = 0; k < n; k++)
		{
			char	   *stored = rec[k] + offsetof(BgKeepRecord, crc);

			if (store)
				memcpy(stored, &crc[k], sizeof(pg_crc32c));
			else if (memcmp(stored, &crc[k], sizeof(pg_crc32c)) != 0)
				return rec[k];
		}
		p = next;
	}
	return p;
}

/* The length of a record, where it need not be aligned */
static inline uint32
bg_keep_record_len(const char *rec)
{
	uint32		len;

	memcpy(&len, rec + offsetof(BgKeepRecord, len), sizeof(len));
	return len;
}

/* Does a whole record start at p and end by end? */
static inline bool
bg_keep_whole_record(const char *p, const char *end)
{
	return end - p >= (ptrdiff_t) sizeof(BgKeepRecord) &&
		(Size) (end - p) - sizeof(BgKeepRecord) >= bg_keep_record_len(p);
}

static pg_crc32c
bg_keep_crc_one(const char *rec)
{
	pg_crc32c	crc;

	INIT_CRC32C(crc);
	COMP_CRC32C(crc, rec + sizeof(BgKeepRecord), bg_keep_record_len(rec));
	FIN_CRC32C(crc);
	return crc;
}

#ifdef BG_KEEP_CRC_X3
/*
 * The CRCs of three records side by side, as far as the shortest goes,
 * then of each alone.  The same CRC-32C as COMP_CRC32C computes, whose
 * SSE 4.2 form runs the same instruction on the same running value.
 */
__attribute__((target("sse4.2")))
static void
bg_keep_crc_x3(char *rec[3], pg_crc32c crc[3])
{
	uint32		len[3];
	const char *d[3];
	uint64		c[3];
	uint32		words;
	uint32		i;
	int			k;

	for (k = 0; k < 3; k++)
	{
		len[k] = bg_keep_record_len(rec[k]);
		d[k] = rec[k] + sizeof(BgKeepRecord);
		c[k] = 0xFFFFFFFF;		/* INIT_CRC32C */
	}
	words = Min(len[0], Min(len[1], len[2])) / 8;
	for (i = 0; i < words; i++)
	{
		uint64		v[3];

		memcpy(&v[0], d[0] + i * 8, 8);
		memcpy(&v[1], d[1] + i * 8, 8);
		memcpy(&v[2], d[2] + i * 8, 8);
		c[0] = _mm_crc32_u64(c[0], v[0]);
		c[1] = _mm_crc32_u64(c[1], v[1]);
		c[2] = _mm_crc32_u64(c[2], v[2]);
	}
	for (k = 0; k < 3; k++)
	{
		crc[k] = (pg_crc32c) c[k];
		COMP_CRC32C(crc[k], d[k] + words * 8, len[k] - words * 8);
		FIN_CRC32C(crc[k]);
	}
}
#endif

/*
 * Every row is kept: write the footer.  Returns the file's size.  The file
 * is made durable by bg_keep_sync, after the job's commit.
 */
int64
bg_keep_finish(BgKeepWriter *w)
{
	BgKeepRecord rec;
	BgKeepFooter footer;

	bg_keep_drain(w);
	bg_keep_end_ring(w);
	footer.rows = w->rows;
	footer.rows_end = (uint64) (w->written + w->buf_len);
	rec.len = BG_KEEP_FOOTER;
	INIT_CRC32C(rec.crc);
	COMP_CRC32C(rec.crc, &footer, sizeof(footer));
	FIN_CRC32C(rec.crc);
	bg_keep_write(w, (char *) &rec, sizeof(rec));
	bg_keep_write(w, (char *) &footer, sizeof(footer));
	bg_keep_flush(w);
	/*
	 * The disk given ahead and not used goes back (ext4, xfs: at a
	 * truncate).  Only advice, as the fallocate was: the rows are whole.
	 */
	if (w->extended > w->written &&
		FileTruncate(w->file, w->written, WAIT_EVENT_BUFFILE_TRUNCATE) != 0)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not truncate file \"%s\": %m", w->path)));
	return (int64) w->written;
}

/*
 * Make this worker's finished kept file durable, with its directory entry,
 * before the registry records it as kept.  False if there is none.
 */
bool
bg_keep_sync(void)
{
	BgKeepWriter *w = bg_keep_active;
	char		dir[MAXPGPATH];

	if (w == NULL)
		return false;
	if (FileSync(w->file, WAIT_EVENT_DATA_FILE_SYNC) != 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not fsync file \"%s\": %m", w->path)));
	bg_keep_dir(dir);
	(void) fsync_fname_ext(dir, true, false, ERROR);
	return true;
}

/*
 * The job committed with its result recorded: the file is the registry's
 * now.  Called with interrupts held, so it must not fail.
 */
void
bg_keep_release(void)
{
	bg_keep_end_writer(false);
}

/*
 * The job failed, or its worker is exiting before its commit: nobody will
 * read its partial rows.
 */
void
bg_keep_discard(void)
{
	bg_keep_end_writer(true);
}

/* Close the writer's file, and with "remove" remove it; only logs. */
static void
bg_keep_end_writer(bool remove)
{
	BgKeepWriter *w = bg_keep_active;

	if (w == NULL)
		return;
	bg_keep_active = NULL;
	/*
	 * (a failed job's blocks still in the ring are not written; its session
	 * lets go of the ring at its next look)
	 */
	if (w->ring_seg != NULL)
	{
		w->ring = NULL;
		bg_ring_end(w->shared, w->ring_seg);
	}
	FileClose(w->file);
	if (remove && unlink(w->path) != 0 && errno != ENOENT)
		ereport(LOG,
				(errcode_for_file_access(),
				 errmsg("could not remove file \"%s\": %m", w->path)));
	pfree(w->own_buf);
	bg_keep_blocks_free(&w->back);
	pfree(w);
}

/* ----------------------------------------------------------------
 *		Reading
 * ----------------------------------------------------------------
 */

/*
 * Open a job's kept result of "size" bytes, as the registry records it; a
 * size of 0 means the job kept only its completion tag, "command".
 */
BgKeepReader *
bg_keep_open(int pid, int64 job_id, int64 size, const char *command)
{
	BgKeepReader *r = palloc0(sizeof(BgKeepReader));

	r->pid = pid;
	r->job_id = job_id;
	r->fd = -1;
	r->cxt = CurrentMemoryContext;
	if (size == 0)
	{
		r->desc = CreateTemplateTupleDesc(1);
		TupleDescInitEntry(r->desc, 1, "command", TEXTOID, -1, 0);
		r->command = pstrdup(command ? command : "");
		return r;
	}
	(void) bg_keep_open_file(r, job_id, false);
	bg_keep_read_header(r);
	bg_keep_read_footer(r, size);
	r->pos = r->rows_start;
	return r;
}

/*
 * Open the file of a kept result, or raise the error of one that is gone;
 * with missing_ok, false if it is gone.
 */
static bool
bg_keep_open_file(BgKeepReader *r, int64 job_id, bool missing_ok)
{
	char		path[MAXPGPATH];

	bg_keep_path(path, job_id);
	r->path = pstrdup(path);
	r->fd = OpenTransientFile(path, O_RDONLY | PG_BINARY);
	if (r->fd < 0 && errno == ENOENT && missing_ok)
		return false;
	if (r->fd < 0 && errno == ENOENT)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("kept result of background job %d is gone", r->pid),
				 errdetail("It was forgotten or expired meanwhile, or its file was not carried over (a base backup, a standby, pg_upgrade or ALTER DATABASE ... SET TABLESPACE leaves it behind).")));
	if (r->fd < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open the kept result of background job %d: %m",
						r->pid),
				 errdetail("File \"%s\".", path)));
	r->buf_size = BG_KEEP_READ_SIZE;
	r->buf = palloc(r->buf_size);
	return true;
}

/* Check the footer of a file of "size" bytes: where the rows end. */
static void
bg_keep_read_footer(BgKeepReader *r, int64 size)
{
	char	   *p;
	BgKeepRecord rec;
	BgKeepFooter footer;
	pg_crc32c	crc;

	if (size < (int64) (r->rows_start + sizeof(rec) + sizeof(footer)))
		bg_keep_damaged(r, "its size is wrong");
	p = bg_keep_read(r, size - sizeof(rec) - sizeof(footer),
					 sizeof(rec) + sizeof(footer));
	memcpy(&rec, p, sizeof(rec));
	memcpy(&footer, p + sizeof(rec), sizeof(footer));
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, &footer, sizeof(footer));
	FIN_CRC32C(crc);
	if (rec.len != BG_KEEP_FOOTER || !EQ_CRC32C(crc, rec.crc) ||
		footer.rows_end != (uint64) (size - sizeof(rec) - sizeof(footer)) ||
		footer.rows_end < (uint64) r->rows_end)
		bg_keep_damaged(r, "its footer is not valid");
	r->rows_end = footer.rows_end;
}

/*
 * Open the kept result of a job that is still running, to follow it as it
 * grows, like tail -f: rows are read up to what the worker has published,
 * then the reader waits for more, until the job ends.  The job's segment
 * is mapped only while the reader waits (bg_keep_catch_up).  With "wait", wait
 * for the job to start its last statement (until then there are no
 * columns); without, that is an error.  NULL if the job has ended
 * meanwhile: the registry then has its outcome.
 */
BgKeepReader *
bg_keep_open_live(BgKeptJob *kj, bool wait)
{
	BgKeepReader *r = palloc0(sizeof(BgKeepReader));

	r->pid = kj->pid;
	r->job_id = kj->id;
	r->fd = -1;
	r->cxt = CurrentMemoryContext;
	if (!bg_keep_attach(r, kj->segment))
		return NULL;
	while (pg_atomic_read_u64(&r->shared->kept_valid) == 0)
	{
		if (bg_job_get_flag(r->shared, &r->shared->worker_exited))
		{
			bg_keep_close(r);
			return NULL;
		}
		if (!wait)
		{
			bg_keep_close(r);
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("result of background job %d has no columns yet",
							r->pid),
					 errdetail("The job has not reached its last statement, or that statement returns no rows: its completion tag is read once the job ends.")));
		}
		bg_keep_sleep(r);
	}
	ConditionVariableCancelSleep();
	if (!bg_keep_open_file(r, r->job_id, true))
	{
		/* the job failed and removed it: its error is in the registry */
		while (!bg_job_get_flag(r->shared, &r->shared->worker_exited))
			bg_keep_sleep(r);
		bg_keep_close(r);
		return NULL;
	}
	bg_keep_read_header(r);
	r->rows_end = pg_atomic_read_u64(&r->shared->kept_valid);
	r->pos = r->rows_start;
	r->live = true;
	r->handle = kj->segment;
	bg_keep_detach(r);
	return r;
}

/*
 * For the launching session's spool: open the job's kept file for as long
 * as the session holds the job, and find where its rows start.  -1 if no
 * file descriptor is free for it, or the file is gone (the job failed).
 */
int
bg_keep_open_rows(int64 job_id, char *path, off_t *rows_start)
{
	BgKeepFileHeader hdr;
	int			fd;

	bg_keep_path(path, job_id);
	if (!AcquireExternalFD())
		return -1;
	fd = BasicOpenFile(path, O_RDONLY | PG_BINARY);
	if (fd < 0)
	{
		ReleaseExternalFD();
		return -1;
	}
	/* the worker wrote the header out before it sent a row */
	if (pg_pread(fd, &hdr, sizeof(hdr), 0) != sizeof(hdr) ||
		memcmp(hdr.magic, BG_KEEP_MAGIC, sizeof(hdr.magic)) != 0)
	{
		close(fd);
		ReleaseExternalFD();
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("kept result in file \"%s\" is damaged", path),
				 errdetail("Its header is not valid.")));
	}
	*rows_start = sizeof(hdr) + hdr.cols_len;
	return fd;
}

/* Has the job's kept file been removed (bg_forget, expiry)? */
bool
bg_keep_file_removed(int64 job_id)
{
	char		path[MAXPGPATH];
	struct stat st;

	bg_keep_path(path, job_id);
	return stat(path, &st) != 0 && errno == ENOENT;
}

/*
 * Readers following running jobs share one mapping of each job's segment:
 * a backend can map a segment only once, and a self-join or two readers of
 * one job in a statement each need it.
 */
typedef struct BgKeepMapping
{
	dsm_segment *seg;
	dsm_handle	handle;
	int			refcount;
	uint64		serial;			/* which readers hold it: never reused */
	SubTransactionId subid;		/* mapped in it: its abort lets it go */
	struct BgKeepMapping *next;
} BgKeepMapping;

static BgKeepMapping *bg_keep_mappings = NULL;
static uint64 bg_keep_mapping_serial = 0;

static void bg_keep_unmap(BgKeepMapping **prev);

/* Map the job's segment, if it is still this job's. */
static bool
bg_keep_attach(BgKeepReader *r, dsm_handle handle)
{
	BgKeepMapping *m;
	shm_toc    *toc;
	BgJobShared *shared = NULL;

	for (m = bg_keep_mappings; m != NULL; m = m->next)
	{
		if (m->handle == handle)
			break;
	}
	if (m == NULL)
	{
		dsm_segment *seg;

		/*
		 * A mapping this session has already is its own job's, which it
		 * detached in this transaction: that mapping goes when the job's
		 * rows are in, whatever our readers do, so it cannot be followed.
		 */
		if (dsm_find_mapping(handle) != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_IN_USE),
					 errmsg("cannot read background job %d while it runs",
							r->pid),
					 errdetail("This session detached it in this transaction."),
					 errhint("Read it once the transaction has committed, or once the job has ended.")));
		/* all that can fail first: the mapping must not be lost */
		m = MemoryContextAlloc(TopMemoryContext, sizeof(BgKeepMapping));
		bg_keep_register_callbacks();
		seg = dsm_attach(handle);
		if (seg == NULL)
		{
			pfree(m);
			return false;
		}
		/* ours until the transaction ends, whatever errors unwind */
		dsm_pin_mapping(seg);
		m->seg = seg;
		m->handle = handle;
		m->refcount = 0;
		m->serial = ++bg_keep_mapping_serial;
		m->subid = GetCurrentSubTransactionId();
		m->next = bg_keep_mappings;
		bg_keep_mappings = m;
		bg_segment_track(seg);
	}
	m->refcount++;
	r->seg = m->seg;
	r->mapping = m->serial;
	toc = shm_toc_attach(BG_FDW_MAGIC, dsm_segment_address(r->seg));
	if (toc != NULL)
		shared = shm_toc_lookup(toc, BG_KEY_SHARED, true);
	if (shared == NULL || shared->job_id != r->job_id || !shared->keep)
	{
		bg_keep_detach(r);
		return false;
	}
	r->shared = shared;
	return true;
}

/*
 * Let go of the job's segment.  The mapping is found by its serial: one an
 * abort let go of meanwhile is not there any more, whatever reused its
 * memory.
 */
static void
bg_keep_detach(BgKeepReader *r)
{
	BgKeepMapping **prev = &bg_keep_mappings;
	BgKeepMapping *m;

	if (r->seg == NULL)
		return;
	while ((m = *prev) != NULL && m->serial != r->mapping)
		prev = &m->next;
	r->seg = NULL;
	r->shared = NULL;
	r->mapping = 0;
	if (m != NULL && --m->refcount == 0)
		bg_keep_unmap(prev);
}

/*
 * Unmap a mapping and forget it.  A sleep prepared on a condition variable
 * is cancelled first: the backend's record of it must not outlive the
 * mapping.
 */
static void
bg_keep_unmap(BgKeepMapping **prev)
{
	BgKeepMapping *m = *prev;

	ConditionVariableCancelSleep();
	*prev = m->next;
	dsm_detach(m->seg);
	pfree(m);
}

/*
 * At the end of a transaction every reader is gone, some perhaps unwound by
 * an error without bg_keep_close: let go of the mappings they left.
 */
static void
bg_keep_reset_mappings(void)
{
	while (bg_keep_mappings != NULL)
		bg_keep_unmap(&bg_keep_mappings);
}

/*
 * A subtransaction ends.  Readers map a segment only while they wait
 * (bg_keep_catch_up), so one that maps it in a subtransaction that aborts
 * was unwound by the error: the mapping must not stay until the top-level
 * transaction ends, which may be never while a session sits idle in it.
 */
static void
bg_keep_subxact_mappings(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid)
{
	BgKeepMapping **prev = &bg_keep_mappings;
	BgKeepMapping *m;

	while ((m = *prev) != NULL)
	{
		if (m->subid == mySubid && event == SUBXACT_EVENT_ABORT_SUB)
		{
			bg_keep_unmap(prev);
			continue;
		}
		if (m->subid == mySubid && event == SUBXACT_EVENT_COMMIT_SUB)
			m->subid = parentSubid;
		prev = &m->next;
	}
}

/*
 * Wait for the worker to publish more of the file, or to exit.  A reader
 * holding a lock the job waits for would wait for ever: that is a deadlock.
 */
static void
bg_keep_sleep(BgKeepReader *r)
{
	const char *hint = _("Read the job's result once it has ended, or outside the transaction that holds the lock.");
	pid_t		worker;

	if (!ConditionVariableTimedSleep(&r->shared->kept_cv, DeadlockTimeout,
									 bg_wait_event_job()))
		return;
	worker = bg_shared_worker_pid(r->shared);
	if (bg_blocked_by_me(worker))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_DEADLOCK_DETECTED),
				 errmsg("deadlock detected"),
				 errdetail("This session waits for rows of background job %d, which waits for a lock this session holds.",
						   r->pid),
				 errhint("%s", hint)));
	bg_check_wait_cycle(worker, &r->cycle, hint);
}

/*
 * The reader has read all the worker has published: wait for more, or for
 * the job to end.
 */
static void
bg_keep_follow(BgKeepReader *r)
{
	uint64		valid = pg_atomic_read_u64(&r->shared->kept_valid);

	if (valid > (uint64) r->rows_end)
	{
		ConditionVariableCancelSleep();
		/* bytes read past the old end were perhaps being written: reread */
		if (r->buf_start + (off_t) r->buf_len > r->rows_end)
			r->buf_len = r->rows_end > r->buf_start ? r->rows_end - r->buf_start : 0;
		r->rows_end = valid;
		return;
	}
	if (!bg_job_get_flag(r->shared, &r->shared->worker_exited))
	{
		bg_keep_sleep(r);
		return;
	}
	ConditionVariableCancelSleep();
	bg_keep_detach(r);
	bg_keep_ended(r);
}

/*
 * The reader has read all the worker had published: map the job's segment
 * while it waits for more, or until it learns that the job has ended.  It
 * holds the mapping only inside this call, never between rows: a reader
 * left idle (a cursor in a transaction nobody ends) must not keep alive
 * the segment of a job that has ended meanwhile, since DSM slots are a
 * server-wide pool, and followers are counted nowhere else.
 */
static void
bg_keep_catch_up(BgKeepReader *r)
{
	if (!bg_keep_attach(r, r->handle))
	{
		/* gone: the worker has exited, its launcher let go of it */
		bg_keep_ended(r);
		return;
	}
	while (r->pos >= r->rows_end && r->seg != NULL)
		bg_keep_follow(r);
	bg_keep_detach(r);
}

/*
 * The job has ended: the registry has its outcome.  A failed job raises its
 * error; a finished one has its footer, which says where its rows end.
 */
static void
bg_keep_ended(BgKeepReader *r)
{
	BgKeptJob	kj;

	r->live = false;
	bg_registry_ended_kept_job(r->pid, r->job_id, &kj);
	bg_keep_read_footer(r, kj.kept_bytes);
}

static void
bg_keep_damaged(BgKeepReader *r, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_DATA_CORRUPTED),
			 errmsg("kept result of background job %d is damaged", r->pid),
			 errdetail("File \"%s\": %s.", r->path, what)));
}

/* Read and check the header: the result's columns. */
static void
bg_keep_read_header(BgKeepReader *r)
{
	BgKeepFileHeader hdr;
	StringInfoData cols;
	pg_crc32c	crc;

	memcpy(&hdr, bg_keep_read(r, 0, sizeof(hdr)), sizeof(hdr));
	if (memcmp(hdr.magic, BG_KEEP_MAGIC, sizeof(hdr.magic)) != 0 ||
		hdr.cols_len > MaxAllocSize)
		bg_keep_damaged(r, "its header is not valid");
	initStringInfo(&cols);
	appendBinaryStringInfo(&cols, bg_keep_read(r, sizeof(hdr), hdr.cols_len),
						   hdr.cols_len);
	INIT_CRC32C(crc);
	COMP_CRC32C(crc, cols.data, cols.len);
	FIN_CRC32C(crc);
	if (!EQ_CRC32C(crc, hdr.cols_crc))
		bg_keep_damaged(r, "its column list is not valid");
	bg_keep_check_types(r, &cols);
	r->desc = bg_desc_deserialize(&cols);
	r->rows_start = sizeof(hdr) + hdr.cols_len;
}

/*
 * Types may change while a result is kept (dropped, or dropped and made
 * anew under the same OID): rows are read only if each column's type still
 * lays values out as it did when they were written.  This reads the types
 * at the start of the column list, before the description, whose reading
 * looks the types up.
 */
static void
bg_keep_check_types(BgKeepReader *r, StringInfo cols)
{
	int			natts = pq_getmsgint(cols, 2);
	int			i;

	for (i = 0; i < natts; i++)
	{
		Oid			type = pq_getmsgint(cols, 4);
		int16		len = (int16) pq_getmsgint(cols, 2);
		bool		byval = pq_getmsgbyte(cols) != 0;
		char		align = (char) pq_getmsgbyte(cols);
		HeapTuple	tup = SearchSysCache1(TYPEOID, ObjectIdGetDatum(type));
		Form_pg_type typ;
		bool		same;

		if (!HeapTupleIsValid(tup))
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("kept result of background job %d no longer matches its column types",
							r->pid),
					 errdetail("The type of column %d (OID %u) has been dropped.",
							   i + 1, type),
					 errhint("Forget the job with bg_forget(%d).", r->pid)));
		typ = (Form_pg_type) GETSTRUCT(tup);
		same = typ->typlen == len && typ->typbyval == byval &&
			typ->typalign == align;
		ReleaseSysCache(tup);
		if (!same)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("kept result of background job %d no longer matches its column types",
							r->pid),
					 errdetail("The type of column %d (OID %u) stores its values differently than when the result was kept.",
							   i + 1, type),
					 errhint("Forget the job with bg_forget(%d).", r->pid)));
	}
}

/* Bytes [offset, offset + len) of the file, through the reader's buffer. */
static char *
bg_keep_read(BgKeepReader *r, off_t offset, Size len)
{
	ssize_t		n;

	if (offset >= r->buf_start && offset + len <= r->buf_start + r->buf_len)
		return r->buf + (offset - r->buf_start);
	if (len > r->buf_size)
	{
		r->buf = repalloc(r->buf, len);
		r->buf_size = len;
	}
	pgstat_report_wait_start(WAIT_EVENT_BUFFILE_READ);
	n = pg_pread(r->fd, r->buf, r->buf_size, offset);
	pgstat_report_wait_end();
	if (n < 0)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read file \"%s\": %m", r->path)));
	r->buf_start = offset;
	r->buf_len = n;
	r->checked_to = 0;
	if ((Size) n < len)
		bg_keep_damaged(r, "it is shorter than recorded");
	return r->buf;
}

TupleDesc
bg_keep_desc(BgKeepReader *r)
{
	return r->desc;
}

/*
 * Store the next row in the slot (a heap-tuple slot of the result's
 * columns); false at the end.  The row stays valid until the next call.
 */
bool
bg_keep_next(BgKeepReader *r, TupleTableSlot *slot)
{
	BgKeepRecord rec;
	char	   *body;

	ExecClearTuple(slot);
	if (r->command)
	{
		if (r->command_done)
			return false;
		r->command_done = true;
		slot->tts_values[0] = CStringGetTextDatum(r->command);
		slot->tts_isnull[0] = false;
		ExecStoreVirtualTuple(slot);
		return true;
	}
	while (r->pos >= r->rows_end && r->live)
		bg_keep_catch_up(r);
	if (r->pos >= r->rows_end)
		return false;
	if (r->pos + sizeof(rec) > r->rows_end)
		bg_keep_damaged(r, "a row is cut short");
	memcpy(&rec, bg_keep_read(r, r->pos, sizeof(rec)), sizeof(rec));
	if (rec.len < SizeofMinimalTupleHeader || rec.len > MaxAllocSize ||
		r->pos + sizeof(rec) + rec.len > r->rows_end)
		bg_keep_damaged(r, "a row has a wrong length");
	body = bg_keep_read(r, r->pos + sizeof(rec), rec.len);
	if (r->pos >= r->checked_to)
		bg_keep_check_ahead(r, &rec, body);

	/* t_data must be MAXALIGNed, the MinimalTuple at MINIMAL_TUPLE_OFFSET */
	if (r->row_size < MINIMAL_TUPLE_OFFSET + rec.len)
	{
		if (r->row)
			pfree(r->row);
		r->row_size = Max(MINIMAL_TUPLE_OFFSET + rec.len, 1024);
		r->row = MemoryContextAlloc(r->cxt, r->row_size);
	}
	/* the heap header a MinimalTuple lacks reads as zeroes (xmin, ...) */
	memset(r->row, 0, MINIMAL_TUPLE_OFFSET);
	memcpy(r->row + MINIMAL_TUPLE_OFFSET, body, rec.len);
	r->tuple.t_len = rec.len + MINIMAL_TUPLE_OFFSET;
	r->tuple.t_data = (HeapTupleHeader) r->row;
	ItemPointerSetInvalid(&r->tuple.t_self);
	r->tuple.t_tableOid = InvalidOid;
	ExecStoreHeapTuple(&r->tuple, slot, false);
	r->pos += sizeof(rec) + rec.len;
	return true;
}

/*
 * Check the CRC of the row at the reader's position, whose record is "rec"
 * and body "body", and those of the whole rows after it that the buffer
 * holds, three side by side.
 */
static void
bg_keep_check_ahead(BgKeepReader *r, BgKeepRecord *rec, const char *body)
{
	char	   *from;
	char	   *end;

	if (r->pos < r->buf_start)
	{
		/* the buffer was refilled from the row's body on */
		pg_crc32c	crc;

		INIT_CRC32C(crc);
		COMP_CRC32C(crc, body, rec->len);
		FIN_CRC32C(crc);
		if (!EQ_CRC32C(crc, rec->crc))
			bg_keep_damaged(r, "a row's checksum does not match");
		return;
	}
	from = r->buf + (r->pos - r->buf_start);
	end = r->buf + Min((off_t) r->buf_len, r->rows_end - r->buf_start);
	r->checked_to = r->pos + (bg_keep_crc_records(from, end, false) - from);
	if (r->checked_to <= r->pos)
		bg_keep_damaged(r, "a row's checksum does not match");
}

void
bg_keep_rewind(BgKeepReader *r)
{
	r->pos = r->rows_start;
	r->command_done = false;
}

/* Close the file; the memory goes with the caller's context. */
void
bg_keep_close(BgKeepReader *r)
{
	if (r->fd >= 0)
		CloseTransientFile(r->fd);
	r->fd = -1;
	bg_keep_detach(r);
}

/* ----------------------------------------------------------------
 *		Removal
 * ----------------------------------------------------------------
 */

/*
 * Remove a job's kept result when this transaction commits: its registry
 * row goes in the same transaction.  A file that does not exist is fine.
 * A job_id of 0 stands for every kept result of the database.
 */
void
bg_keep_remove_at_commit(int64 job_id)
{
	BgKeepPending *p;

	bg_keep_register_callbacks();
	p = MemoryContextAlloc(TopMemoryContext, sizeof(BgKeepPending));
	p->job_id = job_id;
	p->nestlevel = GetCurrentTransactionNestLevel();
	p->next = bg_keep_pending;
	bg_keep_pending = p;
}

static void
bg_keep_register_callbacks(void)
{
	if (bg_keep_callbacks_registered)
		return;
	RegisterXactCallback(bg_keep_xact_callback, NULL);
	RegisterSubXactCallback(bg_keep_subxact_callback, NULL);
	bg_keep_callbacks_registered = true;
}

static void
bg_keep_xact_callback(XactEvent event, void *arg)
{
	BgKeepPending *p;

	if (event == XACT_EVENT_COMMIT || event == XACT_EVENT_PARALLEL_COMMIT ||
		event == XACT_EVENT_ABORT || event == XACT_EVENT_PARALLEL_ABORT ||
		event == XACT_EVENT_PREPARE)
		bg_keep_reset_mappings();
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			if (bg_keep_pending != NULL)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot PREPARE a transaction that removed kept results of background jobs")));
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
			while ((p = bg_keep_pending) != NULL)
			{
				bg_keep_pending = p->next;
				if ((event == XACT_EVENT_COMMIT ||
					 event == XACT_EVENT_PARALLEL_COMMIT) && p->job_id == 0)
				{
					bg_keep_sweep(NULL, NULL);
					bg_queue_drop_database();
				}
				else if (event == XACT_EVENT_COMMIT ||
						 event == XACT_EVENT_PARALLEL_COMMIT)
				{
					char		path[MAXPGPATH];

					/* committed already: a failure can only be logged */
					bg_keep_path(path, p->job_id);
					if (unlink(path) != 0 && errno != ENOENT)
						ereport(WARNING,
								(errcode_for_file_access(),
								 errmsg("could not remove file \"%s\": %m", path)));
					/* that of a job lost while it ran */
					bg_keep_messages_path(path, p->job_id);
					if (unlink(path) != 0 && errno != ENOENT)
						ereport(WARNING,
								(errcode_for_file_access(),
								 errmsg("could not remove file \"%s\": %m", path)));
				}
				pfree(p);
			}
			break;
		default:
			break;
	}
}

/* A subtransaction that rolls back removes nothing it asked to. */
static void
bg_keep_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();
	BgKeepPending **prev = &bg_keep_pending;
	BgKeepPending *p;

	bg_keep_subxact_mappings(event, mySubid, parentSubid);
	while ((p = *prev) != NULL)
	{
		if (p->nestlevel >= level && event == SUBXACT_EVENT_ABORT_SUB)
		{
			*prev = p->next;
			pfree(p);
			continue;
		}
		if (p->nestlevel >= level && event == SUBXACT_EVENT_COMMIT_SUB)
			p->nestlevel = level - 1;
		prev = &p->next;
	}
}

/*
 * Remove the files of this database that "keep" does not want: those of
 * jobs the registry no longer names as kept, after a crash or when the
 * extension was dropped (then "keep" is NULL and every file goes).
 */
void
bg_keep_sweep(bool (*keep) (int64 job_id, void *arg), void *arg)
{
	char		dir[MAXPGPATH];
	DIR		   *d;
	struct dirent *de;

	bg_keep_dir(dir);
	d = AllocateDir(dir);
	if (d == NULL && errno == ENOENT)
		return;
	while ((de = ReadDirExtended(d, dir, LOG)) != NULL)
	{
		char		path[MAXPGPATH];
		char	   *end;
		int64		id;

		if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
			continue;
		errno = 0;
		id = strtoi64(de->d_name, &end, 10);
		if (errno == 0 && id > 0 && keep != NULL &&
			(*end == '\0' || strcmp(end, BG_KEEP_MESSAGES_SUFFIX) == 0) &&
			keep(id, arg))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		if (unlink(path) != 0 && errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not remove file \"%s\": %m", path)));
	}
	FreeDir(d);
}

/* ----------------------------------------------------------------
 *		DROP EXTENSION
 * ----------------------------------------------------------------
 */

/* _PG_init: watch for the extension's own drop */
void
bg_keep_init(void)
{
	prev_object_access_hook = object_access_hook;
	object_access_hook = bg_keep_object_access;
}

/*
 * The extension is dropped (DROP EXTENSION, DROP SCHEMA ... CASCADE, DROP
 * OWNED): with the registry gone nothing names the kept results, so they
 * all go when the drop commits.  Files stay open in running jobs, which
 * finish unharmed.
 */
static void
bg_keep_object_access(ObjectAccessType access, Oid classId, Oid objectId,
					  int subId, void *arg)
{
	if (prev_object_access_hook)
		prev_object_access_hook(access, classId, objectId, subId, arg);
	if (access == OAT_DROP && classId == ExtensionRelationId &&
		objectId == get_extension_oid("bg_fdw", true))
		bg_keep_remove_at_commit(0);
}

/*
 * bg_fdw_drop_start(): the event trigger of DROP EXTENSION, DROP SCHEMA and
 * DROP OWNED, which runs before the drop.  It does nothing but make sure
 * this library is loaded, so that bg_keep_object_access sees the drop in a
 * session that has not used bg_fdw before.
 */
Datum
bg_fdw_drop_start(PG_FUNCTION_ARGS)
{
	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_EVENT_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("function \"%s\" was not called by the event trigger manager",
						"bg_fdw_drop_start")));
	PG_RETURN_VOID();
}
