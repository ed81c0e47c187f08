/* The event hook: what an instance's completion, incident, retry,
 * cancellation or caught error does to the decisions it has (their outcome,
 * times, retries and incidents in cv_decisions, which reports read) and to the
 * per-version counters. It runs inside the engine's transaction that
 * records the event, so the decisions and counters never disagree with
 * the instance rows. */
#include <stdio.h>

#include "cv.h"

/* Binds an event to its statement u (sql.c, EV_*): ?1 the instance, then
 * what the statement uses of the event's time and totals. Returns the
 * next parameter's number, where a decision's key goes. */
static int bind_event(sy_stmt *u, const sy_event *ev) {
  int i = 1;
  sy_stmt_bind_int(u, i++, ev->instance_id);
  switch (ev->type) {
    case SY_EVENT_COMPLETED:
      sy_stmt_bind_int(u, i++, ev->time_ms);
      sy_stmt_bind_int(u, i++, ev->run_ms);
      sy_stmt_bind_int(u, i++, ev->reruns);
      break;
    case SY_EVENT_INCIDENT:
      sy_stmt_bind_int(u, i++, ev->reruns);
      break;
    case SY_EVENT_CANCELLED:
      sy_stmt_bind_int(u, i++, ev->time_ms);
      break;
    default: /* RESOLVED, CAUGHT: the instance alone */
      break;
  }
  return i;
}

/* A fresh instance's event: its memo holds every decision it has, none
 * with an incident yet (an incident, like a caught error, is the last event of
 * a stay in memory), so each is updated by its key, with no lookup. */
static int fresh_event(cv_router *r, const sy_event *ev, int q) {
  static const cv_standing fresh = {CV_OPEN, 0, 0};
  cv_standing now;
  sy_stmt *u = cv_stmt(r, q);
  int i;
  if (!u) {
    return -1;
  }
  for (const cv_memo *m = ev->memo; m; m = m->next) {
    cv_delta *d = cv_delta_of(r, m->workflow, m->flag, m->v2);
    if (!d) {
      return -1;
    }
    cv_count_event(d, ev->type, 0, 0);
    now = cv_standing_after(ev->type, fresh);
    if (cv_count_standing(r, d, m->ramp_id, &fresh, &now)) {
      return -1;
    }
    if (ev->type == SY_EVENT_COMPLETED) {
      cv_count_latency(d, ev->time_ms - m->decided_at,
                       ev->run_ms - m->base_run_ms);
    }
    i = bind_event(u, ev);
    sy_stmt_bind_text(u, i, m->flag);
    sy_stmt_bind_int(u, i + 1, m->decided_at);
    if (cv_step_done(r, u)) {
      return -1;
    }
    /* checked with the write's answer: no wait for it here */
    if (sy_stmt_expect_changes(u, 1)) {
      snprintf(r->errmsg, sizeof r->errmsg,
               "the decision of instance %lld for %s is not where it was "
               "recorded",
               (long long)ev->instance_id, m->flag);
      return -1;
    }
  }
  return 0;
}

/* A fresh instance's decisions are in its memo; others are read first
 * (instances that never met a choose_version node cost one indexed read
 * that finds nothing). */
int cv_on_event(cv_router *r, const sy_event *ev) {
  sy_stmt *s, *u;
  int q, by_key, rc, n = 0;
  /* The statement by instance, and by key (-1: no fresh instance has the
   * event, which comes from a command). */
  switch (ev->type) {
    case SY_EVENT_COMPLETED:
      q = CVQ_EV_COMPLETED;
      by_key = CVQ_EV_COMPLETED_KEY;
      break;
    case SY_EVENT_INCIDENT:
      q = CVQ_EV_INCIDENT;
      by_key = CVQ_EV_INCIDENT_KEY;
      break;
    case SY_EVENT_INCIDENT_RESOLVED:
      q = CVQ_EV_RESOLVED;
      by_key = -1;
      break;
    case SY_EVENT_CANCELLED:
      q = CVQ_EV_CANCELLED;
      by_key = CVQ_EV_CANCELLED_KEY;
      break;
    case SY_EVENT_CAUGHT:
      q = CVQ_EV_CAUGHT;
      by_key = CVQ_EV_CAUGHT_KEY;
      break;
    default: /* an event this plugin does not count */
      return 0;
  }
  if (ev->fresh && by_key >= 0) {
    return fresh_event(r, ev, by_key);
  }
  if (!(s = cv_stmt(r, CVQ_DECISIONS_OF))) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, ev->instance_id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *version = sy_stmt_column_text(s, 2);
    int incidents = (int)sy_stmt_column_int(s, 3);
    int open = (int)sy_stmt_column_int(s, 4);
    cv_delta *d = cv_delta_of(r, sy_stmt_column_text(s, 1),
                              sy_stmt_column_text(s, 0), version[1] == '2');
    if (!d) {
      sy_stmt_reset(s);
      return -1;
    }
    n++;
    cv_count_event(d, ev->type, incidents, open);
    /* A decision rerouted in is outside the ramp steps' counts. */
    if (sy_stmt_column_int(s, 8) == 0) {
      cv_standing was = {CV_OPEN, incidents, open};
      cv_standing now = cv_standing_after(ev->type, was);
      if (cv_count_standing(r, d, sy_stmt_column_int(s, 7), &was, &now)) {
        sy_stmt_reset(s);
        return -1;
      }
    }
    if (ev->type == SY_EVENT_COMPLETED) {
      cv_count_latency(d, ev->time_ms - sy_stmt_column_int(s, 5),
                       ev->run_ms - sy_stmt_column_int(s, 6));
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  /* Instances never routed by a choose_version node: nothing to do. */
  if (n == 0) {
    return 0;
  }
  if (!(u = cv_stmt(r, q))) {
    return -1;
  }
  bind_event(u, ev);
  return cv_step_done(r, u);
}
