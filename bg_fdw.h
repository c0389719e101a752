/*-------------------------------------------------------------------------
 *
 * bg_fdw.h
 *		  Shared definitions for bg_fdw: the job segment layout that the
 *		  launching session and the background worker agree on, the layout
 *		  of the registry tables and the job states they record, the
 *		  session's own record of its jobs (BgJob), and the functions each
 *		  file offers the others.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/bg_fdw.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef BG_FDW_H
#define BG_FDW_H

#include "access/tupdesc.h"
#include "executor/tuptable.h"
#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "port/atomics.h"
#include "port/pg_crc32c.h"
#include "postmaster/bgworker.h"
#include "storage/condition_variable.h"
#include "storage/dsm.h"
#include "storage/proc.h"
#include "storage/sharedfileset.h"
#include "storage/shm_mq.h"
#include "storage/spin.h"
#include "tcop/dest.h"
#include "utils/timestamp.h"

/* PostgreSQL 18 marks functions that do not return with a prefix */
#ifndef pg_noreturn
#define pg_noreturn pg_attribute_noreturn()
#endif

/*
 * Magic of a job segment's table of contents, changed with every change of
 * the segment's layout (BgJobShared, the keys): a backend still running an
 * older library after new files were installed must not read a newer
 * segment, nor the reverse.  1.0: 0x62676664.
 */
#define BG_FDW_MAGIC			0x62676615
#define BG_FDW_MAGIC_1_0		0x62676664

/* shm_toc keys of a job segment */
#define BG_KEY_SHARED			1
#define BG_KEY_SQL				2
#define BG_KEY_GUC				3
#define BG_KEY_TUPLE_QUEUE		5
#define BG_KEY_MESSAGE_QUEUE	6
#define BG_KEY_FILESET			7
#define BG_KEY_LIBRARIES		8

/* Queue sizes, in bytes */
#define BG_DEFAULT_QUEUE_SIZE	(1024 * 1024)
#define BG_MIN_QUEUE_SIZE		4096
#define BG_MAX_QUEUE_SIZE		(1024 * 1024 * 1024)
#define BG_DEFAULT_MAX_QUEUE_SIZE	(64 * 1024 * 1024)
/* kept messages stay well below the 1 GB of a bytea */
#define BG_MAX_MESSAGES_SIZE_KB	(256 * 1024)
/* kept results of one role in one database: 10 GB */
#define BG_DEFAULT_MAX_KEPT_PER_ROLE_KB	(10 * 1024 * 1024)
#define BG_DEFAULT_MAX_KEPT_KB			(100 * 1024 * 1024)
#define BG_DEFAULT_MAX_ENDED_SEGMENTS	64
#define BG_DEFAULT_MAX_HELD_SEGMENTS_PER_ROLE	64
/* How long bg_launch waits for a lock to describe a job's result, in ms */
#define BG_DESCRIBE_LOCK_TIMEOUT	50
#define BG_MESSAGE_QUEUE_SIZE	16384

/* Bytes of a job's label and of a progress message, with the terminator */
#define BG_LABEL_LEN			64
#define BG_PROGRESS_MESSAGE_LEN	256

/* Sessions of other backends a job wakes when it ends (bg_wait_any) */
#define BG_MAX_WAITERS			8

/* Protocol message types a worker sends on its message queue, besides 'N'/'E' */
#define BG_MSG_DESCRIPTOR		'T' /* the result's columns */
#define BG_MSG_COMPLETE			'C' /* committed; carries the completion tag */

/* bgw_type of our workers: pg_stat_activity.backend_type */
#define BG_WORKER_TYPE			"bg_fdw worker"
#define BG_SUPERVISOR_TYPE		"bg_fdw supervisor"
#define BG_SWEEP_TYPE			"bg_fdw sweep"

/*
 * Fixed part of a job segment.  The first group is written by the launcher
 * before the worker starts and only read afterwards, by anyone (the worker,
 * and sessions probing the job through the registry).  The fields under
 * "mutex" are how the two processes hand over control: the worker publishes
 * its PGPROC and waits for "go"; the launcher says "go" (for a single
 * statement, once the result table exists), or "launcher_gone" when it gave
 * up on the job.  A single flag is set with bg_job_set_flag, which also
 * wakes the side that waits for it; updates of several take the mutex.
 */
