/* Internals of the Lua host, shared by its files and by nothing else:
 * lua_sandbox.c (the state, its limits, the sandbox and the `switchyard`
 * module), lua_json.c (vars as JSON), workflow.c (loading and validating
 * definitions) and lua_task.c (step coroutines and their ctx). Only these
 * files include lua.h. */
#ifndef SY_LUA_INT_H
#define SY_LUA_INT_H

#include <lauxlib.h>
#include <lua.h>

#include "luahost.h"

#define HOOK_EVERY 1000   /* instructions between two looks at the budget */
#define JSON_MAX_DEPTH 64 /* of vars, as stored */

struct sy_lua {
  lua_State *L;
  size_t used, limit;
  int enforce;
  int64_t instructions;
  int64_t budget_left;
  sy_plugins *plugins;
  sy_ctx_call_fn ctx_call;
  void *ud;
  sy_task *current;
  char step_mt;     /* its address marks step specs (see make_spec) */
  char workflow_mt; /* and this one workflow specs */
  int ctx_mt;       /* metatable of ctx tables (methods) */
  uint64_t rng[4];  /* math.random's state outside steps (loading) */
};

struct sy_opts {
  lua_State *L;
  int idx;
};

struct sy_task {
  sy_lua *h;
  const sy_workflow *wf;
  int64_t instance_id;
  int ctx_ref;
  lua_State *co;
  int co_ref;
  int co_idle; /* finished cleanly: reusable for the next step */
  const sy_step *step;
  int attempt;
  int64_t budget_left;
  enum { PENDING_NONE, PENDING_SLEEP, PENDING_CALL, PENDING_SIGNAL } pending;
  int64_t sleep_ms;
  char *signal;       /* ctx.wait_signal: the name, */
  int64_t timeout_ms; /* and how long (-1: no timeout) */
  /* result of the parked plugin call */
  int call_done;
  char *call_json;
  char *call_error;
  void *owner;
  int generation;
  int shadow;   /* a shadow run: its keys are its own */
  int call_seq; /* ctx calls so far in this step run */
  /* Lua code or a plugin may have changed vars during this step run (a
   * node step that touched nothing keeps the stored vars unencoded). */
  int vars_dirty;
  char idem_key[320]; /* made when asked for */
  uint64_t rng[4];    /* math.random's state in this step run */
  int rng_seeded;     /* it drew in this step run: rng is seeded */
  int has_error;      /* ctx.error is set (its step handles an error) */
};

/* A step's Lua values, kept in the registry (LUA_NOREF when absent). */
struct sy__step_lua {
  int run;  /* task: the function */
  int next; /* a `next` function */
  int opts; /* node: its options table */
};

/* lua_sandbox.c */
sy_lua *sy__host(lua_State *L);
/* Pushes t[k] without metamethods; returns its type. */
int sy__rawfield(lua_State *L, int idx, const char *k);
/* Runs user code on co with an instruction budget and the memory cap. */
void sy__limits_on(sy_lua *h, lua_State *co, int64_t budget);
void sy__limits_off(sy_lua *h, lua_State *co);
/* The name Lua knows a workflow file by (see lua_sandbox.c). */
const char *sy__chunk_base(const char *path);
/* Copies the error on top of co into buf, positions in the workflow at
 * path (or NULL) given with the whole path; a table raised as
 * error({code = ..., message = ...}) gives its message, and its code into
 * code when that is not NULL (SY_CODE_MAX + 1 bytes; "" for none). */
void sy__error_message(lua_State *co, const char *path, char *buf, size_t len,
                       char *code);
/* Replaces the table on top of the stack by a read-only proxy of it. */
void sy__make_read_only(lua_State *L, int loading);
/* Pushes a fresh environment for a workflow file. */
void sy__push_sandbox(sy_lua *h);

/* workflow.c: pushes the value at a path of the options table at idx
 * ("a.b", "a.1": names, or 1-based indexes), nil where a step of it is not
 * a table. */
void sy__push_opt_path(lua_State *L, int idx, const char *path);

/* lua_json.c */
/* Pushes the value of JSON text (want_object: it must be an object). */
int sy__push_json_text(lua_State *L, const char *text, int want_object,
                       char *err, size_t errlen);
/* Encodes the value at idx as JSON text (malloc'd); errors name where in
 * `root` the offending value is. */
int sy__encode(lua_State *L, int idx, const char *root, int canonical,
               char **out, char *err, size_t errlen);

/* lua_task.c */
/* Makes the metatable every ctx shares (its methods), kept in h->ctx_mt. */
void sy__ctx_metatable(sy_lua *h);
/* A Lua value as plugins see it. */
void sy__read_value(lua_State *L, int idx, sy_value *out);
/* Seeds the step run's math.random from its idempotency key, so that a
 * step run again from its start draws the same numbers. */
void sy__seed_random(sy_task *t);
/* A generator's state from a 64-bit seed. */
void sy__random_seed(uint64_t s[4], uint64_t x);
/* math.random and math.randomseed of the sandbox (per step run). */
int sy__math_random(lua_State *L);
int sy__math_randomseed(lua_State *L);

#endif
