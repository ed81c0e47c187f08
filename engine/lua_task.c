/* Tasks: an instance's vars and ctx while it is in memory, and the
 * coroutine of its current step. ctx offers log, sleep and the plugins'
 * functions (ctx.http, ctx.version, ...); a step that sleeps or calls a
 * plugin yields, and the engine resumes it when the timer fires or the
 * call completes. Plugins read and write vars through here. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_int.h"

/* ---------------------------------------------------------------------
 * ctx: the table a step function receives */

static sy_task *running_task(lua_State *L, const char *what) {
  sy_lua *h = sy__host(L);
  sy_task *t = h->current;
  if (!t || t->co != L) {
    luaL_error(L, "%s can only be called from the step's own coroutine", what);
  }
  return t;
}

/* Lua: ctx.log(...) */
static int ctx_log(lua_State *L) {
  sy_lua *h = sy__host(L);
  sy_task *t = h->current;
  luaL_Buffer b;
  int n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) {
      luaL_addchar(&b, ' ');
    }
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  if (t) {
    fprintf(stderr, "[%s #%lld %s] %s\n", t->wf->name,
            (long long)t->instance_id, t->step ? t->step->name : "-",
            lua_tostring(L, -1));
  } else {
    fprintf(stderr, "%s\n", lua_tostring(L, -1));
  }
  return 0;
}

/* Lua: ctx.sleep(seconds) waits: on a timer, or parked in the database for
 * a long one. It is a ctx call like the others, numbered with them. */
static int ctx_sleep(lua_State *L) {
  sy_task *t = running_task(L, "ctx.sleep");
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && isfinite(s) && s < 1e9, 1,
                "seconds must be a finite number >= 0");
  t->pending = PENDING_SLEEP;
  t->sleep_ms = (int64_t)(s * 1000.0 + 0.5);
  t->call_seq++;
  return lua_yield(L, 0);
}

/* Continuation after a parked plugin call: its result or its error. */
static int ctx_call_cont(lua_State *L, int status, lua_KContext k) {
  sy_task *t = running_task(L, "a ctx function");
  char err[256];
  (void)status;
  (void)k;
  t->pending = PENDING_NONE;
  if (t->call_error) {
    lua_pushstring(L, t->call_error);
    free(t->call_error);
    t->call_error = NULL;
    free(t->call_json);
    t->call_json = NULL;
    return lua_error(L);
  }
  if (sy__push_json_text(L, t->call_json ? t->call_json : "null", 0, err,
                         sizeof err)) {
    free(t->call_json);
    t->call_json = NULL;
    return luaL_error(L, "plugin returned %s", err);
  }
  free(t->call_json);
  t->call_json = NULL;
  return 1;
}

/* Lua: ctx.<plugin function>(arg) -> the plugin's result (parks meanwhile). */
static int ctx_plugin_call(lua_State *L) {
  sy_lua *h = sy__host(L);
  const sy_ctx_fn_entry *fn = lua_touserdata(L, lua_upvalueindex(1));
  sy_task *t = running_task(L, fn->fn->name);
  char *args = NULL;
  char err[512];
  int rc;
  lua_settop(L, 1);
  /* Canonical (keys sorted): Lua's table order differs from one state to
   * the next, and a replay compares the arguments with the journal's. */
  if (sy__encode(L, 1, "argument", 1, &args, err, sizeof err)) {
    return luaL_error(L, "ctx.%s: %s", fn->fn->name, err);
  }
  t->call_done = 0;
  t->call_seq++;
  t->pending = PENDING_CALL;
  rc = h->ctx_call(h->ud, t, fn, args, err, sizeof err);
  free(args);
  if (rc) {
    t->pending = PENDING_NONE;
    return luaL_error(L, "ctx.%s: %s", fn->fn->name, err);
  }
  if (t->call_done) { /* the plugin answered at once */
    return ctx_call_cont(L, LUA_OK, 0);
  }
  return lua_yieldk(L, 0, 0, ctx_call_cont);
}

/* Lua: ctx.wait_signal(name [, {timeout = seconds}]) -> the signal's vars,
 * or nil when the timeout passed first. It takes the oldest signal of that
 * name sent to the instance (sent before it waited, or while); the step
 * parks until one comes. A ctx call like the others: numbered, journaled. */