typedef struct BgJobShared
{
	/* Set once by the launcher before the worker starts */
	int64		job_id;			/* never reused, see bg_new_job_id; everyone
								 * reads it to tell the job from a later one */
	int			name;			/* what bg_launch returns and every function
								 * takes: set for a job handed to a started
								 * worker (pool.c); 0 for a new worker, whose
								 * PID names the job */
	Oid			database_id;	/* worker connects to it */
	Oid			authenticated_user_id;	/* worker connects as it */
	Oid			outer_user_id;	/* SET ROLE in effect, or InvalidOid; worker
								 * takes it on */
	Oid			current_user_id;	/* current user at launch: the job's role,
									 * which the worker takes on and records */
	int			sec_context;	/* security context at launch; worker takes
								 * it on */
	bool		role_is_superuser;	/* is outer_user_id a superuser; for the
									 * worker's SetCurrentRoleId */
	char		launched_by[NAMEDATALEN];	/* the launching session's
											 * session_user; the worker shows
											 * it as bg_fdw.launched_by */
	bool		connect_as_job_role;	/* worker connects as current_user_id
										 * (it may log in, or 17+), not as
										 * authenticated_user_id */
	pid_t		launcher_pid;	/* pid of the launching backend; worker
								 * records it and checks it for deadlocks */
	PGPROC	   *launcher_proc;	/* worker wakes the launcher through it */
	TimestampTz launched_at;	/* when bg_launch was called; worker records
								 * it */
	bool		stream;			/* rows wait for the reader, none are kept;
								 * worker's DestReceiver reads it */
	bool		keep;			/* keep the result in a file for any
								 * session (keep.c); worker reads it */
	Oid			registry_relid; /* bg_job_registry, or InvalidOid; worker
								 * writes its row there */
	Oid			detached_relid; /* bg_job_detached, or InvalidOid; worker
								 * expires marks there */
	char		label[BG_LABEL_LEN];	/* bg_launch's label, or ""; worker
										 * records it */
	char		notify[NAMEDATALEN];	/* channel to NOTIFY when the job
										 * ends, or ""; worker sends it */

	/* Written without the mutex */
	pg_atomic_uint64 rows;		/* rows sent so far: worker's DestReceiver
								 * adds; launcher and bg_jobs read */
	pg_atomic_uint64 kept_size; /* bytes of the kept file so far, and at the
								 * end its size (0: only the tag is kept):
								 * worker writes; bg_jobs and the registry
								 * read */
	pg_atomic_uint64 kept_valid;	/* bytes of the kept file that hold its
									 * header and whole rows, written out:
									 * worker writes; readers in other
									 * sessions follow it while it grows */
	pg_atomic_uint32 ring_handle;	/* segment of the worker's ring of
									 * kept-file blocks (ring.c), or 0 */
	ConditionVariable kept_cv;	/* worker broadcasts when kept_valid grows
								 * and when it exits; those readers sleep on
								 * it */
	pg_atomic_uint64 messages_valid;	/* bytes of whole messages in the
										 * job's messages file: worker
										 * writes; bg_messages reads while the
										 * job runs */
	pg_atomic_uint64 messages_sent; /* messages the job sent: worker writes */
	/* waits the lock manager cannot see, for the wait-for graph (waitgraph.c) */
	bool		launcher_waiting;	/* launcher sets while it waits for the
									 * job's rows or outcome */
	bool		worker_waiting; /* worker sets while it waits for its
								 * launcher: for its launch, or for room in
								 * a stream job's queue */

	/* Under the mutex */
	slock_t		mutex;			/* protects the fields below */
	PGPROC	   *worker_proc;	/* worker sets it once attached; launcher
								 * reads it to wake the worker */
	pid_t		worker_pid;		/* set with worker_proc: whom cancels and the
								 * wait-for graph address */
	bool		go;				/* launcher sets: run the statements; worker
								 * waits for it */
	bool		launcher_gone;	/* launcher's detach callback sets; worker
								 * reads: nobody will say "go" */
	bool		launched;		/* launcher sets once bg_launch succeeded;
								 * worker waits for it before it commits */
	bool		registered;		/* worker sets once the job is in the
								 * registry (or need not be); bg_launch
								 * waits for it */
	bool		cancel_requested;	/* bg_cancel (any session) sets; worker
									 * reads it when it fails */
	bool		ended;			/* worker sets once it committed or failed;
								 * bg_cancel reads it */
	bool		worker_exited;	/* worker's detach callback sets; probes of
								 * bg_jobs, bg_wait and limits read */
	bool		rows_kept;		/* worker sets once rows went to a file;
								 * reader reads once the tuple queue is gone */
	bool		rows_in_kept_file;	/* worker sets, with rows_kept, when that
									 * file is the job's kept file: the rows
									 * the queue did not take start there at
									 * rows_kept_from */
	uint64		rows_kept_from;
	char		rows_link[MAXPGPATH];	/* worker sets with rows_in_kept_file:
										 * the path of that second name,
										 * which the launching session
										 * removes, or "" */
	bool		rows_aside;		/* worker sets once a row of a kept result
								 * stayed in the kept file for want of room
								 * in the queue, and wakes the launching
								 * session: that reads on from the kept file
								 * once its queue is empty */
	bool		messages_kept;	/* worker sets once messages went to a file;
								 * reader reads once the message queue is
								 * gone */
	PGPROC	   *waiters[BG_MAX_WAITERS];	/* sessions in bg_wait_any on
											 * this job, whose latches the
											 * worker sets when it exits */
	bool		waiter_any[BG_MAX_WAITERS];	/* that waiter waits for
											 * another job too: no edge of
											 * the wait-for graph */
	bool		kept_recorded;	/* worker sets once the registry records its
								 * kept result; a session may then give back
								 * the segment of the job unread */
	bool		has_progress;	/* bg_progress was called: worker sets */
	double		progress;		/* the percent it last reported */
	char		progress_message[BG_PROGRESS_MESSAGE_LEN];	/* and its message */
} BgJobShared;

