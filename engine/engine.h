/* The engine: opens the store, the plugins and the Lua host, starts
 * instances, and runs them on a libuv loop (the scheduler and executor).
 *
 * One thread runs everything. Runnable instances are claimed from the
 * database in batches, each instance in memory runs one step at a time, and
 * every transition is written to a transaction committed once per loop
 * turn. A Lua step follows the previous step at once, in the same
 * transaction, but its ctx calls reach their plugin only after the commit
 * that recorded the step before it; a node starts only after that commit. */
#ifndef SY_ENGINE_H
#define SY_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "luahost.h"
#include "store.h"
#include "switchyard/plugin.h"

typedef struct sy_setting {
  const char *key;
  const char *value;
} sy_setting;

typedef struct sy_engine_opts {
  const char *db_path;
  const char *workflows_dir;
  const char *plugin_dir; /* NULL: none */
  int concurrency;        /* instances in memory at once */
  sy_sync_mode sync;
  size_t lua_memory;
  int64_t step_instructions;
  uint64_t seed;
  const sy_setting *settings;
  int nsettings;
  /* Linked-in plugins (tests), besides those of plugin_dir. */
  const sy_plugin_def *const *static_plugins;
  int nstatic_plugins;
  int read_only;       /* listing commands: no migration, no plugin init */
  int busy_timeout_ms; /* waiting for another writer; 0: 5 s */
  int expect_write;    /* the command writes: refuse a read-only database */
} sy_engine_opts;

/* Fills opts with the defaults. */
void sy_engine_opts_init(sy_engine_opts *o);

int sy_engine_open(sy_engine **out, const sy_engine_opts *o, char *err,
                   size_t errlen);
void sy_engine_close(sy_engine *e);

sy_store *sy_engine_store(sy_engine *e);
/* A stored definition by its hash, loaded (the engine keeps it), or NULL
 * with the reason in sy_engine_errmsg. */
const sy_workflow *sy_engine_definition(sy_engine *e, const char *hash);
/* Each edge of a definition's graph (sy_workflow_edges). */
void sy_engine_workflow_edges(sy_engine *e, const sy_workflow *wf,
                              sy_edge_cb cb, void *ud);
/* The engine's time, ms since the epoch (virtual time included). */
int64_t sy_engine_now_ms(sy_engine *e);
uv_loop_t *sy_engine_loop(sy_engine *e);
sy_plugins *sy_engine_plugins(sy_engine *e);
const char *sy_engine_errmsg(sy_engine *e);

/* Resolves a workflow name (workflows_dir/NAME.lua) or a path ending in
 * .lua, loads and validates it, and keeps its source in the store. The
 * engine owns the result. */
int sy_engine_load_workflow(sy_engine *e, const char *name_or_path,
                            const sy_workflow **out, sy_diag *diag);
/* Rolls back the open transaction, and tells the plugins, which drop what
 * they batched for it. Every rollback of a transaction in which plugins
 * may have written goes through here. */
void sy_engine_rollback(sy_engine *e);
/* Adds an instance (inside the caller's transaction, if one is open). */
int sy_engine_start(sy_engine *e, const sy_workflow *wf, const char *vars_json,
                    int64_t *id);

/* Runs until stopped (SIGINT/SIGTERM, sy_engine_stop) or, with until_idle,
 * until no instance is ready, running or waiting. */
int sy_engine_run(sy_engine *e, int until_idle);
void sy_engine_stop(sy_engine *e);
/* The next sy_engine_run stops (as sy_engine_stop) once the engine's time
 * has moved on by ms: on virtual time, without waiting that long. */
void sy_engine_stop_after(sy_engine *e, uint64_t ms);

/* A test's hand on ctx calls (switchyard.testing: HTTP stubs, faults):
 * the hook sees each ctx call about to reach its plugin (not those a
 * replay answers from the journal, nor the engine's own ctx.now) and lets
 * it through (SY_CALL_PASS), answers it with JSON (SY_CALL_ANSWER) or
 * fails it with a message (SY_CALL_FAIL); *out is then malloc'd, and the
 * engine frees it. With *after_ms set, the answer comes that much later on
 * the engine's time (at once on virtual time, when nothing else runs). */
typedef struct sy_call_info {
  int64_t instance;
  const char *workflow, *step;
  int attempt, seq; /* seq: the call's number in the step run */
  const char *fn;   /* the ctx function: "http", ... */
  const char *args; /* JSON */
} sy_call_info;
typedef enum { SY_CALL_PASS, SY_CALL_ANSWER, SY_CALL_FAIL } sy_call_verdict;
typedef sy_call_verdict (*sy_call_hook)(void *ud, const sy_call_info *call,
                                        char **out, uint64_t *after_ms);
void sy_engine_set_call_hook(sy_engine *e, sy_call_hook hook, void *ud);

/* Where a signal goes: an instance by id, or the live instance (all of
 * them, with all) whose top-level var reads as value. */
typedef struct sy_signal_target {
  int64_t instance;
  const char *var, *value; /* var NULL: by id */
  int all;
} sy_signal_target;
/* Queues signal `name` with its vars (a JSON object) for the target, in
 * one transaction; *sent instances got it, *woke of them were parked
 * waiting for it and are due now. SY_ENOTFOUND: no such instance, or none
 * matches; SY_ESTATE: it has ended; SY_EINVAL: several match, all unset. */
int sy_engine_signal(sy_engine *e, const sy_signal_target *to, const char *name,
                     const char *vars, int *sent, int *woke);

/* Instances in an incident continue at their step with a fresh retry
 * budget: ids[0..n), all in one transaction (one that is not in an
 * incident: SY_ESTATE, and none is retried). */
int sy_engine_retry(sy_engine *e, const int64_t *ids, int n);
/* The same, rolled back: 0 when sy_engine_retry would succeed. */
int sy_engine_retry_check(sy_engine *e, const int64_t *ids, int n);
/* Every instance in an incident that filter f selects (its state and
 * limit aside), oldest first, in transactions of `batch` instances each:
 * an interruption leaves the batches committed so far retried and the
 * rest as they were, for the same call to take up again. After each
 * commit, progress(ud, retried in it, last instance id). *total: how many
 * were retried. */
int sy_engine_retry_all(sy_engine *e, const sy_instance_filter *f,
                        int64_t batch,
                        void (*progress)(void *ud, int64_t n, int64_t last),
                        void *ud, int64_t *total);
/* What sy_engine_retry_all would retry now, changing nothing: cb(ud, the
 * instance, at: the step it would run again at when not its own, else
 * NULL); a non-zero return stops. */
int sy_engine_retry_preview(sy_engine *e, const sy_instance_filter *f,
                            int (*cb)(void *ud, const sy_instance_row *r,
                                      const char *at),
                            void *ud);
/* Options plugins add to retry (sy_plugin_def.retry_options): each name
 * through cb; giving one its value for the retries that follow (0, or
 * SY_EINVAL when no plugin has it); and, once all are given, letting the
 * plugins check them (0, or SY_EINVAL saying what is wrong). */
void sy_engine_retry_options(sy_engine *e,
                             void (*cb)(void *ud, const char *name), void *ud);
int sy_engine_set_retry_option(sy_engine *e, const char *name,
                               const char *value);
int sy_engine_check_retry_options(sy_engine *e);
int sy_engine_cancel(sy_engine *e, int64_t id);

typedef struct sy_run_stats {
  int64_t steps, completed, incidents, retries, parked;
  int64_t caught; /* errors a handler step took */
} sy_run_stats;
void sy_engine_stats(sy_engine *e, sy_run_stats *s);

#endif
