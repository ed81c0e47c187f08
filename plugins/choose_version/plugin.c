/* The choose_version plugin: the `sy.choose_version{}` node, the
 * `ctx.version()` function, the event and commit hooks that keep
 * per-version counters, and the `rollout` and `report` commands, in the
 * versioned table the engine loads; the plugin's state (cv_router) is made
 * and freed here. See cv.h for where each part lives. */
#include <ctype.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

static const char *const node_options[] = {
    "flag",           "key",    "v1", "v2", "strategy", "eligible",
    "on_missing_key", "shadow", NULL};
static const char *const shadow_options[] = {"compare", "timeout", NULL};
/* What a shadow's timeout defaults to, and may be at most (seconds). */
#define SHADOW_TIMEOUT 2.0
#define SHADOW_TIMEOUT_MAX 3600.0
static const char *const node_step_options[] = {"v1", "v2", NULL};

static void cv_fini(void *state) {
  cv_router *r = state;
  if (!r) {
    return;
  }
  cv_planner_stop(r);
  cv_notifier_stop(r);
  cv_discard_counters(r);
  cv_shadow_free(r);
  cv_flags_free(r);
  cv_finalize_all(r);
  free(r);
}

static int cv_init(const sy_api *api, sy_engine *e, void **state, char *err,
                   size_t errlen) {
  cv_router *r = calloc(1, sizeof *r);
  if (!r) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  r->api = api;
  r->e = e;
  if (cv_schema(r, err, errlen) || cv_planner_start(r) ||
      cv_notifier_start(r)) {
    if (!err[0]) {
      snprintf(err, errlen, "out of memory");
    }
    cv_fini(r);
    return -1;
  }
  *state = r;
  return 0;
}

/* Fails call c with the router's last error, saying whose it is. */
static void fail_call(cv_router *r, sy_call *c) {
  char msg[sizeof r->errmsg + 32];
  snprintf(msg, sizeof msg, "choose_version: %s", r->errmsg);
  r->api->fail(c, msg);
}

static int opt_string(cv_router *r, sy_opts *o, const char *key, int required,
                      char **out, char *err, size_t errlen) {
  sy_value v;
  r->api->opt_get(o, key, &v);
  *out = NULL;
  if (v.type == SY_VAL_NIL && !required) {
    return 0;
  }
  if (v.type != SY_VAL_STRING || v.len == 0 || strlen(v.str) != v.len) {
    snprintf(err, errlen, "choose_version: %s must be a non-empty string%s",
             key, v.type == SY_VAL_NIL ? " (it is missing)" : "");
    return -1;
  }
  *out = strdup(v.str);
  return 0;
}

static void free_node(void *plugin, void *data) {
  cv_node *n = data;
  (void)plugin;
  if (!n) {
    return;
  }
  free(n->flag);
  free(n->key);
  free(n->v1);
  free(n->v2);
  free(n);
}

/* shadow = { compare = { "var", ... } | function(ctx, primary, candidate),
 * timeout = seconds }: 0, or -1 with err. Checked here; the engine reads
 * the compare option itself when it compares (sy_api.shadow). */
static int compile_shadow(cv_router *r, sy_opts *o, cv_node *n, char *err,
                          size_t errlen) {
  static const char what[] =
      "choose_version: shadow must be { compare = { \"var\", ... } or "
      "function(ctx, primary, candidate), timeout = seconds }";
  const char *bad;
  sy_value v;
  int count = 0;
  r->api->opt_get(o, "shadow", &v);
  if (v.type == SY_VAL_NIL) {
    return 0;
  }
  if (v.type != SY_VAL_TABLE) {
    snprintf(err, errlen, "%s", what);
    return -1;
  }
  if ((bad = r->api->opt_unknown(o, "shadow", shadow_options))) {
    snprintf(err, errlen,
             "choose_version: shadow has no option '%.64s' (compare, "
             "timeout)",
             bad);
    return -1;
  }
  n->shadow = 1;
  n->shadow_timeout = SHADOW_TIMEOUT;
  r->api->opt_get(o, "shadow.compare", &v);
  if (v.type == SY_VAL_FUNCTION) {
    count = 1;
  } else if (v.type == SY_VAL_TABLE) {
    for (;; count++) {
      char key[48];
      snprintf(key, sizeof key, "shadow.compare.%d", count + 1);
      r->api->opt_get(o, key, &v);
      if (v.type == SY_VAL_NIL) {
        break;
      }
      if (v.type != SY_VAL_STRING || v.len == 0 || strlen(v.str) != v.len) {
        snprintf(err, errlen,
                 "choose_version: shadow.compare[%d] must be a var name",
                 count + 1);
        return -1;
      }
    }
  }
  if (count == 0) {
    snprintf(err, errlen, "%s (compare names no var)", what);
    return -1;
  }
  r->api->opt_get(o, "shadow.timeout", &v);
  if (v.type != SY_VAL_NIL) {
    if (v.type != SY_VAL_NUMBER || !(v.number > 0) ||
        v.number > SHADOW_TIMEOUT_MAX) {
      snprintf(err, errlen,
               "choose_version: shadow.timeout must be seconds, more than 0 "
               "and at most %g",
               SHADOW_TIMEOUT_MAX);
      return -1;
    }
    n->shadow_timeout = v.number;
  }
  return 0;
}

