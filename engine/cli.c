/* The `switchyard` command: global options, subcommands, and the one place
 * that turns errors into exit codes (2: bad input or usage, 1: failure). */
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "error.h"
#include "testlua.h"

#define EXIT_USAGE 2
#define MAX_SETTINGS 64

typedef struct cli {
  sy_engine_opts o;
  sy_setting settings[MAX_SETTINGS];
  char plugin_dir[4096];
  int json;
  int help;
  /* what is left for the subcommand */
  int argc;
  char **argv;
} cli;

static const char usage_text[] =
    "usage: switchyard [global options] COMMAND [options]\n"
    "\n"
    "commands:\n"
    "  start WORKFLOW [--var k=v | --var k:=JSON]... [--count N] [--from "
    "FILE|-]\n"
    "                      add instances (WORKFLOW: a name in --workflows, or "
    "a .lua path)\n"
    "  run [--until-idle] [--concurrency N]\n"
    "                      run the engine (until SIGINT/SIGTERM, or until "
    "idle)\n"
    "  check WORKFLOW      load and validate a workflow file\n"
    "  instances [--state S] [--workflow W] [--json]\n"
    "  show ID [--json]    an instance and its step history\n"
    "  status [--json]     instances per workflow and state\n"
    "  incidents [--all] [--json]\n"
    "  retry ID            continue an incident's instance at its step\n"
    "  cancel ID           cancel an instance that is not running\n"
    "  lua SCRIPT [ARGS]   run a Lua script with the switchyard.testing "
    "module\n"
    "%s"
    "\n"
    "global options:\n"
    "  --db PATH           database file (default switchyard.db)\n"
    "  --workflows DIR     workflow files (default workflows)\n"
    "  --plugins DIR       plugin modules (default: next to the binary)\n"
    "  --sync full|normal  SQLite synchronous mode (default full)\n"
    "  --set KEY=VALUE     a setting for plugins (repeatable)\n"
    "  --seed N            seed of the engine's random generator\n"
    "  --lua-memory BYTES  memory cap of the Lua state (default 1 GiB)\n"
    "  --step-instructions N  instruction budget per step run (default 50M)\n"
    "  --json              machine-readable output where commands list "
    "things\n"
    "  -h, --help          this help\n";

static void usage(FILE *f, sy_engine *e) {
  char extra[2048] = "";
  size_t used = 0;
  if (e) {
    sy_plugins *p = sy_engine_plugins(e);
    for (int i = 0; i < sy_plugins_command_count(p) && used < sizeof extra;
         i++) {
      const sy_command *c = sy_plugins_command_at(p, i)->cmd;
      used += (size_t)snprintf(extra + used, sizeof extra - used,
                               "  %-19s %s\n", c->name, c->summary);
    }
  }
  fprintf(f, usage_text, extra);
}

__attribute__((format(printf, 1, 2))) static int bad_usage(const char *fmt,
                                                           ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "switchyard: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see switchyard --help)\n");
  va_end(ap);
  return EXIT_USAGE;
}

/* Parses a whole decimal number in [min, max]; no junk, no sign games. */
static int parse_int(const char *s, long long min, long long max,
                     long long *out) {
  char *end;
  long long v;
  if (!s || !*s || *s == ' ' || *s == '+') {
    return -1;
  }
  errno = 0;
  v = strtoll(s, &end, 10);
  if (errno || *end || v < min || v > max) {
    return -1;
  }
  *out = v;
  return 0;
}

static void default_plugin_dir(cli *c) {
  char exe[2048];
  size_t len = sizeof exe;
  struct stat sb;
  const char *env = getenv("SWITCHYARD_PLUGINS");
  if (env && *env) {
    snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s", env);
    return;
  }
  if (uv_exepath(exe, &len) == 0) {
    char *slash = strrchr(exe, '/');
    if (slash) {
      *slash = '\0';
      snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s/plugins", exe);
      if (stat(c->plugin_dir, &sb) == 0) {
        return;
      }
      snprintf(c->plugin_dir, sizeof c->plugin_dir,
               "%s/../lib/switchyard/plugins", exe);
      return;
    }
  }
  c->plugin_dir[0] = '\0';
}

