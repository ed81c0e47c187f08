/* route.c: sticky bucketing, the precedence rule and rate text for
 * choose_version. It decides who goes to V2, so it is exact integer
 * arithmetic only: the same subject must land in the same bucket on every
 * machine, forever, and match Unleash. */
#include "route.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* MurmurHash3_x86_32 constants, from Appleby's MurmurHash3.cpp. */
#define CV_MM3_C1 0xcc9e2d51u
#define CV_MM3_C2 0x1b873593u

static uint32_t cv_rotl32(uint32_t x, unsigned r) {
  return (x << r) | (x >> (32u - r));
}

/* Assembling the word from single bytes (instead of casting the pointer)
 * makes the hash independent of host byte order and never reads a word at
 * an unaligned address; compilers turn it into one load where that is
 * allowed. */
static uint32_t cv_load_le32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
         (uint32_t)p[3] << 24;
}

static uint32_t cv_mm3_scramble(uint32_t k) {
  k *= CV_MM3_C1;
  k = cv_rotl32(k, 15);
  return k * CV_MM3_C2;
}

static uint32_t cv_mm3_block(uint32_t h, uint32_t k) {
  h ^= cv_mm3_scramble(k);
  h = cv_rotl32(h, 13);
  return h * 5u + 0xe6546b64u;
}

static uint32_t cv_mm3_fmix(uint32_t h) {
  h ^= h >> 16;
  h *= 0x85ebca6bu;
  h ^= h >> 13;
  h *= 0xc2b2ae35u;
  h ^= h >> 16;
  return h;
}

/* The one-shot form is kept separate from the streaming one because it is
 * what other ports of the algorithm look like, which makes it easy to audit,
 * and the tests then prove the streaming form equal to it. */
uint32_t cv_murmur3_32(const void *key, size_t len, uint32_t seed) {
  const unsigned char *p = key;
  size_t nblocks = len / 4;
  size_t rest = len % 4;
  uint32_t h = seed;

  for (size_t i = 0; i < nblocks; i++) {
    h = cv_mm3_block(h, cv_load_le32(p + 4 * i));
  }
  if (rest > 0) {
    const unsigned char *tail = p + 4 * nblocks;
    uint32_t k = 0;
    /* The tail is a little-endian word of 1 to 3 bytes, mixed without the
     * rotate-and-add step a full block gets. */
    for (size_t i = rest; i > 0; i--) {
      k = (k << 8) | tail[i - 1];
    }
    h ^= cv_mm3_scramble(k);
  }
  /* The reference takes len as an int; the conversion keeps the low 32 bits
   * of it, which is what every 32-bit port mixes in. */
  return cv_mm3_fmix(h ^ (uint32_t)len);
}

void cv_murmur3_init(cv_murmur3 *s, uint32_t seed) {
  s->h = seed;
  s->carry = 0;
  s->ncarry = 0;
  s->total = 0;
}

/* The body of cv_murmur3_update, inlined into cv_bucket so the compiler can
 * specialise the one-byte ':' piece and keep the state in registers: that
 * brought cv_bucket from about 2x to about 1.4x the cost of hashing the
 * concatenated string in one shot (scripts/benchmarks/bench-route.c). */
static inline void cv_mm3_feed(cv_murmur3 *s, const void *data, size_t len) {
  const unsigned char *p = data;

  if (len == 0) {
    return;
  }
  /* Unsigned arithmetic wraps, so adding the truncated length keeps the
   * total modulo 2^32 exact however many updates there are. */
  s->total += (uint32_t)len;

  /* Complete a block begun by an earlier update first, so that the bulk loop
   * below sees the same 4-byte boundaries the one-shot hash would. */
  if (s->ncarry > 0) {
    while (s->ncarry < 4 && len > 0) {
      s->carry |= (uint32_t)*p << (8 * s->ncarry);
      s->ncarry++;
      p++;
      len--;
    }
    if (s->ncarry < 4) {
      return;
    }
    s->h = cv_mm3_block(s->h, s->carry);
    s->carry = 0;
    s->ncarry = 0;
  }
  for (; len >= 4; len -= 4, p += 4) {
    s->h = cv_mm3_block(s->h, cv_load_le32(p));
  }
  for (; len > 0; len--, p++) {
    s->carry |= (uint32_t)*p << (8 * s->ncarry);
    s->ncarry++;
  }
}

void cv_murmur3_update(cv_murmur3 *s, const void *data, size_t len) {
  cv_mm3_feed(s, data, len);
}

