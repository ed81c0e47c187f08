/* The engine (engine.h): opening and closing it (store, plugins, Lua
 * host, loop), the definitions it has loaded, and starting instances. The
 * rest of its work is in executor.c, scheduler.c, plugin_api.c and
 * incident.c (engine_int.h tells which does what). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine_int.h"

/* ---------------------------------------------------------------------
 * Errors and helpers */

int sy__set_error(sy_engine *e, int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->errmsg, sizeof e->errmsg, fmt, ap);
  va_end(ap);
  return code;
}

/* What was committed is consistent; the rest re-runs on restart. The
 * message is the store's for a store failure (copied here, the one place
 * that turns them into the engine's), else the code's. */
void sy__fatal(sy_engine *e, int rc) {
  if (!e->fatal) {
    e->fatal = rc ? rc : SY_ESTORE;
    if (e->fatal == SY_ESTORE || e->fatal == SY_EBUSY) {
      sy__set_error(e, e->fatal, "%s", sy_store_errmsg(e->store));
    } else if (e->fatal == SY_EPLUGIN) {
      sy__set_error(e, e->fatal,
                    "a plugin failed to record a change (its own message, if "
                    "any, is above); the turn was rolled back");
    } else {
      sy__set_error(e, e->fatal, "%s", sy_strerror(e->fatal));
    }
    fprintf(stderr, "switchyard: stopping: %s\n", e->errmsg);
  }
  sy_engine_stop(e);
}

void sy_engine_rollback(sy_engine *e) {
  sy_store_rollback(e->store);
  sy_plugins_rolled_back(e->plugins);
}

const char *sy_engine_errmsg(sy_engine *e) {
  return e->errmsg;
}

sy_store *sy_engine_store(sy_engine *e) {
  return e->store;
}

uv_loop_t *sy_engine_loop(sy_engine *e) {
  return &e->loop;
}

sy_plugins *sy_engine_plugins(sy_engine *e) {
  return e->plugins;
}

void sy_engine_stats(sy_engine *e, sy_run_stats *s) {
  *s = e->stats;
}

