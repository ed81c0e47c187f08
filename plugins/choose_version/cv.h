/* choose_version's internal header: the plugin's state (cv_router: its
 * prepared statements, flag cache and batched counters) and what its files
 * share. sql.c holds every statement's text, indexed by the CVQ_* ids
 * below; flags.c is the flag cache, decide.c the decisions, counters.c the
 * per-version counters, events.c the event hook; commands.c, rollout.c and
 * report.c are the CLI commands; plugin.c registers it all. The pure
 * routing core (route.h) and the statistics (stats.h) need none of this. */
#ifndef CV_H
#define CV_H

#include <jansson.h>
#include <switchyard/plugin.h>

#include "route.h"

/* A choose_version node's options, compiled (plugin.c). */
typedef struct cv_node {
  char *flag;
  char *key; /* var naming the subject; NULL for per-instance strategies */
  char *v1, *v2;
  cv_strategy strategy;
  int has_eligible;
  int missing_key_v1; /* on_missing_key = "v1" */
  /* shadow = { compare = {...} | function, timeout = s }: for a share of
   * v1's instances (rollout shadow), v2's step also runs beside v1's, on
   * a copy of the vars (shadow.c), compared by the engine */
  int shadow;
  double shadow_timeout; /* seconds */
} cv_node;

/* The statements of sql.c, by what runs them. */
enum {
  /* schema (sql.c) */
  CVQ_META_EXISTS,
  CVQ_SCHEMA_VERSION,
  CVQ_SET_SCHEMA_VERSION,
  /* routing (flags.c, decide.c) */
  CVQ_FLAG,
  CVQ_OVERRIDE,
  CVQ_NTH,
  CVQ_GET_DECISION,
  CVQ_PUT_DECISION,
  CVQ_PUT_DECISION_FRESH,
  /* counters and events (counters.c, events.c) */
  CVQ_COUNTERS_ADD,
  CVQ_LATENCY_ADD,
  CVQ_RAMP_TALLY_ADD,
  CVQ_DECISIONS_OF,
  CVQ_EV_COMPLETED,
  CVQ_EV_INCIDENT,
  CVQ_EV_RESOLVED,
  CVQ_EV_CANCELLED,
  CVQ_EV_CAUGHT,
  CVQ_EV_COMPLETED_KEY, /* the same four, for one decision by its key */
  CVQ_EV_INCIDENT_KEY,
  CVQ_EV_CANCELLED_KEY,
  CVQ_EV_CAUGHT_KEY,
  /* `rollout` (rollout.c) */
  CVQ_FLAG_ROW,
  CVQ_FLAG_LIST,
  CVQ_FLAG_CREATE,
  CVQ_FLAG_UNRETIRE,
  CVQ_FLAG_SET_GROUP,
  CVQ_FLAG_DESCRIBE,
  CVQ_FLAG_SET_RATE,
  CVQ_FLAG_SET_KILLED,
  CVQ_FLAG_SET_SHADOW,
  CVQ_FLAG_RETIRE,
  CVQ_AUDIT_ADD,
  CVQ_AUDIT_OF,
  CVQ_OVERRIDE_PUT,
  CVQ_OVERRIDE_DELETE,
  CVQ_OVERRIDES_OF,
  CVQ_COUNTERS_OF,
  CVQ_FLAG_SINCE,
  CVQ_FLAG_LAST_DECISION,
  CVQ_PREVIEW_SUBJECTS,
  CVQ_PREVIEW_IN_FLIGHT,
  /* `rollout plan` and the evaluations (plan.c) */
  CVQ_PLAN_GET,
  CVQ_PLAN_PUT,
  CVQ_PLAN_APPROVE,
  CVQ_PLAN_ACTIVE,
  CVQ_PLAN_MOVE,
  CVQ_PLAN_STATE,
  CVQ_PLAN_P_MIN,
  CVQ_PLAN_TALLY,
  CVQ_PLAN_EVAL_ADD,
  CVQ_PLAN_OUTCOME_TALLY,
  CVQ_PLAN_EVALS,
  CVQ_PLAN_COMPLETED,
  CVQ_PLAN_QUANTILE,
  CVQ_PLAN_SLOWER,
  /* notifications (notify.c) */
  CVQ_NOTIFY_TARGETS,
  CVQ_NOTIFY_URLS,
  CVQ_NOTIFY_PUT,
  CVQ_NOTIFY_DELETE,
  CVQ_OUTBOX_ADD,
  CVQ_OUTBOX_DROP,
  CVQ_OUTBOX_DUE,
  CVQ_OUTBOX_HEADS,
  CVQ_OUTBOX_CLAIM,
  CVQ_OUTBOX_DELIVERED,
  CVQ_OUTBOX_FAILED,
  CVQ_OUTBOX_OF,
  /* reroutes (reroute.c) */
  CVQ_REROUTE_OF,
  CVQ_REROUTE_CLOSE,
  CVQ_REROUTE_PUT,
  /* `report` (report.c) */
  CVQ_FLAG_KNOWN,
  CVQ_RAMPS,
  CVQ_REPORT_DECISIONS,
  CVQ_RAMP_TALLIES,
  /* shadow runs (shadow.c) */
  CVQ_SHADOW_SPEND,
  CVQ_SHADOW_REFUND,
  CVQ_SHADOW_SKIPS_ADD,
  CVQ_SHADOW_START,
  CVQ_SHADOW_END,
  CVQ_SHADOW_OUTCOMES,
  CVQ_SHADOW_TIMES,
  CVQ_SHADOW_MISMATCHES,
  CVQ_SHADOW_BUDGET,
  /* serve's /metrics (metrics.c) */
  CVQ_METRICS_COUNTERS,
  CVQ_METRICS_FLAGS,
  CVQ_METRICS_LATENCY,
  /* serve's pages (pages.c) */
  CVQ_DECISIONS_OF_ID,
  CVQ__COUNT
};

