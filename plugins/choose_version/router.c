/* The router: choose_version's tables, its flag cache, the precedence rule,
 * decisions and per-version counters. Everything here runs on the engine's
 * connection inside the engine's transaction, so a decision, the counters it
 * moves and the instance's move into its branch commit together. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

/* Migrations of the plugin's own tables, tracked in cv_meta. */
static const char *const migrations[] = {
    "CREATE TABLE cv_flags("
    "  name TEXT PRIMARY KEY,"
    "  rate_ppm INTEGER NOT NULL DEFAULT 0,"
    "  killed INTEGER NOT NULL DEFAULT 0,"
    "  hash_group TEXT,"
    "  description TEXT,"
    "  owner TEXT,"
    "  nth_counter INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  retired_at INTEGER);"
    "CREATE TABLE cv_overrides("
    "  flag TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK(kind IN ('allow', 'opt-out')),"
    "  actor TEXT, reason TEXT, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY(flag, subject));"
    /* Every change of a flag; rate and kill-switch changes start ramp
     * steps. old/new values are text as a user would type them. */
    "CREATE TABLE cv_audit("
    "  id INTEGER PRIMARY KEY,"
    "  flag TEXT NOT NULL,"
    "  what TEXT NOT NULL,"
    "  subject TEXT,"
    "  old_value TEXT, new_value TEXT,"
    "  rate_ppm INTEGER, killed INTEGER,"
    "  reason TEXT, actor TEXT, at INTEGER NOT NULL);"
    "CREATE INDEX cv_audit_flag ON cv_audit(flag, id);"
    "CREATE TABLE cv_decisions("
    "  instance_id INTEGER NOT NULL,"
    "  flag TEXT NOT NULL,"
    "  workflow TEXT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  subject TEXT,"
    "  version TEXT NOT NULL CHECK(version IN ('v1', 'v2')),"
    "  reason TEXT NOT NULL,"
    "  bucket INTEGER,"
    "  rate_ppm INTEGER NOT NULL,"
    "  ramp_id INTEGER,"
    "  decided_at INTEGER NOT NULL,"
    /* What happened after the decision, kept up to date by the event hook
     * so that a report reads this one table: */
    "  outcome TEXT," /* completed, cancelled */
    "  ended_at INTEGER,"
    "  branch_ms INTEGER," /* decision to end of the instance */
    "  step_ms INTEGER,"   /* time spent in the branch's step runs */
    "  retries INTEGER NOT NULL DEFAULT 0," /* retried runs in the branch */
    "  incidents INTEGER NOT NULL DEFAULT 0,"
    "  open_incidents INTEGER NOT NULL DEFAULT 0,"
    /* Clustered by flag and time: a report reads one contiguous range. */
    "  PRIMARY KEY(flag, decided_at, instance_id)) WITHOUT ROWID;"
    "CREATE UNIQUE INDEX cv_decisions_instance ON cv_decisions(instance_id, "
    "flag);"
    "CREATE TABLE cv_counters("
    "  workflow TEXT NOT NULL, flag TEXT NOT NULL, version TEXT NOT NULL,"
    "  routed INTEGER NOT NULL DEFAULT 0,"
    "  in_flight INTEGER NOT NULL DEFAULT 0,"
    "  completed INTEGER NOT NULL DEFAULT 0,"
    "  cancelled INTEGER NOT NULL DEFAULT 0,"
    "  with_incidents INTEGER NOT NULL DEFAULT 0,"
    "  incidents INTEGER NOT NULL DEFAULT 0,"
    "  open_incidents INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(workflow, flag, version));",
    /* 2: the instance's step-run totals (instances.run_ms, reruns) when
     * it was decided, so that the branch's step time and retries are a
     * subtraction at the event instead of a scan of the history. For
     * instances still in flight, what the branch has already run is taken
     * out of the base, so that nothing is counted twice or lost. */
    "ALTER TABLE cv_decisions ADD COLUMN base_run_ms INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE cv_decisions ADD COLUMN base_reruns INTEGER NOT NULL "
    "DEFAULT 0;"
    "UPDATE cv_decisions SET "
    "  base_run_ms = (SELECT i.run_ms FROM instances i "
    "                 WHERE i.id = cv_decisions.instance_id) - "
    "    (SELECT coalesce(sum(r.ended_at - r.started_at), 0) "
    "     FROM step_runs r WHERE r.instance_id = cv_decisions.instance_id "
    "     AND r.started_at >= cv_decisions.decided_at "
    "     AND r.step <> cv_decisions.step),"
    "  base_reruns = (SELECT i.reruns FROM instances i "
    "                 WHERE i.id = cv_decisions.instance_id) - "
    "    (SELECT count(*) FROM step_runs r "
    "     WHERE r.instance_id = cv_decisions.instance_id "
    "     AND r.started_at >= cv_decisions.decided_at "
    "     AND r.step <> cv_decisions.step AND r.attempt > 1) "
    "WHERE outcome IS NULL;",
};
#define CV_SCHEMA_VERSION ((int)(sizeof migrations / sizeof *migrations))

