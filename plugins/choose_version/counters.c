/* Per-version counters (cv_counters): how many instances each (workflow,
 * flag, version) routed, has in flight, completed, cancelled, and how
 * their incidents stand. Changes are batched in memory for the open
 * transaction, one cv_delta per key, and written in one upsert per key
 * just before the engine commits (before_commit), so that a busy turn
 * writes each counter row once rather than once per decision or event.
 * The latency histograms (cv_latency) and the ramp steps' tallies
 * (cv_ramp_tallies) of each key ride in the same batch. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

void cv_discard_counters(cv_router *r) {
  while (r->deltas) {
    cv_delta *d = r->deltas;
    r->deltas = d->next;
    while (d->ramps) {
      cv_ramp_delta *t = d->ramps;
      d->ramps = t->next;
      free(t);
    }
    free(d->workflow);
    free(d->flag);
    free(d);
  }
}

cv_delta *cv_delta_of(cv_router *r, const char *workflow, const char *flag,
                      int v2) {
  cv_delta *d;
  for (d = r->deltas; d; d = d->next) {
    if (d->v2 == v2 && strcmp(d->flag, flag) == 0 &&
        strcmp(d->workflow, workflow) == 0) {
      return d;
    }
  }
  if (!(d = calloc(1, sizeof *d)) || !(d->workflow = strdup(workflow)) ||
      !(d->flag = strdup(flag))) {
    if (d) {
      free(d->workflow);
      free(d);
    }
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return NULL;
  }
  d->v2 = v2;
  d->next = r->deltas;
  r->deltas = d;
  return d;
}

void cv_count_event(cv_delta *d, sy_event_type type, int incidents, int open) {
  /* An instance waiting in an incident is not in flight; a retry puts it
   * back. */
  switch (type) {
    case SY_EVENT_COMPLETED:
      d->completed++;
      d->in_flight--;
      break;
    case SY_EVENT_INCIDENT:
      d->incidents++;
      d->open_incidents++;
      d->in_flight--;
      d->with_incidents += incidents == 0;
      break;
    case SY_EVENT_INCIDENT_RESOLVED:
      if (open > 0) {
        d->open_incidents--;
        d->in_flight++;
      }
      break;
    case SY_EVENT_CAUGHT: /* it goes on, at a handler step */
      d->caught++;
      break;
    case SY_EVENT_CANCELLED:
      d->cancelled++;
      d->in_flight--;
      break;
  }
}

cv_standing cv_standing_after(sy_event_type type, cv_standing s) {
  switch (type) {
    case SY_EVENT_COMPLETED:
      s.outcome = CV_ENDED_COMPLETED;
      break;
    case SY_EVENT_INCIDENT:
      s.incidents++;
      s.open_incidents++;
      break;
    case SY_EVENT_INCIDENT_RESOLVED:
      s.open_incidents -= s.open_incidents > 0;
      break;
    case SY_EVENT_CANCELLED:
      s.outcome = CV_ENDED_OTHER;
      break;
    case SY_EVENT_CAUGHT:
      break;
  }
  return s;
}

/* What one decision adds to its ramp step's tally (report.c counts a
 * decision the same way): in flight while open and not waiting in an
 * incident. */
static void add_standing(cv_ramp_delta *t, const cv_standing *s, int sign) {
  t->routed += sign;
  t->completed += sign * (s->outcome == CV_ENDED_COMPLETED);
  t->in_flight += sign * (s->outcome == CV_OPEN && s->open_incidents == 0);
  t->incidents += sign * s->incidents;
  t->with_incidents += sign * (s->incidents > 0);
}

int cv_count_standing(cv_router *r, cv_delta *d, int64_t ramp_id,
                      const cv_standing *before, const cv_standing *after) {
  cv_ramp_delta **at = &d->ramps, *t;
  while (*at && (*at)->ramp_id < ramp_id) {
    at = &(*at)->next;
  }
  if (!(t = *at) || t->ramp_id != ramp_id) {
    if (!(t = calloc(1, sizeof *t))) {
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1;
    }
    t->ramp_id = ramp_id;
    t->next = *at;
    *at = t;
  }
  if (before) {
    add_standing(t, before, -1);
  }
  add_standing(t, after, 1);
  return 0;
}

const int64_t cv_latency_le[CV_LATENCY_BUCKETS] = {
    5,    10,    25,    50,    100,    250,     500,      1000,      2500,
    5000, 10000, 30000, 60000, 300000, 3600000, 86400000, 604800000, INT64_MAX};

void cv_count_latency(cv_delta *d, int64_t branch_ms, int64_t steps_ms) {
  int64_t v[2] = {branch_ms, steps_ms};
  for (int k = 0; k < 2; k++) {
    int b = 0;
    while (v[k] > cv_latency_le[b]) {
      b++;
    }
    d->lat[k].n[b]++;
    d->lat[k].sum[b] += v[k];
  }
  d->timed = 1;
}

