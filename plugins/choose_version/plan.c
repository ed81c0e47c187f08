/* Rollout plans: `switchyard rollout plan FLAG --steps 1%,5%,25%,100% ...`
 * stores a plan with the flag; running engines evaluate it every few
 * seconds and move the rate along by themselves, or roll back.
 *
 * An evaluation compares V2 with V1 over the instances decided since the
 * plan started (never V2 now against V1 earlier), by instances with an
 * incident, with the always-valid test of stats.h (cv_msprt_p), whose
 * smallest p-value so far is kept with the plan: looking every few seconds
 * does not inflate false rollbacks. Outcomes:
 * - fail: V2 worse than V1 by more than --max-increase points, p <= alpha:
 *   the kill switch, and the plan ends rolled back;
 * - pass: the step was held --hold, both versions have --min-instances
 *   decided at this step's rate (V2 alone at 100%), nothing failing: the
 *   next step's rate (the plan is done after the last);
 * - inconclusive: neither; past --max-wait in one step the plan pauses,
 *   and never advances by itself.
 * A step given as --gate is entered only after `rollout plan FLAG
 * approve`: until then a passing evaluation says so (outcome gate).
 * Every evaluation is a row (cv_plan_evals) with its numbers; a change is
 * applied by an update conditional on the step it was evaluated at, so
 * engines sharing the database apply each step once; every change is an
 * audit entry with actor `plan` and a reason quoting the numbers. */
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"
#include "stats.h"

#define CMD "rollout plan"
#define MAX_STEPS 32
#define usage_error(...) cv_usage_error(CMD, __VA_ARGS__)
#define db_error(r, what) cv_cmd_db_error(r, CMD, what)

/* How often a running engine evaluates the active plans (the setting
 * choose_version.plan_every_ms changes it, for tests). */
#define DEFAULT_EVERY_MS 5000

typedef struct plan {
  char flag[160];
  char state[16]; /* running, paused, done, rolled_back, aborted */
  uint32_t steps[MAX_STEPS];
  int nsteps, step;
  int64_t hold_ms, min_instances, max_wait_ms;
  double max_increase, alpha, p_min; /* max_increase in points */
  int64_t started_at, step_started_at;
  int gated[MAX_STEPS]; /* entering step i waits for `approve` */
  int approved;         /* the gated step approved to enter, or -1 */
  char outcome_var[64]; /* the business outcome guard's var, or "" */
  double p_min_outcome;
  double latency_increase; /* the latency guard's limit in %, or 0 */
  double p_min_latency;
  int reroute; /* --on-rollback reroute */
} plan;

struct cv_planner {
  uv_timer_t timer;
  cv_router *r;
};

/* ---------------------------------------------------------------------
 * The stored plan */

static void steps_text(const plan *p, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < p->nsteps && used < len; i++) {
    char rate[CV_RATE_FORMAT_MAX];
    cv_rate_format(p->steps[i], rate, sizeof rate);
    used +=
        (size_t)snprintf(buf + used, len - used, "%s%s", i ? "," : "", rate);
  }
}

/* "1%,5%,25%" (or ppm): ascending, above 0, at most 100%. */
static int parse_steps(const char *s, plan *p, char *err, size_t errlen) {
  char buf[1024], *save = NULL, *tok;
  snprintf(buf, sizeof buf, "%s", s);
  p->nsteps = 0;
  for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    uint32_t ppm;
    char e[200];
    if (p->nsteps == MAX_STEPS) {
      snprintf(err, errlen, "--steps: at most %d steps", MAX_STEPS);
      return -1;
    }
    if (cv_rate_parse(tok, &ppm, e, sizeof e)) {
      snprintf(err, errlen, "--steps: %s", e);
      return -1;
    }
    if (ppm == 0 || (p->nsteps && ppm <= p->steps[p->nsteps - 1])) {
      snprintf(err, errlen,
               "--steps: each step must be above 0%% and above the one "
               "before, got '%s'",
               tok);
      return -1;
    }
    p->steps[p->nsteps++] = ppm;
  }
  if (!p->nsteps) {
    snprintf(err, errlen, "--steps: expected rates such as 1%%,5%%,25%%,100%%");
    return -1;
  }
  return 0;
}

static int steps_from_text(const char *s, plan *p) {
  char err[256];
  return parse_steps(s, p, err, sizeof err);
}

/* The gated steps as stored: their indexes, comma-separated. */
static void gates_text(const plan *p, char *buf, size_t len) {
  size_t used = 0;
  buf[0] = '\0';
  for (int i = 0; i < p->nsteps && used < len; i++) {
    if (p->gated[i]) {
      used +=
          (size_t)snprintf(buf + used, len - used, "%s%d", used ? "," : "", i);
    }
  }
}

static void gates_from_text(const char *s, plan *p) {
  memset(p->gated, 0, sizeof p->gated);
  for (const char *c = s; c && *c;) {
    int i = atoi(c);
    if (i >= 0 && i < MAX_STEPS) {
      p->gated[i] = 1;
    }
    c = strchr(c, ',');
    c = c ? c + 1 : NULL;
  }
}

/* The plan of a flag: 1 found, 0 none, -1 database error. */
static int read_plan(cv_router *r, const char *flag, plan *p) {
  sy_stmt *s = cv_stmt(r, CVQ_PLAN_GET);
  int rc;
  memset(p, 0, sizeof *p);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    snprintf(p->flag, sizeof p->flag, "%s", flag);
    snprintf(p->state, sizeof p->state, "%s", sy_stmt_column_text(s, 0));
    steps_from_text(sy_stmt_column_text(s, 1), p);
    p->step = (int)sy_stmt_column_int(s, 2);
    p->hold_ms = sy_stmt_column_int(s, 3);
    p->min_instances = sy_stmt_column_int(s, 4);
    p->max_increase = sy_stmt_column_double(s, 5);
    p->alpha = sy_stmt_column_double(s, 6);
    p->max_wait_ms = sy_stmt_column_int(s, 7);
    p->started_at = sy_stmt_column_int(s, 8);
    p->step_started_at = sy_stmt_column_int(s, 9);
    p->p_min = sy_stmt_column_double(s, 10);
    gates_from_text(sy_stmt_column_text(s, 11), p);
    p->approved = (int)sy_stmt_column_int(s, 12);
    snprintf(p->outcome_var, sizeof p->outcome_var, "%s",
             sy_stmt_column_null(s, 13) ? "" : sy_stmt_column_text(s, 13));
    p->p_min_outcome = sy_stmt_column_double(s, 14);
    p->latency_increase = sy_stmt_column_double(s, 15);
    p->p_min_latency = sy_stmt_column_double(s, 16);
    p->reroute = strcmp(sy_stmt_column_text(s, 17), "reroute") == 0;
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return rc == SY_ROW;
}

/* V1's and V2's instances decided since the plan started, and how many of
 * each had an incident. */
typedef struct tally {
  int64_t n1, x1, n2, x2;
} tally;

