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
  if (cv_exec(r, write ? CVQ_BEGIN_WRITE : CVQ_BEGIN_READ)) {
    return cv_cmd_db_error(r, cmd, "begin");
  }
  return 0;
}

/* SQLite rolls a transaction back by itself after some errors (a full
 * disk, an I/O error); a ROLLBACK is only sent while one is still open,
 * so that its "no transaction is active" does not hide the first error. */
static void rollback(cv_router *r, const char *cmd) {
  if (!sqlite3_get_autocommit(r->db) && cv_exec(r, CVQ_ROLLBACK)) {
    cv_cmd_db_error(r, cmd, "rollback");
  }
}

int cv_cmd_end(cv_router *r, const char *cmd, int rc) {
  if (rc) {
    rollback(r, cmd);
    return rc;
  }
  if (cv_exec(r, CVQ_COMMIT)) {
    rc = cv_cmd_db_error(r, cmd, "commit");
    rollback(r, cmd);
  }
  return rc;
}
