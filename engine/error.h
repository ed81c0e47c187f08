/* Error codes (defined in the plugin contract, which plugins share), their
 * messages, and the assertion macro. Codes are negative so a function can
 * return 0, a count, or an error. */
#ifndef SY_ERROR_H
#define SY_ERROR_H

#include <stdio.h>
#include <stdlib.h>

#include "switchyard/plugin.h" /* the codes: part of the plugin contract */

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