/* Whom bg_job_set_flag wakes */
typedef enum BgWake
{
	BG_WAKE_NONE,				/* nobody waits for this flag */
	BG_WAKE_WORKER,				/* the worker waits for it */
	BG_WAKE_LAUNCHER			/* the launching session waits for it */
} BgWake;

/*
 * The job registry (registry.c), a table of the extension: the columns the
 * C code needs, at these positions.  A later version of the extension may
 * add columns after them; the library checks the layout where it opens the
 * table and leaves columns it does not know NULL.
 */
#define BG_REGISTRY_TABLE					"bg_job_registry"
#define Natts_bg_job_registry				14
#define Anum_bg_job_registry_id				1
#define Anum_bg_job_registry_pid			2
#define Anum_bg_job_registry_role			3
#define Anum_bg_job_registry_database		4
#define Anum_bg_job_registry_launcher_pid	5
#define Anum_bg_job_registry_segment		6
#define Anum_bg_job_registry_query			7
#define Anum_bg_job_registry_state			8
#define Anum_bg_job_registry_launched_at	9
#define Anum_bg_job_registry_finished_at	10
#define Anum_bg_job_registry_rows			11
#define Anum_bg_job_registry_command		12
#define Anum_bg_job_registry_sqlstate		13
#define Anum_bg_job_registry_error			14

/*
 * Columns of 1.1 that the library uses where they exist, so that it serves
 * a 1.0 table until ALTER EXTENSION UPDATE, each saying what it holds.
 * First, the size of the job's kept result (NULL: none; 0: only the
 * completion tag, in the row).
 */
#define Anum_bg_job_registry_kept_bytes		15
/* the job's kept messages (messages.c), NULL where none are kept */
#define Anum_bg_job_registry_messages		16
/* its label, NOTIFY channel, and the progress it last reported (control.c) */
#define Anum_bg_job_registry_label			17
#define Anum_bg_job_registry_notify			18
#define Anum_bg_job_registry_progress		19
#define Anum_bg_job_registry_progress_message	20
/* the PID of the process that ran it, which a started worker may reuse */
#define Anum_bg_job_registry_worker_pid		21

/* Jobs whose launching session detached them, beside the registry */
#define BG_DETACHED_TABLE					"bg_job_detached"
#define Natts_bg_job_detached				1
#define Anum_bg_job_detached_id				1

/*
 * A job's state as the registry records it (registry.c maps each to the
 * text in bg_job_registry.state).  A "running" row whose worker is gone is
 * shown as "lost", and recorded so once noticed (from 1.1 on).
 */
typedef enum BgJobStatus
{
	BG_STATUS_RUNNING,			/* listed, no outcome recorded yet */
	BG_STATUS_FINISHED,			/* committed */
	BG_STATUS_FAILED,			/* rolled back on an error */
	BG_STATUS_CANCELLED,		/* rolled back by bg_cancel or a failed launch */
	BG_STATUS_LOST				/* worker gone without an outcome */
} BgJobStatus;

#define BG_NUM_STATUSES		(BG_STATUS_LOST + 1)

/* Name of the server CREATE EXTENSION makes */
#define BG_SERVER_NAME			"bg_server"

/* Life of a job as the session that launched it sees it */
/* The wait-for graph (waitgraph.c) */
#define BG_WALK_MAX		64		/* backends a walk visits at most */
typedef struct BgWaitEdge
{
	int			from;			/* this backend waits */
	int			to;				/* for this one */
} BgWaitEdge;
/* The chain of waits the previous check of one wait saw, or len 0 */
typedef struct BgWaitCycle
{
	int			len;
	int			path[BG_WALK_MAX];
} BgWaitCycle;

typedef enum BgJobState
{
	BG_JOB_RUNNING,				/* no outcome received yet */
	BG_JOB_FINISHED,			/* committed; command_tag is set */
	BG_JOB_FAILED,				/* error is set */
	BG_JOB_DETACHED				/* bg_detach released it; only a tombstone */
} BgJobState;

/* The rows of a result kept in the launching session (spool.c) */
typedef struct BgSpool BgSpool;

