/* switchyard/plugin.h: the whole contract between the engine and a plugin.
 *
 * A plugin is a shared module exporting one symbol, `sy_plugin_entry`, that
 * returns a static sy_plugin_def. Through it the plugin registers node types
 * (steps a workflow declares with `sy.<name>{...}`), functions steps can call
 * on their ctx (`ctx.<name>(...)`), CLI subcommands, and a hook on instance
 * events. The engine calls back only on its loop thread. Everything the
 * plugin may ask of the engine goes through the sy_api function table it is
 * handed, so a plugin links against nothing of the engine.
 *
 * Versioning: SY_PLUGIN_ABI changes whenever a struct below changes layout or
 * meaning. The engine refuses a plugin built for another version. */
#ifndef SWITCHYARD_PLUGIN_H
#define SWITCHYARD_PLUGIN_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SY_PLUGIN_ABI 11

/* Error codes: negative, from one list so that a code, its name and its
 * message never drift apart. sy_api functions that return an int return 0
 * or one of these; callbacks a plugin provides (init, compile, on_event,
 * before_commit, call_predicate's caller) return 0 on success and one of
 * these otherwise (SY_EPLUGIN when no other fits). */
#define SY_ERRNO_MAP(X)                                \
  X(INVAL, -1, "invalid argument")                     \
  X(NOMEM, -2, "out of memory")                        \
  X(STORE, -3, "database error")                       \
  X(LOAD, -4, "workflow does not load")                \
  X(NOTFOUND, -5, "not found")                         \
  X(STATE, -6, "not allowed in the current state")     \
  X(PLUGIN, -7, "plugin error")                        \
  X(IO, -8, "input/output error")                      \
  X(BUSY, -9, "database is locked by another process") \
  X(LUA, -10, "Lua error")

enum {
#define X(name, code, msg) SY_E##name = code,
  SY_ERRNO_MAP(X)
#undef X
};

typedef struct sy_engine sy_engine; /* the running engine (opaque) */

/* How long an engine's claim on an instance holds without renewal (ms). */
#define SY_ENGINE_LEASE_MS 30000

/* ---------------------------------------------------------------------
 * Statements: how a plugin reads and writes the engine's database,
 * whichever backend holds it. A plugin never sees a database handle.
 *
 * A plugin keeps its SQL in one table and prepares each statement once
 * (sy_api.prepare), with ?N placeholders (?1, ?2, ...; every number used),
 * in the subset SQLite and PostgreSQL both accept (INSERT ... ON CONFLICT
 * (...) DO UPDATE, RETURNING, CTEs, CASE rather than boolean columns);
 * where the two must differ, sy_sql carries a second text. Then, each time:
 * bind, step until SY_DONE (reading columns while it gives SY_ROW),
 * reset. Every call goes through the statement's own methods, so a
 * backend is chosen per statement and a plugin links against nothing.
 * Text columns are valid until the next step or reset of the statement.
 * On PostgreSQL a write returning no rows (INSERT, UPDATE, DELETE without
 * RETURNING), stepped in a write transaction, is sent without waiting for
 * its answer: its step says SY_DONE at once, and the server answers the
 * queued writes together when something needs an answer. Asking for its
 * changes is such a need (one round trip), so ask only where the answer
 * decides something, and where it only checks something, say what it must
 * be (sy_stmt_expect_changes: checked with the answer); a queued write
 * that fails makes a later call fail, and the transaction with it, as if
 * it had failed at its step. */
typedef struct sy_sql {
  const char *sql; /* the text both accept */
  const char *pg;  /* PostgreSQL's, where it differs; NULL: sql */
} sy_sql;

