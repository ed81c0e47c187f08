/* test-route.c: unit tests of the choose_version routing core (route.c):
 * the MurmurHash3 port against published and independently computed
 * vectors, Unleash compatibility and monotonicity of sticky buckets, the
 * spread of subjects, and the parsing and printing of rates.
 *
 * A standalone program: it stops at the first failed check (check.h). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "route.h"

/* splitmix64: a fixed, seedable source of test data, so every run checks
 * exactly the same keys and splits. */
static uint64_t rng_state = 0x5357495443485944u;

static uint64_t rng_next(void) {
  uint64_t z = (rng_state += 0x9e3779b97f4a7c15u);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
  return z ^ (z >> 31);
}

/* The hash three ways: one-shot, streamed whole, streamed a byte at a time;
 * all must agree before the value is compared with a vector. */
static uint32_t hash_all_ways(const void *data, size_t len, uint32_t seed) {
  const unsigned char *p = data;
  uint32_t one = cv_murmur3_32(data, len, seed);
  cv_murmur3 whole;
  cv_murmur3 bytes;

  cv_murmur3_init(&whole, seed);
  cv_murmur3_update(&whole, data, len);
  CHECK_EQ(cv_murmur3_final(&whole), one);
  cv_murmur3_init(&bytes, seed);
  for (size_t i = 0; i < len; i++) {
    cv_murmur3_update(&bytes, p + i, 1);
  }
  CHECK_EQ(cv_murmur3_final(&bytes), one);
  return one;
}

/* The same bytes at every alignment must hash the same: the port reads bytes,
 * never words, so misaligned keys are neither faulting nor different. */
static void check_alignments(const void *data, size_t len, uint32_t seed,
                             uint32_t want) {
  unsigned char buf[300];

  CHECK(len + 4 <= sizeof buf);
  for (size_t off = 0; off < 4; off++) {
    if (len > 0) {
      memcpy(buf + off, data, len);
    }
    CHECK_EQ(cv_murmur3_32(buf + off, len, seed), want);
  }
}

typedef struct vector {
  const char *data;
  size_t len;
  uint32_t seed;
  uint32_t want;
} vector;

#define V(str, seed, want) \
  { str, sizeof(str) - 1, seed, want }

