/* The Lua host (see luahost.h): the sandboxed state, the `switchyard` DSL
 * module workflows require, definition loading and validation, JSON
 * conversion of vars, and step coroutines with their ctx.
 *
 * One state serves every workflow and instance of an engine: each
 * definition gets its own environment built from an allow list, each step
 * run its own coroutine. Limits: an instruction budget per step run (a
 * count hook) and a memory cap on the whole state, enforced only while
 * user code runs so that the engine's own bookkeeping never fails. */
#include "luahost.h"

#include <ctype.h>
#include <errno.h>
#include <jansson.h>
#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"

#define HOOK_EVERY 1000
#define JSON_MAX_DEPTH 64

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
  int sleep_seq;
  int64_t budget_left;
  enum { PENDING_NONE, PENDING_SLEEP, PENDING_CALL } pending;
  int64_t sleep_ms;
  /* result of the parked plugin call */
  int call_done;
  char *call_json;
  char *call_error;
  void *owner;
  int generation;
  int call_seq; /* ctx calls so far in this step run */
  /* Lua code or a plugin may have changed vars during this step run (a
   * node step that touched nothing keeps the stored vars unencoded). */
  int vars_dirty;
  char idem_key[320]; /* made when asked for */
};

/* ---------------------------------------------------------------------
 * The state: allocator, hook, error helpers */

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

static sy_lua *host_of(lua_State *L) {
  return *(sy_lua **)lua_getextraspace(L);
}

/* Pushes t[k] without metamethods: user tables (a step's options) may carry
 * an __index that must not run outside the sandbox's limits. */
static int rawfield(lua_State *L, int idx, const char *k) {
  idx = lua_absindex(L, idx);
  lua_pushstring(L, k);
  return lua_rawget(L, idx);
}

static void count_hook(lua_State *L, lua_Debug *ar) {
  sy_lua *h = host_of(L);
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
static void limits_on(sy_lua *h, lua_State *co, int64_t budget) {
  h->budget_left = budget;
  h->enforce = 1;
  lua_sethook(co, count_hook, LUA_MASKCOUNT, HOOK_EVERY);
}

static void limits_off(sy_lua *h, lua_State *co) {
  h->enforce = 0;
  lua_sethook(co, NULL, 0, 0);
}

/* Lua cuts a chunk's name to LUA_IDSIZE in every position it formats, so
 * a workflow under a long path would read "...ath/to/x.lua:6:". Chunks are
 * named by the file's base name instead (which is also what a step sees in
 * a message it catches with pcall), and messages leaving the Lua host get
 * the whole path back: "<base>:<line>:" becomes "<path>:<line>:". */
static const char *chunk_base(const char *path) {
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
  const char *base = chunk_base(path), *p = msg;
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

/* Copies the message on top of co into buf, whatever its type, with the
 * positions in the workflow at path (or NULL) given in full. */
static void error_message(lua_State *co, const char *path, char *buf,
                          size_t len) {
  const char *msg = lua_tostring(co, -1);
  if (!msg) {
    msg = luaL_typename(co, -1);
    snprintf(buf, len, "error object is a %s value", msg);
  } else if (path) {
    expand_chunk(msg, path, buf, len);
  } else {
    snprintf(buf, len, "%s", msg);
  }
}

/* ---------------------------------------------------------------------
 * JSON <-> Lua. Vars are JSON objects; a value that JSON cannot hold is an
 * error naming where it is (e.g. vars.items[2].f). */

/* Where the encoder is: kept as segments and formatted only for an error
 * message, since building the text at every key costs more than the
 * encoding itself. */
typedef struct jpath {
  const char *root;
  int n;
  struct {
    const char *key; /* NULL: an array index */
    lua_Integer index;
  } seg[JSON_MAX_DEPTH + 2];
} jpath;

static const char *path_text(const jpath *jp, char *buf, size_t cap) {
  size_t used = (size_t)snprintf(buf, cap, "%s", jp->root);
  for (int i = 0; i < jp->n && used < cap; i++) {
    if (jp->seg[i].key) {
      used += (size_t)snprintf(buf + used, cap - used, ".%s", jp->seg[i].key);
    } else {
      used += (size_t)snprintf(buf + used, cap - used, "[%lld]",
                               (long long)jp->seg[i].index);
    }
  }
  return buf;
}

static int to_json(lua_State *L, int idx, json_t **out, jpath *jp, char *err,
                   size_t errlen);

static int table_to_json(lua_State *L, int idx, json_t **out, jpath *jp,
                         char *err, size_t errlen) {
  lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
  lua_Integer count = 0;
  int all_int = 1, rc = 0;
  char where[512];
  json_t *j;
  idx = lua_absindex(L, idx);
  /* An array is a table whose keys are exactly 1..#t. */
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    lua_pop(L, 1);
    count++;
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 1 ||
        lua_tointeger(L, -1) > n) {
      all_int = 0;
    }
  }
  if (count > 0 && all_int && count == n) {
    j = json_array();
    for (lua_Integer i = 1; i <= n && !rc; i++) {
      json_t *v;
      lua_rawgeti(L, idx, i);
      jp->seg[jp->n].key = NULL;
      jp->seg[jp->n++].index = i;
      rc = to_json(L, -1, &v, jp, err, errlen);
      jp->n--;
      lua_pop(L, 1);
      if (!rc) {
        json_array_append_new(j, v);
      }
    }
  } else {
    j = json_object();
    lua_pushnil(L);
    while (!rc && lua_next(L, idx)) {
      json_t *v;
      if (lua_type(L, -2) != LUA_TSTRING) {
        snprintf(err, errlen,
                 "%s: a table with keys that are not strings (or not 1..n) "
                 "cannot be stored as JSON",
                 path_text(jp, where, sizeof where));
        rc = SY_EINVAL;
        lua_pop(L, 2);
        break;
      }
      jp->seg[jp->n++].key = lua_tostring(L, -2);
      rc = to_json(L, -1, &v, jp, err, errlen);
      jp->n--;
      if (!rc) {
        json_object_set_new(j, lua_tostring(L, -2), v);
      }
      lua_pop(L, 1);
      if (rc) {
        lua_pop(L, 1);
      }
    }
  }
  if (rc) {
    json_decref(j);
    return rc;
  }
  *out = j;
  return 0;
}