/* Counter changes of the open transaction for one (workflow, flag,
 * version), written at once just before it commits. */
/* Latency histograms (cv_latency): the upper bounds of the buckets, in
 * ms, the last one open (INT64_MAX). Each completed decision adds its
 * branch time and its step time to the bucket holding it: a count and a
 * sum, so /metrics has a Prometheus histogram without reading decisions.
 * CV_LATENCY_LE in sql.c sorts past rows by the same bounds. */
enum { CV_LATENCY_BUCKETS = 18 };
extern const int64_t cv_latency_le[CV_LATENCY_BUCKETS];
enum { CV_BRANCH, CV_STEPS };
typedef struct cv_hist {
  int64_t n[CV_LATENCY_BUCKETS], sum[CV_LATENCY_BUCKETS];
} cv_hist;

/* Ramp tallies (cv_ramp_tallies): the report's counts of the decisions
 * routed (not rerouted in) at one ramp step, so that a flag's page reads a
 * few rows rather than its decisions. A decision counts by its standing:
 * each write of its row moves the tally from what the row said to what it
 * says (cv_count_standing). */
typedef enum { CV_OPEN, CV_ENDED_COMPLETED, CV_ENDED_OTHER } cv_outcome;
typedef struct cv_standing {
  cv_outcome outcome;
  int64_t incidents, open_incidents;
} cv_standing;
typedef struct cv_ramp_delta {
  struct cv_ramp_delta *next; /* ramp_id ascending */
  int64_t ramp_id;
  int64_t routed, completed, in_flight, incidents, with_incidents;
} cv_ramp_delta;

typedef struct cv_delta {
  char *workflow, *flag;
  int v2;
  int64_t routed, in_flight, completed, cancelled, with_incidents, incidents,
      open_incidents, caught, rerouted_in, rerouted_out;
  int timed;      /* latency holds completions */
  cv_hist lat[2]; /* CV_BRANCH, CV_STEPS */
  cv_ramp_delta *ramps;
  struct cv_delta *next;
} cv_delta;

struct cv_cached_flag;                  /* flags.c */
typedef struct cv_planner cv_planner;   /* plan.c */
typedef struct cv_notifier cv_notifier; /* notify.c */

/* The plugin's state, one per engine. errmsg holds the last failure's
 * message without the plugin's name (the database's own, for a database error,
 * copied where it happened); plugin.c and the commands add who says it. */
typedef struct cv_router {
  const sy_api *api;
  sy_engine *e;
  sy_stmt *stmt[CVQ__COUNT]; /* prepared on first use (sql.c) */
  struct cv_cached_flag *flags;
  cv_delta *deltas;
  int64_t checked_tx; /* transaction in which data_version was read */
  int64_t data_version;
  cv_planner *planner;   /* evaluates rollout plans while the engine runs */
  cv_notifier *notifier; /* delivers notifications while the engine runs */
  struct cv_shadow_skip *shadow_skips;  /* this transaction's, to flush */
  struct cv_shadow_spent *shadow_spent; /* hours whose budget is spent */
  char errmsg[512];
} cv_router;