/* Takes the global options out of argv, wherever they stand. */
static int parse_globals(cli *c, int argc, char **argv) {
  int out = 0;
  sy_engine_opts_init(&c->o);
  c->o.settings = c->settings;
  default_plugin_dir(c);
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    long long n;
    if (strcmp(a, "--") == 0) {
      while (i < argc) {
        argv[out++] = argv[i++];
      }
      break;
    }
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      c->help = 1;
    } else if (strcmp(a, "--json") == 0) {
      c->json = 1;
    } else if (strcmp(a, "--db") == 0 || strcmp(a, "--workflows") == 0 ||
               strcmp(a, "--plugins") == 0 || strcmp(a, "--sync") == 0 ||
               strcmp(a, "--set") == 0 || strcmp(a, "--seed") == 0 ||
               strcmp(a, "--lua-memory") == 0 ||
               strcmp(a, "--step-instructions") == 0) {
      if (!v) {
        return bad_usage("%s needs a value", a);
      }
      i++;
      if (strcmp(a, "--db") == 0) {
        if (!*v) {
          return bad_usage("--db: empty path%s", "");
        }
        c->o.db_path = v;
      } else if (strcmp(a, "--workflows") == 0) {
        c->o.workflows_dir = v;
      } else if (strcmp(a, "--plugins") == 0) {
        snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s", v);
      } else if (strcmp(a, "--sync") == 0) {
        if (strcmp(v, "full") == 0) {
          c->o.sync = SY_SYNC_FULL;
        } else if (strcmp(v, "normal") == 0) {
          c->o.sync = SY_SYNC_NORMAL;
        } else {
          return bad_usage("--sync: expected full or normal, got '%s'", v);
        }
      } else if (strcmp(a, "--set") == 0) {
        const char *eq = strchr(v, '=');
        if (!eq || eq == v) {
          return bad_usage("--set: expected KEY=VALUE, got '%s'", v);
        }
        if (c->o.nsettings == MAX_SETTINGS) {
          return bad_usage("--set: at most 64 settings%s", "");
        }
        /* split in place: argv strings are ours to modify */
        argv[i][eq - v] = '\0';
        c->settings[c->o.nsettings++] = (sy_setting){v, eq + 1};
      } else if (strcmp(a, "--seed") == 0) {
        if (parse_int(v, 0, LLONG_MAX, &n)) {
          return bad_usage("--seed: expected a non-negative integer, got '%s'",
                           v);
        }
        c->o.seed = (uint64_t)n;
      } else if (strcmp(a, "--lua-memory") == 0) {
        if (parse_int(v, 1 << 20, LLONG_MAX, &n)) {
          return bad_usage(
              "--lua-memory: expected a byte count of at least 1048576, got "
              "'%s'",
              v);
        }
        c->o.lua_memory = (size_t)n;
      } else {
        if (parse_int(v, 1000, LLONG_MAX, &n)) {
          return bad_usage(
              "--step-instructions: expected an integer >= 1000, got '%s'", v);
        }
        c->o.step_instructions = n;
      }
    } else {
      argv[out++] = argv[i];
    }
  }
  c->o.plugin_dir = c->plugin_dir[0] ? c->plugin_dir : NULL;
  c->argc = out;
  c->argv = argv;
  return 0;
}

/* Commands that only read or change existing instances must not leave an
 * empty database behind a mistyped --db. */
static int need_db(const cli *c) {
  struct stat sb;
  if (strcmp(c->o.db_path, ":memory:") == 0 || stat(c->o.db_path, &sb) == 0) {
    return 0;
  }
  fprintf(stderr, "switchyard: no database at %s (--db)\n", c->o.db_path);
  return EXIT_USAGE;
}

static int open_engine(cli *c, sy_engine **e) {
  char err[1024];
  int rc = sy_engine_open(e, &c->o, err, sizeof err);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", err);
    return rc == SY_EPLUGIN ? 1 : 1;
  }
  return 0;
}

static int fail(sy_engine *e, int rc) {
  const char *msg = sy_engine_errmsg(e);
  /* Store failures leave their message with the store. */
  if (!*msg) {
    msg = sy_store_errmsg(sy_engine_store(e));
  }
  fprintf(stderr, "switchyard: %s\n", *msg ? msg : sy_strerror(rc));
  return rc == SY_ENOTFOUND || rc == SY_ESTATE || rc == SY_EINVAL ? EXIT_USAGE
                                                                  : 1;
}

/* ---------------------------------------------------------------------
 * start */

typedef struct var_arg {
  const char *key;
  size_t keylen;
  const char *value;
  int is_json;
} var_arg;