static int to_json(lua_State *L, int idx, json_t **out, jpath *jp, char *err,
                   size_t errlen) {
  char where[512];
  if (jp->n > JSON_MAX_DEPTH) {
    snprintf(err, errlen, "%.60s...: nested more than %d levels (a cycle?)",
             path_text(jp, where, sizeof where), JSON_MAX_DEPTH);
    return SY_EINVAL;
  }
  switch (lua_type(L, idx)) {
    case LUA_TNIL:
      *out = json_null();
      return 0;
    case LUA_TBOOLEAN:
      *out = json_boolean(lua_toboolean(L, idx));
      return 0;
    case LUA_TNUMBER:
      if (lua_isinteger(L, idx)) {
        *out = json_integer((json_int_t)lua_tointeger(L, idx));
      } else {
        double d = lua_tonumber(L, idx);
        if (!isfinite(d)) {
          snprintf(err, errlen, "%s: %g cannot be stored as JSON",
                   path_text(jp, where, sizeof where), d);
          return SY_EINVAL;
        }
        *out = json_real(d);
      }
      return 0;
    case LUA_TSTRING: {
      size_t len;
      const char *s = lua_tolstring(L, idx, &len);
      if (!(*out = json_stringn(s, len))) {
        snprintf(err, errlen, "%s: string is not valid UTF-8",
                 path_text(jp, where, sizeof where));
        return SY_EINVAL;
      }
      return 0;
    }
    case LUA_TTABLE:
      if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "%s: too deep",
                 path_text(jp, where, sizeof where));
        return SY_EINVAL;
      }
      return table_to_json(L, idx, out, jp, err, errlen);
    default:
      snprintf(err, errlen,
               "%s: a %s cannot be stored (vars hold JSON values only: "
               "nil, boolean, number, string, table)",
               path_text(jp, where, sizeof where), luaL_typename(L, idx));
      return SY_EINVAL;
  }
}

/* Pushes a JSON value as Lua. JSON null in an object leaves the key out;
 * Lua has no value for it. */
static void push_json(lua_State *L, json_t *j) {
  luaL_checkstack(L, 3, "JSON too deep");
  switch (json_typeof(j)) {
    case JSON_OBJECT: {
      const char *k;
      json_t *v;
      lua_createtable(L, 0, (int)json_object_size(j));
      json_object_foreach(j, k, v) {
        if (!json_is_null(v)) {
          push_json(L, v);
          lua_setfield(L, -2, k);
        }
      }
      break;
    }
    case JSON_ARRAY: {
      size_t i;
      json_t *v;
      lua_createtable(L, (int)json_array_size(j), 0);
      json_array_foreach(j, i, v) {
        push_json(L, v);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
      }
      break;
    }
    case JSON_STRING:
      lua_pushlstring(L, json_string_value(j), json_string_length(j));
      break;
    case JSON_INTEGER:
      lua_pushinteger(L, (lua_Integer)json_integer_value(j));
      break;
    case JSON_REAL:
      lua_pushnumber(L, json_real_value(j));
      break;
    case JSON_TRUE:
      lua_pushboolean(L, 1);
      break;
    case JSON_FALSE:
      lua_pushboolean(L, 0);
      break;
    case JSON_NULL:
      lua_pushnil(L);
      break;
  }
}

/* Decodes text and pushes it; on failure pushes nothing and fills err. */
static int push_json_text(lua_State *L, const char *text, int want_object,
                          char *err, size_t errlen) {
  json_error_t je;
  json_t *j = json_loads(text, JSON_DECODE_ANY, &je);
  if (!j) {
    snprintf(err, errlen, "invalid JSON at line %d column %d: %s", je.line,
             je.column, je.text);
    return SY_EINVAL;
  }
  if (want_object && !json_is_object(j)) {
    snprintf(err, errlen, "vars must be a JSON object");
    json_decref(j);
    return SY_EINVAL;
  }
  push_json(L, j);
  json_decref(j);
  return 0;
}

/* A null inside an array comes back from Lua as a hole, which no step
 * could store again: name where it is. */
static int null_in_array(json_t *j, char *path, size_t cap) {
  size_t n = strlen(path);
  if (json_is_object(j)) {
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
      snprintf(path + n, cap - n, ".%.60s", k);
      if (null_in_array(v, path, cap)) {
        return 1;
      }
    }
  } else if (json_is_array(j)) {
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
      snprintf(path + n, cap - n, "[%zu]", i + 1);
      if (json_is_null(v) || null_in_array(v, path, cap)) {
        return 1;
      }
    }
  }
  path[n] = '\0';
  return 0;
}

