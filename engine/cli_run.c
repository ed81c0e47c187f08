/* The commands that put work in and run it: start (instances from --var,
 * --count or a JSON-lines file, in one transaction), run (the engine) and
 * check (validation, without a database). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "cli.h"
#include "error.h"
#include "plugins.h"
#include "store.h"

/* ---------------------------------------------------------------------
 * start */

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
    return SY__EXIT_USAGE;
  }
  if (fstat(fileno(f), &sb) == 0 && S_ISDIR(sb.st_mode)) {
    fprintf(stderr, "switchyard: --from %s: is a directory\n", file);
    if (f != stdin) {
      fclose(f);
    }
    return SY__EXIT_USAGE;
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
      rc = SY__EXIT_USAGE;
      break;
    }
    if (sy_engine_start(e, wf, line, &id)) {
      rc = sy__cli_fail(e, SY_ESTORE);
      break;
    }
    (*count)++;
  }
  if (!rc && ferror(f)) {
    fprintf(stderr, "switchyard: --from %s: %s\n", file, strerror(errno));
    rc = SY__EXIT_USAGE;
  }
  free(line);
  if (f != stdin) {
    fclose(f);
  }
  return rc;
}

typedef struct start_args {
  const char *name; /* workflow name or path */
  const char *from; /* --from FILE or "-" */
  sy__cli_var *vars;
  int nvars;
  long long count;
  int count_given;
} start_args;

enum { O_VAR = 256, O_COUNT, O_FROM };

static const sy__cli_opt start_opts[] = {
    {"var", required_argument, O_VAR, "KEY=VALUE|KEY:=JSON",
     "a var of the new instances: a string, or any JSON value (repeatable)"},
    {"count", required_argument, O_COUNT, "N",
     "start N instances; {n} in values becomes 1..N"},
    {"from", required_argument, O_FROM, "FILE|-",
     "one instance per line of JSON vars (- for stdin)"},
    {NULL, 0, 0, NULL, NULL}};

