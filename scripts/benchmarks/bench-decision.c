/* Benchmark: the cost of one choose_version routing choice, measured in one
 * process against a bare murmur3 call on the same keys:
 *   - cached: the flag row is cached and the database has not changed;
 *   - after a change: another connection changed the rate, so the first
 *     choice of the next transaction re-reads the row;
 *   - recorded: the whole decision the node makes (choice, decision row and
 *     counter upsert in the transaction).
 * It prints figures (medians of several rounds); it never fails a build. */
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "cv.h"
#include "engine.h"
#include "plugins.h"

#define KEYS 4096
#define ROUNDS 9

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static double median(double *v, int n) {
  qsort(v, (size_t)n, sizeof *v, cmp_double);
  return v[n / 2];
}

static char keys[KEYS][32];
static char joined[KEYS][40];
static size_t joined_len[KEYS];
static volatile uint32_t sink;

int main(int argc, char **argv) {
  const sy_plugin_def *defs[] = {cv_plugin_def()};
  sy_engine_opts o;
  sy_engine *e;
  sqlite3 *other;
  char err[512], path[256];
  cv_router *r;
  sy_store *st;
  double cached[ROUNDS], bare[ROUNDS], changed[ROUNDS], recorded[ROUNDS];
  int per_round = argc > 1 ? atoi(argv[1]) : 200000;
  int64_t id = 0;
  snprintf(path, sizeof path, "%s/bench-decision-%d.db",
           getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", (int)getpid());
  sy_engine_opts_init(&o);
  o.db_path = path;
  o.sync = SY_SYNC_NORMAL;
  o.static_plugins = defs;
  o.nstatic_plugins = 1;
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    fprintf(stderr, "bench: %s\n", err);
    return 1;
  }
  st = sy_engine_store(e);
  r = sy_plugins_node(sy_engine_plugins(e), "choose_version")->plugin->state;
  sqlite3_open(path, &other);
  sqlite3_exec(other,
               "INSERT INTO cv_flags(name, rate_ppm, created_at, updated_at) "
               "VALUES('bench', 250000, 0, 0)",
               NULL, NULL, NULL);
  for (int i = 0; i < KEYS; i++) {
    snprintf(keys[i], sizeof keys[i], "user-%d", i * 7919);
    joined_len[i] =
        (size_t)snprintf(joined[i], sizeof joined[i], "bench:%s", keys[i]);
  }
  for (int round = 0; round < ROUNDS; round++) {
    cv_request req = {
        .flag = "bench", .eligible = 1, .strategy = CV_STRATEGY_STICKY};
    cv_decision d;
    double t0, t1;
    int64_t tx;
    /* bare murmur3 on the same "group:key" strings, joined beforehand */
    t0 = now_ns();
    for (int i = 0; i < per_round; i++) {
      sink += cv_murmur3_32(joined[i % KEYS], joined_len[i % KEYS], 0);
    }
    t1 = now_ns();
    bare[round] = (t1 - t0) / per_round;
    /* cached: one transaction, nothing changes */
    sy_store_begin(st);
    tx = sy_store_tx_seq(st);
    t0 = now_ns();
    for (int i = 0; i < per_round; i++) {
      req.key = keys[i % KEYS];
      req.key_len = strlen(req.key);
      cv_route(r, tx, &req, &d);
      sink += d.version;
    }
    t1 = now_ns();
    cached[round] = (t1 - t0) / per_round;
    sy_store_commit(st);
    /* after a change: another connection moves the rate between our
     * transactions; time the first choice of each new transaction */
    {
      double total = 0;
      int changes = 200;
      for (int c = 0; c < changes; c++) {
        char sql[128];
        snprintf(sql, sizeof sql,
                 "UPDATE cv_flags SET rate_ppm = %d WHERE name = 'bench'",
                 100000 + c);
        sqlite3_exec(other, sql, NULL, NULL, NULL);
        sy_store_begin(st);
        tx = sy_store_tx_seq(st);
        req.key = keys[c % KEYS];
        req.key_len = strlen(req.key);
        t0 = now_ns();
        cv_route(r, tx, &req, &d);
        t1 = now_ns();
        if (d.rate_ppm != (uint32_t)(100000 + c)) {
          fprintf(stderr, "bench: the change was not seen\n");
          return 1;
        }
        total += t1 - t0;
        sy_store_commit(st);
      }
      changed[round] = total / changes;
    }
    /* recorded: the node's whole decision, written in the transaction */
    sy_store_begin(st);
    t0 = now_ns();
    for (int i = 0; i < per_round / 10; i++) {
      req.key = keys[i % KEYS];
      req.key_len = strlen(req.key);
      req.now_ms = sy_now_ms();
      cv_decide(r, ++id, "bench", "route", &req, NULL, NULL, &d);
    }
    t1 = now_ns();
    recorded[round] = (t1 - t0) / (per_round / 10);
    sy_store_commit(st);
  }
  printf(
      "choose_version decision cost (median of %d rounds, %d choices "
      "each)\n",
      ROUNDS, per_round);
  printf("  bare murmur3 (group:key)          %8.1f ns\n",
         median(bare, ROUNDS));
  printf("  choice, rate cached               %8.1f ns   (%.2fx murmur3)\n",
         median(cached, ROUNDS), median(cached, ROUNDS) / median(bare, ROUNDS));
  printf("  choice right after a change       %8.1f ns   (%.1fx murmur3)\n",
         median(changed, ROUNDS),
         median(changed, ROUNDS) / median(bare, ROUNDS));
  printf("  decision recorded (row + counter) %8.1f ns\n",
         median(recorded, ROUNDS));
  sqlite3_close(other);
  sy_engine_close(e);
  unlink(path);
  snprintf(err, sizeof err, "%s-wal", path);
  unlink(err);
  snprintf(err, sizeof err, "%s-shm", path);
  unlink(err);
  return (int)(sink & 0);
}
