/* `switchyard rollout ...`: the commands a team ramps a migration with.
 * Every change is one transaction of its own (the write lock taken at its
 * start) that also appends to the audit trail; bad input changes nothing
 * and exits 2, a database failure changes nothing and exits 1. Its SQL is
 * in sql.c with the rest of the plugin's. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"

#define EXIT_USAGE 2
#define CMD "rollout"

static const char rollout_usage[] =
    "usage: switchyard rollout COMMAND ...\n"
    "  set FLAG RATE --reason R [--group G] [--description D] [--owner O] "
    "[--force]\n"
    "                   RATE: 5%, 0.25%, 2500ppm (0..100%)\n"
    "  get FLAG         rate, kill switch, overrides, counters per version\n"
    "  list [--stale] [--stale-after 14d]\n"
    "                   every flag, and what needs attention: at 100% or\n"
    "                   killed for longer than --stale-after, or at 0% with\n"
    "                   no decision for that long (--stale: only those)\n"
    "  kill FLAG --reason R      route everything to v1 now\n"
    "  unkill FLAG --reason R\n"
    "  retire FLAG --reason R    keep a tombstone; the name is not reused\n"
    "  shadow FLAG RATE [--budget N/h|none] --reason R\n"
    "                   also run v2's first step beside v1 for RATE of the\n"
    "                   instances routed to v1 (nodes with a shadow option),\n"
    "                   at most N runs an hour (0% turns it off; the budget\n"
    "                   stays as it was unless given); report FLAG --shadow\n"
    "  history FLAG     the audit trail\n"
    "  plan FLAG --steps 1%,5%,25%,100% --reason R ...   a plan running\n"
    "                   engines follow, rolling back on evidence\n"
    "                   (rollout plan --help)\n"
    "  notify FLAG --url URL [--secret-file F] [--format json|slack]\n"
    "                   POST each change of the flag to URL, from running\n"
    "                   engines (--remove: stop; rollout notify --help)\n"
    "  notifications FLAG   each delivery's state, attempts, last error\n"
    "  allow FLAG SUBJECT [--reason R]     force v2 for a subject\n"
    "  opt-out FLAG SUBJECT [--reason R]   force v1 for a subject\n"
    "  clear FLAG SUBJECT [--reason R]     remove a subject's override\n"
    "  overrides FLAG   the overrides of a flag\n"
    "options: --actor NAME (default: the login name), --json\n"
    "  --dry-run [--window 30d]  (set, kill, unkill) change nothing; say\n"
    "                   which subjects decided in the window would move\n"
    "                   v1 -> v2 and v2 -> v1, and what is in flight\n";

typedef struct args {
  const char *reason, *actor, *group, *description, *owner, *stale_after;
  const char *window, *budget;
  int force, json, stale, dry_run;
  const char *pos[4];
  int npos;
} args;

#define usage_error(...) cv_usage_error(CMD, __VA_ARGS__)
#define db_error(r, what) cv_cmd_db_error(r, CMD, what)

static int parse_args(int argc, char **argv, args *a) {
  const cv_opt opts[] = {CV_VALUE("reason", &a->reason),
                         CV_VALUE("actor", &a->actor),
                         CV_VALUE("group", &a->group),
                         CV_VALUE("description", &a->description),
                         CV_VALUE("owner", &a->owner),
                         CV_VALUE("stale-after", &a->stale_after),
                         CV_VALUE("window", &a->window),
                         CV_VALUE("budget", &a->budget),
                         CV_SWITCH("stale", &a->stale),
                         CV_SWITCH("dry-run", &a->dry_run),
                         CV_SWITCH("force", &a->force),
                         CV_SWITCH("json", &a->json),
                         CV_END};
  int rc;
  memset(a, 0, sizeof *a);
  if ((rc = cv_parse_args(CMD, argc, argv, opts, a->pos, 4, &a->npos, 1))) {
    return rc;
  }
  if (!a->actor) {
    a->actor = cv_login_name();
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
  uint32_t shadow;       /* ppm */
  int64_t shadow_budget; /* runs per hour, 0: no cap */
} flag_row;

/* Fills f from a row of CVQ_FLAG_ROW or CVQ_FLAG_LIST (the name, column
 * 0, is the caller's). */
