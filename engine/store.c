/* The store (see store.h): its schema and forward migrations, every
 * statement's text (in one table, prepared once into a cache indexed by an
 * enum, so the hot path never re-parses), transactions, definitions and
 * the registry of engines. Instance rows are in store_instances.c; the
 * connection and the statements' backend in store_sqlite.c. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "clock.h"
#include "error.h"
#include "store_int.h"

/* instance_counts from the instances themselves, in shard 0 (migration
 * 7, and sy_store_recount). */
#define COUNT_INSTANCES                                     \
  "INSERT INTO instance_counts(workflow, state, shard, n) " \
  "SELECT workflow, state, 0, count(*) FROM instances "     \
  "GROUP BY workflow, state"

/* A transaction's change of one count (sy__counts_flush), in a shard. */
#define COUNT_ADD(shard)                                    \
  "INSERT INTO instance_counts(workflow, state, shard, n) " \
  "VALUES(?1, ?2, " shard                                   \
  ", ?3) ON CONFLICT(workflow, state, shard) "              \
  "DO UPDATE SET n = instance_counts.n + excluded.n"

/* Each migration moves the schema from version i to i+1; user_version
 * records where a database is. Never edit a released migration: add one. */
const char *const sy__migrations[] = {
    /* 1: instances, their history, incidents, pinned definitions. */
    "CREATE TABLE definitions("
    "  hash TEXT PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  path TEXT,"
    "  source TEXT NOT NULL,"
    "  created_at INTEGER NOT NULL);"
    "CREATE TABLE instances("
    "  id INTEGER PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  def_hash TEXT NOT NULL REFERENCES definitions(hash),"
    "  state TEXT NOT NULL,"
    "  step TEXT,"
    "  attempt INTEGER NOT NULL DEFAULT 1,"
    /* Incident retries so far: part of the idempotency key, so a retried
     * step's calls are not taken for the failed ones. */
    "  generation INTEGER NOT NULL DEFAULT 0,"
    "  vars TEXT NOT NULL,"
    "  wake_at INTEGER,"
    "  wait_seq INTEGER,"
    /* The engine running it, and until when its claim holds. */
    "  owner TEXT,"
    "  lease_until INTEGER,"
    "  created_at INTEGER NOT NULL,"
    "  updated_at INTEGER NOT NULL,"
    "  ended_at INTEGER);"
    "CREATE INDEX instances_runnable ON instances(state, wake_at);"
    /* Engines running on this database, so that one started after a crash
     * takes over at once what a dead engine on the same host held. */
    "CREATE TABLE engines("
    "  id TEXT PRIMARY KEY,"
    "  host TEXT NOT NULL,"
    "  pid INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  heartbeat_at INTEGER NOT NULL);"
    "CREATE TABLE step_runs("
    "  id INTEGER PRIMARY KEY,"
    "  instance_id INTEGER NOT NULL,"
    "  step TEXT NOT NULL,"
    "  attempt INTEGER NOT NULL,"
    "  started_at INTEGER NOT NULL,"
    "  ended_at INTEGER NOT NULL,"
    "  outcome TEXT NOT NULL,"
    "  error TEXT);"
    "CREATE INDEX step_runs_instance ON step_runs(instance_id);"
    "CREATE TABLE incidents("
    "  id INTEGER PRIMARY KEY,"
    "  instance_id INTEGER NOT NULL,"
    "  step TEXT NOT NULL,"
    "  error TEXT NOT NULL,"
    "  raised_at INTEGER NOT NULL,"
    "  resolved_at INTEGER,"
    "  resolution TEXT);"
    "CREATE INDEX incidents_instance ON incidents(instance_id);",
    /* 2: running totals of each instance's step runs, kept with every
     * transition so that what happened between two moments (a routing
     * decision and the instance's end) is a subtraction, not a scan of
     * the history. Existing instances are counted from their history. */
    "ALTER TABLE instances ADD COLUMN run_ms INTEGER NOT NULL DEFAULT 0;"
    "ALTER TABLE instances ADD COLUMN reruns INTEGER NOT NULL DEFAULT 0;"
    "UPDATE instances SET "
    "  run_ms = (SELECT coalesce(sum(ended_at - started_at), 0) "
    "            FROM step_runs WHERE instance_id = instances.id),"
    "  reruns = (SELECT count(*) FROM step_runs "
    "            WHERE instance_id = instances.id AND attempt > 1) "
    "WHERE EXISTS (SELECT 1 FROM step_runs WHERE instance_id = instances.id);",
    /* 3: whether an engine ever took the instance. One never taken has
     * nothing committed but its start, so what plugins record about it
     * while it runs is all there is (sy_api.fresh). Instances not ended
     * when this is added may have been taken: they count as taken. */
    "ALTER TABLE instances ADD COLUMN claimed INTEGER NOT NULL DEFAULT 0;"
    "UPDATE instances SET claimed = 1 "
    "WHERE state NOT IN ('completed', 'cancelled');",
    /* 4: the step journal. Every ctx call of the step run an instance is
     * in (ctx.sleep included), numbered, with what it answered, so that the
     * step, run again from its start after a park or a crash, gets the
     * answers of the calls it had made without making them again. Rows go
     * when the step's transition commits. The journal replaces the one
     * recorded sleep (wait_seq). A step run keeps how long it ran: one that
     * parked lasted longer than it ran. */
    "CREATE TABLE journal("
    "  instance_id INTEGER NOT NULL,"
    "  seq INTEGER NOT NULL,"  /* the call's number in its step run */
    "  kind INTEGER NOT NULL," /* 1: a call, 2: a sleep */
    "  hash INTEGER NOT NULL," /* of what was asked: replays compare */
    "  what TEXT NOT NULL,"    /* the same, for messages */
    "  result TEXT,"           /* a call's answer (JSON) */
    "  error TEXT,"            /* or the error it raised */
    "  due_at INTEGER,"        /* a sleep's end */
    "  started_at INTEGER,"    /* a parked step run: when it started */
    "  ran_ms INTEGER,"        /* and how long it had run */
    "  PRIMARY KEY(instance_id, seq)) WITHOUT ROWID;"
    "ALTER TABLE instances DROP COLUMN wait_seq;"
    "ALTER TABLE step_runs ADD COLUMN run_ms INTEGER;"
    /* Signals: an inbox per instance, kept until a ctx.wait_signal of the
     * instance takes the oldest of its name. An instance parked waiting
     * for one names it (wait_signal); its wake_at is its timeout's end,
     * NULL for none, and a signal sent makes it due at once. */
    "CREATE TABLE signals("
    "  id INTEGER PRIMARY KEY,"
    "  instance_id INTEGER NOT NULL,"
    "  name TEXT NOT NULL,"
    "  vars TEXT NOT NULL,"
    "  sent_at INTEGER NOT NULL);"
    "CREATE INDEX signals_inbox ON signals(instance_id, name, id);"
    "ALTER TABLE instances ADD COLUMN wait_signal TEXT;",
    /* 5: error handlers. A step's error that is not retried may go to a
     * handler step (catch), which runs with the error as ctx.error: the
     * instance keeps it (caught, JSON) until that step run moves on. A
     * step run records its error's code, and the handler it went to. */
    "ALTER TABLE instances ADD COLUMN caught TEXT;"
    "ALTER TABLE step_runs ADD COLUMN code TEXT;"
    "ALTER TABLE step_runs ADD COLUMN handler TEXT;",
    /* 6: the change counter of a database server (see sy__pg_migrations);
     * a SQLite file has its own, data_version. */
    "",
    /* 7: instances per workflow and state, so that status, the console
     * and /metrics read a few rows rather than count every instance. The
     * store moves them with every change of state, batched per
     * transaction (sy__count_move). A count is the sum of its shards: a
     * file has one writer and one shard, 0; on a server each connection
     * writes its own (sy__pg_migrations). */
    "CREATE TABLE instance_counts("
    "  workflow TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  shard INTEGER NOT NULL,"
    "  n INTEGER NOT NULL,"
    "  PRIMARY KEY(workflow, state, shard)) WITHOUT ROWID;" COUNT_INSTANCES ";",
};
const int sy__schema_version =
    (int)(sizeof sy__migrations / sizeof sy__migrations[0]);

