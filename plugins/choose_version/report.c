/* `switchyard report FLAG`: is V2 better or worse than V1, and how sure are
 * we? Reads cv_decisions (one row per routed instance, kept up to date by
 * the event hook) and the audit trail, in one read transaction; the
 * statistics are in stats.c, the SQL in sql.c. The JSON output's schema is
 * "switchyard.report/1", documented in the README; fields are only ever
 * added to it. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"
#include "stats.h"

#define CMD "report"

static const char report_usage[] =
    "usage: switchyard report FLAG [options]\n"
    "  --since T, --until T   only instances decided in [since, until): an\n"
    "                         ISO date/time in UTC (2026-11-23, "
    "2026-11-23T14:00:00Z),\n"
    "                         or an age (90s, 15m, 2h, 7d ago)\n"
    "  --workflow W           only instances of workflow W\n"
    "  --alpha A              significance level (default 0.05)\n"
    "  --min-effect P         smallest difference worth detecting, in "
    "percentage\n"
    "                         points of incident rate (default 1)\n"
    "  --fail-if-worse        exit 1 when V2 is significantly worse\n"
    "  --json                 machine-readable (schema switchyard.report/1)\n"
    "  --shadow               the shadow runs instead (rollout shadow): runs,\n"
    "                         mismatch rate, errors, timeouts, lost, skipped\n"
    "                         by the budget, both sides' latency, the first\n"
    "                         mismatches (--json: switchyard.shadow/1)\n";

#define usage_error(...) cv_usage_error(CMD, __VA_ARGS__)

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d) {
  int64_t era;
  int yoe, doy, doe;
  y -= m <= 2;
  era = (y >= 0 ? y : y - 399) / 400;
  yoe = (int)(y - era * 400);
  doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

/* Parses a time bound into ms since the epoch; now_ms anchors ages. */
static int parse_time(const char *s, int64_t now_ms, int64_t *out) {
  int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
  char z;
  int64_t age;
  size_t len = strlen(s);
  if (cv_parse_age(s, &age) == 0) {
    *out = now_ms - age;
    return 0;
  }
  if (len == 10 && sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) == 3 &&
      n == 10) {
    /* a date alone */
  } else if (len == 19 &&
             sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi, &sec,
                    &n) == 6 &&
             n == 19) {
  } else if (len == 20 &&
             sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%c%n", &y, &mo, &d, &h, &mi,
                    &sec, &z, &n) == 7 &&
             n == 20 && z == 'Z') {
  } else {
    return -1;
  }
  if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60 ||
      y < 1970 || h < 0 || mi < 0 || sec < 0) {
    return -1;
  }
  *out =
      ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60000LL + sec * 1000LL;
  return 0;
}

static int parse_double(const char *s, double lo, double hi, double *out) {
  char *end;
  double v;
  if (!s || !*s) {
    return -1;
  }
  v = strtod(s, &end);
  if (*end || !isfinite(v) || v <= lo || v >= hi) {
    return -1;
  }
  *out = v;
  return 0;
}

typedef struct latency {
  int64_t *v;
  size_t n, cap;
} latency;

typedef struct vstats {
  int64_t routed, completed, cancelled, in_flight;
  /* Reroutes (retry --reroute): decisions of this version closed by one
   * (rerouted away: still routed here, incidents included), and those
   * that came from the other version, outside the comparison. */
  int64_t rerouted_out, rerouted_in, rerouted_in_completed,
      rerouted_in_in_flight, rerouted_in_with_incidents;
  int64_t with_incidents, with_open, incidents, retries;
  int64_t caught, with_caught; /* errors handler steps took, and where */
  latency branch, steps;
} vstats;

static int push(latency *l, int64_t v) {
  if (l->n == l->cap) {
    size_t cap = l->cap ? l->cap * 2 : 1024;
    int64_t *nv = realloc(l->v, cap * sizeof *nv);
    if (!nv) {
      return -1;
    }
    l->v = nv;
    l->cap = cap;
  }
  l->v[l->n++] = v;
  return 0;
}

/* Moves the k-th smallest of v[lo..hi] into place v[k] (Hoare's
 * quickselect): a percentile in O(n) instead of a sort of a million. */
static void select_kth(int64_t *v, size_t lo, size_t hi, size_t k) {
  while (lo < hi) {
    int64_t pivot = v[lo + (hi - lo) / 2];
    size_t i = lo, j = hi;
    while (i <= j) {
      while (v[i] < pivot) {
        i++;
      }
      while (v[j] > pivot) {
        j--;
      }
      if (i <= j) {
        int64_t t = v[i];
        v[i] = v[j];
        v[j] = t;
        i++;
        if (j == 0) {
          break;
        }
        j--;
      }
    }
    if (k <= j) {
      hi = j;
    } else if (k >= i) {
      lo = i;
    } else {
      return;
    }
  }
}

/* Nearest-rank percentile: the smallest value with at least p of the
 * sample at or below it. Reorders the sample. */
static double percentile(const latency *l, double p) {
  size_t rank;
  if (l->n == 0) {
    return NAN;
  }
  rank = (size_t)ceil(p * (double)l->n);
  if (rank < 1) {
    rank = 1;
  }
  select_kth(l->v, 0, l->n - 1, rank - 1);
  return (double)l->v[rank - 1];
}

typedef struct query {
  const char *flag;
  const char *workflow;
  int64_t since, until; /* ms; since 0 / until INT64_MAX when open */
} query;

