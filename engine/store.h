/* The durable store: one database connection per engine, its schema and
 * migrations, and every SQL statement the engine runs (prepared once, run
 * through the statement API of plugin.h, whose backend is SQLite's:
 * store_sqlite.c). Nothing above the store speaks SQL.
 *
 * Writes go into a batch transaction the scheduler opens lazily and commits
 * once per loop turn (group commit); the CLI's one-off changes use
 * sy_store_begin/commit directly. Errors return SY_E* codes and leave the
 * database's message in sy_store_errmsg(). */
#ifndef SY_STORE_H
#define SY_STORE_H

#include <stddef.h>
#include <stdint.h>
#include <switchyard/plugin.h>

typedef struct sy_store sy_store;

/* Plugins' statements (plugin.h, "Statements"; store_stmt.c): prepare
 * one (NULL with the error recorded), run a script, read the count of
 * other connections' commits. */
sy_stmt *sy_store_prepare(sy_store *st, const sy_sql *q);
int sy_store_exec_script(sy_store *st, const sy_sql *script);
int sy_store_data_version(sy_store *st, int64_t *v);
/* Whether `where` names a database on a server (postgresql://...,
 * postgres://...) rather than a SQLite file. */
int sy_store_on_server(const char *where);
/* Whether `where` holds a switchyard database already (a file; the
 * tables on a server), without creating anything. A server that cannot
 * be reached says yes: opening it then says why. */
int sy_store_exists(const char *where);
/* Bad input changes nothing, not even whether there is a database: a
 * command that found none and failed undoes what opening made. Before it
 * opens, sy_store_tables_before notes what is there (NULL: unknown, and
 * then nothing is undone); sy_store_undo_create removes the SQLite file,
 * or drops the tables that were not there before on a server. */
char *sy_store_tables_before(const char *where);
void sy_store_undo_create(const char *where, const char *before);
/* Copies every table of `from` into `to`, which must be empty (its schema
 * made: opened by an engine with the same plugins), in one transaction;
 * refuses a source whose instances an engine holds (leases not expired at
 * now). cb sees each table's rows in both after the copy. 0, or an SY_E*
 * code with the reason in err (SY_ESTATE: refused; nothing written). */
typedef void (*sy_copy_cb)(void *ud, const char *table, int64_t from_rows,
                           int64_t to_rows);
/* Counts the instances per workflow and state again and replaces the
 * kept counts (instance_counts) with them, in one transaction: the repair
 * after rows were changed by hand. *differing: the (workflow, state)
 * pairs whose kept count was not the recount. */
int sy_store_recount(sy_store *st, int64_t *differing);

int sy_store_copy(sy_store *from, sy_store *to, int64_t now, sy_copy_cb cb,
                  void *ud, char *err, size_t errlen);
/* The database server's clock (ms since the epoch), which every engine
 * sharing it reads alike; SY_ENOTFOUND for a file on this host. */
int sy_store_clock(sy_store *st, int64_t *ms);
/* Whether the connection to a database server was lost (a server
 * restarted or gone): the store is then good for nothing but closing. */
int sy_store_connection_lost(sy_store *st);
/* Whether an engine that stopped on the store's last failure is to start
 * again (as after a crash) rather than exit: the connection was lost, or,
 * on a server, its turn met another engine's (a deadlock, a serialization
 * failure) or found an instance it ran taken over (a lease lost while the
 * engine stalled). A lock waited for past the busy timeout is not: the
 * engine stops, saying the database is locked, as on a file. */
int sy_store_restartable(sy_store *st);
/* A running engine's connection (on = 1; 0: a command's again). On a
 * server, its write transactions then take the write lock shared, beside
 * other engines' turns: claims skip the rows another engine has locked
 * (SKIP LOCKED), every later write is fenced by its owner, and counters
 * are added in key order. A command's transaction still takes the lock
 * alone, so what a command reads stays true until it commits. The
 * connection also listens for what other processes announce: work
 * added, flags changed. On a SQLite file nothing changes: writers take
 * turns, and engines look for work now and then. */
