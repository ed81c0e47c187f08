/* The test runner host (see testlua.h) and the C half of the module
 * `switchyard.testing`; its Lua half (testing.lua, built in) adds stubs,
 * faults and forced versions, and is what README "Testing your
 * workflows" documents. The C half:
 *
 *   core.engine{ db = path, workflows = dir, plugins = dir,
 *                concurrency = n, settings = { key = value }, seed = n,
 *                lua_memory = bytes, step_instructions = n }
 *   e:load(name_or_path)          -> name | nil, error    (validates)
 *   e:start(workflow, vars)       -> id | nil, error
 *   e:run([{ for_ms = n }])       -> { steps=, completed=, incidents=, ... }
 *   e:instance(id)                -> { id=, state=, step=, attempt=, vars= }
 *   e:history(id)                 -> { { step=, attempt=, outcome=, error=,
 *                                        code=, handler= } }
 *   e:incidents([all])            -> { { instance=, step=, error= } }
 *   e:retry(id), e:cancel(id)     -> true | nil, error
 *   e:signal(name, id | { var = value }, [vars], [all]) -> sent, woke
 *   e:on_call(function(call, arg) | nil)   (the engine's call hook)
 *   e:now()                       -> the engine's time, in seconds
 *   e:sql(query, ...)             -> rows as tables (read-only checks)
 *   e:close()
 *   core.check(path)              -> true, warnings | nil, error
 *   core.json_encode(v), core.json_decode(text)
 */
#include "testlua.h"

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "error.h"
#include "testing_lua.h"

#define ENGINE_MT "sy.TestEngine"

typedef struct test_engine {
  sy_engine *e;
  lua_State *L; /* the test's state, while e:run() runs */
  int hook_ref; /* e:on_call's function (LUA_NOREF: none) */
  sy_engine_opts o;
  sy_setting settings[32];
  char *strings[72]; /* copies the options point to */
  int nstrings;
} test_engine;

static const sy_engine_opts *base_opts;

static test_engine *check_engine(lua_State *L) {
  test_engine *t = luaL_checkudata(L, 1, ENGINE_MT);
  luaL_argcheck(L, t->e != NULL, 1, "engine is closed");
  return t;
}

/* Copies a string the options point to; the engine outlives the Lua
 * strings it came from. */
static const char *keep(lua_State *L, test_engine *t, const char *s) {
  if (t->nstrings == (int)(sizeof t->strings / sizeof *t->strings)) {
    luaL_error(L, "T.engine: too many options (at most 32 settings)");
  }
  return t->strings[t->nstrings++] = strdup(s);
}

/* __gc and __close: safe to call twice. */
static int engine_gc(lua_State *L) {
  test_engine *t = luaL_checkudata(L, 1, ENGINE_MT);
  sy_engine_close(t->e);
  t->e = NULL;
  luaL_unref(L, LUA_REGISTRYINDEX, t->hook_ref);
  t->hook_ref = LUA_NOREF;
  for (int i = 0; i < t->nstrings; i++) {
    free(t->strings[i]);
  }
  t->nstrings = 0;
  return 0;
}

