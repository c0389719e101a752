/*-------------------------------------------------------------------------
 *
 * compat.h
 *		  Small wrappers over the server APIs that differ between the
 *		  PostgreSQL versions bg_fdw supports (15 and later).  Version tests
 *		  belong here, not in the code that uses them.
 *
 * Copyright (c) 2026, The bg_fdw Authors
 *
 * IDENTIFICATION
 *		  bg_fdw/compat.h
 *
 *-------------------------------------------------------------------------
 */
#ifndef BG_FDW_COMPAT_H
#define BG_FDW_COMPAT_H

#include "commands/explain.h"
#if PG_VERSION_NUM >= 180000
#include "commands/explain_format.h"
#include "commands/explain_state.h"
#endif
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "optimizer/pathnode.h"
#include "storage/lock.h"
#include "tcop/pquery.h"
#include "utils/relcache.h"
#include "utils/backend_status.h"
#include "utils/wait_event.h"
#include "catalog/pg_database.h"
#include "catalog/pg_foreign_server.h"
#include "utils/acl.h"
#include "replication/slot.h"
#include "utils/guc.h"
#include "utils/guc_tables.h"
#if PG_VERSION_NUM >= 170000
#include "storage/dsm_registry.h"
#endif

#if PG_VERSION_NUM < 150000
#error "bg_fdw requires PostgreSQL 15 or later"
#endif

/* Is the current role (after SET ROLE) a superuser? */
static inline bool
bg_current_role_is_superuser(void)
{
#if PG_VERSION_NUM >= 170000
	return current_role_is_superuser;
#else
	return session_auth_is_superuser;
#endif
}

/*
 * Flags for a worker that connects as a job's role: on 17 and later it may
 * connect as a role that cannot log in.
 */
#if PG_VERSION_NUM >= 170000
#define BG_CONNECT_AS_ROLE_FLAGS	BGWORKER_BYPASS_ROLELOGINCHECK
#else
#define BG_CONNECT_AS_ROLE_FLAGS	0
#endif

/* The wait event of a backend sending to a full shm_mq */
#if PG_VERSION_NUM >= 170000
#define BG_WAIT_EVENT_MQ_SEND	WAIT_EVENT_MESSAGE_QUEUE_SEND
#else
#define BG_WAIT_EVENT_MQ_SEND	WAIT_EVENT_MQ_SEND
#endif

/* What SendProcSignal takes to find a backend's slot at once */
#if PG_VERSION_NUM >= 170000
#define bg_proc_signal_id(proc)	GetNumberFromPGProc(proc)
#else
#define bg_proc_signal_id(proc)	((proc)->backendId)
#endif

/* Wrap a received message, which we only read, in a StringInfo. */
static inline void
bg_init_read_only_stringinfo(StringInfo str, char *data, int len)
{
#if PG_VERSION_NUM >= 170000
	initReadOnlyStringInfo(str, data, len);
#else
	str->data = data;
	str->len = len;
	str->maxlen = len;
	str->cursor = 0;
#endif
}

/* A plain foreign scan path: no pushdown, no parameters. */
static inline ForeignPath *
bg_create_foreignscan_path(PlannerInfo *root, RelOptInfo *rel, double rows,
						   Cost startup_cost, Cost total_cost)
{
#if PG_VERSION_NUM >= 180000
	return create_foreignscan_path(root, rel, NULL, rows, 0, startup_cost,
								   total_cost, NIL, NULL, NULL, NIL, NIL);
#elif PG_VERSION_NUM >= 170000
	return create_foreignscan_path(root, rel, NULL, rows, startup_cost,
								   total_cost, NIL, NULL, NULL, NIL, NIL);
#else
	return create_foreignscan_path(root, rel, NULL, rows, startup_cost,
								   total_cost, NIL, NULL, NULL, NIL);
#endif
}

/* Run a portal to completion at top level. */
static inline void
bg_portal_run(Portal portal, DestReceiver *dest, QueryCompletion *qc)
{
#if PG_VERSION_NUM >= 180000
	(void) PortalRun(portal, FETCH_ALL, true, dest, dest, qc);
#else
	(void) PortalRun(portal, FETCH_ALL, true, true, dest, dest, qc);
#endif
}

/*
 * What a reader or a worker waits for, as pg_stat_activity shows it: named
 * wait events on 17 and later, the generic "Extension" before.  On 17 a
 * lookup takes a lock: handshake.c looks each one up once and keeps it.
 */
static inline uint32
bg_wait_event_lookup(const char *name)
{
#if PG_VERSION_NUM >= 170000
	return WaitEventExtensionNew(name);
#else
	(void) name;
	return PG_WAIT_EXTENSION;
#endif
}