static int parse_start(sy__cli *c, start_args *a) {
  const char *v;
  int key, rc;
  while ((key = sy__cli_next(c, &v)) > 0) {
    switch (key) {
      case O_VAR:
        if ((rc = sy__cli_add_var(a->vars, &a->nvars, v))) {
          return rc;
        }
        break;
      case O_COUNT:
        if (sy__cli_parse_int(v, 1, 100000000, &a->count)) {
          return sy__cli_usage_error(
              "--count: expected an integer from 1 to 100000000, got '%s'", v);
        }
        a->count_given = 1;
        break;
      case O_FROM:
        a->from = v;
        break;
      default:
        if (a->name) {
          return sy__cli_usage_error("start: unexpected argument '%s'", v);
        }
        a->name = v;
    }
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if (!a->name) {
    return sy__cli_usage_error("start: which workflow?");
  }
  if (a->from && (a->count_given || a->nvars)) {
    return sy__cli_usage_error(
        "start: --from takes vars from the file; it does not mix with --var "
        "or --count");
  }
  return 0;
}

/* Inserts the instances --var and --count describe. */
static int start_vars(sy_engine *e, const sy_workflow *wf, const start_args *a,
                      long long *started) {
  char err[512];
  int rc = 0;
  char *tmpl = sy__cli_vars_template(a->vars, a->nvars, err, sizeof err);
  if (!tmpl && *err) {
    fprintf(stderr, "switchyard: %s\n", err);
    return SY__EXIT_USAGE;
  }
  for (long long n = 1; n <= a->count && !rc; n++) {
    char *json =
        tmpl ? sy__cli_expand(tmpl, n)
             : sy__cli_build_vars(a->vars, a->nvars, &n, err, sizeof err);
    int64_t id;
    if (!json) {
      fprintf(stderr, "switchyard: %s\n", tmpl ? "out of memory" : err);
      rc = tmpl ? 1 : SY__EXIT_USAGE;
      break;
    }
    if (sy_engine_start(e, wf, json, &id)) {
      rc = sy__cli_fail(e, SY_ESTORE);
    } else if (a->count == 1) {
      printf("%lld\n", (long long)id);
    }
    free(json);
    (*started)++;
  }
  free(tmpl);
  return rc;
}

static int cmd_start(sy__cli *c) {
  start_args a = {.count = 1};
  long long started = 0;
  sy_engine *e = NULL;
  sy_store *st;
  const sy_workflow *wf;
  sy_diag diag;
  int rc;
  if (!(a.vars = calloc((size_t)c->argc, sizeof *a.vars))) {
    return 1;
  }
  if ((rc = parse_start(c, &a)) || (rc = sy__cli_open(c, &e))) {
    free(a.vars);
    return rc;
  }
  st = sy_engine_store(e);
  /* One transaction, the definition included: either every instance
   * starts, or nothing is written. */
  if (sy_store_begin(st)) {
    rc = sy__cli_store_fail(e);
  } else if ((rc = sy_engine_load_workflow(e, a.name, &wf, &diag))) {
    fprintf(stderr, "switchyard: %s\n", diag.error);
    /* A bad file is bad input; a database that cannot store it is not. */
    rc = rc == SY_ELOAD ? SY__EXIT_USAGE : 1;
  } else {
    fputs(diag.warnings, stderr);
    rc = a.from ? start_from(e, wf, a.from, &started)
                : start_vars(e, wf, &a, &started);
    if (!rc && sy_store_commit(st)) {
      rc = sy__cli_store_fail(e);
    } else if (!rc && (a.count != 1 || a.from)) {
      printf("started %lld instances of %s\n", started, wf->name);
    }
  }
  if (rc) {
    sy_engine_rollback(e);
  }
  sy_engine_close(e);
  free(a.vars);
  return rc;
}

const sy__cli_cmd sy__cli_start = {
    "start",
    "WORKFLOW [--var k=v | --var k:=JSON]... [--count N] [--from FILE|-]",
    "add instances (WORKFLOW: a name in --workflows, or a .lua path)",
    start_opts,
    cmd_start,
    SY__CLI_WRITES};

/* ---------------------------------------------------------------------
 * run */

enum { O_UNTIL_IDLE = 256, O_CONCURRENCY };

static const sy__cli_opt run_opts[] = {
    {"until-idle", no_argument, O_UNTIL_IDLE, NULL,
     "stop when no instance is ready, running or waiting"},
    {"concurrency", required_argument, O_CONCURRENCY, "N",
     "instances in memory at once (512)"},
    {NULL, 0, 0, NULL, NULL}};

static void add_stats(sy_run_stats *sum, sy_engine *e) {
  sy_run_stats s;
  sy_engine_stats(e, &s);
  sum->steps += s.steps;
  sum->completed += s.completed;
  sum->retries += s.retries;
  sum->incidents += s.incidents;
  sum->caught += s.caught;
  sum->parked += s.parked;
}

/* A database server that went away (restarted, failed over, the network
 * cut): the engine is opened again, after 0.1 s, then twice as long each
 * try up to 5 s, until it is back (or a signal ends the process). The new
 * engine takes back at once what the old one held (reap_dead: the same
 * process under another identity). */
static int reconnect(sy__cli *c, sy_engine **e) {
  struct timespec wait = {0, 100000000};
  char err[1024];
  for (;;) {
    nanosleep(&wait, NULL);
    if (!sy_engine_open(e, &c->o, err, sizeof err)) {
      fprintf(stderr, "switchyard: reconnected\n");
      return 0;
    }
    fprintf(stderr, "switchyard: %s; trying again\n", err);
    wait.tv_nsec *= 2;
    if (wait.tv_nsec >= 1000000000) {
      wait.tv_sec += wait.tv_nsec / 1000000000;
      wait.tv_nsec %= 1000000000;
    }
    if (wait.tv_sec >= 5) {
      wait = (struct timespec){5, 0};
    }
  }
}

static int cmd_run(sy__cli *c) {
  int until_idle = 0, rc, key;
  long long conc;
  const char *v;
  sy_engine *e;
  sy_run_stats s;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (key == O_UNTIL_IDLE) {
      until_idle = 1;
    } else if (key == O_CONCURRENCY) {
      if (sy__cli_parse_int(v, 1, 1000000, &conc)) {
        return sy__cli_usage_error(
            "--concurrency: expected an integer from 1 to 1000000, got '%s'",
            v);
      }
      c->o.concurrency = (int)conc;
    } else {
      return sy__cli_usage_error("run: unexpected argument '%s'", v);
    }
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  /* A running engine waits out another writer (a long start, a backup)
   * rather than stop: nothing can commit meanwhile anyway. */
  c->o.busy_timeout_ms = 60000;
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  memset(&s, 0, sizeof s);
  while ((rc = sy_engine_run(e, until_idle)) &&
         sy_store_restartable(sy_engine_store(e))) {
    add_stats(&s, e);
    fprintf(stderr,
            "switchyard: %s (%s); what this engine held will run again, as "
            "after a crash\n",
            sy_store_connection_lost(sy_engine_store(e))
                ? "lost the database connection"
                : "the turn was undone",
            sy_engine_errmsg(e));
    sy_engine_close(e);
    if (reconnect(c, &e)) {
      return 1;
    }
  }
  add_stats(&s, e);
  fprintf(stderr,
          "switchyard: %lld step runs, %lld instances completed, %lld "
          "retries, %lld incidents, %lld errors caught, %lld parked\n",
          (long long)s.steps, (long long)s.completed, (long long)s.retries,
          (long long)s.incidents, (long long)s.caught, (long long)s.parked);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", sy_engine_errmsg(e));
  }
  sy_engine_close(e);
  return rc ? 1 : 0;
}