typedef struct sy_stmt sy_stmt;
typedef struct sy_stmt_methods {
  int (*step)(sy_stmt *s);
  void (*reset)(sy_stmt *s); /* bindings stay as they were */
  void (*finalize)(sy_stmt *s);
  void (*bind_int)(sy_stmt *s, int i, int64_t v);
  void (*bind_double)(sy_stmt *s, int i, double v);
  /* v NULL: SQL NULL; len < 0: up to its NUL. The text is not copied: it
   * must stay valid until the statement is reset or bound again. */
  void (*bind_text)(sy_stmt *s, int i, const char *v, int64_t len);
  int (*column_null)(sy_stmt *s, int col);
  int64_t (*column_int)(sy_stmt *s, int col);
  double (*column_double)(sy_stmt *s, int col);
  const char *(*column_text)(sy_stmt *s, int col); /* NULL: SQL NULL */
  int64_t (*column_bytes)(sy_stmt *s, int col);    /* of the text */
  /* For tools that read any query: its columns, their names, and the type
   * of a column's value in the current row (SY_COL_*). */
  int (*column_count)(sy_stmt *s);
  const char *(*column_name)(sy_stmt *s, int col);
  int (*column_type)(sy_stmt *s, int col);
  int64_t (*changes)(sy_stmt *s);   /* rows its last step changed */
  const char *(*error)(sy_stmt *s); /* the database's message */
  /* Says that its last step (a write) must have changed n rows, without
   * waiting for the answer where the backend queues writes: 0 when it did,
   * or when the check waits for the answer (on PostgreSQL a queued write:
   * then a write that changed another number of rows fails the
   * transaction at its answer, as a write that failed does); SY_ESTATE
   * when it is known now that it did not. */
  int (*expect_changes)(sy_stmt *s, int64_t n);
} sy_stmt_methods;
struct sy_stmt {
  const sy_stmt_methods *m; /* the backend's; what follows is its own */
};

enum { SY_COL_NULL, SY_COL_INT, SY_COL_DOUBLE, SY_COL_TEXT };

/* sy_step's results besides errors (negative SY_E*: SY_EBUSY when the
 * database was locked, SY_ESTORE otherwise, message in sy_stmt_error). */
#define SY_DONE 0
#define SY_ROW 1

static inline int sy_stmt_step(sy_stmt *s) {
  return s->m->step(s);
}
static inline int sy_stmt_expect_changes(sy_stmt *s, int64_t n) {
  return s->m->expect_changes(s, n);
}
static inline void sy_stmt_reset(sy_stmt *s) {
  s->m->reset(s);
}
static inline void sy_stmt_finalize(sy_stmt *s) {
  if (s) {
    s->m->finalize(s);
  }
}
static inline void sy_stmt_bind_int(sy_stmt *s, int i, int64_t v) {
  s->m->bind_int(s, i, v);
}
static inline void sy_stmt_bind_double(sy_stmt *s, int i, double v) {
  s->m->bind_double(s, i, v);
}
static inline void sy_stmt_bind_text(sy_stmt *s, int i, const char *v) {
  s->m->bind_text(s, i, v, -1);
}
static inline void sy_stmt_bind_textn(sy_stmt *s, int i, const char *v,
                                      size_t len) {
  s->m->bind_text(s, i, v, (int64_t)len);
}
static inline int sy_stmt_column_null(sy_stmt *s, int col) {
  return s->m->column_null(s, col);
}
static inline int64_t sy_stmt_column_int(sy_stmt *s, int col) {
  return s->m->column_int(s, col);
}
static inline double sy_stmt_column_double(sy_stmt *s, int col) {
  return s->m->column_double(s, col);
}
static inline const char *sy_stmt_column_text(sy_stmt *s, int col) {
  return s->m->column_text(s, col);
}
static inline int64_t sy_stmt_column_bytes(sy_stmt *s, int col) {
  return s->m->column_bytes(s, col);
}
static inline int sy_stmt_column_count(sy_stmt *s) {
  return s->m->column_count(s);
}
static inline const char *sy_stmt_column_name(sy_stmt *s, int col) {
  return s->m->column_name(s, col);
}
static inline int sy_stmt_column_type(sy_stmt *s, int col) {
  return s->m->column_type(s, col);
}
static inline int64_t sy_stmt_changes(sy_stmt *s) {
  return s->m->changes(s);
}
static inline const char *sy_stmt_error(sy_stmt *s) {
  return s->m->error(s);
}
typedef struct sy_call sy_call; /* one node execution or ctx call */
typedef struct sy_opts sy_opts; /* a node's options, at load time */

/* A scalar read from the instance's vars or a node's options. Strings point
 * into engine memory valid until the callback that read them returns. */
typedef enum {
  SY_VAL_NIL,
  SY_VAL_BOOLEAN,
  SY_VAL_NUMBER,
  SY_VAL_STRING,
  SY_VAL_TABLE,
  SY_VAL_FUNCTION,
  SY_VAL_OTHER
} sy_val_type;

typedef struct sy_value {
  sy_val_type type;
  int boolean;
  double number;
  const char *str;
  size_t len;
} sy_value;

