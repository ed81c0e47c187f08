/* A minimal check macro for the C unit tests: the first failed check prints
 * where it is and ends the test process with a failure. */
#ifndef SY_TEST_CHECK_H
#define SY_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(cond)                                                            \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      exit(1);                                                                 \
    }                                                                          \
  } while (0)

#define CHECK_CONTAINS(haystack, needle)                               \
  do {                                                                 \
    if (!strstr((haystack), (needle))) {                               \
      fprintf(stderr, "%s:%d: '%s' does not contain '%s'\n", __FILE__, \
              __LINE__, (haystack), (needle));                         \
      exit(1);                                                         \
    }                                                                  \
  } while (0)

#endif