static int tally_of(cv_router *r, int q, const plan *p, int64_t since,
                    tally *t) {
  sy_stmt *s = cv_stmt(r, q);
  int rc;
  memset(t, 0, sizeof *t);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, p->flag);
  sy_stmt_bind_int(s, 2, since);
  if (q == CVQ_PLAN_OUTCOME_TALLY) {
    sy_stmt_bind_text(s, 3, p->outcome_var);
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    int v2 = strcmp(sy_stmt_column_text(s, 0), "v2") == 0;
    *(v2 ? &t->n2 : &t->n1) = sy_stmt_column_int(s, 1);
    *(v2 ? &t->x2 : &t->x1) = sy_stmt_column_int(s, 2);
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

static int read_tally(cv_router *r, const plan *p, int64_t since, tally *t) {
  return tally_of(r, CVQ_PLAN_TALLY, p, since, t);
}

/* The latency guard's numbers since the plan started: completed
 * instances per version, their branch latency's p95 (-1: none yet), V1's
 * slower than its p95 (about 5%), the limit (V1's p95 times 1 + the
 * plan's increase, rounded up, and at least 1 ms above it), and V2's
 * slower than the limit. If V2's latencies are V1's scaled by at most the
 * increase, V2's share over the limit is at most V1's share over its p95;
 * the guard tests by how much more it is, with the mSPRT of the incident
 * guard, whose variance for V1's share also stands for the noise of the
 * p95 it is measured from. */
typedef struct latency {
  int64_t n1, n2, p95_1, p95_2, over1, limit, over;
} latency;

static int latency_count(cv_router *r, int q, const plan *p,
                         const char *version, int64_t arg, int64_t *out) {
  sy_stmt *s = cv_stmt(r, q);
  int rc;
  *out = q == CVQ_PLAN_QUANTILE ? -1 : 0;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, p->flag);
  sy_stmt_bind_int(s, 2, p->started_at);
  sy_stmt_bind_text(s, 3, version);
  if (q != CVQ_PLAN_COMPLETED) {
    sy_stmt_bind_int(s, 4, arg);
  }
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    *out = sy_stmt_column_int(s, 0);
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* The p95 of n sorted values is the one at offset ceil(0.95 n) - 1. */
static int64_t p95_offset(int64_t n) {
  return (95 * n + 99) / 100 - 1;
}

static int read_latency(cv_router *r, const plan *p, latency *l) {
  memset(l, 0, sizeof *l);
  l->p95_1 = l->p95_2 = l->limit = -1;
  if (latency_count(r, CVQ_PLAN_COMPLETED, p, "v1", 0, &l->n1) ||
      latency_count(r, CVQ_PLAN_COMPLETED, p, "v2", 0, &l->n2) ||
      (l->n1 && latency_count(r, CVQ_PLAN_QUANTILE, p, "v1", p95_offset(l->n1),
                              &l->p95_1)) ||
      (l->n2 && latency_count(r, CVQ_PLAN_QUANTILE, p, "v2", p95_offset(l->n2),
                              &l->p95_2))) {
    return -1;
  }
  if (l->p95_1 >= 0) {
    l->limit =
        (int64_t)ceil((double)l->p95_1 * (1.0 + p->latency_increase / 100.0));
    if (l->limit <= l->p95_1) {
      l->limit = l->p95_1 + 1;
    }
    if (latency_count(r, CVQ_PLAN_SLOWER, p, "v1", l->p95_1, &l->over1) ||
        latency_count(r, CVQ_PLAN_SLOWER, p, "v2", l->limit, &l->over)) {
      return -1;
    }
  }
  return 0;
}

/* The look's p-value of the latency guard: only once V1 has the plan's
 * minimum of completed instances, so that its p95 means something. */
static double latency_p(const plan *p, const latency *l) {
  double pv;
  if (l->n1 < p->min_instances || l->limit < 0) {
    return 1.0;
  }
  pv = cv_msprt_p(l->over1, l->n1, l->over, l->n2, 0.0, CV_MSPRT_TAU);
  return isnan(pv) ? 1.0 : pv;
}

/* A rate in %, as a reason quotes it: "3.1%". */
static double pct(int64_t x, int64_t n) {
  return n ? 100.0 * (double)x / (double)n : 0.0;
}

/* "V2 3.1% (25/812) vs V1 1.0% (16/1630), p=0.0004" */
static void numbers(const tally *t, double p, char *buf, size_t len) {
  snprintf(buf, len, "V2 %.1f%% (%lld/%lld) vs V1 %.1f%% (%lld/%lld), p=%.4g",
           pct(t->x2, t->n2), (long long)t->x2, (long long)t->n2,
           pct(t->x1, t->n1), (long long)t->x1, (long long)t->n1, p);
}

/* ---------------------------------------------------------------------
 * Changes, each with its audit entry */

/* A change the plan makes or a command on it, in the audit trail;
 * numbers: the evidence (JSON), for the plan's own. */
static int audit_with(cv_router *r, const char *flag, const char *what,
                      const char *old_value, const char *new_value,
                      uint32_t rate, int killed, const char *reason,
                      const char *actor, int64_t now, const char *numbers) {
  cv_change c = {.flag = flag,
                 .what = what,
                 .old_value = old_value,
                 .new_value = new_value,
                 .rate = rate,
                 .killed = killed,
                 .reason = reason,
                 .actor = actor,
                 .at = now,
                 .numbers = numbers};
  return cv_audit_add(r, &c);
}

static int audit(cv_router *r, const char *flag, const char *what,
                 const char *old_value, const char *new_value, uint32_t rate,
                 int killed, const char *reason, const char *actor,
                 int64_t now) {
  return audit_with(r, flag, what, old_value, new_value, rate, killed, reason,
                    actor, now, NULL);
}

/* Moves the plan from step `from` (state running) to `to` and state, if
 * nobody did already: 1 moved, 0 another engine did, -1 error. */
static int move_plan(cv_router *r, const plan *p, int to, const char *state,
                     int64_t now) {
  sy_stmt *s = cv_stmt(r, CVQ_PLAN_MOVE);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, p->flag);
  sy_stmt_bind_int(s, 2, p->step);
  sy_stmt_bind_int(s, 3, to);
  sy_stmt_bind_text(s, 4, state);
  sy_stmt_bind_int(s, 5, now);
  if (cv_step_done(r, s)) {
    return -1;
  }
  return sy_stmt_changes(s) == 1;
}