/* Shadow runs (sy_api.shadow): a step run beside an instance on a copy of
 * its vars, writing nothing, compared with the step the instance takes. */
typedef enum {
  SY_SHADOW_DONE,     /* the step ended well: vars_json */
  SY_SHADOW_ERROR,    /* it raised or failed: error */
  SY_SHADOW_TIMEOUT,  /* it ran out of time: error */
  SY_SHADOW_ABANDONED /* it never ended here (a shutdown, the instance
                         left memory first): error says why */
} sy_shadow_status;
typedef struct sy_shadow_side {
  sy_shadow_status status;
  const char *step;
  const char *vars_json; /* DONE: the vars after the step */
  const char *error;
  int64_t ms; /* how long the step ran */
} sy_shadow_side;
/* What the compare (sy_api.shadow's compare option) said of two sides
 * that both ended well. */
typedef enum {
  SY_SHADOW_UNCOMPARED, /* a side did not end well, or no compare */
  SY_SHADOW_SAME,
  SY_SHADOW_DIFFERENT,
  SY_SHADOW_COMPARE_FAILED /* the compare function raised: detail says */
} sy_shadow_verdict;
typedef struct sy_shadow_report {
  int64_t instance_id;
  const char *workflow;
  sy_shadow_side primary, candidate;
  sy_shadow_verdict verdict;
  /* DIFFERENT: what differs ("verified: true -> false", or what the
   * compare function said); SAME: the compared vars that neither side
   * has ("absent on both sides: decision"), or NULL; COMPARE_FAILED: the
   * error. */
  const char *detail;
} sy_shadow_report;
/* Called once, on the loop, outside any transaction, when both sides are
 * known; the report lives until it returns. */
typedef void (*sy_shadow_done)(void *plugin, void *ud,
                               const sy_shadow_report *report);

/* Events an instance goes through, reported to on_event inside the same
 * store transaction that records them, so a plugin's counters can never
 * disagree with the instance rows. */
typedef enum {
  SY_EVENT_COMPLETED = 1,
  SY_EVENT_INCIDENT = 2,          /* an incident was raised */
  SY_EVENT_INCIDENT_RESOLVED = 3, /* retried by a user: it runs again */
  SY_EVENT_CANCELLED = 4,
  /* a step's error went to a handler step (catch) instead of an incident:
   * the instance goes on, at that step */
  SY_EVENT_CAUGHT = 5
} sy_event_type;

/* run_ms and reruns are the instance's totals so far, as the event records
 * them: milliseconds spent in step runs, and step runs that were retries
 * (attempt > 1). Their difference from sy_api.totals taken earlier is what
 * happened in between. */
typedef struct sy_event {
  sy_event_type type;
  int64_t instance_id;
  const char *workflow;
  const char *step;
  /* INCIDENT and CAUGHT: the error's code (error({code = ...}), "timeout"
   * for a step's timeout), or NULL when it has none. */
  const char *code;
  int64_t time_ms;
  int64_t run_ms;
  int64_t reruns;
  /* For an instance in the engine's memory: whether it was fresh when the
   * engine took it (sy_api.fresh), and this plugin's memo for it
   * (sy_api.memo; NULL if it set none). 0 and NULL otherwise (events of
   * commands on instances no engine holds). */
  int fresh;
  void *memo;
} sy_event;

/* Services of the engine. Functions taking a sy_call are valid only until
 * the call completes (sy_api.done / done_json / fail). */
