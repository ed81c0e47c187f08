/* Instance rows in the SQLite store: starting instances, claiming them
 * (with leases, fenced by owner), the transitions the executor records, step
 * runs and incidents, and the listings the command line reads. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "store_int.h"

int sy_store_insert_instance(sy_store *st, const char *workflow,
                             const char *def_hash, const char *step,
                             const char *vars, int64_t now, int64_t *id) {
  sy_stmt *s = sy__stmt(st, Q_INSERT_INSTANCE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, workflow);
  sy_stmt_bind_text(s, 2, def_hash);
  sy_stmt_bind_text(s, 3, step);
  sy_stmt_bind_text(s, 4, vars);
  sy_stmt_bind_int(s, 5, now);
  if ((rc = sy__exec_stmt(st, s, "insert instance")) ||
      (rc = sy__count_move(st, workflow, NULL, SY_STATE_READY))) {
    return rc;
  }
  if (id) {
    *id = sy__last_insert_id(st);
  }
  return 0;
}

static void read_instance(sy_stmt *s, sy_instance_row *r) {
  r->id = sy_stmt_column_int(s, 0);
  r->workflow = sy_stmt_column_text(s, 1);
  r->def_hash = sy_stmt_column_text(s, 2);
  r->state = sy_stmt_column_text(s, 3);
  r->step = sy_stmt_column_text(s, 4);
  r->attempt = (int)sy_stmt_column_int(s, 5);
  r->vars = sy_stmt_column_text(s, 6);
  r->wake_at = sy_stmt_column_int(s, 7);
  r->created_at = sy_stmt_column_int(s, 8);
  r->updated_at = sy_stmt_column_int(s, 9);
  r->ended_at = sy_stmt_column_int(s, 10);
  r->generation = (int)sy_stmt_column_int(s, 11);
  r->run_ms = sy_stmt_column_int(s, 12);
  r->reruns = sy_stmt_column_int(s, 13);
  r->claimed = (int)sy_stmt_column_int(s, 14);
  r->wait_signal = sy_stmt_column_text(s, 15);
  r->caught = sy_stmt_column_text(s, 16);
}

/* Steps a SELECT of INSTANCE_COLS through cb; resets it either way. */
static int each_instance(sy_store *st, sy_stmt *s, sy_instance_cb cb, void *ud,
                         int *count) {
  int rc, n = 0;
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    sy_instance_row r;
    read_instance(s, &r);
    n++;
    if (cb(ud, &r)) {
      rc = SY_DONE;
      break;
    }
  }
  if (rc != SY_DONE) {
    rc = sy__db_error(st, "read instances");
  } else {
    rc = 0;
  }
  sy_stmt_reset(s);
  if (count) {
    *count = n;
  }
  return rc;
}

/* Instances as a claim takes them, from state `from`: counted as running,
 * then shown to the caller. New ones (claim_new) are shown as the running
 * rows they are about to become, and the id range they span is kept. */
typedef struct {
  sy_store *st;
  const char *from;
  sy_instance_cb cb;
  void *ud;
  int64_t lo, hi;
  int rc; /* counting failed */
} picked;

static int pick_cb(void *ud, const sy_instance_row *row) {
  picked *p = ud;
  sy_instance_row r = *row;
  r.state = SY_STATE_RUNNING;
  p->lo = r.id < p->lo ? r.id : p->lo;
  p->hi = r.id > p->hi ? r.id : p->hi;
  if ((p->rc = sy__count_move(p->st, r.workflow, p->from, r.state))) {
    return 1;
  }
  return p->cb(p->ud, &r);
}

/* Claims new instances (ready, never asleep) with one range update. */
static int claim_new(sy_store *st, const char *owner, int64_t lease_until,
                     int64_t now, int limit, sy_instance_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_PICK_NEW), *u = sy__stmt(st, Q_CLAIM_NEW);
  picked p = {st, SY_STATE_READY, cb, ud, INT64_MAX, INT64_MIN, 0};
  int rc, n = 0;
  if (!s || !u) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, limit);
  if ((rc = each_instance(st, s, pick_cb, &p, &n)) || (rc = p.rc)) {
    return rc;
  }
  if (n == 0) {
    return 0;
  }
  sy_stmt_bind_int(u, 1, p.lo);
  sy_stmt_bind_int(u, 2, p.hi);
  sy_stmt_bind_text(u, 3, owner);
  sy_stmt_bind_int(u, 4, lease_until);
  sy_stmt_bind_int(u, 5, now);
  if ((rc = sy__exec_stmt(st, u, "claim instances"))) {
    return rc;
  }
  if (sy_stmt_changes(u) != n) {
    return sy_store_set_error(st, SY_ESTATE,
                              "claim of instances %lld..%lld took %lld rows, "
                              "%d were read",
                              (long long)p.lo, (long long)p.hi,
                              (long long)sy_stmt_changes(u), n);
  }
  return 0;
}

