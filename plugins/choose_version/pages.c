/* The router's pages in `switchyard serve`: the flags (rate, kill switch,
 * what each version got), a flag's report with its ramp steps (a chart of
 * the rate and of each version's incident rate at each step), its plan
 * and the plan's evaluations, its overrides and audit trail, and the
 * report as JSON (/api/flags/NAME/report, what `report NAME --json`
 * prints); its shadow runs (/api/flags/NAME/shadow: `report NAME
 * --shadow --json`); the changes a token allows (rate, kill, unkill, approving
 * a plan's gate) through the rollout commands themselves. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

typedef sy_http_response out;

static void put(out *o, const char *s) {
  o->put(o->ud, s);
}

static void putf(out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void putf(out *o, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  put(o, buf);
}

static void put_html(out *o, const char *s) {
  o->put_html(o->ud, s);
}

/* A document's string member, as HTML. */
static void put_str(out *o, json_t *doc, const char *key) {
  put_html(o, json_string_value(json_object_get(doc, key)));
}

static int error_page(out *o, int status, const char *msg, int json) {
  o->status = status;
  if (json) {
    json_t *j = json_pack("{s:s}", "error", msg);
    char *s = j ? json_dumps(j, 0) : NULL;
    o->content_type = "application/json";
    put(o, s ? s : "{}");
    put(o, "\n");
    free(s);
    json_decref(j);
    return 0;
  }
  snprintf(o->title, sizeof o->title, "Not found");
  put(o, "<p>");
  put_html(o, msg);
  put(o, "</p>\n");
  return 0;
}

/* /flags: each flag with its rate and what each version got. */
/* A flag's row in the flags' table: its plan (cv_plan_document) and its
 * verdict (the report's, from the ramp tallies). */
static int put_flag_row(cv_router *r, out *o, const char *name, int64_t rate,
                        int killed) {
  int have = 0, known = 0;
  json_t *plan = cv_plan_document(r, name, &have), *report, *cmp;
  if (!plan && have) {
    return SY_ESTORE;
  }
  if (!(report = cv_report_document(r, name, 0, &known)) && known) {
    json_decref(plan);
    return SY_ESTORE;
  }
  put(o, "<tr><td><a href=\"/flags/");
  put_html(o, name);
  put(o, "\">");
  put_html(o, name);
  putf(o, "</a></td><td class=\"n\">%g%%</td><td>%s</td><td data-plan>",
       (double)rate / 1e4, killed ? "<b class=\"incident\">killed</b>" : "off");
  if (plan) {
    put_html(o, json_string_value(json_object_get(plan, "state")));
    putf(o, ", step %lld of ",
         (long long)json_integer_value(json_object_get(plan, "step")));
    put_html(o, json_string_value(json_object_get(plan, "steps")));
    if (json_is_true(json_object_get(plan, "awaiting_approval"))) {
      put(o, ", <b>awaiting approval</b>");
    }
  } else {
    put(o, "none");
  }
  cmp = json_object_get(report, "comparison");
  put(o, "</td><td data-verdict=\"");
  put_html(o, json_string_value(json_object_get(cmp, "verdict")));
  put(o, "\">");
  put_html(o, json_string_value(json_object_get(cmp, "verdict_text")));
  put(o, "</td></tr>\n");
  json_decref(plan);
  json_decref(report);
  return 0;
}

