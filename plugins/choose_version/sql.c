/* choose_version's SQL, all of it: the migrations of its tables, and every
 * statement it runs (the node's, the event hook's, the commands') in one
 * table indexed by the CVQ_* ids of cv.h, each prepared once, on first use,
 * into the router's cache; then bind -> step -> reset, the first error
 * copied where it happens, all through the engine's statement API
 * (plugin.h). The statements keep to what SQLite and PostgreSQL both
 * accept (ON CONFLICT ... DO UPDATE with a target, RETURNING, CASE rather
 * than boolean columns); the few that cannot say so where they are. */
#include <stdio.h>
#include <string.h>

#include "cv.h"

/* The bucket of cv_latency holding a value (cv_latency_le, counters.c),
 * and past completed decisions sorted into them (migration 9). */
// clang-format off
#define CV_LATENCY_LE(v)                     \
  "CASE "                                    \
  "WHEN " v " <= 5 THEN 5 "                  \
  "WHEN " v " <= 10 THEN 10 "                \
  "WHEN " v " <= 25 THEN 25 "                \
  "WHEN " v " <= 50 THEN 50 "                \
  "WHEN " v " <= 100 THEN 100 "              \
  "WHEN " v " <= 250 THEN 250 "              \
  "WHEN " v " <= 500 THEN 500 "              \
  "WHEN " v " <= 1000 THEN 1000 "            \
  "WHEN " v " <= 2500 THEN 2500 "            \
  "WHEN " v " <= 5000 THEN 5000 "            \
  "WHEN " v " <= 10000 THEN 10000 "          \
  "WHEN " v " <= 30000 THEN 30000 "          \
  "WHEN " v " <= 60000 THEN 60000 "          \
  "WHEN " v " <= 300000 THEN 300000 "        \
  "WHEN " v " <= 3600000 THEN 3600000 "      \
  "WHEN " v " <= 86400000 THEN 86400000 "    \
  "WHEN " v " <= 604800000 THEN 604800000 "  \
  "ELSE 9223372036854775807 END"
#define CV_LATENCY_FILL(kind, col)                                          \
  "INSERT INTO cv_latency(workflow, flag, version, kind, le, n, sum_ms) "   \
  "SELECT workflow, flag, version, '" kind "', " CV_LATENCY_LE(col)         \
  ", count(*), sum(" col ") FROM cv_decisions WHERE outcome = 'completed' " \
  "GROUP BY 1, 2, 3, 4, 5;"
/* The ramp tallies of the decisions recorded so far (migration 10), as
 * report.c counts them. */
#define CV_RAMP_TALLY_FILL                                                  \
  "INSERT INTO cv_ramp_tallies(flag, ramp_id, workflow, version, routed, "  \
  "completed, in_flight, incidents, with_incidents) "                       \
  "SELECT flag, coalesce(ramp_id, 0), workflow, version, count(*), "        \
  "sum(CASE WHEN outcome = 'completed' THEN 1 ELSE 0 END), "                \
  "sum(CASE WHEN outcome IS NULL AND open_incidents = 0 THEN 1 ELSE 0 END)," \
  " sum(incidents), sum(CASE WHEN incidents > 0 THEN 1 ELSE 0 END) "        \
  "FROM cv_decisions WHERE reroutes = 0 GROUP BY 1, 2, 3, 4;"
// clang-format on

/* Migrations of the plugin's own tables, tracked in cv_meta: each moves
 * the schema from version i to i + 1. Never edit a released one: add one. */
/* Shadow runs (migration 11), in either database's integer type. A run's
 * row is written with its decision (outcome NULL: in flight, on engine)
 * and ended by its report. The budget's hours count the runs spent, a
 * row shared by the engines; the shadows skipped (by the budget, or by an
 * engine too busy with shadows) are counted per engine, each in rows of
 * its own, written with its counters. The last statement is the runs' table:
 * SQLite's text adds WITHOUT ROWID. */
#define CV_SHADOW_TABLES(INT)                                     \
  "CREATE TABLE cv_shadow_hours("                                 \
  "  flag TEXT NOT NULL, hour " INT                               \
  " NOT NULL,"                                                    \
  "  used " INT                                                   \
  " NOT NULL,"                                                    \
  "  PRIMARY KEY(flag, hour));"                                   \
  "CREATE TABLE cv_shadow_skips("                                 \
  "  flag TEXT NOT NULL, hour " INT                               \
  " NOT NULL,"                                                    \
  "  engine TEXT NOT NULL,"                                       \
  "  skipped " INT " NOT NULL, busy " INT                         \
  " NOT NULL,"                                                    \
  "  PRIMARY KEY(flag, hour, engine));"                           \
  "CREATE TABLE cv_shadow_runs("                                  \
  "  flag TEXT NOT NULL, started_at " INT                         \
  " NOT NULL,"                                                    \
  "  instance_id " INT                                            \
  " NOT NULL,"                                                    \
  "  workflow TEXT NOT NULL, subject TEXT, engine TEXT NOT NULL," \
  "  ended_at " INT                                               \
  ","                                                             \
  "  outcome TEXT CHECK(outcome IN ('match', 'mismatch', "        \
  "'candidate_error', 'candidate_timeout', 'primary_error', "     \
  "'compare_error', 'lost')),"                                    \
  "  primary_ms " INT ", candidate_ms " INT                       \
  ", detail TEXT,"                                                \
  "  PRIMARY KEY(flag, started_at, instance_id))"
#define CV_SHADOW_INDEX                                            \
  "CREATE UNIQUE INDEX cv_shadow_runs_instance ON cv_shadow_runs(" \
  "instance_id, flag);"

