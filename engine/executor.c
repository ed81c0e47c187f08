/* The executor: an instance's life in memory. A claimed row becomes a
 * sy_inst with its task (vars, ctx); the run queue hands it to execute,
 * which starts or resumes its step (a Lua coroutine, or a call to a
 * plugin's node); the outcome is recorded in the loop turn's transaction
 * and moves the instance on: to its next step (at once for a Lua step, in
 * the same transaction; after the commit for a node), to a sleep, to a
 * retry after its backoff, to an incident, or to its end. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* A sleep at least this long parks: the instance leaves memory and its row
 * waits for the due time; a shorter one waits on a timer. */
#define PARK_MS 1000

/* ---------------------------------------------------------------------
 * Queues and memory */

void sy__run_queue_push(sy_engine *e, sy_inst *in) {
  in->qnext = NULL;
  if (e->runq_tail) {
    e->runq_tail->qnext = in;
  } else {
    e->runq_head = in;
  }
  e->runq_tail = in;
  sy__kick(e);
}

/* The instance's next step runs now, before anything already queued. */
static void run_queue_push_front(sy_engine *e, sy_inst *in) {
  in->qnext = e->runq_head;
  e->runq_head = in;
  if (!e->runq_tail) {
    e->runq_tail = in;
  }
  sy__kick(e);
}

/* Waits for the commit of its last transition (the scheduler's check). */
void sy__commit_queue_push(sy_engine *e, sy_inst *in) {
  in->ph = PH_COMMIT;
  in->qnext = NULL;
  if (e->commitq_tail) {
    e->commitq_tail->qnext = in;
  } else {
    e->commitq_head = in;
  }
  e->commitq_tail = in;
}

static void step_ended(sy_inst *in);

static void inst_handle_closed(uv_handle_t *h) {
  sy_inst *in = h->data;
  if (--in->handles_open == 0) {
    free(in);
  }
}

void sy__inst_free(sy_inst *in) {
  sy_engine *e = in->e;
  if (in->call) {
    sy__abandon_call(in->call);
    in->call = NULL;
  }
  if (in->watched_by) { /* its step never ended here */
    sy__shadow_side(in->watched_by, SY__PRIMARY, SY_SHADOW_ABANDONED, NULL,
                    "the instance left memory before its step ended", 0);
  }
  if (in->candidate) {
    if (in->shadow_of) { /* not ended: abandoned (a stop) */
      sy__shadow_side(in->shadow_of, SY__CANDIDATE, SY_SHADOW_ABANDONED, NULL,
                      "the engine stopped first", 0);
    }
  } else {
    if (in->prev_all) {
      in->prev_all->next_all = in->next_all;
    } else {
      e->all = in->next_all;
    }
    if (in->next_all) {
      in->next_all->prev_all = in->prev_all;
    }
    e->in_memory--;
  }
  sy_plugins_free_memos(e->plugins, in->memos);
  sy__journal_free(in);
  free(in->parked_signal);
  sy_task_free(in->task);
  if (in->handles_open) {
    step_ended(in);
    uv_close((uv_handle_t *)&in->sleep_timer, inst_handle_closed);
    uv_close((uv_handle_t *)&in->timeout_timer, inst_handle_closed);
  } else {
    free(in);
  }
}

static int keep_orphan(sy_engine *e, const sy_instance_row *row) {
  sy__orphan *o = calloc(1, sizeof *o);
  if (!o || !(o->workflow = strdup(row->workflow)) ||
      (row->step && !(o->step = strdup(row->step))) ||
      !(o->error = strdup(e->errmsg))) {
    if (o) {
      free(o->workflow);
      free(o->step);
      free(o);
    }
    sy__fatal(e, SY_ENOMEM);
    return 1;
  }
  o->id = row->id;
  o->attempt = row->attempt;
  o->next = e->orphans;
  e->orphans = o;
  return 0;
}

