/* test-scheduler.c: the scheduler and executor through the engine's API,
 * with a plugin linked in (`probe`) that looks at the database from a
 * connection of its own, as another process would:
 *
 * - claims: every instance runs, at most `concurrency` at once, and ends
 *   owned by no one;
 * - the commit phase: a node starts only after the commit that recorded the
 *   step before it, and a ctx call made by a Lua step chained in the same
 *   transaction reaches its plugin only after that commit;
 * - timers: a sleep lasts at least what was asked, a retry runs no sooner
 *   than its backoff's due time;
 * - stopping: instances in flight go back to the database at once (ready,
 *   or waiting for a recorded wake-up), and the next run finishes them;
 * - rollbacks: what a plugin batched for a transaction the engine rolled
 *   back is dropped, not written into the next one.
 *
 * Each check reads what was committed; none depends on how fast this
 * machine is. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "engine.h"

#define CONCURRENCY 4

/* What the probe saw, from its own connection. */
static struct {
  sqlite3 *db;
  sy_engine *engine;
  const sy_api *api;
  int calls;       /* node executions and ctx calls */
  int uncommitted; /* ...that found the calling step not yet committed */
  int max_running; /* most rows claimed at once */
  int stop_after;  /* stop the engine at this node execution (0: never) */
  int64_t fail_cancel_of; /* on_event fails this instance's cancellation */
  int batched;            /* events counted, written before each commit */
} probe;

/* The calling instance's committed step, and how many rows are claimed. */
static void look(sy_call *c) {
  sqlite3_stmt *s;
  const char *step = probe.api->step(c);
  probe.calls++;
  CHECK_EQ(sqlite3_prepare_v2(probe.db,
                              "SELECT step, (SELECT count(*) FROM instances "
                              "WHERE state = 'running') FROM instances "
                              "WHERE id = ?1",
                              -1, &s, NULL),
           SQLITE_OK);
  sqlite3_bind_int64(s, 1, probe.api->instance_id(c));
  CHECK_EQ(sqlite3_step(s), SQLITE_ROW);
  if (!sqlite3_column_text(s, 0) ||
      strcmp((const char *)sqlite3_column_text(s, 0), step) != 0) {
    probe.uncommitted++;
  }
  if (sqlite3_column_int(s, 1) > probe.max_running) {
    probe.max_running = sqlite3_column_int(s, 1);
  }
  sqlite3_finalize(s);
}

static int probe_init(const sy_api *api, sy_engine *e, void **state, char *err,
                      size_t errlen) {
  probe.api = api;
  probe.engine = e;
  *state = &probe;
  if (api->exec(e, &(sy_sql){"CREATE TABLE IF NOT EXISTS probe_counts("
                             "n INTEGER)",
                             NULL})) {
    snprintf(err, errlen, "%s", api->errmsg(e));
    return SY_ESTORE;
  }
  return 0;
}

/* Counts events in memory, as a plugin that batches its writes does. */
static int probe_event(void *plugin, const sy_event *ev) {
  (void)plugin;
  if (ev->type == SY_EVENT_CANCELLED &&
      ev->instance_id == probe.fail_cancel_of) {
    return SY_EPLUGIN;
  }
  probe.batched++;
  return 0;
}

static int probe_before_commit(void *plugin) {
  sy_stmt *s;
  (void)plugin;
  if (!probe.batched) {
    return 0;
  }
  s = probe.api->prepare(
      probe.engine, &(sy_sql){"INSERT INTO probe_counts VALUES(?1)", NULL});
  CHECK(s != NULL);
  sy_stmt_bind_int(s, 1, probe.batched);
  CHECK_EQ(sy_stmt_step(s), SY_DONE);
  sy_stmt_finalize(s);
  probe.batched = 0;
  return 0;
}

static void probe_rolled_back(void *plugin) {
  (void)plugin;
  probe.batched = 0;
}

static void probe_fini(void *state) {
  (void)state;
}

static void probe_execute(void *plugin, sy_call *c) {
  (void)plugin;
  look(c);
  if (probe.stop_after && probe.calls == probe.stop_after) {
    sy_engine_stop(probe.engine);
  }
  probe.api->done(c, "after");
}

static void probe_call(void *plugin, sy_call *c, const char *args) {
  (void)plugin;
  (void)args;
  look(c);
  probe.api->done_json(c, "true");
}

static const char *const probe_options[] = {NULL};
static const sy_node_type probe_nodes[] = {
    {.name = "probe", .options = probe_options, .execute = probe_execute},
    {.name = NULL}};