static const char *const migrations[] = {
    "CREATE TABLE cv_flags("
    "  name TEXT PRIMARY KEY,"
    "  rate_ppm INTEGER NOT NULL DEFAULT 0,"
    "  killed INTEGER NOT NULL DEFAULT 0,"
    "  hash_group TEXT,"
    "  description TEXT,"
    "  owner TEXT,"
    "  nth_counter INTEGER NOT NULL DEFAULT 0,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  retired_at INTEGER);"
    "CREATE TABLE cv_overrides("
    "  flag TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK(kind IN ('allow', 'opt-out')),"
    "  actor TEXT, reason TEXT, created_at INTEGER NOT NULL,"
    "  PRIMARY KEY(flag, subject));"
    /* Every change of a flag; rate and kill-switch changes start ramp
     * steps. old/new values are text as a user would type them. */
    "CREATE TABLE cv_audit("
    "  id INTEGER PRIMARY KEY,"
    "  flag TEXT NOT NULL,"
    "  what TEXT NOT NULL,"
    "  subject TEXT,"
    "  old_value TEXT, new_value TEXT,"
    "  rate_ppm INTEGER, killed INTEGER,"
    "  reason TEXT, actor TEXT, at INTEGER NOT NULL);"
    "CREATE INDEX cv_audit_flag ON cv_audit(flag, id);"
    "CREATE TABLE cv_decisions("
    "  instance_id INTEGER NOT NULL,"
    "  flag TEXT NOT NULL,"
    "  workflow TEXT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  subject TEXT,"
    "  version TEXT NOT NULL CHECK(version IN ('v1', 'v2')),"
    "  reason TEXT NOT NULL,"
    "  bucket INTEGER,"
    "  rate_ppm INTEGER NOT NULL,"
    "  ramp_id INTEGER,"
    "  decided_at INTEGER NOT NULL,"
    /* What happened after the decision, kept up to date by the event hook
     * so that a report reads this one table: */
    "  outcome TEXT," /* completed, cancelled */
    "  ended_at INTEGER,"
    "  branch_ms INTEGER," /* decision to end of the instance */
    "  step_ms INTEGER,"   /* time spent in the branch's step runs */
    "  retries INTEGER NOT NULL DEFAULT 0," /* retried runs in the branch */
    "  incidents INTEGER NOT NULL DEFAULT 0,"
    "  open_incidents INTEGER NOT NULL DEFAULT 0,"
    /* Clustered by flag and time: a report reads one contiguous range. */
    "  PRIMARY KEY(flag, decided_at, instance_id)) WITHOUT ROWID;"
    "CREATE UNIQUE INDEX cv_decisions_instance ON cv_decisions(instance_id, "
    "flag);"
    "CREATE TABLE cv_counters("
    "  workflow TEXT NOT NULL, flag TEXT NOT NULL, version TEXT NOT NULL,"
    "  routed INTEGER NOT NULL DEFAULT 0,"
    "  in_flight INTEGER NOT NULL DEFAULT 0,"
    "  completed INTEGER NOT NULL DEFAULT 0,"
    "  cancelled INTEGER NOT NULL DEFAULT 0,"
    "  with_incidents INTEGER NOT NULL DEFAULT 0,"
    "  incidents INTEGER NOT NULL DEFAULT 0,"
    "  open_incidents INTEGER NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(workflow, flag, version));",
    /* 2: the instance's step-run totals (instances.run_ms, reruns) when
     * it was decided, so that the branch's step time and retries are a
     * subtraction at the event instead of a scan of the history. For
     * instances still in flight, what the branch has already run is taken
     * out of the base, so that nothing is counted twice or lost. */
    "ALTER TABLE cv_decisions ADD COLUMN base_run_ms INTEGER NOT NULL "
    "DEFAULT 0;"
    "ALTER TABLE cv_decisions ADD COLUMN base_reruns INTEGER NOT NULL "
    "DEFAULT 0;"
    "UPDATE cv_decisions SET "
    "  base_run_ms = (SELECT i.run_ms FROM instances i "
    "                 WHERE i.id = cv_decisions.instance_id) - "
    "    (SELECT coalesce(sum(r.ended_at - r.started_at), 0) "
    "     FROM step_runs r WHERE r.instance_id = cv_decisions.instance_id "
    "     AND r.started_at >= cv_decisions.decided_at "
    "     AND r.step <> cv_decisions.step),"
    "  base_reruns = (SELECT i.reruns FROM instances i "
    "                 WHERE i.id = cv_decisions.instance_id) - "
    "    (SELECT count(*) FROM step_runs r "
    "     WHERE r.instance_id = cv_decisions.instance_id "
    "     AND r.started_at >= cv_decisions.decided_at "
    "     AND r.step <> cv_decisions.step AND r.attempt > 1) "
    "WHERE outcome IS NULL;",
    /* 3: errors of the branch a handler step took (catch) rather than an
     * incident, per decision and per version. */
    ("ALTER TABLE cv_decisions ADD COLUMN caught INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE cv_counters ADD COLUMN caught INTEGER NOT NULL DEFAULT 0;"),
    /* 4: rollout plans (plan.c) and their evaluations. */
    ("CREATE TABLE cv_plans("
     "  flag TEXT PRIMARY KEY,"
     "  state TEXT NOT NULL,"
     "  steps TEXT NOT NULL,"
     "  step INTEGER NOT NULL,"
     "  hold_ms INTEGER NOT NULL, min_instances INTEGER NOT NULL,"
     "  max_increase REAL NOT NULL, alpha REAL NOT NULL,"
     "  max_wait_ms INTEGER NOT NULL,"
     "  started_at INTEGER NOT NULL, step_started_at INTEGER NOT NULL,"
     "  p_min REAL NOT NULL, updated_at INTEGER NOT NULL,"
     "  gates TEXT NOT NULL DEFAULT '', approved INTEGER NOT NULL DEFAULT -1,"
     "  outcome_var TEXT, p_min_outcome REAL NOT NULL DEFAULT 1,"
     "  reason TEXT, actor TEXT);"
     "CREATE TABLE cv_plan_evals("
     "  id INTEGER PRIMARY KEY, flag TEXT NOT NULL, at INTEGER NOT NULL,"
     "  step INTEGER NOT NULL, n1 INTEGER, x1 INTEGER, n2 INTEGER,"
     "  x2 INTEGER, p REAL, p_min REAL, p_outcome REAL, outcome TEXT NOT NULL,"
     "  applied INTEGER NOT NULL, reason TEXT);"
     "CREATE INDEX cv_plan_evals_flag ON cv_plan_evals(flag, id);"),
    /* 5: notifications (notify.c): who hears of a flag's changes, and the
     * outbox every change of the flag writes in its own transaction; the
     * plan's numbers beside an audit entry it made. */
    ("ALTER TABLE cv_audit ADD COLUMN numbers TEXT;"
     "CREATE TABLE cv_notify_targets("
     "  flag TEXT NOT NULL, url TEXT NOT NULL,"
     "  format TEXT NOT NULL CHECK(format IN ('json', 'slack')),"
     "  secret TEXT, actor TEXT, created_at INTEGER NOT NULL,"
     "  PRIMARY KEY(flag, url));"
     "CREATE TABLE cv_outbox("
     "  id INTEGER PRIMARY KEY,"
     "  flag TEXT NOT NULL, url TEXT NOT NULL, audit_id INTEGER NOT NULL,"
     "  idem_key TEXT NOT NULL, body TEXT NOT NULL,"
     "  state TEXT NOT NULL DEFAULT 'pending'"
     "    CHECK(state IN ('pending', 'delivered', 'dropped')),"
     "  attempts INTEGER NOT NULL DEFAULT 0,"
     "  next_at INTEGER NOT NULL, lease_until INTEGER NOT NULL DEFAULT 0,"
     "  last_status INTEGER, last_error TEXT,"
     "  created_at INTEGER NOT NULL, delivered_at INTEGER);"
     "CREATE INDEX cv_outbox_pending ON cv_outbox(flag, url, id) "
     "  WHERE state = 'pending';"
     "CREATE INDEX cv_outbox_flag ON cv_outbox(flag, id);"),
    /* 6: the latency guard of plans (0: none), its smallest p so far, and
     * each evaluation's. */
    ("ALTER TABLE cv_plans ADD COLUMN latency_increase REAL NOT NULL "
     "DEFAULT 0;"
     "ALTER TABLE cv_plans ADD COLUMN p_min_latency REAL NOT NULL DEFAULT 1;"
     "ALTER TABLE cv_plan_evals ADD COLUMN p_latency REAL;"),
    /* 7: reroutes (reroute.c). An instance moved to the other version by
     * `retry --reroute` keeps its first decision, closed with outcome
     * 'rerouted', and gets another (reason 'rerouted') numbered by
     * reroutes; the counters say how many came and left so. */
    ("ALTER TABLE cv_decisions ADD COLUMN reroutes INTEGER NOT NULL "
     "DEFAULT 0;"
     "DROP INDEX cv_decisions_instance;"
     "CREATE UNIQUE INDEX cv_decisions_instance ON cv_decisions("
     "instance_id, flag, reroutes);"
     "ALTER TABLE cv_counters ADD COLUMN rerouted_in INTEGER NOT NULL "
     "DEFAULT 0;"
     "ALTER TABLE cv_counters ADD COLUMN rerouted_out INTEGER NOT NULL "
     "DEFAULT 0;"
     "ALTER TABLE cv_plans ADD COLUMN on_rollback TEXT NOT NULL DEFAULT "
     "'keep';"),
    /* 8: on a database server, the tables the flag cache (flags.c) reads
     * move the engine's change counter (data_version) when they change;
     * a SQLite file counts every commit by itself. */
    "",
    /* 9: latency histograms of completed decisions per workflow, flag,
     * version and kind (branch: from the decision to the end; steps: the
     * steps' own time in between), by bucket (le, ms), kept with the
     * counters; past decisions are sorted into them at once. */
    ("CREATE TABLE cv_latency("
     "  workflow TEXT NOT NULL, flag TEXT NOT NULL, version TEXT NOT NULL,"
     "  kind TEXT NOT NULL CHECK(kind IN ('branch', 'steps')),"
     "  le INTEGER NOT NULL,"
     "  n INTEGER NOT NULL,"
     "  sum_ms INTEGER NOT NULL,"
     "  PRIMARY KEY(workflow, flag, version, kind, le));" CV_LATENCY_FILL(
         "branch", "branch_ms") CV_LATENCY_FILL("steps", "step_ms")),
    /* 10: the report's counts per ramp step, workflow and version of the
     * decisions routed there (not those rerouted in), kept with the
     * counters, for the flag's page; past decisions are counted at once. */
    ("CREATE TABLE cv_ramp_tallies("
     "  flag TEXT NOT NULL, ramp_id INTEGER NOT NULL,"
     "  workflow TEXT NOT NULL, version TEXT NOT NULL,"
     "  routed INTEGER NOT NULL, completed INTEGER NOT NULL,"
     "  in_flight INTEGER NOT NULL, incidents INTEGER NOT NULL,"
     "  with_incidents INTEGER NOT NULL,"
     "  PRIMARY KEY(flag, ramp_id, workflow, version));" CV_RAMP_TALLY_FILL),
    /* 11: shadow runs (a share of v1's decisions also runs v2's first step
     * beside it, compared): the flag's shadow rate and budget per hour,
     * each run with its outcome, and the budget spent per hour. */
    ("ALTER TABLE cv_flags ADD COLUMN shadow_ppm INTEGER NOT NULL DEFAULT 0;"
     "ALTER TABLE cv_flags ADD COLUMN shadow_budget INTEGER NOT NULL "
     "DEFAULT 0;" CV_SHADOW_TABLES(
         "INTEGER") " WITHOUT ROWID;" CV_SHADOW_INDEX),
};
#define CV_SCHEMA_VERSION ((int)(sizeof migrations / sizeof *migrations))