static int json_depth(json_t *j) {
  int d = 0;
  if (json_is_object(j)) {
    const char *k;
    json_t *v;
    json_object_foreach(j, k, v) {
      int c = json_depth(v);
      d = c > d ? c : d;
    }
    return d + 1;
  }
  if (json_is_array(j)) {
    size_t i;
    json_t *v;
    json_array_foreach(j, i, v) {
      int c = json_depth(v);
      d = c > d ? c : d;
    }
    return d + 1;
  }
  return 0;
}

int sy_vars_check_json(json_t *j, char *err, size_t errlen) {
  char path[256] = "vars";
  const char *k;
  json_t *v;
  if (!json_is_object(j)) {
    snprintf(err, errlen, "vars must be a JSON object");
    return SY_EINVAL;
  }
  /* What a step could never store again must not get in either. */
  if (null_in_array(j, path, sizeof path)) {
    snprintf(err, errlen,
             "%s: null inside an array cannot be kept (Lua has no value "
             "for it)",
             path);
    return SY_EINVAL;
  }
  json_object_foreach(j, k, v) {
    if (json_depth(v) >= JSON_MAX_DEPTH) {
      snprintf(err, errlen, "vars.%.100s: nested more than %d levels", k,
               JSON_MAX_DEPTH);
      return SY_EINVAL;
    }
  }
  return 0;
}

int sy_vars_check(const char *text, char *err, size_t errlen) {
  json_error_t je;
  json_t *j = json_loads(text, 0, &je);
  int rc;
  if (!j) {
    snprintf(err, errlen, "invalid JSON at column %d: %s", je.column, je.text);
    return SY_EINVAL;
  }
  rc = sy_vars_check_json(j, err, errlen);
  json_decref(j);
  return rc;
}

/* Encodes the value at idx; *out is malloc'd. */
static int encode(lua_State *L, int idx, const char *root, char **out,
                  char *err, size_t errlen) {
  jpath jp;
  json_t *j;
  int rc;
  jp.root = root;
  jp.n = 0;
  if ((rc = to_json(L, idx, &j, &jp, err, errlen))) {
    return rc;
  }
  *out = json_dumps(j, JSON_COMPACT | JSON_ENCODE_ANY);
  json_decref(j);
  if (!*out) {
    snprintf(err, errlen, "%s: out of memory", root);
    return SY_ENOMEM;
  }
  return 0;
}

int sy_lua_encode(void *L, int idx, char **out, char *err, size_t errlen) {
  return encode(L, idx, "value", out, err, errlen);
}

int sy_lua_push_json(void *L, const char *text, char *err, size_t errlen) {
  return push_json_text(L, text, 0, err, errlen);
}

/* ---------------------------------------------------------------------
 * The `switchyard` module: sy.workflow{}, sy.task{}, sy.<node type>{} */

static int caller_line(lua_State *L) {
  lua_Debug ar;
  if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "l", &ar)) {
    return ar.currentline;
  }
  return 0;
}

static void make_read_only(lua_State *L, int loading);

/* Wraps the options table at 1 into a spec {kind=, line=, opts=}: a
 * read-only proxy whose hidden metatable carries a marker (a light
 * userdata no Lua code can make), so a file can neither forge a spec nor
 * change one after sy.task{} returned it. */
static int make_spec(lua_State *L, int mt, const char *kind) {
  sy_lua *h = host_of(L);
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
  make_read_only(L, 0);
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
  sy_lua *h = host_of(L);
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
static void make_read_only(lua_State *L, int loading) {
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
    rawfield(L, 2, "__gc");
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
  make_read_only(L, 0);
  lua_setfield(L, env, lib);
  lua_pop(L, 1);
}

static void copy_whole_lib(lua_State *L, int env, const char *lib) {
  lua_getglobal(L, lib);
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, -3)) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_settable(L, -4);
  }
  make_read_only(L, 0);
  lua_setfield(L, env, lib);
  lua_pop(L, 1);
}

/* Pushes a new environment built from the allow list. */
static void push_sandbox(sy_lua *h) {
  lua_State *L = h->L;
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
  copy_whole_lib(L, env, "table");
  copy_whole_lib(L, env, "math");
  copy_whole_lib(L, env, "utf8");
  copy_whole_lib(L, env, "coroutine");
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
  make_read_only(L, 0);
  lua_pushcclosure(L, sandbox_require, 1);
  lua_setfield(L, env, "require");
  /* The environment itself: globals may be defined while the file loads,
   * then it is read-only (sy_workflow_load clears __sy_loading). */
  make_read_only(L, 1);
  lua_pushvalue(L, env);
  lua_setfield(L, env, "_G"); /* through __newindex, while loading */
  lua_pushvalue(L, env);
  lua_pushcclosure(L, sandbox_load, 1);
  lua_setfield(L, env, "load");
}

/* ---------------------------------------------------------------------
 * ctx: the table a step function receives */

static sy_task *running_task(lua_State *L, const char *what) {
  sy_lua *h = host_of(L);
  sy_task *t = h->current;
  if (!t || t->co != L) {
    luaL_error(L, "%s can only be called from the step's own coroutine", what);
  }
  return t;
}

