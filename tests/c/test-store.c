/* The store: migrations, claims, recovery, transactions. */
#include <unistd.h>

#include "check.h"
#include "error.h"
#include "store.h"

static char path[512];

static sy_store *open_store(void) {
  sy_store *st = NULL;
  char err[512];
  sy_store_opts o = {.sync = SY_SYNC_NORMAL};
  CHECK_EQ(sy_store_open(&st, path, &o, err, sizeof err), 0);
  return st;
}

static int64_t scalar(sy_store *st, const char *sql) {
  sy_stmt *s = sy_store_prepare(st, &(sy_sql){sql, NULL});
  int64_t v = -1;
  CHECK(s != NULL);
  if (sy_stmt_step(s) == SY_ROW) {
    v = sy_stmt_column_int(s, 0);
  }
  sy_stmt_finalize(s);
  return v;
}

/* Runs a script on the store's connection (0 on success). */
static int script(sy_store *st, const char *sql) {
  return sy_store_exec_script(st, &(sy_sql){sql, NULL});
}

static int count_cb(void *ud, const sy_instance_row *r) {
  int *n = ud;
  CHECK(strcmp(r->state, "ready") == 0 || strcmp(r->state, "waiting") == 0 ||
        strcmp(r->state, "running") == 0);
  (*n)++;
  return 0;
}

/* Counts the claimed rows read as never taken before. */
static int fresh_cb(void *ud, const sy_instance_row *r) {
  int *n = ud;
  *n += !r->claimed;
  return 0;
}

static void test_migrations(void) {
  sy_store *st = open_store();
  char err[512];
  sy_store_opts o = {.sync = SY_SYNC_FULL};
  CHECK_EQ(scalar(st, "PRAGMA user_version"), 7);
  CHECK(scalar(st,
               "SELECT count(*) FROM sqlite_master WHERE name = "
               "'instances'") == 1);
  sy_store_close(st);
  /* Opening again migrates nothing and fails nothing. */
  st = open_store();
  CHECK_EQ(scalar(st, "PRAGMA user_version"), 7);
  CHECK(script(st, "PRAGMA user_version = 99") == 0);
  sy_store_close(st);
  /* A database from a newer switchyard is refused, not downgraded. */
  CHECK_EQ(sy_store_open(&st, path, &o, err, sizeof err), SY_ESTORE);
  CHECK_CONTAINS(err, "newer than this switchyard");
  unlink(path);
}

/* An instance's step-run totals as one number: run_ms * 10 + reruns. */
static int64_t totals(sy_store *st, int64_t id) {
  char sql[128];
  snprintf(sql, sizeof sql,
           "SELECT run_ms * 10 + reruns FROM instances WHERE id = %lld",
           (long long)id);
  return scalar(st, sql);
}

/* What migrations 5 (error handlers) and 4 (the journal) did, undone to
 * make an older schema. */
#define UNDO_5                                \
  "DROP TABLE instance_counts;"               \
  "ALTER TABLE instances DROP COLUMN caught;" \
  "ALTER TABLE step_runs DROP COLUMN code;"   \
  "ALTER TABLE step_runs DROP COLUMN handler;"
#define UNDO_4                                         \
  UNDO_5                                               \
  "DROP TABLE journal;"                                \
  "DROP TABLE signals;"                                \
  "ALTER TABLE instances DROP COLUMN wait_signal;"     \
  "ALTER TABLE instances ADD COLUMN wait_seq INTEGER;" \
  "ALTER TABLE step_runs DROP COLUMN run_ms;"

/* Whether instance_counts equals a recount of the instances, key by key. */
#define RECOUNT "SELECT workflow, state, count(*) FROM instances GROUP BY 1, 2"
#define COUNTS                                                         \
  "SELECT workflow, state, sum(n) FROM instance_counts GROUP BY 1, 2 " \
  "HAVING sum(n) <> 0"
static int counts_agree(sy_store *st) {
  return scalar(st, "SELECT (SELECT count(*) FROM (" RECOUNT " EXCEPT " COUNTS
                    ")) + (SELECT count(*) FROM (" COUNTS " EXCEPT " RECOUNT
                    "))") == 0;
}

static int step_run(sy_store *st, int64_t id, const char *step, int attempt,
                    int64_t started, int64_t ended, const char *error) {
  sy_step_run_row r = {.instance_id = id,
                       .step = step,
                       .attempt = attempt,
                       .started_at = started,
                       .ended_at = ended,
                       .outcome = error ? "error" : "ok",
                       .error = error,
                       .run_ms = ended - started};
  return sy_store_insert_step_run(st, &r);
}

/* A database of schema 1 (no step-run totals on instances) gets them from
 * its history when opened. */
