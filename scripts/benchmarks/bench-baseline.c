/* The throughput baseline: every row the engine writes for a routed
 * three-step instance, with the same values (a SHA-256 definition hash, an
 * engine identity as owner, epoch-millisecond times, the vars each step
 * leaves, half the instances on each version), written straight through
 * SQLite's C API with no engine at all, as a hand-written program that
 * knows its workload would:
 *   - the instances, inserted ready in one transaction (`switchyard start`);
 *   - then per batch of 512 instances: their claim (state, owner, lease) in
 *     one statement over the id range, each one's decision, three step runs,
 *     three instance updates (the last one ends it), the decision's outcome
 *     and step times, and the per-version counters once per batch.
 * Same schema (an engine opened on the database creates it), same
 * synchronous mode, so engine/baseline is the cost of everything the engine
 * adds: Lua, scheduling, JSON, statements written for any workflow rather
 * than for this one, and its durability contract.
 *
 * How the batch commits is the one choice:
 *   batch     one transaction per batch: the fewest commits possible;
 *   per-step  one transaction per step of the batch (three), as a runner
 *             must that starts no step before the commit that recorded the
 *             previous one: each instance row is written in three commits.
 *             (The engine chains Lua steps in one transaction, holding their
 *             ctx calls until the commit; only nodes wait for it.)
 *
 *   bench-baseline DB N full|normal [batch|per-step]
 *     -> prints "instances/s: X" */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "cv.h"
#include "engine.h"

#define BATCH 512

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static sqlite3_stmt *prep(sqlite3 *db, const char *sql) {
  sqlite3_stmt *s;
  if (sqlite3_prepare_v2(db, sql, -1, &s, NULL) != SQLITE_OK) {
    fprintf(stderr, "bench-baseline: %s\n", sqlite3_errmsg(db));
    exit(1);
  }
  return s;
}

static void step_done(sqlite3 *db, sqlite3_stmt *s) {
  if (sqlite3_step(s) != SQLITE_DONE) {
    fprintf(stderr, "bench-baseline: %s\n", sqlite3_errmsg(db));
    exit(1);
  }
  sqlite3_reset(s);
}

static void exec(sqlite3 *db, const char *sql) {
  if (sqlite3_exec(db, sql, NULL, NULL, NULL) != SQLITE_OK) {
    fprintf(stderr, "bench-baseline: %s\n", sqlite3_errmsg(db));
    exit(1);
  }
}

/* Half the instances on each version, as the 50% rate routes them. */
static const char *version(int64_t id) {
  return id % 2 ? "v1" : "v2";
}

static void record_step(sqlite3 *db, sqlite3_stmt *run, int64_t id,
                        const char *step, int64_t ms) {
  sqlite3_bind_int64(run, 1, id);
  sqlite3_bind_text(run, 2, step, -1, SQLITE_STATIC);
  sqlite3_bind_int64(run, 3, ms);
  step_done(db, run);
}

static void advance(sqlite3 *db, sqlite3_stmt *upd, int64_t id,
                    const char *step, const char *vars, int64_t ms) {
  sqlite3_bind_int64(upd, 1, id);
  sqlite3_bind_text(upd, 2, step, -1, SQLITE_STATIC);
  sqlite3_bind_text(upd, 3, vars, -1, SQLITE_STATIC);
  sqlite3_bind_int64(upd, 4, ms);
  step_done(db, upd);
}

