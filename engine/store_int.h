/* Internals of the SQLite store, shared by store.c (the connection, its
 * schema and migrations, transactions, definitions, the engines' registry)
 * and store_instances.c (instance rows: starts, claims, leases,
 * transitions, step runs, incidents, listings). Every statement's text is
 * in store.c's one table, indexed by the enum below and prepared once. */
#ifndef SY_STORE_INT_H
#define SY_STORE_INT_H

#include "store.h"

enum {
  Q_BEGIN,
  Q_BEGIN_READ,
  Q_DATA_VERSION,
  Q_COMMIT,
  Q_ROLLBACK,
  Q_PUT_DEF,
  Q_GET_DEF,
  Q_INSERT_INSTANCE,
  Q_CLAIM_READY,
  Q_PICK_NEW,
  Q_CLAIM_NEW,
  Q_CLAIM_DUE,
  Q_CLAIM_EXPIRED,
  Q_RENEW,
  Q_RELEASE,
  Q_ENGINE_REGISTER,
  Q_ENGINE_HEARTBEAT,
  Q_ENGINE_DELETE,
  Q_ENGINES_ON_HOST,
  Q_NEXT_WAKE,
  Q_COUNT_ACTIVE,
  Q_COUNT_BY_STATE,
  Q_UPDATE_INSTANCE,
  Q_ADVANCE_INSTANCE,
  Q_INSERT_STEP_RUN,
  Q_INSERT_INCIDENT,
  Q_GET_INSTANCE,
  Q_LIST_INSTANCES,
  Q_COUNT_INSTANCES,
  Q_LIST_STEP_RUNS,
  Q_LIST_INCIDENTS,
  Q_RESOLVE_INCIDENTS,
  Q_JOURNAL_PUT,
  Q_JOURNAL_READ,
  Q_JOURNAL_CLEAR,
  Q_SIGNAL_PUT,
  Q_SIGNAL_WAKE,
  Q_SIGNAL_TAKE,
  Q_SIGNAL_LIST,
  Q_FIND_LIVE,
  Q__COUNT
};

struct sy_store {
  sqlite3 *db;
  int busy_timeout_ms;
  uint64_t busy_since; /* monotonic, ns */
  sqlite3_stmt *stmt[Q__COUNT];
  int in_tx;
  int64_t tx_seq;
  char errmsg[512];
};

/* The statement q, prepared on first use; NULL with the error recorded. */
sqlite3_stmt *sy__stmt(sy_store *st, int q);
/* Turns an SQLite failure into an SY_E code, keeping SQLite's message. */
int sy__db_error(sy_store *st, const char *what);
/* Steps a statement that returns no rows (bindings made), then resets it. */
int sy__exec_stmt(sy_store *st, sqlite3_stmt *s, const char *what);
/* Binds text, or NULL for a NULL pointer. */
void sy__bind_text(sqlite3_stmt *s, int i, const char *v);
/* Binds an integer, or NULL for 0. */
void sy__bind_opt_int(sqlite3_stmt *s, int i, int64_t v);

#endif
