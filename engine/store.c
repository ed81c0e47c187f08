/* The durable store (see store.h): schema, migrations and every statement,
 * prepared once into a cache indexed by an enum so the SQL text lives in one
 * place and the hot path never re-parses it. */
#include "store.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "error.h"

/* Each migration moves the schema from version i to i+1; user_version
 * records where a database is. Never edit a released migration: add one. */
static const char *const migrations[] = {
    /* 1: instances, their history, incidents, pinned definitions. */
    "CREATE TABLE definitions("
    "  hash TEXT PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  path TEXT,"
    "  source TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE instances("
    "  id INTEGER PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  def_hash TEXT NOT NULL REFERENCES definitions(hash),"
    "  state TEXT NOT NULL,"
    "  step TEXT,"
    "  attempt INTEGER NOT NULL DEFAULT 1,"
    /* Incident retries so far: part of the idempotency key, so a retried
     * step's calls are not taken for the failed ones. */
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  vars TEXT NOT NULL,"
    "  wake_at INTEGER,"
    "  wait_seq INTEGER,"
    /* The engine running it, and until when its claim holds. */
    "  owner TEXT,"
    "  lease_until INTEGER,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  ended_at INTEGER);"
    "CREATE INDEX instances_runnable ON instances(state, wake_at);"
    /* Engines running on this database, so that one started after a crash
     * takes over at once what a dead engine on the same host held. */
    "CREATE TABLE engines("
    "  id TEXT PRIMARY KEY,"
    "  host TEXT NOT NULL,"
    "  pid INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  heartbeat_at INTEGER NOT NULL);"
    "CREATE TABLE step_runs("
    "  id INTEGER PRIMARY KEY,"
    "  instance_id INTEGER NOT NULL,"
    "  step TEXT NOT NULL,"
    "  attempt INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  ended_at INTEGER NOT NULL,"
    "  outcome TEXT NOT NULL,"
    "  error TEXT);"
    "CREATE INDEX step_runs_instance ON step_runs(instance_id);"
    "CREATE TABLE incidents("
    "  id INTEGER PRIMARY KEY,"
    "  instance_id INTEGER NOT NULL,"
    "  step TEXT NOT NULL,"
    "  error TEXT NOT NULL,"
    "  raised_at INTEGER NOT NULL,"
    "  resolved_at INTEGER,"
    "  resolution TEXT);"
    "CREATE INDEX incidents_instance ON incidents(instance_id);",
    /* 2: running totals of each instance's step runs, kept with every
     * transition so that what happened between two moments (a routing
     * decision and the instance's end) is a subtraction, not a scan of
     * the history. Existing instances are counted from their history. */
    "ALTER TABLE instances ADD COLUMN run_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE instances ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0;"
    "UPDATE instances SET "
    "  run_ms = (SELECT coalesce(sum(ended_at - started_at), 0) "
    "            FROM step_runs WHERE instance_id = instances.id),"
    "  reruns = (SELECT count(*) FROM step_runs "
    "            WHERE instance_id = instances.id AND attempt > 1) "
    "WHERE EXISTS (SELECT 1 FROM step_runs WHERE instance_id = instances.id);",
    /* 3: whether an engine ever took the instance. One never taken has
     * nothing committed but its start, so what plugins record about it
     * while it runs is all there is (sy_api.fresh). Instances not ended
     * when this is added may have been taken: they count as taken. */
    "ALTER TABLE instances ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;"
    "UPDATE instances SET claimed = 1 "
    "WHERE state NOT IN ('completed', 'cancelled');",
};
#define SCHEMA_VERSION ((int)(sizeof migrations / sizeof migrations[0]))

#define INSTANCE_COLS                                                        \
  "id, workflow, def_hash, state, step, attempt, vars, wake_at, "            \
  "wait_seq, created_at, updated_at, ended_at, generation, run_ms, reruns, " \
  "claimed"

enum {
  Q_BEGIN,
  Q_COMMIT,
  Q_ROLLBACK,
  Q_PUT_DEF,
  Q_GET_DEF,
  Q_INSERT_INSTANCE,
  Q_CLAIM_READY,
  Q_PICK_NEW,
  Q_CLAIM_NEW,
  Q_CLAIM_DUE,
  Q_CLAIM_EXPIRED,
  Q_RENEW,
  Q_RELEASE,
  Q_ENGINE_REGISTER,
  Q_ENGINE_HEARTBEAT,
  Q_ENGINE_DELETE,
  Q_ENGINES_ON_HOST,
  Q_NEXT_WAKE,
  Q_COUNT_ACTIVE,
  Q_COUNT_BY_STATE,
  Q_UPDATE_INSTANCE,
  Q_ADVANCE_INSTANCE,
  Q_INSERT_STEP_RUN,
  Q_INSERT_INCIDENT,
  Q_GET_INSTANCE,
  Q_LIST_INSTANCES,
  Q_COUNT_INSTANCES,
  Q_LIST_STEP_RUNS,
  Q_LIST_INCIDENTS,
  Q_RESOLVE_INCIDENTS,
  Q__COUNT
};

