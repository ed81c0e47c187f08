/* The http plugin: `ctx.http{ method, url, headers, body, json, timeout }`
 * from a step. Built on libcurl's multi-socket interface driven by the
 * engine's libuv loop (curl_loop.h), so a request never blocks the loop,
 * needs no thread, and connections are reused across requests by the
 * multi handle's connection cache.
 *
 * The step is parked until the response arrives, then gets
 *   { status = 200, headers = { ["content-type"] = ... }, body = "...",
 *     json = <decoded body, when it is JSON> }
 * Transport errors and timeouts raise in the step (so they are retried and
 * become incidents); what a 4xx or 5xx means is the step's decision. */
#include <curl/curl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <switchyard/plugin.h>

#include "curl_loop.h"

#define DEFAULT_TIMEOUT_MS 30000
#define MAX_BODY (16u << 20) /* responses larger than this are errors */

typedef struct http {
  const sy_api *api;
  sy_engine *e;
  cl_multi *multi;
  struct request *requests; /* in flight, for cancellation */
} http;

typedef struct request {
  struct request *next, *prev;
  http *h;
  sy_call *call;
  CURL *easy;
  struct curl_slist *headers;
  char *body;
  char *data; /* response body */
  size_t len, cap;
  int too_large;
  json_t *resp_headers;
  char errbuf[CURL_ERROR_SIZE];
} request;

static size_t on_body(char *ptr, size_t size, size_t n, void *ud) {
  request *r = ud;
  size_t add = size * n;
  if (r->len + add > MAX_BODY) {
    r->too_large = 1;
    return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
  }
  if (r->len + add + 1 > r->cap) {
    size_t cap = r->cap ? r->cap : 4096;
    char *d;
    while (cap < r->len + add + 1) {
      cap *= 2;
    }
    if (!(d = realloc(r->data, cap))) {
      return 0;
    }
    r->data = d;
    r->cap = cap;
  }
  memcpy(r->data + r->len, ptr, add);
  r->len += add;
  r->data[r->len] = '\0';
  return add;
}

/* Response headers, names lower-cased; a new status line (a redirect, a
 * 100 Continue) starts the set afresh. */
static size_t on_header(char *ptr, size_t size, size_t n, void *ud) {
  request *r = ud;
  size_t len = size * n, k;
  char name[256];
  const char *colon = memchr(ptr, ':', len);
  if (len >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
    json_object_clear(r->resp_headers);
    return len;
  }
  if (!colon || (size_t)(colon - ptr) >= sizeof name) {
    return len;
  }
  for (k = 0; ptr + k < colon; k++) {
    char c = ptr[k];
    name[k] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
  }
  name[k] = '\0';
  {
    const char *v = colon + 1, *end = ptr + len;
    while (v < end && (*v == ' ' || *v == '\t')) {
      v++;
    }
    while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' ')) {
      end--;
    }
    json_t *val = json_stringn(v, (size_t)(end - v));
    if (val) {
      json_object_set_new(r->resp_headers, name, val);
    }
  }
  return len;
}

static void request_free(request *r) {
  if (r->prev) {
    r->prev->next = r->next;
  } else if (r->h->requests == r) {
    r->h->requests = r->next;
  }
  if (r->next) {
    r->next->prev = r->prev;
  }
  if (r->easy) {
    cl_remove(r->h->multi, r->easy);
    curl_easy_cleanup(r->easy);
  }
  curl_slist_free_all(r->headers);
  json_decref(r->resp_headers);
  free(r->body);
  free(r->data);
  free(r);
}

