/* switchyard-mock: a local stand-in for the external identity-verification
 * API ("VerifyMeNow") that the demo, the workflow specs and the HTTP client
 * tests run against, with fault injection that is deterministic per request.
 *
 * README
 * ======
 * Build: the target `switchyard-mock` (this directory's CMakeLists.txt),
 * output in the build root. Needs libmicrohttpd (libmicrohttpd-dev) and
 * jansson (libjansson-dev).
 *
 *   switchyard-mock --port 0 --seed 7 \
 *       --v1-error-rate 0.05 --v1-latency-ms 80 --v1-latency-jitter-ms 40 \
 *       --v2-error-rate 0.01 --v2-latency-ms 60 --v2-latency-jitter-ms 20
 *
 * It listens on 127.0.0.1 only. Once it accepts connections it prints
 * exactly one line on stdout, `listening on 127.0.0.1:PORT`, and flushes it;
 * with --port-file PATH it first writes PORT (and a newline) to PATH, by
 * rename, so a reader never sees a partial file. SIGINT or SIGTERM stop it
 * (exit 0), also with connections hanging. Bad options exit 2 with a message
 * naming the option; a failure to listen exits 1.
 *
 * Endpoints (every body, errors included, is JSON):
 *   POST /v1/verify, POST /v2/verify
 *       request  {"request_id": "...", "document": "...", "subject": "...",
 *                 "large": false}
 *       200      {"version":"v1","request_id":"...","verified":true,
 *                 "score":0.8312,"latency_ms":74.2}
 *       500/503  {"version":"v1","request_id":"...","error":"injected_fault",
 *                 "status":503,"message":"...","latency_ms":74.2}
 *                (503 also carries Retry-After: 1)
 *       hang     no answer at all: the connection is held until the client
 *                gives up (closes it), or --hang-seconds pass, or the mock
 *                stops; then it is closed without a response. Clients
 *                should time out well before --hang-seconds: libcurl takes
 *                a reused keep-alive connection closed with no answer for
 *                a stale one and silently re-sends the request on a new
 *                connection (up to 5 times), so a hang the mock closes can
 *                be seen, and counted, several times.
 *       400      the body is not a JSON object, or request_id is present and
 *                neither a string nor null; 413 above 1 MiB; 405 for another
 *                method. document and subject are accepted, not required.
 *       With "large": true, a 200 answer also has a "padding" string that
 *       makes the body about --large-body-kb KiB (still valid JSON).
 *   POST /notify -> 202 {"queued":true}, or 503 for a deterministic share
 *                   (--notify-error-rate) of request_ids: a soft dependency
 *   GET /health  -> 200 {"ok":true}
 *   GET /stats   -> 200 {"seed":..,"in_flight":..,"max_in_flight":..,
 *                   "v1":{"requests","ok","errors","hangs","bad_requests",
 *                         "client_gone","by_status":{"200":n,...}},
 *                   "v2":{...},"other":{"requests","by_status"}}
 *       requests counts every request to that endpoint; hangs those that
 *       were held; client_gone those whose client closed the connection
 *       before the answer (hangs the client gave up on included);
 *       by_status the answers actually queued. in_flight is the number of
 *       verify requests being delayed or held right now.
 *   anything else -> 404 {"error":"not_found","path":"..."}
 *
 * Determinism. The outcome of a verify request (ok, error or hang; the
 * error status; the latency; score and verified) is a pure function of
 * (seed, version, request_id), whatever the arrival order or concurrency:
 *   key   = "v1" NUL "id" NUL request_id      (the version is "v1" or "v2")
 *   state = FNV-1a-64(key) XOR splitmix64(seed)
 *   u1..u5 = the next five outputs of splitmix64 from state, as doubles
 *           in (0, 1] (top 53 bits)
 *   u1: error if u1 <= error_rate, else hang if u1 <= error_rate +
 *       hang_rate, else ok. So raising a rate only adds failures.
 *   u2: the error's status, 500 if u2 <= 0.5, else 503.
 *   u3, u4: latency (below), by Box-Muller.
 *   u5: score = floor((1 - u5) * 10000) / 10000, in [0, 1); verified iff
 *       score >= 0.2 (so about 80% are verified).
 * Subjects. A request whose "subject" is a string gets the subject's score
 * and verdict instead of u5's, the same from both versions (a person is who
 * they are, whichever vendor checks):
 *   key   = "subject" NUL subject;  state as above
 *   u, d  = the next two outputs, as doubles in (0, 1]
 *   score = floor((1 - u) * 10000) / 10000; verified iff score >= 0.2.
 * v2 disagrees on the subjects with d <= --v2-disagree-rate: its score is
 * moved across the threshold ([0.2, 1) onto [0, 0.2) and back, in order),
 * so its verdict is the other one. A rate of 0.05 is 5% of subjects, the
 * same ones whatever else is asked, and raising it only adds subjects.
 *
 * The same request_id therefore always gets the same answer, also from
 * another process with the same seed: a client that retries should put the
 * attempt in the request_id if a retry is to see a fresh draw. A request
 * without request_id (or with null) uses key "v1" NUL "n" NUL <k>, k a
 * per-version counter from 1: that depends on arrival order, so it is
 * deterministic only for requests sent one at a time.
 *
 * Latency: log-normal with median M = --vN-latency-ms and
 * sigma = ln(1 + J / M), J = --vN-latency-jitter-ms; that is
 * latency = M * exp(sigma * z), z standard normal. One sigma above the
 * median is M + J, one below is M * M / (M + J): with M=80, J=40 about
 * 68% of requests take 53..120 ms, 95% 36..180 ms. J = 0 gives exactly M.
 * Errors wait their latency too; hangs do not (they hang at once).
 *
 * Concurrency: libmicrohttpd's thread-per-connection mode (with poll(), so
 * descriptors above FD_SETSIZE work), up to 2048 connections, a listen
 * backlog of 1024 and 256 KiB thread stacks. A request's latency or hang
 * is spent in its connection's own thread, in poll() on the client socket
 * and on a stop pipe: other requests never wait for it, a client that gives
 * up is noticed at once (the read side reports end of file), and stopping
 * wakes every waiting thread at once. This was chosen over suspend/resume
 * with a timer thread because it is much simpler (no timer wheel, no
 * resume races) and libmicrohttpd does not watch a suspended connection's
 * socket, so a hang could not end "when the client gives up". The cost
 * is one thread per open connection, which is fine for a local mock at
 * thousands of connections.
 */
