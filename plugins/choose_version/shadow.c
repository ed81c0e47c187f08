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

/* Whether a decision may be shadowed at all: recorded now, for v1, by
 * the rollout. */
static int shadowable(const cv_decision *d) {
  return d->version == CV_V1 && d->recorded &&
         (strcmp(d->reason, "rollout") == 0 ||
          strcmp(d->reason, "random") == 0 ||
          strcmp(d->reason, "every_nth") == 0);
}

/* Whether a shadowable decision is in the flag's shadow share (before the
 * budget). */
static int in_share(cv_router *r, sy_call *c, const cv_flag *f,
                    const cv_request *req) {
  char salt[300];
  int n;
  if (!f->shadow_ppm) {
    return 0;
  }
  if (!req->key) {
    return r->api->random(c) % CV_RATE_MAX_PPM < f->shadow_ppm;
  }
  n = snprintf(salt, sizeof salt, "shadow:%s", f->group);
  return cv_bucket(salt, (size_t)n, req->key, req->key_len) < f->shadow_ppm;
}

/* Shadows skipped in this transaction, per flag and hour: written at
 * its end into this engine's own rows, so that counting them never waits
 * for another engine. */
typedef struct cv_shadow_skip {
  struct cv_shadow_skip *next;
  int64_t hour, skipped, busy;
  char flag[];
} cv_shadow_skip;

/* An hour whose budget this engine found spent (at that budget): later
 * decisions of the hour skip without touching the hour's row, which the
 * engines spending share. */
typedef struct cv_shadow_spent {
  struct cv_shadow_spent *next;
  int64_t hour, budget;
  char flag[];
} cv_shadow_spent;

static int skip(cv_router *r, const cv_flag *f, int64_t hour, int busy) {
  cv_shadow_skip *k;
  size_t len = strlen(f->name) + 1;
  for (k = r->shadow_skips; k; k = k->next) {
    if (k->hour == hour && strcmp(k->flag, f->name) == 0) {
      break;
    }
  }
  if (!k) {
    if (!(k = calloc(1, sizeof *k + len))) {
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1;
    }
    k->hour = hour;
    memcpy(k->flag, f->name, len);
    k->next = r->shadow_skips;
    r->shadow_skips = k;
  }
  k->skipped += !busy;
  k->busy += busy;
  return 0;
}

static cv_shadow_spent *spent_of(cv_router *r, const char *flag) {
  cv_shadow_spent *p;
  for (p = r->shadow_spent; p && strcmp(p->flag, flag) != 0; p = p->next) {
  }
  return p;
}

/* Spends one run of the hour's budget: 1, or 0 when it is spent (the
 * skip is counted), or -1. */
static int spend(cv_router *r, const cv_flag *f, int64_t hour) {
  cv_shadow_spent *p;
  size_t len;
  sy_stmt *s;
  if (!f->shadow_budget) {
    return 1;
  }
  if ((p = spent_of(r, f->name)) && p->hour == hour &&
      p->budget == f->shadow_budget) {
    return skip(r, f, hour, 0) ? -1 : 0;
  }
  if (!(s = cv_stmt(r, CVQ_SHADOW_SPEND))) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  sy_stmt_bind_int(s, 2, hour);
  sy_stmt_bind_int(s, 3, f->shadow_budget);
  if (cv_step_done(r, s)) {
    return -1;
  }
  if (sy_stmt_changes(s) > 0) {
    return 1;
  }
  len = strlen(f->name) + 1;
  if (!p && (p = calloc(1, sizeof *p + len))) {
    memcpy(p->flag, f->name, len);
    p->next = r->shadow_spent;
    r->shadow_spent = p;
  }
  if (p) { /* without it, the next decision asks the row again */
    p->hour = hour;
    p->budget = f->shadow_budget;
  }
  return skip(r, f, hour, 0) ? -1 : 0;
}

/* Gives back the run spent for a shadow that did not start. */
static int refund(cv_router *r, const cv_flag *f, int64_t hour) {
  sy_stmt *s = cv_stmt(r, CVQ_SHADOW_REFUND);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  sy_stmt_bind_int(s, 2, hour);
  return cv_step_done(r, s);
}

int cv_shadow_flush(cv_router *r) {
  sy_stmt *s;
  int rc = 0;
  if (!r->shadow_skips) {
    return 0;
  }
  if (!(s = cv_stmt(r, CVQ_SHADOW_SKIPS_ADD))) {
    cv_shadow_discard(r);
    return -1;
  }
  for (cv_shadow_skip *k = r->shadow_skips; k && !rc; k = k->next) {
    sy_stmt_bind_text(s, 1, k->flag);
    sy_stmt_bind_int(s, 2, k->hour);
    sy_stmt_bind_text(s, 3, r->api->engine_id(r->e));
    sy_stmt_bind_int(s, 4, k->skipped);
    sy_stmt_bind_int(s, 5, k->busy);
    rc = cv_step_done(r, s);
  }
  cv_shadow_discard(r);
  return rc;
}

void cv_shadow_discard(cv_router *r) {
  while (r->shadow_skips) {
    cv_shadow_skip *k = r->shadow_skips;
    r->shadow_skips = k->next;
    free(k);
  }
}

void cv_shadow_free(cv_router *r) {
  cv_shadow_discard(r);
  while (r->shadow_spent) {
    cv_shadow_spent *p = r->shadow_spent;
    r->shadow_spent = p->next;
    free(p);
  }
}

int cv_shadow_maybe(cv_router *r, sy_call *c, const cv_node *n,
                    const cv_request *req, const cv_decision *d) {
  const sy_api *api = r->api;
  const cv_flag *f;
  cv_shadow_ud *u;
  size_t flen = strlen(n->flag) + 1;
  sy_stmt *s;
  int rc;
  if (!shadowable(d)) {
    return 0;
  }
  if (!(f = cv_flag_get(r, n->flag, api->tx_begin(r->e)))) {
    return -1;
  }
  if (!in_share(r, c, f, req) ||
      (rc = spend(r, f, req->now_ms / 3600000)) == 0) {
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
      return (f->shadow_budget && refund(r, f, req->now_ms / 3600000)) ||
                     skip(r, f, req->now_ms / 3600000, 1)
                 ? -1
                 : 0;
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