void sy_store_share_writes(sy_store *st, int on);
/* Whether they are shared now. */
int sy_store_writes_shared(sy_store *st);
/* The socket announcements arrive on (-1: none, on a file), and how many
 * came since the last call (reading the socket first when `read`; without,
 * only those a statement's reply brought along). */
int sy_store_socket(sy_store *st);
int sy_store_notified(sy_store *st, int read);
/* Which backend holds the database: "sqlite" or "postgresql". */
const char *sy_store_backend(sy_store *st);
/* Whether the database's last failure was a lock another process held. */
int sy_store_busy(sy_store *st);

typedef enum { SY_SYNC_FULL, SY_SYNC_NORMAL } sy_sync_mode;

typedef struct sy_store_opts {
  sy_sync_mode sync;
  int busy_timeout_ms;
  int read_only;    /* open without creating or migrating (listing commands) */
  int expect_write; /* refuse a database SQLite can only read, at once */
} sy_store_opts;

/* Instance states as stored. `running` means an engine holds it in memory;
 * `waiting` means due again at wake_at (a retry backoff, or a sleep that was
 * interrupted by a restart). */
#define SY_STATE_READY "ready"
#define SY_STATE_RUNNING "running"
#define SY_STATE_WAITING "waiting"
#define SY_STATE_INCIDENT "incident"
#define SY_STATE_COMPLETED "completed"
#define SY_STATE_CANCELLED "cancelled"

typedef struct sy_instance_row {
  int64_t id;
  const char *workflow;
  const char *def_hash;
  const char *state;
  const char *step; /* NULL once ended */
  int attempt;
  const char *vars;
  int64_t wake_at; /* 0 when none */
  int64_t created_at, updated_at, ended_at;
  int generation; /* incident retries so far */
  int64_t run_ms; /* time spent in step runs so far */
  int64_t reruns; /* step runs that were retries (attempt > 1) */
  int claimed;    /* an engine took it before (read before a new claim) */
  const char *wait_signal; /* parked waiting for this signal; NULL: none */
  const char *caught;      /* the error its step handles (JSON); NULL: none */
} sy_instance_row;

typedef struct sy_step_run_row {
  int64_t id;
  int64_t instance_id;
  const char *step;
  int attempt;
  int64_t started_at, ended_at;
  const char *outcome; /* ok, error, timeout */
  const char *error;   /* NULL when ok */
  int64_t run_ms;      /* time it ran: less than it lasted if it parked */
  const char *code;    /* the error's code (NULL: none) */
  const char *handler; /* the step that handles the error (NULL: none) */
} sy_step_run_row;

typedef struct sy_incident_row {
  int64_t id;
  int64_t instance_id;
  const char *workflow;
  const char *step;
  const char *error;
  int64_t raised_at;
  int64_t resolved_at; /* 0 while open */
  const char *resolution;
} sy_incident_row;

/* Row callbacks: strings are valid during the call only. Return non-zero to
 * stop early. */
typedef int (*sy_instance_cb)(void *ud, const sy_instance_row *row);
typedef int (*sy_step_run_cb)(void *ud, const sy_step_run_row *row);
typedef int (*sy_incident_cb)(void *ud, const sy_incident_row *row);

int sy_store_open(sy_store **out, const char *path, const sy_store_opts *opts,
                  char *err, size_t errlen);
void sy_store_close(sy_store *st);
const char *sy_store_errmsg(sy_store *st);
/* Records a message for the caller, as SQLite does for its own errors. */
__attribute__((format(printf, 3, 4))) int sy_store_set_error(sy_store *st,
                                                             int code,
                                                             const char *fmt,
                                                             ...);

/* Transactions. begin is a no-op inside an open one (so batched writers can
 * call it freely); commit and rollback close it. */