typedef struct sy_api {
  int abi;
  /* The engine's database (see Statements above).
   *
   * Transactions are the engine's. Inside execute, a ctx call, on_event and
   * before_commit, a plugin reads and writes within the engine's
   * transaction (tx_begin opens it when it is not open yet), so that its
   * rows change in the same commit as the instance change they belong to,
   * or not at all: it never runs BEGIN, COMMIT, ROLLBACK, SAVEPOINT or
   * RELEASE there. A failure is reported through the callback's result
   * (api->fail, a non-zero return), and the engine rolls back. Only a
   * command (sy_command.run), which runs outside any engine transaction,
   * opens and ends transactions of its own (begin, commit, rollback), and
   * checks what each returns.
   *
   * prepare returns a statement to keep until fini (sy_finalize), or NULL
   * with the reason in errmsg. exec runs a script of statements without
   * parameters or rows (a migration), 0 or an SY_E* code with errmsg. */
  sy_stmt *(*prepare)(sy_engine *e, const sy_sql *q);
  int (*exec)(sy_engine *e, const sy_sql *script);
  const char *(*errmsg)(sy_engine *e);
  /* A command's transaction: write takes the write lock at once, so that
   * what it reads stays true until it commits. 0 or an SY_E* code. */
  int (*begin)(sy_engine *e, int write);
  int (*commit)(sy_engine *e);
  void (*rollback)(sy_engine *e); /* a no-op when none is open */
  /* A number that changes whenever another connection (another engine, a
   * command) has committed a change since it was last read: read in a
   * transaction, it says whether what a plugin cached before it is stale
   * (a negative SY_E* code when it cannot be read). On a database server
   * it counts the commits that changed a table with a trigger calling
   * sy_note_change(): a plugin's PostgreSQL migration adds one, FOR EACH
   * STATEMENT, to every table whose rows it caches. */
  int64_t (*data_version)(sy_engine *e);
  /* Opens the loop turn's transaction if it is not open yet, and returns
   * its sequence number (> 0; a new one per transaction), or a negative
   * error. While it is open no command writes, so a plugin may trust what
   * commands wrote that it read earlier in the same transaction. On a
   * database server other engines' turns run beside it: a row that
   * several engines change is changed by a conditional update (one of
   * them wins) or an addition, and rows are locked in one order (by key)
   * so that two turns never wait for each other. A turn that still meets
   * another (a deadlock) fails, and its engine starts again as after a
   * crash. */
  int64_t (*tx_begin)(sy_engine *e);
  /* Inside the engine's transaction (tx_begin), from a timer or a hook of
   * the calling plugin (its state: plugin): retries every instance waiting
   * in an incident that the plugin's retry filter selects given these
   * values of its retry_options, as `switchyard retry --all` given them
   * would, its incident resolved and its events reported in the same
   * transaction. *n: how many. 0, or an SY_E* code (errmsg says why; the
   * caller's failure then rolls the transaction back). */
  int (*retry_selected)(sy_engine *e, void *plugin, const char *const *values,
                        int64_t *n);
  uv_loop_t *(*loop)(sy_engine *e);
  int64_t (*now_ms)(sy_engine *e);
  /* A setting given with `--set key=value` (or by the test harness); NULL
   * when unset. Plugins use it for things like forcing a version in tests. */
  const char *(*setting)(sy_engine *e, const char *key);
  void (*log)(sy_engine *e, const char *fmt, ...)
      __attribute__((format(printf, 2, 3)));
  /* The id the engine holds leases under (the engines table's id). A
   * live engine renews its leases and its heartbeat_at there well within
   * SY_ENGINE_LEASE_MS. */
  const char *(*engine_id)(sy_engine *e);

  /* About the instance a call runs for. */
  sy_engine *(*engine)(sy_call *c);
  int64_t (*instance_id)(sy_call *c);
  const char *(*workflow)(sy_call *c);
  const char *(*step)(sy_call *c);
  int (*attempt)(sy_call *c);
  /* A key for calls to outside systems, the same when a step re-runs after
   * a crash and new for each retry: "<instance>-<step>-<attempt>", with
   * ".<n>" after the n-th incident retry (ctx.idempotency_key), and "#<k>"
   * for the k-th ctx call (k > 1) of one step run. */
  const char *(*idempotency_key)(sy_call *c);
  /* Per-node data returned by sy_node_type.compile (NULL for ctx calls). */
  void *(*node_data)(sy_call *c);
  /* A seedable generator owned by the engine: deterministic under a seed. */
  uint64_t (*random)(sy_call *c);
  /* The instance's totals as sy_event gives them, at time now_ms (from
   * now_ms): the current step run counts as far as it has run by then
   * (parked time not included), and as a retry if it is one. */
  void (*totals)(sy_call *c, int64_t now_ms, int64_t *run_ms, int64_t *reruns);

  /* Whether the instance is fresh: no engine had taken it before this one,
   * so nothing of it was committed but its start, and whatever a plugin
   * records about it is recorded while it is in this engine's memory. A
   * plugin can then keep those records in its memo rather than read them
   * back. */
  int (*fresh)(sy_call *c);
  /* The calling plugin's memo slot for the instance (NULL at first): a
   * pointer it may set, kept while the instance stays in this engine's
   * memory, handed to on_event in sy_event.memo and to
   * sy_plugin_def.free_memo when the instance leaves memory, however it
   * leaves (ended, incident, a retry's wait, released, dropped). NULL when
   * out of memory, when the call has outlived its instance, or when the
   * plugin has no free_memo. */
  void **(*memo)(sy_call *c);

  /* Instance variables (JSON-compatible). var_get reads a top-level var;
   * var_set_json sets one from JSON text (NULL json deletes it). Both
   * return 0, SY_ESTATE when the call has outlived its instance (or vars
   * is not a table), and var_set_json SY_EINVAL for text that is not
   * JSON. */
  int (*var_get)(sy_call *c, const char *key, sy_value *out);
  int (*var_set_json)(sy_call *c, const char *key, const char *json);
  /* Ask a function option of the node (e.g. an `eligible` predicate) with
   * the step's ctx; *out is its truthiness. Returns 0, or SY_ELUA (it
   * raised) or SY_ESTATE (no instance) with the error message available
   * through call_error. */
  int (*call_predicate)(sy_call *c, const char *option, int *out);
  const char *(*call_error)(sy_call *c);

  /* Completion, exactly once per call, now or later (parked). A node
   * completes with the name of the next step (NULL ends the instance); a
   * ctx call completes with JSON text that becomes its Lua return value. */
  void (*done)(sy_call *c, const char *next_step);
  void (*done_json)(sy_call *c, const char *json);
  void (*fail)(sy_call *c, const char *message);

  /* From a node's execute, before it completes: once the node's
   * transition commits, run task step `step` beside the instance, on a
   * copy of its vars, for at most timeout_s seconds, writing nothing; its
   * ctx functions are those marked shadow_ok. The instance's own next
   * step (its first run) is the primary side. compare, when not NULL,
   * is the path of a node option comparing the two sides' vars when both
   * end well: a list of var names (each equal as JSON on both sides), or
   * function(ctx, primary, candidate) -> same, detail, run under the
   * step limits with a ctx of instance_id, workflow, step (the node's),
   * primary_step and candidate_step. done(plugin, ud, report) is called
   * exactly once when this returns 0: with both sides, or ABANDONED when
   * the node fails or ends the instance, or the engine stops first. 0,
   * SY_EBUSY when the engine already has as many shadows as it may (the
   * setting shadow.max_in_flight, 1000 by default), or SY_EINVAL (not a
   * node's call, not a task step). */
  int (*shadow)(sy_call *c, const char *step, double timeout_s,
                const char *compare, sy_shadow_done done, void *ud);
  /* Node options at load time (in compile). key may be a path into
   * tables: "shadow.timeout", "shadow.compare.1" (a number is a 1-based
   * index); nil where a step of it is not a table. */
  int (*opt_get)(sy_opts *o, const char *key, sy_value *out);
  /* The first key of the table at path that allowed (NULL-terminated)
   * does not list ("?" for a key that is not a string), or NULL: all are
   * known, or there is no table there. */
  const char *(*opt_unknown)(sy_opts *o, const char *path,
                             const char *const *allowed);
} sy_api;