const sy__cli_cmd sy__cli_run = {
    "run",
    "[--until-idle] [--concurrency N]",
    "run the engine (until SIGINT/SIGTERM, or until idle)",
    run_opts,
    cmd_run,
    SY__CLI_WRITES};

/* ---------------------------------------------------------------------
 * check */

/* `start NAME` looks for NAME.lua and insists that it declares NAME: a
 * file whose base name differs can only be started by its path. (Given a
 * name, loading has checked that already.) */
static void warn_name(const sy_workflow *wf) {
  const char *slash = strrchr(wf->path, '/');
  const char *base = slash ? slash + 1 : wf->path;
  size_t n = strlen(wf->name);
  if (strncmp(base, wf->name, n) == 0 && strcmp(base + n, ".lua") == 0) {
    return;
  }
  fprintf(stderr,
          "%s:%d: warning: the file declares workflow '%s': `start %s` looks "
          "for %s.lua and will not find this file; rename it %s.lua, or "
          "start it by its path\n",
          wf->path, wf->line, wf->name, wf->name, wf->name, wf->name);
}

/* What each plugin node says of itself against the database. */
static void warn_nodes(const sy_workflow *wf) {
  for (int i = 0; i < wf->nsteps; i++) {
    const sy_step *st = &wf->steps[i];
    char warn[512] = "";
    if (st->node && st->node->type->check) {
      st->node->type->check(st->node->plugin->state, st->node_data, warn,
                            sizeof warn);
      if (warn[0]) {
        fprintf(stderr, "%s:%d: warning: step '%s': %s\n", wf->path, st->line,
                st->name, warn);
      }
    }
  }
}

static int cmd_check(sy__cli *c) {
  sy_engine *e;
  const sy_workflow *wf;
  const char *arg = NULL, *v;
  sy_diag diag;
  int rc, key, against_db;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (arg) {
      return sy__cli_usage_error("check: expected one workflow, got '%s' too",
                                 v);
    }
    arg = v;
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if (!arg) {
    return sy__cli_usage_error("check: expected one workflow");
  }
  /* Validation must not create a database: without --db naming one that
   * exists, a throwaway one. With it, the nodes are checked against it
   * too (a flag that is not there), in a transaction rolled back at the
   * end: loading records the definition, which checking must not. */
  against_db = c->db_given && sy_store_exists(c->o.db_path);
  if (!against_db) {
    c->o.db_path = ":memory:";
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  if (against_db && (rc = sy_store_begin(sy_engine_store(e)))) {
    fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
    sy_engine_close(e);
    return 1;
  }
  rc = sy_engine_load_workflow(e, arg, &wf, &diag);
  fputs(diag.warnings, stderr);
  if (rc) {
    fprintf(stderr, "switchyard: %s\n", diag.error);
  } else {
    warn_name(wf);
    if (against_db) {
      warn_nodes(wf);
    }
    printf("%s: workflow '%s' is valid (%d steps, start '%s', hash %.12s)\n",
           wf->path, wf->name, wf->nsteps, wf->start->name, wf->hash);
  }
  if (against_db) {
    sy_store_rollback(sy_engine_store(e));
  }
  sy_engine_close(e);
  return rc ? SY__EXIT_USAGE : 0;
}

const sy__cli_cmd sy__cli_check = {
    "check",
    "WORKFLOW",
    "load and validate a workflow file (with --db: its nodes against that "
    "database, which is only read)",
    NULL,
    cmd_check,
    0};
