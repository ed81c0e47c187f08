/* Loading and validating workflow definitions: a file runs in a fresh
 * sandbox and returns a spec (sy.workflow{...}), which is compiled into a
 * sy_workflow: every step checked (options, types, next steps, node
 * options through the plugin's compile), the graph checked for dangling
 * names and unreachable steps. Errors read file:line; nothing runs before
 * everything is checked. */
#include <errno.h>
#include <math.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "lua_int.h"

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
  sy__rawfield(L, -1, "__sy_spec");
  same = lua_touserdata(L, -1) == (void *)mt;
  lua_pop(L, 2);
  (void)h;
  return same;
}

static const char *const task_options[] = {
    "run",   "next",        "retries",  "backoff",     "timeout", "retry_on",
    "catch", "description", "no_retry", "shadow_safe", NULL};
static const char *const common_node_options[] = {
    "next",     "retries", "backoff",     "timeout", "retry_on",
    "no_retry", "catch",   "description", NULL};

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

/* Unknown options are errors: a typo must not silently do nothing. */
static int check_option_names(loader *ld, const sy_step *s, int opts,
                              const char *kind, const char *const *allowed,
                              const char *const *extra) {
  lua_State *L = ld->h->L;
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING ||
        (!in_list(allowed, lua_tostring(L, -1)) &&
         !in_list(extra, lua_tostring(L, -1)))) {
      const char *key = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                       : luaL_typename(L, -1);
      int rc = load_error(ld, s->line, "step '%s': unknown option '%s' for %s",
                          s->name, key, kind);
      lua_pop(L, 1);
      return rc;
    }
  }
  return 0;
}

/* run (a task's function) and next (a step name or a function). */
static int compile_code(loader *ld, sy_step *s, int opts) {
  lua_State *L = ld->h->L;
  if (s->kind == SY_STEP_TASK) {
    sy__rawfield(L, opts, "run");
    if (!lua_isfunction(L, -1)) {
      return load_error(ld, s->line,
                        "step '%s': run must be a function, got %s", s->name,
                        luaL_typename(L, -1));
    }
    s->lua->run = luaL_ref(L, LUA_REGISTRYINDEX);
  }
  sy__rawfield(L, opts, "next");
  if (lua_type(L, -1) == LUA_TSTRING) {
    s->next = strdup(lua_tostring(L, -1));
    lua_pop(L, 1);
  } else if (lua_isfunction(L, -1)) {
    s->lua->next = luaL_ref(L, LUA_REGISTRYINDEX);
  } else if (!lua_isnil(L, -1)) {
    return load_error(
        ld, s->line,
        "step '%s': next must be a step name or a function, got %s", s->name,
        luaL_typename(L, -1));
  } else {
    lua_pop(L, 1);
  }
  return 0;
}

/* backoff: seconds, or {initial=, factor=, max=} (on top of the stack). */
static int compile_backoff(loader *ld, sy_step *s) {
  lua_State *L = ld->h->L;
  static const char *const keys[] = {"initial", "factor", "max", NULL};
  double *dst[] = {&s->backoff_initial, &s->backoff_factor, &s->backoff_max};
  double mins[] = {0, 1, 0};
  int rc;
  if (lua_type(L, -1) == LUA_TNUMBER) {
    return opt_number(ld, s->line, s->name, "backoff", 0, &s->backoff_initial);
  }
  if (lua_isnil(L, -1)) {
    return 0;
  }
  if (!lua_istable(L, -1)) {
    return load_error(ld, s->line,
                      "step '%s': backoff must be seconds or a table "
                      "{initial=, factor=, max=}, got %s",
                      s->name, luaL_typename(L, -1));
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !in_list(keys, lua_tostring(L, -1))) {
      lua_pop(L, 1);
      return load_error(ld, s->line,
                        "step '%s': backoff takes initial, factor and max",
                        s->name);
    }
  }
  for (int i = 0; i < 3; i++) {
    char key[32];
    snprintf(key, sizeof key, "backoff.%s", keys[i]);
    sy__rawfield(L, -1, keys[i]);
    if ((rc = opt_number(ld, s->line, s->name, key, mins[i], dst[i]))) {
      return rc;
    }
    lua_pop(L, 1);
  }
  if (s->backoff_max < s->backoff_initial) {
    s->backoff_max = s->backoff_initial;
  }
  return 0;
}

