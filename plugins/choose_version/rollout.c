/* `switchyard rollout ...`: the commands a team ramps a migration with.
 * Every change is one transaction that also appends to the audit trail;
 * bad input changes nothing and exits 2. */
#include <jansson.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cv.h"

#define EXIT_USAGE 2

static const char rollout_usage[] =
    "usage: switchyard rollout COMMAND ...\n"
    "  set FLAG RATE --reason R [--group G] [--description D] [--owner O] "
    "[--force]\n"
    "                   RATE: 5%, 0.25%, 2500ppm (0..100%)\n"
    "  get FLAG         rate, kill switch, overrides, counters per version\n"
    "  list             every flag\n"
    "  kill FLAG --reason R      route everything to v1 now\n"
    "  unkill FLAG --reason R\n"
    "  retire FLAG --reason R    keep a tombstone; the name is not reused\n"
    "  history FLAG     the audit trail\n"
    "  allow FLAG SUBJECT [--reason R]     force v2 for a subject\n"
    "  opt-out FLAG SUBJECT [--reason R]   force v1 for a subject\n"
    "  clear FLAG SUBJECT [--reason R]     remove a subject's override\n"
    "  overrides FLAG   the overrides of a flag\n"
    "options: --actor NAME (default: the login name), --json\n";

typedef struct args {
  const char *reason, *actor, *group, *description, *owner;
  int force, json;
  const char *pos[4];
  int npos;
} args;

#define usage_error(...) cv_usage_error("rollout", __VA_ARGS__)

int cv_usage_error(const char *cmd, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "switchyard %s: ", cmd);
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n(see switchyard %s --help)\n", cmd);
  va_end(ap);
  return EXIT_USAGE;
}

static int db_error(cv_router *r, const char *what) {
  fprintf(stderr, "switchyard rollout: %s: %s\n", what, sqlite3_errmsg(r->db));
  return 1;
}

static const char *login_name(void) {
  struct passwd *pw = getpwuid(geteuid());
  const char *u = getenv("USER");
  if (pw && pw->pw_name && *pw->pw_name) {
    return pw->pw_name;
  }
  return u && *u ? u : "unknown";
}

static int parse_args(int argc, char **argv, args *a) {
  memset(a, 0, sizeof *a);
  for (int i = 2; i < argc; i++) {
    const char *o = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    const char **dst = NULL;
    if (strcmp(o, "--reason") == 0) {
      dst = &a->reason;
    } else if (strcmp(o, "--actor") == 0) {
      dst = &a->actor;
    } else if (strcmp(o, "--group") == 0) {
      dst = &a->group;
    } else if (strcmp(o, "--description") == 0) {
      dst = &a->description;
    } else if (strcmp(o, "--owner") == 0) {
      dst = &a->owner;
    } else if (strcmp(o, "--force") == 0) {
      a->force = 1;
      continue;
    } else if (strcmp(o, "--json") == 0) {
      a->json = 1;
      continue;
    } else if (o[0] == '-' && o[1] && strcmp(o, "-") != 0 &&
               !(o[1] >= '0' && o[1] <= '9')) {
      return usage_error("unknown option '%s'", o);
    } else {
      if (a->npos == 4) {
        return usage_error("unexpected argument '%s'", o);
      }
      a->pos[a->npos++] = o;
      continue;
    }
    if (!v || !*v) {
      return usage_error("%s needs a non-empty value", o);
    }
    *dst = v;
    i++;
  }
  if (!a->actor) {
    a->actor = login_name();
  }
  return 0;
}

/* The current row of a flag, for changes and display. */
typedef struct flag_row {
  int exists;
  uint32_t rate;
  int killed;
  int retired;
  int64_t retired_at;
  char group[256];
  char description[512];
  char owner[256];
  int64_t created_at, updated_at;
} flag_row;

