/* A plugin built for another ABI version: the engine must refuse it. */
#include <switchyard/plugin.h>

static int init(const sy_api *api, sy_engine *e, void **state, char *err,
                size_t errlen) {
  (void)api;
  (void)e;
  (void)state;
  (void)err;
  (void)errlen;
  return 0;
}

static const sy_plugin_def def = {
    .abi = SY_PLUGIN_ABI + 41, .name = "badabi", .init = init};

const sy_plugin_def *sy_plugin_entry(void);
const sy_plugin_def *sy_plugin_entry(void) {
  return &def;
}