/* PostgreSQL's migrations, one for each of SQLite's: no PostgreSQL
 * database predates version 5, so the first makes that schema at once and
 * the next four have nothing left to do. Later migrations get both texts.
 * Times are milliseconds and ids may pass 2^31: every integer is BIGINT. */
const char *const sy__pg_migrations[] = {
    "CREATE TABLE definitions("
    "  hash TEXT PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  path TEXT,"
    "  source TEXT NOT NULL,"
    "  created_at BIGINT NOT NULL);"
    "CREATE TABLE instances("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  workflow TEXT NOT NULL,"
    "  def_hash TEXT NOT NULL REFERENCES definitions(hash),"
    "  state TEXT NOT NULL,"
    "  step TEXT,"
    "  attempt BIGINT NOT NULL DEFAULT 1,"
    "  generation BIGINT NOT NULL DEFAULT 0,"
    "  vars TEXT NOT NULL,"
    "  wake_at BIGINT,"
    "  owner TEXT,"
    "  lease_until BIGINT,"
    "  created_at BIGINT NOT NULL,"
    "  updated_at BIGINT NOT NULL,"
    "  ended_at BIGINT,"
    "  run_ms BIGINT NOT NULL DEFAULT 0,"
    "  reruns BIGINT NOT NULL DEFAULT 0,"
    "  claimed BIGINT NOT NULL DEFAULT 0,"
    "  wait_signal TEXT,"
    "  caught TEXT);"
    "CREATE INDEX instances_runnable ON instances(state, wake_at);"
    "CREATE TABLE engines("
    "  id TEXT PRIMARY KEY,"
    "  host TEXT NOT NULL,"
    "  pid BIGINT NOT NULL,"
    "  started_at BIGINT NOT NULL,"
    "  heartbeat_at BIGINT NOT NULL);"
    "CREATE TABLE step_runs("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  instance_id BIGINT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  attempt BIGINT NOT NULL,"
    "  started_at BIGINT NOT NULL,"
    "  ended_at BIGINT NOT NULL,"
    "  outcome TEXT NOT NULL,"
    "  error TEXT,"
    "  run_ms BIGINT,"
    "  code TEXT,"
    "  handler TEXT);"
    "CREATE INDEX step_runs_instance ON step_runs(instance_id);"
    "CREATE TABLE incidents("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  instance_id BIGINT NOT NULL,"
    "  step TEXT NOT NULL,"
    "  error TEXT NOT NULL,"
    "  raised_at BIGINT NOT NULL,"
    "  resolved_at BIGINT,"
    "  resolution TEXT);"
    "CREATE INDEX incidents_instance ON incidents(instance_id);"
    "CREATE TABLE journal("
    "  instance_id BIGINT NOT NULL,"
    "  seq BIGINT NOT NULL,"
    "  kind BIGINT NOT NULL,"
    "  hash BIGINT NOT NULL,"
    "  what TEXT NOT NULL,"
    "  result TEXT,"
    "  error TEXT,"
    "  due_at BIGINT,"
    "  started_at BIGINT,"
    "  ran_ms BIGINT,"
    "  PRIMARY KEY(instance_id, seq));"
    "CREATE TABLE signals("
    "  id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,"
    "  instance_id BIGINT NOT NULL,"
    "  name TEXT NOT NULL,"
    "  vars TEXT NOT NULL,"
    "  sent_at BIGINT NOT NULL);"
    "CREATE INDEX signals_inbox ON signals(instance_id, name, id);",
    "",
    "",
    "",
    "",
    /* 6: the change counter (data_version). A trigger calling
     * sy_note_change() on a table adds one to it in each transaction that
     * changes the table, and tells listening engines; plugins put it on
     * the tables whose rows they cache. */
    "INSERT INTO sy_meta(key, value) VALUES('changes', 0) "
    "ON CONFLICT(key) DO NOTHING;"
    "CREATE FUNCTION sy_note_change() RETURNS trigger LANGUAGE plpgsql AS $$ "
    "BEGIN "
    "  UPDATE sy_meta SET value = value + 1 WHERE key = 'changes'; "
    "  PERFORM pg_notify('switchyard', 'changes'); "
    "  RETURN NULL; "
    "END $$;",
    /* 7: as SQLite's, a shard per connection (its server process's pid):
     * engines' turns running side by side never wait on one another's
     * counts, nor lock them in opposite orders. The rows of connections
     * that are gone are folded into shard 0 (Q_FOLD_COUNTS). */
    "CREATE TABLE instance_counts("
    "  workflow TEXT NOT NULL,"
    "  state TEXT NOT NULL,"
    "  shard BIGINT NOT NULL,"
    "  n BIGINT NOT NULL,"
    "  PRIMARY KEY(workflow, state, shard));" COUNT_INSTANCES ";",
};
_Static_assert(sizeof sy__pg_migrations == sizeof sy__migrations,
               "one PostgreSQL migration for each of SQLite's");