/* The flags that are not retired: rate, kill switch, plan and verdict. */
static int put_flags(cv_router *r, out *o) {
  sy_stmt *f = cv_stmt(r, CVQ_METRICS_FLAGS);
  struct {
    char *name;
    int64_t rate;
    int killed;
  } *rows = NULL;
  size_t n = 0, cap = 0;
  int rc;
  if (!f) {
    return SY_ESTORE;
  }
  /* Read first: each row's plan and report read the database too. */
  while ((rc = sy_stmt_step(f)) == SY_ROW) {
    if (n == cap) {
      void *more = realloc(rows, (cap = cap ? 2 * cap : 16) * sizeof *rows);
      if (!more) {
        rc = SY_ENOMEM;
        break;
      }
      rows = more;
    }
    if (!(rows[n].name = strdup(sy_stmt_column_text(f, 0)))) {
      rc = SY_ENOMEM;
      break;
    }
    rows[n].rate = sy_stmt_column_int(f, 1);
    rows[n++].killed = (int)sy_stmt_column_int(f, 2);
  }
  sy_stmt_reset(f);
  rc = rc == SY_DONE ? 0 : rc == SY_ENOMEM ? rc : SY_ESTORE;
  put(o,
      "<table id=\"flags\"><tr><th>flag</th><th>rate</th>"
      "<th>kill switch</th><th>plan</th><th>verdict</th></tr>\n");
  for (size_t i = 0; i < n; i++) {
    if (!rc) {
      rc = put_flag_row(r, o, rows[i].name, rows[i].rate, rows[i].killed);
    }
    free(rows[i].name);
  }
  free(rows);
  put(o, "</table>\n");
  return rc;
}

static int flags_page(cv_router *r, out *o) {
  sy_stmt *c = cv_stmt(r, CVQ_METRICS_COUNTERS);
  int rc;
  if (!c) {
    return SY_ESTORE;
  }
  snprintf(o->title, sizeof o->title, "Flags");
  if ((rc = put_flags(r, o))) {
    return rc;
  }
  put(o,
      "<h2>Per workflow and version</h2><table id=\"counters\">"
      "<tr><th>workflow</th><th>flag</th><th>version</th><th>routed</th>"
      "<th>completed</th><th>in flight</th><th>incidents</th>"
      "<th>open incidents</th></tr>\n");
  while ((rc = sy_stmt_step(c)) == SY_ROW) {
    put(o, "<tr><td>");
    put_html(o, sy_stmt_column_text(c, 0));
    put(o, "</td><td>");
    put_html(o, sy_stmt_column_text(c, 1));
    put(o, "</td><td>");
    put_html(o, sy_stmt_column_text(c, 2));
    putf(o,
         "</td><td class=\"n\">%lld</td><td class=\"n\">%lld</td>"
         "<td class=\"n\">%lld</td><td class=\"n\">%lld</td>"
         "<td class=\"n\">%lld</td></tr>\n",
         (long long)sy_stmt_column_int(c, 3),
         (long long)sy_stmt_column_int(c, 4),
         (long long)sy_stmt_column_int(c, 7),
         (long long)sy_stmt_column_int(c, 6),
         (long long)sy_stmt_column_int(c, 8));
  }
  sy_stmt_reset(c);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  put(o, "</table>\n");
  return 0;
}

/* An instance's decisions (cv_decisions_of, what `show` gives). */
static int put_decisions(cv_router *r, out *o, int64_t id) {
  json_t *arr = cv_decisions_of(r, id), *d;
  size_t i;
  if (!arr) {
    return SY_ESTORE;
  }
  put(o,
      "<h2>Decisions</h2><table id=\"decisions\"><tr><th>flag</th>"
      "<th>version</th><th>why</th><th>bucket</th><th>rate</th>"
      "<th>decided</th><th>outcome</th><th>shadow run</th></tr>\n");
  json_array_foreach(arr, i, d) {
    char when[32];
    json_t *bucket = json_object_get(d, "bucket");
    cv_fmt_time(json_integer_value(json_object_get(d, "decided_at")), when,
                sizeof when);
    put(o, "<tr><td><a href=\"/flags/");
    put_str(o, d, "flag");
    put(o, "\">");
    put_str(o, d, "flag");
    put(o, "</a></td><td data-version>");
    put_str(o, d, "version");
    put(o, "</td><td data-reason>");
    put_str(o, d, "reason");
    put(o, "</td><td class=\"n\">");
    if (json_is_integer(bucket)) {
      putf(o, "%lld", (long long)json_integer_value(bucket));
    }
    put(o, "</td><td class=\"n\">");
    put_str(o, d, "rate");
    putf(o, "</td><td>%s</td><td>", when);
    put_str(o, d, "outcome");
    put(o, "</td><td data-shadow>");
    if (json_is_object(json_object_get(d, "shadow"))) {
      char sh[600];
      cv_shadow_line(json_object_get(d, "shadow"), sh, sizeof sh);
      put_html(o, sh);
    }
    put(o, "</td></tr>\n");
  }
  put(o, "</table>\n");
  if (!json_array_size(arr)) {
    put(o, "<p>None: no choose_version node has decided for it.</p>\n");
  }
  json_decref(arr);
  return 0;
}