static void flag_row_from(sy_stmt *s, flag_row *f) {
  memset(f, 0, sizeof *f);
  f->exists = 1;
  f->rate = (uint32_t)sy_stmt_column_int(s, 1);
  f->killed = (int)sy_stmt_column_int(s, 2);
  f->retired = !sy_stmt_column_null(s, 3);
  f->retired_at = sy_stmt_column_int(s, 3);
  snprintf(f->group, sizeof f->group, "%s", sy_stmt_column_text(s, 4));
  snprintf(f->description, sizeof f->description, "%s",
           sy_stmt_column_text(s, 5));
  snprintf(f->owner, sizeof f->owner, "%s", sy_stmt_column_text(s, 6));
  f->created_at = sy_stmt_column_int(s, 7);
  f->updated_at = sy_stmt_column_int(s, 8);
  f->shadow = (uint32_t)sy_stmt_column_int(s, 9);
  f->shadow_budget = sy_stmt_column_int(s, 10);
}

/* 0 (f->exists says whether there is a row), or 1 after saying why. */
static int read_flag(cv_router *r, const char *name, flag_row *f) {
  sy_stmt *s = cv_stmt(r, CVQ_FLAG_ROW);
  int rc;
  memset(f, 0, sizeof *f);
  if (!s) {
    return db_error(r, "read flag");
  }
  sy_stmt_bind_text(s, 1, name);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    flag_row_from(s, f);
  } else if (rc != SY_DONE) {
    cv_db_fail(r, s);
    return db_error(r, "read flag");
  }
  sy_stmt_reset(s);
  return 0;
}

static int64_t now_ms(cv_router *r) {
  return r->api->now_ms(r->e);
}

/* Statement q with the flag's name bound as ?1, for the caller to bind
 * the rest and hand to run_change; NULL (with r->errmsg) when it cannot be
 * prepared, which run_change then reports. */
static sy_stmt *on_flag(cv_router *r, int q, const char *flag) {
  sy_stmt *s = cv_stmt(r, q);
  if (s) {
    sy_stmt_bind_text(s, 1, flag);
  }
  return s;
}

/* Runs a change from on_flag: 0, or 1 after saying why. */
static int run_change(cv_router *r, sy_stmt *s, const char *what) {
  if (!s || cv_step_done(r, s)) {
    return db_error(r, what);
  }
  return 0;
}

/* Appends a change to the audit trail, with the flag's state after it. */
static int audit(cv_router *r, const char *flag, const char *what,
                 const char *subject, const char *old_value,
                 const char *new_value, const flag_row *after, const args *a) {
  cv_change c = {.flag = flag,
                 .what = what,
                 .subject = subject,
                 .old_value = old_value,
                 .new_value = new_value,
                 .rate = after->rate,
                 .killed = after->killed,
                 .reason = a->reason,
                 .actor = a->actor,
                 .at = now_ms(r)};
  if (cv_audit_add(r, &c)) {
    return db_error(r, "audit");
  }
  return 0;
}

/* A change of the flag's row to text (?2; NULL sets NULL), at ?3 now. */
static int set_text(cv_router *r, int q, const char *flag, const char *text) {
  sy_stmt *s = on_flag(r, q, flag);
  if (s) {
    sy_stmt_bind_text(s, 2, text);
    sy_stmt_bind_int(s, 3, now_ms(r));
  }
  return run_change(r, s, "update");
}

/* A change of the flag's row to a number (?2), at ?3 now. */
static int set_number(cv_router *r, int q, const char *flag, int64_t num) {
  if (cv_flag_set(r, q, flag, num, now_ms(r))) {
    return db_error(r, "update");
  }
  return 0;
}

