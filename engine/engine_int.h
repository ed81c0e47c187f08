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
#define SY__CHAIN_MAX 16 /* transitions of one instance in one transaction */
/* Shadow runs an engine keeps at most (setting shadow.max_in_flight): a
 * candidate is in no instance count, and its Lua state shares the cap on
 * the engine's memory with every instance. */
#define SY__SHADOWS_MAX 1000

typedef struct sy_inst sy_inst;

/* A shadow run (shadow.c): the candidate's side, run by an instance of its
 * own that has no row, and the primary's, taken from the instance's next
 * step; reported once both are known. */
typedef struct sy_shadow {
  sy_engine *e;
  sy_shadow_done done;
  void *plugin, *ud;
  int64_t instance_id;
  const sy_workflow *wf;
  sy_shadow_side side[2]; /* SY__PRIMARY, SY__CANDIDATE; strings owned */
  int ended[2];
  sy_inst *primary;    /* watched until its step ends */
  sy_inst *candidate;  /* until it ends */
  double timeout;      /* seconds */
  const sy_step *node; /* the node that asked, and its compare option */
  char *compare;       /* path, or NULL */
  struct sy_shadow *next, *prev;
} sy_shadow;
enum { SY__PRIMARY, SY__CANDIDATE };

/* The journal of an instance's current step run, in memory (journal.c). */
typedef struct sy__journal {
  sy_journal_entry *v; /* v[i] is call #i+1; strings owned */
  int n, cap;
  int written;  /* the first `written` are in the database */
  int loaded;   /* the database's entries are in v (or there are none) */
  size_t bytes; /* answers held, for the bound */
} sy__journal;

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
  uint64_t hash; /* and what it asked (sy__journal_hash) */
  char *what;    /* the same, for messages */
  char key[340]; /* idempotency key, when it needs a suffix */
  int completed;
  char *next;
  char *error;
  /* A test's hook answers it later, on the engine's time (next or error
   * already set): the timer, NULL when none. */
  uv_timer_t *later;
  sy_call *next_live;
  sy_call *prev_live;
  /* A node's request of a shadow run (sy_api.shadow), until it completes. */
  const sy_step *shadow_step;
  const sy_step *shadow_node;
  char *shadow_compare;
  int64_t shadow_instance;
  const sy_workflow *shadow_wf;
  double shadow_timeout;
  sy_shadow_done shadow_done;
  void *shadow_ud;
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
  int64_t segment_started;  /* and since it last started or went on */
  uint64_t step_started_ns; /* monotonic: what its duration is measured by */
  int64_t ran_before_ms;    /* the step run ran this long before it parked */
  int resumed;              /* it went on after a park */
  uint64_t sleep_until_ns;  /* monotonic: when its sleep may end */
  sy_journal_entry sleep;   /* the sleep it is in (its what: sleep_what) */
  char sleep_what[48];
  int sleep_new;          /* not from the journal: journal it when over */
  int64_t run_ms, reruns; /* totals of its step runs (sy_event) */
  int timed_out;
  sy__journal journal;
  sy_inst *journal_next; /* in the engine's list of unwritten journals */
  int journal_listed;
  char *diverged;      /* a replay asked for something else: why */
  char *parked_signal; /* claimed while parked waiting for this signal, */
  int64_t parked_wake; /* with this timeout's end (0: none) */
  int fresh;           /* no engine had taken it before (sy_api.fresh) */
  int64_t chained_tx;  /* the open transaction holds its last transition */
  int chained;         /* and this many of its transitions */
  void **memos;        /* plugins' memos, one slot per plugin; NULL until set */
  sy_call *call;
  uv_timer_t sleep_timer;
  uv_timer_t timeout_timer;
  int handles_open;
  sy_inst *qnext;               /* run queue / commit queue link */
  sy_inst *next_all, *prev_all; /* every instance in memory */
  int candidate;                /* a shadow run's candidate: not in `all` */
  sy_shadow *shadow_of;         /* its shadow, until its side is reported */
  sy_shadow *watched_by;        /* its step's end is a shadow's primary side */
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
  sy_shadow *shadows; /* in flight: settling waits for them */
  /* shadows asked for and not reported yet, and how many may be (the
   * setting shadow.max_in_flight; 0 until read) */
  int shadows_asked, shadows_max;
  sy_call *live_calls; /* incl. abandoned ones still owed a completion */
  sy_call *held_head, *held_tail; /* ctx calls waiting for the commit */
  sy_call_hook call_hook;         /* sy_engine_set_call_hook */
  void *call_hook_ud;
  sy_inst *journal_dirty;     /* instances with journal entries to write */
  struct sy__orphan *orphans; /* claimed rows whose definition is gone */
  int in_memory;
  /* handles */
  uv_idle_t idle;
  uv_check_t check;
  uv_timer_t wake_timer;
  uv_timer_t poll_timer;
  uv_signal_t sigint, sigterm;
  uv_poll_t notices; /* a database server's announcements (notices_on) */
  int notices_on;
  int handles_init;
  int until_idle;
  int stopping;
  int maybe_work; /* the database may hold claimable instances */
  int fatal;
  uint64_t rng;
  char id[40]; /* this engine, as owner of its leases */
  /* The engine's time is its host's clock, set right by the database
   * server's when there is one (sy__now): leases and due times of
   * engines on several hosts are then compared on one clock. skew_ms
   * puts the host's clock wrong on purpose (the test-only setting
   * clock.skew_ms); clock_offset_ms is the server's clock less the
   * host's, measured at open and at every lease renewal. advance_ms
   * moves time itself on, the server's included (the test-only setting
   * clock.advance_ms: what a command sees days later). */
  int64_t skew_ms, clock_offset_ms, advance_ms;
  /* Virtual time (the setting clock.virtual, for workflow authors' tests):
   * when the engine waits on nothing but its own timers, the clock jumps
   * to the next one instead of the loop sleeping. virtual_ns is how far
   * it has jumped; vtimers are the engine's timers that time moves to. */
  int virtual_clock;
  uint64_t virtual_ns;
  struct sy__vtimer *vtimers;
  /* How often to look for work other processes added (the setting
   * engine.poll_ms; on a server, their announcements wake it sooner). */
  int64_t poll_ms;
  char host[256];
  uv_timer_t lease_timer;
  uv_timer_t breathe_timer;
  uv_timer_t stop_timer; /* sy_engine_stop_after */
  uint64_t stop_after_ms;
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
  char *workflow;
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

