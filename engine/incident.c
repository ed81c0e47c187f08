/* Incidents, from the command line: `retry` sends an instance in an
 * incident back to its step with a fresh retry budget (and a new
 * generation, so its idempotency keys differ from the failed attempts');
 * `cancel` ends an instance no engine runs. Each is one transaction with
 * the plugins' events (a resolved incident, a cancellation), so counters
 * never disagree with the rows. */
#include <stdio.h>
#include <string.h>

#include "engine_int.h"

typedef struct row_copy {
  int found;
  int64_t run_ms, reruns;
  char state[16];
  char step[256];
  char workflow[256];
} row_copy;

static int copy_row(void *ud, const sy_instance_row *r) {
  row_copy *c = ud;
  c->found = 1;
  c->run_ms = r->run_ms;
  c->reruns = r->reruns;
  snprintf(c->state, sizeof c->state, "%s", r->state);
  snprintf(c->step, sizeof c->step, "%s", r->step ? r->step : "");
  snprintf(c->workflow, sizeof c->workflow, "%s", r->workflow);
  return 1;
}

static int change_instance(sy_engine *e, int64_t id, int cancel) {
  sy_store *st = e->store;
  row_copy row = {0};
  int64_t now = sy__now(e), n;
  int rc, found = 0;
  if ((rc = sy_store_begin(st))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if ((rc = sy_store_get_instance(st, id, copy_row, &row, &found))) {
    sy_engine_rollback(e);
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if (!row.found) {
    sy_engine_rollback(e);
    return sy__set_error(e, SY_ENOTFOUND, "no instance %lld", (long long)id);
  }
  if (cancel ? (strcmp(row.state, SY_STATE_COMPLETED) == 0 ||
                strcmp(row.state, SY_STATE_CANCELLED) == 0 ||
                strcmp(row.state, SY_STATE_RUNNING) == 0)
             : strcmp(row.state, SY_STATE_INCIDENT) != 0) {
    sy_engine_rollback(e);
    return sy__set_error(e, SY_ESTATE,
                         cancel ? "instance %lld is %s: only ready, waiting or "
                                  "incident instances can be cancelled"
                                : "instance %lld is %s: only instances in an "
                                  "incident can be retried",
                         (long long)id, row.state);
  }
  {
    sy_instance_update u = {
        .id = id,
        .state = cancel ? SY_STATE_CANCELLED : SY_STATE_READY,
        .step = row.step,
        .attempt = 1,
        .now = now,
        .ended = cancel,
        .new_generation = !cancel};
    sy_event ev = {
        .type = cancel ? SY_EVENT_CANCELLED : SY_EVENT_INCIDENT_RESOLVED,
        .instance_id = id,
        .workflow = row.workflow,
        .step = row.step,
        .time_ms = now,
        .run_ms = row.run_ms,
        .reruns = row.reruns};
    sy_event resolved = ev;
    int was_incident = strcmp(row.state, SY_STATE_INCIDENT) == 0;
    if ((rc = sy_store_update_instance(st, &u)) ||
        (rc = sy_store_resolve_incidents(
             st, id, cancel ? "cancelled" : "retried", now, &n))) {
      sy_engine_rollback(e);
      return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
    }
    /* A cancelled incident is both resolved and cancelled. */
    resolved.type = SY_EVENT_INCIDENT_RESOLVED;
    if ((cancel && was_incident &&
         sy_plugins_event(e->plugins, &resolved, NULL)) ||
        sy_plugins_event(e->plugins, &ev, NULL)) {
      sy_engine_rollback(e);
      return sy__set_error(e, SY_EPLUGIN,
                           "a plugin failed to record the change");
    }
  }
  if (sy_plugins_before_commit(e->plugins)) {
    sy_engine_rollback(e);
    return sy__set_error(e, SY_EPLUGIN, "a plugin failed to record the change");
  }
  if ((rc = sy_store_commit(st))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  return 0;
}

int sy_engine_retry(sy_engine *e, int64_t id) {
  return change_instance(e, id, 0);
}

int sy_engine_cancel(sy_engine *e, int64_t id) {
  return change_instance(e, id, 1);
}