int cv_section(void *plugin, const sy_http_request *req, sy_http_response *o) {
  const char *p = req->path;
  if (strcmp(p, "/") == 0) {
    put(o, "<h2>Flags</h2>\n");
    return put_flags(plugin, o);
  }
  if (strncmp(p, "/instances/", 11) == 0) {
    return put_decisions(plugin, o, strtoll(p + 11, NULL, 10));
  }
  return 0;
}

static double num(json_t *o, const char *key) {
  return json_number_value(json_object_get(o, key));
}

static void put_version_rows(out *o, json_t *doc) {
  static const char *const rows[][2] = {
      {"routed", "routed"},
      {"completed", "completed"},
      {"in_flight", "in flight"},
      {"incidents", "incidents"},
      {"instances_with_incidents", "instances with incidents"}};
  json_t *v1 = json_object_get(json_object_get(doc, "versions"), "v1");
  json_t *v2 = json_object_get(json_object_get(doc, "versions"), "v2");
  put(o, "<table id=\"versions\"><tr><th></th><th>v1</th><th>v2</th></tr>\n");
  for (size_t i = 0; i < sizeof rows / sizeof *rows; i++) {
    putf(o,
         "<tr><th>%s</th><td class=\"n\" data-v1=\"%s\">%.0f</td>"
         "<td class=\"n\" data-v2=\"%s\">%.0f</td></tr>\n",
         rows[i][1], rows[i][0], num(v1, rows[i][0]), rows[i][0],
         num(v2, rows[i][0]));
  }
  put(o, "<tr><th>incident rate (95% interval)</th>");
  for (int k = 0; k < 2; k++) {
    json_t *v = k ? v2 : v1;
    json_t *ci = json_object_get(v, "incident_rate_ci95");
    putf(o, "<td class=\"n\">%.2f%% (%.2f-%.2f%%)</td>",
         100 * num(v, "incident_rate"),
         100 * json_number_value(json_array_get(ci, 0)),
         100 * json_number_value(json_array_get(ci, 1)));
  }
  put(o, "</tr>\n</table>\n");
}

/* The flag's shadow runs (report --shadow), when it has a shadow rate or
 * had runs. */
