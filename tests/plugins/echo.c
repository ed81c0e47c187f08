/* A test plugin that exercises the whole plugin ABI: a node type that
 * completes now or later (on a libuv timer), a ctx function, a CLI command,
 * its own table written in the engine's transaction, an event hook, and a
 * memo for fresh instances (it holds the instance's id, which the event
 * hook records, so a test sees which memo reached which event). */
#include <libpq-fe.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <switchyard/plugin.h>

typedef struct echo {
  const sy_api *api;
  sy_engine *e;
  sy_stmt *insert; /* into echo_events */
  sy_stmt *shadow; /* into echo_shadows */
} echo;

typedef struct echo_node {
  char *then;
  char *shadow; /* a step to run in shadow, or NULL */
  int shadow_timeout_ms;
  int compare; /* has a `compare` option: a var list or a function */
  int delay_ms;
  int fail;
  int has_when;
} echo_node;

typedef struct pending {
  uv_timer_t timer;
  echo *p;
  sy_call *call;
  char *result; /* next step (node) or JSON (ctx fn) */
  int is_fn;
  int cancelled;
} pending;

static const char *const node_options[] = {
    "then",   "delay_ms",          "fail",    "when",
    "shadow", "shadow_timeout_ms", "compare", NULL};
static const char *const node_step_options[] = {"then", NULL};

static int echo_init(const sy_api *api, sy_engine *e, void **state, char *err,
                     size_t errlen) {
  /* seq: the order events came in (SQLite's rowid; an identity column on
   * PostgreSQL). */
  static const sy_sql table = {
      "CREATE TABLE IF NOT EXISTS echo_events(seq INTEGER PRIMARY KEY, "
      "instance_id INTEGER, type INTEGER, step TEXT, fresh INTEGER, "
      "memo INTEGER, code TEXT)",
      "CREATE TABLE IF NOT EXISTS echo_events(seq BIGINT GENERATED ALWAYS "
      "AS IDENTITY PRIMARY KEY, instance_id INTEGER, type INTEGER, "
      "step TEXT, fresh INTEGER, memo INTEGER, code TEXT)"};
  static const sy_sql insert = {
      "INSERT INTO echo_events(instance_id, type, step, fresh, memo, code) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
      NULL};
  /* Shadow reports, as they came: each side's step, status, vars, error;
   * the compare's verdict and detail. */
  static const sy_sql shadows = {
      "CREATE TABLE IF NOT EXISTS echo_shadows(seq INTEGER PRIMARY KEY, "
      "instance_id INTEGER, recorded_at INTEGER, p_step TEXT, p_status "
      "INTEGER, p_vars TEXT, p_error TEXT, c_step TEXT, c_status INTEGER, "
      "c_vars TEXT, c_error TEXT, verdict INTEGER, detail TEXT)",
      "CREATE TABLE IF NOT EXISTS echo_shadows(seq BIGINT GENERATED ALWAYS "
      "AS IDENTITY PRIMARY KEY, instance_id BIGINT, recorded_at BIGINT, "
      "p_step TEXT, p_status INTEGER, p_vars TEXT, p_error TEXT, c_step TEXT, "
      "c_status INTEGER, c_vars TEXT, c_error TEXT, verdict INTEGER, "
      "detail TEXT)"};
  static const sy_sql shadow = {
      "INSERT INTO echo_shadows(instance_id, recorded_at, p_step, p_status, "
      "p_vars, p_error, c_step, c_status, c_vars, c_error, verdict, detail) "
      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
      NULL};
  echo *p = calloc(1, sizeof *p);
  if (!p) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  p->api = api;
  p->e = e;
  if (api->exec(e, &table) || api->exec(e, &shadows) ||
      !(p->insert = api->prepare(e, &insert)) ||
      !(p->shadow = api->prepare(e, &shadow))) {
    snprintf(err, errlen, "%s", api->errmsg(e));
    free(p);
    return -1;
  }
  *state = p;
  return 0;
}

static void echo_fini(void *state) {
  echo *p = state;
  sy_stmt_finalize(p->insert);
  sy_stmt_finalize(p->shadow);
  free(p);
}

