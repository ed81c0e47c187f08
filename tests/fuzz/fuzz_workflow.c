/* fuzz_workflow.c: libFuzzer target for the workflow loader. An input is
 * the source of a workflow file; sy_workflow_load runs it in the sandbox and
 * validates what it returns, with choose_version's node type available so
 * `sy.choose_version{}` specs reach the plugin's compile as well.
 *
 * Every input gets a fresh Lua host (over one engine whose plugins are
 * initialized once), so a finding reproduces from its input alone. The
 * input is loaded twice into that host, the second time while the first
 * definition is still alive, as an engine holds several. The host's limits
 * must bound each load: the instruction budget stops endless loops, the
 * memory cap stops bombs; whatever escapes them shows as a libFuzzer
 * timeout or out-of-memory. */
#include "fuzz.h"
#include "lua_int.h" /* white-box: a step's Lua values */

static sy_engine *wf_engine;

int sy_fuzz_workflow_init(void) {
  return sy_fuzz_engine_open(&wf_engine);
}

void sy_fuzz_workflow_fini(void) {
  sy_engine_close(wf_engine);
  wf_engine = NULL;
}

static int wf_name_char(char c) {
  return c == '_' || c == '-' || c == '.' || (c >= '0' && c <= '9') ||
         (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

/* What a load must guarantee, whatever the source. */
static void wf_check(int rc, const sy_workflow *wf, const sy_diag *diag,
                     const uint8_t *data, size_t size) {
  SY_FUZZ_CHECK(memchr(diag->error, '\0', sizeof diag->error) != NULL,
                "diag.error is not terminated");
  SY_FUZZ_CHECK(memchr(diag->warnings, '\0', sizeof diag->warnings) != NULL,
                "diag.warnings is not terminated");
  if (rc) {
    SY_FUZZ_CHECK(rc < 0, "rc %d", rc);
    SY_FUZZ_CHECK(wf == NULL, "the out-parameter was set on failure");
    SY_FUZZ_CHECK(diag->error[0] != '\0', "failed (rc %d) without a message",
                  rc);
    return;
  }
  SY_FUZZ_CHECK(wf != NULL, "no definition on success");
  SY_FUZZ_CHECK(diag->error[0] == '\0', "error on success: %s", diag->error);
  SY_FUZZ_CHECK(wf->name && wf->name[0], "empty name");
  for (const char *c = wf->name; *c; c++) {
    SY_FUZZ_CHECK(wf_name_char(*c), "name '%s'", wf->name);
  }
  SY_FUZZ_CHECK(wf->hash && strlen(wf->hash) == 64, "hash");
  SY_FUZZ_CHECK(wf->path && strcmp(wf->path, "fuzz.lua") == 0, "path");
  SY_FUZZ_CHECK(wf->source_len == size &&
                    (size == 0 || memcmp(wf->source, data, size) == 0),
                "source not kept as given");
  SY_FUZZ_CHECK(wf->nsteps > 0 && wf->steps, "%d steps", wf->nsteps);
  SY_FUZZ_CHECK(wf->start >= wf->steps && wf->start < wf->steps + wf->nsteps,
                "start outside the steps");
  for (int i = 0; i < wf->nsteps; i++) {
    const sy_step *s = &wf->steps[i];
    SY_FUZZ_CHECK(s->name != NULL, "step %d has no name", i);
    SY_FUZZ_CHECK(i == 0 || strcmp(wf->steps[i - 1].name, s->name) < 0,
                  "steps not sorted and unique at '%s'", s->name);
    SY_FUZZ_CHECK(sy_workflow_step(wf, s->name) == s, "lookup of '%s'",
                  s->name);
    SY_FUZZ_CHECK(!s->next || sy_workflow_step(wf, s->next),
                  "step '%s': next '%s' does not resolve", s->name, s->next);
    SY_FUZZ_CHECK(s->retries >= 0 && s->retries <= 1000, "retries %d",
                  s->retries);
    SY_FUZZ_CHECK(s->timeout >= 0 && s->backoff_initial >= 0 &&
                      s->backoff_factor >= 1 && s->backoff_max >= 0,
                  "step '%s': timing options out of range", s->name);
    if (s->kind == SY_STEP_TASK) {
      SY_FUZZ_CHECK(s->lua->run != LUA_NOREF && s->lua->run != LUA_REFNIL,
                    "task '%s' without run", s->name);
    } else {
      SY_FUZZ_CHECK(s->kind == SY_STEP_NODE && s->node && s->node->type,
                    "step '%s': kind %d", s->name, (int)s->kind);
      SY_FUZZ_CHECK(s->lua->opts != LUA_NOREF, "node '%s' without options",
                    s->name);
    }
  }
}

void sy_fuzz_workflow_one(const uint8_t *data, size_t size) {
  sy_lua *lua = NULL;
  sy_workflow *first = NULL, *second = NULL;
  /* On the heap and exactly sized, so ASan sees writes past the end. */
  sy_diag *diag = malloc(sizeof *diag);
  int rc;
  SY_FUZZ_CHECK(diag != NULL, "out of memory");
  SY_FUZZ_CHECK(sy_fuzz_lua_new(sy_engine_plugins(wf_engine), &lua) == 0,
                "cannot create a Lua host");
  rc =
      sy_workflow_load(lua, "fuzz.lua", (const char *)data, size, &first, diag);
  wf_check(rc, first, diag, data, size);
  if (rc == 0) {
    rc = sy_workflow_load(lua, "fuzz.lua", (const char *)data, size, &second,
                          diag);
    wf_check(rc, second, diag, data, size);
    SY_FUZZ_CHECK(rc != 0 || strcmp(first->hash, second->hash) == 0,
                  "same source, two hashes");
  }
  sy_workflow_free(lua, second);
  sy_workflow_free(lua, first);
  sy_lua_free(lua);
  free(diag);
}

SY_FUZZ_ENTRY(workflow)
