/* The engine (see engine.h): scheduler and executor on a libuv loop.
 *
 * Phases of a loop turn: timers fire (sleeps end, retries fall due, step
 * timeouts), the idle handle runs a batch of ready instances, poll waits
 * for plugin I/O, and the check handle commits the turn's transaction and
 * releases the instances that waited for it. */
#include "engine.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "plugins.h"

/* Step executions per loop turn at most: three per instance at the
 * default concurrency, so that Lua steps chained one after another (see
 * handle_result) run in the turn their instance was taken. */
#define BATCH 1536
#define CHAIN_MAX 16        /* transitions of one instance in one transaction */
#define POLL_MS 200         /* how often to look for work other processes add */
#define LEASE_MS 30000      /* how long a claim holds without renewal */
#define BREATHE_EVERY_MS 50 /* a busy engine lets other writers in ... */
#define BREATHE_MS 2        /* ... for this long (rollout set, start) */
#define EXPIRED_EVERY_MS 1000 /* how often to look for expired leases */
#define CONTAINER_OF(ptr, type, field) \
  ((type *)((char *)(ptr)-offsetof(type, field)))

typedef struct sy_inst sy_inst;

typedef enum {
  PH_READY,    /* in the run queue: start its step */
  PH_RESUME,   /* in the run queue: resume its coroutine */
  PH_RUNNING,  /* executing (a node that has not completed yet) */
  PH_SLEEPING, /* parked on its sleep timer */
  PH_CALL,     /* parked on a plugin call */
  PH_COMMIT    /* waiting for the commit of its last transition */
} phase;

struct sy_call {
  sy_engine *e;
  sy_inst *inst; /* NULL once abandoned */
  const sy_node_entry *node;
  const sy_ctx_fn_entry *fn;
  int in_execute; /* completion arrived while execute was on the stack */
  /* A ctx call held until the commit that records the step before its
   * own (see handle_result): its arguments, and the next held call. */
  char *held_args;
  sy_call *next_held;
  int seq;       /* ctx calls: the n-th of its step run */
  char key[340]; /* idempotency key, when it needs a suffix */
  int completed;
  char *next;
  char *error;
  sy_call *next_live;
  sy_call *prev_live;
};

struct sy_inst {
  sy_engine *e;
  int64_t id;
  const sy_workflow *wf;
  const sy_step *step;
  int attempt;
  sy_task *task;
  phase ph;
  int64_t step_started;     /* wall clock, ms: what step_runs store */
  uint64_t step_started_ns; /* monotonic: what its duration is measured by */
  uint64_t sleep_until_ns;  /* monotonic: when its sleep may end */
  int64_t run_ms, reruns; /* totals of its step runs (sy_event) */
  int recorded_seq;
  int64_t recorded_wake;
  int timed_out;
  int fresh;          /* no engine had taken it before (sy_api.fresh) */
  int64_t chained_tx; /* the open transaction holds its last transition */
  int chained;        /* and this many of its transitions */
  void **memos;       /* plugins' memos, one slot per plugin; NULL until set */
  sy_call *call;
  uv_timer_t sleep_timer;
  uv_timer_t timeout_timer;
  int handles_open;
  sy_inst *qnext;               /* run queue / commit queue link */
  sy_inst *next_all, *prev_all; /* every instance in memory */
};

typedef struct def_entry {
  sy_workflow *wf;
  struct def_entry *next;
} def_entry;

struct sy_engine {
  sy_engine_opts o;
  uv_loop_t loop;
  int loop_open;
  sy_store *store;
  sy_plugins *plugins;
  sy_lua *lua;
  sy_api api;
  def_entry *defs;
  /* queues */
  sy_inst *runq_head, *runq_tail;
  sy_inst *commitq_head, *commitq_tail;
  sy_inst *all;
  sy_call *live_calls; /* incl. abandoned ones still owed a completion */
  sy_call *held_head, *held_tail; /* ctx calls waiting for the commit */
  struct orphan *orphans;         /* claimed rows whose definition is gone */
  int in_memory;
  /* handles */
  uv_idle_t idle;
  uv_check_t check;
  uv_timer_t wake_timer;
  uv_timer_t poll_timer;
  uv_signal_t sigint, sigterm;
  int handles_init;
  int until_idle;
  int stopping;
  int maybe_work; /* the database may hold claimable instances */
  int fatal;
  uint64_t rng;
  char id[40]; /* this engine, as owner of its leases */
  char host[256];
  uv_timer_t lease_timer;
  uv_timer_t breathe_timer;
  int64_t last_breath;
  int64_t expired_checked; /* last look for leases of vanished engines */
  sy_run_stats stats;
  char errmsg[1024];
};

static void run_queue_push(sy_engine *e, sy_inst *in);
static void idle_cb(uv_idle_t *h);
static void handle_result(sy_inst *in, sy_task_result *r);

/* ---------------------------------------------------------------------
 * Errors and helpers */