static int put_shadow(cv_router *r, out *o, const char *flag) {
  static const char *const rows[][2] = {
      {"match", "match"},
      {"mismatch", "mismatch"},
      {"candidate_error", "candidate error"},
      {"candidate_timeout", "candidate timeout"},
      {"primary_error", "primary error"},
      {"compare_error", "compare error"},
      {"lost", "lost"},
      {"in_flight", "in flight"}};
  int known = 0;
  json_t *doc = cv_shadow_document(r, flag, 0, INT64_MAX, &known), *x;
  json_t *outcomes = json_object_get(doc, "outcomes");
  json_t *m = json_object_get(doc, "mismatch");
  json_t *lat = json_object_get(doc, "latency_ms");
  char line[200];
  size_t i;
  if (!doc) {
    return SY_ESTORE;
  }
  if (!num(doc, "runs") && !json_integer_value(json_object_get(
                               json_object_get(doc, "shadow"), "rate_ppm"))) {
    json_decref(doc);
    return 0;
  }
  cv_shadow_settings_text(doc, line, sizeof line);
  put(o,
      "<h2>Shadow runs</h2><p id=\"shadow-settings\">v2's first step "
      "beside v1: ");
  put_html(o, line);
  put(o, "</p>\n<table id=\"shadow\"><tr><th>runs started</th>");
  putf(o, "<td class=\"n\" data-k=\"runs\">%.0f</td></tr>\n", num(doc, "runs"));
  for (i = 0; i < sizeof rows / sizeof *rows; i++) {
    putf(o, "<tr><th>%s</th><td class=\"n\" data-k=\"%s\">%.0f</td></tr>\n",
         rows[i][1], rows[i][0], num(outcomes, rows[i][0]));
  }
  putf(o,
       "<tr><th>skipped by the budget</th><td class=\"n\" "
       "data-k=\"skipped_by_budget\">%.0f</td></tr>\n",
       num(doc, "skipped_by_budget"));
  putf(o,
       "<tr><th>skipped: too many in flight on an engine</th><td class=\"n\" "
       "data-k=\"skipped_busy\">%.0f</td></tr>\n",
       num(doc, "skipped_busy"));
  if (num(m, "compared") > 0) {
    putf(o,
         "<tr><th>mismatch rate (95%% interval)</th><td class=\"n\">"
         "%.2f%% (%.2f-%.2f%%) of %.0f</td></tr>\n",
         100 * num(m, "rate"), 100 * num(m, "ci_low"), 100 * num(m, "ci_high"),
         num(m, "compared"));
    for (int k = 0; k < 3; k++) {
      static const char *const pl[] = {"p50", "p95", "p99"};
      putf(o,
           "<tr><th>latency %s: primary, candidate</th><td class=\"n\">"
           "%.0f ms, %.0f ms</td></tr>\n",
           pl[k], num(json_object_get(lat, "primary"), pl[k]),
           num(json_object_get(lat, "candidate"), pl[k]));
    }
  }
  put(o, "</table>\n");
  if (json_array_size(json_object_get(doc, "first_mismatches"))) {
    put(o,
        "<table id=\"mismatches\"><tr><th>instance</th><th>subject</th>"
        "<th>what differs (v1 -> v2)</th></tr>\n");
  }
  json_array_foreach(json_object_get(doc, "first_mismatches"), i, x) {
    putf(o, "<tr><td><a href=\"/instances/%.0f\">%.0f</a></td><td>",
         num(x, "instance_id"), num(x, "instance_id"));
    put_html(o, json_string_value(json_object_get(x, "subject")));
    put(o, "</td><td>");
    put_html(o, json_string_value(json_object_get(x, "detail")));
    put(o, "</td></tr>\n");
  }
  if (json_array_size(json_object_get(doc, "first_mismatches"))) {
    put(o, "</table>\n");
  }
  put(o, "<p><a href=\"/api/flags/");
  put_html(o, flag);
  put(o, "/shadow\">The shadow runs as JSON</a></p>\n");
  json_decref(doc);
  return 0;
}

static void put_ramps(out *o, json_t *doc) {
  json_t *steps = json_object_get(doc, "ramp_steps"), *s;
  size_t i;
  put(o,
      "<h2>Ramp steps</h2><table id=\"ramps\"><tr><th>from</th>"
      "<th>rate</th><th>change</th><th>v1 instances</th>"
      "<th>v1 with incidents</th><th>v2 instances</th>"
      "<th>v2 with incidents</th></tr>\n");
  json_array_foreach(steps, i, s) {
    char when[32] = "the start";
    json_t *v1 = json_object_get(s, "v1"), *v2 = json_object_get(s, "v2");
    if (json_is_integer(json_object_get(s, "started_at"))) {
      cv_fmt_time(json_integer_value(json_object_get(s, "started_at")), when,
                  sizeof when);
    }
    putf(o, "<tr><td>%s</td><td class=\"n\">", when);
    put_str(o, s, "rate");
    put(o, "</td><td>");
    put_str(o, s, "change");
    putf(o,
         "</td><td class=\"n\">%.0f</td><td class=\"n\">%.0f</td>"
         "<td class=\"n\">%.0f</td><td class=\"n\">%.0f</td></tr>\n",
         num(v1, "instances"), num(v1, "with_incidents"), num(v2, "instances"),
         num(v2, "with_incidents"));
  }
  put(o, "</table>\n");
}

