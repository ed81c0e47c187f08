/* Notifications: who hears of a flag's changes, and how they are told.
 *
 * `rollout notify FLAG --url URL` adds a target. Every audit entry of the
 * flag (a command's change or a plan's) then writes one outbox row per
 * target in the same transaction as the change (cv_notify_enqueue, called
 * by cv_audit_add): the body as it will be sent, and an idempotency key.
 * So a change is never without its notifications, nor a notification
 * without its change, and making a change never waits for a receiver.
 *
 * Running engines deliver the outbox (the notifier below): a timer looks
 * for rows due; each is claimed in the engine's transaction, under a lease
 * (an engine that dies mid-delivery leaves it to be sent again when the
 * lease ends), then POSTed with libcurl on the loop (curl_loop.h), at most
 * choose_version.notify_max_in_flight at once, each within
 * choose_version.notify_timeout_ms. A 2xx answer marks it delivered;
 * anything else is retried with exponential backoff (or the receiver's
 * Retry-After), for as long as it takes: at least once, never dropped but
 * by `--remove`. Only the oldest undelivered row of each (flag, target) is
 * ever sent, so a target hears of a flag's changes in their order.
 *
 * Each request carries Idempotency-Key (the same on every attempt) and,
 * with a secret, X-Switchyard-Signature: sha256=<hex HMAC-SHA256 of the
 * body>. */
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "curl_loop.h"
#include "cv.h"

#define CMD "rollout notify"
#define usage_error(cmd, ...) cv_usage_error(cmd, __VA_ARGS__)

#define DEFAULT_EVERY_MS 1000
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_MAX_IN_FLIGHT 8
#define DEFAULT_BACKOFF_MS 1000
#define MAX_BACKOFF_MS (5 * 60 * 1000)
#define MAX_RETRY_AFTER_MS (60 * 60 * 1000)
#define MAX_SECRET 4096
#define BODY_SCHEMA "switchyard.rollout.change/1"

/* ---------------------------------------------------------------------
 * The outbox rows of a change */

/* The body a target of format fmt gets for change c: malloc'd, or NULL. */
static char *body_of(const cv_change *c, int64_t audit_id, const char *fmt) {
  char rate[CV_RATE_FORMAT_MAX], t[32];
  json_t *j;
  char *text;
  cv_rate_format(c->rate, rate, sizeof rate);
  cv_fmt_time(c->at, t, sizeof t);
  if (strcmp(fmt, "slack") == 0) {
    char line[2048];
    snprintf(line, sizeof line,
             "switchyard: flag *%s*: %s%s%s %s -> %s by %s%s%s", c->flag,
             c->what, c->subject ? " of subject " : "",
             c->subject ? c->subject : "", c->old_value ? c->old_value : "-",
             c->new_value ? c->new_value : "-", c->actor ? c->actor : "?",
             c->reason ? ": " : "", c->reason ? c->reason : "");
    j = json_pack("{s:s}", "text", line);
  } else {
    j = json_pack(
        "{s:s, s:I, s:s, s:s, s:s?, s:s?, s:s?, s:s, s:I, s:b, s:s?, s:s?, "
        "s:I, s:s}",
        "schema", BODY_SCHEMA, "id", (json_int_t)audit_id, "flag", c->flag,
        "change", c->what, "subject", c->subject, "old", c->old_value, "new",
        c->new_value, "rate", rate, "rate_ppm", (json_int_t)c->rate, "killed",
        c->killed, "actor", c->actor, "reason", c->reason, "at",
        (json_int_t)c->at, "time", t);
    if (j && c->numbers) {
      json_t *n = json_loads(c->numbers, 0, NULL);
      if (n) {
        json_object_set_new(j, "numbers", n);
      }
    }
  }
  text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  return text;
}

/* A key no other delivery has: 128 random bits in hex. */
static int new_key(char out[40]) {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
    return -1;
  }
  snprintf(out, 40, "sy-");
  for (size_t i = 0; i < sizeof b; i++) {
    snprintf(out + 3 + 2 * i, 3, "%02x", b[i]);
  }
  return 0;
}

typedef struct target {
  struct target *next;
  char *format;
  char url[];
} target;

static void targets_free(target *t) {
  while (t) {
    target *next = t->next;
    free(t->format);
    free(t);
    t = next;
  }
}