__attribute__((format(printf, 3, 4))) static int set_error(sy_engine *e,
                                                           int code,
                                                           const char *fmt,
                                                           ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->errmsg, sizeof e->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* A store failure mid-run leaves memory and database out of step: stop the
 * loop; what was committed is consistent, the rest re-runs on restart. */
static void fatal(sy_engine *e, int rc) {
  if (!e->fatal) {
    e->fatal = rc ? rc : SY_ESTORE;
    set_error(e, e->fatal, "%s", sy_store_errmsg(e->store));
    fprintf(stderr, "switchyard: stopping: %s\n", e->errmsg);
  }
  sy_engine_stop(e);
}

const char *sy_engine_errmsg(sy_engine *e) {
  return e->errmsg;
}

sy_store *sy_engine_store(sy_engine *e) {
  return e->store;
}

uv_loop_t *sy_engine_loop(sy_engine *e) {
  return &e->loop;
}

sy_plugins *sy_engine_plugins(sy_engine *e) {
  return e->plugins;
}

void sy_engine_stats(sy_engine *e, sy_run_stats *s) {
  *s = e->stats;
}

static uint64_t next_random(sy_engine *e) {
  /* xorshift64*: small, fast and seedable; routing needs no more. */
  uint64_t x = e->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  e->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* ---------------------------------------------------------------------
 * The plugin API */

static sqlite3 *api_db(sy_engine *e) {
  return sy_store_db(e->store);
}
static int64_t api_tx_begin(sy_engine *e) {
  int rc = sy_store_begin(e->store);
  if (rc) {
    return rc;
  }
  /* The turn's check phase commits it; make sure that turn comes. */
  if (e->handles_init) {
    uv_idle_start(&e->idle, idle_cb);
  }
  return sy_store_tx_seq(e->store);
}
static uv_loop_t *api_loop(sy_engine *e) {
  return &e->loop;
}
static int64_t api_now_ms(sy_engine *e) {
  (void)e;
  return sy_now_ms();
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
/* The step run's key; the n-th ctx call of a run adds "#n" (n > 1), so two
 * calls of one run differ and a re-run repeats both. */
static const char *api_idempotency_key(sy_call *c) {
  const char *base;
  if (!c->inst) {
    return "";
  }
  base = sy_task_idempotency_key(c->inst->task);
  if (c->fn && c->seq > 1) {
    snprintf(c->key, sizeof c->key, "%s#%d", base, c->seq);
    return c->key;
  }
  return base;
}
static void *api_node_data(sy_call *c) {
  return c->inst && c->node ? c->inst->step->node_data : NULL;
}
static uint64_t api_random(sy_call *c) {
  return next_random(c->e);
}
static void api_totals(sy_call *c, int64_t now_ms, int64_t *run_ms,
                       int64_t *reruns) {
  sy_inst *in = c->inst;
  *run_ms = *reruns = 0;
  if (in) {
    *run_ms = in->run_ms + (now_ms - in->step_started);
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
  if (!c->inst) {
    return -1;
  }
  if (sy_task_predicate(c->inst->task, c->inst->step, option, out, err,
                        sizeof err)) {
    free(c->error);
    c->error = strdup(err);
    return -1;
  }
  return 0;
}
static const char *api_call_error(sy_call *c) {
  return c->error ? c->error : "";
}
static int api_opt_get(sy_opts *o, const char *key, sy_value *out) {
  return sy_opts_get(o, key, out);
}

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
  call_unlink(c->e, c);
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
  return c;
}

/* Takes a held call out of the queue (its instance is leaving); the
 * plugin never heard of it, so there is nothing to cancel. */
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

/* Abandons an instance's call: a held one is dropped, a plugin's is
 * cancelled (the plugin still completes it; the call outlives us). */
static void abandon_call(sy_call *c) {
  c->inst = NULL;
  if (c->held_args) {
    drop_held(c->e, c);
  } else if (c->node && c->node->type->cancel) {
    c->node->type->cancel(c->node->plugin->state, c);
  } else if (c->fn && c->fn->fn->cancel) {
    c->fn->fn->cancel(c->fn->plugin->state, c);
  }
}

/* A call finished: hand its outcome to the instance, unless it was
 * abandoned (timeout, shutdown), in which case only the call is freed. */
static void call_complete(sy_call *c) {
  sy_inst *in = c->inst;
  sy_engine *e = c->e;
  SY_ASSERT(!c->completed);
  c->completed = 1;
  if (!in) {
    call_free(c);
    return;
  }
  if (c->in_execute) {
    return; /* the executor picks it up when execute returns */
  }
  in->call = NULL;
  if (c->fn) {
    sy_task_call_done(in->task, c->next, c->error);
    call_free(c);
    in->ph = PH_RESUME;
    run_queue_push(e, in);
  } else {
    sy_task_result r;
    if (c->error) {
      memset(&r, 0, sizeof r);
      r.status = SY_TASK_ERROR;
      snprintf(r.error, sizeof r.error, "%s", c->error);
    } else {
      sy_task_finish_node(in->task, in->step, c->next, &r);
    }
    call_free(c);
    handle_result(in, &r);
  }
}

static void api_done(sy_call *c, const char *next) {
  c->next = next ? strdup(next) : NULL;
  call_complete(c);
}

static void api_done_json(sy_call *c, const char *json) {
  c->next = strdup(json ? json : "null");
  call_complete(c);
}

static void api_fail(sy_call *c, const char *message) {
  free(c->error);
  c->error = strdup(message && *message ? message : "plugin call failed");
  call_complete(c);
}

static void init_api(sy_api *a) {
  *a = (sy_api){
      .abi = SY_PLUGIN_ABI,
      .db = api_db,
      .tx_begin = api_tx_begin,
      .loop = api_loop,
      .now_ms = api_now_ms,
      .setting = api_setting,
      .log = api_log,
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
      .opt_get = api_opt_get,
  };
}

/* ctx.<fn>(args) from a step: start the plugin call. */
static sy_call *ctx_call(void *ud, sy_task *t, const sy_ctx_fn_entry *fn,
                         const char *args_json, char *err, size_t errlen) {
  sy_engine *e = ud;
  sy_inst *in = sy_task_owner(t);
  sy_call *c = call_new(e, in);
  if (!c) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  c->fn = fn;
  c->seq = sy_task_call_seq(t);
  if (in->chained_tx && in->chained_tx == sy_store_tx_seq(e->store)) {
    /* The step before this one is not committed yet: the plugin, which
     * may reach outside, hears of the call once it is (issue_held). */
    if (!(c->held_args = strdup(args_json))) {
      call_free(c);
      snprintf(err, errlen, "out of memory");
      return NULL;
    }
    if (e->held_tail) {
      e->held_tail->next_held = c;
    } else {
      e->held_head = c;
    }
    e->held_tail = c;
    in->call = c;
    return c;
  }
  c->in_execute = 1;
  fn->fn->call(fn->plugin->state, c, args_json);
  c->in_execute = 0;
  if (c->completed) {
    sy_task_call_done(t, c->next, c->error);
    call_free(c);
    return NULL; /* done already: the task sees call_done set */
  }
  in->call = c;
  return c;
}

/* ---------------------------------------------------------------------
 * Definitions */

static const sy_workflow *find_def(sy_engine *e, const char *hash) {
  for (def_entry *d = e->defs; d; d = d->next) {
    if (strcmp(d->wf->hash, hash) == 0) {
      return d->wf;
    }
  }
  return NULL;
}

static const sy_workflow *keep_def(sy_engine *e, sy_workflow *wf) {
  def_entry *d = malloc(sizeof *d);
  if (!d) {
    sy_workflow_free(e->lua, wf);
    return NULL;
  }
  d->wf = wf;
  d->next = e->defs;
  e->defs = d;
  return wf;
}

/* The definition an instance was started with, loaded from the store. */
static const sy_workflow *def_by_hash(sy_engine *e, const char *hash) {
  const sy_workflow *wf = find_def(e, hash);
  sy_workflow *loaded;
  char *source = NULL, *path = NULL;
  size_t len = 0;
  sy_diag diag;
  if (wf) {
    return wf;
  }
  if (sy_store_get_definition(e->store, hash, &source, &len, &path)) {
    set_error(e, SY_ENOTFOUND, "%s", sy_store_errmsg(e->store));
    return NULL;
  }
  if (sy_workflow_load(e->lua, path ? path : hash, source, len, &loaded,
                       &diag)) {
    set_error(e, SY_ELOAD, "stored definition %.12s no longer loads: %s", hash,
              diag.error);
    loaded = NULL;
  }
  free(source);
  free(path);
  return loaded ? keep_def(e, loaded) : NULL;
}

int sy_engine_load_workflow(sy_engine *e, const char *name_or_path,
                            const sy_workflow **out, sy_diag *diag) {
  char path[4096];
  size_t n = strlen(name_or_path);
  sy_workflow *wf;
  const sy_workflow *have;
  int rc;
  if (n > 4 && strcmp(name_or_path + n - 4, ".lua") == 0) {
    snprintf(path, sizeof path, "%s", name_or_path);
  } else {
    snprintf(path, sizeof path, "%s/%s.lua", e->o.workflows_dir, name_or_path);
  }
  if ((rc = sy_workflow_load_file(e->lua, path, &wf, diag))) {
    return rc;
  }
  if (!(n > 4 && strcmp(name_or_path + n - 4, ".lua") == 0) &&
      strcmp(wf->name, name_or_path) != 0) {
    snprintf(diag->error, sizeof diag->error,
             "%.400s:%d: declares workflow '%.200s', not '%.200s'", path,
             wf->line, wf->name, name_or_path);
    sy_workflow_free(e->lua, wf);
    return SY_ELOAD;
  }
  if ((have = find_def(e, wf->hash))) {
    sy_workflow_free(e->lua, wf);
    *out = have;
    return 0;
  }
  if ((rc = sy_store_put_definition(e->store, wf->hash, wf->name, wf->path,
                                    wf->source, wf->source_len))) {
    snprintf(diag->error, sizeof diag->error, "%s", sy_store_errmsg(e->store));
    sy_workflow_free(e->lua, wf);
    return rc;
  }
  if (!(*out = keep_def(e, wf))) {
    return SY_ENOMEM;
  }
  return 0;
}

int sy_engine_start(sy_engine *e, const sy_workflow *wf, const char *vars_json,
                    int64_t *id) {
  int rc =
      sy_store_insert_instance(e->store, wf->name, wf->hash, wf->start->name,
                               vars_json, sy_now_ms(), id);
  if (rc) {
    return set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  return 0;
}

/* ---------------------------------------------------------------------
 * Open and close */

void sy_engine_opts_init(sy_engine_opts *o) {
  memset(o, 0, sizeof *o);
  o->db_path = "switchyard.db";
  o->workflows_dir = "workflows";
  o->concurrency = 512;
  o->sync = SY_SYNC_FULL;
  o->lua_memory = (size_t)1 << 30;
  o->step_instructions = 50 * 1000 * 1000;
  o->seed = 0x5eed5eed5eedULL;
}

int sy_engine_open(sy_engine **out, const sy_engine_opts *o, char *err,
                   size_t errlen) {
  sy_engine *e = calloc(1, sizeof *e);
  sy_store_opts so = {.sync = o->sync,
                      .read_only = o->read_only,
                      .busy_timeout_ms = o->busy_timeout_ms,
                      .expect_write = o->expect_write};
  sy_lua_limits limits = {o->lua_memory, o->step_instructions};
  int rc;
  if (!e) {
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  e->o = *o;
  e->rng = o->seed ? o->seed : 1;
  {
    /* A fresh identity per engine process: leases name their owner. */
    unsigned char raw[8];
    size_t hl = sizeof e->host;
    if (uv_random(NULL, NULL, raw, sizeof raw, 0, NULL)) {
      memset(raw, 0, sizeof raw);
    }
    snprintf(e->id, sizeof e->id, "%d-%02x%02x%02x%02x%02x%02x%02x%02x",
             (int)uv_os_getpid(), raw[0], raw[1], raw[2], raw[3], raw[4],
             raw[5], raw[6], raw[7]);
    if (uv_os_gethostname(e->host, &hl)) {
      snprintf(e->host, sizeof e->host, "localhost");
    }
  }
  init_api(&e->api);
  if ((rc = uv_loop_init(&e->loop))) {
    snprintf(err, errlen, "event loop: %s", uv_strerror(rc));
    free(e);
    return SY_EIO;
  }
  e->loop_open = 1;
  if ((rc = sy_plugins_new(&e->plugins))) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  for (int i = 0; i < o->nstatic_plugins; i++) {
    if ((rc = sy_plugins_add(e->plugins, o->static_plugins[i], "(linked in)",
                             err, errlen))) {
      goto fail;
    }
  }
  if (o->plugin_dir &&
      (rc = sy_plugins_load_dir(e->plugins, o->plugin_dir, err, errlen))) {
    goto fail;
  }
  if ((rc = sy_store_open(&e->store, o->db_path, &so, err, errlen))) {
    goto fail;
  }
  if (!o->read_only &&
      (rc = sy_plugins_init(e->plugins, &e->api, e, e->store, err, errlen))) {
    goto fail;
  }
  if ((rc = sy_lua_new(&e->lua, &limits, e->plugins, ctx_call, e))) {
    snprintf(err, errlen, "cannot create the Lua state");
    goto fail;
  }
  *out = e;
  return 0;
fail:
  sy_engine_close(e);
  return rc;
}

static void inst_free(sy_inst *in);

void sy_engine_close(sy_engine *e) {
  if (!e) {
    return;
  }
  while (e->all) {
    inst_free(e->all);
  }
  while (e->defs) {
    def_entry *d = e->defs;
    e->defs = d->next;
    sy_workflow_free(e->lua, d->wf);
    free(d);
  }
  sy_lua_free(e->lua);
  sy_plugins_fini(e->plugins);
  if (e->loop_open) {
    /* Close callbacks of what the plugins closed, while they are loaded. */
    uv_run(&e->loop, UV_RUN_NOWAIT);
  }
  sy_store_close(e->store);
  sy_plugins_free(e->plugins);
  if (e->loop_open) {
    /* Every handle is closed by now; anything left is a bug. */
    SY_ASSERT(uv_loop_close(&e->loop) == 0);
  }
  free(e);
}

/* ---------------------------------------------------------------------
 * Instances in memory */

static void run_queue_push(sy_engine *e, sy_inst *in) {
  in->qnext = NULL;
  if (e->runq_tail) {
    e->runq_tail->qnext = in;
  } else {
    e->runq_head = in;
  }
  e->runq_tail = in;
  if (e->handles_init) {
    uv_idle_start(&e->idle, idle_cb);
  }
}

/* The instance's next step runs now, before anything already queued. */
static void run_queue_push_front(sy_engine *e, sy_inst *in) {
  in->qnext = e->runq_head;
  e->runq_head = in;
  if (!e->runq_tail) {
    e->runq_tail = in;
  }
  if (e->handles_init) {
    uv_idle_start(&e->idle, idle_cb);
  }
}

static void commit_queue_push(sy_engine *e, sy_inst *in) {
  in->ph = PH_COMMIT;
  in->qnext = NULL;
  if (e->commitq_tail) {
    e->commitq_tail->qnext = in;
  } else {
    e->commitq_head = in;
  }
  e->commitq_tail = in;
}

static void inst_handle_closed(uv_handle_t *h) {
  sy_inst *in = h->data;
  if (--in->handles_open == 0) {
    free(in);
  }
}

/* Removes an instance from memory. Its row must already say where it is. */
static void inst_free(sy_inst *in) {
  sy_engine *e = in->e;
  if (in->call) {
    abandon_call(in->call);
  }
  if (in->prev_all) {
    in->prev_all->next_all = in->next_all;
  } else {
    e->all = in->next_all;
  }
  if (in->next_all) {
    in->next_all->prev_all = in->prev_all;
  }
  e->in_memory--;
  sy_plugins_free_memos(e->plugins, in->memos);
  sy_task_free(in->task);
  if (in->handles_open) {
    uv_close((uv_handle_t *)&in->sleep_timer, inst_handle_closed);
    uv_close((uv_handle_t *)&in->timeout_timer, inst_handle_closed);
  } else {
    free(in);
  }
}

/* A claimed instance whose definition is gone or broken: it becomes an
 * incident, not a crash, once the claim is written (a claim callback only
 * reads). */
typedef struct orphan {
  struct orphan *next;
  int64_t id;
  int attempt;
  char *step;
  char *error;
} orphan;

static int claim_cb(void *ud, const sy_instance_row *row) {
  sy_engine *e = ud;
  const sy_workflow *wf = def_by_hash(e, row->def_hash);
  sy_inst *in;
  char err[512];
  const sy_step *step;
  if (!wf) {
    orphan *o = calloc(1, sizeof *o);
    if (!o || (row->step && !(o->step = strdup(row->step))) ||
        !(o->error = strdup(e->errmsg))) {
      if (o) {
        free(o->step);
        free(o);
      }
      fatal(e, SY_ENOMEM);
      return 1;
    }
    o->id = row->id;
    o->attempt = row->attempt;
    o->next = e->orphans;
    e->orphans = o;
    return 0;
  }
  step = row->step ? sy_workflow_step(wf, row->step) : NULL;
  SY_ASSERT(step); /* rows only ever name steps of their definition */
  if (!(in = calloc(1, sizeof *in))) {
    fatal(e, SY_ENOMEM);
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
  in->recorded_seq = row->wait_seq;
  in->recorded_wake = row->wake_at;
  if (sy_task_new(e->lua, &in->task, wf, row->id, row->vars, err, sizeof err)) {
    SY_ASSERT(!"stored vars are always a JSON object");
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
  run_queue_push(e, in);
  return 0;
}

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
    uv_timer_stop(&in->timeout_timer);
    uv_timer_stop(&in->sleep_timer);
  }
}

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

static void emit(sy_inst *in, sy_event_type type, int64_t now) {
  sy_event ev = {.type = type,
                 .instance_id = in->id,
                 .workflow = in->wf->name,
                 .step = in->step->name,
                 .time_ms = now,
                 .run_ms = in->run_ms,
                 .reruns = in->reruns,
                 .fresh = in->fresh};
  if (sy_plugins_event(in->e->plugins, &ev, in->memos)) {
    fatal(in->e, SY_EPLUGIN);
  }
}

/* Whole milliseconds from now until a monotonic time, rounded up. */
static uint64_t ms_until(uint64_t when_ns) {
  uint64_t now = uv_hrtime();
  return when_ns > now ? (when_ns - now + 999999) / 1000000 : 0;
}

/* libuv times timers in whole milliseconds of a cached clock, so one may
 * fire up to a millisecond early: a sleep ends only when the monotonic
 * clock says it has lasted what was asked. */
static void sleep_cb(uv_timer_t *t) {
  sy_inst *in = t->data;
  uint64_t left = ms_until(in->sleep_until_ns);
  if (left) {
    uv_timer_start(&in->sleep_timer, sleep_cb, left, 0);
    return;
  }
  in->ph = PH_RESUME;
  run_queue_push(in->e, in);
}

/* Sleeps shorter than this are not recorded: after a crash the step re-runs
 * and sleeps them again, which costs less than a write per short sleep. */
#define RECORD_SLEEP_MS 1000

/* Records the outcome of a step run and moves the instance on. */
static void handle_result(sy_inst *in, sy_task_result *r) {
  sy_engine *e = in->e;
  sy_store *st = e->store;
  int64_t now = sy_now_ms();
  uint64_t now_ns = uv_hrtime();
  sy_instance_update u = {
      .id = in->id, .attempt = in->attempt, .now = now, .owner = e->id};
  const char *outcome = "ok";
  int rc;
  if (e->fatal) {
    free(r->vars_json);
    return;
  }
  /* A change is pending: the loop must not block in poll before the check
   * phase commits it. */
  uv_idle_start(&e->idle, idle_cb);
  if ((rc = sy_store_begin(st))) {
    free(r->vars_json);
    fatal(e, rc);
    return;
  }
  if (r->status == SY_TASK_CALL) {
    in->ph = PH_CALL;
    return;
  }
  if (r->status == SY_TASK_SLEEP) {
    int64_t due = now + r->sleep_ms;
    /* After a restart the step re-runs from its start: sleeps it had
     * finished return at once, the interrupted one keeps its due time. */
    if (in->recorded_seq && r->sleep_seq < in->recorded_seq) {
      due = now;
    } else if (in->recorded_seq && r->sleep_seq == in->recorded_seq) {
      due = in->recorded_wake;
    } else if (r->sleep_ms >= RECORD_SLEEP_MS) {
      u.state = SY_STATE_RUNNING;
      u.step = in->step->name;
      u.wake_at = due;
      u.wait_seq = r->sleep_seq;
      if ((rc = sy_store_update_instance(st, &u)) == SY_ESTATE) {
        fprintf(stderr, "switchyard: dropping instance %lld: %s\n",
                (long long)in->id, sy_store_errmsg(st));
        inst_free(in);
        return;
      }
      if (rc) {
        fatal(e, rc);
        return;
      }
    }
    ensure_handles(in);
    in->ph = PH_SLEEPING;
    in->sleep_until_ns =
        uv_hrtime() + (uint64_t)(due > now ? due - now : 0) * 1000000;
    /* Timers count from the loop's cached time, which may be this whole
     * turn old: refresh it so a sleep never ends early. */
    uv_update_time(&e->loop);
    uv_timer_start(&in->sleep_timer, sleep_cb, ms_until(in->sleep_until_ns),
                   0);
    return;
  }
  step_ended(in);
  e->stats.steps++;
  /* A duration from the monotonic clock (the wall clock may step), whole
   * milliseconds rounded down: a run that slept 50 ms lasted at least 50.
   * Stored as the run's start plus that; should the wall clock have fallen
   * behind, the instance's times follow the run's end, so that nothing
   * reads as having ended before its last step run did. */
  u.run_ms = (int64_t)((now_ns - in->step_started_ns) / 1000000);
  if (in->step_started + u.run_ms > now) {
    u.now = now = in->step_started + u.run_ms;
  }
  u.rerun = in->attempt > 1;
  in->run_ms += u.run_ms;
  in->reruns += u.rerun;
  if (r->status == SY_TASK_ERROR && in->timed_out) {
    outcome = "timeout";
  } else if (r->status == SY_TASK_ERROR) {
    outcome = "error";
  }
  /* Where the instance goes: its next step, the end, a retry, or an
   * incident. Vars are saved only when the step succeeded. */
  u.step = in->step->name;
  if (r->status == SY_TASK_DONE) {
    u.vars = r->vars_json;
    if (r->next) {
      u.state = SY_STATE_RUNNING;
      u.step = r->next;
      u.attempt = 1;
    } else {
      u.state = SY_STATE_COMPLETED;
      u.step = NULL;
      u.ended = 1;
    }
  } else if (in->attempt <= in->step->retries) {
    u.state = SY_STATE_WAITING;
    u.attempt = in->attempt + 1;
    u.wake_at = now + backoff_ms(in->step, in->attempt);
    if (u.wake_at <= now) {
      u.wake_at = now + 1; /* strictly later: 'waiting' needs a due time */
    }
  } else {
    u.state = SY_STATE_INCIDENT;
  }
  /* The instance row first: the update is fenced by owner, and an engine
   * that lost its lease (another took the instance over) records nothing. */
  rc = sy_store_update_instance(st, &u);
  free(r->vars_json); /* written (SQLite copied it) or not to be */
  if (rc == SY_ESTATE) {
    fprintf(stderr, "switchyard: dropping instance %lld: %s\n",
            (long long)in->id, sy_store_errmsg(st));
    inst_free(in);
    return;
  }
  if (rc || (rc = sy_store_insert_step_run(
                 st, in->id, in->step->name, in->attempt, in->step_started,
                 in->step_started + u.run_ms, outcome, r->status == SY_TASK_ERROR ? r->error : NULL))) {
    fatal(e, rc);
    return;
  }
  if (r->status == SY_TASK_DONE) {
    if (r->next) {
      in->step = sy_workflow_step(in->wf, r->next);
      in->attempt = 1;
      in->recorded_seq = 0;
      /* Chaining: a Lua step follows at once, in this transaction, since
       * nothing it does reaches outside but its ctx calls, and those are
       * held until the commit (ctx_call). A node may reach outside as soon
       * as it starts: it waits for the commit. */
      int64_t tx = sy_store_tx_seq(st);
      in->chained = in->chained_tx == tx ? in->chained + 1 : 1;
      in->chained_tx = tx;
      /* A bounded chain, so that a loop of Lua steps cannot take every
       * turn from the other instances. */
      if (in->step->kind == SY_STEP_TASK && in->chained < CHAIN_MAX) {
        in->ph = PH_READY;
        run_queue_push_front(e, in);
        return;
      }
      commit_queue_push(e, in);
      return;
    }
    e->stats.completed++;
    emit(in, SY_EVENT_COMPLETED, now);
  } else if (strcmp(u.state, SY_STATE_WAITING) == 0) {
    e->stats.retries++;
    e->maybe_work = 1;
  } else {
    if ((rc = sy_store_insert_incident(st, in->id, in->step->name, r->error,
                                       now))) {
      fatal(e, rc);
      return;
    }
    e->stats.incidents++;
    emit(in, SY_EVENT_INCIDENT, now);
  }
  inst_free(in);
}

/* The step ran out of time while parked: abandon it. */
static void time_out(sy_inst *in) {
  sy_task_result r;
  memset(&r, 0, sizeof r);
  r.status = SY_TASK_ERROR;
  snprintf(r.error, sizeof r.error, "step '%s' timed out after %gs",
           in->step->name, in->step->timeout);
  in->timed_out = 1;
  if (in->call) {
    sy_call *c = in->call;
    in->call = NULL;
    abandon_call(c);
  }
  uv_timer_stop(&in->sleep_timer);
  sy_task_abort(in->task);
  handle_result(in, &r);
}

static void timeout_cb(uv_timer_t *t) {
  sy_inst *in = t->data;
  in->timed_out = 1;
  /* Queued to resume: execute() sees the flag when it dequeues it. */
  if (in->ph == PH_SLEEPING || in->ph == PH_CALL) {
    time_out(in);
  }
}

/* Runs (or resumes) the current step of an instance. */
static void execute(sy_inst *in) {
  sy_engine *e = in->e;
  sy_task_result r;
  if (in->ph == PH_RESUME && in->timed_out) {
    time_out(in);
    return;
  }
  if (in->ph == PH_RESUME) {
    in->ph = PH_RUNNING;
    sy_task_resume(in->task, &r);
    handle_result(in, &r);
    return;
  }
  in->ph = PH_RUNNING;
  in->timed_out = 0;
  in->step_started = sy_now_ms();
  in->step_started_ns = uv_hrtime();
  if (in->step->timeout > 0) {
    ensure_handles(in);
    uv_timer_start(&in->timeout_timer, timeout_cb,
                   (uint64_t)(in->step->timeout * 1000.0), 0);
  }
  if (in->step->kind == SY_STEP_TASK) {
    sy_task_start(in->task, in->step, in->attempt, &r);
    handle_result(in, &r);
    return;
  }
  {
    sy_call *c = call_new(e, in);
    const sy_node_entry *node = in->step->node;
    if (!c) {
      fatal(e, SY_ENOMEM);
      return;
    }
    c->node = node;
    sy_task_set_step(in->task, in->step, in->attempt);
    c->in_execute = 1;
    in->call = c;
    node->type->execute(node->plugin->state, c);
    c->in_execute = 0;
    if (c->completed) {
      c->completed = 0; /* let call_complete run its course now */
      call_complete(c);
    } else {
      in->ph = PH_CALL;
    }
  }
}

/* ---------------------------------------------------------------------
 * The loop */

static void close_cb(uv_handle_t *h) {
  (void)h;
}

static void close_handles(sy_engine *e) {
  if (!e->handles_init) {
    return;
  }
  e->handles_init = 0;
  uv_close((uv_handle_t *)&e->idle, close_cb);
  uv_close((uv_handle_t *)&e->check, close_cb);
  uv_close((uv_handle_t *)&e->wake_timer, close_cb);
  uv_close((uv_handle_t *)&e->poll_timer, close_cb);
  uv_close((uv_handle_t *)&e->lease_timer, close_cb);
  uv_close((uv_handle_t *)&e->breathe_timer, close_cb);
  uv_close((uv_handle_t *)&e->sigint, close_cb);
  uv_close((uv_handle_t *)&e->sigterm, close_cb);
}

void sy_engine_stop(sy_engine *e) {
  e->stopping = 1;
  if (e->handles_init) {
    uv_idle_start(&e->idle, idle_cb); /* get a turn to wind down */
  }
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
    orphan *o = e->orphans;
    sy_instance_update u = {.id = o->id,
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
      fatal(e, SY_ESTORE);
    }
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
  int64_t now = sy_now_ms();
  /* Finding expired leases reads every running row (ours included): once
   * a second is soon enough for leases that last LEASE_MS. */
  int expired = now - e->expired_checked >= EXPIRED_EVERY_MS;
  if (expired) {
    e->expired_checked = now;
  }
  rc = sy_store_claim(e->store, e->id, now + LEASE_MS, now, want, expired,
                      claim_cb, e);
  if (rc) {
    fatal(e, rc);
  }
  orphans = settle_orphans(e, now);
  if (rc) {
    return;
  }
  if (e->in_memory - before + orphans < want) {
    e->maybe_work = 0;
  }
}

static void wake_cb(uv_timer_t *t) {
  sy_engine *e = t->data;
  e->maybe_work = 1;
  uv_idle_start(&e->idle, idle_cb);
}

static void poll_cb(uv_timer_t *t) {
  sy_engine *e = t->data;
  e->maybe_work = 1;
  uv_idle_start(&e->idle, idle_cb);
}

/* Nothing runs in memory and nothing is claimable now: arm the wake timer
 * for the next due instance, or finish when running until idle. */
static void settle(sy_engine *e) {
  int64_t wake = 0, active = 0;
  int rc;
  if ((rc = sy_store_next_wake(e->store, &wake))) {
    fatal(e, rc);
    return;
  }
  if (wake) {
    int64_t now = sy_now_ms();
    uv_timer_start(&e->wake_timer, wake_cb,
                   (uint64_t)(wake > now ? wake - now : 0), 0);
    return;
  }
  if (e->until_idle) {
    if ((rc = sy_store_count_active(e->store, &active))) {
      fatal(e, rc);
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
  while (e->runq_head && n < BATCH && !e->fatal) {
    sy_inst *in = e->runq_head;
    e->runq_head = in->qnext;
    if (!e->runq_head) {
      e->runq_tail = NULL;
    }
    execute(in);
    n++;
  }
}

/* Abandons everything in memory; the rows stay re-runnable. */
static void wind_down(sy_engine *e) {
  int64_t n;
  while (e->all) {
    inst_free(e->all);
  }
  e->runq_head = e->runq_tail = NULL;
  e->commitq_head = e->commitq_tail = NULL;
  if (!e->fatal) {
    /* Our instances go back to ready (or waiting, if asleep) at once,
     * rather than when our leases expire. */
    if (sy_store_begin(e->store) ||
        sy_store_release(e->store, e->id, sy_now_ms(), &n) ||
        sy_store_engine_delete(e->store, e->id) || sy_store_commit(e->store)) {
      fatal(e, SY_ESTORE);
    }
  } else {
    sy_store_rollback(e->store);
  }
  close_handles(e);
}

/* The commit recorded the steps before the held ctx calls: the plugins
 * hear of them now. */
static void issue_held(sy_engine *e) {
  sy_call *c;
  while ((c = e->held_head)) {
    char *args = c->held_args;
    e->held_head = c->next_held;
    if (!e->held_head) {
      e->held_tail = NULL;
    }
    c->held_args = NULL;
    c->next_held = NULL;
    c->in_execute = 1;
    c->fn->fn->call(c->fn->plugin->state, c, args);
    c->in_execute = 0;
    free(args);
    if (c->completed) {
      c->completed = 0; /* let call_complete run its course now */
      call_complete(c);
    }
  }
}

static void check_cb(uv_check_t *h) {
  sy_engine *e = h->data;
  int rc;
  if (!e->fatal && sy_store_in_tx(e->store)) {
    if (sy_plugins_before_commit(e->plugins)) {
      sy_store_rollback(e->store);
      fatal(e, SY_EPLUGIN);
    } else if ((rc = sy_store_commit(e->store))) {
      fatal(e, rc);
    }
  }
  if (e->stopping || e->fatal) {
    wind_down(e);
    return;
  }
  /* The commit made the queued transitions durable: go on with them. */
  while (e->commitq_head) {
    sy_inst *in = e->commitq_head;
    e->commitq_head = in->qnext;
    in->ph = PH_READY;
    run_queue_push(e, in);
  }
  e->commitq_tail = NULL;
  issue_held(e);
  if (e->runq_head || can_claim(e)) {
    /* Back-to-back transactions would starve other writers (a rollout
     * kill must not wait seconds): now and then, pause without the lock. */
    int64_t now = sy_now_ms();
    if (now - e->last_breath >= BREATHE_EVERY_MS) {
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
  if (e->in_memory == 0) {
    settle(e);
  }
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
  if ((rc = sy_store_release(e->store, id, sy_now_ms(), &n)) ||
      (rc = sy_store_engine_delete(e->store, id))) {
    return rc;
  }
  return 0;
}

static void lease_cb(uv_timer_t *t) {
  sy_engine *e = t->data;
  int64_t now = sy_now_ms();
  int rc;
  if ((rc = sy_store_begin(e->store)) ||
      (rc = sy_store_renew(e->store, e->id, now + LEASE_MS, now))) {
    fatal(e, rc);
    return;
  }
  uv_idle_start(&e->idle, idle_cb); /* committed in this turn's check */
}

int sy_engine_run(sy_engine *e, int until_idle) {
  int rc;
  e->until_idle = until_idle;
  e->stopping = 0;
  e->maybe_work = 1;
  /* Recovery: register, and take back at once what dead engines on this
   * host held; other engines' work is claimed when their leases expire. */
  if ((rc = sy_store_begin(e->store)) ||
      (rc = sy_store_engine_register(e->store, e->id, e->host, uv_os_getpid(),
                                     sy_now_ms())) ||
      (rc = sy_store_engines_on_host(e->store, e->host, reap_dead, e)) ||
      (rc = sy_store_commit(e->store))) {
    sy_store_rollback(e->store);
    return set_error(e, rc, "recovery: %s", sy_store_errmsg(e->store));
  }
  uv_idle_init(&e->loop, &e->idle);
  uv_check_init(&e->loop, &e->check);
  uv_timer_init(&e->loop, &e->wake_timer);
  uv_timer_init(&e->loop, &e->poll_timer);
  uv_signal_init(&e->loop, &e->sigint);
  uv_signal_init(&e->loop, &e->sigterm);
  uv_timer_init(&e->loop, &e->lease_timer);
  uv_timer_init(&e->loop, &e->breathe_timer);
  e->idle.data = e->check.data = e->wake_timer.data = e->poll_timer.data =
      e->sigint.data = e->sigterm.data = e->lease_timer.data =
          e->breathe_timer.data = e;
  e->handles_init = 1;
  uv_signal_start(&e->sigint, signal_cb, SIGINT);
  uv_signal_start(&e->sigterm, signal_cb, SIGTERM);
  uv_check_start(&e->check, check_cb);
  uv_timer_start(&e->poll_timer, poll_cb, POLL_MS, POLL_MS);
  uv_timer_start(&e->lease_timer, lease_cb, LEASE_MS / 3, LEASE_MS / 3);
  uv_idle_start(&e->idle, idle_cb);
  uv_run(&e->loop, UV_RUN_DEFAULT);
  /* Abandoned plugin calls may still be completing: let them. */
  while (e->live_calls && uv_run(&e->loop, UV_RUN_ONCE)) {
  }
  return e->fatal;
}

/* ---------------------------------------------------------------------
 * Incidents: retry and cancel */

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
  int64_t now = sy_now_ms(), n;
  int rc, found = 0;
  if ((rc = sy_store_begin(st))) {
    return set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if ((rc = sy_store_get_instance(st, id, copy_row, &row, &found))) {
    sy_store_rollback(st);
    return set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  if (!row.found) {
    sy_store_rollback(st);
    return set_error(e, SY_ENOTFOUND, "no instance %lld", (long long)id);
  }
  if (cancel ? (strcmp(row.state, SY_STATE_COMPLETED) == 0 ||
                strcmp(row.state, SY_STATE_CANCELLED) == 0 ||
                strcmp(row.state, SY_STATE_RUNNING) == 0)
             : strcmp(row.state, SY_STATE_INCIDENT) != 0) {
    sy_store_rollback(st);
    return set_error(e, SY_ESTATE,
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
      sy_store_rollback(st);
      return set_error(e, rc, "%s", sy_store_errmsg(st));
    }
    /* A cancelled incident is both resolved and cancelled. */
    resolved.type = SY_EVENT_INCIDENT_RESOLVED;
    if ((cancel && was_incident &&
         sy_plugins_event(e->plugins, &resolved, NULL)) ||
        sy_plugins_event(e->plugins, &ev, NULL)) {
      sy_store_rollback(st);
      return set_error(e, SY_EPLUGIN, "a plugin failed to record the change");
    }
  }
  if (sy_plugins_before_commit(e->plugins)) {
    sy_store_rollback(st);
    return set_error(e, SY_EPLUGIN, "a plugin failed to record the change");
  }
  if ((rc = sy_store_commit(st))) {
    return set_error(e, rc, "%s", sy_store_errmsg(st));
  }
  return 0;
}

int sy_engine_retry(sy_engine *e, int64_t id) {
  return change_instance(e, id, 0);
}

int sy_engine_cancel(sy_engine *e, int64_t id) {
  return change_instance(e, id, 1);
}
