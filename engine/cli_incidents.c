/* The commands about incidents: list them, send an instance back to the
 * step that failed (retry), or end it (cancel). */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"

int sy__cli_print_incident(void *ud, const sy_incident_row *r) {
  json_t *arr = ud;
  char t[32];
  if (arr) {
    json_array_append_new(
        arr,
        json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:o, s:s?}", "id",
                  (json_int_t)r->id, "instance", (json_int_t)r->instance_id,
                  "workflow", r->workflow, "step", r->step, "error", r->error,
                  "raised_at", (json_int_t)r->raised_at, "resolved_at",
                  r->resolved_at ? json_integer(r->resolved_at) : json_null(),
                  "resolution", r->resolution));
    return 0;
  }
  sy__cli_time(r->raised_at, t, sizeof t);
  printf("%-6lld %-9lld %-18s %-18s %s  %s", (long long)r->id,
         (long long)r->instance_id, r->workflow, r->step, t, r->error);
  if (r->resolution) {
    printf("  [%s]", r->resolution);
  }
  printf("\n");
  return 0;
}

json_t *sy__cli_incidents_json(sy_store *st, int all) {
  json_t *arr = json_array();
  if (sy_store_list_incidents(st, !all, 0, sy__cli_print_incident, arr)) {
    json_decref(arr);
    return NULL;
  }
  return arr;
}

enum { O_ALL = 256 };

static const sy__cli_opt incidents_opts[] = {
    {"all", no_argument, O_ALL, NULL, "resolved incidents too"},
    {NULL, 0, 0, NULL, NULL}};

static int cmd_incidents(sy__cli *c) {
  int all = 0, rc, key;
  const char *v;
  sy_engine *e;
  json_t *arr = NULL;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (key != O_ALL) {
      return sy__cli_usage_error("incidents: unexpected argument '%s'", v);
    }
    all = 1;
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  if (c->json) {
    arr = json_array();
  } else {
    printf("%-6s %-9s %-18s %-18s %-20s  %s\n", "ID", "INSTANCE", "WORKFLOW",
           "STEP", "RAISED", "ERROR");
  }
  if (sy_store_list_incidents(sy_engine_store(e), !all, 0,
                              sy__cli_print_incident, arr)) {
    rc = sy__cli_store_fail(e);
    json_decref(arr);
  } else if (arr) {
    sy__cli_print_json(arr);
  }
  sy_engine_close(e);
  return rc;
}

const sy__cli_cmd sy__cli_incidents = {
    "incidents",
    "[--all]",
    "open incidents (with --all, resolved ones too)",
    incidents_opts,
    cmd_incidents,
    SY__CLI_NEEDS_DB};

