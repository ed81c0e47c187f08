/* Copying a whole database to another, of either backend (`switchyard db
 * copy`): every table of the source (the engine's and the plugins'), in
 * one read snapshot of it, into an empty destination in one transaction,
 * then the counts of both compared table by table. Rows travel through
 * the statement API, typed as the source gives them. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "store_int.h"

/* Tables that are not the data: each side's own schema versions, and the
 * registry of running engines. */
static int skipped(const char *t) {
  return strcmp(t, "sy_meta") == 0 || strcmp(t, "cv_meta") == 0 ||
         strcmp(t, "engines") == 0;
}

typedef struct tables {
  char **v;
  int n;
} tables;

static void tables_free(tables *t) {
  for (int i = 0; i < t->n; i++) {
    free(t->v[i]);
  }
  free(t->v);
}

/* definitions first (instances refer to them), the rest by name. */
static int by_copy_order(const void *a, const void *b) {
  const char *x = *(char *const *)a, *y = *(char *const *)b;
  int dx = strcmp(x, "definitions") == 0, dy = strcmp(y, "definitions") == 0;
  return dx != dy ? dy - dx : strcmp(x, y);
}

static int list_tables(sy_store *st, tables *t) {
  sy_stmt *s = sy_store_prepare(st, &(sy_sql){st->b->tables_sql, NULL});
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *name = sy_stmt_column_text(s, 0);
    char **v;
    if (skipped(name)) {
      continue;
    }
    if (!(v = realloc(t->v, (size_t)(t->n + 1) * sizeof *v)) ||
        !(v[t->n] = strdup(name))) {
      t->v = v ? v : t->v;
      sy_stmt_finalize(s);
      return sy_store_set_error(st, SY_ENOMEM, "out of memory");
    }
    t->v = v;
    t->n++;
  }
  sy_stmt_finalize(s);
  if (rc != SY_DONE) {
    return rc;
  }
  qsort(t->v, (size_t)t->n, sizeof *t->v, by_copy_order);
  return 0;
}

static int count_rows(sy_store *st, const char *table, int64_t *n) {
  char sql[256];
  sy_stmt *s;
  int rc;
  snprintf(sql, sizeof sql, "SELECT count(*) FROM \"%s\"", table);
  if (!(s = sy_store_prepare(st, &(sy_sql){sql, NULL}))) {
    return SY_ESTORE;
  }
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    *n = sy_stmt_column_int(s, 0);
    rc = 0;
  }
  sy_stmt_finalize(s);
  return rc;
}

/* The INSERT of a row of `table` with the columns `from` reads. */
static char *insert_sql(sy_stmt *from, const char *table) {
  int n = sy_stmt_column_count(from);
  size_t cap = 64 + strlen(table) + (size_t)n * 80, used;
  char *sql = malloc(cap);
  if (!sql) {
    return NULL;
  }
  used = (size_t)snprintf(sql, cap, "INSERT INTO \"%s\"(", table);
  for (int i = 0; i < n; i++) {
    used += (size_t)snprintf(sql + used, cap - used, "%s\"%s\"", i ? ", " : "",
                             sy_stmt_column_name(from, i));
  }
  used += (size_t)snprintf(sql + used, cap - used, ") VALUES(");
  for (int i = 0; i < n; i++) {
    used +=
        (size_t)snprintf(sql + used, cap - used, "%s?%d", i ? ", " : "", i + 1);
  }
  snprintf(sql + used, cap - used, ")");
  return sql;
}

static void bind_like(sy_stmt *to, int i, sy_stmt *from, int col) {
  switch (sy_stmt_column_type(from, col)) {
    case SY_COL_NULL:
      sy_stmt_bind_text(to, i, NULL);
      break;
    case SY_COL_INT:
      sy_stmt_bind_int(to, i, sy_stmt_column_int(from, col));
      break;
    case SY_COL_DOUBLE:
      sy_stmt_bind_double(to, i, sy_stmt_column_double(from, col));
      break;
    default:
      sy_stmt_bind_textn(to, i, sy_stmt_column_text(from, col),
                         (size_t)sy_stmt_column_bytes(from, col));
  }
}