static int record_eval(cv_router *r, const plan *p, int64_t now, const tally *t,
                       double pv, double p_min, double p_outcome,
                       double p_latency, const char *outcome, int applied,
                       const char *note) {
  sy_stmt *s = cv_stmt(r, CVQ_PLAN_EVAL_ADD);
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, p->flag);
  sy_stmt_bind_int(s, 2, now);
  sy_stmt_bind_int(s, 3, p->step);
  sy_stmt_bind_int(s, 4, t->n1);
  sy_stmt_bind_int(s, 5, t->x1);
  sy_stmt_bind_int(s, 6, t->n2);
  sy_stmt_bind_int(s, 7, t->x2);
  sy_stmt_bind_double(s, 8, pv);
  sy_stmt_bind_double(s, 9, p_min);
  sy_stmt_bind_text(s, 10, outcome);
  sy_stmt_bind_int(s, 11, applied);
  sy_stmt_bind_text(s, 12, note);
  sy_stmt_bind_double(s, 13, p_outcome);
  if (p->latency_increase > 0) {
    sy_stmt_bind_double(s, 14, p_latency);
  } else {
    sy_stmt_bind_text(s, 14, NULL);
  }
  return cv_step_done(r, s);
}

/* ---------------------------------------------------------------------
 * Evaluation, in the engine's transaction */

/* The numbers behind an evaluation, as JSON for the audit entry of a change
 * it makes (and the notifications of it): malloc'd, NULL when out of
 * memory. o: the outcome guard's tally, NULL without one. */
static char *evidence(const plan *p, const tally *t, double p_min,
                      const tally *o, double p_min_o, const latency *l,
                      double p_min_l, double alpha) {
  char rate[CV_RATE_FORMAT_MAX];
  json_t *j;
  char *text;
  cv_rate_format(p->steps[p->step], rate, sizeof rate);
  j = json_pack("{s:i, s:s, s:{s:I, s:I}, s:{s:I, s:I}, s:f, s:f, s:f}", "step",
                p->step + 1, "rate", rate, "v1", "instances", (json_int_t)t->n1,
                "with_incidents", (json_int_t)t->x1, "v2", "instances",
                (json_int_t)t->n2, "with_incidents", (json_int_t)t->x2, "p",
                p_min, "alpha", alpha, "max_increase_points", p->max_increase);
  if (j && o) {
    json_object_set_new(
        j, "outcome",
        json_pack("{s:s, s:{s:I, s:I}, s:{s:I, s:I}, s:f}", "var",
                  p->outcome_var, "v1", "completed", (json_int_t)o->n1, "falsy",
                  (json_int_t)o->x1, "v2", "completed", (json_int_t)o->n2,
                  "falsy", (json_int_t)o->x2, "p", p_min_o));
  }
  if (j && l) {
    json_object_set_new(
        j, "latency",
        json_pack("{s:f, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f}",
                  "p95_increase_percent", p->latency_increase, "v1_completed",
                  (json_int_t)l->n1, "v1_p95_ms", (json_int_t)l->p95_1,
                  "v1_over_p95", (json_int_t)l->over1, "v2_completed",
                  (json_int_t)l->n2, "v2_p95_ms", (json_int_t)l->p95_2,
                  "limit_ms", (json_int_t)l->limit, "v2_over_limit",
                  (json_int_t)l->over, "p", p_min_l));
  }
  text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return text;
}

/* --on-rollback reroute: V2's instances waiting in incidents go on at the
 * node's V1 step (reroute.c does the bookkeeping, through the engine's
 * retry), in the transaction of the rollback; the reason says how many. */
static int reroute_v2(cv_router *r, const plan *p, char *reason, size_t len) {
  const char *values[] = {p->flag, "v2", "v1"};
  int64_t n = 0;
  size_t used = strlen(reason);
  if (r->api->retry_selected(r->e, r, values, &n)) {
    snprintf(r->errmsg, sizeof r->errmsg, "reroute: %s", r->api->errmsg(r->e));
    return -1;
  }
  snprintf(reason + used, len - used,
           "; %lld V2 instance%s waiting in incidents rerouted to V1",
           (long long)n, n == 1 ? "" : "s");
  return 0;
}

