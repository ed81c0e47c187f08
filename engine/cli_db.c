/* `switchyard db copy FROM TO`: a whole database, moved to another of
 * either backend (a team's SQLite file to its new PostgreSQL), see
 * sy_store_copy. Each side is opened as an engine opens it, so that both
 * have the current schema, the plugins' tables included.
 * `switchyard db recount`: the kept counts of instances per workflow and
 * state made right again after rows were changed by hand. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "clock.h"
#include "error.h"

typedef struct copy_report {
  json_t *tables; /* --json */
  int64_t rows;
  int n;
} copy_report;

static void copied(void *ud, const char *table, int64_t from_rows,
                   int64_t to_rows) {
  copy_report *r = ud;
  r->rows += to_rows;
  r->n++;
  if (r->tables) {
    json_array_append_new(
        r->tables,
        json_pack("{s:s, s:I, s:I}", "table", table, "source",
                  (json_int_t)from_rows, "destination", (json_int_t)to_rows));
  } else {
    printf("%-24s %12lld %12lld  %s\n", table, (long long)from_rows,
           (long long)to_rows, from_rows == to_rows ? "ok" : "DIFFERENT");
  }
}

static int open_side(sy__cli *c, const char *where, int write, sy_engine **e) {
  c->o.db_path = where;
  c->o.expect_write = write;
  return sy__cli_open(c, e);
}

static int recount(sy__cli *c) {
  sy_engine *e;
  int64_t differing = 0;
  int rc;
  if (!sy_store_exists(c->o.db_path)) {
    return sy__cli_usage_error("db recount: no database at %s", c->o.db_path);
  }
  c->o.expect_write = 1;
  if ((rc = sy__cli_open(c, &e))) {
    return rc;
  }
  if (sy_store_recount(sy_engine_store(e), &differing)) {
    rc = sy__cli_store_fail(e);
  } else if (c->json) {
    sy__cli_print_json(json_pack("{s:I}", "corrected", (json_int_t)differing));
  } else if (differing) {
    printf(
        "recounted: %lld (workflow, state) counts were wrong, and are "
        "right now\n",
        (long long)differing);
  } else {
    printf("recounted: every count was right\n");
  }
  sy_engine_close(e);
  return rc;
}

static int cmd_db(sy__cli *c) {
  const char *v, *words[3] = {NULL, NULL, NULL};
  sy_engine *from = NULL, *to = NULL;
  copy_report r = {0};
  char err[1024];
  int key, n = 0, rc;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (n == 3) {
      return sy__cli_usage_error("db: unexpected argument '%s'", v);
    }
    words[n++] = v;
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  if (words[0] && strcmp(words[0], "recount") == 0) {
    return words[1] ? sy__cli_usage_error(
                          "db recount: unexpected argument "
                          "'%s'",
                          words[1])
                    : recount(c);
  }
  if (!words[0] || strcmp(words[0], "copy") != 0) {
    return sy__cli_usage_error(
        "db: expected 'copy FROM TO' or 'recount', got '%s'",
        words[0] ? words[0] : "nothing");
  }
  if (!words[1] || !words[2]) {
    return sy__cli_usage_error(
        "db copy: expected FROM and TO (a file or a "
        "postgresql:// URL each)");
  }
  if (strcmp(words[1], words[2]) == 0) {
    return sy__cli_usage_error("db copy: FROM and TO are the same database");
  }
  if (!sy_store_exists(words[1])) {
    return sy__cli_usage_error("db copy: no database at %s (FROM)", words[1]);
  }
  if ((rc = open_side(c, words[1], 0, &from)) ||
      (rc = open_side(c, words[2], 1, &to))) {
    sy_engine_close(from);
    return rc;
  }
  if (c->json) {
    r.tables = json_array();
  } else {
    printf("%-24s %12s %12s\n", "TABLE", "FROM", "TO");
  }
  rc = sy_store_copy(sy_engine_store(from), sy_engine_store(to), sy_now_ms(),
                     copied, &r, err, sizeof err);
  if (rc) {
    fprintf(stderr, "switchyard db copy: %s; nothing was copied\n", err);
    json_decref(r.tables);
    rc = rc == SY_ESTATE ? SY__EXIT_USAGE : 1;
  } else if (c->json) {
    sy__cli_print_json(json_pack("{s:s, s:s, s:o, s:I}", "from", words[1], "to",
                                 words[2], "tables", r.tables, "rows",
                                 (json_int_t)r.rows));
  } else {
    printf("copied %lld rows in %d tables, the counts of every table equal\n",
           (long long)r.rows, r.n);
  }
  sy_engine_close(to);
  sy_engine_close(from);
  return rc;
}

const sy__cli_cmd sy__cli_db = {
    "db",
    "copy FROM TO | recount",
    "copy a whole database to an empty one (SQLite file or postgresql:// "
    "URL), then compare the counts table by table; recount: count the "
    "instances per workflow and state again (after a change by hand)",
    NULL,
    cmd_db,
    0};
