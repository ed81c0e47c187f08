/* Plugins' statements on the SQLite store (plugin.h, "Statements"): a
 * sy_stmt wraps a prepared sqlite3_stmt, with methods that map the
 * statement API onto SQLite's; scripts (migrations) and the change
 * counter plugins read to know when what they cached is stale. */
#include <stdlib.h>

#include "error.h"
#include "store_int.h"

typedef struct lite_stmt {
  sy_stmt base;
  sqlite3_stmt *st;
  sy_store *store;
} lite_stmt;

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
      return sy__db_error(l->store, "plugin statement");
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

static int64_t lite_changes(sy_stmt *s) {
  return sqlite3_changes64(sqlite3_db_handle(st_of(s)));
}

static const char *lite_error(sy_stmt *s) {
  return sqlite3_errmsg(sqlite3_db_handle(st_of(s)));
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
    .changes = lite_changes,
    .error = lite_error,
};

sy_stmt *sy_store_prepare(sy_store *st, const sy_sql *q) {
  lite_stmt *l = calloc(1, sizeof *l);
  if (!l) {
    sy_store_set_error(st, SY_ENOMEM, "out of memory");
    return NULL;
  }
  /* Kept for the engine's life: SQLite plans it for many runs. */
  if (sqlite3_prepare_v3(st->db, q->sql, -1, SQLITE_PREPARE_PERSISTENT, &l->st,
                         NULL) != SQLITE_OK) {
    sy__db_error(st, "prepare");
    free(l);
    return NULL;
  }
  l->base.m = &lite_methods;
  l->store = st;
  return &l->base;
}

int sy_store_exec_script(sy_store *st, const sy_sql *script) {
  char *msg = NULL;
  if (sqlite3_exec(st->db, script->sql, NULL, NULL, &msg) != SQLITE_OK) {
    int rc = sy__db_error(st, "run script");
    if (msg) {
      sy_store_set_error(st, rc, "%s", msg);
      sqlite3_free(msg);
    }
    return rc;
  }
  return 0;
}

int sy_store_data_version(sy_store *st, int64_t *v) {
  sqlite3_stmt *s = sy__stmt(st, Q_DATA_VERSION);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  if ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    *v = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return 0;
  }
  rc = sy__db_error(st, "read data_version");
  sqlite3_reset(s);
  return rc;
}