/* A change of the flag's row whose one value is the time (?2, now). */
static int set_now(cv_router *r, int q, const char *flag) {
  sy_stmt *s = on_flag(r, q, flag);
  if (s) {
    sy_stmt_bind_int(s, 2, now_ms(r));
  }
  return run_change(r, s, "update");
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

/* What `set` is asked, checked against the flag as it is (f): 0, or the
 * exit code after saying what is wrong. */
static int set_checks(cv_router *r, const args *a, flag_row *f, uint32_t *ppm) {
  char err[256];
  int rc;
  if (a->npos < 2 && a->npos >= 1) {
    return usage_error("set %s: which rate? (e.g. 5%%, 0.25%%, 2500ppm)",
                       a->pos[0]);
  }
  if ((rc = flag_arg(r, a, 2, f, 0)) ||
      (!a->dry_run && (rc = need_reason(a, "set")))) {
    return rc;
  }
  if (cv_rate_parse(a->pos[1], ppm, err, sizeof err)) {
    return usage_error("%s", err);
  }
  if (a->group && !cv_flag_name_valid(a->group)) {
    return usage_error("bad --group '%s'", a->group);
  }
  if (a->group && f->exists && strcmp(a->group, f->group) != 0 && !a->force &&
      !a->dry_run) {
    return usage_error(
        "changing the hash group of '%s' (%s -> %s) reshuffles "
        "its cohorts: subjects on v2 may go back to v1; add "
        "--force to do it",
        a->pos[0], f->group, a->group);
  }
  if (f->retired && !a->force && !a->dry_run) {
    char t[32];
    cv_fmt_time(f->retired_at, t, sizeof t);
    return usage_error(
        "flag '%s' was retired on %s; reusing its name takes "
        "--force",
        a->pos[0], t);
  }
  return 0;
}

/* The writes of `set` on flag row f, in the open transaction, each with
 * its audit row: create or unretire, group, description and owner, rate.
 * oldr and newr are the rates as text. */
static int set_writes(cv_router *r, const args *a, const flag_row *f,
                      uint32_t ppm, const char *oldr, const char *newr) {
  const char *name = a->pos[0];
  flag_row after = *f;
  int rc = 0;
  after.rate = ppm;
  after.retired = 0;
  if (!f->exists) {
    after.killed = 0;
    rc = set_text(r, CVQ_FLAG_CREATE, name, a->group) ||
         audit(r, name, "create", NULL, NULL, name, f, a);
  } else if (f->retired) {
    rc = set_now(r, CVQ_FLAG_UNRETIRE, name) ||
         audit(r, name, "unretire", NULL, "retired", "active", &after, a);
    after.killed = 0;
  }
  if (!rc && a->group && f->exists && strcmp(a->group, f->group) != 0) {
    rc = set_text(r, CVQ_FLAG_SET_GROUP, name, a->group) ||
         audit(r, name, "group", NULL, f->group, a->group, &after, a);
  }
  if (!rc && (a->description || a->owner)) {
    sy_stmt *s = on_flag(r, CVQ_FLAG_DESCRIBE, name);
    if (s) {
      sy_stmt_bind_text(s, 2, a->description);
      sy_stmt_bind_text(s, 3, a->owner);
    }
    rc = run_change(r, s, "update");
  }
  if (!rc && (ppm != f->rate || !f->exists || f->retired)) {
    rc = set_number(r, CVQ_FLAG_SET_RATE, name, ppm) ||
         audit(r, name, "rate", NULL, f->exists ? oldr : NULL, newr, &after, a);
  }
  return rc;
}

/* The flag as routing sees it, from its row (group: its hash group). */
static cv_flag routing_view(const char *name, const flag_row *f) {
  cv_flag v = {.name = (char *)name,
               .exists = f->exists,
               .retired = f->retired,
               .killed = f->killed,
               .rate_ppm = f->rate,
               .group = (char *)(f->exists ? f->group : name)};
  return v;
}

/* --dry-run: what a change from f to `then` would do (preview.c). */
static int dry_run(cv_router *r, const args *a, const flag_row *f,
                   const cv_flag *then, const char *change) {
  cv_flag now = routing_view(a->pos[0], f);
  return cv_preview(r, &now, then, change, a->window, a->json);
}

static int cmd_set(cv_router *r, const args *a) {
  flag_row f;
  uint32_t ppm;
  char oldr[CV_RATE_FORMAT_MAX], newr[CV_RATE_FORMAT_MAX];
  int rc;
  if ((rc = set_checks(r, a, &f, &ppm))) {
    return rc;
  }
  if (a->dry_run) {
    char change[600];
    cv_flag then = routing_view(a->pos[0], &f);
    cv_rate_format(f.exists && !f.retired ? f.rate : 0, oldr, sizeof oldr);
    cv_rate_format(ppm, newr, sizeof newr);
    then.exists = 1;
    then.rate_ppm = ppm;
    if (f.retired || !f.exists) {
      then.retired = then.killed = 0;
    }
    if (a->group) {
      then.group = (char *)a->group;
    }
    snprintf(change, sizeof change, "rate %s -> %s%s%s%s%s", oldr, newr,
             a->group ? ", hash group " : "",
             a->group ? (f.exists ? f.group : a->pos[0]) : "",
             a->group ? " -> " : "", a->group ? a->group : "");
    return dry_run(r, a, &f, &then, change);
  }
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  /* Read again under the write lock: the row the writes start from. */
  if ((rc = read_flag(r, a->pos[0], &f))) {
    return cv_cmd_end(r, CMD, rc);
  }
  cv_rate_format(f.exists && !f.retired ? f.rate : 0, oldr, sizeof oldr);
  cv_rate_format(ppm, newr, sizeof newr);
  rc = set_writes(r, a, &f, ppm, oldr, newr);
  if ((rc = cv_cmd_end(r, CMD, rc))) {
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
  if ((rc = flag_arg(r, a, 1, &f, 1)) ||
      (!a->dry_run && (rc = need_reason(a, cmd)))) {
    return rc;
  }
  if (f.retired) {
    return usage_error("flag '%s' is retired", a->pos[0]);
  }
  if (a->dry_run) {
    cv_flag then = routing_view(a->pos[0], &f);
    then.killed = kill;
    return dry_run(r, a, &f, &then,
                   kill ? "kill switch on" : "kill switch off");
  }
  if (f.killed == kill) {
    printf("%s: kill switch already %s\n", a->pos[0], kill ? "on" : "off");
    return 0;
  }
  after = f;
  after.killed = kill;
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  rc = set_number(r, CVQ_FLAG_SET_KILLED, a->pos[0], kill) ||
       audit(r, a->pos[0], cmd, NULL, kill ? "off" : "on", kill ? "on" : "off",
             &after, a);
  if ((rc = cv_cmd_end(r, CMD, rc))) {
    return rc;
  }
  printf("%s: kill switch %s%s\n", a->pos[0], kill ? "ON" : "off",
         kill ? ": every new decision goes to v1" : "");
  return 0;
}

/* A shadow's settings as the audit trail and the CLI say them: "off",
 * "5%", "5%, 1000/h". */
static void shadow_text(uint32_t ppm, int64_t budget, char *buf, size_t len) {
  char rate[CV_RATE_FORMAT_MAX];
  cv_rate_format(ppm, rate, sizeof rate);
  if (!ppm) {
    snprintf(buf, len, "off");
  } else if (budget) {
    snprintf(buf, len, "%s, %lld/h", rate, (long long)budget);
  } else {
    snprintf(buf, len, "%s", rate);
  }
}

/* --budget: "1000/h", "1000" (an hour's runs), or "none". */
static int parse_budget(const char *text, int64_t *out) {
  char *end;
  long long n;
  if (strcmp(text, "none") == 0) {
    *out = 0;
    return 0;
  }
  if (text[0] < '0' || text[0] > '9') {
    return -1;
  }
  n = strtoll(text, &end, 10);
  if ((*end && strcmp(end, "/h") != 0) || n < 1 || n > 1000000000) {
    return -1;
  }
  *out = n;
  return 0;
}

static int cmd_shadow(cv_router *r, const args *a) {
  flag_row f, after;
  uint32_t ppm;
  int64_t budget = 0;
  char err[256], oldv[64], newv[64];
  int rc;
  if (a->npos == 1) {
    return usage_error("shadow %s: which rate? (e.g. 5%%, 0%% turns it off)",
                       a->pos[0]);
  }
  if ((rc = flag_arg(r, a, 2, &f, 1)) || (rc = need_reason(a, "shadow"))) {
    return rc;
  }
  if (cv_rate_parse(a->pos[1], &ppm, err, sizeof err)) {
    return usage_error("%s", err);
  }
  if (a->budget && parse_budget(a->budget, &budget)) {
    return usage_error(
        "--budget: expected shadow runs an hour (1000/h, 1 to 1000000000), "
        "or none, got '%s'",
        a->budget);
  }
  if (f.retired) {
    return usage_error("flag '%s' is retired", a->pos[0]);
  }
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  if ((rc = read_flag(r, a->pos[0], &f))) {
    return cv_cmd_end(r, CMD, rc);
  }
  after = f;
  after.shadow = ppm;
  after.shadow_budget = a->budget ? budget : f.shadow_budget;
  shadow_text(f.shadow, f.shadow_budget, oldv, sizeof oldv);
  shadow_text(after.shadow, after.shadow_budget, newv, sizeof newv);
  if (strcmp(oldv, newv) != 0) {
    sy_stmt *s = on_flag(r, CVQ_FLAG_SET_SHADOW, a->pos[0]);
    if (s) {
      sy_stmt_bind_int(s, 2, after.shadow);
      sy_stmt_bind_int(s, 3, after.shadow_budget);
      sy_stmt_bind_int(s, 4, now_ms(r));
    }
    rc = run_change(r, s, "update") ||
         audit(r, a->pos[0], "shadow", NULL, oldv, newv, &after, a);
  }
  if ((rc = cv_cmd_end(r, CMD, rc))) {
    return rc;
  }
  if (strcmp(oldv, newv) == 0) {
    printf("%s: shadow unchanged (%s)\n", a->pos[0], newv);
  } else {
    printf("%s: shadow %s -> %s%s\n", a->pos[0], oldv, newv,
           ppm ? ": that share of v1's instances also runs v2's first step "
                 "where a node has a shadow option"
               : "");
  }
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
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  rc = set_now(r, CVQ_FLAG_RETIRE, a->pos[0]) ||
       audit(r, a->pos[0], "retire", NULL, "active", "retired", &after, a);
  if ((rc = cv_cmd_end(r, CMD, rc))) {
    return rc;
  }
  printf("%s: retired (decisions now go to v1; the name stays reserved)\n",
         a->pos[0]);
  return 0;
}

/* The override a subject has now ("none" without one): 0, or 1 after
 * saying why. */
static int read_override(cv_router *r, const args *a, char *old, size_t len) {
  sy_stmt *s = on_flag(r, CVQ_OVERRIDE, a->pos[0]);
  int rc;
  snprintf(old, len, "none");
  if (!s) {
    return db_error(r, "read override");
  }
  sy_stmt_bind_text(s, 2, a->pos[1]);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    snprintf(old, len, "%s", sy_stmt_column_text(s, 0));
  } else if (rc != SY_DONE) {
    cv_db_fail(r, s);
    return db_error(r, "read override");
  }
  sy_stmt_reset(s);
  return 0;
}

/* kind: "allow" or "opt-out" sets an override, NULL clears it. */
static int cmd_override(cv_router *r, const args *a, const char *kind) {
  flag_row f;
  sy_stmt *s;
  char old[16];
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
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  if ((rc = read_override(r, a, old, sizeof old))) {
    return cv_cmd_end(r, CMD, rc);
  }
  if (!kind && strcmp(old, "none") == 0) {
    cv_cmd_end(r, CMD, 1);
    return usage_error("%s has no override for subject '%s'", a->pos[0],
                       a->pos[1]);
  }
  s = on_flag(r, kind ? CVQ_OVERRIDE_PUT : CVQ_OVERRIDE_DELETE, a->pos[0]);
  if (s) {
    sy_stmt_bind_text(s, 2, a->pos[1]);
  }
  if (s && kind) {
    sy_stmt_bind_text(s, 3, kind);
    sy_stmt_bind_text(s, 4, a->actor);
    sy_stmt_bind_text(s, 5, a->reason);
    sy_stmt_bind_int(s, 6, now_ms(r));
  }
  rc = run_change(r, s, kind ? "override" : "update") ||
       audit(r, a->pos[0], kind ? "override" : "clear", a->pos[1], old,
             kind ? kind : "none", &f, a);
  if ((rc = cv_cmd_end(r, CMD, rc))) {
    return rc;
  }
  printf("%s: subject '%s' %s\n", a->pos[0], a->pos[1],
         !kind                        ? "follows the rollout again"
         : strcmp(kind, "allow") == 0 ? "always goes to v2"
                                      : "always goes to v1");
  return 0;
}

static json_t *flag_json(const char *name, const flag_row *f) {
  char rate[CV_RATE_FORMAT_MAX], shadow[CV_RATE_FORMAT_MAX];
  cv_rate_format(f->rate, rate, sizeof rate);
  cv_rate_format(f->shadow, shadow, sizeof shadow);
  return json_pack(
      "{s:s, s:s, s:I, s:b, s:b, s:s, s:s, s:s, s:I, s:I, "
      "s:{s:s, s:I, s:o}}",
      "flag", name, "rate", rate, "rate_ppm", (json_int_t)f->rate, "killed",
      f->killed, "retired", f->retired, "group", f->group, "description",
      f->description, "owner", f->owner, "created_at",
      (json_int_t)f->created_at, "updated_at", (json_int_t)f->updated_at,
      "shadow", "rate", shadow, "rate_ppm", (json_int_t)f->shadow,
      "budget_per_hour",
      f->shadow_budget ? json_integer(f->shadow_budget) : json_null());
}

static void print_flag(const char *name, const flag_row *f) {
  char rate[CV_RATE_FORMAT_MAX], t1[32], t2[32];
  cv_rate_format(f->rate, rate, sizeof rate);
  cv_fmt_time(f->created_at, t1, sizeof t1);
  cv_fmt_time(f->updated_at, t2, sizeof t2);
  printf("flag         %s%s\n", name, f->retired ? " (retired)" : "");
  printf("rate         %s (%u ppm)\n", rate, f->rate);
  printf("kill switch  %s\n", f->killed ? "ON (everything goes to v1)" : "off");
  printf("hash group   %s\n", f->group);
  if (f->shadow) {
    char shadow[64];
    shadow_text(f->shadow, f->shadow_budget, shadow, sizeof shadow);
    printf("shadow       %s of v1's instances also run v2's first step\n",
           shadow);
  }
  if (*f->owner) {
    printf("owner        %s\n", f->owner);
  }
  if (*f->description) {
    printf("description  %s\n", f->description);
  }
  printf("created      %s   updated %s\n", t1, t2);
}

/* One row of CVQ_COUNTERS_OF, appended to counters (JSON) or printed. */
static void counters_row(sy_stmt *s, json_t *counters) {
  if (counters) {
    json_array_append_new(
        counters,
        json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}",
                  "workflow", sy_stmt_column_text(s, 0), "version",
                  sy_stmt_column_text(s, 1), "routed",
                  (json_int_t)sy_stmt_column_int(s, 2), "in_flight",
                  (json_int_t)sy_stmt_column_int(s, 3), "completed",
                  (json_int_t)sy_stmt_column_int(s, 4), "cancelled",
                  (json_int_t)sy_stmt_column_int(s, 5), "with_incidents",
                  (json_int_t)sy_stmt_column_int(s, 6), "incidents",
                  (json_int_t)sy_stmt_column_int(s, 7), "open_incidents",
                  (json_int_t)sy_stmt_column_int(s, 8), "caught",
                  (json_int_t)sy_stmt_column_int(s, 9)));
  } else {
    printf("%-20s %-7s %9lld %9lld %9lld %9lld %14lld %9lld %9lld\n",
           sy_stmt_column_text(s, 0), sy_stmt_column_text(s, 1),
           (long long)sy_stmt_column_int(s, 2),
           (long long)sy_stmt_column_int(s, 3),
           (long long)sy_stmt_column_int(s, 4),
           (long long)sy_stmt_column_int(s, 5),
           (long long)sy_stmt_column_int(s, 6),
           (long long)sy_stmt_column_int(s, 8),
           (long long)sy_stmt_column_int(s, 9));
  }
}