static double share(json_t *v) {
  double n = num(v, "instances");
  return n > 0 ? num(v, "with_incidents") / n : 0;
}

/* The ramp steps as a chart (SVG, drawn here: nothing is fetched): per
 * step, a grey bar for the rate (0 to 100%), and a bar for each version's
 * share of instances with an incident, on a scale of its own (0 to the
 * largest share, said on the right). */
static void put_ramp_chart(out *o, json_t *doc) {
  json_t *steps = json_object_get(doc, "ramp_steps"), *s;
  size_t n = json_array_size(steps), i;
  const int h = 180, top = 20, base = 160, left = 50, colw = 90;
  int w = left + (int)n * colw + 60 < 460 ? 460 : left + (int)n * colw + 60;
  double top_share = 0;
  json_array_foreach(steps, i, s) {
    for (int k = 0; k < 2; k++) {
      double x = share(json_object_get(s, k ? "v2" : "v1"));
      top_share = x > top_share ? x : top_share;
    }
  }
  put(o, "<h2>Rate and incidents by ramp step</h2>\n");
  putf(o,
       "<svg id=\"ramp-chart\" xmlns=\"http://www.w3.org/2000/svg\" "
       "width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" role=\"img\" "
       "aria-label=\"the rate and each version's incident rate at each ramp "
       "step\" font-family=\"sans-serif\" font-size=\"11\">\n",
       w, h + 30, w, h + 30);
  putf(o,
       "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#888\"/>"
       "<text x=\"4\" y=\"%d\">100%%</text><text x=\"4\" y=\"%d\">0</text>"
       "<text x=\"%d\" y=\"%d\" fill=\"#555\">%.2f%%</text>\n",
       left, base, left + (int)n * colw, base, top + 4, base,
       left + (int)n * colw + 2, top + 4, 100 * top_share);
  json_array_foreach(steps, i, s) {
    int x = left + (int)i * colw;
    double rate = num(s, "rate_ppm") / 1e6;
    double v[2] = {share(json_object_get(s, "v1")),
                   share(json_object_get(s, "v2"))};
    const char *label = json_string_value(json_object_get(s, "rate"));
    putf(o,
         "<g class=\"step\" data-rate-ppm=\"%.0f\" data-v1=\"%.6f\" "
         "data-v2=\"%.6f\">",
         num(s, "rate_ppm"), v[0], v[1]);
    putf(o,
         "<rect x=\"%d\" y=\"%.1f\" width=\"28\" height=\"%.1f\" "
         "fill=\"#bbb\"><title>rate ",
         x + 6, base - rate * (base - top), rate * (base - top));
    put_html(o, label);
    put(o, "</title></rect>");
    for (int k = 0; k < 2; k++) {
      double bar = top_share > 0 ? v[k] / top_share * (base - top) : 0;
      putf(o,
           "<rect x=\"%d\" y=\"%.1f\" width=\"20\" height=\"%.1f\" "
           "fill=\"%s\"><title>v%d: %.2f%% of %.0f instances with an "
           "incident</title></rect>",
           x + 38 + 22 * k, base - bar, bar, k ? "#e08a2c" : "#4a78c2", k + 1,
           100 * v[k], num(json_object_get(s, k ? "v2" : "v1"), "instances"));
    }
    putf(o, "<text x=\"%d\" y=\"%d\">", x + 6, base + 14);
    put_html(o, label);
    put(o, json_is_true(json_object_get(s, "killed")) ? " killed" : "");
    put(o, "</text></g>\n");
  }
  putf(o,
       "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" "
       "fill=\"#bbb\"/><text x=\"%d\" y=\"%d\">rate</text>"
       "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" "
       "fill=\"#4a78c2\"/><text x=\"%d\" y=\"%d\">v1 incident rate</text>"
       "<rect x=\"%d\" y=\"%d\" width=\"10\" height=\"10\" "
       "fill=\"#e08a2c\"/><text x=\"%d\" y=\"%d\">v2 incident rate</text>\n"
       "</svg>\n",
       left, h + 12, left + 14, h + 21, left + 60, h + 12, left + 74, h + 21,
       left + 180, h + 12, left + 194, h + 21);
}

