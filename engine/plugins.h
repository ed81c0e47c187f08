/* The registry of loaded plugins: shared modules found in a directory (or
 * definitions linked in statically, for tests), their node types, ctx
 * functions, CLI commands and event hooks. */
#ifndef SY_PLUGINS_H
#define SY_PLUGINS_H

#include "switchyard/plugin.h"

typedef struct sy_plugins sy_plugins;
typedef struct sy_store sy_store;

typedef struct sy_loaded_plugin {
  const sy_plugin_def *def;
  void *state; /* what def->init returned */
  int initialized;
  int index; /* its place in the registry: its slot in an instance's memos */
  char *path;
  /* The values of its retry_options a retry was given (NULL: none). */
  const char **retry_values;
} sy_loaded_plugin;

typedef struct sy_node_entry {
  const sy_node_type *type;
  sy_loaded_plugin *plugin;
} sy_node_entry;

typedef struct sy_ctx_fn_entry {
  const sy_ctx_fn *fn;
  sy_loaded_plugin *plugin;
} sy_ctx_fn_entry;

typedef struct sy_command_entry {
  const sy_command *cmd;
  sy_loaded_plugin *plugin;
} sy_command_entry;

int sy_plugins_new(sy_plugins **out);
/* Calls every plugin's fini. The caller then runs the loop once, so that
 * handles the plugins closed get their close callbacks, and only then frees
 * the registry. */
void sy_plugins_fini(sy_plugins *p);
void sy_plugins_free(sy_plugins *p);
/* Loads every *.so in dir; a missing dir is not an error. */
int sy_plugins_load_dir(sy_plugins *p, const char *dir, char *err,
                        size_t errlen);
int sy_plugins_load_file(sy_plugins *p, const char *path, char *err,
                         size_t errlen);
int sy_plugins_add(sy_plugins *p, const sy_plugin_def *def, const char *origin,
                   char *err, size_t errlen);
/* Runs each plugin's init inside one transaction of the store. */
int sy_plugins_init(sy_plugins *p, const sy_api *api, sy_engine *e,
                    sy_store *st, char *err, size_t errlen);

const sy_node_entry *sy_plugins_node(const sy_plugins *p, const char *name);
int sy_plugins_ctx_fn_count(const sy_plugins *p);
const sy_ctx_fn_entry *sy_plugins_ctx_fn(const sy_plugins *p, int i);
const sy_command_entry *sy_plugins_command(const sy_plugins *p,
                                           const char *name);
int sy_plugins_command_count(const sy_plugins *p);
const sy_command_entry *sy_plugins_command_at(const sy_plugins *p, int i);
/* Names of all node types, comma-separated, for error messages. */
void sy_plugins_node_names(const sy_plugins *p, char *buf, size_t len);
/* Lets every plugin flush batched writes before a commit. */
int sy_plugins_before_commit(sy_plugins *p);
/* Each plugin's metrics, Prometheus' text format, through put (serve). */
int sy_plugins_metrics(sy_plugins *p, void (*put)(void *ud, const char *text),
                       void *ud);
/* What each plugin keeps about instance id (describe), in load order. */
int sy_plugins_describe(sy_plugins *p, int64_t id, int json,
                        void (*put)(void *ud, const char *key,
                                    const char *text),
                        void *ud);
/* The first plugin that serves req's path answers it (serve); SY_ENOTFOUND
 * when none does. */
int sy_plugins_serve(sy_plugins *p, const sy_http_request *req,
                     sy_http_response *resp);
/* Each plugin's section of the engine's page req->path (serve), in load
 * order. */
int sy_plugins_sections(sy_plugins *p, const sy_http_request *req,
                        sy_http_response *resp);
/* Each plugin's first page (page_path, page_label), for navigation. */
void sy_plugins_pages(sy_plugins *p,
                      void (*cb)(void *ud, const char *path, const char *label),
                      void *ud);
/* Tells every plugin that the transaction was rolled back. */
void sy_plugins_rolled_back(sy_plugins *p);
/* Reports an event to every plugin, each with its own memo from memos
 * (one slot per plugin, by index; may be NULL); non-zero if one failed. */
int sy_plugins_event(sy_plugins *p, const sy_event *ev, void *const *memos);
int sy_plugins_count(const sy_plugins *p);
/* The plugins' retry options (sy_plugin_def.retry_options): each name,
 * through cb. */
void sy_plugins_retry_names(const sy_plugins *p,
                            void (*cb)(void *ud, const char *name), void *ud);
/* Gives the retry option `name` its value: 0, SY_EINVAL when no plugin has
 * it, SY_ENOMEM. */
int sy_plugins_retry_set(sy_plugins *p, const char *name, const char *value);
/* The loaded plugin whose state is `state`, or NULL. */
sy_loaded_plugin *sy_plugins_by_state(sy_plugins *p, const void *state);
/* Whether any retry option was given. */
int sy_plugins_retry_given(const sy_plugins *p);
/* Asks each plugin given retry options to check them (inst NULL), or to
 * filter inst: the most restrictive answer (a skip wins, then a step to
 * retry at), or a negative SY_E* code with err. */
int sy_plugins_retry_filter(sy_plugins *p, const sy_retry_inst *inst, char *at,
                            size_t atlen, char *err, size_t errlen);
/* Hands each memo to its plugin's free_memo, then frees the array. */
void sy_plugins_free_memos(sy_plugins *p, void **memos);

#endif
