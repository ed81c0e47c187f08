/* The Lua host as the rest of the engine sees it: one sandboxed Lua 5.4
 * state per engine (lua_sandbox.c) that loads workflow definitions
 * (workflow.c) and runs their steps as coroutines (lua_task.c), with vars
 * kept as JSON (lua_json.c).
 *
 * Only those files speak Lua (they share lua_int.h). The executor sees
 * definitions (sy_workflow, sy_step) and tasks (sy_task: an instance's vars
 * and ctx, and the coroutine of its current step) through this header. */
#ifndef SY_LUAHOST_H
#define SY_LUAHOST_H

#include <stddef.h>
#include <stdint.h>

#include "plugins.h"

typedef struct sy_lua sy_lua;
typedef struct sy_task sy_task;
typedef struct lua_State lua_State; /* as lua.h declares it */
struct sy__step_lua;                /* a step's Lua values (lua_int.h) */

typedef struct sy_lua_limits {
  size_t memory_bytes;  /* cap of the whole state while steps run */
  int64_t instructions; /* per step run (and per definition load) */
} sy_lua_limits;

typedef enum { SY_STEP_TASK, SY_STEP_NODE } sy_step_kind;

/* Error codes: what error({code = ...}) raises, what retry_on, no_retry
 * and catch name. 1 to SY_CODE_MAX bytes of letters, digits, '_', '-',
 * '.' and ':'. The engine gives one code itself: "timeout", to a step run
 * its step's timeout ended. */
#define SY_CODE_MAX 64
#define SY_CODE_TIMEOUT "timeout"
int sy_error_code_valid(const char *code);

/* Which errors a step retries while it has attempts left: every one (the
 * default), only the codes listed (retry_on), or all but them
 * (no_retry). */
typedef enum { SY_RETRY_ALL, SY_RETRY_ONLY, SY_RETRY_EXCEPT } sy_retry_rule;

/* Where a step's error goes once it is not retried: a handler step, which
 * runs with the error in ctx.error (catch = {code = "step", ["*"] =
 * "step"}). code NULL is "*": any error no other entry names. */
typedef struct sy_catch {
  char *code;
  char *step;
} sy_catch;

typedef struct sy_step {
  char *name;
  sy_step_kind kind;
  int line;
  char *next; /* fixed next step, or NULL (it may be a function of ctx) */
  int retries;
  double backoff_initial, backoff_factor, backoff_max; /* seconds */
  double timeout;                                      /* seconds, 0: none */
  sy_retry_rule retry_rule;
  char **retry_codes; /* the codes retry_on or no_retry lists */
  int nretry_codes;
  sy_catch *catches;
  int ncatches;
  int shadow_safe; /* a task another node may run in shadow */
  /* node steps */
  const sy_node_entry *node;
  void *node_data;
  struct sy__step_lua *lua;
} sy_step;

typedef struct sy_workflow {
  char *name;
  char *hash; /* hex SHA-256 of the source */
  char *path;
  int line; /* of sy.workflow{} in the file */
  char *source;
  size_t source_len;
  sy_step *steps; /* sorted by name */
  int nsteps;
  const sy_step *start;
} sy_workflow;

/* Diagnostics of a load: errors stop it, warnings do not. */
typedef struct sy_diag {
  char error[1024];
  char warnings[2048];
} sy_diag;

/* What a step run asked for when it stopped. */
typedef enum {
  SY_TASK_DONE,  /* finished: next (NULL = end of instance), vars_json
                    (NULL when a node step left vars as they were) */
  SY_TASK_ERROR, /* raised: error */
  SY_TASK_SLEEP, /* ctx.sleep: sleep_ms, seq */
  SY_TASK_CALL,  /* parked on a plugin call (ctx.<fn>) */
  SY_TASK_SIGNAL /* ctx.wait_signal: signal, timeout_ms (-1: none), seq;
                    answered with sy_task_call_done (vars, or null) */
} sy_task_status;

typedef struct sy_task_result {
  sy_task_status status;
  const char *next; /* points into the definition */
  char *vars_json;  /* malloc'd on DONE, or NULL: unchanged */
  char error[1024];
  char code[SY_CODE_MAX + 1]; /* ERROR: its code, "" for none */
  int64_t sleep_ms;
  const char *signal; /* SIGNAL: its name (the task's, until it resumes) */
  int64_t timeout_ms;
  int seq; /* SLEEP, SIGNAL: its number among the step run's ctx calls */
} sy_task_result;

/* How ctx.<plugin fn>(...) reaches the engine: it starts the plugin call
 * and returns 0, or an error code with a message in err. A call answered
 * at once is in the task (sy_task_call_done) when this returns; any other
 * completes later, and the engine resumes the task then. */
typedef int (*sy_ctx_call_fn)(void *ud, sy_task *t, const sy_ctx_fn_entry *fn,
                              const char *args_json, char *err, size_t errlen);

int sy_lua_new(sy_lua **out, const sy_lua_limits *limits, sy_plugins *plugins,
               sy_ctx_call_fn ctx_call, void *ud);
void sy_lua_free(sy_lua *h);

/* Loads and validates a definition from source (chunkname is its path, used
 * in messages as file:line). */
int sy_workflow_load(sy_lua *h, const char *path, const char *source,
                     size_t len, sy_workflow **out, sy_diag *diag);
