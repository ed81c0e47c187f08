/* bench-route.c: measures what a sticky routing decision costs. It times
 * cv_bucket (the streaming hash fed group, ':' and key, plus the bucket
 * arithmetic) against a bare cv_murmur3_32 over the same bytes already
 * concatenated, in the same run, so the price of never concatenating is
 * visible. It prints figures only and never fails. */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L
#endif

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "route.h"

enum {
  NKEYS = 4096, /* a power of two, cycled through with a mask */
  CALLS = 1000000,
  RUNS = 9,
  MAXKEY = 80
};

static const char group[] = "verifymenow-v2";

static char keys[NKEYS][MAXKEY];
static size_t key_lens[NKEYS];
static char joined[NKEYS][sizeof group + MAXKEY];
static size_t joined_lens[NKEYS];

/* Written after every timed loop so the compiler cannot drop the calls. */
static volatile uint32_t sink;

static double now_ns(void) {
  struct timespec ts;

  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

/* Subject keys as they come in practice: numeric ids, prefixed ids, e-mail
 * addresses and UUIDs, 1 to 36 bytes. */
static void make_keys(void) {
  for (unsigned i = 0; i < NKEYS; i++) {
    int n;

    switch (i % 4) {
      case 0:
        n = snprintf(keys[i], MAXKEY, "%u", i * 7919u);
        break;
      case 1:
        n = snprintf(keys[i], MAXKEY, "user-%u", i);
        break;
      case 2:
        n = snprintf(keys[i], MAXKEY, "person.%u@example.com", i);
        break;
      default:
        n = snprintf(keys[i], MAXKEY, "%08x-%04x-4%03x-a%03x-%012x",
                     i * 2654435761u, i & 0xffffu, i % 0xfffu,
                     (i * 7u) % 0xfffu, i * 40503u);
        break;
    }
    key_lens[i] = (size_t)n;
    n = snprintf(joined[i], sizeof joined[i], "%s:%s", group, keys[i]);
    joined_lens[i] = (size_t)n;
  }
}

static double time_bucket(void) {
  uint32_t acc = 0;
  double t0 = now_ns();

  for (unsigned i = 0; i < CALLS; i++) {
    unsigned k = i & (NKEYS - 1);
    acc += cv_bucket(group, sizeof group - 1, keys[k], key_lens[k]);
  }
  sink = acc;
  return (now_ns() - t0) / CALLS;
}

static double time_murmur(void) {
  uint32_t acc = 0;
  double t0 = now_ns();

  for (unsigned i = 0; i < CALLS; i++) {
    unsigned k = i & (NKEYS - 1);
    acc += cv_murmur3_32(joined[k], joined_lens[k], 0);
  }
  sink = acc;
  return (now_ns() - t0) / CALLS;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a;
  double y = *(const double *)b;

  return (x > y) - (x < y);
}

static double median(double *v, size_t n) {
  qsort(v, n, sizeof v[0], cmp_double);
  return v[n / 2];
}

int main(void) {
  double bucket[RUNS];
  double murmur[RUNS];
  double total = 0;
  double mb;
  double mm;

  make_keys();
  for (unsigned i = 0; i < NKEYS; i++) {
    total += (double)joined_lens[i];
  }
  /* One untimed pass of each warms the caches and the CPU clock. */
  time_bucket();
  time_murmur();
  /* Alternating the two spreads any drift in machine load over both. */
  for (int r = 0; r < RUNS; r++) {
    bucket[r] = time_bucket();
    murmur[r] = time_murmur();
  }
  mb = median(bucket, RUNS);
  mm = median(murmur, RUNS);

  printf(
      "bench-route: %d calls per run, median of %d runs, %d keys, "
      "group \"%s\", hashed input %.1f bytes on average\n",
      CALLS, RUNS, NKEYS, group, total / NKEYS);
  printf("  cv_bucket (streamed group, ':', key)    %7.2f ns/call\n", mb);
  printf("  cv_murmur3_32 (pre-concatenated input)  %7.2f ns/call\n", mm);
  printf("  ratio bucket / bare murmur3             %7.2f\n", mb / mm);
  return 0;
}