/* The step a node runs in shadow: v2's, when it shadows. */
static const char *shadow_step(void *plugin, const void *data) {
  const cv_node *n = data;
  (void)plugin;
  return n->shadow ? n->v2 : NULL;
}

static int parse_strategy(const char *s, cv_strategy *out) {
  if (!s || strcmp(s, "sticky") == 0) {
    *out = CV_STRATEGY_STICKY;
  } else if (strcmp(s, "random") == 0) {
    *out = CV_STRATEGY_RANDOM;
  } else if (strcmp(s, "every_nth") == 0) {
    *out = CV_STRATEGY_EVERY_NTH;
  } else {
    return -1;
  }
  return 0;
}

static int compile(void *plugin, sy_opts *o, void **data, char *err,
                   size_t errlen) {
  cv_router *r = plugin;
  cv_node *n = calloc(1, sizeof *n);
  char *strategy = NULL, *missing = NULL;
  sy_value v;
  if (!n) {
    snprintf(err, errlen, "out of memory");
    return -1;
  }
  if (opt_string(r, o, "flag", 1, &n->flag, err, errlen) ||
      opt_string(r, o, "v1", 1, &n->v1, err, errlen) ||
      opt_string(r, o, "v2", 1, &n->v2, err, errlen) ||
      opt_string(r, o, "key", 0, &n->key, err, errlen) ||
      opt_string(r, o, "strategy", 0, &strategy, err, errlen) ||
      opt_string(r, o, "on_missing_key", 0, &missing, err, errlen)) {
    goto fail;
  }
  if (!cv_flag_name_valid(n->flag)) {
    snprintf(err, errlen,
             "choose_version: flag '%.128s' is not a name rollout commands "
             "accept (1 to 128 letters, digits, '_', '-', '.')",
             n->flag);
    goto fail;
  }
  if (parse_strategy(strategy, &n->strategy)) {
    snprintf(err, errlen,
             "choose_version: strategy must be \"sticky\", \"random\" or "
             "\"every_nth\", got \"%s\"",
             strategy);
    goto fail;
  }
  if (n->strategy == CV_STRATEGY_STICKY && !n->key) {
    snprintf(err, errlen,
             "choose_version: the sticky strategy needs key (the var that "
             "names the subject)");
    goto fail;
  }
  if (missing && strcmp(missing, "v1") && strcmp(missing, "incident")) {
    snprintf(err, errlen,
             "choose_version: on_missing_key must be \"incident\" or \"v1\"");
    goto fail;
  }
  n->missing_key_v1 = missing && strcmp(missing, "v1") == 0;
  if (strcmp(n->v1, n->v2) == 0) {
    snprintf(err, errlen, "choose_version: v1 and v2 name the same step");
    goto fail;
  }
  r->api->opt_get(o, "eligible", &v);
  if (v.type != SY_VAL_NIL && v.type != SY_VAL_FUNCTION) {
    snprintf(err, errlen, "choose_version: eligible must be a function");
    goto fail;
  }
  n->has_eligible = v.type == SY_VAL_FUNCTION;
  if (compile_shadow(r, o, n, err, errlen)) {
    goto fail;
  }
  free(strategy);
  free(missing);
  *data = n;
  return 0;
fail:
  free(strategy);
  free(missing);
  free_node(plugin, n);
  return -1;
}

/* The forced version for a flag, from settings (tests run every workflow
 * both ways): choose_version.force.<flag>, then choose_version.force. */
