/* `switchyard serve`: the database over HTTP (libmicrohttpd). A JSON API
 * under /api/ with the CLI's --json documents, and /metrics in
 * Prometheus' text format (the engine's own, then each plugin's). Reads
 * need nothing; writes (retry, cancel) need `Authorization: Bearer` with
 * the token of --token-file. It listens on loopback unless told otherwise,
 * and refuses another address without a token file.
 *
 * One thread of libmicrohttpd's answers every request in turn, on one
 * engine (no loop runs: serve never claims work); the main thread only
 * waits for SIGINT or SIGTERM. */
#include <arpa/inet.h>
#include <getopt.h>
#include <graphviz/gvc.h>
#include <limits.h>
#include <microhttpd.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "error.h"
#include "plugins.h"

#define MAX_URL 1024
#define MAX_TOKEN 4096

typedef struct server {
  sy_engine *e;
  /* Graphviz, made once: a context made after another was freed reads
   * freed memory in Debian's libgvc (its pango plugin's font cache). */
  GVC_t *gvc;
  char token[MAX_TOKEN]; /* "": writes refused */
} server;

/* ---------------------------------------------------------------------
 * Responses */

typedef struct text {
  char *s;
  size_t len, cap;
  int failed;
  server *sv; /* pages: whose plugins to link to */
} text;

static void put(void *ud, const char *s) {
  text *t = ud;
  size_t n = strlen(s);
  if (t->failed) {
    return;
  }
  if (t->len + n + 1 > t->cap) {
    size_t cap = t->cap ? t->cap : 4096;
    char *p;
    while (cap < t->len + n + 1) {
      cap *= 2;
    }
    if (!(p = realloc(t->s, cap))) {
      t->failed = 1;
      return;
    }
    t->s = p;
    t->cap = cap;
  }
  memcpy(t->s + t->len, s, n + 1);
  t->len += n;
}

static enum MHD_Result send_text(struct MHD_Connection *conn,
                                 unsigned int status, const char *type,
                                 const char *body, size_t len) {
  struct MHD_Response *r =
      MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
  enum MHD_Result ok;
  if (!r) {
    return MHD_NO;
  }
  MHD_add_response_header(r, "Content-Type", type);
  MHD_add_response_header(r, "Cache-Control", "no-store");
  MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
  if (status == MHD_HTTP_UNAUTHORIZED) {
    MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
  } else if (status == MHD_HTTP_METHOD_NOT_ALLOWED) {
    MHD_add_response_header(r, "Allow", "GET, HEAD, POST");
  }
  ok = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return ok;
}

/* Sends j (and frees it). */
static enum MHD_Result send_json(struct MHD_Connection *conn,
                                 unsigned int status, json_t *j) {
  char *s = j ? json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER) : NULL;
  enum MHD_Result ok;
  json_decref(j);
  if (!s) {
    static const char oom[] = "{\"error\": \"out of memory\"}\n";
    return send_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "application/json",
                     oom, sizeof oom - 1);
  }
  {
    size_t n = strlen(s);
    char *body = realloc(s, n + 2);
    if (body) {
      s = body;
      s[n++] = '\n';
      s[n] = '\0';
    }
    ok = send_text(conn, status, "application/json", s, n);
  }
  free(s);
  return ok;
}

static enum MHD_Result send_error(struct MHD_Connection *conn,
                                  unsigned int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static enum MHD_Result send_error(struct MHD_Connection *conn,
                                  unsigned int status, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  return send_json(conn, status, json_pack("{s:s}", "error", msg));
}

/* ---------------------------------------------------------------------
 * Arguments */

/* A positive id of at most 18 digits, the whole string. */
static int parse_id(const char *s, int64_t *id) {
  long long v = 0;
  size_t n = strspn(s, "0123456789");
  if (n == 0 || n > 18 || s[n] != '\0') {
    return -1;
  }
  v = strtoll(s, NULL, 10);
  if (v <= 0) {
    return -1;
  }
  *id = v;
  return 0;
}

static const char *query(struct MHD_Connection *conn, const char *key) {
  return MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, key);
}

/* ---------------------------------------------------------------------
 * /metrics */

/* A label value as the text format wants it: \\, \" and \n escaped. */
static void put_label(text *t, const char *v) {
  char buf[2];
  buf[1] = '\0';
  for (const char *p = v ? v : ""; *p; p++) {
    if (*p == '\\' || *p == '"') {
      put(t, *p == '\\' ? "\\\\" : "\\\"");
    } else if (*p == '\n') {
      put(t, "\\n");
    } else {
      buf[0] = *p;
      put(t, buf);
    }
  }
}

static void put_int(text *t, long long v) {
  char buf[32];
  snprintf(buf, sizeof buf, " %lld\n", v);
  put(t, buf);
}

static int engine_metrics(server *sv, text *t) {
  sy_store *st = sy_engine_store(sv->e);
  json_t *status = sy__cli_status_json(st);
  const char *wf, *state;
  json_t *counts, *n;
  sy_stmt *s;
  int rc;
  if (!status) {
    return SY_ESTORE;
  }
  put(t,
      "# HELP switchyard_instances Instances by workflow and state.\n"
      "# TYPE switchyard_instances gauge\n");
  json_object_foreach(status, wf, counts) {
    json_object_foreach(counts, state, n) {
      put(t, "switchyard_instances{workflow=\"");
      put_label(t, wf);
      put(t, "\",state=\"");
      put_label(t, state);
      put(t, "\"}");
      put_int(t, (long long)json_integer_value(n));
    }
  }
  json_decref(status);
  put(t,
      "# HELP switchyard_incidents_open Open incidents by workflow and "
      "step.\n"
      "# TYPE switchyard_incidents_open gauge\n");
  s = sy_store_prepare(
      st, &(sy_sql){"SELECT i.workflow, n.step, count(*) FROM incidents n "
                    "JOIN instances i ON i.id = n.instance_id "
                    "WHERE n.resolved_at IS NULL "
                    "GROUP BY i.workflow, n.step ORDER BY 1, 2",
                    NULL});
  if (!s) {
    return SY_ESTORE;
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    put(t, "switchyard_incidents_open{workflow=\"");
    put_label(t, sy_stmt_column_text(s, 0));
    put(t, "\",step=\"");
    put_label(t, sy_stmt_column_text(s, 1));
    put(t, "\"}");
    put_int(t, (long long)sy_stmt_column_int(s, 2));
  }
  sy_stmt_finalize(s);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  put(t,
      "# HELP switchyard_engines Engines registered on the database (a "
      "running engine, or one that died since its lease last ran).\n"
      "# TYPE switchyard_engines gauge\nswitchyard_engines");
  s = sy_store_prepare(st, &(sy_sql){"SELECT count(*) FROM engines", NULL});
  rc = !s || sy_stmt_step(s) != SY_ROW ? SY_ESTORE : 0;
  if (!rc) {
    put_int(t, (long long)sy_stmt_column_int(s, 0));
  }
  sy_stmt_finalize(s);
  return rc;
}