static void test_published_vectors(void) {
  static char a256[257];
  /* Published vectors for MurmurHash3_x86_32, from three sources:
   * - Ian Boyd's answer "MurmurHash3 Test Vectors" on Stack Overflow
   *   (https://stackoverflow.com/a/31929528), translated from SMHasher's
   *   own verification code: the byte vectors, the "a"/"ab"/.../"aaaa",
   *   "Hello, world!", pi, "abc", "abcdbcdecdef..." and quick-brown-fox
   *   strings, and 256 x 'a' below;
   * - the quick-start of the Python mmh3 package (pypi.org/project/mmh3):
   *   hash(b"foo") = -156908512 and hash(b"foo", 42) = -1322301282 as
   *   signed 32-bit ints, i.e. 0xF6A5C420 and 0xB12F489E;
   * - "Hello, world!" with seeds 1234 and 4321, 28 x 'x' and "" with seed
   *   1234, "test" and "kinkajou" with seed 0: vectors repeated across the
   *   test suites of many independent ports.
   * Every one was also recomputed with an independent Python implementation
   * written from the algorithm text (scratch file /tmp/cvscratch/mm3.py,
   * not in the repo), which agreed on all of them. */
  static const vector vectors[] = {
      V("", 0, 0),                           /* no data, zero seed: all zero */
      V("", 1, 0x514E28B7u),                 /* only the finaliser runs */
      V("", 0xffffffffu, 0x81F16F39u),       /* seed handled unsigned */
      V("\xff\xff\xff\xff", 0, 0x76293B50u), /* blocks in unsigned math */
      V("\x21\x43\x65\x87", 0, 0xF55B516Bu), /* block read little-endian */
      V("\x21\x43\x65\x87", 0x5082EDEEu, 0x2362F9DEu),
      V("\x21\x43\x65", 0, 0x7E4A8634u), /* 3-byte tail */
      V("\x21\x43", 0, 0xA0F7B07Au),     /* 2-byte tail */
      V("\x21", 0, 0x72661CF4u),         /* 1-byte tail */
      V("\0\0\0\0", 0, 0x2362F9DEu),     /* embedded NULs are data */
      V("\0\0\0", 0, 0x85F0B427u),
      V("\0\0", 0, 0x30F4C306u),
      V("\0", 0, 0x514E28B7u),
      V("aaaa", 0x9747b28cu, 0x5A97808Au),
      V("aaa", 0x9747b28cu, 0x283E0130u),
      V("aa", 0x9747b28cu, 0x5D211726u),
      V("a", 0x9747b28cu, 0x7FA09EA6u),
      V("abcd", 0x9747b28cu, 0xF0478627u),
      V("abc", 0x9747b28cu, 0xC84A62DDu),
      V("ab", 0x9747b28cu, 0x74875592u),
      V("Hello, world!", 0x9747b28cu, 0x24884CBAu),
      V("Hello, world!", 1234, 0xFAF6CDB3u),
      V("Hello, world!", 4321, 0xBF505788u),
      V("xxxxxxxxxxxxxxxxxxxxxxxxxxxx", 1234, 0x8905AC28u),
      V("", 1234, 0x0F2CC00Bu),
      V("test", 0, 0xBA6BD213u),
      V("kinkajou", 0, 0xB6D99CF8u),
      V("foo", 0, 0xF6A5C420u),
      V("foo", 42, 0xB12F489Eu),
      /* "ππππππππ" in UTF-8. */
      V("\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80\xcf\x80",
        0x9747b28cu, 0xD58063C1u),
      V("abc", 0, 0xB3DD93FAu),
      V("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 0,
        0xEE925B90u),
      V("The quick brown fox jumps over the lazy dog", 0x9747b28cu,
        0x2FA826CDu),
  };

  for (size_t i = 0; i < sizeof vectors / sizeof vectors[0]; i++) {
    const vector *v = &vectors[i];
    uint32_t got = hash_all_ways(v->data, v->len, v->seed);
    if (got != v->want) {
      fprintf(stderr, "vector %zu (len %zu, seed 0x%08lX)\n", i, v->len,
              (unsigned long)v->seed);
    }
    CHECK_EQ(got, v->want);
    check_alignments(v->data, v->len, v->seed, v->want);
  }
  /* 256 x 'a', seed 0x9747b28c -> 0x37405BDC (same Stack Overflow answer). */
  memset(a256, 'a', 256);
  CHECK_EQ(hash_all_ways(a256, 256, 0x9747b28cu), 0x37405BDCu);
  check_alignments(a256, 256, 0x9747b28cu, 0x37405BDCu);
  /* NULL is a valid key when the length is 0. */
  CHECK_EQ(cv_murmur3_32(NULL, 0, 1), 0x514E28B7u);
}