/* Lua: ctx.log(...) */
static int ctx_log(lua_State *L) {
  sy_lua *h = host_of(L);
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

/* Lua: ctx.sleep(seconds) parks the step on a timer. */
static int ctx_sleep(lua_State *L) {
  sy_task *t = running_task(L, "ctx.sleep");
  double s = luaL_checknumber(L, 1);
  luaL_argcheck(L, s >= 0 && isfinite(s) && s < 1e9, 1,
                "seconds must be a finite number >= 0");
  t->pending = PENDING_SLEEP;
  t->sleep_ms = (int64_t)(s * 1000.0 + 0.5);
  t->sleep_seq++;
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
  if (push_json_text(L, t->call_json ? t->call_json : "null", 0, err,
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
  sy_lua *h = host_of(L);
  const sy_ctx_fn_entry *fn = lua_touserdata(L, lua_upvalueindex(1));
  sy_task *t = running_task(L, fn->fn->name);
  char *args = NULL;
  char err[512];
  sy_call *c;
  lua_settop(L, 1);
  if (encode(L, 1, "argument", &args, err, sizeof err)) {
    return luaL_error(L, "ctx.%s: %s", fn->fn->name, err);
  }
  t->call_done = 0;
  t->call_seq++;
  t->pending = PENDING_CALL;
  c = h->ctx_call(h->ud, t, fn, args, err, sizeof err);
  free(args);
  if (!c && !t->call_done) {
    t->pending = PENDING_NONE;
    return luaL_error(L, "ctx.%s: %s", fn->fn->name, err);
  }
  if (t->call_done) {
    return ctx_call_cont(L, LUA_OK, 0);
  }
  return lua_yieldk(L, 0, 0, ctx_call_cont);
}

/* ctx.idempotency_key is made when a step reads it, not at every step: most
 * steps never do. Its ctx must be the running step's own. */
static int ctx_index(lua_State *L) {
  sy_lua *h = host_of(L);
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
  lua_pushstring(L, sy_task_idempotency_key(h->current));
  return 1;
}

static void make_ctx_mt(sy_lua *h) {
  lua_State *L = h->L;
  int n = sy_plugins_ctx_fn_count(h->plugins);
  lua_newtable(L); /* metatable */
  lua_newtable(L); /* methods */
  lua_pushcfunction(L, ctx_log);
  lua_setfield(L, -2, "log");
  lua_pushcfunction(L, ctx_sleep);
  lua_setfield(L, -2, "sleep");
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
  make_ctx_mt(h);
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

/* ---------------------------------------------------------------------
 * Loading and validating definitions */

typedef struct loader {
  sy_lua *h;
  const char *path;
  sy_diag *diag;
  sy_workflow *wf;
  int rc;
} loader;

__attribute__((format(printf, 3, 4))) static int load_error(loader *ld,
                                                            int line,
                                                            const char *fmt,
                                                            ...) {
  va_list ap;
  size_t n;
  if (line > 0) {
    n = (size_t)snprintf(ld->diag->error, sizeof ld->diag->error,
                         "%s:%d: ", ld->path, line);
  } else {
    n = (size_t)snprintf(ld->diag->error, sizeof ld->diag->error,
                         "%s: ", ld->path);
  }
  if (n < sizeof ld->diag->error) {
    va_start(ap, fmt);
    vsnprintf(ld->diag->error + n, sizeof ld->diag->error - n, fmt, ap);
    va_end(ap);
  }
  return SY_ELOAD;
}

__attribute__((format(printf, 3, 4))) static void load_warning(loader *ld,
                                                               int line,
                                                               const char *fmt,
                                                               ...) {
  va_list ap;
  char *w = ld->diag->warnings;
  size_t used = strlen(w), cap = sizeof ld->diag->warnings;
  if (used >= cap - 1) {
    return;
  }
  used += (size_t)snprintf(w + used, cap - used, "%s:%d: warning: ", ld->path,
                           line);
  if (used < cap) {
    va_start(ap, fmt);
    used += (size_t)vsnprintf(w + used, cap - used, fmt, ap);
    va_end(ap);
  }
  if (used < cap - 1) {
    w[used] = '\n';
    w[used + 1] = '\0';
  }
}

static int spec_is(sy_lua *h, lua_State *L, int idx, char *mt) {
  int same;
  if (!lua_istable(L, idx) || !lua_getmetatable(L, idx)) {
    return 0;
  }
  rawfield(L, -1, "__sy_spec");
  same = lua_touserdata(L, -1) == (void *)mt;
  lua_pop(L, 2);
  (void)h;
  return same;
}

static const char *const task_options[] = {
    "run", "next", "retries", "backoff", "timeout", "description", NULL};
static const char *const common_node_options[] = {
    "next", "retries", "backoff", "timeout", "description", NULL};

static int in_list(const char *const *list, const char *s) {
  for (; list && *list; list++) {
    if (strcmp(*list, s) == 0) {
      return 1;
    }
  }
  return 0;
}

/* Reads a number option at the top of the stack (popped by the caller). */
static int opt_number(loader *ld, int line, const char *step, const char *key,
                      double min, double *out) {
  lua_State *L = ld->h->L;
  if (lua_isnil(L, -1)) {
    return 0;
  }
  if (!lua_isnumber(L, -1) || lua_type(L, -1) != LUA_TNUMBER) {
    return load_error(ld, line, "step '%s': %s must be a number, got %s", step,
                      key, luaL_typename(L, -1));
  }
  *out = lua_tonumber(L, -1);
  if (!isfinite(*out) || *out < min) {
    return load_error(ld, line, "step '%s': %s must be >= %g, got %g", step,
                      key, min, *out);
  }
  return 0;
}

/* Validates the step spec on top of the stack into s. */
static int compile_step(loader *ld, sy_step *s) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  int spec = lua_gettop(L), opts, rc = 0;
  const char *kind;
  const char *const *allowed;
  const char *const *extra = NULL;
  lua_getfield(L, spec, "line");
  s->line = (int)lua_tointeger(L, -1);
  lua_getfield(L, spec, "kind");
  kind = lua_tostring(L, -1);
  lua_getfield(L, spec, "opts");
  opts = lua_gettop(L);
  s->run_ref = s->next_ref = s->opts_ref = LUA_NOREF;
  s->retries = 3;
  s->backoff_initial = 1;
  s->backoff_factor = 2;
  s->backoff_max = 60;
  if (strcmp(kind, "task") == 0) {
    s->kind = SY_STEP_TASK;
    allowed = task_options;
  } else {
    s->kind = SY_STEP_NODE;
    s->node = sy_plugins_node(h->plugins, kind);
    SY_ASSERT(s->node); /* dsl_index only makes specs of known types */
    allowed = common_node_options;
    extra = s->node->type->options;
  }
  /* Unknown options are errors: a typo must not silently do nothing. */
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING ||
        (!in_list(allowed, lua_tostring(L, -1)) &&
         !in_list(extra, lua_tostring(L, -1)))) {
      const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                       : luaL_typename(L, -1);
      rc = load_error(ld, s->line, "step '%s': unknown option '%s' for %s",
                      s->name, key, kind);
      lua_pop(L, 1);
      goto done;
    }
  }
  if (s->kind == SY_STEP_TASK) {
    rawfield(L, opts, "run");
    if (!lua_isfunction(L, -1)) {
      rc = load_error(ld, s->line, "step '%s': run must be a function, got %s",
                      s->name, luaL_typename(L, -1));
      goto done;
    }
    s->run_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  rawfield(L, opts, "next");
  if (lua_type(L, -1) == LUA_TSTRING) {
    s->next = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  } else if (lua_isfunction(L, -1)) {
    s->next_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  } else if (!lua_isnil(L, -1)) {
    rc = load_error(ld, s->line,
                    "step '%s': next must be a step name or a function, got %s",
                    s->name, luaL_typename(L, -1));
    goto done;
  } else {
    lua_pop(L, 1);
  }
  rawfield(L, opts, "retries");
  if (!lua_isnil(L, -1)) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 ||
        lua_tointeger(L, -1) > 1000) {
      rc = load_error(ld, s->line,
                      "step '%s': retries must be an integer from 0 to 1000",
                      s->name);
      goto done;
    }
    s->retries = (int)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  rawfield(L, opts, "timeout");
  if ((rc = opt_number(ld, s->line, s->name, "timeout", 0, &s->timeout))) {
    goto done;
  }
  lua_pop(L, 1);
  rawfield(L, opts, "backoff");
  if (lua_type(L, -1) == LUA_TNUMBER) {
    if ((rc = opt_number(ld, s->line, s->name, "backoff", 0,
                         &s->backoff_initial))) {
      goto done;
    }
  } else if (lua_istable(L, -1)) {
    static const char *const keys[] = {"initial", "factor", "max"};
    double *dst[] = {&s->backoff_initial, &s->backoff_factor, &s->backoff_max};
    double mins[] = {0, 1, 0};
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_pop(L, 1);
      if (lua_type(L, -1) != LUA_TSTRING ||
          (strcmp(lua_tostring(L, -1), "initial") &&
           strcmp(lua_tostring(L, -1), "factor") &&
           strcmp(lua_tostring(L, -1), "max"))) {
        lua_pop(L, 1);
        rc = load_error(ld, s->line,
                        "step '%s': backoff takes initial, factor and max",
                        s->name);
        goto done;
      }
    }
    for (int i = 0; i < 3; i++) {
      char key[32];
      snprintf(key, sizeof key, "backoff.%s", keys[i]);
      rawfield(L, -1, keys[i]);
      if ((rc = opt_number(ld, s->line, s->name, key, mins[i], dst[i]))) {
        goto done;
      }
      lua_pop(L, 1);
    }
    if (s->backoff_max < s->backoff_initial) {
      s->backoff_max = s->backoff_initial;
    }
  } else if (!lua_isnil(L, -1)) {
    rc = load_error(ld, s->line,
                    "step '%s': backoff must be seconds or a table "
                    "{initial=, factor=, max=}, got %s",
                    s->name, luaL_typename(L, -1));
    goto done;
  }
  lua_pop(L, 1);
  if (s->kind == SY_STEP_NODE) {
    char err[512] = "";
    sy_opts o = {L, opts};
    if (s->node->type->compile &&
        s->node->type->compile(s->node->plugin->state, &o, &s->node_data, err,
                               sizeof err)) {
      rc = load_error(ld, s->line, "step '%s': %s", s->name, err);
      goto done;
    }
    lua_pushvalue(L, opts);
    s->opts_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  }
done:
  lua_settop(L, spec);
  return rc;
}