static enum MHD_Result metrics(server *sv, struct MHD_Connection *conn) {
  text t = {0};
  enum MHD_Result ok;
  int rc = engine_metrics(sv, &t);
  if (!rc) {
    rc = sy_plugins_metrics(sy_engine_plugins(sv->e), put, &t);
  }
  if (rc || t.failed) {
    free(t.s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "metrics: %s",
                      rc == SY_EPLUGIN || t.failed
                          ? "a plugin failed, or memory ran out"
                          : sy_store_errmsg(sy_engine_store(sv->e)));
  }
  ok = send_text(conn, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8",
                 t.s ? t.s : "", t.len);
  free(t.s);
  return ok;
}

/* ---------------------------------------------------------------------
 * /api/ */

static enum MHD_Result store_failed(server *sv, struct MHD_Connection *conn) {
  return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s",
                    sy_store_errmsg(sy_engine_store(sv->e)));
}

static enum MHD_Result api_instances(server *sv, struct MHD_Connection *conn) {
  sy_instance_filter f = {.state = query(conn, "state"),
                          .workflow = query(conn, "workflow"),
                          .step = query(conn, "step"),
                          .limit = 100};
  const char *limit = query(conn, "limit"), *after = query(conn, "after");
  json_t *j;
  if (limit && (strcmp(limit, "0") == 0 ? (f.limit = 0, 0)
                                        : parse_id(limit, &f.limit))) {
    return send_error(conn, MHD_HTTP_BAD_REQUEST,
                      "limit: expected a count (0: all), got '%.100s'", limit);
  }
  if (after && parse_id(after, &f.after)) {
    return send_error(conn, MHD_HTTP_BAD_REQUEST,
                      "after: expected an instance id, got '%.100s'", after);
  }
  if (!(j = sy__cli_instances_json(sy_engine_store(sv->e), &f))) {
    return store_failed(sv, conn);
  }
  return send_json(conn, MHD_HTTP_OK, j);
}

/* Checks the request's bearer token: 0 when it may write, else the status
 * already sent. */
static int may_write(server *sv, struct MHD_Connection *conn,
                     enum MHD_Result *sent) {
  const char *auth =
      MHD_lookup_connection_value(conn, MHD_HEADER_KIND, "Authorization");
  size_t n = strlen(sv->token), have;
  unsigned char diff = 0;
  if (!sv->token[0]) {
    *sent = send_error(conn, MHD_HTTP_FORBIDDEN,
                       "writes need a token: start serve with --token-file");
    return -1;
  }
  if (!auth || strncmp(auth, "Bearer ", 7) != 0) {
    *sent = send_error(conn, MHD_HTTP_UNAUTHORIZED,
                       "this changes the database: send Authorization: "
                       "Bearer <token>");
    return -1;
  }
  auth += 7;
  have = strlen(auth);
  /* The same time whatever the token's first difference. */
  for (size_t i = 0; i < n; i++) {
    diff |= (unsigned char)(sv->token[i] ^ (i < have ? auth[i] : 0));
  }
  if (diff || have != n) {
    *sent = send_error(conn, MHD_HTTP_UNAUTHORIZED, "wrong token");
    return -1;
  }
  return 0;
}

static enum MHD_Result api_change(server *sv, struct MHD_Connection *conn,
                                  int64_t id, const char *what) {
  enum MHD_Result sent;
  int rc;
  if (may_write(sv, conn, &sent)) {
    return sent;
  }
  rc = strcmp(what, "retry") == 0 ? sy_engine_retry(sv->e, &id, 1)
                                  : sy_engine_cancel(sv->e, id);
  if (rc) {
    return send_error(conn,
                      rc == SY_ENOTFOUND ? MHD_HTTP_NOT_FOUND
                      : rc == SY_ESTATE  ? MHD_HTTP_CONFLICT
                                         : MHD_HTTP_INTERNAL_SERVER_ERROR,
                      "%s", sy_engine_errmsg(sv->e));
  }
  return send_json(
      conn, MHD_HTTP_OK,
      json_pack("{s:I, s:s}", "instance", (json_int_t)id, "done",
                strcmp(what, "retry") == 0 ? "retried" : "cancelled"));
}

static enum MHD_Result plugin_page(server *sv, struct MHD_Connection *conn,
                                   const char *url, const char *method);

