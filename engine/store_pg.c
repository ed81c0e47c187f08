/* The PostgreSQL backend of the store (--db postgresql://...): libpq, one
 * connection per engine. Statements are the store's and plugins' own texts
 * (?N placeholders become $N), prepared once on the server, run with their
 * parameters as text; a row-returning one reads its whole result, then
 * hands it out row by row.
 *
 * Engines on several hosts share one database: an engine's turn takes
 * the write lock shared (pg_begin), claims with SKIP LOCKED, and writes
 * only rows it owns; a command takes the lock alone. Other processes'
 * changes reach an engine through a change counter read at the start of
 * each turn, and it hears of new work through LISTEN/NOTIFY on its loop.
 * A write transaction's writes that return no rows go into libpq's
 * pipeline and are answered together (pg_drain); an engine's instance
 * updates among them, their fences checked when answered. A call that
 * needs an answer still blocks the loop for its round trip. */
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "error.h"
#include "store_int.h"

/* The advisory lock every write transaction takes (any constant: the
 * database is the engine's). */
#define WRITE_LOCK "7275627973776974" /* "switchy" */

typedef struct pg_stmt {
  sy_stmt base;
  sy_store *store;
  char name[32];
  int nparams;
  const char **values; /* bound (text; NULL: SQL NULL) */
  char (*num)[32];     /* storage of bound numbers */
  char **owned;        /* copies of texts bound with a shorter length */
  PGresult *res;
  int row, nrows;
  int64_t changes;
  /* A write that returns no rows: in a transaction it is sent without
   * waiting for its answer (pg_drain). queued: its sends not answered
   * yet; sent: stepped since its reset. */
  int deferrable, queued, sent;
  char what[64]; /* the start of its text, for messages */
  int rollback;  /* ROLLBACK: runs even when a queued write failed */
  int commit;    /* COMMIT: fails when the server rolled back instead */
} pg_stmt;

/* ---------------------------------------------------------------------
 * Errors */

/* SQLSTATEs that mean "another holds what we want; try again later". */
/* A write in a read transaction (read_only_sql_transaction) is busy too,
 * as SQLite has it: the caller is to begin again with the write lock. */
static int busy_state(const char *state) {
  return state && (strcmp(state, "55P03") == 0 || /* lock_not_available */
                   strcmp(state, "40001") == 0 || /* serialization_failure */
                   strcmp(state, "40P01") == 0 || /* deadlock_detected */
                   strcmp(state, "25006") == 0);
}

/* libpq's messages run over several lines ("...\n\tThis probably
 * means..."): one line, for a log. */
static void one_line(char *m) {
  char *w = m;
  for (const char *r = m; *r; r++) {
    if (*r == '\n' || *r == '\t') {
      if (w > m && w[-1] != ' ') {
        *w++ = ' ';
      }
    } else {
      *w++ = *r;
    }
  }
  *w = '\0';
}

/* Notices (and the server's last words on a connection it ends) are not
 * the engine's to print: what fails is said by the failure. */
static void quiet(void *arg, const char *message) {
  (void)arg;
  (void)message;
}

/* A failed result (or a connection failure, res NULL): the message,
 * without libpq's trailing newline, as the store's error. */
static int pg_fail(sy_store *st, PGresult *res, const char *what) {
  const char *msg = res ? PQresultErrorMessage(res) : "";
  size_t n;
  if (!*msg) {
    msg = PQerrorMessage(st->pg);
  }
  n = strlen(msg);
  while (n && (msg[n - 1] == '\n' || msg[n - 1] == ' ')) {
    n--;
  }
  const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
  st->pg_busy = busy_state(state);
  st->conflicted =
      state && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0);
  if (state && strcmp(state, "55P03") == 0) {
    /* As SQLite says it: another writer held the database past the busy
     * timeout. */
    sy_store_set_error(st, 0,
                       "%s: database is locked (another process held the "
                       "write lock for more than %d ms)",
                       what, st->busy_timeout_ms);
    return SY_EBUSY;
  }
  sy_store_set_error(st, 0, "%s: %.*s", what, (int)n, msg);
  one_line(st->errmsg);
  return st->pg_busy ? SY_EBUSY : SY_ESTORE;
}