int sy__claim_cb(void *ud, const sy_instance_row *row) {
  sy_engine *e = ud;
  const sy_workflow *wf = sy__def_by_hash(e, row->def_hash);
  sy_inst *in;
  char err[512];
  const sy_step *step;
  if (!wf) {
    return keep_orphan(e, row);
  }
  step = row->step ? sy_workflow_step(wf, row->step) : NULL;
  SY_ASSERT(step); /* rows only ever name steps of their definition */
  if (!(in = calloc(1, sizeof *in))) {
    sy__fatal(e, SY_ENOMEM);
    return 1;
  }
  in->e = e;
  in->id = row->id;
  in->wf = wf;
  in->step = step;
  in->attempt = row->attempt;
  in->run_ms = row->run_ms;
  in->reruns = row->reruns;
  in->fresh = !row->claimed;
  in->parked_wake = row->wake_at;
  if (row->wait_signal && !(in->parked_signal = strdup(row->wait_signal))) {
    free(in);
    sy__fatal(e, SY_ENOMEM);
    return 1;
  }
  if (sy_task_new(e->lua, &in->task, wf, row->id, row->vars, err, sizeof err)) {
    SY_ASSERT(!"stored vars are always a JSON object");
  }
  if (row->caught && sy_task_set_error(in->task, row->caught)) {
    SY_ASSERT(!"a stored error is always a JSON object");
  }
  sy_task_set_owner(in->task, in);
  sy_task_set_generation(in->task, row->generation);
  in->next_all = e->all;
  if (e->all) {
    e->all->prev_all = in;
  }
  e->all = in;
  e->in_memory++;
  in->ph = PH_READY;
  sy__run_queue_push(e, in);
  return 0;
}

/* ---------------------------------------------------------------------
 * Timers of an instance: its sleep and its step's timeout */

static void ensure_handles(sy_inst *in) {
  if (!in->handles_open) {
    uv_timer_init(&in->e->loop, &in->sleep_timer);
    uv_timer_init(&in->e->loop, &in->timeout_timer);
    in->sleep_timer.data = in->timeout_timer.data = in;
    in->handles_open = 2;
  }
}

static void step_ended(sy_inst *in) {
  if (in->handles_open) {
    sy__timer_stop(in->e, &in->timeout_timer);
    sy__timer_stop(in->e, &in->sleep_timer);
  }
}

/* Whole milliseconds from now until a monotonic time, rounded up. */
static uint64_t ms_until(const sy_engine *e, uint64_t when_ns) {
  uint64_t now = sy__mono(e);
  return when_ns > now ? (when_ns - now + 999999) / 1000000 : 0;
}

/* libuv times timers in whole milliseconds of a cached clock, so one may
 * fire up to a millisecond early: a sleep ends only when the monotonic
 * clock says it has lasted what was asked. */
static void sleep_cb(uv_timer_t *t) {
  sy_inst *in = t->data;
  uint64_t left = ms_until(in->e, in->sleep_until_ns);
  int rc;
  if (left) {
    sy__timer_start(in->e, &in->sleep_timer, sleep_cb, left);
    return;
  }
  /* Over: a step run again after this turn's commit does not sleep it. */
  if (in->sleep_new && (rc = sy__journal_add(in, &in->sleep))) {
    sy__fatal(in->e, rc);
    return;
  }
  in->ph = PH_RESUME;
  sy__run_queue_push(in->e, in);
}

/* The step ran out of time while parked: abandon it. */
static void time_out(sy_inst *in) {
  sy_task_result r;
  memset(&r, 0, sizeof r);
  r.status = SY_TASK_ERROR;
  snprintf(r.error, sizeof r.error, "step '%s' timed out after %gs",
           in->step->name, in->step->timeout);
  snprintf(r.code, sizeof r.code, "%s", SY_CODE_TIMEOUT);
  in->timed_out = 1;
  if (in->call) {
    sy__abandon_call(in->call);
    in->call = NULL;
  }
  sy__timer_stop(in->e, &in->sleep_timer);
  sy_task_abort(in->task);
  sy__handle_result(in, &r);
}

static void timeout_cb(uv_timer_t *t) {
  sy_inst *in = t->data;
  in->timed_out = 1;
  /* Queued to resume: sy__execute sees the flag when it dequeues it. */
  if (in->ph == PH_SLEEPING || in->ph == PH_CALL) {
    time_out(in);
  }
}

/* ---------------------------------------------------------------------
 * Running a step */