/* The flag's targets, read to the end before anything is written. */
static int read_targets(cv_router *r, const char *flag, target **out) {
  sy_stmt *s = cv_stmt(r, CVQ_NOTIFY_URLS);
  int rc;
  *out = NULL;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_text(s, 1, flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    const char *url = sy_stmt_column_text(s, 0);
    target *t = malloc(sizeof *t + strlen(url) + 1);
    if (!t || !(t->format = strdup(sy_stmt_column_text(s, 1)))) {
      free(t);
      sy_stmt_reset(s);
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      return -1;
    }
    strcpy(t->url, url);
    t->next = *out;
    *out = t;
  }
  if (rc != SY_DONE) {
    return cv_db_fail(r, s);
  }
  sy_stmt_reset(s);
  return 0;
}

int cv_notify_enqueue(cv_router *r, const cv_change *c, int64_t audit_id) {
  target *all, *t;
  int rc = 0;
  if (read_targets(r, c->flag, &all)) {
    return -1;
  }
  for (t = all; t && !rc; t = t->next) {
    sy_stmt *s = cv_stmt(r, CVQ_OUTBOX_ADD);
    char key[40], *body = body_of(c, audit_id, t->format);
    if (!body || new_key(key)) {
      snprintf(r->errmsg, sizeof r->errmsg,
               "cannot make the notification to %s", t->url);
      rc = -1;
    } else if (!s) {
      rc = -1;
    } else {
      sy_stmt_bind_text(s, 1, c->flag);
      sy_stmt_bind_text(s, 2, t->url);
      sy_stmt_bind_int(s, 3, audit_id);
      sy_stmt_bind_text(s, 4, key);
      sy_stmt_bind_text(s, 5, body);
      sy_stmt_bind_int(s, 6, c->at);
      rc = cv_step_done(r, s);
    }
    free(body);
  }
  targets_free(all);
  return rc;
}

/* ---------------------------------------------------------------------
 * Delivery, on a running engine's loop */

typedef struct delivery {
  struct delivery *next;
  cv_notifier *n;
  int64_t id, attempt;
  CURL *easy;
  struct curl_slist *headers;
  char *body;
  char answer[200]; /* the start of the receiver's answer, for errors */
  size_t answer_len;
  char errbuf[CURL_ERROR_SIZE];
} delivery;

struct cv_notifier {
  cv_router *r;
  uv_timer_t timer;
  cl_multi *multi; /* created with the first delivery */
  delivery *flying;
  int64_t in_flight, max_in_flight, timeout_ms, backoff_ms, every_ms;
};

static void on_tick(uv_timer_t *t);

static void delivery_free(delivery *d) {
  if (d->easy) {
    curl_easy_cleanup(d->easy);
  }
  curl_slist_free_all(d->headers);
  free(d->body);
  free(d);
}

static void unlink_delivery(cv_notifier *n, delivery *d) {
  for (delivery **p = &n->flying; *p; p = &(*p)->next) {
    if (*p == d) {
      *p = d->next;
      n->in_flight--;
      return;
    }
  }
}

static size_t on_answer(char *ptr, size_t size, size_t nmemb, void *ud) {
  delivery *d = ud;
  size_t len = size * nmemb, room = sizeof d->answer - 1 - d->answer_len;
  size_t take = len < room ? len : room;
  memcpy(d->answer + d->answer_len, ptr, take);
  d->answer_len += take;
  d->answer[d->answer_len] = '\0';
  return len;
}

/* When attempt number `attempt` failed at `now`: the next one, after
 * backoff doubling from the base, or after the receiver's Retry-After. */
static int64_t next_attempt(const cv_notifier *n, int64_t attempt, int64_t now,
                            int64_t retry_after_ms) {
  int64_t wait = n->backoff_ms;
  for (int64_t i = 1; i < attempt && wait < MAX_BACKOFF_MS; i++) {
    wait *= 2;
  }
  wait = wait < MAX_BACKOFF_MS ? wait : MAX_BACKOFF_MS;
  if (retry_after_ms > wait) {
    wait = retry_after_ms < MAX_RETRY_AFTER_MS ? retry_after_ms
                                               : MAX_RETRY_AFTER_MS;
  }
  return now + wait;
}

