/* The `switchyard` command: global options, the table of commands, help,
 * and dispatch to built-in commands and to those plugins register. The
 * commands themselves live in cli_run.c, cli_inspect.c and
 * cli_incidents.c (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "error.h"
#include "testlua.h"

static int cmd_lua(sy__cli *c) {
  return sy_testlua_main(c->argc, c->argv, &c->o);
}

static const sy__cli_cmd cmd_lua_row = {
    "lua",
    "SCRIPT [ARGS]",
    "run a Lua script with the switchyard.testing module (the test suite)",
    NULL,
    cmd_lua,
    0};

static int cmd_test(sy__cli *c) {
  return sy_testlua_test(c->argc, c->argv, &c->o);
}

static const sy__cli_cmd cmd_test_row = {
    "test",
    "[--faults[=2]] [BUSTED OPTIONS] [PATH...]",
    "run the workflows' busted specs (default: *_spec.lua under the "
    "workflows directory); --faults fails each external call in turn",
    NULL,
    cmd_test,
    0};

static const sy__cli_cmd *const commands[] = {
    &sy__cli_start,     &sy__cli_run,    &sy__cli_check,     &sy__cli_status,
    &sy__cli_instances, &sy__cli_show,   &sy__cli_incidents, &sy__cli_retry,
    &sy__cli_cancel,    &sy__cli_signal, &sy__cli_db,        &sy__cli_serve,
    &cmd_test_row,      &cmd_lua_row};
#define NCOMMANDS (sizeof commands / sizeof *commands)

/* ---------------------------------------------------------------------
 * Global options: taken out of argv wherever they stand, so that
 * `switchyard instances --db x` works as `switchyard --db x instances`. */

enum {
  G_HELP = 'h',
  G_JSON = 256,
  G_DB,
  G_WORKFLOWS,
  G_PLUGINS,
  G_SYNC,
  G_SET,
  G_SEED,
  G_LUA_MEMORY,
  G_STEP_INSTRUCTIONS
};

static const sy__cli_opt globals[] = {
    {"db", required_argument, G_DB, "PATH|URL",
     "SQLite file (switchyard.db), or postgresql://user@host/db"},
    {"workflows", required_argument, G_WORKFLOWS, "DIR",
     "workflow files (workflows)"},
    {"plugins", required_argument, G_PLUGINS, "DIR",
     "plugin modules (default: next to the binary)"},
    {"sync", required_argument, G_SYNC, "full|normal",
     "SQLite synchronous mode (full)"},
    {"set", required_argument, G_SET, "KEY=VALUE",
     "a setting for plugins (repeatable)"},
    {"seed", required_argument, G_SEED, "N",
     "seed of the engine's random generator"},
    {"lua-memory", required_argument, G_LUA_MEMORY, "BYTES",
     "memory cap of the Lua state (1 GiB)"},
    {"step-instructions", required_argument, G_STEP_INSTRUCTIONS, "N",
     "instruction budget per step run (50M)"},
    {"json", no_argument, G_JSON, NULL, "machine-readable output"},
    {"help", no_argument, G_HELP, NULL, "this help, or a command's"},
    {NULL, 0, 0, NULL, NULL}};

int sy__cli_usage_error(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "switchyard: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see switchyard --help)\n");
  va_end(ap);
  return SY__EXIT_USAGE;
}

int sy__cli_add_var(sy__cli_var *vars, int *n, const char *arg) {
  if (sy__cli_var_parse(arg, &vars[*n])) {
    return sy__cli_usage_error(
        "--var: expected KEY=VALUE or KEY:=JSON, got '%s'", arg);
  }
  (*n)++;
  return 0;
}