/* Lua: T.engine{...} -> engine */
static int t_engine(lua_State *L) {
  test_engine *t;
  char err[1024];
  luaL_checktype(L, 1, LUA_TTABLE);
  /* Created closed, so an error below leaves a consistent object. */
  t = lua_newuserdatauv(L, sizeof *t, 0);
  memset(t, 0, sizeof *t);
  t->hook_ref = LUA_NOREF;
  luaL_setmetatable(L, ENGINE_MT);
  t->o = *base_opts;
  t->o.settings = t->settings;
  t->o.nsettings = 0;
  lua_getfield(L, 1, "db");
  t->o.db_path = keep(L, t, luaL_checkstring(L, -1));
  lua_getfield(L, 1, "workflows");
  if (lua_isstring(L, -1)) {
    t->o.workflows_dir = keep(L, t, lua_tostring(L, -1));
  }
  lua_getfield(L, 1, "plugins");
  if (lua_isstring(L, -1)) {
    t->o.plugin_dir = keep(L, t, lua_tostring(L, -1));
  }
  lua_getfield(L, 1, "concurrency");
  t->o.concurrency = (int)luaL_optinteger(L, -1, t->o.concurrency);
  lua_getfield(L, 1, "seed");
  t->o.seed = (uint64_t)luaL_optinteger(L, -1, (lua_Integer)t->o.seed);
  lua_getfield(L, 1, "lua_memory");
  t->o.lua_memory =
      (size_t)luaL_optinteger(L, -1, (lua_Integer)t->o.lua_memory);
  lua_getfield(L, 1, "step_instructions");
  t->o.step_instructions = luaL_optinteger(L, -1, t->o.step_instructions);
  lua_getfield(L, 1, "sync");
  if (lua_isstring(L, -1) && strcmp(lua_tostring(L, -1), "normal") == 0) {
    t->o.sync = SY_SYNC_NORMAL;
  }
  lua_getfield(L, 1, "settings");
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      if (t->o.nsettings == 32) {
        return luaL_error(L, "T.engine: at most 32 settings");
      }
      const char *k = keep(L, t, luaL_checkstring(L, -2));
      const char *v = keep(L, t, luaL_checkstring(L, -1));
      t->settings[t->o.nsettings++] = (sy_setting){k, v};
      lua_pop(L, 1);
    }
  }
  lua_settop(L, 2);
  if (sy_engine_open(&t->e, &t->o, err, sizeof err)) {
    t->e = NULL;
    return luaL_error(L, "%s", err);
  }
  return 1;
}

/* Lua: e:load(name) -> name, warnings | nil, error */
static int t_load(lua_State *L) {
  test_engine *t = check_engine(L);
  const sy_workflow *wf;
  sy_diag diag;
  if (sy_engine_load_workflow(t->e, luaL_checkstring(L, 2), &wf, &diag)) {
    luaL_pushfail(L);
    lua_pushstring(L, diag.error);
    return 2;
  }
  lua_pushstring(L, wf->name);
  lua_pushstring(L, diag.warnings);
  return 2;
}

/* Lua: e:start(workflow, vars) -> id | nil, error */
static int t_start(lua_State *L) {
  test_engine *t = check_engine(L);
  const sy_workflow *wf;
  sy_diag diag;
  char *json = NULL, err[512];
  int64_t id;
  int rc;
  if (sy_engine_load_workflow(t->e, luaL_checkstring(L, 2), &wf, &diag)) {
    luaL_pushfail(L);
    lua_pushstring(L, diag.error);
    return 2;
  }
  if (lua_isnoneornil(L, 3)) {
    lua_newtable(L);
    lua_replace(L, 3);
  }
  luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  if (sy_lua_encode(L, 3, &json, err, sizeof err)) {
    return luaL_error(L, "vars: %s", err);
  }
  rc = sy_engine_start(t->e, wf, json, &id);
  free(json);
  if (rc) {
    luaL_pushfail(L);
    lua_pushstring(L, sy_engine_errmsg(t->e));
    return 2;
  }
  lua_pushinteger(L, id);
  return 1;
}

/* Lua: e:run([{for_ms = n}]) -> stats; raises if the engine stopped on an
 * error. Without for_ms it runs until idle; with it, it stops gracefully
 * once the engine's time has moved on that long (as SIGTERM would then):
 * on virtual time, at once. */