/* A position in a spool, with the reader's buffer for its file part */
typedef struct BgSpoolReader
{
	int64		row;			/* rows read */
	bool		in_file;		/* past the rows kept in memory */
	int			block;			/* memory block of the next row */
	off_t		offset;			/* its offset in the block, or in the file */
	char	   *buf;			/* rows read from the file */
	Size		buf_size;
	off_t		buf_start;		/* file offset of buf's first byte */
	Size		buf_len;		/* bytes in buf */
	uint32		buf_file;		/* which of the spool's files they are from */
	off_t		checked_to;		/* kept rows in buf before it match their
								 * CRCs */
	char	   *row_buf;		/* the current row, if from the file part */
	Size		row_size;
} BgSpoolReader;

/*
 * One scan (or other consumer) of a job's result in this session.  These
 * live in the job's memory, not the executor's, so that transaction and
 * subtransaction abort can release them after the executor state is gone.
 */
typedef struct BgReader
{
	bool		in_use;			/* slot taken by an open scan */
	BgSpoolReader pos;			/* where it is in the job's spool */
	SubTransactionId subid;		/* subtransaction that opened it */
	TupleTableSlot *slot;		/* caller's heap-tuple slot: the current row */
	HeapTupleData tuple;		/* the current row, in the spool or in buf */
	char	   *buf;			/* reader's own copy of the current row */
	uint32		bufsize;		/* allocated size of buf */
	int64		nread;			/* rows read since the last (re)start */
} BgReader;

/*
 * A job launched by this session.  Lives for the session (or until
 * bg_detach) in its own memory context under TopMemoryContext, because its
 * rows are read across transactions.
 */
typedef struct BgJob
{
	int			pid;			/* worker's pid */
	int64		job_id;			/* never-reused identifier */
	Oid			role;			/* role the job runs as */
	BgJobState	state;			/* what we know of its outcome */
	MemoryContext cxt;			/* holds everything below */
	char	   *sql;			/* the job's statements */
	dsm_segment *seg;			/* job segment while the job runs, or NULL */
	BgJobShared *shared;		/* fixed part of the segment, or NULL */
	uint64		rows;			/* rows the job sent, once seg is gone */
	BackgroundWorkerHandle *handle; /* to ask the postmaster about it */
	shm_mq_handle *tuple_mqh;	/* rows from the worker */
	shm_mq_handle *message_mqh; /* notices, errors, descriptor, outcome */
	SharedFileSet *fileset;		/* where the worker keeps what the queues did not take */
	uint64		rows_received;	/* rows taken off the tuple queue */
	uint64		kept_next;		/* once the rows the queue did not carry
								 * are copied from the kept file: where the
								 * next one starts there, or 0 */
	uint64		messages_received;	/* messages taken off the message queue */
	bool		tuples_done;	/* tuple queue detached: all rows received */
	bool		follows_kept;	/* tuple queue let go: the rows come from
								 * the kept file as the worker writes them
								 * (bg_job_follow_kept) */
	bool		messages_done;	/* message queue detached */
	TupleDesc	desc;			/* the result's columns, once known: as
								 * described at launch, then as the worker
								 * reports them */
	bool		described;		/* the worker reported them: rows follow */
	bool		reshaped;		/* ... and they are not those described */
	int			desc_missing_column;	/* > 0: that column's type was not */
	Oid			desc_missing_type;	/* found, and desc is NULL */
	BgSpool    *spool;			/* every row received so far */
	int64		nspooled;		/* rows in spool */
	bool		spool_broken;	/* an append to the spool failed */
	bool		stream;			/* one-pass: rows are not kept */
	bool		stream_taken;	/* a stream job's rows are being consumed */
	SubTransactionId detach_subid;	/* bg_detach pending commit, or 0 */
	bool		released;		/* ended, its segment given back: its rows
								 * are read from its kept file */
	uint64		seq;			/* launch order in the session */
	bool		quiet;			/* in the session's list of quiet jobs */
	char	   *command_tag;	/* completion tag, once finished */
	ErrorData  *error;			/* the job's error, once failed */
	List	   *deferred;		/* messages a commit took off the queue, to
								 * handle where the session next deals with
								 * the job (bg_jobs_release_at_commit) */
	bool		commit_tried;	/* a commit took its messages to let its
								 * segment go: none tries again */
	int			held_slot;		/* > 0: the role's slot its segment takes
								 * (bg_fdw.max_held_segments_per_role) */
	bool		given_up;		/* its segment went for want of its slot
								 * (bg_job_give_up): it failed here */
	BgReader  **readers;		/* array of nreaders */
	int			nreaders;		/* allocated length of readers */
	BgWaitCycle cycle;			/* what the last deadlock check saw */
} BgJob;

/* in bg_fdw.c */
extern int	bg_default_queue_size;
extern int	bg_max_queue_size;
extern Oid	bg_server_oid(bool missing_ok);
extern ErrorData *bg_rolled_back_call(void (*work) (void *arg), void *arg);
extern bool bg_job_held(int pid, int64 job_id);
extern long bg_interval_ms(Interval *interval);

