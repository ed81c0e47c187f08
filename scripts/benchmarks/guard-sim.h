/* guard-sim.h: simulated guarded rollouts, for the guard benchmark
 * (bench-guard.c) and the guard's unit test (tests/c/test-stats.c).
 *
 * One rollout: both versions get `per_look` new instances between two
 * looks, each with an incident with probability p1 (V1) or p2 (V2); at
 * every look the guard asks whether V2 is worse than V1 by more than
 * `margin`, two ways:
 * - the plan's test, cv_msprt_p (always valid: its smallest p-value so far
 *   is compared with alpha);
 * - a fixed-sample test read at every look as if it were the only one: the
 *   one-sided z-test of the same difference, (D - margin) / sqrt(V) at
 *   least the normal quantile of 1 - alpha.
 * Each records the instances per version at its first rejection, or 0 if
 * it never rejected within `looks` looks. Seeded and deterministic. */
#ifndef SY_GUARD_SIM_H
#define SY_GUARD_SIM_H

#include <math.h>
#include <stdint.h>

#include "stats.h"

typedef struct guard_sim {
  double p1, p2;       /* true incident rates */
  long per_look;       /* new instances per version between looks */
  int looks;           /* looks in one rollout */
  int min_per_version; /* no verdict before this many per version */
  double margin, alpha, tau;
} guard_sim;

typedef struct guard_run {
  long msprt_at, fixed_at; /* instances per version at rejection, 0: never */
} guard_run;

/* splitmix64: small, fast, and good enough for Bernoulli draws. */
static inline uint64_t guard_sim_next(uint64_t *s) {
  uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

static inline long guard_sim_draw(uint64_t *s, long n, double p) {
  long x = 0;
  for (long i = 0; i < n; i++) {
    x += (double)(guard_sim_next(s) >> 11) * 0x1.0p-53 < p;
  }
  return x;
}

static inline void guard_sim_run(const guard_sim *g, uint64_t seed,
                                 guard_run *out) {
  uint64_t s = seed;
  long x1 = 0, x2 = 0, n = 0;
  double best = 1.0, zcrit = cv_norm_quantile(1.0 - g->alpha);
  out->msprt_at = out->fixed_at = 0;
  for (int look = 0; look < g->looks; look++) {
    x1 += guard_sim_draw(&s, g->per_look, g->p1);
    x2 += guard_sim_draw(&s, g->per_look, g->p2);
    n += g->per_look;
    if (n < g->min_per_version) {
      continue;
    }
    double p = cv_msprt_p(x1, n, x2, n, g->margin, g->tau);
    best = p < best ? p : best;
    if (!out->msprt_at && best <= g->alpha) {
      out->msprt_at = n;
    }
    double r1 = (double)x1 / (double)n, r2 = (double)x2 / (double)n;
    double var = (r1 * (1 - r1) + r2 * (1 - r2)) / (double)n;
    if (!out->fixed_at && var > 0 &&
        (r2 - r1 - g->margin) / sqrt(var) >= zcrit) {
      out->fixed_at = n;
    }
    if (out->msprt_at && out->fixed_at) {
      return;
    }
  }
}

/* The latency guard the same way: each version's new instances have a
 * branch latency drawn log-normal (median `median_ms`, log-spread `sigma`;
 * V2's scaled by `slower`, so its p95 is `slower` times V1's), kept in
 * whole milliseconds as the engine keeps them. At every look V1's p95 so
 * far sets the limit (times 1 + `increase`, rounded up, and at least 1 ms
 * above it), and the guard compares V2's share over the limit with V1's
 * share over its p95, as the plan does: cv_msprt_p, beside the one-sided
 * z-test of the same difference read as if each look were the only one. */
#define GUARD_SIM_MAX_MS 4096

typedef struct latency_sim {
  double median_ms, sigma, slower, increase;
  long per_look;
  int looks, min_per_version;
  double alpha, tau;
} latency_sim;

static inline long guard_sim_latency(uint64_t *s, double median, double sigma) {
  double u1 = ((double)(guard_sim_next(s) >> 11) + 0.5) * 0x1.0p-53;
  double u2 = (double)(guard_sim_next(s) >> 11) * 0x1.0p-53;
  double z = sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
  long ms = (long)(median * exp(sigma * z));
  return ms < GUARD_SIM_MAX_MS ? ms : GUARD_SIM_MAX_MS - 1;
}

/* The latency at the p95 offset of a histogram of n values (per ms). */
static inline long guard_sim_p95(const long *hist, long n) {
  long want = (95 * n + 99) / 100, seen = 0;
  for (long ms = 0; ms < GUARD_SIM_MAX_MS; ms++) {
    if ((seen += hist[ms]) >= want) {
      return ms;
    }
  }
  return GUARD_SIM_MAX_MS - 1;
}

static inline void latency_sim_run(const latency_sim *g, uint64_t seed,
                                   guard_run *out) {
  static long h1[GUARD_SIM_MAX_MS], h2[GUARD_SIM_MAX_MS];
  uint64_t s = seed;
  long n = 0;
  double best = 1.0, zcrit = cv_norm_quantile(1.0 - g->alpha);
  for (long i = 0; i < GUARD_SIM_MAX_MS; i++) {
    h1[i] = h2[i] = 0;
  }
  out->msprt_at = out->fixed_at = 0;
  for (int look = 0; look < g->looks; look++) {
    for (long i = 0; i < g->per_look; i++) {
      h1[guard_sim_latency(&s, g->median_ms, g->sigma)]++;
      h2[guard_sim_latency(&s, g->median_ms * g->slower, g->sigma)]++;
    }
    n += g->per_look;
    if (n < g->min_per_version) {
      continue;
    }
    long p95 = guard_sim_p95(h1, n), over1 = 0, over = 0;
    long limit = (long)ceil((double)p95 * (1.0 + g->increase));
    limit = limit > p95 ? limit : p95 + 1;
    for (long ms = p95 + 1; ms < GUARD_SIM_MAX_MS; ms++) {
      over1 += h1[ms];
      over += ms > limit ? h2[ms] : 0;
    }
    double p = cv_msprt_p(over1, n, over, n, 0.0, g->tau);
    best = p < best ? p : best;
    if (!out->msprt_at && best <= g->alpha) {
      out->msprt_at = n;
    }
    double r1 = (double)over1 / (double)n, r2 = (double)over / (double)n;
    double var = (r1 * (1 - r1) + r2 * (1 - r2)) / (double)n;
    if (!out->fixed_at && var > 0 && (r2 - r1) / sqrt(var) >= zcrit) {
      out->fixed_at = n;
    }
    if (out->msprt_at && out->fixed_at) {
      return;
    }
  }
}

/* n rollouts (seeds 1..n) of the incident sim g or, when g is NULL, of the
 * latency sim l: how many each test rolled back; and, when at is not
 * NULL, the instances per version at each one's rollback (at[k] the
 * always-valid test's, at[n + k] the fixed-sample test's; 0: never). */
static inline void guard_sim_many(const guard_sim *g, const latency_sim *l,
                                  int n, int *msprt, int *fixed, long *at) {
  *msprt = *fixed = 0;
  for (int k = 0; k < n; k++) {
    guard_run r;
    if (g) {
      guard_sim_run(g, (uint64_t)k + 1, &r);
    } else {
      latency_sim_run(l, (uint64_t)k + 1, &r);
    }
    *msprt += r.msprt_at != 0;
    *fixed += r.fixed_at != 0;
    if (at) {
      at[k] = r.msprt_at;
      at[n + k] = r.fixed_at;
    }
  }
}

#endif