/* A node type: `sy.<name>{ ... }` in a workflow. */
typedef struct sy_node_type {
  const char *name;
  /* Load time: check the options and build this node's private data, which
   * the engine keeps with the loaded definition and hands back to execute.
   * Return 0, or an SY_E* code with a message in err (the engine adds
   * file:line).
   * Option keys the node does not know are errors: list them in `options`,
   * a NULL-terminated array, and the engine rejects any other. */
  int (*compile)(void *plugin, sy_opts *opts, void **node_data, char *err,
                 size_t errlen);
  void (*free_node)(void *plugin, void *node_data);
  const char *const *options;
  /* Options whose values name steps of the workflow (NULL-terminated): the
   * engine checks that they exist and counts them when it looks for
   * unreachable steps. */
  const char *const *step_options;
  /* Run for one instance; complete with api->done or api->fail, before
   * returning or later. Must never block the loop. */
  void (*execute)(void *plugin, sy_call *c);
  /* Optional: the call was abandoned (step timeout, engine shutdown); the
   * plugin should stop its work and still complete the call. */
  void (*cancel)(void *plugin, sy_call *c);
  /* Optional, for `switchyard check --db`: with the database open, what is
   * wrong with this node that loading alone cannot see (choose_version: a
   * flag with no row, or a retired one). Reads only; writes one line into
   * warn, or leaves it empty. */
  void (*check)(void *plugin, const void *node_data, char *warn,
                size_t warnlen);
  /* Optional, for `switchyard serve`'s graph of a workflow: a few words
   * about the edge this node leaves by through step option `option`, for
   * every definition of the workflow (choose_version: "14 routed\n2 with
   * incidents (14.3%)"), written into note as plain text, '\n' between
   * lines (the engine escapes it), or note left empty. Reads only, outside any
   * transaction. 0, or an SY_E* code: the page fails. */
  int (*edge_note)(void *plugin, const void *node_data, const char *workflow,
                   const char *option, char *note, size_t notelen);
  /* Optional: the step this node runs in shadow (beside the instance, on
   * a copy of its vars), or NULL when it runs none. Loading refuses a
   * workflow whose shadowed step is not a task marked shadow_safe = true,
   * at the node's line. */
  const char *(*shadow_step)(void *plugin, const void *node_data);
} sy_node_type;

