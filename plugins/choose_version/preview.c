/* `rollout set|kill|unkill ... --dry-run`: who a change would move, before
 * it is made. Each sticky subject decided in the window is routed twice by
 * the router's own rule (cv_precedence), with the flag as it is and as the
 * change would leave it, with its override and its eligibility as its last
 * decision found it: the counts are those the change then produces for
 * those subjects' next decisions. Instances already decided keep their
 * version (a decision is sticky per instance): they are counted apart. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

#define EXAMPLES 5

typedef struct moves {
  int64_t subjects, to_v2, to_v1, stay_v1, stay_v2;
  json_t *ex_v2, *ex_v1; /* the first few subjects of each move */
} moves;

static cv_version route(const cv_flag *f, const char *subject, int eligible,
                        cv_override ov) {
  cv_request req = {.flag = f->name,
                    .key = subject,
                    .key_len = strlen(subject),
                    .strategy = CV_STRATEGY_STICKY,
                    .eligible = eligible};
  cv_decision d;
  cv_precedence(f, ov, &req, 0, 0, &d);
  return d.version;
}

static void count(moves *m, const char *subject, cv_version a, cv_version b) {
  m->subjects++;
  if (a == b) {
    *(a == CV_V2 ? &m->stay_v2 : &m->stay_v1) += 1;
    return;
  }
  if (b == CV_V2) {
    if (m->to_v2++ < EXAMPLES) {
      json_array_append_new(m->ex_v2, json_string(subject));
    }
  } else if (m->to_v1++ < EXAMPLES) {
    json_array_append_new(m->ex_v1, json_string(subject));
  }
}

static int subjects(cv_router *r, const cv_flag *now, const cv_flag *then,
                    int64_t since, moves *m) {
  sy_stmt *s = cv_stmt(r, CVQ_PREVIEW_SUBJECTS);
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, now->name);
  sy_stmt_bind_int(s, 2, since);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *subject = sy_stmt_column_text(s, 0);
    const char *kind = sy_stmt_column_text(s, 2);
    int eligible = (int)sy_stmt_column_int(s, 1);
    cv_override ov = !kind                        ? CV_OVERRIDE_NONE
                     : strcmp(kind, "allow") == 0 ? CV_OVERRIDE_ALLOW
                                                  : CV_OVERRIDE_OPT_OUT;
    count(m, subject, route(now, subject, eligible, ov),
          route(then, subject, eligible, ov));
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

static int in_flight(cv_router *r, const char *flag, int64_t *v1, int64_t *v2) {
  sy_stmt *s = cv_stmt(r, CVQ_PREVIEW_IN_FLIGHT);
  int rc;
  *v1 = *v2 = 0;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    *(strcmp(sy_stmt_column_text(s, 0), "v2") == 0 ? v2 : v1) =
        sy_stmt_column_int(s, 1);
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

static void print_examples(json_t *ex, int64_t n) {
  size_t i;
  json_t *v;
  if (!n) {
    putchar('\n');
    return;
  }
  printf("   e.g.");
  json_array_foreach(ex, i, v) {
    printf(" %s", json_string_value(v));
  }
  printf("%s\n", n > EXAMPLES ? ", ..." : "");
}

int cv_preview(cv_router *r, const cv_flag *now, const cv_flag *then,
               const char *change, const char *window, int json) {
  moves m;
  int64_t f1, f2, since, span = 30 * 86400000LL;
  int rc = 0;
  if (window && cv_parse_age(window, &span)) {
    return cv_usage_error(
        "rollout", "--window: expected a duration (7d, 36h), got '%s'", window);
  }
  since = r->api->now_ms(r->e) - span;
  m = (moves){.ex_v2 = json_array(), .ex_v1 = json_array()};
  if (cv_cmd_begin(r, "rollout", 0)) {
    json_decref(m.ex_v2);
    json_decref(m.ex_v1);
    return 1;
  }
  if (subjects(r, now, then, since, &m) || in_flight(r, now->name, &f1, &f2)) {
    rc = cv_cmd_db_error(r, "rollout", "preview");
  }
  if ((rc = cv_cmd_end(r, "rollout", rc))) {
    json_decref(m.ex_v2);
    json_decref(m.ex_v1);
    return rc;
  }
  if (json) {
    json_t *j = json_pack(
        "{s:s, s:s, s:b, s:I, s:I, s:I, s:o, s:I, s:o, s:I, s:I, "
        "s:{s:I, s:I}}",
        "flag", now->name, "change", change, "dry_run", 1, "since",
        (json_int_t)since, "subjects", (json_int_t)m.subjects, "to_v2",
        (json_int_t)m.to_v2, "examples_to_v2", m.ex_v2, "to_v1",
        (json_int_t)m.to_v1, "examples_to_v1", m.ex_v1, "unchanged_v1",
        (json_int_t)m.stay_v1, "unchanged_v2", (json_int_t)m.stay_v2,
        "in_flight", "v1", (json_int_t)f1, "v2", (json_int_t)f2);
    cv_print_json(j);
    return 0;
  }
  char t[32];
  cv_fmt_time(since, t, sizeof t);
  printf("%s: dry run of %s (nothing was changed)\n", now->name, change);
  printf("  subjects decided since %s (sticky): %lld\n", t,
         (long long)m.subjects);
  printf("  would move v1 -> v2: %lld", (long long)m.to_v2);
  print_examples(m.ex_v2, m.to_v2);
  printf("  would move v2 -> v1: %lld", (long long)m.to_v1);
  print_examples(m.ex_v1, m.to_v1);
  printf("  unchanged: %lld on v1, %lld on v2\n", (long long)m.stay_v1,
         (long long)m.stay_v2);
  printf("  instances in flight keep their version: %lld on v1, %lld on v2\n",
         (long long)f1, (long long)f2);
  json_decref(m.ex_v2);
  json_decref(m.ex_v1);
  return 0;
}
