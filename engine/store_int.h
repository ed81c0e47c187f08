/* Internals of the store, shared by store.c (the schema and its
 * migrations, every statement's text, transactions, definitions, the
 * engines' registry), store_instances.c (instance rows: starts, claims,
 * leases, transitions, step runs, incidents, listings) and the backend,
 * store_sqlite.c (the connection, its errors, statements). Every
 * statement's text is in store.c's one table, indexed by the enum below,
 * prepared once, and run through the statement API (plugin.h). */
#ifndef SY_STORE_INT_H
#define SY_STORE_INT_H

#include "store.h"

enum {
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
  Q_COUNT_ADD,
  Q_FOLD_COUNTS,
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
  Q_CLAIM_NEW_LOCKED,
  Q__COUNT
};

/* A database backend: the connection and its statements. The store's
 * logic and SQL (store.c, store_instances.c) are the same on every one;
 * a statement whose text must differ gives a second (sy_sql.pg). */
typedef struct sy__backend {
  const char *name;
  int postgres; /* its statements take sy_sql.pg where there is one */
  int (*open)(sy_store *st, const char *where, const sy_store_opts *o,
              char *err, size_t errlen);
  void (*close)(sy_store *st);
  /* Whether `where` holds a database already (1), without making one. */
  int (*exists)(const char *where);
  sy_stmt *(*prepare)(sy_store *st, const char *sql);
  int (*exec)(sy_store *st, const char *script);
  /* write: takes the database's write lock at once (one writer at a time,
   * as SQLite has it). */
  int (*begin)(sy_store *st, int write);
  int (*tx_open)(sy_store *st);
  int (*data_version)(sy_store *st, int64_t *v);
  int (*busy)(sy_store *st);
  int64_t (*last_insert_id)(sy_store *st);
  int (*db_error)(sy_store *st, const char *what);
  /* For db copy: the query listing the database's tables, and what to do
   * once a table was filled with rows copied as they were (ids included). */
  const char *tables_sql;
  int (*copied)(sy_store *st, const char *table);
  /* The database's clock, in ms since the epoch; NULL when the database
   * is a file on this host, whose clock is the engine's own. */
  int (*clock)(sy_store *st, int64_t *ms);
  /* Whether the connection is gone; NULL: a file never goes. */
  int (*lost)(sy_store *st);
  /* A server's: listen for other processes' announcements of work and
   * changes (the socket to watch, and how many came since the last
   * look, read from the socket first when `read`), and announce this
   * transaction's at its commit. NULL on a file: engines look. */
  int (*listen)(sy_store *st);
  int (*socket)(sy_store *st);
  int (*notified)(sy_store *st, int read);
  int (*before_commit)(sy_store *st);
  /* A server's: the instance update just stepped is to change its row
   * (the engine still owns it), checked when answered (1), or now by the
   * caller (0: it was not queued). NULL on a file: the caller checks. */
  int (*fence)(sy_store *st, sy_stmt *s, int64_t id);
} sy__backend;
extern const sy__backend sy__sqlite, sy__postgres;

/* A change of instance_counts batched in the open transaction. */
typedef struct sy__count {
  char *workflow;
  char state[12];
  int64_t n;
} sy__count;

struct sy_store {
  const sy__backend *b;
  struct sqlite3 *db;     /* SQLite's connection (store_sqlite.c) */
  struct pg_conn *pg;     /* or PostgreSQL's (store_pg.c) */
  int64_t pg_version;     /* its data_version (store_pg.c) */
  int64_t pg_prepared;    /* statements it prepared (their names) */
  int pg_busy;            /* its last failure was a lock's wait */
  int64_t pg_changes;     /* the change counter (store_pg.c), */
  int64_t pg_changes_seq; /* as read in this transaction */
  int pg_counted;         /* sy_meta is there to read it from */
  int pg_exclusive;       /* this transaction holds the write lock alone */
  /* Writes sent and not yet answered, in order (store_pg.c: pg_drain). */
  struct {
    struct pg_stmt *p;
    int64_t fenced; /* an instance update: the instance's id, else 0 */
    int64_t expect; /* the rows it must change (expect_changes), or -1 */
  } pg_queue[256];
  int pg_queued;
  int pg_queue_rc;  /* a queued write failed: the transaction's end */
  int fence_failed; /* a fenced update changed nothing: a lost lease */
  int conflicted;   /* the last failure: a deadlock or serialization */
  int pg_writing;   /* this transaction writes (its writes may queue) */
  /* An engine's writes run beside other engines' (sy_store_share_writes),
   * and this transaction made work others may take (sy_store_release). */
  int shared_writes;
  int made_work;
  sy_stmt *own[3]; /* the backend's own statements, prepared once */
  int busy_timeout_ms;
  uint64_t busy_since; /* monotonic, ns */
  sy_stmt *stmt[Q__COUNT];
  int in_tx;
  int64_t tx_seq;
  sy__count *counts; /* instance_counts' changes in transaction counts_tx */
  int ncounts, counts_cap;
  int64_t counts_tx;
  char errmsg[512];
};

/* The schema's migrations (store.c): each moves it from version i to
 * i + 1; the backend runs those a database lacks. */
extern const char *const sy__migrations[];
extern const char *const sy__pg_migrations[]; /* PostgreSQL's texts */
extern const int sy__schema_version;

/* The statement q, prepared on first use; NULL with the error recorded. */
sy_stmt *sy__stmt(sy_store *st, int q);
/* Steps a statement that returns no rows (bindings made), then resets it. */
int sy__exec_stmt(sy_store *st, sy_stmt *s, const char *what);
/* instance_counts: n instances of workflow leave state `from` for `to`
 * (NULL: none, for a new instance), batched in the open transaction and
 * written by sy__counts_flush before it commits (at once outside one);
 * sy__counts_discard drops them (a rollback). */
int sy__count_move(sy_store *st, const char *workflow, const char *from,
                   const char *to);
int sy__counts_flush(sy_store *st);
void sy__counts_discard(sy_store *st);
/* On a server, adds the counts of connections that are gone to shard 0
 * (an engine's start and heartbeat); nothing on a file. */
int sy__fold_counts(sy_store *st);
/* Binds an integer, or NULL for 0. */
void sy__bind_opt_int(sy_stmt *s, int i, int64_t v);

/* The backend's, through st->b. */
/* Records the database's last failure as the store's error, saying what
 * failed; returns SY_EBUSY (locked) or SY_ESTORE. */
int sy__db_error(sy_store *st, const char *what);
/* Whether the connection has a transaction open (the database may end one
 * by itself after some failures). */
int sy__tx_open(sy_store *st);
/* The id of the instance the connection inserted last (RETURNING would
 * cost SQLite a third more per instance started). */
int64_t sy__last_insert_id(sy_store *st);

#endif