static int evaluate(cv_router *r, plan *p, int64_t now) {
  tally t, step, o = {0};
  latency l = {0};
  char nums[512], reason[768], oldr[CV_RATE_FORMAT_MAX],
      newr[CV_RATE_FORMAT_MAX];
  const char *outcome;
  double pv, p_min, po = 1.0, p_min_o = 1.0, pl = 1.0, p_min_l = 1.0;
  double alpha = p->alpha;
  int guards = 1 + !!p->outcome_var[0] + (p->latency_increase > 0);
  int moved = 0, enough, held;
  char *ev;
  sy_stmt *s;
  /* The test over the whole plan; the minimum of instances, at this
   * step's rate. */
  if (read_tally(r, p, p->started_at, &t) ||
      read_tally(r, p, p->step_started_at, &step)) {
    return -1;
  }
  pv =
      cv_msprt_p(t.x1, t.n1, t.x2, t.n2, p->max_increase / 100.0, CV_MSPRT_TAU);
  if (isnan(pv)) {
    pv = 1.0;
  }
  p_min = pv < p->p_min ? pv : p->p_min;
  numbers(&t, p_min, nums, sizeof nums);
  /* The business outcome, the same test on the share of completed
   * instances whose var is falsy, and the latency guard; with k guards
   * each gets alpha / k (Bonferroni), so a plan still rolls back equal
   * versions at most alpha of the time. */
  alpha = p->alpha / guards;
  if (p->outcome_var[0]) {
    size_t used = strlen(nums);
    if (tally_of(r, CVQ_PLAN_OUTCOME_TALLY, p, p->started_at, &o)) {
      return -1;
    }
    po = cv_msprt_p(o.x1, o.n1, o.x2, o.n2, p->max_increase / 100.0,
                    CV_MSPRT_TAU);
    po = isnan(po) ? 1.0 : po;
    p_min_o = po < p->p_min_outcome ? po : p->p_min_outcome;
    snprintf(nums + used, sizeof nums - used,
             "; %s falsy: V2 %.1f%% (%lld/%lld) vs V1 %.1f%% (%lld/%lld), "
             "p=%.4g",
             p->outcome_var, pct(o.x2, o.n2), (long long)o.x2, (long long)o.n2,
             pct(o.x1, o.n1), (long long)o.x1, (long long)o.n1, p_min_o);
  }
  if (p->latency_increase > 0) {
    size_t used = strlen(nums);
    if (read_latency(r, p, &l)) {
      return -1;
    }
    pl = latency_p(p, &l);
    p_min_l = pl < p->p_min_latency ? pl : p->p_min_latency;
    snprintf(nums + used, sizeof nums - used,
             "; p95 V2 %lldms vs V1 %lldms (limit %lldms), V2 over it "
             "%lld/%lld, p=%.4g",
             (long long)l.p95_2, (long long)l.p95_1, (long long)l.limit,
             (long long)l.over, (long long)l.n2, p_min_l);
  }
  /* (at 100% V1 gets nothing new: only V2's count can grow) */
  enough =
      step.n2 >= p->min_instances &&
      (step.n1 >= p->min_instances || p->steps[p->step] == CV_RATE_MAX_PPM);
  held = now - p->step_started_at >= p->hold_ms;
  ev = evidence(p, &t, p_min, p->outcome_var[0] ? &o : NULL, p_min_o,
                p->latency_increase > 0 ? &l : NULL, p_min_l, alpha);
  cv_rate_format(p->steps[p->step], oldr, sizeof oldr);
  if (p_min <= alpha || p_min_o <= alpha || p_min_l <= alpha) {
    outcome = "fail";
    if (p_min <= alpha || p_min_o <= alpha) {
      snprintf(reason, sizeof reason,
               "%s: %s worse by more than %g point%s, rolled back", nums,
               p_min <= alpha ? "incidents" : p->outcome_var, p->max_increase,
               p->max_increase == 1.0 ? "" : "s");
    } else {
      snprintf(reason, sizeof reason,
               "%s: p95 latency more than %g%% above V1's, rolled back", nums,
               p->latency_increase);
    }
    if ((moved = move_plan(r, p, p->step, "rolled_back", now)) == 1 &&
        (cv_flag_set(r, CVQ_FLAG_SET_KILLED, p->flag, 1, now) ||
         (p->reroute && reroute_v2(r, p, reason, sizeof reason)) ||
         audit_with(r, p->flag, "kill", "off", "on", p->steps[p->step], 1,
                    reason, "plan", now, ev))) {
      goto fail;
    }
  } else if (held && enough) {
    outcome = "pass";
    if (p->step + 1 < p->nsteps && p->gated[p->step + 1] &&
        p->approved != p->step + 1) {
      outcome = "gate";
      cv_rate_format(p->steps[p->step + 1], newr, sizeof newr);
      snprintf(reason, sizeof reason,
               "%s: held and no worse; %s waits for rollout plan %s approve",
               nums, newr, p->flag);
    } else if (p->step + 1 < p->nsteps) {
      cv_rate_format(p->steps[p->step + 1], newr, sizeof newr);
      snprintf(reason, sizeof reason, "%s: held and no worse, %s -> %s", nums,
               oldr, newr);
      if ((moved = move_plan(r, p, p->step + 1, "running", now)) == 1 &&
          (cv_flag_set(r, CVQ_FLAG_SET_RATE, p->flag, p->steps[p->step + 1],
                       now) ||
           audit_with(r, p->flag, "rate", oldr, newr, p->steps[p->step + 1], 0,
                      reason, "plan", now, ev))) {
        goto fail;
      }
    } else {
      snprintf(reason, sizeof reason, "%s: held at %s and no worse, done", nums,
               oldr);
      if ((moved = move_plan(r, p, p->step, "done", now)) == 1 &&
          audit_with(r, p->flag, "plan", "running", "done", p->steps[p->step],
                     0, reason, "plan", now, ev)) {
        goto fail;
      }
    }
  } else {
    outcome = "inconclusive";
    snprintf(reason, sizeof reason, "%s: %s", nums,
             !enough ? "fewer instances than --min-instances at this step"
                     : "holding the step");
    if (p->max_wait_ms > 0 && now - p->step_started_at > p->max_wait_ms) {
      snprintf(reason, sizeof reason,
               "%s: inconclusive past --max-wait, paused", nums);
      if ((moved = move_plan(r, p, p->step, "paused", now)) == 1 &&
          audit_with(r, p->flag, "plan", "running", "paused", p->steps[p->step],
                     0, reason, "plan", now, ev)) {
        goto fail;
      }
    }
  }
  if (moved < 0) {
    goto fail;
  }
  /* The smallest p-value so far stays with the plan, whatever happened. */
  if (!(s = cv_stmt(r, CVQ_PLAN_P_MIN))) {
    goto fail;
  }
  sy_stmt_bind_text(s, 1, p->flag);
  sy_stmt_bind_double(s, 2, p_min);
  sy_stmt_bind_double(s, 3, p_min_o);
  sy_stmt_bind_double(s, 4, p_min_l);
  if (cv_step_done(r, s) ||
      record_eval(r, p, now, &t, pv, p_min, po, pl, outcome, moved, reason)) {
    goto fail;
  }
  if (moved) {
    cv_flags_free(r); /* our own change: the cache must not keep the old */
  }
  free(ev);
  return 0;
fail:
  free(ev);
  return -1;
}

static void on_timer(uv_timer_t *t) {
  cv_planner *pl = t->data;
  cv_router *r = pl->r;
  sy_stmt *s;
  char flags[16][160];
  int n = 0, rc;
  int64_t now;
  /* A look first, in whatever transaction is open or none: most of the
   * time no plan runs, and then no write transaction is taken. */
  if (!(s = cv_stmt(r, CVQ_PLAN_ACTIVE))) {
    r->api->log(r->e, "choose_version: plans: %s", r->errmsg);
    return;
  }
  while (n < 16 && (rc = sy_stmt_step(s)) == SY_ROW) {
    snprintf(flags[n++], sizeof flags[0], "%s", sy_stmt_column_text(s, 0));
  }
  sy_stmt_reset(s);
  if (!n) {
    return;
  }
  if (r->api->tx_begin(r->e) < 0) {
    r->api->log(r->e, "choose_version: plans: %s", r->api->errmsg(r->e));
    return;
  }
  now = r->api->now_ms(r->e);
  for (int i = 0; i < n; i++) {
    plan p;
    if (read_plan(r, flags[i], &p) != 1 || strcmp(p.state, "running") != 0) {
      continue;
    }
    if (evaluate(r, &p, now)) {
      r->api->log(r->e, "choose_version: plan of %s: %s", p.flag, r->errmsg);
    }
  }
}

int cv_planner_start(cv_router *r) {
  cv_planner *pl = calloc(1, sizeof *pl);
  int64_t ms;
  if (!pl) {
    return -1;
  }
  pl->r = r;
  ms = cv_setting_int(r, "choose_version.plan_every_ms", DEFAULT_EVERY_MS);
  uv_timer_init(r->api->loop(r->e), &pl->timer);
  pl->timer.data = pl;
  uv_timer_start(&pl->timer, on_timer, (uint64_t)ms, (uint64_t)ms);
  uv_unref((uv_handle_t *)&pl->timer); /* never what keeps a run going */
  r->planner = pl;
  return 0;
}

static void planner_closed(uv_handle_t *h) {
  free(h->data);
}

void cv_planner_stop(cv_router *r) {
  if (r->planner) {
    uv_timer_stop(&r->planner->timer);
    uv_close((uv_handle_t *)&r->planner->timer, planner_closed);
    r->planner = NULL;
  }
}

/* ---------------------------------------------------------------------
 * The command */

typedef struct plan_args {
  const char *flag, *action, *steps, *reason, *actor, *hold, *min_instances,
      *max_increase, *alpha, *max_wait;
  const char *gates[MAX_STEPS];
  const char *window, *outcome_var, *latency, *on_rollback;
  int ngates, json, dry_run;
} plan_args;