static int by_step_name(const void *a, const void *b) {
  return strcmp(((const sy_step *)a)->name, ((const sy_step *)b)->name);
}

static int by_step_line(const void *a, const void *b) {
  int x = ((const sy_step *)a)->line, y = ((const sy_step *)b)->line;
  return (x > y) - (x < y);
}

const sy_step *sy_workflow_step(const sy_workflow *wf, const char *name) {
  sy_step key = {.name = (char *)name};
  return bsearch(&key, wf->steps, (size_t)wf->nsteps, sizeof key, by_step_name);
}

/* Node options that name steps, for reference checks and reachability. */
static const char *node_step_ref(sy_lua *h, const sy_step *s, int i) {
  const char *const *so = s->node->type->step_options;
  const char *v = NULL;
  if (!so) {
    return NULL;
  }
  for (int k = 0; so[k]; k++) {
    if (k == i) {
      lua_rawgeti(h->L, LUA_REGISTRYINDEX, s->opts_ref);
      rawfield(h->L, -1, so[k]);
      v = lua_tostring(h->L, -1);
      lua_pop(h->L, 2); /* the string stays alive in the options table */
      return v ? v : "";
    }
  }
  return NULL;
}

static int check_graph(loader *ld) {
  sy_workflow *wf = ld->wf;
  char *seen = calloc((size_t)wf->nsteps, 1);
  int *stack = malloc(sizeof(int) * (size_t)(wf->nsteps + 1));
  int sp = 0, dynamic = 0;
  if (!seen || !stack) {
    free(seen);
    free(stack);
    return load_error(ld, 0, "out of memory");
  }
  for (int i = 0; i < wf->nsteps; i++) {
    const sy_step *s = &wf->steps[i];
    const char *ref;
    if (s->next && !sy_workflow_step(wf, s->next)) {
      free(seen);
      free(stack);
      return load_error(ld, s->line, "step '%s': next step '%s' does not exist",
                        s->name, s->next);
    }
    for (int k = 0;
         s->kind == SY_STEP_NODE && (ref = node_step_ref(ld->h, s, k)) != NULL;
         k++) {
      if (*ref && !sy_workflow_step(wf, ref)) {
        free(seen);
        free(stack);
        return load_error(ld, s->line,
                          "step '%s': %s names step '%s', which does not exist",
                          s->name, s->node->type->step_options[k], ref);
      }
    }
  }
  /* Reachability from start; a `next` function may go anywhere. */
  stack[sp++] = (int)(wf->start - wf->steps);
  seen[stack[0]] = 1;
  while (sp > 0) {
    const sy_step *s = &wf->steps[stack[--sp]];
    const char *targets[16];
    int nt = 0;
    const char *ref;
    if (s->next_ref != LUA_NOREF) {
      dynamic = 1;
    }
    if (s->next) {
      targets[nt++] = s->next;
    }
    for (int k = 0; s->kind == SY_STEP_NODE && nt < 16 &&
                    (ref = node_step_ref(ld->h, s, k)) != NULL;
         k++) {
      if (*ref) {
        targets[nt++] = ref;
      }
    }
    for (int k = 0; k < nt; k++) {
      int j = (int)(sy_workflow_step(wf, targets[k]) - wf->steps);
      if (!seen[j]) {
        seen[j] = 1;
        stack[sp++] = j;
      }
    }
  }
  if (!dynamic) {
    for (int i = 0; i < wf->nsteps; i++) {
      if (!seen[i]) {
        load_warning(ld, wf->steps[i].line,
                     "step '%s' is unreachable from start '%s'",
                     wf->steps[i].name, wf->start->name);
      }
    }
  }
  free(seen);
  free(stack);
  return 0;
}

