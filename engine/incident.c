/* Incidents, from the command line: `retry` sends instances in an
 * incident back to their step with a fresh retry budget (and a new
 * generation, so their idempotency keys differ from the failed attempts'),
 * by id or in bulk; `cancel` ends an instance no engine runs. Each change
 * is in a transaction with the plugins' events (a resolved incident, a
 * cancellation), so counters never disagree with the rows. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

typedef struct row_copy {
  int found;
  int64_t run_ms, reruns;
  char state[16];
  char step[256];
  char workflow[256];
  char def_hash[128];
} row_copy;

static int copy_row(void *ud, const sy_instance_row *r) {
  row_copy *c = ud;
  c->found = 1;
  c->run_ms = r->run_ms;
  c->reruns = r->reruns;
  snprintf(c->state, sizeof c->state, "%s", r->state);
  snprintf(c->step, sizeof c->step, "%s", r->step ? r->step : "");
  snprintf(c->workflow, sizeof c->workflow, "%s", r->workflow);
  snprintf(c->def_hash, sizeof c->def_hash, "%s", r->def_hash);
  return 1;
}

/* What a plugin's retry filter may ask of the instance's definition. */
typedef struct filter_ctx {
  sy_engine *e;
  const char *def_hash;
} filter_ctx;

static const sy_step *def_step(const filter_ctx *x, const char *name) {
  const sy_workflow *wf = sy__def_by_hash(x->e, x->def_hash);
  return wf ? sy_workflow_step(wf, name) : NULL;
}

static void *node_data_of(const sy_retry_inst *inst, const char *step,
                          const char *type) {
  const sy_step *s = def_step(inst->engine, step);
  return s && s->node && strcmp(s->node->type->name, type) == 0 ? s->node_data
                                                                : NULL;
}

/* The plugins' retry filters on instance row (id): SY_RETRY_SKIP, HERE or
 * AT (with the step in at), or an error, set on e. */
static int filter(sy_engine *e, int64_t id, const row_copy *row, int dry_run,
                  char *at, size_t atlen) {
  filter_ctx x = {e, row->def_hash};
  sy_retry_inst inst = {.id = id,
                        .workflow = row->workflow,
                        .step = row->step,
                        .now_ms = sy__now(e),
                        .run_ms = row->run_ms,
                        .reruns = row->reruns,
                        .dry_run = dry_run,
                        .node_data = node_data_of,
                        .engine = &x};
  char err[512] = "";
  int rc =
      sy_plugins_retry_filter(e->plugins, &inst, at, atlen, err, sizeof err);
  if (rc < 0) {
    return sy__set_error(e, rc, "instance %lld: %s", (long long)id,
                         err[0] ? err : "a plugin's retry filter failed");
  }
  if (rc == SY_RETRY_AT && !def_step(&x, at)) {
    return sy__set_error(e, SY_EPLUGIN,
                         "instance %lld: a plugin asked to retry it at step "
                         "'%s', which its definition does not have",
                         (long long)id, at);
  }
  return rc;
}

/* Retries (cancel 0) or cancels instance id, in the open transaction; on
 * failure the caller rolls back. A retry the plugins' filters skip (given
 * options of theirs) changes nothing: *skipped, when skipped is not NULL,
 * else SY_ESTATE. */