/* metrics.c: sy_plugin_def.metrics */
int cv_metrics(void *plugin, void (*put)(void *ud, const char *text), void *ud);

/* sql.c: creates or migrates the plugin's tables (inside the transaction
 * the engine opened for init). 0, or -1 with a message in err. */
int cv_schema(cv_router *r, char *err, size_t errlen);
/* Prepares statement q (sy_api.prepare) into r->stmt[q]; NULL
 * with r->errmsg when it cannot. Call it through cv_stmt. */
sy_stmt *cv_prepare(cv_router *r, int q);
/* Statement q, prepared once: the hot path pays one load. */
static inline sy_stmt *cv_stmt(cv_router *r, int q) {
  return r->stmt[q] ? r->stmt[q] : cv_prepare(r, q);
}
/* A failed step of s: copies the database's message to r->errmsg first,
 * so the first error sticks, then resets s (s NULL: the engine's message,
 * after a failed sy_api call). Returns -1. */
int cv_db_fail(cv_router *r, sy_stmt *s);
/* Steps s, bound by the caller, to its end and resets it: 0, or -1 with
 * r->errmsg. */
int cv_step_done(cv_router *r, sy_stmt *s);
void cv_finalize_all(cv_router *r);

/* flags.c: the cached row of a flag for transaction tx (sy_api.tx_begin),
 * re-read when another connection changed the database since the last
 * transaction that asked; NULL with r->errmsg on failure. */
const cv_flag *cv_flag_get(cv_router *r, const char *name, int64_t tx);
void cv_flags_free(cv_router *r);

/* decide.c. The decisions recorded for a fresh instance (sy_api.fresh)
 * while it is in the engine's memory, kept in its memo (sy_api.memo): all
 * the decisions it has, so that its events update them by key without
 * looking them up. */
typedef struct cv_memo {
  struct cv_memo *next;
  int v2;
  int64_t decided_at;
  int64_t base_run_ms; /* the instance's step time at the decision */
  int64_t ramp_id;
  char *workflow; /* in the same block, after flag */
  char flag[];
} cv_memo;
void cv_memo_free(cv_memo *m);

/* Decides for one instance (reusing a recorded decision) and records it,
 * inside the engine's transaction. forced is "v1", "v2" or NULL. memo, for
 * a fresh instance only (else NULL), is its memo slot: a decision recorded
 * now is added to it. Returns 0 or -1 with r->errmsg. */
int cv_decide(cv_router *r, int64_t instance_id, const char *workflow,
              const char *step, const cv_request *req, const char *forced,
              void **memo, cv_decision *out);
/* The routing choice alone, for a transaction tx (see sy_api.tx_begin):
 * the cached flag, the subject's override, the every_nth counter, then
 * cv_precedence. */
int cv_route(cv_router *r, int64_t tx, const cv_request *req, cv_decision *out);

/* shadow.c: after node n decided d for req, asks for a shadow run of
 * v2's step when the decision is in the flag's shadow share and its
 * budget allows, and records the run as started. 0, or -1 with
 * r->errmsg. */
int cv_shadow_maybe(cv_router *r, sy_call *c, const cv_node *n,
                    const cv_request *req, const cv_decision *d);
/* The shadows this transaction skipped, written into this engine's rows
 * (before the commit: 0 or -1), or forgotten (after a rollback); and
 * everything freed. */
int cv_shadow_flush(cv_router *r);
void cv_shadow_discard(cv_router *r);
void cv_shadow_free(cv_router *r);

/* counters.c: the batched changes of one (workflow, flag, version) in the
 * open transaction, created at zero when new; NULL with r->errmsg. */
cv_delta *cv_delta_of(cv_router *r, const char *workflow, const char *flag,
                      int v2);
/* What an event does to the counters of one decision, given the incidents
 * it had recorded before it. */
void cv_count_event(cv_delta *d, sy_event_type type, int incidents, int open);
/* What a routed decision's row now says, moved from what it said (before
 * NULL: a decision just recorded), in its ramp step's tally; -1 with
 * r->errmsg when out of memory. A decision rerouted in is not counted. */
int cv_count_standing(cv_router *r, cv_delta *d, int64_t ramp_id,
                      const cv_standing *before, const cv_standing *after);