static const char *const sql_text[Q__COUNT] = {
    [Q_BEGIN] = "BEGIN IMMEDIATE",
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_PUT_DEF] =
        "INSERT OR IGNORE INTO definitions(hash, workflow, path, source, "
        "created_at) VALUES(?1, ?2, ?3, ?4, ?5)",
    [Q_GET_DEF] = "SELECT source, path FROM definitions WHERE hash = ?1",
    [Q_INSERT_INSTANCE] =
        "INSERT INTO instances(workflow, def_hash, state, step, attempt, "
        "vars, created_at, updated_at) "
        "VALUES(?1, ?2, 'ready', ?3, 1, ?4, ?5, ?5)",
/* RETURNING makes every change during the first step, so the caller
 * may write while it reads the claimed rows. The scans follow the
 * instances_runnable index: due rows by wake_at, ready rows by id. */
#define CLAIM(cond)                                                        \
  "UPDATE instances SET state = 'running', owner = ?3, lease_until = ?4, " \
  "updated_at = ?1, claimed = 1 WHERE id IN (SELECT id FROM instances "    \
  "WHERE " cond " LIMIT ?2) RETURNING " INSTANCE_COLS
    [Q_CLAIM_DUE] = CLAIM("state = 'waiting' AND wake_at <= ?1"),
    /* Ready with a recorded wake-up: released while asleep, now due. */
    [Q_CLAIM_READY] = CLAIM("state = 'ready' AND wake_at IS NOT NULL"),
    /* The common claim, new instances: they are read in id order from the
     * index, then claimed as the id range they span, one statement for
     * the whole batch (no RETURNING table, no IN list); the range holds
     * exactly the rows read, since the write lock is held throughout. */
    [Q_PICK_NEW] = "SELECT " INSTANCE_COLS
                   " FROM instances "
                   "WHERE state = 'ready' AND wake_at IS NULL LIMIT ?1",
    [Q_CLAIM_NEW] =
        "UPDATE instances SET state = 'running', owner = ?3, "
        "lease_until = ?4, updated_at = ?5, claimed = 1 WHERE state = 'ready' "
        "AND wake_at IS NULL AND id BETWEEN ?1 AND ?2",
    /* An engine that stopped renewing its leases is gone: take over. */
    [Q_CLAIM_EXPIRED] = CLAIM("state = 'running' AND lease_until < ?1"),
    /* Owners are set on running rows only: the state index finds them. */
    [Q_RENEW] =
        "UPDATE instances SET lease_until = ?2 "
        "WHERE state = 'running' AND owner = ?1",
    /* What an engine held goes back: due again at its recorded wake-up if
     * it was asleep, at once otherwise. */
    [Q_RELEASE] =
        "UPDATE instances SET state = CASE WHEN wake_at > ?2 THEN 'waiting' "
        "ELSE 'ready' END, owner = NULL, lease_until = NULL, updated_at = ?2 "
        "WHERE state = 'running' AND owner = ?1",
    [Q_ENGINE_REGISTER] =
        "INSERT OR REPLACE INTO engines(id, host, pid, started_at, "
        "heartbeat_at) VALUES(?1, ?2, ?3, ?4, ?4)",
    [Q_ENGINE_HEARTBEAT] = "UPDATE engines SET heartbeat_at = ?2 WHERE id = ?1",
    [Q_ENGINE_DELETE] = "DELETE FROM engines WHERE id = ?1",
    [Q_ENGINES_ON_HOST] = "SELECT id, pid FROM engines WHERE host = ?1",
    [Q_NEXT_WAKE] =
        "SELECT min(wake_at) FROM instances WHERE state = 'waiting'",
    [Q_COUNT_BY_STATE] =
        "SELECT workflow, state, count(*) FROM instances "
        "GROUP BY workflow, state ORDER BY workflow, state",
    [Q_COUNT_ACTIVE] =
        "SELECT count(*) FROM instances "
        "WHERE state IN ('ready', 'running', 'waiting')",
    /* Fenced by owner: an engine whose lease was taken over changes
     * nothing (NULL owner for commands on instances no engine holds). An
     * instance leaving 'running' is no one's any more. */
    [Q_UPDATE_INSTANCE] =
        "UPDATE instances SET state = ?2, step = ?3, attempt = ?4, "
        "vars = coalesce(?5, vars), wake_at = ?6, wait_seq = ?7, "
        "updated_at = ?8, ended_at = ?9, generation = generation + ?11, "
        "run_ms = run_ms + ?12, reruns = reruns + ?13, "
        "owner = CASE WHEN ?2 = 'running' THEN owner END, "
        "lease_until = CASE WHEN ?2 = 'running' THEN lease_until END "
        "WHERE id = ?1 AND owner IS ?10",
    /* The common transition, running to running at the next step: it
     * leaves the indexed columns alone, so no index is rewritten (SQLite
     * rewrites an index whose column is assigned, even to its own value:
     * wake_at is known to be NULL already, so it is not assigned). */
    [Q_ADVANCE_INSTANCE] =
        "UPDATE instances SET step = ?3, attempt = ?4, "
        "vars = coalesce(?5, vars), wait_seq = NULL, updated_at = ?8, "
        "run_ms = run_ms + ?12, reruns = reruns + ?13 "
        "WHERE id = ?1 AND owner IS ?10 AND wake_at IS NULL",
    [Q_INSERT_STEP_RUN] =
        "INSERT INTO step_runs(instance_id, step, attempt, started_at, "
        "ended_at, outcome, error) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    [Q_INSERT_INCIDENT] =
        "INSERT INTO incidents(instance_id, step, error, raised_at) "
        "VALUES(?1, ?2, ?3, ?4)",
    [Q_GET_INSTANCE] = "SELECT " INSTANCE_COLS " FROM instances WHERE id = ?1",
    /* A page: ids after ?3, at most ?4 of them (-1: no limit). */
    [Q_LIST_INSTANCES] = "SELECT " INSTANCE_COLS
                         " FROM instances WHERE (?1 IS NULL OR state = ?1) "
                         "AND (?2 IS NULL OR workflow = ?2) AND id > ?3 "
                         "ORDER BY id LIMIT ?4",
    [Q_COUNT_INSTANCES] = "SELECT count(*) FROM instances "
                          "WHERE (?1 IS NULL OR state = ?1) "
                          "AND (?2 IS NULL OR workflow = ?2) AND id > ?3",
    [Q_LIST_STEP_RUNS] =
        "SELECT id, instance_id, step, attempt, started_at, ended_at, "
        "outcome, error FROM step_runs WHERE instance_id = ?1 ORDER BY id",
    [Q_LIST_INCIDENTS] =
        "SELECT n.id, n.instance_id, i.workflow, n.step, n.error, "
        "n.raised_at, n.resolved_at, n.resolution "
        "FROM incidents n JOIN instances i ON i.id = n.instance_id "
        "WHERE (?1 = 0 OR n.resolved_at IS NULL) "
        "AND (?2 = 0 OR n.instance_id = ?2) ORDER BY n.id",
    [Q_RESOLVE_INCIDENTS] =
        "UPDATE incidents SET resolved_at = ?2, resolution = ?3 "
        "WHERE instance_id = ?1 AND resolved_at IS NULL",
};

