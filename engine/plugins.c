/* The plugin registry (see plugins.h): loads shared modules with uv_dlopen,
 * checks their ABI version, and indexes what they register. */
#include "plugins.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "store.h"

/* Entries are few (a handful of plugins), so flat arrays searched linearly
 * are both the simplest and the fastest structure here. */
struct sy_plugins {
  sy_loaded_plugin **plugins;
  int nplugins;
  sy_node_entry *nodes;
  int nnodes;
  sy_ctx_fn_entry *fns;
  int nfns;
  sy_command_entry *cmds;
  int ncmds;
};

int sy_plugins_new(sy_plugins **out) {
  sy_plugins *p = calloc(1, sizeof *p);
  if (!p) {
    return SY_ENOMEM;
  }
  *out = p;
  return 0;
}

void sy_plugins_fini(sy_plugins *p) {
  if (!p) {
    return;
  }
  for (int i = p->nplugins - 1; i >= 0; i--) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (lp->initialized && lp->def->fini) {
      lp->def->fini(lp->state);
    }
    lp->initialized = 0;
  }
}

void sy_plugins_free(sy_plugins *p) {
  if (!p) {
    return;
  }
  sy_plugins_fini(p);
  for (int i = p->nplugins - 1; i >= 0; i--) {
    sy_loaded_plugin *lp = p->plugins[i];
    free(lp->path);
    free(lp->retry_values);
    free(lp);
  }
  free(p->plugins);
  free(p->nodes);
  free(p->fns);
  free(p->cmds);
  free(p);
}

static int grow(void **arr, int n, size_t size) {
  void *a = realloc(*arr, (size_t)(n + 1) * size);
  if (!a) {
    return SY_ENOMEM;
  }
  *arr = a;
  return 0;
}

int sy_plugins_add(sy_plugins *p, const sy_plugin_def *def, const char *origin,
                   char *err, size_t errlen) {
  sy_loaded_plugin *lp;
  if (!def || def->abi != SY_PLUGIN_ABI) {
    snprintf(err, errlen,
             "plugin %s was built for plugin ABI %d, this engine has ABI %d",
             origin, def ? def->abi : -1, SY_PLUGIN_ABI);
    return SY_EPLUGIN;
  }
  if (!def->name || !def->init) {
    snprintf(err, errlen, "plugin %s: definition lacks a name or init", origin);
    return SY_EPLUGIN;
  }
  for (int i = 0; i < p->nplugins; i++) {
    if (strcmp(p->plugins[i]->def->name, def->name) == 0) {
      snprintf(err, errlen, "plugin %s: a plugin named '%s' is loaded already",
               origin, def->name);
      return SY_EPLUGIN;
    }
  }
  for (const sy_node_type *n = def->nodes; n && n->name; n++) {
    if (sy_plugins_node(p, n->name) || strcmp(n->name, "task") == 0 ||
        strcmp(n->name, "workflow") == 0) {
      snprintf(err, errlen, "plugin %s: node type '%s' is defined twice",
               origin, n->name);
      return SY_EPLUGIN;
    }
  }
  if (!(lp = calloc(1, sizeof *lp)) ||
      grow((void **)&p->plugins, p->nplugins, sizeof *p->plugins)) {
    free(lp);
    snprintf(err, errlen, "out of memory");
    return SY_ENOMEM;
  }
  lp->def = def;
  lp->index = p->nplugins;
  p->plugins[p->nplugins++] = lp;
  for (const sy_node_type *n = def->nodes; n && n->name; n++) {
    if (grow((void **)&p->nodes, p->nnodes, sizeof *p->nodes)) {
      return SY_ENOMEM;
    }
    p->nodes[p->nnodes++] = (sy_node_entry){n, lp};
  }
  for (const sy_ctx_fn *f = def->ctx_fns; f && f->name; f++) {
    if (grow((void **)&p->fns, p->nfns, sizeof *p->fns)) {
      return SY_ENOMEM;
    }
    p->fns[p->nfns++] = (sy_ctx_fn_entry){f, lp};
  }
  for (const sy_command *c = def->commands; c && c->name; c++) {
    if (grow((void **)&p->cmds, p->ncmds, sizeof *p->cmds)) {
      return SY_ENOMEM;
    }
    p->cmds[p->ncmds++] = (sy_command_entry){c, lp};
  }
  return 0;
}