int sy__cli_parse_int(const char *s, long long min, long long max,
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

static void default_plugin_dir(sy__cli *c) {
  char exe[2048];
  size_t len = sizeof exe;
  struct stat sb;
  const char *env = getenv("SWITCHYARD_PLUGINS");
  char *slash;
  c->plugin_dir[0] = '\0';
  if (env && *env) {
    snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s", env);
    return;
  }
  if (uv_exepath(exe, &len) || !(slash = strrchr(exe, '/'))) {
    return;
  }
  *slash = '\0';
  /* A build tree keeps plugins beside the binary; an installed one keeps
   * them under its prefix. */
  snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s/plugins", exe);
  if (stat(c->plugin_dir, &sb) != 0) {
    snprintf(c->plugin_dir, sizeof c->plugin_dir,
             "%s/../lib/switchyard/plugins", exe);
  }
}

static int set_global(sy__cli *c, const sy__cli_opt *g, char *v) {
  long long n;
  switch (g->key) {
    case G_HELP:
      c->help = 1;
      return 0;
    case G_JSON:
      c->json = 1;
      return 0;
    case G_DB:
      if (!*v) {
        return sy__cli_usage_error("--db: empty path");
      }
      c->o.db_path = v;
      c->db_given = 1;
      return 0;
    case G_WORKFLOWS:
      c->o.workflows_dir = v;
      return 0;
    case G_PLUGINS:
      snprintf(c->plugin_dir, sizeof c->plugin_dir, "%s", v);
      return 0;
    case G_SYNC:
      if (strcmp(v, "full") && strcmp(v, "normal")) {
        return sy__cli_usage_error("--sync: expected full or normal, got '%s'",
                                   v);
      }
      c->o.sync = strcmp(v, "full") == 0 ? SY_SYNC_FULL : SY_SYNC_NORMAL;
      return 0;
    case G_SET: {
      char *eq = strchr(v, '=');
      if (!eq || eq == v) {
        return sy__cli_usage_error("--set: expected KEY=VALUE, got '%s'", v);
      }
      if (c->o.nsettings == SY__CLI_MAX_SETTINGS) {
        return sy__cli_usage_error("--set: at most %d settings",
                                   SY__CLI_MAX_SETTINGS);
      }
      *eq = '\0'; /* argv strings are ours to split */
      c->settings[c->o.nsettings++] = (sy_setting){v, eq + 1};
      return 0;
    }
    case G_SEED:
      if (sy__cli_parse_int(v, 0, LLONG_MAX, &n)) {
        return sy__cli_usage_error(
            "--seed: expected a non-negative integer, got '%s'", v);
      }
      c->o.seed = (uint64_t)n;
      return 0;
    case G_LUA_MEMORY:
      if (sy__cli_parse_int(v, 1 << 20, LLONG_MAX, &n)) {
        return sy__cli_usage_error(
            "--lua-memory: expected a byte count of at least 1048576, got "
            "'%s'",
            v);
      }
      c->o.lua_memory = (size_t)n;
      return 0;
    case G_STEP_INSTRUCTIONS:
      if (sy__cli_parse_int(v, 1000, LLONG_MAX, &n)) {
        return sy__cli_usage_error(
            "--step-instructions: expected an integer >= 1000, got '%s'", v);
      }
      c->o.step_instructions = n;
      return 0;
  }
  SY_ASSERT(!"every global option has a case");
  return SY__EXIT_USAGE;
}

/* The global option arg names (--name or --name=value, and -h), or NULL;
 * *inline_val points after '=' when there is one. */
static const sy__cli_opt *global_of(const char *arg, char **inline_val) {
  *inline_val = NULL;
  if (strcmp(arg, "-h") == 0) {
    arg = "--help";
  }
  if (strncmp(arg, "--", 2) != 0) {
    return NULL;
  }
  for (const sy__cli_opt *g = globals; g->name; g++) {
    size_t n = strlen(g->name);
    if (strncmp(arg + 2, g->name, n) == 0 &&
        (arg[2 + n] == '\0' || (arg[2 + n] == '=' && g->has_arg))) {
      if (arg[2 + n] == '=') {
        *inline_val = (char *)arg + 3 + n;
      }
      return g;
    }
  }
  return NULL;
}

static int parse_globals(sy__cli *c, int argc, char **argv) {
  int out = 0, rc;
  sy_engine_opts_init(&c->o);
  c->o.settings = c->settings;
  default_plugin_dir(c);
  for (int i = 1; i < argc; i++) {
    char *v;
    const sy__cli_opt *g = global_of(argv[i], &v);
    if (strcmp(argv[i], "--") == 0) {
      while (i < argc) {
        argv[out++] = argv[i++];
      }
      break;
    }
    if (!g) {
      argv[out++] = argv[i];
      continue;
    }
    if (g->has_arg && !v) {
      if (i + 1 == argc) {
        return sy__cli_usage_error("--%s needs a value (%s)", g->name, g->meta);
      }
      v = argv[++i];
    }
    if ((rc = set_global(c, g, v))) {
      return rc;
    }
  }
  c->o.plugin_dir = c->plugin_dir[0] ? c->plugin_dir : NULL;
  c->argc = out;
  c->argv = argv;
  return 0;
}

/* ---------------------------------------------------------------------
 * Command options */

int sy__cli_next(sy__cli *c, const char **val) {
  struct option longs[32];
  int n = 0, key;
  const sy__cli_opt *o = c->cmd->opts;
  for (; o && o[n].name; n++) {
    SY_ASSERT(n + 1 < (int)(sizeof longs / sizeof *longs));
    longs[n] = (struct option){o[n].name, o[n].has_arg, NULL, o[n].key};
  }
  longs[n] = (struct option){NULL, 0, NULL, 0};
  if (c->operands_only) {
    *val = c->optind < c->argc ? c->argv[c->optind++] : NULL;
    return *val ? 1 : 0;
  }
  if (c->optind == 0) {
    optind = 0; /* getopt starts afresh (GNU) */
  }
  opterr = 0;
  /* "-": operands come back in order, as key 1; ":": a missing value is
   * told apart from an unknown option. */
  key = getopt_long(c->argc, c->argv, "-:", longs, NULL);
  c->optind = optind;
  *val = optarg;
  if (key == -1) {
    /* Only "--" ends the options early: the rest are operands. */
    c->operands_only = 1;
    *val = c->optind < c->argc ? c->argv[c->optind++] : NULL;
    return *val ? 1 : 0;
  }
  if (key == ':') {
    for (int i = 0; i < n; i++) {
      if (o[i].key == optopt) {
        return sy__cli_usage_error("%s: --%s needs a value (%s)", c->cmd->name,
                                   o[i].name, o[i].meta),
               -1;
      }
    }
  }
  if (key == '?' || key == ':') {
    return sy__cli_usage_error("%s: unknown option '%s'", c->cmd->name,
                               c->argv[optind - 1]),
           -1;
  }
  return key;
}

/* ---------------------------------------------------------------------
 * Help */

#define HELP_COL 27   /* where descriptions start */
#define HELP_WIDTH 79 /* and where they wrap */

/* Prints text from column `col` (the cursor is there), wrapped at words. */
static void print_wrapped(FILE *f, const char *text, int col) {
  int at = col;
  while (*text) {
    int word = (int)strcspn(text, " ");
    if (at > col && at + 1 + word > HELP_WIDTH) {
      fprintf(f, "\n%*s", col, "");
      at = col;
    } else if (at > col) {
      fputc(' ', f);
      at++;
    }
    fprintf(f, "%.*s", word, text);
    at += word;
    text += word;
    text += strspn(text, " ");
  }
  fputc('\n', f);
}

static void print_options(FILE *f, const sy__cli_opt *o) {
  for (; o && o->name; o++) {
    char left[64];
    int n = snprintf(left, sizeof left, "  --%s%s%s", o->name,
                     o->meta ? " " : "", o->meta ? o->meta : "");
    fputs(left, f);
    if (n + 1 > HELP_COL) {
      fputc('\n', f);
      n = 0;
    }
    fprintf(f, "%*s", HELP_COL - n, "");
    print_wrapped(f, o->help, HELP_COL);
  }
}

/* The whole help: built-in commands, those of the plugins (found in the
 * plugin directory, without opening a database), and global options. */
static void usage(FILE *f, const sy__cli *c) {
  sy_plugins *p = NULL;
  char err[256];
  fprintf(f,
          "usage: switchyard [global options] COMMAND [options]\n\n"
          "commands:\n");
  for (size_t i = 0; i < NCOMMANDS; i++) {
    fprintf(f, "  %-11s", commands[i]->name);
    print_wrapped(f, commands[i]->summary, 13);
  }
  if (c->o.plugin_dir && sy_plugins_new(&p) == 0 &&
      sy_plugins_load_dir(p, c->o.plugin_dir, err, sizeof err) == 0) {
    for (int i = 0; i < sy_plugins_command_count(p); i++) {
      const sy_command_entry *pc = sy_plugins_command_at(p, i);
      fprintf(f, "  %-11s", pc->cmd->name);
      print_wrapped(f, pc->cmd->summary, 13);
    }
  }
  sy_plugins_free(p);
  fprintf(f,
          "\n'switchyard COMMAND --help' tells a command's arguments.\n\n"
          "global options (before or after the command):\n");
  print_options(f, globals);
}

static void print_plugin_option(void *ud, const char *name) {
  (void)ud;
  printf("  --%s V\n", name);
}

static void command_help(const sy__cli *c, const sy__cli_cmd *cmd) {
  sy_plugins *p = NULL;
  char err[256];
  printf("usage: switchyard [global options] %s %s\n\n", cmd->name, cmd->args);
  print_wrapped(stdout, cmd->summary, 0);
  if (cmd->opts) {
    printf("\noptions:\n");
    print_options(stdout, cmd->opts);
  }
  /* retry takes the options plugins add (sy_plugin_def.retry_options) */
  if (cmd == &sy__cli_retry && c->o.plugin_dir && sy_plugins_new(&p) == 0 &&
      sy_plugins_load_dir(p, c->o.plugin_dir, err, sizeof err) == 0) {
    printf("\noptions the plugins add (see their documentation):\n");
    sy_plugins_retry_names(p, print_plugin_option, NULL);
  }
  sy_plugins_free(p);
}

/* ---------------------------------------------------------------------
 * Shared by the commands */

int sy__cli_open(sy__cli *c, sy_engine **e) {
  char err[1024];
  if (sy_engine_open(e, &c->o, err, sizeof err)) {
    fprintf(stderr, "switchyard: %s\n", err);
    return 1;
  }
  return 0;
}

int sy__cli_fail(sy_engine *e, int rc) {
  fprintf(stderr, "switchyard: %s\n", sy_engine_errmsg(e));
  return rc == SY_ENOTFOUND || rc == SY_ESTATE || rc == SY_EINVAL
             ? SY__EXIT_USAGE
             : 1;
}

int sy__cli_store_fail(sy_engine *e) {
  fprintf(stderr, "switchyard: %s\n", sy_store_errmsg(sy_engine_store(e)));
  return 1;
}

void sy__cli_time(int64_t ms, char *buf, size_t len) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if (!ms) {
    snprintf(buf, len, "-");
    return;
  }
  gmtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

void sy__cli_print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (s) {
    puts(s);
    free(s);
  }
  json_decref(j);
}

