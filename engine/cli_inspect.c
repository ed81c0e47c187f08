/* The commands that read instances: status (counts per workflow and
 * state), instances (a listing, paged) and show (one instance, its step
 * history and incidents). */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "plugins.h"

static const char *const all_states[6] = {
    SY_STATE_READY,    SY_STATE_RUNNING,   SY_STATE_WAITING,
    SY_STATE_INCIDENT, SY_STATE_COMPLETED, SY_STATE_CANCELLED};

json_t *sy__cli_instance_json(const sy_instance_row *r) {
  json_error_t je;
  json_t *vars = json_loads(r->vars, 0, &je);
  json_t *caught = r->caught ? json_loads(r->caught, 0, &je) : NULL;
  return json_pack(
      "{s:I, s:s, s:s, s:s?, s:i, s:o, s:I, s:I, s:o?, s:s, s:o?, s:s?, s:o?}",
      "id", (json_int_t)r->id, "workflow", r->workflow, "state", r->state,
      "step", r->step, "attempt", r->attempt, "vars", vars ? vars : json_null(),
      "created_at", (json_int_t)r->created_at, "updated_at",
      (json_int_t)r->updated_at, "ended_at",
      r->ended_at ? json_integer(r->ended_at) : NULL, "definition", r->def_hash,
      "wake_at", r->wake_at ? json_integer(r->wake_at) : NULL, "waiting_for",
      r->wait_signal, "handling", caught);
}

/* ---------------------------------------------------------------------
 * status */

typedef struct status_ctx {
  json_t *j;
  int64_t totals[6];
} status_ctx;

static void status_row(void *ud, const char *workflow, const char *state,
                       int64_t n) {
  status_ctx *s = ud;
  json_t *w = json_object_get(s->j, workflow);
  if (!w) {
    w = json_object();
    for (int i = 0; i < 6; i++) {
      json_object_set_new(w, all_states[i], json_integer(0));
    }
    json_object_set_new(s->j, workflow, w);
  }
  json_object_set_new(w, state, json_integer(n));
  for (int i = 0; i < 6; i++) {
    if (strcmp(state, all_states[i]) == 0) {
      s->totals[i] += n;
    }
  }
}

static void print_status(const status_ctx *s) {
  const char *wf;
  json_t *counts;
  printf("%-24s", "WORKFLOW");
  for (int i = 0; i < 6; i++) {
    printf(" %10s", all_states[i]);
  }
  printf("\n");
  json_object_foreach(s->j, wf, counts) {
    printf("%-24s", wf);
    for (int i = 0; i < 6; i++) {
      printf(" %10lld", (long long)json_integer_value(
                            json_object_get(counts, all_states[i])));
    }
    printf("\n");
  }
  printf("%-24s", "total");
  for (int i = 0; i < 6; i++) {
    printf(" %10lld", (long long)s->totals[i]);
  }
  printf("\n");
}

json_t *sy__cli_status_json(sy_store *st) {
  status_ctx s = {json_object(), {0}};
  if (sy_store_count_by_state(st, status_row, &s)) {
    json_decref(s.j);
    return NULL;
  }
  return s.j;
}