/* in worker.c */
extern const char *bg_worker_launched_by(void);
extern BgJobShared *bg_worker_job(void);
extern int	bg_worker_job_name(void);

/* The role a job's worker connects as (bg_job_role_may_connect) */
static inline Oid
bg_job_connect_role(BgJobShared *shared)
{
	return shared->connect_as_job_role ? shared->current_user_id :
		shared->authenticated_user_id;
}
extern pid_t bg_shared_worker_pid(BgJobShared *shared);
extern ErrorData *bg_worker_take_error(void);

/* in dest.c */
extern DestReceiver *bg_create_dest_receiver(shm_mq_handle *mqh,
											 BgJobShared *shared,
											 SharedFileSet *fileset,
											 TupleDesc actual, TupleDesc desc);
extern void bg_dest_send_command(DestReceiver *dest, const char *tag);
extern void bg_dest_finish_keep(DestReceiver *dest);

/* in shape.c */
extern TupleDesc bg_result_desc(TupleDesc src);
extern void bg_desc_serialize(StringInfo buf, TupleDesc desc);
extern TupleDesc bg_desc_deserialize(StringInfo msg);
extern int	bg_desc_missing_type(StringInfo msg, Oid *typid);
extern bool bg_desc_equal(TupleDesc a, TupleDesc b);
extern void bg_check_statements(List *raw_list);



/* in waitgraph.c */
extern bool bg_wait_cycle_found(int pid, BgWaitCycle *seen);
extern void bg_raise_wait_cycle(BgWaitCycle *seen, const char *hint);
extern void bg_check_wait_cycle(int pid, BgWaitCycle *seen, const char *hint);
extern void bg_check_session_deadlock(int pid, BgWaitCycle *cycle,
									  const char *detail, const char *hint);

/* in handshake.c */
extern void bg_job_set_flag(BgJobShared *shared, bool *flag, BgWake wake);
extern bool bg_job_get_flag(BgJobShared *shared, bool *flag);
extern uint32 bg_wait_event_job(void);
extern uint32 bg_wait_event_launch(void);
extern bool bg_blocked_by_me(int pid);

/* in registry.c */
extern int	bg_job_retention;
extern int	bg_max_jobs_per_role;
extern int	bg_max_kept_size_per_role;
extern void bg_registry_register(BgJobShared *shared, const char *sql,
								 dsm_handle handle);
extern bool bg_registry_finish(BgJobShared *shared, const char *tag,
							   bool in_job_xact);
extern int	bg_registry_fail(BgJobShared *shared, ErrorData *edata,
							 bool discard);
extern bool bg_registry_record_kept(BgJobShared *shared);
extern bool bg_registry_outcome(int64 job_id, BgJob *job);
extern int	bg_registry_cancel_label(const char *pattern);
extern bool bg_registry_job_ended(int pid, int64 *job_id, dsm_handle *segment);
extern const char *bg_status_name(BgJobStatus status);
extern Oid	bg_registry_relid(void);
extern Oid	bg_detached_relid(Oid registry);
extern void bg_registry_tidy(BgJobShared *shared);
extern void bg_registry_job_reset(void);
extern void bg_registry_sweep(void);
extern bool bg_registry_try_lock(void);
extern void bg_registry_record_unstarted(int64 job_id, int name, Oid role,
										 TimestampTz launched_at,
										 const char *sql, const char *label,
										 const char *notify);
extern bool bg_registry_lock_role(Oid role, bool may_queue);
extern void bg_registry_unlock_role(void);
extern void bg_registry_check_kept(Oid role);
extern List *bg_registry_wait_edges(void);
extern text *bg_registry_wait(int pid, long timeout_ms);
extern void bg_registry_await_kept(int pid, int64 job_id);
extern bool bg_registry_cancel(int pid);
extern int	bg_registry_highest_name(int floor);
extern bool bg_registry_shows_worker(Oid relid);
extern void bg_registry_detached(int64 job_id);
extern bool bg_cancel_shared(BgJobShared *shared);

/* A job whose kept result a session may read, as the registry has it */
typedef struct BgKeptJob
{
	int64		id;
	int			pid;
	int64		kept_bytes;		/* size of the kept file; 0: only the tag */
	char	   *command;		/* completion tag */
	bool		running;		/* still running: its file is followed */
	dsm_handle	segment;		/* if running, its segment */
} BgKeptJob;

extern bool bg_registry_keeps(Oid registry);
extern void bg_registry_kept_job(int pid, int64 job_id, BgKeptJob *kj);
extern void bg_registry_ended_kept_job(int pid, int64 job_id, BgKeptJob *kj);
extern List *bg_registry_kept_jobs(void);
extern bytea *bg_registry_messages(int pid, int64 job_id, bool *running);
extern void bg_registry_sweep_files(void);

