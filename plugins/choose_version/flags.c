/* The flag cache: each flag's row (cv_flag) as the router last read it,
 * so that a decision in a transaction that changed nothing costs no query.
 * A row is trusted for the rest of the transaction that read or checked
 * it: while the engine's transaction is open no other connection writes.
 * At the first use in a new transaction, the engine's data_version says whether
 * another connection committed meanwhile; only then are rows read again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

struct cv_cached_flag {
  cv_flag row;
  int64_t checked_tx; /* transaction in which the row was last valid */
  struct cv_cached_flag *next;
};

/* Another connection changed the database since we last looked? Asked at
 * most once per engine transaction: while it is open nobody else writes. */
static int db_changed(cv_router *r, int64_t tx, int *changed) {
  int64_t v;
  *changed = 0;
  if (tx == r->checked_tx) {
    return 0;
  }
  if ((v = r->api->data_version(r->e)) < 0) {
    return cv_db_fail(r, NULL);
  }
  *changed = v != r->data_version;
  r->data_version = v;
  r->checked_tx = tx;
  return 0;
}

static int load_flag(cv_router *r, cv_flag *f) {
  sy_stmt *s = cv_stmt(r, CVQ_FLAG);
  int rc;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, f->name);
  rc = sy_stmt_step(s);
  free(f->group);
  f->group = NULL;
  if (rc == SY_ROW) {
    f->exists = 1;
    f->rate_ppm = (uint32_t)sy_stmt_column_int(s, 0);
    f->killed = (int)sy_stmt_column_int(s, 1);
    f->retired = (int)sy_stmt_column_int(s, 3);
    f->overrides = sy_stmt_column_int(s, 4);
    f->ramp_id = sy_stmt_column_int(s, 5);
    f->shadow_ppm = (uint32_t)sy_stmt_column_int(s, 6);
    f->shadow_budget = sy_stmt_column_int(s, 7);
    if (!(f->group = strdup(sy_stmt_column_text(s, 2)))) {
      sy_stmt_reset(s);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1; /* not marked checked: read again next time */
    }
  } else if (rc == SY_DONE) {
    f->exists = f->killed = f->retired = 0;
    f->rate_ppm = 0;
    f->overrides = f->ramp_id = 0;
    f->shadow_ppm = 0;
    f->shadow_budget = 0;
  } else {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

const cv_flag *cv_flag_get(cv_router *r, const char *name, int64_t tx) {
  struct cv_cached_flag *f;
  int changed;
  if (db_changed(r, tx, &changed)) {
    return NULL;
  }
  for (f = r->flags; f; f = f->next) {
    if (changed) {
      f->checked_tx = 0;
    }
  }
  for (f = r->flags; f && strcmp(f->row.name, name) != 0; f = f->next) {
  }
  if (!f) {
    if (!(f = calloc(1, sizeof *f)) || !(f->row.name = strdup(name))) {
      free(f);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return NULL;
    }
    f->next = r->flags;
    r->flags = f;
  }
  if (f->checked_tx == 0) {
    if (load_flag(r, &f->row)) {
      return NULL;
    }
  }
  f->checked_tx = tx;
  return &f->row;
}

void cv_flags_free(cv_router *r) {
  while (r->flags) {
    struct cv_cached_flag *f = r->flags;
    r->flags = f->next;
    free(f->row.name);
    free(f->row.group);
    free(f);
  }
}