void sy_workflow_free(sy_lua *h, sy_workflow *wf);
const sy_step *sy_workflow_step(const sy_workflow *wf, const char *name);
/* Each edge of the definition's graph: from a step to a step it may go to,
 * labelled by what names it ("next", a node's option such as "v1",
 * "catch['*']"); a dynamic next (a function) has none. */
typedef void (*sy_edge_cb)(void *ud, const char *from, const char *to,
                           const char *label);
void sy_workflow_edges(sy_lua *h, const sy_workflow *wf, sy_edge_cb cb,
                       void *ud);
/* Whether the step's rules retry an error of this code (NULL: an error
 * without one), attempts left aside. */
int sy_step_retries_code(const sy_step *s, const char *code);
/* The step that handles an error of this code (NULL: none) once it is not
 * retried, or NULL: an incident. */
const char *sy_step_handler(const sy_step *s, const char *code);
/* Reads a workflow file and loads it. */
int sy_workflow_load_file(sy_lua *h, const char *path, sy_workflow **out,
                          sy_diag *diag);

/* Checks that text is a JSON object usable as an instance's vars. */
int sy_vars_check(const char *json, char *err, size_t errlen);
/* The same check of vars already parsed (a jansson json_t). */
struct json_t;
int sy_vars_check_json(struct json_t *vars, char *err, size_t errlen);

/* A task holds an instance's vars and ctx while it is in memory. */
int sy_task_new(sy_lua *h, sy_task **out, const sy_workflow *wf,
                int64_t instance_id, const char *vars_json, char *err,
                size_t errlen);
void sy_task_free(sy_task *t);
void *sy_task_owner(sy_task *t);
/* Incident retries of the instance so far (part of the idempotency key). */
void sy_task_set_generation(sy_task *t, int generation);
/* A shadow run's task: its idempotency keys (and random seed) end in
 * "-shadow", never a real run's. */
void sy_task_set_shadow(sy_task *t);
/* The task's vars as JSON (malloc'd): 0, or -1. */
int sy_task_vars_json(sy_task *t, char **out);

/* A shadow run's compare: the two sides' vars (JSON objects) by the
 * node's option at path, a list of var names or a function (see
 * sy_api.shadow). 0 with *same and what differs (or, when the same, the
 * compared vars neither side has) in detail, "" for nothing; or SY_ELUA
 * (the function raised, or the option is neither) with the error in
 * detail. */
enum { SY_SHADOW_DETAIL_MAX = 512 };
typedef struct sy_lua_compare {
  const sy_workflow *wf;
  const sy_step *node;
  const char *path;
  int64_t instance_id;
  const char *primary_step, *candidate_step;
  const char *primary, *candidate; /* vars */
} sy_lua_compare;
int sy_lua_shadow_compare(sy_lua *h, const sy_lua_compare *q, int *same,
                          char *detail, size_t cap);
/* The one maker of idempotency keys: "<instance>-<step>-<attempt>", with
 * ".<n>" after the n-th incident retry, and "#<k>" for the k-th ctx call
 * (k > 1) of the step run; written into buf, which it returns. */
const char *sy_task_idempotency_key(sy_task *t, int call, char *buf,
                                    size_t len);
/* How many ctx calls the current step run has made (1 for the first). */
int sy_task_call_seq(sy_task *t);
void sy_task_set_owner(sy_task *t, void *owner);

/* The error the task's step handles, as ctx.error: JSON text of an object
 * (NULL: none). Returns 0, or SY_EINVAL for text that is not one. */
int sy_task_set_error(sy_task *t, const char *json);
/* Makes step the task's current step (ctx.step, ctx.attempt, a fresh
 * instruction budget); sy_task_start does it for task steps. */
void sy_task_set_step(sy_task *t, const sy_step *step, int attempt);
/* Starts a task step run (a new coroutine). */
void sy_task_start(sy_task *t, const sy_step *step, int attempt,
                   sy_task_result *r);
/* Resumes after a sleep or a completed plugin call. */
void sy_task_resume(sy_task *t, sy_task_result *r);
/* The parked plugin call finished: json result, or an error message. */
void sy_task_call_done(sy_task *t, const char *json, const char *error);
/* Drops the running coroutine (timeout, shutdown); vars keep their state
 * as of the last completed step. */
void sy_task_abort(sy_task *t);
/* For node steps: ends the step going to next (validates and serializes
 * vars as a task step does). */
void sy_task_finish_node(sy_task *t, const sy_step *step, const char *next,
                         sy_task_result *r);

/* JSON helpers for other Lua states of the binary (the test runner). */
int sy_lua_encode(lua_State *L, int idx, char **out, char *err, size_t errlen);
int sy_lua_push_json(lua_State *L, const char *text, char *err, size_t errlen);

/* Services for plugin calls (sy_api). */
int sy_task_var_get(sy_task *t, const char *key, sy_value *out);
int sy_task_var_set_json(sy_task *t, const char *key, const char *json);
int sy_task_predicate(sy_task *t, const sy_step *step, const char *option,
                      int *out, char *err, size_t errlen);
int sy_opts_get(sy_opts *o, const char *key, sy_value *out);
const char *sy_opts_unknown(sy_opts *o, const char *path,
                            const char *const *allowed);

#endif