static const char plan_usage[] =
    "usage: switchyard rollout plan FLAG --steps 1%,5%,25%,100% --reason R\n"
    "           [--hold 10m] [--min-instances 200] [--max-increase 1]\n"
    "           [--alpha 0.05] [--max-wait 2h] [--gate 50%]...\n"
    "           [--outcome-var verified] [--latency-p95-increase 25%]\n"
    "           [--on-rollback keep|reroute]\n"
    "           [--dry-run [--window 30d]]\n"
    "       switchyard rollout plan FLAG [show] [--json]\n"
    "       switchyard rollout plan FLAG pause|resume|abort|approve "
    "--reason R\n"
    "Running engines evaluate the plan every few seconds: V2 against V1 by\n"
    "instances with an incident since the plan started (an always-valid\n"
    "test, so looking often does not cry wolf). Worse by more than\n"
    "--max-increase points at confidence 1 - alpha: kill switch, rolled\n"
    "back. Held --hold with --min-instances on each version: next step.\n"
    "With --outcome-var, the share of completed instances whose var is\n"
    "false or absent is a second guard; with --latency-p95-increase, V2's\n"
    "p95 branch latency above V1's by more than that is another (each of\n"
    "k guards at alpha / k). With --on-rollback reroute, a rollback also\n"
    "sends V2's instances waiting in incidents on to the node's V1 step.\n"
    "Neither for longer than --max-wait in a step: paused. A --gate step\n"
    "is entered only once approved (approve).\n";

static int parse(int argc, char **argv, plan_args *a) {
  const cv_opt opts[] = {CV_VALUE("steps", &a->steps),
                         CV_VALUE("reason", &a->reason),
                         CV_VALUE("actor", &a->actor),
                         CV_VALUE("hold", &a->hold),
                         CV_VALUE("min-instances", &a->min_instances),
                         CV_VALUE("max-increase", &a->max_increase),
                         CV_VALUE("alpha", &a->alpha),
                         CV_VALUE("max-wait", &a->max_wait),
                         CV_VALUE("window", &a->window),
                         CV_VALUE("outcome-var", &a->outcome_var),
                         CV_VALUE("latency-p95-increase", &a->latency),
                         CV_VALUE("on-rollback", &a->on_rollback),
                         CV_MANY("gate", a->gates, &a->ngates, MAX_STEPS),
                         CV_SWITCH("json", &a->json),
                         CV_SWITCH("dry-run", &a->dry_run),
                         CV_END};
  const char *pos[2] = {NULL, NULL};
  int npos, rc;
  memset(a, 0, sizeof *a);
  if ((rc = cv_parse_args(CMD, argc, argv, opts, pos, 2, &npos, 0))) {
    return rc;
  }
  a->flag = pos[0];
  a->action = pos[1];
  return cv_flag_and_actor(CMD, a->flag, &a->actor);
}

static int number(const char *s, double lo, double hi, double *out) {
  char *end;
  double v = strtod(s, &end);
  if (end == s || *end || !isfinite(v) || v < lo || v > hi) {
    return -1;
  }
  *out = v;
  return 0;
}