static enum MHD_Result api(server *sv, struct MHD_Connection *conn,
                           const char *url, const char *method) {
  const char *path = url + 5;
  int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
  char id_text[32], what[16];
  int64_t id;
  int found;
  json_t *j;
  if (strcmp(path, "status") == 0 || strcmp(path, "incidents") == 0 ||
      strcmp(path, "instances") == 0) {
    if (post) {
      return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                        "/api/%s is read with GET", path);
    }
    if (path[1] == 'n' && path[2] == 's') { /* instances */
      return api_instances(sv, conn);
    }
    j = path[0] == 's' ? sy__cli_status_json(sy_engine_store(sv->e))
                       : sy__cli_incidents_json(sy_engine_store(sv->e),
                                                query(conn, "all") != NULL);
    return j ? send_json(conn, MHD_HTTP_OK, j) : store_failed(sv, conn);
  }
  /* instances/ID and instances/ID/(retry|cancel) */
  if (strncmp(path, "instances/", 10) == 0) {
    const char *rest = path + 10, *slash = strchr(rest, '/');
    size_t n = slash ? (size_t)(slash - rest) : strlen(rest);
    if (n >= sizeof id_text) {
      return send_error(conn, MHD_HTTP_BAD_REQUEST, "not an instance id");
    }
    memcpy(id_text, rest, n);
    id_text[n] = '\0';
    if (parse_id(id_text, &id)) {
      return send_error(conn, MHD_HTTP_BAD_REQUEST,
                        "not an instance id: '%.40s'", id_text);
    }
    if (!slash) {
      if (post) {
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "an instance is read with GET; POST to "
                          "/api/instances/%lld/retry or /cancel",
                          (long long)id);
      }
      if (!(j = sy__cli_show_json(sv->e, id, 1, &found))) {
        return store_failed(sv, conn);
      }
      if (!found) {
        json_decref(j);
        return send_error(conn, MHD_HTTP_NOT_FOUND, "no instance %lld",
                          (long long)id);
      }
      return send_json(conn, MHD_HTTP_OK, j);
    }
    snprintf(what, sizeof what, "%.15s", slash + 1);
    if (strcmp(slash + 1, "retry") == 0 || strcmp(slash + 1, "cancel") == 0) {
      if (!post) {
        return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                          "%s changes the instance: use POST", what);
      }
      return api_change(sv, conn, id, what);
    }
  }
  return plugin_page(sv, conn, url, method);
}

/* ---------------------------------------------------------------------
 * Pages: HTML drawn on the server from the API's documents (nothing
 * fetched from elsewhere; the one script is the incidents page's actions),
 * so a page shows what the API says. */

/* Text as HTML: &, <, >, " and ' escaped (plugins' pages too, through
 * sy_http_response.put_html). Runs of plain bytes go out in one piece. */
static void put_escaped(void *ud, const char *s) {
  char run[256];
  size_t n = 0;
  for (const char *p = s ? s : "";; p++) {
    const char *e = NULL;
    switch (*p) {
      case '&':
        e = "&amp;";
        break;
      case '<':
        e = "&lt;";
        break;
      case '>':
        e = "&gt;";
        break;
      case '"':
        e = "&quot;";
        break;
      case '\'':
        e = "&#39;";
        break;
      case '\0':
        e = "";
        break;
      default:
        run[n++] = *p;
    }
    if (e || n == sizeof run - 1) {
      run[n] = '\0';
      put(ud, run);
      n = 0;
    }
    if (e) {
      if (!*p) {
        return;
      }
      put(ud, e);
    }
  }
}

static void put_html(text *t, const char *s) {
  put_escaped(t, s);
}