/* retries, timeout and backoff. */
static int compile_policy(loader *ld, sy_step *s, int opts) {
  lua_State *L = ld->h->L;
  int rc;
  sy__rawfield(L, opts, "retries");
  if (!lua_isnil(L, -1)) {
    if (!lua_isinteger(L, -1) || lua_tointeger(L, -1) < 0 ||
        lua_tointeger(L, -1) > 1000) {
      return load_error(ld, s->line,
                        "step '%s': retries must be an integer from 0 to 1000",
                        s->name);
    }
    s->retries = (int)lua_tointeger(L, -1);
  }
  lua_pop(L, 1);
  sy__rawfield(L, opts, "timeout");
  if ((rc = opt_number(ld, s->line, s->name, "timeout", 0, &s->timeout))) {
    return rc;
  }
  lua_pop(L, 1);
  sy__rawfield(L, opts, "shadow_safe");
  if (!lua_isnil(L, -1) && !lua_isboolean(L, -1)) {
    return load_error(ld, s->line,
                      "step '%s': shadow_safe must be true or false", s->name);
  }
  s->shadow_safe = lua_toboolean(L, -1);
  lua_pop(L, 1);
  sy__rawfield(L, opts, "backoff");
  return compile_backoff(ld, s);
}

int sy_error_code_valid(const char *code) {
  size_t n = 0;
  for (const char *c = code; *c; c++, n++) {
    if (!(*c == '_' || *c == '-' || *c == '.' || *c == ':' ||
          (*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') ||
          (*c >= 'A' && *c <= 'Z'))) {
      return 0;
    }
  }
  return n > 0 && n <= SY_CODE_MAX;
}

/* The code at the top of the stack, as option `key` of step s names it
 * (into *out, malloc'd); "*" only where star is allowed (NULL then). */
static int read_code(loader *ld, sy_step *s, const char *key, int star,
                     char **out) {
  lua_State *L = ld->h->L;
  const char *c = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : NULL;
  *out = NULL;
  if (c && star && strcmp(c, "*") == 0) {
    return 0;
  }
  if (!c || strlen(c) != lua_rawlen(L, -1) || !sy_error_code_valid(c)) {
    return load_error(ld, s->line,
                      "step '%s': %s: an error code is 1 to %d letters, "
                      "digits, '_', '-', '.' or ':'%s, got %s%s%s",
                      s->name, key, SY_CODE_MAX, star ? " (or \"*\")" : "",
                      c ? "'" : "", c ? c : luaL_typename(L, -1), c ? "'" : "");
  }
  if (!(*out = strdup(c))) {
    return load_error(ld, s->line, "out of memory");
  }
  return 0;
}

/* retry_on or no_retry (on top of the stack): a list of codes. */
static int compile_retry_codes(loader *ld, sy_step *s, const char *key) {
  lua_State *L = ld->h->L;
  lua_Integer n;
  int rc;
  if (!lua_istable(L, -1) || (n = (lua_Integer)lua_rawlen(L, -1)) == 0) {
    return load_error(
        ld, s->line, "step '%s': %s must be a list of error codes, got %s",
        s->name, key,
        lua_istable(L, -1) ? "an empty table" : luaL_typename(L, -1));
  }
  if (n > 1000 ||
      !(s->retry_codes = calloc((size_t)n, sizeof *s->retry_codes))) {
    return load_error(ld, s->line, "step '%s': %s: too many codes", s->name,
                      key);
  }
  for (lua_Integer i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    rc = read_code(ld, s, key, 0, &s->retry_codes[s->nretry_codes]);
    lua_pop(L, 1);
    if (rc) {
      return rc;
    }
    s->nretry_codes++;
  }
  return 0;
}

/* catch (on top of the stack): {code = "step", ["*"] = "step"}. */
static int compile_catch(loader *ld, sy_step *s) {
  lua_State *L = ld->h->L;
  int n = 0, rc;
  if (!lua_istable(L, -1)) {
    return load_error(ld, s->line,
                      "step '%s': catch must be a table {code = \"step\", "
                      "[\"*\"] = \"step\"}, got %s",
                      s->name, luaL_typename(L, -1));
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    n++;
    lua_pop(L, 1);
  }
  if (n == 0) {
    return load_error(ld, s->line, "step '%s': catch is empty", s->name);
  }
  if (n > 1000 || !(s->catches = calloc((size_t)n, sizeof *s->catches))) {
    return load_error(ld, s->line, "step '%s': catch: too many entries",
                      s->name);
  }
  lua_pushnil(L);
  while (lua_next(L, -2)) {
    sy_catch *c = &s->catches[s->ncatches];
    lua_pushvalue(L, -2);
    rc = read_code(ld, s, "catch", 1, &c->code);
    lua_pop(L, 1);
    if (!rc && (lua_type(L, -1) != LUA_TSTRING ||
                strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1))) {
      rc = load_error(ld, s->line,
                      "step '%s': catch['%s'] must name a step, got %s",
                      s->name, c->code ? c->code : "*", luaL_typename(L, -1));
    } else if (!rc && strcmp(lua_tostring(L, -1), s->name) == 0) {
      rc = load_error(ld, s->line,
                      "step '%s': catch['%s'] names the step itself (its "
                      "retries are what runs it again)",
                      s->name, c->code ? c->code : "*");
    } else if (!rc && !(c->step = strdup(lua_tostring(L, -1)))) {
      rc = load_error(ld, s->line, "out of memory");
    }
    s->ncatches++; /* freed with the step, whatever happened */
    lua_pop(L, 1);
    if (rc) {
      return rc; /* the caller resets the stack */
    }
  }
  return 0;
}