uint32_t cv_murmur3_final(const cv_murmur3 *s) {
  uint32_t h = s->h;

  if (s->ncarry > 0) {
    h ^= cv_mm3_scramble(s->carry);
  }
  return cv_mm3_fmix(h ^ s->total);
}

/* Fed in three pieces so that no key, however long, needs a concatenation
 * buffer: the hot path neither allocates nor truncates. */
uint32_t cv_bucket(const char *group, size_t group_len, const char *key,
                   size_t key_len) {
  cv_murmur3 s;
  uint32_t h;

  cv_murmur3_init(&s, 0);
  cv_mm3_feed(&s, group, group_len);
  cv_mm3_feed(&s, ":", 1);
  cv_mm3_feed(&s, key, key_len);
  h = cv_murmur3_final(&s);
  /* h % 100 is Unleash's percentile (minus one); (h / 100) % 10000 uses
   * bits of h the percentile ignored to order subjects within one percent.
   * 2^32 / 100 is not a multiple of 10000, so the finer position is biased
   * by about 1 part in 4300 - far below anything a rollout can observe. */
  return (h % 100u) * 10000u + (h / 100u) % 10000u;
}

/* Rate parsing. Only ASCII is considered: the rules must not depend on the
 * C locale, which is why isdigit/isspace/strtod are not used. */

enum { CV_UNIT_PERCENT, CV_UNIT_PPM };

static int cv_is_digit(char c) {
  return c >= '0' && c <= '9';
}

static int cv_is_space(char c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' ||
         c == '\r';
}

static int cv_is_ppm(const char *p) {
  return (p[0] == 'p' || p[0] == 'P') && (p[1] == 'p' || p[1] == 'P') &&
         (p[2] == 'm' || p[2] == 'M');
}

/* Writes c for a message: itself when printable ASCII, else as \xNN, so a
 * stray control byte cannot garble the user's terminal. */
static void cv_show_char(char c, char *out, size_t outlen) {
  unsigned char u = (unsigned char)c;

  if (u >= 0x20 && u < 0x7f) {
    snprintf(out, outlen, "%c", c);
  } else {
    snprintf(out, outlen, "\\x%02X", (unsigned)u);
  }
}

/* Quotes the user's text back to them, escaped and cut to a length that
 * keeps the message on one line. */
static void cv_show_text(const char *text, char *out, size_t outlen) {
  size_t n = 0;
  size_t i;

  for (i = 0; text[i] != '\0'; i++) {
    char one[8];
    size_t m;

    cv_show_char(text[i], one, sizeof one);
    m = 0;
    while (one[m] != '\0') {
      m++;
    }
    /* Leave room for "..." and the NUL. */
    if (n + m + 4 > outlen) {
      out[n++] = '.';
      out[n++] = '.';
      out[n++] = '.';
      break;
    }
    for (size_t j = 0; j < m; j++) {
      out[n++] = one[j];
    }
  }
  out[n] = '\0';
}

static int cv_rate_fail(char *err, size_t errlen, const char *text,
                        const char *why) {
  char shown[48];

  if (err != NULL && errlen > 0) {
    cv_show_text(text, shown, sizeof shown);
    snprintf(err, errlen, "bad rate '%s': %s", shown, why);
  }
  return -1;
}

static int cv_rate_fail_at(char *err, size_t errlen, const char *text,
                           const char *p, const char *what) {
  char c[8];
  char why[160];

  cv_show_char(*p, c, sizeof c);
  snprintf(why, sizeof why, "unexpected '%s' at position %zu%s", c,
           (size_t)(p - text) + 1, what);
  return cv_rate_fail(err, errlen, text, why);
}

#define CV_RATE_EXAMPLES "expected e.g. 5%, 0.25% or 2500ppm"

/* A rate's number as typed, before its unit. */
typedef struct cv_rate_number {
  uint32_t whole; /* integer part, saturated above CV_RATE_MAX_PPM */
  uint32_t frac;  /* the first 4 decimals, as typed */
  size_t nwhole;
  size_t nfrac;
  int has_dot;
  int finer; /* a non-zero decimal beyond the 4th */
} cv_rate_number;

/* What the text must be as a whole, before it is read: something, with no
 * whitespace and no sign. */