void sy__execute(sy_inst *in) {
  sy_task_result r;
  if (in->ph == PH_RESUME && in->timed_out) {
    time_out(in);
    return;
  }
  if (in->ph == PH_RESUME) {
    in->ph = PH_RUNNING;
    sy_task_resume(in->task, &r);
    sy__handle_result(in, &r);
    return;
  }
  in->ph = PH_RUNNING;
  in->timed_out = 0;
  in->step_started = in->segment_started = sy__now(in->e);
  in->step_started_ns = sy__mono(in->e);
  in->ran_before_ms = 0;
  in->resumed = 0;
  if (in->candidate) {
    /* A shadow's run: no journal, its own time limit. */
    ensure_handles(in);
    sy__timer_start(in->e, &in->timeout_timer, timeout_cb,
                    (uint64_t)(in->shadow_of->timeout * 1000.0));
    sy_task_start(in->task, in->step, in->attempt, &r);
    sy__handle_result(in, &r);
    return;
  }
  if (sy__journal_load(in)) {
    sy__fatal(in->e, SY_ESTORE);
    return;
  }
  /* A step run that parked goes on: it started when it first did, and
   * had run this long (its latest park says). */
  for (int i = in->journal.n - 1; i >= 0; i--) {
    if (in->journal.v[i].started_at) {
      in->step_started = in->journal.v[i].started_at;
      in->ran_before_ms = in->journal.v[i].ran_ms;
      in->resumed = 1;
      break;
    }
  }
  if (in->step->timeout > 0) {
    ensure_handles(in);
    sy__timer_start(in->e, &in->timeout_timer, timeout_cb,
                    (uint64_t)(in->step->timeout * 1000.0));
  }
  if (in->step->kind == SY_STEP_TASK) {
    sy_task_start(in->task, in->step, in->attempt, &r);
    sy__handle_result(in, &r);
  } else if (sy__call_node(in)) {
    sy__fatal(in->e, SY_ENOMEM);
  }
}

/* ---------------------------------------------------------------------
 * Outcomes */

static int64_t backoff_ms(const sy_step *s, int attempt) {
  double d = s->backoff_initial;
  for (int i = 1; i < attempt && d < s->backoff_max; i++) {
    d *= s->backoff_factor;
  }
  if (d > s->backoff_max) {
    d = s->backoff_max;
  }
  return (int64_t)(d * 1000.0);
}

static void emit(sy_inst *in, sy_event_type type, int64_t now,
                 const char *code) {
  sy_event ev = {.type = type,
                 .code = code,
                 .instance_id = in->id,
                 .workflow = in->wf->name,
                 .step = in->step->name,
                 .time_ms = now,
                 .run_ms = in->run_ms,
                 .reruns = in->reruns,
                 .fresh = in->fresh};
  if (sy_plugins_event(in->e->plugins, &ev, in->memos)) {
    sy__fatal(in->e, SY_EPLUGIN);
  }
}

/* An engine that lost its lease records nothing: another one took the
 * instance over, and this one lets it go. */
static void drop_taken(sy_inst *in) {
  fprintf(stderr, "switchyard: dropping instance %lld: %s\n", (long long)in->id,
          sy_store_errmsg(in->e->store));
  sy__inst_free(in);
}

/* The step run has run this long, parks before it included. */
static int64_t ran_ms(const sy_inst *in, uint64_t now_ns) {
  return in->ran_before_ms +
         (int64_t)((now_ns - in->step_started_ns) / 1000000);
}

/* The instance leaves memory until wake_at (0: no time), or until signal
 * `signal` comes (NULL: none): the journal and the row are written in this
 * turn's transaction, and a claim takes it back when it is due. */
static void park(sy_inst *in, int64_t now, int64_t wake_at,
                 const char *signal) {
  sy_engine *e = in->e;
  sy_instance_update u = {.id = in->id,
                          .workflow = in->wf->name,
                          .state = SY_STATE_WAITING,
                          .step = in->step->name,
                          .attempt = in->attempt,
                          .wake_at = wake_at,
                          .wait_signal = signal,
                          .now = now,
                          .owner = e->id};
  int rc;
  if ((rc = sy__journal_write(in))) {
    sy__fatal(e, rc);
    return;
  }
  if ((rc = sy_store_update_instance(e->store, &u)) == SY_ESTATE) {
    drop_taken(in);
    return;
  }
  if (rc) {
    sy__fatal(e, rc);
    return;
  }
  e->stats.parked++;
  e->maybe_work = 1;
  sy__inst_free(in);
}