struct sy_store {
  sqlite3 *db;
  int busy_timeout_ms;
  int64_t busy_since;
  sqlite3_stmt *stmt[Q__COUNT];
  int in_tx;
  int64_t tx_seq;
  char errmsg[512];
};

int64_t sy_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int sy_store_set_error(sy_store *st, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->errmsg, sizeof st->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* Turns an SQLite failure into an SY_E code, keeping SQLite's message. */
static int db_error(sy_store *st, const char *what) {
  int rc = sqlite3_errcode(st->db);
  int sys = sqlite3_system_errno(st->db);
  /* SQLite's words for an I/O failure ("disk I/O error") hide the cause
   * the operating system gave (no space left, read-only file system). */
  if (sys && (rc == SQLITE_IOERR || rc == SQLITE_FULL ||
              rc == SQLITE_CANTOPEN || rc == SQLITE_READONLY)) {
    sy_store_set_error(st, 0, "%s: %s (%s)", what, sqlite3_errmsg(st->db),
                       strerror(sys));
  } else {
    sy_store_set_error(st, 0, "%s: %s", what, sqlite3_errmsg(st->db));
  }
  return (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? SY_EBUSY : SY_ESTORE;
}

const char *sy_store_errmsg(sy_store *st) {
  return st->errmsg;
}

sqlite3 *sy_store_db(sy_store *st) {
  return st->db;
}

/* Statements are prepared on first use so a read-only listing command never
 * pays for (or fails on) statements it does not run. */
static sqlite3_stmt *stmt(sy_store *st, int q) {
  if (!st->stmt[q]) {
    if (sqlite3_prepare_v3(st->db, sql_text[q], -1, SQLITE_PREPARE_PERSISTENT,
                           &st->stmt[q], NULL) != SQLITE_OK) {
      db_error(st, "prepare");
      return NULL;
    }
  }
  return st->stmt[q];
}

/* Runs a statement that returns no rows; bindings already made. */
static int exec_stmt(sy_store *st, sqlite3_stmt *s, const char *what) {
  int rc = sqlite3_step(s);
  int rrc = sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (rc != SQLITE_DONE || rrc != SQLITE_OK) {
    return db_error(st, what);
  }
  return 0;
}

static void bind_text(sqlite3_stmt *s, int i, const char *v) {
  if (v) {
    sqlite3_bind_text(s, i, v, -1, SQLITE_STATIC);
  } else {
    sqlite3_bind_null(s, i);
  }
}

static void bind_opt_int(sqlite3_stmt *s, int i, int64_t v) {
  if (v) {
    sqlite3_bind_int64(s, i, v);
  } else {
    sqlite3_bind_null(s, i);
  }
}

static int exec_sql(sy_store *st, const char *sql) {
  char *msg = NULL;
  if (sqlite3_exec(st->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = sqlite3_errcode(st->db), sys = sqlite3_system_errno(st->db);
    if (sys && (rc == SQLITE_IOERR || rc == SQLITE_FULL ||
                rc == SQLITE_CANTOPEN || rc == SQLITE_READONLY)) {
      sy_store_set_error(st, 0, "%s (%s)", msg ? msg : sqlite3_errmsg(st->db),
                         strerror(sys));
    } else {
      sy_store_set_error(st, 0, "%s", msg ? msg : sqlite3_errmsg(st->db));
    }
    sqlite3_free(msg);
    return (rc == SQLITE_BUSY || rc == SQLITE_LOCKED) ? SY_EBUSY : SY_ESTORE;
  }
  return 0;
}

static int user_version(sy_store *st) {
  sqlite3_stmt *s;
  int version = 0;
  if (sqlite3_prepare_v2(st->db, "PRAGMA user_version", -1, &s, NULL) ==
      SQLITE_OK) {
    if (sqlite3_step(s) == SQLITE_ROW) {
      version = sqlite3_column_int(s, 0);
    }
    sqlite3_finalize(s);
  }
  return version;
}

/* Waiting for another writer: SQLite's own handler backs off to 100 ms
 * between tries, so a waiter rarely lands in the short gaps a busy engine
 * leaves between its transactions. Try every millisecond instead. */
static int busy_wait(void *ud, int tries) {
  sy_store *st = ud;
  struct timespec ms = {0, 1000000};
  int64_t now = sy_now_ms();
  if (tries == 0) {
    st->busy_since = now;
  }
  if (now - st->busy_since >= st->busy_timeout_ms) {
    return 0;
  }
  nanosleep(&ms, NULL);
  return 1;
}

static int migrate(sy_store *st) {
  int version, rc;
  /* Up to date (the common case): no write lock, so commands that only
   * read work while another process writes. */
  if (user_version(st) == SCHEMA_VERSION) {
    return 0;
  }
  if ((rc = exec_sql(st, "BEGIN IMMEDIATE"))) {
    return rc;
  }
  version = user_version(st); /* again, under the lock */
  if (version > SCHEMA_VERSION) {
    exec_sql(st, "ROLLBACK");
    return sy_store_set_error(st, SY_ESTORE,
                              "database schema version %d is newer than this "
                              "switchyard (%d): upgrade switchyard",
                              version, SCHEMA_VERSION);
  }
  for (; version < SCHEMA_VERSION; version++) {
    char pragma[64];
    rc = exec_sql(st, migrations[version]);
    if (rc) {
      exec_sql(st, "ROLLBACK");
      return rc;
    }
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", version + 1);
    if ((rc = exec_sql(st, pragma))) {
      exec_sql(st, "ROLLBACK");
      return rc;
    }
  }
  if ((rc = exec_sql(st, "COMMIT")) && !sqlite3_get_autocommit(st->db)) {
    exec_sql(st, "ROLLBACK");
  }
  return rc;
}

/* Switching a new file to WAL and creating its schema race with any other
 * process opening the same new file. In that window SQLite answers
 * SQLITE_BUSY without calling the busy handler where waiting could
 * deadlock (a reader of the rollback journal asking to write, a WAL
 * snapshot gone stale), so the whole step is retried here until the busy
 * timeout, rather than failing a `start` that met a `run` just opening. */
static int open_for_writing(sy_store *st) {
  int64_t since = sy_now_ms();
  struct timespec ms = {0, 1000000};
  int rc;
  for (;;) {
    rc = exec_sql(st, "PRAGMA journal_mode = WAL");
    if (!rc) {
      rc = migrate(st);
    }
    if (rc != SY_EBUSY || sy_now_ms() - since >= st->busy_timeout_ms) {
      return rc;
    }
    nanosleep(&ms, NULL);
  }
}

/* Each connection belongs to one store, used on one thread (the loop's),
 * so SQLite's own locking buys nothing: without it, and without its
 * memory statistics (a global mutex around every allocation), a busy
 * engine runs about a tenth fewer instructions. Configuration is global and
 * must precede SQLite's initialization; should something have initialized
 * SQLite first, the calls fail harmlessly and the defaults stay. */
static void configure_sqlite(void) {
  sqlite3_config(SQLITE_CONFIG_MULTITHREAD);
  sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
}

int sy_store_open(sy_store **out, const char *path, const sy_store_opts *opts,
                  char *err, size_t errlen) {
  static uv_once_t once = UV_ONCE_INIT;
  sy_store *st = calloc(1, sizeof *st);
  int flags = SQLITE_OPEN_NOMUTEX |
              (opts->read_only ? SQLITE_OPEN_READONLY
                               : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  int rc;
  uv_once(&once, configure_sqlite);
  if (!st) {
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  if (sqlite3_open_v2(path, &st->db, flags, NULL) != SQLITE_OK) {
    int sys = st->db ? sqlite3_system_errno(st->db) : 0;
    snprintf(err, errlen, "cannot open database %s: %s%s%s%s", path,
             st->db ? sqlite3_errmsg(st->db) : "out of memory", sys ? " (" : "",
             sys ? strerror(sys) : "", sys ? ")" : "");
    sy_store_close(st);
    return SY_ESTORE;
  }
  /* A file we may not write is opened read-only by SQLite without a word;
   * say so now, before WAL files are made with the file's mode. */
  if (opts->expect_write && sqlite3_db_readonly(st->db, "main") == 1) {
    snprintf(err, errlen,
             "database %s is read-only (check its permissions "
             "and its directory's)",
             path);
    sy_store_close(st);
    return SY_ESTORE;
  }
  sqlite3_extended_result_codes(st->db, 0);
  st->busy_timeout_ms =
      opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000;
  sqlite3_busy_handler(st->db, busy_wait, st);
  /* 64 MiB of page cache: the working set of a busy engine (the tail of
   * the instance and step-run tables, the indexes) stays in memory. */
  rc = exec_sql(st, "PRAGMA foreign_keys = OFF; PRAGMA cache_size = -65536");
  if (!rc) {
    rc = exec_sql(st, opts->sync == SY_SYNC_NORMAL
                          ? "PRAGMA synchronous = NORMAL"
                          : "PRAGMA synchronous = FULL");
  }
  if (!rc && !opts->read_only) {
    rc = open_for_writing(st);
  }
  if (rc) {
    snprintf(err, errlen, "database %s: %s", path, st->errmsg);
    sy_store_close(st);
    return rc;
  }
  *out = st;
  return 0;
}

void sy_store_close(sy_store *st) {
  if (!st) {
    return;
  }
  if (st->in_tx) {
    sy_store_rollback(st);
  }
  for (int i = 0; i < Q__COUNT; i++) {
    sqlite3_finalize(st->stmt[i]);
  }
  sqlite3_close(st->db);
  free(st);
}

int sy_store_begin(sy_store *st) {
  sqlite3_stmt *s;
  int rc;
  if (st->in_tx) {
    return 0;
  }
  if (!(s = stmt(st, Q_BEGIN))) {
    return SY_ESTORE;
  }
  if ((rc = exec_stmt(st, s, "begin"))) {
    return rc;
  }
  st->in_tx = 1;
  st->tx_seq++;
  return 0;
}

int64_t sy_store_tx_seq(sy_store *st) {
  return st->in_tx ? st->tx_seq : 0;
}

int sy_store_commit(sy_store *st) {
  sqlite3_stmt *s;
  int rc;
  if (!st->in_tx) {
    return 0;
  }
  if (!(s = stmt(st, Q_COMMIT))) {
    return SY_ESTORE;
  }
  rc = exec_stmt(st, s, "commit");
  /* A failed COMMIT may leave the transaction open (SQLITE_BUSY): roll it
   * back so the caller's in-memory view and the database agree again. */
  if (rc && !sqlite3_get_autocommit(st->db)) {
    sy_store_rollback(st);
  }
  st->in_tx = 0;
  return rc;
}

void sy_store_rollback(sy_store *st) {
  sqlite3_stmt *s = stmt(st, Q_ROLLBACK);
  if (s && !sqlite3_get_autocommit(st->db)) {
    sqlite3_step(s);
    sqlite3_reset(s);
  }
  st->in_tx = 0;
}

int sy_store_in_tx(sy_store *st) {
  return st->in_tx;
}

int sy_store_put_definition(sy_store *st, const char *hash,
                            const char *workflow, const char *path,
                            const char *source, size_t len) {
  sqlite3_stmt *s = stmt(st, Q_PUT_DEF);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, hash, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, workflow, -1, SQLITE_STATIC);
  bind_text(s, 3, path);
  sqlite3_bind_text(s, 4, source, (int)len, SQLITE_STATIC);
  sqlite3_bind_int64(s, 5, sy_now_ms());
  return exec_stmt(st, s, "store definition");
}

static char *dup_column(sqlite3_stmt *s, int col, size_t *len) {
  const unsigned char *t = sqlite3_column_text(s, col);
  size_t n = (size_t)sqlite3_column_bytes(s, col);
  char *copy;
  if (!t) {
    return NULL;
  }
  copy = malloc(n + 1);
  if (copy) {
    memcpy(copy, t, n);
    copy[n] = '\0';
    if (len) {
      *len = n;
    }
  }
  return copy;
}

int sy_store_get_definition(sy_store *st, const char *hash, char **source,
                            size_t *len, char **path) {
  sqlite3_stmt *s = stmt(st, Q_GET_DEF);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, hash, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *source = dup_column(s, 0, len);
    *path = dup_column(s, 1, NULL);
    rc = *source ? 0 : SY_ENOMEM;
  } else if (rc == SQLITE_DONE) {
    rc = sy_store_set_error(st, SY_ENOTFOUND, "no definition %s", hash);
  } else {
    rc = db_error(st, "read definition");
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc;
}

int sy_store_insert_instance(sy_store *st, const char *workflow,
                             const char *def_hash, const char *step,
                             const char *vars, int64_t now, int64_t *id) {
  sqlite3_stmt *s = stmt(st, Q_INSERT_INSTANCE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, workflow, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, def_hash, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, step, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, vars, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 5, now);
  if ((rc = exec_stmt(st, s, "insert instance"))) {
    return rc;
  }
  if (id) {
    *id = sqlite3_last_insert_rowid(st->db);
  }
  return 0;
}

static void read_instance(sqlite3_stmt *s, sy_instance_row *r) {
  r->id = sqlite3_column_int64(s, 0);
  r->workflow = (const char *)sqlite3_column_text(s, 1);
  r->def_hash = (const char *)sqlite3_column_text(s, 2);
  r->state = (const char *)sqlite3_column_text(s, 3);
  r->step = (const char *)sqlite3_column_text(s, 4);
  r->attempt = sqlite3_column_int(s, 5);
  r->vars = (const char *)sqlite3_column_text(s, 6);
  r->wake_at = sqlite3_column_int64(s, 7);
  r->wait_seq = sqlite3_column_int(s, 8);
  r->created_at = sqlite3_column_int64(s, 9);
  r->updated_at = sqlite3_column_int64(s, 10);
  r->ended_at = sqlite3_column_int64(s, 11);
  r->generation = sqlite3_column_int(s, 12);
  r->run_ms = sqlite3_column_int64(s, 13);
  r->reruns = sqlite3_column_int64(s, 14);
  r->claimed = sqlite3_column_int(s, 15);
}

/* Steps a SELECT of INSTANCE_COLS through cb; resets it either way. */
static int each_instance(sy_store *st, sqlite3_stmt *s, sy_instance_cb cb,
                         void *ud, int *count) {
  int rc, n = 0;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    sy_instance_row r;
    read_instance(s, &r);
    n++;
    if (cb(ud, &r)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  if (rc != SQLITE_DONE) {
    rc = db_error(st, "read instances");
  } else {
    rc = 0;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  if (count) {
    *count = n;
  }
  return rc;
}

/* New instances as a claim reads them: each is shown to the caller as the
 * running row it is about to become, and the id range they span is kept. */
typedef struct {
  sy_instance_cb cb;
  void *ud;
  int64_t lo, hi;
} picked;

static int pick_cb(void *ud, const sy_instance_row *row) {
  picked *p = ud;
  sy_instance_row r = *row;
  r.state = SY_STATE_RUNNING;
  p->lo = r.id < p->lo ? r.id : p->lo;
  p->hi = r.id > p->hi ? r.id : p->hi;
  return p->cb(p->ud, &r);
}

/* Claims new instances (ready, never asleep) with one range update. */
static int claim_new(sy_store *st, const char *owner, int64_t lease_until,
                     int64_t now, int limit, sy_instance_cb cb, void *ud) {
  sqlite3_stmt *s = stmt(st, Q_PICK_NEW), *u = stmt(st, Q_CLAIM_NEW);
  picked p = {cb, ud, INT64_MAX, INT64_MIN};
  int rc, n = 0;
  if (!s || !u) {
    return SY_ESTORE;
  }
  sqlite3_bind_int(s, 1, limit);
  if ((rc = each_instance(st, s, pick_cb, &p, &n))) {
    return rc;
  }
  if (n == 0) {
    return 0;
  }
  sqlite3_bind_int64(u, 1, p.lo);
  sqlite3_bind_int64(u, 2, p.hi);
  sqlite3_bind_text(u, 3, owner, -1, SQLITE_STATIC);
  sqlite3_bind_int64(u, 4, lease_until);
  sqlite3_bind_int64(u, 5, now);
  if ((rc = exec_stmt(st, u, "claim instances"))) {
    return rc;
  }
  if (sqlite3_changes(st->db) != n) {
    return sy_store_set_error(st, SY_ESTATE,
                              "claim of instances %lld..%lld took %d rows, "
                              "%d were read",
                              (long long)p.lo, (long long)p.hi,
                              sqlite3_changes(st->db), n);
  }
  return 0;
}

int sy_store_claim(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now, int limit, int expired, sy_instance_cb cb,
                   void *ud) {
  /* Due retries and interrupted sleeps first: they have waited already;
   * then work abandoned by dead engines; then new instances. */
  static const int order[] = {Q_CLAIM_DUE, Q_CLAIM_EXPIRED, Q_CLAIM_READY};
  int rc, got = 0, n = 0;
  if ((rc = sy_store_begin(st))) {
    return rc;
  }
  for (int i = 0; i < 3 && got < limit; i++) {
    sqlite3_stmt *s;
    if (order[i] == Q_CLAIM_EXPIRED && !expired) {
      continue;
    }
    if (!(s = stmt(st, order[i]))) {
      return SY_ESTORE;
    }
    sqlite3_bind_int64(s, 1, now);
    sqlite3_bind_int(s, 2, limit - got);
    sqlite3_bind_text(s, 3, owner, -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 4, lease_until);
    if ((rc = each_instance(st, s, cb, ud, &n))) {
      return rc;
    }
    got += n;
  }
  if (got < limit) {
    return claim_new(st, owner, lease_until, now, limit - got, cb, ud);
  }
  return 0;
}

int sy_store_renew(sy_store *st, const char *owner, int64_t lease_until,
                   int64_t now) {
  sqlite3_stmt *s = stmt(st, Q_RENEW), *h = stmt(st, Q_ENGINE_HEARTBEAT);
  int rc;
  if (!s || !h) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, owner, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, lease_until);
  if ((rc = exec_stmt(st, s, "renew leases"))) {
    return rc;
  }
  sqlite3_bind_text(h, 1, owner, -1, SQLITE_STATIC);
  sqlite3_bind_int64(h, 2, now);
  return exec_stmt(st, h, "heartbeat");
}

int sy_store_release(sy_store *st, const char *owner, int64_t now, int64_t *n) {
  sqlite3_stmt *s = stmt(st, Q_RELEASE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, owner, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 2, now);
  if ((rc = exec_stmt(st, s, "release instances"))) {
    return rc;
  }
  if (n) {
    *n = sqlite3_changes(st->db);
  }
  return 0;
}

int sy_store_engine_register(sy_store *st, const char *id, const char *host,
                             int64_t pid, int64_t now) {
  sqlite3_stmt *s = stmt(st, Q_ENGINE_REGISTER);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, host, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 3, pid);
  sqlite3_bind_int64(s, 4, now);
  return exec_stmt(st, s, "register engine");
}

int sy_store_engine_delete(sy_store *st, const char *id) {
  sqlite3_stmt *s = stmt(st, Q_ENGINE_DELETE);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_text(s, 1, id, -1, SQLITE_STATIC);
  return exec_stmt(st, s, "unregister engine");
}

int sy_store_engines_on_host(sy_store *st, const char *host, sy_engine_cb cb,
                             void *ud) {
  sqlite3_stmt *s = stmt(st, Q_ENGINES_ON_HOST);
  char ids[64][64];
  int64_t pids[64];
  int n = 0, rc;
  if (!s) {
    return SY_ESTORE;
  }
  /* Copied out first: the callback writes to the table being read. */
  sqlite3_bind_text(s, 1, host, -1, SQLITE_STATIC);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW && n < 64) {
    snprintf(ids[n], sizeof ids[n], "%s", sqlite3_column_text(s, 0));
    pids[n++] = sqlite3_column_int64(s, 1);
  }
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    rc = db_error(st, "list engines");
    sqlite3_reset(s);
    return rc;
  }
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  for (int i = 0; i < n; i++) {
    if ((rc = cb(ud, ids[i], pids[i]))) {
      return rc;
    }
  }
  return 0;
}

static int single_int(sy_store *st, int q, int64_t *out, const char *what) {
  sqlite3_stmt *s = stmt(st, q);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    *out = sqlite3_column_int64(s, 0);
    rc = 0;
  } else {
    rc = db_error(st, what);
  }
  sqlite3_reset(s);
  return rc;
}

int sy_store_next_wake(sy_store *st, int64_t *wake_at) {
  return single_int(st, Q_NEXT_WAKE, wake_at, "next wake-up");
}

int sy_store_count_active(sy_store *st, int64_t *n) {
  return single_int(st, Q_COUNT_ACTIVE, n, "count active instances");
}

/* Both forms of the update take the same numbered parameters (the advance
 * leaves some unused), so one binding serves either. */
static void bind_update(sqlite3_stmt *s, const sy_instance_update *u) {
  sqlite3_bind_int64(s, 1, u->id);
  sqlite3_bind_text(s, 2, u->state, -1, SQLITE_STATIC);
  bind_text(s, 3, u->step);
  sqlite3_bind_int(s, 4, u->attempt);
  bind_text(s, 5, u->vars);
  bind_opt_int(s, 6, u->wake_at);
  bind_opt_int(s, 7, u->wait_seq);
  sqlite3_bind_int64(s, 8, u->now);
  bind_opt_int(s, 9, u->ended ? u->now : 0);
  bind_text(s, 10, u->owner);
  sqlite3_bind_int(s, 11, u->new_generation);
  sqlite3_bind_int64(s, 12, u->run_ms);
  sqlite3_bind_int(s, 13, u->rerun);
}

int sy_store_update_instance(sy_store *st, const sy_instance_update *u) {
  int advance = strcmp(u->state, SY_STATE_RUNNING) == 0 && !u->wake_at &&
                !u->ended && !u->new_generation && u->owner;
  sqlite3_stmt *s = stmt(st, advance ? Q_ADVANCE_INSTANCE : Q_UPDATE_INSTANCE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  bind_update(s, u);
  if ((rc = exec_stmt(st, s, "update instance"))) {
    return rc;
  }
  if (advance && sqlite3_changes(st->db) == 0) {
    /* A recorded wake-up to clear, or a lost lease: the general form
     * tells them apart. */
    if (!(s = stmt(st, Q_UPDATE_INSTANCE))) {
      return SY_ESTORE;
    }
    bind_update(s, u);
    if ((rc = exec_stmt(st, s, "update instance"))) {
      return rc;
    }
  }
  if (sqlite3_changes(st->db) == 0) {
    return sy_store_set_error(st, SY_ESTATE,
                              "instance %lld is no longer held by %s",
                              (long long)u->id, u->owner ? u->owner : "nobody");
  }
  return 0;
}

int sy_store_insert_step_run(sy_store *st, int64_t instance_id,
                             const char *step, int attempt, int64_t started,
                             int64_t ended, const char *outcome,
                             const char *error) {
  sqlite3_stmt *s = stmt(st, Q_INSERT_STEP_RUN);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  sqlite3_bind_text(s, 2, step, -1, SQLITE_STATIC);
  sqlite3_bind_int(s, 3, attempt);
  sqlite3_bind_int64(s, 4, started);
  sqlite3_bind_int64(s, 5, ended);
  sqlite3_bind_text(s, 6, outcome, -1, SQLITE_STATIC);
  bind_text(s, 7, error);
  return exec_stmt(st, s, "record step run");
}

int sy_store_insert_incident(sy_store *st, int64_t instance_id,
                             const char *step, const char *error, int64_t now) {
  sqlite3_stmt *s = stmt(st, Q_INSERT_INCIDENT);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  sqlite3_bind_text(s, 2, step, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, error, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 4, now);
  return exec_stmt(st, s, "raise incident");
}

int sy_store_get_instance(sy_store *st, int64_t id, sy_instance_cb cb, void *ud,
                          int *found) {
  sqlite3_stmt *s = stmt(st, Q_GET_INSTANCE);
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int64(s, 1, id);
  return each_instance(st, s, cb, ud, found);
}

static void bind_filter(sqlite3_stmt *s, const sy_instance_filter *f) {
  bind_text(s, 1, f->state);
  bind_text(s, 2, f->workflow);
  sqlite3_bind_int64(s, 3, f->after);
}

int sy_store_list_instances(sy_store *st, const sy_instance_filter *f,
                            sy_instance_cb cb, void *ud) {
  sqlite3_stmt *s = stmt(st, Q_LIST_INSTANCES);
  if (!s) {
    return SY_ESTORE;
  }
  bind_filter(s, f);
  sqlite3_bind_int64(s, 4, f->limit > 0 ? f->limit : -1);
  return each_instance(st, s, cb, ud, NULL);
}

int sy_store_count_instances(sy_store *st, const sy_instance_filter *f,
                             int64_t *n) {
  sqlite3_stmt *s = stmt(st, Q_COUNT_INSTANCES);
  if (!s) {
    return SY_ESTORE;
  }
  bind_filter(s, f);
  return single_int(st, Q_COUNT_INSTANCES, n, "count instances");
}

int sy_store_list_step_runs(sy_store *st, int64_t instance_id,
                            sy_step_run_cb cb, void *ud) {
  sqlite3_stmt *s = stmt(st, Q_LIST_STEP_RUNS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    sy_step_run_row r = {
        .id = sqlite3_column_int64(s, 0),
        .instance_id = sqlite3_column_int64(s, 1),
        .step = (const char *)sqlite3_column_text(s, 2),
        .attempt = sqlite3_column_int(s, 3),
        .started_at = sqlite3_column_int64(s, 4),
        .ended_at = sqlite3_column_int64(s, 5),
        .outcome = (const char *)sqlite3_column_text(s, 6),
        .error = (const char *)sqlite3_column_text(s, 7),
    };
    if (cb(ud, &r)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(st, "read step runs");
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc;
}

int sy_store_list_incidents(sy_store *st, int open_only, int64_t instance_id,
                            sy_incident_cb cb, void *ud) {
  sqlite3_stmt *s = stmt(st, Q_LIST_INCIDENTS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int(s, 1, open_only);
  sqlite3_bind_int64(s, 2, instance_id);
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    sy_incident_row r = {
        .id = sqlite3_column_int64(s, 0),
        .instance_id = sqlite3_column_int64(s, 1),
        .workflow = (const char *)sqlite3_column_text(s, 2),
        .step = (const char *)sqlite3_column_text(s, 3),
        .error = (const char *)sqlite3_column_text(s, 4),
        .raised_at = sqlite3_column_int64(s, 5),
        .resolved_at = sqlite3_column_int64(s, 6),
        .resolution = (const char *)sqlite3_column_text(s, 7),
    };
    if (cb(ud, &r)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(st, "read incidents");
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  return rc;
}

int sy_store_resolve_incidents(sy_store *st, int64_t instance_id,
                               const char *resolution, int64_t now,
                               int64_t *n) {
  sqlite3_stmt *s = stmt(st, Q_RESOLVE_INCIDENTS);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sqlite3_bind_int64(s, 1, instance_id);
  sqlite3_bind_int64(s, 2, now);
  sqlite3_bind_text(s, 3, resolution, -1, SQLITE_STATIC);
  if ((rc = exec_stmt(st, s, "resolve incidents"))) {
    return rc;
  }
  if (n) {
    *n = sqlite3_changes(st->db);
  }
  return 0;
}

int sy_store_count_by_state(sy_store *st, sy_count_cb cb, void *ud) {
  sqlite3_stmt *s = stmt(st, Q_COUNT_BY_STATE);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    cb(ud, (const char *)sqlite3_column_text(s, 0),
       (const char *)sqlite3_column_text(s, 1), sqlite3_column_int64(s, 2));
  }
  rc = rc == SQLITE_DONE ? 0 : db_error(st, "count instances");
  sqlite3_reset(s);
  return rc;
}