#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MOCK_NAME "switchyard-mock"
#define MOCK_MAX_BODY (1024 * 1024)
#define MOCK_CONNECTION_LIMIT 2048
#define MOCK_LISTEN_BACKLOG 1024
#define MOCK_STACK_SIZE (256 * 1024)
#define MOCK_MAX_LATENCY_MS 600000.0
#define MOCK_MAX_HANG_SECONDS 86400.0
#define MOCK_MAX_LARGE_KB 65536.0
#define MOCK_VERIFIED_MIN_SCORE 0.2
#define MOCK_STATUS_MAX 600

enum { MOCK_V1, MOCK_V2, MOCK_OTHER, MOCK_ENDPOINTS };
static const char *const mock_endpoint_names[MOCK_ENDPOINTS] = {"v1", "v2",
                                                                "other"};

typedef struct mock_version_cfg {
  double error_rate;
  double hang_rate;
  double latency_ms;
  double jitter_ms;
} mock_version_cfg;

typedef struct mock_cfg {
  double port; /* numeric options all parse as doubles; checked whole */
  const char *port_file;
  uint64_t seed;
  double hang_seconds;
  double large_body_kb;
  int verbose;
  double notify_error_rate;
  double v2_disagree_rate;
  mock_version_cfg v[2];
} mock_cfg;

typedef struct mock_counts {
  uint64_t requests;
  uint64_t ok;
  uint64_t errors;
  uint64_t hangs;
  uint64_t bad_requests;
  uint64_t client_gone;
  uint64_t by_status[MOCK_STATUS_MAX];
} mock_counts;

/* Everything the request threads share. Counters are behind one mutex:
 * updates are a handful per request, far from contended at mock rates. */
typedef struct mock_server {
  mock_cfg cfg;
  int stop_fd; /* read end of the stop pipe: hangs up when stopping */
  pthread_mutex_t lock;
  mock_counts counts[MOCK_ENDPOINTS];
  uint64_t sequence[2];
  int64_t in_flight;
  int64_t max_in_flight;
} mock_server;

/* One request's upload, collected across calls of the access handler. */
typedef struct mock_request {
  char *body;
  size_t len;
  size_t cap;
  int too_large;
} mock_request;

typedef enum mock_kind { MOCK_OK, MOCK_ERROR, MOCK_HANG } mock_kind;

typedef struct mock_outcome {
  mock_kind kind;
  unsigned status;
  double latency_ms;
  double score;
  int verified;
} mock_outcome;

typedef enum mock_wake {
  MOCK_WAKE_TIME,    /* the wait ran its full length */
  MOCK_WAKE_GONE,    /* the client closed the connection */
  MOCK_WAKE_STOPPING /* the server is stopping */
} mock_wake;

/* ---- deterministic draws ---------------------------------------------- */