static const sy_ctx_fn probe_fns[] = {{.name = "probe", .call = probe_call},
                                      {.name = NULL}};
static const sy_plugin_def probe_def = {.abi = SY_PLUGIN_ABI,
                                        .name = "probe",
                                        .version = "1",
                                        .init = probe_init,
                                        .fini = probe_fini,
                                        .nodes = probe_nodes,
                                        .ctx_fns = probe_fns,
                                        .on_event = probe_event,
                                        .before_commit = probe_before_commit,
                                        .rolled_back = probe_rolled_back};
static const sy_plugin_def *const statics[] = {&probe_def};

static const char workflow[] =
    "local sy = require 'switchyard'\n"
    "return sy.workflow {\n"
    "  name = 'sched', start = 'first',\n"
    "  steps = {\n"
    "    first = sy.task { run = function(ctx) ctx.vars.n = 1 end,\n"
    "                      next = 'chained' },\n"
    /* follows `first` in the same transaction: its ctx call is held */
    "    chained = sy.task { run = function(ctx) ctx.vars.ok = ctx.probe() "
    "end,\n"
    "                        next = 'node' },\n"
    "    node = sy.probe { next = 'after' },\n"
    "    after = sy.task {\n"
    "      run = function(ctx)\n"
    "        if ctx.vars.flaky and ctx.attempt == 1 then error('once') end\n"
    "        if ctx.vars.doomed then error('doomed') end\n"
    "        ctx.sleep(ctx.vars.nap or 0)\n"
    "      end,\n"
    "      retries = 1, backoff = 0.05 },\n"
    "  },\n"
    "}\n";

static char dir[256], db_path[300], wf_path[300];

static sy_engine *open_engine(void) {
  sy_engine_opts o;
  sy_engine *e = NULL;
  char err[512] = "";
  sy_engine_opts_init(&o);
  o.db_path = db_path;
  o.concurrency = CONCURRENCY;
  o.static_plugins = statics;
  o.nstatic_plugins = 1;
  o.busy_timeout_ms = 10000;
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    fprintf(stderr, "engine: %s\n", err);
    exit(1);
  }
  return e;
}

static void start(sy_engine *e, int n, const char *vars) {
  const sy_workflow *wf;
  sy_diag diag;
  int64_t id;
  CHECK_EQ(sy_store_begin(sy_engine_store(e)), 0);
  CHECK_EQ(sy_engine_load_workflow(e, wf_path, &wf, &diag), 0);
  for (int i = 0; i < n; i++) {
    CHECK_EQ(sy_engine_start(e, wf, vars, &id), 0);
  }
  CHECK_EQ(sy_store_commit(sy_engine_store(e)), 0);
}

static int64_t scalar(const char *sql) {
  sqlite3_stmt *s;
  int64_t v;
  CHECK_EQ(sqlite3_prepare_v2(probe.db, sql, -1, &s, NULL), SQLITE_OK);
  CHECK_EQ(sqlite3_step(s), SQLITE_ROW);
  v = sqlite3_column_int64(s, 0);
  sqlite3_finalize(s);
  return v;
}

static void fresh_db(void) {
  char path[320];
  if (probe.db) {
    sqlite3_close(probe.db);
  }
  unlink(db_path);
  snprintf(path, sizeof path, "%s-wal", db_path);
  unlink(path);
  snprintf(path, sizeof path, "%s-shm", db_path);
  unlink(path);
  memset(&probe, 0, sizeof probe);
}

static void open_probe(void) {
  CHECK_EQ(sqlite3_open(db_path, &probe.db), SQLITE_OK);
  sqlite3_busy_timeout(probe.db, 10000);
}

static void test_claims_and_commits(void) {
  sy_engine *e;
  sy_run_stats st;
  fresh_db();
  e = open_engine();
  open_probe();
  start(e, 60, "{}");
  CHECK_EQ(sy_engine_run(e, 1), 0);
  sy_engine_stats(e, &st);
  sy_engine_close(e);
  CHECK_EQ(st.completed, 60);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE state = 'completed' "
                  "AND owner IS NULL AND json_extract(vars, '$.n') = 1 "
                  "AND json_extract(vars, '$.ok') = 1"),
           60);
  CHECK_EQ(scalar("SELECT count(*) FROM step_runs"), 4 * 60);
  /* a ctx call and a node execution per instance, each after the commit
   * that recorded the step that made it */
  CHECK_EQ(probe.calls, 2 * 60);
  CHECK_EQ(probe.uncommitted, 0);
  CHECK(probe.max_running >= 1 && probe.max_running <= CONCURRENCY);
}