static int pg_db_error(sy_store *st, const char *what) {
  /* The message of the failure is already recorded: prefix what failed. */
  char msg[sizeof st->errmsg];
  snprintf(msg, sizeof msg, "%s", st->errmsg);
  sy_store_set_error(st, 0, "%s: %s", what, msg);
  return st->pg_busy ? SY_EBUSY : SY_ESTORE;
}

/* ---------------------------------------------------------------------
 * Statements */

#define MAX_PARAMS 64

/* ?N becomes $N and a bare ? the next number, outside quotes; the count of
 * parameters is the largest number met, and used[] says which were (a
 * statement may take a parameter it does not use: one binding serving two
 * statements). */
static char *convert(const char *sql, int *nparams, char used[MAX_PARAMS]) {
  size_t len = strlen(sql);
  char *out = malloc(len * 2 + 1), *o = out;
  int next = 1, max = 0;
  char quote = 0;
  if (!out) {
    return NULL;
  }
  memset(used, 0, MAX_PARAMS);
  for (const char *p = sql; *p; p++) {
    if (quote) {
      quote = *p == quote ? 0 : quote;
      *o++ = *p;
    } else if (*p == '\'' || *p == '"') {
      quote = *p;
      *o++ = *p;
    } else if (*p == '?') {
      int n = 0;
      if (p[1] >= '0' && p[1] <= '9') {
        while (p[1] >= '0' && p[1] <= '9') {
          n = n * 10 + (*++p - '0');
        }
      } else {
        n = next;
      }
      if (n < 1 || n > MAX_PARAMS) {
        free(out);
        return NULL;
      }
      used[n - 1] = 1;
      next = n + 1;
      max = n > max ? n : max;
      o += sprintf(o, "$%d", n);
    } else {
      *o++ = *p;
    }
  }
  *o = '\0';
  *nparams = max;
  return out;
}

/* ---------------------------------------------------------------------
 * Writes in a pipeline. A transaction's writes that return no rows (a
 * step run recorded, a decision's row) are sent at once and not waited
 * for: they queue in libpq's pipeline, and are answered together when
 * something needs an answer (a statement returning rows, the changes of
 * a queued write, the commit). A turn then waits for the server once
 * where it waited for each write. A queued write that fails fails the
 * call that drained it, and the transaction with it: what the turn did
 * is rolled back as after any failed statement. */

static int pg_drain(sy_store *st) {
  PGresult *res;
  int rc = 0, cut = 0; /* cut: the connection failed, no answers to read */
  if (!st->pg_queued) {
    return st->pg_queue_rc;
  }
  if (!PQpipelineSync(st->pg)) {
    rc = pg_fail(st, NULL, "send queued writes");
    cut = 1;
  }
  for (int i = 0; i < st->pg_queued; i++) {
    pg_stmt *p = st->pg_queue[i].p;
    int64_t fenced = st->pg_queue[i].fenced;
    int64_t expect = st->pg_queue[i].expect;
    p->queued--;
    if (cut) {
      continue;
    }
    if (!(res = PQgetResult(st->pg))) {
      rc = rc ? rc : pg_fail(st, NULL, "queued write");
      cut = 1;
      continue;
    }
    if (PQresultStatus(res) == PGRES_COMMAND_OK) {
      p->changes = strtoll(PQcmdTuples(res), NULL, 10);
      if (fenced && p->changes != 1 && !rc) {
        rc = sy_store_set_error(st, SY_ESTATE,
                                "instance %lld is no longer held by this "
                                "engine",
                                (long long)fenced);
        st->fence_failed = 1;
      } else if (expect >= 0 && p->changes != expect && !rc) {
        rc = sy_store_set_error(st, SY_ESTATE,
                                "a write changed %lld rows where %lld were "
                                "expected (%s)",
                                (long long)p->changes, (long long)expect,
                                p->what);
      }
    } else if (PQresultStatus(res) != PGRES_PIPELINE_ABORTED && !rc) {
      rc = pg_fail(st, res, "queued write"); /* the first failure */
    }
    PQclear(res);
    while ((res = PQgetResult(st->pg))) { /* up to its end: NULL */
      PQclear(res);
    }
  }
  st->pg_queued = 0;
  if (!cut) {
    /* the pipeline's end: its sync point */
    res = PQgetResult(st->pg);
    if ((!res || PQresultStatus(res) != PGRES_PIPELINE_SYNC) && !rc) {
      rc = pg_fail(st, res, "queued writes");
    }
    PQclear(res);
  }
  if (!PQexitPipelineMode(st->pg) && !rc) {
    rc = pg_fail(st, NULL, "leave the pipeline");
  }
  /* Until the rollback, every statement fails as this one did: the
   * server's transaction is aborted, and a COMMIT there would roll back. */
  st->pg_queue_rc = rc;
  return rc;
}