#define INSTANCE_COLS                                              \
  "id, workflow, def_hash, state, step, attempt, vars, wake_at, "  \
  "created_at, updated_at, ended_at, generation, run_ms, reruns, " \
  "claimed, wait_signal, caught"

/* sy_instance_filter: ?1 state, ?2 workflow, ?3 after, ?4 step (NULL:
 * any). */
#define INSTANCE_FILTER                                          \
  "(CAST(?1 AS TEXT) IS NULL OR state = ?1) "                    \
  "AND (CAST(?2 AS TEXT) IS NULL OR workflow = ?2) AND id > ?3 " \
  "AND (CAST(?4 AS TEXT) IS NULL OR step = ?4)"

static const char *const sql_text[Q__COUNT] = {
    [Q_COMMIT] = "COMMIT",
    [Q_ROLLBACK] = "ROLLBACK",
    [Q_PUT_DEF] =
        "INSERT INTO definitions(hash, workflow, path, source, created_at) "
        "VALUES(?1, ?2, ?3, ?4, ?5) ON CONFLICT(hash) DO NOTHING",
    [Q_GET_DEF] = "SELECT source, path FROM definitions WHERE hash = ?1",
    [Q_INSERT_INSTANCE] =
        "INSERT INTO instances(workflow, def_hash, state, step, attempt, "
        "vars, created_at, updated_at) "
        "VALUES(?1, ?2, 'ready', ?3, 1, ?4, ?5, ?5)",
/* RETURNING makes every change during the first step, so the caller
 * may write while it reads the claimed rows. The scans follow the
 * instances_runnable index: due rows by wake_at, ready rows by id. */
#define CLAIM(cond)                                                        \
  "UPDATE instances SET state = 'running', owner = ?3, lease_until = ?4, " \
  "updated_at = ?1, claimed = 1 WHERE id IN (SELECT id FROM instances "    \
  "WHERE " cond " LIMIT ?2) RETURNING " INSTANCE_COLS
    [Q_CLAIM_DUE] =
        CLAIM("state = 'waiting' AND wake_at <= ?1 ORDER BY wake_at"),
    /* Ready with a recorded wake-up: released while asleep, now due. */
    [Q_CLAIM_READY] = CLAIM("state = 'ready' AND wake_at IS NOT NULL"),
    /* The common claim, new instances: they are read in id order (from
     * the index, which SQLite keeps in that order: no sort), then claimed
     * as the id range they span, one statement for
     * the whole batch (no RETURNING table, no IN list); the range holds
     * exactly the rows read, since the write lock is held throughout. */
    [Q_PICK_NEW] = "SELECT " INSTANCE_COLS
                   " FROM instances "
                   "WHERE state = 'ready' AND wake_at IS NULL ORDER BY id "
                   "LIMIT ?1",
    [Q_CLAIM_NEW] =
        "UPDATE instances SET state = 'running', owner = ?3, "
        "lease_until = ?4, updated_at = ?5, claimed = 1 WHERE state = 'ready' "
        "AND wake_at IS NULL AND id BETWEEN ?1 AND ?2",
    /* An engine that stopped renewing its leases is gone: take over. */
    [Q_CLAIM_EXPIRED] = CLAIM("state = 'running' AND lease_until < ?1"),
    /* New instances on a server, where engines claim side by side: see
     * pg_text. (This text is SQLite's equivalent, unused: there the range
     * claim above is cheaper, and sound since writers take turns.) */
    [Q_CLAIM_NEW_LOCKED] =
        CLAIM("state = 'ready' AND wake_at IS NULL ORDER BY id"),
    /* Owners are set on running rows only: the state index finds them. */
    [Q_RENEW] =
        "UPDATE instances SET lease_until = ?2 "
        "WHERE state = 'running' AND owner = ?1",
    /* What an engine held goes back: due again at its recorded wake-up if
     * it was asleep, at once otherwise. */
    [Q_RELEASE] =
        "UPDATE instances SET state = CASE WHEN wake_at > ?2 THEN 'waiting' "
        "ELSE 'ready' END, owner = NULL, lease_until = NULL, updated_at = ?2 "
        "WHERE state = 'running' AND owner = ?1 RETURNING workflow, state",
    [Q_ENGINE_REGISTER] =
        "INSERT INTO engines(id, host, pid, started_at, heartbeat_at) "
        "VALUES(?1, ?2, ?3, ?4, ?4) ON CONFLICT(id) DO UPDATE SET "
        "host = excluded.host, pid = excluded.pid, "
        "started_at = excluded.started_at, "
        "heartbeat_at = excluded.heartbeat_at",
    [Q_ENGINE_HEARTBEAT] = "UPDATE engines SET heartbeat_at = ?2 WHERE id = ?1",
    [Q_ENGINE_DELETE] = "DELETE FROM engines WHERE id = ?1",
    [Q_ENGINES_ON_HOST] = "SELECT id, pid FROM engines WHERE host = ?1",
    [Q_NEXT_WAKE] =
        "SELECT min(wake_at) FROM instances WHERE state = 'waiting'",
    [Q_COUNT_BY_STATE] =
        "SELECT workflow, state, sum(n) FROM instance_counts "
        "GROUP BY workflow, state HAVING sum(n) <> 0 "
        "ORDER BY workflow, state",
    [Q_COUNT_ADD] = COUNT_ADD("0"),
    /* A server's only (sy_store_renew): the counts of connections that
     * are gone, added to shard 0, by one engine at a time. */
    [Q_FOLD_COUNTS] =
        "WITH lock AS (SELECT pg_try_advisory_xact_lock(7411) AS got), "
        "gone AS (DELETE FROM instance_counts WHERE shard <> 0 "
        "AND (SELECT got FROM lock) AND shard NOT IN "
        "(SELECT pid FROM pg_stat_activity) RETURNING workflow, state, n) "
        "INSERT INTO instance_counts(workflow, state, shard, n) "
        "SELECT workflow, state, 0, sum(n) FROM gone GROUP BY workflow, state "
        "ORDER BY workflow, state ON CONFLICT(workflow, state, shard) "
        "DO UPDATE SET n = instance_counts.n + excluded.n",
    /* Work that will happen without anyone's help: an instance waiting for
     * a signal with no timeout is not (--until-idle leaves it waiting). */
    [Q_COUNT_ACTIVE] =
        "SELECT count(*) FROM instances WHERE state IN ('ready', 'running') "
        "OR (state = 'waiting' AND wake_at IS NOT NULL)",
    [Q_SIGNAL_PUT] =
        "INSERT INTO signals(instance_id, name, vars, sent_at) "
        "VALUES(?1, ?2, ?3, ?4)",
    /* An instance parked waiting for this signal is due at once. */
    [Q_SIGNAL_WAKE] =
        "UPDATE instances SET wake_at = ?3 WHERE id = ?1 AND "
        "state = 'waiting' AND wait_signal = ?2",
    [Q_SIGNAL_TAKE] =
        "DELETE FROM signals WHERE id = (SELECT id FROM signals WHERE "
        "instance_id = ?1 AND name = ?2 ORDER BY id LIMIT 1) RETURNING vars",
    [Q_SIGNAL_LIST] =
        "SELECT name, vars, sent_at FROM signals WHERE instance_id = ?1 "
        "ORDER BY id",
    /* --where VAR=VALUE: live instances whose var has that value. */
    [Q_FIND_LIVE] =
        "SELECT id, state FROM instances WHERE state NOT IN ('completed', "
        "'cancelled') AND CAST(json_extract(vars, '$.' || ?1) AS TEXT) = ?2 "
        "ORDER BY id LIMIT ?3",
    /* Fenced by owner: an engine whose lease was taken over changes
     * nothing (NULL owner for commands on instances no engine holds). An
     * instance leaving 'running' is no one's any more; one whose step run
     * moved on (?15) holds the error its next step handles, or none. */
    [Q_UPDATE_INSTANCE] =
        "UPDATE instances SET state = ?2, step = ?3, attempt = ?4, "
        "vars = coalesce(?5, vars), wake_at = ?6, wait_signal = ?7, "
        "updated_at = ?8, ended_at = ?9, generation = generation + ?11, "
        "run_ms = run_ms + ?12, reruns = reruns + ?13, "
        "caught = CASE WHEN ?15 = 1 THEN ?14 ELSE caught END, "
        "owner = CASE WHEN ?2 = 'running' THEN owner END, "
        "lease_until = CASE WHEN ?2 = 'running' THEN lease_until END "
        "WHERE id = ?1 AND owner IS NOT DISTINCT FROM ?10",
    /* The common transition, running to running at the next step: it
     * leaves the indexed columns alone, so no index is rewritten (SQLite
     * rewrites an index whose column is assigned, even to its own value:
     * wake_at is known to be NULL already, so it is not assigned). A row
     * that waited for a signal was woken with a wake_at, so it takes the
     * general form, which clears wait_signal. */
    [Q_ADVANCE_INSTANCE] =
        "UPDATE instances SET step = ?3, attempt = ?4, "
        "vars = coalesce(?5, vars), updated_at = ?8, "
        "run_ms = run_ms + ?12, reruns = reruns + ?13, caught = ?14 "
        "WHERE id = ?1 AND owner IS NOT DISTINCT FROM ?10 AND wake_at IS NULL",
    [Q_INSERT_STEP_RUN] =
        "INSERT INTO step_runs(instance_id, step, attempt, started_at, "
        "ended_at, outcome, error, run_ms, code, handler) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [Q_JOURNAL_PUT] =
        "INSERT INTO journal(instance_id, seq, kind, hash, what, result, "
        "error, due_at, started_at, ran_ms) "
        "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    [Q_JOURNAL_READ] =
        "SELECT seq, kind, hash, what, result, error, due_at, started_at, "
        "ran_ms FROM journal WHERE instance_id = ?1 ORDER BY seq",
    [Q_JOURNAL_CLEAR] = "DELETE FROM journal WHERE instance_id = ?1",
    [Q_INSERT_INCIDENT] =
        "INSERT INTO incidents(instance_id, step, error, raised_at) "
        "VALUES(?1, ?2, ?3, ?4)",
    [Q_GET_INSTANCE] = "SELECT " INSTANCE_COLS " FROM instances WHERE id = ?1",
    /* A page: ids after ?3, at most ?4 of them (-1: no limit). */
    [Q_LIST_INSTANCES] =
        "SELECT " INSTANCE_COLS " FROM instances WHERE " INSTANCE_FILTER
        " ORDER BY id LIMIT ?5",
    [Q_COUNT_INSTANCES] =
        "SELECT count(*) FROM instances WHERE " INSTANCE_FILTER,
    [Q_LIST_STEP_RUNS] =
        "SELECT id, instance_id, step, attempt, started_at, ended_at, "
        "outcome, error, coalesce(run_ms, ended_at - started_at), code, "
        "handler FROM step_runs WHERE instance_id = ?1 ORDER BY id",
    [Q_LIST_INCIDENTS] =
        "SELECT n.id, n.instance_id, i.workflow, n.step, n.error, "
        "n.raised_at, n.resolved_at, n.resolution "
        "FROM incidents n JOIN instances i ON i.id = n.instance_id "
        "WHERE (?1 = 0 OR n.resolved_at IS NULL) "
        "AND (?2 = 0 OR n.instance_id = ?2) ORDER BY n.id",
    [Q_RESOLVE_INCIDENTS] =
        "UPDATE incidents SET resolved_at = ?2, resolution = ?3 "
        "WHERE instance_id = ?1 AND resolved_at IS NULL",
};