/* in keep.c */
typedef struct BgKeepWriter BgKeepWriter;
/* A row's record in a kept file */
typedef struct BgKeepRecord
{
	uint32		len;			/* bytes of the row, or BG_KEEP_FOOTER */
	pg_crc32c	crc;			/* CRC-32C of the row, or of the footer */
} BgKeepRecord;
typedef struct BgKeepReader BgKeepReader;
extern int	bg_max_result_size;
extern int	bg_max_kept_size;
extern void bg_keep_check_cluster(void);
extern int64 bg_keep_cluster_bytes(bool fresh);
extern BgKeepWriter *bg_keep_create(BgJobShared *shared, TupleDesc desc);
extern char *bg_keep_crc_records(char *p, char *end, bool store);
extern void bg_keep_append(BgKeepWriter *w, shm_mq_iovec *iov, int iovcnt);
extern off_t bg_keep_rows_end(BgKeepWriter *w);
extern Size bg_keep_read_back(BgKeepWriter *w, off_t offset, StringInfo out);
pg_noreturn extern void bg_keep_row_damaged(const char *path, off_t offset,
											bool checksum);
extern bool bg_keep_link(BgKeepWriter *w, FileSet *fileset, const char *name,
						 char *link_path);
extern void bg_keep_scan_rows(File file, off_t from, off_t to,
							  void (*consume) (void *arg, char *data, uint32 len),
							  void *arg);
extern void bg_keep_scan_rows_fd(int fd, const char *path, off_t from, off_t to,
								 Size limit,
								 void (*consume) (void *arg, char *data, uint32 len),
								 void *arg);
extern void bg_keep_set_aside(BgKeepWriter *w);
extern void bg_keep_file_path(char *path, int64 job_id);

/* ring.c */
#define BG_RING_SLOTS		4
typedef struct BgRing BgRing;
typedef void (*BgRingWrite) (void *arg, const char *data, Size len,
							 off_t offset, bool uncached);
extern BgRing *bg_ring_create(BgJobShared *shared, Size block_size,
							  dsm_segment **segp);
extern char *bg_ring_block(BgRing *ring);
extern void bg_ring_hand_off(BgRing *ring, off_t offset, Size len,
							 off_t valid_end, bool uncached);
extern char *bg_ring_next(BgRing *ring, BgJobShared *shared, bool drain,
						  BgRingWrite write, void *arg);
extern void bg_ring_end(BgJobShared *shared, dsm_segment *seg);
extern bool bg_ring_helped(BgRing *ring);
extern bool bg_keep_reader_writes(BgKeepWriter *w);
extern ssize_t bg_ring_pwrite(int fd, const char *data, Size len, off_t offset,
							  bool uncached);
extern bool bg_ring_help(BgJobShared *shared, int64 job_id);
extern void bg_ring_let_go(void);
/* the kept file's name in the job's file set, for rows the queue did not carry */
#define BG_KEPT_ROWS_LINK	"kept"
extern void bg_keep_publish(BgKeepWriter *w);
extern int64 bg_keep_finish(BgKeepWriter *w);
extern bool bg_keep_sync(void);
extern void bg_keep_release(void);
extern void bg_keep_discard(void);
extern BgKeepReader *bg_keep_open(int pid, int64 job_id, int64 size,
								  const char *command);
extern BgKeepReader *bg_keep_open_live(BgKeptJob *kj, bool wait);
extern int	bg_keep_open_rows(int64 job_id, char *path, off_t *rows_start);
extern bool bg_keep_file_removed(int64 job_id);
extern TupleDesc bg_keep_desc(BgKeepReader *r);
extern bool bg_keep_next(BgKeepReader *r, TupleTableSlot *slot);
extern void bg_keep_rewind(BgKeepReader *r);
extern void bg_keep_close(BgKeepReader *r);
extern void bg_keep_remove_at_commit(int64 job_id);
extern void bg_keep_sweep(bool (*keep) (int64 job_id, void *arg), void *arg);
extern void bg_keep_init(void);
extern bool bg_keep_make_dir(int elevel);
extern void bg_keep_messages_path(char *path, int64 job_id);

/* in messages.c */
extern int	bg_max_messages_size;
extern void bg_messages_keep_start(BgJobShared *shared);
extern void bg_messages_keep_detached(void);
extern void bg_messages_at_exit(int code, Datum arg);
extern void bg_messages_job_reset(void);
extern void bg_messages_keep(const char *msg, size_t len);
extern bytea *bg_messages_kept(void);
extern bytea *bg_messages_live(int64 job_id, uint64 valid, uint64 sent,
							   bool missing_ok);
extern void bg_messages_to_db_encoding(const char *msg, size_t len,
									   StringInfo out);