static int cv_rate_check_text(const char *text, char *err, size_t errlen) {
  if (text == NULL) {
    return cv_rate_fail(err, errlen, "", "no rate given; " CV_RATE_EXAMPLES);
  }
  if (*text == '\0') {
    return cv_rate_fail(err, errlen, text, "empty; " CV_RATE_EXAMPLES);
  }
  /* Whitespace is refused anywhere rather than trimmed: a shell quoting
   * mistake ("5 %" split into two arguments, a stray newline from a script)
   * is better reported than silently guessed at. */
  for (const char *q = text; *q != '\0'; q++) {
    if (cv_is_space(*q)) {
      return cv_rate_fail(err, errlen, text,
                          "contains whitespace; write it without spaces, e.g. "
                          "5% or 2500ppm");
    }
  }
  if (*text == '-') {
    return cv_rate_fail(err, errlen, text, "a rate cannot be negative");
  }
  if (*text == '+') {
    return cv_rate_fail(err, errlen, text,
                        "a rate takes no sign; " CV_RATE_EXAMPLES);
  }
  return 0;
}

/* Reads the number text starts with into *n and sets *end after it; -1
 * (with err) when there is no well-formed number. */
static int cv_rate_read_number(const char *text, cv_rate_number *n,
                               const char **end, char *err, size_t errlen) {
  const char *p = text;
  memset(n, 0, sizeof *n);
  /* Saturating keeps any number of digits from overflowing while still
   * telling "too large" apart from every valid value. */
  for (; cv_is_digit(*p); p++, n->nwhole++) {
    if (n->whole <= CV_RATE_MAX_PPM) {
      n->whole = n->whole * 10u + (uint32_t)(*p - '0');
    }
  }
  if (*p == '.') {
    n->has_dot = 1;
    p++;
    for (; cv_is_digit(*p); p++, n->nfrac++) {
      if (n->nfrac < 4) {
        n->frac = n->frac * 10u + (uint32_t)(*p - '0');
      } else if (*p != '0') {
        n->finer = 1;
      }
    }
    if (n->nwhole == 0 && n->nfrac == 0) {
      return cv_rate_fail(err, errlen, text, "not a number; " CV_RATE_EXAMPLES);
    }
    /* ".5%" and "5.%" are unambiguous, but refusing them keeps one spelling
     * per value in scripts, logs and the audit trail. */
    if (n->nwhole == 0) {
      return cv_rate_fail(err, errlen, text,
                          "write a digit before '.', e.g. 0.5%");
    }
    if (n->nfrac == 0) {
      return cv_rate_fail(err, errlen, text,
                          "write a digit after '.', e.g. 5% or 5.5%");
    }
  } else if (*p == ',' && n->nwhole > 0) {
    return cv_rate_fail(err, errlen, text,
                        "use '.' as the decimal separator, e.g. 0.5%");
  }
  if (n->nwhole == 0) {
    if (*p == '%') {
      return cv_rate_fail(err, errlen, text, "no number before '%'");
    }
    if (cv_is_ppm(p)) {
      return cv_rate_fail(err, errlen, text, "no number before 'ppm'");
    }
    /* Covers inf, nan, words and anything else that does not start like a
     * number. */
    return cv_rate_fail(err, errlen, text, "not a number; " CV_RATE_EXAMPLES);
  }
  *end = p;
  return 0;
}

/* Reads the unit at p, which must end the text. */
static int cv_rate_read_unit(const char *text, const char *p, int *unit,
                             char *err, size_t errlen) {
  if (*p == '%') {
    *unit = CV_UNIT_PERCENT;
    p++;
  } else if (cv_is_ppm(p)) {
    *unit = CV_UNIT_PPM;
    p += 3;
  } else if (*p == '\0') {
    /* "0.05" could be a fraction (5%) or a percentage (0.05%); guessing
     * wrong ramps traffic by a factor of 100, so the unit is mandatory. */
    return cv_rate_fail(err, errlen, text,
                        "a number without a unit is ambiguous (a fraction or a "
                        "percentage?); add '%' or 'ppm', e.g. 5% = 50000ppm");
  } else {
    /* Hex ("0x10%"), exponents ("1e3ppm"), a second '.', other units. */
    return cv_rate_fail_at(err, errlen, text, p, "; " CV_RATE_EXAMPLES);
  }
  if (*p != '\0') {
    return cv_rate_fail_at(err, errlen, text, p, " after the unit");
  }
  return 0;
}