static void test_every_length(void) {
  /* Keys of every length 0..16 (bytes 0x01, 0x02, ... 0x10 cut to length),
   * covering every tail size after 0..4 whole blocks. Expected values were
   * computed with the independent Python implementation (scratch file
   * /tmp/cvscratch/mm3.py, not in the repo):
   * mm3(bytes(range(1, 17))[:n], seed) for seed 0 and 0x9747b28c. */
  static const struct {
    size_t len;
    uint32_t seed0;
    uint32_t seed9747;
  } lens[] = {
      {0, 0x00000000u, 0xEBB6C228u},  {1, 0xE45AD1ABu, 0xB8EF150Du},
      {2, 0x64C7667Eu, 0xA77FDC08u},  {3, 0x80D1D204u, 0x4FDD533Cu},
      {4, 0x3E349DA5u, 0xE2E42F0Eu},  {5, 0xA291B9C8u, 0x5A06626Au},
      {6, 0xD7BFB23Eu, 0x17B80744u},  {7, 0xFC5897B5u, 0x2CF53AA4u},
      {8, 0x0D4B1FBBu, 0x2B97E99Du},  {9, 0xA198F0A8u, 0x3F6AFD5Bu},
      {10, 0x4DC93CCAu, 0x764BAE21u}, {11, 0x01EFB7FAu, 0x52BDDFEAu},
      {12, 0x8F80F73Bu, 0x7A6C648Cu}, {13, 0xC928CDF5u, 0x2D1EDE58u},
      {14, 0x4EA2E38Eu, 0xC4A34066u}, {15, 0xE4B30395u, 0x55068FF4u},
      {16, 0xDA7E3067u, 0x11F5ECC7u},
  };
  unsigned char src[16];

  for (size_t i = 0; i < sizeof src; i++) {
    src[i] = (unsigned char)(i + 1);
  }
  for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
    CHECK_EQ(lens[i].len, i);
    CHECK_EQ(hash_all_ways(src, i, 0), lens[i].seed0);
    CHECK_EQ(hash_all_ways(src, i, 0x9747b28cu), lens[i].seed9747);
    check_alignments(src, i, 0, lens[i].seed0);
  }
}

static void test_incremental_splits(void) {
  unsigned char buf[1000];
  cv_murmur3 s;

  for (size_t i = 0; i < sizeof buf; i++) {
    buf[i] = (unsigned char)rng_next();
  }
  /* Every way of cutting every prefix of up to 40 bytes into three pieces,
   * so each piece boundary falls at every offset within a block. */
  for (size_t len = 0; len <= 40; len++) {
    uint32_t want = cv_murmur3_32(buf, len, 0x1234u);
    for (size_t i = 0; i <= len; i++) {
      for (size_t j = i; j <= len; j++) {
        cv_murmur3_init(&s, 0x1234u);
        cv_murmur3_update(&s, buf, i);
        cv_murmur3_update(&s, buf + i, j - i);
        cv_murmur3_update(&s, buf + j, len - j);
        CHECK_EQ(cv_murmur3_final(&s), want);
      }
    }
  }
  /* Random chunkings of the whole buffer, including empty chunks. */
  for (int round = 0; round < 2000; round++) {
    size_t len = (size_t)(rng_next() % (sizeof buf + 1));
    uint32_t seed = (uint32_t)rng_next();
    size_t at = 0;
    cv_murmur3_init(&s, seed);
    while (at < len) {
      size_t n = (size_t)(rng_next() % 9);
      if (n > len - at) {
        n = len - at;
      }
      cv_murmur3_update(&s, buf + at, n);
      at += n;
    }
    CHECK_EQ(cv_murmur3_final(&s), cv_murmur3_32(buf, len, seed));
  }
  /* final leaves the state alone: asking twice, or feeding more after
   * asking, gives the same answers as if final had not been called. */
  cv_murmur3_init(&s, 7);
  cv_murmur3_update(&s, buf, 6);
  CHECK_EQ(cv_murmur3_final(&s), cv_murmur3_32(buf, 6, 7));
  CHECK_EQ(cv_murmur3_final(&s), cv_murmur3_32(buf, 6, 7));
  cv_murmur3_update(&s, buf + 6, 11);
  CHECK_EQ(cv_murmur3_final(&s), cv_murmur3_32(buf, 17, 7));
  cv_murmur3_update(&s, NULL, 0);
  CHECK_EQ(cv_murmur3_final(&s), cv_murmur3_32(buf, 17, 7));
}

/* The specification of the bucket, restated independently of route.c's
 * streaming code: hash the concatenation in one shot. */
static uint32_t spec_hash(const char *group, const char *key) {
  char buf[256];
  int n = snprintf(buf, sizeof buf, "%s:%s", group, key);

  CHECK(n >= 0 && (size_t)n < sizeof buf);
  return cv_murmur3_32(buf, (size_t)n, 0);
}

static uint32_t bucket_of(const char *group, const char *key) {
  return cv_bucket(group, strlen(group), key, strlen(key));
}