/* A function steps call as `ctx.<name>(args)`. The single argument is
 * passed as JSON text ("null" when absent). The Lua coroutine is parked
 * until the call completes. */
typedef struct sy_ctx_fn {
  const char *name;
  void (*call)(void *plugin, sy_call *c, const char *args_json);
  void (*cancel)(void *plugin, sy_call *c);
  /* A shadow run may call it: it changes nothing the instance owns (an
   * HTTP call is the step's own business, with its own idempotency key). */
  int shadow_ok;
} sy_ctx_fn;

/* An instance in an incident that `switchyard retry` selected, as a
 * plugin's retry filter sees it (sy_plugin_def.retry_filter). */
typedef struct sy_retry_inst {
  int64_t id;
  const char *workflow;
  const char *step; /* where its incident is */
  int64_t now_ms;
  int64_t run_ms, reruns; /* its totals, as sy_event gives them */
  int dry_run;            /* only say what it would do: write nothing */
  /* The node data (sy_node_type.compile's) of step `step` in the
   * instance's definition if that step is a node of type `type`; NULL
   * otherwise. */
  void *(*node_data)(const struct sy_retry_inst *inst, const char *step,
                     const char *type);
  void *engine; /* the engine's, for node_data */
} sy_retry_inst;

/* What a retry filter says of an instance (or a negative SY_E* code). */
enum { SY_RETRY_SKIP = 0, SY_RETRY_HERE = 1, SY_RETRY_AT = 2 };

/* A CLI subcommand: `switchyard <name> ...`. argv[0] is the name. Returns
 * the process exit code (0 ok, 1 runtime failure, 2 bad input). */
typedef struct sy_command {
  const char *name;
  const char *summary;
  int (*run)(void *plugin, int argc, char **argv);
  /* Subcommands (argv[1]) that may create the database when it does not
   * exist, NULL-terminated; "*" for any. With NULL, the command needs an
   * existing database and the engine says so rather than creating one. */
  const char *const *creates;
} sy_command;

/* A request `switchyard serve` hands a plugin (sy_plugin_def.serve), and
 * what the plugin answers through resp. */
typedef struct sy_http_request {
  const char *method; /* GET, HEAD or POST */
  const char *path;   /* unescaped, from its first '/': "/flags/checkout" */
  /* A query parameter's value, or NULL. */
  const char *(*query)(const struct sy_http_request *req, const char *key);
  void *conn; /* the server's, for query */
} sy_http_request;

typedef struct sy_http_response {
  int status;               /* 200 unless the plugin sets another */
  const char *content_type; /* NULL: the body of an HTML page, which the
                               engine puts inside its own page (head, style,
                               navigation) titled `title` */
  char title[128];
  void (*put)(void *ud, const char *text); /* appends to the body */
  /* Appends text escaped for HTML (&, <, >, " and '): the engine's own
   * escaping, for every page alike. */
  void (*put_html)(void *ud, const char *text);
  void *ud;
} sy_http_response;