/* A claim on a server, where engines' turns run side by side: the rows
 * are locked as they are picked, passing over those another engine's
 * turn holds (SKIP LOCKED), and a row another turn changed meanwhile is
 * read again and must still match. The old `claimed` is returned (in
 * its place among INSTANCE_COLS), so that a new instance is known new. */
#define CLAIM_LOCKED(cond)                                                   \
  "UPDATE instances i SET state = 'running', owner = ?3, lease_until = ?4, " \
  "updated_at = ?1, claimed = 1 FROM (SELECT id, claimed AS was FROM "       \
  "instances WHERE " cond                                                    \
  " LIMIT ?2 FOR UPDATE SKIP LOCKED) o "                                     \
  "WHERE i.id = o.id RETURNING i.id, i.workflow, i.def_hash, i.state, "      \
  "i.step, i.attempt, i.vars, i.wake_at, i.created_at, i.updated_at, "       \
  "i.ended_at, i.generation, i.run_ms, i.reruns, o.was, i.wait_signal, "     \
  "i.caught"

/* PostgreSQL's texts where the two databases differ. */
static const char *const pg_text[Q__COUNT] = {
    [Q_CLAIM_DUE] =
        CLAIM_LOCKED("state = 'waiting' AND wake_at <= ?1 ORDER BY wake_at"),
    [Q_CLAIM_READY] = CLAIM_LOCKED("state = 'ready' AND wake_at IS NOT NULL"),
    [Q_CLAIM_EXPIRED] = CLAIM_LOCKED("state = 'running' AND lease_until < ?1"),
    [Q_CLAIM_NEW_LOCKED] =
        CLAIM_LOCKED("state = 'ready' AND wake_at IS NULL ORDER BY id"),
    /* A JSON path, and no json_extract. */
    [Q_FIND_LIVE] =
        "SELECT id, state FROM instances WHERE state NOT IN ('completed', "
        "'cancelled') AND (vars::jsonb #>> string_to_array(?1, '.')) = ?2 "
        "ORDER BY id LIMIT ?3",
    /* Each connection its own shard. */
    [Q_COUNT_ADD] = COUNT_ADD("pg_backend_pid()"),
    /* LIMIT takes NULL for none, where SQLite takes -1. */
    [Q_LIST_INSTANCES] =
        "SELECT " INSTANCE_COLS " FROM instances WHERE " INSTANCE_FILTER
        " ORDER BY id LIMIT nullif(?5, -1)",
};

