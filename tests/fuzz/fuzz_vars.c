/* fuzz_vars.c: libFuzzer target for instance vars: sy_vars_check, the gate
 * every vars text passes before it is stored (`--var`, `--from`), and the
 * path vars take afterwards: into a task's Lua state (sy_task_new), through
 * a step, and back to JSON.
 *
 * The promise checked: vars the gate accepts can always be run. A task takes
 * them, a step that does nothing finishes DONE, and the JSON it writes is
 * accepted by the gate again and is a fixed point (a second step writes the
 * same JSON value). A refusal comes with a message. */
#include <jansson.h>

#include "fuzz.h"

static const char vars_workflow[] =
    "local sy = require 'switchyard'\n"
    "return sy.workflow {\n"
    "  name = 'fuzz_vars',\n"
    "  start = 'noop',\n"
    "  steps = { noop = sy.task { run = function(ctx) end } },\n"
    "}\n";

static sy_plugins *vars_plugins;
static sy_lua *vars_lua;
static sy_workflow *vars_wf;

int sy_fuzz_vars_init(void) {
  return sy_plugins_new(&vars_plugins);
}

void sy_fuzz_vars_fini(void) {
  sy_plugins_free(vars_plugins);
  vars_plugins = NULL;
}

/* A fresh host per input: a finding then reproduces from its input alone,
 * and every allocation of the input is freed by its end (so libFuzzer's
 * leak check has nothing to suspect). */
static void vars_host_new(void) {
  sy_diag diag;
  SY_FUZZ_CHECK(sy_fuzz_lua_new(vars_plugins, &vars_lua) == 0,
                "cannot create a Lua host");
  SY_FUZZ_CHECK(
      sy_workflow_load(vars_lua, "fuzz_vars.lua", vars_workflow,
                       sizeof vars_workflow - 1, &vars_wf, &diag) == 0,
      "%s", diag.error);
}

static void vars_host_free(void) {
  sy_workflow_free(vars_lua, vars_wf);
  sy_lua_free(vars_lua);
  vars_wf = NULL;
  vars_lua = NULL;
}

/* Runs the no-op step on a task holding vars; returns the vars it wrote. */
static char *vars_step(sy_task *t, const char *text) {
  sy_task_result r;
  sy_task_start(t, vars_wf->start, 1, &r);
  SY_FUZZ_CHECK(r.status == SY_TASK_DONE,
                "a no-op step on accepted vars ended with status %d: %s\n"
                "vars: %.300s",
                (int)r.status, r.error, text);
  SY_FUZZ_CHECK(r.next == NULL, "the only step has a next step");
  SY_FUZZ_CHECK(r.vars_json != NULL, "DONE without vars");
  return r.vars_json;
}

void sy_fuzz_vars_one(const uint8_t *data, size_t size) {
  char *text = sy_fuzz_cstr(data, size);
  char err[512], err2[512];
  sy_task *t = NULL;
  char *once, *twice;
  json_t *a, *b;
  int rc;
  err[0] = '\0';
  rc = sy_vars_check(text, err, sizeof err);
  if (rc) {
    SY_FUZZ_CHECK(rc < 0 && err[0] != '\0', "refused (rc %d) silently", rc);
    free(text);
    return;
  }
  vars_host_new();
  rc = sy_task_new(vars_lua, &t, vars_wf, 1, text, err, sizeof err);
  SY_FUZZ_CHECK(rc == 0,
                "sy_vars_check accepts what a task refuses: %s\n"
                "vars: %.300s",
                err, text);
  once = vars_step(t, text);
  rc = sy_vars_check(once, err2, sizeof err2);
  SY_FUZZ_CHECK(rc == 0,
                "a step wrote vars the check refuses: %s\n"
                "in:  %.300s\nout: %.300s",
                err2, text, once);
  sy_task_free(t);
  rc = sy_task_new(vars_lua, &t, vars_wf, 1, once, err, sizeof err);
  SY_FUZZ_CHECK(rc == 0,
                "a task refuses the vars a step wrote: %s\n"
                "vars: %.300s",
                err, once);
  twice = vars_step(t, once);
  /* Equal as JSON: the text need not be canonical (keys come out in the
   * order Lua's table holds them). */
  a = json_loads(once, 0, NULL);
  b = json_loads(twice, 0, NULL);
  SY_FUZZ_CHECK(a && b && json_equal(a, b),
                "vars are not a fixed point of a step:\n"
                "in:    %.300s\nonce:  %.300s\ntwice: %.300s",
                text, once, twice);
  json_decref(a);
  json_decref(b);
  free(twice);
  free(once);
  sy_task_free(t);
  vars_host_free();
  free(text);
}

SY_FUZZ_ENTRY(vars)