/* Turns the workflow spec on top of the stack into ld->wf. */
static int compile_workflow(loader *ld) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  sy_workflow *wf = ld->wf;
  int spec = lua_gettop(L), opts, line, rc = 0, n = 0;
  const char *start;
  lua_getfield(L, spec, "line");
  line = wf->line = (int)lua_tointeger(L, -1);
  lua_getfield(L, spec, "opts");
  opts = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    const char *k;
    lua_pop(L, 1);
    k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    if (strcmp(k, "name") && strcmp(k, "start") && strcmp(k, "steps") &&
        strcmp(k, "description")) {
      lua_pop(L, 1);
      return load_error(ld, line,
                        "unknown workflow option '%s' (expected name, start, "
                        "steps, description)",
                        k);
    }
  }
  rawfield(L, opts, "name");
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0 ||
      strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1)) {
    return load_error(ld, line,
                      "workflow name must be a non-empty string (no NUL)");
  }
  wf->name = strdup(lua_tostring(L, -1));
  for (const char *c = wf->name; *c; c++) {
    if (!(*c == '_' || *c == '-' || *c == '.' || (*c >= '0' && *c <= '9') ||
          (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
      return load_error(ld, line,
                        "workflow name '%s' may only use letters, digits, "
                        "'_', '-' and '.'",
                        wf->name);
    }
  }
  rawfield(L, opts, "steps");
  if (!lua_istable(L, -1)) {
    return load_error(ld, line, "steps must be a table of named steps, got %s",
                      luaL_typename(L, -1));
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    n++;
    lua_pop(L, 1);
  }
  if (n == 0) {
    return load_error(ld, line, "workflow '%s' has no steps", wf->name);
  }
  if (!(wf->steps = calloc((size_t)n, sizeof *wf->steps))) {
    return load_error(ld, line, "out of memory");
  }
  /* First pass: collect names and lines, so errors come in file order. */
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    sy_step *s = &wf->steps[wf->nsteps];
    if (lua_type(L, -2) != LUA_TSTRING ||
        strlen(lua_tostring(L, -2)) != lua_rawlen(L, -2) ||
        lua_rawlen(L, -2) == 0) {
      lua_pop(L, 2);
      return load_error(ld, line,
                        "step names must be non-empty strings (no NUL)");
    }
    if (!spec_is(h, L, -1, &h->step_mt)) {
      rc = load_error(ld, line,
                      "step '%s' is a %s, not a step (make it with sy.task{} "
                      "or a node type)",
                      lua_tostring(L, -2), luaL_typename(L, -1));
      lua_pop(L, 2);
      return rc;
    }
    s->name = strdup(lua_tostring(L, -2));
    s->run_ref = s->next_ref = s->opts_ref = LUA_NOREF;
    lua_getfield(L, -1, "line");
    s->line = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
    wf->nsteps++;
  }
  qsort(wf->steps, (size_t)wf->nsteps, sizeof *wf->steps, by_step_line);
  for (int i = 0; i < wf->nsteps && !rc; i++) {
    rawfield(L, -1, wf->steps[i].name);
    rc = compile_step(ld, &wf->steps[i]);
    lua_pop(L, 1);
  }
  if (rc) {
    return rc;
  }
  qsort(wf->steps, (size_t)wf->nsteps, sizeof *wf->steps, by_step_name);
  rawfield(L, opts, "start");
  start = lua_tostring(L, -1);
  if (lua_type(L, -1) != LUA_TSTRING) {
    return load_error(ld, line,
                      "workflow '%s' has no start step (start = "
                      "\"<step name>\")",
                      wf->name);
  }
  if (!(wf->start = sy_workflow_step(wf, start))) {
    return load_error(ld, line, "start step '%s' does not exist", start);
  }
  lua_settop(L, spec);
  return check_graph(ld);
}