/* Replaces each {n} in tmpl by n. */
static char *expand(const char *tmpl, long long n) {
  size_t cap = strlen(tmpl) + 1, len = 0;
  char *out = malloc(cap);
  char num[32];
  size_t numlen = (size_t)snprintf(num, sizeof num, "%lld", n);
  for (const char *p = tmpl; out && *p;) {
    if (strncmp(p, "{n}", 3) == 0) {
      if (len + numlen + 1 > cap) {
        char *o2 = realloc(out, cap = (len + numlen + 1) * 2);
        if (!o2) {
          free(out);
          return NULL;
        }
        out = o2;
      }
      memcpy(out + len, num, numlen);
      len += numlen;
      p += 3;
    } else {
      if (len + 2 > cap) {
        char *o2 = realloc(out, cap *= 2);
        if (!o2) {
          free(out);
          return NULL;
        }
        out = o2;
      }
      out[len++] = *p++;
    }
  }
  if (out) {
    out[len] = '\0';
  }
  return out;
}

/* How many {n} expand() replaces in s. */
static size_t count_n(const char *s) {
  size_t k = 0;
  while ((s = strstr(s, "{n}"))) {
    k++;
    s += 3;
  }
  return k;
}

/* Builds the vars of instance *n from the --var arguments; with n NULL,
 * each {n} stays as written. */
static char *build_vars(const var_arg *vars, int nvars, const long long *n,
                        char *err, size_t errlen) {
  json_t *obj = json_object();
  char *text;
  for (int i = 0; i < nvars; i++) {
    char *key = strndup(vars[i].key, vars[i].keylen);
    char *val = n ? expand(vars[i].value, *n) : strdup(vars[i].value);
    json_t *j;
    if (!val || !key) {
      free(key);
      free(val);
      json_decref(obj);
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    if (vars[i].is_json) {
      json_error_t je;
      j = json_loads(val, JSON_DECODE_ANY, &je);
      if (!j) {
        snprintf(err, errlen, "--var %.100s:=%.100s: invalid JSON: %s", key,
                 val, je.text);
        free(key);
        free(val);
        json_decref(obj);
        return NULL;
      }
    } else if (!(j = json_string(val))) {
      snprintf(err, errlen, "--var %.100s: value is not valid UTF-8", key);
      free(key);
      free(val);
      json_decref(obj);
      return NULL;
    }
    free(val);
    if (!json_is_null(j) && json_object_set_new(obj, key, j)) {
      snprintf(err, errlen, "--var %.100s: key is not valid UTF-8", key);
      free(key);
      json_decref(obj);
      return NULL;
    }
    if (json_is_null(j)) {
      json_decref(j); /* null: the var is absent, as in Lua */
    }
    free(key);
  }
  /* The same checks as any other vars (depth, shape). */
  if (sy_vars_check_json(obj, err, errlen)) {
    json_decref(obj);
    return NULL;
  }
  text = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(obj);
  if (!text) {
    snprintf(err, errlen, "out of memory");
  }
  return text;
}

/* The vars of every instance as one text with {n} still in it, when
 * putting the number into that text gives what building each instance's
 * vars would: {n} appears only inside plain string values (the usual
 * u{n}), which render it as written. Escaping never makes or breaks a
 * {n} (its sequences hold no brace), so the text's {n} are exactly those
 * of the values, provided no key holds one and no JSON value renders one
 * (such as "\u007bn}"). NULL with *err empty when that does not hold;
 * NULL with err set when the vars are bad. Building vars costs more than
 * inserting the row; this is once. */
static char *vars_template(const var_arg *vars, int nvars, char *err,
                           size_t errlen) {
  *err = '\0';
  for (int i = 0; i < nvars; i++) {
    char *key = strndup(vars[i].key, vars[i].keylen);
    int n_in_key = !key || count_n(key);
    free(key);
    if (n_in_key) {
      return NULL;
    }
    if (vars[i].is_json) {
      json_t *j;
      char *text;
      int renders_n;
      if (count_n(vars[i].value)) {
        return NULL; /* the number may change the value's shape */
      }
      if (!(j = json_loads(vars[i].value, JSON_DECODE_ANY, NULL))) {
        continue; /* build_vars names the error */
      }
      text = json_dumps(j, JSON_ENCODE_ANY | JSON_COMPACT);
      renders_n = !text || count_n(text);
      free(text);
      json_decref(j);
      if (renders_n) {
        return NULL;
      }
    }
  }
  return build_vars(vars, nvars, NULL, err, errlen);
}

static int start_from(sy_engine *e, const sy_workflow *wf, const char *file,
                      long long *count) {
  FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "r");
  struct stat sb;
  char *line = NULL;
  size_t cap = 0;
  ssize_t len;
  long lineno = 0;
  int rc = 0;
  if (!f) {
    fprintf(stderr, "switchyard: --from %s: %s\n", file, strerror(errno));
    return EXIT_USAGE;
  }
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fprintf(stderr, "switchyard: --from %s: is a directory\n", file);
    if (f != stdin) {
      fclose(f);
    }
    return EXIT_USAGE;
  }
  while ((len = getline(&line, &cap, f)) >= 0) {
    char err[512];
    int64_t id;
    lineno++;
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) {
      line[--len] = '\0';
    }
    if (len == 0) {
      continue;
    }
    if (sy_vars_check(line, err, sizeof err)) {
      fprintf(stderr, "switchyard: %s:%ld: %s\n",
              strcmp(file, "-") == 0 ? "<stdin>" : file, lineno, err);
      rc = EXIT_USAGE;
      break;
    }
    if (sy_engine_start(e, wf, line, &id)) {
      rc = fail(e, SY_ESTORE);
      break;
    }
    (*count)++;
  }
  if (!rc && ferror(f)) {
    fprintf(stderr, "switchyard: --from %s: %s\n", file, strerror(errno));
    rc = EXIT_USAGE;
  }
  free(line);
  if (f != stdin) {
    fclose(f);
  }
  return rc;
}