/* PostgreSQL's migrations, one for each of SQLite's: no PostgreSQL
 * database predates version 3, so the first makes that schema at once and
 * the next two have nothing left to do; from the fourth on they are
 * SQLite's in PostgreSQL's types. Every integer is BIGINT (times in
 * milliseconds); cv_decisions is ordered by its primary key through the
 * index PostgreSQL keeps for it. */
static const char *const pg_migrations[] = {
    "CREATE TABLE cv_flags("
    "  name TEXT PRIMARY KEY,"
    "  rate_ppm BIGINT NOT NULL DEFAULT 0,"
    "  killed BIGINT NOT NULL DEFAULT 0,"
    "  hash_group TEXT,"
    "  description TEXT,"
    "  owner TEXT,"
    "  nth_counter BIGINT NOT NULL DEFAULT 0,"
    "  created_at BIGINT NOT NULL,"
    "  updated_at BIGINT NOT NULL,"
    "  retired_at BIGINT);"
    "CREATE TABLE cv_overrides("
    "  flag TEXT NOT NULL,"
    "  subject TEXT NOT NULL,"
    "  kind TEXT NOT NULL CHECK(kind IN ('allow', 'opt-out')),"
    "  actor TEXT, reason TEXT, created_at BIGINT NOT NULL,"
    "  PRIMARY KEY(flag, subject));"
    "CREATE TABLE cv_audit("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  flag TEXT NOT NULL,"
    "  what TEXT NOT NULL,"
    "  subject TEXT,"
    "  old_value TEXT, new_value TEXT,"
    "  rate_ppm BIGINT, killed BIGINT,"
    "  reason TEXT, actor TEXT, at BIGINT NOT NULL);"
    "CREATE INDEX cv_audit_flag ON cv_audit(flag, id);"
    "CREATE TABLE cv_decisions("
    "  instance_id BIGINT NOT NULL,"
    "  flag TEXT NOT NULL,"
    "  workflow TEXT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  subject TEXT,"
    "  version TEXT NOT NULL CHECK(version IN ('v1', 'v2')),"
    "  reason TEXT NOT NULL,"
    "  bucket BIGINT,"
    "  rate_ppm BIGINT NOT NULL,"
    "  ramp_id BIGINT,"
    "  decided_at BIGINT NOT NULL,"
    "  outcome TEXT,"
    "  ended_at BIGINT,"
    "  branch_ms BIGINT,"
    "  step_ms BIGINT,"
    "  retries BIGINT NOT NULL DEFAULT 0,"
    "  incidents BIGINT NOT NULL DEFAULT 0,"
    "  open_incidents BIGINT NOT NULL DEFAULT 0,"
    "  base_run_ms BIGINT NOT NULL DEFAULT 0,"
    "  base_reruns BIGINT NOT NULL DEFAULT 0,"
    "  caught BIGINT NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(flag, decided_at, instance_id));"
    "CREATE UNIQUE INDEX cv_decisions_instance ON cv_decisions(instance_id, "
    "flag);"
    "CREATE TABLE cv_counters("
    "  workflow TEXT NOT NULL, flag TEXT NOT NULL, version TEXT NOT NULL,"
    "  routed BIGINT NOT NULL DEFAULT 0,"
    "  in_flight BIGINT NOT NULL DEFAULT 0,"
    "  completed BIGINT NOT NULL DEFAULT 0,"
    "  cancelled BIGINT NOT NULL DEFAULT 0,"
    "  with_incidents BIGINT NOT NULL DEFAULT 0,"
    "  incidents BIGINT NOT NULL DEFAULT 0,"
    "  open_incidents BIGINT NOT NULL DEFAULT 0,"
    "  caught BIGINT NOT NULL DEFAULT 0,"
    "  PRIMARY KEY(workflow, flag, version));",
    "",
    "",
    ("CREATE TABLE cv_plans("
     "  flag TEXT PRIMARY KEY,"
     "  state TEXT NOT NULL,"
     "  steps TEXT NOT NULL,"
     "  step BIGINT NOT NULL,"
     "  hold_ms BIGINT NOT NULL, min_instances BIGINT NOT NULL,"
     "  max_increase DOUBLE PRECISION NOT NULL,"
     "  alpha DOUBLE PRECISION NOT NULL,"
     "  max_wait_ms BIGINT NOT NULL,"
     "  started_at BIGINT NOT NULL, step_started_at BIGINT NOT NULL,"
     "  p_min DOUBLE PRECISION NOT NULL, updated_at BIGINT NOT NULL,"
     "  gates TEXT NOT NULL DEFAULT '', approved BIGINT NOT NULL DEFAULT -1,"
     "  outcome_var TEXT, p_min_outcome DOUBLE PRECISION NOT NULL DEFAULT 1,"
     "  reason TEXT, actor TEXT);"
     "CREATE TABLE cv_plan_evals("
     "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
     "  flag TEXT NOT NULL, at BIGINT NOT NULL,"
     "  step BIGINT NOT NULL, n1 BIGINT, x1 BIGINT, n2 BIGINT,"
     "  x2 BIGINT, p DOUBLE PRECISION, p_min DOUBLE PRECISION,"
     "  p_outcome DOUBLE PRECISION,"
     "  outcome TEXT NOT NULL, applied BIGINT NOT NULL, reason TEXT);"
     "CREATE INDEX cv_plan_evals_flag ON cv_plan_evals(flag, id);"),
    ("ALTER TABLE cv_audit ADD COLUMN numbers TEXT;"
     "CREATE TABLE cv_notify_targets("
     "  flag TEXT NOT NULL, url TEXT NOT NULL,"
     "  format TEXT NOT NULL CHECK(format IN ('json', 'slack')),"
     "  secret TEXT, actor TEXT, created_at BIGINT NOT NULL,"
     "  PRIMARY KEY(flag, url));"
     "CREATE TABLE cv_outbox("
     "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
     "  flag TEXT NOT NULL, url TEXT NOT NULL, audit_id BIGINT NOT NULL,"
     "  idem_key TEXT NOT NULL, body TEXT NOT NULL,"
     "  state TEXT NOT NULL DEFAULT 'pending'"
     "    CHECK(state IN ('pending', 'delivered', 'dropped')),"
     "  attempts BIGINT NOT NULL DEFAULT 0,"
     "  next_at BIGINT NOT NULL, lease_until BIGINT NOT NULL DEFAULT 0,"
     "  last_status BIGINT, last_error TEXT,"
     "  created_at BIGINT NOT NULL, delivered_at BIGINT);"
     "CREATE INDEX cv_outbox_pending ON cv_outbox(flag, url, id) "
     "  WHERE state = 'pending';"
     "CREATE INDEX cv_outbox_flag ON cv_outbox(flag, id);"),
    ("ALTER TABLE cv_plans ADD COLUMN latency_increase DOUBLE PRECISION NOT "
     "NULL DEFAULT 0;"
     "ALTER TABLE cv_plans ADD COLUMN p_min_latency DOUBLE PRECISION NOT "
     "NULL DEFAULT 1;"
     "ALTER TABLE cv_plan_evals ADD COLUMN p_latency DOUBLE PRECISION;"),
    ("ALTER TABLE cv_decisions ADD COLUMN reroutes BIGINT NOT NULL "
     "DEFAULT 0;"
     "DROP INDEX cv_decisions_instance;"
     "CREATE UNIQUE INDEX cv_decisions_instance ON cv_decisions("
     "instance_id, flag, reroutes);"
     "ALTER TABLE cv_counters ADD COLUMN rerouted_in BIGINT NOT NULL "
     "DEFAULT 0;"
     "ALTER TABLE cv_counters ADD COLUMN rerouted_out BIGINT NOT NULL "
     "DEFAULT 0;"
     "ALTER TABLE cv_plans ADD COLUMN on_rollback TEXT NOT NULL DEFAULT "
     "'keep';"),
    /* What a decision reads of a flag: its row but for nth_counter (which
     * every-nth decisions move), its overrides, its ramp (the audit). */
    ("CREATE TRIGGER cv_flags_changed AFTER INSERT OR DELETE OR UPDATE OF "
     "rate_ppm, killed, hash_group, retired_at ON cv_flags "
     "FOR EACH STATEMENT EXECUTE FUNCTION sy_note_change();"
     "CREATE TRIGGER cv_overrides_changed AFTER INSERT OR DELETE OR UPDATE "
     "ON cv_overrides FOR EACH STATEMENT EXECUTE FUNCTION sy_note_change();"
     "CREATE TRIGGER cv_audit_changed AFTER INSERT OR DELETE OR UPDATE ON "
     "cv_audit FOR EACH STATEMENT EXECUTE FUNCTION sy_note_change();"),
    ("CREATE TABLE cv_latency("
     "  workflow TEXT NOT NULL, flag TEXT NOT NULL, version TEXT NOT NULL,"
     "  kind TEXT NOT NULL CHECK(kind IN ('branch', 'steps')),"
     "  le BIGINT NOT NULL,"
     "  n BIGINT NOT NULL,"
     "  sum_ms BIGINT NOT NULL,"
     "  PRIMARY KEY(workflow, flag, version, kind, le));" CV_LATENCY_FILL(
         "branch", "branch_ms") CV_LATENCY_FILL("steps", "step_ms")),
    ("CREATE TABLE cv_ramp_tallies("
     "  flag TEXT NOT NULL, ramp_id BIGINT NOT NULL,"
     "  workflow TEXT NOT NULL, version TEXT NOT NULL,"
     "  routed BIGINT NOT NULL, completed BIGINT NOT NULL,"
     "  in_flight BIGINT NOT NULL, incidents BIGINT NOT NULL,"
     "  with_incidents BIGINT NOT NULL,"
     "  PRIMARY KEY(flag, ramp_id, workflow, version));" CV_RAMP_TALLY_FILL),
    ("ALTER TABLE cv_flags ADD COLUMN shadow_ppm BIGINT NOT NULL DEFAULT 0;"
     "ALTER TABLE cv_flags ADD COLUMN shadow_budget BIGINT NOT NULL "
     "DEFAULT 0;" CV_SHADOW_TABLES(
         "BIGINT") ";" CV_SHADOW_INDEX
                   /* the flag cache reads the shadow rate and budget too */
                   "DROP TRIGGER IF EXISTS cv_flags_changed ON cv_flags;"
                   "CREATE TRIGGER cv_flags_changed AFTER INSERT OR DELETE OR "
                   "UPDATE OF "
                   "rate_ppm, killed, hash_group, retired_at, shadow_ppm, "
                   "shadow_budget "
                   "ON cv_flags FOR EACH STATEMENT EXECUTE FUNCTION "
                   "sy_note_change();"),
};
_Static_assert(sizeof pg_migrations == sizeof migrations,
               "one PostgreSQL migration for each of SQLite's");

