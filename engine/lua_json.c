/* Vars between JSON and Lua. Vars are JSON objects; a value JSON cannot
 * hold (a function, NaN, mixed keys, nesting deeper than 64) is an error
 * naming where it is (e.g. vars.items[2].f). jansson parses and prints. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_int.h"

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
int sy__push_json_text(lua_State *L, const char *text, int want_object,
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
int sy__encode(lua_State *L, int idx, const char *root, int canonical,
               char **out, char *err, size_t errlen) {
  jpath jp;
  json_t *j;
  int rc;
  jp.root = root;
  jp.n = 0;
  if ((rc = to_json(L, idx, &j, &jp, err, errlen))) {
    return rc;
  }
  *out = json_dumps(
      j, JSON_COMPACT | JSON_ENCODE_ANY | (canonical ? JSON_SORT_KEYS : 0));
  json_decref(j);
  if (!*out) {
    snprintf(err, errlen, "%s: out of memory", root);
    return SY_ENOMEM;
  }
  return 0;
}

int sy_lua_encode(lua_State *L, int idx, char **out, char *err, size_t errlen) {
  return sy__encode(L, idx, "value", 0, out, err, errlen);
}

int sy_lua_push_json(lua_State *L, const char *text, char *err, size_t errlen) {
  return sy__push_json_text(L, text, 0, err, errlen);
}