static void finish(request *r, CURLcode code) {
  http *h = r->h;
  const sy_api *api = h->api;
  char msg[CURL_ERROR_SIZE + 256];
  (void)h;
  if (code != CURLE_OK) {
    char *url = NULL;
    curl_easy_getinfo(r->easy, CURLINFO_EFFECTIVE_URL, &url);
    if (r->too_large) {
      snprintf(msg, sizeof msg,
               "http: response from %s is larger than %u "
               "bytes",
               url ? url : "?", MAX_BODY);
    } else {
      snprintf(msg, sizeof msg, "http: %s: %s", url ? url : "?",
               r->errbuf[0] ? r->errbuf : curl_easy_strerror(code));
    }
    api->fail(r->call, msg);
  } else {
    long status = 0;
    json_t *res;
    json_t *body = r->data ? json_stringn(r->data, r->len) : json_string("");
    char *text;
    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (!body) {
      snprintf(msg, sizeof msg,
               "http: the response body is not UTF-8 text (%zu bytes)", r->len);
      api->fail(r->call, msg);
      request_free(r);
      return;
    }
    res = json_pack("{s:i, s:O, s:o}", "status", (int)status, "headers",
                    r->resp_headers, "body", body);
    {
      json_t *ct = json_object_get(r->resp_headers, "content-type");
      if (r->data && ct && strstr(json_string_value(ct), "json")) {
        json_t *decoded = json_loadb(r->data, r->len, JSON_DECODE_ANY, NULL);
        if (decoded) {
          json_object_set_new(res, "json", decoded);
        }
      }
    }
    text = json_dumps(res, JSON_COMPACT | JSON_ENCODE_ANY);
    json_decref(res);
    if (text) {
      api->done_json(r->call, text);
      free(text);
    } else {
      api->fail(r->call, "http: out of memory");
    }
  }
  request_free(r);
}

static void on_done(CURL *easy, CURLcode code, void *ud) {
  (void)easy;
  finish(ud, code);
}

static int http_init(const sy_api *api, sy_engine *e, void **state, char *err,
                     size_t errlen) {
  http *h = calloc(1, sizeof *h);
  if (!h || !(h->multi = cl_multi_new(api->loop(e), on_done, 0))) {
    snprintf(err, errlen, "cannot initialize libcurl");
    free(h);
    return -1;
  }
  h->api = api;
  h->e = e;
  *state = h;
  return 0;
}

static void http_fini(void *state) {
  http *h = state;
  /* Requests were cancelled when their instances left memory. The engine
   * runs its loop once more before unloading us, so the close callbacks
   * (which free) run while our code is still mapped. */
  cl_multi_free(h->multi);
  free(h);
}

static const char *str(json_t *o, const char *key) {
  return json_string_value(json_object_get(o, key));
}

static void fail_request(request *r, sy_call *c, json_t *args,
                         const char *msg) {
  r->h->api->fail(c, msg);
  request_free(r);
  json_decref(args);
}

/* One header of the step's table as a "Name: value" line on the request;
 * a message in msg when it cannot be one. */
static int add_header(request *r, const char *key, json_t *v, char *msg,
                      size_t msglen) {
  char num[64];
  const char *val = json_string_value(v);
  char *line;
  if (json_is_integer(v)) {
    snprintf(num, sizeof num, "%lld", (long long)json_integer_value(v));
    val = num;
  } else if (json_is_real(v)) {
    snprintf(num, sizeof num, "%.17g", json_real_value(v));
    val = num;
  } else if (json_is_boolean(v)) {
    val = json_is_true(v) ? "true" : "false";
  }
  if (!val) {
    snprintf(msg, msglen,
             "ctx.http: header '%.100s' must be a string or a number", key);
    return -1;
  }
  /* A line break would let a value smuggle in headers of its own. */
  if (strpbrk(key, "\r\n:") || !*key || strpbrk(val, "\r\n") ||
      (json_is_string(v) && strlen(val) != json_string_length(v))) {
    snprintf(msg, msglen,
             "ctx.http: header '%.100s' has a line break, NUL or colon in its "
             "name or value",
             key);
    return -1;
  }
  if (!(line = malloc(strlen(key) + strlen(val) + 3))) {
    snprintf(msg, msglen, "ctx.http: out of memory");
    return -1;
  }
  sprintf(line, "%s: %s", key, val);
  r->headers = curl_slist_append(r->headers, line);
  free(line);
  return 0;
}