static int pg_send(pg_stmt *p) {
  sy_store *st = p->store;
  if (st->pg_queued == (int)(sizeof st->pg_queue / sizeof st->pg_queue[0])) {
    int rc = pg_drain(st); /* bounded: answers fit the socket's buffers */
    if (rc) {
      return rc;
    }
  }
  if ((PQpipelineStatus(st->pg) == PQ_PIPELINE_OFF &&
       !PQenterPipelineMode(st->pg)) ||
      !PQsendQueryPrepared(st->pg, p->name, p->nparams, p->values, NULL, NULL,
                           0)) {
    return pg_fail(st, NULL, "send a write");
  }
  st->pg_queue[st->pg_queued].p = p;
  st->pg_queue[st->pg_queued].expect = -1;
  st->pg_queue[st->pg_queued++].fenced = 0;
  p->queued++;
  p->sent = 1;
  return SY_DONE;
}

/* The statement's last run is the last write queued: it was queued. */
static int pg_fence(sy_store *st, sy_stmt *s, int64_t id) {
  if (!st->pg_queued || st->pg_queue[st->pg_queued - 1].p != (pg_stmt *)s ||
      st->pg_queue[st->pg_queued - 1].fenced) {
    return 0;
  }
  st->pg_queue[st->pg_queued - 1].fenced = id;
  return 1;
}

static int pg_step(sy_stmt *s) {
  pg_stmt *p = (pg_stmt *)s;
  sy_store *st = p->store;
  if (p->sent) {
    return SY_DONE;
  }
  if (p->deferrable && st->in_tx && st->pg_writing) {
    return pg_send(p);
  }
  if (!p->res) {
    ExecStatusType status;
    int rc = pg_drain(st);
    if (rc && !p->rollback) {
      return rc;
    }
    st->pg_queue_rc = 0;
    p->res =
        PQexecPrepared(st->pg, p->name, p->nparams, p->values, NULL, NULL, 0);
    status = p->res ? PQresultStatus(p->res) : PGRES_FATAL_ERROR;
    if (status != PGRES_TUPLES_OK && status != PGRES_COMMAND_OK) {
      rc = pg_fail(st, p->res, "statement");
      PQclear(p->res);
      p->res = NULL;
      return rc;
    }
    if (p->commit && strcmp(PQcmdStatus(p->res), "COMMIT") != 0) {
      sy_store_set_error(st, 0, "commit: the server rolled back (%s)",
                         PQcmdStatus(p->res));
      PQclear(p->res);
      p->res = NULL;
      return SY_ESTORE;
    }
    p->nrows = PQntuples(p->res);
    p->changes = strtoll(PQcmdTuples(p->res), NULL, 10);
    p->row = -1;
  }
  return ++p->row < p->nrows ? SY_ROW : SY_DONE;
}

static void pg_reset(sy_stmt *s) {
  pg_stmt *p = (pg_stmt *)s;
  PQclear(p->res);
  p->res = NULL;
  p->sent = 0;
}

static void pg_finalize(sy_stmt *s) {
  pg_stmt *p = (pg_stmt *)s;
  char sql[64];
  if (p->queued) {
    pg_drain(p->store); /* the queue must not point at it */
  }
  PQclear(p->res);
  if (p->store->pg && PQstatus(p->store->pg) == CONNECTION_OK &&
      PQtransactionStatus(p->store->pg) == PQTRANS_IDLE) {
    snprintf(sql, sizeof sql, "DEALLOCATE %s", p->name);
    PQclear(PQexec(p->store->pg, sql));
  }
  for (int k = 0; k < p->nparams; k++) {
    free(p->owned[k]);
  }
  free(p->values);
  free(p->num);
  free(p->owned);
  free(p);
}

static int param(pg_stmt *p, int i) {
  return i >= 1 && i <= p->nparams ? i - 1 : -1;
}

