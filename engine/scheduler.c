/* The scheduler: the libuv loop of an engine. It claims runnable
 * instances from the database in batches (up to the concurrency), runs a
 * batch of the run queue per turn, commits the turn's transaction in the
 * check phase and then releases what waited for that commit, renews its
 * leases, and winds down on SIGINT/SIGTERM, handing back at once what it
 * held. Nothing here knows what a step does (executor.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

#define POLL_MS 200           /* how often to look for work others add */
#define BREATHE_EVERY_MS 50   /* a busy engine lets other writers in ... */
#define BREATHE_MS 2          /* ... for this long (rollout set, start) */
#define EXPIRED_EVERY_MS 1000 /* how often to look for expired leases */

static void idle_cb(uv_idle_t *h);

/* ---------------------------------------------------------------------
 * Timers of the engine's time, and virtual time */

typedef struct sy__vtimer {
  uv_timer_t *timer;
  uv_timer_cb cb;
  uint64_t due_ns; /* on sy__mono */
  struct sy__vtimer *next;
} sy__vtimer;

void sy__timer_stop(sy_engine *e, uv_timer_t *t) {
  uv_timer_stop(t);
  for (sy__vtimer **p = &e->vtimers; *p; p = &(*p)->next) {
    if ((*p)->timer == t) {
      sy__vtimer *v = *p;
      *p = v->next;
      free(v);
      return;
    }
  }
}

/* The timer runs on the host's clock as any other; on virtual time it is
 * also listed, so that the clock can jump to it. Listing it needs memory:
 * without, it still fires, only in real time. */
void sy__timer_start(sy_engine *e, uv_timer_t *t, uv_timer_cb cb, uint64_t ms) {
  sy__timer_stop(e, t);
  uv_timer_start(t, cb, ms, 0);
  if (e->virtual_clock) {
    sy__vtimer *v = malloc(sizeof *v);
    if (v) {
      *v = (sy__vtimer){t, cb, sy__mono(e) + ms * 1000000, e->vtimers};
      e->vtimers = v;
    }
  }
}

static void vtimers_free(sy_engine *e) {
  while (e->vtimers) {
    sy__vtimer *v = e->vtimers;
    e->vtimers = v->next;
    free(v);
  }
}

/* The engine waits on nothing but time: no step to run, no real call in
 * flight, no turn to commit. On virtual time, the clock jumps to the
 * earliest of its timers and of the database's next due instance, and
 * what is due then fires now. */
static void jump(sy_engine *e) {
  uint64_t now = sy__mono(e), to = UINT64_MAX;
  int64_t wake = 0;
  sy__vtimer **p;
  if (!e->virtual_clock || e->stopping || e->fatal || e->runq_head ||
      e->commitq_head || e->held_head) {
    return;
  }
  /* A call in flight that a test's hook answers later is a timer too;
   * any other is real work to wait for. */
  for (sy_call *c = e->live_calls; c; c = c->next_live) {
    if (!c->later) {
      return;
    }
  }
  for (sy__vtimer *v = e->vtimers; v; v = v->next) {
    to = v->due_ns < to ? v->due_ns : to;
  }
  if (sy_store_next_wake(e->store, &wake)) {
    sy__fatal(e, SY_ESTORE);
    return;
  }
  if (wake) {
    int64_t ms = wake - sy__now(e);
    uint64_t at = now + (uint64_t)(ms > 0 ? ms : 0) * 1000000;
    to = at < to ? at : to;
  }
  if (to == UINT64_MAX) {
    return;
  }
  if (to > now) {
    e->virtual_ns += to - now;
  }
  if (wake && wake <= sy__now(e)) {
    e->maybe_work = 1;
    uv_idle_start(&e->idle, idle_cb);
  }
  for (p = &e->vtimers; *p;) {
    sy__vtimer *v = *p;
    if (v->due_ns <= to) {
      *p = v->next;
      uv_timer_start(v->timer, v->cb, 0, 0);
      free(v);
    } else {
      p = &v->next;
    }
  }
}

static void close_cb(uv_handle_t *h) {
  (void)h;
}

