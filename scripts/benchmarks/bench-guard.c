/* bench-guard: how the rollout guard's always-valid test (cv_msprt_p)
 * behaves over many simulated rollouts, beside a fixed-sample test read
 * just as often (guard-sim.h says how a rollout is simulated).
 *
 *   bench-guard [ROLLOUTS]      (default 1000)
 *
 * Prints, for equal true incident rates (5%), how many rollouts each test
 * rolled back (every one of them a false rollback); and for V2 at 1.5x
 * and 2x V1's rate, how many each caught and the median instances per
 * version it needed. Then the same for the latency guard (a limit 25%
 * above V1's p95): equal latencies, V2's p95 at exactly the limit (the
 * worst case for false rollbacks), and at 1.5x and 2x V1's.
 * Seeded: the same figures on every run. */
#include <stdio.h>
#include <stdlib.h>

#include "guard-sim.h"

static int by_value(const void *a, const void *b) {
  long x = *(const long *)a, y = *(const long *)b;
  return (x > y) - (x < y);
}

/* The median of the nonzero values (rollouts that were rolled back). */
static long median_caught(long *v, int n, int *caught) {
  int k = 0;
  for (int i = 0; i < n; i++) {
    if (v[i]) {
      v[k++] = v[i];
    }
  }
  *caught = k;
  if (!k) {
    return 0;
  }
  qsort(v, (size_t)k, sizeof *v, by_value);
  return v[(k - 1) / 2];
}

/* Runs `rollouts` rollouts of guard g (an incident sim when lat is NULL,
 * else the latency sim lat) and prints the line of one scenario. */
static void scenario_of(const char *name, int equal, const guard_sim *g,
                        const latency_sim *lat, int rollouts) {
  long *at = calloc(2 * (size_t)rollouts, sizeof *at);
  int mc, fc;
  if (!at) {
    fprintf(stderr, "bench-guard: out of memory\n");
    exit(1);
  }
  guard_sim_many(g, lat, rollouts, &mc, &fc, at);
  long mm = median_caught(at, rollouts, &mc);
  long fm = median_caught(at + rollouts, rollouts, &fc);
  if (equal) {
    printf(
        "  %s: false rollbacks: %d/%d (alpha %.2f); fixed-sample test "
        "at every look: %d/%d\n",
        name, mc, rollouts, lat ? lat->alpha : g->alpha, fc, rollouts);
  } else {
    printf(
        "  %s: rolled back %d/%d, median %ld instances per version; "
        "fixed-sample test at every look: %d/%d, median %ld\n",
        name, mc, rollouts, mm, fc, rollouts, fm);
  }
  free(at);
}

static void latency_scenario(const char *name, double slower, int rollouts) {
  latency_sim l = {.median_ms = 120,
                   .sigma = 0.4,
                   .slower = slower,
                   .increase = 0.25,
                   .per_look = 25,
                   .looks = 200,
                   .min_per_version = 200,
                   .alpha = 0.05,
                   .tau = CV_MSPRT_TAU};
  /* At the limit the guard's null hypothesis holds at its edge: the
   * hardest case for false rollbacks. */
  scenario_of(name, slower <= 1.0 + l.increase, NULL, &l, rollouts);
}

static void scenario(const char *name, double ratio, int rollouts) {
  guard_sim g = {.p1 = 0.05,
                 .p2 = 0.05 * ratio,
                 .per_look = 25,
                 .looks = 200,
                 .min_per_version = 200,
                 .margin = 0.0,
                 .alpha = 0.05,
                 .tau = CV_MSPRT_TAU};
  scenario_of(name, ratio == 1.0, &g, NULL, rollouts);
}

int main(int argc, char **argv) {
  int rollouts = argc > 1 ? atoi(argv[1]) : 1000;
  if (rollouts <= 0) {
    fprintf(stderr, "usage: bench-guard [ROLLOUTS]\n");
    return 2;
  }
  printf(
      "  %d rollouts each, V1 at 5%%, a look every 50 instances (25 per "
      "version) up to 5,000 per version, verdicts from 200 per version, "
      "margin 0, tau %.2f\n",
      rollouts, CV_MSPRT_TAU);
  scenario("V2 equal (5%)", 1.0, rollouts);
  scenario("V2 at 1.5x (7.5%)", 1.5, rollouts);
  scenario("V2 at 2x (10%)", 2.0, rollouts);
  printf(
      "  latency guard, limit V1's p95 + 25%%: log-normal latencies, median "
      "120 ms, sigma 0.4, whole ms; the same looks\n");
  latency_scenario("latency: V2 equal", 1.0, rollouts);
  latency_scenario("latency: V2 at the limit (1.25x)", 1.25, rollouts);
  latency_scenario("latency: V2 at 1.5x", 1.5, rollouts);
  latency_scenario("latency: V2 at 2x", 2.0, rollouts);
  return 0;
}