static void pg_bind_int(sy_stmt *s, int i, int64_t v) {
  pg_stmt *p = (pg_stmt *)s;
  int k = param(p, i);
  if (k >= 0) {
    snprintf(p->num[k], sizeof p->num[k], "%lld", (long long)v);
    p->values[k] = p->num[k];
  }
}

static void pg_bind_double(sy_stmt *s, int i, double v) {
  pg_stmt *p = (pg_stmt *)s;
  int k = param(p, i);
  if (k >= 0) {
    snprintf(p->num[k], sizeof p->num[k], "%.17g", v);
    p->values[k] = p->num[k];
  }
}

/* PostgreSQL's text holds no NUL: a text is sent up to its NUL, and one
 * bound with a length shorter than that is sent as a copy of its part. */
static void pg_bind_text(sy_stmt *s, int i, const char *v, int64_t len) {
  pg_stmt *p = (pg_stmt *)s;
  int k = param(p, i);
  if (k < 0) {
    return;
  }
  free(p->owned[k]);
  p->owned[k] = NULL;
  if (v && len >= 0 && strnlen(v, (size_t)len + 1) > (size_t)len &&
      (p->owned[k] = strndup(v, (size_t)len))) {
    v = p->owned[k];
  }
  p->values[k] = v;
}

static const char *value(sy_stmt *s, int col) {
  pg_stmt *p = (pg_stmt *)s;
  if (!p->res || p->row < 0 || p->row >= p->nrows ||
      PQgetisnull(p->res, p->row, col)) {
    return NULL;
  }
  return PQgetvalue(p->res, p->row, col);
}

static int pg_column_null(sy_stmt *s, int col) {
  return value(s, col) == NULL;
}

static int64_t pg_column_int(sy_stmt *s, int col) {
  const char *v = value(s, col);
  if (!v) {
    return 0;
  }
  if (v[0] == 't' || v[0] == 'f') { /* a boolean */
    return v[0] == 't';
  }
  return strtoll(v, NULL, 10);
}

static double pg_column_double(sy_stmt *s, int col) {
  const char *v = value(s, col);
  return v ? strtod(v, NULL) : 0;
}

static const char *pg_column_text(sy_stmt *s, int col) {
  return value(s, col);
}

static int64_t pg_column_bytes(sy_stmt *s, int col) {
  pg_stmt *p = (pg_stmt *)s;
  return value(s, col) ? PQgetlength(p->res, p->row, col) : 0;
}

static int pg_column_count(sy_stmt *s) {
  pg_stmt *p = (pg_stmt *)s;
  return p->res ? PQnfields(p->res) : 0;
}

static const char *pg_column_name(sy_stmt *s, int col) {
  pg_stmt *p = (pg_stmt *)s;
  return p->res ? PQfname(p->res, col) : NULL;
}

/* Type OIDs of pg_type.h. */
enum {
  BOOLOID = 16,
  INT8OID = 20,
  INT2OID = 21,
  INT4OID = 23,
  FLOAT4OID = 700,
  FLOAT8OID = 701,
  NUMERICOID = 1700
};

static int pg_column_type(sy_stmt *s, int col) {
  pg_stmt *p = (pg_stmt *)s;
  const char *v = value(s, col);
  if (!v) {
    return SY_COL_NULL;
  }
  switch (PQftype(p->res, col)) {
    case BOOLOID:
    case INT2OID:
    case INT4OID:
    case INT8OID:
      return SY_COL_INT;
    case NUMERICOID: /* sum() of integers */
      return strchr(v, '.') ? SY_COL_DOUBLE : SY_COL_INT;
    case FLOAT4OID:
    case FLOAT8OID:
      return SY_COL_DOUBLE;
    default:
      return SY_COL_TEXT;
  }
}

/* A queued write's changes are known once it is answered. A failed
 * drain leaves them 0, and fails every later statement (pg_drain). */
static int64_t pg_changes(sy_stmt *s) {
  pg_stmt *p = (pg_stmt *)s;
  if (p->queued && pg_drain(p->store)) {
    p->changes = 0;
  }
  return p->changes;
}

static const char *pg_error(sy_stmt *s) {
  return ((pg_stmt *)s)->store->errmsg;
}