/* A ramp step: the period one rate (and kill state) held. */
typedef struct ramp {
  int64_t id, started_at, ended_at; /* ended_at 0: still current */
  uint32_t rate;
  int killed;
  char change[16];
  char actor[64];
  char reason[160];
  int64_t instances[2], with_incidents[2];
} ramp;

static int load_ramps(cv_router *r, const query *q, ramp **out, int *count) {
  sy_stmt *s = cv_stmt(r, CVQ_RAMPS);
  ramp *rs = NULL;
  int n = 0, cap = 0, rc;
  if (!s) {
    return -1;
  }
  /* Ramp 0 holds what was decided before the first change on record. */
  if (!(rs = calloc(1, sizeof *rs))) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return -1;
  }
  cap = 1;
  snprintf(rs[0].change, sizeof rs[0].change, "initial");
  n = 1;
  sy_stmt_bind_text(s, 1, q->flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    ramp *p;
    if (n == cap) {
      ramp *nr = realloc(rs, (size_t)(cap *= 2) * sizeof *rs);
      if (!nr) {
        snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
        sy_stmt_reset(s);
        free(rs);
        return -1;
      }
      rs = nr;
    }
    p = &rs[n++];
    memset(p, 0, sizeof *p);
    p->id = sy_stmt_column_int(s, 0);
    snprintf(p->change, sizeof p->change, "%s", sy_stmt_column_text(s, 1));
    p->rate = (uint32_t)sy_stmt_column_int(s, 2);
    p->killed = (int)sy_stmt_column_int(s, 3);
    p->started_at = sy_stmt_column_int(s, 4);
    snprintf(p->actor, sizeof p->actor, "%s", sy_stmt_column_text(s, 5));
    snprintf(p->reason, sizeof p->reason, "%s", sy_stmt_column_text(s, 6));
    rs[n - 2].ended_at = p->started_at;
  }
  if (rc != SY_DONE) {
    free(rs);
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  *out = rs;
  *count = n;
  return 0;
}

static ramp *find_ramp(ramp *rs, int n, int64_t id, int *hint) {
  /* Rows come in time order, so the ramp of the last row usually fits. */
  if (*hint < n && rs[*hint].id == id) {
    return &rs[*hint];
  }
  for (int lo = 0, hi = n - 1; lo <= hi;) {
    int mid = (lo + hi) / 2;
    if (rs[mid].id == id) {
      *hint = mid;
      return &rs[mid];
    }
    if (rs[mid].id < id) {
      lo = mid + 1;
    } else {
      hi = mid - 1;
    }
  }
  return NULL;
}

/* Counts one decision (a row of CVQ_REPORT_DECISIONS) in its version's
 * numbers and its ramp step's; -1 when out of memory. The ramp tallies
 * (counters.c, add_standing) count the same way. */
static int count_row(sy_stmt *s, vstats v[2], ramp *rs, int nr, int *hint) {
  int vi = (int)sy_stmt_column_int(s, 0);
  vstats *x = &v[vi];
  const char *outcome = sy_stmt_column_text(s, 2);
  int64_t incidents = sy_stmt_column_int(s, 3);
  ramp *p;
  if (sy_stmt_column_int(s, 9) > 0) {
    /* came by a reroute: not routed here, so not in the comparison */
    x->rerouted_in++;
    x->rerouted_in_with_incidents += incidents > 0;
    if (!outcome) {
      x->rerouted_in_in_flight += sy_stmt_column_int(s, 4) == 0;
    } else if (strcmp(outcome, "completed") == 0) {
      x->rerouted_in_completed++;
    }
    return 0;
  }
  p = find_ramp(rs, nr, sy_stmt_column_int(s, 1), hint);
  x->routed++;
  x->incidents += incidents;
  x->with_incidents += incidents > 0;
  x->with_open += sy_stmt_column_int(s, 4) > 0;
  x->retries += sy_stmt_column_int(s, 5);
  x->caught += sy_stmt_column_int(s, 8);
  x->with_caught += sy_stmt_column_int(s, 8) > 0;
  if (!outcome) {
    /* Not ended: in flight unless it waits in an incident. */
    x->in_flight += sy_stmt_column_int(s, 4) == 0;
  } else if (outcome[0] == 'c' && outcome[1] == 'o') {
    x->completed++;
    if (push(&x->branch, sy_stmt_column_int(s, 6)) ||
        push(&x->steps, sy_stmt_column_int(s, 7))) {
      return -1;
    }
  } else if (strcmp(outcome, "rerouted") == 0) {
    x->rerouted_out++;
  } else {
    x->cancelled++;
  }
  if (p) {
    p->instances[vi]++;
    p->with_incidents[vi] += incidents > 0;
  }
  return 0;
}

/* One pass over the flag's decisions in the window (a contiguous range of
 * the table's clustered key) fills the per-version numbers, the latency
 * samples and the ramp steps' counts. */
