/* The SQLite backend of the store: the connection (opened, configured,
 * migrated), its errors, and statements. A sy_stmt (plugin.h,
 * "Statements") wraps a prepared sqlite3_stmt, with methods that map the
 * statement API onto SQLite's: the store's own statements (store.c,
 * store_instances.c) and plugins' go through it alike. Then scripts
 * (migrations) and the change counter plugins read to know when what they
 * cached is stale. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <uv.h>

#include "clock.h"
#include "error.h"
#include "store_int.h"

typedef struct lite_stmt {
  sy_stmt base;
  sqlite3_stmt *st;
  sy_store *store;
} lite_stmt;

static int lite_db_error(sy_store *st, const char *what);

static sqlite3_stmt *st_of(sy_stmt *s) {
  return ((lite_stmt *)s)->st;
}

static int lite_step(sy_stmt *s) {
  lite_stmt *l = (lite_stmt *)s;
  switch (sqlite3_step(l->st)) {
    case SQLITE_ROW:
      return SY_ROW;
    case SQLITE_DONE:
      return SY_DONE;
    default:
      return lite_db_error(l->store, "statement");
  }
}

static void lite_reset(sy_stmt *s) {
  sqlite3_reset(st_of(s));
}

static void lite_finalize(sy_stmt *s) {
  sqlite3_finalize(st_of(s));
  free(s);
}

static void lite_bind_int(sy_stmt *s, int i, int64_t v) {
  sqlite3_bind_int64(st_of(s), i, v);
}

static void lite_bind_double(sy_stmt *s, int i, double v) {
  sqlite3_bind_double(st_of(s), i, v);
}

static void lite_bind_text(sy_stmt *s, int i, const char *v, int64_t len) {
  if (!v) {
    sqlite3_bind_null(st_of(s), i);
  } else {
    sqlite3_bind_text64(st_of(s), i, v,
                        len < 0 ? (sqlite3_uint64)-1 : (sqlite3_uint64)len,
                        SQLITE_STATIC, SQLITE_UTF8);
  }
}

static int lite_column_null(sy_stmt *s, int col) {
  return sqlite3_column_type(st_of(s), col) == SQLITE_NULL;
}

static int64_t lite_column_int(sy_stmt *s, int col) {
  return sqlite3_column_int64(st_of(s), col);
}

static double lite_column_double(sy_stmt *s, int col) {
  return sqlite3_column_double(st_of(s), col);
}

static const char *lite_column_text(sy_stmt *s, int col) {
  return (const char *)sqlite3_column_text(st_of(s), col);
}

static int64_t lite_column_bytes(sy_stmt *s, int col) {
  return sqlite3_column_bytes(st_of(s), col);
}

static int lite_column_count(sy_stmt *s) {
  return sqlite3_column_count(st_of(s));
}

static const char *lite_column_name(sy_stmt *s, int col) {
  return sqlite3_column_name(st_of(s), col);
}

static int lite_column_type(sy_stmt *s, int col) {
  switch (sqlite3_column_type(st_of(s), col)) {
    case SQLITE_NULL:
      return SY_COL_NULL;
    case SQLITE_INTEGER:
      return SY_COL_INT;
    case SQLITE_FLOAT:
      return SY_COL_DOUBLE;
    default:
      return SY_COL_TEXT;
  }
}

static int64_t lite_changes(sy_stmt *s) {
  return sqlite3_changes64(sqlite3_db_handle(st_of(s)));
}

static const char *lite_error(sy_stmt *s) {
  return sqlite3_errmsg(sqlite3_db_handle(st_of(s)));
}

static int lite_expect_changes(sy_stmt *s, int64_t n) {
  return lite_changes(s) == n ? 0 : SY_ESTATE;
}

static const sy_stmt_methods lite_methods = {
    .step = lite_step,
    .reset = lite_reset,
    .finalize = lite_finalize,
    .bind_int = lite_bind_int,
    .bind_double = lite_bind_double,
    .bind_text = lite_bind_text,
    .column_null = lite_column_null,
    .column_int = lite_column_int,
    .column_double = lite_column_double,
    .column_text = lite_column_text,
    .column_bytes = lite_column_bytes,
    .column_count = lite_column_count,
    .column_name = lite_column_name,
    .column_type = lite_column_type,
    .changes = lite_changes,
    .error = lite_error,
    .expect_changes = lite_expect_changes,
};

static int lite_db_error(sy_store *st, const char *what) {
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

static sy_stmt *lite_prepare(sy_store *st, const char *sql) {
  lite_stmt *l = calloc(1, sizeof *l);
  if (!l) {
    sy_store_set_error(st, SY_ENOMEM, "out of memory");
    return NULL;
  }
  /* Kept for the engine's life: SQLite plans it for many runs. */
  if (sqlite3_prepare_v3(st->db, sql, -1, SQLITE_PREPARE_PERSISTENT, &l->st,
                         NULL) != SQLITE_OK) {
    lite_db_error(st, "prepare");
    free(l);
    return NULL;
  }
  l->base.m = &lite_methods;
  l->store = st;
  return &l->base;
}