/* A sleep parks: the journal has it (with how long the step run had run,
 * to go on counting after the park). */
static void park_sleep(sy_inst *in, int64_t now) {
  int rc;
  in->sleep.started_at = in->step_started;
  in->sleep.ran_ms = ran_ms(in, sy__mono(in->e));
  if (in->sleep_new && (rc = sy__journal_add(in, &in->sleep))) {
    sy__fatal(in->e, rc);
    return;
  }
  park(in, now, in->sleep.due_at, NULL);
}

/* A replay asked for `now` where the journal has call #seq: the step run
 * fails, naming both. */
static void fail_diverged(sy_inst *in, int seq, const char *was,
                          const char *now) {
  sy_task_result fail = {.status = SY_TASK_ERROR};
  sy__journal_diverged(in, seq, was, now);
  sy_task_abort(in->task);
  snprintf(fail.error, sizeof fail.error, "%s", in->diverged);
  sy__handle_result(in, &fail);
}

/* ctx.sleep, call #seq of the step run. A step run again from its start
 * finds its sleeps in the journal: one that is over returns at once, one
 * that is not keeps the due time it was given. A long sleep parks, unless
 * the step's timeout would end it first; a short one waits on a timer. */
static void start_sleep(sy_inst *in, const sy_task_result *r, int64_t now) {
  sy_engine *e = in->e;
  const sy_journal_entry *j = sy__journal_at(in, r->seq);
  uint64_t now_ns = sy__mono(e), due_ns;
  snprintf(in->sleep_what, sizeof in->sleep_what, "ctx.sleep(%.3f)",
           (double)r->sleep_ms / 1000);
  in->sleep =
      (sy_journal_entry){.seq = r->seq,
                         .kind = SY_JOURNAL_SLEEP,
                         .hash = sy__journal_hash("sleep", in->sleep_what),
                         .what = in->sleep_what,
                         .due_at = now + r->sleep_ms};
  in->sleep_new = !j;
  if (j && (j->kind != SY_JOURNAL_SLEEP || j->hash != in->sleep.hash)) {
    fail_diverged(in, r->seq, j->what, in->sleep_what);
    return;
  }
  if (j) {
    in->sleep.due_at = j->due_at;
  }
  due_ns =
      now_ns +
      (uint64_t)(in->sleep.due_at > now ? in->sleep.due_at - now : 0) * 1000000;
  if (in->sleep.due_at - now >= PARK_MS &&
      (in->step->timeout <= 0 ||
       due_ns < in->step_started_ns + (uint64_t)(in->step->timeout * 1e9))) {
    park_sleep(in, now);
    return;
  }
  ensure_handles(in);
  in->ph = PH_SLEEPING;
  in->sleep_until_ns = due_ns;
  /* Timers count from the loop's cached time, which may be this whole
   * turn old: refresh it so a sleep never ends early. */
  uv_update_time(&e->loop);
  sy__timer_start(e, &in->sleep_timer, sleep_cb,
                  ms_until(e, in->sleep_until_ns));
}

/* The answer of a ctx call the engine gives itself (a signal): the step
 * goes on with it, before anything else queued. */
static void answer(sy_inst *in, const char *json) {
  sy_task_call_done(in->task, json, NULL);
  in->ph = PH_RESUME;
  run_queue_push_front(in->e, in);
}

/* ctx.wait_signal, call #seq of the step run: from the journal when the
 * step is run again; else the oldest signal of that name in the inbox;
 * else nil if its timeout is over; else it parks. A step claimed back
 * from such a park keeps the deadline it parked with. */
