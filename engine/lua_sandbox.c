/* The Lua state of an engine and its sandbox.
 *
 * One state serves every workflow and instance of an engine: each
 * definition gets its own environment built from an allow list (no io, no
 * os.execute, no debug, no binary chunks, `require` knows only
 * `switchyard`), shared read-only by its instances. Limits: an instruction
 * budget per step run (a count hook) and a memory cap on the whole state,
 * enforced only while user code runs, so that the engine's own bookkeeping
 * never fails. The `switchyard` module a workflow requires builds specs
 * (sy.workflow{}, sy.task{}, sy.<node>{}) that workflow.c compiles. */
#include <ctype.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_int.h"

static void *l_alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  sy_lua *h = ud;
  size_t old = ptr ? osize : 0;
  void *n;
  if (nsize == 0) {
    h->used -= old;
    free(ptr);
    return NULL;
  }
  if (h->enforce && nsize > old && h->used + (nsize - old) > h->limit) {
    return NULL;
  }
  if (!(n = realloc(ptr, nsize))) {
    return NULL;
  }
  h->used = h->used - old + nsize;
  return n;
}

sy_lua *sy__host(lua_State *L) {
  return *(sy_lua **)lua_getextraspace(L);
}

/* Pushes t[k] without metamethods: user tables (a step's options) may carry
 * an __index that must not run outside the sandbox's limits. */
int sy__rawfield(lua_State *L, int idx, const char *k) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, k);
  return lua_rawget(L, idx);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  sy_lua *h = sy__host(L);
  (void)ar;
  h->budget_left -= HOOK_EVERY;
  if (h->budget_left < 0) {
    /* From now on fail at every instruction: a pcall in a loop catches
     * the error inside, and the loop's next instruction raises it again. */
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    luaL_where(L, 0); /* the running function's position, as file:line: */
    lua_pushfstring(L, "instruction budget exceeded (%I instructions)",
                    (lua_Integer)h->instructions);
    lua_concat(L, 2);
    lua_error(L);
  }
}