static void close_handles(sy_engine *e) {
  if (!e->handles_init) {
    return;
  }
  e->handles_init = 0;
  sy__timer_stop(e, &e->wake_timer);
  sy__timer_stop(e, &e->stop_timer);
  vtimers_free(e);
  uv_close((uv_handle_t *)&e->idle, close_cb);
  uv_close((uv_handle_t *)&e->check, close_cb);
  uv_close((uv_handle_t *)&e->wake_timer, close_cb);
  uv_close((uv_handle_t *)&e->poll_timer, close_cb);
  uv_close((uv_handle_t *)&e->lease_timer, close_cb);
  uv_close((uv_handle_t *)&e->breathe_timer, close_cb);
  uv_close((uv_handle_t *)&e->stop_timer, close_cb);
  uv_close((uv_handle_t *)&e->sigint, close_cb);
  uv_close((uv_handle_t *)&e->sigterm, close_cb);
  if (e->notices_on) {
    e->notices_on = 0;
    uv_close((uv_handle_t *)&e->notices, close_cb);
  }
}

void sy__kick(sy_engine *e) {
  if (e->handles_init) {
    uv_idle_start(&e->idle, idle_cb);
  }
}

void sy_engine_stop(sy_engine *e) {
  e->stopping = 1;
  sy__kick(e); /* get a turn to wind down */
}

void sy_engine_stop_after(sy_engine *e, uint64_t ms) {
  e->stop_after_ms = ms;
}

static void stop_cb(uv_timer_t *t) {
  sy_engine_stop(t->data);
}

static void signal_cb(uv_signal_t *s, int signum) {
  sy_engine *e = s->data;
  fprintf(stderr,
          "switchyard: %s received, stopping (in-flight steps will "
          "re-run on the next start)\n",
          signum == SIGINT ? "SIGINT" : "SIGTERM");
  sy_engine_stop(e);
}

/* Claim in batches: one claim of many rows costs about what a claim of
 * one does, so wait until a quarter of the slots are free (or none is
 * taken). */
static int can_claim(const sy_engine *e) {
  int want = e->o.concurrency - e->in_memory;
  return e->maybe_work && !e->stopping && want > 0 &&
         (e->in_memory == 0 || want >= e->o.concurrency / 4);
}

/* Writes the incidents of the orphans a claim found (all of them freed,
 * also when the engine has failed); returns how many there were. */
static int settle_orphans(sy_engine *e, int64_t now) {
  int n = 0;
  while (e->orphans) {
    sy__orphan *o = e->orphans;
    sy_instance_update u = {.id = o->id,
                            .workflow = o->workflow,
                            .state = SY_STATE_INCIDENT,
                            .step = o->step,
                            .attempt = o->attempt,
                            .now = now,
                            .owner = e->id};
    e->orphans = o->next;
    if (!e->fatal &&
        (sy_store_update_instance(e->store, &u) ||
         sy_store_insert_incident(e->store, o->id, o->step ? o->step : "?",
                                  o->error, now))) {
      sy__fatal(e, SY_ESTORE);
    }
    free(o->workflow);
    free(o->step);
    free(o->error);
    free(o);
    n++;
  }
  return n;
}

static void claim(sy_engine *e) {
  int want = e->o.concurrency - e->in_memory;
  int before = e->in_memory;
  int rc, orphans;
  if (!can_claim(e)) {
    return;
  }
  int64_t now = sy__now(e);
  /* Finding expired leases reads every running row (ours included): once
   * a second is soon enough for leases that last LEASE_MS. */
  uint64_t mono = sy_mono_ns();
  int expired = mono - e->expired_checked >= EXPIRED_EVERY_MS * 1000000ull;
  if (expired) {
    e->expired_checked = mono;
  }
  rc = sy_store_claim(e->store, e->id, now + SY_ENGINE_LEASE_MS, now, want,
                      expired, sy__claim_cb, e);
  if (rc) {
    sy__fatal(e, rc);
  }
  orphans = settle_orphans(e, now);
  if (rc) {
    return;
  }
  if (e->in_memory - before + orphans < want) {
    e->maybe_work = 0;
  }
}

/* A timer says the database may hold work: the next due instance, the
 * periodic look for what other processes added, or the end of a pause. */
static void wake_cb(uv_timer_t *t) {
  sy_engine *e = t->data;
  e->maybe_work = 1;
  uv_idle_start(&e->idle, idle_cb);
}

/* Another process announced work or a change (a database server's
 * NOTIFY): look now rather than at the next periodic look. A failed
 * socket stops the watch; the next statement says what failed. */