static int key_order(const void *a, const void *b) {
  const cv_delta *x = *(cv_delta *const *)a, *y = *(cv_delta *const *)b;
  int c = strcmp(x->workflow, y->workflow);
  if (!c) {
    c = strcmp(x->flag, y->flag);
  }
  return c ? c : x->v2 - y->v2;
}

/* The batch in key order: engines adding to the same rows side by side (on
 * a database server) lock them in one order, so none waits for another
 * that waits for it. */
static int sort_deltas(cv_router *r) {
  size_t n = 0, i = 0;
  cv_delta **v, *d;
  for (d = r->deltas; d; d = d->next) {
    n++;
  }
  if (n < 2) {
    return 0;
  }
  if (!(v = malloc(n * sizeof *v))) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return -1;
  }
  for (d = r->deltas; d; d = d->next) {
    v[i++] = d;
  }
  qsort(v, n, sizeof *v, key_order);
  for (i = 0; i + 1 < n; i++) {
    v[i]->next = v[i + 1];
  }
  v[n - 1]->next = NULL;
  r->deltas = v[0];
  free(v);
  return 0;
}

/* A batched key, the first three parameters of each upsert: workflow,
 * flag, version. */
static void bind_key(sy_stmt *s, const cv_delta *d) {
  sy_stmt_bind_text(s, 1, d->workflow);
  sy_stmt_bind_text(s, 2, d->flag);
  sy_stmt_bind_text(s, 3, d->v2 ? "v2" : "v1");
}

/* One key's latency buckets that changed, in key order as well. */
static int flush_latency(cv_router *r, const cv_delta *d) {
  static const char *const kind[2] = {"branch", "steps"};
  sy_stmt *s = cv_stmt(r, CVQ_LATENCY_ADD);
  if (!s) {
    return -1;
  }
  for (int k = 0; k < 2; k++) {
    for (int b = 0; b < CV_LATENCY_BUCKETS; b++) {
      if (!d->lat[k].n[b]) {
        continue;
      }
      bind_key(s, d);
      sy_stmt_bind_text(s, 4, kind[k]);
      sy_stmt_bind_int(s, 5, cv_latency_le[b]);
      sy_stmt_bind_int(s, 6, d->lat[k].n[b]);
      sy_stmt_bind_int(s, 7, d->lat[k].sum[b]);
      if (cv_step_done(r, s)) {
        return -1;
      }
    }
  }
  return 0;
}

/* One key's ramp tallies that changed, in ramp order. */
static int flush_ramps(cv_router *r, const cv_delta *d) {
  sy_stmt *s = cv_stmt(r, CVQ_RAMP_TALLY_ADD);
  if (!s) {
    return -1;
  }
  for (const cv_ramp_delta *t = d->ramps; t; t = t->next) {
    bind_key(s, d);
    sy_stmt_bind_int(s, 4, t->ramp_id);
    sy_stmt_bind_int(s, 5, t->routed);
    sy_stmt_bind_int(s, 6, t->completed);
    sy_stmt_bind_int(s, 7, t->in_flight);
    sy_stmt_bind_int(s, 8, t->incidents);
    sy_stmt_bind_int(s, 9, t->with_incidents);
    if (cv_step_done(r, s)) {
      return -1;
    }
  }
  return 0;
}

/* The batch is dropped whatever happens: on a failure the engine rolls
 * the transaction back, and the changes with it. */
int cv_flush_counters(cv_router *r) {
  sy_stmt *s;
  if (!r->deltas) {
    return 0;
  }
  if (sort_deltas(r) || !(s = cv_stmt(r, CVQ_COUNTERS_ADD))) {
    cv_discard_counters(r);
    return -1;
  }
  for (cv_delta *d = r->deltas; d; d = d->next) {
    bind_key(s, d);
    sy_stmt_bind_int(s, 4, d->routed);
    sy_stmt_bind_int(s, 5, d->in_flight);
    sy_stmt_bind_int(s, 6, d->completed);
    sy_stmt_bind_int(s, 7, d->cancelled);
    sy_stmt_bind_int(s, 8, d->with_incidents);
    sy_stmt_bind_int(s, 9, d->incidents);
    sy_stmt_bind_int(s, 10, d->open_incidents);
    sy_stmt_bind_int(s, 11, d->caught);
    sy_stmt_bind_int(s, 12, d->rerouted_in);
    sy_stmt_bind_int(s, 13, d->rerouted_out);
    if (cv_step_done(r, s) || (d->timed && flush_latency(r, d)) ||
        flush_ramps(r, d)) {
      cv_discard_counters(r);
      return -1;
    }
  }
  cv_discard_counters(r);
  return 0;
}