static int cmd_start(cli *c) {
  var_arg *vars = calloc((size_t)c->argc, sizeof *vars);
  int nvars = 0, rc = 0;
  long long count = 1, started = 0;
  const char *from = NULL, *name = NULL;
  int count_given = 0;
  sy_engine *e = NULL;
  const sy_workflow *wf;
  sy_diag diag;
  if (!vars) {
    return 1;
  }
  for (int i = 1; i < c->argc; i++) {
    const char *a = c->argv[i];
    const char *v = i + 1 < c->argc ? c->argv[i + 1] : NULL;
    if (strcmp(a, "--var") == 0) {
      const char *eq;
      if (!v || !(eq = strchr(v, '=')) || eq == v ||
          (eq == v + 1 && v[0] == ':')) {
        free(vars);
        return bad_usage("--var: expected KEY=VALUE or KEY:=JSON, got '%s'",
                         v ? v : "nothing");
      }
      vars[nvars].key = v;
      vars[nvars].is_json = eq[-1] == ':';
      vars[nvars].keylen = (size_t)(eq - v) - (size_t)vars[nvars].is_json;
      vars[nvars].value = eq + 1;
      nvars++;
      i++;
    } else if (strcmp(a, "--count") == 0) {
      if (parse_int(v, 1, 100000000, &count)) {
        free(vars);
        return bad_usage(
            "--count: expected an integer from 1 to 100000000, got '%s'",
            v ? v : "nothing");
      }
      count_given = 1;
      i++;
    } else if (strcmp(a, "--from") == 0) {
      if (!v) {
        free(vars);
        return bad_usage("--from needs a file (or - for stdin)%s", "");
      }
      from = v;
      i++;
    } else if (a[0] == '-' && a[1]) {
      free(vars);
      return bad_usage("start: unknown option '%s'", a);
    } else if (!name) {
      name = a;
    } else {
      free(vars);
      return bad_usage("start: unexpected argument '%s'", a);
    }
  }
  if (!name) {
    free(vars);
    return bad_usage("start: which workflow?%s", "");
  }
  if (from && (count_given || nvars)) {
    free(vars);
    return bad_usage(
        "start: --from takes vars from the file; it does not mix "
        "with --var or --count%s",
        "");
  }
  if ((rc = open_engine(c, &e))) {
    free(vars);
    return rc;
  }
  /* One transaction, the definition included: either every instance
   * starts, or nothing is written. */
  if (sy_store_begin(sy_engine_store(e))) {
    rc = fail(e, SY_ESTORE);
    sy_engine_close(e);
    free(vars);
    return rc;
  }
  if ((rc = sy_engine_load_workflow(e, name, &wf, &diag))) {
    fprintf(stderr, "switchyard: %s\n", diag.error);
    sy_store_rollback(sy_engine_store(e));
    sy_engine_close(e);
    free(vars);
    /* A bad file is bad input; a database that cannot store it is not. */
    return rc == SY_ELOAD ? EXIT_USAGE : 1;
  }
  fputs(diag.warnings, stderr);
  if (from) {
    rc = start_from(e, wf, from, &started);
  } else {
    char err[512];
    char *tmpl = vars_template(vars, nvars, err, sizeof err);
    if (!tmpl && *err) {
      fprintf(stderr, "switchyard: %s\n", err);
      rc = EXIT_USAGE;
    }
    for (long long n = 1; n <= count && !rc; n++) {
      char *json =
          tmpl ? expand(tmpl, n) : build_vars(vars, nvars, &n, err, sizeof err);
      int64_t id;
      if (!json) {
        fprintf(stderr, "switchyard: %s\n", tmpl ? "out of memory" : err);
        rc = tmpl ? 1 : EXIT_USAGE;
        break;
      }
      if (sy_engine_start(e, wf, json, &id)) {
        rc = fail(e, SY_ESTORE);
      } else if (count == 1) {
        printf("%lld\n", (long long)id);
      }
      free(json);
      started++;
    }
    free(tmpl);
  }
  if (rc) {
    sy_store_rollback(sy_engine_store(e));
  } else if (sy_store_commit(sy_engine_store(e))) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
    rc = 1;
  } else if (count != 1 || from) {
    printf("started %lld instances of %s\n", started, wf->name);
  }
  sy_engine_close(e);
  free(vars);
  return rc;
}

