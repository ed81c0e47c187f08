/* `switchyard signal NAME`: a signal for an instance, as a vendor's callback
 * or a person's decision would send it (see sy_engine_signal). */
#include <ctype.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"

enum { O_INSTANCE = 256, O_WHERE, O_ALL, O_VAR };

static const sy__cli_opt signal_opts[] = {
    {"instance", required_argument, O_INSTANCE, "ID", "the instance"},
    {"where", required_argument, O_WHERE, "VAR=VALUE",
     "the live instance whose var VAR is VALUE (exactly one, unless --all)"},
    {"all", no_argument, O_ALL, NULL, "with --where: every one that matches"},
    {"var", required_argument, O_VAR, "KEY=VALUE|KEY:=JSON",
     "a var of the signal, which ctx.wait_signal returns (repeatable)"},
    {NULL, 0, 0, NULL, NULL}};

typedef struct signal_args {
  const char *name;
  sy_signal_target to;
  int has_instance;
  sy__cli_var *vars;
  int nvars;
} signal_args;

/* VAR must be a plain name: it goes into a JSON path. */
static int plain_name(const char *s, size_t n) {
  if (n == 0 || isdigit((unsigned char)s[0])) {
    return 0;
  }
  for (size_t i = 0; i < n; i++) {
    if (!isalnum((unsigned char)s[i]) && s[i] != '_') {
      return 0;
    }
  }
  return 1;
}

static int parse_where(signal_args *a, char *v) {
  char *eq = strchr(v, '=');
  if (!eq || !plain_name(v, (size_t)(eq - v))) {
    return sy__cli_usage_error(
        "--where: expected VAR=VALUE, VAR a var's name (letters, digits, _), "
        "got '%s'",
        v);
  }
  *eq = '\0';
  a->to.var = v;
  a->to.value = eq + 1;
  return 0;
}

static int parse_signal(sy__cli *c, signal_args *a) {
  const char *v;
  long long id;
  int key, rc;
  while ((key = sy__cli_next(c, &v)) > 0) {
    switch (key) {
      case O_INSTANCE:
        if (sy__cli_parse_int(v, 1, LLONG_MAX, &id)) {
          return sy__cli_usage_error(
              "--instance: expected an instance id, got '%s'", v);
        }
        a->to.instance = id;
        a->has_instance = 1;
        break;
      case O_WHERE:
        if ((rc = parse_where(a, (char *)v))) {
          return rc;
        }
        break;
      case O_ALL:
        a->to.all = 1;
        break;
      case O_VAR:
        if ((rc = sy__cli_add_var(a->vars, &a->nvars, v))) {
          return rc;
        }
        break;
      default:
        if (a->name) {
          return sy__cli_usage_error("signal: unexpected argument '%s'", v);
        }
        a->name = v;
    }
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if (!a->name || !*a->name || strlen(a->name) > 255) {
    return sy__cli_usage_error(
        "signal: which signal? (a name, 1 to 255 "
        "bytes)");
  }
  if (a->has_instance == !!a->to.var) {
    return sy__cli_usage_error(
        "signal: name the instance with --instance ID or --where VAR=VALUE "
        "(one of them)");
  }
  if (a->to.all && !a->to.var) {
    return sy__cli_usage_error("signal: --all goes with --where");
  }
  return 0;
}

static int cmd_signal(sy__cli *c) {
  signal_args a = {0};
  sy_engine *e = NULL;
  char err[512], *vars = NULL;
  int rc, sent, woke;
  if (!(a.vars = calloc((size_t)c->argc, sizeof *a.vars))) {
    return 1;
  }
  if ((rc = parse_signal(c, &a))) {
    goto done;
  }
  if (!(vars = sy__cli_build_vars(a.vars, a.nvars, NULL, err, sizeof err))) {
    rc = sy__cli_usage_error("%s", err);
    goto done;
  }
  if ((rc = sy__cli_open(c, &e))) {
    goto done;
  }
  if ((rc = sy_engine_signal(e, &a.to, a.name, vars, &sent, &woke))) {
    rc = sy__cli_fail(e, rc);
  } else if (a.to.var) {
    printf("signal '%s' sent to %d instance%s (%d waiting for it, due now)\n",
           a.name, sent, sent == 1 ? "" : "s", woke);
  } else {
    printf(
        "signal '%s' sent to instance %lld (%s)\n", a.name,
        (long long)a.to.instance,
        woke ? "it was waiting for it: due now" : "kept until it waits for it");
  }
done:
  sy_engine_close(e);
  free(vars);
  free(a.vars);
  return rc;
}

const sy__cli_cmd sy__cli_signal = {
    "signal",
    "NAME (--instance ID | --where VAR=VALUE [--all]) [--var k=v | --var "
    "k:=JSON]...",
    "send a signal to an instance: ctx.wait_signal(NAME) takes it, now or "
    "when it waits",
    signal_opts,
    cmd_signal,
    SY__CLI_NEEDS_DB | SY__CLI_WRITES};
