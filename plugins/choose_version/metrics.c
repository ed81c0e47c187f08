/* The router's metrics for `switchyard serve` (Prometheus' text format):
 * per workflow, flag and version, the counters report reads (routed,
 * completed, cancelled, incidents as counters; in flight and open
 * incidents as gauges) and the histograms of branch and step time of
 * completed instances; per flag its rate and kill switch. */
#include <stdio.h>
#include <stdlib.h>
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

/* A family's # HELP and # TYPE lines. */
static void put_family(put_fn put, void *ud, const char *name, const char *type,
                       const char *help) {
  put(ud, "# HELP ");
  put(ud, name);
  put(ud, " ");
  put(ud, help);
  put(ud, "\n# TYPE ");
  put(ud, name);
  put(ud, " ");
  put(ud, type);
  put(ud, "\n");
}

/* A sample's name and its (workflow, flag, version) labels, the closing
 * brace left to the caller (a histogram's bucket adds le). */
static void put_key(put_fn put, void *ud, const char *name, const char *suffix,
                    const char *workflow, const char *flag,
                    const char *version) {
  put(ud, name);
  put(ud, suffix);
  put(ud, "{workflow=\"");
  put_label(put, ud, workflow);
  put(ud, "\",flag=\"");
  put_label(put, ud, flag);
  put(ud, "\",version=\"");
  put_label(put, ud, version);
  put(ud, "\"");
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
    put_family(put, ud, series[k].name, series[k].type, series[k].help);
    while ((rc = sy_stmt_step(s)) == SY_ROW) {
      put_key(put, ud, series[k].name, "", sy_stmt_column_text(s, 0),
              sy_stmt_column_text(s, 1), sy_stmt_column_text(s, 2));
      snprintf(num, sizeof num, "} %lld\n",
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

/* One (workflow, flag, version)'s histogram: cumulative buckets, in
 * seconds as Prometheus has it, then the sum and the count. */
typedef struct hist_key {
  char *workflow, *flag, *version;
  int64_t n[CV_LATENCY_BUCKETS], sum_ms;
} hist_key;

static void put_hist(put_fn put, void *ud, const char *name,
                     const hist_key *h) {
  char num[64];
  int64_t total = 0;
  for (int b = 0; b < CV_LATENCY_BUCKETS; b++) {
    total += h->n[b];
    put_key(put, ud, name, "_bucket", h->workflow, h->flag, h->version);
    if (cv_latency_le[b] == INT64_MAX) {
      snprintf(num, sizeof num, ",le=\"+Inf\"} %lld\n", (long long)total);
    } else {
      snprintf(num, sizeof num, ",le=\"%g\"} %lld\n",
               (double)cv_latency_le[b] / 1000, (long long)total);
    }
    put(ud, num);
  }
  put_key(put, ud, name, "_sum", h->workflow, h->flag, h->version);
  snprintf(num, sizeof num, "} %.3f\n", (double)h->sum_ms / 1000);
  put(ud, num);
  put_key(put, ud, name, "_count", h->workflow, h->flag, h->version);
  snprintf(num, sizeof num, "} %lld\n", (long long)total);
  put(ud, num);
}

static void hist_clear(hist_key *h) {
  free(h->workflow);
  free(h->flag);
  free(h->version);
  memset(h, 0, sizeof *h);
}

/* Whether the row belongs to h's key; h takes the row's key when empty. */
static int same_key(hist_key *h, sy_stmt *s) {
  const char *w = sy_stmt_column_text(s, 0), *f = sy_stmt_column_text(s, 1),
             *v = sy_stmt_column_text(s, 2);
  if (!h->workflow) {
    h->workflow = strdup(w);
    h->flag = strdup(f);
    h->version = strdup(v);
    return h->workflow && h->flag && h->version ? 1 : -1;
  }
  return strcmp(h->workflow, w) == 0 && strcmp(h->flag, f) == 0 &&
         strcmp(h->version, v) == 0;
}

static int put_latency(cv_router *r, put_fn put, void *ud) {
  static const struct {
    const char *kind, *name, *help;
  } hs[] = {
      {"branch", "switchyard_routed_branch_seconds",
       "Time from the routing decision to the end of routed instances that "
       "completed, by the version they took."},
      {"steps", "switchyard_routed_step_seconds",
       "Time the steps of routed instances that completed ran after the "
       "routing decision, by the version they took."},
  };
  sy_stmt *s = cv_stmt(r, CVQ_METRICS_LATENCY);
  hist_key h = {0};
  int rc = SY_DONE, same;
  if (!s) {
    return -1;
  }
  for (size_t k = 0; k < sizeof hs / sizeof *hs; k++) {
    put_family(put, ud, hs[k].name, "histogram", hs[k].help);
    sy_stmt_bind_text(s, 1, hs[k].kind);
    while ((rc = sy_stmt_step(s)) == SY_ROW) {
      int64_t le = sy_stmt_column_int(s, 3);
      int b = 0;
      if ((same = same_key(&h, s)) == 0) {
        put_hist(put, ud, hs[k].name, &h);
        hist_clear(&h);
        same = same_key(&h, s);
      }
      if (same < 0) {
        break;
      }
      while (b < CV_LATENCY_BUCKETS - 1 && le > cv_latency_le[b]) {
        b++;
      }
      h.n[b] += sy_stmt_column_int(s, 4);
      h.sum_ms += sy_stmt_column_int(s, 5);
    }
    sy_stmt_reset(s);
    if (rc != SY_DONE && rc != SY_ROW) {
      hist_clear(&h);
      return cv_db_fail(r, s);
    }
    if (rc == SY_ROW) { /* a key could not be copied */
      hist_clear(&h);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1;
    }
    if (h.workflow) {
      put_hist(put, ud, hs[k].name, &h);
    }
    hist_clear(&h);
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
    put_family(put, ud,
               k == 0 ? "switchyard_flag_rate_ratio" : "switchyard_flag_killed",
               "gauge",
               k == 0 ? "The share of subjects a flag sends to v2 (0 to 1)."
                      : "1 while a flag's kill switch sends everyone to v1.");
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
  if (put_counters(r, put, ud) || put_latency(r, put, ud) ||
      put_flags(r, put, ud)) {
    r->api->log(r->e, "choose_version: metrics: %s", r->errmsg);
    return SY_ESTORE;
  }
  return 0;
}