/* ---------------------------------------------------------------------
 * run, check */

static int cmd_run(cli *c) {
  int until_idle = 0, rc;
  long long conc;
  sy_engine *e;
  sy_run_stats s;
  for (int i = 1; i < c->argc; i++) {
    if (strcmp(c->argv[i], "--until-idle") == 0) {
      until_idle = 1;
    } else if (strcmp(c->argv[i], "--concurrency") == 0) {
      const char *v = i + 1 < c->argc ? c->argv[i + 1] : NULL;
      if (parse_int(v, 1, 1000000, &conc)) {
        return bad_usage(
            "--concurrency: expected an integer from 1 to 1000000, got '%s'",
            v ? v : "nothing");
      }
      c->o.concurrency = (int)conc;
      i++;
    } else {
      return bad_usage("run: unknown argument '%s'", c->argv[i]);
    }
  }
  /* A running engine waits out another writer (a long start, a backup)
   * rather than stop: nothing can commit meanwhile anyway. */
  c->o.busy_timeout_ms = 60000;
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  rc = sy_engine_run(e, until_idle);
  sy_engine_stats(e, &s);
  fprintf(stderr,
          "switchyard: %lld step runs, %lld instances completed, %lld "
          "retries, %lld incidents\n",
          (long long)s.steps, (long long)s.completed, (long long)s.retries,
          (long long)s.incidents);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", sy_engine_errmsg(e));
  }
  sy_engine_close(e);
  return rc ? 1 : 0;
}

static int cmd_check(cli *c) {
  sy_engine *e;
  const sy_workflow *wf;
  sy_diag diag;
  int rc;
  if (c->argc != 2) {
    return bad_usage("check: expected one workflow%s", "");
  }
  /* Validation must not touch the database: use a throwaway one. */
  c->o.db_path = ":memory:";
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  rc = sy_engine_load_workflow(e, c->argv[1], &wf, &diag);
  fputs(diag.warnings, stderr);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", diag.error);
  } else {
    printf("%s: workflow '%s' is valid (%d steps, start '%s', hash %.12s)\n",
           wf->path, wf->name, wf->nsteps, wf->start->name, wf->hash);
  }
  sy_engine_close(e);
  return rc ? EXIT_USAGE : 0;
}

/* ---------------------------------------------------------------------
 * instances, show, incidents */

static void fmt_time(int64_t ms, char *buf, size_t len) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if (!ms) {
    snprintf(buf, len, "-");
    return;
  }
  gmtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static json_t *instance_json(const sy_instance_row *r) {
  json_error_t je;
  json_t *vars = json_loads(r->vars, 0, &je);
  return json_pack("{s:I, s:s, s:s, s:s?, s:i, s:o, s:I, s:I, s:o?, s:s}", "id",
                   (json_int_t)r->id, "workflow", r->workflow, "state",
                   r->state, "step", r->step, "attempt", r->attempt, "vars",
                   vars ? vars : json_null(), "created_at",
                   (json_int_t)r->created_at, "updated_at",
                   (json_int_t)r->updated_at, "ended_at",
                   r->ended_at ? json_integer(r->ended_at) : NULL, "definition",
                   r->def_hash);
}

typedef struct list_ctx {
  int json;
  json_t *arr;
  long count;
} list_ctx;

static int print_instance(void *ud, const sy_instance_row *r) {
  list_ctx *l = ud;
  l->count++;
  if (l->json) {
    json_array_append_new(l->arr, instance_json(r));
  } else {
    char t[32];
    fmt_time(r->updated_at, t, sizeof t);
    printf("%-8lld %-20s %-10s %-20s %-7d %s\n", (long long)r->id, r->workflow,
           r->state, r->step ? r->step : "-", r->attempt, t);
  }
  return 0;
}

static void print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (s) {
    puts(s);
    free(s);
  }
  json_decref(j);
}

