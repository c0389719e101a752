/*-------------------------------------------------------------------------
 *
 * control.c
 *		  Job control for scripts and DBAs: labels, progress reported from
 *		  inside a job, and the NOTIFY a job sends when it ends.
 *
 * A label and a NOTIFY channel are given to bg_launch and travel in the
 * job's segment; the worker records the label in the registry.  Progress
 * lives in the job's segment while the job runs (bg_jobs reads it there,
 * without a transaction of the job's) and goes into the registry row with
 * the outcome.  The NOTIFY is sent by the worker once the outcome (and the
 * kept result) is committed, in a transaction of its own, so that a full
 * notification queue never fails the job's work, and a listener that reads
 * bg_jobs or the result on being woken finds them.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/control.c
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "commands/async.h"
#include "fmgr.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/numeric.h"

#include "bg_fdw.h"

PG_FUNCTION_INFO_V1(bg_progress);
PG_FUNCTION_INFO_V1(bg_cancel_label);

/*
 * A label or a channel name: not empty, at most maxlen bytes, no control
 * characters (it is shown in bg_jobs and in psql's output).
 */
void
bg_check_name(const char *what, const char *value, int maxlen)
{
	const unsigned char *p;

	if (*value == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s of a background job must not be empty", what)));
	if (strlen(value) > (size_t) maxlen)
		ereport(ERROR,
				(errcode(ERRCODE_NAME_TOO_LONG),
				 errmsg("%s of a background job is too long", what),
				 errdetail("It is %zu bytes; at most %d are allowed.",
						   strlen(value), maxlen)));
	for (p = (const unsigned char *) value; *p; p++)
	{
		if (*p < 0x20 || *p == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s of a background job must not contain control characters",
							what)));
	}
}

/*
 * bg_progress(percent numeric, message text DEFAULT NULL) RETURNS void
 *
 * Called from inside a job: what bg_jobs shows as its progress, at once,
 * from any session with the job role's privileges.  No transaction is
 * involved, so it works inside a long statement.
 */
Datum
bg_progress(PG_FUNCTION_ARGS)
{
	BgJobShared *shared = bg_worker_job();
	double		percent;
	char	   *message = NULL;

	if (shared == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("bg_progress() can only be called inside a background job"),
				 errhint("Call it from the SQL a job launched with bg_launch() runs.")));
	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("percent must not be null")));
	percent = DatumGetFloat8(DirectFunctionCall1(numeric_float8,
												 PG_GETARG_DATUM(0)));
	if (!(percent >= 0 && percent <= 100))
		ereport(ERROR,
				(errcode(ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE),
				 errmsg("percent must be between 0 and 100")));
	if (PG_NARGS() > 1 && !PG_ARGISNULL(1))
	{
		message = text_to_cstring(PG_GETARG_TEXT_PP(1));
		if (strlen(message) >= BG_PROGRESS_MESSAGE_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_STRING_DATA_RIGHT_TRUNCATION),
					 errmsg("progress message is too long"),
					 errdetail("It is %zu bytes; at most %d are allowed.",
							   strlen(message), BG_PROGRESS_MESSAGE_LEN - 1)));
	}

	SpinLockAcquire(&shared->mutex);
	shared->has_progress = true;
	shared->progress = percent;
	if (message)
		memcpy(shared->progress_message, message, strlen(message) + 1);
	else
		shared->progress_message[0] = '\0';
	SpinLockRelease(&shared->mutex);
	PG_RETURN_VOID();
}

/*
 * bg_cancel_label(pattern text) RETURNS integer
 *
 * Cancel the running jobs of this database whose label matches the LIKE
 * pattern and that the caller may act on; returns how many.
 */
Datum
bg_cancel_label(PG_FUNCTION_ARGS)
{
	char	   *pattern = text_to_cstring(PG_GETARG_TEXT_PP(0));

	PG_RETURN_INT32(bg_registry_cancel_label(pattern));
}

/*
 * The job has ended in "status" and its outcome is committed: NOTIFY its
 * channel, if it has one, in a transaction of its own.  The payload says
 * only which job and how it ended (any role may LISTEN on any channel).  A
 * failure is only logged: the job's outcome stands.  A standby sends none.
 */
void
bg_control_notify(BgJobShared *shared, BgJobStatus status)
{
	char		payload[128];
	MemoryContext cxt = CurrentMemoryContext;

	if (shared->notify[0] == '\0' || RecoveryInProgress())
		return;
	snprintf(payload, sizeof(payload),
			 "{\"pid\": %d, \"id\": " INT64_FORMAT ", \"state\": \"%s\"}",
			 MyProcPid, shared->job_id, bg_status_name(status));
	PG_TRY();
	{
		StartTransactionCommand();
		Async_Notify(shared->notify, payload);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortOutOfAnyTransaction();
		ereport(LOG,
				(errmsg("background job %d could not notify channel \"%s\": %s",
						MyProcPid, shared->notify, edata->message)));
	}
	PG_END_TRY();
}