int sy_store_begin(sy_store *st);
/* The same, or (write 0) a transaction that only reads, in one snapshot,
 * without taking the write lock. */
int sy_store_begin_as(sy_store *st, int write);
int sy_store_commit(sy_store *st);
void sy_store_rollback(sy_store *st);
int sy_store_in_tx(sy_store *st);
/* Sequence number of the open transaction (0 when none). */
int64_t sy_store_tx_seq(sy_store *st);

/* Definitions are kept by content hash so instances run on the definition
 * they started with. */
int sy_store_put_definition(sy_store *st, const char *hash,
                            const char *workflow, const char *path,
                            const char *source, size_t len);
/* *source is malloc'd (caller frees). */
int sy_store_get_definition(sy_store *st, const char *hash, char **source,
                            size_t *len, char **path);

int sy_store_insert_instance(sy_store *st, const char *workflow,
                             const char *def_hash, const char *step,
                             const char *vars, int64_t now, int64_t *id);

/* Claims up to `limit` runnable instances for engine `owner` until
 * lease_until: waiting ones that are due, running ones whose lease expired
 * (their engine is gone) when `expired` is set, then ready ones; cb sees
 * each, and only reads: new instances are claimed after cb has seen them.
 * Finding expired leases reads every running row, so callers ask for it
 * now and then rather than at every claim. */
int sy_store_claim(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now, int limit, int expired, sy_instance_cb cb,
                   void *ud);
/* Extends the leases of everything owner holds; records its heartbeat. */
int sy_store_renew(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now);
/* Gives back everything owner holds: ready again, or waiting for its
 * recorded wake-up when it was asleep. */
int sy_store_release(sy_store *st, const char *owner, int64_t now, int64_t *n);
int sy_store_engine_register(sy_store *st, const char *id, const char *host,
                             int64_t pid, int64_t now);
int sy_store_engine_delete(sy_store *st, const char *id);
typedef int (*sy_engine_cb)(void *ud, const char *id, int64_t pid);
int sy_store_engines_on_host(sy_store *st, const char *host, sy_engine_cb cb,
                             void *ud);
/* Earliest wake_at among waiting instances, 0 when none. */
int sy_store_next_wake(sy_store *st, int64_t *wake_at);
/* Instances neither ended nor in an incident (ready, running, waiting). */
int sy_store_count_active(sy_store *st, int64_t *n);
/* The single write of an instance transition. step NULL ends it. */
typedef struct sy_instance_update {
  int64_t id;
  const char *workflow; /* the instance's, for the counts by state */
  /* The state it leaves: NULL for an engine's own (running) instance. */
  const char *from;
  const char *state;
  const char *step;
  int attempt;
  const char *vars;        /* NULL keeps the stored vars */
  int64_t wake_at;         /* 0 for none */
  const char *wait_signal; /* parked waiting for this signal, or NULL */
  int64_t now;
  int ended;
  const char *owner;  /* the engine holding it; NULL for commands */
  int new_generation; /* 1: an incident retry starts a new generation */
  int64_t run_ms;     /* the step run this update records: its duration, */
  int rerun;          /* and 1 if it was a retry */
  /* 1: the step run ended and the instance moves on (to its next step,
   * its end, or a handler step): the error the next step handles becomes
   * `caught` (JSON; NULL: none). 0 keeps the one it has. */
  int leaves_step;
  const char *caught;
} sy_instance_update;
int sy_store_update_instance(sy_store *st, const sy_instance_update *u);

int sy_store_insert_step_run(sy_store *st, const sy_step_run_row *r);

/* The step journal of an instance's current step run (see the schema's
 * migration 4): each ctx call, numbered, with what it answered. */
