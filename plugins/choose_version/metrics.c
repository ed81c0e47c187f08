/* The router's metrics for `switchyard serve` (Prometheus' text format):
 * per workflow, flag and version, the counters report reads (routed,
 * completed, cancelled, incidents as counters; in flight and open
 * incidents as gauges), and per flag its rate and kill switch. */
#include <stdio.h>
#include <string.h>

#include "cv.h"

typedef void (*put_fn)(void *ud, const char *text);

/* A label value: \\, \" and \n escaped, the rest as it is. */
static void put_label(put_fn put, void *ud, const char *v) {
  char buf[2] = {0, 0};
  for (const char *p = v ? v : ""; *p; p++) {
    if (*p == '\\' || *p == '"' || *p == '\n') {
      put(ud, *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : "\\n");
    } else {
      buf[0] = *p;
      put(ud, buf);
    }
  }
}

static const struct {
  const char *name, *type, *help;
  int column; /* of CVQ_METRICS_COUNTERS */
} series[] = {
    {"switchyard_routed_total", "counter",
     "Instances choose_version routed, by workflow, flag and version.", 3},
    {"switchyard_routed_completed_total", "counter",
     "Routed instances that completed, by the version they took.", 4},
    {"switchyard_routed_cancelled_total", "counter",
     "Routed instances that were cancelled, by the version they took.", 5},
    {"switchyard_routed_incidents_total", "counter",
     "Incidents raised on routed instances, by the version they took.", 6},
    {"switchyard_routed_in_flight", "gauge",
     "Routed instances not ended yet, by the version they took.", 7},
    {"switchyard_routed_open_incidents", "gauge",
     "Open incidents of routed instances, by the version they took.", 8},
};

static int put_counters(cv_router *r, put_fn put, void *ud) {
  sy_stmt *s = cv_stmt(r, CVQ_METRICS_COUNTERS);
  char num[32];
  int rc = SY_DONE;
  if (!s) {
    return -1;
  }
  for (size_t k = 0; k < sizeof series / sizeof *series; k++) {
    put(ud, "# HELP ");
    put(ud, series[k].name);
    put(ud, " ");
    put(ud, series[k].help);
    put(ud, "\n# TYPE ");
    put(ud, series[k].name);
    put(ud, " ");
    put(ud, series[k].type);
    put(ud, "\n");
    while ((rc = sy_stmt_step(s)) == SY_ROW) {
      put(ud, series[k].name);
      put(ud, "{workflow=\"");
      put_label(put, ud, sy_stmt_column_text(s, 0));
      put(ud, "\",flag=\"");
      put_label(put, ud, sy_stmt_column_text(s, 1));
      put(ud, "\",version=\"");
      put_label(put, ud, sy_stmt_column_text(s, 2));
      snprintf(num, sizeof num, "\"} %lld\n",
               (long long)sy_stmt_column_int(s, series[k].column));
      put(ud, num);
    }
    sy_stmt_reset(s);
    if (rc != SY_DONE) {
      return cv_db_fail(r, s);
    }
  }
  return 0;
}

static int put_flags(cv_router *r, put_fn put, void *ud) {
  sy_stmt *s = cv_stmt(r, CVQ_METRICS_FLAGS);
  char num[48];
  int rc = SY_DONE;
  if (!s) {
    return -1;
  }
  for (int k = 0; k < 2; k++) {
    put(ud, k == 0 ? "# HELP switchyard_flag_rate_ratio The share of "
                     "subjects a flag sends to v2 (0 to 1).\n"
                     "# TYPE switchyard_flag_rate_ratio gauge\n"
                   : "# HELP switchyard_flag_killed 1 while a flag's kill "
                     "switch sends everyone to v1.\n"
                     "# TYPE switchyard_flag_killed gauge\n");
    while ((rc = sy_stmt_step(s)) == SY_ROW) {
      put(ud, k == 0 ? "switchyard_flag_rate_ratio{flag=\""
                     : "switchyard_flag_killed{flag=\"");
      put_label(put, ud, sy_stmt_column_text(s, 0));
      if (k == 0) {
        snprintf(num, sizeof num, "\"} %.6f\n",
                 (double)sy_stmt_column_int(s, 1) / 1e6);
      } else {
        snprintf(num, sizeof num, "\"} %d\n", sy_stmt_column_int(s, 2) ? 1 : 0);
      }
      put(ud, num);
    }
    sy_stmt_reset(s);
    if (rc != SY_DONE) {
      return cv_db_fail(r, s);
    }
  }
  return 0;
}

int cv_metrics(void *plugin, void (*put)(void *ud, const char *text),
               void *ud) {
  cv_router *r = plugin;
  if (put_counters(r, put, ud) || put_flags(r, put, ud)) {
    r->api->log(r->e, "choose_version: metrics: %s", r->errmsg);
    return SY_ESTORE;
  }
  return 0;
}