int main(int argc, char **argv) {
  const sy_plugin_def *defs[] = {cv_plugin_def()};
  /* As the engine stores them: the definition's SHA-256 in hex, and an
   * engine identity of the engine's shape (pid, 16 hex digits). */
  static const char hash[] =
      "0f45b9e1bd214e85030908d5b46a2fd379682a02a0dcc0392b8abfaa7745bf0b";
  static const char owner[] = "123456-0123456789abcdef";
  sy_engine_opts o;
  sy_engine *e;
  sqlite3 *db;
  sqlite3_stmt *def, *ins, *claim, *dec, *run, *upd, *end, *out, *cnt;
  char err[512], vars[96], key[32];
  long n;
  int per_step;
  double t0, t1;
  if (argc < 4 || argc > 5 ||
      (argc == 5 && strcmp(argv[4], "batch") != 0 &&
       strcmp(argv[4], "per-step") != 0)) {
    fprintf(stderr,
            "usage: bench-baseline DB N full|normal [batch|per-step]\n");
    return 2;
  }
  n = atol(argv[2]);
  per_step = argc == 5 && strcmp(argv[4], "per-step") == 0;
  sy_engine_opts_init(&o);
  o.db_path = argv[1];
  o.sync = strcmp(argv[3], "normal") == 0 ? SY_SYNC_NORMAL : SY_SYNC_FULL;
  o.static_plugins = defs;
  o.nstatic_plugins = 1;
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    fprintf(stderr, "bench-baseline: %s\n", err);
    return 1;
  }
  /* The engine made the schema (its plugin's tables too); the baseline
   * writes them on a connection of its own, set up as the engine's is. */
  sy_engine_close(e);
  if (sqlite3_open(argv[1], &db) != SQLITE_OK) {
    fprintf(stderr, "bench-baseline: %s\n", sqlite3_errmsg(db));
    return 1;
  }
  exec(db, o.sync == SY_SYNC_NORMAL ? "PRAGMA synchronous = NORMAL"
                                    : "PRAGMA synchronous = FULL");
  exec(db, "PRAGMA journal_mode = WAL; PRAGMA cache_size = -65536");
  def = prep(db,
             "INSERT OR IGNORE INTO definitions VALUES(?1, 'tp', NULL, "
             "'source', ?2)");
  ins = prep(db,
             "INSERT INTO instances(workflow, def_hash, state, step, attempt, "
             "vars, created_at, updated_at) VALUES('tp', ?3, 'ready', "
             "'route', 1, ?1, ?2, ?2)");
  claim =
      prep(db,
           "UPDATE instances SET state = 'running', owner = ?4, claimed = 1, "
           "lease_until = ?3 + 30000, updated_at = ?3 "
           "WHERE id BETWEEN ?1 AND ?2");
  dec = prep(db,
             "INSERT INTO cv_decisions(instance_id, flag, workflow, step, "
             "subject, version, reason, bucket, rate_ppm, ramp_id, "
             "decided_at, base_run_ms, base_reruns) VALUES(?1, 'tp', 'tp', "
             "'route', ?2, ?4, 'rollout', ?5, 500000, 2, ?3, 0, 0)");
  run = prep(db,
             "INSERT INTO step_runs(instance_id, step, attempt, started_at, "
             "ended_at, outcome, error) VALUES(?1, ?2, 1, ?3, ?3, 'ok', NULL)");
  upd = prep(db,
             "UPDATE instances SET step = ?2, vars = ?3, updated_at = ?4 "
             "WHERE id = ?1");
  end = prep(db,
             "UPDATE instances SET state = 'completed', step = NULL, "
             "vars = ?2, updated_at = ?3, ended_at = ?3, owner = NULL, "
             "lease_until = NULL WHERE id = ?1");
  out = prep(db,
             "UPDATE cv_decisions SET outcome = 'completed', ended_at = ?3, "
             "branch_ms = ?3 - decided_at, step_ms = 0, retries = 0 "
             "WHERE flag = 'tp' AND decided_at = ?2 AND instance_id = ?1");
  cnt = prep(db,
             "INSERT INTO cv_counters(workflow, flag, version, routed, "
             "completed) VALUES('tp', 'tp', ?2, ?1, ?1) ON CONFLICT DO "
             "UPDATE SET routed = routed + excluded.routed, "
             "completed = completed + excluded.completed");
  t0 = now_s();
  exec(db, "BEGIN IMMEDIATE");
  sqlite3_bind_text(def, 1, hash, -1, SQLITE_STATIC);
  sqlite3_bind_int64(def, 2, sy_now_ms());
  step_done(db, def);
  for (long i = 0; i < n; i++) {
    snprintf(vars, sizeof vars, "{\"user_id\":\"u%ld\"}", i + 1);
    sqlite3_bind_text(ins, 1, vars, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 2, sy_now_ms());
    sqlite3_bind_text(ins, 3, hash, -1, SQLITE_STATIC);
    step_done(db, ins);
  }
  exec(db, "COMMIT");
  for (long base = 0; base < n; base += BATCH) {
    long last = base + BATCH < n ? base + BATCH : n;
    int64_t ms = sy_now_ms();
    /* Step 1: the claim, the decision, the route step. */
    exec(db, "BEGIN IMMEDIATE");
    sqlite3_bind_int64(claim, 1, base + 1);
    sqlite3_bind_int64(claim, 2, last);
    sqlite3_bind_int64(claim, 3, ms);
    sqlite3_bind_text(claim, 4, owner, -1, SQLITE_STATIC);
    step_done(db, claim);
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      snprintf(key, sizeof key, "u%ld", id);
      sqlite3_bind_int64(dec, 1, id);
      sqlite3_bind_text(dec, 2, key, -1, SQLITE_STATIC);
      sqlite3_bind_int64(dec, 3, ms);
      sqlite3_bind_text(dec, 4, version(id), -1, SQLITE_STATIC);
      sqlite3_bind_int64(dec, 5, (id * 7919) % 1000000);
      step_done(db, dec);
      record_step(db, run, id, "route", ms);
      snprintf(vars, sizeof vars, "{\"user_id\":\"%s\"}", key);
      advance(db, upd, id, version(id)[1] == '1' ? "a" : "b", vars, ms);
    }
    /* Step 2: the branch's task, which sets vars.branch. */
    if (per_step) {
      exec(db, "COMMIT");
      exec(db, "BEGIN IMMEDIATE");
      ms = sy_now_ms();
    }
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      snprintf(vars, sizeof vars, "{\"user_id\":\"u%ld\",\"branch\":\"%s\"}",
               id, version(id));
      record_step(db, run, id, version(id)[1] == '1' ? "a" : "b", ms);
      advance(db, upd, id, "done", vars, ms);
    }
    /* Step 3: the last task, the end of the instance and its decision. */
    if (per_step) {
      exec(db, "COMMIT");
      exec(db, "BEGIN IMMEDIATE");
    }
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      int64_t now = sy_now_ms();
      snprintf(vars, sizeof vars,
               "{\"done\":true,\"user_id\":\"u%ld\",\"branch\":\"%s\"}", id,
               version(id));
      record_step(db, run, id, "done", now);
      sqlite3_bind_int64(end, 1, id);
      sqlite3_bind_text(end, 2, vars, -1, SQLITE_STATIC);
      sqlite3_bind_int64(end, 3, now);
      step_done(db, end);
      sqlite3_bind_int64(out, 1, id);
      sqlite3_bind_int64(out, 2, ms);
      sqlite3_bind_int64(out, 3, now);
      step_done(db, out);
    }
    for (int v = 0; v < 2; v++) {
      sqlite3_bind_int64(cnt, 1, (last - base + (v == 0)) / 2);
      sqlite3_bind_text(cnt, 2, v == 0 ? "v1" : "v2", -1, SQLITE_STATIC);
      step_done(db, cnt);
    }
    exec(db, "COMMIT");
  }
  t1 = now_s();
  printf("instances/s: %.0f\n", (double)n / (t1 - t0));
  sqlite3_finalize(def);
  sqlite3_finalize(ins);
  sqlite3_finalize(claim);
  sqlite3_finalize(dec);
  sqlite3_finalize(run);
  sqlite3_finalize(upd);
  sqlite3_finalize(end);
  sqlite3_finalize(out);
  sqlite3_finalize(cnt);
  sqlite3_close(db);
  return 0;
}