static void test_migration_totals(void) {
  sy_store *st = open_store();
  int64_t a, b;
  CHECK_EQ(sy_store_begin(st), 0);
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "x", "{}", 1, &a), 0);
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "x", "{}", 1, &b), 0);
  CHECK_EQ(step_run(st, a, "x", 1, 100, 130, "e"), 0);
  CHECK_EQ(step_run(st, a, "x", 2, 200, 205, NULL), 0);
  CHECK_EQ(step_run(st, a, "y", 1, 300, 312, NULL), 0);
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK(script(st, UNDO_4 "ALTER TABLE instances DROP COLUMN run_ms;"
                          "ALTER TABLE instances DROP COLUMN reruns;"
                          "ALTER TABLE instances DROP COLUMN claimed;"
                          "PRAGMA user_version = 1") == 0);
  sy_store_close(st);
  st = open_store();
  CHECK_EQ(scalar(st, "PRAGMA user_version"), 7);
  /* 30 + 5 + 12 ms, and one retried run (x, attempt 2) */
  CHECK_EQ(totals(st, a), 471);
  CHECK_EQ(totals(st, b), 0);
  sy_store_close(st);
  unlink(path);
}

/* A database of schema 2 (no record of which instances an engine took):
 * those not ended may have been taken, and count as taken; ended ones
 * never run again. Claims then mark what they take, and only a claim of
 * new instances reads one never taken. */
static void test_migration_claimed(void) {
  sy_store *st = open_store();
  static const char *const states[] = {"ready",    "running",   "waiting",
                                       "incident", "completed", "cancelled"};
  int64_t id;
  int got = 0;
  CHECK(sy_store_put_definition(st, "h", "wf", NULL, "src", 1) == 0);
  CHECK_EQ(sy_store_begin(st), 0);
  for (int i = 0; i < 6; i++) {
    char sql[128];
    CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "x", "{}", 1, &id), 0);
    snprintf(sql, sizeof sql,
             "UPDATE instances SET state = '%s' WHERE id = %lld", states[i],
             (long long)id);
    CHECK(script(st, sql) == 0);
  }
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK(script(st, UNDO_4 "ALTER TABLE instances DROP COLUMN claimed;"
                          "PRAGMA user_version = 2") == 0);
  sy_store_close(st);
  st = open_store();
  CHECK_EQ(scalar(st, "PRAGMA user_version"), 7);
  CHECK(counts_agree(st)); /* migration 7 counted what was there */
  CHECK(scalar(st,
               "SELECT count(*) FROM instances WHERE claimed = 1 AND "
               "state IN ('ready', 'running', 'waiting', 'incident')") == 4);
  CHECK(scalar(st,
               "SELECT count(*) FROM instances WHERE claimed = 0 AND "
               "state IN ('completed', 'cancelled')") == 2);
  /* A new instance is read as never taken, and its claim marks it. */
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "x", "{}", 2, &id), 0);
  CHECK_EQ(sy_store_claim(st, "A", 31000, 1000, 10, 1, fresh_cb, &got), 0);
  CHECK_EQ(got, 1); /* the migrated ready one is not fresh: only the new */
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK(scalar(st,
               "SELECT count(*) FROM instances WHERE claimed = 0 AND "
               "state NOT IN ('completed', 'cancelled')") == 0);
  sy_store_close(st);
  unlink(path);
}