/* The same, looked up once per process (on 17 and later a lookup locks) */
static inline uint32
bg_wait_event_cached(const char *name, uint32 *cache)
{
	if (*cache == 0)
		*cache = bg_wait_event_lookup(name);
	return *cache;
}

/*
 * Take a session lock if it is free, without waiting and without raising an
 * error when the lock table is full (18 added whether to log a failure).
 */
static inline LockAcquireResult
bg_lock_try_quietly(const LOCKTAG *tag, LOCKMODE mode)
{
#if PG_VERSION_NUM >= 180000
	return LockAcquireExtended(tag, mode, true, true, false, NULL, false);
#else
	return LockAcquireExtended(tag, mode, true, true, false, NULL);
#endif
}

/* Does this backend hold the lock in this mode (17 added "or stronger")? */
static inline bool
bg_lock_held_by_me(const LOCKTAG *tag, LOCKMODE mode)
{
#if PG_VERSION_NUM >= 170000
	return LockHeldByMe(tag, mode, false);
#else
	return LockHeldByMe(tag, mode);
#endif
}

/* A sender waiting for room in a shm_mq (renamed in 17) */
static inline uint32
bg_wait_event_mq_send(void)
{
#if PG_VERSION_NUM >= 170000
	return WAIT_EVENT_MESSAGE_QUEUE_SEND;
#else
	return WAIT_EVENT_MQ_SEND;
#endif
}

/* May the current user use the foreign server, create temporary tables? */
static inline AclResult
bg_foreign_server_aclcheck(Oid serverid)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(ForeignServerRelationId, serverid, GetUserId(), ACL_USAGE);
#else
	return pg_foreign_server_aclcheck(serverid, GetUserId(), ACL_USAGE);
#endif
}

static inline AclResult
bg_database_temp_aclcheck(void)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(DatabaseRelationId, MyDatabaseId, GetUserId(), ACL_CREATE_TEMP);
#else
	return pg_database_aclcheck(MyDatabaseId, GetUserId(), ACL_CREATE_TEMP);
#endif
}

static inline Oid
bg_primary_key_index(Relation rel)
{
#if PG_VERSION_NUM >= 180000
	return RelationGetPrimaryKeyIndex(rel, false);
#else
	return RelationGetPrimaryKeyIndex(rel);
#endif
}

/*
 * The status of the idx'th backend (from 1) of this transaction's snapshot.
 * 16.0 had the old function, meant by index (the new one came in 16.1).
 */
static inline LocalPgBackendStatus *
bg_local_beentry(int idx)
{
#if PG_VERSION_NUM >= 160001
	return pgstat_get_local_beentry_by_index(idx);
#else
	return pgstat_fetch_stat_local_beentry(idx);
#endif
}

/* Drop the temporary replication slots this process made */
static inline void
bg_replication_slot_cleanup(void)
{
#if PG_VERSION_NUM >= 170000
	ReplicationSlotCleanup(false);
#else
	ReplicationSlotCleanup();
#endif
}

/* May this role connect to the current database (CONNECT)? */
static inline AclResult
bg_database_connect_aclcheck(Oid role)
{
#if PG_VERSION_NUM >= 160000
	return object_aclcheck(DatabaseRelationId, MyDatabaseId, role, ACL_CONNECT);
#else
	return pg_database_aclcheck(MyDatabaseId, role, ACL_CONNECT);
#endif
}

/*
 * Does this process have a custom setting no library defined (a placeholder,
 * made by SET myapp.x or by restoring a session's settings)?
 */
static inline bool
bg_have_guc_placeholders(void)
{
	struct config_generic **vars;
	int			n;
	int			i;

#if PG_VERSION_NUM >= 160000
	vars = get_guc_variables(&n);
#else
	vars = get_guc_variables();
	n = GetNumConfigOptions();
#endif
	for (i = 0; i < n; i++)
	{
		if (vars[i]->flags & GUC_CUSTOM_PLACEHOLDER)
			return true;
	}
	return false;
}

/*
 * Shared state found by name without shared_preload_libraries: the DSM
 * registry of 17 and later.  Before 17 there is none, and this is NULL.
 */
#define BG_HAVE_NAMED_DSM (PG_VERSION_NUM >= 170000)

static inline void *
bg_named_dsm_segment(const char *name, size_t size,
					 void (*init_callback) (void *ptr), bool *found)
{
#if PG_VERSION_NUM >= 170000
	return GetNamedDSMSegment(name, size, init_callback, found);
#else
	(void) name;
	(void) size;
	(void) init_callback;
	*found = false;
	return NULL;
#endif
}

#endif							/* BG_FDW_COMPAT_H */