/* Runs user code with the limits on. */
void sy__limits_on(sy_lua *h, lua_State *co, int64_t budget) {
  h->budget_left = budget;
  h->enforce = 1;
  lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

void sy__limits_off(sy_lua *h, lua_State *co) {
  h->enforce = 0;
  lua_sethook(co, NULL, 0, 0);
}

/* Lua cuts a chunk's name to LUA_IDSIZE in every position it formats, so
 * a workflow under a long path would read "...ath/to/x.lua:6:". Chunks are
 * named by the file's base name instead (which is also what a step sees in
 * a message it catches with pcall), and messages leaving the Lua host get
 * the whole path back: "<base>:<line>:" becomes "<path>:<line>:". */
const char *sy__chunk_base(const char *path) {
  const char *slash = strrchr(path, '/');
  const char *base = slash ? slash + 1 : path;
  /* A base name too long for Lua to keep whole: one it cannot mistake. */
  return strlen(base) + 2 <= LUA_IDSIZE ? base : "(workflow)";
}

static int path_char(char c) {
  return isalnum((unsigned char)c) || c == '/' || c == '.' || c == '_' ||
         c == '-';
}

/* Copies msg into buf with every "<base>:<digit>" that does not continue
 * a longer path read as "<path>:<digit>". */
static void expand_chunk(const char *msg, const char *path, char *buf,
                         size_t len) {
  const char *base = sy__chunk_base(path), *p = msg;
  size_t blen = strlen(base), used = 0;
  while (*p && used + 1 < len) {
    if ((p == msg || !path_char(p[-1])) && strncmp(p, base, blen) == 0 &&
        p[blen] == ':' && isdigit((unsigned char)p[blen + 1])) {
      used += (size_t)snprintf(buf + used, len - used, "%s", path);
      p += blen;
      continue;
    }
    buf[used++] = *p++;
  }
  buf[used < len ? used : len - 1] = '\0';
}

/* A table raised as error({code = ..., message = ...}): its message,
 * placed where error() was called when co's stack still shows it (a
 * coroutine that stopped on the error), into tmp; its code into code
 * (when asked), "" when it has none. A code that is not one is said in
 * the message. */
static const char *table_error(lua_State *co, char *tmp, size_t len,
                               char *code) {
  lua_Debug ar;
  const char *msg = NULL, *c = NULL;
  size_t used = 0;
  if (sy__rawfield(co, -1, "message") == LUA_TSTRING ||
      lua_type(co, -1) == LUA_TNUMBER) {
    msg = lua_tostring(co, -1);
  }
  if (sy__rawfield(co, -2, "code") == LUA_TSTRING &&
      strlen(lua_tostring(co, -1)) == lua_rawlen(co, -1) &&
      sy_error_code_valid(lua_tostring(co, -1))) {
    c = lua_tostring(co, -1);
  }
  if (lua_getstack(co, 1, &ar) && lua_getinfo(co, "Sl", &ar) &&
      ar.currentline > 0) {
    used = (size_t)snprintf(tmp, len, "%s:%d: ", ar.short_src, ar.currentline);
  }
  if (used < len && !c && !lua_isnil(co, -1)) {
    snprintf(tmp + used, len - used,
             "%s (its code is not one: 1 to %d letters, digits, '_', '-', "
             "'.' or ':')",
             msg ? msg : "error with a code", SY_CODE_MAX);
  } else if (used < len) {
    snprintf(tmp + used, len - used, "%s",
             msg ? msg
             : c ? c
                 : "error object is a table without code or "
                   "message");
  }
  if (code) {
    snprintf(code, SY_CODE_MAX + 1, "%s", c ? c : "");
  }
  lua_pop(co, 2); /* the strings stay alive in the error table */
  return tmp;
}

/* Copies the message on top of co into buf, whatever its type, with the
 * positions in the workflow at path (or NULL) given in full; and its code,
 * when code is not NULL ("" when it has none). */
void sy__error_message(lua_State *co, const char *path, char *buf, size_t len,
                       char *code) {
  char tmp[1024];
  const char *msg = lua_istable(co, -1) ? table_error(co, tmp, sizeof tmp, code)
                                        : lua_tostring(co, -1);
  if (code && !lua_istable(co, -1)) {
    code[0] = '\0';
  }
  if (!msg) {
    snprintf(buf, len, "error object is a %s value", luaL_typename(co, -1));
  } else if (path) {
    expand_chunk(msg, path, buf, len);
  } else {
    snprintf(buf, len, "%s", msg);
  }
}

/* ---------------------------------------------------------------------
 * The `switchyard` module and the sandbox */

static int caller_line(lua_State *L) {
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) {
    return ar.currentline;
  }
  return 0;
}

void sy__make_read_only(lua_State *L, int loading);

/* Wraps the options table at 1 into a spec {kind=, line=, opts=}: a
 * read-only proxy whose hidden metatable carries a marker (a light
 * userdata no Lua code can make), so a file can neither forge a spec nor
 * change one after sy.task{} returned it. */
static int make_spec(lua_State *L, int mt, const char *kind) {
  sy_lua *h = sy__host(L);
  int line = caller_line(L);
  if (!lua_istable(L, 1)) {
    return luaL_error(L, "sy.%s expects a table of options, got %s", kind,
                      luaL_typename(L, 1));
  }
  lua_createtable(L, 0, 3);
  lua_pushstring(L, kind);
  lua_setfield(L, -2, "kind");
  lua_pushinteger(L, line);
  lua_setfield(L, -2, "line");
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "opts");
  sy__make_read_only(L, 0);
  lua_getmetatable(L, -1);
  lua_pushlightuserdata(
      L, mt == 0 ? (void *)&h->workflow_mt : (void *)&h->step_mt);
  lua_setfield(L, -2, "__sy_spec");
  lua_pop(L, 1);
  return 1;
}