static const char *forced(cv_router *r, const char *flag) {
  char key[300];
  const char *v;
  snprintf(key, sizeof key, "choose_version.force.%s", flag);
  v = r->api->setting(r->e, key);
  if (!v) {
    v = r->api->setting(r->e, "choose_version.force");
  }
  if (v && strcmp(v, "v1") && strcmp(v, "v2")) {
    r->api->log(r->e, "ignoring %s=%s: expected v1 or v2", key, v);
    return NULL;
  }
  return v;
}

/* Reads the subject from a var: a string, or a number in its usual form. */
static int subject_of(cv_router *r, sy_call *c, const char *var, char *buf,
                      size_t cap, const char **key, size_t *len) {
  sy_value v;
  r->api->var_get(c, var, &v);
  if (v.type == SY_VAL_STRING) {
    *key = v.str;
    *len = v.len;
    return 0;
  }
  if (v.type == SY_VAL_NUMBER) {
    /* Whole numbers as integers (1e3 keys like "1000"), the rest exactly;
     * the range check keeps the conversion defined. */
    if (v.number > -9007199254740992.0 && v.number < 9007199254740992.0 &&
        v.number == (double)(long long)v.number) {
      snprintf(buf, cap, "%lld", (long long)v.number);
    } else {
      snprintf(buf, cap, "%.17g", v.number);
    }
    *key = buf;
    *len = strlen(buf);
    return 0;
  }
  return v.type == SY_VAL_NIL ? -1 : -2;
}

/* The decision's time, and the instance's step-run totals at that same
 * time, so that the branch's share is exact to the millisecond. */
static void stamp(cv_router *r, sy_call *c, cv_request *req) {
  req->now_ms = r->api->now_ms(r->e);
  r->api->totals(c, req->now_ms, &req->run_ms, &req->reruns);
}

/* A fresh instance's memo slot, where its decisions are kept (NULL for
 * others); 0, or -1 when it could not be had (the call has failed). */
static int memo_of(cv_router *r, sy_call *c, void ***memo) {
  *memo = NULL;
  if (r->api->fresh(c) && !(*memo = r->api->memo(c))) {
    r->api->fail(c, "choose_version: out of memory");
    return -1;
  }
  return 0;
}

static void execute(void *plugin, sy_call *c) {
  cv_router *r = plugin;
  const sy_api *api = r->api;
  cv_node *n = api->node_data(c);
  cv_request req = {.flag = n->flag, .strategy = n->strategy, .eligible = 1};
  cv_decision d;
  char num[64], msg[600];
  const char *force = forced(r, n->flag);
  void **memo;
  if (memo_of(r, c, &memo)) {
    return;
  }
  if (n->key) {
    int rc = subject_of(r, c, n->key, num, sizeof num, &req.key, &req.key_len);
    if (rc && !n->missing_key_v1) {
      snprintf(msg, sizeof msg,
               "choose_version %s: var '%s' %s (a string or a number names "
               "the subject; set on_missing_key = \"v1\" to route such "
               "instances to v1)",
               n->flag, n->key,
               rc == -1 ? "is missing" : "is not a string or a number");
      api->fail(c, msg);
      return;
    }
    if (rc) {
      req.key = NULL;
      req.missing_key = 1; /* a deliberate, recorded V1 */
    }
  }
  if (req.strategy == CV_STRATEGY_RANDOM) {
    req.random = api->random(c);
  }
  stamp(r, c, &req);
  if (n->has_eligible && !req.missing_key && !force) {
    int ok = 0;
    if (api->call_predicate(c, "eligible", &ok)) {
      snprintf(msg, sizeof msg, "choose_version %s: eligible: %s", n->flag,
               api->call_error(c));
      api->fail(c, msg);
      return;
    }
    req.eligible = ok;
  }
  if (cv_decide(r, api->instance_id(c), api->workflow(c), api->step(c), &req,
                force, memo, &d) ||
      (n->shadow && cv_shadow_maybe(r, c, n, &req, &d))) {
    fail_call(r, c);
    return;
  }
  api->done(c, d.version == CV_V2 ? n->v2 : n->v1);
}

/* Lua: ctx.version("flag") -> "v1" | "v2", sticky per instance;
 *      ctx.version{ flag = "f", key = "user_id" } -> sticky per subject. */
