/* Error codes shared by every engine module, and the assertion macro.
 * Codes are negative so a function can return 0, a count, or an error. */
#ifndef SY_ERROR_H
#define SY_ERROR_H

#include <stdio.h>
#include <stdlib.h>

/* One list, so a code, its name and its message never drift apart. */
#define SY_ERRNO_MAP(X)                                \
  X(INVAL, -1, "invalid argument")                     \
  X(NOMEM, -2, "out of memory")                        \
  X(STORE, -3, "database error")                       \
  X(LOAD, -4, "workflow does not load")                \
  X(NOTFOUND, -5, "not found")                         \
  X(STATE, -6, "not allowed in the current state")     \
  X(PLUGIN, -7, "plugin error")                        \
  X(IO, -8, "input/output error")                      \
  X(BUSY, -9, "database is locked by another process") \
  X(LUA, -10, "Lua error")

enum {
#define X(name, code, msg) SY_E##name = code,
  SY_ERRNO_MAP(X)
#undef X
};

const char *sy_strerror(int code);

/* Invariants only, never input validation; stays on in release builds
 * because a broken invariant in a durable store must stop the process. */
#define SY_ASSERT(expr)                                                    \
  do {                                                                     \
    if (!(expr)) {                                                         \
      fprintf(stderr, "switchyard: assertion failed: %s (%s:%d)\n", #expr, \
              __FILE__, __LINE__);                                         \
      abort();                                                             \
    }                                                                      \
  } while (0)

#endif