/* A queued write's check waits for its answer (pg_drain); an answered
 * one is checked now. */
static int pg_expect_changes(sy_stmt *s, int64_t n) {
  pg_stmt *p = (pg_stmt *)s;
  sy_store *st = p->store;
  if (p->queued) {
    for (int i = st->pg_queued - 1; i >= 0; i--) {
      if (st->pg_queue[i].p == p) { /* its last step */
        st->pg_queue[i].expect = n;
        return 0;
      }
    }
  }
  if (p->changes != n) {
    sy_store_set_error(st, SY_ESTATE,
                       "a write changed %lld rows where %lld were expected "
                       "(%s)",
                       (long long)p->changes, (long long)n, p->what);
    return SY_ESTATE;
  }
  return 0;
}

static const sy_stmt_methods pg_methods = {
    .step = pg_step,
    .reset = pg_reset,
    .finalize = pg_finalize,
    .bind_int = pg_bind_int,
    .bind_double = pg_bind_double,
    .bind_text = pg_bind_text,
    .column_null = pg_column_null,
    .column_int = pg_column_int,
    .column_double = pg_column_double,
    .column_text = pg_column_text,
    .column_bytes = pg_column_bytes,
    .column_count = pg_column_count,
    .column_name = pg_column_name,
    .column_type = pg_column_type,
    .changes = pg_changes,
    .error = pg_error,
    .expect_changes = pg_expect_changes,
};

/* Whether a statement's text begins with this word (any case). */
static int starts(const char *sql, const char *word) {
  sql += strspn(sql, " \t\n");
  return strncasecmp(sql, word, strlen(word)) == 0;
}

static sy_stmt *pg_prepare(sy_store *st, const char *sql) {
  pg_stmt *p = calloc(1, sizeof *p);
  char *text = NULL, used[MAX_PARAMS];
  Oid types[MAX_PARAMS];
  PGresult *res;
  int n = 0;
  if (p && !(text = convert(sql, &n, used))) {
    sy_store_set_error(st, SY_EINVAL,
                       "prepare: parameters are ?1 to ?%d: %.60s", MAX_PARAMS,
                       sql);
    goto fail;
  }
  /* A parameter the text does not use has no type to infer: text. */
  for (int k = 0; k < n; k++) {
    types[k] = used[k] ? 0 : 25;
  }
  if (!p || (n && (!(p->values = calloc((size_t)n, sizeof *p->values)) ||
                   !(p->num = calloc((size_t)n, sizeof *p->num)) ||
                   !(p->owned = calloc((size_t)n, sizeof *p->owned))))) {
    sy_store_set_error(st, SY_ENOMEM, "out of memory");
    goto fail;
  }
  p->base.m = &pg_methods;
  p->store = st;
  p->nparams = n;
  p->deferrable = (starts(sql, "INSERT") || starts(sql, "UPDATE") ||
                   starts(sql, "DELETE")) &&
                  !strstr(sql, "RETURNING") && !strstr(sql, "returning");
  snprintf(p->what, sizeof p->what, "%.56s%s", sql + strspn(sql, " \t\n"),
           strlen(sql) > 56 ? "..." : "");
  p->rollback = starts(sql, "ROLLBACK");
  p->commit = starts(sql, "COMMIT");
  snprintf(p->name, sizeof p->name, "sy%lld", (long long)++st->pg_prepared);
  if (pg_drain(st)) {
    goto fail;
  }
  res = PQprepare(st->pg, p->name, text, n, types);
  if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
    char what[96];
    snprintf(what, sizeof what, "prepare \"%.60s%s\"", sql,
             strlen(sql) > 60 ? "..." : "");
    pg_fail(st, res, what);
    PQclear(res);
    goto fail;
  }
  PQclear(res);
  free(text);
  return &p->base;
fail:
  free(text);
  if (p) {
    free(p->values);
    free(p->num);
    free(p->owned);
    free(p);
  }
  return NULL;
}

/* ---------------------------------------------------------------------
 * The connection */

static int pg_exec(sy_store *st, const char *script) {
  PGresult *res;
  ExecStatusType status;
  int rc;
  if (!*script) {
    return 0; /* a migration with nothing left to do here */
  }
  if ((rc = pg_drain(st)) && !starts(script, "ROLLBACK")) {
    return rc;
  }
  st->pg_queue_rc = 0;
  res = PQexec(st->pg, script);
  status = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    rc = pg_fail(st, res, "run");
    PQclear(res);
    return rc;
  }
  PQclear(res);
  return 0;
}