static uint64_t fnv1a64(uint64_t h, const void *data, size_t len) {
  const unsigned char *p = data;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

static uint64_t splitmix64(uint64_t *state) {
  uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* A double in (0, 1]: never 0, so log() in Box-Muller is finite. */
static double unit(uint64_t *state) {
  return (double)((splitmix64(state) >> 11) + 1) * 0x1.0p-53;
}

/* The outcome of one request; see "Determinism" at the top. */
static void decide(const mock_cfg *cfg, int version, const char *kind,
                   const char *key, size_t key_len, mock_outcome *out) {
  static const char *const tags[2] = {"v1", "v2"};
  const mock_version_cfg *vc = &cfg->v[version];
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  h = fnv1a64(h, tags[version], 3); /* with its NUL */
  h = fnv1a64(h, kind, strlen(kind) + 1);
  h = fnv1a64(h, key, key_len);
  uint64_t seed = cfg->seed;
  uint64_t state = h ^ splitmix64(&seed);

  double u1 = unit(&state);
  double u2 = unit(&state);
  double u3 = unit(&state);
  double u4 = unit(&state);
  double u5 = unit(&state);

  if (u1 <= vc->error_rate) {
    out->kind = MOCK_ERROR;
  } else if (u1 <= vc->error_rate + vc->hang_rate) {
    out->kind = MOCK_HANG;
  } else {
    out->kind = MOCK_OK;
  }
  out->status = out->kind == MOCK_ERROR ? (u2 <= 0.5 ? 500 : 503) : 200;

  double latency = vc->latency_ms;
  if (vc->latency_ms > 0 && vc->jitter_ms > 0) {
    const double two_pi = 6.283185307179586;
    double z = sqrt(-2.0 * log(u3)) * cos(two_pi * u4);
    double sigma = log(1.0 + vc->jitter_ms / vc->latency_ms);
    latency = vc->latency_ms * exp(sigma * z);
  }
  if (latency > MOCK_MAX_LATENCY_MS) {
    latency = MOCK_MAX_LATENCY_MS;
  }
  /* Rounded to 0.1 ms so the body shows what the mock waited. */
  out->latency_ms = floor(latency * 10.0 + 0.5) / 10.0;
  out->score = floor((1.0 - u5) * 10000.0) / 10000.0;
  out->verified = out->score >= MOCK_VERIFIED_MIN_SCORE;
}

/* A request with a subject: its score and verdict are the subject's, the
 * same from both versions, except that v2 gives the other verdict for the
 * share --v2-disagree-rate of subjects (its score then moved across the
 * threshold, keeping their order); see "Subjects" at the top. */
static void judge_subject(const mock_cfg *cfg, int version, const char *subject,
                          size_t len, mock_outcome *out) {
  uint64_t h = UINT64_C(0xcbf29ce484222325);
  h = fnv1a64(h, "subject", 8); /* with its NUL */
  h = fnv1a64(h, subject, len);
  uint64_t seed = cfg->seed;
  uint64_t state = h ^ splitmix64(&seed);
  double u = unit(&state);
  double d = unit(&state);
  double score = floor((1.0 - u) * 10000.0) / 10000.0;
  const double t = MOCK_VERIFIED_MIN_SCORE;
  if (version == MOCK_V2 && d <= cfg->v2_disagree_rate) {
    /* [t, 1) onto [0, t) and [0, t) onto [t, 1) */
    score =
        score >= t ? (score - t) / (1.0 - t) * t : t + score / t * (1.0 - t);
    score = floor(score * 10000.0) / 10000.0;
  }
  out->score = score;
  out->verified = score >= t;
}

/* ---- counters --------------------------------------------------------- */

static void count_status(mock_server *s, int endpoint, unsigned status) {
  pthread_mutex_lock(&s->lock);
  mock_counts *c = &s->counts[endpoint];
  if (status < MOCK_STATUS_MAX) {
    c->by_status[status]++;
  }
  if (endpoint != MOCK_OTHER) {
    if (status == 200) {
      c->ok++;
    } else if (status >= 500) {
      c->errors++;
    } else {
      c->bad_requests++;
    }
  }
  pthread_mutex_unlock(&s->lock);
}

static json_t *counts_json(const mock_counts *c, int endpoint) {
  json_t *o = json_object();
  json_object_set_new(o, "requests", json_integer((json_int_t)c->requests));
  if (endpoint != MOCK_OTHER) {
    json_object_set_new(o, "ok", json_integer((json_int_t)c->ok));
    json_object_set_new(o, "errors", json_integer((json_int_t)c->errors));
    json_object_set_new(o, "hangs", json_integer((json_int_t)c->hangs));
    json_object_set_new(o, "bad_requests",
                        json_integer((json_int_t)c->bad_requests));
    json_object_set_new(o, "client_gone",
                        json_integer((json_int_t)c->client_gone));
  }
  json_t *by = json_object();
  for (unsigned st = 0; st < MOCK_STATUS_MAX; st++) {
    if (c->by_status[st]) {
      char name[16];
      snprintf(name, sizeof name, "%u", st);
      json_object_set_new(by, name, json_integer((json_int_t)c->by_status[st]));
    }
  }
  json_object_set_new(o, "by_status", by);
  return o;
}

static json_t *stats_json(mock_server *s) {
  json_t *o = json_object();
  if (s->cfg.seed <= INT64_MAX) {
    json_object_set_new(o, "seed", json_integer((json_int_t)s->cfg.seed));
  } else {
    char text[32];
    snprintf(text, sizeof text, "%" PRIu64, s->cfg.seed);
    json_object_set_new(o, "seed", json_string(text));
  }
  pthread_mutex_lock(&s->lock);
  json_object_set_new(o, "in_flight", json_integer(s->in_flight));
  json_object_set_new(o, "max_in_flight", json_integer(s->max_in_flight));
  for (int e = 0; e < MOCK_ENDPOINTS; e++) {
    json_object_set_new(o, mock_endpoint_names[e],
                        counts_json(&s->counts[e], e));
  }
  pthread_mutex_unlock(&s->lock);
  return o;
}

/* ---- waiting ---------------------------------------------------------- */

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1000.0 + (double)ts.tv_nsec / 1e6;
}

/* Whether the client has closed its side: poll() said the socket is
 * readable, and a peek reads end of file or an error. Data (a pipelined
 * request) means it is still there. */
static int client_closed(int fd, int *still_watch) {
  char b;
  ssize_t n = recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
  if (n == 0) {
    return 1;
  }
  if (n < 0) {
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
  }
  /* Readable with data: poll() would keep saying so, stop watching. */
  *still_watch = 0;
  return 0;
}

/* Waits ms milliseconds in this connection's thread, woken early when the
 * client goes away (client_fd >= 0) or the server stops. */
static mock_wake wait_ms(mock_server *s, double ms, int client_fd) {
  double deadline = now_ms() + ms;
  int watch = client_fd >= 0;
  for (;;) {
    double left = deadline - now_ms();
    if (left <= 0) {
      return MOCK_WAKE_TIME;
    }
    struct pollfd fds[2] = {{.fd = s->stop_fd, .events = POLLIN},
                            {.fd = client_fd, .events = POLLIN}};
    int timeout = left > 1e9 ? 1000000000 : (int)ceil(left);
    int rc = poll(fds, watch ? 2 : 1, timeout);
    if (rc < 0) {
      if (errno == EINTR) {
        continue;
      }
      /* poll() failing on valid descriptors is not expected; sleep the
       * rest instead of spinning. */
      struct timespec ts = {.tv_sec = (time_t)(left / 1000.0),
                            .tv_nsec = (long)(fmod(left, 1000.0) * 1e6)};
      nanosleep(&ts, NULL);
      return MOCK_WAKE_TIME;
    }
    if (fds[0].revents) {
      return MOCK_WAKE_STOPPING;
    }
    if (watch && fds[1].revents) {
      if ((fds[1].revents & (POLLHUP | POLLERR | POLLNVAL)) ||
          client_closed(client_fd, &watch)) {
        return MOCK_WAKE_GONE;
      }
    }
  }
}

/* ---- responses -------------------------------------------------------- */

/* Queues body (consumed) as a JSON response with this status. */
static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status,
                               json_t *body, const char *header,
                               const char *value) {
  char *text = json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(6));
  json_decref(body);
  if (!text) {
    return MHD_NO;
  }
  struct MHD_Response *r = MHD_create_response_from_buffer(
      strlen(text), text, MHD_RESPMEM_MUST_FREE);
  if (!r) {
    free(text);
    return MHD_NO;
  }
  MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
  if (header) {
    MHD_add_response_header(r, header, value);
  }
  enum MHD_Result rc = MHD_queue_response(conn, status, r);
  MHD_destroy_response(r);
  return rc;
}