/* Records how a delivery ended, in the engine's transaction. */
static void delivered(CURL *easy, CURLcode code, void *ud) {
  delivery *d = ud;
  cv_notifier *n = d->n;
  cv_router *r = n->r;
  long status = 0;
  int ok;
  char err[512];
  sy_stmt *s;
  int64_t now;
  unlink_delivery(n, d);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
  ok = code == CURLE_OK && status >= 200 && status < 300;
  if (r->api->tx_begin(r->e) < 0) {
    /* Left under its lease: sent again when it ends (at least once). */
    r->api->log(r->e, "choose_version: notifications: %s",
                r->api->errmsg(r->e));
    delivery_free(d);
    return;
  }
  now = r->api->now_ms(r->e);
  s = cv_stmt(r, ok ? CVQ_OUTBOX_DELIVERED : CVQ_OUTBOX_FAILED);
  if (s) {
    sy_stmt_bind_int(s, 1, d->id);
    sy_stmt_bind_int(s, 3, status);
    if (ok) {
      sy_stmt_bind_int(s, 2, now);
    } else {
      curl_off_t retry_after = 0;
      if (code != CURLE_OK) {
        snprintf(err, sizeof err, "%s",
                 d->errbuf[0] ? d->errbuf : curl_easy_strerror(code));
      } else {
        for (char *c = d->answer; *c; c++) {
          *c = *c == '\n' || *c == '\r' || *c == '\t' ? ' ' : *c;
        }
        snprintf(err, sizeof err, "HTTP %ld%s%s", status,
                 d->answer_len ? ": " : "", d->answer);
        curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &retry_after);
      }
      sy_stmt_bind_int(
          s, 2, next_attempt(n, d->attempt, now, (int64_t)retry_after * 1000));
      sy_stmt_bind_text(s, 4, err);
      sy_stmt_bind_int(s, 5, d->attempt);
    }
  }
  if (!s || cv_step_done(r, s)) {
    r->api->log(r->e, "choose_version: notifications: %s", r->errmsg);
  } else if (ok) {
    /* The next of its queue is due now: look on the next turn, after
     * this one commits, rather than a tick later. */
    uv_timer_start(&n->timer, on_tick, 0, (uint64_t)n->every_ms);
  }
  delivery_free(d);
}

/* The signature header of body under secret. */
static struct curl_slist *sign(struct curl_slist *h, const char *secret,
                               const char *body) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  char line[64 + 2 * EVP_MAX_MD_SIZE] = "X-Switchyard-Signature: sha256=";
  size_t at = strlen(line);
  if (!HMAC(EVP_sha256(), secret, (int)strlen(secret),
            (const unsigned char *)body, strlen(body), mac, &len)) {
    return NULL;
  }
  for (unsigned int i = 0; i < len; i++) {
    snprintf(line + at + 2 * i, 3, "%02x", mac[i]);
  }
  return curl_slist_append(h, line);
}

/* Starts delivering one claimed row: 0, or -1 (it stays leased, and is
 * tried again when the lease ends). */