/* in control.c */
extern void bg_check_name(const char *what, const char *value, int maxlen);
extern void bg_check_not_self(int pid);
extern void bg_control_notify(BgJobShared *shared, BgJobStatus status);
extern void bg_notify_end(const char *channel, int pid, int64 job_id,
						  BgJobStatus status);

/* in supervisor.c */
extern void bg_supervisor_init(void);
extern void bg_supervisor_ensure(void);
extern void bg_supervisor_prepare(void);
extern void *bg_supervisor_pool(void);
extern void *bg_supervisor_queue(void);
extern void bg_supervisor_wake(void);
extern bool bg_supervisor_started(void);

/* in pool.c */
/* Names of jobs handed to started workers or queued: above any PID (PID_MAX_LIMIT) */
#define BG_FIRST_JOB_NAME	4194305
#define BG_WORKER_MAX_JOBS	1000	/* jobs a started worker runs at most */
extern bool bg_reuse_workers;
extern int	bg_max_idle_workers;
extern int	bg_worker_idle_timeout;
extern Size bg_pool_size(void);
extern void bg_pool_init(void *ptr);
extern int	bg_pool_hand_over(dsm_segment *seg, BgJobShared *shared,
							  const char *libraries);
extern void bg_pool_offer(Oid connected_as, bool superuser, Oid job_role,
						  bool light, int jobs_run);
extern void bg_pool_make_room(void);
extern bool bg_pool_offered(void);
extern void bg_pool_reset_session(void);
extern dsm_handle bg_pool_wait(int64 *job_id);
extern void bg_pool_taken(BgJobShared *shared);
extern void bg_pool_not_taken(void);
extern void bg_pool_counts(int *idle, int64 *handed_over);
extern int	bg_pool_take_name(int floor);
extern int	bg_pool_running_jobs(void);
extern int	bg_count_workers(const char *type, bool same);
extern void bg_pool_make_room_for_queue(void);
extern void bg_pool_make_room_for(int count);

/* in launcher.c: what a job's segment holds, apart from its queues */
typedef struct BgLaunchParts
{
	BgJobShared shared;			/* the launcher's half */
	const char *sql;
	Size		sql_len;		/* with the terminator */
	const char *guc;
	Size		guc_len;
	const char *libraries;
	Size		library_len;
	int			queue_size;
} BgLaunchParts;
extern dsm_segment *bg_segment_layout(BgLaunchParts *parts, bool launcher);
extern void bg_job_worker(BackgroundWorker *worker, const char *function,
						  Datum arg);

/* in queue.c */
extern int	bg_max_jobs;
extern int	bg_max_queued_jobs;
extern int	bg_max_queued_jobs_per_role;
extern int	bg_max_queued_size;
extern int	bg_max_queued_size_per_role;

/* A queued job, as bg_queue_find and bg_queue_list see it */
typedef struct BgQueuedInfo
{
	int			name;
	int64		job_id;
	Oid			role;
	TimestampTz launched_at;
	bool		cancelled;
	TimestampTz cancelled_at;
	bool		starting;		/* its worker is being started */
	uint64		seq;
	char	   *sql;			/* bg_queue_list, for the role's members */
	char	   *label;
	char	   *desc_msg;		/* the described columns (bg_desc_serialize) */
	int			desc_len;
} BgQueuedInfo;

extern Size bg_queue_size(void);
extern void bg_queue_init(void *ptr);
extern int	bg_queue_waiting(void);
extern bool bg_queue_available(BgJobShared *shared);
extern bool bg_queue_possible(bool keep, bool stream, Oid registry);
extern bool bg_queue_in_job(void);
extern uint64 bg_queue_ended_count(void);
extern void bg_queue_defer(uint64 seen);
extern void bg_queue_job_ended(Oid database_id, Oid role);
extern void bg_queue_undefer_all(void);
extern int	bg_queue_push(dsm_segment *seg, int queue_size, TupleDesc desc);
extern void bg_queue_launched(int name, int64 job_id);
extern void bg_queue_drop(int name, int64 job_id);
extern void bg_queue_record(int name, int64 job_id);
extern List *bg_queue_sweep_records(void);
extern void bg_queue_forget_records(List *databases);
extern void bg_queue_drop_database(void);
extern bool bg_queue_find(int name, int64 job_id, BgQueuedInfo *info);
pg_noreturn extern void bg_queue_raise_cancelled(int name);
extern void bg_queue_await_start(int name, int64 job_id);
extern bool bg_queue_cancel(int name);
extern List *bg_queue_list(bool desc);
extern void bg_queued_launch_remember(int name, int64 job_id, Oid role);
extern void bg_jobs_register_callbacks(void);
extern int64 bg_queued_launch(int name, bool *detached);
extern void bg_queued_launch_detach(int name);
extern void bg_queued_launch_end_detaches(bool commit,
										  SubTransactionId from_subid);
extern void bg_queued_launch_subcommit(SubTransactionId mySubid,
									   SubTransactionId parentSubid);