static enum MHD_Result respond_counted(mock_server *s, int endpoint,
                                       struct MHD_Connection *conn,
                                       unsigned status, json_t *body,
                                       const char *header, const char *value) {
  count_status(s, endpoint, status);
  return respond(conn, status, body, header, value);
}

static json_t *error_body(const char *error, const char *message) {
  json_t *o = json_object();
  json_object_set_new(o, "error", json_string(error));
  json_object_set_new(o, "message", json_string(message));
  return o;
}

/* A 200 body padded with a "padding" string to about kb KiB in all. */
static void add_padding(json_t *body, double kb) {
  size_t want = (size_t)(kb * 1024.0);
  size_t base = 128; /* the rest of the body, give or take */
  size_t n = want > base ? want - base : 0;
  char *pad = malloc(n + 1);
  if (!pad) {
    return;
  }
  static const char pattern[] = "0123456789abcdefghijklmnopqrstuv";
  for (size_t i = 0; i < n; i++) {
    pad[i] = pattern[i % (sizeof pattern - 1)];
  }
  json_object_set_new(body, "padding", json_stringn(pad, n));
  free(pad);
}

/* ---- verify ----------------------------------------------------------- */

static void log_line(const mock_server *s, int version, const char *id,
                     const char *what, double latency) {
  if (s->cfg.verbose) {
    fprintf(stderr, MOCK_NAME ": %s %s -> %s (%.1f ms)\n",
            mock_endpoint_names[version], id ? id : "(no request_id)", what,
            latency);
  }
}

