/* What choose_version keeps about one instance: its decisions (the
 * reroutes' included, in their order) and the shadow run of each, for
 * `switchyard show` (a member "decisions" of its --json document, or
 * lines of text) and for serve's instance page (pages.c), from one
 * reading. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

#include "cv.h"

static json_t *ms_or_null(sy_stmt *s, int col) {
  return sy_stmt_column_null(s, col) ? json_null()
                                     : json_integer(sy_stmt_column_int(s, col));
}

/* The decision's shadow run (columns 9 to 13), or null. */
static json_t *shadow_of(sy_stmt *s) {
  if (sy_stmt_column_null(s, 9)) {
    return json_null();
  }
  return json_pack(
      "{s:s, s:I, s:o, s:o, s:o}", "outcome", sy_stmt_column_text(s, 10),
      "started_at", (json_int_t)sy_stmt_column_int(s, 9), "primary_ms",
      ms_or_null(s, 11), "candidate_ms", ms_or_null(s, 12), "detail",
      sy_stmt_column_null(s, 13) ? json_null()
                                 : json_string(sy_stmt_column_text(s, 13)));
}

/* "mismatch (verified: true -> false), v1 12 ms, v2 9 ms" */
void cv_shadow_line(json_t *sh, char *buf, size_t len) {
  json_t *detail = json_object_get(sh, "detail");
  json_t *p = json_object_get(sh, "primary_ms");
  json_t *c = json_object_get(sh, "candidate_ms");
  int n = snprintf(buf, len, "%s",
                   json_string_value(json_object_get(sh, "outcome")));
  if (json_is_string(detail) && n > 0 && (size_t)n < len) {
    n += snprintf(buf + n, len - (size_t)n, " (%.300s)",
                  json_string_value(detail));
  }
  if (json_is_integer(p) && json_is_integer(c) && n > 0 && (size_t)n < len) {
    snprintf(buf + n, len - (size_t)n, ", v1 %lld ms, v2 %lld ms",
             (long long)json_integer_value(p),
             (long long)json_integer_value(c));
  }
}

json_t *cv_decisions_of(cv_router *r, int64_t id) {
  sy_stmt *s = cv_stmt(r, CVQ_DECISIONS_OF_ID);
  json_t *arr = json_array();
  int rc;
  if (!s || !arr) {
    json_decref(arr);
    return NULL;
  }
  sy_stmt_bind_int(s, 1, id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    char rate[CV_RATE_FORMAT_MAX];
    const char *outcome = sy_stmt_column_text(s, 6);
    cv_rate_format((uint32_t)sy_stmt_column_int(s, 4), rate, sizeof rate);
    if (json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s, s:o, s:s, s:I, s:I, s:o, s:I, "
                           "s:o}",
                           "flag", sy_stmt_column_text(s, 0), "version",
                           sy_stmt_column_text(s, 1), "reason",
                           sy_stmt_column_text(s, 2), "bucket",
                           sy_stmt_column_null(s, 3)
                               ? json_null()
                               : json_integer(sy_stmt_column_int(s, 3)),
                           "rate", rate, "ramp_id",
                           (json_int_t)sy_stmt_column_int(s, 7), "decided_at",
                           (json_int_t)sy_stmt_column_int(s, 5), "outcome",
                           outcome ? json_string(outcome) : json_null(),
                           "reroutes", (json_int_t)sy_stmt_column_int(s, 8),
                           "shadow", shadow_of(s)))) {
      rc = SY_ENOMEM;
      break;
    }
  }
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    json_decref(arr);
    return NULL;
  }
  return arr;
}

int cv_describe(void *plugin, int64_t id, int json,
                void (*put)(void *ud, const char *key, const char *text),
                void *ud) {
  json_t *arr = cv_decisions_of(plugin, id), *d;
  size_t i;
  char line[1024];
  if (!arr) {
    return SY_ESTORE;
  }
  if (json) {
    char *text = json_dumps(arr, JSON_PRESERVE_ORDER | JSON_COMPACT);
    if (!text) {
      json_decref(arr);
      return SY_ENOMEM;
    }
    put(ud, "decisions", text);
    free(text);
  } else {
    put(ud, NULL, "decisions\n");
    json_array_foreach(arr, i, d) {
      char when[32], bucket[24] = "-";
      json_t *b = json_object_get(d, "bucket");
      json_t *outcome = json_object_get(d, "outcome");
      cv_fmt_time(json_integer_value(json_object_get(d, "decided_at")), when,
                  sizeof when);
      if (json_is_integer(b)) {
        snprintf(bucket, sizeof bucket, "%lld",
                 (long long)json_integer_value(b));
      }
      snprintf(line, sizeof line,
               "  %s  %-24s %s  %-14s bucket %-8s rate %-9s %s\n", when,
               json_string_value(json_object_get(d, "flag")),
               json_string_value(json_object_get(d, "version")),
               json_string_value(json_object_get(d, "reason")), bucket,
               json_string_value(json_object_get(d, "rate")),
               json_is_string(outcome) ? json_string_value(outcome) : "open");
      put(ud, NULL, line);
      if (json_is_object(json_object_get(d, "shadow"))) {
        char sh[600];
        cv_shadow_line(json_object_get(d, "shadow"), sh, sizeof sh);
        snprintf(line, sizeof line, "    shadow run: %s\n", sh);
        put(ud, NULL, line);
      }
    }
  }
  json_decref(arr);
  return 0;
}