static void make_key(int i, char *buf, size_t len) {
  /* Varied shapes: numeric ids, prefixed ids, e-mail-like and UUID-like
   * strings, so the keys are not all the same length. */
  switch (i % 4) {
    case 0:
      snprintf(buf, len, "%d", i);
      break;
    case 1:
      snprintf(buf, len, "user-%d", i);
      break;
    case 2:
      snprintf(buf, len, "person%d@example.com", i);
      break;
    default:
      snprintf(buf, len, "%08x-%04x-4%03x-a%03x-%012x",
               (unsigned)i * 2654435761u, (unsigned)i & 0xffffu,
               (unsigned)i % 0xfffu, (unsigned)(i * 7) % 0xfffu,
               (unsigned)i * 40503u);
      break;
  }
}

static void test_bucket_basics(void) {
  char longkey[5000];

  /* Bucket values computed with the independent Python implementation:
   * h = mm3(b"gr1:123"); (h % 100) * 10000 + (h // 100) % 10000. */
  CHECK_EQ(bucket_of("gr1", "123"), 724211u);
  CHECK_EQ(bucket_of("groupX", "999"), 246061u);
  CHECK_EQ(bucket_of("verifymenow-v2", "user-42"), 546891u);
  CHECK_EQ(bucket_of("", ""), 309374u);
  /* Unleash's own cross-client vectors: normalizedValue("123", "gr1") is 73
   * and normalizedValue("999", "groupX") is 25 (unleash-client-go,
   * internal/strategies/helpers_test.go; the same pair is asserted by
   * unleash-client-node). normalizedValue = h % 100 + 1 = bucket / 10000 + 1.
   */
  CHECK_EQ(bucket_of("gr1", "123") / 10000u + 1u, 73u);
  CHECK_EQ(bucket_of("groupX", "999") / 10000u + 1u, 25u);
  /* NULL with length 0, and keys that are not NUL-terminated. */
  CHECK_EQ(cv_bucket(NULL, 0, NULL, 0), bucket_of("", ""));
  CHECK_EQ(cv_bucket("gr1xx", 3, "123yy", 3), bucket_of("gr1", "123"));
  /* A key far longer than any stack buffer would be: no truncation. */
  memset(longkey, 'k', sizeof longkey);
  {
    uint32_t h;
    uint32_t b;
    cv_murmur3 s;
    cv_murmur3_init(&s, 0);
    cv_murmur3_update(&s, "g:", 2);
    cv_murmur3_update(&s, longkey, sizeof longkey);
    h = cv_murmur3_final(&s);
    b = cv_bucket("g", 1, longkey, sizeof longkey);
    CHECK_EQ(b, (h % 100u) * 10000u + (h / 100u) % 10000u);
    CHECK(b != cv_bucket("g", 1, longkey, sizeof longkey - 1));
  }
  /* Every bucket is below 100%, so a rate of 100% routes everyone. */
  for (int i = 0; i < 10000; i++) {
    char key[64];
    make_key(i, key, sizeof key);
    CHECK(bucket_of("verifymenow-v2", key) < CV_RATE_MAX_PPM);
  }
}

static void test_unleash_compat(void) {
  static const char *const groups[] = {"verifymenow-v2", "gr1", ""};

  for (size_t g = 0; g < sizeof groups / sizeof groups[0]; g++) {
    for (int i = 0; i < 10000; i++) {
      char key[64];
      uint32_t bucket;
      uint32_t normalized;

      make_key(i, key, sizeof key);
      bucket = bucket_of(groups[g], key);
      /* Unleash: normalizedValue(id, group) = murmur3(group:id) % 100 + 1,
       * and a subject is in at percentage p when normalizedValue <= p. */
      normalized = spec_hash(groups[g], key) % 100u + 1u;
      for (uint32_t p = 0; p <= 100; p++) {
        int ours = bucket < p * 10000u;
        int unleash = normalized <= p;
        if (ours != unleash) {
          fprintf(stderr, "group '%s' key '%s' at %u%%\n", groups[g], key,
                  (unsigned)p);
        }
        CHECK_EQ(ours, unleash);
      }
    }
  }
}