static enum MHD_Result verify_decided(mock_server *s, int version,
                                      struct MHD_Connection *conn,
                                      json_t *request_id, int large,
                                      const mock_outcome *out) {
  int fd = -1;
  const union MHD_ConnectionInfo *info =
      MHD_get_connection_info(conn, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (info) {
    fd = info->connect_fd;
  }
  const char *id = json_string_value(request_id);

  if (out->kind == MOCK_HANG) {
    pthread_mutex_lock(&s->lock);
    s->counts[version].hangs++;
    pthread_mutex_unlock(&s->lock);
    log_line(s, version, id, "hang", 0);
    if (wait_ms(s, s->cfg.hang_seconds * 1000.0, fd) == MOCK_WAKE_GONE) {
      pthread_mutex_lock(&s->lock);
      s->counts[version].client_gone++;
      pthread_mutex_unlock(&s->lock);
    }
    return MHD_NO; /* close without an answer */
  }

  mock_wake w = wait_ms(s, out->latency_ms, fd);
  if (w != MOCK_WAKE_TIME) {
    if (w == MOCK_WAKE_GONE) {
      pthread_mutex_lock(&s->lock);
      s->counts[version].client_gone++;
      pthread_mutex_unlock(&s->lock);
    }
    return MHD_NO;
  }

  json_t *body = json_object();
  json_object_set_new(body, "version",
                      json_string(mock_endpoint_names[version]));
  json_object_set(body, "request_id", request_id);
  if (out->kind == MOCK_ERROR) {
    log_line(s, version, id, out->status == 500 ? "500" : "503",
             out->latency_ms);
    json_object_set_new(body, "error", json_string("injected_fault"));
    json_object_set_new(body, "status", json_integer(out->status));
    json_object_set_new(
        body, "message",
        json_string(out->status == 500 ? "internal error (injected fault)"
                                       : "service unavailable (injected "
                                         "fault)"));
    json_object_set_new(body, "latency_ms", json_real(out->latency_ms));
    if (out->status == 503) {
      return respond_counted(s, version, conn, 503, body,
                             MHD_HTTP_HEADER_RETRY_AFTER, "1");
    }
    return respond_counted(s, version, conn, out->status, body, NULL, NULL);
  }
  log_line(s, version, id, "200", out->latency_ms);
  json_object_set_new(body, "verified", json_boolean(out->verified));
  json_object_set_new(body, "score", json_real(out->score));
  json_object_set_new(body, "latency_ms", json_real(out->latency_ms));
  if (large) {
    add_padding(body, s->cfg.large_body_kb);
  }
  return respond_counted(s, version, conn, 200, body, NULL, NULL);
}

static enum MHD_Result verify(mock_server *s, int version,
                              struct MHD_Connection *conn,
                              const mock_request *req) {
  pthread_mutex_lock(&s->lock);
  s->counts[version].requests++;
  pthread_mutex_unlock(&s->lock);

  if (req->too_large) {
    return respond_counted(
        s, version, conn, 413,
        error_body("body_too_large", "the request body is over 1 MiB"), NULL,
        NULL);
  }
  json_error_t jerr;
  json_t *root = json_loadb(req->body ? req->body : "", req->len, 0, &jerr);
  if (!root || !json_is_object(root)) {
    char msg[256];
    if (root) {
      snprintf(msg, sizeof msg, "the request body is not a JSON object");
    } else {
      snprintf(msg, sizeof msg, "the request body is not JSON: %s", jerr.text);
    }
    json_decref(root);
    return respond_counted(s, version, conn, 400,
                           error_body("bad_request", msg), NULL, NULL);
  }

  json_t *rid = json_object_get(root, "request_id");
  mock_outcome out;
  json_t *echo;
  if (rid && json_is_string(rid)) {
    echo = json_incref(rid);
    decide(&s->cfg, version, "id", json_string_value(rid),
           json_string_length(rid), &out);
  } else if (!rid || json_is_null(rid)) {
    pthread_mutex_lock(&s->lock);
    uint64_t k = ++s->sequence[version];
    pthread_mutex_unlock(&s->lock);
    char key[32];
    int n = snprintf(key, sizeof key, "%" PRIu64, k);
    echo = json_null();
    decide(&s->cfg, version, "n", key, (size_t)n, &out);
  } else {
    json_decref(root);
    return respond_counted(
        s, version, conn, 400,
        error_body("bad_request", "request_id must be a string or null"), NULL,
        NULL);
  }
  json_t *subject = json_object_get(root, "subject");
  if (json_is_string(subject)) {
    judge_subject(&s->cfg, version, json_string_value(subject),
                  json_string_length(subject), &out);
  }
  int large = json_is_true(json_object_get(root, "large"));
  json_decref(root);

  pthread_mutex_lock(&s->lock);
  if (++s->in_flight > s->max_in_flight) {
    s->max_in_flight = s->in_flight;
  }
  pthread_mutex_unlock(&s->lock);

  enum MHD_Result rc = verify_decided(s, version, conn, echo, large, &out);

  pthread_mutex_lock(&s->lock);
  s->in_flight--;
  pthread_mutex_unlock(&s->lock);
  json_decref(echo);
  return rc;
}

/* ---- routing ---------------------------------------------------------- */

static enum MHD_Result method_not_allowed(mock_server *s, int endpoint,
                                          struct MHD_Connection *conn,
                                          const char *allow) {
  return respond_counted(
      s, endpoint, conn, 405,
      error_body("method_not_allowed", "this path does not take that method"),
      MHD_HTTP_HEADER_ALLOW, allow);
}

static enum MHD_Result route(mock_server *s, struct MHD_Connection *conn,
                             const char *url, const char *method,
                             const mock_request *req) {
  int get = !strcmp(method, MHD_HTTP_METHOD_GET) ||
            !strcmp(method, MHD_HTTP_METHOD_HEAD);
  int version = !strcmp(url, "/v1/verify")   ? MOCK_V1
                : !strcmp(url, "/v2/verify") ? MOCK_V2
                                             : -1;
  if (version >= 0) {
    if (strcmp(method, MHD_HTTP_METHOD_POST)) {
      pthread_mutex_lock(&s->lock);
      s->counts[version].requests++;
      pthread_mutex_unlock(&s->lock);
      return method_not_allowed(s, version, conn, "POST");
    }
    return verify(s, version, conn, req);
  }

  pthread_mutex_lock(&s->lock);
  s->counts[MOCK_OTHER].requests++;
  pthread_mutex_unlock(&s->lock);
  if (!strcmp(url, "/health")) {
    if (!get) {
      return method_not_allowed(s, MOCK_OTHER, conn, "GET, HEAD");
    }
    json_t *o = json_object();
    json_object_set_new(o, "ok", json_true());
    return respond_counted(s, MOCK_OTHER, conn, 200, o, NULL, NULL);
  }
  if (!strcmp(url, "/notify")) {
    /* A soft dependency for the workflow: fails (503) for a deterministic
     * share of request_ids, --notify-error-rate. */
    json_t *root, *rid;
    uint64_t h = UINT64_C(0xcbf29ce484222325), seed = s->cfg.seed, state;
    if (strcmp(method, MHD_HTTP_METHOD_POST)) {
      return method_not_allowed(s, MOCK_OTHER, conn, "POST");
    }
    root = json_loadb(req->body ? req->body : "", req->len, 0, NULL);
    rid = json_object_get(root, "request_id");
    h = fnv1a64(h, "notify", 7);
    if (json_is_string(rid)) {
      h = fnv1a64(h, json_string_value(rid), json_string_length(rid));
    }
    json_decref(root);
    state = h ^ splitmix64(&seed);
    if (unit(&state) <= s->cfg.notify_error_rate) {
      return respond_counted(
          s, MOCK_OTHER, conn, 503,
          error_body("injected_fault", "notification service unavailable"),
          NULL, NULL);
    }
    json_t *o = json_object();
    json_object_set_new(o, "queued", json_true());
    return respond_counted(s, MOCK_OTHER, conn, 202, o, NULL, NULL);
  }
  if (!strcmp(url, "/stats")) {
    if (!get) {
      return method_not_allowed(s, MOCK_OTHER, conn, "GET, HEAD");
    }
    /* Counted before the snapshot, so /stats includes itself. */
    count_status(s, MOCK_OTHER, 200);
    return respond(conn, 200, stats_json(s), NULL, NULL);
  }
  json_t *o = error_body("not_found", "no such endpoint");
  json_object_set_new(o, "path", json_string(url));
  return respond_counted(s, MOCK_OTHER, conn, 404, o, NULL, NULL);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn,
                                  const char *url, const char *method,
                                  const char *http_version,
                                  const char *upload_data,
                                  size_t *upload_data_size, void **con_cls) {
  (void)http_version;
  mock_server *s = cls;
  mock_request *req = *con_cls;
  if (!req) {
    /* First call, headers only: the body (if any) comes next. */
    req = calloc(1, sizeof *req);
    if (!req) {
      return MHD_NO;
    }
    *con_cls = req;
    return MHD_YES;
  }
  if (*upload_data_size) {
    size_t n = *upload_data_size;
    *upload_data_size = 0;
    if (req->too_large || req->len + n > MOCK_MAX_BODY) {
      req->too_large = 1; /* keep reading, answer 413 at the end */
      return MHD_YES;
    }
    if (req->len + n + 1 > req->cap) {
      size_t cap = req->cap ? req->cap : 1024;
      while (cap < req->len + n + 1) {
        cap *= 2;
      }
      char *b = realloc(req->body, cap);
      if (!b) {
        return MHD_NO;
      }
      req->body = b;
      req->cap = cap;
    }
    memcpy(req->body + req->len, upload_data, n);
    req->len += n;
    return MHD_YES;
  }
  return route(s, conn, url, method, req);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls;
  (void)conn;
  (void)toe;
  mock_request *req = *con_cls;
  if (req) {
    free(req->body);
    free(req);
    *con_cls = NULL;
  }
}

/* MHD passes its own printf-style format: say so, for -Wformat-nonliteral. */
#if defined(__GNUC__)
__attribute__((format(printf, 2, 0)))
#endif
static void
on_mhd_log(void *cls, const char *fmt, va_list ap) {
  const mock_server *s = cls;
  /* A hang ends by returning MHD_NO, which MHD reports as an application
   * error: that is the mock working, not news. */
  if (s->cfg.verbose &&
      strncmp(fmt, "Application reported internal error", 34) != 0) {
    fputs(MOCK_NAME ": libmicrohttpd: ", stderr);
    vfprintf(stderr, fmt, ap);
  }
}

/* ---- options ---------------------------------------------------------- */

static void usage(FILE *f) {
  fputs("Usage: " MOCK_NAME
        " [OPTION]...\n"
        "A local mock of the VerifyMeNow identity-verification API, with\n"
        "per-version fault injection that is deterministic for a seed.\n"
        "\n"
        "Listens on 127.0.0.1 only and prints 'listening on 127.0.0.1:PORT'\n"
        "on stdout once ready. SIGINT/SIGTERM stop it (exit 0).\n"
        "\n"
        "Options (VALUE may also be given as --option=VALUE):\n"
        "  --port N                 TCP port, 0 = any free port (default 0)\n"
        "  --port-file PATH         also write the port to PATH\n"
        "  --seed N                 seed of all draws, 0..2^64-1 (default 1)\n"
        "  --hang-seconds S         longest a hanging request is held before\n"
        "                           the connection is closed (default 60)\n"
        "  --large-body-kb N        size in KiB of a 200 answer to a request\n"
        "                           with \"large\": true (default 1024)\n"
        "  --v1-error-rate R        share of v1 requests answered 500 or 503,\n"
        "                           half each (0..1, default 0)\n"
        "  --v1-hang-rate R         share of v1 requests that hang (0..1,\n"
        "                           default 0); error + hang rate <= 1\n"
        "  --v1-latency-ms MS       median v1 latency (default 0)\n"
        "  --v1-latency-jitter-ms J spread of v1 latency (default 0): the\n"
        "                           latency is log-normal with median MS and\n"
        "                           sigma = ln(1 + J/MS), so one sigma above\n"
        "                           the median is MS + J and one below is\n"
        "                           MS*MS/(MS + J); J = 0 gives exactly MS\n"
        "  --v2-error-rate R, --v2-hang-rate R, --v2-latency-ms MS,\n"
        "  --v2-latency-jitter-ms J the same for v2\n"
        "  --notify-error-rate R    share of POST /notify answered 503\n"
        "  --v2-disagree-rate R     share of subjects whose v2 verdict is not\n"
        "                           v1's (0..1, default 0)\n"
        "  --verbose                log each verify request on stderr\n"
        "  -h, --help               show this help and exit\n"
        "\n"
        "Endpoints: POST /v1/verify and /v2/verify with a JSON object body\n"
        "{\"request_id\": \"...\", \"document\": \"...\", \"subject\": "
        "\"...\"};\n"
        "POST /notify (202, a soft dependency);\n"
        "GET /health; GET /stats (counts per version: requests, ok, errors,\n"
        "hangs, bad_requests, client_gone, by_status). Anything else is 404.\n"
        "\n"
        "The outcome of a verify request (ok, 500/503, hang; its latency,\n"
        "verified and score) is a pure function of (seed, version,\n"
        "request_id): FNV-1a-64 of the version and request_id, mixed with the\n"
        "seed by splitmix64. Requests without request_id use a per-version\n"
        "counter instead, which depends on arrival order. With a subject,\n"
        "score and verified are the subject's, the same from v1 and v2 but\n"
        "for the share --v2-disagree-rate of subjects. Errors wait their\n"
        "latency; hangs answer nothing and close when the client gives up,\n"
        "after --hang-seconds, or when the mock stops.\n"
        "\n"
        "Exit status: 0 when stopped by a signal, 1 when it cannot listen,\n"
        "2 for bad options.\n",
        f);
}

typedef enum opt_kind {
  OPT_RATE,
  OPT_MS,
  OPT_PORT,
  OPT_SECONDS,
  OPT_KB,
  OPT_SEED,
  OPT_PATH,
  OPT_FLAG,
  OPT_HELP
} opt_kind;

typedef struct opt_spec {
  const char *name;
  opt_kind kind;
  void *dest;
} opt_spec;

/* Prints "option NAME: 'VALUE' WHAT" (or "option NAME: WHAT" without a
 * value) and returns the exit code of bad usage. */
static int bad_option(const char *name, const char *value, const char *what) {
  if (value) {
    fprintf(stderr, MOCK_NAME ": option %s: '%s' %s\n", name, value, what);
  } else {
    fprintf(stderr, MOCK_NAME ": option %s: %s\n", name, what);
  }
  fprintf(stderr, "Try '" MOCK_NAME " --help'.\n");
  return 2;
}

/* A finite decimal number in [lo, hi], or -1 on failure. */
static int parse_number(const char *text, double lo, double hi, double *out) {
  if (!*text || strchr(" \t\n\r\f\v", *text)) {
    return -1;
  }
  char *end;
  errno = 0;
  double d = strtod(text, &end);
  if (errno || *end || !isfinite(d) || d < lo || d > hi) {
    return -1;
  }
  *out = d;
  return 0;
}

static int parse_seed(const char *text, uint64_t *out) {
  if (!*text || *text < '0' || *text > '9') {
    return -1;
  }
  char *end;
  errno = 0;
  unsigned long long v = strtoull(text, &end, 10);
  if (errno || *end) {
    return -1;
  }
  *out = (uint64_t)v;
  return 0;
}

static int parse_value(const opt_spec *o, const char *value) {
  double d = 0;
  switch (o->kind) {
    case OPT_RATE:
      if (parse_number(value, 0, 1, &d)) {
        return bad_option(o->name, value, "is not a number between 0 and 1");
      }
      break;
    case OPT_MS:
      if (parse_number(value, 0, MOCK_MAX_LATENCY_MS, &d)) {
        return bad_option(o->name, value,
                          "is not a number of milliseconds between 0 and "
                          "600000");
      }
      break;
    case OPT_PORT:
      if (parse_number(value, 0, 65535, &d) || d != floor(d)) {
        return bad_option(o->name, value, "is not a port number (0..65535)");
      }
      break;
    case OPT_SECONDS:
      if (parse_number(value, 0, MOCK_MAX_HANG_SECONDS, &d)) {
        return bad_option(o->name, value,
                          "is not a number of seconds between 0 and 86400");
      }
      break;
    case OPT_KB:
      if (parse_number(value, 0, MOCK_MAX_LARGE_KB, &d) || d != floor(d)) {
        return bad_option(o->name, value,
                          "is not a whole number of KiB between 0 and 65536");
      }
      break;
    case OPT_SEED:
      if (parse_seed(value, o->dest)) {
        return bad_option(o->name, value, "is not an unsigned 64-bit integer");
      }
      return 0;
    case OPT_PATH:
      if (!*value) {
        return bad_option(o->name, NULL, "needs a path, not ''");
      }
      *(const char **)o->dest = value;
      return 0;
    case OPT_FLAG:
    case OPT_HELP:
      return 0;
  }
  *(double *)o->dest = d;
  return 0;
}

/* Fills cfg from argv. Returns -1 when the help was printed (exit 0),
 * 2 on a bad option (message printed), 0 otherwise. */
static int parse_args(int argc, char **argv, mock_cfg *cfg) {
  const opt_spec opts[] = {
      {"--port", OPT_PORT, &cfg->port},
      {"--port-file", OPT_PATH, &cfg->port_file},
      {"--seed", OPT_SEED, &cfg->seed},
      {"--hang-seconds", OPT_SECONDS, &cfg->hang_seconds},
      {"--large-body-kb", OPT_KB, &cfg->large_body_kb},
      {"--v1-error-rate", OPT_RATE, &cfg->v[0].error_rate},
      {"--v1-hang-rate", OPT_RATE, &cfg->v[0].hang_rate},
      {"--v1-latency-ms", OPT_MS, &cfg->v[0].latency_ms},
      {"--v1-latency-jitter-ms", OPT_MS, &cfg->v[0].jitter_ms},
      {"--v2-error-rate", OPT_RATE, &cfg->v[1].error_rate},
      {"--v2-hang-rate", OPT_RATE, &cfg->v[1].hang_rate},
      {"--v2-latency-ms", OPT_MS, &cfg->v[1].latency_ms},
      {"--v2-latency-jitter-ms", OPT_MS, &cfg->v[1].jitter_ms},
      {"--notify-error-rate", OPT_RATE, &cfg->notify_error_rate},
      {"--v2-disagree-rate", OPT_RATE, &cfg->v2_disagree_rate},
      {"--verbose", OPT_FLAG, &cfg->verbose},
      {"--help", OPT_HELP, NULL},
      {"-h", OPT_HELP, NULL},
  };
  const size_t nopts = sizeof opts / sizeof opts[0];

  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    const char *eq = strncmp(arg, "--", 2) ? NULL : strchr(arg, '=');
    size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
    const opt_spec *o = NULL;
    for (size_t k = 0; k < nopts; k++) {
      if (strlen(opts[k].name) == name_len &&
          !strncmp(opts[k].name, arg, name_len)) {
        o = &opts[k];
        break;
      }
    }
    if (!o) {
      if (arg[0] == '-') {
        fprintf(stderr, MOCK_NAME ": unknown option '%.*s'\n", (int)name_len,
                arg);
      } else {
        fprintf(stderr, MOCK_NAME ": unexpected argument '%s'\n", arg);
      }
      fprintf(stderr, "Try '" MOCK_NAME " --help'.\n");
      return 2;
    }
    if (o->kind == OPT_HELP || o->kind == OPT_FLAG) {
      if (eq) {
        return bad_option(o->name, eq + 1, "given, but it takes no value");
      }
      if (o->kind == OPT_HELP) {
        usage(stdout);
        return -1;
      }
      *(int *)o->dest = 1;
      continue;
    }
    const char *value;
    if (eq) {
      value = eq + 1;
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      return bad_option(o->name, NULL, "needs a value");
    }
    int rc = parse_value(o, value);
    if (rc) {
      return rc;
    }
  }

  for (int v = 0; v < 2; v++) {
    if (cfg->v[v].error_rate + cfg->v[v].hang_rate > 1.0) {
      fprintf(stderr,
              MOCK_NAME
              ": options --v%d-error-rate and --v%d-hang-rate: "
              "their sum %g is over 1\n"
              "Try '" MOCK_NAME " --help'.\n",
              v + 1, v + 1, cfg->v[v].error_rate + cfg->v[v].hang_rate);
      return 2;
    }
  }
  return 0;
}