static int launch(cv_notifier *n, int64_t id, int64_t attempt, const char *url,
                  const char *body, const char *key, const char *secret) {
  delivery *d = calloc(1, sizeof *d);
  char line[128];
  struct curl_slist *h = NULL;
  if (!d || !(d->body = strdup(body)) || !(d->easy = curl_easy_init())) {
    goto fail;
  }
  d->n = n;
  d->id = id;
  d->attempt = attempt;
  snprintf(line, sizeof line, "Idempotency-Key: %s", key);
  if (!(h = curl_slist_append(NULL, "Content-Type: application/json")) ||
      !(d->headers = h) || !(h = curl_slist_append(h, line)) ||
      !(d->headers = h) || !(h = curl_slist_append(h, "Expect:")) ||
      !(d->headers = h) || (secret && !(h = sign(h, secret, body)))) {
    goto fail;
  }
  d->headers = h;
  curl_easy_setopt(d->easy, CURLOPT_URL, url);
  curl_easy_setopt(d->easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(d->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(d->easy, CURLOPT_USERAGENT, "switchyard");
  curl_easy_setopt(d->easy, CURLOPT_HTTPHEADER, d->headers);
  curl_easy_setopt(d->easy, CURLOPT_POSTFIELDS, d->body);
  curl_easy_setopt(d->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                   (curl_off_t)strlen(d->body));
  curl_easy_setopt(d->easy, CURLOPT_TIMEOUT_MS, (long)n->timeout_ms);
  curl_easy_setopt(d->easy, CURLOPT_ERRORBUFFER, d->errbuf);
  curl_easy_setopt(d->easy, CURLOPT_WRITEFUNCTION, on_answer);
  curl_easy_setopt(d->easy, CURLOPT_WRITEDATA, d);
  if (!n->multi &&
      !(n->multi = cl_multi_new(n->r->api->loop(n->r->e), delivered, 1))) {
    goto fail;
  }
  if (cl_add(n->multi, d->easy, d)) {
    goto fail;
  }
  d->next = n->flying;
  n->flying = d;
  n->in_flight++;
  return 0;
fail:
  if (d) {
    delivery_free(d);
  }
  return -1;
}

/* A row due for delivery, as read before it is claimed. */
typedef struct due {
  int64_t id, attempt;
  char *url, *body, *key, *secret;
} due;

static void due_free(due *d) {
  free(d->url);
  free(d->body);
  free(d->key);
  free(d->secret);
}

/* Reads up to `room` heads of the queues that are due into v: their
 * number, or -1 with r->errmsg. */
static int read_due(cv_router *r, int64_t now, due *v, int room) {
  sy_stmt *s = cv_stmt(r, CVQ_OUTBOX_HEADS);
  int n = 0, rc = SY_DONE;
  if (!s) {
    return -1;
  }
  sy_stmt_bind_int(s, 1, now);
  sy_stmt_bind_int(s, 2, room);
  while (n < room && (rc = sy_stmt_step(s)) == SY_ROW) {
    const char *secret = sy_stmt_column_text(s, 5);
    due *d = &v[n++];
    d->id = sy_stmt_column_int(s, 0);
    d->attempt = sy_stmt_column_int(s, 4) + 1;
    d->url = strdup(sy_stmt_column_text(s, 1));
    d->body = strdup(sy_stmt_column_text(s, 2));
    d->key = strdup(sy_stmt_column_text(s, 3));
    d->secret = secret ? strdup(secret) : NULL;
    if (!d->url || !d->body || !d->key || (secret && !d->secret)) {
      snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
      rc = -1;
      break;
    }
  }
  if (rc == SY_ROW || rc == SY_DONE) {
    sy_stmt_reset(s);
    return n;
  }
  while (n > 0) {
    due_free(&v[--n]);
  }
  return rc == -1 ? (sy_stmt_reset(s), -1) : cv_db_fail(r, s);
}

/* Claims the heads of the queues that are due, up to the free slots, and
 * starts them. In the engine's transaction; -1 with r->errmsg. */
static int claim_due(cv_notifier *n, int64_t now) {
  cv_router *r = n->r;
  int room = (int)(n->max_in_flight - n->in_flight), count, rc = 0;
  due *v = calloc((size_t)room, sizeof *v);
  if (!v) {
    snprintf(r->errmsg, sizeof r->errmsg, "out of memory");
    return -1;
  }
  if ((count = read_due(r, now, v, room)) < 0) {
    free(v);
    return -1;
  }
  for (int i = 0; i < count; i++) {
    sy_stmt *s = rc ? NULL : cv_stmt(r, CVQ_OUTBOX_CLAIM);
    if (s) {
      sy_stmt_bind_int(s, 1, v[i].id);
      sy_stmt_bind_int(s, 2, now + 2 * n->timeout_ms + 1000);
      sy_stmt_bind_int(s, 3, now);
      rc = cv_step_done(r, s);
    } else {
      rc = -1;
    }
    if (!rc && sy_stmt_changes(s) == 1 &&
        launch(n, v[i].id, v[i].attempt, v[i].url, v[i].body, v[i].key,
               v[i].secret)) {
      r->api->log(r->e,
                  "choose_version: notifications: cannot start delivery %lld",
                  (long long)v[i].id);
    }
    due_free(&v[i]);
  }
  free(v);
  return rc;
}

static void on_tick(uv_timer_t *t) {
  cv_notifier *n = t->data;
  cv_router *r = n->r;
  sy_stmt *s;
  int64_t now = r->api->now_ms(r->e);
  int rc;
  if (n->in_flight >= n->max_in_flight) {
    return;
  }
  /* A look first, in whatever transaction is open or none: most of the
   * time nothing is due, and then no write transaction is taken. */
  if (!(s = cv_stmt(r, CVQ_OUTBOX_DUE))) {
    r->api->log(r->e, "choose_version: notifications: %s", r->errmsg);
    return;
  }
  sy_stmt_bind_int(s, 1, now);
  rc = sy_stmt_step(s);
  sy_stmt_reset(s);
  if (rc != SY_ROW) {
    return;
  }
  if (r->api->tx_begin(r->e) < 0) {
    r->api->log(r->e, "choose_version: notifications: %s",
                r->api->errmsg(r->e));
    return;
  }
  if (claim_due(n, r->api->now_ms(r->e))) {
    r->api->log(r->e, "choose_version: notifications: %s", r->errmsg);
  }
}

int cv_notifier_start(cv_router *r) {
  cv_notifier *n = calloc(1, sizeof *n);
  if (!n) {
    return -1;
  }
  n->r = r;
  n->max_in_flight = cv_setting_int(r, "choose_version.notify_max_in_flight",
                                    DEFAULT_MAX_IN_FLIGHT);
  n->timeout_ms =
      cv_setting_int(r, "choose_version.notify_timeout_ms", DEFAULT_TIMEOUT_MS);
  n->backoff_ms =
      cv_setting_int(r, "choose_version.notify_backoff_ms", DEFAULT_BACKOFF_MS);
  n->every_ms =
      cv_setting_int(r, "choose_version.notify_every_ms", DEFAULT_EVERY_MS);
  uv_timer_init(r->api->loop(r->e), &n->timer);
  n->timer.data = n;
  uv_timer_start(&n->timer, on_tick, (uint64_t)n->every_ms,
                 (uint64_t)n->every_ms);
  uv_unref((uv_handle_t *)&n->timer); /* never what keeps a run going */
  r->notifier = n;
  return 0;
}

static void notifier_closed(uv_handle_t *h) {
  free(h->data);
}

void cv_notifier_stop(cv_router *r) {
  cv_notifier *n = r->notifier;
  if (!n) {
    return;
  }
  /* Deliveries in flight are abandoned: their rows stay leased, and are
   * sent again when the leases end. */
  while (n->flying) {
    delivery *d = n->flying;
    n->flying = d->next;
    cl_remove(n->multi, d->easy);
    delivery_free(d);
  }
  cl_multi_free(n->multi);
  uv_timer_stop(&n->timer);
  uv_close((uv_handle_t *)&n->timer, notifier_closed);
  r->notifier = NULL;
}

/* ---------------------------------------------------------------------
 * The commands */

static const char notify_usage[] =
    "usage: switchyard rollout notify FLAG\n"
    "           the flag's notification targets\n"
    "       switchyard rollout notify FLAG --url URL [--secret-file F]\n"
    "           [--format json|slack] [--reason R]\n"
    "           POST every change of the flag to URL (replaces the target's\n"
    "           format and secret if it has one)\n"
    "       switchyard rollout notify FLAG --url URL --remove [--reason R]\n"
    "           stop; its undelivered notifications are dropped\n"
    "       switchyard rollout notifications FLAG [--json]\n"
    "           each delivery: its state, attempts and last error\n"
    "Running engines deliver each change at least once, in order per\n"
    "target, retrying with backoff, with an Idempotency-Key header (the same\n"
    "on every attempt) and, with --secret-file, X-Switchyard-Signature:\n"
    "sha256=<hex HMAC-SHA256 of the body under the file's secret>.\n";

typedef struct notify_args {
  const char *flag, *url, *secret_file, *format, *reason, *actor;
  int remove, json;
} notify_args;

static int parse(const char *cmd, int argc, char **argv, notify_args *a) {
  const cv_opt opts[] = {
      CV_VALUE("url", &a->url),        CV_VALUE("secret-file", &a->secret_file),
      CV_VALUE("format", &a->format),  CV_VALUE("reason", &a->reason),
      CV_VALUE("actor", &a->actor),    CV_SWITCH("json", &a->json),
      CV_SWITCH("remove", &a->remove), CV_END};
  int npos, rc;
  memset(a, 0, sizeof *a);
  if ((rc = cv_parse_args(cmd, argc, argv, opts, &a->flag, 1, &npos, 0))) {
    return rc;
  }
  return cv_flag_and_actor(cmd, a->flag, &a->actor);
}

/* The flag's row: 0 with *rate and *killed, or the exit code after saying
 * why (no such flag: 2). */
static int flag_state(cv_router *r, const char *cmd, const char *flag,
                      uint32_t *rate, int *killed) {
  sy_stmt *s = cv_stmt(r, CVQ_FLAG_ROW);
  int rc;
  if (!s) {
    return cv_cmd_db_error(r, cmd, "read flag");
  }
  sy_stmt_bind_text(s, 1, flag);
  if ((rc = sy_stmt_step(s)) == SY_ROW) {
    *rate = (uint32_t)sy_stmt_column_int(s, 1);
    *killed = (int)sy_stmt_column_int(s, 2);
    sy_stmt_reset(s);
    return 0;
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    return cv_cmd_db_error(r, cmd, "read flag");
  }
  sy_stmt_reset(s);
  return usage_error(cmd, "no flag '%s' (create it with rollout set)", flag);
}

/* The secret in file path, without its final line break: 0, or 2 after
 * saying what is wrong with it. */
static int read_secret(const char *path, char *out, size_t len) {
  FILE *f = fopen(path, "rb");
  size_t n;
  if (!f) {
    return usage_error(CMD, "--secret-file %s: cannot be read", path);
  }
  n = fread(out, 1, len, f);
  fclose(f);
  if (n == len) {
    return usage_error(CMD, "--secret-file %s: longer than %zu bytes", path,
                       len - 1);
  }
  while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == '\r')) {
    n--;
  }
  out[n] = '\0';
  if (!n || strlen(out) != n) {
    return usage_error(CMD, "--secret-file %s: %s", path,
                       n ? "has a NUL byte" : "is empty");
  }
  return 0;
}