int sy_store_claim(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now, int limit, int expired, sy_instance_cb cb,
                   void *ud) {
  /* Due retries and interrupted sleeps first: they have waited already;
   * then work abandoned by dead engines; then new instances. */
  static const int order[] = {Q_CLAIM_DUE, Q_CLAIM_EXPIRED, Q_CLAIM_READY,
                              Q_CLAIM_NEW_LOCKED};
  static const char *const from[] = {SY_STATE_WAITING, SY_STATE_RUNNING,
                                     SY_STATE_READY, SY_STATE_READY};
  /* Engines claiming side by side lock each row they take; writers taking
   * turns claim new instances as one range (claim_new). */
  int locked = st->b->postgres, rc, got = 0, n = 0;
  if ((rc = sy_store_begin(st))) {
    return rc;
  }
  for (int i = 0; i < 4 - !locked && got < limit; i++) {
    picked p = {st, from[i], cb, ud, INT64_MAX, INT64_MIN, 0};
    sy_stmt *s;
    if (order[i] == Q_CLAIM_EXPIRED && !expired) {
      continue;
    }
    if (!(s = sy__stmt(st, order[i]))) {
      return SY_ESTORE;
    }
    sy_stmt_bind_int(s, 1, now);
    sy_stmt_bind_int(s, 2, limit - got);
    sy_stmt_bind_text(s, 3, owner);
    sy_stmt_bind_int(s, 4, lease_until);
    if ((rc = each_instance(st, s, pick_cb, &p, &n)) || (rc = p.rc)) {
      return rc;
    }
    got += n;
  }
  if (got < limit && !locked) {
    return claim_new(st, owner, lease_until, now, limit - got, cb, ud);
  }
  return 0;
}

int sy_store_renew(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now) {
  sy_stmt *s = sy__stmt(st, Q_RENEW), *h = sy__stmt(st, Q_ENGINE_HEARTBEAT);
  int rc;
  if (!s || !h) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, owner);
  sy_stmt_bind_int(s, 2, lease_until);
  if ((rc = sy__exec_stmt(st, s, "renew leases"))) {
    return rc;
  }
  sy_stmt_bind_text(h, 1, owner);
  sy_stmt_bind_int(h, 2, now);
  if ((rc = sy__exec_stmt(st, h, "heartbeat"))) {
    return rc;
  }
  return sy__fold_counts(st);
}

int sy_store_release(sy_store *st, const char *owner, int64_t now, int64_t *n) {
  sy_stmt *s = sy__stmt(st, Q_RELEASE);
  int64_t released = 0;
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, owner);
  sy_stmt_bind_int(s, 2, now);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if ((rc = sy__count_move(st, sy_stmt_column_text(s, 0), SY_STATE_RUNNING,
                             sy_stmt_column_text(s, 1)))) {
      sy_stmt_reset(s);
      return rc;
    }
    released++;
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "release instances");
  sy_stmt_reset(s);
  if (rc) {
    return rc;
  }
  st->made_work |= released > 0; /* for other engines to take */
  if (n) {
    *n = released;
  }
  return 0;
}

static int single_int(sy_store *st, int q, int64_t *out, const char *what) {
  sy_stmt *s = sy__stmt(st, q);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  rc = sy_stmt_step(s);
  if (rc == SY_ROW) {
    *out = sy_stmt_column_int(s, 0);
    rc = 0;
  } else {
    rc = sy__db_error(st, what);
  }
  sy_stmt_reset(s);
  return rc;
}

int sy_store_next_wake(sy_store *st, int64_t *wake_at) {
  return single_int(st, Q_NEXT_WAKE, wake_at, "next wake-up");
}

int sy_store_count_active(sy_store *st, int64_t *n) {
  return single_int(st, Q_COUNT_ACTIVE, n, "count active instances");
}