static int ctx_wait_signal(lua_State *L) {
  sy_task *t = running_task(L, "ctx.wait_signal");
  size_t len;
  const char *name = luaL_checklstring(L, 1, &len);
  double timeout = -1;
  luaL_argcheck(L, len > 0 && len < 256 && strlen(name) == len, 1,
                "a signal name: 1 to 255 bytes, no NUL");
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TTABLE);
    if (sy__rawfield(L, 2, "timeout") != LUA_TNIL) {
      timeout = lua_tonumber(L, -1);
      luaL_argcheck(L,
                    lua_type(L, -1) == LUA_TNUMBER && timeout >= 0 &&
                        isfinite(timeout) && timeout < 1e9,
                    2, "timeout must be a number of seconds >= 0");
    }
    lua_pop(L, 1);
  }
  free(t->signal);
  if (!(t->signal = strdup(name))) {
    return luaL_error(L, "ctx.wait_signal: out of memory");
  }
  t->timeout_ms = timeout < 0 ? -1 : (int64_t)(timeout * 1000.0 + 0.5);
  t->call_done = 0;
  t->call_seq++;
  t->pending = PENDING_SIGNAL;
  return lua_yieldk(L, 0, 0, ctx_call_cont);
}

/* ctx.idempotency_key is made when a step reads it, not at every step: most
 * steps never do. Its ctx must be the running step's own. */
static int ctx_index(lua_State *L) {
  sy_lua *h = sy__host(L);
  lua_pushvalue(L, 2);
  if (lua_rawget(L, lua_upvalueindex(1)) != LUA_TNIL ||
      lua_type(L, 2) != LUA_TSTRING ||
      strcmp(lua_tostring(L, 2), "idempotency_key") != 0) {
    return 1;
  }
  if (h->current) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, h->current->ctx_ref);
  }
  if (!h->current || !lua_rawequal(L, 1, -1)) {
    return luaL_error(L,
                      "ctx.idempotency_key is only known while the "
                      "ctx's own step runs");
  }
  lua_pushstring(L, sy_task_idempotency_key(h->current, 1, h->current->idem_key,
                                            sizeof h->current->idem_key));
  return 1;
}

void sy__ctx_metatable(sy_lua *h) {
  lua_State *L = h->L;
  int n = sy_plugins_ctx_fn_count(h->plugins);
  lua_newtable(L); /* metatable */
  lua_newtable(L); /* methods */
  lua_pushcfunction(L, ctx_log);
  lua_setfield(L, -2, "log");
  lua_pushcfunction(L, ctx_sleep);
  lua_setfield(L, -2, "sleep");
  lua_pushcfunction(L, ctx_wait_signal);
  lua_setfield(L, -2, "wait_signal");
  for (int i = 0; i < n; i++) {
    const sy_ctx_fn_entry *fn = sy_plugins_ctx_fn(h->plugins, i);
    lua_pushlightuserdata(L, (void *)fn);
    lua_pushcclosure(L, ctx_plugin_call, 1);
    lua_setfield(L, -2, fn->fn->name);
  }
  lua_pushcclosure(L, ctx_index, 1);
  lua_setfield(L, -2, "__index");
  /* The methods table is shared by every instance: keep it out of reach. */
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  h->ctx_mt = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* ---------------------------------------------------------------------
 * Node options and vars for plugins */

void sy__read_value(lua_State *L, int idx, sy_value *out) {
  memset(out, 0, sizeof *out);
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      out->type = SY_VAL_NIL;
      break;
    case LUA_TBOOLEAN:
      out->type = SY_VAL_BOOLEAN;
      out->boolean = lua_toboolean(L, idx);
      break;
    case LUA_TNUMBER:
      out->type = SY_VAL_NUMBER;
      out->number = lua_tonumber(L, idx);
      break;
    case LUA_TSTRING:
      out->type = SY_VAL_STRING;
      out->str = lua_tolstring(L, idx, &out->len);
      break;
    case LUA_TTABLE:
      out->type = SY_VAL_TABLE;
      break;
    case LUA_TFUNCTION:
      out->type = SY_VAL_FUNCTION;
      break;
    default:
      out->type = SY_VAL_OTHER;
  }
}

static void push_vars(sy_task *t) {
  lua_State *L = t->h->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
  lua_getfield(L, -1, "vars");
  lua_remove(L, -2);
}