/* The plan: where it is, what it waits for (*gate: an approval), its last
 * evaluations. */
static int put_plan(cv_router *r, out *o, const char *flag, int *gate) {
  int have = 0;
  json_t *p = cv_plan_document(r, flag, &have), *e;
  size_t i;
  *gate = 0;
  if (!p) {
    return have ? SY_ESTORE : 0;
  }
  put(o, "<h2>Plan</h2><p id=\"plan\">");
  put_str(o, p, "state");
  putf(o, ", step %.0f of ", num(p, "step"));
  put_str(o, p, "steps");
  put(o, " (now ");
  put_str(o, p, "rate");
  putf(o,
       "), held %.0f s of %.0f s; at this step v1 %.0f, v2 %.0f "
       "instances (at least %.0f of each)",
       num(p, "held_ms") / 1000, num(p, "hold_ms") / 1000,
       num(json_object_get(p, "at_this_step"), "v1"),
       num(json_object_get(p, "at_this_step"), "v2"), num(p, "min_instances"));
  if ((*gate = json_is_true(json_object_get(p, "awaiting_approval")))) {
    put(o, "; <strong id=\"gate\">the next step waits for approval</strong>");
  }
  put(o,
      ".</p>\n<table id=\"evaluations\"><tr><th>when</th><th>step</th>"
      "<th>outcome</th><th>applied</th><th>why</th></tr>\n");
  json_array_foreach(json_object_get(p, "evaluations"), i, e) {
    char when[32];
    cv_fmt_time((int64_t)num(e, "at"), when, sizeof when);
    putf(o, "<tr><td>%s</td><td class=\"n\">%.0f</td><td>", when,
         num(e, "step"));
    put_str(o, e, "outcome");
    putf(o, "</td><td>%s</td><td>",
         json_is_true(json_object_get(e, "applied")) ? "yes" : "");
    put_str(o, e, "reason");
    put(o, "</td></tr>\n");
  }
  put(o, "</table>\n");
  json_decref(p);
  return 0;
}

static int put_overrides(cv_router *r, out *o, const char *flag) {
  sy_stmt *s = cv_stmt(r, CVQ_OVERRIDES_OF);
  int rc, n = 0;
  if (!s) {
    return SY_ESTORE;
  }
  put(o,
      "<h2>Overrides</h2><table id=\"overrides\"><tr><th>subject</th>"
      "<th>kind</th><th>who</th><th>why</th><th>since</th></tr>\n");
  sy_stmt_bind_text(s, 1, flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    char when[32];
    cv_fmt_time(sy_stmt_column_int(s, 4), when, sizeof when);
    put(o, "<tr>");
    for (int c = 0; c < 4; c++) {
      put(o, "<td>");
      put_html(o, sy_stmt_column_text(s, c));
      put(o, "</td>");
    }
    putf(o, "<td>%s</td></tr>\n", when);
    n++;
  }
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  put(o, "</table>\n");
  if (!n) {
    put(o, "<p>None: every subject is routed by the rate.</p>\n");
  }
  return 0;
}

static int put_audit(cv_router *r, out *o, const char *flag) {
  sy_stmt *s = cv_stmt(r, CVQ_AUDIT_OF);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  put(o,
      "<h2>Audit trail</h2><table id=\"audit\"><tr><th>when</th>"
      "<th>what</th><th>from</th><th>to</th><th>who</th><th>why</th>"
      "</tr>\n");
  sy_stmt_bind_text(s, 1, flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    char when[32];
    cv_fmt_time(sy_stmt_column_int(s, 7), when, sizeof when);
    putf(o, "<tr><td>%s</td>", when);
    for (int c = 1; c <= 6; c++) {
      if (c == 2 || c == 5) {
        continue; /* subject, reason after */
      }
      put(o, "<td>");
      put_html(o, sy_stmt_column_text(s, c));
      put(o, "</td>");
    }
    put(o, "<td>");
    put_html(o, sy_stmt_column_text(s, 5));
    put(o, "</td></tr>\n");
  }
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  put(o, "</table>\n");
  return 0;
}