/* retry_on, no_retry and catch. */
static int compile_errors(loader *ld, sy_step *s, int opts) {
  lua_State *L = ld->h->L;
  int on = sy__rawfield(L, opts, "retry_on") != LUA_TNIL;
  int except = sy__rawfield(L, opts, "no_retry") != LUA_TNIL;
  int rc = 0;
  if (on && except) {
    return load_error(ld, s->line,
                      "step '%s': retry_on and no_retry exclude each other "
                      "(retry_on lists the only codes retried)",
                      s->name);
  }
  if (on || except) {
    s->retry_rule = on ? SY_RETRY_ONLY : SY_RETRY_EXCEPT;
    if (on) {
      lua_pop(L, 1); /* no_retry's nil: retry_on's list on top */
    }
    rc = compile_retry_codes(ld, s, on ? "retry_on" : "no_retry");
  }
  if (!rc && sy__rawfield(L, opts, "catch") != LUA_TNIL) {
    rc = compile_catch(ld, s);
  }
  lua_settop(L, opts);
  return rc;
}

int sy_step_retries_code(const sy_step *s, const char *code) {
  int listed = 0;
  for (int i = 0; code && i < s->nretry_codes && !listed; i++) {
    listed = strcmp(s->retry_codes[i], code) == 0;
  }
  switch (s->retry_rule) {
    case SY_RETRY_ONLY:
      return listed;
    case SY_RETRY_EXCEPT:
      return !listed;
    default:
      return 1;
  }
}

const char *sy_step_handler(const sy_step *s, const char *code) {
  const char *any = NULL;
  for (int i = 0; i < s->ncatches; i++) {
    if (!s->catches[i].code) {
      any = s->catches[i].step;
    } else if (code && strcmp(s->catches[i].code, code) == 0) {
      return s->catches[i].step;
    }
  }
  return any;
}