static const char *const sql_text[CVQ__COUNT] = {
    [CVQ_DATA_VERSION] = "PRAGMA data_version",
    [CVQ_FLAG] =
        "SELECT rate_ppm, killed, coalesce(hash_group, name), "
        "retired_at IS NOT NULL, "
        "(SELECT count(*) FROM cv_overrides WHERE flag = ?1), "
        "(SELECT max(id) FROM cv_audit WHERE flag = ?1 "
        " AND what IN ('rate', 'kill', 'unkill', 'group')) "
        "FROM cv_flags WHERE name = ?1",
    [CVQ_OVERRIDE] =
        "SELECT kind FROM cv_overrides WHERE flag = ?1 AND subject = ?2",
    [CVQ_GET_DECISION] =
        "SELECT version, reason, bucket, rate_ppm, ramp_id FROM cv_decisions "
        "WHERE instance_id = ?1 AND flag = ?2",
    /* A decision recorded earlier for the instance wins: nothing is
     * written, and the caller reads that one instead. */
    [CVQ_PUT_DECISION] =
        "INSERT INTO cv_decisions(instance_id, flag, workflow, step, subject, "
        "version, reason, bucket, rate_ppm, ramp_id, decided_at, "
        "base_run_ms, base_reruns) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "
        "ON CONFLICT(instance_id, flag) DO NOTHING",
    [CVQ_COUNTERS_ADD] =
        "INSERT INTO cv_counters(workflow, flag, version, routed, in_flight, "
        "completed, cancelled, with_incidents, incidents, open_incidents) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10) "
        "ON CONFLICT DO UPDATE SET routed = routed + excluded.routed, "
        "in_flight = in_flight + excluded.in_flight, "
        "completed = completed + excluded.completed, "
        "cancelled = cancelled + excluded.cancelled, "
        "with_incidents = with_incidents + excluded.with_incidents, "
        "incidents = incidents + excluded.incidents, "
        "open_incidents = open_incidents + excluded.open_incidents",
    [CVQ_NTH] =
        "UPDATE cv_flags SET nth_counter = nth_counter + 1 WHERE name = ?1 "
        "RETURNING nth_counter - 1",
    /* The decisions an event concerns, read before the update: RETURNING
     * would buffer its rows in a temporary table at every event, which
     * costs more than reading them twice. */
    [CVQ_DECISIONS_OF] =
        "SELECT flag, workflow, version, incidents, open_incidents "
        "FROM cv_decisions WHERE instance_id = ?1",
/* The branch's step time and retries are the instance's totals at the
 * event (?3, ?4) less those at the decision. */
#define EV_COMPLETED                                               \
  "UPDATE cv_decisions SET outcome = 'completed', ended_at = ?2, " \
  "branch_ms = ?2 - decided_at, step_ms = ?3 - base_run_ms, "      \
  "retries = ?4 - base_reruns "
#define EV_INCIDENT                                     \
  "UPDATE cv_decisions SET incidents = incidents + 1, " \
  "open_incidents = open_incidents + 1, retries = ?4 - base_reruns "
#define EV_CANCELLED \
  "UPDATE cv_decisions SET outcome = 'cancelled', ended_at = ?2 "
/* By key (?5 flag, ?6 decided_at): the table's own order, one seek. */
#define BY_KEY "WHERE flag = ?5 AND decided_at = ?6 AND instance_id = ?1"
    [CVQ_EV_COMPLETED] = EV_COMPLETED "WHERE instance_id = ?1",
    [CVQ_EV_INCIDENT] = EV_INCIDENT "WHERE instance_id = ?1",
    [CVQ_EV_RESOLVED] =
        "UPDATE cv_decisions SET open_incidents = open_incidents - 1 "
        "WHERE instance_id = ?1 AND open_incidents > 0",
    [CVQ_EV_CANCELLED] = EV_CANCELLED "WHERE instance_id = ?1",
    [CVQ_EV_COMPLETED_KEY] = EV_COMPLETED BY_KEY,
    [CVQ_EV_INCIDENT_KEY] = EV_INCIDENT BY_KEY,
    [CVQ_EV_CANCELLED_KEY] = EV_CANCELLED BY_KEY,
};