/* Both forms of the update take the same numbered parameters (the advance
 * leaves some unused), so one binding serves either. */
static void bind_update(sy_stmt *s, const sy_instance_update *u) {
  sy_stmt_bind_int(s, 1, u->id);
  sy_stmt_bind_text(s, 2, u->state);
  sy_stmt_bind_text(s, 3, u->step);
  sy_stmt_bind_int(s, 4, u->attempt);
  sy_stmt_bind_text(s, 5, u->vars);
  sy__bind_opt_int(s, 6, u->wake_at);
  sy_stmt_bind_text(s, 7, u->wait_signal);
  sy_stmt_bind_int(s, 8, u->now);
  sy__bind_opt_int(s, 9, u->ended ? u->now : 0);
  sy_stmt_bind_text(s, 10, u->owner);
  sy_stmt_bind_int(s, 11, u->new_generation);
  sy_stmt_bind_int(s, 12, u->run_ms);
  sy_stmt_bind_int(s, 13, u->rerun);
  sy_stmt_bind_text(s, 14, u->caught);
  sy_stmt_bind_int(s, 15, u->leaves_step);
}

/* An engine's own instance is running; a command's says where it was. */
static int count_update(sy_store *st, const sy_instance_update *u) {
  return sy__count_move(st, u->workflow, u->from ? u->from : SY_STATE_RUNNING,
                        u->state);
}

/* An engine's update on a server is sent without waiting for its answer
 * (store_pg.c), in the general form: that its fence held is checked when
 * the answer comes, and if it did not, the turn fails and the engine
 * starts again (sy_store_restartable), as after a crash. */
int sy_store_update_instance(sy_store *st, const sy_instance_update *u) {
  int queued = st->shared_writes && st->b->fence && u->owner;
  int advance = strcmp(u->state, SY_STATE_RUNNING) == 0 && !u->wake_at &&
                !u->ended && !u->new_generation && u->owner && !queued;
  sy_stmt *s = sy__stmt(st, advance ? Q_ADVANCE_INSTANCE : Q_UPDATE_INSTANCE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  bind_update(s, u);
  if ((rc = sy__exec_stmt(st, s, "update instance"))) {
    return rc;
  }
  if (queued && st->b->fence(st, s, u->id)) {
    /* checked when answered; if it failed, the transaction fails */
    return count_update(st, u);
  }
  if (advance && sy_stmt_changes(s) == 0) {
    /* A recorded wake-up to clear, or a lost lease: the general form
     * tells them apart. */
    if (!(s = sy__stmt(st, Q_UPDATE_INSTANCE))) {
      return SY_ESTORE;
    }
    bind_update(s, u);
    if ((rc = sy__exec_stmt(st, s, "update instance"))) {
      return rc;
    }
  }
  if (sy_stmt_changes(s) == 0) {
    return sy_store_set_error(st, SY_ESTATE,
                              "instance %lld is no longer held by %s",
                              (long long)u->id, u->owner ? u->owner : "nobody");
  }
  return count_update(st, u);
}

int sy_store_insert_step_run(sy_store *st, const sy_step_run_row *r) {
  sy_stmt *s = sy__stmt(st, Q_INSERT_STEP_RUN);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, r->instance_id);
  sy_stmt_bind_text(s, 2, r->step);
  sy_stmt_bind_int(s, 3, r->attempt);
  sy_stmt_bind_int(s, 4, r->started_at);
  sy_stmt_bind_int(s, 5, r->ended_at);
  sy_stmt_bind_text(s, 6, r->outcome);
  sy_stmt_bind_text(s, 7, r->error);
  sy_stmt_bind_int(s, 8, r->run_ms);
  sy_stmt_bind_text(s, 9, r->code);
  sy_stmt_bind_text(s, 10, r->handler);
  return sy__exec_stmt(st, s, "record step run");
}

int sy_store_journal_put(sy_store *st, int64_t instance_id,
                         const sy_journal_entry *j) {
  sy_stmt *s = sy__stmt(st, Q_JOURNAL_PUT);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_int(s, 2, j->seq);
  sy_stmt_bind_int(s, 3, j->kind);
  sy_stmt_bind_int(s, 4, (int64_t)j->hash);
  sy_stmt_bind_text(s, 5, j->what);
  sy_stmt_bind_text(s, 6, j->result);
  sy_stmt_bind_text(s, 7, j->error);
  sy__bind_opt_int(s, 8, j->due_at);
  sy__bind_opt_int(s, 9, j->started_at);
  sy__bind_opt_int(s, 10, j->ran_ms);
  return sy__exec_stmt(st, s, "journal a call");
}

