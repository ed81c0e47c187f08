/* The plugin ABI: loading modules, ABI version checks, registration. */
#include "check.h"
#include "engine.h"
#include "error.h"
#include "plugins.h"

static void test_loads_echo(void) {
  sy_plugins *p;
  char err[512] = "";
  CHECK_EQ(sy_plugins_new(&p), 0);
  CHECK_EQ(sy_plugins_load_dir(p, SY_TEST_PLUGIN_DIR, err, sizeof err), 0);
  CHECK(sy_plugins_node(p, "echo_node") != NULL);
  CHECK(sy_plugins_node(p, "nope") == NULL);
  CHECK_EQ(sy_plugins_ctx_fn_count(p), 2);
  CHECK_EQ(sy_plugins_ctx_fn(p, 0)->fn->name, "echo");
  CHECK_EQ(sy_plugins_ctx_fn(p, 1)->fn->name, "echo_safe");
  CHECK(sy_plugins_command(p, "echo-cmd") != NULL);
  /* The same plugin twice is refused. */
  CHECK(sy_plugins_load_file(p, SY_TEST_PLUGIN_DIR "/test_echo.so", err,
                             sizeof err) == SY_EPLUGIN);
  CHECK_CONTAINS(err, "is loaded already");
  sy_plugins_free(p);
}

static void test_abi_mismatch(void) {
  sy_plugins *p;
  char err[512] = "";
  char expect[64];
  CHECK_EQ(sy_plugins_new(&p), 0);
  CHECK(sy_plugins_load_file(p, SY_TEST_PLUGIN_DIR "-badabi/test_badabi.so",
                             err, sizeof err) == SY_EPLUGIN);
  /* The message names both versions. */
  snprintf(expect, sizeof expect, "plugin ABI %d, this engine has ABI %d",
           SY_PLUGIN_ABI + 41, SY_PLUGIN_ABI);
  CHECK_CONTAINS(err, expect);
  CHECK_CONTAINS(err, "test_badabi.so");
  CHECK(sy_plugins_node(p, "anything") == NULL);
  sy_plugins_free(p);
}

static void test_bad_files(void) {
  sy_plugins *p;
  char err[512] = "";
  CHECK_EQ(sy_plugins_new(&p), 0);
  CHECK(sy_plugins_load_file(p, SY_TEST_TMP "/no-such-plugin.so", err,
                             sizeof err) == SY_EPLUGIN);
  CHECK_CONTAINS(err, "cannot load plugin");
  /* A shared object that is not a plugin. */
  CHECK_EQ(sy_plugins_load_file(p, "libm.so.6", err, sizeof err), SY_EPLUGIN);
  CHECK_CONTAINS(err, "does not export sy_plugin_entry");
  /* A missing directory is no error: no plugins. */
  CHECK(sy_plugins_load_dir(p, SY_TEST_TMP "/no-such-dir", err, sizeof err) ==
        0);
  sy_plugins_free(p);
}

static void test_engine_refuses_bad_plugin_dir(void) {
  sy_engine_opts o;
  sy_engine *e = NULL;
  char err[512] = "";
  sy_engine_opts_init(&o);
  o.db_path = ":memory:";
  o.plugin_dir = SY_TEST_PLUGIN_DIR "-badabi";
  CHECK_EQ(sy_engine_open(&e, &o, err, sizeof err), SY_EPLUGIN);
  CHECK(e == NULL);
  CHECK_CONTAINS(err, "this engine has ABI");
}

int main(void) {
  test_loads_echo();
  test_abi_mismatch();
  test_bad_files();
  test_engine_refuses_bad_plugin_dir();
  puts("test-plugin: all checks passed");
  return 0;
}