static int scan(cv_router *r, const query *q, vstats v[2], ramp *rs, int nr) {
  sy_stmt *s = cv_stmt(r, CVQ_REPORT_DECISIONS);
  int rc, hint = 0;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, q->flag);
  sy_stmt_bind_int(s, 2, q->since);
  sy_stmt_bind_int(s, 3, q->until);
  sy_stmt_bind_text(s, 4, q->workflow); /* NULL: all */
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (count_row(s, v, rs, nr, &hint)) {
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      sy_stmt_reset(s);
      return -1;
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* The versions' and the ramp steps' counts that the ramp tallies keep,
 * read from them instead of the decisions (what scan would count). */
static int read_tallies(cv_router *r, const query *q, vstats v[2], ramp *rs,
                        int nr) {
  sy_stmt *s = cv_stmt(r, CVQ_RAMP_TALLIES);
  int rc, hint = 0;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, q->flag);
  sy_stmt_bind_text(s, 2, q->workflow); /* NULL: all */
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    int vi = (int)sy_stmt_column_int(s, 0);
    ramp *p = find_ramp(rs, nr, sy_stmt_column_int(s, 1), &hint);
    int64_t routed = sy_stmt_column_int(s, 2);
    int64_t with_incidents = sy_stmt_column_int(s, 6);
    v[vi].routed += routed;
    v[vi].completed += sy_stmt_column_int(s, 3);
    v[vi].in_flight += sy_stmt_column_int(s, 4);
    v[vi].incidents += sy_stmt_column_int(s, 5);
    v[vi].with_incidents += with_incidents;
    if (p) {
      p->instances[vi] += routed;
      p->with_incidents[vi] += with_incidents;
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

static json_t *num(double v) {
  return isfinite(v) ? json_real(v) : json_null();
}

static json_t *lat_json(const latency *l) {
  return json_pack("{s:o, s:o, s:o, s:I}", "p50", num(percentile(l, 0.50)),
                   "p95", num(percentile(l, 0.95)), "p99",
                   num(percentile(l, 0.99)), "count", (json_int_t)l->n);
}

static double rate_of(const vstats *v) {
  return v->routed ? (double)v->with_incidents / (double)v->routed : NAN;
}

/* A version's numbers: with full 0, only those the ramp tallies keep
 * (read_tallies). */
static json_t *version_json(const vstats *v, int full) {
  double lo = NAN, hi = NAN;
  json_t *j;
  cv_wilson(v->with_incidents, v->routed, 1.959963984540054, &lo, &hi);
  j = json_pack("{s:I, s:I, s:I}", "routed", (json_int_t)v->routed, "completed",
                (json_int_t)v->completed, "in_flight",
                (json_int_t)v->in_flight);
  if (!j) {
    return NULL;
  }
  if (full) {
    json_object_set_new(j, "cancelled", json_integer(v->cancelled));
  }
  json_object_set_new(j, "instances_with_incidents",
                      json_integer(v->with_incidents));
  if (full) {
    json_object_set_new(j, "instances_with_open_incidents",
                        json_integer(v->with_open));
    json_object_set_new(j, "instances_with_resolved_incidents",
                        json_integer(v->with_incidents - v->with_open));
  }
  json_object_set_new(j, "incidents", json_integer(v->incidents));
  json_object_set_new(j, "incident_rate", num(rate_of(v)));
  json_object_set_new(
      j, "incident_rate_ci95",
      json_pack("[o,o]", num(v->routed ? lo : NAN), num(v->routed ? hi : NAN)));
  if (!full) {
    return j;
  }
  json_object_set_new(j, "caught_errors", json_integer(v->caught));
  json_object_set_new(j, "instances_with_caught_errors",
                      json_integer(v->with_caught));
  json_object_set_new(j, "latency_ms",
                      json_pack("{s:o, s:o}", "branch", lat_json(&v->branch),
                                "steps", lat_json(&v->steps)));
  json_object_set_new(
      j, "retries_per_instance",
      num(v->routed ? (double)v->retries / (double)v->routed : NAN));
  json_object_set_new(j, "rerouted_away", json_integer(v->rerouted_out));
  json_object_set_new(
      j, "rerouted_in",
      json_pack("{s:I, s:I, s:I, s:I}", "instances", (json_int_t)v->rerouted_in,
                "completed", (json_int_t)v->rerouted_in_completed, "in_flight",
                (json_int_t)v->rerouted_in_in_flight, "with_incidents",
                (json_int_t)v->rerouted_in_with_incidents));
  return j;
}

static const char *verdict_key(cv_verdict v) {
  switch (v) {
    case CV_V2_WORSE:
      return "v2_worse";
    case CV_V2_BETTER:
      return "v2_better";
    case CV_NO_SIGNIFICANT_DIFFERENCE:
      return "no_significant_difference";
    case CV_NOT_ENOUGH_DATA:
      return "not_enough_data";
    default:
      return "invalid_input";
  }
}

static void fmt_ms(double v, char *buf, size_t len) {
  if (!isfinite(v)) {
    snprintf(buf, len, "-");
  } else if (v >= 10000) {
    snprintf(buf, len, "%.1fs", v / 1000);
  } else {
    snprintf(buf, len, "%.0fms", v);
  }
}

static void fmt_pct(double v, char *buf, size_t len) {
  if (!isfinite(v)) {
    snprintf(buf, len, "-");
  } else {
    snprintf(buf, len, "%.2f%%", v * 100);
  }
}

/* The per-version numbers, side by side. */
static void print_versions(const vstats v[2]) {
  static const double ps[] = {0.50, 0.95, 0.99};
  static const char *const pl[] = {"p50", "p95", "p99"};
  char rate[2][32], ci[2][48], b[32], c[32], label[48];
  printf("\n%-34s %16s %16s\n", "", "v1", "v2");
#define ROW(label, field)                                       \
  printf("%-34s %16lld %16lld\n", label, (long long)v[0].field, \
         (long long)v[1].field)
  ROW("instances routed", routed);
  ROW("  completed", completed);
  ROW("  in flight", in_flight);
  ROW("  cancelled", cancelled);
  if (v[0].rerouted_out + v[1].rerouted_out + v[0].rerouted_in +
      v[1].rerouted_in) {
    ROW("  rerouted to the other version", rerouted_out);
    ROW("rerouted here (not routed)", rerouted_in);
    ROW("  completed", rerouted_in_completed);
    ROW("  in flight", rerouted_in_in_flight);
    ROW("  with incidents", rerouted_in_with_incidents);
  }
  ROW("instances with incidents", with_incidents);
  ROW("  with an open incident", with_open);
  ROW("incidents in total", incidents);
  ROW("errors caught by a handler", caught);
  ROW("  instances with one", with_caught);
#undef ROW
  for (int i = 0; i < 2; i++) {
    double lo, hi;
    fmt_pct(rate_of(&v[i]), rate[i], sizeof rate[i]);
    if (v[i].routed && !cv_wilson(v[i].with_incidents, v[i].routed,
                                  1.959963984540054, &lo, &hi)) {
      snprintf(ci[i], sizeof ci[i], "%.2f-%.2f%%", lo * 100, hi * 100);
    } else {
      snprintf(ci[i], sizeof ci[i], "-");
    }
  }
  printf("%-34s %16s %16s\n", "incident rate", rate[0], rate[1]);
  printf("%-34s %16s %16s\n", "  95% interval (Wilson)", ci[0], ci[1]);
  for (int k = 0; k < 3; k++) {
    snprintf(label, sizeof label, "branch latency %s", pl[k]);
    fmt_ms(percentile(&v[0].branch, ps[k]), b, sizeof b);
    fmt_ms(percentile(&v[1].branch, ps[k]), c, sizeof c);
    printf("%-34s %16s %16s\n", label, b, c);
  }
  for (int k = 0; k < 3; k++) {
    snprintf(label, sizeof label, "time in branch steps %s", pl[k]);
    fmt_ms(percentile(&v[0].steps, ps[k]), b, sizeof b);
    fmt_ms(percentile(&v[1].steps, ps[k]), c, sizeof c);
    printf("%-34s %16s %16s\n", label, b, c);
  }
  for (int i = 0; i < 2; i++) {
    snprintf(i ? c : b, 32, "%.3f",
             v[i].routed ? (double)v[i].retries / (double)v[i].routed : 0.0);
  }
  printf("%-34s %16s %16s\n", "retries per instance", b, c);
}

static void print_comparison(const cv_comparison *cmp, const char *verdict) {
  printf("\nv2 against v1\n");
  if (isfinite(cmp->diff_points)) {
    printf("  difference of incident rates  %+.2f points\n", cmp->diff_points);
  }
  if (isfinite(cmp->ratio)) {
    printf("  ratio of incident rates       %.2f\n", cmp->ratio);
  } else if (isinf(cmp->ratio)) {
    printf("  ratio of incident rates       infinite (v1 has none)\n");
  }
  if (isfinite(cmp->p_value)) {
    printf("  p-value                       %.4g (%s)\n", cmp->p_value,
           cmp->method == CV_METHOD_FISHER ? "Fisher's exact test"
                                           : "two-proportion z-test");
  }
  printf("  verdict                       %s\n", verdict);
}

/* Whether ramp step i is shown: it overlaps the window, and the period
 * before the first change only when something was decided in it. */
static int ramp_shown(const query *q, const ramp *rs, int i) {
  const ramp *p = &rs[i];
  if (i == 0 && !p->instances[0] && !p->instances[1]) {
    return 0;
  }
  return !((p->ended_at && p->ended_at <= q->since) ||
           p->started_at >= q->until);
}

static void print_ramps(const query *q, const ramp *rs, int nr) {
  char rate[CV_RATE_FORMAT_MAX], t1[32], t2[32];
  printf("\nramp steps\n");
  printf("%-20s %-8s %-9s %10s %10s %10s %10s\n", "from (UTC)", "change",
         "rate", "v1 inst.", "v1 w/inc.", "v2 inst.", "v2 w/inc.");
  for (int i = 0; i < nr; i++) {
    const ramp *p = &rs[i];
    if (!ramp_shown(q, rs, i)) {
      continue;
    }
    cv_fmt_time(p->started_at, t1, sizeof t1);
    cv_rate_format(p->rate, rate, sizeof rate);
    snprintf(t2, sizeof t2, "%.16s%s", rate, p->killed ? " KILL" : "");
    printf("%-20s %-8s %-9s %10lld %10lld %10lld %10lld\n",
           i == 0 ? "(before changes)" : t1, p->change, t2,
           (long long)p->instances[0], (long long)p->with_incidents[0],
           (long long)p->instances[1], (long long)p->with_incidents[1]);
  }
}

static void print_table(const query *q, const vstats v[2],
                        const cv_comparison *cmp, const ramp *rs, int nr,
                        const char *verdict) {
  printf("flag %s%s%s\n", q->flag, q->workflow ? ", workflow " : "",
         q->workflow ? q->workflow : "");
  print_versions(v);
  print_comparison(cmp, verdict);
  print_ramps(q, rs, nr);
}

static json_t *ramps_json(const query *q, const ramp *rs, int nr) {
  json_t *arr = json_array();
  for (int i = 0; i < nr; i++) {
    const ramp *p = &rs[i];
    char rate[CV_RATE_FORMAT_MAX];
    if (!ramp_shown(q, rs, i)) {
      continue;
    }
    cv_rate_format(p->rate, rate, sizeof rate);
    json_array_append_new(
        arr, json_pack(
                 "{s:I, s:s, s:o, s:o, s:s, s:I, s:b, s:s, s:s, "
                 "s:{s:I, s:I}, s:{s:I, s:I}}",
                 "id", (json_int_t)p->id, "change", p->change, "started_at",
                 i == 0 ? json_null() : json_integer(p->started_at), "ended_at",
                 p->ended_at ? json_integer(p->ended_at) : json_null(), "rate",
                 rate, "rate_ppm", (json_int_t)p->rate, "killed", p->killed,
                 "actor", p->actor, "reason", p->reason, "v1", "instances",
                 (json_int_t)p->instances[0], "with_incidents",
                 (json_int_t)p->with_incidents[0], "v2", "instances",
                 (json_int_t)p->instances[1], "with_incidents",
                 (json_int_t)p->with_incidents[1]));
  }
  return arr;
}

/* The options of a report; 0, or the exit code (2, or 0 after --help). */
typedef struct options {
  query q;
  double alpha, min_effect;
  int json, fail_if_worse, help, shadow;
} options;

static int parse_options(int argc, char **argv, int64_t now, options *o) {
  memset(o, 0, sizeof *o);
  o->q.until = INT64_MAX;
  o->alpha = 0.05;
  o->min_effect = 1.0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      o->help = 1;
      return 0;
    } else if (strcmp(a, "--json") == 0) {
      o->json = 1;
    } else if (strcmp(a, "--fail-if-worse") == 0) {
      o->fail_if_worse = 1;
    } else if (strcmp(a, "--shadow") == 0) {
      o->shadow = 1;
    } else if (strcmp(a, "--since") == 0 || strcmp(a, "--until") == 0) {
      if (!val ||
          parse_time(val, now, a[2] == 's' ? &o->q.since : &o->q.until)) {
        return usage_error(
            "%s: expected a date (2026-11-23), a UTC time "
            "(2026-11-23T14:00:00Z) or an age (15m, 2h, 7d), "
            "got '%s'",
            a, val ? val : "nothing");
      }
      i++;
    } else if (strcmp(a, "--workflow") == 0) {
      if (!val || !*val) {
        return usage_error("--workflow needs a name");
      }
      o->q.workflow = val;
      i++;
    } else if (strcmp(a, "--alpha") == 0) {
      if (parse_double(val, 0, 0.5, &o->alpha)) {
        return usage_error(
            "--alpha: expected a number between 0 and 0.5, "
            "got '%s'",
            val ? val : "nothing");
      }
      i++;
    } else if (strcmp(a, "--min-effect") == 0) {
      if (parse_double(val, 0, 100, &o->min_effect)) {
        return usage_error(
            "--min-effect: expected percentage points between "
            "0 and 100, got '%s'",
            val ? val : "nothing");
      }
      i++;
    } else if (a[0] == '-' && a[1]) {
      return usage_error("unknown option '%s'", a);
    } else if (!o->q.flag) {
      o->q.flag = a;
    } else {
      return usage_error("unexpected argument '%s'", a);
    }
  }
  if (!o->q.flag) {
    return usage_error("which flag?");
  }
  if (o->q.since >= o->q.until) {
    return usage_error("--since must come before --until");
  }
  if (o->shadow && (o->q.workflow || o->fail_if_worse)) {
    return usage_error(
        "--shadow reports every workflow's shadow runs; "
        "%s does not apply",
        o->q.workflow ? "--workflow" : "--fail-if-worse");
  }
  return 0;
}