static void put_fmt(text *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void put_fmt(text *t, const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  put(t, buf);
}

static void nav_link(void *ud, const char *path, const char *label) {
  text *t = ud;
  put(t, "<a href=\"");
  put_html(t, path);
  put(t, "\">");
  put_html(t, label);
  put(t, "</a>");
}

static void page_head(text *t, const char *title) {
  put(t,
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width\">"
      "<link rel=\"icon\" href=\"data:,\">"
      "<title>");
  put_html(t, title);
  put(t,
      " - switchyard</title><style>"
      "body{font:14px/1.4 system-ui,sans-serif;margin:1.5em 2em;"
      "color:#222}"
      "nav a{margin-right:1em}h1{font-size:1.4em}"
      "table{border-collapse:collapse;margin:.5em 0 1.5em}"
      "th,td{border-bottom:1px solid #ddd;padding:.25em .8em;"
      "text-align:left;vertical-align:top}"
      "td.n{text-align:right;font-variant-numeric:tabular-nums}"
      "pre{background:#f6f6f6;padding:.6em;overflow:auto}"
      ".incident{color:#b00}</style></head><body>"
      "<nav><a href=\"/\">Overview</a><a href=\"/incidents\">Incidents"
      "</a>");
  sy_plugins_pages(sy_engine_plugins(t->sv->e), nav_link, t);
  put(t, "<a href=\"/metrics\">Metrics</a></nav><h1>");
  put_html(t, title);
  put(t, "</h1>\n");
}

static enum MHD_Result send_page(struct MHD_Connection *conn, text *t) {
  enum MHD_Result ok;
  put(t, "</body></html>\n");
  if (t->failed) {
    free(t->s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
  }
  ok = send_text(conn, MHD_HTTP_OK, "text/html; charset=utf-8", t->s, t->len);
  free(t->s);
  return ok;
}

static const char *const states[] = {"ready",    "running",   "waiting",
                                     "incident", "completed", "cancelled"};

static int put_sections(server *sv, struct MHD_Connection *conn,
                        const char *path, text *t);

static enum MHD_Result page_overview(server *sv, struct MHD_Connection *conn) {
  sy_store *st = sy_engine_store(sv->e);
  json_t *status = sy__cli_status_json(st), *counts;
  const char *wf;
  text t = {.sv = sv};
  sy_stmt *s;
  if (!status) {
    return store_failed(sv, conn);
  }
  page_head(&t, "Overview");
  put(&t, "<h2>Instances</h2><table id=\"instances\"><tr><th>workflow</th>");
  for (size_t i = 0; i < 6; i++) {
    put_fmt(&t, "<th>%s</th>", states[i]);
  }
  put(&t, "</tr>\n");
  json_object_foreach(status, wf, counts) {
    put(&t, "<tr data-workflow=\"");
    put_html(&t, wf);
    put(&t, "\"><td><a href=\"/workflows/");
    put_html(&t, wf);
    put(&t, "\">");
    put_html(&t, wf);
    put(&t, "</a></td>");
    for (size_t i = 0; i < 6; i++) {
      long long n = json_integer_value(json_object_get(counts, states[i]));
      put_fmt(&t, "<td class=\"n\" data-state=\"%s\">", states[i]);
      if (n && strcmp(states[i], "incident") == 0) {
        put_fmt(&t, "<a class=\"incident\" href=\"/incidents\">%lld</a></td>",
                n);
      } else {
        put_fmt(&t, "%lld</td>", n);
      }
    }
    put(&t, "</tr>\n");
  }
  put(&t, "</table>\n");
  json_decref(status);
  if (put_sections(sv, conn, "/", &t)) {
    free(t.s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                      "/ failed: see serve's log");
  }
  put(&t,
      "<h2>Engines</h2><table id=\"engines\"><tr><th>engine"
      "</th><th>host</th><th>pid</th><th>started</th><th>last heartbeat"
      "</th><th>leases held</th></tr>\n");
  /* Leases: running instances, found through the index on state. */
  s = sy_store_prepare(
      st, &(sy_sql){"SELECT e.id, e.host, e.pid, e.started_at, "
                    "e.heartbeat_at, (SELECT count(*) FROM instances i "
                    "WHERE i.state = 'running' AND i.owner = e.id) "
                    "FROM engines e ORDER BY e.id",
                    NULL});
  while (s && sy_stmt_step(s) == SY_ROW) {
    char t1[32], t2[32];
    sy__cli_time(sy_stmt_column_int(s, 3), t1, sizeof t1);
    sy__cli_time(sy_stmt_column_int(s, 4), t2, sizeof t2);
    put(&t, "<tr><td>");
    put_html(&t, sy_stmt_column_text(s, 0));
    put(&t, "</td><td>");
    put_html(&t, sy_stmt_column_text(s, 1));
    put_fmt(&t,
            "</td><td class=\"n\">%lld</td><td>%s</td><td>%s</td>"
            "<td class=\"n\" data-leases>%lld</td></tr>\n",
            (long long)sy_stmt_column_int(s, 2), t1, t2,
            (long long)sy_stmt_column_int(s, 5));
  }
  sy_stmt_finalize(s);
  put(&t, "</table>\n");
  return send_page(conn, &t);
}

static void put_incident_rows(text *t, json_t *incidents, int with_instance) {
  size_t i;
  json_t *inc;
  put(t, "<table id=\"incidents\"><tr><th>id</th>");
  if (with_instance) {
    put(t, "<th>instance</th><th>workflow</th>");
  }
  put(t, "<th>step</th><th>raised</th><th>error</th><th>resolution</th>");
  put(t, with_instance ? "<th></th></tr>\n" : "</tr>\n");
  json_array_foreach(incidents, i, inc) {
    char when[32];
    const char *res = json_string_value(json_object_get(inc, "resolution"));
    sy__cli_time(json_integer_value(json_object_get(inc, "raised_at")), when,
                 sizeof when);
    put_fmt(t, "<tr><td class=\"n\">%lld</td>",
            (long long)json_integer_value(json_object_get(inc, "id")));
    if (with_instance) {
      long long id = json_integer_value(json_object_get(inc, "instance"));
      put_fmt(t,
              "<td class=\"n\"><a href=\"/instances/%lld\">%lld</a></td><td>",
              id, id);
      put_html(t, json_string_value(json_object_get(inc, "workflow")));
      put(t, "</td>");
    }
    put(t, "<td>");
    put_html(t, json_string_value(json_object_get(inc, "step")));
    put_fmt(t, "</td><td>%s</td><td class=\"incident\">", when);
    put_html(t, json_string_value(json_object_get(inc, "error")));
    put(t, "</td><td>");
    put_html(t, res ? res : "open");
    put(t, "</td>");
    if (with_instance) {
      put(t, "<td>");
      if (!res) {
        long long id = json_integer_value(json_object_get(inc, "instance"));
        put_fmt(t,
                "<button data-retry=\"%lld\">Retry</button> "
                "<button data-cancel=\"%lld\">Cancel</button>",
                id, id);
      }
      put(t, "</td>");
    }
    put(t, "</tr>\n");
  }
  put(t, "</table>\n");
}

/* ---------------------------------------------------------------------
 * A workflow's page: its definition's graph laid out by Graphviz, with
 * per step the instances there now and the incidents raised there. */

typedef struct step_counts {
  char step[256];
  long long now[4]; /* ready, running, waiting, incident */
  long long raised, open;
} step_counts;

typedef struct graph_ctx {
  text *dot;
  const sy_workflow *wf;
  step_counts *c;
  int n;
  int rc; /* an edge's note failed (SY_E*) */
} graph_ctx;

static step_counts *counts_of(graph_ctx *g, const char *step) {
  for (int i = 0; i < g->n; i++) {
    if (strcmp(g->c[i].step, step) == 0) {
      return &g->c[i];
    }
  }
  return NULL;
}

/* A DOT string's inside: \ and " escaped, control characters dropped. */
static void put_dot(text *t, const char *s) {
  char buf[2] = {0, 0};
  for (const char *p = s ? s : ""; *p; p++) {
    if (*p == '"' || *p == '\\') {
      put(t, *p == '"' ? "\\\"" : "\\\\");
    } else if (*p == '\n') {
      put(t, "\\n"); /* a line break in a label */
    } else if ((unsigned char)*p >= 0x20) {
      buf[0] = *p;
      put(t, buf);
    }
  }
}

/* An edge, labelled but for a plain next, with what the node it leaves
 * says of it (a plugin's edge_note) on a second line. */
static void dot_edge(void *ud, const char *from, const char *to,
                     const char *label) {
  graph_ctx *g = ud;
  const sy_step *s = sy_workflow_step(g->wf, from);
  char note[200] = "";
  if (s && s->node && s->node->type->edge_note && !g->rc) {
    g->rc = s->node->type->edge_note(s->node->plugin->state, s->node_data,
                                     g->wf->name, label, note, sizeof note);
  }
  put(g->dot, "  \"");
  put_dot(g->dot, from);
  put(g->dot, "\" -> \"");
  put_dot(g->dot, to);
  put(g->dot, "\"");
  if (strcmp(label, "next") != 0) {
    put(g->dot, " [label=\"");
    put_dot(g->dot, label);
    if (note[0]) {
      put(g->dot, "\\n");
      put_dot(g->dot, note);
    }
    put(g->dot, "\", fontcolor=\"#555555\"]");
  }
  put(g->dot, ";\n");
}

/* Reads the counts of wf's steps: 0, or an SY_E* code. */
static int read_counts(sy_store *st, const sy_workflow *wf, graph_ctx *g) {
  static const char *const now_states[] = {"ready", "running", "waiting",
                                           "incident"};
  sy_stmt *s;
  int rc = SY_DONE;
  g->n = wf->nsteps;
  if (!(g->c = calloc((size_t)wf->nsteps, sizeof *g->c))) {
    return SY_ENOMEM;
  }
  for (int i = 0; i < wf->nsteps; i++) {
    snprintf(g->c[i].step, sizeof g->c[i].step, "%s", wf->steps[i].name);
  }
  s = sy_store_prepare(
      st, &(sy_sql){"SELECT step, state, count(*) FROM instances "
                    "WHERE workflow = ?1 AND def_hash = ?2 AND state IN "
                    "('ready', 'running', 'waiting', 'incident') "
                    "GROUP BY step, state",
                    NULL});
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, wf->name);
  sy_stmt_bind_text(s, 2, wf->hash);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    step_counts *c = counts_of(g, sy_stmt_column_text(s, 0));
    for (int k = 0; c && k < 4; k++) {
      if (strcmp(sy_stmt_column_text(s, 1), now_states[k]) == 0) {
        c->now[k] = sy_stmt_column_int(s, 2);
      }
    }
  }
  sy_stmt_finalize(s);
  if (rc != SY_DONE) {
    return SY_ESTORE;
  }
  s = sy_store_prepare(
      st, &(sy_sql){"SELECT i.step, count(*), "
                    "sum(CASE WHEN i.resolved_at IS NULL THEN 1 ELSE 0 END) "
                    "FROM incidents i JOIN instances n ON n.id = i.instance_id "
                    "WHERE n.workflow = ?1 AND n.def_hash = ?2 GROUP BY i.step",
                    NULL});
  if (!s) {
    return SY_ESTORE;
  }
  sy_stmt_bind_text(s, 1, wf->name);
  sy_stmt_bind_text(s, 2, wf->hash);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    step_counts *c = counts_of(g, sy_stmt_column_text(s, 0));
    if (c) {
      c->raised = sy_stmt_column_int(s, 1);
      c->open = sy_stmt_column_int(s, 2);
    }
  }
  sy_stmt_finalize(s);
  return rc == SY_DONE ? 0 : SY_ESTORE;
}

