/* fuzz_jsonl.c: libFuzzer target for the vars `switchyard start` builds
 * from the command line. An input is split into lines, and each line goes
 * through both ways vars arrive:
 *
 *   --from FILE   as a JSON line: sy_vars_check, and when it accepts,
 *                 sy_engine_start inside a transaction that is rolled back
 *                 (what start_from in cli_run.c does per line);
 *   --var ARG     as one argument KEY=VALUE or KEY:=JSON, split by
 *                 sy__cli_var_parse as start splits it, then all the
 *                 lines' arguments together through sy__cli_build_vars, for
 *                 instance 1 and for instance 100000000 (so `{n}` expands).
 *
 * The code under test is the command's own (engine/cli_vars.c).
 *
 * Checked: a line the check accepts can be started; build_vars either
 * refuses with a message or returns vars the check accepts, that the
 * engine can start, and in which every plain KEY=VALUE (the last one of
 * its key) is the string VALUE with {n} expanded. When vars_template
 * renders the vars once, the number put into its text is, byte for byte,
 * what build_vars makes for that instance; when it refuses the vars, so
 * does build_vars, with the same message. */
#include "fuzz.h"

#include "cli.h"

#define JSONL_MAX_VARS 32

static const char jsonl_workflow[] =
    "local sy = require 'switchyard'\n"
    "return sy.workflow {\n"
    "  name = 'fuzz_jsonl',\n"
    "  start = 'noop',\n"
    "  steps = { noop = sy.task { run = function(ctx) end } },\n"
    "}\n";

static sy_engine *jsonl_engine;
static sy_lua *jsonl_lua;
static sy_workflow *jsonl_wf;

void sy_fuzz_jsonl_fini(void) {
  if (jsonl_lua) {
    sy_workflow_free(jsonl_lua, jsonl_wf);
  }
  sy_lua_free(jsonl_lua);
  sy_engine_close(jsonl_engine);
  jsonl_wf = NULL;
  jsonl_lua = NULL;
  jsonl_engine = NULL;
}

int sy_fuzz_jsonl_init(void) {
  sy_diag diag;
  if (sy_fuzz_engine_open(&jsonl_engine)) {
    return -1;
  }
  if (sy_fuzz_lua_new(sy_engine_plugins(jsonl_engine), &jsonl_lua) ||
      sy_workflow_load(jsonl_lua, "fuzz_jsonl.lua", jsonl_workflow,
                       sizeof jsonl_workflow - 1, &jsonl_wf, &diag)) {
    fprintf(stderr, "fuzz_jsonl: %s\n", jsonl_lua ? diag.error : "no host");
    sy_fuzz_jsonl_fini();
    return -1;
  }
  /* The definition row instances refer to, as sy_engine_load_workflow
   * writes it. */
  if (sy_store_put_definition(sy_engine_store(jsonl_engine), jsonl_wf->hash,
                              jsonl_wf->name, jsonl_wf->path, jsonl_wf->source,
                              jsonl_wf->source_len)) {
    fprintf(stderr, "fuzz_jsonl: %s\n",
            sy_store_errmsg(sy_engine_store(jsonl_engine)));
    sy_fuzz_jsonl_fini();
    return -1;
  }
  return 0;
}

static void jsonl_start(const char *vars, const char *how) {
  int64_t id = 0;
  SY_FUZZ_CHECK(sy_engine_start(jsonl_engine, jsonl_wf, vars, &id) == 0,
                "%s: accepted vars do not start: %s\nvars: %.300s", how,
                sy_engine_errmsg(jsonl_engine), vars);
  SY_FUZZ_CHECK(id > 0, "instance id %lld", (long long)id);
}

/* --from: one line as start_from sees it (without its line break). */
static void jsonl_from_line(const uint8_t *p, size_t len) {
  char *line = sy_fuzz_cstr(p, len);
  char err[512];
  int rc;
  /* start_from strips every trailing \r and \n, then skips empty lines;
   * the length is getline's, so a line holding only NULs is not empty. */
  while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
    line[--len] = '\0';
  }
  if (len == 0) {
    free(line);
    return;
  }
  err[0] = '\0';
  rc = sy_vars_check(line, err, sizeof err);
  if (rc) {
    SY_FUZZ_CHECK(err[0] != '\0', "--from line refused silently");
  } else {
    jsonl_start(line, "--from");
  }
  free(line);
}

