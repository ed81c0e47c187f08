/* bench-guard: how the rollout guard's always-valid test (cv_msprt_p)
 * behaves over many simulated rollouts, beside a fixed-sample test read
 * just as often (guard-sim.h says how a rollout is simulated).
 *
 *   bench-guard [ROLLOUTS]      (default 1000)
 *
 * Prints, for equal true incident rates (5%), how many rollouts each test
 * rolled back (every one of them a false rollback); and for V2 at 1.5x
 * and 2x V1's rate, how many each caught and the median instances per
 * version it needed. Seeded: the same figures on every run. */
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

static void scenario(const char *name, double ratio, int rollouts) {
  guard_sim g = {.p1 = 0.05,
                 .p2 = 0.05 * ratio,
                 .per_look = 25,
                 .looks = 200,
                 .min_per_version = 200,
                 .margin = 0.0,
                 .alpha = 0.05,
                 .tau = CV_MSPRT_TAU};
  long *ms = calloc((size_t)rollouts, sizeof *ms);
  long *fx = calloc((size_t)rollouts, sizeof *fx);
  int mc, fc;
  if (!ms || !fx) {
    fprintf(stderr, "bench-guard: out of memory\n");
    exit(1);
  }
  for (int k = 0; k < rollouts; k++) {
    guard_run r;
    guard_sim_run(&g, (uint64_t)k + 1, &r);
    ms[k] = r.msprt_at;
    fx[k] = r.fixed_at;
  }
  long mm = median_caught(ms, rollouts, &mc);
  long fm = median_caught(fx, rollouts, &fc);
  if (ratio == 1.0) {
    printf(
        "  %s: false rollbacks: %d/%d (alpha %.2f); fixed-sample test "
        "at every look: %d/%d\n",
        name, mc, rollouts, g.alpha, fc, rollouts);
  } else {
    printf(
        "  %s: rolled back %d/%d, median %ld instances per version; "
        "fixed-sample test at every look: %d/%d, median %ld\n",
        name, mc, rollouts, mm, fc, rollouts, fm);
  }
  free(ms);
  free(fx);
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
  return 0;
}