static int cmd_instances(cli *c) {
  const char *state = NULL, *workflow = NULL;
  static const char *const states[] = {SY_STATE_READY,     SY_STATE_RUNNING,
                                       SY_STATE_WAITING,   SY_STATE_INCIDENT,
                                       SY_STATE_COMPLETED, SY_STATE_CANCELLED};
  list_ctx l = {c->json, NULL, 0};
  sy_engine *e;
  int rc;
  for (int i = 1; i < c->argc; i++) {
    const char *v = i + 1 < c->argc ? c->argv[i + 1] : NULL;
    if (strcmp(c->argv[i], "--state") == 0 && v) {
      int ok = 0;
      for (size_t k = 0; k < sizeof states / sizeof *states; k++) {
        ok |= strcmp(v, states[k]) == 0;
      }
      if (!ok) {
        return bad_usage(
            "--state: expected ready, running, waiting, "
            "incident, completed or cancelled, got '%s'",
            v);
      }
      state = v;
      i++;
    } else if (strcmp(c->argv[i], "--workflow") == 0 && v) {
      workflow = v;
      i++;
    } else {
      return bad_usage("instances: unknown or incomplete argument '%s'",
                       c->argv[i]);
    }
  }
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  if (l.json) {
    l.arr = json_array();
  } else {
    printf("%-8s %-20s %-10s %-20s %-7s %s\n", "ID", "WORKFLOW", "STATE",
           "STEP", "ATTEMPT", "UPDATED");
  }
  rc = sy_store_list_instances(sy_engine_store(e), state, workflow,
                               print_instance, &l);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
    json_decref(l.arr);
  } else if (l.json) {
    print_json(l.arr);
  }
  sy_engine_close(e);
  return rc ? 1 : 0;
}

static int print_step_run(void *ud, const sy_step_run_row *r) {
  list_ctx *l = ud;
  if (l->json) {
    json_array_append_new(
        l->arr, json_pack("{s:s, s:i, s:I, s:I, s:I, s:s, s:s?}", "step",
                          r->step, "attempt", r->attempt, "started_at",
                          (json_int_t)r->started_at, "ended_at",
                          (json_int_t)r->ended_at, "duration_ms",
                          (json_int_t)(r->ended_at - r->started_at), "outcome",
                          r->outcome, "error", r->error));
  } else {
    char t[32];
    fmt_time(r->started_at, t, sizeof t);
    printf("  %s  %-20s attempt %-3d %6lld ms  %s%s%s\n", t, r->step,
           r->attempt, (long long)(r->ended_at - r->started_at), r->outcome,
           r->error ? ": " : "", r->error ? r->error : "");
  }
  return 0;
}

static int print_incident(void *ud, const sy_incident_row *r) {
  list_ctx *l = ud;
  l->count++;
  if (l->json) {
    json_array_append_new(
        l->arr,
        json_pack("{s:I, s:I, s:s, s:s, s:s, s:I, s:o, s:s?}", "id",
                  (json_int_t)r->id, "instance", (json_int_t)r->instance_id,
                  "workflow", r->workflow, "step", r->step, "error", r->error,
                  "raised_at", (json_int_t)r->raised_at, "resolved_at",
                  r->resolved_at ? json_integer(r->resolved_at) : json_null(),
                  "resolution", r->resolution));
  } else {
    char t[32];
    fmt_time(r->raised_at, t, sizeof t);
    printf("%-6lld %-9lld %-18s %-18s %s  %s%s%s", (long long)r->id,
           (long long)r->instance_id, r->workflow, r->step, t, r->error,
           r->resolution ? "  [" : "", r->resolution ? r->resolution : "");
    if (r->resolution) {
      printf("]\n");
    } else {
      printf("\n");
    }
  }
  return 0;
}

static int show_row(void *ud, const sy_instance_row *r) {
  list_ctx *l = ud;
  if (l->json) {
    l->arr = instance_json(r);
  } else {
    char t1[32], t2[32];
    fmt_time(r->created_at, t1, sizeof t1);
    fmt_time(r->ended_at, t2, sizeof t2);
    printf("instance %lld  workflow %s  (definition %.12s)\n", (long long)r->id,
           r->workflow, r->def_hash);
    printf("state    %s%s%s (attempt %d)\n", r->state, r->step ? " at " : "",
           r->step ? r->step : "", r->attempt);
    printf("created  %s   ended %s\n", t1, t2);
    printf("vars     %s\n", r->vars);
  }
  return 1;
}