/* Whether the flag has a row or decisions: 0 (in *known), or 1 after
 * saying why not. */
static int flag_known(cv_router *r, const char *flag, int *known) {
  sy_stmt *s = cv_stmt(r, CVQ_FLAG_KNOWN);
  int rc;
  if (!s) {
    return cv_cmd_db_error(r, CMD, "read flag");
  }
  sy_stmt_bind_text(s, 1, flag);
  if ((rc = sy_stmt_step(s)) != SY_ROW && rc != SY_DONE) {
    cv_db_fail(r, s);
    return cv_cmd_db_error(r, CMD, "read flag");
  }
  *known = rc == SY_ROW;
  sy_stmt_reset(s);
  return 0;
}

/* The report's document, switchyard.report/1; with full 0, the summary
 * of it the ramp tallies give (no schema: it is not published). NULL: out
 * of memory. */
static json_t *report_json(const options *o, int64_t now, const vstats v[2],
                           const cv_comparison *cmp, const char *verdict,
                           const ramp *rs, int nr, int full) {
  const query *q = &o->q;
  return json_pack(
      "{s:s*, s:s, s:o, s:o, s:o, s:I, s:f, s:f, s:{s:o, s:o}, "
      "s:{s:o, s:o, s:o, s:s, s:s, s:s, s:o}, s:o}",
      "schema", full ? "switchyard.report/1" : NULL, "flag", q->flag,
      "workflow", q->workflow ? json_string(q->workflow) : json_null(), "since",
      q->since ? json_integer(q->since) : json_null(), "until",
      q->until != INT64_MAX ? json_integer(q->until) : json_null(),
      "generated_at", (json_int_t)now, "alpha", o->alpha, "min_effect_points",
      o->min_effect, "versions", "v1", version_json(&v[0], full), "v2",
      version_json(&v[1], full), "comparison", "difference_points",
      num(cmp->diff_points), "ratio",
      isinf(cmp->ratio) ? json_string("inf") : num(cmp->ratio), "p_value",
      num(cmp->p_value), "test", cv_method_name(cmp->method), "verdict",
      verdict_key(cmp->verdict), "verdict_text", verdict, "needed_per_version",
      cmp->verdict == CV_NOT_ENOUGH_DATA && cmp->needed_per_version >= 0
          ? json_integer(cmp->needed_per_version)
          : json_null(),
      "ramp_steps", ramps_json(q, rs, nr));
}