static int exec(sqlite3 *db, const char *sql, char *err, size_t errlen) {
  char *msg = NULL;
  if (sqlite3_exec(db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(db));
    sqlite3_free(msg);
    return -1;
  }
  return 0;
}

int cv_schema(sqlite3 *db, char *err, size_t errlen) {
  sqlite3_stmt *s;
  int version = 0, have_meta = 0;
  /* Only read when the tables are there, so that commands that only read
   * never need the write lock. */
  if (sqlite3_prepare_v2(db,
                         "SELECT 1 FROM sqlite_schema WHERE name = 'cv_meta'",
                         -1, &s, NULL) == SQLITE_OK) {
    have_meta = sqlite3_step(s) == SQLITE_ROW;
    sqlite3_finalize(s);
  }
  if (!have_meta && exec(db,
                         "CREATE TABLE cv_meta(key TEXT PRIMARY KEY, "
                         "value INTEGER)",
                         err, errlen)) {
    return -1;
  }
  if (sqlite3_prepare_v2(db,
                         "SELECT value FROM cv_meta WHERE key = "
                         "'schema_version'",
                         -1, &s, NULL) != SQLITE_OK) {
    snprintf(err, errlen, "%s", sqlite3_errmsg(db));
    return -1;
  }
  if (sqlite3_step(s) == SQLITE_ROW) {
    version = sqlite3_column_int(s, 0);
  }
  sqlite3_finalize(s);
  if (version > CV_SCHEMA_VERSION) {
    snprintf(err, errlen,
             "choose_version tables are at version %d, newer than this "
             "plugin (%d)",
             version, CV_SCHEMA_VERSION);
    return -1;
  }
  for (; version < CV_SCHEMA_VERSION; version++) {
    char sql[128];
    if (exec(db, migrations[version], err, errlen)) {
      return -1;
    }
    snprintf(sql, sizeof sql,
             "INSERT OR REPLACE INTO cv_meta VALUES('schema_version', %d)",
             version + 1);
    if (exec(db, sql, err, errlen)) {
      return -1;
    }
  }
  return 0;
}

int cv_router_init(cv_router *r, const sy_api *api, sy_engine *e) {
  memset(r, 0, sizeof *r);
  r->api = api;
  r->e = e;
  r->db = api->db(e);
  return 0;
}

static void free_deltas(cv_router *r) {
  while (r->deltas) {
    cv_delta *d = r->deltas;
    r->deltas = d->next;
    free(d->workflow);
    free(d->flag);
    free(d);
  }
}