/* An http:// or https:// URL libcurl can parse: 0, or 2 after saying. */
static int check_url(const char *url) {
  CURLU *u = curl_url();
  char *scheme = NULL;
  int bad = !u || curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
            curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
            (strcmp(scheme, "http") != 0 && strcmp(scheme, "https") != 0);
  curl_free(scheme);
  curl_url_cleanup(u);
  if (bad || strlen(url) > 2048) {
    return usage_error(CMD, "--url '%s' is not an http:// or https:// URL",
                       url);
  }
  return 0;
}

static int list_targets(cv_router *r, const notify_args *a) {
  sy_stmt *s = cv_stmt(r, CVQ_NOTIFY_TARGETS);
  json_t *arr;
  uint32_t rate;
  int rc, n = 0, killed;
  if ((rc = flag_state(r, CMD, a->flag, &rate, &killed))) {
    return rc;
  }
  arr = a->json ? json_array() : NULL;
  if (!s) {
    json_decref(arr);
    return cv_cmd_db_error(r, CMD, "read targets");
  }
  sy_stmt_bind_text(s, 1, a->flag);
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    char t[32];
    cv_fmt_time(sy_stmt_column_int(s, 4), t, sizeof t);
    if (arr) {
      json_array_append_new(
          arr, json_pack("{s:s, s:s, s:b, s:s, s:I, s:I}", "url",
                         sy_stmt_column_text(s, 0), "format",
                         sy_stmt_column_text(s, 1), "signed",
                         (int)sy_stmt_column_int(s, 2), "actor",
                         sy_stmt_column_text(s, 3), "added_at",
                         (json_int_t)sy_stmt_column_int(s, 4), "pending",
                         (json_int_t)sy_stmt_column_int(s, 5)));
    } else {
      printf("%s  %s%s  added %s by %s  %lld pending\n",
             sy_stmt_column_text(s, 0), sy_stmt_column_text(s, 1),
             sy_stmt_column_int(s, 2) ? ", signed" : "", t,
             sy_stmt_column_text(s, 3), (long long)sy_stmt_column_int(s, 5));
    }
    n++;
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    json_decref(arr);
    return cv_cmd_db_error(r, CMD, "read targets");
  }
  sy_stmt_reset(s);
  if (arr) {
    cv_print_json(arr);
  } else if (!n) {
    printf(
        "%s: no notification targets (add one with rollout notify %s "
        "--url URL)\n",
        a->flag, a->flag);
  }
  return 0;
}

