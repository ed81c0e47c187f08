/* The command line's internals, shared by its files: cli.c (global
 * options, the command table, help, dispatch), cli_run.c (start, run,
 * check), cli_inspect.c (status, instances, show) and cli_incidents.c
 * (incidents, retry, cancel).
 *
 * A command is a row of a table: its name, synopsis, summary, option table
 * and what it needs (an existing database, write access). Options are
 * parsed with getopt_long from that table, which also writes the help, so
 * the two never disagree. Errors reach the user here and only here: bad
 * input exits 2 naming the argument, a runtime failure exits 1. */
#ifndef SY_CLI_H
#define SY_CLI_H

#include <jansson.h>
#include <stdint.h>

#include "engine.h"

#define SY__EXIT_USAGE 2
#define SY__CLI_MAX_SETTINGS 64

typedef struct sy__cli_opt {
  const char *name; /* the long name, without "--" */
  int has_arg;      /* no_argument or required_argument (getopt.h) */
  int key;          /* what sy__cli_next returns for it (> 1) */
  const char *meta; /* its value in the help: "N", "FILE|-" */
  const char *help;
} sy__cli_opt;

struct sy__cli_cmd;

typedef struct sy__cli {
  sy_engine_opts o;
  sy_setting settings[SY__CLI_MAX_SETTINGS];
  char plugin_dir[4096];
  int json;
  int help;
  int db_given; /* --db was on the command line */
  /* The command and its arguments, global options taken out. */
  int argc;
  char **argv;
  const struct sy__cli_cmd *cmd;
  int optind;        /* sy__cli_next's place in argv */
  int operands_only; /* it passed "--" */
} sy__cli;

enum {
  SY__CLI_NEEDS_DB = 1, /* refuse a --db that does not exist */
  SY__CLI_WRITES = 2    /* say so at once on a read-only database */
};

typedef struct sy__cli_cmd {
  const char *name;
  const char *args; /* synopsis after the name */
  const char *summary;
  const sy__cli_opt *opts; /* terminated by a NULL name; may be NULL */
  int (*run)(sy__cli *c);
  unsigned flags;
} sy__cli_cmd;

/* The commands of each family, in the order the help lists them. */
extern const sy__cli_cmd sy__cli_start, sy__cli_run, sy__cli_check;
extern const sy__cli_cmd sy__cli_status, sy__cli_instances, sy__cli_show;
extern const sy__cli_cmd sy__cli_incidents, sy__cli_retry, sy__cli_cancel;
extern const sy__cli_cmd sy__cli_signal, sy__cli_db, sy__cli_serve;

/* The next option or operand of the command: returns its key (1 for an
 * operand) with *val its value (or NULL), 0 at the end, or -1 after
 * printing what was wrong (exit SY__EXIT_USAGE). */
int sy__cli_next(sy__cli *c, const char **val);

/* Prints "switchyard: <message>" and a pointer to the help; returns
 * SY__EXIT_USAGE. */
__attribute__((format(printf, 1, 2))) int sy__cli_usage_error(const char *fmt,
                                                              ...);
/* Parses a whole decimal number in [min, max]; no junk, no sign games. */
int sy__cli_parse_int(const char *s, long long min, long long max,
                      long long *out);
/* Opens the engine the global options describe; 0, or the exit code after
 * printing why not. */
int sy__cli_open(sy__cli *c, sy_engine **e);
/* Prints an engine failure; returns its exit code (2 when the input named
 * something that does not exist or is in the wrong state, else 1). */
int sy__cli_fail(sy_engine *e, int rc);
/* Prints a store failure; returns 1. */
int sy__cli_store_fail(sy_engine *e);

/* A --var argument of start: KEY=VALUE (a string) or KEY:=JSON. */
typedef struct sy__cli_var {
  const char *key; /* not NUL-terminated: keylen bytes */
  size_t keylen;
  const char *value;
  int is_json;
} sy__cli_var;
/* Splits arg (kept, not copied); -1 when it is neither form. */
int sy__cli_var_parse(const char *arg, sy__cli_var *out);
/* The same as the option --var: vars[*n] and one more, or the usage error
 * (its exit code). */
int sy__cli_add_var(sy__cli_var *vars, int *n, const char *arg);
/* tmpl with each {n} replaced by n; malloc'd, NULL when out of memory. */
char *sy__cli_expand(const char *tmpl, long long n);
/* The vars of instance *n (n NULL: {n} kept as written), as compact JSON
 * text with sorted keys (malloc'd), or NULL with a message in err. */
char *sy__cli_build_vars(const sy__cli_var *vars, int nvars, const long long *n,
                         char *err, size_t errlen);
/* The vars of every instance as one text to put each number into, when
 * that gives what sy__cli_build_vars would; NULL with *err empty when it
 * would not, NULL with err set when the vars are bad. */
char *sy__cli_vars_template(const sy__cli_var *vars, int nvars, char *err,
                            size_t errlen);

/* Output helpers. */
void sy__cli_time(int64_t ms, char *buf, size_t len); /* ISO 8601 UTC */
void sy__cli_print_json(json_t *j);                   /* and frees it */
json_t *sy__cli_instance_json(const sy_instance_row *r);
/* An incident as a row of the table, or appended to the JSON array ud. */
int sy__cli_print_incident(void *ud, const sy_incident_row *r);
/* What status, instances, show and incidents print with --json, for
 * serve's API as well (NULL: the store failed; show: JSON null when there
 * is no such instance). */
json_t *sy__cli_status_json(sy_store *st);
json_t *sy__cli_instances_json(sy_store *st, const sy_instance_filter *f);
/* show: with plugins 0, without what plugins describe (serve's instance
 * page, where they draw it themselves). */
json_t *sy__cli_show_json(sy_engine *e, int64_t id, int plugins, int *found);
json_t *sy__cli_incidents_json(sy_store *st, int all);

#endif
