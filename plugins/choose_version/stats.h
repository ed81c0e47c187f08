/* stats.h: the statistics behind the per-version report - confidence
 * intervals, the tests that compare V1's and V2's incident rates, sample
 * sizes and the resulting verdict - in plain C11 and libm, so the numbers a
 * user acts on can be tested against independently computed values.
 *
 * Rates are proportions in [0, 1]; differences shown to people are in
 * percentage points (0.01 as a proportion is 1 point). Counts are longs:
 * x incidents among n instances, 0 <= x <= n <= CV_COUNT_MAX. */
#ifndef CV_STATS_H
#define CV_STATS_H

#include <stddef.h>

/* Largest count accepted anywhere (a billion instances): beyond any real
 * sample, and low enough that totals fit in a long long. Fisher's p-values
 * keep about 8 significant digits up to totals of a few million (measured)
 * and lose about one per factor of 10 beyond, lgamma's rounding growing
 * with its argument. */
#define CV_COUNT_MAX 1000000000L

/* Power used for the "not enough data yet" estimate: the conventional 80%. */
#define CV_DEFAULT_POWER 0.8

/* Fisher's exact test is used for every table whose total is at most this,
 * and for any table with an expected cell below CV_FISHER_MIN_EXPECTED
 * (Cochran's rule); the z-test only for the rest. Fisher is exact and
 * cheap here - about 20 us at worst up to this total (measured, -O2) - and
 * with rare incidents the z-test's p-value can be 20-40% lower than
 * Fisher's even at a million instances (50 vs 75 incidents in 500000 each:
 * 0.025 against 0.031), so the bar is high. Above it the z-test is what the
 * sample-size formula assumes, and with that many instances the two agree
 * to within a few percent unless incidents are very rare. */
#define CV_FISHER_MAX_TOTAL 1000000L
#define CV_FISHER_MIN_EXPECTED 5.0

typedef enum cv_method {
  CV_METHOD_NONE = 0, /* no test was possible (a version has no instances) */
  CV_METHOD_FISHER,   /* Fisher's exact test, two-sided */
  CV_METHOD_Z         /* pooled two-proportion z-test, two-sided */
} cv_method;

typedef enum cv_verdict {
  CV_INVALID_INPUT = 0, /* counts or parameters out of range */
  CV_V2_WORSE,          /* significant, V2's incident rate is higher */
  CV_V2_BETTER,         /* significant, V2's incident rate is lower */
  CV_NO_SIGNIFICANT_DIFFERENCE,
  CV_NOT_ENOUGH_DATA
} cv_verdict;

typedef struct cv_comparison {
  double rate_v1;     /* x1 / n1, NaN when n1 = 0 */
  double rate_v2;     /* x2 / n2, NaN when n2 = 0 */
  double diff_points; /* (rate_v2 - rate_v1) * 100, NaN if either is NaN */
  /* rate_v2 / rate_v1. When rate_v1 is 0: INFINITY if rate_v2 > 0, NaN if
   * rate_v2 is 0 too (0/0: the ratio says nothing, so it is not invented).
   * NaN as well when either version has no instances. Test with isnan(). */
  double ratio;
  double p_value;   /* NaN when method is CV_METHOD_NONE */
  cv_method method; /* which test produced p_value */
  /* The difference, in points, the sample-size estimate is for: the
   * requested minimum, or the observed difference if that is larger.
   * 0 when the difference was significant (no estimate is needed). */
  double effect_points;
  /* Instances per version needed to detect effect_points (alpha as given,
   * power CV_DEFAULT_POWER, from the pooled rate); 0 when significant. */
  long required_per_version;
  /* How many more the smaller version needs to reach that: 0 unless the
   * verdict is CV_NOT_ENOUGH_DATA. */
  long needed_per_version;
  cv_verdict verdict;
} cv_comparison;

/* Wilson score interval for successes out of n at normal quantile z (1.96
 * for 95%). n = 0 gives [0, 1]. Returns 0, or -1 (nothing written) when
 * n < 0, successes is outside [0, n], or z is negative or not finite. */
int cv_wilson(long successes, long n, double z, double *lo, double *hi);

/* Two-sided p-value of Fisher's exact test on [[a, b], [c, d]] (rows are
 * versions, columns incident / no incident): the sum of the probabilities of
 * all tables with the same margins that are no more likely than the observed
 * one, with R's relative tolerance of 1e-7 so that ties are not lost to
 * rounding. Works in log space with lgamma and only visits the tails that
 * matter, so a million instances cost 5-25 us. A margin of 0 leaves a
 * single possible table: p = 1. NaN for a count outside [0, CV_COUNT_MAX].
 * Not for concurrent use from several threads: POSIX lets lgamma write the
 * global signgam (the engine runs reports on its one loop thread). */
double cv_fisher_exact_two_sided(long a, long b, long c, long d);

