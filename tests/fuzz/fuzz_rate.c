/* fuzz_rate.c: libFuzzer target for cv_rate_parse and cv_rate_format, the
 * parser of `switchyard rollout set FLAG RATE` and its printer.
 *
 * Beyond not crashing, it checks the contract in route.h: a parsed rate is
 * at most 100% and prints back to text that parses to the same ppm; a
 * refusal leaves *ppm untouched and says why in one line; the answer does
 * not depend on whether or how large an error buffer is given; and the
 * printer, for any uint32_t (the first four bytes of the input) and any
 * buffer length, writes a terminated prefix of its one result. */
#include "fuzz.h"
#include "route.h"

#define RATE_UNTOUCHED 0xDEADBEEFu

int sy_fuzz_rate_init(void) {
  return 0;
}

void sy_fuzz_rate_fini(void) {
}

/* cv_rate_format into buffers of every length, against the full result. */
static void rate_format_check(uint32_t ppm) {
  char full[CV_RATE_FORMAT_MAX];
  size_t n;
  cv_rate_format(ppm, full, sizeof full);
  n = strlen(full);
  SY_FUZZ_CHECK(n > 1 && n < sizeof full && full[n - 1] == '%',
                "format(%lu) = '%s'", (unsigned long)ppm, full);
  for (size_t len = 0; len <= sizeof full; len++) {
    /* Exactly len bytes on the heap: ASan flags a write past them. */
    char *b = malloc(len ? len : 1);
    SY_FUZZ_CHECK(b != NULL, "out of memory");
    memset(b, 'x', len ? len : 1);
    cv_rate_format(ppm, b, len);
    if (len == 0) {
      SY_FUZZ_CHECK(b[0] == 'x', "format(%lu) wrote into 0 bytes",
                    (unsigned long)ppm);
    } else {
      SY_FUZZ_CHECK(memchr(b, '\0', len) != NULL,
                    "format(%lu) into %zu bytes is not terminated",
                    (unsigned long)ppm, len);
      SY_FUZZ_CHECK(strncmp(b, full, len - 1) == 0 &&
                        strlen(b) == (n < len - 1 ? n : len - 1),
                    "format(%lu) into %zu bytes: '%s', not a prefix of '%s'",
                    (unsigned long)ppm, len, b, full);
    }
    free(b);
  }
}

void sy_fuzz_rate_one(const uint8_t *data, size_t size) {
  char *text = sy_fuzz_cstr(data, size);
  uint32_t ppm = RATE_UNTOUCHED, quiet = RATE_UNTOUCHED,
           tiny_ppm = RATE_UNTOUCHED, back = RATE_UNTOUCHED;
  char err[256], tiny[1] = {'x'}, printed[CV_RATE_FORMAT_MAX];
  int rc, rc_quiet, rc_tiny;
  memset(err, 'x', sizeof err);
  err[sizeof err - 1] = '\0';
  rc = cv_rate_parse(text, &ppm, err, sizeof err);
  rc_quiet = cv_rate_parse(text, &quiet, NULL, 0);
  rc_tiny = cv_rate_parse(text, &tiny_ppm, tiny, sizeof tiny);
  SY_FUZZ_CHECK(rc == 0 || rc == -1, "rc %d for '%s'", rc, text);
  SY_FUZZ_CHECK(
      rc_quiet == rc && rc_tiny == rc && quiet == ppm && tiny_ppm == ppm,
      "'%s': the answer depends on the error buffer", text);
  if (rc == 0) {
    SY_FUZZ_CHECK(ppm <= CV_RATE_MAX_PPM, "'%s' parsed to %lu ppm", text,
                  (unsigned long)ppm);
    cv_rate_format(ppm, printed, sizeof printed);
    SY_FUZZ_CHECK(cv_rate_parse(printed, &back, err, sizeof err) == 0,
                  "'%s' -> %lu ppm -> '%s', which does not parse: %s", text,
                  (unsigned long)ppm, printed, err);
    SY_FUZZ_CHECK(back == ppm, "'%s' -> %lu ppm -> '%s' -> %lu ppm", text,
                  (unsigned long)ppm, printed, (unsigned long)back);
  } else {
    SY_FUZZ_CHECK(ppm == RATE_UNTOUCHED, "'%s' refused but *ppm = %lu", text,
                  (unsigned long)ppm);
    SY_FUZZ_CHECK(err[0] != '\0' && err[0] != 'x', "'%s' refused silently",
                  text);
    SY_FUZZ_CHECK(memchr(err, '\0', sizeof err) != NULL, "err unterminated");
    SY_FUZZ_CHECK(strchr(err, '\n') == NULL, "'%s': message spans lines: %s",
                  text, err);
    SY_FUZZ_CHECK(tiny[0] == '\0', "'%s': 1-byte err not terminated", text);
  }
  if (size >= 4) {
    uint32_t any = (uint32_t)data[0] | (uint32_t)data[1] << 8 |
                   (uint32_t)data[2] << 16 | (uint32_t)data[3] << 24;
    rate_format_check(any);
    cv_rate_format(any, printed, sizeof printed);
    back = RATE_UNTOUCHED;
    rc = cv_rate_parse(printed, &back, err, sizeof err);
    if (any <= CV_RATE_MAX_PPM) {
      SY_FUZZ_CHECK(rc == 0 && back == any, "%lu ppm -> '%s' -> rc %d, %lu",
                    (unsigned long)any, printed, rc, (unsigned long)back);
    } else {
      SY_FUZZ_CHECK(rc == -1 && back == RATE_UNTOUCHED,
                    "%lu ppm (above 100%%) -> '%s' was accepted",
                    (unsigned long)any, printed);
    }
  }
  free(text);
}

SY_FUZZ_ENTRY(rate)
