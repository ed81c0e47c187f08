/* Signals from the command line: `switchyard signal NAME` queues one in the
 * inbox of an instance (named, or found by one of its vars) in one
 * transaction, and makes the instance due at once if it is parked waiting
 * for that name. A signal sent before the instance waits is kept until it
 * does; ctx.wait_signal takes the oldest (executor.c). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

typedef struct targets {
  int64_t *ids;
  int n, cap;
  int ended; /* for --instance: the instance has ended */
  char state[16];
} targets;

static int add_target(void *ud, int64_t id, const char *state) {
  targets *t = ud;
  if (t->n == t->cap) {
    int cap = t->cap ? t->cap * 2 : 8;
    int64_t *ids = realloc(t->ids, (size_t)cap * sizeof *ids);
    if (!ids) {
      return SY_ENOMEM;
    }
    t->ids = ids;
    t->cap = cap;
  }
  t->ids[t->n++] = id;
  snprintf(t->state, sizeof t->state, "%s", state);
  return 0;
}

static int one_instance(void *ud, const sy_instance_row *r) {
  targets *t = ud;
  t->ended = strcmp(r->state, SY_STATE_COMPLETED) == 0 ||
             strcmp(r->state, SY_STATE_CANCELLED) == 0;
  add_target(t, r->id, r->state);
  return 1;
}

/* The instances the signal goes to: one named, or those the var matches
 * (exactly one unless all). */
static int find_targets(sy_engine *e, const sy_signal_target *to, targets *t) {
  sy_store *st = e->store;
  int found = 0, rc;
  if (!to->var) {
    if ((rc = sy_store_get_instance(st, to->instance, one_instance, t,
                                    &found))) {
      return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
    }
    if (!found) {
      return sy__set_error(e, SY_ENOTFOUND, "no instance %lld",
                           (long long)to->instance);
    }
    if (t->n != 1) {
      return sy__set_error(e, SY_ENOMEM, "out of memory");
    }
    if (t->ended) {
      return sy__set_error(e, SY_ESTATE,
                           "instance %lld is %s: a signal could never be "
                           "taken",
                           (long long)to->instance, t->state);
    }
    return 0;
  }
  if ((rc = sy_store_find_live(st, to->var, to->value, to->all ? INT_MAX : 2,
                               add_target, t))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if (t->n == 0) {
    return sy__set_error(e, SY_ENOTFOUND,
                         "no live instance has %s = '%s' (--where)", to->var,
                         to->value);
  }
  if (t->n > 1 && !to->all) {
    return sy__set_error(e, SY_EINVAL,
                         "more than one live instance has %s = '%s' "
                         "(instances %lld, %lld, ...): name one with "
                         "--instance, or send to them all with --all",
                         to->var, to->value, (long long)t->ids[0],
                         (long long)t->ids[1]);
  }
  return 0;
}

int sy_engine_signal(sy_engine *e, const sy_signal_target *to, const char *name,
                     const char *vars, int *sent, int *woke) {
  sy_store *st = e->store;
  targets t = {0};
  int64_t now = sy__now(e);
  int rc, w;
  *sent = *woke = 0;
  if ((rc = sy_store_begin(st))) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if ((rc = find_targets(e, to, &t))) {
    goto fail;
  }
  for (int i = 0; i < t.n; i++) {
    if ((rc = sy_store_signal_send(st, t.ids[i], name, vars, now, &w))) {
      sy__set_error(e, rc, "%s", sy_store_errmsg(st));
      goto fail;
    }
    *woke += w;
  }
  if ((rc = sy_store_commit(st))) {
    sy__set_error(e, rc, "%s", sy_store_errmsg(st));
    goto fail;
  }
  *sent = t.n;
  free(t.ids);
  return 0;
fail:
  sy_engine_rollback(e);
  free(t.ids);
  return rc;
}