static void start_wait(sy_inst *in, const sy_task_result *r, int64_t now) {
  const sy_journal_entry *j = sy__journal_at(in, r->seq);
  char what[300];
  char *vars = NULL;
  int64_t deadline = r->timeout_ms < 0 ? 0 : now + r->timeout_ms;
  sy_journal_entry got = {.seq = r->seq, .kind = SY_JOURNAL_SIGNAL};
  int rc;
  snprintf(what, sizeof what, "ctx.wait_signal(%s, %lld ms)", r->signal,
           (long long)r->timeout_ms);
  got.what = what;
  got.hash = sy__journal_hash("wait_signal", what);
  if (j) {
    if (j->kind != SY_JOURNAL_SIGNAL || j->hash != got.hash) {
      fail_diverged(in, r->seq, j->what, what);
      return;
    }
    answer(in, j->result ? j->result : "null");
    return;
  }
  if (in->parked_signal && strcmp(in->parked_signal, r->signal) == 0) {
    deadline = in->parked_wake; /* as it parked */
    free(in->parked_signal);
    in->parked_signal = NULL;
  }
  rc = sy_store_signal_take(in->e->store, in->id, r->signal, &vars);
  if (rc && rc != SY_ENOTFOUND) {
    sy__fatal(in->e, rc);
    return;
  }
  if (!vars && r->timeout_ms != 0 && (!deadline || deadline > now)) {
    park(in, now, deadline, r->signal);
    return;
  }
  got.result = vars; /* NULL: the timeout is over */
  if ((rc = sy__journal_add(in, &got))) {
    free(vars);
    sy__fatal(in->e, rc);
    return;
  }
  answer(in, vars ? vars : "null");
  free(vars);
}

/* Where a step run sends the instance: its next step, its end, a retry
 * after the step's backoff (while it has attempts left, for the codes it
 * retries), a handler step (catch), or an incident. Vars are kept only
 * when the step succeeded. Returns the handler, or NULL. */
static const char *plan_transition(const sy_inst *in, const sy_task_result *r,
                                   sy_instance_update *u) {
  const char *code = r->code[0] ? r->code : NULL, *handler;
  u->step = in->step->name;
  if (r->status == SY_TASK_DONE) {
    u->vars = r->vars_json;
    u->leaves_step = 1;
    if (r->next) {
      u->state = SY_STATE_RUNNING;
      u->step = r->next;
      u->attempt = 1;
    } else {
      u->state = SY_STATE_COMPLETED;
      u->step = NULL;
      u->ended = 1;
    }
    return NULL;
  }
  if (in->attempt <= in->step->retries &&
      sy_step_retries_code(in->step, code)) {
    u->state = SY_STATE_WAITING;
    u->attempt = in->attempt + 1;
    u->wake_at = u->now + backoff_ms(in->step, in->attempt);
    if (u->wake_at <= u->now) {
      u->wake_at = u->now + 1; /* strictly later: 'waiting' needs a due time */
    }
    return NULL;
  }
  if ((handler = sy_step_handler(in->step, code))) {
    /* The handler starts from the vars the failed run started with: the
     * instance leaves memory (whatever the run did to its vars there goes
     * with it), and a claim reads them back. */
    u->state = SY_STATE_READY;
    u->step = handler;
    u->attempt = 1;
    u->leaves_step = 1;
    return handler;
  }
  u->state = SY_STATE_INCIDENT;
  return NULL;
}