static void notices_cb(uv_poll_t *p, int status, int events) {
  sy_engine *e = p->data;
  (void)events;
  if (status < 0) {
    uv_poll_stop(p);
    return;
  }
  if (sy_store_notified(e->store, 1) > 0) {
    e->maybe_work = 1;
    uv_idle_start(&e->idle, idle_cb);
  }
}

/* Nothing runs in memory and nothing is claimable now: arm the wake timer
 * for the next due instance, or finish when running until idle. */
static void settle(sy_engine *e) {
  int64_t wake = 0, active = 0;
  int rc;
  if ((rc = sy_store_next_wake(e->store, &wake))) {
    sy__fatal(e, rc);
    return;
  }
  if (wake) {
    int64_t now = sy__now(e);
    sy__timer_start(e, &e->wake_timer, wake_cb,
                    (uint64_t)(wake > now ? wake - now : 0));
    return;
  }
  if (e->until_idle) {
    if ((rc = sy_store_count_active(e->store, &active))) {
      sy__fatal(e, rc);
      return;
    }
    if (active == 0) {
      sy_engine_stop(e);
    }
  }
}

static void idle_cb(uv_idle_t *h) {
  sy_engine *e = h->data;
  int n = 0;
  if (e->stopping) {
    return; /* the check handle winds down, right after this turn's poll */
  }
  claim(e);
  while (e->runq_head && n < SY__BATCH && !e->fatal) {
    sy_inst *in = e->runq_head;
    e->runq_head = in->qnext;
    if (!e->runq_head) {
      e->runq_tail = NULL;
    }
    sy__execute(in);
    n++;
  }
}

/* Abandons everything in memory; the rows stay re-runnable. */
static void wind_down(sy_engine *e) {
  int64_t n;
  while (e->all) {
    sy__inst_free(e->all);
  }
  sy__shadow_abandon_all(e);
  e->runq_head = e->runq_tail = NULL;
  e->commitq_head = e->commitq_tail = NULL;
  if (!e->fatal) {
    /* Our instances go back to ready (or waiting, if asleep) at once,
     * rather than when our leases expire. */
    if (sy_store_begin(e->store) ||
        sy_store_release(e->store, e->id, sy__now(e), &n) ||
        sy_store_engine_delete(e->store, e->id) || sy_store_commit(e->store)) {
      sy__fatal(e, SY_ESTORE);
    }
  } else {
    sy_engine_rollback(e);
  }
  close_handles(e);
}

static void check_cb(uv_check_t *h) {
  sy_engine *e = h->data;
  int rc;
  if (!e->fatal && sy_store_in_tx(e->store)) {
    if ((rc = sy__journal_flush(e))) {
      sy__fatal(e, rc);
      sy_engine_rollback(e);
    } else if (sy_plugins_before_commit(e->plugins)) {
      sy__fatal(e, SY_EPLUGIN);
      sy_engine_rollback(e);
    } else if ((rc = sy_store_commit(e->store))) {
      sy__fatal(e, rc);
    }
  }
  if (e->stopping || e->fatal) {
    wind_down(e);
    return;
  }
  /* Announcements that came with the turn's replies. */
  if (sy_store_notified(e->store, 0) > 0) {
    e->maybe_work = 1;
  }
  /* The commit made the queued transitions durable: go on with them. */
  while (e->commitq_head) {
    sy_inst *in = e->commitq_head;
    e->commitq_head = in->qnext;
    in->ph = PH_READY;
    sy__run_queue_push(e, in);
  }
  e->commitq_tail = NULL;
  sy__issue_held(e);
  if (e->runq_head || can_claim(e)) {
    /* Back-to-back transactions would starve other writers (a rollout
     * kill must not wait seconds): now and then, pause without the lock,
     * unless such a writer is let in anyway: on a server, a command
     * waiting for the lock is queued ahead of the engine's next turn. */
    uint64_t now = sy_mono_ns();
    if (!sy_store_writes_shared(e->store) &&
        now - e->last_breath >= BREATHE_EVERY_MS * 1000000ull) {
      e->last_breath = now;
      uv_idle_stop(&e->idle);
      uv_timer_start(&e->breathe_timer, wake_cb, BREATHE_MS, 0);
      return;
    }
    uv_idle_start(&e->idle, idle_cb);
    return;
  }
  /* Nothing to do until a timer or I/O: let poll block. */
  uv_idle_stop(&e->idle);
  if (e->in_memory == 0 && !e->shadows) {
    settle(e);
  }
  jump(e);
}