/* The definition's graph in DOT, each step labelled with its counts. */
static void graph_dot(server *sv, const sy_workflow *wf, graph_ctx *g) {
  char line[200];
  put(g->dot,
      "digraph workflow {\n  rankdir=TB; bgcolor=\"transparent\";\n"
      "  node [shape=box, style=\"rounded,filled\", "
      "fillcolor=\"#ffffff\", fontname=\"sans-serif\", fontsize=11];\n"
      "  edge [fontname=\"sans-serif\", fontsize=10];\n"
      "  \" start\" [shape=circle, label=\"\", width=0.2, "
      "fillcolor=\"#222222\"];\n  \" start\" -> \"");
  put_dot(g->dot, wf->start->name);
  put(g->dot, "\";\n");
  for (int i = 0; i < g->n; i++) {
    const step_counts *c = &g->c[i];
    put(g->dot, "  \"");
    put_dot(g->dot, c->step);
    put(g->dot, "\" [label=\"");
    put_dot(g->dot, c->step);
    snprintf(line, sizeof line,
             "\\nnow: %lld ready, %lld running, %lld waiting"
             "\\nincidents: %lld open, %lld raised\"",
             c->now[0], c->now[1], c->now[2], c->open, c->raised);
    put(g->dot, line);
    if (c->open) {
      put(g->dot, ", fillcolor=\"#fde0e0\", color=\"#bb0000\"");
    }
    put(g->dot, "];\n");
  }
  sy_engine_workflow_edges(sv->e, wf, dot_edge, g);
  put(g->dot, "}\n");
}

/* DOT to SVG with libgvc; the <svg> element, malloc'd, or NULL. */
static char *render_svg(server *sv, const char *dot) {
  GVC_t *gvc = sv->gvc ? sv->gvc : (sv->gvc = gvContext());
  Agraph_t *g = gvc ? agmemread(dot) : NULL;
  char *data = NULL, *svg = NULL;
  unsigned int len = 0;
  if (g && gvLayout(gvc, g, "dot") == 0) {
    if (gvRenderData(gvc, g, "svg", &data, &len) == 0 && data) {
      const char *start = strstr(data, "<svg");
      svg = start ? strdup(start) : NULL;
      gvFreeRenderData(data);
    }
    gvFreeLayout(gvc, g);
  }
  if (g) {
    agclose(g);
  }
  return svg;
}

