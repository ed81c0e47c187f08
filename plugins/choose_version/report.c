/* `switchyard report FLAG`: is V2 better or worse than V1, and how sure are
 * we? Reads cv_decisions (one row per routed instance, kept up to date by
 * the event hook) and the audit trail; the statistics are in stats.c.
 * The JSON output's schema is "switchyard.report/1", documented in the
 * README; fields are only ever added to it. */
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cv.h"
#include "stats.h"

#define EXIT_USAGE 2

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
    "  --json                 machine-readable (schema switchyard.report/1)\n";

#define usage_error(...) cv_usage_error("report", __VA_ARGS__)

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
  char unit, z;
  double amount;
  size_t len = strlen(s);
  if (len >= 2 && sscanf(s, "%lf%c%n", &amount, &unit, &n) == 2 &&
      (size_t)n == len && amount >= 0 && isfinite(amount) &&
      strchr("smhd", unit) && s[0] >= '0' && s[0] <= '9') {
    double mult = unit == 's'   ? 1e3
                  : unit == 'm' ? 6e4
                  : unit == 'h' ? 3.6e6
                                : 8.64e7;
    *out = now_ms - (int64_t)(amount * mult);
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
  int64_t with_incidents, with_open, incidents, retries;
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

static void bind_query(sqlite3_stmt *s, const query *q) {
  sqlite3_bind_text(s, 1, q->flag, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, q->since);
  sqlite3_bind_int64(s, 3, q->until);
  if (q->workflow) {
    sqlite3_bind_text(s, 4, q->workflow, -1, SQLITE_STATIC);
  } else {
    sqlite3_bind_null(s, 4);
  }
}

#define WHERE_DECISIONS                                          \
  " FROM cv_decisions WHERE flag = ?1 AND decided_at >= ?2 AND " \
  "decided_at < ?3 AND (?4 IS NULL OR workflow = ?4)"

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

static int load_ramps(sqlite3 *db, const query *q, ramp **out, int *count) {
  sqlite3_stmt *s;
  ramp *rs = NULL;
  int n = 0, cap = 0, rc;
  /* Ramp 0 holds what was decided before the first change on record. */
  if (!(rs = calloc(1, sizeof *rs))) {
    return -1;
  }
  cap = 1;
  snprintf(rs[0].change, sizeof rs[0].change, "initial");
  n = 1;
  if (sqlite3_prepare_v2(db,
                         "SELECT id, what, rate_ppm, killed, at, "
                         "coalesce(actor, ''), coalesce(reason, '') "
                         "FROM cv_audit WHERE flag = ?1 AND what IN ('rate', "
                         "'kill', 'unkill', 'group') ORDER BY id",
                         -1, &s, NULL) != SQLITE_OK) {
    free(rs);
    return -1;
  }
  sqlite3_bind_text(s, 1, q->flag, -1, SQLITE_STATIC);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    ramp *r;
    if (n == cap) {
      ramp *nr = realloc(rs, (size_t)(cap *= 2) * sizeof *rs);
      if (!nr) {
        rc = SQLITE_NOMEM;
        break;
      }
      rs = nr;
    }
    r = &rs[n++];
    memset(r, 0, sizeof *r);
    r->id = sqlite3_column_int64(s, 0);
    snprintf(r->change, sizeof r->change, "%s", sqlite3_column_text(s, 1));
    r->rate = (uint32_t)sqlite3_column_int64(s, 2);
    r->killed = sqlite3_column_int(s, 3);
    r->started_at = sqlite3_column_int64(s, 4);
    snprintf(r->actor, sizeof r->actor, "%s", sqlite3_column_text(s, 5));
    snprintf(r->reason, sizeof r->reason, "%s", sqlite3_column_text(s, 6));
    rs[n - 2].ended_at = r->started_at;
  }
  sqlite3_finalize(s);
  if (rc != SQLITE_DONE) {
    free(rs);
    return -1;
  }
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

/* One pass over the flag's decisions in the window (a contiguous range of
 * the table's clustered key) fills the per-version numbers, the latency
 * samples and the ramp steps' counts. */
static int scan(sqlite3 *db, const query *q, vstats v[2], ramp *rs, int nr) {
  sqlite3_stmt *s;
  int rc, hint = 0;
  if (sqlite3_prepare_v2(db,
                         "SELECT version = 'v2', coalesce(ramp_id, 0), "
                         "outcome, incidents, open_incidents, retries, "
                         "branch_ms, step_ms" WHERE_DECISIONS,
                         -1, &s, NULL) != SQLITE_OK) {
    return -1;
  }
  bind_query(s, q);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    int vi = sqlite3_column_int(s, 0);
    vstats *x = &v[vi];
    const unsigned char *outcome = sqlite3_column_text(s, 2);
    int64_t incidents = sqlite3_column_int64(s, 3);
    ramp *r = find_ramp(rs, nr, sqlite3_column_int64(s, 1), &hint);
    x->routed++;
    x->incidents += incidents;
    x->with_incidents += incidents > 0;
    x->with_open += sqlite3_column_int64(s, 4) > 0;
    x->retries += sqlite3_column_int64(s, 5);
    if (!outcome) {
      /* Not ended: in flight unless it waits in an incident. */
      x->in_flight += sqlite3_column_int64(s, 4) == 0;
    } else if (outcome[0] == 'c' && outcome[1] == 'o') {
      x->completed++;
      if (push(&x->branch, sqlite3_column_int64(s, 6)) ||
          push(&x->steps, sqlite3_column_int64(s, 7))) {
        rc = SQLITE_NOMEM;
        break;
      }
    } else {
      x->cancelled++;
    }
    if (r) {
      r->instances[vi]++;
      r->with_incidents[vi] += incidents > 0;
    }
  }
  sqlite3_finalize(s);
  return rc == SQLITE_DONE ? 0 : -1;
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

static json_t *version_json(const vstats *v) {
  double lo = NAN, hi = NAN;
  cv_wilson(v->with_incidents, v->routed, 1.959963984540054, &lo, &hi);
  return json_pack(
      "{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:o, s:[o,o], "
      "s:{s:o, s:o}, s:o}",
      "routed", (json_int_t)v->routed, "completed", (json_int_t)v->completed,
      "in_flight", (json_int_t)v->in_flight, "cancelled",
      (json_int_t)v->cancelled, "instances_with_incidents",
      (json_int_t)v->with_incidents, "instances_with_open_incidents",
      (json_int_t)v->with_open, "instances_with_resolved_incidents",
      (json_int_t)(v->with_incidents - v->with_open), "incidents",
      (json_int_t)v->incidents, "incident_rate", num(rate_of(v)),
      "incident_rate_ci95", num(v->routed ? lo : NAN),
      num(v->routed ? hi : NAN), "latency_ms", "branch", lat_json(&v->branch),
      "steps", lat_json(&v->steps), "retries_per_instance",
      num(v->routed ? (double)v->retries / (double)v->routed : NAN));
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

static void print_table(const query *q, const vstats v[2],
                        const cv_comparison *cmp, const ramp *rs, int nr,
                        const char *verdict) {
  const char *names[2] = {"v1", "v2"};
  char a[32], b[32], c[32], t1[32], t2[32];
  printf("flag %s%s%s\n", q->flag, q->workflow ? ", workflow " : "",
         q->workflow ? q->workflow : "");
  printf("\n%-34s %16s %16s\n", "", "v1", "v2");
#define ROW(label, field)                                       \
  printf("%-34s %16lld %16lld\n", label, (long long)v[0].field, \
         (long long)v[1].field)
  ROW("instances routed", routed);
  ROW("  completed", completed);
  ROW("  in flight", in_flight);
  ROW("  cancelled", cancelled);
  ROW("instances with incidents", with_incidents);
  ROW("  with an open incident", with_open);
  ROW("incidents in total", incidents);
#undef ROW
  {
    char ci[2][48];
    for (int i = 0; i < 2; i++) {
      double lo, hi;
      fmt_pct(rate_of(&v[i]), a, sizeof a);
      if (v[i].routed && !cv_wilson(v[i].with_incidents, v[i].routed,
                                    1.959963984540054, &lo, &hi)) {
        snprintf(ci[i], sizeof ci[i], "%.2f-%.2f%%", lo * 100, hi * 100);
      } else {
        snprintf(ci[i], sizeof ci[i], "-");
      }
      if (i == 0) {
        snprintf(b, sizeof b, "%s", a);
      } else {
        snprintf(c, sizeof c, "%s", a);
      }
    }
    printf("%-34s %16s %16s\n", "incident rate", b, c);
    printf("%-34s %16s %16s\n", "  95% interval (Wilson)", ci[0], ci[1]);
  }
  {
    static const double ps[] = {0.50, 0.95, 0.99};
    static const char *const pl[] = {"p50", "p95", "p99"};
    for (int k = 0; k < 3; k++) {
      char label[48];
      snprintf(label, sizeof label, "branch latency %s", pl[k]);
      fmt_ms(percentile(&v[0].branch, ps[k]), b, sizeof b);
      fmt_ms(percentile(&v[1].branch, ps[k]), c, sizeof c);
      printf("%-34s %16s %16s\n", label, b, c);
    }
    for (int k = 0; k < 3; k++) {
      char label[48];
      snprintf(label, sizeof label, "time in branch steps %s", pl[k]);
      fmt_ms(percentile(&v[0].steps, ps[k]), b, sizeof b);
      fmt_ms(percentile(&v[1].steps, ps[k]), c, sizeof c);
      printf("%-34s %16s %16s\n", label, b, c);
    }
  }
  for (int i = 0; i < 2; i++) {
    snprintf(i ? c : b, 32, "%.3f",
             v[i].routed ? (double)v[i].retries / (double)v[i].routed : 0.0);
  }
  printf("%-34s %16s %16s\n", "retries per instance", b, c);
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
  printf("\nramp steps\n");
  printf("%-20s %-8s %-9s %10s %10s %10s %10s\n", "from (UTC)", "change",
         "rate", "v1 inst.", "v1 w/inc.", "v2 inst.", "v2 w/inc.");
  for (int i = 0; i < nr; i++) {
    const ramp *r = &rs[i];
    if (i == 0 && !r->instances[0] && !r->instances[1]) {
      continue;
    }
    if (r->ended_at && r->ended_at <= q->since) {
      continue;
    }
    if (r->started_at >= q->until) {
      continue;
    }
    cv_fmt_time(r->started_at, t1, sizeof t1);
    cv_rate_format(r->rate, a, sizeof a);
    snprintf(t2, sizeof t2, "%.16s%s", a, r->killed ? " KILL" : "");
    printf("%-20s %-8s %-9s %10lld %10lld %10lld %10lld\n",
           i == 0 ? "(before changes)" : t1, r->change, t2,
           (long long)r->instances[0], (long long)r->with_incidents[0],
           (long long)r->instances[1], (long long)r->with_incidents[1]);
  }
  (void)names;
}

static json_t *ramps_json(const query *q, const ramp *rs, int nr) {
  json_t *arr = json_array();
  for (int i = 0; i < nr; i++) {
    const ramp *r = &rs[i];
    char rate[CV_RATE_FORMAT_MAX];
    if (i == 0 && !r->instances[0] && !r->instances[1]) {
      continue;
    }
    if ((r->ended_at && r->ended_at <= q->since) || r->started_at >= q->until) {
      continue;
    }
    cv_rate_format(r->rate, rate, sizeof rate);
    json_array_append_new(
        arr, json_pack(
                 "{s:I, s:s, s:o, s:o, s:s, s:I, s:b, s:s, s:s, "
                 "s:{s:I, s:I}, s:{s:I, s:I}}",
                 "id", (json_int_t)r->id, "change", r->change, "started_at",
                 i == 0 ? json_null() : json_integer(r->started_at), "ended_at",
                 r->ended_at ? json_integer(r->ended_at) : json_null(), "rate",
                 rate, "rate_ppm", (json_int_t)r->rate, "killed", r->killed,
                 "actor", r->actor, "reason", r->reason, "v1", "instances",
                 (json_int_t)r->instances[0], "with_incidents",
                 (json_int_t)r->with_incidents[0], "v2", "instances",
                 (json_int_t)r->instances[1], "with_incidents",
                 (json_int_t)r->with_incidents[1]));
  }
  return arr;
}

int cv_cmd_report(void *plugin, int argc, char **argv) {
  cv_router *r = plugin;
  query q = {.since = 0, .until = INT64_MAX};
  double alpha = 0.05, min_effect = 1.0;
  int json = 0, fail_if_worse = 0, rc = 0, nr = 0;
  int64_t now = r->api->now_ms(r->e);
  vstats v[2];
  cv_comparison cmp;
  ramp *rs = NULL;
  char verdict[256];
  memset(v, 0, sizeof v);
  for (int i = 1; i < argc; i++) {
    const char *o = argv[i];
    const char *val = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) {
      fputs(report_usage, stdout);
      return 0;
    } else if (strcmp(o, "--json") == 0) {
      json = 1;
    } else if (strcmp(o, "--fail-if-worse") == 0) {
      fail_if_worse = 1;
    } else if (strcmp(o, "--since") == 0 || strcmp(o, "--until") == 0) {
      if (!val || parse_time(val, now, o[2] == 's' ? &q.since : &q.until)) {
        return usage_error(
            "%s: expected a date (2026-11-23), a UTC time "
            "(2026-11-23T14:00:00Z) or an age (15m, 2h, 7d), "
            "got '%s'",
            o, val ? val : "nothing");
      }
      i++;
    } else if (strcmp(o, "--workflow") == 0) {
      if (!val || !*val) {
        return usage_error("--workflow needs a name");
      }
      q.workflow = val;
      i++;
    } else if (strcmp(o, "--alpha") == 0) {
      if (parse_double(val, 0, 0.5, &alpha)) {
        return usage_error(
            "--alpha: expected a number between 0 and 0.5, "
            "got '%s'",
            val ? val : "nothing");
      }
      i++;
    } else if (strcmp(o, "--min-effect") == 0) {
      if (parse_double(val, 0, 100, &min_effect)) {
        return usage_error(
            "--min-effect: expected percentage points between "
            "0 and 100, got '%s'",
            val ? val : "nothing");
      }
      i++;
    } else if (o[0] == '-' && o[1]) {
      return usage_error("unknown option '%s'", o);
    } else if (!q.flag) {
      q.flag = o;
    } else {
      return usage_error("unexpected argument '%s'", o);
    }
  }
  if (!q.flag) {
    return usage_error("which flag?");
  }
  if (q.since >= q.until) {
    return usage_error("--since must come before --until");
  }
  {
    sqlite3_stmt *s;
    int known = 0;
    if (sqlite3_prepare_v2(r->db,
                           "SELECT 1 FROM cv_flags WHERE name = ?1 UNION ALL "
                           "SELECT 1 FROM cv_decisions WHERE flag = ?1 LIMIT 1",
                           -1, &s, NULL) == SQLITE_OK) {
      sqlite3_bind_text(s, 1, q.flag, -1, SQLITE_STATIC);
      known = sqlite3_step(s) == SQLITE_ROW;
      sqlite3_finalize(s);
    }
    if (!known) {
      return usage_error("no flag '%s' (and no decisions for it)", q.flag);
    }
  }
  /* One read transaction, so every number comes from the same snapshot. */
  sqlite3_exec(r->db, "BEGIN", NULL, NULL, NULL);
  if (load_ramps(r->db, &q, &rs, &nr) || scan(r->db, &q, v, rs, nr)) {
    fprintf(stderr, "switchyard report: %s\n", sqlite3_errmsg(r->db));
    rc = 1;
    goto done;
  }
  cv_compare(v[0].with_incidents, v[0].routed, v[1].with_incidents, v[1].routed,
             alpha, min_effect, &cmp);
  cv_verdict_text(&cmp, verdict, sizeof verdict);
  if (json) {
    json_t *j = json_pack(
        "{s:s, s:s, s:o, s:o, s:o, s:I, s:f, s:f, s:{s:o, s:o}, "
        "s:{s:o, s:o, s:o, s:s, s:s, s:s, s:o}, s:o}",
        "schema", "switchyard.report/1", "flag", q.flag, "workflow",
        q.workflow ? json_string(q.workflow) : json_null(), "since",
        q.since ? json_integer(q.since) : json_null(), "until",
        q.until != INT64_MAX ? json_integer(q.until) : json_null(),
        "generated_at", (json_int_t)now, "alpha", alpha, "min_effect_points",
        min_effect, "versions", "v1", version_json(&v[0]), "v2",
        version_json(&v[1]), "comparison", "difference_points",
        num(cmp.diff_points), "ratio",
        isinf(cmp.ratio) ? json_string("inf") : num(cmp.ratio), "p_value",
        num(cmp.p_value), "test",
        cmp.method == CV_METHOD_FISHER ? "fisher"
        : cmp.method == CV_METHOD_Z    ? "z"
                                       : "none",
        "verdict", verdict_key(cmp.verdict), "verdict_text", verdict,
        "needed_per_version",
        cmp.verdict == CV_NOT_ENOUGH_DATA && cmp.needed_per_version >= 0
            ? json_integer(cmp.needed_per_version)
            : json_null(),
        "ramp_steps", ramps_json(&q, rs, nr));
    char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER |
                                       JSON_REAL_PRECISION(10))
                   : NULL;
    if (!text) {
      fprintf(stderr, "switchyard report: cannot encode the report\n");
      rc = 1;
    } else {
      puts(text);
      free(text);
    }
    json_decref(j);
  } else {
    print_table(&q, v, &cmp, rs, nr, verdict);
  }
  if (!rc && fail_if_worse && cmp.verdict == CV_V2_WORSE) {
    rc = 1;
  }
done:
  sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL);
  for (int i = 0; i < 2; i++) {
    free(v[i].branch.v);
    free(v[i].steps.v);
  }
  free(rs);
  return rc;
}