enum { MONO_KEYS = 2000 };

static uint32_t mono_buckets[MONO_KEYS];
static unsigned char mono_routed[MONO_KEYS];
static size_t mono_count;

/* Moves the sweep to rate, checking that no subject routed so far leaves. */
static void mono_step(uint32_t rate) {
  size_t count = 0;

  for (size_t i = 0; i < MONO_KEYS; i++) {
    int now = mono_buckets[i] < rate;
    if (mono_routed[i]) {
      CHECK(now);
    }
    mono_routed[i] = (unsigned char)now;
    count += (size_t)now;
  }
  CHECK(count >= mono_count);
  mono_count = count;
}

static void test_monotonic(void) {
  static const uint32_t fine_points[] = {10000u, 12345u, 500000u, 999990u};
  uint32_t last = 0;

  for (int i = 0; i < MONO_KEYS; i++) {
    char key[64];
    make_key(i, key, sizeof key);
    mono_buckets[i] = bucket_of("verifymenow-v2", key);
  }
  memset(mono_routed, 0, sizeof mono_routed);
  mono_count = 0;
  mono_step(0);
  CHECK_EQ(mono_count, 0);

  /* A typical ramp in coarse steps, then the whole range in 997 ppm steps
   * (a prime, so the steps fall at varied offsets within each percent). */
  mono_step(1u);
  mono_step(100u);
  mono_step(10000u);
  mono_step(50000u);
  mono_step(250000u);
  mono_step(500000u);
  mono_step(1000000u);
  CHECK_EQ(mono_count, MONO_KEYS);

  memset(mono_routed, 0, sizeof mono_routed);
  mono_count = 0;
  for (uint32_t r = 0; r <= CV_RATE_MAX_PPM; r += 997u) {
    mono_step(r);
    last = r;
  }
  CHECK(last < CV_RATE_MAX_PPM);
  mono_step(CV_RATE_MAX_PPM);
  CHECK_EQ(mono_count, MONO_KEYS);

  /* 1 ppm steps around a few points, each sweep starting from scratch. */
  for (size_t f = 0; f < sizeof fine_points / sizeof fine_points[0]; f++) {
    memset(mono_routed, 0, sizeof mono_routed);
    mono_count = 0;
    for (uint32_t r = fine_points[f] - 10u; r <= fine_points[f] + 10u; r++) {
      mono_step(r);
    }
  }
  /* 1 ppm steps across some subjects' own buckets: each enters exactly when
   * the rate passes its bucket, and stays in afterwards. */
  for (size_t i = 0; i < 8; i++) {
    uint32_t b = mono_buckets[i * 250];
    uint32_t from = b >= 5u ? b - 5u : 0u;
    memset(mono_routed, 0, sizeof mono_routed);
    mono_count = 0;
    for (uint32_t r = from; r <= b + 5u; r++) {
      mono_step(r);
      CHECK(mono_routed[i * 250] == (r > b));
    }
  }
}

/* Share of 100,000 subjects routed at a rate. Each subject is in with
 * probability p independently (for a good hash), so the count is binomial
 * with mean n*p and standard deviation sqrt(n*p*(1-p)). The check allows 4.5
 * standard deviations, which a correct hash misses with probability about
 * 7e-6 per rate; the keys are fixed, so the test is deterministic anyway.
 * Squares are compared so that no libm is needed. */
static void check_share(const uint32_t *buckets, size_t n, uint32_t rate) {
  double p = (double)rate / (double)CV_RATE_MAX_PPM;
  double mean = (double)n * p;
  double var = (double)n * p * (1.0 - p);
  size_t count = 0;
  double dev;

  for (size_t i = 0; i < n; i++) {
    count += buckets[i] < rate;
  }
  dev = (double)count - mean;
  if (dev * dev > 4.5 * 4.5 * var) {
    fprintf(stderr, "rate %lu ppm: %zu of %zu routed, expected %.1f\n",
            (unsigned long)rate, count, n, mean);
  }
  CHECK(dev * dev <= 4.5 * 4.5 * var);
}