/* The rate n in unit, in ppm, when it is one. */
static int cv_rate_to_ppm(const char *text, const cv_rate_number *n, int unit,
                          uint32_t *ppm, char *err, size_t errlen) {
  uint32_t frac = n->frac;
  if (unit == CV_UNIT_PPM) {
    if (n->has_dot) {
      return cv_rate_fail(err, errlen, text,
                          "ppm takes a whole number, e.g. 2500ppm");
    }
    if (n->whole > CV_RATE_MAX_PPM) {
      return cv_rate_fail(err, errlen, text,
                          "above the maximum of 1000000ppm (100%)");
    }
    *ppm = n->whole;
    return 0;
  }
  if (n->whole > 100 || (n->whole == 100 && (frac > 0 || n->finer))) {
    return cv_rate_fail(err, errlen, text, "above the maximum of 100%");
  }
  if (n->finer) {
    return cv_rate_fail(err, errlen, text,
                        "finer than 1 ppm; use at most 4 decimals "
                        "(0.0001% = 1ppm)");
  }
  for (size_t i = n->nfrac; i < 4; i++) {
    frac *= 10u;
  }
  *ppm = n->whole * 10000u + frac;
  return 0;
}

int cv_rate_parse(const char *text, uint32_t *ppm, char *err, size_t errlen) {
  cv_rate_number n;
  const char *end = NULL;
  int unit = CV_UNIT_PERCENT; /* set by cv_rate_read_unit on success */
  if (cv_rate_check_text(text, err, errlen) ||
      cv_rate_read_number(text, &n, &end, err, errlen) ||
      cv_rate_read_unit(text, end, &unit, err, errlen)) {
    return -1;
  }
  return cv_rate_to_ppm(text, &n, unit, ppm, err, errlen);
}

void cv_rate_format(uint32_t ppm, char *buf, size_t len) {
  uint32_t whole = ppm / 10000u;
  uint32_t frac = ppm % 10000u;
  int ndigits = 4;

  if (frac == 0) {
    snprintf(buf, len, "%" PRIu32 "%%", whole);
    return;
  }
  /* Dropping trailing zeros gives the shortest text that still reads back
   * as exactly the same ppm. */
  while (frac % 10u == 0) {
    frac /= 10u;
    ndigits--;
  }
  snprintf(buf, len, "%" PRIu32 ".%0*" PRIu32 "%%", whole, ndigits, frac);
}

int cv_flag_name_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > 128) {
    return 0;
  }
  for (; *s; s++) {
    if (!(*s == '_' || *s == '-' || *s == '.' || (*s >= '0' && *s <= '9') ||
          (*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z'))) {
      return 0;
    }
  }
  return 1;
}

void cv_precedence(const cv_flag *f, cv_override ov, const cv_request *req,
                   uint64_t random, int64_t nth, cv_decision *out) {
  out->bucket = UINT32_MAX;
  out->rate_ppm = f->exists ? f->rate_ppm : 0;
  out->ramp_id = f->ramp_id;
  out->version = CV_V1;
  if (!f->exists) {
    out->reason = "no_flag"; /* new code ships dark */
  } else if (f->retired) {
    out->reason = "retired";
  } else if (f->killed) {
    out->reason = "kill_switch";
  } else if (req->missing_key) {
    out->reason = "missing_key";
  } else if (ov == CV_OVERRIDE_OPT_OUT) {
    out->reason = "opt_out";
  } else if (!req->eligible) {
    out->reason = "not_eligible";
  } else if (ov == CV_OVERRIDE_ALLOW) {
    out->version = CV_V2;
    out->reason = "allow";
  } else if (req->strategy == CV_STRATEGY_STICKY) {
    out->bucket = cv_bucket(f->group, strlen(f->group), req->key, req->key_len);
    out->version = out->bucket < f->rate_ppm ? CV_V2 : CV_V1;
    out->reason = "rollout";
  } else if (req->strategy == CV_STRATEGY_RANDOM) {
    out->version = random % CV_RATE_MAX_PPM < f->rate_ppm ? CV_V2 : CV_V1;
    out->reason = "random";
  } else {
    /* The n-th instance goes to V2 when floor(n * rate) steps up: exactly
     * rate of every million, spread evenly (25% = every 4th). */
    int64_t a = nth * (int64_t)f->rate_ppm / CV_RATE_MAX_PPM;
    int64_t b = (nth + 1) * (int64_t)f->rate_ppm / CV_RATE_MAX_PPM;
    out->version = b > a ? CV_V2 : CV_V1;
    out->reason = "every_nth";
  }
}
