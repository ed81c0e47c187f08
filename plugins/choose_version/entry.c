/* The one symbol the choose_version module exports. Kept apart so that
 * tests and benchmarks can link the plugin statically without it. */
#include "cv.h"

const sy_plugin_def *sy_plugin_entry(void);
const sy_plugin_def *sy_plugin_entry(void) {
  return cv_plugin_def();
}