/* Where the schema version is kept; created before the migrations run. */
static const char cv_meta_table[] =
    "CREATE TABLE cv_meta(key TEXT PRIMARY KEY, value INTEGER)";

/* The changes of a flag that start a ramp step: a decision records the
 * latest as its ramp (CVQ_FLAG), a report lists them (CVQ_RAMPS). */
#define RAMP_CHANGES "what IN ('rate', 'kill', 'unkill', 'group')"

/* A flag's row as the rollout command shows it, name first. */
#define FLAG_ROW_COLS                                                \
  "name, rate_ppm, killed, retired_at, coalesce(hash_group, name), " \
  "coalesce(description, ''), coalesce(owner, ''), created_at, "     \
  "updated_at, shadow_ppm, shadow_budget"

/* What an event does to a decision's row (events.c binds ?1 the instance,
 * then the event's values each statement uses, in this order, then for a
 * decision by key its flag and decided_at). The branch's step time and
 * retries are the instance's totals at the event less those at the
 * decision. Every parameter number is used: PostgreSQL refuses a gap. */
#define EV_COMPLETED                                               \
  "UPDATE cv_decisions SET outcome = 'completed', ended_at = ?2, " \
  "branch_ms = ?2 - decided_at, step_ms = ?3 - base_run_ms, "      \
  "retries = ?4 - base_reruns "
#define EV_INCIDENT                                     \
  "UPDATE cv_decisions SET incidents = incidents + 1, " \
  "open_incidents = open_incidents + 1, retries = ?2 - base_reruns "
#define EV_CANCELLED \
  "UPDATE cv_decisions SET outcome = 'cancelled', ended_at = ?2 "
#define EV_CAUGHT "UPDATE cv_decisions SET caught = caught + 1 "
/* An instance's decisions still open: a decision closed by a reroute
 * (outcome 'rerouted') hears nothing more. */
#define OPEN_OF_INSTANCE "instance_id = ?1 AND outcome IS NULL"
/* By key (flag, decided_at): the table's own order, one seek. */
#define BY_KEY(flag, at)                           \
  "WHERE flag = ?" #flag " AND decided_at = ?" #at \
  " AND "                                          \
  "instance_id = ?1"

/* A decision's row (decide.c binds ?1 to ?13), and what a conflict on
 * the instance's row does. */
#define PUT_DECISION                                                      \
  "INSERT INTO cv_decisions(instance_id, flag, workflow, step, subject, " \
  "version, reason, bucket, rate_ppm, ramp_id, decided_at, "              \
  "base_run_ms, base_reruns) "                                            \
  "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13) "       \
  "ON CONFLICT(instance_id, flag, reroutes) "

/* PostgreSQL's texts where the two databases differ. */
static const char *const pg_text[CVQ__COUNT] = {
    [CVQ_PLAN_OUTCOME_TALLY] =
        "SELECT d.version, count(*), sum(CASE WHEN coalesce((i.vars::jsonb "
        "-> ?3::text) IN ('null'::jsonb, 'false'::jsonb), true) THEN 1 ELSE "
        "0 END) FROM cv_decisions d JOIN instances i ON i.id = d.instance_id "
        "WHERE d.flag = ?1 AND d.decided_at >= ?2 AND d.outcome = "
        "'completed' AND d.reroutes = 0 GROUP BY d.version",
    [CVQ_META_EXISTS] =
        "SELECT 1 FROM pg_catalog.pg_tables WHERE "
        "tablename = 'cv_meta' AND "
        "schemaname = current_schema()",
};