static int cmd_get(cv_router *r, const args *a) {
  flag_row f;
  sy_stmt *s;
  json_t *j = NULL, *counters = NULL;
  int rc;
  if ((rc = flag_arg(r, a, 1, &f, 1))) {
    return rc;
  }
  if (!(s = on_flag(r, CVQ_COUNTERS_OF, a->pos[0]))) {
    return db_error(r, "read counters");
  }
  if (a->json) {
    j = flag_json(a->pos[0], &f);
    counters = json_array();
  } else {
    print_flag(a->pos[0], &f);
    printf("\n%-20s %-7s %9s %9s %9s %9s %14s %9s %9s\n", "WORKFLOW", "VERSION",
           "ROUTED", "IN FLIGHT", "COMPLETED", "CANCELLED", "WITH INCIDENTS",
           "OPEN INC.", "CAUGHT");
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    counters_row(s, counters);
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    json_decref(j);
    json_decref(counters);
    return db_error(r, "read counters");
  }
  sy_stmt_reset(s);
  if (a->json) {
    json_object_set_new(j, "counters", counters);
    cv_print_json(j);
  }
  return 0;
}

/* A time a flag statement q gives for a flag (0: none). */
static int flag_time(cv_router *r, int q, const char *flag, int64_t *at) {
  sy_stmt *s = on_flag(r, q, flag);
  int rc;
  *at = 0;
  if (!s) {
    return db_error(r, "list flags");
  }
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    *at = sy_stmt_column_int(s, 0);
  } else if (rc != SY_DONE) {
    cv_db_fail(r, s);
    return db_error(r, "list flags");
  }
  sy_stmt_reset(s);
  return 0;
}