/* A node's own options go to its plugin's compile. */
static int compile_node(loader *ld, sy_step *s, int opts) {
  lua_State *L = ld->h->L;
  char err[512] = "";
  sy_opts o = {L, opts};
  if (s->node->type->compile &&
      s->node->type->compile(s->node->plugin->state, &o, &s->node_data, err,
                             sizeof err)) {
    return load_error(ld, s->line, "step '%s': %s", s->name, err);
  }
  lua_pushvalue(L, opts);
  s->lua->opts = luaL_ref(L, LUA_REGISTRYINDEX);
  return 0;
}

/* Validates the step spec on top of the stack into s. */
static int compile_step(loader *ld, sy_step *s) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  int spec = lua_gettop(L), opts, rc;
  const char *kind;
  const char *const *allowed = task_options, *const *extra = NULL;
  lua_getfield(L, spec, "line");
  s->line = (int)lua_tointeger(L, -1);
  lua_getfield(L, spec, "kind");
  kind = lua_tostring(L, -1);
  lua_getfield(L, spec, "opts");
  opts = lua_gettop(L);
  s->retries = 3;
  s->backoff_initial = 1;
  s->backoff_factor = 2;
  s->backoff_max = 60;
  s->kind = strcmp(kind, "task") == 0 ? SY_STEP_TASK : SY_STEP_NODE;
  if (s->kind == SY_STEP_NODE) {
    s->node = sy_plugins_node(h->plugins, kind);
    SY_ASSERT(s->node); /* dsl_index only makes specs of known types */
    allowed = common_node_options;
    extra = s->node->type->options;
  }
  if (!(rc = check_option_names(ld, s, opts, kind, allowed, extra)) &&
      !(rc = compile_code(ld, s, opts)) &&
      !(rc = compile_policy(ld, s, opts)) &&
      !(rc = compile_errors(ld, s, opts)) && s->kind == SY_STEP_NODE) {
    rc = compile_node(ld, s, opts);
  }
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

/* Node option i that names a step ("" when left out). */
static const char *node_step_ref(sy_lua *h, const sy_step *s, int i) {
  const char *v;
  lua_rawgeti(h->L, LUA_REGISTRYINDEX, s->lua->opts);
  sy__rawfield(h->L, -1, s->node->type->step_options[i]);
  v = lua_tostring(h->L, -1);
  lua_pop(h->L, 2); /* the string stays alive in the options table */
  return v ? v : "";
}

/* The k-th step name s refers to (its next, its node's options that name
 * steps, its catch targets), "" for a node option left out, NULL past the
 * last; what says which option names it. */
static const char *step_ref(sy_lua *h, const sy_step *s, int k, char *what,
                            size_t len) {
  const char *const *so =
      s->kind == SY_STEP_NODE ? s->node->type->step_options : NULL;
  if (s->next && k-- == 0) {
    snprintf(what, len, "next");
    return s->next;
  }
  for (int i = 0; so && so[i]; i++) {
    if (k-- == 0) {
      snprintf(what, len, "%s", so[i]);
      return node_step_ref(h, s, i);
    }
  }
  if (k < s->ncatches) {
    snprintf(what, len, "catch['%s']",
             s->catches[k].code ? s->catches[k].code : "*");
    return s->catches[k].step;
  }
  return NULL;
}

void sy_workflow_edges(sy_lua *h, const sy_workflow *wf, sy_edge_cb cb,
                       void *ud) {
  char what[300];
  for (int i = 0; i < wf->nsteps; i++) {
    const sy_step *s = &wf->steps[i];
    const char *to;
    for (int k = 0; (to = step_ref(h, s, k, what, sizeof what)); k++) {
      if (*to) {
        cb(ud, s->name, to, what);
      }
    }
  }
}

