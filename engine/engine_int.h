/* Internals of the engine, shared by its files and nothing else:
 *
 *   engine.c      opening and closing, definitions, starting instances
 *   plugin_api.c  the sy_api table plugins call, and plugin calls: one way
 *                 to invoke them and one way to complete them
 *   executor.c    an instance's life in memory: run a step, record its
 *                 outcome, move on (next step, sleep, retry, incident, end)
 *   scheduler.c   the loop: claims, timers, the commit phase, leases
 *   incident.c    retry and cancel, from the command line
 *
 * Phases of a loop turn: timers fire (sleeps end, retries fall due, step
 * timeouts), the idle handle runs a batch of ready instances, poll waits
 * for plugin I/O, and the check handle commits the turn's transaction and
 * releases the instances that waited for it. */
#ifndef SY_ENGINE_INT_H
#define SY_ENGINE_INT_H

#include "clock.h"
#include "engine.h"
#include "error.h"
#include "plugins.h"

/* Step executions per loop turn at most: three per instance at the
 * default concurrency, so that Lua steps chained one after another (see
 * sy__handle_result) run in the turn their instance was taken. */
#define SY__BATCH 1536
#define SY__CHAIN_MAX 16   /* transitions of one instance in one transaction */
#define SY__LEASE_MS 30000 /* how long a claim holds without renewal */

typedef struct sy_inst sy_inst;

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
  int in_invoke; /* the plugin is handling it now (see sy__invoke) */
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
  int64_t run_ms, reruns;   /* totals of its step runs (sy_event) */
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
  struct sy__orphan *orphans;     /* claimed rows whose definition is gone */
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
  uint64_t last_breath;     /* monotonic, ns */
  uint64_t expired_checked; /* last look for leases of vanished engines */
  sy_run_stats stats;
  char errmsg[1024];
};

/* A claimed row whose definition is gone or broken: it becomes an
 * incident, not a crash, once the claim is written (a claim callback only
 * reads). */
typedef struct sy__orphan {
  struct sy__orphan *next;
  int64_t id;
  int attempt;
  char *step;
  char *error;
} sy__orphan;

/* engine.c */
__attribute__((format(printf, 3, 4))) int sy__set_error(sy_engine *e, int code,
                                                        const char *fmt, ...);
/* A store failure mid-run leaves memory and database out of step: stops
 * the loop, with the store's message copied to the engine's. */
void sy__fatal(sy_engine *e, int rc);
uint64_t sy__random(sy_engine *e);
/* The definition an instance was started with (loaded once, then kept);
 * NULL with the engine's message set. */
const sy_workflow *sy__def_by_hash(sy_engine *e, const char *hash);

/* plugin_api.c */
void sy__api_init(sy_api *a);
/* ctx.<fn>(args) from a step (sy_ctx_call_fn). */
int sy__ctx_call(void *ud, sy_task *t, const sy_ctx_fn_entry *fn,
                 const char *args_json, char *err, size_t errlen);
/* Runs the instance's node step: a call to its plugin. */
int sy__call_node(sy_inst *in);
/* The instance leaves memory: its call is dropped if the plugin never
 * heard of it, else cancelled (the plugin still completes it). */
void sy__abandon_call(sy_call *c);
/* The commit recorded the steps before the held ctx calls: issues them. */
void sy__issue_held(sy_engine *e);

/* executor.c */
void sy__run_queue_push(sy_engine *e, sy_inst *in);
/* Takes a claimed row into memory (a sy_instance_cb). */
int sy__claim_cb(void *ud, const sy_instance_row *row);
/* Removes an instance from memory. Its row must already say where it is. */
void sy__inst_free(sy_inst *in);
/* Runs (or resumes) the current step of an instance. */
void sy__execute(sy_inst *in);
/* Records the outcome of a step run and moves the instance on. */
void sy__handle_result(sy_inst *in, sy_task_result *r);

/* scheduler.c */
/* Makes sure the loop gets a turn that runs the queue and commits. */
void sy__kick(sy_engine *e);

#endif