/* Lua: sy.workflow{ name=, start=, steps={...} } -> definition spec */
static int dsl_workflow(lua_State *L) {
  return make_spec(L, 0, "workflow");
}

/* Lua: sy.task{ run=function(ctx) end, next=, retries=, ... } -> step spec */
static int dsl_task(lua_State *L) {
  return make_spec(L, 1, "task");
}

/* Lua: sy.<node>{ ... } -> step spec of a plugin node type */
static int dsl_node(lua_State *L) {
  return make_spec(L, 1, lua_tostring(L, lua_upvalueindex(1)));
}

/* __index of the module: plugin node types, looked up by name. */
static int dsl_index(lua_State *L) {
  sy_lua *h = sy__host(L);
  const char *name = luaL_checkstring(L, 2);
  char names[512];
  if (sy_plugins_node(h->plugins, name)) {
    lua_pushstring(L, name);
    lua_pushcclosure(L, dsl_node, 1);
    return 1;
  }
  sy_plugins_node_names(h->plugins, names, sizeof names);
  return luaL_error(L, "unknown node type '%s' (known: %s)", name, names);
}

/* Lua: require(name) -> only "switchyard" exists inside a workflow. */
static int sandbox_require(lua_State *L) {
  const char *name = luaL_checkstring(L, 1);
  if (strcmp(name, "switchyard") != 0) {
    return luaL_error(L,
                      "module '%s' is not available in a workflow (only "
                      "'switchyard' is)",
                      name);
  }
  lua_pushvalue(L, lua_upvalueindex(1));
  return 1;
}

/* Lua: load(text [, chunkname [, mode [, env]]]) -> text chunks only, in the
 * workflow's environment unless env is given. */
static int sandbox_load(lua_State *L) {
  size_t len;
  const char *text = luaL_checklstring(L, 1, &len);
  const char *name = luaL_optstring(L, 2, "=(load)");
  int has_env = !lua_isnone(L, 4);
  if (luaL_loadbufferx(L, text, len, name, "t") != LUA_OK) {
    luaL_pushfail(L);
    lua_insert(L, -2);
    return 2;
  }
  lua_pushvalue(L, has_env ? 4 : lua_upvalueindex(1));
  lua_setupvalue(L, -2, 1);
  return 1;
}