static int compile(void *plugin, sy_opts *o, void **data, char *err,
                   size_t errlen) {
  echo *p = plugin;
  sy_value v;
  echo_node *n = calloc(1, sizeof *n);
  p->api->opt_get(o, "then", &v);
  if (v.type != SY_VAL_STRING) {
    snprintf(err, errlen, "then must name a step");
    free(n);
    return -1;
  }
  n->then = strdup(v.str);
  p->api->opt_get(o, "delay_ms", &v);
  n->delay_ms = v.type == SY_VAL_NUMBER ? (int)v.number : -1;
  p->api->opt_get(o, "fail", &v);
  n->fail = v.type == SY_VAL_BOOLEAN && v.boolean;
  p->api->opt_get(o, "when", &v);
  n->has_when = v.type == SY_VAL_FUNCTION;
  p->api->opt_get(o, "shadow", &v);
  n->shadow = v.type == SY_VAL_STRING ? strdup(v.str) : NULL;
  p->api->opt_get(o, "shadow_timeout_ms", &v);
  n->shadow_timeout_ms = v.type == SY_VAL_NUMBER ? (int)v.number : 1000;
  p->api->opt_get(o, "compare", &v);
  n->compare = v.type == SY_VAL_TABLE || v.type == SY_VAL_FUNCTION;
  *data = n;
  return 0;
}

static void free_node(void *plugin, void *data) {
  echo_node *n = data;
  (void)plugin;
  free(n->then);
  free(n->shadow);
  free(n);
}

/* A shadow's report, recorded in the engine's next transaction. */
static void shadow_report(void *plugin, void *ud, const sy_shadow_report *r) {
  echo *p = plugin;
  sy_stmt *s = p->shadow;
  (void)ud;
  if (p->api->tx_begin(p->e) < 0) {
    return;
  }
  sy_stmt_bind_int(s, 1, r->instance_id);
  sy_stmt_bind_int(s, 2, p->api->now_ms(p->e));
  sy_stmt_bind_text(s, 3, r->primary.step);
  sy_stmt_bind_int(s, 4, r->primary.status);
  sy_stmt_bind_text(s, 5, r->primary.vars_json);
  sy_stmt_bind_text(s, 6, r->primary.error);
  sy_stmt_bind_text(s, 7, r->candidate.step);
  sy_stmt_bind_int(s, 8, r->candidate.status);
  sy_stmt_bind_text(s, 9, r->candidate.vars_json);
  sy_stmt_bind_text(s, 10, r->candidate.error);
  sy_stmt_bind_int(s, 11, r->verdict);
  sy_stmt_bind_text(s, 12, r->detail);
  sy_stmt_step(s);
  sy_stmt_reset(s);
}

static void pending_closed(uv_handle_t *h) {
  pending *pd = h->data;
  free(pd->result);
  free(pd);
}

static void pending_fire(uv_timer_t *t) {
  pending *pd = t->data;
  const sy_api *api = pd->p->api;
  if (pd->cancelled) {
    api->fail(pd->call, "cancelled");
  } else if (pd->is_fn) {
    api->done_json(pd->call, pd->result);
  } else {
    api->done(pd->call, pd->result);
  }
  uv_close((uv_handle_t *)t, pending_closed);
}

static void later(echo *p, sy_call *c, const char *result, int is_fn,
                  int delay_ms) {
  pending *pd = calloc(1, sizeof *pd);
  pd->p = p;
  pd->call = c;
  pd->result = strdup(result);
  pd->is_fn = is_fn;
  uv_timer_init(p->api->loop(p->e), &pd->timer);
  pd->timer.data = pd;
  uv_timer_start(&pd->timer, pending_fire, (uint64_t)delay_ms, 0);
}

/* A fresh instance gets a memo holding its id. */
static void remember(echo *p, sy_call *c) {
  int64_t **memo = p->api->fresh(c) ? (int64_t **)p->api->memo(c) : NULL;
  if (memo && !*memo && (*memo = malloc(sizeof **memo))) {
    **memo = p->api->instance_id(c);
  }
}

static void free_memo(void *plugin, void *memo) {
  (void)plugin;
  free(memo);
}

static void execute(void *plugin, sy_call *c) {
  echo *p = plugin;
  echo_node *n = p->api->node_data(c);
  char json[128];
  int ok = 1;
  remember(p, c);
  if (n->shadow &&
      p->api->shadow(c, n->shadow, n->shadow_timeout_ms / 1000.0,
                     n->compare ? "compare" : NULL, shadow_report, NULL)) {
    p->api->fail(c, "echo node: the engine refused the shadow");
    return;
  }
  if (n->fail) {
    p->api->fail(c, "echo node told to fail");
    return;
  }
  if (n->has_when && p->api->call_predicate(c, "when", &ok) != 0) {
    p->api->fail(c, p->api->call_error(c));
    return;
  }
  snprintf(json, sizeof json, "{\"instance\":%lld,\"ok\":%s}",
           (long long)p->api->instance_id(c), ok ? "true" : "false");
  p->api->var_set_json(c, "echoed", json);
  if (n->delay_ms >= 0) {
    later(p, c, n->then, 0, n->delay_ms);
  } else {
    p->api->done(c, n->then);
  }
}