static void test_claims(void) {
  sy_store *st = open_store();
  int64_t id, n, wake;
  int got = 0;
  CHECK(sy_store_put_definition(st, "h", "wf", NULL, "src", 3) == 0);
  for (int i = 0; i < 5; i++) {
    CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "a", "{}", 1000, &id), 0);
  }
  /* One waiting and due, one waiting in the future. */
  CHECK(sy_store_update_instance(st, &(sy_instance_update){.id = 4,
                                                           .workflow = "wf",
                                                           .from = "ready",
                                                           .state = "waiting",
                                                           .step = "a",
                                                           .attempt = 2,
                                                           .wake_at = 500,
                                                           .now = 1000}) == 0);
  CHECK(sy_store_update_instance(st, &(sy_instance_update){.id = 5,
                                                           .workflow = "wf",
                                                           .from = "ready",
                                                           .state = "waiting",
                                                           .step = "a",
                                                           .attempt = 2,
                                                           .wake_at = 99999,
                                                           .now = 1000}) == 0);
  CHECK(sy_store_count_active(st, &n) == 0 && n == 5);
  CHECK_EQ(sy_store_claim(st, "A", 31000, 1000, 2, 1, count_cb, &got), 0);
  CHECK_EQ(got, 2);
  /* The due one goes first, and the claim names its owner and lease. */
  CHECK(scalar(st,
               "SELECT state = 'running' AND owner = 'A' AND "
               "lease_until = 31000 FROM instances WHERE id = 4") == 1);
  CHECK_EQ(sy_store_commit(st), 0);
  got = 0;
  CHECK_EQ(sy_store_claim(st, "A", 31000, 1000, 10, 1, count_cb, &got), 0);
  CHECK_EQ(got, 2); /* ids 2 and 3; 5 is not due */
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK_EQ(scalar(st, "SELECT count(*) FROM instances WHERE owner = 'A'"), 4);
  CHECK(sy_store_next_wake(st, &wake) == 0 && wake == 99999);
  /* Fencing: an engine that does not hold an instance changes nothing. */
  CHECK(sy_store_update_instance(st, &(sy_instance_update){.id = 1,
                                                           .workflow = "wf",
                                                           .state = "completed",
                                                           .attempt = 1,
                                                           .now = 2000,
                                                           .owner = "B"}) ==
        SY_ESTATE);
  CHECK_CONTAINS(sy_store_errmsg(st), "no longer held by B");
  /* Leaving 'running' clears the owner. */
  CHECK(sy_store_update_instance(st, &(sy_instance_update){.id = 1,
                                                           .workflow = "wf",
                                                           .state = "completed",
                                                           .attempt = 1,
                                                           .now = 2000,
                                                           .owner = "A",
                                                           .ended = 1}) == 0);
  CHECK(scalar(st, "SELECT owner IS NULL FROM instances WHERE id = 1") == 1);
  /* A renewed lease is not taken over; an expired one is. */
  got = 0;
  CHECK_EQ(sy_store_renew(st, "A", 40000, 10000), 0);
  CHECK_EQ(sy_store_claim(st, "B", 70000, 35000, 10, 1, count_cb, &got), 0);
  CHECK_EQ(got, 0);
  /* Expired, but not looked for: a claim without the scan leaves it. */
  CHECK_EQ(sy_store_claim(st, "B", 90000, 45000, 10, 0, count_cb, &got), 0);
  CHECK_EQ(got, 0);
  CHECK_EQ(sy_store_claim(st, "B", 90000, 45000, 10, 1, count_cb, &got), 0);
  CHECK_EQ(got, 3);
  CHECK_EQ(scalar(st, "SELECT count(*) FROM instances WHERE owner = 'B'"), 3);
  /* Release: B's instances are ready again (5, waiting, is untouched). */
  CHECK(sy_store_release(st, "B", 50000, &n) == 0 && n == 3);
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK(scalar(st,
               "SELECT count(*) FROM instances WHERE state = 'ready' "
               "AND owner IS NULL") == 3);
  /* Every change of state on the way was counted: claims of each kind,
   * updates by an owner and by a command, a release. */
  CHECK(counts_agree(st));
  CHECK_EQ(scalar(st,
                  "SELECT sum(n) FROM instance_counts WHERE state = "
                  "'ready'"),
           3);
  sy_store_close(st);
  unlink(path);
}

static void test_rollback(void) {
  sy_store *st = open_store();
  int64_t id;
  CHECK(sy_store_put_definition(st, "h", "wf", NULL, "src", 3) == 0);
  CHECK_EQ(sy_store_begin(st), 0);
  CHECK_EQ(sy_store_begin(st), 0); /* nested begin is a no-op */
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "a", "{}", 1, &id), 0);
  sy_store_rollback(st);
  CHECK(!sy_store_in_tx(st));
  CHECK_EQ(scalar(st, "SELECT count(*) FROM instances"), 0);
  /* The counts went with it, and a commit after writes only its own. */
  CHECK_EQ(scalar(st, "SELECT count(*) FROM instance_counts"), 0);
  CHECK_EQ(sy_store_begin(st), 0);
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "a", "{}", 1, &id), 0);
  CHECK_EQ(sy_store_commit(st), 0);
  CHECK(counts_agree(st));
  /* Outside a transaction a change is counted at once. */
  CHECK_EQ(sy_store_insert_instance(st, "wf", "h", "a", "{}", 1, &id), 0);
  CHECK_EQ(scalar(st, "SELECT sum(n) FROM instance_counts"), 2);
  /* An error carries SQLite's message. */
  CHECK(sy_store_get_definition(st, "nope", &(char *){NULL}, &(size_t){0},
                                &(char *){NULL}) == SY_ENOTFOUND);
  CHECK_CONTAINS(sy_store_errmsg(st), "no definition nope");
  sy_store_close(st);
  unlink(path);
}

static void test_read_only_missing(void) {
  sy_store *st = NULL;
  char err[512];
  sy_store_opts o = {.read_only = 1};
  CHECK(sy_store_open(&st, SY_TEST_TMP "/does/not/exist.db", &o, err,
                      sizeof err) == SY_ESTORE);
  CHECK_CONTAINS(err, "cannot open database");
  CHECK(st == NULL);
}

int main(void) {
  snprintf(path, sizeof path, "%s/test-store-%d.db", SY_TEST_TMP,
           (int)getpid());
  test_migrations();
  test_migration_totals();
  test_migration_claimed();
  test_claims();
  test_rollback();
  test_read_only_missing();
  puts("test-store: all checks passed");
  return 0;
}