int sy_store_journal_read(sy_store *st, int64_t instance_id, sy_journal_cb cb,
                          void *ud) {
  sy_stmt *s = sy__stmt(st, Q_JOURNAL_READ);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    sy_journal_entry j = {
        .seq = (int)sy_stmt_column_int(s, 0),
        .kind = (int)sy_stmt_column_int(s, 1),
        .hash = (uint64_t)sy_stmt_column_int(s, 2),
        .what = sy_stmt_column_text(s, 3),
        .result = sy_stmt_column_text(s, 4),
        .error = sy_stmt_column_text(s, 5),
        .due_at = sy_stmt_column_int(s, 6),
        .started_at = sy_stmt_column_int(s, 7),
        .ran_ms = sy_stmt_column_int(s, 8),
    };
    if ((rc = cb(ud, &j))) {
      sy_stmt_reset(s);
      return rc;
    }
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "read the journal");
  sy_stmt_reset(s);
  return rc;
}

int sy_store_journal_clear(sy_store *st, int64_t instance_id) {
  sy_stmt *s = sy__stmt(st, Q_JOURNAL_CLEAR);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  return sy__exec_stmt(st, s, "clear the journal");
}

int sy_store_insert_incident(sy_store *st, int64_t instance_id,
                             const char *step, const char *error, int64_t now) {
  sy_stmt *s = sy__stmt(st, Q_INSERT_INCIDENT);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, step);
  sy_stmt_bind_text(s, 3, error);
  sy_stmt_bind_int(s, 4, now);
  return sy__exec_stmt(st, s, "raise incident");
}

int sy_store_get_instance(sy_store *st, int64_t id, sy_instance_cb cb, void *ud,
                          int *found) {
  sy_stmt *s = sy__stmt(st, Q_GET_INSTANCE);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, id);
  return each_instance(st, s, cb, ud, found);
}

static void bind_filter(sy_stmt *s, const sy_instance_filter *f) {
  sy_stmt_bind_text(s, 1, f->state);
  sy_stmt_bind_text(s, 2, f->workflow);
  sy_stmt_bind_int(s, 3, f->after);
  sy_stmt_bind_text(s, 4, f->step);
}

int sy_store_list_instances(sy_store *st, const sy_instance_filter *f,
                            sy_instance_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_LIST_INSTANCES);
  if (!s) {
    return SY_ESTORE;
  }
  bind_filter(s, f);
  sy_stmt_bind_int(s, 5, f->limit > 0 ? f->limit : -1);
  return each_instance(st, s, cb, ud, NULL);
}

int sy_store_count_instances(sy_store *st, const sy_instance_filter *f,
                             int64_t *n) {
  sy_stmt *s = sy__stmt(st, Q_COUNT_INSTANCES);
  if (!s) {
    return SY_ESTORE;
  }
  bind_filter(s, f);
  return single_int(st, Q_COUNT_INSTANCES, n, "count instances");
}

int sy_store_list_step_runs(sy_store *st, int64_t instance_id,
                            sy_step_run_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_LIST_STEP_RUNS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    sy_step_run_row r = {
        .id = sy_stmt_column_int(s, 0),
        .instance_id = sy_stmt_column_int(s, 1),
        .step = sy_stmt_column_text(s, 2),
        .attempt = (int)sy_stmt_column_int(s, 3),
        .started_at = sy_stmt_column_int(s, 4),
        .ended_at = sy_stmt_column_int(s, 5),
        .outcome = sy_stmt_column_text(s, 6),
        .error = sy_stmt_column_text(s, 7),
        .run_ms = sy_stmt_column_int(s, 8),
        .code = sy_stmt_column_text(s, 9),
        .handler = sy_stmt_column_text(s, 10),
    };
    if (cb(ud, &r)) {
      rc = SY_DONE;
      break;
    }
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "read step runs");
  sy_stmt_reset(s);
  return rc;
}