static int pg_tx_open(sy_store *st) {
  PGTransactionStatusType t = PQtransactionStatus(st->pg);
  return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

/* A command's write transaction takes the write lock alone, and an
 * engine's turn (sy_store_share_writes) takes it shared: engines run
 * beside each other, each claiming rows the others have not locked
 * (SKIP LOCKED) and writing only what it owns, while a command waits for
 * the turns in progress and holds every engine off until it commits, so
 * that what it read stays true meanwhile (as on SQLite). A command
 * waiting for the lock is queued ahead of turns asking after it. The
 * lock is the transaction's, let go at its end; waiting for it is bounded
 * by lock_timeout (the busy timeout), past which the wait fails as busy.
 * A reader sees one snapshot and cannot write: a write there fails as
 * busy, and the caller begins again as a writer (as SQLite refuses to
 * turn a read into a write once another process wrote). A writer reads
 * the change counter in the same round trip (pg_data_version). */
static int pg_begin(sy_store *st, int write) {
  char sql[256];
  PGresult *res;
  int rc = 0;
  pg_drain(st); /* what a transaction that ended without a word left */
  st->pg_queue_rc = 0;
  st->fence_failed = 0;
  if (!write) {
    snprintf(sql, sizeof sql,
             "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
  } else {
    snprintf(sql, sizeof sql, "BEGIN; SELECT pg_advisory_xact_lock%s(%s)%s",
             st->shared_writes ? "_shared" : "", WRITE_LOCK,
             st->pg_counted ? "; SELECT coalesce((SELECT value FROM sy_meta "
                              "WHERE key = 'changes'), 0)"
                            : "");
  }
  res = PQexec(st->pg, sql);
  if (!res || (PQresultStatus(res) != PGRES_COMMAND_OK &&
               PQresultStatus(res) != PGRES_TUPLES_OK)) {
    rc = pg_fail(st, res, "begin");
  } else if (write && st->pg_counted && PQntuples(res) == 1) {
    st->pg_changes = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    st->pg_changes_seq = st->tx_seq + 1; /* the transaction beginning */
  }
  PQclear(res);
  st->pg_exclusive = write && !st->shared_writes;
  st->pg_writing = write;
  if (rc && pg_tx_open(st)) {
    PQclear(PQexec(st->pg, "ROLLBACK")); /* the BEGIN, not the lock */
  }
  return rc;
}

/* Whatever changes what a plugin caches (its tables' triggers call
 * sy_note_change(): migration 6) adds one to the change counter, in the
 * changing transaction. Read once per transaction, it is the
 * data_version: a transaction that begins after such a commit reads the
 * new count. */
static int pg_data_version(sy_store *st, int64_t *v) {
  if (!st->pg_counted) {
    *v = ++st->pg_version; /* no counter to read: changed at every look */
    return 0;
  }
  if (!st->in_tx || st->pg_changes_seq != st->tx_seq) {
    PGresult *res;
    int rc = pg_drain(st);
    if (rc) {
      return rc;
    }
    res = PQexec(st->pg,
                 "SELECT coalesce((SELECT value FROM sy_meta WHERE key = "
                 "'changes'), 0)");
    if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
      rc = pg_fail(st, res, "read the change counter");
    } else {
      st->pg_changes = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
      st->pg_changes_seq = st->in_tx ? st->tx_seq : 0;
    }
    PQclear(res);
    if (rc) {
      return rc;
    }
  }
  *v = st->pg_changes;
  return 0;
}

/* ---------------------------------------------------------------------
 * Announcements: NOTIFY and LISTEN on one channel. Engines are told when
 * a command committed (instances started, retried, signalled; a flag
 * changed), when an engine gave instances back, and when a cached row
 * changed (sy_note_change), so that an idle engine looks at once rather
 * than at its next periodic look. They are hints: what an engine does
 * is decided by what its transaction reads. */

#define CHANNEL "switchyard"

static int pg_listen(sy_store *st) {
  return pg_exec(st, "LISTEN " CHANNEL);
}

static int pg_socket(sy_store *st) {
  return PQsocket(st->pg);
}

static int pg_notified(sy_store *st, int read) {
  PGnotify *n;
  int count = 0;
  if (read) {
    PQconsumeInput(st->pg); /* a failure shows at the next statement */
  }
  while ((n = PQnotifies(st->pg))) {
    count++;
    PQfreemem(n);
  }
  return count;
}

/* Delivered at the commit, and only if it commits. */
static int pg_before_commit(sy_store *st) {
  if (!st->pg_exclusive && !st->made_work) {
    return 0;
  }
  return pg_exec(st, "NOTIFY " CHANNEL);
}

static int pg_busy(sy_store *st) {
  return st->pg_busy;
}

static int64_t pg_last_insert_id(sy_store *st) {
  PGresult *res = pg_drain(st) ? NULL : PQexec(st->pg, "SELECT lastval()");
  int64_t id = 0;
  if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
    id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  }
  PQclear(res);
  return id;
}