/* A decision's standing after an event (what EV_* in sql.c write). */
cv_standing cv_standing_after(sy_event_type type, cv_standing s);
/* A completed decision's branch and step times, in ms. */
void cv_count_latency(cv_delta *d, int64_t branch_ms, int64_t steps_ms);
/* Writes the counter changes batched in the transaction (before_commit). */
int cv_flush_counters(cv_router *r);
void cv_discard_counters(cv_router *r);

/* events.c: applies an instance event to its decisions and counters. */
int cv_on_event(cv_router *r, const sy_event *ev);

/* commands.c, for the commands: a bad-input message naming the command
 * (returns exit code 2); a database failure, the database's message in
 * r->errmsg, saying what failed (returns 1); a time in ms as ISO 8601 UTC ("-"
 * for 0). */
__attribute__((format(printf, 2, 3))) int cv_usage_error(const char *cmd,
                                                         const char *fmt, ...);
int cv_cmd_db_error(cv_router *r, const char *cmd, const char *what);
void cv_fmt_time(int64_t ms, char *buf, size_t len);
/* An age or a duration as people type it: 90s, 15m, 2h, 14d (fractions
 * too: 1.5h). 0 with *ms set, or -1. */
int cv_parse_age(const char *s, int64_t *ms);
/* A duration shown in its largest whole unit: 20d, 5h, 12m, 30s. */
void cv_fmt_age(int64_t ms, char *buf, size_t len);
/* A command's own transaction (sy_api.begin): write takes the write lock
 * at once. cv_cmd_begin returns 0, or 1 after saying why;
 * cv_cmd_end(rc) rolls back when rc is not 0 and commits otherwise, and
 * returns the command's exit code: rc, or 1 when the commit failed (it is
 * then rolled back). Only commands call these (plugin.h, sy_api). */
int cv_cmd_begin(cv_router *r, const char *cmd, int write);
int cv_cmd_end(cv_router *r, const char *cmd, int rc);

/* The `rollout` and `report` commands. */
int cv_cmd_rollout(void *plugin, int argc, char **argv);
/* plan.c: `rollout plan` (argv as cv_cmd_rollout's), and the timer that
 * evaluates running plans on the engine's loop (unreferenced: it never
 * keeps a run going), started at init and stopped at fini. */
int cv_cmd_plan(cv_router *r, int argc, char **argv);
int cv_planner_start(cv_router *r);
void cv_planner_stop(cv_router *r);
/* One option of a command, for cv_parse_args: a switch (value NULL: *set
 * becomes 1), an option taking a non-empty value (into *value), or with
 * max > 0 one given up to max times (into value[0..max), counted in
 * *set). */
typedef struct cv_opt {
  const char *name; /* without "--" */
  const char **value;
  int *set;
  int max;
} cv_opt;
#define CV_VALUE(n, p) \
  { .name = (n), .value = (p) }
#define CV_SWITCH(n, p) \
  { .name = (n), .set = (p) }
#define CV_MANY(n, arr, count, most) \
  { .name = (n), .value = (arr), .set = (count), .max = (most) }
#define CV_END \
  { .name = NULL }
/* The arguments of a command after its name (argv[2] on): the options of
 * opts (ended by a NULL name), and at most maxpos others into pos
 * (*npos of them); with dash_digits, "-" and "-" followed by a digit are
 * not options (a negative rate, said wrong later). 0, or the exit code 2
 * after saying what is wrong, naming cmd. */
int cv_parse_args(const char *cmd, int argc, char **argv, const cv_opt *opts,
                  const char **pos, int maxpos, int *npos, int dash_digits);
/* A command's flag argument checked, and its actor defaulted to the login
 * name: 0, or 2 after saying what is wrong. */
int cv_flag_and_actor(const char *cmd, const char *flag, const char **actor);
/* Prints j indented, in its keys' order, and frees it (NULL: nothing). */
typedef struct json_t json_t;
void cv_print_json(json_t *j);
/* The login name, the default actor of a change. */
const char *cv_login_name(void);
/* A change of a flag, as its audit trail keeps it and its notifications
 * tell it. subject: NULL for the flag itself; rate and killed: the flag's
 * after the change; numbers: a JSON object (a plan's evidence) or NULL. */
typedef struct cv_change {
  const char *flag, *what, *subject, *old_value, *new_value;
  uint32_t rate;
  int killed;
  const char *reason, *actor;
  int64_t at;
  const char *numbers;
} cv_change;
/* Appends a change to its flag's audit trail, and to the outbox of each of
 * the flag's notification targets; the one writer of cv_audit for the
 * commands and the plans. 0, or -1 with r->errmsg. */