static int check_graph(loader *ld) {
  sy_workflow *wf = ld->wf;
  char *seen = calloc((size_t)wf->nsteps, 1);
  int *stack = malloc(sizeof(int) * (size_t)(wf->nsteps + 1));
  int sp = 0, dynamic = 0, rc = 0;
  char what[SY_CODE_MAX + 16];
  if (!seen || !stack) {
    free(seen);
    free(stack);
    return load_error(ld, 0, "out of memory");
  }
  for (int i = 0; i < wf->nsteps && !rc; i++) {
    const sy_step *s = &wf->steps[i];
    const char *ref;
    for (int k = 0; !rc && (ref = step_ref(ld->h, s, k, what, sizeof what));
         k++) {
      /* "" is a node's option left out; as a next step or a handler it
       * names nothing. */
      if (!*ref && (strcmp(what, "next") == 0 || what[0] == 'c')) {
        rc = load_error(ld, s->line,
                        "step '%s': %s is an empty string, not a step name",
                        s->name, what);
        break;
      }
      if (!*ref || sy_workflow_step(wf, ref)) {
        continue;
      }
      rc = strcmp(what, "next") == 0
               ? load_error(ld, s->line,
                            "step '%s': next step '%s' does not exist", s->name,
                            ref)
               : load_error(ld, s->line,
                            "step '%s': %s names step '%s', which does not "
                            "exist",
                            s->name, what, ref);
    }
  }
  if (rc) {
    free(seen);
    free(stack);
    return rc;
  }
  /* Reachability from start; a `next` function may go anywhere. */
  stack[sp++] = (int)(wf->start - wf->steps);
  seen[stack[0]] = 1;
  while (sp > 0) {
    const sy_step *s = &wf->steps[stack[--sp]];
    const char *ref;
    if (s->lua->next != LUA_NOREF) {
      dynamic = 1;
    }
    for (int k = 0; (ref = step_ref(ld->h, s, k, what, sizeof what)); k++) {
      int j;
      if (!*ref) {
        continue;
      }
      j = (int)(sy_workflow_step(wf, ref) - wf->steps);
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

/* A step a node runs in shadow must say it may: a task marked
 * shadow_safe = true (its author vouches that running it on a copy of the
 * vars, beside the instance, harms nothing: no payment taken twice). */
static int check_shadows(loader *ld) {
  const sy_workflow *wf = ld->wf;
  for (int i = 0; i < wf->nsteps; i++) {
    const sy_step *s = &wf->steps[i], *t;
    const char *name;
    if (s->kind != SY_STEP_NODE || !s->node->type->shadow_step ||
        !(name = s->node->type->shadow_step(s->node->plugin->state,
                                            s->node_data))) {
      continue;
    }
    if (!(t = sy_workflow_step(wf, name))) {
      return load_error(ld, s->line,
                        "step '%s': shadow runs step '%s', which does not "
                        "exist",
                        s->name, name);
    }
    if (t->kind != SY_STEP_TASK || !t->shadow_safe) {
      return load_error(ld, s->line,
                        "step '%s': shadow runs step '%s', which is not a "
                        "task marked shadow_safe = true (%s:%d)",
                        s->name, name, ld->path, t->line);
    }
  }
  return 0;
}

static const char *const workflow_options[] = {"name", "start", "steps",
                                               "description", NULL};

/* The workflow's options and name (opts at the given index). */
static int compile_header(loader *ld, int opts, int line) {
  lua_State *L = ld->h->L;
  sy_workflow *wf = ld->wf;
  lua_pushnil(L);
  while (lua_next(L, opts)) {
    const char *k;
    lua_pop(L, 1);
    k = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "?";
    if (!in_list(workflow_options, k)) {
      lua_pop(L, 1);
      return load_error(ld, line,
                        "unknown workflow option '%s' (expected name, start, "
                        "steps, description)",
                        k);
    }
  }
  sy__rawfield(L, opts, "name");
  if (lua_type(L, -1) != LUA_TSTRING || lua_rawlen(L, -1) == 0 ||
      strlen(lua_tostring(L, -1)) != lua_rawlen(L, -1)) {
    return load_error(ld, line,
                      "workflow name must be a non-empty string (no NUL)");
  }
  if (!(wf->name = strdup(lua_tostring(L, -1)))) {
    return load_error(ld, line, "out of memory");
  }
  lua_pop(L, 1);
  for (const char *c = wf->name; *c; c++) {
    if (!(*c == '_' || *c == '-' || *c == '.' || (*c >= '0' && *c <= '9') ||
          (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))) {
      return load_error(ld, line,
                        "workflow name '%s' may only use letters, digits, "
                        "'_', '-' and '.'",
                        wf->name);
    }
  }
  return 0;
}

/* The steps table on top of the stack: names and lines first (so errors
 * come in file order), then each step compiled. */
static int compile_steps(loader *ld, int line) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  sy_workflow *wf = ld->wf;
  int n = 0, rc = 0;
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
    if (!s->name || !(s->lua = malloc(sizeof *s->lua))) {
      lua_pop(L, 2);
      return load_error(ld, line, "out of memory");
    }
    s->lua->run = s->lua->next = s->lua->opts = LUA_NOREF;
    lua_getfield(L, -1, "line");
    s->line = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
    wf->nsteps++;
  }
  qsort(wf->steps, (size_t)wf->nsteps, sizeof *wf->steps, by_step_line);
  for (int i = 0; i < wf->nsteps && !rc; i++) {
    sy__rawfield(L, -1, wf->steps[i].name);
    rc = compile_step(ld, &wf->steps[i]);
    lua_pop(L, 1);
  }
  qsort(wf->steps, (size_t)wf->nsteps, sizeof *wf->steps, by_step_name);
  return rc;
}

/* Turns the workflow spec on top of the stack into ld->wf. */
static int compile_workflow(loader *ld) {
  lua_State *L = ld->h->L;
  sy_workflow *wf = ld->wf;
  int spec = lua_gettop(L), opts, line, rc;
  const char *start;
  lua_getfield(L, spec, "line");
  line = wf->line = (int)lua_tointeger(L, -1);
  lua_getfield(L, spec, "opts");
  opts = lua_gettop(L);
  if ((rc = compile_header(ld, opts, line))) {
    return rc;
  }
  sy__rawfield(L, opts, "steps");
  if ((rc = compile_steps(ld, line))) {
    return rc;
  }
  sy__rawfield(L, opts, "start");
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
  rc = check_graph(ld);
  return rc ? rc : check_shadows(ld);
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

/* Runs the file in a fresh sandbox, under the limits; leaves the chunk,
 * its environment and the spec it returned on the stack. */
static int run_file(loader *ld, const char *source, size_t len) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  char chunkname[LUA_IDSIZE + 1];
  char msg[900];
  int env;
  snprintf(chunkname, sizeof chunkname, "@%s", sy__chunk_base(ld->path));
  if (luaL_loadbufferx(L, source, len, chunkname, "t") != LUA_OK) {
    /* Lua's message already reads file:line: what. */
    sy__error_message(L, ld->path, ld->diag->error, sizeof ld->diag->error,
                      NULL);
    return SY_ELOAD;
  }
  sy__push_sandbox(h);
  env = lua_gettop(L);
  lua_pushvalue(L, env);
  lua_setupvalue(L, -3, 1);
  lua_pushvalue(L, -2); /* the chunk, to call: chunk, env, chunk */
  sy__limits_on(h, L, h->instructions);
  if (lua_pcall(L, 0, 1, 0) == LUA_OK) {
    sy__limits_off(h, L);
    if (spec_is(h, L, -1, &h->workflow_mt)) {
      return 0;
    }
    return load_error(ld, 0,
                      "the file must return sy.workflow{...}, it returned %s",
                      luaL_typename(L, -1));
  }
  sy__limits_off(h, L);
  sy__error_message(L, ld->path, msg, sizeof msg, NULL);
  /* Errors raised by the DSL carry no position: add the file's. */
  if (strncmp(msg, ld->path, strlen(ld->path)) == 0) {
    snprintf(ld->diag->error, sizeof ld->diag->error, "%s", msg);
    return SY_ELOAD;
  }
  return load_error(ld, 0, "%s", msg);
}

/* Validation reads tables the file made: it runs protected and under the
 * budget, so an error or a loop there is a load error too. */
static int compile_spec(loader *ld) {
  sy_lua *h = ld->h;
  lua_State *L = h->L;
  char msg[900];
  int rc;
  lua_pushcfunction(L, compile_protected);
  lua_pushlightuserdata(L, ld);
  lua_pushvalue(L, -3); /* the spec */
  sy__limits_on(h, L, h->instructions);
  rc = lua_pcall(L, 2, 0, 0);
  sy__limits_off(h, L);
  if (rc == LUA_OK) {
    return ld->rc;
  }
  sy__error_message(L, ld->path, msg, sizeof msg, NULL);
  lua_pop(L, 1);
  if (!ld->diag->error[0]) {
    load_error(ld, ld->wf->line, "%s", msg);
  }
  return SY_ELOAD;
}

int sy_workflow_load(sy_lua *h, const char *path, const char *source,
                     size_t len, sy_workflow **out, sy_diag *diag) {
  lua_State *L = h->L;
  int top = lua_gettop(L), rc;
  char hash[65] = "";
  loader ld = {h, path, diag, NULL, 0};
  diag->error[0] = diag->warnings[0] = '\0';
  if (!(ld.wf = calloc(1, sizeof *ld.wf))) {
    return load_error(&ld, 0, "out of memory");
  }
  if ((rc = run_file(&ld, source, len)) || (rc = compile_spec(&ld))) {
    goto fail;
  }
  /* The environment is read-only from now on. */
  lua_getmetatable(L, top + 2);
  lua_pushboolean(L, 0);
  lua_setfield(L, -2, "__sy_loading");
  lua_pop(L, 1);
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
    if (s->lua) {
      luaL_unref(h->L, LUA_REGISTRYINDEX, s->lua->run);
      luaL_unref(h->L, LUA_REGISTRYINDEX, s->lua->next);
      luaL_unref(h->L, LUA_REGISTRYINDEX, s->lua->opts);
      free(s->lua);
    }
    if (s->node && s->node_data && s->node->type->free_node) {
      s->node->type->free_node(s->node->plugin->state, s->node_data);
    }
    for (int k = 0; k < s->nretry_codes; k++) {
      free(s->retry_codes[k]);
    }
    for (int k = 0; k < s->ncatches; k++) {
      free(s->catches[k].code);
      free(s->catches[k].step);
    }
    free(s->retry_codes);
    free(s->catches);
    free(s->name);
    free(s->next);
  }
  free(wf->steps);
  free(wf->name);
  free(wf->hash);
  free(wf->path);
  free(wf->source);
  free(wf);
}