/* What a flag left as it is for longer than stale_ms asks of its team,
 * into buf ("" when nothing): a migration at 100% is finished in the
 * code, a kill switch left on is a V2 nobody fixes, a flag at 0% nobody
 * decides on is dead. */
static int attention(cv_router *r, const char *name, const flag_row *f,
                     int64_t now, int64_t stale_ms, char *buf, size_t len) {
  int64_t since, last = 0, idle;
  char age[32];
  int rc;
  buf[0] = '\0';
  if (f->retired || (!f->killed && f->rate != 0 && f->rate != 1000000)) {
    return 0;
  }
  if ((rc = flag_time(r, CVQ_FLAG_SINCE, name, &since))) {
    return rc;
  }
  since = since ? since : f->created_at;
  if (now - since <= stale_ms) {
    return 0;
  }
  cv_fmt_age(now - since, age, sizeof age);
  if (f->killed) {
    snprintf(buf, len, "killed for %s: fix v2 and unkill, or retire the flag",
             age);
  } else if (f->rate == 1000000) {
    snprintf(buf, len,
             "at 100%% for %s: finish the migration: remove the node, retire "
             "the flag",
             age);
  } else {
    if ((rc = flag_time(r, CVQ_FLAG_LAST_DECISION, name, &last))) {
      return rc;
    }
    idle = now - (last > since ? last : since);
    if (idle > stale_ms) {
      cv_fmt_age(idle, age, sizeof age);
      snprintf(buf, len, "at 0%% with no decision for %s: retire the flag",
               age);
    }
  }
  return 0;
}