static int change_in_tx(sy_engine *e, int64_t id, int cancel, int *skipped) {
  sy_store *st = e->store;
  row_copy row = {0};
  int64_t now = sy__now(e), n;
  int rc, found = 0;
  char at[256] = "";
  if ((rc = sy_store_get_instance(st, id, copy_row, &row, &found))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if (!row.found) {
    return sy__set_error(e, SY_ENOTFOUND, "no instance %lld", (long long)id);
  }
  if (cancel ? (strcmp(row.state, SY_STATE_COMPLETED) == 0 ||
                strcmp(row.state, SY_STATE_CANCELLED) == 0 ||
                strcmp(row.state, SY_STATE_RUNNING) == 0)
             : strcmp(row.state, SY_STATE_INCIDENT) != 0) {
    return sy__set_error(e, SY_ESTATE,
                         cancel ? "instance %lld is %s: only ready, waiting or "
                                  "incident instances can be cancelled"
                                : "instance %lld is %s: only instances in an "
                                  "incident can be retried",
                         (long long)id, row.state);
  }
  if (skipped) {
    *skipped = 0;
  }
  if (!cancel && sy_plugins_retry_given(e->plugins)) {
    if ((rc = filter(e, id, &row, 0, at, sizeof at)) < 0) {
      return rc;
    }
    if (rc == SY_RETRY_SKIP) {
      if (skipped) {
        *skipped = 1;
        return 0;
      }
      return sy__set_error(e, SY_ESTATE,
                           "instance %lld is not one the retry's options "
                           "select",
                           (long long)id);
    }
  }
  {
    sy_instance_update u = {
        .id = id,
        .workflow = row.workflow,
        .from = row.state,
        .state = cancel ? SY_STATE_CANCELLED : SY_STATE_READY,
        .step = at[0] ? at : row.step,
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
      return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
    }
    /* A cancelled incident is both resolved and cancelled. */
    resolved.type = SY_EVENT_INCIDENT_RESOLVED;
    if ((cancel && was_incident &&
         sy_plugins_event(e->plugins, &resolved, NULL)) ||
        sy_plugins_event(e->plugins, &ev, NULL)) {
      return sy__set_error(e, SY_EPLUGIN,
                           "a plugin failed to record the change");
    }
  }
  return 0;
}

/* Commits what change_in_tx did, the plugins' batched writes first. */
static int commit(sy_engine *e) {
  int rc;
  if (sy_plugins_before_commit(e->plugins)) {
    sy_engine_rollback(e);
    return sy__set_error(e, SY_EPLUGIN, "a plugin failed to record the change");
  }
  if ((rc = sy_store_commit(e->store))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  return 0;
}

/* Changes ids[0..n) in one transaction: all of them, or none. */
static int change_all(sy_engine *e, const int64_t *ids, int n, int cancel) {
  int rc;
  if ((rc = sy_store_begin(e->store))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  for (int i = 0; i < n; i++) {
    if ((rc = change_in_tx(e, ids[i], cancel, NULL))) {
      sy_engine_rollback(e);
      return rc;
    }
  }
  return commit(e);
}

int sy_engine_retry(sy_engine *e, const int64_t *ids, int n) {
  return change_all(e, ids, n, 0);
}

int sy_engine_retry_check(sy_engine *e, const int64_t *ids, int n) {
  int rc;
  if ((rc = sy_store_begin(e->store))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  for (int i = 0; i < n && !rc; i++) {
    rc = change_in_tx(e, ids[i], 0, NULL);
  }
  sy_engine_rollback(e);
  return rc;
}

int sy_engine_cancel(sy_engine *e, int64_t id) {
  return change_all(e, &id, 1, 1);
}

typedef struct id_page {
  int64_t *ids;
  int64_t n, cap;
} id_page;

static int collect_id(void *ud, const sy_instance_row *r) {
  id_page *p = ud;
  if (p->n < p->cap) {
    p->ids[p->n++] = r->id;
  }
  return 0;
}

int sy_engine_retry_all(sy_engine *e, const sy_instance_filter *f,
                        int64_t batch,
                        void (*progress)(void *ud, int64_t n, int64_t last),
                        void *ud, int64_t *total) {
  sy_instance_filter page = *f;
  id_page p = {.cap = batch};
  int rc = 0;
  *total = 0;
  page.state = SY_STATE_INCIDENT;
  page.limit = batch;
  if (batch < 1 || !(p.ids = malloc((size_t)batch * sizeof *p.ids))) {
    return sy__set_error(e, batch < 1 ? SY_EINVAL : SY_ENOMEM,
                         "cannot retry in batches of %lld", (long long)batch);
  }
  /* The cursor only moves forward: an instance retried here that falls
   * into an incident again while this runs is not taken twice. */
  for (;;) {
    p.n = 0;
    if ((rc = sy_store_begin(e->store)) ||
        (rc = sy_store_list_instances(e->store, &page, collect_id, &p))) {
      sy_engine_rollback(e);
      rc = sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
      break;
    }
    if (!p.n) {
      sy_engine_rollback(e);
      break;
    }
    int64_t done = 0;
    for (int64_t i = 0; i < p.n && !rc; i++) {
      int skipped;
      rc = change_in_tx(e, p.ids[i], 0, &skipped);
      done += !rc && !skipped;
    }
    if (rc) {
      sy_engine_rollback(e);
      break;
    }
    if ((rc = commit(e))) {
      break;
    }
    *total += done;
    page.after = p.ids[p.n - 1];
    if (progress && done) {
      progress(ud, done, page.after);
    }
    if (p.n < batch) {
      break;
    }
  }
  free(p.ids);
  return rc;
}

typedef struct preview_ctx {
  sy_engine *e;
  int (*cb)(void *ud, const sy_instance_row *r, const char *at);
  void *ud;
  int rc;
} preview_ctx;

static int preview_row(void *ud, const sy_instance_row *r) {
  preview_ctx *x = ud;
  row_copy row = {0};
  char at[256] = "";
  int rc = SY_RETRY_HERE;
  copy_row(&row, r);
  if (sy_plugins_retry_given(x->e->plugins) &&
      (rc = filter(x->e, r->id, &row, 1, at, sizeof at)) < 0) {
    x->rc = rc;
    return 1;
  }
  return rc == SY_RETRY_SKIP ? 0 : x->cb(x->ud, r, at[0] ? at : NULL);
}

int sy_engine_retry_preview(sy_engine *e, const sy_instance_filter *f,
                            int (*cb)(void *ud, const sy_instance_row *r,
                                      const char *at),
                            void *ud) {
  sy_instance_filter all = *f;
  preview_ctx x = {e, cb, ud, 0};
  int rc;
  all.state = SY_STATE_INCIDENT;
  all.limit = 0;
  if ((rc = sy_store_list_instances(e->store, &all, preview_row, &x))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  return x.rc;
}

void sy_engine_retry_options(sy_engine *e,
                             void (*cb)(void *ud, const char *name), void *ud) {
  sy_plugins_retry_names(e->plugins, cb, ud);
}

int sy_engine_set_retry_option(sy_engine *e, const char *name,
                               const char *value) {
  int rc = sy_plugins_retry_set(e->plugins, name, value);
  if (rc == SY_EINVAL) {
    return sy__set_error(e, rc, "no plugin has the retry option --%s", name);
  }
  return rc ? sy__set_error(e, rc, "out of memory") : 0;
}

int sy_engine_check_retry_options(sy_engine *e) {
  char err[512] = "", at[8];
  int rc =
      sy_plugins_retry_filter(e->plugins, NULL, at, sizeof at, err, sizeof err);
  return rc < 0 ? sy__set_error(e, rc, "%s", err[0] ? err : "out of memory")
                : 0;
}

int sy__retry_selected(sy_engine *e, void *plugin, const char *const *values,
                       int64_t *n) {
  sy_loaded_plugin *lp = sy_plugins_by_state(e->plugins, plugin);
  const char **was;
  sy_instance_filter page = {.state = SY_STATE_INCIDENT, .limit = 500};
  id_page p = {.cap = 500};
  int rc = 0;
  *n = 0;
  if (!lp || !lp->def->retry_filter) {
    return sy__set_error(e, SY_EINVAL,
                         "retry_selected: not a plugin with a "
                         "retry filter");
  }
  if (!(p.ids = malloc((size_t)p.cap * sizeof *p.ids))) {
    return sy__set_error(e, SY_ENOMEM, "out of memory");
  }
  /* The plugin's values stand in for a command's, for this call only. */
  was = lp->retry_values;
  lp->retry_values = (const char **)values;
  do {
    p.n = 0;
    if ((rc = sy_store_list_instances(e->store, &page, collect_id, &p))) {
      rc = sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
      break;
    }
    for (int64_t i = 0; i < p.n && !rc; i++) {
      int skipped;
      rc = change_in_tx(e, p.ids[i], 0, &skipped);
      *n += !rc && !skipped;
    }
    page.after = p.n ? p.ids[p.n - 1] : page.after;
  } while (!rc && p.n == p.cap);
  lp->retry_values = was;
  free(p.ids);
  if (*n) {
    e->maybe_work = 1; /* ready instances to claim */
  }
  return rc;
}