int sy_task_var_get(sy_task *t, const char *key, sy_value *out) {
  lua_State *L = t->h->L;
  push_vars(t);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    out->type = SY_VAL_NIL;
    return SY_ESTATE;
  }
  lua_getfield(L, -1, key);
  sy__read_value(L, -1, out);
  /* A number read as a string key must stay valid while the call runs:
   * the vars table holds the string, and the call ends before vars
   * change, so popping is safe. */
  lua_pop(L, 2);
  return 0;
}

int sy_task_var_set_json(sy_task *t, const char *key, const char *json) {
  lua_State *L = t->h->L;
  char err[256];
  t->vars_dirty = 1;
  push_vars(t);
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return SY_ESTATE;
  }
  if (json) {
    if (sy__push_json_text(L, json, 0, err, sizeof err)) {
      lua_pop(L, 1);
      return SY_EINVAL;
    }
  } else {
    lua_pushnil(L);
  }
  lua_setfield(L, -2, key);
  lua_pop(L, 1);
  return 0;
}

/* ---------------------------------------------------------------------
 * Tasks */

int sy_task_new(sy_lua *h, sy_task **out, const sy_workflow *wf,
                int64_t instance_id, const char *vars_json, char *err,
                size_t errlen) {
  lua_State *L = h->L;
  sy_task *t = calloc(1, sizeof *t);
  if (!t) {
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  t->h = h;
  t->wf = wf;
  t->instance_id = instance_id;
  t->co_ref = LUA_NOREF;
  lua_createtable(L, 0, 6);
  if (sy__push_json_text(L, vars_json, 1, err, errlen)) {
    lua_pop(L, 1);
    free(t);
    return SY_EINVAL;
  }
  lua_setfield(L, -2, "vars");
  lua_pushinteger(L, instance_id);
  lua_setfield(L, -2, "instance_id");
  lua_pushstring(L, wf->name);
  lua_setfield(L, -2, "workflow");
  lua_rawgeti(L, LUA_REGISTRYINDEX, h->ctx_mt);
  lua_setmetatable(L, -2);
  t->ctx_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  *out = t;
  return 0;
}

static void drop_coroutine(sy_task *t) {
  t->co_idle = 0;
  if (t->co_ref != LUA_NOREF) {
    lua_resetthread(t->co);
    luaL_unref(t->h->L, LUA_REGISTRYINDEX, t->co_ref);
    t->co_ref = LUA_NOREF;
    t->co = NULL;
  }
  t->pending = PENDING_NONE;
}

void sy_task_free(sy_task *t) {
  if (!t) {
    return;
  }
  drop_coroutine(t);
  luaL_unref(t->h->L, LUA_REGISTRYINDEX, t->ctx_ref);
  free(t->call_json);
  free(t->call_error);
  free(t->signal);
  free(t);
}

void *sy_task_owner(sy_task *t) {
  return t->owner;
}

void sy_task_set_owner(sy_task *t, void *owner) {
  t->owner = owner;
}

void sy_task_set_generation(sy_task *t, int generation) {
  t->generation = generation;
}

void sy_task_set_shadow(sy_task *t) {
  t->shadow = 1;
}

int sy_task_vars_json(sy_task *t, char **out) {
  lua_State *L = t->h->L;
  char err[256];
  int rc;
  push_vars(t);
  rc = lua_istable(L, -1) ? sy__encode(L, -1, "vars", 0, out, err, sizeof err)
                          : -1;
  lua_pop(L, 1);
  return rc ? -1 : 0;
}

const char *sy_task_idempotency_key(sy_task *t, int call, char *buf,
                                    size_t len) {
  int n = snprintf(buf, len, "%lld-%.256s-%d", (long long)t->instance_id,
                   t->step->name, t->attempt);
  if (t->generation && n > 0 && (size_t)n < len) {
    n += snprintf(buf + n, len - (size_t)n, ".%d", t->generation);
  }
  if (t->shadow && n > 0 && (size_t)n < len) {
    n += snprintf(buf + n, len - (size_t)n, "-shadow");
  }
  if (call > 1 && n > 0 && (size_t)n < len) {
    snprintf(buf + n, len - (size_t)n, "#%d", call);
  }
  return buf;
}

int sy_task_call_seq(sy_task *t) {
  return t->call_seq;
}

int sy_task_set_error(sy_task *t, const char *json) {
  lua_State *L = t->h->L;
  char err[256];
  if (!json && !t->has_error) {
    return 0;
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
  if (!json) {
    lua_pushnil(L);
  } else if (sy__push_json_text(L, json, 1, err, sizeof err)) {
    lua_pop(L, 1);
    return SY_EINVAL;
  }
  lua_setfield(L, -2, "error");
  lua_pop(L, 1);
  t->has_error = json != NULL;
  return 0;
}

void sy_task_set_step(sy_task *t, const sy_step *step, int attempt) {
  lua_State *L = t->h->L;
  t->step = step;
  t->attempt = attempt;
  t->call_seq = 0;
  t->rng_seeded = 0; /* seeded when the step first draws */
  t->vars_dirty = step->kind == SY_STEP_TASK;
  t->budget_left = t->h->instructions;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
  lua_pushstring(L, step->name);
  lua_setfield(L, -2, "step");
  lua_pushinteger(L, attempt);
  lua_setfield(L, -2, "attempt");
  lua_pop(L, 1);
}

/* lua_pcall on co under the limits, as task t (NULL: no ctx function may
 * run). */
static int limited_pcall(sy_lua *h, lua_State *co, sy_task *t, int nargs,
                         int nresults) {
  sy_task *outer = h->current;
  int rc;
  h->current = t;
  sy__limits_on(h, co, h->instructions);
  rc = lua_pcall(co, nargs, nresults, 0);
  sy__limits_off(h, co);
  h->current = outer;
  return rc;
}

/* Calls a function of ctx (a `next` function or a predicate) on a fresh
 * thread under the limits; leaves its one result on the main stack. */
static int call_with_ctx(sy_task *t, int fn_ref, char *err, size_t errlen) {
  sy_lua *h = t->h;
  lua_State *L = h->L;
  lua_State *co = lua_newthread(L);
  int rc;
  t->vars_dirty = 1; /* Lua code may change vars */
  lua_rawgeti(co, LUA_REGISTRYINDEX, fn_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, t->ctx_ref);
  rc = limited_pcall(h, co, t, 1, 1);
  if (rc != LUA_OK) {
    sy__error_message(co, t->wf->path, err, errlen, NULL);
    lua_pop(L, 1);
    return SY_ELUA;
  }
  lua_xmove(co, L, 1);
  lua_remove(L, -2); /* the thread */
  return 0;
}

/* The step body returned: resolve next and serialize vars. */
static void finish(sy_task *t, const sy_step *step, const char *next,
                   sy_task_result *r) {
  lua_State *L = t->h->L;
  r->next = next;
  if (!next && step->lua->next != LUA_NOREF) {
    if (call_with_ctx(t, step->lua->next, r->error, sizeof r->error)) {
      r->status = SY_TASK_ERROR;
      return;
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      const sy_step *s = sy_workflow_step(t->wf, lua_tostring(L, -1));
      if (!s) {
        snprintf(r->error, sizeof r->error,
                 "step '%s': next returned '%s', which is not a step of '%s'",
                 step->name, lua_tostring(L, -1), t->wf->name);
        lua_pop(L, 1);
        r->status = SY_TASK_ERROR;
        return;
      }
      r->next = s->name;
    } else if (!lua_isnil(L, -1)) {
      snprintf(r->error, sizeof r->error,
               "step '%s': next returned a %s (a step name or nil expected)",
               step->name, luaL_typename(L, -1));
      lua_pop(L, 1);
      r->status = SY_TASK_ERROR;
      return;
    }
    lua_pop(L, 1);
  } else if (!next && step->next) {
    r->next = sy_workflow_step(t->wf, step->next)->name;
  }
  if (!t->vars_dirty) {
    r->vars_json = NULL; /* unchanged: the stored vars stand */
    r->status = SY_TASK_DONE;
    return;
  }
  push_vars(t);
  if (!lua_istable(L, -1)) {
    snprintf(r->error, sizeof r->error, "ctx.vars must be a table, it is a %s",
             luaL_typename(L, -1));
    lua_pop(L, 1);
    r->status = SY_TASK_ERROR;
    return;
  }
  if (sy__encode(L, -1, "vars", 0, &r->vars_json, r->error, sizeof r->error)) {
    lua_pop(L, 1);
    r->status = SY_TASK_ERROR;
    return;
  }
  lua_pop(L, 1);
  r->status = SY_TASK_DONE;
}

static void resume(sy_task *t, int nargs, sy_task_result *r) {
  sy_lua *h = t->h;
  int nres = 0, rc;
  memset(r, 0, sizeof *r);
  h->current = t;
  sy__limits_on(h, t->co, t->budget_left);
  rc = lua_resume(t->co, h->L, nargs, &nres);
  t->budget_left = h->budget_left;
  sy__limits_off(h, t->co);
  h->current = NULL;
  if (rc == LUA_YIELD) {
    lua_pop(t->co, nres);
    if (t->pending == PENDING_SLEEP) {
      r->status = SY_TASK_SLEEP;
      r->sleep_ms = t->sleep_ms;
      r->seq = t->call_seq;
      return;
    }
    if (t->pending == PENDING_CALL) {
      r->status = SY_TASK_CALL;
      return;
    }
    if (t->pending == PENDING_SIGNAL) {
      r->status = SY_TASK_SIGNAL;
      r->signal = t->signal;
      r->timeout_ms = t->timeout_ms;
      r->seq = t->call_seq;
      return;
    }
    snprintf(r->error, sizeof r->error,
             "step '%s' yielded outside the ctx API (coroutine.yield at the "
             "top of a step is not allowed)",
             t->step->name);
    r->status = SY_TASK_ERROR;
    drop_coroutine(t);
    return;
  }
  if (rc == LUA_OK) {
    /* A coroutine that returned can start another function: keep it for
     * the instance's next step rather than make a new one. */
    lua_pop(t->co, nres);
    t->co_idle = 1;
    t->pending = PENDING_NONE;
    finish(t, t->step, NULL, r);
    return;
  }
  sy__error_message(t->co, t->wf->path, r->error, sizeof r->error, r->code);
  if (rc == LUA_ERRMEM) {
    snprintf(r->error, sizeof r->error,
             "memory limit of the Lua state exceeded (%zu bytes)", h->limit);
  }
  r->status = SY_TASK_ERROR;
  drop_coroutine(t);
}

void sy_task_start(sy_task *t, const sy_step *step, int attempt,
                   sy_task_result *r) {
  lua_State *L = t->h->L;
  SY_ASSERT(step->kind == SY_STEP_TASK);
  if (!t->co_idle) {
    drop_coroutine(t);
    t->co = lua_newthread(L);
    t->co_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  t->co_idle = 0;
  sy_task_set_step(t, step, attempt);
  lua_rawgeti(t->co, LUA_REGISTRYINDEX, step->lua->run);
  lua_rawgeti(t->co, LUA_REGISTRYINDEX, t->ctx_ref);
  resume(t, 1, r);
}

void sy_task_resume(sy_task *t, sy_task_result *r) {
  SY_ASSERT(t->co && t->pending != PENDING_NONE);
  if (t->pending == PENDING_SLEEP) {
    t->pending = PENDING_NONE;
  }
  resume(t, 0, r);
}

void sy_task_call_done(sy_task *t, const char *json, const char *error) {
  free(t->call_json);
  free(t->call_error);
  t->call_json = json ? strdup(json) : NULL;
  t->call_error = error ? strdup(error) : NULL;
  t->call_done = 1;
}

void sy_task_abort(sy_task *t) {
  drop_coroutine(t);
}

void sy_task_finish_node(sy_task *t, const sy_step *step, const char *next,
                         sy_task_result *r) {
  memset(r, 0, sizeof *r);
  if (next && !sy_workflow_step(t->wf, next)) {
    snprintf(r->error, sizeof r->error,
             "step '%s': node chose next step '%s', which does not exist",
             step->name, next);
    r->status = SY_TASK_ERROR;
    return;
  }
  finish(t, step, next ? sy_workflow_step(t->wf, next)->name : NULL, r);
}

int sy_task_predicate(sy_task *t, const sy_step *step, const char *option,
                      int *out, char *err, size_t errlen) {
  lua_State *L = t->h->L;
  int ref;
  lua_rawgeti(L, LUA_REGISTRYINDEX, step->lua->opts);
  sy__rawfield(L, -1, option);
  if (!lua_isfunction(L, -1)) {
    lua_pop(L, 2);
    snprintf(err, errlen, "option '%s' is not a function", option);
    return SY_EINVAL;
  }
  ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  if (t->step != step) {
    sy_task_set_step(t, step, t->attempt);
  }
  if (call_with_ctx(t, ref, err, errlen)) {
    luaL_unref(L, LUA_REGISTRYINDEX, ref);
    return SY_ELUA;
  }
  luaL_unref(L, LUA_REGISTRYINDEX, ref);
  *out = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return 0;
}

/* ---------------------------------------------------------------------
 * Shadow runs' compare. */

/* Appends to detail, cutting at its end with "...". */
static void detail_add(char *buf, size_t cap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void detail_add(char *buf, size_t cap, const char *fmt, ...) {
  size_t n = strlen(buf);
  va_list ap;
  if (n + 1 >= cap) {
    return;
  }
  va_start(ap, fmt);
  if ((size_t)vsnprintf(buf + n, cap - n, fmt, ap) >= cap - n && cap > 4) {
    memcpy(buf + cap - 4, "...", 4);
  }
  va_end(ap);
}

static void detail_value(char *buf, size_t cap, json_t *v) {
  /* 15 digits: 0.4966, not 0.49659999999999999 */
  char *text = v ? json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT |
                                     JSON_REAL_PRECISION(15))
                 : NULL;
  detail_add(buf, cap, "%.120s", v ? (text ? text : "?") : "absent");
  free(text);
}

/* The list at the top of the stack: each name equal as JSON on both
 * sides. Pops it. */
static int compare_list(lua_State *L, const sy_lua_compare *q, int *same,
                        char *detail, size_t cap) {
  json_t *p = json_loads(q->primary, 0, NULL);
  json_t *c = json_loads(q->candidate, 0, NULL);
  char absent[SY_SHADOW_DETAIL_MAX] = "";
  lua_Integer n = (lua_Integer)lua_rawlen(L, -1);
  *same = 1;
  for (lua_Integer i = 1; p && c && i <= n; i++) {
    const char *name;
    json_t *a, *b;
    lua_rawgeti(L, -1, i);
    name = lua_tostring(L, -1); /* compile checked: names */
    a = name ? json_object_get(p, name) : NULL;
    b = name ? json_object_get(c, name) : NULL;
    if (name && !a && !b) {
      detail_add(absent, sizeof absent, "%s%.64s", absent[0] ? ", " : "", name);
    } else if (name && !(a && b && json_equal(a, b))) {
      detail_add(detail, cap, "%s%.64s: ", *same ? "" : "; ", name);
      detail_value(detail, cap, a);
      detail_add(detail, cap, " -> ");
      detail_value(detail, cap, b);
      *same = 0;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  if (*same && absent[0]) {
    detail_add(detail, cap, "absent on both sides: %s", absent);
  }
  json_decref(p);
  json_decref(c);
  return 0;
}

/* The function on top of the stack: (ctx, primary, candidate) -> same,
 * detail, under the step limits. Pops it. */
static int compare_fn(sy_lua *h, const sy_lua_compare *q, int *same,
                      char *detail, size_t cap) {
  lua_State *L = h->L;
  lua_State *co = lua_newthread(L);
  int rc;
  lua_rotate(L, -2, 1); /* the thread below the function */
  lua_xmove(L, co, 1);
  lua_createtable(co, 0, 5);
  lua_pushinteger(co, q->instance_id);
  lua_setfield(co, -2, "instance_id");
  lua_pushstring(co, q->wf->name);
  lua_setfield(co, -2, "workflow");
  lua_pushstring(co, q->node->name);
  lua_setfield(co, -2, "step");
  lua_pushstring(co, q->primary_step);
  lua_setfield(co, -2, "primary_step");
  lua_pushstring(co, q->candidate_step);
  lua_setfield(co, -2, "candidate_step");
  if (sy__push_json_text(co, q->primary, 1, detail, cap) ||
      sy__push_json_text(co, q->candidate, 1, detail, cap)) {
    lua_pop(L, 1);
    return SY_ELUA;
  }
  rc = limited_pcall(h, co, NULL, 3, 2); /* no ctx function runs here */
  if (rc != LUA_OK) {
    sy__error_message(co, q->wf->path, detail, cap, NULL);
  } else {
    *same = lua_toboolean(co, -2);
    if (!lua_isnil(co, -1)) {
      detail_add(detail, cap, "%s", luaL_tolstring(co, -1, NULL));
    }
  }
  lua_pop(L, 1); /* the thread */
  return rc == LUA_OK ? 0 : SY_ELUA;
}

int sy_lua_shadow_compare(sy_lua *h, const sy_lua_compare *q, int *same,
                          char *detail, size_t cap) {
  lua_State *L = h->L;
  detail[0] = '\0';
  lua_rawgeti(L, LUA_REGISTRYINDEX, q->node->lua->opts);
  sy__push_opt_path(L, -1, q->path);
  lua_remove(L, -2);
  if (lua_istable(L, -1)) {
    return compare_list(L, q, same, detail, cap);
  }
  if (lua_isfunction(L, -1)) {
    return compare_fn(h, q, same, detail, cap);
  }
  lua_pop(L, 1);
  snprintf(detail, cap,
           "step '%s': option '%s' is neither a list nor a "
           "function",
           q->node->name, q->path);
  return SY_ELUA;
}

/* ---------------------------------------------------------------------
 * math.random: xoshiro256** per step run, as Lua 5.4's own generator, with
 * Lua's argument rules. */

static uint64_t rotl(uint64_t x, int n) {
  return (x << n) | (x >> (64 - n));
}

static uint64_t next_random(uint64_t s[4]) {
  uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return out;
}

void sy__random_seed(uint64_t s[4], uint64_t x) {
  for (int i = 0; i < 4; i++) { /* splitmix64 */
    uint64_t z = (x += 0x9e3779b97f4a7c15u);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
    s[i] = z ^ (z >> 31);
  }
}

void sy__seed_random(sy_task *t) {
  char key[320];
  t->rng_seeded = 1;
  uint64_t h = 14695981039346656037u; /* FNV-1a */
  for (const char *p = sy_task_idempotency_key(t, 1, key, sizeof key); *p;
       p++) {
    h = (h ^ (unsigned char)*p) * 1099511628211u;
  }
  sy__random_seed(t->rng, h);
}

static uint64_t *random_state(lua_State *L) {
  sy_lua *h = sy__host(L);
  sy_task *t = h->current;
  if (!t) {
    return h->rng;
  }
  if (!t->rng_seeded) {
    sy__seed_random(t);
  }
  return t->rng;
}

/* Lua: math.random([m [, n]]) -> a float in [0, 1), or an integer in
 * [1, m] or [m, n]; math.random(0) -> an integer of 64 random bits. */
int sy__math_random(lua_State *L) {
  uint64_t *s = random_state(L), r = next_random(s), lim, mask;
  lua_Integer low, up;
  switch (lua_gettop(L)) {
    case 0:
      lua_pushnumber(L, (lua_Number)(r >> 11) * 0x1.0p-53);
      return 1;
    case 1:
      low = 1;
      up = luaL_checkinteger(L, 1);
      if (up == 0) {
        lua_pushinteger(L, (lua_Integer)r);
        return 1;
      }
      break;
    case 2:
      low = luaL_checkinteger(L, 1);
      up = luaL_checkinteger(L, 2);
      break;
    default:
      return luaL_error(L, "wrong number of arguments");
  }
  luaL_argcheck(L, low <= up, lua_gettop(L), "interval is empty");
  /* a uniform draw in [0, lim]: mask to the bits lim needs, reject above */
  lim = (uint64_t)up - (uint64_t)low;
  for (mask = lim; mask & (mask + 1); mask |= mask >> 1) {
  }
  while ((r &= mask) > lim) {
    r = next_random(s);
  }
  lua_pushinteger(L, (lua_Integer)((uint64_t)low + r));
  return 1;
}

/* Lua: math.randomseed([n]): the step run's generator from n, or back to
 * its idempotency key's seed. */
int sy__math_randomseed(lua_State *L) {
  sy_lua *h = sy__host(L);
  if (lua_isnoneornil(L, 1)) {
    if (h->current) {
      sy__seed_random(h->current);
    } else {
      sy__random_seed(h->rng, 0);
    }
    return 0;
  }
  sy__random_seed(random_state(L), (uint64_t)luaL_checkinteger(L, 1));
  return 0;
}