void cv_router_free(cv_router *r) {
  free_deltas(r);
  while (r->flags) {
    cv_flag *f = r->flags;
    r->flags = f->next;
    free(f->name);
    free(f->group);
    free(f);
  }
  for (int i = 0; i < CVQ__COUNT; i++) {
    sqlite3_finalize(r->stmt[i]);
  }
}

static sqlite3_stmt *stmt(cv_router *r, int q) {
  if (!r->stmt[q] &&
      sqlite3_prepare_v3(r->db, sql_text[q], -1, SQLITE_PREPARE_PERSISTENT,
                         &r->stmt[q], NULL) != SQLITE_OK) {
    snprintf(r->errmsg, sizeof r->errmsg, "choose_version: %s",
             sqlite3_errmsg(r->db));
    return NULL;
  }
  return r->stmt[q];
}

static int fail_db(cv_router *r, sqlite3_stmt *s) {
  snprintf(r->errmsg, sizeof r->errmsg, "choose_version: %s",
           sqlite3_errmsg(r->db));
  if (s) {
    sqlite3_reset(s);
  }
  return -1;
}

/* Another connection changed the database since we last looked? Asked at
 * most once per engine transaction: while it is open nobody else writes. */
static int db_changed(cv_router *r, int64_t tx, int *changed) {
  sqlite3_stmt *s;
  int64_t v;
  *changed = 0;
  if (tx == r->checked_tx) {
    return 0;
  }
  if (!(s = stmt(r, CVQ_DATA_VERSION))) {
    return -1;
  }
  if (sqlite3_step(s) != SQLITE_ROW) {
    return fail_db(r, s);
  }
  v = sqlite3_column_int64(s, 0);
  sqlite3_reset(s);
  *changed = v != r->data_version;
  r->data_version = v;
  r->checked_tx = tx;
  return 0;
}