static int read_flag(cv_router *r, const char *name, flag_row *f) {
  sqlite3_stmt *s;
  int rc;
  memset(f, 0, sizeof *f);
  if (sqlite3_prepare_v2(r->db,
                         "SELECT rate_ppm, killed, retired_at, "
                         "coalesce(hash_group, name), coalesce(description, "
                         "''), coalesce(owner, ''), created_at, updated_at "
                         "FROM cv_flags WHERE name = ?1",
                         -1, &s, NULL) != SQLITE_OK) {
    return db_error(r, "read flag");
  }
  sqlite3_bind_text(s, 1, name, -1, SQLITE_STATIC);
  rc = sqlite3_step(s);
  if (rc == SQLITE_ROW) {
    f->exists = 1;
    f->rate = (uint32_t)sqlite3_column_int64(s, 0);
    f->killed = sqlite3_column_int(s, 1);
    f->retired = sqlite3_column_type(s, 2) != SQLITE_NULL;
    f->retired_at = sqlite3_column_int64(s, 2);
    snprintf(f->group, sizeof f->group, "%s", sqlite3_column_text(s, 3));
    snprintf(f->description, sizeof f->description, "%s",
             sqlite3_column_text(s, 4));
    snprintf(f->owner, sizeof f->owner, "%s", sqlite3_column_text(s, 5));
    f->created_at = sqlite3_column_int64(s, 6);
    f->updated_at = sqlite3_column_int64(s, 7);
    rc = SQLITE_DONE;
  }
  sqlite3_finalize(s);
  return rc == SQLITE_DONE ? 0 : db_error(r, "read flag");
}

static int64_t now_ms(cv_router *r) {
  return r->api->now_ms(r->e);
}

static int audit(cv_router *r, const char *flag, const char *what,
                 const char *subject, const char *old_value,
                 const char *new_value, const flag_row *after, const args *a) {
  sqlite3_stmt *s;
  int rc;
  if (sqlite3_prepare_v2(
          r->db,
          "INSERT INTO cv_audit(flag, what, subject, old_value, new_value, "
          "rate_ppm, killed, reason, actor, at) "
          "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
          -1, &s, NULL) != SQLITE_OK) {
    return db_error(r, "audit");
  }
  sqlite3_bind_text(s, 1, flag, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, what, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, subject, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 4, old_value, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 5, new_value, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 6, after->rate);
  sqlite3_bind_int(s, 7, after->killed);
  sqlite3_bind_text(s, 8, a->reason, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 9, a->actor, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 10, now_ms(r));
  rc = sqlite3_step(s);
  sqlite3_finalize(s);
  return rc == SQLITE_DONE ? 0 : db_error(r, "audit");
}

/* Runs sql with up to three text parameters and the time as ?9. */
static int run_sql(cv_router *r, const char *sql, const char *p1,
                   const char *p2, const char *p3) {
  sqlite3_stmt *s;
  int rc;
  if (sqlite3_prepare_v2(r->db, sql, -1, &s, NULL) != SQLITE_OK) {
    return db_error(r, "update");
  }
  sqlite3_bind_text(s, 1, p1, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, p2, -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 3, p3, -1, SQLITE_STATIC);
  sqlite3_bind_int64(s, 9, now_ms(r));
  rc = sqlite3_step(s);
  sqlite3_finalize(s);
  return rc == SQLITE_DONE ? 0 : db_error(r, "update");
}