typedef struct sy_plugin_def {
  int abi; /* SY_PLUGIN_ABI */
  const char *name;
  const char *version;
  /* Called once when the engine opens its database: create or migrate the
   * plugin's own tables (the engine wraps it in a transaction), allocate
   * *plugin. Return 0, or an SY_E* code with a message in err. */
  int (*init)(const sy_api *api, sy_engine *e, void **plugin, char *err,
              size_t errlen);
  void (*fini)(void *plugin);
  const sy_node_type *nodes;  /* terminated by an entry with name NULL */
  const sy_ctx_fn *ctx_fns;   /* idem; may be NULL */
  const sy_command *commands; /* idem; may be NULL */
  /* Optional; returns 0, or an SY_E* code when its writes failed (the engine
   * then rolls the whole transaction back and stops). */
  int (*on_event)(void *plugin, const sy_event *ev);
  /* Optional: called just before the engine commits a transaction in
   * which the plugin may have written (an engine turn, a retry or a
   * cancel), so it can flush writes it batched in memory into that same
   * transaction. Non-zero: the engine rolls back and stops. */
  int (*before_commit)(void *plugin);
  /* Frees a memo the plugin set (sy_api.memo); required if it sets any. */
  void (*free_memo)(void *plugin, void *memo);
  /* Optional: the engine rolled back a transaction in which the plugin may
   * have written (a failure somewhere): drop whatever was batched in memory
   * for it (what before_commit would have flushed), so that it is not
   * written into the next one. */
  void (*rolled_back)(void *plugin);
  /* Optional: options the plugin adds to `switchyard retry` (long names
   * without "--", each taking a value; NULL-terminated), and the filter
   * that gives them meaning. When a retry is given some of them
   * (values[i]: the value of retry_options[i], NULL when not given), the
   * filter is called once with inst NULL to check the values (0, or
   * SY_EINVAL with a message in err: nothing is retried), then for each
   * instance the retry selects, inside the retry's transaction (before the
   * engine changes the instance, and before its events): SY_RETRY_SKIP
   * leaves it in its incident, SY_RETRY_HERE retries it at its step,
   * SY_RETRY_AT at the step the filter wrote into at (a step of the
   * instance's definition); a plugin that moves an instance so records
   * it in the same transaction, unless inst->dry_run. A negative SY_E*
   * code (with err) rolls the transaction back. */
  const char *const *retry_options;
  int (*retry_filter)(void *plugin, const char *const *values,
                      const sy_retry_inst *inst, char *at, size_t atlen,
                      char *err, size_t errlen);
  /* Optional: what the plugin keeps about one instance, for `switchyard
   * show` (and serve's instance document and page). With json set, it
   * hands put each member it adds to the instance's document: its key and
   * its value as JSON text (choose_version: "decisions", a list); without,
   * lines of text to print (key NULL), each ending in '\n'. Reads only,
   * inside the command's read. 0, or an SY_E* code. */
  int (*describe)(void *plugin, int64_t instance_id, int json,
                  void (*put)(void *ud, const char *key, const char *text),
                  void *ud);
  /* Optional: the plugin's metrics in Prometheus' text format, each with
   * its # HELP and # TYPE lines, names starting with switchyard_ and not
   * the engine's (switchyard_instances, switchyard_incidents_open,
   * switchyard_engines), handed to put piece by piece. `switchyard serve`
   * calls it for /metrics, outside any transaction: it only reads.
   * Non-zero (an SY_E* code): the page fails. */
  int (*metrics)(void *plugin, void (*put)(void *ud, const char *text),
                 void *ud);
  /* Optional: pages and API documents the plugin adds to `switchyard
   * serve`, asked for each path the engine does not serve itself:
   * SY_ENOTFOUND when the path is not the plugin's, else 0 with the answer
   * in resp (an error is an answer too: a 4xx status and its body). A POST
   * reaches it only with the server's token (the engine checks). It
   * may read in a transaction of its own (api->begin/commit); it runs on
   * the server's thread, never beside an engine's loop. */
  int (*serve)(void *plugin, const sy_http_request *req,
               sy_http_response *resp);
  /* Optional, with serve: the plugin's first page, linked from every page
   * of the console's navigation under this label ("/flags", "Flags"). */
  const char *page_path, *page_label;
  /* Optional, with serve: a section the plugin adds to one of the
   * engine's pages, req->path: "/" (the overview) or "/instances/ID"
   * (an instance): HTML from its own <h2>, written through resp (its
   * status, content type and title are the page's), or nothing. Reads
   * only, like serve. Non-zero (an SY_E* code): the page fails. */
  int (*section)(void *plugin, const sy_http_request *req,
                 sy_http_response *resp);
} sy_plugin_def;

/* The one symbol a plugin exports. */
typedef const sy_plugin_def *(*sy_plugin_entry_fn)(void);
#define SY_PLUGIN_ENTRY "sy_plugin_entry"

#endif