int sy_store_set_error(sy_store *st, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(st->errmsg, sizeof st->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

const char *sy_store_errmsg(sy_store *st) {
  return st->errmsg;
}

/* Statements are prepared on first use so a read-only listing command never
 * pays for (or fails on) statements it does not run. */
sy_stmt *sy__stmt(sy_store *st, int q) {
  if (!st->stmt[q]) {
    st->stmt[q] = sy_store_prepare(st, &(sy_sql){sql_text[q], pg_text[q]});
  }
  return st->stmt[q];
}

int sy__exec_stmt(sy_store *st, sy_stmt *s, const char *what) {
  int rc = sy_stmt_step(s);
  sy_stmt_reset(s);
  if (rc != SY_DONE) {
    return sy__db_error(st, what);
  }
  return 0;
}

void sy__bind_opt_int(sy_stmt *s, int i, int64_t v) {
  if (v) {
    sy_stmt_bind_int(s, i, v);
  } else {
    sy_stmt_bind_text(s, i, NULL);
  }
}

/* ---------------------------------------------------------------------
 * The backend: which one a database is, and what goes through it */

/* postgresql://... and postgres://... are PostgreSQL (libpq reads the
 * rest, PG* environment variables included); anything else is a SQLite
 * file. */
int sy_store_on_server(const char *where) {
  return strncmp(where, "postgresql://", 13) == 0 ||
         strncmp(where, "postgres://", 11) == 0;
}

int sy_store_exists(const char *where) {
  return (sy_store_on_server(where) ? &sy__postgres : &sy__sqlite)
      ->exists(where);
}

/* Whether `name` is one of the lines of `lines` (each ended by '\n'). */
static int line_in(const char *lines, const char *name) {
  size_t n = strlen(name);
  for (const char *l = lines; *l; l = strchr(l, '\n') + 1) {
    if (strncmp(l, name, n) == 0 && l[n] == '\n') {
      return 1;
    }
  }
  return 0;
}

/* Every table of an open store, each name ended by '\n'. */
static char *table_names(sy_store *st) {
  sy_stmt *s = sy_store_prepare(st, &(sy_sql){st->b->tables_sql, NULL});
  char *all = strdup(""), *more;
  size_t len = 0;
  int rc = SY_DONE;
  while (s && all && (rc = sy_stmt_step(s)) == SY_ROW) {
    const char *name = sy_stmt_column_text(s, 0);
    size_t n = strlen(name);
    if (!(more = realloc(all, len + n + 2))) {
      break;
    }
    all = more;
    memcpy(all + len, name, n);
    all[len + n] = '\n';
    all[len += n + 1] = '\0';
  }
  sy_stmt_finalize(s);
  if (!s || !all || rc != SY_DONE) {
    free(all);
    return NULL;
  }
  return all;
}

static int open_plain(sy_store **st, const char *where) {
  sy_store_opts o = {.read_only = 1};
  char err[256];
  return sy_store_open(st, where, &o, err, sizeof err);
}

char *sy_store_tables_before(const char *where) {
  sy_store *st;
  char *names;
  if (!sy_store_on_server(where)) {
    return strdup(""); /* the file is not there: it goes as a whole */
  }
  if (open_plain(&st, where)) {
    return NULL;
  }
  names = table_names(st);
  sy_store_close(st);
  return names;
}

void sy_store_undo_create(const char *where, const char *before) {
  sy_store *st;
  char *now, *name, *end, sql[256];
  if (!sy_store_on_server(where)) {
    snprintf(sql, sizeof sql, "%s", where);
    unlink(sql);
    snprintf(sql, sizeof sql, "%s-wal", where);
    unlink(sql);
    snprintf(sql, sizeof sql, "%s-shm", where);
    unlink(sql);
    return;
  }
  if (!before || open_plain(&st, where)) {
    return;
  }
  if ((now = table_names(st)) && !sy_store_begin(st)) {
    for (name = now; (end = strchr(name, '\n')); name = end + 1) {
      *end = '\0';
      if (!line_in(before, name)) {
        snprintf(sql, sizeof sql, "DROP TABLE IF EXISTS \"%s\" CASCADE", name);
        sy_store_exec_script(st, &(sy_sql){sql, NULL});
      }
    }
    sy_store_commit(st);
  }
  free(now);
  sy_store_close(st);
}

int sy_store_open(sy_store **out, const char *where, const sy_store_opts *opts,
                  char *err, size_t errlen) {
  sy_store *st = calloc(1, sizeof *st);
  int rc;
  if (!st) {
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  st->b = sy_store_on_server(where) ? &sy__postgres : &sy__sqlite;
  st->busy_timeout_ms =
      opts->busy_timeout_ms > 0 ? opts->busy_timeout_ms : 5000;
  if ((rc = st->b->open(st, where, opts, err, errlen))) {
    sy_store_close(st);
    return rc;
  }
  *out = st;
  return 0;
}

void sy_store_close(sy_store *st) {
  if (!st) {
    return;
  }
  if (st->in_tx) {
    sy_store_rollback(st);
  }
  for (int i = 0; i < Q__COUNT; i++) {
    sy_stmt_finalize(st->stmt[i]);
  }
  for (int i = 0; i < 3; i++) {
    sy_stmt_finalize(st->own[i]);
  }
  sy__counts_discard(st);
  free(st->counts);
  st->b->close(st);
  free(st);
}

int sy_store_clock(sy_store *st, int64_t *ms) {
  return st->b->clock ? st->b->clock(st, ms) : SY_ENOTFOUND;
}

int sy_store_connection_lost(sy_store *st) {
  return st->b->lost && st->b->lost(st);
}

int sy_store_restartable(sy_store *st) {
  return sy_store_connection_lost(st) ||
         (st->b->postgres && (st->conflicted || st->fence_failed));
}

void sy_store_share_writes(sy_store *st, int on) {
  st->shared_writes = on && st->b->listen;
  if (st->shared_writes && st->b->listen(st)) {
    st->shared_writes = 0; /* then as a command: safe, only slower */
  }
}

int sy_store_writes_shared(sy_store *st) {
  return st->shared_writes;
}

int sy_store_socket(sy_store *st) {
  return st->shared_writes ? st->b->socket(st) : -1;
}

int sy_store_notified(sy_store *st, int read) {
  return st->shared_writes ? st->b->notified(st, read) : 0;
}

const char *sy_store_backend(sy_store *st) {
  return st->b->name;
}

sy_stmt *sy_store_prepare(sy_store *st, const sy_sql *q) {
  return st->b->prepare(st, st->b->postgres && q->pg ? q->pg : q->sql);
}

int sy_store_exec_script(sy_store *st, const sy_sql *script) {
  return st->b->exec(st,
                     st->b->postgres && script->pg ? script->pg : script->sql);
}

int sy_store_data_version(sy_store *st, int64_t *v) {
  return st->b->data_version(st, v);
}

int sy_store_busy(sy_store *st) {
  return st->b->busy(st);
}

int sy__db_error(sy_store *st, const char *what) {
  return st->b->db_error(st, what);
}

int sy__tx_open(sy_store *st) {
  return st->b->tx_open(st);
}

int64_t sy__last_insert_id(sy_store *st) {
  return st->b->last_insert_id(st);
}

int sy_store_begin(sy_store *st) {
  return sy_store_begin_as(st, 1);
}

int sy_store_begin_as(sy_store *st, int write) {
  int rc;
  if (st->in_tx) {
    return 0;
  }
  if ((rc = st->b->begin(st, write))) {
    return rc;
  }
  st->in_tx = 1;
  st->tx_seq++;
  return 0;
}

int64_t sy_store_tx_seq(sy_store *st) {
  return st->in_tx ? st->tx_seq : 0;
}

int sy_store_commit(sy_store *st) {
  sy_stmt *s;
  int rc;
  if (!st->in_tx) {
    return 0;
  }
  if (!(s = sy__stmt(st, Q_COMMIT))) {
    return SY_ESTORE;
  }
  rc = sy__counts_flush(st);
  if (!rc && st->b->before_commit) {
    rc = st->b->before_commit(st);
  }
  st->made_work = 0;
  if (!rc) {
    rc = sy__exec_stmt(st, s, "commit");
  }
  /* A failed COMMIT may leave the transaction open (a busy database): roll
   * it back so the caller's in-memory view and the database agree again. */
  if (rc && sy__tx_open(st)) {
    sy_store_rollback(st);
  }
  st->in_tx = 0;
  return rc;
}

void sy_store_rollback(sy_store *st) {
  sy_stmt *s = sy__stmt(st, Q_ROLLBACK);
  sy__counts_discard(st);
  if (s && sy__tx_open(st)) {
    sy_stmt_step(s);
    sy_stmt_reset(s);
  }
  st->in_tx = 0;
  st->made_work = 0;
}

int sy_store_in_tx(sy_store *st) {
  return st->in_tx;
}

/* ---------------------------------------------------------------------
 * Instances per workflow and state (instance_counts), moved in memory
 * with each change of state the transaction makes and written in one
 * upsert per (workflow, state) before it commits. */

void sy__counts_discard(sy_store *st) {
  for (int i = 0; i < st->ncounts; i++) {
    free(st->counts[i].workflow);
  }
  st->ncounts = 0;
}

static int count_add(sy_store *st, const char *workflow, const char *state,
                     int64_t n) {
  sy__count *c;
  for (int i = 0; i < st->ncounts; i++) {
    c = &st->counts[i];
    if (strcmp(c->state, state) == 0 && strcmp(c->workflow, workflow) == 0) {
      c->n += n;
      return 0;
    }
  }
  if (st->ncounts == st->counts_cap) {
    int cap = st->counts_cap ? 2 * st->counts_cap : 8;
    sy__count *v = realloc(st->counts, (size_t)cap * sizeof *v);
    if (!v) {
      return sy_store_set_error(st, SY_ENOMEM, "out of memory");
    }
    st->counts = v;
    st->counts_cap = cap;
  }
  c = &st->counts[st->ncounts];
  if (strlen(state) >= sizeof c->state || !(c->workflow = strdup(workflow))) {
    return sy_store_set_error(st, SY_ENOMEM, "out of memory");
  }
  snprintf(c->state, sizeof c->state, "%s", state);
  c->n = n;
  st->ncounts++;
  return 0;
}

int sy__count_move(sy_store *st, const char *workflow, const char *from,
                   const char *to) {
  int rc = 0;
  if (from && to && strcmp(from, to) == 0) {
    return 0;
  }
  if (!workflow) {
    return sy_store_set_error(st, SY_ESTORE,
                              "a change of state names no workflow");
  }
  if (st->counts_tx != sy_store_tx_seq(st)) {
    sy__counts_discard(st); /* of a transaction that ended otherwise */
    st->counts_tx = sy_store_tx_seq(st);
  }
  if ((from && (rc = count_add(st, workflow, from, -1))) ||
      (to && (rc = count_add(st, workflow, to, 1)))) {
    return rc;
  }
  /* A change made outside a transaction is counted at once. */
  return st->in_tx ? 0 : sy__counts_flush(st);
}

int sy__fold_counts(sy_store *st) {
  sy_stmt *s;
  if (!st->b->postgres) {
    return 0; /* one shard */
  }
  s = sy__stmt(st, Q_FOLD_COUNTS);
  return s ? sy__exec_stmt(st, s, "fold instance counts") : SY_ESTORE;
}

static int by_key(const void *a, const void *b) {
  const sy__count *x = a, *y = b;
  int c = strcmp(x->workflow, y->workflow);
  return c ? c : strcmp(x->state, y->state);
}

int sy__counts_flush(sy_store *st) {
  sy_stmt *s;
  int rc = 0;
  if (!st->ncounts || st->counts_tx != sy_store_tx_seq(st)) {
    sy__counts_discard(st);
    return 0;
  }
  if (!(s = sy__stmt(st, Q_COUNT_ADD))) {
    sy__counts_discard(st);
    return SY_ESTORE;
  }
  /* in key order: writers side by side lock rows in one order */
  qsort(st->counts, (size_t)st->ncounts, sizeof *st->counts, by_key);
  for (int i = 0; i < st->ncounts && !rc; i++) {
    if (st->counts[i].n) {
      sy_stmt_bind_text(s, 1, st->counts[i].workflow);
      sy_stmt_bind_text(s, 2, st->counts[i].state);
      sy_stmt_bind_int(s, 3, st->counts[i].n);
      rc = sy__exec_stmt(st, s, "count instances");
    }
  }
  sy__counts_discard(st);
  return rc;
}

int sy_store_recount(sy_store *st, int64_t *differing) {
#define RECOUNT "SELECT workflow, state, count(*) FROM instances GROUP BY 1, 2"
#define KEPT                                                           \
  "SELECT workflow, state, sum(n) FROM instance_counts GROUP BY 1, 2 " \
  "HAVING sum(n) <> 0"
  static const char *const steps[] = {
      ("SELECT count(*) FROM (SELECT workflow, state FROM (" RECOUNT
       " EXCEPT " KEPT ") a UNION SELECT workflow, state FROM (" KEPT
       " EXCEPT " RECOUNT ") b) c"),
      "DELETE FROM instance_counts", (COUNT_INSTANCES)};
#undef RECOUNT
#undef KEPT
  int rc = sy_store_begin(st);
  for (size_t i = 0; !rc && i < sizeof steps / sizeof *steps; i++) {
    sy_stmt *s = sy_store_prepare(st, &(sy_sql){steps[i], NULL});
    if (!s) {
      rc = SY_ESTORE;
      break;
    }
    rc = sy_stmt_step(s);
    if (i == 0 && rc == SY_ROW) {
      *differing = sy_stmt_column_int(s, 0);
    }
    rc = rc == SY_ROW || rc == SY_DONE ? 0 : sy__db_error(st, "recount");
    sy_stmt_finalize(s);
  }
  if (!rc) {
    return sy_store_commit(st);
  }
  sy_store_rollback(st);
  return rc;
}

int sy_store_put_definition(sy_store *st, const char *hash,
                            const char *workflow, const char *path,
                            const char *source, size_t len) {
  sy_stmt *s = sy__stmt(st, Q_PUT_DEF);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, hash);
  sy_stmt_bind_text(s, 2, workflow);
  sy_stmt_bind_text(s, 3, path);
  sy_stmt_bind_textn(s, 4, source, len);
  sy_stmt_bind_int(s, 5, sy_now_ms());
  return sy__exec_stmt(st, s, "store definition");
}

static char *dup_column(sy_stmt *s, int col, size_t *len) {
  const char *t = sy_stmt_column_text(s, col);
  size_t n = t ? (size_t)sy_stmt_column_bytes(s, col) : 0;
  char *copy;
  if (!t) {
    return NULL;
  }
  copy = malloc(n + 1);
  if (copy) {
    memcpy(copy, t, n);
    copy[n] = '\0';
    if (len) {
      *len = n;
    }
  }
  return copy;
}

int sy_store_get_definition(sy_store *st, const char *hash, char **source,
                            size_t *len, char **path) {
  sy_stmt *s = sy__stmt(st, Q_GET_DEF);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, hash);
  rc = sy_stmt_step(s);
  if (rc == SY_ROW) {
    *source = dup_column(s, 0, len);
    *path = dup_column(s, 1, NULL);
    rc = *source ? 0 : SY_ENOMEM;
  } else if (rc == SY_DONE) {
    rc = sy_store_set_error(st, SY_ENOTFOUND, "no definition %s", hash);
  } else {
    rc = sy__db_error(st, "read definition");
  }
  sy_stmt_reset(s);
  return rc;
}

int sy_store_engine_register(sy_store *st, const char *id, const char *host,
                             int64_t pid, int64_t now) {
  sy_stmt *s = sy__stmt(st, Q_ENGINE_REGISTER);
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, id);
  sy_stmt_bind_text(s, 2, host);
  sy_stmt_bind_int(s, 3, pid);
  sy_stmt_bind_int(s, 4, now);
  rc = sy__exec_stmt(st, s, "register engine");
  return rc ? rc : sy__fold_counts(st);
}