/* Prints a document (the report's, the shadow runs'), as serve's API
 * gives it: 0, or 1 after saying why not. */
static int print_document(json_t *doc) {
  char *text = doc ? json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                         JSON_REAL_PRECISION(10))
                   : NULL;
  if (!text) {
    fprintf(stderr, "switchyard report: cannot encode the report\n");
    return 1;
  }
  puts(text);
  free(text);
  return 0;
}

/* Prints the report as JSON: 0, or 1 after saying why not. */
static int print_json_report(const options *o, int64_t now, const vstats v[2],
                             const cv_comparison *cmp, const char *verdict,
                             const ramp *rs, int nr) {
  json_t *j = report_json(o, now, v, cmp, verdict, rs, nr, 1);
  int rc = print_document(j);
  json_decref(j);
  return rc;
}

/* Reads what the report counts (from the decisions, or with full 0 from
 * the ramp tallies), in one read transaction so that every number comes
 * from the same snapshot, and compares the versions: 0, or 1 after saying
 * why not. */
static int compute(cv_router *r, const options *o, int full, vstats v[2],
                   cv_comparison *cmp, char *verdict, size_t verdict_len,
                   ramp **rs, int *nr) {
  int rc;
  memset(v, 0, 2 * sizeof *v);
  if ((rc = cv_cmd_begin(r, CMD, 0))) {
    return rc;
  }
  if (load_ramps(r, &o->q, rs, nr) ||
      (full ? scan : read_tallies)(r, &o->q, v, *rs, *nr)) {
    rc = cv_cmd_end(r, CMD, cv_cmd_db_error(r, CMD, "read decisions"));
  } else {
    rc = cv_cmd_end(r, CMD, 0);
  }
  if (!rc) {
    cv_compare(v[0].with_incidents, v[0].routed, v[1].with_incidents,
               v[1].routed, o->alpha, o->min_effect, cmp);
    cv_verdict_text(cmp, verdict, verdict_len);
  }
  return rc;
}