/* The flag page's changes: the API's POST with the token typed in, the
 * answer shown, the page read again after a change. Approving is offered
 * only while the plan waits at a gate (change_approve). */
static const char change_form[] =
    "<h2>Change</h2><form id=\"change\" onsubmit=\"return false\"><p>"
    "<label>Rate <input id=\"rate\" size=\"8\" placeholder=\"5%\">"
    "</label> <label>Reason <input id=\"reason\" size=\"30\"></label> "
    "<label>Token <input type=\"password\" id=\"token\" "
    "autocomplete=\"off\"></label></p><p>"
    "<button data-action=\"rate\">Set the rate</button> "
    "<button data-action=\"kill\">Kill (all to v1)</button> "
    "<button data-action=\"unkill\">Unkill</button> ";
static const char change_approve[] =
    "<button data-action=\"approve\">Approve the plan's gate</button> ";
static const char change_script[] =
    "<output id=\"result\"></output></p></form>\n"
    "<script>\n"
    "document.getElementById('change').addEventListener('click', async "
    "(ev) => {\n"
    "  const b = ev.target.closest('button[data-action]');\n"
    "  if (!b) return;\n"
    "  const v = (id) => encodeURIComponent(document.getElementById(id)."
    "value);\n"
    "  const url = location.pathname.replace('/flags/', '/api/flags/') + "
    "'/' +\n"
    "    b.dataset.action + '?reason=' + v('reason') + '&rate=' + "
    "v('rate');\n"
    "  const r = await fetch(url, {method: 'POST', headers: "
    "{Authorization:\n"
    "    'Bearer ' + document.getElementById('token').value}});\n"
    "  const body = await r.json();\n"
    "  const out = document.getElementById('result');\n"
    "  out.dataset.status = r.status;\n"
    "  out.textContent = r.ok ? 'done' : r.status + ': ' + body.error;\n"
    "  if (r.ok) location.reload();\n"
    "});\n"
    "</script>\n";

/* A document of the API (a report's, the shadow runs'), as the CLI's
 * --json prints it. */