static int begin(cv_router *r) {
  if (sqlite3_exec(r->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
    return db_error(r, "begin");
  }
  return 0;
}

static int finish(cv_router *r, int rc) {
  if (rc) {
    sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
  }
  if (sqlite3_exec(r->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
    rc = db_error(r, "commit");
    sqlite3_exec(r->db, "ROLLBACK", NULL, NULL, NULL);
  }
  return rc;
}

void cv_fmt_time(int64_t ms, char *buf, size_t len) {
  time_t t = (time_t)(ms / 1000);
  struct tm tm;
  if (!ms) {
    snprintf(buf, len, "-");
    return;
  }
  gmtime_r(&t, &tm);
  strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* Checks the flag argument and reads its row; must_exist for commands on
 * existing flags. */
static int flag_arg(cv_router *r, const args *a, int npos, flag_row *f,
                    int must_exist) {
  int rc;
  if (a->npos < 1) {
    return usage_error("which flag?");
  }
  if (a->npos != npos) {
    return usage_error("expected %d argument%s after the command, got %d", npos,
                       npos == 1 ? "" : "s", a->npos);
  }
  if (!cv_flag_name_valid(a->pos[0])) {
    return usage_error(
        "bad flag name '%s' (1 to 128 letters, digits, '_', '-', '.')",
        a->pos[0]);
  }
  if ((rc = read_flag(r, a->pos[0], f))) {
    return rc;
  }
  if (must_exist && !f->exists) {
    return usage_error("no flag '%s' (create it with rollout set)", a->pos[0]);
  }
  return 0;
}

static int need_reason(const args *a, const char *cmd) {
  if (!a->reason) {
    return usage_error("%s needs --reason: say why, for the audit trail", cmd);
  }
  return 0;
}

static int cmd_set(cv_router *r, const args *a) {
  flag_row f, after;
  uint32_t ppm;
  char err[256], oldr[CV_RATE_FORMAT_MAX], newr[CV_RATE_FORMAT_MAX];
  int rc;
  if (a->npos < 2 && a->npos >= 1) {
    return usage_error("set %s: which rate? (e.g. 5%%, 0.25%%, 2500ppm)",
                       a->pos[0]);
  }
  if ((rc = flag_arg(r, a, 2, &f, 0)) || (rc = need_reason(a, "set"))) {
    return rc;
  }
  if (cv_rate_parse(a->pos[1], &ppm, err, sizeof err)) {
    return usage_error("%s", err);
  }
  if (a->group && !cv_flag_name_valid(a->group)) {
    return usage_error("bad --group '%s'", a->group);
  }
  if (a->group && f.exists && strcmp(a->group, f.group) != 0 && !a->force) {
    return usage_error(
        "changing the hash group of '%s' (%s -> %s) reshuffles "
        "its cohorts: subjects on v2 may go back to v1; add "
        "--force to do it",
        a->pos[0], f.group, a->group);
  }
  if (f.retired && !a->force) {
    char t[32];
    cv_fmt_time(f.retired_at, t, sizeof t);
    return usage_error(
        "flag '%s' was retired on %s; reusing its name takes "
        "--force",
        a->pos[0], t);
  }
  if ((rc = begin(r)) || (rc = read_flag(r, a->pos[0], &f))) {
    return finish(r, rc ? rc : 1);
  }
  after = f;
  after.rate = ppm;
  after.retired = 0;
  if (!f.exists) {
    after.killed = 0;
    rc = run_sql(r,
                 "INSERT INTO cv_flags(name, hash_group, created_at, "
                 "updated_at) VALUES(?1, ?2, ?9, ?9)",
                 a->pos[0], a->group, NULL) ||
         audit(r, a->pos[0], "create", NULL, NULL, a->pos[0], &f, a);
  } else if (f.retired) {
    rc = run_sql(r,
                 "UPDATE cv_flags SET retired_at = NULL, killed = 0, "
                 "nth_counter = 0, updated_at = ?9 WHERE name = ?1",
                 a->pos[0], NULL, NULL) ||
         audit(r, a->pos[0], "unretire", NULL, "retired", "active", &after, a);
    after.killed = 0;
  }
  if (!rc && a->group && f.exists && strcmp(a->group, f.group) != 0) {
    rc = run_sql(r,
                 "UPDATE cv_flags SET hash_group = ?2, updated_at = ?9 "
                 "WHERE name = ?1",
                 a->pos[0], a->group, NULL) ||
         audit(r, a->pos[0], "group", NULL, f.group, a->group, &after, a);
  }
  if (!rc && a->description) {
    rc = run_sql(r, "UPDATE cv_flags SET description = ?2 WHERE name = ?1",
                 a->pos[0], a->description, NULL);
  }
  if (!rc && a->owner) {
    rc = run_sql(r, "UPDATE cv_flags SET owner = ?2 WHERE name = ?1", a->pos[0],
                 a->owner, NULL);
  }
  cv_rate_format(f.exists && !f.retired ? f.rate : 0, oldr, sizeof oldr);
  cv_rate_format(ppm, newr, sizeof newr);
  if (!rc && (ppm != f.rate || !f.exists || f.retired)) {
    char ppm_text[32];
    snprintf(ppm_text, sizeof ppm_text, "%u", ppm);
    rc = run_sql(r,
                 "UPDATE cv_flags SET rate_ppm = CAST(?2 AS INTEGER), "
                 "updated_at = ?9 WHERE name = ?1",
                 a->pos[0], ppm_text, NULL) ||
         audit(r, a->pos[0], "rate", NULL, f.exists ? oldr : NULL, newr, &after,
               a);
  }
  if ((rc = finish(r, rc))) {
    return rc;
  }
  if (ppm == f.rate && f.exists && !f.retired) {
    printf("%s: rate unchanged at %s\n", a->pos[0], newr);
  } else {
    printf("%s: rate %s -> %s (%u ppm)%s\n", a->pos[0], oldr, newr, ppm,
           f.killed && f.exists && !f.retired
               ? "; the kill switch is ON: everything still goes to v1"
               : "");
  }
  return 0;
}

static int cmd_kill(cv_router *r, const args *a, int kill) {
  flag_row f, after;
  int rc;
  const char *cmd = kill ? "kill" : "unkill";
  if ((rc = flag_arg(r, a, 1, &f, 1)) || (rc = need_reason(a, cmd))) {
    return rc;
  }
  if (f.retired) {
    return usage_error("flag '%s' is retired", a->pos[0]);
  }
  if (f.killed == kill) {
    printf("%s: kill switch already %s\n", a->pos[0], kill ? "on" : "off");
    return 0;
  }
  after = f;
  after.killed = kill;
  if ((rc = begin(r))) {
    return rc;
  }
  rc = run_sql(r,
               kill ? "UPDATE cv_flags SET killed = 1, updated_at = ?9 WHERE "
                      "name = ?1"
                    : "UPDATE cv_flags SET killed = 0, updated_at = ?9 WHERE "
                      "name = ?1",
               a->pos[0], NULL, NULL) ||
       audit(r, a->pos[0], cmd, NULL, kill ? "off" : "on", kill ? "on" : "off",
             &after, a);
  if ((rc = finish(r, rc))) {
    return rc;
  }
  printf("%s: kill switch %s%s\n", a->pos[0], kill ? "ON" : "off",
         kill ? ": every new decision goes to v1" : "");
  return 0;
}

static int cmd_retire(cv_router *r, const args *a) {
  flag_row f, after;
  int rc;
  if ((rc = flag_arg(r, a, 1, &f, 1)) || (rc = need_reason(a, "retire"))) {
    return rc;
  }
  if (f.retired) {
    return usage_error("flag '%s' is retired already", a->pos[0]);
  }
  after = f;
  after.rate = 0;
  after.retired = 1;
  if ((rc = begin(r))) {
    return rc;
  }
  rc = run_sql(r,
               "UPDATE cv_flags SET retired_at = ?9, rate_ppm = 0, "
               "updated_at = ?9 WHERE name = ?1",
               a->pos[0], NULL, NULL) ||
       audit(r, a->pos[0], "retire", NULL, "active", "retired", &after, a);
  if ((rc = finish(r, rc))) {
    return rc;
  }
  printf("%s: retired (decisions now go to v1; the name stays reserved)\n",
         a->pos[0]);
  return 0;
}

static int cmd_override(cv_router *r, const args *a, const char *kind) {
  flag_row f;
  sqlite3_stmt *s;
  char old[16] = "none";
  int rc;
  const char *cmd = kind ? kind : "clear";
  if (a->npos == 1) {
    return usage_error("%s %s: which subject?", cmd, a->pos[0]);
  }
  if ((rc = flag_arg(r, a, 2, &f, 1))) {
    return rc;
  }
  if (!*a->pos[1]) {
    return usage_error("%s: empty subject", cmd);
  }
  if ((rc = begin(r))) {
    return rc;
  }
  if (sqlite3_prepare_v2(r->db,
                         "SELECT kind FROM cv_overrides WHERE flag = ?1 AND "
                         "subject = ?2",
                         -1, &s, NULL) != SQLITE_OK) {
    return finish(r, db_error(r, "read override"));
  }
  sqlite3_bind_text(s, 1, a->pos[0], -1, SQLITE_STATIC);
  sqlite3_bind_text(s, 2, a->pos[1], -1, SQLITE_STATIC);
  if (sqlite3_step(s) == SQLITE_ROW) {
    snprintf(old, sizeof old, "%s", sqlite3_column_text(s, 0));
  }
  sqlite3_finalize(s);
  if (!kind && strcmp(old, "none") == 0) {
    finish(r, 1);
    return usage_error("%s has no override for subject '%s'", a->pos[0],
                       a->pos[1]);
  }
  if (kind) {
    sqlite3_stmt *ins;
    if (sqlite3_prepare_v2(
            r->db,
            "INSERT OR REPLACE INTO cv_overrides(flag, subject, kind, actor, "
            "reason, created_at) VALUES(?1, ?2, ?3, ?4, ?5, ?6)",
            -1, &ins, NULL) != SQLITE_OK) {
      return finish(r, db_error(r, "override"));
    }
    sqlite3_bind_text(ins, 1, a->pos[0], -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 2, a->pos[1], -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 3, kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 4, a->actor, -1, SQLITE_STATIC);
    sqlite3_bind_text(ins, 5, a->reason, -1, SQLITE_STATIC);
    sqlite3_bind_int64(ins, 6, now_ms(r));
    rc = sqlite3_step(ins) == SQLITE_DONE ? 0 : db_error(r, "override");
    sqlite3_finalize(ins);
  } else {
    rc = run_sql(r, "DELETE FROM cv_overrides WHERE flag = ?1 AND subject = ?2",
                 a->pos[0], a->pos[1], NULL);
  }
  if (!rc) {
    rc = audit(r, a->pos[0], kind ? "override" : "clear", a->pos[1], old,
               kind ? kind : "none", &f, a);
  }
  if ((rc = finish(r, rc))) {
    return rc;
  }
  printf("%s: subject '%s' %s\n", a->pos[0], a->pos[1],
         !kind                        ? "follows the rollout again"
         : strcmp(kind, "allow") == 0 ? "always goes to v2"
                                      : "always goes to v1");
  return 0;
}

static json_t *flag_json(const char *name, const flag_row *f) {
  char rate[CV_RATE_FORMAT_MAX];
  cv_rate_format(f->rate, rate, sizeof rate);
  return json_pack("{s:s, s:s, s:I, s:b, s:b, s:s, s:s, s:s, s:I, s:I}", "flag",
                   name, "rate", rate, "rate_ppm", (json_int_t)f->rate,
                   "killed", f->killed, "retired", f->retired, "group",
                   f->group, "description", f->description, "owner", f->owner,
                   "created_at", (json_int_t)f->created_at, "updated_at",
                   (json_int_t)f->updated_at);
}

static void print_json(json_t *j) {
  char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
  if (s) {
    puts(s);
    free(s);
  }
  json_decref(j);
}

static int cmd_get(cv_router *r, const args *a) {
  flag_row f;
  sqlite3_stmt *s;
  json_t *j = NULL, *counters = NULL;
  char rate[CV_RATE_FORMAT_MAX], t1[32], t2[32];
  int rc;
  if ((rc = flag_arg(r, a, 1, &f, 1))) {
    return rc;
  }
  cv_rate_format(f.rate, rate, sizeof rate);
  if (a->json) {
    j = flag_json(a->pos[0], &f);
    counters = json_array();
  } else {
    cv_fmt_time(f.created_at, t1, sizeof t1);
    cv_fmt_time(f.updated_at, t2, sizeof t2);
    printf("flag         %s%s\n", a->pos[0], f.retired ? " (retired)" : "");
    printf("rate         %s (%u ppm)\n", rate, f.rate);
    printf("kill switch  %s\n",
           f.killed ? "ON (everything goes to v1)" : "off");
    printf("hash group   %s\n", f.group);
    if (*f.owner) {
      printf("owner        %s\n", f.owner);
    }
    if (*f.description) {
      printf("description  %s\n", f.description);
    }
    printf("created      %s   updated %s\n", t1, t2);
  }
  if (sqlite3_prepare_v2(r->db,
                         "SELECT workflow, version, routed, in_flight, "
                         "completed, cancelled, with_incidents, incidents, "
                         "open_incidents FROM cv_counters WHERE flag = ?1 "
                         "ORDER BY workflow, version",
                         -1, &s, NULL) != SQLITE_OK) {
    json_decref(j);
    json_decref(counters);
    return db_error(r, "read counters");
  }
  sqlite3_bind_text(s, 1, a->pos[0], -1, SQLITE_STATIC);
  if (!a->json) {
    printf("\n%-20s %-7s %9s %9s %9s %9s %14s %9s\n", "WORKFLOW", "VERSION",
           "ROUTED", "IN FLIGHT", "COMPLETED", "CANCELLED", "WITH INCIDENTS",
           "OPEN INC.");
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    if (a->json) {
      json_array_append_new(
          counters,
          json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "workflow",
                    sqlite3_column_text(s, 0), "version",
                    sqlite3_column_text(s, 1), "routed",
                    (json_int_t)sqlite3_column_int64(s, 2), "in_flight",
                    (json_int_t)sqlite3_column_int64(s, 3), "completed",
                    (json_int_t)sqlite3_column_int64(s, 4), "cancelled",
                    (json_int_t)sqlite3_column_int64(s, 5), "with_incidents",
                    (json_int_t)sqlite3_column_int64(s, 6), "incidents",
                    (json_int_t)sqlite3_column_int64(s, 7), "open_incidents",
                    (json_int_t)sqlite3_column_int64(s, 8)));
    } else {
      printf("%-20s %-7s %9lld %9lld %9lld %9lld %14lld %9lld\n",
             sqlite3_column_text(s, 0), sqlite3_column_text(s, 1),
             sqlite3_column_int64(s, 2), sqlite3_column_int64(s, 3),
             sqlite3_column_int64(s, 4), sqlite3_column_int64(s, 5),
             sqlite3_column_int64(s, 6), sqlite3_column_int64(s, 8));
    }
  }
  sqlite3_finalize(s);
  if (a->json) {
    json_object_set_new(j, "counters", counters);
    print_json(j);
  }
  return 0;
}

static int cmd_list(cv_router *r, const args *a) {
  sqlite3_stmt *s;
  json_t *arr = a->json ? json_array() : NULL;
  if (a->npos) {
    json_decref(arr);
    return usage_error("list takes no arguments");
  }
  if (sqlite3_prepare_v2(r->db, "SELECT name FROM cv_flags ORDER BY name", -1,
                         &s, NULL) != SQLITE_OK) {
    json_decref(arr);
    return db_error(r, "list flags");
  }
  if (!a->json) {
    printf("%-32s %-10s %-6s %-8s %s\n", "FLAG", "RATE", "KILL", "STATE",
           "UPDATED");
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    flag_row f;
    const char *name = (const char *)sqlite3_column_text(s, 0);
    char rate[CV_RATE_FORMAT_MAX], t[32];
    if (read_flag(r, name, &f)) {
      sqlite3_finalize(s);
      json_decref(arr);
      return 1;
    }
    if (a->json) {
      json_array_append_new(arr, flag_json(name, &f));
      continue;
    }
    cv_rate_format(f.rate, rate, sizeof rate);
    cv_fmt_time(f.updated_at, t, sizeof t);
    printf("%-32s %-10s %-6s %-8s %s\n", name, rate, f.killed ? "ON" : "off",
           f.retired ? "retired" : "active", t);
  }
  sqlite3_finalize(s);
  if (a->json) {
    print_json(arr);
  }
  return 0;
}

static int cmd_history(cv_router *r, const args *a, int overrides) {
  flag_row f;
  sqlite3_stmt *s;
  json_t *arr = NULL;
  int rc;
  if ((rc = flag_arg(r, a, 1, &f, 1))) {
    return rc;
  }
  if (sqlite3_prepare_v2(
          r->db,
          overrides ? "SELECT subject, kind, actor, reason, created_at FROM "
                      "cv_overrides WHERE flag = ?1 ORDER BY subject"
                    : "SELECT id, what, subject, old_value, new_value, reason, "
                      "actor, at FROM cv_audit WHERE flag = ?1 ORDER BY id",
          -1, &s, NULL) != SQLITE_OK) {
    return db_error(r, "read history");
  }
  sqlite3_bind_text(s, 1, a->pos[0], -1, SQLITE_STATIC);
  if (a->json) {
    arr = json_array();
  }
  while (sqlite3_step(s) == SQLITE_ROW) {
    char t[32];
    if (overrides) {
      cv_fmt_time(sqlite3_column_int64(s, 4), t, sizeof t);
      if (a->json) {
        json_array_append_new(
            arr, json_pack("{s:s, s:s, s:s?, s:s?, s:I}", "subject",
                           sqlite3_column_text(s, 0), "kind",
                           sqlite3_column_text(s, 1), "actor",
                           sqlite3_column_text(s, 2), "reason",
                           sqlite3_column_text(s, 3), "at",
                           (json_int_t)sqlite3_column_int64(s, 4)));
      } else {
        printf("%-24s %-8s %s  by %s%s%s\n", sqlite3_column_text(s, 0),
               sqlite3_column_text(s, 1), t, sqlite3_column_text(s, 2),
               sqlite3_column_text(s, 3) ? ": " : "",
               sqlite3_column_text(s, 3)
                   ? (const char *)sqlite3_column_text(s, 3)
                   : "");
      }
      continue;
    }
    cv_fmt_time(sqlite3_column_int64(s, 7), t, sizeof t);
    if (a->json) {
      json_array_append_new(
          arr,
          json_pack("{s:I, s:s, s:s?, s:s?, s:s?, s:s?, s:s?, s:I}", "id",
                    (json_int_t)sqlite3_column_int64(s, 0), "what",
                    sqlite3_column_text(s, 1), "subject",
                    sqlite3_column_text(s, 2), "old", sqlite3_column_text(s, 3),
                    "new", sqlite3_column_text(s, 4), "reason",
                    sqlite3_column_text(s, 5), "actor",
                    sqlite3_column_text(s, 6), "at",
                    (json_int_t)sqlite3_column_int64(s, 7)));
    } else {
      const unsigned char *subject = sqlite3_column_text(s, 2);
      const unsigned char *oldv = sqlite3_column_text(s, 3);
      const unsigned char *reason = sqlite3_column_text(s, 5);
      printf("%s  %-8s %s%s%s%s -> %s  by %s%s%s\n", t,
             sqlite3_column_text(s, 1), subject ? "subject " : "",
             subject ? (const char *)subject : "", subject ? ": " : "",
             oldv ? (const char *)oldv : "-", sqlite3_column_text(s, 4),
             sqlite3_column_text(s, 6), reason ? ": " : "",
             reason ? (const char *)reason : "");
    }
  }
  sqlite3_finalize(s);
  if (a->json) {
    print_json(arr);
  }
  return 0;
}

int cv_cmd_rollout(void *plugin, int argc, char **argv) {
  cv_router *r = plugin;
  const char *cmd = argc > 1 ? argv[1] : NULL;
  args a;
  int rc;
  if (!cmd || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
    fputs(rollout_usage, cmd ? stdout : stderr);
    return cmd ? 0 : EXIT_USAGE;
  }
  if ((rc = parse_args(argc, argv, &a))) {
    return rc;
  }
  if (strcmp(cmd, "set") == 0) {
    return cmd_set(r, &a);
  }
  if (strcmp(cmd, "get") == 0) {
    return cmd_get(r, &a);
  }
  if (strcmp(cmd, "list") == 0) {
    return cmd_list(r, &a);
  }
  if (strcmp(cmd, "kill") == 0 || strcmp(cmd, "unkill") == 0) {
    return cmd_kill(r, &a, strcmp(cmd, "kill") == 0);
  }
  if (strcmp(cmd, "retire") == 0) {
    return cmd_retire(r, &a);
  }
  if (strcmp(cmd, "history") == 0) {
    return cmd_history(r, &a, 0);
  }
  if (strcmp(cmd, "overrides") == 0) {
    return cmd_history(r, &a, 1);
  }
  if (strcmp(cmd, "allow") == 0) {
    return cmd_override(r, &a, "allow");
  }
  if (strcmp(cmd, "opt-out") == 0) {
    return cmd_override(r, &a, "opt-out");
  }
  if (strcmp(cmd, "clear") == 0) {
    return cmd_override(r, &a, NULL);
  }
  return usage_error("unknown command '%s'", cmd);
}