/* The options of a new plan, checked: 0, or the exit code. */
static int new_plan(const plan_args *a, plan *p) {
  char err[256];
  double d;
  memset(p, 0, sizeof *p);
  snprintf(p->flag, sizeof p->flag, "%s", a->flag);
  p->hold_ms = 10 * 60000;
  p->min_instances = 200;
  p->max_increase = 1.0;
  p->alpha = 0.05;
  p->max_wait_ms = 2 * 3600000;
  p->p_min = 1.0;
  if (!a->reason && !a->dry_run) {
    return usage_error("a plan needs --reason: say why, for the audit trail");
  }
  if (a->window && !a->dry_run) {
    return usage_error("--window goes with --dry-run");
  }
  if (a->outcome_var) {
    const char *c = a->outcome_var;
    int ok =
        strlen(c) < sizeof p->outcome_var &&
        (*c == '_' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'));
    for (; ok && *c; c++) {
      ok = *c == '_' || (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
           (*c >= '0' && *c <= '9');
    }
    if (!ok) {
      return usage_error(
          "--outcome-var: expected a var name (letters, "
          "digits, '_'), got '%s'",
          a->outcome_var);
    }
    snprintf(p->outcome_var, sizeof p->outcome_var, "%s", a->outcome_var);
  }
  if (a->latency) {
    char num[32];
    size_t len = strlen(a->latency);
    snprintf(num, sizeof num, "%.*s",
             (int)(len && a->latency[len - 1] == '%' ? len - 1 : len),
             a->latency);
    if (len >= sizeof num || number(num, 0.0, 1000.0, &d) || !(d > 0.0)) {
      return usage_error(
          "--latency-p95-increase: expected a percentage above 0 and at "
          "most 1000%%, such as 25%%, got '%s'",
          a->latency);
    }
    p->latency_increase = d;
  }
  if (a->on_rollback) {
    if (strcmp(a->on_rollback, "reroute") != 0 &&
        strcmp(a->on_rollback, "keep") != 0) {
      return usage_error("--on-rollback: keep or reroute, not '%s'",
                         a->on_rollback);
    }
    p->reroute = strcmp(a->on_rollback, "reroute") == 0;
  }
  if (parse_steps(a->steps, p, err, sizeof err)) {
    return usage_error("%s", err);
  }
  for (int g = 0; g < a->ngates; g++) {
    uint32_t ppm;
    int i;
    if (cv_rate_parse(a->gates[g], &ppm, err, sizeof err)) {
      return usage_error("--gate: %s", err);
    }
    for (i = 0; i < p->nsteps && p->steps[i] != ppm; i++) {
    }
    if (i == p->nsteps || i == 0) {
      return usage_error("--gate %s: not a step after the first of --steps",
                         a->gates[g]);
    }
    p->gated[i] = 1;
  }
  if (a->hold && cv_parse_age(a->hold, &p->hold_ms)) {
    return usage_error("--hold: expected a duration (30s, 10m, 1h), got '%s'",
                       a->hold);
  }
  if (a->max_wait && cv_parse_age(a->max_wait, &p->max_wait_ms)) {
    return usage_error("--max-wait: expected a duration (2h, 1d), got '%s'",
                       a->max_wait);
  }
  if (a->min_instances) {
    if (number(a->min_instances, 1, 1e9, &d) || d != floor(d)) {
      return usage_error(
          "--min-instances: expected a whole number from 1, "
          "got '%s'",
          a->min_instances);
    }
    p->min_instances = (int64_t)d;
  }
  if (a->max_increase && number(a->max_increase, 0, 99, &p->max_increase)) {
    return usage_error(
        "--max-increase: expected points from 0 to 99, got "
        "'%s'",
        a->max_increase);
  }
  if (a->alpha && (number(a->alpha, 1e-9, 0.5, &p->alpha) || p->alpha <= 0)) {
    return usage_error("--alpha: expected a number in (0, 0.5], got '%s'",
                       a->alpha);
  }
  return 0;
}

static int create(cv_router *r, const plan_args *a) {
  plan p, old;
  char steps[512], gates[256], first[CV_RATE_FORMAT_MAX],
      oldr[CV_RATE_FORMAT_MAX], group[160] = "";
  int64_t now = r->api->now_ms(r->e);
  uint32_t rate_now = 0;
  sy_stmt *s;
  int rc, have;
  if ((rc = new_plan(a, &p))) {
    return rc;
  }
  /* A dry run checks the same under a read transaction. */
  if (cv_cmd_begin(r, CMD, !a->dry_run)) {
    return 1;
  }
  if (!(s = cv_stmt(r, CVQ_FLAG))) {
    return cv_cmd_end(r, CMD, db_error(r, "read flag"));
  }
  sy_stmt_bind_text(s, 1, a->flag);
  rc = sy_stmt_step(s);
  if (rc != SY_ROW && rc != SY_DONE) {
    cv_db_fail(r, s);
    return cv_cmd_end(r, CMD, db_error(r, "read flag"));
  }
  {
    /* CVQ_FLAG: rate_ppm, killed, group, retired, ... */
    int exists = rc == SY_ROW;
    uint32_t rate = exists ? (uint32_t)sy_stmt_column_int(s, 0) : 0;
    int killed = exists && sy_stmt_column_int(s, 1);
    int retired = exists && sy_stmt_column_int(s, 3);
    if (exists) {
      snprintf(group, sizeof group, "%s", sy_stmt_column_text(s, 2));
    }
    rate_now = rate;
    sy_stmt_reset(s);
    if (!exists || retired || killed) {
      cv_cmd_end(r, CMD, 1);
      return usage_error(!exists   ? "no flag '%s' (create it with rollout "
                                     "set)"
                         : retired ? "flag '%s' is retired"
                                   : "flag '%s' is killed: unkill it first",
                         a->flag);
    }
    if ((have = read_plan(r, a->flag, &old)) < 0) {
      return cv_cmd_end(r, CMD, db_error(r, "read plan"));
    }
    if (have && (strcmp(old.state, "running") == 0 ||
                 strcmp(old.state, "paused") == 0)) {
      cv_cmd_end(r, CMD, 1);
      return usage_error("flag '%s' has a plan %s already: abort it first",
                         a->flag, old.state);
    }
    if (p.steps[0] < rate) {
      cv_rate_format(rate, oldr, sizeof oldr);
      cv_cmd_end(r, CMD, 1);
      return usage_error(
          "the first step is below the rate now (%s): a plan "
          "only goes up",
          oldr);
    }
    cv_rate_format(rate, oldr, sizeof oldr);
  }
  steps_text(&p, steps, sizeof steps);
  cv_rate_format(p.steps[0], first, sizeof first);
  if (a->dry_run) {
    /* What its first step does at once; the rest is up to the guard. */
    char change[700];
    cv_flag before = {.name = (char *)a->flag,
                      .exists = 1,
                      .rate_ppm = rate_now,
                      .group = group};
    cv_flag after = before;
    if ((rc = cv_cmd_end(r, CMD, 0))) {
      return rc;
    }
    after.rate_ppm = p.steps[0];
    snprintf(change, sizeof change,
             "plan %s, its first step at once: rate %s -> %s", steps, oldr,
             first);
    return cv_preview(r, &before, &after, change, a->window, a->json);
  }
  if (!(s = cv_stmt(r, CVQ_PLAN_PUT))) {
    return cv_cmd_end(r, CMD, db_error(r, "store plan"));
  }
  sy_stmt_bind_text(s, 1, a->flag);
  sy_stmt_bind_text(s, 2, steps);
  sy_stmt_bind_int(s, 3, p.hold_ms);
  sy_stmt_bind_int(s, 4, p.min_instances);
  sy_stmt_bind_double(s, 5, p.max_increase);
  sy_stmt_bind_double(s, 6, p.alpha);
  sy_stmt_bind_int(s, 7, p.max_wait_ms);
  sy_stmt_bind_int(s, 8, now);
  sy_stmt_bind_text(s, 9, a->reason);
  sy_stmt_bind_text(s, 10, a->actor);
  gates_text(&p, gates, sizeof gates);
  sy_stmt_bind_text(s, 11, gates);
  sy_stmt_bind_text(s, 12, p.outcome_var[0] ? p.outcome_var : NULL);
  sy_stmt_bind_double(s, 13, p.latency_increase);
  sy_stmt_bind_text(s, 14, p.reroute ? "reroute" : "keep");
  rc = cv_step_done(r, s) ||
       audit(r, a->flag, "plan", NULL, steps, p.steps[0], 0, a->reason,
             a->actor, now) ||
       cv_flag_set(r, CVQ_FLAG_SET_RATE, a->flag, p.steps[0], now) ||
       audit(r, a->flag, "rate", oldr, first, p.steps[0], 0, "plan step 1",
             "plan", now);
  if ((rc = cv_cmd_end(r, CMD, rc ? db_error(r, "store plan") : 0))) {
    return rc;
  }
  printf("%s: plan %s started at %s; running engines move it along\n", a->flag,
         steps, first);
  return 0;
}

static int change_state(cv_router *r, const plan_args *a) {
  const char *from = strcmp(a->action, "resume") == 0 ? "paused" : "running";
  const char *to = strcmp(a->action, "pause") == 0    ? "paused"
                   : strcmp(a->action, "resume") == 0 ? "running"
                                                      : "aborted";
  int64_t now = r->api->now_ms(r->e);
  plan p;
  sy_stmt *s;
  int rc, have;
  if (!a->reason) {
    return usage_error("%s needs --reason", a->action);
  }
  if (cv_cmd_begin(r, CMD, 1)) {
    return 1;
  }
  if ((have = read_plan(r, a->flag, &p)) < 0) {
    return cv_cmd_end(r, CMD, db_error(r, "read plan"));
  }
  if (!have ||
      (strcmp(p.state, from) != 0 &&
       !(strcmp(to, "aborted") == 0 && strcmp(p.state, "paused") == 0))) {
    cv_cmd_end(r, CMD, 1);
    return usage_error("flag '%s' has no %s plan to %s", a->flag, from,
                       a->action);
  }
  if (!(s = cv_stmt(r, CVQ_PLAN_STATE))) {
    return cv_cmd_end(r, CMD, db_error(r, "update plan"));
  }
  sy_stmt_bind_text(s, 1, a->flag);
  sy_stmt_bind_text(s, 2, to);
  sy_stmt_bind_int(s, 3, now);
  rc =
      cv_step_done(r, s) || audit(r, a->flag, "plan", p.state, to,
                                  p.steps[p.step], 0, a->reason, a->actor, now);
  if ((rc = cv_cmd_end(r, CMD, rc ? db_error(r, "update plan") : 0))) {
    return rc;
  }
  printf("%s: plan %s\n", a->flag, to);
  return 0;
}

/* approve: the next step is gated and the plan running: let it in. */
static int approve(cv_router *r, const plan_args *a) {
  int64_t now = r->api->now_ms(r->e);
  char rate[CV_RATE_FORMAT_MAX];
  plan p;
  sy_stmt *s;
  int rc, have;
  if (!a->reason) {
    return usage_error("approve needs --reason");
  }
  if (cv_cmd_begin(r, CMD, 1)) {
    return 1;
  }
  if ((have = read_plan(r, a->flag, &p)) < 0) {
    return cv_cmd_end(r, CMD, db_error(r, "read plan"));
  }
  if (!have || strcmp(p.state, "running") != 0 || p.step + 1 >= p.nsteps ||
      !p.gated[p.step + 1]) {
    cv_cmd_end(r, CMD, 1);
    return usage_error(
        "flag '%s' has no running plan whose next step waits "
        "for approval",
        a->flag);
  }
  cv_rate_format(p.steps[p.step + 1], rate, sizeof rate);
  if (!(s = cv_stmt(r, CVQ_PLAN_APPROVE))) {
    return cv_cmd_end(r, CMD, db_error(r, "approve"));
  }
  sy_stmt_bind_text(s, 1, a->flag);
  sy_stmt_bind_int(s, 2, p.step + 1);
  sy_stmt_bind_int(s, 3, now);
  rc =
      cv_step_done(r, s) || audit(r, a->flag, "approve", NULL, rate,
                                  p.steps[p.step], 0, a->reason, a->actor, now);
  if ((rc = cv_cmd_end(r, CMD, rc ? db_error(r, "approve") : 0))) {
    return rc;
  }
  printf(
      "%s: %s approved; the plan goes there at its next passing "
      "evaluation\n",
      a->flag, rate);
  return 0;
}

/* What `rollout plan FLAG show` and the console's flag page read: the
 * plan, its tallies since it started and at this step, and its guards'. */
typedef struct shown {
  plan p;
  tally t, step, o;
  latency l;
  int guards;
  char steps[512], rate[CV_RATE_FORMAT_MAX], gates[256];
} shown;

/* 1 with the plan in x, 0 when the flag has none, -1 on a database
 * failure (r->errmsg). */
static int gather(cv_router *r, const char *flag, shown *x) {
  plan *p = &x->p;
  int have;
  memset(x, 0, sizeof *x);
  if ((have = read_plan(r, flag, p)) <= 0) {
    return have;
  }
  if (read_tally(r, p, p->started_at, &x->t) ||
      read_tally(r, p, p->step_started_at, &x->step) ||
      (p->outcome_var[0] &&
       tally_of(r, CVQ_PLAN_OUTCOME_TALLY, p, p->started_at, &x->o)) ||
      (p->latency_increase > 0 && read_latency(r, p, &x->l))) {
    return -1;
  }
  x->guards = 1 + !!p->outcome_var[0] + (p->latency_increase > 0);
  steps_text(p, x->steps, sizeof x->steps);
  cv_rate_format(p->steps[p->step], x->rate, sizeof x->rate);
  for (int i = 0, used = 0; i < p->nsteps; i++) {
    char g[CV_RATE_FORMAT_MAX];
    if (p->gated[i] && used < (int)sizeof x->gates) {
      cv_rate_format(p->steps[i], g, sizeof g);
      used += snprintf(x->gates + used, sizeof x->gates - (size_t)used, "%s%s",
                       used ? "," : "", g);
    }
  }
  return 1;
}

/* The last evaluations, newest first: appended to evals, or printed when
 * evals is NULL. */
static int evaluations(cv_router *r, const char *flag, json_t *evals) {
  sy_stmt *s = cv_stmt(r, CVQ_PLAN_EVALS);
  char at[32];
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    int64_t when = sy_stmt_column_int(s, 0);
    if (evals) {
      json_array_append_new(
          evals, json_pack("{s:I, s:i, s:s, s:b, s:s}", "at", (json_int_t)when,
                           "step", (int)sy_stmt_column_int(s, 1) + 1, "outcome",
                           sy_stmt_column_text(s, 2), "applied",
                           (int)sy_stmt_column_int(s, 3), "reason",
                           sy_stmt_column_text(s, 4)));
    } else {
      cv_fmt_time(when, at, sizeof at);
      printf("    %s  step %lld  %-12s %s%s\n", at,
             (long long)sy_stmt_column_int(s, 1) + 1, sy_stmt_column_text(s, 2),
             sy_stmt_column_text(s, 4),
             sy_stmt_column_int(s, 3) ? " (applied)" : "");
    }
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

/* `rollout plan FLAG show --json`'s document; NULL with *have 0 when the
 * flag has no plan, with *have 1 on a failure (r->errmsg). */
json_t *cv_plan_document(cv_router *r, const char *flag, int *have) {
  shown x;
  const plan *p = &x.p;
  const tally *t = &x.t, *o = &x.o;
  const latency *l = &x.l;
  int64_t now = r->api->now_ms(r->e);
  json_t *j, *evals;
  *have = gather(r, flag, &x);
  if (*have <= 0) {
    *have = *have < 0;
    return NULL;
  }
  j = json_pack(
      "{s:s, s:s, s:s, s:i, s:s, s:I, s:I, s:I, s:f, s:f, s:I, s:I, s:I, "
      "s:f, s:{s:I, s:I}, s:{s:I, s:I}}",
      "flag", p->flag, "state", p->state, "steps", x.steps, "step", p->step + 1,
      "rate", x.rate, "held_ms", (json_int_t)(now - p->step_started_at),
      "hold_ms", (json_int_t)p->hold_ms, "min_instances",
      (json_int_t)p->min_instances, "max_increase_points", p->max_increase,
      "alpha", p->alpha, "max_wait_ms", (json_int_t)p->max_wait_ms,
      "started_at", (json_int_t)p->started_at, "step_started_at",
      (json_int_t)p->step_started_at, "p_min", p->p_min, "v1", "instances",
      (json_int_t)t->n1, "with_incidents", (json_int_t)t->x1, "v2", "instances",
      (json_int_t)t->n2, "with_incidents", (json_int_t)t->x2);
  if (!j) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return NULL;
  }
  json_object_set_new(j, "gates", json_string(x.gates));
  json_object_set_new(
      j, "awaiting_approval",
      json_boolean(strcmp(p->state, "running") == 0 &&
                   p->step + 1 < p->nsteps && p->gated[p->step + 1] &&
                   p->approved != p->step + 1));
  json_object_set_new(
      j, "outcome_var",
      p->outcome_var[0] ? json_string(p->outcome_var) : json_null());
  json_object_set_new(j, "p_min_outcome", json_real(p->p_min_outcome));
  json_object_set_new(
      j, "latency_p95_increase_percent",
      p->latency_increase > 0 ? json_real(p->latency_increase) : json_null());
  if (p->latency_increase > 0) {
    json_object_set_new(
        j, "latency",
        json_pack("{s:I, s:I, s:I, s:I, s:I, s:I}", "v1_completed",
                  (json_int_t)l->n1, "v1_p95_ms", (json_int_t)l->p95_1,
                  "v2_completed", (json_int_t)l->n2, "v2_p95_ms",
                  (json_int_t)l->p95_2, "limit_ms", (json_int_t)l->limit,
                  "v2_over_limit", (json_int_t)l->over));
  }
  json_object_set_new(j, "p_min_latency", json_real(p->p_min_latency));
  json_object_set_new(j, "on_rollback",
                      json_string(p->reroute ? "reroute" : "keep"));
  json_object_set_new(j, "alpha_per_guard", json_real(p->alpha / x.guards));
  json_object_set_new(j, "at_this_step",
                      json_pack("{s:I, s:I}", "v1", (json_int_t)x.step.n1, "v2",
                                (json_int_t)x.step.n2));
  if (p->outcome_var[0]) {
    json_object_set_new(
        j, "outcome",
        json_pack("{s:{s:I, s:I}, s:{s:I, s:I}}", "v1", "completed",
                  (json_int_t)o->n1, "falsy", (json_int_t)o->x1, "v2",
                  "completed", (json_int_t)o->n2, "falsy", (json_int_t)o->x2));
  }
  evals = json_array();
  json_object_set_new(j, "evaluations", evals);
  if (evaluations(r, flag, evals)) {
    json_decref(j);
    return NULL;
  }
  return j;
}

/* `rollout plan FLAG show`'s text (the evaluations follow). */
static void print_plan(const shown *x, int64_t now) {
  const plan *p = &x->p;
  const tally *t = &x->t, *step = &x->step, *o = &x->o;
  const latency *l = &x->l;
  char held[32], hold[32];
  cv_fmt_age(now - p->step_started_at, held, sizeof held);
  cv_fmt_age(p->hold_ms, hold, sizeof hold);
  printf("plan of %s: %s, step %d of %d (%s), held %s of %s\n", p->flag,
         p->state, p->step + 1, p->nsteps, x->rate, held, hold);
  printf(
      "  steps %s%s%s; at least %lld instances per version; V2 may be "
      "worse by %g point%s at alpha %g\n",
      x->steps, x->gates[0] ? ", gated: " : "", x->gates,
      (long long)p->min_instances, p->max_increase,
      p->max_increase == 1.0 ? "" : "s", p->alpha);
  if (p->reroute) {
    printf("  on rollback: V2's instances in incidents go on at V1\n");
  }
  printf(
      "  at this step: V1 %lld, V2 %lld instances decided (the step "
      "needs %lld of each%s)\n",
      (long long)step->n1, (long long)step->n2, (long long)p->min_instances,
      p->steps[p->step] == CV_RATE_MAX_PPM ? ", of V2 alone at 100%" : "");
  printf(
      "  each guard rolls back once its smallest p so far is at most "
      "alpha / %d = %g:\n",
      x->guards, p->alpha / x->guards);
  printf(
      "  - incidents: V2 %.1f%% (%lld/%lld) vs V1 %.1f%% (%lld/%lld) "
      "since the plan started, bound V1 + %g point%s; smallest p %.4g\n",
      pct(t->x2, t->n2), (long long)t->x2, (long long)t->n2, pct(t->x1, t->n1),
      (long long)t->x1, (long long)t->n1, p->max_increase,
      p->max_increase == 1.0 ? "" : "s", p->p_min);
  if (p->outcome_var[0]) {
    printf(
        "  - %s false or absent: V2 %.1f%% (%lld/%lld) vs V1 %.1f%% "
        "(%lld/%lld) of the completed, bound V1 + %g point%s; smallest p "
        "%.4g\n",
        p->outcome_var, pct(o->x2, o->n2), (long long)o->x2, (long long)o->n2,
        pct(o->x1, o->n1), (long long)o->x1, (long long)o->n1, p->max_increase,
        p->max_increase == 1.0 ? "" : "s", p->p_min_outcome);
  }
  if (p->latency_increase > 0) {
    printf(
        "  - latency: p95 V2 %lldms vs V1 %lldms, bound V1 + %g%% "
        "(%lldms): %lld of V2's %lld completed over it, %lld of V1's %lld "
        "over its p95; smallest p %.4g\n",
        (long long)l->p95_2, (long long)l->p95_1, p->latency_increase,
        (long long)l->limit, (long long)l->over, (long long)l->n2,
        (long long)l->over1, (long long)l->n1, p->p_min_latency);
  }
  printf("  last evaluations:\n");
}

static int show(cv_router *r, const plan_args *a) {
  shown x;
  int have, rc;
  int64_t now = r->api->now_ms(r->e);
  if (cv_cmd_begin(r, CMD, 0)) {
    return 1;
  }
  if (a->json) {
    json_t *j = cv_plan_document(r, a->flag, &have);
    if ((rc = cv_cmd_end(r, CMD, !j && have ? db_error(r, "read plan") : 0))) {
      json_decref(j);
      return rc;
    }
    if (!j) {
      return usage_error("flag '%s' has no plan", a->flag);
    }
    cv_print_json(j);
    return 0;
  }
  if ((have = gather(r, a->flag, &x)) < 0) {
    return cv_cmd_end(r, CMD, db_error(r, "read plan"));
  }
  if (!have) {
    cv_cmd_end(r, CMD, 0);
    return usage_error("flag '%s' has no plan", a->flag);
  }
  print_plan(&x, now);
  if (evaluations(r, a->flag, NULL)) {
    return cv_cmd_end(r, CMD, db_error(r, "read evaluations"));
  }
  return cv_cmd_end(r, CMD, 0);
}

int cv_cmd_plan(cv_router *r, int argc, char **argv) {
  plan_args a;
  int rc;
  for (int i = 2; i < argc; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      fputs(plan_usage, stdout);
      return 0;
    }
  }
  if ((rc = parse(argc, argv, &a))) {
    return rc;
  }
  if (a.steps) {
    if (a.action) {
      return usage_error("--steps starts a plan; it takes no '%s'", a.action);
    }
    return create(r, &a);
  }
  if (a.hold || a.min_instances || a.max_increase || a.alpha || a.max_wait ||
      a.ngates || a.dry_run || a.window || a.outcome_var || a.latency ||
      a.on_rollback) {
    return usage_error("plan options go with --steps");
  }
  if (!a.action || strcmp(a.action, "show") == 0) {
    return show(r, &a);
  }
  if (strcmp(a.action, "pause") == 0 || strcmp(a.action, "resume") == 0 ||
      strcmp(a.action, "abort") == 0) {
    return change_state(r, &a);
  }
  if (strcmp(a.action, "approve") == 0) {
    return approve(r, &a);
  }
  return usage_error(
      "unknown plan action '%s' (show, pause, resume, abort, approve)",
      a.action);
}