/* Adds or replaces (secret NULL: unsigned) or removes a target, and
 * audits it; in the command's transaction. 0, or the exit code. */
static int change_target(cv_router *r, const notify_args *a,
                         const char *secret) {
  cv_change c = {.flag = a->flag,
                 .what = "notify",
                 .reason = a->reason,
                 .actor = a->actor,
                 .at = r->api->now_ms(r->e)};
  char now_text[2200];
  sy_stmt *s;
  int rc;
  if ((rc = flag_state(r, CMD, a->flag, &c.rate, &c.killed))) {
    return rc;
  }
  if (a->remove) {
    if (!(s = cv_stmt(r, CVQ_NOTIFY_DELETE))) {
      return cv_cmd_db_error(r, CMD, "remove target");
    }
    sy_stmt_bind_text(s, 1, a->flag);
    sy_stmt_bind_text(s, 2, a->url);
    if (cv_step_done(r, s)) {
      return cv_cmd_db_error(r, CMD, "remove target");
    }
    if (sy_stmt_changes(s) != 1) {
      return usage_error(CMD, "%s has no target %s", a->flag, a->url);
    }
    if (!(s = cv_stmt(r, CVQ_OUTBOX_DROP))) {
      return cv_cmd_db_error(r, CMD, "drop its notifications");
    }
    sy_stmt_bind_text(s, 1, a->flag);
    sy_stmt_bind_text(s, 2, a->url);
    sy_stmt_bind_text(s, 3, "dropped: the target was removed");
    if (cv_step_done(r, s)) {
      return cv_cmd_db_error(r, CMD, "drop its notifications");
    }
    c.old_value = a->url;
    c.new_value = "removed";
  } else {
    const char *format = a->format ? a->format : "json";
    if (!(s = cv_stmt(r, CVQ_NOTIFY_PUT))) {
      return cv_cmd_db_error(r, CMD, "add target");
    }
    sy_stmt_bind_text(s, 1, a->flag);
    sy_stmt_bind_text(s, 2, a->url);
    sy_stmt_bind_text(s, 3, format);
    sy_stmt_bind_text(s, 4, secret);
    sy_stmt_bind_text(s, 5, a->actor);
    sy_stmt_bind_int(s, 6, c.at);
    if (cv_step_done(r, s)) {
      return cv_cmd_db_error(r, CMD, "add target");
    }
    snprintf(now_text, sizeof now_text, "%s (%s%s)", a->url, format,
             secret ? ", signed" : "");
    c.new_value = now_text;
  }
  /* Audited after the change: a new target hears of its own addition
   * first, which tells its owner the endpoint works. */
  if (cv_audit_add(r, &c)) {
    return cv_cmd_db_error(r, CMD, "audit");
  }
  return 0;
}

