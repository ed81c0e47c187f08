/* choose_version's internal header: the router (flag cache, prepared
 * statements, decisions, counters) shared by the node, the ctx function,
 * the event hook and the `rollout` command. */
#ifndef CV_H
#define CV_H

#include <switchyard/plugin.h>

#include "route.h"

typedef enum { CV_V1 = 1, CV_V2 = 2 } cv_version;

typedef enum {
  CV_STRATEGY_STICKY,
  CV_STRATEGY_RANDOM,
  CV_STRATEGY_EVERY_NTH
} cv_strategy;

typedef enum {
  CV_OVERRIDE_NONE,
  CV_OVERRIDE_ALLOW,  /* force V2 */
  CV_OVERRIDE_OPT_OUT /* force V1 */
} cv_override;

/* A flag as cached from cv_flags. */
typedef struct cv_flag {
  char *name;
  int exists;
  int retired;
  int killed;
  uint32_t rate_ppm;
  char *group;
  int64_t ramp_id; /* audit row that started the current ramp step */
  int64_t overrides;
  int64_t checked_tx; /* transaction in which the row was last validated */
  struct cv_flag *next;
} cv_flag;

enum {
  CVQ_DATA_VERSION,
  CVQ_FLAG,
  CVQ_OVERRIDE,
  CVQ_GET_DECISION,
  CVQ_PUT_DECISION,
  CVQ_COUNTERS_ADD,
  CVQ_NTH,
  CVQ_DECISIONS_OF,
  CVQ_EV_COMPLETED,
  CVQ_EV_INCIDENT,
  CVQ_EV_RESOLVED,
  CVQ_EV_CANCELLED,
  CVQ_EV_COMPLETED_KEY, /* the same three, for one decision by its key */
  CVQ_EV_INCIDENT_KEY,
  CVQ_EV_CANCELLED_KEY,
  CVQ__COUNT
};

/* Counter changes of the open transaction for one (workflow, flag,
 * version), written at once just before it commits. */
typedef struct cv_delta {
  char *workflow, *flag;
  int v2;
  int64_t routed, in_flight, completed, cancelled, with_incidents, incidents,
      open_incidents;
  struct cv_delta *next;
} cv_delta;

typedef struct cv_router {
  const sy_api *api;
  sy_engine *e;
  sqlite3 *db;
  sqlite3_stmt *stmt[CVQ__COUNT];
  cv_flag *flags;
  cv_delta *deltas;
  int64_t checked_tx; /* transaction in which data_version was read */
  int64_t data_version;
  char errmsg[512];
} cv_router;

/* The inputs of one decision, and what it decided. */
typedef struct cv_request {
  const char *flag;
  const char *key; /* subject, NULL when the strategy needs none */
  size_t key_len;
  cv_strategy strategy;
  int eligible;    /* result of the node's predicate (1 when there is none) */
  uint64_t random; /* from the engine's seedable generator */
  int missing_key; /* the key var is absent and the node says "v1" */
  int64_t now_ms;  /* the time of the decision */
  /* The instance's step-run totals at that time (sy_api.totals): the
   * branch's own are what they grow by until the instance ends. */
  int64_t run_ms, reruns;
} cv_request;

typedef struct cv_decision {
  cv_version version;
  const char *reason;
  uint32_t bucket; /* sticky only; UINT32_MAX when not computed */
  uint32_t rate_ppm;
  int64_t ramp_id;
  int reused; /* recorded earlier for this instance */
} cv_decision;

int cv_schema(sqlite3 *db, char *err, size_t errlen);
int cv_router_init(cv_router *r, const sy_api *api, sy_engine *e);
void cv_router_free(cv_router *r);

/* The decisions recorded for a fresh instance (sy_api.fresh) while it is in
 * the engine's memory, kept in its memo (sy_api.memo): all the decisions it
 * has, so that its events update them by key without looking them up. */
typedef struct cv_memo {
  struct cv_memo *next;
  int v2;
  int64_t decided_at;
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
 * the cached flag (re-read when another connection changed the database),
 * the subject's override, the every_nth counter, then precedence. */
int cv_route(cv_router *r, int64_t tx, const cv_request *req, cv_decision *out);
/* The pure precedence rule of DESIGN.md for a flag row and inputs. */
void cv_precedence(const cv_flag *f, cv_override ov, const cv_request *req,
                   uint64_t random, int64_t nth, cv_decision *out);
int cv_on_event(cv_router *r, const sy_event *ev);
/* Writes the counter changes batched in the transaction (before_commit). */
int cv_flush_counters(cv_router *r);

/* For the commands: a bad-input message naming the command (exit 2), and
 * a time in ms as ISO 8601 UTC ("-" for 0). */
__attribute__((format(printf, 2, 3))) int cv_usage_error(const char *cmd,
                                                         const char *fmt, ...);
void cv_fmt_time(int64_t ms, char *buf, size_t len);

/* The `rollout` and `report` commands. */
int cv_cmd_rollout(void *plugin, int argc, char **argv);
int cv_cmd_report(void *plugin, int argc, char **argv);

/* Registry access for static linking (tests, benchmarks). */
const sy_plugin_def *cv_plugin_def(void);

#endif