static int cmd_show(cli *c) {
  long long id;
  int rc, found = 0;
  sy_engine *e;
  list_ctx l = {c->json, NULL, 0};
  if (c->argc != 2 || parse_int(c->argv[1], 1, LLONG_MAX, &id)) {
    return bad_usage("show: expected one instance id, got '%s'",
                     c->argc > 1 ? c->argv[1] : "nothing");
  }
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  sy_store *st = sy_engine_store(e);
  rc = sy_store_get_instance(st, id, show_row, &l, &found);
  if (!rc && !found) {
    fprintf(stderr, "switchyard: no instance %lld\n", id);
    sy_engine_close(e);
    return EXIT_USAGE;
  }
  if (!rc) {
    list_ctx runs = {c->json, c->json ? json_array() : NULL, 0};
    list_ctx inc = {c->json, c->json ? json_array() : NULL, 0};
    if (!c->json) {
      printf("history\n");
    }
    rc = sy_store_list_step_runs(st, id, print_step_run, &runs);
    if (!rc && !c->json) {
      printf("incidents\n");
    }
    if (!rc) {
      rc = sy_store_list_incidents(st, 0, id, print_incident, &inc);
    }
    if (c->json) {
      json_object_set_new(l.arr, "history", runs.arr);
      json_object_set_new(l.arr, "incidents", inc.arr);
      if (!rc) {
        print_json(l.arr);
      } else {
        json_decref(l.arr);
      }
    }
  }
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(st));
  }
  sy_engine_close(e);
  return rc ? 1 : 0;
}

static int cmd_incidents(cli *c) {
  int all = 0, rc;
  sy_engine *e;
  list_ctx l = {c->json, NULL, 0};
  for (int i = 1; i < c->argc; i++) {
    if (strcmp(c->argv[i], "--all") == 0) {
      all = 1;
    } else {
      return bad_usage("incidents: unknown argument '%s'", c->argv[i]);
    }
  }
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  if (l.json) {
    l.arr = json_array();
  } else {
    printf("%-6s %-9s %-18s %-18s %-20s  %s\n", "ID", "INSTANCE", "WORKFLOW",
           "STEP", "RAISED", "ERROR");
  }
  rc = sy_store_list_incidents(sy_engine_store(e), !all, 0, print_incident, &l);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
    json_decref(l.arr);
  } else if (l.json) {
    print_json(l.arr);
  }
  sy_engine_close(e);
  return rc ? 1 : 0;
}

typedef struct status_ctx {
  json_t *j;
  int64_t totals[6];
} status_ctx;

static const char *const all_states[6] = {
    SY_STATE_READY,    SY_STATE_RUNNING,   SY_STATE_WAITING,
    SY_STATE_INCIDENT, SY_STATE_COMPLETED, SY_STATE_CANCELLED};

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

/* switchyard status: instances per workflow and state. */
static int cmd_status(cli *c) {
  sy_engine *e;
  status_ctx s = {json_object(), {0}};
  const char *wf;
  json_t *counts;
  int rc;
  if (c->argc != 1) {
    json_decref(s.j);
    return bad_usage("status takes no arguments");
  }
  if ((rc = open_engine(c, &e))) {
    json_decref(s.j);
    return rc;
  }
  if ((rc = sy_store_count_by_state(sy_engine_store(e), status_row, &s))) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
    json_decref(s.j);
    sy_engine_close(e);
    return 1;
  }
  if (c->json) {
    print_json(s.j);
  } else {
    printf("%-24s", "WORKFLOW");
    for (int i = 0; i < 6; i++) {
      printf(" %10s", all_states[i]);
    }
    printf("\n");
    json_object_foreach(s.j, wf, counts) {
      printf("%-24s", wf);
      for (int i = 0; i < 6; i++) {
        printf(" %10lld", (long long)json_integer_value(
                              json_object_get(counts, all_states[i])));
      }
      printf("\n");
    }
    printf("%-24s", "total");
    for (int i = 0; i < 6; i++) {
      printf(" %10lld", (long long)s.totals[i]);
    }
    printf("\n");
    json_decref(s.j);
  }
  sy_engine_close(e);
  return 0;
}

static int cmd_retry_cancel(cli *c, int cancel) {
  long long id;
  int rc;
  sy_engine *e;
  if (c->argc != 2 || parse_int(c->argv[1], 1, LLONG_MAX, &id)) {
    return bad_usage("expected one instance id, got '%s'",
                     c->argc > 1 ? c->argv[1] : "nothing");
  }
  if ((rc = open_engine(c, &e))) {
    return rc;
  }
  rc = cancel ? sy_engine_cancel(e, id) : sy_engine_retry(e, id);
  if (rc) {
    rc = fail(e, rc);
  } else {
    printf("instance %lld %s\n", id,
           cancel ? "cancelled" : "will run again at its step");
  }
  sy_engine_close(e);
  return rc;
}