static const char *const sql_text[CVQ__COUNT] = {
    /* sqlite_schema is SQLite's catalog (PostgreSQL's: pg_text): like the
     * migrations, schema work is where each database needs its own text. */
    [CVQ_META_EXISTS] = "SELECT 1 FROM sqlite_schema WHERE name = 'cv_meta'",
    [CVQ_SCHEMA_VERSION] =
        "SELECT value FROM cv_meta WHERE key = 'schema_version'",
    [CVQ_SET_SCHEMA_VERSION] =
        "INSERT INTO cv_meta(key, value) VALUES('schema_version', ?1) "
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",

    [CVQ_FLAG] =
        "SELECT rate_ppm, killed, coalesce(hash_group, name), "
        "CASE WHEN retired_at IS NULL THEN 0 ELSE 1 END, "
        "(SELECT count(*) FROM cv_overrides WHERE flag = ?1), "
        "(SELECT max(id) FROM cv_audit WHERE flag = ?1 AND " RAMP_CHANGES
        "), shadow_ppm, shadow_budget FROM cv_flags WHERE name = ?1",
    /* Also the rollout command's, for the override it replaces. */
    [CVQ_OVERRIDE] =
        "SELECT kind FROM cv_overrides WHERE flag = ?1 AND subject = ?2",
    [CVQ_NTH] =
        "UPDATE cv_flags SET nth_counter = nth_counter + 1 WHERE name = ?1 "
        "RETURNING nth_counter - 1",
    [CVQ_GET_DECISION] =
        "SELECT version, reason, bucket, rate_ppm, ramp_id FROM cv_decisions "
        "WHERE instance_id = ?1 AND flag = ?2 ORDER BY reroutes DESC LIMIT 1",
    /* A decision recorded earlier for the instance wins: nothing is
     * written, and the caller reads that one instead. */
    [CVQ_PUT_DECISION] = PUT_DECISION "DO NOTHING",
    /* A fresh instance has no decision but those it makes in this stay
     * (decide.c knows them): a row there already was not written by an
     * engine that ran it, and this decision replaces it, so that the
     * insert changes one row whatever is there, and no check of it waits
     * for the server. */
    [CVQ_PUT_DECISION_FRESH] = PUT_DECISION
    "DO UPDATE SET workflow = excluded.workflow, "
    "step = excluded.step, subject = excluded.subject, "
    "version = excluded.version, reason = excluded.reason, "
    "bucket = excluded.bucket, rate_ppm = excluded.rate_ppm, "
    "ramp_id = excluded.ramp_id, decided_at = excluded.decided_at, "
    "base_run_ms = excluded.base_run_ms, "
    "base_reruns = excluded.base_reruns, outcome = NULL, "
    "ended_at = NULL, branch_ms = NULL, step_ms = NULL, retries = 0, "
    "incidents = 0, open_incidents = 0, caught = 0",

    /* The target's columns are qualified: unqualified, PostgreSQL would
     * not know them from excluded's. */
    [CVQ_COUNTERS_ADD] =
        "INSERT INTO cv_counters(workflow, flag, version, routed, in_flight, "
        "completed, cancelled, with_incidents, incidents, open_incidents, "
        "caught, rerouted_in, rerouted_out) VALUES(?1, ?2, ?3, ?4, ?5, ?6, "
        "?7, ?8, ?9, ?10, ?11, ?12, ?13) "
        "ON CONFLICT(workflow, flag, version) DO UPDATE SET "
        "routed = cv_counters.routed + excluded.routed, "
        "in_flight = cv_counters.in_flight + excluded.in_flight, "
        "completed = cv_counters.completed + excluded.completed, "
        "cancelled = cv_counters.cancelled + excluded.cancelled, "
        "with_incidents = cv_counters.with_incidents + "
        "excluded.with_incidents, "
        "incidents = cv_counters.incidents + excluded.incidents, "
        "open_incidents = cv_counters.open_incidents + "
        "excluded.open_incidents, "
        "caught = cv_counters.caught + excluded.caught, "
        "rerouted_in = cv_counters.rerouted_in + excluded.rerouted_in, "
        "rerouted_out = cv_counters.rerouted_out + excluded.rerouted_out",
    [CVQ_LATENCY_ADD] =
        "INSERT INTO cv_latency(workflow, flag, version, kind, le, n, sum_ms) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7) "
        "ON CONFLICT(workflow, flag, version, kind, le) DO UPDATE SET "
        "n = cv_latency.n + excluded.n, "
        "sum_ms = cv_latency.sum_ms + excluded.sum_ms",
    [CVQ_RAMP_TALLY_ADD] =
        "INSERT INTO cv_ramp_tallies(workflow, flag, version, ramp_id, "
        "routed, completed, in_flight, incidents, with_incidents) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) "
        "ON CONFLICT(flag, ramp_id, workflow, version) DO UPDATE SET "
        "routed = cv_ramp_tallies.routed + excluded.routed, "
        "completed = cv_ramp_tallies.completed + excluded.completed, "
        "in_flight = cv_ramp_tallies.in_flight + excluded.in_flight, "
        "incidents = cv_ramp_tallies.incidents + excluded.incidents, "
        "with_incidents = cv_ramp_tallies.with_incidents + "
        "excluded.with_incidents",
    /* The decisions an event concerns, read before the update: RETURNING
     * would buffer its rows in a temporary table at every event, which
     * costs more than reading them twice. */
    [CVQ_DECISIONS_OF] =
        "SELECT flag, workflow, version, incidents, open_incidents, "
        "decided_at, base_run_ms, coalesce(ramp_id, 0), reroutes "
        "FROM cv_decisions WHERE " OPEN_OF_INSTANCE,
    [CVQ_EV_COMPLETED] = EV_COMPLETED "WHERE " OPEN_OF_INSTANCE,
    [CVQ_EV_INCIDENT] = EV_INCIDENT "WHERE " OPEN_OF_INSTANCE,
    [CVQ_EV_RESOLVED] =
        "UPDATE cv_decisions SET open_incidents = open_incidents - 1 "
        "WHERE " OPEN_OF_INSTANCE " AND open_incidents > 0",
    [CVQ_EV_CANCELLED] = EV_CANCELLED "WHERE " OPEN_OF_INSTANCE,
    [CVQ_EV_CAUGHT] = EV_CAUGHT "WHERE " OPEN_OF_INSTANCE,
    [CVQ_EV_COMPLETED_KEY] = EV_COMPLETED BY_KEY(5, 6),
    [CVQ_EV_INCIDENT_KEY] = EV_INCIDENT BY_KEY(3, 4),
    [CVQ_EV_CANCELLED_KEY] = EV_CANCELLED BY_KEY(3, 4),
    [CVQ_EV_CAUGHT_KEY] = EV_CAUGHT BY_KEY(2, 3),

    [CVQ_FLAG_ROW] = "SELECT " FLAG_ROW_COLS " FROM cv_flags WHERE name = ?1",
    [CVQ_FLAG_LIST] = "SELECT " FLAG_ROW_COLS " FROM cv_flags ORDER BY name",
    [CVQ_FLAG_CREATE] =
        "INSERT INTO cv_flags(name, hash_group, created_at, updated_at) "
        "VALUES(?1, ?2, ?3, ?3)",
    [CVQ_FLAG_UNRETIRE] =
        "UPDATE cv_flags SET retired_at = NULL, killed = 0, nth_counter = 0, "
        "updated_at = ?2 WHERE name = ?1",
    [CVQ_FLAG_SET_GROUP] =
        "UPDATE cv_flags SET hash_group = ?2, updated_at = ?3 WHERE name = ?1",
    /* NULL leaves a field as it is. */
    [CVQ_FLAG_DESCRIBE] =
        "UPDATE cv_flags SET description = coalesce(?2, description), "
        "owner = coalesce(?3, owner) WHERE name = ?1",
    [CVQ_FLAG_SET_RATE] =
        "UPDATE cv_flags SET rate_ppm = ?2, updated_at = ?3 WHERE name = ?1",
    [CVQ_FLAG_SET_SHADOW] =
        "UPDATE cv_flags SET shadow_ppm = ?2, shadow_budget = ?3, "
        "updated_at = ?4 WHERE name = ?1",
    [CVQ_FLAG_SET_KILLED] =
        "UPDATE cv_flags SET killed = ?2, updated_at = ?3 WHERE name = ?1",
    [CVQ_FLAG_RETIRE] =
        "UPDATE cv_flags SET retired_at = ?2, rate_ppm = 0, updated_at = ?2 "
        "WHERE name = ?1",
    [CVQ_AUDIT_ADD] =
        "INSERT INTO cv_audit(flag, what, subject, old_value, new_value, "
        "rate_ppm, killed, reason, actor, at, numbers) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) RETURNING id",
    [CVQ_AUDIT_OF] =
        "SELECT id, what, subject, old_value, new_value, reason, actor, at, "
        "numbers FROM cv_audit WHERE flag = ?1 ORDER BY id",
    [CVQ_OVERRIDE_PUT] =
        "INSERT INTO cv_overrides(flag, subject, kind, actor, reason, "
        "created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
        "ON CONFLICT(flag, subject) DO UPDATE SET kind = excluded.kind, "
        "actor = excluded.actor, reason = excluded.reason, "
        "created_at = excluded.created_at",
    [CVQ_OVERRIDE_DELETE] =
        "DELETE FROM cv_overrides WHERE flag = ?1 AND subject = ?2",
    [CVQ_OVERRIDES_OF] =
        "SELECT subject, kind, actor, reason, created_at FROM cv_overrides "
        "WHERE flag = ?1 ORDER BY subject",
    [CVQ_COUNTERS_OF] =
        "SELECT workflow, version, routed, in_flight, completed, cancelled, "
        "with_incidents, incidents, open_incidents, caught FROM cv_counters "
        "WHERE flag = ?1 ORDER BY workflow, version",
    /* When the flag's rate or kill switch last changed (or it was made). */
    [CVQ_FLAG_SINCE] =
        "SELECT max(at) FROM cv_audit WHERE flag = ?1 AND what IN "
        "('create', 'rate', 'kill', 'unkill', 'unretire')",
    /* A seek in cv_decisions' primary key (flag, decided_at, ...). */
    [CVQ_FLAG_LAST_DECISION] =
        "SELECT max(decided_at) FROM cv_decisions WHERE flag = ?1",
    /* Each sticky subject decided since ?2, whether its last decision
     * found it eligible, and its override. */
    [CVQ_PREVIEW_SUBJECTS] =
        "SELECT d.subject, min(CASE WHEN d.reason = 'not_eligible' THEN 0 "
        "ELSE 1 END), o.kind FROM cv_decisions d LEFT JOIN cv_overrides o "
        "ON o.flag = d.flag AND o.subject = d.subject WHERE d.flag = ?1 AND "
        "d.decided_at >= ?2 AND d.subject IS NOT NULL AND d.reason NOT IN "
        "('random', 'every_nth', 'missing_key', 'rerouted') GROUP BY "
        "d.subject, o.kind "
        "ORDER BY d.subject",
    [CVQ_PREVIEW_IN_FLIGHT] =
        "SELECT version, sum(in_flight) FROM cv_counters WHERE flag = ?1 "
        "GROUP BY version",

    /* plan.c */
    [CVQ_PLAN_GET] =
        "SELECT state, steps, step, hold_ms, min_instances, max_increase, "
        "alpha, max_wait_ms, started_at, step_started_at, p_min, gates, "
        "approved, outcome_var, p_min_outcome, latency_increase, "
        "p_min_latency, on_rollback FROM cv_plans WHERE flag = ?1",
    [CVQ_PLAN_PUT] =
        "INSERT INTO cv_plans(flag, state, steps, step, hold_ms, "
        "min_instances, max_increase, alpha, max_wait_ms, started_at, "
        "step_started_at, p_min, updated_at, reason, actor, gates, approved, "
        "outcome_var, p_min_outcome, latency_increase, p_min_latency, "
        "on_rollback) "
        "VALUES(?1, 'running', ?2, 0, ?3, ?4, ?5, ?6, ?7, ?8, ?8, 1.0, ?8, ?9, "
        "?10, ?11, -1, ?12, 1.0, ?13, 1.0, ?14) "
        "ON CONFLICT(flag) DO UPDATE SET state = 'running', steps = ?2, "
        "step = 0, hold_ms = ?3, min_instances = ?4, max_increase = ?5, "
        "alpha = ?6, max_wait_ms = ?7, started_at = ?8, step_started_at = ?8, "
        "p_min = 1.0, updated_at = ?8, reason = ?9, actor = ?10, gates = ?11, "
        "approved = -1, outcome_var = ?12, p_min_outcome = 1.0, "
        "latency_increase = ?13, p_min_latency = 1.0, on_rollback = ?14",
    [CVQ_PLAN_APPROVE] =
        "UPDATE cv_plans SET approved = ?2, updated_at = ?3 WHERE flag = ?1",
    [CVQ_PLAN_ACTIVE] =
        "SELECT flag FROM cv_plans WHERE state = 'running' ORDER BY flag",
    /* Conditional on the step evaluated: one engine applies it. */
    [CVQ_PLAN_MOVE] =
        "UPDATE cv_plans SET step = ?3, state = ?4, step_started_at = "
        "CASE WHEN ?3 = step THEN step_started_at ELSE ?5 END, "
        "updated_at = ?5 WHERE flag = ?1 AND step = ?2 AND state = 'running'",
    [CVQ_PLAN_STATE] =
        "UPDATE cv_plans SET state = ?2, updated_at = ?3, step_started_at = "
        "CASE WHEN ?2 = 'running' THEN ?3 ELSE step_started_at END "
        "WHERE flag = ?1",
    [CVQ_PLAN_P_MIN] =
        "UPDATE cv_plans SET p_min = ?2, p_min_outcome = ?3, "
        "p_min_latency = ?4 WHERE flag = ?1",
    [CVQ_PLAN_TALLY] =
        "SELECT version, count(*), sum(CASE WHEN incidents > 0 THEN 1 ELSE 0 "
        "END) FROM cv_decisions WHERE flag = ?1 AND decided_at >= ?2 "
        "AND reroutes = 0 GROUP BY version",
    [CVQ_PLAN_EVAL_ADD] =
        "INSERT INTO cv_plan_evals(flag, at, step, n1, x1, n2, x2, p, p_min, "
        "outcome, applied, reason, p_outcome, p_latency) VALUES(?1, ?2, ?3, "
        "?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    /* The latency guard: completed instances of version ?3 since ?2, the
     * branch latency at an offset of their order (a quantile), and those
     * slower than ?4 ms. */
    [CVQ_PLAN_COMPLETED] =
        "SELECT count(*) FROM cv_decisions WHERE flag = ?1 AND "
        "decided_at >= ?2 AND version = ?3 AND outcome = 'completed' AND "
        "reroutes = 0",
    [CVQ_PLAN_QUANTILE] =
        "SELECT branch_ms FROM cv_decisions WHERE flag = ?1 AND "
        "decided_at >= ?2 AND version = ?3 AND outcome = 'completed' AND "
        "reroutes = 0 ORDER BY branch_ms LIMIT 1 OFFSET ?4",
    [CVQ_PLAN_SLOWER] =
        "SELECT count(*) FROM cv_decisions WHERE flag = ?1 AND "
        "decided_at >= ?2 AND version = ?3 AND outcome = 'completed' AND "
        "reroutes = 0 AND branch_ms > ?4",
    /* The business outcome: completed instances since ?2 whose var ?3 is
     * absent, null or false (JSON's falsy values, as Lua sees them). */
    [CVQ_PLAN_OUTCOME_TALLY] =
        "SELECT d.version, count(*), sum(CASE WHEN json_type(i.vars, '$.' "
        "|| ?3) IS NULL OR json_type(i.vars, '$.' || ?3) IN ('null', "
        "'false') THEN 1 ELSE 0 END) FROM cv_decisions d JOIN instances i ON "
        "i.id = d.instance_id WHERE d.flag = ?1 AND d.decided_at >= ?2 AND "
        "d.outcome = 'completed' AND d.reroutes = 0 GROUP BY d.version",
    [CVQ_PLAN_EVALS] =
        "SELECT at, step, outcome, applied, reason FROM cv_plan_evals "
        "WHERE flag = ?1 ORDER BY id DESC LIMIT 10",

    /* Notifications (notify.c). The head of each target's queue only, so
     * that a target hears of a flag's changes in their order. */
    [CVQ_NOTIFY_TARGETS] =
        "SELECT url, format, CASE WHEN secret IS NULL THEN 0 ELSE 1 END, "
        "coalesce(actor, ''), created_at, (SELECT count(*) FROM cv_outbox o "
        "WHERE o.flag = t.flag AND o.url = t.url AND o.state = 'pending') "
        "FROM cv_notify_targets t WHERE flag = ?1 ORDER BY url",
    [CVQ_NOTIFY_URLS] =
        "SELECT url, format FROM cv_notify_targets WHERE flag = ?1",
    [CVQ_NOTIFY_PUT] =
        "INSERT INTO cv_notify_targets(flag, url, format, secret, actor, "
        "created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6) "
        "ON CONFLICT(flag, url) DO UPDATE SET format = excluded.format, "
        "secret = excluded.secret, actor = excluded.actor, "
        "created_at = excluded.created_at",
    [CVQ_NOTIFY_DELETE] =
        "DELETE FROM cv_notify_targets WHERE flag = ?1 AND url = ?2",
    [CVQ_OUTBOX_ADD] =
        "INSERT INTO cv_outbox(flag, url, audit_id, idem_key, body, next_at, "
        "created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6)",
    [CVQ_OUTBOX_DROP] =
        "UPDATE cv_outbox SET state = 'dropped', last_error = ?3 "
        "WHERE flag = ?1 AND url = ?2 AND state = 'pending'",
    [CVQ_OUTBOX_DUE] =
        "SELECT 1 FROM cv_outbox WHERE state = 'pending' AND next_at <= ?1 "
        "AND lease_until <= ?1 LIMIT 1",
    [CVQ_OUTBOX_HEADS] =
        "SELECT o.id, o.url, o.body, o.idem_key, o.attempts, t.secret "
        "FROM cv_outbox o JOIN cv_notify_targets t ON t.flag = o.flag AND "
        "t.url = o.url WHERE o.state = 'pending' AND o.next_at <= ?1 AND "
        "o.lease_until <= ?1 AND o.id = (SELECT min(p.id) FROM cv_outbox p "
        "WHERE p.flag = o.flag AND p.url = o.url AND p.state = 'pending') "
        "ORDER BY o.id LIMIT ?2",
    /* Each attempt counted when it starts, under a lease: an engine that
     * dies mid-delivery leaves it to be sent again once the lease ends. */
    [CVQ_OUTBOX_CLAIM] =
        "UPDATE cv_outbox SET attempts = attempts + 1, lease_until = ?2 "
        "WHERE id = ?1 AND state = 'pending' AND lease_until <= ?3",
    [CVQ_OUTBOX_DELIVERED] =
        "UPDATE cv_outbox SET state = 'delivered', delivered_at = ?2, "
        "last_status = ?3, last_error = NULL, lease_until = 0 "
        "WHERE id = ?1 AND state = 'pending'",
    [CVQ_OUTBOX_FAILED] =
        "UPDATE cv_outbox SET next_at = ?2, last_status = ?3, "
        "last_error = ?4, lease_until = 0 WHERE id = ?1 AND "
        "state = 'pending' AND attempts = ?5",
    [CVQ_OUTBOX_OF] =
        "SELECT o.id, o.url, a.what, a.old_value, a.new_value, a.actor, "
        "o.created_at, o.state, o.attempts, o.last_status, o.last_error, "
        "o.next_at, o.delivered_at, o.idem_key, o.audit_id "
        "FROM cv_outbox o LEFT JOIN cv_audit a ON a.id = o.audit_id "
        "WHERE o.flag = ?1 ORDER BY o.id",

    /* reroute.c: an instance's current decision for a flag, closing it,
     * and the one that replaces it. */
    [CVQ_REROUTE_OF] =
        "SELECT version, step, subject, bucket, rate_ppm, ramp_id, "
        "decided_at, reroutes, open_incidents, workflow FROM cv_decisions "
        "WHERE instance_id = ?1 AND flag = ?2 ORDER BY reroutes DESC LIMIT 1",
    [CVQ_REROUTE_CLOSE] =
        "UPDATE cv_decisions SET outcome = 'rerouted', ended_at = ?4, "
        "open_incidents = 0 WHERE instance_id = ?1 AND flag = ?2 AND "
        "reroutes = ?3 AND outcome IS NULL",
    [CVQ_REROUTE_PUT] =
        "INSERT INTO cv_decisions(instance_id, flag, workflow, step, subject, "
        "version, reason, bucket, rate_ppm, ramp_id, decided_at, "
        "base_run_ms, base_reruns, reroutes) VALUES(?1, ?2, ?3, ?4, ?5, ?6, "
        "'rerouted', ?7, ?8, ?9, ?10, ?11, ?12, ?13)",

    [CVQ_FLAG_KNOWN] =
        "SELECT 1 FROM cv_flags WHERE name = ?1 UNION ALL "
        "SELECT 1 FROM cv_decisions WHERE flag = ?1 LIMIT 1",
    [CVQ_RAMPS] =
        "SELECT id, what, rate_ppm, killed, at, coalesce(actor, ''), "
        "coalesce(reason, '') FROM cv_audit WHERE flag = ?1 "
        "AND " RAMP_CHANGES " ORDER BY id",
    /* The window is [?2, ?3) (0 and INT64_MAX when open), so that it stays
     * a range of the table's key; ?4 NULL: every workflow (the CAST tells
     * PostgreSQL the parameter's type where it first meets it). */
    [CVQ_REPORT_DECISIONS] =
        "SELECT CASE WHEN version = 'v2' THEN 1 ELSE 0 END, "
        "coalesce(ramp_id, 0), outcome, incidents, open_incidents, retries, "
        "branch_ms, step_ms, caught, reroutes FROM cv_decisions "
        "WHERE flag = ?1 "
        "AND decided_at >= ?2 AND decided_at < ?3 "
        "AND (CAST(?4 AS TEXT) IS NULL OR workflow = ?4)",
    /* A flag's ramp tallies, every workflow's summed (?2 NULL) or one's. */
    [CVQ_RAMP_TALLIES] =
        "SELECT CASE WHEN version = 'v2' THEN 1 ELSE 0 END, ramp_id, "
        "sum(routed), sum(completed), sum(in_flight), sum(incidents), "
        "sum(with_incidents) FROM cv_ramp_tallies WHERE flag = ?1 "
        "AND (CAST(?2 AS TEXT) IS NULL OR workflow = ?2) "
        "GROUP BY version, ramp_id ORDER BY ramp_id",
    [CVQ_METRICS_COUNTERS] =
        "SELECT workflow, flag, version, routed, completed, cancelled, "
        "incidents, in_flight, open_incidents FROM cv_counters "
        "ORDER BY workflow, flag, version",
    [CVQ_METRICS_FLAGS] =
        "SELECT name, rate_ppm, killed FROM cv_flags "
        "WHERE retired_at IS NULL ORDER BY name",
    /* Through the index on (instance_id, flag, reroutes), with the
     * shadow run of the first decision of each flag (through
     * cv_shadow_runs_instance). */
    [CVQ_DECISIONS_OF_ID] =
        "SELECT d.flag, d.version, d.reason, d.bucket, d.rate_ppm, "
        "d.decided_at, d.outcome, coalesce(d.ramp_id, 0), d.reroutes, "
        "r.started_at, coalesce(r.outcome, 'open'), r.primary_ms, "
        "r.candidate_ms, r.detail FROM cv_decisions d LEFT JOIN "
        "cv_shadow_runs r ON r.instance_id = d.instance_id AND r.flag = "
        "d.flag AND d.reroutes = 0 WHERE d.instance_id = ?1 "
        "ORDER BY d.decided_at, d.flag, d.reroutes",
    /* Shadow runs (shadow.c). Spending the budget is a conditional
     * addition: the hour's row takes one more run only while it has used
     * fewer than the budget, so engines sharing the database never spend
     * more between them. */
    [CVQ_SHADOW_SPEND] =
        "INSERT INTO cv_shadow_hours(flag, hour, used) VALUES(?1, ?2, 1) "
        "ON CONFLICT(flag, hour) DO UPDATE SET used = cv_shadow_hours.used "
        "+ 1 WHERE cv_shadow_hours.used < ?3",
    /* A run spent for a shadow the engine then had no room for. */
    [CVQ_SHADOW_REFUND] =
        "UPDATE cv_shadow_hours SET used = used - 1 WHERE flag = ?1 AND "
        "hour = ?2",
    [CVQ_SHADOW_SKIPS_ADD] =
        "INSERT INTO cv_shadow_skips(flag, hour, engine, skipped, busy) "
        "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(flag, hour, engine) DO "
        "UPDATE SET skipped = cv_shadow_skips.skipped + ?4, busy = "
        "cv_shadow_skips.busy + ?5",
    [CVQ_SHADOW_START] =
        "INSERT INTO cv_shadow_runs(flag, started_at, instance_id, workflow, "
        "subject, engine) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
    [CVQ_SHADOW_END] =
        "UPDATE cv_shadow_runs SET ended_at = ?4, outcome = ?5, "
        "primary_ms = ?6, candidate_ms = ?7, detail = ?8 "
        "WHERE flag = ?1 AND started_at = ?2 AND instance_id = ?3",
    /* `report --shadow`: the runs started in [?2, ?3) by outcome, with
     * how many have a detail and one of them (a match's: the compared
     * vars neither side had); open ones are in flight while their
     * engine's heartbeat is fresher than ?4, lost otherwise (their engine
     * died with them). */
    [CVQ_SHADOW_OUTCOMES] =
        "SELECT CASE WHEN outcome IS NOT NULL THEN outcome "
        "WHEN EXISTS(SELECT 1 FROM engines e WHERE e.id = r.engine AND "
        "e.heartbeat_at >= ?4) THEN 'in_flight' ELSE 'lost' END, count(*), "
        "sum(CASE WHEN detail IS NULL THEN 0 ELSE 1 END), max(detail) "
        "FROM cv_shadow_runs r WHERE flag = ?1 AND started_at >= ?2 AND "
        "started_at < ?3 GROUP BY 1",
    [CVQ_SHADOW_TIMES] =
        "SELECT primary_ms, candidate_ms FROM cv_shadow_runs WHERE "
        "flag = ?1 AND started_at >= ?2 AND started_at < ?3 AND outcome IN "
        "('match', 'mismatch')",
    [CVQ_SHADOW_MISMATCHES] =
        "SELECT instance_id, coalesce(subject, ''), started_at, detail FROM "
        "cv_shadow_runs WHERE flag = ?1 AND started_at >= ?2 AND "
        "started_at < ?3 AND outcome = 'mismatch' ORDER BY started_at, "
        "instance_id LIMIT ?4",
    /* hours ?2 to ?3, and the hour ?4's spending */
    [CVQ_SHADOW_BUDGET] =
        "SELECT coalesce(sum(skipped), 0), coalesce(sum(busy), 0), "
        "(SELECT coalesce(sum(used), 0) FROM cv_shadow_hours WHERE "
        "flag = ?1 AND hour = ?4) FROM cv_shadow_skips WHERE flag = ?1 AND "
        "hour >= ?2 AND hour <= ?3",
    [CVQ_METRICS_LATENCY] =
        "SELECT workflow, flag, version, le, n, sum_ms FROM cv_latency "
        "WHERE kind = ?1 ORDER BY workflow, flag, version, le",
};

