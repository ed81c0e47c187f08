/* curl_loop: see curl_loop.h. */
#include "curl_loop.h"

#include <stdlib.h>

struct cl_multi {
  uv_loop_t *loop;
  CURLM *multi;
  uv_timer_t timer;
  cl_done_fn done;
  int background;
};

/* One watched socket; freed in its close callback, as libuv requires. */
typedef struct watch {
  uv_poll_t poll;
  curl_socket_t fd;
  cl_multi *m;
} watch;

/* Hands every finished transfer to its owner. */
static void check_done(cl_multi *m) {
  CURLMsg *msg;
  int pending;
  while ((msg = curl_multi_info_read(m->multi, &pending))) {
    CURL *easy = msg->easy_handle;
    CURLcode code = msg->data.result;
    void *ud = NULL;
    if (msg->msg != CURLMSG_DONE) {
      continue;
    }
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&ud);
    curl_multi_remove_handle(m->multi, easy);
    m->done(easy, code, ud);
  }
}

static void watch_closed(uv_handle_t *handle) {
  free(handle->data);
}

static void on_poll(uv_poll_t *p, int status, int events) {
  watch *w = p->data;
  int flags = 0, running;
  if (status < 0) {
    flags = CURL_CSELECT_ERR;
  } else {
    flags |= events & UV_READABLE ? CURL_CSELECT_IN : 0;
    flags |= events & UV_WRITABLE ? CURL_CSELECT_OUT : 0;
  }
  curl_multi_socket_action(w->m->multi, w->fd, flags, &running);
  check_done(w->m);
}

/* CURLMOPT_SOCKETFUNCTION: start, change or stop watching a socket. */
static int on_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                     void *socketp) {
  cl_multi *m = userp;
  watch *w = socketp;
  int events = 0;
  (void)easy;
  if (what == CURL_POLL_REMOVE) {
    if (w) {
      uv_poll_stop(&w->poll);
      curl_multi_assign(m->multi, fd, NULL);
      uv_close((uv_handle_t *)&w->poll, watch_closed);
    }
    return 0;
  }
  if (!w) {
    if (!(w = calloc(1, sizeof *w))) {
      return -1;
    }
    w->fd = fd;
    w->m = m;
    if (uv_poll_init_socket(m->loop, &w->poll, fd)) {
      free(w);
      return -1;
    }
    w->poll.data = w;
    if (m->background) {
      uv_unref((uv_handle_t *)&w->poll);
    }
    curl_multi_assign(m->multi, fd, w);
  }
  events |= what & CURL_POLL_IN ? UV_READABLE : 0;
  events |= what & CURL_POLL_OUT ? UV_WRITABLE : 0;
  uv_poll_start(&w->poll, events, on_poll);
  return 0;
}

static void on_timer(uv_timer_t *t) {
  cl_multi *m = t->data;
  int running;
  curl_multi_socket_action(m->multi, CURL_SOCKET_TIMEOUT, 0, &running);
  check_done(m);
}

/* CURLMOPT_TIMERFUNCTION: curl asks to be woken in timeout_ms (-1: not). */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp) {
  cl_multi *m = userp;
  (void)multi;
  if (timeout_ms < 0) {
    uv_timer_stop(&m->timer);
  } else {
    /* 0 means "now": a loop turn later, never from inside curl. */
    uv_timer_start(&m->timer, on_timer, (uint64_t)timeout_ms, 0);
  }
  return 0;
}

cl_multi *cl_multi_new(uv_loop_t *loop, cl_done_fn done, int background) {
  cl_multi *m = calloc(1, sizeof *m);
  if (!m) {
    return NULL;
  }
  /* Reference-counted by libcurl: each user pairs it with a cleanup. */
  if (curl_global_init(CURL_GLOBAL_DEFAULT)) {
    free(m);
    return NULL;
  }
  if (!(m->multi = curl_multi_init())) {
    curl_global_cleanup();
    free(m);
    return NULL;
  }
  m->loop = loop;
  m->done = done;
  m->background = background;
  uv_timer_init(loop, &m->timer);
  m->timer.data = m;
  if (background) {
    uv_unref((uv_handle_t *)&m->timer);
  }
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETFUNCTION, on_socket);
  curl_multi_setopt(m->multi, CURLMOPT_SOCKETDATA, m);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
  curl_multi_setopt(m->multi, CURLMOPT_TIMERDATA, m);
  return m;
}

int cl_add(cl_multi *m, CURL *easy, void *ud) {
  curl_easy_setopt(easy, CURLOPT_PRIVATE, ud);
  return curl_multi_add_handle(m->multi, easy) == CURLM_OK ? 0 : -1;
}

void cl_remove(cl_multi *m, CURL *easy) {
  curl_multi_remove_handle(m->multi, easy);
}

static void timer_closed(uv_handle_t *handle) {
  free(handle->data);
}

void cl_multi_free(cl_multi *m) {
  if (!m) {
    return;
  }
  /* Cleaning up the multi handle closes its cached connections
   * (CURL_POLL_REMOVE closes their watches). */
  curl_multi_cleanup(m->multi);
  curl_global_cleanup();
  uv_timer_stop(&m->timer);
  uv_close((uv_handle_t *)&m->timer, timer_closed);
}