/* lua_pcall'd: (loader, spec) -> compile_workflow, result in ld->rc. */
static int compile_protected(lua_State *L) {
  loader *ld = lua_touserdata(L, 1);
  lua_settop(L, 2);
  ld->rc = compile_workflow(ld);
  return 0;
}

static void hash_hex(const char *data, size_t len, char out[65]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
  for (unsigned i = 0; i < mdlen && i < 32; i++) {
    snprintf(out + 2 * i, 3, "%02x", md[i]);
  }
}

int sy_workflow_load(sy_lua *h, const char *path, const char *source,
                     size_t len, sy_workflow **out, sy_diag *diag) {
  lua_State *L = h->L;
  int top = lua_gettop(L), rc, env;
  char chunkname[LUA_IDSIZE + 1];
  char hash[65] = "";
  loader ld = {h, path, diag, NULL, 0};
  diag->error[0] = diag->warnings[0] = '\0';
  if (!(ld.wf = calloc(1, sizeof *ld.wf))) {
    return load_error(&ld, 0, "out of memory");
  }
  ld.wf->env_ref = LUA_NOREF;
  snprintf(chunkname, sizeof chunkname, "@%s", chunk_base(path));
  if (luaL_loadbufferx(L, source, len, chunkname, "t") != LUA_OK) {
    /* Lua's message already reads file:line: what. */
    error_message(L, path, diag->error, sizeof diag->error);
    rc = SY_ELOAD;
    goto fail;
  }
  push_sandbox(h);
  env = lua_gettop(L);
  lua_pushvalue(L, env);
  lua_setupvalue(L, -3, 1);
  lua_pushvalue(L, -2); /* the chunk, to call */
  limits_on(h, L, h->instructions);
  rc = lua_pcall(L, 0, 1, 0);
  limits_off(h, L);
  if (rc != LUA_OK) {
    char msg[900];
    error_message(L, path, msg, sizeof msg);
    /* Errors raised by the DSL carry no position: add the file's. */
    if (strncmp(msg, path, strlen(path)) == 0) {
      snprintf(diag->error, sizeof diag->error, "%s", msg);
    } else {
      load_error(&ld, 0, "%s", msg);
    }
    rc = SY_ELOAD;
    goto fail;
  }
  if (!spec_is(h, L, -1, &h->workflow_mt)) {
    rc = load_error(&ld, 0,
                    "the file must return sy.workflow{...}, it returned %s",
                    luaL_typename(L, -1));
    goto fail;
  }
  /* Validation reads tables the file made: run it protected and under
   * the budget, so an error or a loop there is a load error too. */
  lua_pushcfunction(L, compile_protected);
  lua_pushlightuserdata(L, &ld);
  lua_pushvalue(L, -3); /* the spec */
  limits_on(h, L, h->instructions);
  rc = lua_pcall(L, 2, 0, 0);
  limits_off(h, L);
  if (rc != LUA_OK) {
    char msg[900];
    error_message(L, path, msg, sizeof msg);
    lua_pop(L, 1);
    if (!ld.diag->error[0]) {
      load_error(&ld, ld.wf->line, "%s", msg);
    }
    rc = SY_ELOAD;
    goto fail;
  }
  if ((rc = ld.rc)) {
    goto fail;
  }
  lua_getmetatable(L, env);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__sy_loading");
  lua_pop(L, 1);
  lua_pushvalue(L, env);
  ld.wf->env_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  hash_hex(source, len, hash);
  ld.wf->hash = strdup(hash);
  ld.wf->path = strdup(path);
  ld.wf->source = malloc(len + 1);
  if (!ld.wf->hash || !ld.wf->path || !ld.wf->source) {
    rc = load_error(&ld, 0, "out of memory");
    goto fail;
  }
  memcpy(ld.wf->source, source, len);
  ld.wf->source[len] = '\0';
  ld.wf->source_len = len;
  lua_settop(L, top);
  *out = ld.wf;
  return 0;
fail:
  lua_settop(L, top);
  sy_workflow_free(h, ld.wf);
  return rc;
}