/* The request's headers and body from the step's table a. */
static int set_content(request *r, sy_call *c, json_t *a, char *msg,
                       size_t msglen) {
  json_t *hdrs = json_object_get(a, "headers"), *v;
  const char *key;
  char line[1024];
  int has_idem = 0, has_type = 0;
  if (hdrs && !json_is_object(hdrs)) {
    snprintf(msg, msglen, "ctx.http: headers must be a table of name = value");
    return -1;
  }
  json_object_foreach(hdrs, key, v) {
    if (add_header(r, key, v, msg, msglen)) {
      return -1;
    }
    has_idem |= strcasecmp(key, "idempotency-key") == 0;
    has_type |= strcasecmp(key, "content-type") == 0;
  }
  if ((v = json_object_get(a, "json"))) {
    r->body = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!has_type) { /* the step's own Content-Type wins */
      r->headers =
          curl_slist_append(r->headers, "Content-Type: application/json");
    }
  } else if ((v = json_object_get(a, "body")) && json_is_string(v)) {
    r->body = strdup(json_string_value(v));
  }
  if (r->body) {
    curl_easy_setopt(r->easy, CURLOPT_POSTFIELDS, r->body);
  }
  /* The engine's key: a step re-run after a crash sends the same one, so
   * the server can drop the duplicate; a retry sends a new one. */
  if (!has_idem) {
    snprintf(line, sizeof line, "Idempotency-Key: %.1000s",
             r->h->api->idempotency_key(c));
    r->headers = curl_slist_append(r->headers, line);
  }
  r->headers = curl_slist_append(r->headers, "Expect:");
  curl_easy_setopt(r->easy, CURLOPT_HTTPHEADER, r->headers);
  return 0;
}

/* Lua: ctx.http{ method = "POST", url = "...", headers = { k = v },
 *                body = "text" | json = { ... }, timeout = seconds }
 *      -> { status, headers, body, json } (raises on transport errors) */
static void http_call(void *plugin, sy_call *c, const char *args_json) {
  http *h = plugin;
  const sy_api *api = h->api;
  json_t *a = json_loads(args_json, 0, NULL);
  const char *url, *method;
  request *r;
  char msg[256];
  double timeout;
  if (!json_is_object(a) || !(url = str(a, "url"))) {
    api->fail(c, "ctx.http: expected a table with at least url = \"...\"");
    json_decref(a);
    return;
  }
  if (!(r = calloc(1, sizeof *r)) || !(r->easy = curl_easy_init()) ||
      !(r->resp_headers = json_object())) {
    api->fail(c, "ctx.http: out of memory");
    if (r) {
      request_free(r);
    }
    json_decref(a);
    return;
  }
  r->h = h;
  r->call = c;
  method = str(a, "method") ? str(a, "method") : "GET";
  timeout = json_number_value(json_object_get(a, "timeout"));
  curl_easy_setopt(r->easy, CURLOPT_URL, url);
  curl_easy_setopt(r->easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(r->easy, CURLOPT_CUSTOMREQUEST, method);
  curl_easy_setopt(r->easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(r->easy, CURLOPT_ERRORBUFFER, r->errbuf);
  curl_easy_setopt(r->easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(r->easy, CURLOPT_WRITEDATA, r);
  curl_easy_setopt(r->easy, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(r->easy, CURLOPT_HEADERDATA, r);
  curl_easy_setopt(r->easy, CURLOPT_TIMEOUT_MS,
                   timeout > 0 ? (long)(timeout * 1000) : DEFAULT_TIMEOUT_MS);
  if (strcmp(method, "HEAD") == 0) {
    curl_easy_setopt(r->easy, CURLOPT_NOBODY, 1L);
  }
  if (set_content(r, c, a, msg, sizeof msg)) {
    fail_request(r, c, a, msg);
    return;
  }
  json_decref(a);
  if (cl_add(h->multi, r->easy, r)) {
    curl_easy_cleanup(r->easy);
    r->easy = NULL;
    api->fail(c, "ctx.http: cannot start the request");
    request_free(r);
    return;
  }
  r->next = h->requests;
  if (h->requests) {
    h->requests->prev = r;
  }
  h->requests = r;
}

/* The step timed out or the engine stops: abort the transfer now. */
static void http_cancel(void *plugin, sy_call *c) {
  http *h = plugin;
  for (request *r = h->requests; r; r = r->next) {
    if (r->call == c) {
      h->api->fail(c, "http: cancelled");
      request_free(r);
      return;
    }
  }
}

static const sy_ctx_fn fns[] = {
    {.name = "http", .call = http_call, .cancel = http_cancel, .shadow_ok = 1},
    {0}};

static const sy_plugin_def def = {.abi = SY_PLUGIN_ABI,
                                  .name = "http",
                                  .version = "1.0",
                                  .init = http_init,
                                  .fini = http_fini,
                                  .ctx_fns = fns};

const sy_plugin_def *sy_plugin_entry(void);
const sy_plugin_def *sy_plugin_entry(void) {
  return &def;
}
