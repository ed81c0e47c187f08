/* What the `rollout` and `report` commands share: how they report bad
 * input (exit 2) and database failures (exit 1), how they print times,
 * and their own transactions. A command runs outside any engine
 * transaction, so it is the one part of the plugin that begins and ends
 * transactions (plugin.h, sy_api.db); each BEGIN, COMMIT and ROLLBACK is
 * checked here. */
#include <jansson.h>
#include <math.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cv.h"

#define EXIT_USAGE 2

int cv_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "switchyard %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see switchyard %s --help)\n", cmd);
  va_end(ap);
  return EXIT_USAGE;
}

int cv_cmd_db_error(cv_router *r, const char *cmd, const char *what) {
  fprintf(stderr, "switchyard %s: %s: %s\n", cmd, what, r->errmsg);
  return 1;
}

void cv_fmt_time(int64_t ms, char *buf, size_t len) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if (!ms) {
    snprintf(buf, len, "-");
    return;
  }
  gmtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

int cv_cmd_begin(cv_router *r, const char *cmd, int write) {
  if (r->api->begin(r->e, write)) {
    cv_db_fail(r, NULL);
    return cv_cmd_db_error(r, cmd, "begin");
  }
  return 0;
}

/* A failed commit is rolled back by the engine, a transaction SQLite
 * already ended (a full disk) is left alone: the first error stands. */
int cv_cmd_end(cv_router *r, const char *cmd, int rc) {
  if (rc) {
    r->api->rollback(r->e);
    return rc;
  }
  if (r->api->commit(r->e)) {
    cv_db_fail(r, NULL);
    rc = cv_cmd_db_error(r, cmd, "commit");
  }
  return rc;
}

int cv_parse_age(const char *s, int64_t *ms) {
  char unit;
  double amount;
  int n = 0;
  size_t len = strlen(s);
  if (len < 2 || s[0] < '0' || s[0] > '9' ||
      sscanf(s, "%lf%c%n", &amount, &unit, &n) != 2 || (size_t)n != len ||
      !(amount >= 0) || !isfinite(amount) || !strchr("smhd", unit)) {
    return -1;
  }
  double mult = unit == 's'   ? 1e3
                : unit == 'm' ? 6e4
                : unit == 'h' ? 3.6e6
                              : 8.64e7;
  if (amount * mult > 1e15) { /* past 30,000 years: a typo */
    return -1;
  }
  *ms = (int64_t)(amount * mult);
  return 0;
}

void cv_fmt_age(int64_t ms, char *buf, size_t len) {
  if (ms >= 86400000LL) {
    snprintf(buf, len, "%lldd", (long long)(ms / 86400000LL));
  } else if (ms >= 3600000LL) {
    snprintf(buf, len, "%lldh", (long long)(ms / 3600000LL));
  } else if (ms >= 60000LL) {
    snprintf(buf, len, "%lldm", (long long)(ms / 60000LL));
  } else {
    snprintf(buf, len, "%llds", (long long)(ms > 0 ? ms / 1000 : 0));
  }
}

const char *cv_login_name(void) {
  struct passwd *pw = getpwuid(geteuid());
  const char *u = getenv("USER");
  if (pw && pw->pw_name && *pw->pw_name) {
    return pw->pw_name;
  }
  return u && *u ? u : "unknown";
}

int cv_audit_add(cv_router *r, const cv_change *c) {
  sy_stmt *s = cv_stmt(r, CVQ_AUDIT_ADD);
  int64_t id;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, c->flag);
  sy_stmt_bind_text(s, 2, c->what);
  sy_stmt_bind_text(s, 3, c->subject);
  sy_stmt_bind_text(s, 4, c->old_value);
  sy_stmt_bind_text(s, 5, c->new_value);
  sy_stmt_bind_int(s, 6, c->rate);
  sy_stmt_bind_int(s, 7, c->killed);
  sy_stmt_bind_text(s, 8, c->reason);
  sy_stmt_bind_text(s, 9, c->actor);
  sy_stmt_bind_int(s, 10, c->at);
  sy_stmt_bind_text(s, 11, c->numbers);
  if (sy_stmt_step(s) != SY_ROW) {
    return cv_db_fail(r, s);
  }
  id = sy_stmt_column_int(s, 0);
  if (cv_step_done(r, s)) {
    return -1;
  }
  /* Whoever listens hears of it in the same transaction: the change and
   * its notifications are committed together, or neither is. */
  return cv_notify_enqueue(r, c, id);
}

int64_t cv_setting_int(cv_router *r, const char *key, int64_t def) {
  const char *v = r->api->setting(r->e, key);
  long long n = v ? atoll(v) : 0;
  return n > 0 ? n : def;
}

int cv_flag_set(cv_router *r, int q, const char *flag, int64_t value,
                int64_t at) {
  sy_stmt *s = cv_stmt(r, q);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  sy_stmt_bind_int(s, 2, value);
  sy_stmt_bind_int(s, 3, at);
  return cv_step_done(r, s);
}

void cv_print_json(json_t *j) {
  char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  if (text) {
    puts(text);
    free(text);
  }
  json_decref(j);
}

int cv_parse_args(const char *cmd, int argc, char **argv, const cv_opt *opts,
                  const char **pos, int maxpos, int *npos, int dash_digits) {
  *npos = 0;
  for (int i = 2; i < argc; i++) {
    const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
    const cv_opt *opt = NULL;
    int positional =
        o[0] != '-' || (dash_digits && (!o[1] || (o[1] >= '0' && o[1] <= '9')));
    if (positional) {
      if (*npos == maxpos) {
        return cv_usage_error(cmd, "unexpected argument '%s'", o);
      }
      pos[(*npos)++] = o;
      continue;
    }
    for (const cv_opt *c = opts; c->name && !opt; c++) {
      opt = o[1] == '-' && strcmp(o + 2, c->name) == 0 ? c : NULL;
    }
    if (!opt) {
      return cv_usage_error(cmd, "unknown option '%s'", o);
    }
    if (!opt->value) {
      *opt->set = 1;
      continue;
    }
    if (opt->max && *opt->set == opt->max) {
      return cv_usage_error(cmd, "at most %d %s", opt->max, o);
    }
    if (!v || !*v) {
      return cv_usage_error(cmd, "%s needs a non-empty value", o);
    }
    opt->value[opt->max ? (*opt->set)++ : 0] = v;
    i++;
  }
  return 0;
}

int cv_flag_and_actor(const char *cmd, const char *flag, const char **actor) {
  if (!flag) {
    return cv_usage_error(cmd, "which flag?");
  }
  if (!cv_flag_name_valid(flag)) {
    return cv_usage_error(cmd, "bad flag name '%s'", flag);
  }
  if (!*actor) {
    *actor = cv_login_name();
  }
  return 0;
}