/* What a node's compile reads. */
void sy__push_opt_path(lua_State *L, int idx, const char *path) {
  lua_pushvalue(L, idx);
  while (*path) {
    size_t n = strcspn(path, ".");
    char seg[128], *end;
    long i;
    if (!lua_istable(L, -1) || n >= sizeof seg) {
      lua_pop(L, 1);
      lua_pushnil(L);
      return;
    }
    memcpy(seg, path, n);
    seg[n] = '\0';
    i = strtol(seg, &end, 10);
    if (n && !*end && i > 0) {
      lua_rawgeti(L, -1, i);
    } else {
      sy__rawfield(L, -1, seg);
    }
    lua_remove(L, -2);
    path += n + (path[n] == '.');
  }
}

int sy_opts_get(sy_opts *o, const char *key, sy_value *out) {
  sy__push_opt_path(o->L, o->idx, key);
  sy__read_value(o->L, -1, out);
  /* Strings stay valid: the options table still holds them. */
  lua_pop(o->L, 1);
  return 0;
}

const char *sy_opts_unknown(sy_opts *o, const char *path,
                            const char *const *allowed) {
  lua_State *L = o->L;
  const char *bad = NULL;
  sy__push_opt_path(L, o->idx, path);
  if (lua_istable(L, -1)) {
    lua_pushnil(L);
    while (!bad && lua_next(L, -2)) {
      if (lua_type(L, -2) != LUA_TSTRING) {
        bad = "?";
      } else if (!in_list(allowed, lua_tostring(L, -2))) {
        bad = lua_tostring(L, -2); /* held by the options table */
      }
      lua_pop(L, 1);
    }
    if (bad) {
      lua_pop(L, 1); /* the key lua_next left */
    }
  }
  lua_pop(L, 1);
  return bad;
}
