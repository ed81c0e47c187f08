/* fuzz.h: what the libFuzzer targets in tests/fuzz/ share, and the glue
 * that lets tests/c/test-fuzz-regressions.c replay their inputs without
 * libFuzzer.
 *
 * Each target file defines three functions, sy_fuzz_<name>_init, _one and
 * _fini, and ends with SY_FUZZ_ENTRY(<name>), which adds the libFuzzer entry
 * points unless SY_FUZZ_REPLAY is defined. The regression test defines it
 * and includes every target file, so a replayed input goes through exactly
 * the code the fuzzer ran. */
#ifndef SY_FUZZ_H
#define SY_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cv.h"
#include "engine.h"

/* The limits every target gives the Lua host: small enough that a memory
 * bomb or an endless loop in an input ends in well under a second. */
#define SY_FUZZ_LUA_MEMORY ((size_t)64 << 20)
#define SY_FUZZ_INSTRUCTIONS 1000000

/* A broken invariant is a finding like a crash: abort, so libFuzzer keeps
 * the input as an artifact (and a replay child process fails). */
#define SY_FUZZ_CHECK(cond, ...)                                           \
  do {                                                                     \
    if (!(cond)) {                                                         \
      fprintf(stderr, "%s:%d: invariant broken: %s: ", __FILE__, __LINE__, \
              #cond);                                                      \
      fprintf(stderr, __VA_ARGS__);                                        \
      fputc('\n', stderr);                                                 \
      abort();                                                             \
    }                                                                      \
  } while (0)

#define SY_FUZZ_DECLARE(name)                                  \
  int sy_fuzz_##name##_init(void);                             \
  void sy_fuzz_##name##_one(const uint8_t *data, size_t size); \
  void sy_fuzz_##name##_fini(void)

SY_FUZZ_DECLARE(workflow);
SY_FUZZ_DECLARE(rate);
SY_FUZZ_DECLARE(vars);
SY_FUZZ_DECLARE(jsonl);

#ifdef SY_FUZZ_REPLAY
#define SY_FUZZ_ENTRY(name)
#else
int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* The state lives for the whole run; libFuzzer never tears it down. */
#define SY_FUZZ_ENTRY(name)                                          \
  int LLVMFuzzerInitialize(int *argc, char ***argv) {                \
    (void)argc;                                                      \
    (void)argv;                                                      \
    if (sy_fuzz_##name##_init()) {                                   \
      fprintf(stderr, "fuzz_" #name ": cannot set up the target\n"); \
      abort();                                                       \
    }                                                                \
    return 0;                                                        \
  }                                                                  \
  int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {     \
    sy_fuzz_##name##_one(data, size);                                \
    return 0;                                                        \
  }
#endif

/* The input as a C string (malloc'd, size + 1 bytes, so ASan sees any read
 * past the end). Text stops at an embedded NUL, as it would in argv or in a
 * line the CLI hands to the parsers. */
static inline char *sy_fuzz_cstr(const uint8_t *data, size_t size) {
  char *s = malloc(size + 1);
  SY_FUZZ_CHECK(s != NULL, "out of memory");
  if (size) {
    memcpy(s, data, size);
  }
  s[size] = '\0';
  return s;
}

/* An engine on an in-memory database with choose_version linked in and
 * initialized, as `switchyard` would have it, but with the small limits. */
static inline int sy_fuzz_engine_open(sy_engine **out) {
  static const sy_plugin_def *plugins[1];
  sy_engine_opts o;
  char err[512];
  plugins[0] = cv_plugin_def();
  sy_engine_opts_init(&o);
  o.db_path = ":memory:";
  o.workflows_dir = ".";
  o.lua_memory = SY_FUZZ_LUA_MEMORY;
  o.step_instructions = SY_FUZZ_INSTRUCTIONS;
  o.static_plugins = plugins;
  o.nstatic_plugins = 1;
  if (sy_engine_open(out, &o, err, sizeof err)) {
    fprintf(stderr, "fuzz: cannot open the engine: %s\n", err);
    return -1;
  }
  return 0;
}

/* ctx.<plugin function> inside a fuzzed step: refused, not run (the
 * targets exercise loading and vars, not plugin calls). */
static inline int sy_fuzz_ctx_call(void *ud, sy_task *t,
                                   const sy_ctx_fn_entry *fn,
                                   const char *args_json, char *err,
                                   size_t errlen) {
  (void)ud;
  (void)t;
  (void)fn;
  (void)args_json;
  snprintf(err, errlen, "plugin functions are not available when fuzzing");
  return SY_EINVAL;
}

/* A Lua host of its own over a plugin registry (the engine's, so node types
 * compile against initialized plugins), with the same small limits. */
static inline int sy_fuzz_lua_new(sy_plugins *plugins, sy_lua **out) {
  sy_lua_limits limits = {SY_FUZZ_LUA_MEMORY, SY_FUZZ_INSTRUCTIONS};
  return sy_lua_new(out, &limits, plugins, sy_fuzz_ctx_call, NULL);
}

#endif