static void free_stats(vstats v[2], ramp *rs) {
  for (int i = 0; i < 2; i++) {
    free(v[i].branch.v);
    free(v[i].steps.v);
  }
  free(rs);
}

json_t *cv_report_document(cv_router *r, const char *flag, int full,
                           int *known) {
  int64_t now = r->api->now_ms(r->e);
  options o = {.q = {.flag = flag, .until = INT64_MAX},
               .alpha = 0.05,
               .min_effect = 1.0};
  vstats v[2];
  cv_comparison cmp;
  ramp *rs = NULL;
  char verdict[256];
  json_t *j = NULL;
  int nr = 0;
  if (flag_known(r, flag, known) || !*known) {
    return NULL;
  }
  if (!compute(r, &o, full, v, &cmp, verdict, sizeof verdict, &rs, &nr)) {
    j = report_json(&o, now, v, &cmp, verdict, rs, nr, full);
  }
  free_stats(v, rs);
  return j;
}

/* ---------------------------------------------------------------------
 * report --shadow: the flag's shadow runs (shadow.c records them). */

/* The outcomes of a run, as cv_shadow_runs and the document name them;
 * in_flight and lost are the open runs, by whether their engine lives. */
static const char *const shadow_outcomes[] = {"match",
                                              "mismatch",
                                              "candidate_error",
                                              "candidate_timeout",
                                              "primary_error",
                                              "compare_error",
                                              "lost",
                                              "in_flight"};
enum { SH_MATCH, SH_MISMATCH, SH_OUTCOMES = 8, SH_FIRST_MISMATCHES = 10 };

typedef struct shadow_stats {
  int64_t n[SH_OUTCOMES], runs;
  int64_t rate_ppm, budget, used_this_hour, skipped, busy;
  int64_t absent; /* matches that compared vars neither side had */
  char absent_example[200];
  latency primary, candidate;
  json_t *mismatches;
} shadow_stats;