int cv_audit_add(cv_router *r, const cv_change *c);
/* A positive integer setting (sy_api.setting), or def. */
int64_t cv_setting_int(cv_router *r, const char *key, int64_t def);
/* A change of a flag's row by statement q: ?1 the flag, ?2 the value, ?3
 * the time. 0, or -1 with r->errmsg. */
int cv_flag_set(cv_router *r, int q, const char *flag, int64_t value,
                int64_t at);

/* notify.c: the outbox rows of a change just audited (its id audit_id),
 * one per target of its flag; 0, or -1 with r->errmsg. The `rollout
 * notify` and `rollout notifications` commands (argv as cv_cmd_rollout's).
 * The notifier delivers the outbox from running engines, on a timer that
 * never keeps a run going, started at init and stopped at fini. */
int cv_notify_enqueue(cv_router *r, const cv_change *c, int64_t audit_id);
int cv_cmd_notify(cv_router *r, int argc, char **argv);
int cv_cmd_notifications(cv_router *r, int argc, char **argv);
int cv_notifier_start(cv_router *r);
void cv_notifier_stop(cv_router *r);

/* reroute.c: the options choose_version adds to `switchyard retry`
 * (--flag F, --version v1|v2, --reroute v1|v2), and their filter
 * (sy_plugin_def.retry_filter). */
extern const char *const cv_retry_options[];
int cv_retry_filter(void *plugin, const char *const *values,
                    const sy_retry_inst *inst, char *at, size_t atlen,
                    char *err, size_t errlen);

/* preview.c: what a change of a flag from `now` to `then` (its row as it
 * is and as the change would leave it) would do, printed (or as JSON):
 * which of the subjects decided in the last `window` (an age such as 30d,
 * the default when NULL) move v1 -> v2 and v2 -> v1, and the instances in
 * flight on each side, which keep their version. It reads only. 0, or
 * the exit code after saying why. */
int cv_preview(cv_router *r, const cv_flag *now, const cv_flag *then,
               const char *change, const char *window, int json);
int cv_cmd_report(void *plugin, int argc, char **argv);
/* The flag's shadow runs started in [since, until) (report --shadow
 * --json's document, switchyard.shadow/1); NULL when the flag is not
 * *known, or with it after saying why on stderr. */
json_t *cv_shadow_document(cv_router *r, const char *flag, int64_t since,
                           int64_t until, int *known);
/* Its settings as one line of text. */
void cv_shadow_settings_text(json_t *doc, char *buf, size_t len);
/* The report of a flag with report's defaults, as `report FLAG --json`
 * prints it (switchyard.report/1); with full 0, its counts that the ramp
 * tallies keep (per version: routed, completed, in_flight,
 * instances_with_incidents, incidents, the incident rate and its interval;
 * the comparison; the ramp steps), read in a time that does not grow with
 * the decisions. NULL when it cannot be made (*known 0: no such flag, else
 * the reason is on stderr). */
json_t *cv_report_document(cv_router *r, const char *flag, int full,
                           int *known);
/* plan.c: `rollout plan FLAG show --json`'s document; NULL with *have 0
 * when the flag has no plan, with *have 1 on a failure (r->errmsg). */
json_t *cv_plan_document(cv_router *r, const char *flag, int *have);
/* describe.c: an instance's decisions as a JSON array (flag, version,
 * reason, bucket, rate, ramp_id, decided_at, outcome, reroutes, shadow:
 * null or its run's outcome, started_at, primary_ms, candidate_ms,
 * detail), NULL with r->errmsg; and sy_plugin_def.describe (show's
 * "decisions"). cv_shadow_line says a run in a line. */
json_t *cv_decisions_of(cv_router *r, int64_t id);
void cv_shadow_line(json_t *shadow, char *buf, size_t len);
int cv_describe(void *plugin, int64_t id, int json,
                void (*put)(void *ud, const char *key, const char *text),
                void *ud);
/* pages.c: sy_plugin_def.serve and .section */
int cv_serve(void *plugin, const sy_http_request *req, sy_http_response *resp);
int cv_section(void *plugin, const sy_http_request *req,
               sy_http_response *resp);

/* Registry access for static linking (tests, benchmarks). */
const sy_plugin_def *cv_plugin_def(void);

#endif