/* shadow.c: starts the shadow a node call asked for, now that the node
 * completed with r (the instance goes to r->next); a side's end (vars_json
 * malloc'd or NULL, taken); abandons every shadow (a stop). */
void sy__shadow_begin(sy_inst *in, sy_call *c, const sy_task_result *r);
void sy__shadow_side(sy_shadow *sh, int k, sy_shadow_status status,
                     char *vars_json, const char *error, int64_t ms);
void sy__shadow_abandon_all(sy_engine *e);
/* The node's call ends without a shadow (abandoned, failed): its plugin
 * hears so, once. */
void sy__shadow_never_ran(sy_call *c, const char *why);
/* executor.c: waits for the commit of the turn, then runs. */
void sy__commit_queue_push(sy_engine *e, sy_inst *in);

/* journal.c */
/* Of what a ctx call asked: its function's name and its arguments. */
uint64_t sy__journal_hash(const char *name, const char *args);
/* Before a step run starts: the entries it had (a park, a crash). */
int sy__journal_load(sy_inst *in);
/* Call #seq of the step run as journaled, or NULL. */
const sy_journal_entry *sy__journal_at(const sy_inst *in, int seq);
/* Whether j's answer fits in the journal; else why, in err. */
int sy__journal_fits(const sy_inst *in, const sy_journal_entry *j, char *err,
                     size_t errlen);
/* Adds call #n+1 (copied), to be written before the turn's commit. */
int sy__journal_add(sy_inst *in, const sy_journal_entry *j);
/* The same, taking j's strings (malloc'd) as they are; returns the entry
 * as journaled, or NULL when out of memory (the strings are freed). */
const sy_journal_entry *sy__journal_adopt(sy_inst *in, sy_journal_entry *j);
/* Writes the instance's unwritten entries now (it parks). */
int sy__journal_write(sy_inst *in);
/* Before each commit: every step run's unwritten entries. */
int sy__journal_flush(sy_engine *e);
/* The step run ended: its rows go in the transaction of its transition. */
int sy__journal_end(sy_inst *in);
void sy__journal_free(sy_inst *in);
/* A replay asked for `now` where call #seq was `was`: the step run fails. */
void sy__journal_diverged(sy_inst *in, int seq, const char *was,
                          const char *now);

/* builtins.c: the engine's own ctx functions (ctx.now). */
extern const sy_plugin_def sy__builtins;

/* scheduler.c */
/* Makes sure the loop gets a turn that runs the queue and commits. */
void sy__kick(sy_engine *e);
/* sy_api.retry_selected (incident.c). */
int sy__retry_selected(sy_engine *e, void *plugin, const char *const *values,
                       int64_t *n);

/* The engine's time, ms since the epoch (see clock_offset_ms). */
static inline int64_t sy__now(const sy_engine *e) {
  return sy_now_ms() + e->skew_ms + e->clock_offset_ms + e->advance_ms +
         (int64_t)(e->virtual_ns / 1000000);
}
/* The engine's monotonic clock, ns: the host's, plus the virtual jumps. */
static inline uint64_t sy__mono(const sy_engine *e) {
  return sy_mono_ns() + e->virtual_ns;
}
/* Timers of the engine's time (a sleep, a step's timeout, the next due
 * instance): on virtual time the clock jumps to them (scheduler.c). A
 * timer must be stopped through sy__timer_stop before it is closed. */
void sy__timer_start(sy_engine *e, uv_timer_t *t, uv_timer_cb cb, uint64_t ms);
void sy__timer_stop(sy_engine *e, uv_timer_t *t);
/* Measures clock_offset_ms again (a no-op on a database file). */
int sy__sync_clock(sy_engine *e);

#endif