/* Statements are prepared on first use, so that a command never pays for
 * (or fails on) the node's statements, nor the node for the commands'. */
sy_stmt *cv_prepare(cv_router *r, int q) {
  sy_sql text = {sql_text[q], pg_text[q]};
  if (!r->stmt[q] && !(r->stmt[q] = r->api->prepare(r->e, &text))) {
    snprintf(r->errmsg, sizeof r->errmsg, "%s", r->api->errmsg(r->e));
    return NULL;
  }
  return r->stmt[q];
}

int cv_db_fail(cv_router *r, sy_stmt *s) {
  snprintf(r->errmsg, sizeof r->errmsg, "%s",
           s ? sy_stmt_error(s) : r->api->errmsg(r->e));
  if (s) {
    sy_stmt_reset(s);
  }
  return -1;
}

int cv_step_done(cv_router *r, sy_stmt *s) {
  if (sy_stmt_step(s) != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

void cv_finalize_all(cv_router *r) {
  for (int i = 0; i < CVQ__COUNT; i++) {
    sy_stmt_finalize(r->stmt[i]);
    r->stmt[i] = NULL;
  }
}

/* Runs a script (a migration; pg: PostgreSQL's text of it, NULL when the
 * same): 0, or -1 with r->errmsg. */
static int run_script(cv_router *r, const char *sql, const char *pg) {
  sy_sql script = {sql, pg};
  if (r->api->exec(r->e, &script)) {
    snprintf(r->errmsg, sizeof r->errmsg, "%s", r->api->errmsg(r->e));
    return -1;
  }
  return 0;
}

/* The schema version cv_meta records (0 when it has none yet). */
static int schema_version(cv_router *r, int *version) {
  sy_stmt *s;
  int rc, have_meta;
  *version = 0;
  /* Only read when the tables are there, so that commands that only read
   * never need the write lock. */
  if (!(s = cv_stmt(r, CVQ_META_EXISTS))) {
    return -1;
  }
  if ((rc = sy_stmt_step(s)) != SY_ROW && rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  have_meta = rc == SY_ROW;
  sy_stmt_reset(s);
  if (!have_meta && run_script(r, cv_meta_table, NULL)) {
    return -1;
  }
  if (!(s = cv_stmt(r, CVQ_SCHEMA_VERSION))) {
    return -1;
  }
  if ((rc = sy_stmt_step(s)) != SY_ROW && rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  if (rc == SY_ROW) {
    *version = (int)sy_stmt_column_int(s, 0);
  }
  sy_stmt_reset(s);
  return 0;
}

static int migrate(cv_router *r, int version) {
  sy_stmt *s;
  if (run_script(r, migrations[version], pg_migrations[version])) {
    return -1;
  }
  if (!(s = cv_stmt(r, CVQ_SET_SCHEMA_VERSION))) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, version + 1);
  return cv_step_done(r, s);
}

int cv_schema(cv_router *r, char *err, size_t errlen) {
  int version;
  if (schema_version(r, &version)) {
    snprintf(err, errlen, "%s", r->errmsg);
    return -1;
  }
  if (version > CV_SCHEMA_VERSION) {
    snprintf(err, errlen,
             "choose_version tables are at version %d, newer than this "
             "plugin (%d)",
             version, CV_SCHEMA_VERSION);
    return -1;
  }
  for (; version < CV_SCHEMA_VERSION; version++) {
    if (migrate(r, version)) {
      snprintf(err, errlen, "%s", r->errmsg);
      return -1;
    }
  }
  return 0;
}