int sy_workflow_load_file(sy_lua *h, const char *path, sy_workflow **out,
                          sy_diag *diag) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  size_t len = 0, cap = 0, n;
  int rc;
  diag->error[0] = diag->warnings[0] = '\0';
  if (!f) {
    snprintf(diag->error, sizeof diag->error, "%s: cannot open: %s", path,
             strerror(errno));
    return SY_ELOAD;
  }
  do {
    if (len + 4096 > cap) {
      char *nb = realloc(buf, cap = cap * 2 + 8192);
      if (!nb) {
        free(buf);
        fclose(f);
        snprintf(diag->error, sizeof diag->error, "%s: out of memory", path);
        return SY_ENOMEM;
      }
      buf = nb;
    }
    n = fread(buf + len, 1, cap - len, f);
    len += n;
  } while (n > 0);
  if (ferror(f)) {
    snprintf(diag->error, sizeof diag->error, "%s: read error", path);
    free(buf);
    fclose(f);
    return SY_ELOAD;
  }
  fclose(f);
  rc = sy_workflow_load(h, path, buf, len, out, diag);
  free(buf);
  return rc;
}

void sy_workflow_free(sy_lua *h, sy_workflow *wf) {
  if (!wf) {
    return;
  }
  for (int i = 0; i < wf->nsteps; i++) {
    sy_step *s = &wf->steps[i];
    luaL_unref(h->L, LUA_REGISTRYINDEX, s->run_ref);
    luaL_unref(h->L, LUA_REGISTRYINDEX, s->next_ref);
    luaL_unref(h->L, LUA_REGISTRYINDEX, s->opts_ref);
    if (s->node && s->node_data && s->node->type->free_node) {
      s->node->type->free_node(s->node->plugin->state, s->node_data);
    }
    free(s->name);
    free(s->next);
  }
  luaL_unref(h->L, LUA_REGISTRYINDEX, wf->env_ref);
  free(wf->steps);
  free(wf->name);
  free(wf->hash);
  free(wf->path);
  free(wf->source);
  free(wf);
}

/* ---------------------------------------------------------------------
 * Node options and vars for plugins */

static void read_value(lua_State *L, int idx, sy_value *out) {
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

int sy_opts_get(sy_opts *o, const char *key, sy_value *out) {
  rawfield(o->L, o->idx, key);
  read_value(o->L, -1, out);
  /* Strings stay valid: the options table still holds them. */
  lua_pop(o->L, 1);
  return 0;
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
  read_value(L, -1, out);
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
    if (push_json_text(L, json, 0, err, sizeof err)) {
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
  if (push_json_text(L, vars_json, 1, err, errlen)) {
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

const char *sy_task_idempotency_key(sy_task *t) {
  if (t->generation) {
    snprintf(t->idem_key, sizeof t->idem_key, "%lld-%.256s-%d.%d",
             (long long)t->instance_id, t->step->name, t->attempt,
             t->generation);
  } else {
    snprintf(t->idem_key, sizeof t->idem_key, "%lld-%.256s-%d",
             (long long)t->instance_id, t->step->name, t->attempt);
  }
  return t->idem_key;
}

int sy_task_call_seq(sy_task *t) {
  return t->call_seq;
}

void sy_task_set_step(sy_task *t, const sy_step *step, int attempt) {
  lua_State *L = t->h->L;
  t->step = step;
  t->attempt = attempt;
  t->sleep_seq = 0;
  t->call_seq = 0;
  t->vars_dirty = step->kind == SY_STEP_TASK;
  t->budget_left = t->h->instructions;
  lua_rawgeti(L, LUA_REGISTRYINDEX, t->ctx_ref);
  lua_pushstring(L, step->name);
  lua_setfield(L, -2, "step");
  lua_pushinteger(L, attempt);
  lua_setfield(L, -2, "attempt");
  lua_pop(L, 1);
}

/* Calls a function of ctx (a `next` function or a predicate) on a fresh
 * thread under the limits; leaves its one result on the main stack. */
static int call_with_ctx(sy_task *t, int fn_ref, char *err, size_t errlen) {
  sy_lua *h = t->h;
  lua_State *L = h->L;
  lua_State *co = lua_newthread(L);
  sy_task *outer = h->current;
  int rc;
  t->vars_dirty = 1; /* Lua code may change vars */
  lua_rawgeti(co, LUA_REGISTRYINDEX, fn_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, t->ctx_ref);
  h->current = t;
  limits_on(h, co, h->instructions);
  rc = lua_pcall(co, 1, 1, 0);
  limits_off(h, co);
  h->current = outer;
  if (rc != LUA_OK) {
    error_message(co, t->wf->path, err, errlen);
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
  if (!next && step->next_ref != LUA_NOREF) {
    if (call_with_ctx(t, step->next_ref, r->error, sizeof r->error)) {
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
  if (encode(L, -1, "vars", &r->vars_json, r->error, sizeof r->error)) {
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
  limits_on(h, t->co, t->budget_left);
  rc = lua_resume(t->co, h->L, nargs, &nres);
  t->budget_left = h->budget_left;
  limits_off(h, t->co);
  h->current = NULL;
  if (rc == LUA_YIELD) {
    lua_pop(t->co, nres);
    if (t->pending == PENDING_SLEEP) {
      r->status = SY_TASK_SLEEP;
      r->sleep_ms = t->sleep_ms;
      r->sleep_seq = t->sleep_seq;
      return;
    }
    if (t->pending == PENDING_CALL) {
      r->status = SY_TASK_CALL;
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
  error_message(t->co, t->wf->path, r->error, sizeof r->error);
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
  lua_rawgeti(t->co, LUA_REGISTRYINDEX, step->run_ref);
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
  lua_rawgeti(L, LUA_REGISTRYINDEX, step->opts_ref);
  rawfield(L, -1, option);
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