static enum MHD_Result page_workflow(server *sv, struct MHD_Connection *conn,
                                     const char *name) {
  sy_store *st = sy_engine_store(sv->e);
  const char *want = query(conn, "definition");
  char hash[80] = "", title[300];
  text t = {.sv = sv}, dot = {0};
  graph_ctx g = {.dot = &dot};
  const sy_workflow *wf;
  sy_stmt *s;
  char *svg;
  int rc;
  snprintf(title, sizeof title, "Workflow %.200s", name);
  page_head(&t, title);
  put(&t,
      "<h2>Definitions</h2><table id=\"definitions\"><tr><th>hash</th>"
      "<th>stored</th><th>path</th></tr>\n");
  s = sy_store_prepare(st, &(sy_sql){"SELECT hash, created_at, path FROM "
                                     "definitions WHERE workflow = ?1 "
                                     "ORDER BY created_at DESC, hash",
                                     NULL});
  if (!s) {
    free(t.s);
    return store_failed(sv, conn);
  }
  sy_stmt_bind_text(s, 1, name);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *h = sy_stmt_column_text(s, 0);
    char when[32];
    if (!hash[0] || (want && strcmp(want, h) == 0)) {
      snprintf(hash, sizeof hash, "%s", h);
    }
    sy__cli_time(sy_stmt_column_int(s, 1), when, sizeof when);
    put(&t, "<tr><td><a href=\"?definition=");
    put_html(&t, h);
    put(&t, "\"><code>");
    put_html(&t, h);
    put_fmt(&t, "</code></a></td><td>%s</td><td>", when);
    put_html(&t, sy_stmt_column_text(s, 2));
    put(&t, "</td></tr>\n");
  }
  sy_stmt_finalize(s);
  if (rc != SY_DONE) {
    free(t.s);
    return store_failed(sv, conn);
  }
  put(&t, "</table>\n");
  if (!hash[0]) {
    free(t.s);
    return send_error(conn, MHD_HTTP_NOT_FOUND, "no workflow '%.200s'", name);
  }
  if (want && strcmp(want, hash) != 0) {
    free(t.s);
    return send_error(conn, MHD_HTTP_NOT_FOUND,
                      "no definition '%.80s' of workflow '%.200s'", want, name);
  }
  if (!(wf = sy_engine_definition(sv->e, hash))) {
    free(t.s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "%s",
                      sy_engine_errmsg(sv->e));
  }
  if ((rc = read_counts(st, wf, &g))) {
    free(g.c);
    free(t.s);
    return store_failed(sv, conn);
  }
  g.wf = wf;
  graph_dot(sv, wf, &g);
  if (g.rc) {
    free(g.c);
    free(dot.s);
    free(t.s);
    return store_failed(sv, conn);
  }
  svg = dot.failed ? NULL : render_svg(sv, dot.s);
  put_fmt(&t, "<h2>Definition <code>%.12s</code></h2>\n<div id=\"graph\">",
          hash);
  put(&t, svg ? svg : "<p>(Graphviz could not draw it)</p>");
  put(&t,
      "</div>\n<table id=\"steps\"><tr><th>step</th><th>ready</th>"
      "<th>running</th><th>waiting</th><th>in incident</th>"
      "<th>incidents raised</th></tr>\n");
  for (int i = 0; i < g.n; i++) {
    put(&t, "<tr data-step=\"");
    put_html(&t, g.c[i].step);
    put(&t, "\"><td>");
    put_html(&t, g.c[i].step);
    put_fmt(&t,
            "</td><td class=\"n\" data-now=\"ready\">%lld</td>"
            "<td class=\"n\" data-now=\"running\">%lld</td>"
            "<td class=\"n\" data-now=\"waiting\">%lld</td>"
            "<td class=\"n\" data-now=\"incident\">%lld</td>"
            "<td class=\"n\" data-raised>%lld</td></tr>\n",
            g.c[i].now[0], g.c[i].now[1], g.c[i].now[2], g.c[i].now[3],
            g.c[i].raised);
  }
  put(&t, "</table>\n");
  free(svg);
  free(dot.s);
  free(g.c);
  return send_page(conn, &t);
}

/* Retry and cancel from the incidents page: the API's POST with the token
 * typed in, and what it answered shown. */
static const char actions_script[] =
    "<script>\n"
    "document.addEventListener('click', async (ev) => {\n"
    "  const b = ev.target.closest('button[data-retry],button[data-cancel]');\n"
    "  if (!b) return;\n"
    "  const what = b.dataset.retry ? 'retry' : 'cancel';\n"
    "  const id = b.dataset.retry || b.dataset.cancel;\n"
    "  const out = document.getElementById('result');\n"
    "  const r = await fetch('/api/instances/' + id + '/' + what, {\n"
    "    method: 'POST',\n"
    "    headers: {Authorization: 'Bearer ' +\n"
    "              document.getElementById('token').value}});\n"
    "  const body = await r.json();\n"
    "  out.dataset.status = r.status;\n"
    "  out.textContent = r.ok ? 'instance ' + id + ': ' + body.done\n"
    "                         : r.status + ': ' + body.error;\n"
    "});\n"
    "</script>\n";

/* The incidents a page lists: the first PAGE_ROWS. */
#define PAGE_ROWS 100

static int first_incidents(void *ud, const sy_incident_row *r) {
  json_t *arr = ud;
  return json_array_size(arr) >= PAGE_ROWS || sy__cli_print_incident(arr, r);
}

static enum MHD_Result page_incidents(server *sv, struct MHD_Connection *conn) {
  int all = query(conn, "all") != NULL;
  sy_store *st = sy_engine_store(sv->e);
  json_t *j = json_array();
  text t = {.sv = sv};
  long long n = -1;
  sy_stmt *s =
      sy_store_prepare(st, &(sy_sql){"SELECT count(*) FROM incidents "
                                     "WHERE ?1 = 0 OR resolved_at IS NULL",
                                     NULL});
  if (s) {
    sy_stmt_bind_int(s, 1, !all);
    if (sy_stmt_step(s) == SY_ROW) {
      n = sy_stmt_column_int(s, 0);
    }
    sy_stmt_finalize(s);
  }
  if (n < 0 || sy_store_list_incidents(st, !all, 0, first_incidents, j)) {
    json_decref(j);
    return store_failed(sv, conn);
  }
  page_head(&t, all ? "Incidents" : "Open incidents");
  put_fmt(&t,
          "<p><span id=\"count\">%lld</span> %s%s. <a href=\"%s\">%s</a>"
          "</p>\n",
          n, all ? "in all" : "open",
          n > PAGE_ROWS ? "; the oldest 100 below (all: /api/incidents)" : "",
          all ? "/incidents" : "/incidents?all=1",
          all ? "Open ones only" : "Resolved ones too");
  put(&t,
      "<p><label>Token for changes <input type=\"password\" "
      "id=\"token\" autocomplete=\"off\"></label> "
      "<output id=\"result\"></output></p>\n");
  put_incident_rows(&t, j, 1);
  put(&t, actions_script);
  json_decref(j);
  return send_page(conn, &t);
}

