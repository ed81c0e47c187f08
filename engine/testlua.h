/* `switchyard lua SCRIPT`: runs a Lua script (busted, in the test suite)
 * in a plain Lua state that can require "switchyard.testing", which drives
 * real engines on temporary databases. Running specs inside the binary
 * lets the sanitizers cover the engine they test. */
#ifndef SY_TESTLUA_H
#define SY_TESTLUA_H

#include "engine.h"

int sy_testlua_main(int argc, char **argv, const sy_engine_opts *base);

#endif