/* The schema's version, in a table of its own (0: none yet). */
static int schema_version(sy_store *st, int *version) {
  PGresult *res =
      PQexec(st->pg, "SELECT value FROM sy_meta WHERE key = 'schema_version'");
  *version = 0;
  if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
    int rc = pg_fail(st, res, "read the schema version");
    PQclear(res);
    return rc;
  }
  if (PQntuples(res) == 1) {
    *version = atoi(PQgetvalue(res, 0, 0));
  }
  PQclear(res);
  return 0;
}

/* Whether the database has switchyard's tables (sy_meta) yet. */
static int has_schema(sy_store *st, int *yes) {
  PGresult *res = PQexec(st->pg, "SELECT to_regclass('sy_meta') IS NOT NULL");
  int rc = 0;
  if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
    rc = pg_fail(st, res, "look for the schema");
  } else {
    *yes = PQgetvalue(res, 0, 0)[0] == 't';
  }
  PQclear(res);
  return rc;
}

/* A look without the lock first (a current schema is the common case),
 * then everything under the write lock: processes opening a new database
 * at once must not race to create the same tables, which CREATE TABLE IF
 * NOT EXISTS does not prevent on PostgreSQL. */
static int migrate(sy_store *st) {
  int version = 0, rc, yes = 0;
  char sql[128];
  if ((rc = has_schema(st, &yes)) ||
      (yes && (rc = schema_version(st, &version)))) {
    return rc;
  }
  if (version == sy__schema_version) {
    return 0;
  }
  if ((rc = pg_begin(st, 1)) ||
      (rc = pg_exec(st,
                    "CREATE TABLE IF NOT EXISTS sy_meta(key TEXT "
                    "PRIMARY KEY, value BIGINT NOT NULL)")) ||
      (rc = schema_version(st, &version))) {
    pg_exec(st, "ROLLBACK");
    return rc;
  }
  if (version > sy__schema_version) {
    pg_exec(st, "ROLLBACK");
    return sy_store_set_error(st, SY_ESTORE,
                              "database schema version %d is newer than this "
                              "switchyard (%d): upgrade switchyard",
                              version, sy__schema_version);
  }
  for (; version < sy__schema_version; version++) {
    if ((rc = pg_exec(st, sy__pg_migrations[version]))) {
      pg_exec(st, "ROLLBACK");
      return rc;
    }
  }
  snprintf(sql, sizeof sql,
           "INSERT INTO sy_meta VALUES('schema_version', %d) ON CONFLICT(key) "
           "DO UPDATE SET value = excluded.value",
           sy__schema_version);
  if ((rc = pg_exec(st, sql)) || (rc = pg_exec(st, "COMMIT"))) {
    pg_exec(st, "ROLLBACK");
  }
  return rc;
}

/* The URL as a person gave it, its password (if any) left out. */
static void shown(const char *where, char *buf, size_t len) {
  const char *at = strchr(where, '@'), *scheme = strstr(where, "://");
  const char *colon = scheme ? strchr(scheme + 3, ':') : NULL;
  if (at && colon && colon < at) {
    snprintf(buf, len, "%.*s:***%s", (int)(colon - where), where, at);
  } else {
    snprintf(buf, len, "%s", where);
  }
}