static void test_share(void) {
  enum { N = 100000 };
  static uint32_t buckets[N];

  for (int i = 0; i < N; i++) {
    char key[64];
    make_key(i, key, sizeof key);
    buckets[i] = bucket_of("verifymenow-v2", key);
  }
  check_share(buckets, N, 10000u);  /* 1% */
  check_share(buckets, N, 100000u); /* 10% */
  check_share(buckets, N, 500000u); /* 50% */
  /* Between whole percentages the second term of the bucket does the work;
   * check it spreads subjects too. */
  check_share(buckets, N, 2500u);   /* 0.25% */
  check_share(buckets, N, 123456u); /* 12.3456% */
  check_share(buckets, N, 995000u); /* 99.5% */
}

/* Rate parsing. ACCEPT and REJECT are macros so a failure names the line of
 * the case that failed. */
#define ACCEPT(text, want) check_accept(text, want, __LINE__)
#define REJECT(text) check_reject(text, __LINE__)

static void check_accept(const char *text, uint32_t want, int line) {
  uint32_t ppm = 0xDEADBEEFu;
  char err[200] = "";
  int rc = cv_rate_parse(text, &ppm, err, sizeof err);

  if (rc != 0 || ppm != want) {
    fprintf(stderr, "%s:%d: '%s' should parse as %lu ppm: rc %d, ppm %lu, %s\n",
            __FILE__, line, text, (unsigned long)want, rc, (unsigned long)ppm,
            err);
    exit(1);
  }
}

/* A rejected text returns -1, leaves *ppm alone and explains itself. */
static void check_reject(const char *text, int line) {
  uint32_t ppm = 0xDEADBEEFu;
  char err[200] = "";
  int rc = cv_rate_parse(text, &ppm, err, sizeof err);

  if (rc != -1 || ppm != 0xDEADBEEFu || err[0] == '\0') {
    fprintf(stderr,
            "%s:%d: '%s' should be rejected: rc %d, ppm 0x%08lX, err '%s'\n",
            __FILE__, line, text ? text : "(null)", rc, (unsigned long)ppm,
            err);
    exit(1);
  }
}

/* The message for text contains needle. */
static int reject_says(const char *text, const char *needle) {
  uint32_t ppm = 0;
  char err[200] = "";

  return cv_rate_parse(text, &ppm, err, sizeof err) == -1 &&
         strstr(err, needle) != NULL;
}

