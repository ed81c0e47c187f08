/* The PostgreSQL throughput baseline: the rows bench-baseline writes into
 * SQLite (every row the engine writes for a routed three-step instance,
 * with the same values), written into PostgreSQL straight through libpq,
 * as a hand-written program that knows its workload would: the instances
 * in one transaction, then per batch of 512 instances one transaction
 * holding their claim, decisions, step runs, updates, outcomes and
 * counters, every statement of the batch sent in libpq's pipeline mode
 * (one round trip per batch, where the engine makes one per statement).
 * Same schema (an engine opened on the database creates it), so
 * engine/baseline is the cost of everything the engine adds.
 *
 *   bench-pg-baseline URL N   -> prints "instances/s: X" */
#include <libpq-fe.h>
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

static void die(PGconn *c, const char *what) {
  fprintf(stderr, "bench-pg-baseline: %s: %s", what, PQerrorMessage(c));
  exit(1);
}

static void prepare(PGconn *c, const char *name, const char *sql) {
  PGresult *r = PQprepare(c, name, sql, 0, NULL);
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    die(c, name);
  }
  PQclear(r);
}

/* Queues a prepared statement with up to 6 text parameters. */
static void queue(PGconn *c, const char *name, int n, const char *p0,
                  const char *p1, const char *p2, const char *p3,
                  const char *p4, const char *p5) {
  const char *v[6] = {p0, p1, p2, p3, p4, p5};
  if (!PQsendQueryPrepared(c, name, n, v, NULL, NULL, 0)) {
    die(c, name);
  }
}

static void send_sql(PGconn *c, const char *sql) {
  if (!PQsendQueryParams(c, sql, 0, NULL, NULL, NULL, NULL, 0)) {
    die(c, sql);
  }
}

/* Sends the pipeline's sync and reads every result up to it. */
static void flush(PGconn *c) {
  PGresult *r;
  if (!PQpipelineSync(c)) {
    die(c, "sync");
  }
  for (;;) {
    if (!(r = PQgetResult(c))) {
      continue; /* the end of one statement's results */
    }
    if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      return;
    }
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK) {
      fprintf(stderr, "bench-pg-baseline: %s", PQresultErrorMessage(r));
      exit(1);
    }
    PQclear(r);
  }
}

static const char *version(int64_t id) {
  return id % 2 ? "v1" : "v2";
}

static char *num(char *buf, int64_t v) {
  snprintf(buf, 24, "%lld", (long long)v);
  return buf;
}