static int t_run(lua_State *L) {
  test_engine *t = check_engine(L);
  sy_run_stats s;
  lua_Integer for_ms = 0;
  int rc;
  if (lua_istable(L, 2)) {
    lua_getfield(L, 2, "for_ms");
    for_ms = luaL_optinteger(L, -1, 0);
  }
  if (for_ms > 0) {
    sy_engine_stop_after(t->e, (uint64_t)for_ms);
  }
  t->L = L;
  rc = sy_engine_run(t->e, for_ms == 0);
  t->L = NULL;
  if (rc) {
    return luaL_error(L, "engine stopped: %s", sy_engine_errmsg(t->e));
  }
  sy_engine_stats(t->e, &s);
  lua_createtable(L, 0, 4);
  lua_pushinteger(L, s.steps);
  lua_setfield(L, -2, "steps");
  lua_pushinteger(L, s.completed);
  lua_setfield(L, -2, "completed");
  lua_pushinteger(L, s.incidents);
  lua_setfield(L, -2, "incidents");
  lua_pushinteger(L, s.retries);
  lua_setfield(L, -2, "retries");
  return 1;
}

/* The engine's hook (sy_call_hook) calls e:on_call's function with the
 * call (a table) and its decoded argument; it returns nothing to let the
 * call through, true and a value to answer it, false and a message to
 * fail it, and then as a third value how many seconds of the engine's
 * time the answer takes (none: at once). A function that raises fails
 * the call with its error. Nothing here may raise: the engine's loop is
 * below. */
static sy_call_verdict call_hook(void *ud, const sy_call_info *c, char **out,
                                 uint64_t *after_ms) {
  test_engine *t = ud;
  lua_State *L = t->L;
  sy_call_verdict v = SY_CALL_PASS;
  char err[512];
  int top;
  if (!L || t->hook_ref == LUA_NOREF) {
    return SY_CALL_PASS;
  }
  top = lua_gettop(L);
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->hook_ref);
  lua_createtable(L, 0, 6);
  lua_pushinteger(L, c->instance);
  lua_setfield(L, -2, "instance");
  lua_pushstring(L, c->workflow);
  lua_setfield(L, -2, "workflow");
  lua_pushstring(L, c->step);
  lua_setfield(L, -2, "step");
  lua_pushinteger(L, c->attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushinteger(L, c->seq);
  lua_setfield(L, -2, "seq");
  lua_pushstring(L, c->fn);
  lua_setfield(L, -2, "fn");
  if (sy_lua_push_json(L, c->args, err, sizeof err)) {
    lua_pushnil(L);
  }
  if (lua_pcall(L, 2, 3, 0) != LUA_OK) {
    const char *msg = lua_tostring(L, -1);
    *out = strdup(msg ? msg : "the stub failed");
    lua_settop(L, top);
    return SY_CALL_FAIL;
  }
  if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > 0 &&
      lua_tonumber(L, -1) < 1e9) {
    *after_ms = (uint64_t)(lua_tonumber(L, -1) * 1000.0 + 0.5);
  }
  if (lua_toboolean(L, -3)) {
    if (sy_lua_encode(L, lua_gettop(L) - 1, out, err, sizeof err)) {
      size_t n = strlen(err);
      snprintf(err + n, sizeof err - n, " (a stub's answer)");
      *out = strdup(err);
      v = SY_CALL_FAIL;
    } else {
      v = SY_CALL_ANSWER;
    }
  } else if (!lua_isnil(L, -3)) {
    const char *msg = lua_tostring(L, -2);
    *out = strdup(msg ? msg : "failed by the test");
    v = SY_CALL_FAIL;
  }
  lua_settop(L, top);
  return v;
}

/* Lua: e:on_call(function(call, arg) ... end | nil) */
static int t_on_call(lua_State *L) {
  test_engine *t = check_engine(L);
  luaL_unref(L, LUA_REGISTRYINDEX, t->hook_ref);
  t->hook_ref = LUA_NOREF;
  sy_engine_set_call_hook(t->e, NULL, NULL);
  if (!lua_isnoneornil(L, 2)) {
    luaL_checktype(L, 2, LUA_TFUNCTION);
    lua_settop(L, 2);
    t->hook_ref = luaL_ref(L, LUA_REGISTRYINDEX);
    sy_engine_set_call_hook(t->e, call_hook, t);
  }
  return 0;
}

/* Lua: e:signal(name, id | {var = value}, [vars], [all]) -> sent, woke |
 * nil, error */
