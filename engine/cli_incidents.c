/* The commands about incidents: list them, send an instance back to the
 * step that failed (retry), or end it (cancel). */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
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

/* retry ID and cancel ID. */
static int change(sy__cli *c, int cancel) {
  long long id;
  int rc;
  const char *v, *arg = NULL;
  sy_engine *e;
  while ((rc = sy__cli_next(c, &v)) > 0) {
    if (arg) {
      return sy__cli_usage_error("%s: expected one instance id, got '%s' too",
                                 c->cmd->name, v);
    }
    arg = v;
  }
  if (rc < 0) {
    return SY__EXIT_USAGE;
  }
  if (sy__cli_parse_int(arg, 1, LLONG_MAX, &id)) {
    return sy__cli_usage_error("%s: expected one instance id, got '%s'",
                               c->cmd->name, arg ? arg : "nothing");
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  rc = cancel ? sy_engine_cancel(e, id) : sy_engine_retry(e, id);
  if (rc) {
    rc = sy__cli_fail(e, rc);
  } else {
    printf("instance %lld %s\n", id,
           cancel ? "cancelled" : "will run again at its step");
  }
  sy_engine_close(e);
  return rc;
}

static int cmd_retry(sy__cli *c) {
  return change(c, 0);
}

static int cmd_cancel(sy__cli *c) {
  return change(c, 1);
}

const sy__cli_cmd sy__cli_retry = {
    "retry",
    "ID",
    "send an instance in an incident back to its step, with fresh retries",
    NULL,
    cmd_retry,
    SY__CLI_NEEDS_DB | SY__CLI_WRITES};

const sy__cli_cmd sy__cli_cancel = {
    "cancel", "ID",       "end an instance that no engine is running",
    NULL,     cmd_cancel, SY__CLI_NEEDS_DB | SY__CLI_WRITES};