int main(int argc, char **argv) {
  cli c;
  int rc;
  /* The engine allocates and frees in waves (a batch of coroutines and
   * vars per loop turn); glibc's default returns the heap top to the
   * kernel after each wave, and the page faults that follow cost more
   * than the engine's own work. Keep up to 256 MiB of free heap. */
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  memset(&c, 0, sizeof c);
  rc = parse_globals(&c, argc, argv);
  const char *cmd;
  if (rc) {
    return rc;
  }
  if (c.argc == 0) {
    if (c.help) {
      usage(stdout, NULL);
      return 0;
    }
    usage(stderr, NULL);
    return EXIT_USAGE;
  }
  cmd = c.argv[0];
  if (c.help) {
    /* Plugin commands print their own help. */
    if (strcmp(cmd, "start") && strcmp(cmd, "run") && strcmp(cmd, "check") &&
        strcmp(cmd, "instances") && strcmp(cmd, "show") &&
        strcmp(cmd, "incidents") && strcmp(cmd, "retry") &&
        strcmp(cmd, "cancel") && strcmp(cmd, "lua") && strcmp(cmd, "status")) {
      goto plugin;
    }
    usage(stdout, NULL);
    return 0;
  }
  /* Commands that write say so up front on a read-only database. */
  c.o.expect_write = strcmp(cmd, "start") == 0 || strcmp(cmd, "run") == 0 ||
                     strcmp(cmd, "retry") == 0 || strcmp(cmd, "cancel") == 0;
  if (strcmp(cmd, "start") == 0) {
    return cmd_start(&c);
  }
  if (strcmp(cmd, "run") == 0) {
    return cmd_run(&c);
  }
  if (strcmp(cmd, "check") == 0) {
    return cmd_check(&c);
  }
  if (strcmp(cmd, "instances") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_instances(&c);
  }
  if (strcmp(cmd, "show") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_show(&c);
  }
  if (strcmp(cmd, "incidents") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_incidents(&c);
  }
  if (strcmp(cmd, "status") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_status(&c);
  }
  if (strcmp(cmd, "retry") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_retry_cancel(&c, 0);
  }
  if (strcmp(cmd, "cancel") == 0) {
    return need_db(&c) ? EXIT_USAGE : cmd_retry_cancel(&c, 1);
  }
  if (strcmp(cmd, "lua") == 0) {
    return sy_testlua_main(c.argc, c.argv, &c.o);
  }
plugin : {
  sy_engine *e;
  const sy_command_entry *pc;
  struct stat sb;
  int exists =
      strcmp(c.o.db_path, ":memory:") == 0 || stat(c.o.db_path, &sb) == 0;
  const char *db_path = c.o.db_path;
  /* Without a database, find the command on a throwaway one first: it
   * says whether this use of it may create the real one. */
  if (!exists) {
    c.o.db_path = ":memory:";
  }
  if ((rc = open_engine(&c, &e))) {
    return rc;
  }
  pc = sy_plugins_command(sy_engine_plugins(e), cmd);
  if (!pc) {
    fprintf(stderr, "switchyard: unknown command '%s'\n", cmd);
    usage(stderr, e);
    sy_engine_close(e);
    return EXIT_USAGE;
  }
  if (!exists && !c.help) {
    int may_create = 0;
    for (const char *const *s = pc->cmd->creates; s && *s; s++) {
      may_create |=
          strcmp(*s, "*") == 0 || (c.argc > 1 && strcmp(*s, c.argv[1]) == 0);
    }
    sy_engine_close(e);
    c.o.db_path = db_path;
    if (!may_create) {
      fprintf(stderr, "switchyard: no database at %s (--db)\n", db_path);
      return EXIT_USAGE;
    }
    if ((rc = open_engine(&c, &e))) {
      return rc;
    }
    pc = sy_plugins_command(sy_engine_plugins(e), cmd);
  }
  if (c.json) {
    /* parse_globals took --json out; the command reads it itself. There is
     * room: argv lost at least that argument. */
    c.argv[c.argc++] = "--json";
  }
  if (c.help) {
    /* Give the plugin its --help back. */
    char *args[] = {c.argv[0], "--help", NULL};
    rc = pc->cmd->run(pc->plugin->state, 2, args);
  } else {
    rc = pc->cmd->run(pc->plugin->state, c.argc, c.argv);
  }
  sy_engine_close(e);
  if (rc && !exists && !c.help) {
    /* Bad input changes nothing: not even a database it created. */
    char path[4200];
    unlink(db_path);
    snprintf(path, sizeof path, "%s-wal", db_path);
    unlink(path);
    snprintf(path, sizeof path, "%s-shm", db_path);
    unlink(path);
  }
  return rc;
}
}