/* Commands that only read or change existing instances must not leave an
 * empty database behind a mistyped --db. */
static int need_db(const sy__cli *c) {
  if (sy_store_exists(c->o.db_path)) {
    return 0;
  }
  fprintf(stderr, "switchyard: no database at %s (--db)\n", c->o.db_path);
  return SY__EXIT_USAGE;
}

/* A command of a plugin. Without a database, the command is looked up on
 * a throwaway one first: it says whether this use of it may create the
 * real one. */
static int run_plugin_command(sy__cli *c) {
  sy_engine *e;
  const sy_command_entry *pc;
  const char *cmd = c->argv[0], *db_path = c->o.db_path;
  int exists = sy_store_exists(db_path);
  char *before = NULL;
  int rc, may_create = 0;
  if (!exists) {
    c->o.db_path = ":memory:";
  }
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  if (!(pc = sy_plugins_command(sy_engine_plugins(e), cmd))) {
    sy_engine_close(e);
    fprintf(stderr, "switchyard: unknown command '%s'\n", cmd);
    usage(stderr, c);
    return SY__EXIT_USAGE;
  }
  if (!exists && !c->help) {
    for (const char *const *s = pc->cmd->creates; s && *s; s++) {
      may_create |=
          strcmp(*s, "*") == 0 || (c->argc > 1 && strcmp(*s, c->argv[1]) == 0);
    }
    sy_engine_close(e);
    c->o.db_path = db_path;
    if (!may_create) {
      fprintf(stderr, "switchyard: no database at %s (--db)\n", db_path);
      return SY__EXIT_USAGE;
    }
    before = sy_store_tables_before(db_path);
    if ((rc = sy__cli_open(c, &e))) {
      sy_store_undo_create(db_path, before);
      free(before);
      return rc;
    }
    pc = sy_plugins_command(sy_engine_plugins(e), cmd);
  }
  if (c->help) {
    char *args[] = {c->argv[0], "--help", NULL};
    rc = pc->cmd->run(pc->plugin->state, 2, args);
  } else {
    if (c->json) {
      /* The global --json was taken out; the command reads its own. There
       * is room: argv lost at least that argument. */
      c->argv[c->argc++] = "--json";
    }
    rc = pc->cmd->run(pc->plugin->state, c->argc, c->argv);
  }
  sy_engine_close(e);
  if (rc && !exists && !c->help) {
    sy_store_undo_create(db_path, before);
  }
  free(before);
  return rc;
}