static void jsonl_build(const sy__cli_var *vars, int nvars, long long n) {
  char err[512];
  char *text;
  json_t *obj;
  err[0] = '\0';
  text = sy__cli_build_vars(vars, nvars, &n, err, sizeof err);
  if (!text) {
    SY_FUZZ_CHECK(err[0] != '\0', "build_vars refused silently");
    return;
  }
  SY_FUZZ_CHECK(sy_vars_check(text, err, sizeof err) == 0,
                "build_vars made vars the check refuses: %s\nvars: %.300s", err,
                text);
  obj = json_loads(text, 0, NULL);
  SY_FUZZ_CHECK(json_is_object(obj), "build_vars made %.300s", text);
  for (int i = 0; i < nvars; i++) {
    int last = 1;
    char *key, *want;
    json_t *got;
    for (int k = i + 1; k < nvars; k++) {
      if (vars[k].keylen == vars[i].keylen &&
          memcmp(vars[k].key, vars[i].key, vars[i].keylen) == 0) {
        last = 0;
      }
    }
    if (!last || vars[i].is_json) {
      continue;
    }
    key = strndup(vars[i].key, vars[i].keylen);
    want = sy__cli_expand(vars[i].value, n);
    SY_FUZZ_CHECK(key && want, "out of memory");
    got = json_object_get(obj, key);
    SY_FUZZ_CHECK(
        json_is_string(got) && strcmp(json_string_value(got), want) == 0,
        "--var %s=%s for instance %lld: vars.%s is not \"%s\" in "
        "%.300s",
        key, vars[i].value, n, key, want, text);
    free(key);
    free(want);
  }
  json_decref(obj);
  jsonl_start(text, "--var");
  free(text);
}

/* start renders the vars once when it can: that must change nothing. */
static void jsonl_template(const sy__cli_var *vars, int nvars) {
  static const long long ns[] = {1, 100000000};
  char err[512], err2[512];
  char *tmpl = sy__cli_vars_template(vars, nvars, err, sizeof err);
  for (size_t i = 0; i < sizeof ns / sizeof *ns; i++) {
    char *want = sy__cli_build_vars(vars, nvars, &ns[i], err2, sizeof err2);
    char *got = tmpl ? sy__cli_expand(tmpl, ns[i]) : NULL;
    if (!tmpl && *err) {
      SY_FUZZ_CHECK(!want && strcmp(err, err2) == 0,
                    "vars_template refused (%s), build_vars did not (%s)", err,
                    want ? want : err2);
    } else if (tmpl) {
      SY_FUZZ_CHECK(want && got && strcmp(got, want) == 0,
                    "template for instance %lld gives %.300s, build_vars "
                    "%.300s",
                    ns[i], got ? got : "(null)", want ? want : err2);
    }
    free(got);
    free(want);
  }
  free(tmpl);
}

void sy_fuzz_jsonl_one(const uint8_t *data, size_t size) {
  sy__cli_var vars[JSONL_MAX_VARS];
  char *args[JSONL_MAX_VARS];
  int nvars = 0;
  size_t at = 0;
  memset(vars, 0, sizeof vars);
  SY_FUZZ_CHECK(sy_store_begin(sy_engine_store(jsonl_engine)) == 0, "begin: %s",
                sy_store_errmsg(sy_engine_store(jsonl_engine)));
  while (at < size) {
    const uint8_t *nl = memchr(data + at, '\n', size - at);
    size_t len = nl ? (size_t)(nl - (data + at)) : size - at;
    jsonl_from_line(data + at, len);
    if (nvars < JSONL_MAX_VARS) {
      /* An argument is a C string: it ends at the first NUL. */
      args[nvars] = sy_fuzz_cstr(data + at, len);
      if (sy__cli_var_parse(args[nvars], &vars[nvars]) == 0) {
        nvars++;
      } else {
        free(args[nvars]);
      }
    }
    at += len + 1;
  }
  jsonl_build(vars, nvars, 1);
  jsonl_build(vars, nvars, 100000000);
  jsonl_template(vars, nvars);
  for (int i = 0; i < nvars; i++) {
    free(args[i]);
  }
  sy_store_rollback(sy_engine_store(jsonl_engine));
}

SY_FUZZ_ENTRY(jsonl)