static void fn_version(void *plugin, sy_call *c, const char *args) {
  cv_router *r = plugin;
  const sy_api *api = r->api;
  json_error_t je;
  json_t *j = json_loads(args, JSON_DECODE_ANY, &je);
  cv_request req = {.strategy = CV_STRATEGY_STICKY, .eligible = 1};
  cv_decision d;
  void **memo;
  char idbuf[32], num[64], msg[512];
  const char *keyvar = NULL;
  if (json_is_string(j)) {
    req.flag = json_string_value(j);
  } else if (json_is_object(j)) {
    req.flag = json_string_value(json_object_get(j, "flag"));
    keyvar = json_string_value(json_object_get(j, "key"));
  }
  if (!req.flag || !cv_flag_name_valid(req.flag)) {
    api->fail(c,
              "ctx.version: expected a flag name (letters, digits, '_', "
              "'-', '.'), or {flag = ..., key = ...}");
    json_decref(j);
    return;
  }
  if (keyvar) {
    int rc = subject_of(r, c, keyvar, num, sizeof num, &req.key, &req.key_len);
    if (rc) {
      snprintf(msg, sizeof msg, "ctx.version %s: var '%s' %s", req.flag, keyvar,
               rc == -1 ? "is missing" : "is not a string or a number");
      api->fail(c, msg);
      json_decref(j);
      return;
    }
  } else {
    snprintf(idbuf, sizeof idbuf, "%lld", (long long)api->instance_id(c));
    req.key = idbuf;
    req.key_len = strlen(idbuf);
  }
  stamp(r, c, &req);
  if (memo_of(r, c, &memo)) {
    json_decref(j);
    return;
  }
  if (cv_decide(r, api->instance_id(c), api->workflow(c), api->step(c), &req,
                forced(r, req.flag), memo, &d)) {
    fail_call(r, c);
  } else {
    api->done_json(c, d.version == CV_V2 ? "\"v2\"" : "\"v1\"");
  }
  json_decref(j);
}

static void free_memo(void *plugin, void *memo) {
  (void)plugin;
  cv_memo_free(memo);
}

static int on_event(void *plugin, const sy_event *ev) {
  cv_router *r = plugin;
  if (cv_on_event(r, ev)) {
    r->api->log(r->e, "choose_version: %s", r->errmsg);
    return -1;
  }
  return 0;
}

static int before_commit(void *plugin) {
  cv_router *r = plugin;
  if (cv_flush_counters(r) || cv_shadow_flush(r)) {
    r->api->log(r->e, "choose_version: %s", r->errmsg);
    return -1;
  }
  return 0;
}

static void rolled_back(void *plugin) {
  cv_discard_counters(plugin);
  cv_shadow_discard(plugin);
}

/* Edit distance (insertions, deletions, substitutions, and swaps of two
 * neighbours), ignoring case: how far a typed flag name is from one that
 * exists. Names are at most 128 bytes (cv_flag_name_valid). */
static int distance(const char *a, const char *b) {
  size_t n = strlen(a), m = strlen(b);
  int d[3][130];
  if (n > 128 || m > 128) {
    return 1000;
  }
  for (size_t j = 0; j <= m; j++) {
    d[0][j] = (int)j;
  }
  for (size_t i = 1; i <= n; i++) {
    int *row = d[i % 3], *up = d[(i - 1) % 3], *up2 = d[(i + 1) % 3];
    row[0] = (int)i;
    for (size_t j = 1; j <= m; j++) {
      int ca = tolower((unsigned char)a[i - 1]);
      int cb = tolower((unsigned char)b[j - 1]);
      int best = up[j - 1] + (ca != cb);
      best = up[j] + 1 < best ? up[j] + 1 : best;
      best = row[j - 1] + 1 < best ? row[j - 1] + 1 : best;
      if (i > 1 && j > 1 && ca == tolower((unsigned char)b[j - 2]) &&
          tolower((unsigned char)a[i - 2]) == cb && up2[j - 2] + 1 < best) {
        best = up2[j - 2] + 1;
      }
      row[j] = best;
    }
  }
  return d[n % 3][m];
}

/* `check --db`: a node routing on a flag that is not there, or retired,
 * sends every instance to v1 without a word; a typo is the usual cause. */