static int cmd_list(cv_router *r, const args *a) {
  sy_stmt *s;
  json_t *arr;
  int64_t stale_ms = 14 * 86400000LL, now = now_ms(r);
  int rc;
  if (a->npos) {
    return usage_error("list takes no arguments");
  }
  if (a->stale_after && cv_parse_age(a->stale_after, &stale_ms)) {
    return usage_error(
        "--stale-after: expected a duration (36h, 14d), got "
        "'%s'",
        a->stale_after);
  }
  if ((rc = cv_cmd_begin(r, CMD, 0))) {
    return rc;
  }
  if (!(s = cv_stmt(r, CVQ_FLAG_LIST))) {
    return cv_cmd_end(r, CMD, db_error(r, "list flags"));
  }
  arr = a->json ? json_array() : NULL;
  if (!a->json) {
    printf("%-32s %-10s %-6s %-8s %-20s %s\n", "FLAG", "RATE", "KILL", "STATE",
           "UPDATED", "ATTENTION");
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    flag_row f;
    char name[256], rate[CV_RATE_FORMAT_MAX], t[32], why[160];
    snprintf(name, sizeof name, "%s", sy_stmt_column_text(s, 0));
    flag_row_from(s, &f);
    /* (attention's statements are others: this one's row stays) */
    if ((rc = attention(r, name, &f, now, stale_ms, why, sizeof why))) {
      sy_stmt_reset(s);
      json_decref(arr);
      return cv_cmd_end(r, CMD, rc);
    }
    if (a->stale && !why[0]) {
      continue;
    }
    if (a->json) {
      json_t *j = flag_json(name, &f);
      json_object_set_new(j, "attention",
                          why[0] ? json_string(why) : json_null());
      json_array_append_new(arr, j);
      continue;
    }
    cv_rate_format(f.rate, rate, sizeof rate);
    cv_fmt_time(f.updated_at, t, sizeof t);
    printf("%-32s %-10s %-6s %-8s %-20s %s\n", name, rate,
           f.killed ? "ON" : "off", f.retired ? "retired" : "active", t,
           why[0] ? why : "-");
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    json_decref(arr);
    return cv_cmd_end(r, CMD, db_error(r, "list flags"));
  }
  sy_stmt_reset(s);
  if ((rc = cv_cmd_end(r, CMD, 0))) {
    json_decref(arr);
    return rc;
  }
  if (a->json) {
    cv_print_json(arr);
  }
  return 0;
}