int sy_plugins_load_file(sy_plugins *p, const char *path, char *err,
                         size_t errlen) {
  uv_lib_t lib;
  sy_plugin_entry_fn entry;
  int rc;
  if (uv_dlopen(path, &lib)) {
    snprintf(err, errlen, "cannot load plugin %s: %s", path, uv_dlerror(&lib));
    uv_dlclose(&lib);
    return SY_EPLUGIN;
  }
  if (uv_dlsym(&lib, SY_PLUGIN_ENTRY, (void **)&entry)) {
    snprintf(err, errlen, "plugin %s does not export %s", path,
             SY_PLUGIN_ENTRY);
    uv_dlclose(&lib);
    return SY_EPLUGIN;
  }
  rc = sy_plugins_add(p, entry(), path, err, errlen);
  if (rc) {
    uv_dlclose(&lib);
    return rc;
  }
  /* A loaded plugin stays loaded until the process exits, as if opened
   * with RTLD_NODELETE: the libraries it pulls in (libcurl, and through it
   * GnuTLS) are not made to be unloaded, and unloading them leaves stale
   * thread-local entries that crash LeakSanitizer's exit-time scan. Opening
   * it again (a second engine in one process) only counts a reference. */
  p->plugins[p->nplugins - 1]->path = strdup(path);
  return 0;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

int sy_plugins_load_dir(sy_plugins *p, const char *dir, char *err,
                        size_t errlen) {
  DIR *d = opendir(dir);
  struct dirent *ent;
  char **names = NULL;
  int n = 0, rc = 0;
  if (!d) {
    return 0;
  }
  while ((ent = readdir(d))) {
    size_t len = strlen(ent->d_name);
    if (len > 3 && strcmp(ent->d_name + len - 3, ".so") == 0) {
      if (grow((void **)&names, n, sizeof *names) ||
          !(names[n] = strdup(ent->d_name))) {
        rc = SY_ENOMEM;
        break;
      }
      n++;
    }
  }
  closedir(d);
  /* A fixed order, so the same directory always loads the same way. */
  if (names) {
    qsort(names, (size_t)n, sizeof *names, by_name);
  }
  for (int i = 0; i < n; i++) {
    char path[4096];
    if (!rc) {
      snprintf(path, sizeof path, "%s/%s", dir, names[i]);
      rc = sy_plugins_load_file(p, path, err, errlen);
    }
    free(names[i]);
  }
  free(names);
  return rc;
}

/* One try at every plugin's init inside one transaction (write: one that
 * takes the write lock at once). */
static int init_all(sy_plugins *p, const sy_api *api, sy_engine *e,
                    sy_store *st, int write, char *err, size_t errlen) {
  int rc;
  if ((rc = sy_store_begin_as(st, write))) {
    snprintf(err, errlen, "%s", sy_store_errmsg(st));
    return rc;
  }
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    char msg[512] = "";
    if (lp->initialized) {
      continue;
    }
    if (lp->def->init(api, e, &lp->state, msg, sizeof msg)) {
      int busy = sy_store_busy(st);
      snprintf(err, errlen, "plugin %s: %s", lp->def->name, msg);
      sy_store_rollback(st);
      return busy ? SY_EBUSY : SY_EPLUGIN;
    }
    lp->initialized = 1;
  }
  if ((rc = sy_store_commit(st))) {
    snprintf(err, errlen, "%s", sy_store_errmsg(st));
  }
  return rc;
}

int sy_plugins_init(sy_plugins *p, const sy_api *api, sy_engine *e,
                    sy_store *st, char *err, size_t errlen) {
  int rc;
  if (p->nplugins == 0) {
    return 0;
  }
  /* Deferred first: plugins whose tables are up to date only read, so
   * commands that only read do not wait for another process's write lock.
   * A plugin that must create its tables turns that read into a write,
   * which SQLite refuses at once, without the busy handler, when another
   * process wrote meanwhile; then every init runs again under the write
   * lock, taken with the busy handler's patience. */
  rc = init_all(p, api, e, st, 0, err, errlen);
  if (rc == SY_EBUSY) {
    sy_plugins_fini(p);
    rc = init_all(p, api, e, st, 1, err, errlen);
  }
  return rc;
}

const sy_node_entry *sy_plugins_node(const sy_plugins *p, const char *name) {
  for (int i = 0; i < p->nnodes; i++) {
    if (strcmp(p->nodes[i].type->name, name) == 0) {
      return &p->nodes[i];
    }
  }
  return NULL;
}

int sy_plugins_ctx_fn_count(const sy_plugins *p) {
  return p->nfns;
}

const sy_ctx_fn_entry *sy_plugins_ctx_fn(const sy_plugins *p, int i) {
  return &p->fns[i];
}

const sy_command_entry *sy_plugins_command(const sy_plugins *p,
                                           const char *name) {
  for (int i = 0; i < p->ncmds; i++) {
    if (strcmp(p->cmds[i].cmd->name, name) == 0) {
      return &p->cmds[i];
    }
  }
  return NULL;
}

int sy_plugins_command_count(const sy_plugins *p) {
  return p->ncmds;
}

const sy_command_entry *sy_plugins_command_at(const sy_plugins *p, int i) {
  return &p->cmds[i];
}

void sy_plugins_node_names(const sy_plugins *p, char *buf, size_t len) {
  size_t used = (size_t)snprintf(buf, len, "task");
  for (int i = 0; i < p->nnodes && used < len; i++) {
    used += (size_t)snprintf(buf + used, len - used, ", %s",
                             p->nodes[i].type->name);
  }
}