static enum MHD_Result page_instance(server *sv, struct MHD_Connection *conn,
                                     const char *id_text) {
  int64_t id;
  int found;
  json_t *j, *run;
  char title[64], *vars;
  text t = {.sv = sv};
  size_t i;
  if (parse_id(id_text, &id)) {
    return send_error(conn, MHD_HTTP_BAD_REQUEST, "not an instance id: '%.40s'",
                      id_text);
  }
  if (!(j = sy__cli_show_json(sv->e, id, 0, &found))) {
    return store_failed(sv, conn);
  }
  if (!found) {
    json_decref(j);
    return send_error(conn, MHD_HTTP_NOT_FOUND, "no instance %lld",
                      (long long)id);
  }
  snprintf(title, sizeof title, "Instance %lld", (long long)id);
  page_head(&t, title);
  put(&t, "<table id=\"instance\"><tr><th>workflow</th><td>");
  put_html(&t, json_string_value(json_object_get(j, "workflow")));
  put(&t, "</td></tr><tr><th>state</th><td id=\"state\">");
  put_html(&t, json_string_value(json_object_get(j, "state")));
  put(&t, "</td></tr><tr><th>step</th><td>");
  put_html(&t, json_string_value(json_object_get(j, "step")));
  put_fmt(&t, "</td></tr><tr><th>attempt</th><td>%lld</td></tr></table>\n",
          (long long)json_integer_value(json_object_get(j, "attempt")));
  vars = json_dumps(json_object_get(j, "vars"),
                    JSON_INDENT(2) | JSON_SORT_KEYS | JSON_ENCODE_ANY);
  put(&t, "<h2>Vars</h2><pre id=\"vars\">");
  put_html(&t, vars ? vars : "null");
  put(&t,
      "</pre>\n<h2>History</h2><table id=\"history\"><tr><th>step</th>"
      "<th>attempt</th><th>started</th><th>ran</th><th>outcome</th>"
      "<th>error</th></tr>\n");
  free(vars);
  json_array_foreach(json_object_get(j, "history"), i, run) {
    char when[32];
    const char *err = json_string_value(json_object_get(run, "error"));
    sy__cli_time(json_integer_value(json_object_get(run, "started_at")), when,
                 sizeof when);
    put(&t, "<tr><td>");
    put_html(&t, json_string_value(json_object_get(run, "step")));
    put_fmt(&t,
            "</td><td class=\"n\">%lld</td><td>%s</td>"
            "<td class=\"n\">%lld ms</td><td>",
            (long long)json_integer_value(json_object_get(run, "attempt")),
            when,
            (long long)json_integer_value(json_object_get(run, "run_ms")));
    put_html(&t, json_string_value(json_object_get(run, "outcome")));
    put(&t, "</td><td class=\"incident\">");
    put_html(&t, err ? err : "");
    put(&t, "</td></tr>\n");
  }
  put(&t, "</table>\n<h2>Incidents</h2>\n");
  put_incident_rows(&t, json_object_get(j, "incidents"), 0);
  json_decref(j);
  snprintf(title, sizeof title, "/instances/%lld", (long long)id);
  if (put_sections(sv, conn, title, &t)) {
    free(t.s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                      "%s failed: see serve's log", title);
  }
  return send_page(conn, &t);
}

static const char *plugin_query(const sy_http_request *req, const char *key) {
  return query(req->conn, key);
}

/* What the plugins add to the engine's page at path (sy_plugin_def.section),
 * after what t holds: 0, or non-zero when one failed. */
static int put_sections(server *sv, struct MHD_Connection *conn,
                        const char *path, text *t) {
  sy_http_request req = {MHD_HTTP_METHOD_GET, path, plugin_query, conn};
  sy_http_response resp = {
      .status = MHD_HTTP_OK, .put = put, .put_html = put_escaped, .ud = t};
  return sy_plugins_sections(sy_engine_plugins(sv->e), &req, &resp) ||
         t->failed;
}

/* A path the engine does not serve: a plugin's, or 404. */
static enum MHD_Result plugin_page(server *sv, struct MHD_Connection *conn,
                                   const char *url, const char *method) {
  text t = {0};
  sy_http_request req = {method, url, plugin_query, conn};
  sy_http_response resp = {
      .status = MHD_HTTP_OK, .put = put, .put_html = put_escaped, .ud = &t};
  enum MHD_Result ok;
  int rc;
  resp.title[0] = '\0';
  /* A plugin's POST changes something: the token first, for all. */
  if (strcmp(method, MHD_HTTP_METHOD_POST) == 0 && may_write(sv, conn, &ok)) {
    return ok;
  }
  rc = sy_plugins_serve(sy_engine_plugins(sv->e), &req, &resp);
  if (rc == SY_ENOTFOUND) {
    free(t.s);
    return send_error(conn, MHD_HTTP_NOT_FOUND, "no such page: %.200s", url);
  }
  if (rc || t.failed) {
    free(t.s);
    return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
                      "%s failed: see serve's log", url);
  }
  if (!resp.content_type) {
    text page = {.sv = sv};
    page_head(&page, resp.title[0] ? resp.title : "switchyard");
    put(&page, t.s ? t.s : "");
    free(t.s);
    put(&page, "</body></html>\n");
    if (page.failed) {
      free(page.s);
      return send_error(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory");
    }
    ok = send_text(conn, (unsigned)resp.status, "text/html; charset=utf-8",
                   page.s, page.len);
    free(page.s);
    return ok;
  }
  ok = send_text(conn, (unsigned)resp.status, resp.content_type, t.s ? t.s : "",
                 t.len);
  free(t.s);
  return ok;
}