int sy_store_engine_delete(sy_store *st, const char *id) {
  sy_stmt *s = sy__stmt(st, Q_ENGINE_DELETE);
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, id);
  return sy__exec_stmt(st, s, "unregister engine");
}

int sy_store_engines_on_host(sy_store *st, const char *host, sy_engine_cb cb,
                             void *ud) {
  sy_stmt *s = sy__stmt(st, Q_ENGINES_ON_HOST);
  struct {
    char *id;
    int64_t pid;
  } *rows = NULL, *grown;
  size_t n = 0, cap = 0;
  int rc;
  if (!s) {
    return SY_ESTORE;
  }
  /* Copied out first: the callback writes to the table being read. */
  sy_stmt_bind_text(s, 1, host);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    if (n == cap) {
      if (!(grown = realloc(rows, (cap * 2 + 8) * sizeof *rows))) {
        rc = sy_store_set_error(st, SY_ENOMEM, "list engines: out of memory");
        break;
      }
      rows = grown;
      cap = cap * 2 + 8;
    }
    if (!(rows[n].id = strdup(sy_stmt_column_text(s, 0)))) {
      rc = sy_store_set_error(st, SY_ENOMEM, "list engines: out of memory");
      break;
    }
    rows[n++].pid = sy_stmt_column_int(s, 1);
  }
  if (rc == SY_DONE) {
    rc = 0;
  } else if (rc != SY_ENOMEM) {
    rc = sy__db_error(st, "list engines");
  }
  sy_stmt_reset(s);
  for (size_t i = 0; i < n; i++) {
    if (!rc) {
      rc = cb(ud, rows[i].id, rows[i].pid);
    }
    free(rows[i].id);
  }
  free(rows);
  return rc;
}