static int t_signal(lua_State *L) {
  test_engine *t = check_engine(L);
  const char *name = luaL_checkstring(L, 2);
  sy_signal_target to = {0};
  char *json = NULL, err[512];
  int sent = 0, woke = 0, rc;
  if (lua_isinteger(L, 3)) {
    to.instance = lua_tointeger(L, 3);
  } else {
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_pushnil(L);
    luaL_argcheck(L, lua_next(L, 3) && lua_type(L, -2) == LUA_TSTRING, 3,
                  "an instance id, or { var = value }");
    to.var = lua_tostring(L, -2);
    to.value = luaL_tolstring(L, -1, NULL);
    lua_replace(L, -2); /* keep the text alive (on the stack) */
  }
  to.all = lua_toboolean(L, 5);
  if (lua_isnoneornil(L, 4)) {
    lua_newtable(L);
    lua_replace(L, 4);
  }
  luaL_checktype(L, 4, LUA_TTABLE);
  if (sy_lua_encode(L, 4, &json, err, sizeof err)) {
    return luaL_error(L, "signal vars: %s", err);
  }
  rc = sy_engine_signal(t->e, &to, name, json, &sent, &woke);
  free(json);
  if (rc) {
    luaL_pushfail(L);
    lua_pushstring(L, sy_engine_errmsg(t->e));
    return 2;
  }
  lua_pushinteger(L, sent);
  lua_pushinteger(L, woke);
  return 2;
}