static int load_flag(cv_router *r, cv_flag *f) {
  sqlite3_stmt *s = stmt(r, CVQ_FLAG);
  int rc;
  if (!s) {
    return -1;
  }
  sqlite3_bind_text(s, 1, f->name, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  free(f->group);
  f->group = NULL;
  if (rc == SQLITE_ROW) {
    f->exists = 1;
    f->rate_ppm = (uint32_t)sqlite3_column_int64(s, 0);
    f->killed = sqlite3_column_int(s, 1);
    f->group = strdup((const char *)sqlite3_column_text(s, 2));
    f->retired = sqlite3_column_int(s, 3);
    f->overrides = sqlite3_column_int64(s, 4);
    f->ramp_id = sqlite3_column_int64(s, 5);
  } else if (rc == SQLITE_DONE) {
    f->exists = f->killed = f->retired = 0;
    f->rate_ppm = 0;
    f->overrides = f->ramp_id = 0;
  } else {
    return fail_db(r, s);
  }
  sqlite3_reset(s);
  return 0;
}

/* The cached row of a flag, re-read when the database changed. */
static cv_flag *get_flag(cv_router *r, const char *name, int64_t tx) {
  cv_flag *f;
  int changed;
  if (db_changed(r, tx, &changed)) {
    return NULL;
  }
  for (f = r->flags; f; f = f->next) {
    if (changed) {
      f->checked_tx = 0;
    }
  }
  for (f = r->flags; f && strcmp(f->name, name) != 0; f = f->next) {
  }
  if (!f) {
    if (!(f = calloc(1, sizeof *f)) || !(f->name = strdup(name))) {
      free(f);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return NULL;
    }
    f->next = r->flags;
    r->flags = f;
  }
  if (f->checked_tx == 0) {
    if (load_flag(r, f)) {
      return NULL;
    }
  }
  f->checked_tx = tx;
  return f;
}

void cv_precedence(const cv_flag *f, cv_override ov, const cv_request *req,
                   uint64_t random, int64_t nth, cv_decision *out) {
  out->bucket = UINT32_MAX;
  out->rate_ppm = f->exists ? f->rate_ppm : 0;
  out->ramp_id = f->ramp_id;
  out->reused = 0;
  out->version = CV_V1;
  if (!f->exists) {
    out->reason = "no_flag"; /* new code ships dark */
  } else if (f->retired) {
    out->reason = "retired";
  } else if (f->killed) {
    out->reason = "kill_switch";
  } else if (req->missing_key) {
    out->reason = "missing_key";
  } else if (ov == CV_OVERRIDE_OPT_OUT) {
    out->reason = "opt_out";
  } else if (!req->eligible) {
    out->reason = "not_eligible";
  } else if (ov == CV_OVERRIDE_ALLOW) {
    out->version = CV_V2;
    out->reason = "allow";
  } else if (req->strategy == CV_STRATEGY_STICKY) {
    out->bucket = cv_bucket(f->group, strlen(f->group), req->key, req->key_len);
    out->version = out->bucket < f->rate_ppm ? CV_V2 : CV_V1;
    out->reason = "rollout";
  } else if (req->strategy == CV_STRATEGY_RANDOM) {
    out->version = random % CV_RATE_MAX_PPM < f->rate_ppm ? CV_V2 : CV_V1;
    out->reason = "random";
  } else {
    /* The n-th instance goes to V2 when floor(n * rate) steps up: exactly
     * rate of every million, spread evenly (25% = every 4th). */
    int64_t a = nth * (int64_t)f->rate_ppm / CV_RATE_MAX_PPM;
    int64_t b = (nth + 1) * (int64_t)f->rate_ppm / CV_RATE_MAX_PPM;
    out->version = b > a ? CV_V2 : CV_V1;
    out->reason = "every_nth";
  }
}

static int get_override(cv_router *r, const cv_flag *f, const cv_request *req,
                        cv_override *ov) {
  sqlite3_stmt *s;
  int rc;
  *ov = CV_OVERRIDE_NONE;
  /* Most flags have no overrides: skip the lookup then. */
  if (!f->overrides || !req->key) {
    return 0;
  }
  if (!(s = stmt(r, CVQ_OVERRIDE))) {
    return -1;
  }
  sqlite3_bind_text(s, 1, f->name, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, req->key, (int)req->key_len, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *ov = strcmp((const char *)sqlite3_column_text(s, 0), "allow") == 0
              ? CV_OVERRIDE_ALLOW
              : CV_OVERRIDE_OPT_OUT;
  } else if (rc != SQLITE_DONE) {
    return fail_db(r, s);
  }
  sqlite3_reset(s);
  return 0;
}

static int next_nth(cv_router *r, const cv_flag *f, int64_t *nth) {
  sqlite3_stmt *s = stmt(r, CVQ_NTH);
  if (!s) {
    return -1;
  }
  sqlite3_bind_text(s, 1, f->name, -1, SQLITE_STATIC);
  if (sqlite3_step(s) != SQLITE_ROW) {
    return fail_db(r, s);
  }
  *nth = sqlite3_column_int64(s, 0);
  /* Drain the RETURNING statement so the update completes. */
  while (sqlite3_step(s) == SQLITE_ROW) {
  }
  sqlite3_reset(s);
  return 0;
}

static int recorded(cv_router *r, int64_t instance_id, const char *flag,
                    cv_decision *out, int *found) {
  sqlite3_stmt *s = stmt(r, CVQ_GET_DECISION);
  int rc;
  *found = 0;
  if (!s) {
    return -1;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  sqlite3_bind_text(s, 2, flag, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    static const char *const reasons[] = {
        "no_flag", "retired", "kill_switch", "opt_out", "not_eligible", "allow",
        "rollout", "random",  "every_nth",   "forced",  "missing_key"};
    const char *reason = (const char *)sqlite3_column_text(s, 1);
    *found = 1;
    out->version = strcmp((const char *)sqlite3_column_text(s, 0), "v2") == 0
                       ? CV_V2
                       : CV_V1;
    /* Point at a static string: the statement's text dies at reset. */
    out->reason = "recorded";
    for (size_t i = 0; i < sizeof reasons / sizeof *reasons; i++) {
      if (strcmp(reason, reasons[i]) == 0) {
        out->reason = reasons[i];
      }
    }
    out->bucket = sqlite3_column_type(s, 2) == SQLITE_NULL
                      ? UINT32_MAX
                      : (uint32_t)sqlite3_column_int64(s, 2);
    out->rate_ppm = (uint32_t)sqlite3_column_int64(s, 3);
    out->ramp_id = sqlite3_column_int64(s, 4);
    out->reused = 1;
  } else if (rc != SQLITE_DONE) {
    return fail_db(r, s);
  }
  sqlite3_reset(s);
  return 0;
}

static cv_delta *delta(cv_router *r, const char *workflow, const char *flag,
                       int v2) {
  cv_delta *d;
  for (d = r->deltas; d; d = d->next) {
    if (d->v2 == v2 && strcmp(d->flag, flag) == 0 &&
        strcmp(d->workflow, workflow) == 0) {
      return d;
    }
  }
  if (!(d = calloc(1, sizeof *d)) || !(d->workflow = strdup(workflow)) ||
      !(d->flag = strdup(flag))) {
    if (d) {
      free(d->workflow);
      free(d);
    }
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return NULL;
  }
  d->v2 = v2;
  d->next = r->deltas;
  r->deltas = d;
  return d;
}

int cv_flush_counters(cv_router *r) {
  sqlite3_stmt *s;
  if (!r->deltas) {
    return 0;
  }
  if (!(s = stmt(r, CVQ_COUNTERS_ADD))) {
    return -1;
  }
  for (cv_delta *d = r->deltas; d; d = d->next) {
    sqlite3_bind_text(s, 1, d->workflow, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, d->flag, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, d->v2 ? "v2" : "v1", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, d->routed);
    sqlite3_bind_int64(s, 5, d->in_flight);
    sqlite3_bind_int64(s, 6, d->completed);
    sqlite3_bind_int64(s, 7, d->cancelled);
    sqlite3_bind_int64(s, 8, d->with_incidents);
    sqlite3_bind_int64(s, 9, d->incidents);
    sqlite3_bind_int64(s, 10, d->open_incidents);
    if (sqlite3_step(s) != SQLITE_DONE) {
      free_deltas(r);
      return fail_db(r, s);
    }
    sqlite3_reset(s);
  }
  free_deltas(r);
  return 0;
}

void cv_memo_free(cv_memo *m) {
  while (m) {
    cv_memo *next = m->next;
    free(m);
    m = next;
  }
}

/* Adds a decision just recorded to a fresh instance's memo. */
static int remember(cv_router *r, void **memo, const char *workflow,
                    const cv_request *req, int v2) {
  size_t flen = strlen(req->flag) + 1, wlen = strlen(workflow) + 1;
  cv_memo *m = malloc(sizeof *m + flen + wlen);
  if (!m) {
    snprintf(r->errmsg, sizeof r->errmsg, "choose_version: out of memory");
    return -1;
  }
  memcpy(m->flag, req->flag, flen);
  m->workflow = m->flag + flen;
  memcpy(m->workflow, workflow, wlen);
  m->v2 = v2;
  m->decided_at = req->now_ms;
  m->next = *memo;
  *memo = m;
  return 0;
}

static int record(cv_router *r, int64_t instance_id, const char *workflow,
                  const char *step, const cv_request *req, void **memo,
                  const cv_decision *d) {
  sqlite3_stmt *s = stmt(r, CVQ_PUT_DECISION);
  const char *v = d->version == CV_V2 ? "v2" : "v1";
  if (!s) {
    return -1;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  sqlite3_bind_text(s, 2, req->flag, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, workflow, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, step, -1, SQLITE_STATIC);
  if (req->key) {
    sqlite3_bind_text(s, 5, req->key, (int)req->key_len, SQLITE_STATIC);
  } else {
    sqlite3_bind_null(s, 5);
  }
  sqlite3_bind_text(s, 6, v, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 7, d->reason, -1, SQLITE_STATIC);
  if (d->bucket != UINT32_MAX) {
    sqlite3_bind_int64(s, 8, d->bucket);
  } else {
    sqlite3_bind_null(s, 8);
  }
  sqlite3_bind_int64(s, 9, d->rate_ppm);
  sqlite3_bind_int64(s, 10, d->ramp_id);
  sqlite3_bind_int64(s, 11, req->now_ms);
  sqlite3_bind_int64(s, 12, req->run_ms);
  sqlite3_bind_int64(s, 13, req->reruns);
  if (sqlite3_step(s) != SQLITE_DONE) {
    return fail_db(r, s);
  }
  sqlite3_reset(s);
  if (sqlite3_changes(r->db) == 0) {
    return 1; /* decided before: nothing counted */
  }
  if (memo && remember(r, memo, workflow, req, v[1] == '2')) {
    return -1;
  }
  {
    cv_delta *c = delta(r, workflow, req->flag, v[1] == '2');
    if (!c) {
      return -1;
    }
    c->routed++;
    c->in_flight++;
  }
  return 0;
}

int cv_route(cv_router *r, int64_t tx, const cv_request *req,
             cv_decision *out) {
  cv_flag *f = get_flag(r, req->flag, tx);
  cv_override ov;
  int64_t nth = 0;
  if (!f || get_override(r, f, req, &ov)) {
    return -1;
  }
  if (f->exists && !f->retired && !f->killed && !req->missing_key &&
      req->strategy == CV_STRATEGY_EVERY_NTH && ov == CV_OVERRIDE_NONE &&
      req->eligible && next_nth(r, f, &nth)) {
    return -1;
  }
  cv_precedence(f, ov, req, req->random, nth, out);
  return 0;
}

int cv_decide(cv_router *r, int64_t instance_id, const char *workflow,
              const char *step, const cv_request *req, const char *forced,
              void **memo, cv_decision *out) {
  int64_t tx = r->api->tx_begin(r->e);
  int found, rc;
  if (tx < 0) {
    snprintf(r->errmsg, sizeof r->errmsg,
             "choose_version: cannot open a transaction");
    return -1;
  }
  /* An instance never changes branch: a re-run reuses its decision. The
   * every_nth counter must not move for a re-run, so look first there;
   * otherwise deciding is free of side effects and the insert finds out. */
  if (req->strategy == CV_STRATEGY_EVERY_NTH && !forced) {
    if (recorded(r, instance_id, req->flag, out, &found)) {
      return -1;
    }
    if (found) {
      return 0;
    }
  }
  if (forced) {
    cv_flag *f = get_flag(r, req->flag, tx);
    if (!f) {
      return -1;
    }
    memset(out, 0, sizeof *out);
    out->version = strcmp(forced, "v2") == 0 ? CV_V2 : CV_V1;
    out->reason = "forced";
    out->bucket = UINT32_MAX;
    out->rate_ppm = f->rate_ppm;
    out->ramp_id = f->ramp_id;
  } else if (cv_route(r, tx, req, out)) {
    return -1;
  }
  rc = record(r, instance_id, workflow, step, req, memo, out);
  if (rc == 1) {
    return recorded(r, instance_id, req->flag, out, &found);
  }
  return rc;
}

/* What an event does to the counters of one decision, given the
 * incidents it has recorded so far. */
static void count_event(cv_delta *d, sy_event_type type, int incidents,
                        int open) {
  /* An instance waiting in an incident is not in flight; a retry puts it
   * back. */
  switch (type) {
    case SY_EVENT_COMPLETED:
      d->completed++;
      d->in_flight--;
      break;
    case SY_EVENT_INCIDENT:
      d->incidents++;
      d->open_incidents++;
      d->in_flight--;
      d->with_incidents += incidents == 0;
      break;
    case SY_EVENT_INCIDENT_RESOLVED:
      if (open > 0) {
        d->open_incidents--;
        d->in_flight++;
      }
      break;
    default:
      d->cancelled++;
      d->in_flight--;
  }
}

/* Binds an event's ?1 instance, ?2 time, ?3 and ?4 totals (each statement
 * uses some), and runs it. */
static int run_event(cv_router *r, sqlite3_stmt *u, const sy_event *ev) {
  const int64_t args[] = {ev->instance_id, ev->time_ms, ev->run_ms, ev->reruns};
  int n = sqlite3_bind_parameter_count(u);
  for (int i = 0; i < n && i < 4; i++) {
    sqlite3_bind_int64(u, i + 1, args[i]);
  }
  if (sqlite3_step(u) != SQLITE_DONE) {
    return fail_db(r, u);
  }
  sqlite3_reset(u);
  return 0;
}

/* A fresh instance's event: its memo holds every decision it has, none
 * with an incident yet (an incident is the last event of a stay in
 * memory), so each is updated by its key, with no lookup. */
static int fresh_event(cv_router *r, const sy_event *ev, int q) {
  sqlite3_stmt *u = stmt(r, q);
  if (!u) {
    return -1;
  }
  for (const cv_memo *m = ev->memo; m; m = m->next) {
    cv_delta *d = delta(r, m->workflow, m->flag, m->v2);
    if (!d) {
      return -1;
    }
    count_event(d, ev->type, 0, 0);
    sqlite3_bind_text(u, 5, m->flag, -1, SQLITE_STATIC);
    sqlite3_bind_int64(u, 6, m->decided_at);
    if (run_event(r, u, ev)) {
      return -1;
    }
    if (sqlite3_changes(r->db) != 1) {
      snprintf(r->errmsg, sizeof r->errmsg,
               "choose_version: the decision of instance %lld for %s is "
               "not where it was recorded",
               (long long)ev->instance_id, m->flag);
      return -1;
    }
  }
  return 0;
}

/* Applies an instance event to the decisions it concerns and to their
 * counters. A fresh instance's decisions are in its memo; others are
 * read first (instances that never met a choose_version node cost one
 * indexed read that finds nothing). */
int cv_on_event(cv_router *r, const sy_event *ev) {
  sqlite3_stmt *s, *u;
  int q, by_key, rc, n = 0;
  /* The statement by instance, and by key (-1: no fresh instance has the
   * event, which comes from a command). */
  switch (ev->type) {
    case SY_EVENT_COMPLETED:
      q = CVQ_EV_COMPLETED;
      by_key = CVQ_EV_COMPLETED_KEY;
      break;
    case SY_EVENT_INCIDENT:
      q = CVQ_EV_INCIDENT;
      by_key = CVQ_EV_INCIDENT_KEY;
      break;
    case SY_EVENT_INCIDENT_RESOLVED:
      q = CVQ_EV_RESOLVED;
      by_key = -1;
      break;
    default:
      q = CVQ_EV_CANCELLED;
      by_key = CVQ_EV_CANCELLED_KEY;
  }
  if (ev->fresh && by_key >= 0) {
    return fresh_event(r, ev, by_key);
  }
  if (!(s = stmt(r, CVQ_DECISIONS_OF))) {
    return -1;
  }
  sqlite3_bind_int64(s, 1, ev->instance_id);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    const char *version = (const char *)sqlite3_column_text(s, 2);
    int incidents = sqlite3_column_int(s, 3);
    int open = sqlite3_column_int(s, 4);
    cv_delta *d =
        delta(r, (const char *)sqlite3_column_text(s, 1),
              (const char *)sqlite3_column_text(s, 0), version[1] == '2');
    if (!d) {
      sqlite3_reset(s);
      return -1;
    }
    n++;
    count_event(d, ev->type, incidents, open);
  }
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) {
    return fail_db(r, NULL);
  }
  /* Instances never routed by a choose_version node: nothing to do. */
  if (n == 0) {
    return 0;
  }
  if (!(u = stmt(r, q))) {
    return -1;
  }
  return run_event(r, u, ev);
}