/* Lua: print(...) -> the engine's log, never the process's stdout. */
static int sandbox_print(lua_State *L) {
  luaL_Buffer b;
  int n = lua_gettop(L);
  luaL_buffinit(L, &b);
  for (int i = 1; i <= n; i++) {
    if (i > 1) {
      luaL_addchar(&b, '\t');
    }
    luaL_tolstring(L, i, NULL);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  fprintf(stderr, "%s\n", lua_tostring(L, -1));
  return 0;
}

/* Writes to a read-only proxy: allowed into its store only while the
 * workflow file loads (an environment's __sy_loading is true then). */
static int ro_newindex(lua_State *L) {
  lua_getfield(L, lua_upvalueindex(2), "__sy_loading");
  if (lua_toboolean(L, -1)) {
    lua_settop(L, 3);
    lua_rawset(L, lua_upvalueindex(1));
    return 0;
  }
  lua_getfield(L, lua_upvalueindex(2), "__sy_env");
  if (lua_toboolean(L, -1) && lua_type(L, 2) == LUA_TSTRING) {
    return luaL_error(L,
                      "assignment to global '%s': steps of every instance "
                      "share their workflow's globals; use a local or "
                      "ctx.vars",
                      lua_tostring(L, 2));
  }
  if (lua_type(L, 2) == LUA_TSTRING) {
    return luaL_error(L,
                      "assignment to '%s' in a shared read-only table; use "
                      "a local or ctx.vars",
                      lua_tostring(L, 2));
  }
  return luaL_error(L,
                    "this table is read-only: steps of every instance "
                    "share it");
}

static int ro_pairs(lua_State *L) {
  lua_getglobal(L, "next");
  lua_pushvalue(L, lua_upvalueindex(1));
  lua_pushnil(L);
  return 3;
}

/* Replaces the table on top of the stack by a read-only proxy of it. The
 * proxy stays empty, so every write reaches __newindex, and rawset is
 * wrapped to refuse it (see sandbox_rawset). */
void sy__make_read_only(lua_State *L, int loading) {
  int store = lua_gettop(L);
  lua_newtable(L);          /* proxy */
  lua_createtable(L, 0, 6); /* its metatable */
  lua_pushvalue(L, store);
  lua_setfield(L, -2, "__index");
  lua_pushvalue(L, store);
  lua_pushvalue(L, -2);
  lua_pushcclosure(L, ro_newindex, 2);
  lua_setfield(L, -2, "__newindex");
  lua_pushvalue(L, store);
  lua_pushcclosure(L, ro_pairs, 1);
  lua_setfield(L, -2, "__pairs");
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pushboolean(L, 1);
  lua_setfield(L, -2, "__sy_readonly");
  lua_pushboolean(L, loading);
  lua_setfield(L, -2, "__sy_loading");
  lua_pushboolean(L, loading); /* only environments start out loading */
  lua_setfield(L, -2, "__sy_env");
  lua_setmetatable(L, -2);
  lua_replace(L, store);
}

/* Lua: setmetatable(t, mt), refusing finalizers: a __gc would run at any
 * garbage collection, outside every step and every limit. */
static int sandbox_setmetatable(lua_State *L) {
  if (lua_istable(L, 2)) {
    sy__rawfield(L, 2, "__gc");
    if (!lua_isnil(L, -1)) {
      return luaL_error(L,
                        "metatables with __gc are not allowed in a "
                        "workflow (finalizers run outside the sandbox)");
    }
    lua_pop(L, 1);
  }
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 2);
  lua_getglobal(L, "setmetatable");
  lua_insert(L, 1);
  lua_call(L, 2, 1);
  return 1;
}

/* Lua: rawset(t, k, v), except on the sandbox's shared tables. */
static int sandbox_rawset(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  if (lua_getmetatable(L, 1)) {
    lua_getfield(L, -1, "__sy_readonly");
    if (lua_toboolean(L, -1)) {
      return luaL_error(L, "rawset on a shared read-only table");
    }
    lua_pop(L, 2);
  }
  luaL_checkany(L, 2);
  luaL_checkany(L, 3);
  lua_settop(L, 3);
  lua_rawset(L, 1);
  return 1;
}

/* Copies allowed fields of library `lib` from the real globals. */
static void copy_lib(lua_State *L, int env, const char *lib,
                     const char *const *names) {
  lua_getglobal(L, lib);
  lua_newtable(L);
  for (const char *const *n = names; *n; n++) {
    lua_getfield(L, -2, *n);
    lua_setfield(L, -2, *n);
  }
  sy__make_read_only(L, 0);
  lua_setfield(L, env, lib);
  lua_pop(L, 1);
}

/* Copies library `lib` whole, with the functions of `own` (may be NULL) in
 * place of the library's of the same names. */
static void copy_whole_lib(lua_State *L, int env, const char *lib,
                           const luaL_Reg *own) {
  lua_getglobal(L, lib);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_settable(L, -4);
  }
  if (own) {
    luaL_setfuncs(L, own, 0);
  }
  sy__make_read_only(L, 0);
  lua_setfield(L, env, lib);
  lua_pop(L, 1);
}