/* Pooled two-proportion z-test of x1/n1 against x2/n2, two-sided p-value
 * erfc(|z| / sqrt 2). *z (if z is not NULL) is (p2 - p1) / se, positive when
 * version 2's rate is higher. When a version has no instances, or the pooled
 * rate is 0 or 1 (both rates equal), there is no evidence of a difference:
 * p = 1, z = 0. NaN (z untouched) for invalid counts. */
double cv_two_proportion_z_p(long x1, long n1, long x2, long n2, double *z);

/* The p-value of the test this module prefers for these counts: Fisher's
 * exact test when any expected cell is below CV_FISHER_MIN_EXPECTED or the
 * total is at most CV_FISHER_MAX_TOTAL, the z-test otherwise. *method (if
 * not NULL) says which. NaN (method untouched) for invalid counts. */
double cv_p_value(long x1, long n1, long x2, long n2, cv_method *method);

/* Inverse of the standard normal CDF. 0 -> -INFINITY, 1 -> INFINITY, NaN
 * outside [0, 1]. About 16 significant digits down to the smallest double. */
double cv_norm_quantile(double p);

/* Instances per version for a two-sided two-proportion test at level alpha
 * to detect p1 against p2 with the given power (Fleiss, without continuity
 * correction; pooled variance under H0), rounded up. -1 when p1 or p2 is
 * outside [0, 1], p1 == p2, or alpha or power is outside (0, 1). LONG_MAX if
 * the answer does not fit. */
long cv_sample_size_per_group(double p1, double p2, double alpha, double power);

/* Compares V1 (x1 of n1 had an incident) with V2 (x2 of n2) and fills *out
 * (when the inputs are valid; *out is untouched otherwise):
 * - p < alpha: CV_V2_WORSE or CV_V2_BETTER by the sign of the difference.
 * - otherwise, with E = max(min_detectable_points, |observed difference|)
 *   and R the instances per version needed to detect E from the pooled rate
 *   (at alpha and CV_DEFAULT_POWER): CV_NOT_ENOUGH_DATA when either version
 *   has fewer than R instances (or none at all), with needed_per_version =
 *   R - min(n1, n2); CV_NO_SIGNIFICANT_DIFFERENCE when both have at least R.
 * R is computed for a rise from the pooled rate b to b + E (a fall, b - E,
 * if b + E > 1). With no instances at all b is taken as 50%, the worst
 * case. R is LONG_MAX when E is too small to tell from b in a double.
 * alpha must be in (0, 1) and min_detectable_points in (0, 100]; counts as
 * for the tests. Returns the verdict, CV_INVALID_INPUT for bad input. */
cv_verdict cv_compare(long x1, long n1, long x2, long n2, double alpha,
                      double min_detectable_points, cv_comparison *out);

/* The guard of a rollout plan: is V2's incident rate higher than V1's by
 * more than `margin` (a proportion: 0.01 is 1 point)? A plan looks every
 * few seconds, and a test read that often must not cry wolf: the
 * fixed-sample p-value dips under alpha at some look far more often than
 * alpha (301 rollouts in 1,000 with 200 looks, where alpha allows 50;
 * scripts/bench guard).
 * This is a mixture sequential probability ratio test (mSPRT; Johari,
 * Pekelis and Walsh, "Always valid inference", 2017) on the difference
 * d = p2 - p1 under the normal approximation: d's estimate D has variance
 * V = p1(1 - p1)/n1 + p2(1 - p2)/n2 (rates as observed), and against the
 * boundary d = margin, with a normal mixture N(margin, tau^2) over d, the
 * likelihood ratio is
 *     L = sqrt(V / (V + tau^2)) * exp(tau^2 (D - margin)^2 / (2V(V + tau^2)))
 * Only a D above margin counts (the test is one-sided: H0 is d <= margin).
 * The look's p-value is min(1, 1/L); the always-valid p-value is the
 * smallest over every look so far, and rejecting when it is at most alpha
 * keeps the chance of ever rejecting a true H0 at most alpha however often
 * one looks (asymptotically: use it with a minimum of instances per
 * version). tau is the size of difference the test is quickest to find.
 * Returns the look's p-value: 1 when D <= margin, V = 0 or a version has
 * no instances; NaN for invalid counts, a margin outside [0, 1) or a tau
 * that is not positive and finite. */
double cv_msprt_p(long x1, long n1, long x2, long n2, double margin,
                  double tau);

/* The mixture's spread plans use: differences of about 2 points are what
 * a migration's guard must catch soonest. */
#define CV_MSPRT_TAU 0.02

/* A short fixed name: "V2 worse", "V2 better", "no significant difference",
 * "not enough data yet", "invalid input". */
const char *cv_verdict_name(cv_verdict v);

/* "fisher", "z" or "none": the report's JSON names the test so. */
const char *cv_method_name(cv_method m);

/* The plain sentence for a comparison, e.g. "not enough data yet: about 640
 * more instances per version are needed to detect a difference of 1 point".
 * Writes at most size bytes including the NUL, like snprintf, and returns
 * the length the full sentence has (so >= size means it was cut). */
int cv_verdict_text(const cv_comparison *c, char *buf, size_t size);

#endif