/* cancel ID */
static int cmd_cancel(sy__cli *c) {
  long long id;
  int rc;
  const char *v, *arg = NULL;
  sy_engine *e;
  while ((rc = sy__cli_next(c, &v)) > 0) {
    if (arg) {
      return sy__cli_usage_error(
          "cancel: expected one instance id, got '%s' "
          "too",
          v);
    }
    arg = v;
  }
  if (rc < 0) {
    return SY__EXIT_USAGE;
  }
  if (sy__cli_parse_int(arg, 1, LLONG_MAX, &id)) {
    return sy__cli_usage_error("cancel: expected one instance id, got '%s'",
                               arg ? arg : "nothing");
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  if ((rc = sy_engine_cancel(e, id))) {
    rc = sy__cli_fail(e, rc);
  } else {
    printf("instance %lld cancelled\n", id);
  }
  sy_engine_close(e);
  return rc;
}

/* retry: by id, or in bulk; plugins add options of their own
 * (sy_plugin_def.retry_options), keys O_PLUGIN and up. */
enum {
  O_ALL_INCIDENTS = 300,
  O_WORKFLOW,
  O_STEP,
  O_BATCH,
  O_DRY_RUN,
  O_PLUGIN = 400
};
#define MAX_RETRY_OPTS 24

#define MAX_IDS 10000
#define DEFAULT_BATCH 500

static const sy__cli_opt retry_opts[] = {
    {"all", no_argument, O_ALL_INCIDENTS, NULL,
     "every instance in an incident (that the options below select)"},
    {"workflow", required_argument, O_WORKFLOW, "W", "with --all: of W only"},
    {"step", required_argument, O_STEP, "S", "with --all: at step S only"},
    {"batch", required_argument, O_BATCH, "N",
     "with --all: N instances per transaction (500)"},
    {"dry-run", no_argument, O_DRY_RUN, NULL,
     "change nothing; say which instances it would retry"},
    {NULL, 0, 0, NULL, NULL}};

typedef struct retry_args {
  int all, dry_run;
  sy_instance_filter f;
  long long batch;
  int64_t *ids;
  int n;
} retry_args;

/* The options of retry, the plugins' after its own (keys O_PLUGIN on). */
typedef struct opt_table {
  sy__cli_opt v[MAX_RETRY_OPTS + 8];
  int n;
} opt_table;

static void add_plugin_option(void *ud, const char *name) {
  opt_table *t = ud;
  if (t->n < MAX_RETRY_OPTS + 7) {
    t->v[t->n] = (sy__cli_opt){name, required_argument, O_PLUGIN + t->n, "V",
                               "a plugin's"};
    t->n++;
  }
}

/* Parses retry's arguments, the plugins' options (e's) among them, which
 * are handed to the plugins as they come. */
static int parse_retry(sy__cli *c, sy_engine *e, retry_args *a) {
  opt_table t = {.n = 0};
  sy__cli_cmd cmd = *c->cmd;
  const sy__cli_cmd *was = c->cmd;
  const char *v;
  long long id;
  int key;
  for (; retry_opts[t.n].name; t.n++) {
    t.v[t.n] = retry_opts[t.n];
  }
  sy_engine_retry_options(e, add_plugin_option, &t);
  t.v[t.n] = (sy__cli_opt){NULL, 0, 0, NULL, NULL};
  cmd.opts = t.v;
  c->cmd = &cmd;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (key >= O_PLUGIN) {
      if (sy_engine_set_retry_option(e, t.v[key - O_PLUGIN].name, v)) {
        c->cmd = was;
        return sy__cli_fail(e, SY_EINVAL);
      }
      continue;
    }
    switch (key) {
      case O_ALL_INCIDENTS:
        a->all = 1;
        break;
      case O_WORKFLOW:
        a->f.workflow = v;
        break;
      case O_STEP:
        a->f.step = v;
        break;
      case O_BATCH:
        if (sy__cli_parse_int(v, 1, 100000, &a->batch)) {
          return sy__cli_usage_error(
              "retry: --batch: expected 1 to 100000 instances, got '%s'", v);
        }
        break;
      case O_DRY_RUN:
        a->dry_run = 1;
        break;
      default:
        if (sy__cli_parse_int(v, 1, LLONG_MAX, &id)) {
          return sy__cli_usage_error("retry: expected an instance id, got '%s'",
                                     v);
        }
        if (a->n == MAX_IDS) {
          return sy__cli_usage_error(
              "retry: more than %d ids; select them with --all instead",
              MAX_IDS);
        }
        a->ids[a->n++] = id;
    }
  }
  c->cmd = was;
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if (sy_engine_check_retry_options(e)) {
    return sy__cli_fail(e, SY_EINVAL);
  }
  if (a->all == !!a->n) {
    return sy__cli_usage_error(
        a->all ? "retry: instance ids or --all, not both"
               : "retry: which instances? (ids, or --all [--workflow W] "
                 "[--step S])");
  }
  if (!a->all && (a->f.workflow || a->f.step || a->batch)) {
    return sy__cli_usage_error(
        "retry: --workflow, --step and --batch go with "
        "--all");
  }
  return 0;
}

/* --all --dry-run: what the selection holds now, by workflow, step and
 * the step it would run again at. */
typedef struct preview {
  json_t *by_step; /* "workflow\tstep\tat" -> count */
  json_t *ids;
  int64_t n;
} preview;

static int preview_row(void *ud, const sy_instance_row *r, const char *at) {
  preview *p = ud;
  char key[800];
  json_t *n;
  snprintf(key, sizeof key, "%s\t%s\t%s", r->workflow, r->step ? r->step : "",
           at ? at : (r->step ? r->step : ""));
  n = json_object_get(p->by_step, key);
  json_object_set_new(p->by_step, key,
                      json_integer((n ? json_integer_value(n) : 0) + 1));
  if (p->n < 1000) {
    json_array_append_new(p->ids, json_integer(r->id));
  }
  p->n++;
  return 0;
}