/* One of the backend's own statements (st->own[k]), prepared once. */
static sy_stmt *own(sy_store *st, int k, const char *sql) {
  if (!st->own[k]) {
    st->own[k] = lite_prepare(st, sql);
  }
  return st->own[k];
}

/* BEGIN IMMEDIATE takes the write lock at once, so that what a writer
 * reads stays true until it commits; BEGIN reads in one snapshot. */
static int lite_begin(sy_store *st, int write) {
  sy_stmt *s = write ? own(st, 0, "BEGIN IMMEDIATE") : own(st, 1, "BEGIN");
  return s ? sy__exec_stmt(st, s, "begin") : SY_ESTORE;
}

/* Other connections' commits, counted. */
static int lite_data_version(sy_store *st, int64_t *v) {
  sy_stmt *s = own(st, 2, "PRAGMA data_version");
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    *v = sy_stmt_column_int(s, 0);
    rc = 0;
  } else {
    rc = lite_db_error(st, "read data_version");
  }
  sy_stmt_reset(s);
  return rc;
}

static int lite_exec(sy_store *st, const char *sql) {
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
  uint64_t now = sy_mono_ns();
  if (tries == 0) {
    st->busy_since = now;
  }
  if (now - st->busy_since >= (uint64_t)st->busy_timeout_ms * 1000000) {
    return 0;
  }
  nanosleep(&ms, NULL);
  return 1;
}