static void test_rate_parse(void) {
  ACCEPT("5%", 50000u);
  ACCEPT("0.25%", 2500u);
  ACCEPT("100%", 1000000u);
  ACCEPT("0%", 0u);
  ACCEPT("2500ppm", 2500u);
  ACCEPT("1000000ppm", 1000000u);
  ACCEPT("0ppm", 0u);
  ACCEPT("1ppm", 1u);
  ACCEPT("0.0001%", 1u);
  ACCEPT("0.001%", 10u);
  ACCEPT("0.01%", 100u);
  ACCEPT("0.1%", 1000u);
  ACCEPT("1%", 10000u);
  ACCEPT("10%", 100000u);
  ACCEPT("50%", 500000u);
  ACCEPT("12.3456%", 123456u);
  ACCEPT("99.9999%", 999999u);
  ACCEPT("100.0000%", 1000000u);
  ACCEPT("5.0%", 50000u);
  ACCEPT("0.5%", 5000u);
  /* Decimals past the 4th are allowed when they are zeros: the value is
   * still exact, and "more precision than 1 ppm" is what is refused. */
  ACCEPT("0.25000000%", 2500u);
  ACCEPT("100.00000%", 1000000u);
  /* Leading zeros are plain decimal (no octal) and cannot overflow. */
  ACCEPT("05%", 50000u);
  ACCEPT("000000000000000000000000000001%", 10000u);
  ACCEPT("0002500ppm", 2500u);
  /* The unit is case-insensitive for ppm. */
  ACCEPT("2500PPM", 2500u);
  ACCEPT("2500Ppm", 2500u);

  REJECT(NULL);
  REJECT("");
  /* A bare number is ambiguous. */
  REJECT("0.05");
  REJECT("5");
  REJECT("0");
  REJECT("100");
  /* Signs. */
  REJECT("-5%");
  REJECT("-0%");
  REJECT("-1ppm");
  REJECT("+5%");
  REJECT("--5%");
  REJECT("+-5%");
  REJECT("-+5%");
  REJECT("5-%");
  /* Out of range. */
  REJECT("100.0001%");
  REJECT("101%");
  REJECT("1000%");
  REJECT("1000001ppm");
  REJECT("99999999999999999999999999%");
  REJECT("4294967296ppm");
  REJECT("4294967295ppm");
  REJECT("18446744073709551616ppm");
  /* Finer than 1 ppm. */
  REJECT("0.00001%");
  REJECT("0.00005%");
  REJECT("12.34561%");
  REJECT("0.000000001%");
  /* ppm is whole. */
  REJECT("2500.5ppm");
  REJECT("2500.0ppm");
  /* Not numbers. */
  REJECT("nan");
  REJECT("nan%");
  REJECT("NaN%");
  REJECT("inf");
  REJECT("inf%");
  REJECT("infinity%");
  REJECT("-inf%");
  REJECT("abc");
  REJECT("five%");
  /* Hex and exponents, which strtod would have taken. */
  REJECT("0x10%");
  REJECT("0X1p3%");
  REJECT("1e3ppm");
  REJECT("1E2%");
  REJECT("5e-1%");
  /* Units alone, unknown or doubled units, trailing junk. */
  REJECT("%");
  REJECT("ppm");
  REJECT("PPM");
  REJECT("5%x");
  REJECT("5%%");
  REJECT("5ppmx");
  REJECT("5ppm%");
  REJECT("5%ppm");
  REJECT("5pp");
  REJECT("5p");
  REJECT("5 ppm");
  REJECT("5percent");
  REJECT("5bp");
  /* Decimal point misuse. */
  REJECT(".");
  REJECT(".%");
  REJECT(".5%");
  REJECT("5.%");
  REJECT("1.2.3%");
  REJECT("5..0%");
  REJECT("0,5%");
  REJECT("1,000ppm");
  /* Whitespace anywhere. */
  REJECT(" 5%");
  REJECT("5% ");
  REJECT("5 %");
  REJECT("\t5%");
  REJECT("5%\n");
  REJECT("5\r%");
  REJECT(" ");
  /* Non-ASCII and control bytes. */
  REJECT("\xef\xbc\x95%"); /* FULLWIDTH DIGIT FIVE */
  REJECT("5\xc2\xa0%");    /* no-break space */
  REJECT("5\x01%");
  REJECT("\x7f");

  /* Messages say what to do. */
  CHECK(reject_says("0.05", "'%'"));
  CHECK(reject_says("0.05", "'ppm'"));
  CHECK(reject_says("0.05", "ambiguous"));
  CHECK(reject_says("5 %", "whitespace"));
  CHECK(reject_says("-5%", "negative"));
  CHECK(reject_says("101%", "maximum"));
  CHECK(reject_says("1000001ppm", "maximum"));
  CHECK(reject_says("0.00005%", "1 ppm"));
  CHECK(reject_says("5%x", "'x' at position 3"));
  CHECK(reject_says("0x10%", "'x' at position 2"));
  CHECK(reject_says("5\x01%", "'\\x01'"));
  CHECK(reject_says("%", "no number"));
  CHECK(reject_says("0,5%", "'.'"));
  CHECK(reject_says("5%x", "bad rate '5%x'"));

  /* err may be absent or tiny; a short buffer is still terminated. */
  {
    uint32_t ppm = 7;
    char small[8];
    CHECK(cv_rate_parse("bogus", &ppm, NULL, 0) == -1);
    CHECK_EQ(cv_rate_parse("bogus", &ppm, small, 0), -1);
    memset(small, 'z', sizeof small);
    CHECK_EQ(cv_rate_parse("bogus", &ppm, small, sizeof small), -1);
    CHECK(memchr(small, '\0', sizeof small) != NULL);
    CHECK_EQ(strlen(small), sizeof small - 1);
    CHECK_EQ(ppm, 7);
    CHECK(cv_rate_parse("5%", &ppm, NULL, 0) == 0);
    CHECK_EQ(ppm, 50000u);
  }
  /* A long hostile input is quoted back cut short and escaped. */
  {
    char longtext[4096];
    char err[256] = "";
    uint32_t ppm = 1;
    memset(longtext, '\x1b', sizeof longtext - 1);
    longtext[sizeof longtext - 1] = '\0';
    CHECK_EQ(cv_rate_parse(longtext, &ppm, err, sizeof err), -1);
    CHECK(strchr(err, '\x1b') == NULL);
    CHECK(strstr(err, "...") != NULL);
    CHECK(strlen(err) < 200);
  }
}