int main(int argc, char **argv) {
  const sy_plugin_def *defs[] = {cv_plugin_def()};
  static const char hash[] =
      "0f45b9e1bd214e85030908d5b46a2fd379682a02a0dcc0392b8abfaa7745bf0b";
  static const char owner[] = "123456-0123456789abcdef";
  sy_engine_opts o;
  sy_engine *e;
  PGconn *c;
  char err[512], vars[96], key[32], a[24], b[24], d[24], f[24];
  long n;
  double t0, t1;
  if (argc != 3) {
    fprintf(stderr, "usage: bench-pg-baseline URL N\n");
    return 2;
  }
  n = atol(argv[2]);
  sy_engine_opts_init(&o);
  o.db_path = argv[1];
  o.static_plugins = defs;
  o.nstatic_plugins = 1;
  if (sy_engine_open(&e, &o, err, sizeof err)) {
    fprintf(stderr, "bench-pg-baseline: %s\n", err);
    return 1;
  }
  sy_engine_close(e); /* the schema is made */
  c = PQconnectdb(argv[1]);
  if (PQstatus(c) != CONNECTION_OK) {
    die(c, "connect");
  }
  prepare(c, "def",
          "INSERT INTO definitions VALUES($1, 'tp', NULL, 'source', $2) "
          "ON CONFLICT DO NOTHING");
  prepare(c, "ins",
          "INSERT INTO instances(workflow, def_hash, state, step, attempt, "
          "vars, created_at, updated_at) VALUES('tp', $3, 'ready', 'route', "
          "1, $1, $2, $2)");
  prepare(c, "claim",
          "UPDATE instances SET state = 'running', owner = $4, claimed = 1, "
          "lease_until = $3::bigint + 30000, updated_at = $3 "
          "WHERE id BETWEEN $1 AND $2");
  prepare(c, "dec",
          "INSERT INTO cv_decisions(instance_id, flag, workflow, step, "
          "subject, version, reason, bucket, rate_ppm, ramp_id, decided_at, "
          "base_run_ms, base_reruns) VALUES($1, 'tp', 'tp', 'route', $2, $4, "
          "'rollout', $5, 500000, 2, $3, 0, 0)");
  prepare(c, "run",
          "INSERT INTO step_runs(instance_id, step, attempt, started_at, "
          "ended_at, outcome, error) VALUES($1, $2, 1, $3, $3, 'ok', NULL)");
  prepare(c, "upd",
          "UPDATE instances SET step = $2, vars = $3, updated_at = $4 "
          "WHERE id = $1");
  prepare(c, "end",
          "UPDATE instances SET state = 'completed', step = NULL, vars = $2, "
          "updated_at = $3, ended_at = $3, owner = NULL, lease_until = NULL "
          "WHERE id = $1");
  prepare(c, "out",
          "UPDATE cv_decisions SET outcome = 'completed', ended_at = $3, "
          "branch_ms = $3::bigint - decided_at, step_ms = 0, retries = 0 "
          "WHERE flag = 'tp' AND decided_at = $2 AND instance_id = $1");
  prepare(c, "cnt",
          "INSERT INTO cv_counters(workflow, flag, version, routed, "
          "completed) VALUES('tp', 'tp', $2, $1, $1) ON CONFLICT(workflow, "
          "flag, version) DO UPDATE SET routed = cv_counters.routed + "
          "excluded.routed, completed = cv_counters.completed + "
          "excluded.completed");
  if (!PQenterPipelineMode(c)) {
    die(c, "pipeline");
  }
  t0 = now_s();
  send_sql(c, "BEGIN");
  queue(c, "def", 2, hash, num(a, sy_now_ms()), NULL, NULL, NULL, NULL);
  for (long i = 0; i < n; i++) {
    snprintf(vars, sizeof vars, "{\"user_id\":\"u%ld\"}", i + 1);
    queue(c, "ins", 3, vars, num(a, sy_now_ms()), hash, NULL, NULL, NULL);
    if (i % BATCH == BATCH - 1) {
      flush(c); /* bounded buffers */
    }
  }
  send_sql(c, "COMMIT");
  flush(c);
  for (long base = 0; base < n; base += BATCH) {
    long last = base + BATCH < n ? base + BATCH : n;
    char ms[24];
    num(ms, sy_now_ms());
    send_sql(c, "BEGIN");
    queue(c, "claim", 4, num(a, base + 1), num(b, last), ms, owner, NULL, NULL);
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      snprintf(key, sizeof key, "u%ld", id);
      num(a, id);
      queue(c, "dec", 5, a, key, ms, version(id), num(b, (id * 7919) % 1000000),
            NULL);
      queue(c, "run", 3, a, "route", ms, NULL, NULL, NULL);
      snprintf(vars, sizeof vars, "{\"user_id\":\"%s\"}", key);
      queue(c, "upd", 4, a, version(id)[1] == '1' ? "a" : "b", vars, ms, NULL,
            NULL);
    }
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      num(a, id);
      snprintf(vars, sizeof vars, "{\"user_id\":\"u%ld\",\"branch\":\"%s\"}",
               id, version(id));
      queue(c, "run", 3, a, version(id)[1] == '1' ? "a" : "b", ms, NULL, NULL,
            NULL);
      queue(c, "upd", 4, a, "done", vars, ms, NULL, NULL);
    }
    for (long i = base; i < last; i++) {
      int64_t id = i + 1;
      num(a, id);
      num(d, sy_now_ms());
      snprintf(vars, sizeof vars,
               "{\"done\":true,\"user_id\":\"u%ld\",\"branch\":\"%s\"}", id,
               version(id));
      queue(c, "run", 3, a, "done", d, NULL, NULL, NULL);
      queue(c, "end", 3, a, vars, d, NULL, NULL, NULL);
      queue(c, "out", 3, a, ms, d, NULL, NULL, NULL);
    }
    for (int v = 0; v < 2; v++) {
      queue(c, "cnt", 2, num(f, (last - base + (v == 0)) / 2),
            v == 0 ? "v1" : "v2", NULL, NULL, NULL, NULL);
    }
    send_sql(c, "COMMIT");
    flush(c);
  }
  t1 = now_s();
  printf("instances/s: %.0f\n", (double)n / (t1 - t0));
  PQfinish(c);
  return 0;
}
