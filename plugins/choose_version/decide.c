/* Decisions: the routing choice for one instance (the cached flag, the
 * subject's override, the every_nth counter, then cv_precedence), and its
 * record in cv_decisions with the counters it moves. Everything here runs
 * on the engine's connection inside the engine's transaction (never a
 * BEGIN or COMMIT of its own), so a decision, its counters and the
 * instance's move into its branch commit together, or not at all. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

static int get_override(cv_router *r, const cv_flag *f, const cv_request *req,
                        cv_override *ov) {
  sy_stmt *s;
  int rc;
  *ov = CV_OVERRIDE_NONE;
  /* Most flags have no overrides: skip the lookup then. */
  if (!f->overrides || !req->key) {
    return 0;
  }
  if (!(s = cv_stmt(r, CVQ_OVERRIDE))) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  sy_stmt_bind_textn(s, 2, req->key, req->key_len);
  rc = sy_stmt_step(s);
  if (rc == SY_ROW) {
    *ov = strcmp(sy_stmt_column_text(s, 0), "allow") == 0 ? CV_OVERRIDE_ALLOW
                                                          : CV_OVERRIDE_OPT_OUT;
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

static int next_nth(cv_router *r, const cv_flag *f, int64_t *nth) {
  sy_stmt *s = cv_stmt(r, CVQ_NTH);
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  if (sy_stmt_step(s) != SY_ROW) {
    return cv_db_fail(r, s);
  }
  *nth = sy_stmt_column_int(s, 0);
  /* Run the RETURNING statement to its end, so the update completes. */
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* The decision recorded for the instance, if any (*found). */
static int recorded(cv_router *r, int64_t instance_id, const char *flag,
                    cv_decision *out, int *found) {
  sy_stmt *s = cv_stmt(r, CVQ_GET_DECISION);
  int rc;
  *found = 0;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, flag);
  rc = sy_stmt_step(s);
  if (rc == SY_ROW) {
    static const char *const reasons[] = {
        "no_flag",      "retired", "kill_switch", "opt_out",
        "not_eligible", "allow",   "rollout",     "random",
        "every_nth",    "forced",  "missing_key", "rerouted"};
    const char *reason = sy_stmt_column_text(s, 1);
    *found = 1;
    out->version = strcmp(sy_stmt_column_text(s, 0), "v2") == 0 ? CV_V2 : CV_V1;
    /* Point at a static string: the statement's text dies at reset. */
    out->reason = "recorded";
    for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++) {
      if (strcmp(reason, reasons[i]) == 0) {
        out->reason = reasons[i];
      }
    }
    out->bucket = sy_stmt_column_null(s, 2)
                      ? UINT32_MAX
                      : (uint32_t)sy_stmt_column_int(s, 2);
    out->rate_ppm = (uint32_t)sy_stmt_column_int(s, 3);
    out->ramp_id = sy_stmt_column_int(s, 4);
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* Whether a fresh instance's memo holds a decision for flag: it holds
 * every decision such an instance has. */
static int in_memo(const cv_memo *m, const char *flag) {
  for (; m; m = m->next) {
    if (strcmp(m->flag, flag) == 0) {
      return 1;
    }
  }
  return 0;
}

void cv_memo_free(cv_memo *m) {
  while (m) {
    cv_memo *next = m->next;
    free(m);
    m = next;
  }
}

/* Adds a decision just recorded to a fresh instance's memo. */
static int remember(cv_router *r, void **memo, const char *workflow,
                    const cv_request *req, int v2, int64_t ramp_id) {
  size_t flen = strlen(req->flag) + 1, wlen = strlen(workflow) + 1;
  cv_memo *m = malloc(sizeof *m + flen + wlen);
  if (!m) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return -1;
  }
  memcpy(m->flag, req->flag, flen);
  m->workflow = m->flag + flen;
  memcpy(m->workflow, workflow, wlen);
  m->v2 = v2;
  m->decided_at = req->now_ms;
  m->base_run_ms = req->run_ms;
  m->ramp_id = ramp_id;
  m->next = *memo;
  *memo = m;
  return 0;
}

/* Writes decision d; 1 when the instance had one already (nothing is
 * written or counted then). A fresh instance's decisions are all in its
 * memo: one found there was decided before, and otherwise its row is
 * written whatever is there (CVQ_PUT_DECISION_FRESH), with no wait for
 * the server's answer. Other instances learn from the insert's changes
 * whether a decision was there. */
static int record(cv_router *r, int64_t instance_id, const char *workflow,
                  const char *step, const cv_request *req, void **memo,
                  const cv_decision *d) {
  sy_stmt *s = cv_stmt(r, memo ? CVQ_PUT_DECISION_FRESH : CVQ_PUT_DECISION);
  const char *v = d->version == CV_V2 ? "v2" : "v1";
  cv_delta *c;
  if (!s) {
    return -1;
  }
  if (memo && in_memo(*memo, req->flag)) {
    return 1;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, req->flag);
  sy_stmt_bind_text(s, 3, workflow);
  sy_stmt_bind_text(s, 4, step);
  if (req->key) {
    sy_stmt_bind_textn(s, 5, req->key, req->key_len);
  } else {
    sy_stmt_bind_text(s, 5, NULL);
  }
  sy_stmt_bind_text(s, 6, v);
  sy_stmt_bind_text(s, 7, d->reason);
  if (d->bucket != UINT32_MAX) {
    sy_stmt_bind_int(s, 8, d->bucket);
  } else {
    sy_stmt_bind_text(s, 8, NULL);
  }
  sy_stmt_bind_int(s, 9, d->rate_ppm);
  sy_stmt_bind_int(s, 10, d->ramp_id);
  sy_stmt_bind_int(s, 11, req->now_ms);
  sy_stmt_bind_int(s, 12, req->run_ms);
  sy_stmt_bind_int(s, 13, req->reruns);
  if (cv_step_done(r, s)) {
    return -1;
  }
  if (!memo && sy_stmt_changes(s) == 0) {
    return 1; /* decided before: nothing counted */
  }
  if (memo && remember(r, memo, workflow, req, v[1] == '2', d->ramp_id)) {
    return -1;
  }
  if (!(c = cv_delta_of(r, workflow, req->flag, v[1] == '2'))) {
    return -1;
  }
  c->routed++;
  c->in_flight++;
  return cv_count_standing(r, c, d->ramp_id, NULL,
                           &(cv_standing){CV_OPEN, 0, 0});
}

int cv_route(cv_router *r, int64_t tx, const cv_request *req,
             cv_decision *out) {
  const cv_flag *f = cv_flag_get(r, req->flag, tx);
  cv_override ov;
  int64_t nth = 0;
  if (!f || get_override(r, f, req, &ov)) {
    return -1;
  }
  if (f->exists && !f->retired && !f->killed && !req->missing_key &&
      req->strategy == CV_STRATEGY_EVERY_NTH && ov == CV_OVERRIDE_NONE &&
      req->eligible && next_nth(r, f, &nth)) {
    return -1;
  }
  cv_precedence(f, ov, req, req->random, nth, out);
  return 0;
}

int cv_decide(cv_router *r, int64_t instance_id, const char *workflow,
              const char *step, const cv_request *req, const char *forced,
              void **memo, cv_decision *out) {
  int64_t tx = r->api->tx_begin(r->e);
  int found, rc;
  if (tx < 0) {
    snprintf(r->errmsg, sizeof r->errmsg, "cannot open a transaction");
    return -1;
  }
  out->recorded = 0;
  /* An instance never changes branch: a re-run reuses its decision. The
   * every_nth counter must not move for a re-run, so look first there;
   * otherwise deciding is free of side effects and the insert finds out. */
  if (req->strategy == CV_STRATEGY_EVERY_NTH && !forced &&
      (!memo || in_memo(*memo, req->flag))) {
    if (recorded(r, instance_id, req->flag, out, &found)) {
      return -1;
    }
    if (found) {
      return 0;
    }
  }
  if (forced) {
    const cv_flag *f = cv_flag_get(r, req->flag, tx);
    if (!f) {
      return -1;
    }
    memset(out, 0, sizeof *out);
    out->version = strcmp(forced, "v2") == 0 ? CV_V2 : CV_V1;
    out->reason = "forced";
    out->bucket = UINT32_MAX;
    out->rate_ppm = f->rate_ppm;
    out->ramp_id = f->ramp_id;
  } else if (cv_route(r, tx, req, out)) {
    return -1;
  }
  rc = record(r, instance_id, workflow, step, req, memo, out);
  out->recorded = rc == 0;
  if (rc == 1) {
    return recorded(r, instance_id, req->flag, out, &found);
  }
  return rc;
}