int sy_store_list_incidents(sy_store *st, int open_only, int64_t instance_id,
                            sy_incident_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_LIST_INCIDENTS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, open_only);
  sy_stmt_bind_int(s, 2, instance_id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    sy_incident_row r = {
        .id = sy_stmt_column_int(s, 0),
        .instance_id = sy_stmt_column_int(s, 1),
        .workflow = sy_stmt_column_text(s, 2),
        .step = sy_stmt_column_text(s, 3),
        .error = sy_stmt_column_text(s, 4),
        .raised_at = sy_stmt_column_int(s, 5),
        .resolved_at = sy_stmt_column_int(s, 6),
        .resolution = sy_stmt_column_text(s, 7),
    };
    if (cb(ud, &r)) {
      rc = SY_DONE;
      break;
    }
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "read incidents");
  sy_stmt_reset(s);
  return rc;
}

int sy_store_resolve_incidents(sy_store *st, int64_t instance_id,
                               const char *resolution, int64_t now,
                               int64_t *n) {
  sy_stmt *s = sy__stmt(st, Q_RESOLVE_INCIDENTS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_int(s, 2, now);
  sy_stmt_bind_text(s, 3, resolution);
  if ((rc = sy__exec_stmt(st, s, "resolve incidents"))) {
    return rc;
  }
  if (n) {
    *n = sy_stmt_changes(s);
  }
  return 0;
}

int sy_store_count_by_state(sy_store *st, sy_count_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_COUNT_BY_STATE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    cb(ud, sy_stmt_column_text(s, 0), sy_stmt_column_text(s, 1),
       sy_stmt_column_int(s, 2));
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "count instances");
  sy_stmt_reset(s);
  return rc;
}

int sy_store_signal_send(sy_store *st, int64_t instance_id, const char *name,
                         const char *vars, int64_t now, int *woke) {
  sy_stmt *s = sy__stmt(st, Q_SIGNAL_PUT);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, name);
  sy_stmt_bind_text(s, 3, vars);
  sy_stmt_bind_int(s, 4, now);
  if ((rc = sy__exec_stmt(st, s, "queue a signal")) ||
      !(s = sy__stmt(st, Q_SIGNAL_WAKE))) {
    return rc ? rc : SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, name);
  sy_stmt_bind_int(s, 3, now);
  if ((rc = sy__exec_stmt(st, s, "wake a waiting instance"))) {
    return rc;
  }
  *woke = sy_stmt_changes(s) > 0;
  return 0;
}

int sy_store_signal_take(sy_store *st, int64_t instance_id, const char *name,
                         char **vars) {
  sy_stmt *s = sy__stmt(st, Q_SIGNAL_TAKE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  sy_stmt_bind_text(s, 2, name);
  rc = sy_stmt_step(s);
  if (rc == SY_ROW) {
    *vars = strdup(sy_stmt_column_text(s, 0));
    rc = *vars ? 0 : SY_ENOMEM;
    /* the DELETE is done once the statement has run to its end */
    if (!rc && sy_stmt_step(s) != SY_DONE) {
      free(*vars);
      rc = sy__db_error(st, "take a signal");
    }
  } else {
    rc = rc == SY_DONE ? SY_ENOTFOUND : sy__db_error(st, "take a signal");
  }
  sy_stmt_reset(s);
  return rc;
}

int sy_store_list_signals(sy_store *st, int64_t instance_id, sy_signal_cb cb,
                          void *ud) {
  sy_stmt *s = sy__stmt(st, Q_SIGNAL_LIST);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, instance_id);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (cb(ud, sy_stmt_column_text(s, 0), sy_stmt_column_text(s, 1),
           sy_stmt_column_int(s, 2))) {
      rc = SY_DONE;
      break;
    }
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "list signals");
  sy_stmt_reset(s);
  return rc;
}

int sy_store_find_live(sy_store *st, const char *var, const char *value,
                       int limit, sy_live_cb cb, void *ud) {
  sy_stmt *s = sy__stmt(st, Q_FIND_LIVE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, var);
  sy_stmt_bind_text(s, 2, value);
  sy_stmt_bind_int(s, 3, limit);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (cb(ud, sy_stmt_column_int(s, 0), sy_stmt_column_text(s, 1))) {
      rc = SY_DONE;
      break;
    }
  }
  rc = rc == SY_DONE ? 0 : sy__db_error(st, "find instances");
  sy_stmt_reset(s);
  return rc;
}
