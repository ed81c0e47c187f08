/* What choose_version adds to `switchyard retry`: --flag F selects the
 * instances F decided, --version v1|v2 those it sent to that version, and
 * --reroute v1|v2 sends them on to that version's step of the node that
 * decided (the node's v1 or v2) rather than back to their own step. After
 * a migration succeeds, the instances stuck in incidents on the old
 * version go to the new one in one command; after a rollback, V2's go
 * back to V1.
 *
 * A reroute keeps the evidence where it was: the instance's decision is
 * closed (outcome 'rerouted'), its incidents still counted against the
 * version they happened on, and a new decision (reason 'rerouted',
 * numbered by reroutes) follows the instance on the other version, which
 * counts it as rerouted in, never as routed: no instance is counted twice
 * as routed. All of it in the retry's transaction, before the engine's
 * own changes and events. */
#include <stdio.h>
#include <string.h>

#include "cv.h"

const char *const cv_retry_options[] = {"flag", "version", "reroute", NULL};
enum { OPT_FLAG, OPT_VERSION, OPT_REROUTE };

/* An instance's current decision for a flag, copied out of the row. */
typedef struct current {
  char version[4], step[256], subject[512], workflow[256];
  int has_subject, has_bucket;
  int64_t bucket, rate_ppm, ramp_id, decided_at, reroutes, open_incidents;
} current;

/* 1 found, 0 none, -1 error (r->errmsg). */
static int read_current(cv_router *r, int64_t id, const char *flag,
                        current *c) {
  sy_stmt *s = cv_stmt(r, CVQ_REROUTE_OF);
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, id);
  sy_stmt_bind_text(s, 2, flag);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    snprintf(c->version, sizeof c->version, "%s", sy_stmt_column_text(s, 0));
    snprintf(c->step, sizeof c->step, "%s", sy_stmt_column_text(s, 1));
    c->has_subject = !sy_stmt_column_null(s, 2);
    snprintf(c->subject, sizeof c->subject, "%s",
             c->has_subject ? sy_stmt_column_text(s, 2) : "");
    c->has_bucket = !sy_stmt_column_null(s, 3);
    c->bucket = sy_stmt_column_int(s, 3);
    c->rate_ppm = sy_stmt_column_int(s, 4);
    c->ramp_id = sy_stmt_column_int(s, 5);
    c->decided_at = sy_stmt_column_int(s, 6);
    c->reroutes = sy_stmt_column_int(s, 7);
    c->open_incidents = sy_stmt_column_int(s, 8);
    snprintf(c->workflow, sizeof c->workflow, "%s", sy_stmt_column_text(s, 9));
  } else if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return rc == SY_ROW;
}

/* Closes decision c of the instance and records the one on version to,
 * with the counters of both versions. */
static int reroute(cv_router *r, const sy_retry_inst *inst, const char *flag,
                   const current *c, const char *to) {
  sy_stmt *s = cv_stmt(r, CVQ_REROUTE_CLOSE);
  cv_delta *from, *into;
  int64_t at = inst->now_ms > c->decided_at ? inst->now_ms : c->decided_at + 1;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, inst->id);
  sy_stmt_bind_text(s, 2, flag);
  sy_stmt_bind_int(s, 3, c->reroutes);
  sy_stmt_bind_int(s, 4, at);
  if (cv_step_done(r, s) || !(s = cv_stmt(r, CVQ_REROUTE_PUT))) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, inst->id);
  sy_stmt_bind_text(s, 2, flag);
  sy_stmt_bind_text(s, 3, c->workflow);
  sy_stmt_bind_text(s, 4, c->step);
  sy_stmt_bind_text(s, 5, c->has_subject ? c->subject : NULL);
  sy_stmt_bind_text(s, 6, to);
  if (c->has_bucket) {
    sy_stmt_bind_int(s, 7, c->bucket);
  } else {
    sy_stmt_bind_text(s, 7, NULL);
  }
  sy_stmt_bind_int(s, 8, c->rate_ppm);
  sy_stmt_bind_int(s, 9, c->ramp_id);
  sy_stmt_bind_int(s, 10, at);
  sy_stmt_bind_int(s, 11, inst->run_ms);
  sy_stmt_bind_int(s, 12, inst->reruns);
  sy_stmt_bind_int(s, 13, c->reroutes + 1);
  if (cv_step_done(r, s) ||
      !(from = cv_delta_of(r, c->workflow, flag, c->version[1] == '2')) ||
      !(into = cv_delta_of(r, c->workflow, flag, to[1] == '2'))) {
    return -1;
  }
  /* Its incident is resolved on the version it happened on; it is in
   * flight on the other. */
  if (c->reroutes == 0) {
    cv_standing was = {CV_OPEN, 0, c->open_incidents};
    cv_standing now = {CV_ENDED_OTHER, 0, 0};
    if (cv_count_standing(r, from, c->ramp_id, &was, &now)) {
      return -1;
    }
  }
  from->open_incidents -= c->open_incidents;
  from->rerouted_out++;
  into->in_flight++;
  into->rerouted_in++;
  return 0;
}

static int is_version(const char *v) {
  return v && (strcmp(v, "v1") == 0 || strcmp(v, "v2") == 0);
}

int cv_retry_filter(void *plugin, const char *const *values,
                    const sy_retry_inst *inst, char *at, size_t atlen,
                    char *err, size_t errlen) {
  cv_router *r = plugin;
  const char *flag = values[OPT_FLAG], *version = values[OPT_VERSION];
  const char *to = values[OPT_REROUTE];
  const cv_node *node;
  current c;
  int rc;
  if (!inst) {
    if (!flag) {
      snprintf(err, errlen,
               "retry: --version and --reroute go with --flag, the flag "
               "whose decisions they read");
    } else if (!cv_flag_name_valid(flag)) {
      snprintf(err, errlen, "retry: bad --flag '%s'", flag);
    } else if (version && !is_version(version)) {
      snprintf(err, errlen, "retry: --version: v1 or v2, not '%s'", version);
    } else if (to && !is_version(to)) {
      snprintf(err, errlen, "retry: --reroute: v1 or v2, not '%s'", to);
    } else {
      return 0;
    }
    return SY_EINVAL;
  }
  if ((rc = read_current(r, inst->id, flag, &c)) <= 0) {
    if (rc < 0) {
      snprintf(err, errlen, "choose_version: %s", r->errmsg);
      return SY_ESTORE;
    }
    return SY_RETRY_SKIP; /* the flag never decided for it */
  }
  if (version && strcmp(version, c.version) != 0) {
    return SY_RETRY_SKIP;
  }
  if (!to || strcmp(to, c.version) == 0) {
    return SY_RETRY_HERE;
  }
  if (!(node = inst->node_data(inst, c.step, "choose_version"))) {
    snprintf(err, errlen,
             "cannot reroute: step '%s', which decided for %s, is no "
             "choose_version node in the instance's definition",
             c.step, flag);
    return SY_EPLUGIN;
  }
  snprintf(at, atlen, "%s", to[1] == '2' ? node->v2 : node->v1);
  if (!inst->dry_run && reroute(r, inst, flag, &c, to)) {
    snprintf(err, errlen, "choose_version: %s", r->errmsg);
    return SY_ESTORE;
  }
  return SY_RETRY_AT;
}