/* One row of CVQ_OVERRIDES_OF, appended to arr (JSON) or printed. */
static void override_row(sy_stmt *s, json_t *arr) {
  const char *reason = sy_stmt_column_text(s, 3);
  char t[32];
  if (arr) {
    json_array_append_new(
        arr,
        json_pack("{s:s, s:s, s:s?, s:s?, s:I}", "subject",
                  sy_stmt_column_text(s, 0), "kind", sy_stmt_column_text(s, 1),
                  "actor", sy_stmt_column_text(s, 2), "reason", reason, "at",
                  (json_int_t)sy_stmt_column_int(s, 4)));
    return;
  }
  cv_fmt_time(sy_stmt_column_int(s, 4), t, sizeof t);
  printf("%-24s %-8s %s  by %s%s%s\n", sy_stmt_column_text(s, 0),
         sy_stmt_column_text(s, 1), t, sy_stmt_column_text(s, 2),
         reason ? ": " : "", reason ? (const char *)reason : "");
}

/* One row of CVQ_AUDIT_OF, appended to arr (JSON) or printed. */
static void audit_row(sy_stmt *s, json_t *arr) {
  const char *subject = sy_stmt_column_text(s, 2);
  const char *oldv = sy_stmt_column_text(s, 3);
  const char *reason = sy_stmt_column_text(s, 5);
  char t[32];
  if (arr) {
    json_array_append_new(
        arr, json_pack("{s:I, s:s, s:s?, s:s?, s:s?, s:s?, s:s?, s:I}", "id",
                       (json_int_t)sy_stmt_column_int(s, 0), "what",
                       sy_stmt_column_text(s, 1), "subject", subject, "old",
                       oldv, "new", sy_stmt_column_text(s, 4), "reason", reason,
                       "actor", sy_stmt_column_text(s, 6), "at",
                       (json_int_t)sy_stmt_column_int(s, 7)));
    if (!sy_stmt_column_null(s, 8)) {
      json_t *n = json_loads(sy_stmt_column_text(s, 8), 0, NULL);
      if (n) {
        json_object_set_new(json_array_get(arr, json_array_size(arr) - 1),
                            "numbers", n);
      }
    }
    return;
  }
  cv_fmt_time(sy_stmt_column_int(s, 7), t, sizeof t);
  printf("%s  %-8s %s%s%s%s -> %s  by %s%s%s\n", t, sy_stmt_column_text(s, 1),
         subject ? "subject " : "", subject ? (const char *)subject : "",
         subject ? ": " : "", oldv ? (const char *)oldv : "-",
         sy_stmt_column_text(s, 4), sy_stmt_column_text(s, 6),
         reason ? ": " : "", reason ? (const char *)reason : "");
}