static void put_document(out *o, json_t *doc) {
  char *s = json_dumps(
      doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
  o->content_type = "application/json";
  put(o, s ? s : "{}");
  put(o, "\n");
  free(s);
}

/* What a page of a flag answers when its document could not be had. */
static int no_document(out *o, const char *flag, int known, int json) {
  char msg[300];
  if (known) {
    return SY_ESTORE;
  }
  snprintf(msg, sizeof msg, "no flag '%.200s' (and no decisions for it)", flag);
  return error_page(o, 404, msg, json);
}

static int flag_page(cv_router *r, out *o, const char *flag, int json) {
  int known = 0, rc = 0, gate = 0;
  json_t *doc = cv_report_document(r, flag, json, &known);
  if (!doc) {
    return no_document(o, flag, known, json);
  }
  if (json) {
    put_document(o, doc);
  } else {
    snprintf(o->title, sizeof o->title, "Flag %.100s", flag);
    put(o, "<p id=\"verdict\">");
    put_html(o, json_string_value(json_object_get(
                    json_object_get(doc, "comparison"), "verdict_text")));
    put(o, "</p>\n");
    put_version_rows(o, doc);
    put_ramp_chart(o, doc);
    put_ramps(o, doc);
    if (!(rc = put_shadow(r, o, flag)) && !(rc = put_plan(r, o, flag, &gate))) {
      put(o, change_form);
      put(o, gate ? change_approve : "");
      put(o, change_script);
      if (!(rc = put_overrides(r, o, flag))) {
        rc = put_audit(r, o, flag);
      }
    }
    putf(o, "<p><a href=\"/api/flags/");
    put_html(o, flag);
    put(o, "/report\">This report as JSON</a></p>\n");
  }
  json_decref(doc);
  return rc;
}

/* GET /api/flags/NAME/shadow: what `report NAME --shadow --json` prints. */
static int shadow_json(out *o, cv_router *r, const char *flag) {
  int known = 0;
  json_t *doc = cv_shadow_document(r, flag, 0, INT64_MAX, &known);
  if (!doc) {
    return no_document(o, flag, known, 1);
  }
  put_document(o, doc);
  json_decref(doc);
  return 0;
}

/* POST /api/flags/NAME/(rate|kill|unkill|approve)?rate=R&reason=WHY: the
 * change `rollout set|kill|unkill NAME [R] --reason WHY --actor console`
 * (or `rollout plan NAME approve ...`) makes,
 * through that very command, after checking what it would refuse, so
 * that the answer can say why. */
static int flag_action(cv_router *r, const sy_http_request *req, out *o,
                       const char *flag, const char *action) {
  const char *rate = req->query(req, "rate");
  const char *reason = req->query(req, "reason");
  const char *actor = req->query(req, "actor");
  char *argv[10], err[256];
  int argc = 0, rc;
  uint32_t ppm;
  if (!reason || !*reason) {
    return error_page(o, 400, "a change needs a reason (reason=...)", 1);
  }
  if (strcmp(action, "rate") == 0 &&
      (!rate || cv_rate_parse(rate, &ppm, err, sizeof err))) {
    return error_page(o, 400, rate ? err : "which rate? (rate=5%, 2500ppm)", 1);
  }
  argv[argc++] = "rollout";
  if (strcmp(action, "approve") == 0) { /* rollout plan FLAG approve */
    argv[argc++] = "plan";
    argv[argc++] = (char *)flag;
  }
  argv[argc++] = strcmp(action, "rate") == 0 ? "set" : (char *)action;
  if (strcmp(action, "approve") != 0) {
    argv[argc++] = (char *)flag;
  }
  if (strcmp(action, "rate") == 0) {
    argv[argc++] = (char *)rate;
  }
  argv[argc++] = "--reason";
  argv[argc++] = (char *)reason;
  argv[argc++] = "--actor";
  argv[argc++] = (char *)(actor && *actor ? actor : "console");
  argv[argc] = NULL;
  if ((rc = cv_cmd_rollout(r, argc, argv))) {
    return error_page(o, rc == 2 ? 400 : 500,
                      "the change was refused: see the server's log", 1);
  }
  return flag_page(r, o, flag, 1);
}

int cv_serve(void *plugin, const sy_http_request *req, sy_http_response *o) {
  cv_router *r = plugin;
  const char *p = req->path;
  int json = strncmp(p, "/api/", 5) == 0;
  char flag[256];
  size_t n;
  if (json) {
    p += 4; /* "/flags/NAME/report" */
  }
  if (strcmp(p, "/flags") == 0 && !json) {
    return strcmp(req->method, "POST") ? flags_page(r, o) : SY_ENOTFOUND;
  }
  if (strncmp(p, "/flags/", 7) != 0) {
    return SY_ENOTFOUND;
  }
  p += 7;
  n = strcspn(p, "/");
  if (n == 0 || n >= sizeof flag) {
    return SY_ENOTFOUND;
  }
  memcpy(flag, p, n);
  flag[n] = '\0';
  if (strcmp(req->method, "POST") == 0) {
    const char *action = p + n + (p[n] == '/');
    if (!json || (strcmp(action, "rate") && strcmp(action, "kill") &&
                  strcmp(action, "unkill") && strcmp(action, "approve"))) {
      return SY_ENOTFOUND;
    }
    return flag_action(r, req, o, flag, action);
  }
  if (json && strcmp(p + n, "/shadow") == 0) {
    return shadow_json(o, r, flag);
  }
  if (json ? strcmp(p + n, "/report") != 0 : p[n] != '\0') {
    return SY_ENOTFOUND;
  }
  return flag_page(r, o, flag, json);
}