static const char index_text[] =
    "switchyard serve: the API (pages: /, /incidents, /instances/ID)\n\n"
    "GET  /metrics                       Prometheus text format\n"
    "GET  /api/status                    instances per workflow and state\n"
    "GET  /api/instances?state=&workflow=&step=&limit=&after=\n"
    "GET  /api/instances/ID              an instance, its history, incidents\n"
    "GET  /api/incidents[?all=1]         open (or all) incidents\n"
    "POST /api/instances/ID/retry        (Authorization: Bearer TOKEN)\n"
    "POST /api/instances/ID/cancel       (Authorization: Bearer TOKEN)\n";

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn,
                              const char *url, const char *method,
                              const char *version, const char *upload_data,
                              size_t *upload_data_size, void **con_cls) {
  static int first;
  server *sv = cls;
  int post = strcmp(method, MHD_HTTP_METHOD_POST) == 0;
  (void)version;
  (void)upload_data;
  /* The first call only announces the request; a body is not needed. */
  if (!*con_cls) {
    *con_cls = &first;
    return MHD_YES;
  }
  if (*upload_data_size) {
    *upload_data_size = 0;
    return MHD_YES;
  }
  if (!post && strcmp(method, MHD_HTTP_METHOD_GET) != 0 &&
      strcmp(method, MHD_HTTP_METHOD_HEAD) != 0) {
    return send_error(conn, MHD_HTTP_METHOD_NOT_ALLOWED,
                      "method %.20s: serve answers GET, HEAD and POST", method);
  }
  if (strlen(url) > MAX_URL) {
    return send_error(conn, MHD_HTTP_URI_TOO_LONG,
                      "the path is longer than %d bytes", MAX_URL);
  }
  if (strcmp(url, "/api") == 0 && !post) {
    return send_text(conn, MHD_HTTP_OK, "text/plain; charset=utf-8", index_text,
                     sizeof index_text - 1);
  }
  if (!post && strcmp(url, "/") == 0) {
    return page_overview(sv, conn);
  }
  if (!post && strcmp(url, "/incidents") == 0) {
    return page_incidents(sv, conn);
  }
  if (!post && strncmp(url, "/instances/", 11) == 0) {
    return page_instance(sv, conn, url + 11);
  }
  if (!post && strncmp(url, "/workflows/", 11) == 0 && url[11]) {
    return page_workflow(sv, conn, url + 11);
  }
  if (strcmp(url, "/metrics") == 0 && !post) {
    return metrics(sv, conn);
  }
  if (strncmp(url, "/api/", 5) == 0) {
    return api(sv, conn, url, method);
  }
  return plugin_page(sv, conn, url, method);
}

/* ---------------------------------------------------------------------
 * The command */

enum { O_LISTEN = 256, O_TOKEN_FILE };

static const sy__cli_opt serve_opts[] = {
    {"listen", required_argument, O_LISTEN, "ADDR:PORT",
     "where to listen (127.0.0.1:8080; port 0: any free one)"},
    {"token-file", required_argument, O_TOKEN_FILE, "FILE",
     "the token writes must present (Authorization: Bearer)"},
    {NULL, 0, 0, NULL, NULL}};

static int read_token(const char *path, char *out, size_t len) {
  FILE *f = fopen(path, "r");
  size_t n;
  if (!f) {
    return sy__cli_usage_error("--token-file: cannot read %s", path);
  }
  n = fread(out, 1, len - 1, f);
  out[n] = '\0';
  fclose(f);
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r' ||
                   out[n - 1] == ' ' || out[n - 1] == '\t')) {
    out[--n] = '\0';
  }
  if (n < 16 || strlen(out) != n || strpbrk(out, " \t\r\n")) {
    return sy__cli_usage_error(
        "--token-file: %s must hold one token of at least 16 characters "
        "(no spaces)",
        path);
  }
  return 0;
}

static int cmd_serve(sy__cli *c) {
  const char *listen = "127.0.0.1:8080", *token_file = NULL, *v, *colon;
  struct sockaddr_in addr = {.sin_family = AF_INET};
  char host[64];
  long long port;
  server sv = {0};
  struct MHD_Daemon *d;
  const union MHD_DaemonInfo *info;
  sigset_t sigs;
  int key, sig, rc;
  while ((key = sy__cli_next(c, &v)) > 0) {
    if (key == O_LISTEN) {
      listen = v;
    } else if (key == O_TOKEN_FILE) {
      token_file = v;
    } else {
      return sy__cli_usage_error("serve: unexpected argument '%s'", v);
    }
  }
  if (key < 0) {
    return SY__EXIT_USAGE;
  }
  colon = strrchr(listen, ':');
  if (!colon || (size_t)(colon - listen) >= sizeof host ||
      sy__cli_parse_int(colon + 1, 0, 65535, &port)) {
    return sy__cli_usage_error(
        "--listen: expected ADDR:PORT (an IPv4 address), got '%s'", listen);
  }
  snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
  if (strcmp(host, "localhost") == 0) {
    snprintf(host, sizeof host, "127.0.0.1");
  }
  if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) {
    return sy__cli_usage_error(
        "--listen: expected ADDR:PORT (an IPv4 address), got '%s'", listen);
  }
  addr.sin_port = htons((uint16_t)port);
  if ((ntohl(addr.sin_addr.s_addr) >> 24) != 127 && !token_file) {
    return sy__cli_usage_error(
        "--listen %s is not loopback: give --token-file too, so that only "
        "holders of the token can change anything",
        listen);
  }
  if (token_file && (rc = read_token(token_file, sv.token, sizeof sv.token))) {
    return rc;
  }
  if ((rc = sy__cli_open(c, &sv.e))) {
    return rc;
  }
  /* Signals are taken by sigwait below: block them before the server's
   * thread starts, so that it inherits the mask. */
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &sigs, NULL);
  d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG, 0,
                       NULL, NULL, handle, &sv, MHD_OPTION_SOCK_ADDR,
                       (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
                       (unsigned int)64, MHD_OPTION_CONNECTION_TIMEOUT,
                       (unsigned int)30, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, "switchyard: serve: cannot listen on %s (in use?)\n",
            listen);
    sy_engine_close(sv.e);
    return 1;
  }
  info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  printf("switchyard: serving http://%s:%u/ (Ctrl-C stops)\n", host,
         info ? (unsigned)info->port : (unsigned)port);
  fflush(stdout);
  sigwait(&sigs, &sig);
  MHD_stop_daemon(d);
  if (sv.gvc) {
    gvFreeContext(sv.gvc);
  }
  sy_engine_close(sv.e);
  return 0;
}

const sy__cli_cmd sy__cli_serve = {
    "serve",
    "[--listen ADDR:PORT] [--token-file FILE]",
    "serve the database over HTTP: a JSON API and Prometheus /metrics",
    serve_opts,
    cmd_serve,
    SY__CLI_NEEDS_DB};