int main(int argc, char **argv) {
  sy__cli c;
  int rc;
  /* The engine allocates and frees in waves (a batch of coroutines and
   * vars per loop turn); glibc's default returns the heap top to the
   * kernel after each wave, and the page faults that follow cost more
   * than the engine's own work. Keep up to 256 MiB of free heap. */
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_TOP_PAD, 16 << 20);
  memset(&c, 0, sizeof c);
  if ((rc = parse_globals(&c, argc, argv))) {
    return rc;
  }
  if (c.argc == 0 || (c.argc == 1 && strcmp(c.argv[0], "help") == 0)) {
    usage(c.help || c.argc ? stdout : stderr, &c);
    return c.help || c.argc ? 0 : SY__EXIT_USAGE;
  }
  for (size_t i = 0; i < NCOMMANDS; i++) {
    if (strcmp(c.argv[0], commands[i]->name) == 0) {
      c.cmd = commands[i];
    }
  }
  if (!c.cmd) {
    return run_plugin_command(&c);
  }
  if (c.help) {
    command_help(&c, c.cmd);
    return 0;
  }
  c.o.expect_write = (c.cmd->flags & SY__CLI_WRITES) != 0;
  if ((c.cmd->flags & SY__CLI_NEEDS_DB) && need_db(&c)) {
    return SY__EXIT_USAGE;
  }
  return c.cmd->run(&c);
}