static void check_format(uint32_t ppm, const char *want) {
  char buf[CV_RATE_FORMAT_MAX];

  cv_rate_format(ppm, buf, sizeof buf);
  if (strcmp(buf, want) != 0) {
    fprintf(stderr, "format(%lu) = '%s', want '%s'\n", (unsigned long)ppm, buf,
            want);
  }
  CHECK_EQ(buf, want);
}

static void test_rate_format(void) {
  char buf[CV_RATE_FORMAT_MAX];

  check_format(50000u, "5%");
  check_format(2500u, "0.25%");
  check_format(1u, "0.0001%");
  check_format(1000000u, "100%");
  check_format(0u, "0%");
  check_format(10u, "0.001%");
  check_format(100u, "0.01%");
  check_format(1000u, "0.1%");
  check_format(10000u, "1%");
  check_format(123456u, "12.3456%");
  check_format(999999u, "99.9999%");
  check_format(100001u, "10.0001%");
  check_format(105000u, "10.5%");
  /* Out of range values are printed as they are, never clamped. */
  check_format(1000001u, "100.0001%");
  check_format(UINT32_MAX, "429496.7295%");

  /* Every valid rate reads back exactly, and is the shortest spelling: no
   * trailing zero after the point and no point without decimals. */
  for (uint32_t ppm = 0; ppm <= CV_RATE_MAX_PPM; ppm++) {
    uint32_t back = 0xDEADBEEFu;
    char err[200];
    size_t n;

    cv_rate_format(ppm, buf, sizeof buf);
    n = strlen(buf);
    CHECK(n >= 2 && buf[n - 1] == '%');
    if (strchr(buf, '.') != NULL) {
      CHECK(buf[n - 2] != '0' && buf[n - 2] != '.');
    }
    if (cv_rate_parse(buf, &back, err, sizeof err) != 0) {
      fprintf(stderr, "format(%lu) = '%s': %s\n", (unsigned long)ppm, buf, err);
    }
    CHECK_EQ(back, ppm);
  }
  /* The formatter's out-of-range output is refused by the parser. */
  cv_rate_format(1000001u, buf, sizeof buf);
  REJECT(buf);

  /* Truncation keeps a terminated string; a zero-length buffer is left
   * alone. */
  cv_rate_format(2500u, buf, 3);
  CHECK_EQ(buf, "0.");
  buf[0] = 'q';
  cv_rate_format(2500u, buf, 0);
  CHECK_EQ(buf[0], 'q');
  cv_rate_format(2500u, NULL, 0);
}

int main(void) {
  test_published_vectors();
  test_every_length();
  test_incremental_splits();
  test_bucket_basics();
  test_unleash_compat();
  test_monotonic();
  test_share();
  test_rate_parse();
  test_rate_format();
  printf("test-route: all checks passed\n");
  return 0;
}