int cv_cmd_notify(cv_router *r, int argc, char **argv) {
  notify_args a;
  char secret[MAX_SECRET + 1];
  int rc;
  if (argc > 2 &&
      (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
    fputs(notify_usage, stdout);
    return 0;
  }
  if ((rc = parse(CMD, argc, argv, &a))) {
    return rc;
  }
  if (!a.url) {
    if (a.remove || a.secret_file || a.format || a.reason) {
      return usage_error(CMD, "which target? (--url URL)");
    }
    return list_targets(r, &a);
  }
  if ((rc = check_url(a.url))) {
    return rc;
  }
  if (a.remove && (a.secret_file || a.format)) {
    return usage_error(CMD, "--remove takes no --secret-file or --format");
  }
  if (a.format && strcmp(a.format, "json") != 0 &&
      strcmp(a.format, "slack") != 0) {
    return usage_error(CMD, "--format '%s': json or slack", a.format);
  }
  if (a.secret_file &&
      (rc = read_secret(a.secret_file, secret, sizeof secret))) {
    return rc;
  }
  if ((rc = cv_cmd_begin(r, CMD, 1))) {
    return rc;
  }
  rc = change_target(r, &a, a.secret_file ? secret : NULL);
  if ((rc = cv_cmd_end(r, CMD, rc))) {
    return rc;
  }
  if (a.remove) {
    printf("%s: no longer notifies %s\n", a.flag, a.url);
  } else {
    printf(
        "%s: every change now goes to %s (%s%s), delivered by running "
        "engines\n",
        a.flag, a.url, a.format ? a.format : "json",
        a.secret_file ? ", signed" : "");
  }
  return 0;
}

/* One row of CVQ_OUTBOX_OF, appended to arr (JSON) or printed. */
static void delivery_row(sy_stmt *s, json_t *arr, int64_t now) {
  const char *what = sy_stmt_column_text(s, 2);
  const char *oldv = sy_stmt_column_text(s, 3),
             *newv = sy_stmt_column_text(s, 4);
  const char *state = sy_stmt_column_text(s, 7);
  const char *err = sy_stmt_column_text(s, 10);
  int64_t next_at = sy_stmt_column_int(s, 11);
  char t[32], last[400], change[600];
  if (arr) {
    json_t *o = json_pack(
        "{s:I, s:I, s:s, s:s?, s:s?, s:s?, s:s?, s:I, s:s, s:I, s:s?, s:s}",
        "id", (json_int_t)sy_stmt_column_int(s, 0), "audit_id",
        (json_int_t)sy_stmt_column_int(s, 14), "url", sy_stmt_column_text(s, 1),
        "change", what, "old", oldv, "new", newv, "actor",
        sy_stmt_column_text(s, 5), "created_at",
        (json_int_t)sy_stmt_column_int(s, 6), "state", state, "attempts",
        (json_int_t)sy_stmt_column_int(s, 8), "last_error", err,
        "idempotency_key", sy_stmt_column_text(s, 13));
    if (o && !sy_stmt_column_null(s, 9)) {
      json_object_set_new(o, "last_status",
                          json_integer(sy_stmt_column_int(s, 9)));
    }
    if (o && !sy_stmt_column_null(s, 12)) {
      json_object_set_new(o, "delivered_at",
                          json_integer(sy_stmt_column_int(s, 12)));
    }
    if (o && strcmp(state, "pending") == 0) {
      json_object_set_new(o, "next_at", json_integer(next_at));
    }
    json_array_append_new(arr, o);
    return;
  }
  cv_fmt_time(sy_stmt_column_int(s, 6), t, sizeof t);
  snprintf(change, sizeof change, "%s %s -> %s", what ? what : "?",
           oldv ? oldv : "-", newv ? newv : "-");
  if (strcmp(state, "delivered") == 0) {
    char d[32];
    cv_fmt_time(sy_stmt_column_int(s, 12), d, sizeof d);
    snprintf(last, sizeof last, "HTTP %lld at %s",
             (long long)sy_stmt_column_int(s, 9), d);
  } else if (strcmp(state, "pending") == 0 && err) {
    char in[32];
    cv_fmt_age(next_at - now, in, sizeof in);
    snprintf(last, sizeof last, "%s; next attempt in %s", err, in);
  } else {
    snprintf(last, sizeof last, "%s", err ? err : "-");
  }
  printf("%-5lld %s  %-32.200s %-30.300s %-9s %3lld  %s\n",
         (long long)sy_stmt_column_int(s, 0), t, change,
         sy_stmt_column_text(s, 1), state, (long long)sy_stmt_column_int(s, 8),
         last);
}

int cv_cmd_notifications(cv_router *r, int argc, char **argv) {
  const char *cmd = "rollout notifications";
  notify_args a;
  uint32_t rate;
  int killed, rc;
  sy_stmt *s;
  json_t *arr;
  int64_t now = r->api->now_ms(r->e);
  if (argc > 2 &&
      (strcmp(argv[2], "--help") == 0 || strcmp(argv[2], "-h") == 0)) {
    fputs(notify_usage, stdout);
    return 0;
  }
  if ((rc = parse(cmd, argc, argv, &a))) {
    return rc;
  }
  if (a.url || a.remove || a.secret_file || a.format || a.reason) {
    return usage_error(cmd, "takes FLAG and --json only");
  }
  if ((rc = flag_state(r, cmd, a.flag, &rate, &killed))) {
    return rc;
  }
  if (!(s = cv_stmt(r, CVQ_OUTBOX_OF))) {
    return cv_cmd_db_error(r, cmd, "read deliveries");
  }
  sy_stmt_bind_text(s, 1, a.flag);
  arr = a.json ? json_array() : NULL;
  if (!arr) {
    printf("%-5s %-20s  %-32s %-30s %-9s %3s  %s\n", "ID", "CHANGED", "CHANGE",
           "TARGET", "STATE", "TRY", "LAST");
  }
  while ((rc = sy_stmt_step(s)) == SY_ROW) {
    delivery_row(s, arr, now);
  }
  if (rc != SY_DONE) {
    cv_db_fail(r, s);
    json_decref(arr);
    return cv_cmd_db_error(r, cmd, "read deliveries");
  }
  sy_stmt_reset(s);
  cv_print_json(arr);
  return 0;
}