static void check_node(void *plugin, const void *data, char *warn, size_t len) {
  cv_router *r = plugin;
  const cv_node *n = data;
  sy_stmt *s = cv_stmt(r, CVQ_FLAG_ROW);
  char best[132] = "";
  int rc, best_d = 1000;
  if (!s) {
    snprintf(warn, len, "cannot read flag '%s': %s", n->flag, r->errmsg);
    return;
  }
  sy_stmt_bind_text(s, 1, n->flag);
  rc = sy_stmt_step(s);
  if (rc == SY_ROW && !sy_stmt_column_null(s, 3)) {
    snprintf(warn, len,
             "flag '%s' is retired: every instance goes to v1 (remove the "
             "node, or revive the flag with rollout set --force)",
             n->flag);
  }
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    return;
  }
  if (!(s = cv_stmt(r, CVQ_FLAG_LIST))) {
    return;
  }
  while (sy_stmt_step(s) == SY_ROW) {
    const char *name = sy_stmt_column_text(s, 0);
    int d = distance(n->flag, name);
    if (d < best_d) {
      best_d = d;
      snprintf(best, sizeof best, "%s", name);
    }
  }
  sy_stmt_reset(s);
  /* Close enough to be the one meant: a few edits, fewer than a third of
   * the name. */
  if (best[0] && best_d <= 3 && (size_t)best_d * 3 <= strlen(n->flag)) {
    snprintf(warn, len,
             "no flag '%s'; did you mean '%s'? (until it exists, every "
             "instance goes to v1)",
             n->flag, best);
  } else {
    snprintf(warn, len,
             "no flag '%s' in this database: every instance goes to v1 "
             "until `rollout set %s RATE`",
             n->flag, n->flag);
  }
}

/* The graph's note on the edge to a version: what the report counts of
 * the instances this workflow routed there (the ramp tallies). */
static int edge_note(void *plugin, const void *data, const char *workflow,
                     const char *option, char *note, size_t len) {
  cv_router *r = plugin;
  const cv_node *n = data;
  sy_stmt *s = cv_stmt(r, CVQ_RAMP_TALLIES);
  int64_t routed = 0, with = 0;
  int rc, v2 = strcmp(option, "v2") == 0;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, n->flag);
  sy_stmt_bind_text(s, 2, workflow);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (sy_stmt_column_int(s, 0) == v2) {
      routed += sy_stmt_column_int(s, 2);
      with += sy_stmt_column_int(s, 6);
    }
  }
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  if (routed) {
    snprintf(note, len, "%lld routed\n%lld with incidents (%.1f%%)",
             (long long)routed, (long long)with,
             100.0 * (double)with / (double)routed);
  } else {
    snprintf(note, len, "none routed");
  }
  return 0;
}

static const sy_node_type nodes[] = {{.name = "choose_version",
                                      .compile = compile,
                                      .free_node = free_node,
                                      .options = node_options,
                                      .step_options = node_step_options,
                                      .execute = execute,
                                      .check = check_node,
                                      .edge_note = edge_note,
                                      .shadow_step = shadow_step},
                                     {0}};

static const sy_ctx_fn ctx_fns[] = {{.name = "version", .call = fn_version},
                                    {0}};

static const char *const rollout_creates[] = {"set", NULL};

static const sy_command commands[] = {
    {.name = "rollout",
     .summary = "set, inspect and audit canary rollouts (see rollout --help)",
     .run = cv_cmd_rollout,
     .creates = rollout_creates},
    {.name = "report",
     .summary = "compare v1 and v2 of a flag: incident rates, confidence, "
                "latency, ramp steps",
     .run = cv_cmd_report},
    {0}};

static const sy_plugin_def def = {.abi = SY_PLUGIN_ABI,
                                  .name = "choose_version",
                                  .version = "1.0",
                                  .init = cv_init,
                                  .fini = cv_fini,
                                  .nodes = nodes,
                                  .ctx_fns = ctx_fns,
                                  .commands = commands,
                                  .on_event = on_event,
                                  .before_commit = before_commit,
                                  .free_memo = free_memo,
                                  .rolled_back = rolled_back,
                                  .retry_options = cv_retry_options,
                                  .retry_filter = cv_retry_filter,
                                  .metrics = cv_metrics,
                                  .serve = cv_serve,
                                  .section = cv_section,
                                  .describe = cv_describe,
                                  .page_path = "/flags",
                                  .page_label = "Flags"};

const sy_plugin_def *cv_plugin_def(void) {
  return &def;
}
