/* The checks of the C unit tests. The first failed check prints where it
 * is, what it checked and, for comparisons, both sides; then it ends the
 * test process with a failure (each test is a process of its own).
 *
 *   CHECK(cond)                 a condition
 *   CHECK_EQ(got, want)         integers (signed or not), doubles or strings,
 *                               by the type of `got`
 *   CHECK_NEAR(got, want, tol)  doubles, |got - want| <= tol
 *   CHECK_REL(got, want, tol)   doubles, relative: |got - want| <= tol *
 *                               |want| (for p-values far below 1)
 *   CHECK_CONTAINS(text, part)  a substring */
#ifndef SY_TEST_CHECK_H
#define SY_TEST_CHECK_H

#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

__attribute__((format(printf, 3, 4))) static inline void sy_check_fail(
    const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s:%d: check failed: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(1);
}

#define CHECK(cond)                                   \
  do {                                                \
    if (!(cond)) {                                    \
      sy_check_fail(__FILE__, __LINE__, "%s", #cond); \
    }                                                 \
  } while (0)

static inline void sy_check_int(const char *file, int line, const char *g,
                                const char *w, intmax_t got, intmax_t want) {
  if (got != want) {
    sy_check_fail(file, line, "%s == %s (%jd != %jd)", g, w, got, want);
  }
}

static inline void sy_check_uint(const char *file, int line, const char *g,
                                 const char *w, uintmax_t got, uintmax_t want) {
  if (got != want) {
    sy_check_fail(file, line, "%s == %s (%ju (0x%jX) != %ju (0x%jX))", g, w,
                  got, got, want, want);
  }
}

static inline void sy_check_dbl(const char *file, int line, const char *g,
                                const char *w, double got, double want) {
  if (!(got == want)) {
    sy_check_fail(file, line, "%s == %s (%.17g != %.17g)", g, w, got, want);
  }
}

static inline void sy_check_str(const char *file, int line, const char *g,
                                const char *w, const char *got,
                                const char *want) {
  if (!got || !want || strcmp(got, want) != 0) {
    sy_check_fail(file, line, "%s == %s (\"%s\" != \"%s\")", g, w,
                  got ? got : "(null)", want ? want : "(null)");
  }
}

#define CHECK_EQ(got, want) \
  _Generic((got),                                              \
      char *: sy_check_str,                                    \
      const char *: sy_check_str,                              \
      double: sy_check_dbl,                                    \
      float: sy_check_dbl,                                     \
      unsigned char: sy_check_uint,                            \
      unsigned short: sy_check_uint,                           \
      unsigned int: sy_check_uint,                             \
      unsigned long: sy_check_uint,                            \
      unsigned long long: sy_check_uint,                       \
      default: sy_check_int)(__FILE__, __LINE__, #got, #want, \
                             (got), (want))

static inline void sy_check_near(const char *file, int line, const char *g,
                                 const char *w, double got, double want,
                                 double tol, int relative) {
  double scale = relative ? (fabs(want) > 1e-300 ? fabs(want) : 1e-300) : 1;
  if (!(fabs(got - want) <= tol * scale)) {
    sy_check_fail(file, line, "%s ~ %s (%.17g, expected %.17g, %s tol %g)", g,
                  w, got, want, relative ? "rel" : "abs", tol);
  }
}

#define CHECK_NEAR(got, want, tol) \
  sy_check_near(__FILE__, __LINE__, #got, #want, (got), (want), (tol), 0)
#define CHECK_REL(got, want, tol) \
  sy_check_near(__FILE__, __LINE__, #got, #want, (got), (want), (tol), 1)

#define CHECK_CONTAINS(text, part)                                           \
  do {                                                                       \
    const char *t_ = (text), *p_ = (part);                                   \
    if (!t_ || !strstr(t_, p_)) {                                            \
      sy_check_fail(__FILE__, __LINE__, "%s contains \"%s\" (it is \"%s\")", \
                    #text, p_, t_ ? t_ : "(null)");                          \
    }                                                                        \
  } while (0)

#endif