static void test_timers(void) {
  sy_engine *e;
  fresh_db();
  e = open_engine();
  open_probe();
  start(e, 3, "{\"nap\":0.03,\"flaky\":true}");
  CHECK_EQ(sy_engine_run(e, 1), 0);
  sy_engine_close(e);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE state = 'completed'"),
           3);
  /* the sleep lasted what it asked for, measured on the monotonic clock */
  CHECK_EQ(scalar("SELECT count(*) FROM step_runs WHERE step = 'after' AND "
                  "outcome = 'ok' AND attempt = 2 AND "
                  "ended_at - started_at >= 30"),
           3);
  /* the retry started no sooner than the backoff's due time (50 ms) */
  CHECK_EQ(scalar("SELECT count(*) FROM step_runs a JOIN step_runs b "
                  "ON a.instance_id = b.instance_id AND a.step = 'after' "
                  "AND b.step = 'after' AND a.attempt = 1 AND b.attempt = 2 "
                  "WHERE a.outcome = 'error' AND b.started_at >= "
                  "a.ended_at + 50"),
           3);
}

static void test_stop_hands_back(void) {
  sy_engine *e;
  fresh_db();
  e = open_engine();
  open_probe();
  /* naps of a second or more record their due time */
  start(e, 10, "{\"nap\":1.5}");
  probe.stop_after = 6; /* three instances sleep, one is at its node */
  CHECK_EQ(sy_engine_run(e, 0), 0);
  sy_engine_close(e);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE owner IS NOT NULL OR "
                  "state = 'running'"),
           0);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE state = 'waiting' AND "
                  "step = 'after' AND wake_at IS NOT NULL"),
           scalar("SELECT count(DISTINCT instance_id) FROM step_runs WHERE "
                  "step = 'node'"));
  CHECK(scalar("SELECT count(*) FROM instances WHERE state = 'ready'") >= 1);
  CHECK_EQ(scalar("SELECT count(*) FROM engines"), 0);
  e = open_engine();
  CHECK_EQ(sy_engine_run(e, 1), 0);
  sy_engine_close(e);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE state = 'completed'"),
           10);
  /* a step after its node ran once (no run recorded for the sleep the
   * stop interrupted), and no node ran twice */
  CHECK_EQ(scalar("SELECT count(*) FROM step_runs WHERE step = 'after'"), 10);
  CHECK_EQ(scalar("SELECT count(*) FROM step_runs WHERE step = 'node'"), 10);
}

static void test_rollback_drops_batch(void) {
  sy_engine *e;
  fresh_db();
  e = open_engine();
  open_probe();
  start(e, 1, "{\"doomed\":true}");
  CHECK_EQ(sy_engine_run(e, 1), 0);
  CHECK_EQ(scalar("SELECT count(*) FROM instances WHERE state = 'incident'"),
           1);
  start(e, 1, "{}"); /* instance 2, ready */
  CHECK_EQ(scalar("SELECT count(*) FROM probe_counts"), 1); /* the incident */
  /* Cancelling the incident reports its resolution (counted), then its
   * cancellation, which the plugin refuses: all of it is rolled back. */
  probe.batched = 0;
  probe.fail_cancel_of = 1;
  CHECK_EQ(sy_engine_cancel(e, 1), SY_EPLUGIN);
  CHECK_EQ(scalar("SELECT state = 'incident' FROM instances WHERE id = 1"), 1);
  /* The next change commits its own count, and only that. */
  CHECK_EQ(sy_engine_cancel(e, 2), 0);
  sy_engine_close(e);
  /* one for the incident, one for the cancellation that committed */
  CHECK_EQ(scalar("SELECT count(*) FROM probe_counts"), 2);
  CHECK_EQ(scalar("SELECT sum(n) FROM probe_counts"), 2);
}

int main(void) {
  FILE *f;
  snprintf(dir, sizeof dir, "%s/test-scheduler.XXXXXX", SY_TEST_TMP);
  CHECK(mkdtemp(dir) != NULL);
  snprintf(db_path, sizeof db_path, "%s/s.db", dir);
  snprintf(wf_path, sizeof wf_path, "%s/sched.lua", dir);
  CHECK((f = fopen(wf_path, "w")) != NULL);
  fputs(workflow, f);
  fclose(f);
  test_claims_and_commits();
  test_timers();
  test_stop_hands_back();
  test_rollback_drops_batch();
  fresh_db();
  unlink(wf_path);
  rmdir(dir);
  puts("test-scheduler: all checks passed");
  return 0;
}