static int copy_table(sy_store *from, sy_store *to, const char *table) {
  char sql[256], *ins = NULL;
  sy_stmt *s, *w = NULL;
  int rc, ncols = 0;
  snprintf(sql, sizeof sql, "SELECT * FROM \"%s\"", table);
  if (!(s = sy_store_prepare(from, &(sy_sql){sql, NULL}))) {
    return SY_ESTORE;
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (!w) {
      ncols = sy_stmt_column_count(s);
      if (!(ins = insert_sql(s, table))) {
        rc = sy_store_set_error(to, SY_ENOMEM, "out of memory");
        break;
      }
      if (!(w = sy_store_prepare(to, &(sy_sql){ins, NULL}))) {
        rc = SY_ESTORE;
        break;
      }
    }
    for (int i = 0; i < ncols; i++) {
      bind_like(w, i + 1, s, i);
    }
    rc = sy_stmt_step(w);
    sy_stmt_reset(w);
    if (rc != SY_DONE) {
      break;
    }
  }
  if (rc == SY_DONE) {
    rc = to->b->copied(to, table);
  } else if (rc == SY_ROW) {
    rc = SY_ESTORE;
  }
  sy_stmt_finalize(w);
  sy_stmt_finalize(s);
  free(ins);
  return rc;
}

/* Refuses a source an engine is running on: its instances would move on
 * while they are copied. */
static int check_quiet(sy_store *from, int64_t now, char *err, size_t errlen) {
  sy_stmt *s = sy_store_prepare(
      from, &(sy_sql){"SELECT count(*) FROM instances WHERE state = 'running' "
                      "AND lease_until >= ?1",
                      NULL});
  int64_t held = 0;
  int rc;
  if (!s) {
    snprintf(err, errlen, "%s", sy_store_errmsg(from));
    return SY_ESTORE;
  }
  sy_stmt_bind_int(s, 1, now);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    held = sy_stmt_column_int(s, 0);
    rc = 0;
  } else {
    snprintf(err, errlen, "%s", sy_store_errmsg(from));
  }
  sy_stmt_finalize(s);
  if (!rc && held) {
    snprintf(err, errlen,
             "an engine holds %lld instances of the source (their leases "
             "have not expired): stop it, then copy",
             (long long)held);
    return SY_ESTATE;
  }
  return rc;
}

int sy_store_copy(sy_store *from, sy_store *to, int64_t now, sy_copy_cb cb,
                  void *ud, char *err, size_t errlen) {
  tables t = {NULL, 0};
  int rc, i;
  int64_t a, b;
  if ((rc = sy_store_begin_as(from, 0))) {
    snprintf(err, errlen, "source: %s", sy_store_errmsg(from));
    return rc;
  }
  if ((rc = sy_store_begin_as(to, 1))) {
    snprintf(err, errlen, "destination: %s", sy_store_errmsg(to));
    sy_store_rollback(from);
    return rc;
  }
  if ((rc = check_quiet(from, now, err, errlen))) {
    goto out;
  }
  if ((rc = list_tables(from, &t))) {
    snprintf(err, errlen, "source: %s", sy_store_errmsg(from));
    goto out;
  }
  /* The destination: every table there, and empty. */
  for (i = 0; i < t.n; i++) {
    if (count_rows(to, t.v[i], &b)) {
      snprintf(err, errlen,
               "the destination has no table %s (%s): is the plugin that "
               "keeps it installed?",
               t.v[i], sy_store_errmsg(to));
      rc = SY_ESTATE;
      goto out;
    }
    if (b) {
      snprintf(err, errlen,
               "the destination is not empty (table %s has %lld rows): copy "
               "into a new database",
               t.v[i], (long long)b);
      rc = SY_ESTATE;
      goto out;
    }
  }
  for (i = 0; i < t.n; i++) {
    if ((rc = copy_table(from, to, t.v[i]))) {
      snprintf(err, errlen, "table %s: %s", t.v[i], sy_store_errmsg(to));
      goto out;
    }
  }
  /* Counted again on both sides, in the same transactions. */
  for (i = 0; i < t.n; i++) {
    if ((rc = count_rows(from, t.v[i], &a)) ||
        (rc = count_rows(to, t.v[i], &b))) {
      snprintf(err, errlen, "count %s: %s", t.v[i], sy_store_errmsg(to));
      goto out;
    }
    cb(ud, t.v[i], a, b);
    if (a != b) {
      snprintf(err, errlen, "table %s: %lld rows copied of %lld", t.v[i],
               (long long)b, (long long)a);
      rc = SY_ESTORE;
      goto out;
    }
  }
  if ((rc = sy_store_commit(to))) {
    snprintf(err, errlen, "destination: %s", sy_store_errmsg(to));
  }
out:
  sy_store_rollback(to); /* a no-op after the commit */
  sy_store_rollback(from);
  tables_free(&t);
  return rc;
}