/* Pushes a new environment built from the allow list. */
void sy__push_sandbox(sy_lua *h) {
  lua_State *L = h->L;
  /* A step's random numbers are its own, seeded from its idempotency key:
   * a step run again from its start (after a park or a crash) draws the
   * same ones, whatever other steps drew meanwhile. */
  static const luaL_Reg math_fns[] = {{"random", sy__math_random},
                                      {"randomseed", sy__math_randomseed},
                                      {NULL, NULL}};
  static const char *const base[] = {
      "assert",       "error",        "ipairs",   "next",   "pairs",
      "pcall",        "rawequal",     "rawget",   "rawlen", "rawset",
      "select",       "tonumber",     "tostring", "type",   "xpcall",
      "getmetatable", "setmetatable", "_VERSION", NULL};
  static const char *const string_fns[] = {
      "byte",  "char",  "find",     "format", "gmatch",  "gsub",
      "len",   "lower", "match",    "rep",    "reverse", "sub",
      "upper", "pack",  "packsize", "unpack", NULL};
  static const char *const os_fns[] = {"time", "clock", "date", "difftime",
                                       NULL};
  int env;
  lua_newtable(L);
  env = lua_gettop(L);
  for (const char *const *n = base; *n; n++) {
    lua_getglobal(L, *n);
    lua_setfield(L, env, *n);
  }
  lua_pushcfunction(L, sandbox_rawset);
  lua_setfield(L, env, "rawset");
  lua_pushcfunction(L, sandbox_setmetatable);
  lua_setfield(L, env, "setmetatable");
  copy_lib(L, env, "string", string_fns);
  copy_lib(L, env, "os", os_fns);
  copy_whole_lib(L, env, "table", NULL);
  copy_whole_lib(L, env, "math", math_fns);
  copy_whole_lib(L, env, "utf8", NULL);
  copy_whole_lib(L, env, "coroutine", NULL);
  lua_pushcfunction(L, sandbox_print);
  lua_setfield(L, env, "print");
  /* the module */
  lua_newtable(L);
  lua_pushcfunction(L, dsl_workflow);
  lua_setfield(L, -2, "workflow");
  lua_pushcfunction(L, dsl_task);
  lua_setfield(L, -2, "task");
  lua_newtable(L);
  lua_pushcfunction(L, dsl_index);
  lua_setfield(L, -2, "__index");
  lua_setmetatable(L, -2);
  sy__make_read_only(L, 0);
  lua_pushcclosure(L, sandbox_require, 1);
  lua_setfield(L, env, "require");
  /* The environment itself: globals may be defined while the file loads,
   * then it is read-only (sy_workflow_load clears __sy_loading). */
  sy__make_read_only(L, 1);
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G"); /* through __newindex, while loading */
  lua_pushvalue(L, env);
  lua_pushcclosure(L, sandbox_load, 1);
  lua_setfield(L, env, "load");
}

/* ---------------------------------------------------------------------
 * The state */

int sy_lua_new(sy_lua **out, const sy_lua_limits *limits, sy_plugins *plugins,
               sy_ctx_call_fn ctx_call, void *ud) {
  sy_lua *h = calloc(1, sizeof *h);
  lua_State *L;
  if (!h) {
    return SY_ENOMEM;
  }
  h->limit = limits->memory_bytes;
  h->instructions = limits->instructions;
  h->plugins = plugins;
  h->ctx_call = ctx_call;
  h->ud = ud;
  sy__random_seed(h->rng, 0);
  if (!(L = lua_newstate(l_alloc, h))) {
    free(h);
    return SY_ENOMEM;
  }
  h->L = L;
  /* Every thread starts with a copy of the main thread's extra space, so
   * C functions reach the host from any coroutine. */
  *(sy_lua **)lua_getextraspace(L) = h;
  luaL_openlibs(L);
  /* The string metatable is shared by all code in the state: hide it. */
  lua_pushliteral(L, "");
  lua_getmetatable(L, -1);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__metatable");
  lua_pop(L, 2);
  /* string.dump is reachable through every string's metatable: drop it
   * (nothing in the host needs it, and bytecode never loads anyway). */
  lua_getglobal(L, "string");
  lua_pushnil(L);
  lua_setfield(L, -2, "dump");
  lua_pop(L, 1);
  sy__ctx_metatable(h);
  *out = h;
  return 0;
}

void sy_lua_free(sy_lua *h) {
  if (!h) {
    return;
  }
  lua_close(h->L);
  free(h);
}