uint64_t sy__random(sy_engine *e) {
  /* xorshift64*: small, fast and seedable; routing needs no more. */
  uint64_t x = e->rng;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  e->rng = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* ---------------------------------------------------------------------
 * Definitions */

static const sy_workflow *find_def(sy_engine *e, const char *hash) {
  for (def_entry *d = e->defs; d; d = d->next) {
    if (strcmp(d->wf->hash, hash) == 0) {
      return d->wf;
    }
  }
  return NULL;
}

static const sy_workflow *keep_def(sy_engine *e, sy_workflow *wf) {
  def_entry *d = malloc(sizeof *d);
  if (!d) {
    sy_workflow_free(e->lua, wf);
    return NULL;
  }
  d->wf = wf;
  d->next = e->defs;
  e->defs = d;
  return wf;
}

const sy_workflow *sy__def_by_hash(sy_engine *e, const char *hash) {
  const sy_workflow *wf = find_def(e, hash);
  sy_workflow *loaded;
  char *source = NULL, *path = NULL;
  size_t len = 0;
  sy_diag diag;
  if (wf) {
    return wf;
  }
  if (sy_store_get_definition(e->store, hash, &source, &len, &path)) {
    sy__set_error(e, SY_ENOTFOUND, "%s", sy_store_errmsg(e->store));
    return NULL;
  }
  if (sy_workflow_load(e->lua, path ? path : hash, source, len, &loaded,
                       &diag)) {
    sy__set_error(e, SY_ELOAD, "stored definition %.12s no longer loads: %s",
                  hash, diag.error);
    loaded = NULL;
  }
  free(source);
  free(path);
  return loaded ? keep_def(e, loaded) : NULL;
}

int sy_engine_load_workflow(sy_engine *e, const char *name_or_path,
                            const sy_workflow **out, sy_diag *diag) {
  char path[4096];
  size_t n = strlen(name_or_path);
  sy_workflow *wf;
  const sy_workflow *have;
  int rc;
  if (n > 4 && strcmp(name_or_path + n - 4, ".lua") == 0) {
    snprintf(path, sizeof path, "%s", name_or_path);
  } else {
    snprintf(path, sizeof path, "%s/%s.lua", e->o.workflows_dir, name_or_path);
  }
  if ((rc = sy_workflow_load_file(e->lua, path, &wf, diag))) {
    return rc;
  }
  if (!(n > 4 && strcmp(name_or_path + n - 4, ".lua") == 0) &&
      strcmp(wf->name, name_or_path) != 0) {
    snprintf(diag->error, sizeof diag->error,
             "%.400s:%d: declares workflow '%.200s', not '%.200s'", path,
             wf->line, wf->name, name_or_path);
    sy_workflow_free(e->lua, wf);
    return SY_ELOAD;
  }
  if ((have = find_def(e, wf->hash))) {
    sy_workflow_free(e->lua, wf);
    *out = have;
    return 0;
  }
  if ((rc = sy_store_put_definition(e->store, wf->hash, wf->name, wf->path,
                                    wf->source, wf->source_len))) {
    snprintf(diag->error, sizeof diag->error, "%s", sy_store_errmsg(e->store));
    sy_workflow_free(e->lua, wf);
    return rc;
  }
  if (!(*out = keep_def(e, wf))) {
    return SY_ENOMEM;
  }
  return 0;
}

int sy__sync_clock(sy_engine *e) {
  int64_t before = sy_now_ms() + e->skew_ms, server, after;
  int rc = sy_store_clock(e->store, &server);
  if (rc == SY_ENOTFOUND) {
    return 0;
  }
  if (rc) {
    return rc;
  }
  after = sy_now_ms() + e->skew_ms;
  /* The server read its clock about halfway through the round trip. */
  e->clock_offset_ms = server - (before + after) / 2;
  return 0;
}

const sy_workflow *sy_engine_definition(sy_engine *e, const char *hash) {
  return sy__def_by_hash(e, hash);
}

void sy_engine_workflow_edges(sy_engine *e, const sy_workflow *wf,
                              sy_edge_cb cb, void *ud) {
  sy_workflow_edges(e->lua, wf, cb, ud);
}

int64_t sy_engine_now_ms(sy_engine *e) {
  return sy__now(e);
}

int sy_engine_start(sy_engine *e, const sy_workflow *wf, const char *vars_json,
                    int64_t *id) {
  int rc = sy_store_insert_instance(e->store, wf->name, wf->hash,
                                    wf->start->name, vars_json, sy__now(e), id);
  if (rc) {
    return sy__set_error(e, rc, "%s", sy_store_errmsg(e->store));
  }
  return 0;
}

/* ---------------------------------------------------------------------
 * Open and close */

void sy_engine_opts_init(sy_engine_opts *o) {
  memset(o, 0, sizeof *o);
  o->db_path = "switchyard.db";
  o->workflows_dir = "workflows";
  o->concurrency = 512;
  o->sync = SY_SYNC_FULL;
  o->lua_memory = (size_t)1 << 30;
  o->step_instructions = 50 * 1000 * 1000;
  o->seed = 0x5eed5eed5eedULL;
}

int sy_engine_open(sy_engine **out, const sy_engine_opts *o, char *err,
                   size_t errlen) {
  sy_engine *e = calloc(1, sizeof *e);
  sy_store_opts so = {.sync = o->sync,
                      .read_only = o->read_only,
                      .busy_timeout_ms = o->busy_timeout_ms,
                      .expect_write = o->expect_write};
  sy_lua_limits limits = {o->lua_memory, o->step_instructions};
  int rc;
  if (!e) {
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  e->o = *o;
  e->rng = o->seed ? o->seed : 1;
  {
    /* A fresh identity per engine process: leases name their owner. */
    unsigned char raw[8];
    size_t hl = sizeof e->host;
    if (uv_random(NULL, NULL, raw, sizeof raw, 0, NULL)) {
      memset(raw, 0, sizeof raw);
    }
    snprintf(e->id, sizeof e->id, "%d-%02x%02x%02x%02x%02x%02x%02x%02x",
             (int)uv_os_getpid(), raw[0], raw[1], raw[2], raw[3], raw[4],
             raw[5], raw[6], raw[7]);
    if (uv_os_gethostname(e->host, &hl)) {
      snprintf(e->host, sizeof e->host, "localhost");
    }
  }
  sy__api_init(&e->api);
  if ((rc = uv_loop_init(&e->loop))) {
    snprintf(err, errlen, "event loop: %s", uv_strerror(rc));
    free(e);
    return SY_EIO;
  }
  e->loop_open = 1;
  if ((rc = sy_plugins_new(&e->plugins))) {
    snprintf(err, errlen, "out of memory");
    goto fail;
  }
  if ((rc = sy_plugins_add(e->plugins, &sy__builtins, "(built in)", err,
                           errlen))) {
    goto fail;
  }
  for (int i = 0; i < o->nstatic_plugins; i++) {
    if ((rc = sy_plugins_add(e->plugins, o->static_plugins[i], "(linked in)",
                             err, errlen))) {
      goto fail;
    }
  }
  if (o->plugin_dir &&
      (rc = sy_plugins_load_dir(e->plugins, o->plugin_dir, err, errlen))) {
    goto fail;
  }
  if ((rc = sy_store_open(&e->store, o->db_path, &so, err, errlen))) {
    goto fail;
  }
  for (int i = 0; i < o->nsettings; i++) {
    if (strcmp(o->settings[i].key, "clock.skew_ms") == 0) {
      e->skew_ms = strtoll(o->settings[i].value, NULL, 10);
    } else if (strcmp(o->settings[i].key, "clock.advance_ms") == 0) {
      e->advance_ms = strtoll(o->settings[i].value, NULL, 10);
    } else if (strcmp(o->settings[i].key, "clock.virtual") == 0) {
      e->virtual_clock = strcmp(o->settings[i].value, "0") != 0;
    } else if (strcmp(o->settings[i].key, "engine.poll_ms") == 0) {
      e->poll_ms = strtoll(o->settings[i].value, NULL, 10);
    }
  }
  if ((rc = sy__sync_clock(e))) {
    snprintf(err, errlen, "%s", sy_store_errmsg(e->store));
    goto fail;
  }
  if (!o->read_only &&
      (rc = sy_plugins_init(e->plugins, &e->api, e, e->store, err, errlen))) {
    goto fail;
  }
  if ((rc = sy_lua_new(&e->lua, &limits, e->plugins, sy__ctx_call, e))) {
    snprintf(err, errlen, "cannot create the Lua state");
    goto fail;
  }
  *out = e;
  return 0;
fail:
  sy_engine_close(e);
  return rc;
}

void sy_engine_close(sy_engine *e) {
  if (!e) {
    return;
  }
  while (e->all) {
    sy__inst_free(e->all);
  }
  while (e->defs) {
    def_entry *d = e->defs;
    e->defs = d->next;
    sy_workflow_free(e->lua, d->wf);
    free(d);
  }
  sy_lua_free(e->lua);
  sy_plugins_fini(e->plugins);
  if (e->loop_open) {
    /* Close callbacks of what the plugins closed, while they are loaded. */
    uv_run(&e->loop, UV_RUN_NOWAIT);
  }
  sy_store_close(e->store);
  sy_plugins_free(e->plugins);
  if (e->loop_open) {
    /* Every handle is closed by now; anything left is a bug. */
    SY_ASSERT(uv_loop_close(&e->loop) == 0);
  }
  free(e);
}