int sy_plugins_event(sy_plugins *p, const sy_event *ev, void *const *memos) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    sy_event mine = *ev;
    mine.memo = memos ? memos[i] : NULL;
    if (lp->initialized && lp->def->on_event &&
        lp->def->on_event(lp->state, &mine)) {
      return SY_EPLUGIN;
    }
  }
  return 0;
}

int sy_plugins_count(const sy_plugins *p) {
  return p->nplugins;
}

void sy_plugins_retry_names(const sy_plugins *p,
                            void (*cb)(void *ud, const char *name), void *ud) {
  for (int i = 0; i < p->nplugins; i++) {
    const char *const *o = p->plugins[i]->def->retry_options;
    for (; o && *o; o++) {
      cb(ud, *o);
    }
  }
}

int sy_plugins_retry_set(sy_plugins *p, const char *name, const char *value) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    const char *const *o = lp->def->retry_options;
    int n = 0;
    for (; o && o[n]; n++) {
    }
    for (int k = 0; k < n; k++) {
      if (strcmp(o[k], name) != 0) {
        continue;
      }
      if (!lp->retry_values &&
          !(lp->retry_values = calloc((size_t)n, sizeof *lp->retry_values))) {
        return SY_ENOMEM;
      }
      lp->retry_values[k] = value;
      return 0;
    }
  }
  return SY_EINVAL;
}

sy_loaded_plugin *sy_plugins_by_state(sy_plugins *p, const void *state) {
  for (int i = 0; i < p->nplugins; i++) {
    if (p->plugins[i]->state == state) {
      return p->plugins[i];
    }
  }
  return NULL;
}

int sy_plugins_retry_given(const sy_plugins *p) {
  for (int i = 0; i < p->nplugins; i++) {
    if (p->plugins[i]->retry_values) {
      return 1;
    }
  }
  return 0;
}

int sy_plugins_retry_filter(sy_plugins *p, const sy_retry_inst *inst, char *at,
                            size_t atlen, char *err, size_t errlen) {
  int verdict = SY_RETRY_HERE;
  at[0] = '\0';
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    char mine[256] = "";
    int rc;
    if (!lp->retry_values || !lp->def->retry_filter || !lp->initialized) {
      continue;
    }
    rc = lp->def->retry_filter(lp->state, lp->retry_values, inst, mine,
                               sizeof mine, err, errlen);
    if (rc < 0) {
      return rc;
    }
    if (!inst) {
      continue;
    }
    if (rc == SY_RETRY_SKIP) {
      return SY_RETRY_SKIP;
    }
    if (rc == SY_RETRY_AT) {
      verdict = SY_RETRY_AT;
      snprintf(at, atlen, "%s", mine);
    }
  }
  return verdict;
}

void sy_plugins_free_memos(sy_plugins *p, void **memos) {
  for (int i = 0; memos && i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (memos[i] && lp->def->free_memo) {
      lp->def->free_memo(lp->state, memos[i]);
    }
  }
  free(memos);
}

void sy_plugins_rolled_back(sy_plugins *p) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (lp->initialized && lp->def->rolled_back) {
      lp->def->rolled_back(lp->state);
    }
  }
}

int sy_plugins_before_commit(sy_plugins *p) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (lp->initialized && lp->def->before_commit &&
        lp->def->before_commit(lp->state)) {
      return SY_EPLUGIN;
    }
  }
  return 0;
}

int sy_plugins_metrics(sy_plugins *p, void (*put)(void *ud, const char *text),
                       void *ud) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (lp->initialized && lp->def->metrics &&
        lp->def->metrics(lp->state, put, ud)) {
      return SY_EPLUGIN;
    }
  }
  return 0;
}

int sy_plugins_describe(sy_plugins *p, int64_t id, int json,
                        void (*put)(void *ud, const char *key,
                                    const char *text),
                        void *ud) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    int rc;
    if (lp->initialized && lp->def->describe &&
        (rc = lp->def->describe(lp->state, id, json, put, ud))) {
      return rc;
    }
  }
  return 0;
}

int sy_plugins_serve(sy_plugins *p, const sy_http_request *req,
                     sy_http_response *resp) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    int rc;
    if (lp->initialized && lp->def->serve &&
        (rc = lp->def->serve(lp->state, req, resp)) != SY_ENOTFOUND) {
      return rc;
    }
  }
  return SY_ENOTFOUND;
}

int sy_plugins_sections(sy_plugins *p, const sy_http_request *req,
                        sy_http_response *resp) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    int rc;
    if (lp->initialized && lp->def->serve && lp->def->section &&
        (rc = lp->def->section(lp->state, req, resp))) {
      return rc;
    }
  }
  return 0;
}

void sy_plugins_pages(sy_plugins *p,
                      void (*cb)(void *ud, const char *path, const char *label),
                      void *ud) {
  for (int i = 0; i < p->nplugins; i++) {
    sy_loaded_plugin *lp = p->plugins[i];
    if (lp->initialized && lp->def->serve && lp->def->page_path &&
        lp->def->page_label) {
      cb(ud, lp->def->page_path, lp->def->page_label);
    }
  }
}