typedef enum {
  SY_JOURNAL_CALL = 1,  /* a plugin's ctx function */
  SY_JOURNAL_SLEEP = 2, /* ctx.sleep */
  SY_JOURNAL_SIGNAL = 3 /* ctx.wait_signal, answered (result: vars or null) */
} sy_journal_kind;
typedef struct sy_journal_entry {
  int seq;            /* 1 for the step run's first ctx call */
  int kind;           /* sy_journal_kind */
  uint64_t hash;      /* of what was asked */
  const char *what;   /* the same, for messages */
  const char *result; /* a call's answer, JSON (NULL: none) */
  const char *error;  /* the error it raised (NULL: none) */
  int64_t due_at;     /* a sleep's end (0: none) */
  int64_t started_at; /* a parked step run: its start (0: none) */
  int64_t ran_ms;     /* and how long it had run when it parked */
} sy_journal_entry;
typedef int (*sy_journal_cb)(void *ud, const sy_journal_entry *j);
int sy_store_journal_put(sy_store *st, int64_t instance_id,
                         const sy_journal_entry *j);
/* The entries in call order; a non-zero return of cb stops and is
 * returned. */
int sy_store_journal_read(sy_store *st, int64_t instance_id, sy_journal_cb cb,
                          void *ud);
int sy_store_journal_clear(sy_store *st, int64_t instance_id);

/* Signals. send queues one for the instance and makes it due at once if it
 * is parked waiting for that name (*woke then 1). take removes the oldest
 * of that name and gives its vars (malloc'd), or SY_ENOTFOUND. */
int sy_store_signal_send(sy_store *st, int64_t instance_id, const char *name,
                         const char *vars, int64_t now, int *woke);
int sy_store_signal_take(sy_store *st, int64_t instance_id, const char *name,
                         char **vars);
typedef int (*sy_signal_cb)(void *ud, const char *name, const char *vars,
                            int64_t sent_at);
int sy_store_list_signals(sy_store *st, int64_t instance_id, sy_signal_cb cb,
                          void *ud);
/* Live instances (not ended) whose top-level var `var` reads as `value`
 * (as text), in id order, at most `limit`: cb(ud, id, state). */
typedef int (*sy_live_cb)(void *ud, int64_t id, const char *state);
int sy_store_find_live(sy_store *st, const char *var, const char *value,
                       int limit, sy_live_cb cb, void *ud);
int sy_store_insert_incident(sy_store *st, int64_t instance_id,
                             const char *step, const char *error, int64_t now);

/* One instance; *found is 0 when there is no such id. */
int sy_store_get_instance(sy_store *st, int64_t id, sy_instance_cb cb, void *ud,
                          int *found);
/* Which instances a listing reads, in id order: state and workflow may be
 * NULL (no filter); ids after `after`; at most `limit` (0: all). */
typedef struct sy_instance_filter {
  const char *state;
  const char *workflow;
  const char *step;
  int64_t after;
  int64_t limit;
} sy_instance_filter;
int sy_store_list_instances(sy_store *st, const sy_instance_filter *f,
                            sy_instance_cb cb, void *ud);
/* How many instances the filter selects, its limit aside. */
int sy_store_count_instances(sy_store *st, const sy_instance_filter *f,
                             int64_t *n);
int sy_store_list_step_runs(sy_store *st, int64_t instance_id,
                            sy_step_run_cb cb, void *ud);
/* open_only: only unresolved incidents; instance_id 0: all instances. */
int sy_store_list_incidents(sy_store *st, int open_only, int64_t instance_id,
                            sy_incident_cb cb, void *ud);
/* Resolves the open incidents of an instance; *n tells how many. */
int sy_store_resolve_incidents(sy_store *st, int64_t instance_id,
                               const char *resolution, int64_t now, int64_t *n);

typedef void (*sy_count_cb)(void *ud, const char *workflow, const char *state,
                            int64_t n);
/* Instances per workflow and state. */
int sy_store_count_by_state(sy_store *st, sy_count_cb cb, void *ud);

#endif
