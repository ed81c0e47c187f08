/* `switchyard lua SCRIPT`: runs a Lua script (busted, in the test suite)
 * in a plain Lua state that can require "switchyard.testing", which drives
 * real engines on temporary databases. Running specs inside the binary
 * lets the sanitizers cover the engine they test. */
#ifndef SY_TESTLUA_H
#define SY_TESTLUA_H

#include "engine.h"

int sy_testlua_main(int argc, char **argv, const sy_engine_opts *base);
/* `switchyard test [--faults[=2]] [BUSTED OPTIONS] [PATH...]`: runs the
 * busted specs under PATH (default: the workflows directory) with the
 * same module; --faults runs them again with each external call they made
 * failing in turn, and prints what each failure did. */
int sy_testlua_test(int argc, char **argv, const sy_engine_opts *base);

#endif
