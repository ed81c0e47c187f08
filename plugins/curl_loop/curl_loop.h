/* curl_loop: libcurl's multi-socket interface driven by a libuv loop, for
 * the plugins that talk HTTP (the http plugin's ctx.http, choose_version's
 * notifications). curl says which sockets to watch and when to wake it;
 * uv_poll and a uv_timer do the watching, so a transfer never blocks the
 * loop, needs no thread, and connections are reused across transfers by
 * the multi handle's cache.
 *
 *   cl_multi *m = cl_multi_new(loop, on_done, 0); // on_done(easy, code, ud)
 *   curl_easy_setopt(easy, ...);                  // the caller's options
 *   cl_add(m, easy, ud);                          // runs on the loop
 *   ... on_done is called once, from a loop callback, when it ends; the
 *   easy handle is then out of the multi handle and the caller's to free.
 *   cl_remove(m, easy);                           // abandon one (no on_done)
 *   cl_multi_free(m);                             // after removing them all
 *
 * CURLOPT_PRIVATE is curl_loop's: it carries ud. */
#ifndef CURL_LOOP_H
#define CURL_LOOP_H

#include <curl/curl.h>
#include <uv.h>

typedef struct cl_multi cl_multi;
typedef void (*cl_done_fn)(CURL *easy, CURLcode code, void *ud);

/* NULL when libcurl cannot be initialized (or out of memory). background:
 * its transfers never keep the loop running (uv_unref), for work done
 * beside the engine's, which the owner abandons when the loop ends. */
cl_multi *cl_multi_new(uv_loop_t *loop, cl_done_fn done, int background);
/* 0, or -1 when curl refuses the handle (on_done is then never called). */
int cl_add(cl_multi *m, CURL *easy, void *ud);
void cl_remove(cl_multi *m, CURL *easy);
/* Frees the multi handle; its timer and socket watches are closed, and
 * freed in their close callbacks: the loop must run once more before the
 * code that owns them is unloaded. */
void cl_multi_free(cl_multi *m);

#endif