extern bool bg_queued_launch_detaching(void);
extern bool bg_queue_start_jobs(void);
extern bool bg_queue_claim(int slot, BgJobShared *shared);
extern int	bg_jobs_running(void);
extern dsm_segment *bg_queue_segment(void);
extern bool bg_queue_holds(BgJobShared *shared);
extern bool bg_queue_started(BgJobShared *shared);
extern void bg_queue_counts(int *queued, int64 *started, int64 *bytes);

/* in spool.c */
extern BgSpool *bg_spool_create(MemoryContext cxt, int mem_limit_kb,
								int64 kept_job);
extern void bg_spool_set_valid(BgSpool *sp, uint64 valid);
extern bool bg_spool_needs_valid(BgSpool *sp, uint32 len);
extern void bg_spool_job_ended(BgSpool *sp, uint64 valid);
extern bool bg_spool_adopt_kept(BgSpool *sp, int64 nrows, uint64 valid);
extern bool bg_spool_kept_removed(BgSpool *sp);
extern bool bg_spool_holds_kept(BgSpool *sp);
extern bool bg_spool_hold_kept(BgSpool *sp);
extern off_t bg_spool_kept_end(BgSpool *sp);
extern void bg_spool_follow_kept(BgSpool *sp, uint64 valid, Size limit,
								 void (*consume) (void *arg, char *data, uint32 len),
								 void *arg);
extern void bg_spool_unkeep(BgSpool *sp);
extern void bg_spool_unkeep_cleanup(BgSpool *sp, bool done);
extern void bg_spool_free(BgSpool *sp);
extern void bg_spool_append(BgSpool *sp, MinimalTuple tuple);
extern void bg_spool_rewind(BgSpoolReader *rd);
extern bool bg_spool_read(BgSpool *sp, BgSpoolReader *rd, HeapTuple tuple);

/* in spill.c */
extern bool bg_spill_send_row(shm_mq_handle *mqh, SharedFileSet *fileset,
							  BgKeepWriter *keep, shm_mq_iovec *iov,
							  int iovcnt, bool flush);
extern void bg_spill_finish_rows(BgJobShared *shared);
extern void bg_spill_redirect_messages(dsm_segment *seg, shm_mq_handle *mqh,
									   BgJobShared *shared,
									   SharedFileSet *fileset);
extern void bg_spill_push_messages_slow(void);
extern void bg_spill_messages_exit(void);
extern void bg_spill_job_reset(void);
extern bool bg_spill_collect(BgJobShared *shared, SharedFileSet *fileset,
							 bool rows, uint64 seen,
							 void (*consume) (void *arg, char *data, uint32 len),
							 void *arg);

/* Move kept messages into the queue if there are any: cheap when not */
extern bool bg_spill_messages_pending;

static inline void
bg_spill_push_messages(void)
{
	if (bg_spill_messages_pending)
		bg_spill_push_messages_slow();
}

/* in job.c */
extern void bg_segment_track(dsm_segment *seg);
extern BgJob *bg_job_create(dsm_segment *seg, BackgroundWorkerHandle *handle,
							int pid, const char *sql, TupleDesc desc,
							MemoryContext cxt);
extern void bg_job_attach(BgJob *job);
extern List *bg_session_jobs(void);
extern bool bg_session_has_jobs(void);
extern int64 bg_session_job_id(int pid);
extern BgJob *bg_job_lookup(int pid, int64 job_id, bool missing_ok);
extern BgJob *bg_job_lookup_attached(int pid, int64 job_id);
extern void bg_job_check_privileges(BgJob *job);
extern void bg_job_take_deferred(BgJob *job);
pg_noreturn extern void bg_permission_denied(int pid, Oid role);
extern bool bg_job_visible(BgJob *job);
extern void bg_job_poll_messages(BgJob *job);
extern const char *bg_job_state_name(BgJob *job);
extern bool bg_job_in_use(BgJob *job);
extern uint64 bg_job_rows(BgJob *job);
extern void bg_job_record_detach(BgJob *job);
extern void bg_jobs_release_ended(void);
extern int	bg_max_ended_segments;
extern void bg_jobs_check_ended_segments(void);
extern int	bg_max_held_segments_per_role;
extern void bg_held_slot_take(Oid role);
extern void bg_held_slot_drop_pending(void);
extern bool bg_job_wait(BgJob *job, long timeout_ms);
extern void bg_job_wait_descriptor(BgJob *job);
extern void bg_job_wait_registered(BgJob *job);
extern void bg_job_raise_error(BgJob *job);
extern int	bg_reader_open(BgJob *job, TupleTableSlot *slot);
extern void bg_reader_close(BgJob *job, int reader);
extern void bg_reader_rescan(BgJob *job, int reader);
extern bool bg_reader_next(BgJob *job, int reader);

#endif							/* BG_FDW_H */
