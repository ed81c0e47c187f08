/* The engine's own ctx functions, registered through the plugin ABI like
 * any plugin's so that they are numbered and journaled like any call:
 *
 *   ctx.now() -> seconds since the epoch (milliseconds in the fraction),
 *                the same when the step is run again from its start. */
#include <stdio.h>

#include "engine_int.h"

static const sy_api *api;

static int builtins_init(const sy_api *a, sy_engine *e, void **state, char *err,
                         size_t errlen) {
  (void)e;
  (void)err;
  (void)errlen;
  api = a;
  *state = NULL;
  return 0;
}

static void builtins_fini(void *state) {
  (void)state;
}

/* Lua: ctx.now() -> number */
static void now_call(void *state, sy_call *c, const char *args_json) {
  char json[32];
  (void)state;
  (void)args_json;
  snprintf(json, sizeof json, "%.3f",
           (double)api->now_ms(api->engine(c)) / 1000.0);
  api->done_json(c, json);
}

static const sy_ctx_fn fns[] = {{.name = "now", .call = now_call},
                                {.name = NULL}};

const sy_plugin_def sy__builtins = {.abi = SY_PLUGIN_ABI,
                                    .name = "builtins",
                                    .version = "1",
                                    .init = builtins_init,
                                    .fini = builtins_fini,
                                    .ctx_fns = fns};