static int retry_preview(sy__cli *c, sy_engine *e, const retry_args *a) {
  preview p = {json_object(), json_array(), 0};
  json_t *steps = json_array(), *v;
  const char *key;
  int rc;
  if ((rc = sy_engine_retry_preview(e, &a->f, preview_row, &p))) {
    json_decref(p.by_step);
    json_decref(p.ids);
    json_decref(steps);
    return sy__cli_fail(e, rc);
  }
  json_object_foreach(p.by_step, key, v) {
    const char *tab = strchr(key, '\t'), *tab2 = strchr(tab + 1, '\t');
    json_array_append_new(steps, json_pack("{s:s%, s:s%, s:s, s:O}", "workflow",
                                           key, (size_t)(tab - key), "step",
                                           tab + 1, (size_t)(tab2 - tab - 1),
                                           "at", tab2 + 1, "instances", v));
  }
  json_decref(p.by_step);
  if (c->json) {
    sy__cli_print_json(json_pack("{s:b, s:I, s:o, s:o}", "dry_run", 1,
                                 "instances", (json_int_t)p.n, "by_step", steps,
                                 "ids", p.ids));
    return 0;
  }
  printf("would retry %lld instance%s in an incident%s\n", (long long)p.n,
         p.n == 1 ? "" : "s", p.n ? ":" : "");
  for (size_t i = 0; i < json_array_size(steps); i++) {
    json_t *s = json_array_get(steps, i);
    const char *step = json_string_value(json_object_get(s, "step"));
    const char *at = json_string_value(json_object_get(s, "at"));
    printf("  %-20s %-20s %lld%s%s\n",
           json_string_value(json_object_get(s, "workflow")), step,
           (long long)json_integer_value(json_object_get(s, "instances")),
           strcmp(step, at) ? ", to run again at " : "",
           strcmp(step, at) ? at : "");
  }
  if (p.n) {
    printf("  first: ");
    for (size_t i = 0; i < json_array_size(p.ids) && i < 20; i++) {
      printf("%s%lld", i ? " " : "",
             (long long)json_integer_value(json_array_get(p.ids, i)));
    }
    printf("%s\n", p.n > 20 ? " ..." : "");
  }
  json_decref(steps);
  json_decref(p.ids);
  return 0;
}

static void batch_done(void *ud, int64_t n, int64_t last) {
  sy__cli *c = ud;
  if (!c->json) {
    printf("retried %lld (through instance %lld)\n", (long long)n,
           (long long)last);
    fflush(stdout);
  }
}

static int retry_all(sy__cli *c, sy_engine *e, const retry_args *a) {
  int64_t total = 0;
  int rc = sy_engine_retry_all(e, &a->f, a->batch ? a->batch : DEFAULT_BATCH,
                               batch_done, c, &total);
  if (rc) {
    fprintf(stderr,
            "switchyard: %s\n(%lld retried before that, and committed; the "
            "same command takes up the rest)\n",
            sy_engine_errmsg(e), (long long)total);
    return 1;
  }
  if (c->json) {
    sy__cli_print_json(json_pack("{s:I}", "retried", (json_int_t)total));
  } else {
    printf("retried %lld instance%s in an incident%s\n", (long long)total,
           total == 1 ? "" : "s",
           !total       ? ": none matched"
           : total == 1 ? ": an engine runs it again"
                        : ": engines run them again");
  }
  return 0;
}

static int cmd_retry(sy__cli *c) {
  retry_args a = {0};
  sy_engine *e;
  int rc;
  if (!(a.ids = malloc(MAX_IDS * sizeof *a.ids))) {
    return 1;
  }
  /* Open first: the plugins' options are known once they are loaded. */
  if ((rc = sy__cli_open(c, &e))) {
    free(a.ids);
    return rc;
  }
  if ((rc = parse_retry(c, e, &a))) {
    free(a.ids);
    sy_engine_close(e);
    return rc;
  }
  if (a.all) {
    rc = a.dry_run ? retry_preview(c, e, &a) : retry_all(c, e, &a);
  } else if (a.dry_run) {
    /* The same changes, rolled back: what it says is what it would do. */
    rc = sy_engine_retry_check(e, a.ids, a.n);
    if (rc) {
      rc = sy__cli_fail(e, rc);
    } else {
      printf("would retry %d instance%s\n", a.n, a.n == 1 ? "" : "s");
    }
  } else if ((rc = sy_engine_retry(e, a.ids, a.n))) {
    rc = sy__cli_fail(e, rc);
  } else {
    for (int i = 0; i < a.n; i++) {
      printf("instance %lld will run again\n", (long long)a.ids[i]);
    }
  }
  free(a.ids);
  sy_engine_close(e);
  return rc;
}

const sy__cli_cmd sy__cli_retry = {
    "retry",
    "ID... | --all [--workflow W] [--step S] [--batch N]  [--dry-run]",
    "send instances in an incident back to their step, with fresh retries",
    retry_opts,
    cmd_retry,
    SY__CLI_NEEDS_DB | SY__CLI_WRITES};

const sy__cli_cmd sy__cli_cancel = {
    "cancel", "ID",       "end an instance that no engine is running",
    NULL,     cmd_cancel, SY__CLI_NEEDS_DB | SY__CLI_WRITES};