static int shadow_flag(cv_router *r, const char *flag, shadow_stats *st) {
  sy_stmt *s = cv_stmt(r, CVQ_FLAG_ROW);
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    st->rate_ppm = sy_stmt_column_int(s, 9);
    st->budget = sy_stmt_column_int(s, 10);
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* Binds the flag and the window as ?1 to ?3. */
static sy_stmt *shadow_stmt(cv_router *r, int q, const query *w) {
  sy_stmt *s = cv_stmt(r, q);
  if (s) {
    sy_stmt_bind_text(s, 1, w->flag);
    sy_stmt_bind_int(s, 2, w->since);
    sy_stmt_bind_int(s, 3, w->until);
  }
  return s;
}

static int shadow_read(cv_router *r, const query *w, int64_t now,
                       shadow_stats *st) {
  sy_stmt *s;
  int rc;
  if (shadow_flag(r, w->flag, st) ||
      !(s = shadow_stmt(r, CVQ_SHADOW_OUTCOMES, w))) {
    return -1;
  }
  /* an engine renews its heartbeat a few times per lease */
  sy_stmt_bind_int(s, 4, now - SY_ENGINE_LEASE_MS);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *o = sy_stmt_column_text(s, 0);
    for (int i = 0; i < SH_OUTCOMES; i++) {
      if (strcmp(o, shadow_outcomes[i]) == 0) {
        st->n[i] += sy_stmt_column_int(s, 1);
      }
    }
    st->runs += sy_stmt_column_int(s, 1);
    if (strcmp(o, "match") == 0 && !sy_stmt_column_null(s, 3)) {
      st->absent = sy_stmt_column_int(s, 2);
      snprintf(st->absent_example, sizeof st->absent_example, "%s",
               sy_stmt_column_text(s, 3));
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  if (!(s = shadow_stmt(r, CVQ_SHADOW_TIMES, w))) {
    return -1;
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (push(&st->primary, sy_stmt_column_int(s, 0)) ||
        push(&st->candidate, sy_stmt_column_int(s, 1))) {
      sy_stmt_reset(s);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1;
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  if (!(s = shadow_stmt(r, CVQ_SHADOW_MISMATCHES, w))) {
    return -1;
  }
  sy_stmt_bind_int(s, 4, SH_FIRST_MISMATCHES);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    json_array_append_new(
        st->mismatches,
        json_pack(
            "{s:I, s:s, s:I, s:s?}", "instance_id",
            (json_int_t)sy_stmt_column_int(s, 0), "subject",
            sy_stmt_column_text(s, 1), "started_at",
            (json_int_t)sy_stmt_column_int(s, 2), "detail",
            sy_stmt_column_null(s, 3) ? NULL : sy_stmt_column_text(s, 3)));
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  if (!(s = cv_stmt(r, CVQ_SHADOW_BUDGET))) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, w->flag);
  sy_stmt_bind_int(s, 2, w->since / 3600000);
  sy_stmt_bind_int(s, 3, (w->until == INT64_MAX ? now : w->until) / 3600000);
  sy_stmt_bind_int(s, 4, now / 3600000);
  if (sy_stmt_step(s) != SY_ROW) {
    return cv_db_fail(r, s);
  }
  st->skipped = sy_stmt_column_int(s, 0);
  st->busy = sy_stmt_column_int(s, 1);
  st->used_this_hour = sy_stmt_column_int(s, 2);
  sy_stmt_reset(s);
  return 0;
}

static json_t *shadow_json(const query *w, int64_t now, shadow_stats *st) {
  int64_t compared = st->n[SH_MATCH] + st->n[SH_MISMATCH];
  double lo = NAN, hi = NAN;
  char rate[CV_RATE_FORMAT_MAX];
  json_t *outcomes = json_object();
  for (int i = 0; i < SH_OUTCOMES; i++) {
    json_object_set_new(outcomes, shadow_outcomes[i], json_integer(st->n[i]));
  }
  if (compared) {
    cv_wilson(st->n[SH_MISMATCH], compared, 1.959963984540054, &lo, &hi);
  }
  cv_rate_format((uint32_t)st->rate_ppm, rate, sizeof rate);
  return json_pack(
      "{s:s, s:s, s:o, s:o, s:I, s:{s:s, s:I, s:o, s:I}, s:I, s:o, s:I, "
      "s:I, s:{s:I, s:o, s:o, s:o}, s:{s:I, s:s?}, s:{s:o, s:o}, s:O}",
      "schema", "switchyard.shadow/1", "flag", w->flag, "since",
      w->since ? json_integer(w->since) : json_null(), "until",
      w->until != INT64_MAX ? json_integer(w->until) : json_null(),
      "generated_at", (json_int_t)now, "shadow", "rate", rate, "rate_ppm",
      (json_int_t)st->rate_ppm, "budget_per_hour",
      st->budget ? json_integer(st->budget) : json_null(), "used_this_hour",
      (json_int_t)st->used_this_hour, "runs", (json_int_t)st->runs, "outcomes",
      outcomes, "skipped_by_budget", (json_int_t)st->skipped, "skipped_busy",
      (json_int_t)st->busy, "mismatch", "compared", (json_int_t)compared,
      "rate",
      num(compared ? (double)st->n[SH_MISMATCH] / (double)compared : NAN),
      "ci_low", num(lo), "ci_high", num(hi), "absent_on_both", "matches",
      (json_int_t)st->absent, "example", st->absent ? st->absent_example : NULL,
      "latency_ms", "primary", lat_json(&st->primary), "candidate",
      lat_json(&st->candidate), "first_mismatches", st->mismatches);
}

/* The document's shadow settings as a line: "10% of v1's instances, at
 * most 1000 runs an hour (37 this hour)", or "off now". */
void cv_shadow_settings_text(json_t *doc, char *buf, size_t len) {
  json_t *sh = json_object_get(doc, "shadow");
  json_t *budget = json_object_get(sh, "budget_per_hour");
  int on = json_integer_value(json_object_get(sh, "rate_ppm")) > 0;
  int n = snprintf(buf, len, "%s%s",
                   on ? json_string_value(json_object_get(sh, "rate")) : "off",
                   on ? " of v1's instances" : " now");
  if (on && json_is_integer(budget) && n > 0 && (size_t)n < len) {
    snprintf(
        buf + n, len - (size_t)n,
        ", at most %lld runs an hour (%lld this hour)",
        (long long)json_integer_value(budget),
        (long long)json_integer_value(json_object_get(sh, "used_this_hour")));
  }
}

static int64_t jint(json_t *o, const char *k) {
  return (int64_t)json_integer_value(json_object_get(o, k));
}

static void print_shadow(json_t *doc) {
  static const char *const labels[] = {"  match",
                                       "  mismatch",
                                       "  candidate error",
                                       "  candidate timeout",
                                       "  primary error",
                                       "  compare error",
                                       "  lost",
                                       "  in flight"};
  json_t *m = json_object_get(doc, "mismatch");
  json_t *outcomes = json_object_get(doc, "outcomes");
  json_t *absent = json_object_get(doc, "absent_on_both");
  json_t *lat = json_object_get(doc, "latency_ms"), *x;
  char line[200], a[32], b[32];
  size_t i;
  cv_shadow_settings_text(doc, line, sizeof line);
  printf("shadow runs of %s: %s\n",
         json_string_value(json_object_get(doc, "flag")), line);
  printf("(v1 serves; v2's first step runs beside it on a copy of the vars)\n");
  printf("\n%-34s %10lld\n", "runs started", (long long)jint(doc, "runs"));
  for (int k = 0; k < SH_OUTCOMES; k++) {
    printf("%-34s %10lld", labels[k],
           (long long)jint(outcomes, shadow_outcomes[k]));
    if (k == SH_MISMATCH && jint(m, "compared")) {
      printf("   %.2f%% (95%% CI %.2f-%.2f%%) of %lld compared",
             json_real_value(json_object_get(m, "rate")) * 100,
             json_real_value(json_object_get(m, "ci_low")) * 100,
             json_real_value(json_object_get(m, "ci_high")) * 100,
             (long long)jint(m, "compared"));
    }
    printf("\n");
  }
  printf("%-34s %10lld\n", "skipped by the budget",
         (long long)jint(doc, "skipped_by_budget"));
  if (jint(doc, "skipped_busy")) {
    printf("%-34s %10lld   (raise --set shadow.max_in_flight)\n",
           "skipped: the engine had too many",
           (long long)jint(doc, "skipped_busy"));
  }
  if (jint(absent, "matches")) {
    printf(
        "\nnote: %lld matches compared vars neither side had (%s): the "
        "step compared may not set them\n",
        (long long)jint(absent, "matches"),
        json_string_value(json_object_get(absent, "example")));
  }
  printf("\n%-34s %10s %10s\n", "latency of the compared runs", "primary",
         "candidate");
  for (int k = 0; k < 3; k++) {
    static const char *const pl[] = {"p50", "p95", "p99"};
    json_t *p = json_object_get(json_object_get(lat, "primary"), pl[k]);
    json_t *c = json_object_get(json_object_get(lat, "candidate"), pl[k]);
    fmt_ms(json_is_number(p) ? json_number_value(p) : NAN, a, sizeof a);
    fmt_ms(json_is_number(c) ? json_number_value(c) : NAN, b, sizeof b);
    printf("  %-32s %10s %10s\n", pl[k], a, b);
  }
  if (json_array_size(json_object_get(doc, "first_mismatches"))) {
    printf("\nfirst mismatches\n");
  }
  json_array_foreach(json_object_get(doc, "first_mismatches"), i, x) {
    char t[32];
    cv_fmt_time(jint(x, "started_at"), t, sizeof t);
    printf("  instance %lld  subject %s  %s\n    %s\n",
           (long long)jint(x, "instance_id"),
           json_string_value(json_object_get(x, "subject")), t,
           json_is_string(json_object_get(x, "detail"))
               ? json_string_value(json_object_get(x, "detail"))
               : "-");
  }
}

json_t *cv_shadow_document(cv_router *r, const char *flag, int64_t since,
                           int64_t until, int *known) {
  int64_t now = r->api->now_ms(r->e);
  query q = {.flag = flag, .since = since, .until = until};
  shadow_stats st;
  json_t *doc = NULL;
  memset(&st, 0, sizeof st);
  if (flag_known(r, flag, known) || !*known) {
    return NULL;
  }
  if (!(st.mismatches = json_array()) || cv_cmd_begin(r, CMD, 0)) {
    json_decref(st.mismatches);
    return NULL;
  }
  if (!cv_cmd_end(r, CMD,
                  shadow_read(r, &q, now, &st)
                      ? cv_cmd_db_error(r, CMD, "read shadow runs")
                      : 0)) {
    doc = shadow_json(&q, now, &st);
  }
  json_decref(st.mismatches);
  free(st.primary.v);
  free(st.candidate.v);
  return doc;
}

static int shadow_report(cv_router *r, const options *o) {
  int known = 0, rc = 0;
  json_t *doc =
      cv_shadow_document(r, o->q.flag, o->q.since, o->q.until, &known);
  if (!doc && !known) {
    return usage_error("no flag '%s' (and no decisions for it)", o->q.flag);
  }
  if (!doc) {
    return 1; /* said why */
  }
  if (o->json) {
    rc = print_document(doc);
  } else {
    print_shadow(doc);
  }
  json_decref(doc);
  return rc;
}

int cv_cmd_report(void *plugin, int argc, char **argv) {
  cv_router *r = plugin;
  int64_t now = r->api->now_ms(r->e);
  options o;
  vstats v[2];
  cv_comparison cmp;
  ramp *rs = NULL;
  char verdict[256];
  int rc, nr = 0, known = 0;
  if ((rc = parse_options(argc, argv, now, &o)) || o.help) {
    if (o.help) {
      fputs(report_usage, stdout);
    }
    return rc;
  }
  if ((rc = flag_known(r, o.q.flag, &known))) {
    return rc;
  }
  if (!known) {
    return usage_error("no flag '%s' (and no decisions for it)", o.q.flag);
  }
  if (o.shadow) {
    return shadow_report(r, &o);
  }
  rc = compute(r, &o, 1, v, &cmp, verdict, sizeof verdict, &rs, &nr);
  if (!rc) {
    if (o.json) {
      rc = print_json_report(&o, now, v, &cmp, verdict, rs, nr);
    } else {
      print_table(&o.q, v, &cmp, rs, nr, verdict);
    }
    if (!rc && o.fail_if_worse && cmp.verdict == CV_V2_WORSE) {
      rc = 1;
    }
  }
  free_stats(v, rs);
  return rc;
}