static int migrate(sy_store *st) {
  int version, rc;
  /* Up to date (the common case): no write lock, so commands that only
   * read work while another process writes. */
  if (user_version(st) == sy__schema_version) {
    return 0;
  }
  if ((rc = lite_exec(st, "BEGIN IMMEDIATE"))) {
    return rc;
  }
  version = user_version(st); /* again, under the lock */
  if (version > sy__schema_version) {
    lite_exec(st, "ROLLBACK");
    return sy_store_set_error(st, SY_ESTORE,
                              "database schema version %d is newer than this "
                              "switchyard (%d): upgrade switchyard",
                              version, sy__schema_version);
  }
  for (; version < sy__schema_version; version++) {
    char pragma[64];
    rc = lite_exec(st, sy__migrations[version]);
    if (rc) {
      lite_exec(st, "ROLLBACK");
      return rc;
    }
    snprintf(pragma, sizeof pragma, "PRAGMA user_version = %d", version + 1);
    if ((rc = lite_exec(st, pragma))) {
      lite_exec(st, "ROLLBACK");
      return rc;
    }
  }
  if ((rc = lite_exec(st, "COMMIT")) && !sqlite3_get_autocommit(st->db)) {
    lite_exec(st, "ROLLBACK");
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
  uint64_t since = sy_mono_ns();
  struct timespec ms = {0, 1000000};
  int rc;
  for (;;) {
    rc = lite_exec(st, "PRAGMA journal_mode = WAL");
    if (!rc) {
      rc = migrate(st);
    }
    if (rc != SY_EBUSY ||
        sy_mono_ns() - since >= (uint64_t)st->busy_timeout_ms * 1000000) {
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

static int lite_open(sy_store *st, const char *path, const sy_store_opts *opts,
                     char *err, size_t errlen) {
  static uv_once_t once = UV_ONCE_INIT;
  int flags = SQLITE_OPEN_NOMUTEX |
              (opts->read_only ? SQLITE_OPEN_READONLY
                               : SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE);
  int rc;
  uv_once(&once, configure_sqlite);
  if (sqlite3_open_v2(path, &st->db, flags, NULL) != SQLITE_OK) {
    int sys = st->db ? sqlite3_system_errno(st->db) : 0;
    snprintf(err, errlen, "cannot open database %s: %s%s%s%s", path,
             st->db ? sqlite3_errmsg(st->db) : "out of memory", sys ? " (" : "",
             sys ? strerror(sys) : "", sys ? ")" : "");
    return SY_ESTORE;
  }
  /* A file we may not write is opened read-only by SQLite without a word;
   * say so now, before WAL files are made with the file's mode. */
  if (opts->expect_write && sqlite3_db_readonly(st->db, "main") == 1) {
    snprintf(err, errlen,
             "database %s is read-only (check its permissions "
             "and its directory's)",
             path);
    return SY_ESTORE;
  }
  sqlite3_extended_result_codes(st->db, 0);
  sqlite3_busy_handler(st->db, busy_wait, st);
  /* 64 MiB of page cache: the working set of a busy engine (the tail of
   * the instance and step-run tables, the indexes) stays in memory. */
  rc = lite_exec(st, "PRAGMA foreign_keys = OFF; PRAGMA cache_size = -65536");
  if (!rc) {
    rc = lite_exec(st, opts->sync == SY_SYNC_NORMAL
                           ? "PRAGMA synchronous = NORMAL"
                           : "PRAGMA synchronous = FULL");
  }
  if (!rc && !opts->read_only) {
    rc = open_for_writing(st);
  }
  if (rc) {
    snprintf(err, errlen, "database %s: %s", path, st->errmsg);
  }
  return rc;
}

static void lite_close(sy_store *st) {
  sqlite3_close(st->db);
}

static int lite_tx_open(sy_store *st) {
  return !sqlite3_get_autocommit(st->db);
}

static int lite_busy(sy_store *st) {
  int rc = sqlite3_errcode(st->db);
  return rc == SQLITE_BUSY || rc == SQLITE_LOCKED;
}

static int64_t lite_last_insert_id(sy_store *st) {
  return sqlite3_last_insert_rowid(st->db);
}

/* Rowids continue from the largest: nothing to do after a copy. */
static int lite_copied(sy_store *st, const char *table) {
  (void)st;
  (void)table;
  return 0;
}

static int lite_exists(const char *where) {
  struct stat sb;
  return strcmp(where, ":memory:") == 0 || stat(where, &sb) == 0;
}

const sy__backend sy__sqlite = {
    .name = "sqlite",
    .open = lite_open,
    .close = lite_close,
    .exists = lite_exists,
    .prepare = lite_prepare,
    .exec = lite_exec,
    .begin = lite_begin,
    .tx_open = lite_tx_open,
    .data_version = lite_data_version,
    .busy = lite_busy,
    .last_insert_id = lite_last_insert_id,
    .db_error = lite_db_error,
    .tables_sql =
        "SELECT name FROM sqlite_schema WHERE type = 'table' AND "
        "name NOT LIKE 'sqlite_%'",
    .copied = lite_copied,
};