/* An engine on this host whose process is gone: release what it held now
 * instead of when its leases expire (a restart after kill -9). */
static int reap_dead(void *ud, const char *id, int64_t pid) {
  sy_engine *e = ud;
  int64_t n;
  int rc;
  /* Gone: no such process, or our own pid under another identity (a
   * restart that got the dead engine's pid, as PID 1 in a container). */
  if (strcmp(id, e->id) == 0 || pid <= 0 ||
      (pid != (int64_t)uv_os_getpid() && uv_kill((int)pid, 0) != UV_ESRCH)) {
    return 0;
  }
  if ((rc = sy_store_release(e->store, id, sy__now(e), &n)) ||
      (rc = sy_store_engine_delete(e->store, id))) {
    return rc;
  }
  return 0;
}

static void lease_cb(uv_timer_t *t) {
  sy_engine *e = t->data;
  int64_t now;
  int rc;
  if ((rc = sy__sync_clock(e))) {
    sy__fatal(e, rc);
    return;
  }
  now = sy__now(e);
  if ((rc = sy_store_begin(e->store)) ||
      (rc = sy_store_renew(e->store, e->id, now + SY_ENGINE_LEASE_MS, now))) {
    sy__fatal(e, rc);
    return;
  }
  uv_idle_start(&e->idle, idle_cb); /* committed in this turn's check */
}

int sy_engine_run(sy_engine *e, int until_idle) {
  uint64_t poll;
  int rc;
  e->until_idle = until_idle;
  e->stopping = 0;
  e->maybe_work = 1;
  sy_store_share_writes(e->store, 1);
  /* Recovery: register, and take back at once what dead engines on this
   * host held; other engines' work is claimed when their leases expire. */
  if ((rc = sy_store_begin(e->store)) ||
      (rc = sy_store_engine_register(e->store, e->id, e->host, uv_os_getpid(),
                                     sy__now(e))) ||
      (rc = sy_store_engines_on_host(e->store, e->host, reap_dead, e)) ||
      (rc = sy_store_commit(e->store))) {
    sy_engine_rollback(e);
    sy_store_share_writes(e->store, 0);
    return sy__set_error(e, rc, "recovery: %s", sy_store_errmsg(e->store));
  }
  uv_idle_init(&e->loop, &e->idle);
  uv_check_init(&e->loop, &e->check);
  uv_timer_init(&e->loop, &e->wake_timer);
  uv_timer_init(&e->loop, &e->poll_timer);
  uv_signal_init(&e->loop, &e->sigint);
  uv_signal_init(&e->loop, &e->sigterm);
  uv_timer_init(&e->loop, &e->lease_timer);
  uv_timer_init(&e->loop, &e->breathe_timer);
  uv_timer_init(&e->loop, &e->stop_timer);
  e->idle.data = e->check.data = e->wake_timer.data = e->poll_timer.data =
      e->sigint.data = e->sigterm.data = e->lease_timer.data =
          e->breathe_timer.data = e->stop_timer.data = e;
  e->handles_init = 1;
  uv_signal_start(&e->sigint, signal_cb, SIGINT);
  uv_signal_start(&e->sigterm, signal_cb, SIGTERM);
  uv_check_start(&e->check, check_cb);
  poll = e->poll_ms > 0 ? (uint64_t)e->poll_ms : POLL_MS;
  uv_timer_start(&e->poll_timer, wake_cb, poll, poll);
  uv_timer_start(&e->lease_timer, lease_cb, SY_ENGINE_LEASE_MS / 3,
                 SY_ENGINE_LEASE_MS / 3);
  if (e->stop_after_ms) {
    sy__timer_start(e, &e->stop_timer, stop_cb, e->stop_after_ms);
    e->stop_after_ms = 0;
  }
  if (sy_store_socket(e->store) >= 0 &&
      uv_poll_init_socket(&e->loop, &e->notices, sy_store_socket(e->store)) ==
          0) {
    e->notices.data = e;
    e->notices_on = 1;
    uv_poll_start(&e->notices, UV_READABLE, notices_cb);
  }
  uv_idle_start(&e->idle, idle_cb);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  /* Abandoned plugin calls may still be completing: let them. */
  while (e->live_calls && uv_run(&e->loop, UV_RUN_ONCE)) {
  }
  sy_store_share_writes(e->store, 0);
  return e->fatal;
}
