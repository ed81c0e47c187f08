/* The throughput baseline: the rows the engine writes for a routed
 * three-step instance, written straight through SQLite's C API in batched
 * transactions, with no engine at all: per instance one instance row, its
 * decision, three step runs and the instance updates. The same schema (an
 * engine opened on the database creates it) and the same synchronous mode,
 * so engine/baseline is the cost of everything the engine adds.
 *
 *   bench-baseline DB N full|normal   -> prints "instances/s: X" */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int main(int argc, char **argv) {
  const sy_plugin_def *defs[] = {cv_plugin_def()};
  static const char *const steps[3] = {"route", "a", "done"};
  sy_engine_opts o;
  sy_engine *e;
  sqlite3 *db;
  sqlite3_stmt *ins, *dec, *run, *upd;
  char err[512], vars[64], key[32];
  long n;
  double t0, t1;
  if (argc != 4) {
    fprintf(stderr, "usage: bench-baseline DB N full|normal\n");
    return 2;
  }
  n = atol(argv[2]);
  sy_engine_opts_init(&o);
  o.db_path = argv[1];
  o.sync = strcmp(argv[3], "normal") == 0 ? SY_SYNC_NORMAL : SY_SYNC_FULL;
  o.static_plugins = defs;
  o.nstatic_plugins = 1;
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    fprintf(stderr, "bench-baseline: %s\n", err);
    return 1;
  }
  db = sy_store_db(sy_engine_store(e));
  sqlite3_exec(db,
               "INSERT OR IGNORE INTO definitions VALUES('h', 'tp', NULL, "
               "'source', 0)",
               NULL, NULL, NULL);
  ins = prep(db,
             "INSERT INTO instances(workflow, def_hash, state, step, attempt, "
             "vars, created_at, updated_at) VALUES('tp', 'h', 'running', "
             "'route', 1, ?1, ?2, ?2)");
  dec = prep(db,
             "INSERT INTO cv_decisions(instance_id, flag, workflow, step, "
             "subject, version, reason, bucket, rate_ppm, ramp_id, "
             "decided_at) VALUES(?1, 'tp', 'tp', 'route', ?2, 'v1', "
             "'rollout', 123, 500000, 1, ?3)");
  run = prep(db,
             "INSERT INTO step_runs(instance_id, step, attempt, started_at, "
             "ended_at, outcome, error) VALUES(?1, ?2, 1, ?3, ?3, 'ok', NULL)");
  upd = prep(db,
             "UPDATE instances SET state = ?2, step = ?3, vars = ?4, "
             "updated_at = ?5 WHERE id = ?1");
  t0 = now_s();
  for (long base = 0; base < n; base += BATCH) {
    sqlite3_exec(db, "BEGIN IMMEDIATE", NULL, NULL, NULL);
    for (long i = base; i < base + BATCH && i < n; i++) {
      int64_t id, ms = (int64_t)(now_s() * 1000);
      snprintf(key, sizeof key, "u%ld", i + 1);
      snprintf(vars, sizeof vars, "{\"user_id\":\"%s\"}", key);
      sqlite3_bind_text(ins, 1, vars, -1, SQLITE_STATIC);
      sqlite3_bind_int64(ins, 2, ms);
      step_done(db, ins);
      id = sqlite3_last_insert_rowid(db);
      sqlite3_bind_int64(dec, 1, id);
      sqlite3_bind_text(dec, 2, key, -1, SQLITE_STATIC);
      sqlite3_bind_int64(dec, 3, ms);
      step_done(db, dec);
      for (int k = 0; k < 3; k++) {
        sqlite3_bind_int64(run, 1, id);
        sqlite3_bind_text(run, 2, steps[k], -1, SQLITE_STATIC);
        sqlite3_bind_int64(run, 3, ms);
        step_done(db, run);
        sqlite3_bind_int64(upd, 1, id);
        sqlite3_bind_text(upd, 2, k < 2 ? "running" : "completed", -1,
                          SQLITE_STATIC);
        if (k < 2) {
          sqlite3_bind_text(upd, 3, steps[k + 1], -1, SQLITE_STATIC);
        } else {
          sqlite3_bind_null(upd, 3);
        }
        sqlite3_bind_text(upd, 4, vars, -1, SQLITE_STATIC);
        sqlite3_bind_int64(upd, 5, ms);
        step_done(db, upd);
      }
    }
    if (sqlite3_exec(db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
      fprintf(stderr, "bench-baseline: %s\n", sqlite3_errmsg(db));
      return 1;
    }
  }
  t1 = now_s();
  printf("instances/s: %.0f\n", (double)n / (t1 - t0));
  sqlite3_finalize(ins);
  sqlite3_finalize(dec);
  sqlite3_finalize(run);
  sqlite3_finalize(upd);
  sy_engine_close(e);
  return 0;
}