/* ---- main ------------------------------------------------------------- */

/* Each connection holds a descriptor: allow as many as the hard limit. */
static void raise_fd_limit(void) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
}

static int write_port_file(const char *path, unsigned port) {
  size_t n = strlen(path) + 16;
  char *tmp = malloc(n);
  if (!tmp) {
    return -1;
  }
  snprintf(tmp, n, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  int ok = f && fprintf(f, "%u\n", port) > 0;
  if (f && fclose(f)) {
    ok = 0;
  }
  if (ok && rename(tmp, path)) {
    ok = 0;
  }
  if (!ok) {
    fprintf(stderr, MOCK_NAME ": cannot write --port-file %s: %s\n", path,
            strerror(errno));
    unlink(tmp);
  }
  free(tmp);
  return ok ? 0 : -1;
}

int main(int argc, char **argv) {
  static mock_server server; /* zeroed; threads reach it through cls */
  mock_server *s = &server;
  s->cfg.seed = 1;
  s->cfg.hang_seconds = 60;
  s->cfg.large_body_kb = 1024;
  int rc = parse_args(argc, argv, &s->cfg);
  if (rc) {
    return rc < 0 ? 0 : rc;
  }

  raise_fd_limit();
  signal(SIGPIPE, SIG_IGN);
  /* Block the stop signals before any thread starts, so every thread
   * inherits the mask and main alone takes them, with sigwait(). */
  sigset_t stop_set;
  sigemptyset(&stop_set);
  sigaddset(&stop_set, SIGINT);
  sigaddset(&stop_set, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_set, NULL);

  /* Jansson seeds its hash function on first use; do it before threads. */
  json_object_seed(0);
  pthread_mutex_init(&s->lock, NULL);
  int stop_pipe[2];
  if (pipe(stop_pipe)) {
    fprintf(stderr, MOCK_NAME ": pipe: %s\n", strerror(errno));
    return 1;
  }
  s->stop_fd = stop_pipe[0];

  unsigned port = (unsigned)s->cfg.port;
  struct sockaddr_in addr;
  memset(&addr, 0, sizeof addr);
  addr.sin_family = AF_INET;
  addr.sin_port = htons((uint16_t)port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL_INTERNAL_THREAD |
          MHD_USE_ERROR_LOG,
      (uint16_t)port, NULL, NULL, on_request, s,
      /* The logger first, so it sees messages about the other options. */
      MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, s, MHD_OPTION_SOCK_ADDR,
      (struct sockaddr *)&addr, MHD_OPTION_CONNECTION_LIMIT,
      (unsigned)MOCK_CONNECTION_LIMIT, MHD_OPTION_LISTEN_BACKLOG_SIZE,
      (unsigned)MOCK_LISTEN_BACKLOG, MHD_OPTION_THREAD_STACK_SIZE,
      (size_t)MOCK_STACK_SIZE, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)0,
      MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_END);
  if (!d) {
    fprintf(stderr, MOCK_NAME ": cannot listen on 127.0.0.1:%u: %s\n", port,
            errno ? strerror(errno) : "libmicrohttpd could not start");
    return 1;
  }
  const union MHD_DaemonInfo *info =
      MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
  if (info && info->port) {
    port = info->port;
  }
  if (s->cfg.port_file && write_port_file(s->cfg.port_file, port)) {
    MHD_stop_daemon(d);
    return 1;
  }
  printf("listening on 127.0.0.1:%u\n", port);
  fflush(stdout);

  int sig = 0;
  while (sigwait(&stop_set, &sig)) {
  }
  if (s->cfg.verbose) {
    fprintf(stderr, MOCK_NAME ": stopping on signal %d\n", sig);
  }
  /* Closing the write end hangs up the read end: every request waiting in
   * poll() wakes at once and closes its connection, so MHD_stop_daemon()
   * joins the connection threads without waiting out latencies or hangs. */
  close(stop_pipe[1]);
  MHD_stop_daemon(d);
  close(stop_pipe[0]);
  pthread_mutex_destroy(&s->lock);
  return 0;
}