static int pg_open(sy_store *st, const char *where, const sy_store_opts *opts,
                   char *err, size_t errlen) {
  char url[512], sql[96];
  int rc;
  shown(where, url, sizeof url);
  st->pg = PQconnectdb(where);
  if (!st->pg || PQstatus(st->pg) != CONNECTION_OK) {
    const char *msg = st->pg ? PQerrorMessage(st->pg) : "out of memory";
    size_t n = strlen(msg);
    while (n && msg[n - 1] == '\n') {
      n--;
    }
    snprintf(err, errlen, "cannot open database %s: %.*s", url, (int)n, msg);
    return SY_ESTORE;
  }
  PQsetNoticeProcessor(st->pg, quiet, NULL);
  /* Quiet notices ("relation already exists, skipping"); a bounded wait
   * for the write lock, as SQLite's busy timeout. */
  snprintf(sql, sizeof sql,
           "SET client_min_messages = warning; SET lock_timeout = %d",
           st->busy_timeout_ms);
  rc = pg_exec(st, sql);
  if (!rc && opts->sync == SY_SYNC_NORMAL) {
    rc = pg_exec(st, "SET synchronous_commit = off");
  }
  if (!rc && !opts->read_only) {
    rc = migrate(st);
  }
  st->pg_counted = !rc;
  if (rc) {
    snprintf(err, errlen, "database %s: %s", url, st->errmsg);
  }
  return rc;
}

/* A database whose connection fails "exists" here: opening it says why. */
static int pg_exists(const char *where) {
  sy_store st = {.pg = PQconnectdb(where)};
  int yes = 1;
  if (st.pg && PQstatus(st.pg) == CONNECTION_OK && has_schema(&st, &yes)) {
    yes = 1;
  }
  PQfinish(st.pg);
  return yes;
}

static void pg_close(sy_store *st) {
  PQfinish(st->pg);
  st->pg = NULL;
}

/* A table whose id is an identity column had its ids given: the
 * sequence behind it must go on from the largest. */
static int pg_copied(sy_store *st, const char *table) {
  const char *params[1] = {table};
  PGresult *res;
  char sql[256];
  int identity, rc;
  if ((rc = pg_drain(st))) {
    return rc;
  }
  res = PQexecParams(
      st->pg,
      "SELECT 1 FROM information_schema.columns WHERE table_schema = "
      "current_schema() AND table_name = $1 AND column_name = 'id' AND "
      "is_identity = 'YES'",
      1, NULL, params, NULL, NULL, 0);
  if (!res || PQresultStatus(res) != PGRES_TUPLES_OK) {
    rc = pg_fail(st, res, "read the columns");
    PQclear(res);
    return rc;
  }
  identity = PQntuples(res) == 1;
  PQclear(res);
  if (identity) {
    snprintf(sql, sizeof sql,
             "SELECT setval(pg_get_serial_sequence('\"%s\"', 'id'), max(id)) "
             "FROM \"%s\" HAVING max(id) IS NOT NULL",
             table, table);
    rc = pg_exec(st, sql);
  }
  return rc;
}

static int pg_clock(sy_store *st, int64_t *ms) {
  PGresult *res;
  int rc;
  if ((rc = pg_drain(st))) {
    return rc;
  }
  res = PQexec(st->pg,
               "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint");
  if (!res || PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
    rc = pg_fail(st, res, "read the server's clock");
  } else {
    *ms = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
  }
  PQclear(res);
  return rc;
}

static int pg_lost(sy_store *st) {
  return PQstatus(st->pg) == CONNECTION_BAD;
}

const sy__backend sy__postgres = {
    .name = "postgresql",
    .postgres = 1,
    .open = pg_open,
    .close = pg_close,
    .exists = pg_exists,
    .prepare = pg_prepare,
    .exec = pg_exec,
    .begin = pg_begin,
    .tx_open = pg_tx_open,
    .data_version = pg_data_version,
    .busy = pg_busy,
    .last_insert_id = pg_last_insert_id,
    .db_error = pg_db_error,
    .tables_sql =
        "SELECT tablename FROM pg_catalog.pg_tables WHERE "
        "schemaname = current_schema()",
    .copied = pg_copied,
    .clock = pg_clock,
    .lost = pg_lost,
    .listen = pg_listen,
    .socket = pg_socket,
    .notified = pg_notified,
    .before_commit = pg_before_commit,
    .fence = pg_fence,
};