static int push_instance(void *ud, const sy_instance_row *r) {
  lua_State *L = ud;
  char err[256];
  lua_createtable(L, 0, 8);
  lua_pushinteger(L, r->id);
  lua_setfield(L, -2, "id");
  lua_pushstring(L, r->workflow);
  lua_setfield(L, -2, "workflow");
  lua_pushstring(L, r->state);
  lua_setfield(L, -2, "state");
  lua_pushstring(L, r->step);
  lua_setfield(L, -2, "step");
  lua_pushinteger(L, r->attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushinteger(L, r->wake_at);
  lua_setfield(L, -2, "wake_at");
  if (sy_lua_push_json(L, r->vars, err, sizeof err) == 0) {
    lua_setfield(L, -2, "vars");
  }
  return 1;
}

/* Lua: e:instance(id) -> table | nil */
static int t_instance(lua_State *L) {
  test_engine *t = check_engine(L);
  int found = 0;
  if (sy_store_get_instance(sy_engine_store(t->e), luaL_checkinteger(L, 2),
                            push_instance, L, &found)) {
    return luaL_error(L, "%s", sy_store_errmsg(sy_engine_store(t->e)));
  }
  if (!found) {
    lua_pushnil(L);
  }
  return 1;
}

static int push_run(void *ud, const sy_step_run_row *r) {
  lua_State *L = ud;
  lua_createtable(L, 0, 5);
  lua_pushstring(L, r->step);
  lua_setfield(L, -2, "step");
  lua_pushinteger(L, r->attempt);
  lua_setfield(L, -2, "attempt");
  lua_pushstring(L, r->outcome);
  lua_setfield(L, -2, "outcome");
  lua_pushstring(L, r->error);
  lua_setfield(L, -2, "error");
  lua_pushstring(L, r->code);
  lua_setfield(L, -2, "code");
  lua_pushstring(L, r->handler);
  lua_setfield(L, -2, "handler");
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* Lua: e:history(id) -> list of step runs */
static int t_history(lua_State *L) {
  test_engine *t = check_engine(L);
  lua_newtable(L);
  if (sy_store_list_step_runs(sy_engine_store(t->e), luaL_checkinteger(L, 2),
                              push_run, L)) {
    return luaL_error(L, "%s", sy_store_errmsg(sy_engine_store(t->e)));
  }
  return 1;
}

static int push_incident(void *ud, const sy_incident_row *r) {
  lua_State *L = ud;
  lua_createtable(L, 0, 5);
  lua_pushinteger(L, r->instance_id);
  lua_setfield(L, -2, "instance");
  lua_pushstring(L, r->step);
  lua_setfield(L, -2, "step");
  lua_pushstring(L, r->error);
  lua_setfield(L, -2, "error");
  lua_pushstring(L, r->resolution);
  lua_setfield(L, -2, "resolution");
  lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
  return 0;
}

/* Lua: e:incidents([all]) -> list */
static int t_incidents(lua_State *L) {
  test_engine *t = check_engine(L);
  int open_only = !lua_toboolean(L, 2);
  lua_newtable(L);
  if (sy_store_list_incidents(sy_engine_store(t->e), open_only, 0,
                              push_incident, L)) {
    return luaL_error(L, "%s", sy_store_errmsg(sy_engine_store(t->e)));
  }
  return 1;
}

static int change(lua_State *L, int cancel) {
  test_engine *t = check_engine(L);
  int64_t id = (int64_t)luaL_checkinteger(L, 2);
  if (cancel ? sy_engine_cancel(t->e, id) : sy_engine_retry(t->e, &id, 1)) {
    luaL_pushfail(L);
    lua_pushstring(L, sy_engine_errmsg(t->e));
    return 2;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* Lua: e:retry(id) -> true | nil, error */
static int t_retry(lua_State *L) {
  return change(L, 0);
}

/* Lua: e:cancel(id) -> true | nil, error */
static int t_cancel(lua_State *L) {
  return change(L, 1);
}

/* Lua: e:sql(query, ...) -> rows (each a table by column name), through
 * the statement API as a plugin would. Bound strings stay on the stack,
 * alive, until the statement is finalized. */
static int t_sql(lua_State *L) {
  test_engine *t = check_engine(L);
  sy_store *st = sy_engine_store(t->e);
  sy_stmt *s = sy_store_prepare(st, &(sy_sql){luaL_checkstring(L, 2), NULL});
  char err[512];
  int rc, n = 0;
  if (!s) {
    return luaL_error(L, "sql: %s", sy_store_errmsg(st));
  }
  for (int i = 3; i <= lua_gettop(L); i++) {
    if (lua_isnil(L, i)) {
      sy_stmt_bind_text(s, i - 2, NULL);
    } else if (lua_isinteger(L, i)) {
      sy_stmt_bind_int(s, i - 2, lua_tointeger(L, i));
    } else if (lua_type(L, i) == LUA_TNUMBER) {
      sy_stmt_bind_double(s, i - 2, lua_tonumber(L, i));
    } else {
      sy_stmt_bind_text(s, i - 2, luaL_checkstring(L, i));
    }
  }
  lua_newtable(L);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    lua_newtable(L);
    for (int c = 0; c < sy_stmt_column_count(s); c++) {
      switch (sy_stmt_column_type(s, c)) {
        case SY_COL_INT:
          lua_pushinteger(L, sy_stmt_column_int(s, c));
          break;
        case SY_COL_DOUBLE:
          lua_pushnumber(L, sy_stmt_column_double(s, c));
          break;
        case SY_COL_NULL:
          lua_pushnil(L);
          break;
        default:
          lua_pushstring(L, sy_stmt_column_text(s, c));
      }
      lua_setfield(L, -2, sy_stmt_column_name(s, c));
    }
    lua_rawseti(L, -2, ++n);
  }
  snprintf(err, sizeof err, "%s", rc == SY_DONE ? "" : sy_store_errmsg(st));
  sy_stmt_finalize(s);
  if (rc != SY_DONE) {
    return luaL_error(L, "sql: %s", err);
  }
  return 1;
}

/* Lua: T.check(path) -> true, warnings | nil, error (on a throwaway db) */
static int t_check(lua_State *L) {
  sy_engine_opts o = *base_opts;
  sy_engine *e;
  const sy_workflow *wf;
  sy_diag diag;
  char err[1024];
  o.db_path = ":memory:";
  o.workflows_dir = luaL_optstring(L, 2, o.workflows_dir);
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    return luaL_error(L, "%s", err);
  }
  if (sy_engine_load_workflow(e, luaL_checkstring(L, 1), &wf, &diag)) {
    sy_engine_close(e);
    luaL_pushfail(L);
    lua_pushstring(L, diag.error);
    return 2;
  }
  sy_engine_close(e);
  lua_pushboolean(L, 1);
  lua_pushstring(L, diag.warnings);
  return 2;
}

/* Lua: e:now() -> the engine's time, seconds since the epoch (as ctx.now) */
static int t_now(lua_State *L) {
  test_engine *t = check_engine(L);
  lua_pushnumber(L, (lua_Number)sy_engine_now_ms(t->e) / 1000.0);
  return 1;
}

/* Lua: core.json_encode(value) -> text (keys sorted) */
static int t_json_encode(lua_State *L) {
  char *json = NULL, err[512];
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (sy_lua_encode(L, 1, &json, err, sizeof err)) {
    return luaL_error(L, "json: %s", err);
  }
  lua_pushstring(L, json);
  free(json);
  return 1;
}

/* Lua: core.json_decode(text) -> value | nil, error */
static int t_json_decode(lua_State *L) {
  char err[512];
  if (sy_lua_push_json(L, luaL_checkstring(L, 1), err, sizeof err)) {
    luaL_pushfail(L);
    lua_pushstring(L, err);
    return 2;
  }
  return 1;
}

/* What `switchyard test` asked of the kit (NULL: a plain `lua` run). */
static const char *const *test_mode;

/* The module: the C half here (core), handed to the Lua half
 * (testing.lua, built in), which returns what specs require. */
static int open_testing(lua_State *L) {
  static const luaL_Reg methods[] = {
      {"load", t_load},       {"start", t_start},
      {"run", t_run},         {"instance", t_instance},
      {"history", t_history}, {"incidents", t_incidents},
      {"retry", t_retry},     {"cancel", t_cancel},
      {"sql", t_sql},         {"on_call", t_on_call},
      {"signal", t_signal},   {"now", t_now},
      {"close", engine_gc},   {NULL, NULL}};
  static const luaL_Reg meta[] = {
      {"__gc", engine_gc}, {"__close", engine_gc}, {NULL, NULL}};
  static const luaL_Reg funcs[] = {{"engine", t_engine},
                                   {"check", t_check},
                                   {"json_encode", t_json_encode},
                                   {"json_decode", t_json_decode},
                                   {NULL, NULL}};
  if (luaL_newmetatable(L, ENGINE_MT)) {
    luaL_setfuncs(L, meta, 0);
    luaL_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_getfield(L, -1, "__index");
  luaL_newlib(L, funcs);
  lua_insert(L, -2);
  lua_setfield(L, -2, "methods");
  /* State the Lua half keeps across spec files (busted insulates each
   * file's package.loaded, so the module is opened once per file). */
  if (luaL_getsubtable(L, LUA_REGISTRYINDEX, "sy.testing.shared") == 0 &&
      test_mode) {
    for (int i = 0; test_mode[i]; i += 2) {
      lua_pushstring(L, test_mode[i + 1]);
      lua_setfield(L, -2, test_mode[i]);
    }
  }
  lua_setfield(L, -2, "shared");
  if (luaL_loadbufferx(L, testing_lua, sizeof testing_lua - 1,
                       "@switchyard/testing.lua", "t") != LUA_OK) {
    return lua_error(L);
  }
  lua_insert(L, -2);
  lua_call(L, 1, 1);
  return 1;
}

static int traceback(lua_State *L) {
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

/* A Lua state with the libraries and switchyard.testing to require. */
static lua_State *new_state(const sy_engine_opts *base) {
  lua_State *L = luaL_newstate();
  if (!L) {
    return NULL;
  }
  base_opts = base;
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, open_testing);
  lua_setfield(L, -2, "switchyard.testing");
  lua_pop(L, 1);
  return L;
}

/* Calls the function below its n arguments on the stack, with a
 * traceback on error; closes L. */
static int call_and_close(lua_State *L, int n, const char *what) {
  int rc, status = 0;
  lua_pushcfunction(L, traceback);
  lua_insert(L, -n - 2);
  rc = lua_pcall(L, n, 1, -n - 2);
  if (rc != LUA_OK) {
    fprintf(stderr, "switchyard: %s: %s\n", what, lua_tostring(L, -1));
    status = 1;
  } else if (lua_isinteger(L, -1)) {
    status = (int)lua_tointeger(L, -1);
  }
  lua_close(L);
  return status;
}

int sy_testlua_main(int argc, char **argv, const sy_engine_opts *base) {
  lua_State *L;
  if (argc < 2) {
    fprintf(stderr, "switchyard: lua: which script?\n");
    return 2;
  }
  if (!(L = new_state(base))) {
    return 1;
  }
  lua_createtable(L, argc - 2, 1);
  for (int i = 1; i < argc; i++) {
    lua_pushstring(L, argv[i]);
    lua_rawseti(L, -2, i - 1);
  }
  lua_setglobal(L, "arg");
  if (luaL_loadfile(L, argv[1]) != LUA_OK) {
    fprintf(stderr, "switchyard: %s\n", lua_tostring(L, -1));
    lua_close(L);
    return 2;
  }
  for (int i = 2; i < argc; i++) {
    lua_pushstring(L, argv[i]);
  }
  return call_and_close(L, argc - 2, "lua") ? 1 : 0;
}

static int exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

int sy_testlua_test(int argc, char **argv, const sy_engine_opts *base) {
  static char exe[4096];
  static const char *mode[9];
  size_t len = sizeof exe;
  int faults = 0, paths = 0, nmode = 0, n = 0;
  lua_State *L;
  if (uv_exepath(exe, &len) != 0) {
    fprintf(stderr, "switchyard: test: cannot tell where the binary is\n");
    return 1;
  }
  mode[nmode++] = "exe";
  mode[nmode++] = exe;
  if (!(L = new_state(base))) {
    return 1;
  }
  /* busted's arguments: all but ours; no path means the workflows. */
  lua_createtable(L, argc, 1);
  lua_pushliteral(L, "switchyard test");
  lua_rawseti(L, -2, 0);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--faults") == 0 || strncmp(a, "--faults=", 9) == 0) {
      faults = a[8] ? atoi(a + 9) : 1;
      if (faults != 1 && faults != 2) {
        fprintf(stderr,
                "switchyard: test: --faults: expected 1 or 2 (faults at "
                "once), got '%s'\n",
                a + 9);
        lua_close(L);
        return 2;
      }
    } else if (strncmp(a, "--fault-record=", 15) == 0) {
      mode[nmode++] = "record";
      mode[nmode++] = a + 15;
    } else if (strncmp(a, "--fault-run=", 12) == 0) {
      mode[nmode++] = "run";
      mode[nmode++] = a + 12;
    } else {
      paths += a[0] != '-' && exists(a);
      lua_pushstring(L, a);
      lua_rawseti(L, -2, ++n);
    }
  }
  if (!paths) {
    lua_pushstring(L, base->workflows_dir);
    lua_rawseti(L, -2, ++n);
  }
  mode[nmode] = NULL;
  test_mode = mode;
  if (faults) {
    lua_getglobal(L, "require");
    lua_pushliteral(L, "switchyard.testing");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, "_faults_main");
    lua_insert(L, -3); /* fn, args, module */
    lua_pop(L, 1);
    lua_pushinteger(L, faults);
    lua_pushstring(L, base->workflows_dir);
    lua_pushstring(L, base->plugin_dir ? base->plugin_dir : "");
    return call_and_close(L, 4, "test --faults");
  }
  lua_setglobal(L, "arg");
  if (luaL_loadbufferx(L, "require 'busted.runner'({ standalone = false })", 47,
                       "@switchyard test", "t") != LUA_OK) {
    lua_close(L);
    return 1;
  }
  return call_and_close(L, 0, "test");
}