static int cmd_status(sy__cli *c) {
  sy_engine *e;
  status_ctx s = {NULL, {0}};
  const char *v;
  int rc = sy__cli_next(c, &v);
  if (rc) {
    return rc < 0 ? SY__EXIT_USAGE
                  : sy__cli_usage_error("status: unexpected argument '%s'", v);
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  s.j = json_object();
  if (sy_store_count_by_state(sy_engine_store(e), status_row, &s)) {
    rc = sy__cli_store_fail(e);
  } else if (c->json) {
    sy__cli_print_json(json_incref(s.j));
  } else {
    print_status(&s);
  }
  json_decref(s.j);
  sy_engine_close(e);
  return rc;
}

const sy__cli_cmd sy__cli_status = {
    "status", "",         "instances per workflow and state",
    NULL,     cmd_status, SY__CLI_NEEDS_DB};

/* ---------------------------------------------------------------------
 * instances */

#define DEFAULT_PAGE 100

typedef struct list_ctx {
  json_t *arr; /* NULL: print a table */
  int64_t last_id;
  int64_t count;
} list_ctx;

static int list_instance(void *ud, const sy_instance_row *r) {
  list_ctx *l = ud;
  l->count++;
  l->last_id = r->id;
  if (l->arr) {
    json_array_append_new(l->arr, sy__cli_instance_json(r));
  } else {
    char t[32];
    sy__cli_time(r->updated_at, t, sizeof t);
    printf("%-8lld %-20s %-10s %-20s %-7d %s\n", (long long)r->id, r->workflow,
           r->state, r->step ? r->step : "-", r->attempt, t);
  }
  return 0;
}

enum { O_STATE = 256, O_WORKFLOW, O_STEP, O_LIMIT, O_AFTER };

static const sy__cli_opt instances_opts[] = {
    {"state", required_argument, O_STATE, "S",
     "only instances in state S (ready, running, waiting, incident, "
     "completed, cancelled)"},
    {"workflow", required_argument, O_WORKFLOW, "W", "only instances of W"},
    {"step", required_argument, O_STEP, "S", "only instances at step S"},
    {"limit", required_argument, O_LIMIT, "N",
     "at most N instances (the table: 100 unless given; 0: all)"},
    {"after", required_argument, O_AFTER, "ID",
     "instances after ID (the next page)"},
    {NULL, 0, 0, NULL, NULL}};

static int parse_instances(sy__cli *c, sy_instance_filter *f) {
  const char *v;
  long long n;
  int key, ok = 0;
  while ((key = sy__cli_next(c, &v)) > 0) {
    switch (key) {
      case O_STATE:
        for (size_t k = 0; k < 6; k++) {
          ok |= strcmp(v, all_states[k]) == 0;
        }
        if (!ok) {
          return sy__cli_usage_error(
              "--state: expected ready, running, waiting, incident, completed "
              "or cancelled, got '%s'",
              v);
        }
        f->state = v;
        break;
      case O_WORKFLOW:
        f->workflow = v;
        break;
      case O_STEP:
        f->step = v;
        break;
      case O_LIMIT:
        if (sy__cli_parse_int(v, 0, LLONG_MAX, &n)) {
          return sy__cli_usage_error(
              "--limit: expected a count (0 for all), got '%s'", v);
        }
        f->limit = n;
        break;
      case O_AFTER:
        if (sy__cli_parse_int(v, 0, LLONG_MAX, &n)) {
          return sy__cli_usage_error(
              "--after: expected an instance id, got '%s'", v);
        }
        f->after = n;
        break;
      default:
        return sy__cli_usage_error("instances: unexpected argument '%s'", v);
    }
  }
  return key < 0 ? SY__EXIT_USAGE : 0;
}

json_t *sy__cli_instances_json(sy_store *st, const sy_instance_filter *f) {
  list_ctx l = {json_array(), 0, 0};
  if (sy_store_list_instances(st, f, list_instance, &l)) {
    json_decref(l.arr);
    return NULL;
  }
  return l.arr;
}

static int cmd_instances(sy__cli *c) {
  sy_instance_filter f = {.limit = -1};
  list_ctx l = {0};
  sy_engine *e;
  sy_store *st;
  int64_t more = 0;
  int rc;
  if ((rc = parse_instances(c, &f)) || (rc = sy__cli_open(c, &e))) {
    return rc;
  }
  st = sy_engine_store(e);
  /* A table is read by a person: a page of it, unless asked for more.
   * JSON is read by programs, which page when they ask to. */
  if (f.limit < 0) {
    f.limit = c->json ? 0 : DEFAULT_PAGE;
  }
  if (c->json) {
    l.arr = json_array();
  } else {
    printf("%-8s %-20s %-10s %-20s %-7s %s\n", "ID", "WORKFLOW", "STATE",
           "STEP", "ATTEMPT", "UPDATED");
  }
  rc = sy_store_list_instances(st, &f, list_instance, &l);
  if (!rc && !c->json && f.limit > 0 && l.count == f.limit) {
    f.after = l.last_id;
    rc = sy_store_count_instances(st, &f, &more);
  }
  if (rc) {
    rc = sy__cli_store_fail(e);
    json_decref(l.arr);
  } else if (c->json) {
    sy__cli_print_json(l.arr);
  } else if (more) {
    printf("... %lld more (the next page: --after %lld; all: --limit 0)\n",
           (long long)more, (long long)l.last_id);
  }
  sy_engine_close(e);
  return rc;
}

const sy__cli_cmd sy__cli_instances = {
    "instances",
    "[--state S] [--workflow W] [--step S] [--limit N] [--after ID]",
    "list instances, oldest first (a page of 100 unless --limit)",
    instances_opts,
    cmd_instances,
    SY__CLI_NEEDS_DB};

/* ---------------------------------------------------------------------
 * show */

/* A step run: its times, and how long it ran (less than it lasted when it
 * parked: the rest is marked parked). */
static int print_step_run(void *ud, const sy_step_run_row *r) {
  json_t *arr = ud;
  int64_t lasted = r->ended_at - r->started_at;
  if (arr) {
    json_array_append_new(
        arr,
        json_pack("{s:s, s:i, s:I, s:I, s:I, s:I, s:I, s:s, s:s?, s:s?, "
                  "s:s?}",
                  "step", r->step, "attempt", r->attempt, "started_at",
                  (json_int_t)r->started_at, "ended_at",
                  (json_int_t)r->ended_at, "duration_ms", (json_int_t)lasted,
                  "run_ms", (json_int_t)r->run_ms, "parked_ms",
                  (json_int_t)(lasted - r->run_ms), "outcome", r->outcome,
                  "error", r->error, "code", r->code, "caught_by", r->handler));
  } else {
    char t[32], parked[80] = "", code[SY_CODE_MAX + 4] = "", handler[300] = "";
    sy__cli_time(r->started_at, t, sizeof t);
    if (lasted > r->run_ms) {
      snprintf(parked, sizeof parked, " (ran %lld ms, parked %lld ms)",
               (long long)r->run_ms, (long long)(lasted - r->run_ms));
    }
    if (r->code) {
      snprintf(code, sizeof code, " [%s]", r->code);
    }
    if (r->handler) {
      snprintf(handler, sizeof handler, " -> caught by %.256s", r->handler);
    }
    printf("  %s  %-20s attempt %-3d %6lld ms%s  %s%s%s%s%s\n", t, r->step,
           r->attempt, (long long)lasted, parked, r->outcome, code,
           r->error ? ": " : "", r->error ? r->error : "", handler);
  }
  return 0;
}

static int show_row(void *ud, const sy_instance_row *r) {
  json_t **j = ud;
  char t1[32], t2[32];
  if (j) {
    *j = sy__cli_instance_json(r);
    return 1;
  }
  sy__cli_time(r->created_at, t1, sizeof t1);
  sy__cli_time(r->ended_at, t2, sizeof t2);
  printf("instance %lld  workflow %s  (definition %.12s)\n", (long long)r->id,
         r->workflow, r->def_hash);
  printf("state    %s%s%s (attempt %d)\n", r->state, r->step ? " at " : "",
         r->step ? r->step : "", r->attempt);
  printf("created  %s   ended %s\n", t1, t2);
  printf("vars     %s\n", r->vars);
  if (r->caught) {
    printf("handling %s\n", r->caught); /* its step's ctx.error */
  }
  return 1;
}

/* A signal in the instance's inbox: not taken (yet, or ever, if the
 * instance has ended). */
static int print_signal(void *ud, const char *name, const char *vars,
                        int64_t sent_at) {
  json_t *arr = ud;
  char t[32];
  if (arr) {
    json_t *v = json_loads(vars, 0, NULL);
    json_array_append_new(
        arr, json_pack("{s:s, s:o, s:I}", "name", name, "vars",
                       v ? v : json_null(), "sent_at", (json_int_t)sent_at));
    return 0;
  }
  sy__cli_time(sent_at, t, sizeof t);
  printf("  %s  %-20s %s\n", t, name, vars);
  return 0;
}

static int show_history(sy_store *st, int64_t id, json_t *obj) {
  json_t *runs = obj ? json_array() : NULL, *inc = obj ? json_array() : NULL;
  json_t *sig = obj ? json_array() : NULL;
  int rc;
  if (!obj) {
    printf("history\n");
  }
  rc = sy_store_list_step_runs(st, id, print_step_run, runs);
  if (!rc && !obj) {
    printf("incidents\n");
  }
  if (!rc) {
    rc = sy_store_list_incidents(st, 0, id, sy__cli_print_incident,
                                 obj ? inc : NULL);
  }
  if (!rc && !obj) {
    printf("signals queued (not taken)\n");
  }
  if (!rc) {
    rc = sy_store_list_signals(st, id, print_signal, sig);
  }
  if (obj) {
    json_object_set_new(obj, "history", runs);
    json_object_set_new(obj, "incidents", inc);
    json_object_set_new(obj, "signals", sig);
  }
  return rc;
}

/* A plugin's part of an instance (sy_plugins_describe): a member of the
 * document, or text printed. */
typedef struct described {
  json_t *obj; /* NULL: text */
  int failed;
} described;

static void put_described(void *ud, const char *key, const char *text) {
  described *d = ud;
  json_t *v;
  if (!d->obj) {
    fputs(text, stdout);
    return;
  }
  v = key ? json_loads(text, JSON_DECODE_ANY, NULL) : NULL;
  if (!v || json_object_set_new(d->obj, key, v)) {
    d->failed = 1;
  }
}

static int show_plugins(sy_engine *e, int64_t id, json_t *obj) {
  described d = {obj, 0};
  int rc = sy_plugins_describe(sy_engine_plugins(e), id, obj != NULL,
                               put_described, &d);
  return rc ? rc : d.failed ? SY_EPLUGIN : 0;
}

json_t *sy__cli_show_json(sy_engine *e, int64_t id, int plugins, int *found) {
  sy_store *st = sy_engine_store(e);
  json_t *obj = NULL;
  *found = 0;
  if (sy_store_get_instance(st, id, show_row, &obj, found)) {
    json_decref(obj);
    return NULL;
  }
  if (!*found) {
    return json_null();
  }
  if (show_history(st, id, obj) || (plugins && show_plugins(e, id, obj))) {
    json_decref(obj);
    return NULL;
  }
  return obj;
}

static int cmd_show(sy__cli *c) {
  long long id;
  int rc, found = 0;
  const char *v, *arg = NULL;
  sy_engine *e;
  json_t *obj = NULL;
  while ((rc = sy__cli_next(c, &v)) > 0) {
    if (arg) {
      return sy__cli_usage_error("show: expected one instance id, got '%s' too",
                                 v);
    }
    arg = v;
  }
  if (rc < 0) {
    return SY__EXIT_USAGE;
  }
  if (sy__cli_parse_int(arg, 1, LLONG_MAX, &id)) {
    return sy__cli_usage_error("show: expected one instance id, got '%s'",
                               arg ? arg : "nothing");
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  sy_store *st = sy_engine_store(e);
  rc = sy_store_get_instance(st, id, show_row, c->json ? &obj : NULL, &found);
  if (!rc && !found) {
    fprintf(stderr, "switchyard: no instance %lld\n", id);
    sy_engine_close(e);
    return SY__EXIT_USAGE;
  }
  if (!rc) {
    rc = show_history(st, id, obj);
  }
  if (!rc) {
    rc = show_plugins(e, id, obj);
  }
  if (rc) {
    rc = sy__cli_store_fail(e);
    json_decref(obj);
  } else if (obj) {
    sy__cli_print_json(obj);
  }
  sy_engine_close(e);
  return rc;
}

const sy__cli_cmd sy__cli_show = {
    "show", "ID",     "an instance, its step history and incidents",
    NULL,   cmd_show, SY__CLI_NEEDS_DB};
