/* Shadow runs: a share of the instances routed to v1 also run v2's first
 * step beside it, on a copy of their vars (sy_api.shadow), and the two are
 * compared. Which ones: decisions recorded now for v1 by the rollout
 * (rollout, random, every_nth: never a kill switch, an opt-out, an
 * ineligible or forced instance), whose subject's bucket under a salt of
 * its own ("shadow:" and the hash group) is below the flag's shadow rate,
 * so a subject stays in or out of the shadow as the rate rises; an
 * instance without a subject draws. The budget caps runs per hour across
 * every engine sharing the database (cv_shadow_hours); what it skipped is
 * counted there, and so are the shadows an engine had no room for (its
 * setting shadow.max_in_flight). Each run is a row of cv_shadow_runs written
 * with the decision (in flight on this engine) and ended by its report. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

/* What a run's report needs to find its row: the decision is gone by
 * then (the instance may have ended). */
typedef struct cv_shadow_ud {
  int64_t started_at, instance_id;
  char flag[];
} cv_shadow_ud;

static const char *outcome_of(const sy_shadow_report *rep,
                              const char **detail) {
  const sy_shadow_side *p = &rep->primary, *c = &rep->candidate;
  *detail = NULL;
  if (p->status == SY_SHADOW_ABANDONED || c->status == SY_SHADOW_ABANDONED) {
    *detail = p->status == SY_SHADOW_ABANDONED ? p->error : c->error;
    return "lost";
  }
  if (p->status != SY_SHADOW_DONE) {
    *detail = p->error;
    return "primary_error";
  }
  if (c->status != SY_SHADOW_DONE) {
    *detail = c->error;
    return c->status == SY_SHADOW_TIMEOUT ? "candidate_timeout"
                                          : "candidate_error";
  }
  *detail = rep->detail;
  switch (rep->verdict) {
    case SY_SHADOW_SAME:
      return "match";
    case SY_SHADOW_DIFFERENT:
      return "mismatch";
    default:
      return "compare_error";
  }
}

static void bind_ms(sy_stmt *s, int i, const sy_shadow_side *side) {
  if (side->status == SY_SHADOW_ABANDONED) {
    sy_stmt_bind_text(s, i, NULL);
  } else {
    sy_stmt_bind_int(s, i, side->ms);
  }
}

/* The report of a run: its row ends, in the engine's transaction. A
 * failure is logged, and the run stays open (it will count as lost). */
static void shadow_done(void *plugin, void *ud, const sy_shadow_report *rep) {
  cv_router *r = plugin;
  cv_shadow_ud *u = ud;
  const char *detail, *outcome = outcome_of(rep, &detail);
  sy_stmt *s;
  if (r->api->tx_begin(r->e) < 0 || !(s = cv_stmt(r, CVQ_SHADOW_END))) {
    r->api->log(r->e, "choose_version %s: shadow run of instance %lld: %s",
                u->flag, (long long)u->instance_id, "cannot record its end");
    free(u);
    return;
  }
  sy_stmt_bind_text(s, 1, u->flag);
  sy_stmt_bind_int(s, 2, u->started_at);
  sy_stmt_bind_int(s, 3, u->instance_id);
  sy_stmt_bind_int(s, 4, r->api->now_ms(r->e));
  sy_stmt_bind_text(s, 5, outcome);
  bind_ms(s, 6, &rep->primary);
  bind_ms(s, 7, &rep->candidate);
  sy_stmt_bind_text(s, 8, detail);
  if (cv_step_done(r, s)) {
    r->api->log(r->e, "choose_version %s: shadow run of instance %lld: %s",
                u->flag, (long long)u->instance_id, r->errmsg);
  }
  free(u);
}

/* Whether this decision is in the shadow's share (before the budget). */
static int in_share(cv_router *r, sy_call *c, const cv_flag *f,
                    const cv_request *req, const cv_decision *d) {
  char salt[300];
  int n;
  if (!f->shadow_ppm || d->version != CV_V1 || !d->recorded ||
      (strcmp(d->reason, "rollout") && strcmp(d->reason, "random") &&
       strcmp(d->reason, "every_nth"))) {
    return 0;
  }
  if (!req->key) {
    return r->api->random(c) % CV_RATE_MAX_PPM < f->shadow_ppm;
  }
  n = snprintf(salt, sizeof salt, "shadow:%s", f->group);
  return cv_bucket(salt, (size_t)n, req->key, req->key_len) < f->shadow_ppm;
}

/* Counts a shadow not run in the hour's row: by the budget, or the
 * engine being busy (refund: give back the run spent for it). 0 or -1. */
static int skip(cv_router *r, const cv_flag *f, int64_t now, int busy,
                int refund) {
  sy_stmt *s = cv_stmt(r, CVQ_SHADOW_SKIP);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  sy_stmt_bind_int(s, 2, now / 3600000);
  sy_stmt_bind_int(s, 3, !busy);
  sy_stmt_bind_int(s, 4, busy);
  sy_stmt_bind_int(s, 5, refund);
  return cv_step_done(r, s);
}

/* Spends one run of the hour's budget: 1, or 0 when it is spent (the
 * skip is counted), or -1. */
static int spend(cv_router *r, const cv_flag *f, int64_t now) {
  sy_stmt *s;
  if (!f->shadow_budget) {
    return 1;
  }
  if (!(s = cv_stmt(r, CVQ_SHADOW_SPEND))) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  sy_stmt_bind_int(s, 2, now / 3600000);
  sy_stmt_bind_int(s, 3, f->shadow_budget);
  if (cv_step_done(r, s)) {
    return -1;
  }
  if (sy_stmt_changes(s) > 0) {
    return 1;
  }
  return skip(r, f, now, 0, 0) ? -1 : 0;
}

int cv_shadow_maybe(cv_router *r, sy_call *c, const cv_node *n,
                    const cv_request *req, const cv_decision *d) {
  const sy_api *api = r->api;
  const cv_flag *f;
  cv_shadow_ud *u;
  size_t flen = strlen(n->flag) + 1;
  sy_stmt *s;
  int rc;
  if (!(f = cv_flag_get(r, n->flag, api->tx_begin(r->e)))) {
    return -1;
  }
  if (!in_share(r, c, f, req, d) || (rc = spend(r, f, req->now_ms)) == 0) {
    return 0;
  }
  if (rc < 0 || !(s = cv_stmt(r, CVQ_SHADOW_START))) {
    return -1;
  }
  if (!(u = malloc(sizeof *u + flen))) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return -1;
  }
  u->started_at = req->now_ms;
  u->instance_id = api->instance_id(c);
  memcpy(u->flag, n->flag, flen);
  if ((rc = api->shadow(c, n->v2, n->shadow_timeout, "shadow.compare",
                        shadow_done, u))) {
    free(u);
    if (rc == SY_EBUSY) { /* counted; the decision stands */
      return skip(r, f, req->now_ms, 1, f->shadow_budget != 0);
    }
    snprintf(r->errmsg, sizeof r->errmsg, "the engine refused the shadow run");
    return -1;
  }
  /* From here on shadow_done frees u, whatever happens to the call. */
  sy_stmt_bind_text(s, 1, n->flag);
  sy_stmt_bind_int(s, 2, req->now_ms);
  sy_stmt_bind_int(s, 3, u->instance_id);
  sy_stmt_bind_text(s, 4, api->workflow(c));
  if (req->key) {
    sy_stmt_bind_textn(s, 5, req->key, req->key_len);
  } else {
    sy_stmt_bind_text(s, 5, NULL);
  }
  sy_stmt_bind_text(s, 6, api->engine_id(r->e));
  return cv_step_done(r, s);
}
