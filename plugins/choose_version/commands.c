/* What the `rollout` and `report` commands share: how they report bad
 * input (exit 2) and database failures (exit 1), how they print times,
 * and their own transactions. A command runs outside any engine
 * transaction, so it is the one part of the plugin that begins and ends
 * transactions (plugin.h, sy_api.db); each BEGIN, COMMIT and ROLLBACK is
 * checked here. */
#include <stdarg.h>
#include <stdio.h>
#include <time.h>

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