/* ctx.error of a handler step: the error, where it came from. */
static char *caught_json(const sy_inst *in, const sy_task_result *r) {
  json_t *j =
      json_pack("{s:o, s:s, s:s, s:i}", "code",
                r->code[0] ? json_string(r->code) : json_null(), "message",
                r->error, "step", in->step->name, "attempt", in->attempt);
  char *text = j ? json_dumps(j, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
  json_decref(j);
  return text;
}

/* The step succeeded and names a next one. A Lua step follows at once, in
 * this transaction, since nothing it does reaches outside but its ctx
 * calls, and those are held until the commit (sy__ctx_call). A node may
 * reach outside as soon as it starts: it waits for the commit. */
static void go_next(sy_inst *in, const char *next) {
  sy_engine *e = in->e;
  int64_t tx = sy_store_tx_seq(e->store);
  in->step = sy_workflow_step(in->wf, next);
  in->attempt = 1;
  in->chained = in->chained_tx == tx ? in->chained + 1 : 1;
  in->chained_tx = tx;
  /* A bounded chain, so that a loop of Lua steps cannot take every turn
   * from the other instances. */
  if (in->step->kind == SY_STEP_TASK && in->chained < SY__CHAIN_MAX) {
    in->ph = PH_READY;
    run_queue_push_front(e, in);
    return;
  }
  sy__commit_queue_push(e, in);
}

static int record_run(const sy_inst *in, const sy_task_result *r,
                      const char *outcome, const char *handler, int64_t now,
                      int64_t run_ms) {
  /* A run that never parked lasted what it ran (so that sums over the
   * history equal the totals); one that parked, until now. */
  sy_step_run_row row = {
      .instance_id = in->id,
      .step = in->step->name,
      .attempt = in->attempt,
      .started_at = in->step_started,
      .ended_at = in->resumed ? now : in->step_started + run_ms,
      .outcome = outcome,
      .error = r->status == SY_TASK_ERROR ? r->error : NULL,
      .run_ms = run_ms,
      .code = r->status == SY_TASK_ERROR && r->code[0] ? r->code : NULL,
      .handler = handler};
  return sy_store_insert_step_run(in->e->store, &row);
}

/* The step run ended (done or failed): record it and move on. */
static void end_step_run(sy_inst *in, sy_task_result *r, int64_t now,
                         uint64_t now_ns) {
  sy_engine *e = in->e;
  sy_instance_update u = {.id = in->id,
                          .workflow = in->wf->name,
                          .attempt = in->attempt,
                          .now = now,
                          .owner = e->id};
  const char *outcome = r->status == SY_TASK_DONE ? "ok"
                        : in->timed_out           ? "timeout"
                                                  : "error";
  const char *handler;
  char *caught = NULL;
  int rc;
  step_ended(in);
  e->stats.steps++;
  /* How long it ran, on the monotonic clock (the wall clock may step),
   * whole milliseconds rounded down: a run that slept 50 ms ran at least
   * 50; parked time is not running time. Should the wall clock have fallen
   * behind, the run's end and the instance's times follow what it ran, so
   * that nothing reads as having ended before its last step run did. */
  u.run_ms = ran_ms(in, now_ns);
  if (in->step_started + u.run_ms > now) {
    u.now = now = in->step_started + u.run_ms;
  }
  u.rerun = in->attempt > 1;
  in->run_ms += u.run_ms;
  in->reruns += u.rerun;
  if (in->watched_by &&
      in->step->name == in->watched_by->side[SY__PRIMARY].step &&
      in->attempt == 1) {
    /* the primary side of a shadow: this first run of its step */
    char *vars = NULL;
    if (r->status == SY_TASK_DONE &&
        !(vars = r->vars_json ? strdup(r->vars_json) : NULL)) {
      sy_task_vars_json(in->task, &vars);
    }
    sy__shadow_side(in->watched_by, SY__PRIMARY,
                    r->status == SY_TASK_DONE ? SY_SHADOW_DONE
                    : in->timed_out           ? SY_SHADOW_TIMEOUT
                                              : SY_SHADOW_ERROR,
                    vars, r->status == SY_TASK_DONE ? NULL : r->error,
                    u.run_ms);
  }
  handler = plan_transition(in, r, &u);
  if (handler && !(caught = caught_json(in, r))) {
    free(r->vars_json);
    sy__fatal(e, SY_ENOMEM);
    return;
  }
  u.caught = caught;
  /* The instance row first: the update is fenced by owner. */
  rc = sy_store_update_instance(e->store, &u);
  free(r->vars_json); /* written (SQLite copied it) or not to be */
  free(caught);
  if (rc == SY_ESTATE) {
    drop_taken(in);
    return;
  }
  if (rc || (rc = record_run(in, r, outcome, handler, now, u.run_ms)) ||
      (rc = sy__journal_end(in))) {
    sy__fatal(e, rc);
    return;
  }
  if (r->status == SY_TASK_DONE && r->next) {
    sy_task_set_error(in->task, NULL); /* the handler's error is behind */
    go_next(in, r->next);
    return;
  }
  if (r->status == SY_TASK_DONE) {
    e->stats.completed++;
    emit(in, SY_EVENT_COMPLETED, now, NULL);
  } else if (handler) {
    e->stats.caught++;
    e->maybe_work = 1;
    emit(in, SY_EVENT_CAUGHT, now, r->code[0] ? r->code : NULL);
  } else if (strcmp(u.state, SY_STATE_WAITING) == 0) {
    e->stats.retries++;
    e->maybe_work = 1;
  } else if ((rc = sy_store_insert_incident(e->store, in->id, in->step->name,
                                            r->error, now))) {
    sy__fatal(e, rc);
    return;
  } else {
    e->stats.incidents++;
    emit(in, SY_EVENT_INCIDENT, now, r->code[0] ? r->code : NULL);
  }
  sy__inst_free(in);
}

/* A shadow's candidate: it waits on its calls and sleeps (on a timer,
 * whatever their length), and its end is its side of the shadow; nothing
 * is written. */
static void candidate_result(sy_inst *in, sy_task_result *r) {
  uint64_t now_ns = sy__mono(in->e);
  sy_shadow_status st = SY_SHADOW_DONE;
  char *vars = NULL;
  if (r->status == SY_TASK_CALL) {
    in->ph = PH_CALL;
    return;
  }
  if (r->status == SY_TASK_SLEEP) {
    ensure_handles(in);
    in->ph = PH_SLEEPING;
    in->sleep_new = 0;
    in->sleep_until_ns = now_ns + (uint64_t)r->sleep_ms * 1000000;
    uv_update_time(&in->e->loop);
    sy__timer_start(in->e, &in->sleep_timer, sleep_cb,
                    ms_until(in->e, in->sleep_until_ns));
    return;
  }
  if (r->status == SY_TASK_SIGNAL) {
    sy_task_abort(in->task);
    r->status = SY_TASK_ERROR;
    snprintf(r->error, sizeof r->error,
             "ctx.wait_signal is not available in a shadow run");
  }
  step_ended(in);
  if (r->status == SY_TASK_DONE) {
    vars = r->vars_json;
    r->vars_json = NULL;
    if (!vars && sy_task_vars_json(in->task, &vars)) {
      st = SY_SHADOW_ERROR;
      snprintf(r->error, sizeof r->error, "its vars cannot be encoded");
    }
  } else {
    st = in->timed_out ? SY_SHADOW_TIMEOUT : SY_SHADOW_ERROR;
  }
  sy__shadow_side(in->shadow_of, SY__CANDIDATE, st, vars,
                  st == SY_SHADOW_DONE ? NULL : r->error, ran_ms(in, now_ns));
  sy__inst_free(in);
}

void sy__handle_result(sy_inst *in, sy_task_result *r) {
  sy_engine *e = in->e;
  int64_t now = sy__now(e);
  uint64_t now_ns = sy__mono(in->e);
  int rc;
  if (e->fatal) {
    free(r->vars_json);
    return;
  }
  if (in->candidate) {
    candidate_result(in, r);
    return;
  }
  /* A change is pending: the loop must not block in poll before the check
   * phase commits it. */
  sy__kick(e);
  if ((rc = sy_store_begin(e->store))) {
    free(r->vars_json);
    sy__fatal(e, rc);
    return;
  }
  if (in->diverged && r->status != SY_TASK_ERROR) {
    /* A replay asked for something else: whatever the step did with the
     * error it got (pcall), its run fails, and the retry starts afresh. */
    free(r->vars_json);
    sy_task_abort(in->task);
    memset(r, 0, sizeof *r);
    r->status = SY_TASK_ERROR;
  }
  if (in->diverged) {
    snprintf(r->error, sizeof r->error, "%s", in->diverged);
    r->code[0] = '\0';
  }
  if (r->status == SY_TASK_CALL) {
    in->ph = PH_CALL;
  } else if (r->status == SY_TASK_SLEEP) {
    start_sleep(in, r, now);
  } else if (r->status == SY_TASK_SIGNAL) {
    start_wait(in, r, now);
  } else {
    end_step_run(in, r, now, now_ns);
  }
}