/* Lists the rows statement q (CVQ_AUDIT_OF or CVQ_OVERRIDES_OF) has for
 * the flag argument, one by one through row. */
static int list_of_flag(cv_router *r, const args *a, int q,
                        void (*row)(sy_stmt *, json_t *)) {
  flag_row f;
  sy_stmt *s;
  json_t *arr = NULL;
  int rc;
  if ((rc = flag_arg(r, a, 1, &f, 1))) {
    return rc;
  }
  if (!(s = on_flag(r, q, a->pos[0]))) {
    return db_error(r, "read history");
  }
  if (a->json) {
    arr = json_array();
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    row(s, arr);
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    json_decref(arr);
    return db_error(r, "read history");
  }
  sy_stmt_reset(s);
  if (a->json) {
    cv_print_json(arr);
  }
  return 0;
}

static int cmd_history(cv_router *r, const args *a) {
  return list_of_flag(r, a, CVQ_AUDIT_OF, audit_row);
}

static int cmd_overrides(cv_router *r, const args *a) {
  return list_of_flag(r, a, CVQ_OVERRIDES_OF, override_row);
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
  if (strcmp(cmd, "plan") == 0) {
    return cv_cmd_plan(r, argc, argv);
  }
  if (strcmp(cmd, "notify") == 0) {
    return cv_cmd_notify(r, argc, argv);
  }
  if (strcmp(cmd, "notifications") == 0) {
    return cv_cmd_notifications(r, argc, argv);
  }
  if ((rc = parse_args(argc, argv, &a))) {
    return rc;
  }
  if (a.dry_run && strcmp(cmd, "set") != 0 && strcmp(cmd, "kill") != 0 &&
      strcmp(cmd, "unkill") != 0) {
    return usage_error("--dry-run is for set, kill and unkill, not %s", cmd);
  }
  if (a.window && !a.dry_run) {
    return usage_error("--window goes with --dry-run");
  }
  if (a.budget && strcmp(cmd, "shadow") != 0) {
    return usage_error("--budget goes with shadow");
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
  if (strcmp(cmd, "shadow") == 0) {
    return cmd_shadow(r, &a);
  }
  if (strcmp(cmd, "history") == 0) {
    return cmd_history(r, &a);
  }
  if (strcmp(cmd, "overrides") == 0) {
    return cmd_overrides(r, &a);
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