static void cancel(void *plugin, sy_call *c) {
  (void)plugin;
  (void)c; /* the timer completes the call anyway */
}

/* The instance's step as committed, read on a connection of its own (what
 * another process sees: the database, a file or a postgresql:// URL, is
 * the setting echo.db), as a JSON string. */
static void committed_step(echo *p, sy_call *c, char *json, size_t len) {
  const char *where = p->api->setting(p->e, "echo.db");
  char id[32];
  snprintf(json, len, "null");
  if (!where) {
    return;
  }
  snprintf(id, sizeof id, "%lld", (long long)p->api->instance_id(c));
  if (strncmp(where, "postgres", 8) == 0) {
    PGconn *pg = PQconnectdb(where);
    const char *params[1] = {id};
    PGresult *res =
        PQexecParams(pg, "SELECT step FROM instances WHERE id = $1::bigint", 1,
                     NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
        !PQgetisnull(res, 0, 0)) {
      snprintf(json, len, "\"%s\"", PQgetvalue(res, 0, 0));
    }
    PQclear(res);
    PQfinish(pg);
  } else {
    sqlite3 *db = NULL;
    sqlite3_stmt *s;
    if (sqlite3_open_v2(where, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_prepare_v2(db, "SELECT step FROM instances WHERE id = ?1", -1,
                           &s, NULL) == SQLITE_OK) {
      sqlite3_bind_int64(s, 1, p->api->instance_id(c));
      if (sqlite3_step(s) == SQLITE_ROW && sqlite3_column_text(s, 0)) {
        snprintf(json, len, "\"%s\"", sqlite3_column_text(s, 0));
      }
      sqlite3_finalize(s);
    }
    sqlite3_close(db);
  }
}

/* ctx.echo(arg): returns arg; with arg.delay_ms, after that long; with
 * arg.committed, the instance's step as committed when the call came. */
static void fn_echo(void *plugin, sy_call *c, const char *args) {
  echo *p = plugin;
  const char *d = strstr(args, "\"delay_ms\":");
  if (strstr(args, "\"committed\":true")) {
    char json[300];
    committed_step(p, c, json, sizeof json);
    p->api->done_json(c, json);
  } else if (strstr(args, "\"fail\":true") ||
             p->api->setting(p->e, "echo.fail")) {
    p->api->fail(c, "echo told to fail");
  } else if (d) {
    later(p, c, args, 1, atoi(d + 11));
  } else {
    p->api->done_json(c, args);
  }
}

static int on_event(void *plugin, const sy_event *ev) {
  echo *p = plugin;
  sy_stmt *s = p->insert;
  int rc;
  sy_stmt_bind_int(s, 1, ev->instance_id);
  sy_stmt_bind_int(s, 2, ev->type);
  sy_stmt_bind_text(s, 3, ev->step);
  sy_stmt_bind_int(s, 4, ev->fresh);
  if (ev->memo) {
    sy_stmt_bind_int(s, 5, *(const int64_t *)ev->memo);
  } else {
    sy_stmt_bind_text(s, 5, NULL);
  }
  sy_stmt_bind_text(s, 6, ev->code);
  rc = sy_stmt_step(s);
  sy_stmt_reset(s);
  return rc == SY_DONE ? 0 : -1;
}

static int cmd_echo(void *plugin, int argc, char **argv) {
  (void)plugin;
  for (int i = 1; i < argc; i++) {
    printf("%s%s", i > 1 ? " " : "", argv[i]);
  }
  printf("\n");
  return argc > 1 && strcmp(argv[1], "--bad") == 0 ? 2 : 0;
}

static const sy_node_type nodes[] = {{.name = "echo_node",
                                      .compile = compile,
                                      .free_node = free_node,
                                      .options = node_options,
                                      .step_options = node_step_options,
                                      .execute = execute,
                                      .cancel = cancel},
                                     {0}};
/* echo_safe: the same, and a shadow run may call it. */
static const sy_ctx_fn fns[] = {
    {.name = "echo", .call = fn_echo},
    {.name = "echo_safe", .call = fn_echo, .shadow_ok = 1},
    {0}};
static const sy_command cmds[] = {
    {.name = "echo-cmd", .summary = "print the arguments", .run = cmd_echo},
    {0}};
static const sy_plugin_def def = {.abi = SY_PLUGIN_ABI,
                                  .name = "echo",
                                  .version = "1",
                                  .init = echo_init,
                                  .fini = echo_fini,
                                  .nodes = nodes,
                                  .ctx_fns = fns,
                                  .commands = cmds,
                                  .on_event = on_event,
                                  .free_memo = free_memo};

const sy_plugin_def *sy_plugin_entry(void);
const sy_plugin_def *sy_plugin_entry(void) {
  return &def;
}
