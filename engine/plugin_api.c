/* The plugin API: the sy_api table of services plugins call, and plugin
 * calls (a node's execution, or a ctx.<fn> call from a step).
 *
 * One protocol for every call: sy__invoke hands it to the plugin, which
 * completes it exactly once through api_done/done_json/fail, before its
 * callback returns or later. A completion that arrives while the plugin is
 * still being invoked is delivered right after the plugin returns, so the
 * engine never re-enters itself from inside a plugin; one that arrives for
 * an instance that left memory (a timeout, a shutdown) only frees the
 * call. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* ---------------------------------------------------------------------
 * Services (sy_api) */

static sy_stmt *api_prepare(sy_engine *e, const sy_sql *q) {
  return sy_store_prepare(e->store, q);
}
static int api_exec(sy_engine *e, const sy_sql *script) {
  return sy_store_exec_script(e->store, script);
}
static const char *api_errmsg(sy_engine *e) {
  return sy_store_errmsg(e->store);
}
static int api_begin(sy_engine *e, int write) {
  return sy_store_begin_as(e->store, write);
}
static int api_commit(sy_engine *e) {
  return sy_store_commit(e->store);
}
static void api_rollback(sy_engine *e) {
  sy_store_rollback(e->store);
}
static int64_t api_data_version(sy_engine *e) {
  int64_t v;
  int rc = sy_store_data_version(e->store, &v);
  return rc ? rc : v;
}
static int64_t api_tx_begin(sy_engine *e) {
  int rc = sy_store_begin(e->store);
  if (rc) {
    return rc;
  }
  sy__kick(e); /* the turn's check phase commits it: make it come */
  return sy_store_tx_seq(e->store);
}
static int api_retry_selected(sy_engine *e, void *plugin,
                              const char *const *values, int64_t *n) {
  return sy__retry_selected(e, plugin, values, n);
}
static uv_loop_t *api_loop(sy_engine *e) {
  return &e->loop;
}
static int64_t api_now_ms(sy_engine *e) {
  return sy__now(e);
}
static const char *api_setting(sy_engine *e, const char *key) {
  for (int i = 0; i < e->o.nsettings; i++) {
    if (strcmp(e->o.settings[i].key, key) == 0) {
      return e->o.settings[i].value;
    }
  }
  return NULL;
}
__attribute__((format(printf, 2, 3))) static void api_log(sy_engine *e,
                                                          const char *fmt,
                                                          ...) {
  va_list ap;
  (void)e;
  va_start(ap, fmt);
  fputs("switchyard: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}
static const char *api_engine_id(sy_engine *e) {
  return e->id;
}
static sy_engine *api_engine(sy_call *c) {
  return c->e;
}
static int64_t api_instance_id(sy_call *c) {
  return c->inst ? c->inst->id : 0;
}
static const char *api_workflow(sy_call *c) {
  return c->inst ? c->inst->wf->name : NULL;
}
static const char *api_step(sy_call *c) {
  return c->inst ? c->inst->step->name : NULL;
}
static int api_attempt(sy_call *c) {
  return c->inst ? c->inst->attempt : 0;
}
static const char *api_idempotency_key(sy_call *c) {
  if (!c->inst) {
    return "";
  }
  return sy_task_idempotency_key(c->inst->task, c->fn ? c->seq : 1, c->key,
                                 sizeof c->key);
}
static void *api_node_data(sy_call *c) {
  return c->inst && c->node ? c->inst->step->node_data : NULL;
}
static uint64_t api_random(sy_call *c) {
  return sy__random(c->e);
}
static void api_totals(sy_call *c, int64_t now_ms, int64_t *run_ms,
                       int64_t *reruns) {
  sy_inst *in = c->inst;
  *run_ms = *reruns = 0;
  if (in) {
    *run_ms = in->run_ms + in->ran_before_ms + (now_ms - in->segment_started);
    *reruns = in->reruns + (in->attempt > 1);
  }
}

static int api_fresh(sy_call *c) {
  return c->inst ? c->inst->fresh : 0;
}

static void **api_memo(sy_call *c) {
  sy_inst *in = c->inst;
  const sy_loaded_plugin *lp = c->node ? c->node->plugin : c->fn->plugin;
  if (!in || !lp->def->free_memo) {
    return NULL; /* a memo nothing could free would leak */
  }
  if (!in->memos &&
      !(in->memos = calloc((size_t)sy_plugins_count(in->e->plugins),
                           sizeof *in->memos))) {
    return NULL;
  }
  return &in->memos[lp->index];
}

static int api_var_get(sy_call *c, const char *key, sy_value *out) {
  if (!c->inst) {
    return SY_ESTATE;
  }
  return sy_task_var_get(c->inst->task, key, out);
}
static int api_var_set_json(sy_call *c, const char *key, const char *json) {
  if (!c->inst) {
    return SY_ESTATE;
  }
  return sy_task_var_set_json(c->inst->task, key, json);
}
static int api_call_predicate(sy_call *c, const char *option, int *out) {
  char err[512];
  int rc;
  if (!c->inst) {
    free(c->error);
    c->error = strdup("the call has outlived its instance");
    return SY_ESTATE;
  }
  if ((rc = sy_task_predicate(c->inst->task, c->inst->step, option, out, err,
                              sizeof err))) {
    free(c->error);
    c->error = strdup(err);
    return rc;
  }
  return 0;
}
static const char *api_call_error(sy_call *c) {
  return c->error ? c->error : "";
}
static int api_opt_get(sy_opts *o, const char *key, sy_value *out) {
  return sy_opts_get(o, key, out);
}
static const char *api_opt_unknown(sy_opts *o, const char *path,
                                   const char *const *allowed) {
  return sy_opts_unknown(o, path, allowed);
}

/* ---------------------------------------------------------------------
 * Calls */

static void call_unlink(sy_engine *e, sy_call *c) {
  if (c->prev_live) {
    c->prev_live->next_live = c->next_live;
  } else {
    e->live_calls = c->next_live;
  }
  if (c->next_live) {
    c->next_live->prev_live = c->prev_live;
  }
}

static void call_free(sy_call *c) {
  if (c->shadow_done) {
    sy__shadow_never_ran(c, "the node's call was abandoned");
  }
  free(c->shadow_compare);
  call_unlink(c->e, c);
  free(c->what);
  free(c->held_args);
  free(c->next);
  free(c->error);
  free(c);
}

static sy_call *call_new(sy_engine *e, sy_inst *in) {
  sy_call *c = calloc(1, sizeof *c);
  if (!c) {
    return NULL;
  }
  c->e = e;
  c->inst = in;
  c->next_live = e->live_calls;
  if (e->live_calls) {
    e->live_calls->prev_live = c;
  }
  e->live_calls = c;
  in->call = c;
  return c;
}

/* A ctx call's answer goes into the step run's journal, so that the step,
 * run again, gets it without calling again. One that does not fit fails
 * the call instead. */
static const sy_journal_entry *journal_answer(sy_call *c) {
  sy_inst *in = c->inst;
  char err[512];
  const sy_journal_entry *got;
  sy_journal_entry j = {.seq = c->seq,
                        .kind = SY_JOURNAL_CALL,
                        .hash = c->hash,
                        .what = c->what,
                        .result = c->error ? NULL : c->next,
                        .error = c->error};
  if (!sy__journal_fits(in, &j, err, sizeof err)) {
    free(c->next);
    free(c->error);
    j.result = NULL;
    j.error = strdup(err);
  } else if (c->error) {
    free(c->next);
  }
  /* The strings go to the journal as they are: most entries are never
   * written (the step ends in the turn), and copying each would cost. */
  c->what = c->next = c->error = NULL;
  if (!(got = sy__journal_adopt(in, &j))) {
    sy__fatal(in->e, SY_ENOMEM);
  }
  return got;
}

/* Hands the outcome of a completed call to its instance. A ctx call's
 * result goes to the step's coroutine, which goes on where it stopped: at
 * once if it had not yielded yet (the plugin answered within the call),
 * else when the run queue reaches it. A node's ends its step. */
static void deliver(sy_call *c) {
  sy_inst *in = c->inst;
  sy_task_result r;
  in->call = NULL;
  if (c->fn && in->candidate) { /* a shadow's: journaled nowhere */
    sy_task_call_done(in->task, c->error ? NULL : c->next, c->error);
    call_free(c);
    if (in->ph == PH_CALL) {
      in->ph = PH_RESUME;
      sy__run_queue_push(in->e, in);
    }
    return;
  }
  if (c->fn) {
    const sy_journal_entry *j = journal_answer(c);
    sy_task_call_done(in->task, j ? j->result : NULL,
                      j ? j->error : "out of memory");
    call_free(c);
    if (in->ph == PH_CALL) {
      in->ph = PH_RESUME;
      sy__run_queue_push(in->e, in);
    }
    return;
  }
  if (c->error) {
    memset(&r, 0, sizeof r);
    r.status = SY_TASK_ERROR;
    snprintf(r.error, sizeof r.error, "%s", c->error);
  } else {
    sy_task_finish_node(in->task, in->step, c->next, &r);
  }
  if (c->shadow_done) {
    sy__shadow_begin(in, c, &r);
  }
  call_free(c);
  sy__handle_result(in, &r);
}

/* A call finished (sy_api.done, done_json or fail). */
static void complete(sy_call *c) {
  SY_ASSERT(!c->completed);
  c->completed = 1;
  if (!c->inst) {
    call_free(c); /* abandoned: nobody waits for it */
  } else if (!c->in_invoke) {
    deliver(c);
  }
}

void sy_engine_set_call_hook(sy_engine *e, sy_call_hook hook, void *ud) {
  e->call_hook = hook;
  e->call_hook_ud = ud;
}

static void later_closed(uv_handle_t *h) {
  free(h);
}

/* A hook's answer that was to come later: it comes now (its time has
 * come, or its step gave up on it). */
static void answer_now(sy_call *c) {
  sy__timer_stop(c->e, c->later);
  uv_close((uv_handle_t *)c->later, later_closed);
  c->later = NULL;
  complete(c);
}

static void later_cb(uv_timer_t *t) {
  answer_now(t->data);
}

/* The test's hook answered or failed the ctx call: it completes as if its
 * plugin had, now or on a timer. The engine's own functions (ctx.now)
 * reach nothing outside and are not the hook's. */
static int hooked(sy_call *c, const char *args_json) {
  sy_inst *in = c->inst;
  sy_call_info info = {.instance = in->id,
                       .workflow = in->wf->name,
                       .step = in->step->name,
                       .attempt = in->attempt,
                       .seq = c->seq,
                       .fn = c->fn->fn->name,
                       .args = args_json ? args_json : "null"};
  char *out = NULL;
  uint64_t after_ms = 0;
  switch (c->e->call_hook(c->e->call_hook_ud, &info, &out, &after_ms)) {
    case SY_CALL_ANSWER:
      c->next = out ? out : strdup("null");
      break;
    case SY_CALL_FAIL:
      free(c->error);
      c->error = out ? out : strdup("failed by the test");
      break;
    default:
      free(out);
      return 0;
  }
  if (after_ms && (c->later = malloc(sizeof *c->later))) {
    uv_timer_init(&c->e->loop, c->later);
    c->later->data = c;
    sy__timer_start(c->e, c->later, later_cb, after_ms);
    return 1;
  }
  complete(c);
  return 1;
}

/* Hands a call to its plugin: a node's execute, or a ctx function with
 * its arguments (unless a test's hook takes it). */
static void invoke(sy_call *c, const char *args_json) {
  c->in_invoke = 1;
  if (c->node) {
    c->node->type->execute(c->node->plugin->state, c);
  } else if (!c->e->call_hook || c->fn->plugin->def == &sy__builtins ||
             !hooked(c, args_json)) {
    c->fn->fn->call(c->fn->plugin->state, c, args_json);
  }
  c->in_invoke = 0;
  if (c->completed) {
    if (c->inst) {
      deliver(c);
    } else {
      call_free(c);
    }
  }
}

static int api_shadow(sy_call *c, const char *step, double timeout_s,
                      const char *compare, sy_shadow_done done, void *ud) {
  const sy_step *s;
  if (!c->node || !c->inst || c->completed || c->shadow_done || !done ||
      !(timeout_s > 0) || !(s = sy_workflow_step(c->inst->wf, step)) ||
      s->kind != SY_STEP_TASK) {
    return SY_EINVAL;
  }
  if (!c->e->shadows_max) {
    const char *v = api_setting(c->e, "shadow.max_in_flight");
    long n = v ? strtol(v, NULL, 10) : 0;
    c->e->shadows_max = n > 0 && n <= 1000000 ? (int)n : SY__SHADOWS_MAX;
  }
  if (c->e->shadows_asked >= c->e->shadows_max) {
    return SY_EBUSY;
  }
  if (compare && !(c->shadow_compare = strdup(compare))) {
    return SY_ENOMEM;
  }
  c->e->shadows_asked++;
  c->shadow_step = s;
  c->shadow_node = c->inst->step;
  c->shadow_instance = c->inst->id;
  c->shadow_wf = c->inst->wf;
  c->shadow_timeout = timeout_s;
  c->shadow_done = done;
  c->shadow_ud = ud;
  return 0;
}

static void api_done(sy_call *c, const char *next) {
  c->next = next ? strdup(next) : NULL;
  complete(c);
}

static void api_done_json(sy_call *c, const char *json) {
  c->next = strdup(json ? json : "null");
  complete(c);
}

static void api_fail(sy_call *c, const char *message) {
  free(c->error);
  c->error = strdup(message && *message ? message : "plugin call failed");
  complete(c);
}

void sy__api_init(sy_api *a) {
  *a = (sy_api){
      .abi = SY_PLUGIN_ABI,
      .prepare = api_prepare,
      .exec = api_exec,
      .errmsg = api_errmsg,
      .begin = api_begin,
      .commit = api_commit,
      .rollback = api_rollback,
      .data_version = api_data_version,
      .tx_begin = api_tx_begin,
      .retry_selected = api_retry_selected,
      .loop = api_loop,
      .now_ms = api_now_ms,
      .setting = api_setting,
      .log = api_log,
      .engine_id = api_engine_id,
      .engine = api_engine,
      .instance_id = api_instance_id,
      .workflow = api_workflow,
      .step = api_step,
      .attempt = api_attempt,
      .node_data = api_node_data,
      .idempotency_key = api_idempotency_key,
      .random = api_random,
      .totals = api_totals,
      .fresh = api_fresh,
      .memo = api_memo,
      .var_get = api_var_get,
      .var_set_json = api_var_set_json,
      .call_predicate = api_call_predicate,
      .call_error = api_call_error,
      .done = api_done,
      .done_json = api_done_json,
      .fail = api_fail,
      .shadow = api_shadow,
      .opt_get = api_opt_get,
      .opt_unknown = api_opt_unknown,
  };
}

int sy__call_node(sy_inst *in) {
  sy_call *c = call_new(in->e, in);
  if (!c) {
    return SY_ENOMEM;
  }
  c->node = in->step->node;
  sy_task_set_step(in->task, in->step, in->attempt);
  in->ph = PH_CALL;
  invoke(c, NULL);
  return 0;
}

/* "ctx.http {\"url\": ...}", cut to a length a message can hold. Made
 * for every call (without printf: it is on the path of every call). */
static char *describe(const char *name, const char *args_json) {
  enum { MAX = 160 };
  const char *args = args_json ? args_json : "null";
  size_t n = strlen(name), a = strlen(args);
  char *out = malloc(MAX);
  if (!out) {
    return NULL;
  }
  n = n < MAX - 16 ? n : MAX - 16;
  memcpy(out, "ctx.", 4);
  memcpy(out + 4, name, n);
  out[4 + n] = ' ';
  if (a > MAX - 6 - n) { /* cut, and marked so */
    memcpy(out + 5 + n, args, MAX - 9 - n);
    memcpy(out + MAX - 4, "...", 4);
  } else {
    memcpy(out + 5 + n, args, a + 1);
  }
  return out;
}

/* The call #seq of a step run again from its start: what it got the first
 * time, if it asks the same; else the run has diverged. */
static int replay(sy_inst *in, sy_task *t, const sy_journal_entry *j,
                  const sy_ctx_fn_entry *fn, const char *args_json,
                  uint64_t hash, char *err, size_t errlen) {
  char *what;
  if (j->kind == SY_JOURNAL_CALL && j->hash == hash) {
    sy_task_call_done(t, j->result, j->error);
    return 0;
  }
  what = describe(fn->fn->name, args_json);
  sy__journal_diverged(in, j->seq, j->what, what ? what : fn->fn->name);
  free(what);
  snprintf(err, errlen, "%s", in->diverged ? in->diverged : "diverged");
  return SY_ESTATE;
}

int sy__ctx_call(void *ud, sy_task *t, const sy_ctx_fn_entry *fn,
                 const char *args_json, char *err, size_t errlen) {
  sy_engine *e = ud;
  sy_inst *in = sy_task_owner(t);
  int seq = sy_task_call_seq(t);
  uint64_t hash = sy__journal_hash(fn->fn->name, args_json);
  /* Held when the step before this one is not committed yet: the plugin,
   * which may reach outside, hears of the call once it is
   * (sy__issue_held). */
  int held = in->chained_tx && in->chained_tx == sy_store_tx_seq(e->store);
  const sy_journal_entry *j;
  sy_call *c;
  if (in->diverged) { /* the step run has failed: nothing more runs */
    snprintf(err, errlen, "%s", in->diverged);
    return SY_ESTATE;
  }
  if (in->candidate && !fn->fn->shadow_ok && fn->plugin->def != &sy__builtins) {
    snprintf(err, errlen, "ctx.%s is not available in a shadow run",
             fn->fn->name);
    return SY_ESTATE;
  }
  if ((j = sy__journal_at(in, seq))) {
    return replay(in, t, j, fn, args_json, hash, err, errlen);
  }
  if (!(c = call_new(e, in)) ||
      !(c->what = describe(fn->fn->name, args_json)) ||
      (held && !(c->held_args = strdup(args_json)))) {
    if (c) {
      in->call = NULL;
      call_free(c);
    }
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  c->fn = fn;
  c->seq = seq;
  c->hash = hash;
  if (!held) {
    invoke(c, args_json);
  } else if (e->held_tail) {
    e->held_tail->next_held = c;
    e->held_tail = c;
  } else {
    e->held_head = e->held_tail = c;
  }
  return 0;
}

void sy__issue_held(sy_engine *e) {
  sy_call *c;
  while ((c = e->held_head)) {
    char *args = c->held_args;
    e->held_head = c->next_held;
    if (!e->held_head) {
      e->held_tail = NULL;
    }
    c->held_args = NULL;
    c->next_held = NULL;
    invoke(c, args);
    free(args);
  }
}

/* Takes a held call out of the queue; the plugin never heard of it, so
 * there is nothing to cancel. */
static void drop_held(sy_engine *e, sy_call *c) {
  sy_call **p = &e->held_head, *prev = NULL;
  while (*p && *p != c) {
    prev = *p;
    p = &(*p)->next_held;
  }
  if (*p) {
    *p = c->next_held;
    if (e->held_tail == c) {
      e->held_tail = prev;
    }
  }
  call_free(c);
}

void sy__abandon_call(sy_call *c) {
  c->inst = NULL;
  if (c->later) {
    answer_now(c);
  } else if (c->held_args) {
    drop_held(c->e, c);
  } else if (c->node && c->node->type->cancel) {
    c->node->type->cancel(c->node->plugin->state, c);
  } else if (c->fn && c->fn->fn->cancel) {
    c->fn->fn->cancel(c->fn->plugin->state, c);
  }
}
