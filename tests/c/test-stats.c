/* test-stats.c: checks the report's statistics (plugins/choose_version/
 * stats.c) against values computed independently of it, so a wrong formula
 * cannot agree with itself. Every expected value says where it came from:
 *
 * - "exact": Python 3.11, integers only. Fisher's p is the sum of the exact
 *   hypergeometric weights comb(r1, x) * comb(r2, c1 - x) of the tables with
 *   w(x) * 10^7 <= w(obs) * (10^7 + 1) (R's 1e-7 tolerance, in integers)
 *   over comb(n, c1), as a fractions.Fraction rounded once to a double.
 * - "mpmath": mpmath 1.3 at 50 digits. Normal quantiles as sqrt(2) *
 *   erfinv(2p - 1), or findroot(log ncdf(x) = log p) below 1e-12;
 *   z-tests from the pooled formula with erfc; Wilson bounds from the score
 *   formula; sample sizes from Fleiss' formula (no continuity correction)
 *   with those quantiles, then ceil.
 * - "mpmath walk": for supports too wide for exact integers, the whole
 *   support walked at 40 digits from an mpmath loggamma start with exact
 *   neighbour ratios (the probabilities were checked to sum to 1).
 * - Published values where they exist, named where they are used.
 *
 * The scripts were scratch files, not kept; the recipes above rebuild them.
 * The first failed check (check.h) prints file:line and both sides. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "check.h"
#include "guard-sim.h"
#include "stats.h"

/* 1.959963984540054 rounded as in the brief; the z of a 95% interval. */
#define Z95 1.959963984540054

static void test_fisher_small(void) {
  /* R's fisher.test documentation, tea-tasting table: p-value = 0.4857;
   * exact: 0.4857142857142857 (= 17/35). */
  CHECK_REL(cv_fisher_exact_two_sided(3, 1, 1, 3), 0.4857142857142857, 1e-12);
  /* Men vs women dieting [[1, 9], [11, 3]], QI Macros' worked example:
   * p = 0.00276; exact: 0.0027594561852200836. */
  CHECK_REL(cv_fisher_exact_two_sided(1, 9, 11, 3), 0.0027594561852200836,
            1e-12);
  /* Calcugator's chi2_fisherexact example [[4, 0], [2, 5]]: two tails
   * 0.0606060606; exact: 0.06060606060606061 (= 2/33). */
  CHECK_REL(cv_fisher_exact_two_sided(4, 0, 2, 5), 0.06060606060606061, 1e-12);
  /* exact: 0.06977851869492736. */
  CHECK_REL(cv_fisher_exact_two_sided(7, 3, 2, 8), 0.06977851869492736, 1e-12);
  /* Equal rates, 1% each of 1000: exact 1. The margins' lgamma constant
   * costs about 12 digits here, hence 1e-10. */
  CHECK_REL(cv_fisher_exact_two_sided(10, 990, 10, 990), 1.0, 1e-10);
  /* Symmetric table, exact 1: every table is as likely or less. */
  CHECK_REL(cv_fisher_exact_two_sided(5, 5, 5, 5), 1.0, 1e-12);
  /* V2 clearly worse (2% -> 12% of 100) and clearly better (mirror): exact
   * 0.010094706872787147 both ways. */
  CHECK_REL(cv_fisher_exact_two_sided(2, 98, 12, 88), 0.010094706872787147,
            1e-12);
  CHECK_REL(cv_fisher_exact_two_sided(12, 88, 2, 98), 0.010094706872787147,
            1e-12);
  /* 1% -> 4% of 1000: exact 1.9009474943299076e-05, either direction. */
  CHECK_REL(cv_fisher_exact_two_sided(10, 990, 40, 960), 1.9009474943299076e-05,
            1e-10);
  CHECK_REL(cv_fisher_exact_two_sided(40, 960, 10, 990), 1.9009474943299076e-05,
            1e-10);
  /* 1% vs 1.2% of 1000: exact 0.8308794033409614. */
  CHECK_REL(cv_fisher_exact_two_sided(10, 990, 12, 988), 0.8308794033409614,
            1e-10);
  /* 0.5% vs 0.525% of 20000: exact 0.779488151040736. */
  CHECK_REL(cv_fisher_exact_two_sided(100, 19900, 105, 19895),
            0.779488151040736, 1e-9);
  /* Tiny samples: 0/3 vs 2/3, exact 0.4 (= 2/5); 1/1 vs 0/1, exact 1. */
  CHECK_REL(cv_fisher_exact_two_sided(0, 3, 2, 1), 0.4, 1e-12);
  CHECK_REL(cv_fisher_exact_two_sided(1, 0, 0, 1), 1.0, 1e-12);
  /* An empty row or column leaves one possible table: exact 1. */
  CHECK_REL(cv_fisher_exact_two_sided(0, 0, 3, 5), 1.0, 0.0);
  CHECK_REL(cv_fisher_exact_two_sided(0, 10, 0, 0), 1.0, 0.0);
  CHECK_REL(cv_fisher_exact_two_sided(0, 0, 0, 0), 1.0, 0.0);
  /* Zero incidents everywhere, all incidents everywhere: exact 1. */
  CHECK_REL(cv_fisher_exact_two_sided(0, 500, 0, 500), 1.0, 0.0);
  CHECK_REL(cv_fisher_exact_two_sided(40, 0, 40, 0), 1.0, 0.0);
  /* All incidents vs 35 of 40: exact 0.05474272562880158. */
  CHECK_REL(cv_fisher_exact_two_sided(40, 0, 35, 5), 0.05474272562880158,
            1e-10);
  /* No incident in V1, 10 in V2 (of 1000): exact 0.001909465165341615. */
  CHECK_REL(cv_fisher_exact_two_sided(0, 1000, 10, 990), 0.001909465165341615,
            1e-10);
  /* Negative counts are misuse: NaN. */
  CHECK(isnan(cv_fisher_exact_two_sided(-1, 3, 1, 3)));
  CHECK(isnan(cv_fisher_exact_two_sided(1, 3, 1, CV_COUNT_MAX + 1)));
}

static void test_fisher_large(void) {
  /* lgamma-based: about 8 significant digits here, so 1e-6 relative. */
  /* 0.5% vs 0.53% of 1,000,000 each: exact 0.003137520891709339. Equal
   * rows, so the mirror of the observed table is exactly as likely: this
   * is also the check that the 1e-7 tolerance keeps it. */
  CHECK_REL(cv_fisher_exact_two_sided(5000, 995000, 5300, 994700),
            0.003137520891709339, 1e-6);
  /* 0.1% of 3,000,000 vs 0.122% of 900,000: exact 2.087637687095399e-08. */
  CHECK_REL(cv_fisher_exact_two_sided(3000, 2997000, 1100, 898900),
            2.087637687095399e-08, 1e-6);
  /* Equal rates of 5,000,000 each: exact 1. */
  CHECK_REL(cv_fisher_exact_two_sided(1000, 4999000, 1000, 4999000), 1.0, 1e-6);
  /* 2% vs 2.06% of 1,000,000: exact 0.0026691491299765465. */
  CHECK_REL(cv_fisher_exact_two_sided(20000, 980000, 20600, 979400),
            0.0026691491299765465, 1e-6);
  /* Wide supports (half the instances have incidents), mpmath walk:
   * 0.04571617288880104, 5.220460521793757e-89, 0.15771450478811259. */
  CHECK_REL(cv_fisher_exact_two_sided(250000, 250000, 251000, 249000),
            0.04571617288880104, 1e-6);
  CHECK_REL(cv_fisher_exact_two_sided(250000, 250000, 260000, 240000),
            5.220460521793757e-89, 1e-6);
  CHECK_REL(cv_fisher_exact_two_sided(500000, 500000, 501000, 499000),
            0.15771450478811259, 1e-6);
  /* 50% vs 52% of 5000, mpmath walk: 0.047653613555240622. */
  CHECK_REL(cv_fisher_exact_two_sided(2500, 2500, 2600, 2400),
            0.047653613555240622, 1e-8);
}

static void test_z(void) {
  double z = 0.0;
  /* 2% vs 2.1% of 1,000,000, mpmath: z = 4.9900609640719517,
   * p = 6.0360239653792975e-7. */
  CHECK_REL(cv_two_proportion_z_p(20000, 1000000, 21000, 1000000, &z),
            6.0360239653792975e-7, 1e-9);
  CHECK_REL(z, 4.9900609640719517, 1e-12);
  /* Reversed: same p, z negated (mpmath). */
  CHECK_REL(cv_two_proportion_z_p(21000, 1000000, 20000, 1000000, &z),
            6.0360239653792975e-7, 1e-9);
  CHECK_REL(z, -4.9900609640719517, 1e-12);
  /* 0.5% vs 0.53% of 1,000,000, mpmath: z = 2.9636290299834781,
   * p = 0.0030403456825205371 (Fisher, exact: 0.0031375...). */
  CHECK_REL(cv_two_proportion_z_p(5000, 1000000, 5300, 1000000, &z),
            0.0030403456825205371, 1e-9);
  CHECK_REL(z, 2.9636290299834781, 1e-12);
  /* Unequal sizes, mpmath: z = 5.705659402429394,
   * p = 1.1589353955010001e-8. */
  CHECK_REL(cv_two_proportion_z_p(3000, 3000000, 1100, 900000, &z),
            1.1589353955010001e-8, 1e-9);
  CHECK_REL(z, 5.705659402429394, 1e-12);
  /* 1% vs 4% of 1000, mpmath: z = 4.2966892442365973,
   * p = 1.7336796639612615e-5. */
  CHECK_REL(cv_two_proportion_z_p(10, 1000, 40, 1000, &z),
            1.7336796639612615e-5, 1e-9);
  CHECK_REL(z, 4.2966892442365973, 1e-12);
  /* Equal rates: z = 0, p = 1 (mpmath: z = 0.0, p = 1.0). */
  CHECK_REL(cv_two_proportion_z_p(1000, 5000000, 1000, 5000000, &z), 1.0,
            1e-15);
  CHECK_EQ(z, 0.0);
  /* Degenerate by the documented convention: pooled rate 0 or 1, or an
   * empty version, is no evidence: p = 1, z = 0. */
  z = 7.0;
  CHECK_EQ(cv_two_proportion_z_p(0, 100, 0, 300, &z), 1.0);
  CHECK_EQ(z, 0.0);
  z = 7.0;
  CHECK_EQ(cv_two_proportion_z_p(100, 100, 300, 300, &z), 1.0);
  CHECK_EQ(z, 0.0);
  CHECK(cv_two_proportion_z_p(0, 0, 3, 300, NULL) == 1.0);
  /* Invalid: NaN, z untouched. */
  z = 7.0;
  CHECK(isnan(cv_two_proportion_z_p(5, 4, 1, 10, &z)));
  CHECK_EQ(z, 7.0);
}

static void test_p_value_method(void) {
  cv_method m = CV_METHOD_NONE;
  /* Small total: Fisher (exact value as in test_fisher_small). */
  CHECK_REL(cv_p_value(10, 1000, 40, 1000, &m), 1.9009474943299076e-05, 1e-10);
  CHECK_EQ(m, CV_METHOD_FISHER);
  /* A total of 1000000 is still "small" (<= CV_FISHER_MAX_TOTAL): Fisher,
   * exact 0.16457540074566976 (lgamma: 1e-6). One more instance on each
   * side and it is the z-test, mpmath p = 0.1603592004493904. */
  CHECK_EQ(CV_FISHER_MAX_TOTAL, 1000000L);
  CHECK_REL(cv_p_value(2500, 500000, 2600, 500000, &m), 0.16457540074566976,
            1e-6);
  CHECK_EQ(m, CV_METHOD_FISHER);
  CHECK_REL(cv_p_value(2500, 500001, 2600, 500001, &m), 0.1603592004493904,
            1e-9);
  CHECK_EQ(m, CV_METHOD_Z);
  /* Millions but an expected incident count below 5 (1 and 8 in 1e6 each:
   * expected 4.5): Fisher, exact as a Python Fraction would give; here only
   * the choice is checked. */
  cv_p_value(1, 1000000, 8, 1000000, &m);
  CHECK_EQ(m, CV_METHOD_FISHER);
  /* Millions, zero incidents: expected 0 < 5, Fisher, exact 1. */
  CHECK_REL(cv_p_value(0, 2000000, 0, 2000000, &m), 1.0, 0.0);
  CHECK_EQ(m, CV_METHOD_FISHER);
  /* Large counts go to the z-test: 2% vs 2.06% of 1e6, mpmath p =
   * 0.0026259070138061472 (Fisher's exact would be 0.0026691...). */
  CHECK_REL(cv_p_value(20000, 1000000, 20600, 1000000, &m),
            0.0026259070138061472, 1e-9);
  CHECK_EQ(m, CV_METHOD_Z);
  /* Invalid: NaN, method untouched. */
  m = CV_METHOD_Z;
  CHECK(isnan(cv_p_value(-1, 10, 1, 10, &m)));
  CHECK_EQ(m, CV_METHOD_Z);
  CHECK(isnan(cv_p_value(1, 10, 11, 10, NULL)));
}

static void test_quantile(void) {
  /* Values from the brief (R's qnorm): qnorm(0.975) = 1.959963984540054,
   * qnorm(0.8) = 0.8416212335729143. mpmath for the double nearest 0.975:
   * 1.9599639845400539. */
  CHECK_NEAR(cv_norm_quantile(0.975), 1.959963984540054, 1e-15);
  CHECK_NEAR(cv_norm_quantile(0.8), 0.8416212335729143, 1e-15);
  /* mpmath: 0, -0.52440051270804082, -1.9599639845400542,
   * -2.3263478740408411, 2.3263478740408408, 2.5758293035489005. */
  CHECK_EQ(cv_norm_quantile(0.5), 0.0);
  CHECK_REL(cv_norm_quantile(0.3), -0.52440051270804082, 1e-15);
  CHECK_REL(cv_norm_quantile(0.025), -1.9599639845400542, 1e-15);
  CHECK_REL(cv_norm_quantile(0.01), -2.3263478740408411, 1e-15);
  CHECK_REL(cv_norm_quantile(0.99), 2.3263478740408408, 1e-15);
  CHECK_REL(cv_norm_quantile(0.995), 2.5758293035489005, 1e-15);
  /* Extreme tails, mpmath: 1e-10 -> -6.3613409024040562; the double
   * nearest 1 - 1e-10 -> 6.3613408896974219 (not the negation: 1 - 1e-10
   * is not exact in binary); 1e-15 -> -7.9413453261709968; 1e-100 ->
   * -21.273453560965324; 1e-300 -> -37.047096299361199 (findroot on
   * log ncdf, checked: ncdf(x) / p - 1 < 1e-30). */
  CHECK_REL(cv_norm_quantile(1e-10), -6.3613409024040562, 1e-15);
  CHECK_REL(cv_norm_quantile(1.0 - 1e-10), 6.3613408896974219, 1e-15);
  CHECK_REL(cv_norm_quantile(1e-15), -7.9413453261709968, 1e-15);
  CHECK_REL(cv_norm_quantile(1e-100), -21.273453560965324, 1e-15);
  CHECK_REL(cv_norm_quantile(1e-300), -37.047096299361199, 1e-15);
  /* Ends and outside: by definition. */
  CHECK(isinf(cv_norm_quantile(0.0)) && cv_norm_quantile(0.0) < 0);
  CHECK(isinf(cv_norm_quantile(1.0)) && cv_norm_quantile(1.0) > 0);
  CHECK(isnan(cv_norm_quantile(-0.1)));
  CHECK(isnan(cv_norm_quantile(1.5)));
  CHECK(isnan(cv_norm_quantile(NAN)));
}

static void test_sample_size(void) {
  /* 5% vs 10%, mpmath Fleiss: 434.432022439469 -> 435. */
  CHECK_EQ(cv_sample_size_per_group(0.05, 0.10, 0.05, 0.8), 435);
  /* Symmetric in p1, p2. */
  CHECK_EQ(cv_sample_size_per_group(0.10, 0.05, 0.05, 0.8), 435);
  /* The case of R's power.prop.test(p1 = .50, p2 = .75, power = .90)
   * example (with strict = FALSE it solves this same equation); mpmath
   * Fleiss: 76.7069284517775 -> 77. */
  CHECK_EQ(cv_sample_size_per_group(0.5, 0.75, 0.05, 0.9), 77);
  /* mpmath: 2318.16467551204 -> 2319; 296.370222807438 -> 297. */
  CHECK_EQ(cv_sample_size_per_group(0.01, 0.02, 0.05, 0.8), 2319);
  CHECK_EQ(cv_sample_size_per_group(0.2, 0.1, 0.01, 0.8), 297);
  /* From a zero or a full baseline, mpmath: 779.783558004723 -> 780 both. */
  CHECK_EQ(cv_sample_size_per_group(0.0, 0.01, 0.05, 0.8), 780);
  CHECK_EQ(cv_sample_size_per_group(1.0, 0.99, 0.05, 0.8), 780);
  /* The largest difference, mpmath: 1.92072941034706 -> 2. */
  CHECK_EQ(cv_sample_size_per_group(0.0, 1.0, 0.05, 0.8), 2);
  /* mpmath: 55088.1083501892 -> 55089; 1646532.88729459 -> 1646533. */
  CHECK_EQ(cv_sample_size_per_group(0.3, 0.31, 0.05, 0.95), 55089);
  CHECK_EQ(cv_sample_size_per_group(0.001, 0.0011, 0.05, 0.8), 1646533);
  /* Invalid: -1. */
  CHECK_EQ(cv_sample_size_per_group(0.1, 0.1, 0.05, 0.8), -1);
  CHECK_EQ(cv_sample_size_per_group(-0.1, 0.1, 0.05, 0.8), -1);
  CHECK_EQ(cv_sample_size_per_group(0.1, 1.1, 0.05, 0.8), -1);
  CHECK_EQ(cv_sample_size_per_group(0.1, 0.2, 0.0, 0.8), -1);
  CHECK_EQ(cv_sample_size_per_group(0.1, 0.2, 0.05, 1.0), -1);
  CHECK_EQ(cv_sample_size_per_group(NAN, 0.2, 0.05, 0.8), -1);
}

static void test_wilson(void) {
  double lo = -1.0;
  double hi = -1.0;
  /* mpmath score formula at z = 1.959963984540054. */
  CHECK_EQ(cv_wilson(0, 10, Z95, &lo, &hi), 0);
  CHECK_EQ(lo, 0.0);
  CHECK_NEAR(hi, 0.27753279986288921, 1e-14);
  CHECK_EQ(cv_wilson(10, 10, Z95, &lo, &hi), 0);
  CHECK_NEAR(lo, 0.72246720013711079, 1e-14);
  CHECK_EQ(hi, 1.0);
  CHECK_EQ(cv_wilson(3, 10, Z95, &lo, &hi), 0);
  CHECK_NEAR(lo, 0.10779126740630103, 1e-14);
  CHECK_NEAR(hi, 0.60322185253885465, 1e-14);
  CHECK_EQ(cv_wilson(81, 263, Z95, &lo, &hi), 0);
  CHECK_NEAR(lo, 0.25528851987827423, 1e-14);
  CHECK_NEAR(hi, 0.36620957698280006, 1e-14);
  CHECK_EQ(cv_wilson(50, 100, Z95, &lo, &hi), 0);
  CHECK_NEAR(lo, 0.40383153036599564, 1e-14);
  CHECK_NEAR(hi, 0.59616846963400436, 1e-14);
  CHECK_EQ(cv_wilson(15, 148, Z95, &lo, &hi), 0);
  CHECK_NEAR(lo, 0.062386399530736283, 1e-14);
  CHECK_NEAR(hi, 0.16048724172330803, 1e-14);
  CHECK_EQ(cv_wilson(0, 1, Z95, &lo, &hi), 0);
  CHECK_EQ(lo, 0.0);
  CHECK_NEAR(hi, 0.79345068562276258, 1e-14);
  /* One in a million, mpmath: 1.7652457674537149e-7, 5.6649118043114422e-6
   * (relative: the interval itself is tiny). */
  CHECK_EQ(cv_wilson(1, 1000000, Z95, &lo, &hi), 0);
  CHECK_REL(lo, 1.7652457674537149e-7, 1e-9);
  CHECK_REL(hi, 5.6649118043114422e-6, 1e-9);
  /* n = 0: [0, 1] by definition. */
  CHECK_EQ(cv_wilson(0, 0, Z95, &lo, &hi), 0);
  CHECK(lo == 0.0 && hi == 1.0);
  /* Invalid: -1, outputs untouched. */
  lo = hi = 42.0;
  CHECK_EQ(cv_wilson(11, 10, Z95, &lo, &hi), -1);
  CHECK_EQ(cv_wilson(-1, 10, Z95, &lo, &hi), -1);
  CHECK_EQ(cv_wilson(1, 10, -1.0, &lo, &hi), -1);
  CHECK_EQ(cv_wilson(1, 10, INFINITY, &lo, &hi), -1);
  CHECK(lo == 42.0 && hi == 42.0);
}

/* Runs cv_compare and checks what every case shares: the return value is
 * the verdict stored. */
static cv_comparison compare(long x1, long n1, long x2, long n2, double alpha,
                             double min_points, cv_verdict expected) {
  cv_comparison c;
  memset(&c, 0xAB, sizeof c);
  cv_verdict v = cv_compare(x1, n1, x2, n2, alpha, min_points, &c);
  if (v != expected || c.verdict != expected) {
    sy_check_fail(__FILE__, __LINE__,
                  "cv_compare(%ld, %ld, %ld, %ld) = %s, "
                  "expected %s",
                  x1, n1, x2, n2, cv_verdict_name(v),
                  cv_verdict_name(expected));
  }
  return c;
}

static void test_compare(void) {
  char buf[256];
  cv_comparison c;

  /* V2 clearly worse: 1% -> 4% of 1000, Fisher exact
   * 1.9009474943299076e-05 < 0.05. */
  c = compare(10, 1000, 40, 1000, 0.05, 1.0, CV_V2_WORSE);
  CHECK_REL(c.rate_v1, 0.01, 1e-15);
  CHECK_REL(c.rate_v2, 0.04, 1e-15);
  CHECK_REL(c.diff_points, 3.0, 1e-12);
  CHECK_REL(c.ratio, 4.0, 1e-12);
  CHECK_REL(c.p_value, 1.9009474943299076e-05, 1e-10);
  CHECK_EQ(c.method, CV_METHOD_FISHER);
  CHECK(c.needed_per_version == 0 && c.required_per_version == 0);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf, "V2 worse");

  /* V2 clearly better: the mirror. */
  c = compare(40, 1000, 10, 1000, 0.05, 1.0, CV_V2_BETTER);
  CHECK_REL(c.diff_points, -3.0, 1e-12);
  CHECK_REL(c.ratio, 0.25, 1e-12);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf, "V2 better");

  /* Large counts through the z-test: 2% vs 2.1% of 1e6, mpmath p =
   * 6.0360239653792975e-7; and the mirror. */
  c = compare(20000, 1000000, 21000, 1000000, 0.05, 1.0, CV_V2_WORSE);
  CHECK_EQ(c.method, CV_METHOD_Z);
  CHECK_REL(c.p_value, 6.0360239653792975e-7, 1e-9);
  CHECK_REL(c.ratio, 1.05, 1e-12);
  CHECK_REL(c.diff_points, 0.1, 1e-9);
  c = compare(21000, 1000000, 20000, 1000000, 0.05, 1.0, CV_V2_BETTER);
  CHECK_EQ(c.method, CV_METHOD_Z);

  /* An early rollout, V2 on 200 instances: 0.5% of 10000 vs 2% of 200,
   * Fisher exact 0.021155677619131764: worse. */
  c = compare(50, 10000, 4, 200, 0.05, 1.0, CV_V2_WORSE);
  CHECK_REL(c.p_value, 0.021155677619131764, 1e-10);

  /* V1 has no incident, V2 has: ratio INFINITY. Fisher exact
   * 0.001909465165341615. */
  c = compare(0, 1000, 10, 1000, 0.05, 1.0, CV_V2_WORSE);
  CHECK(isinf(c.ratio) && c.ratio > 0);
  CHECK_REL(c.p_value, 0.001909465165341615, 1e-10);

  /* alpha matters: 1% vs 2.5% of 1000, Fisher exact 0.015749705522146423:
   * worse at 0.05; at 0.01 not significant, and the observed 1.5 points
   * (> 1) is the effect: mpmath Fleiss(0.0175, 0.0325, alpha 0.01, power
   * 0.8) = 2529.00437876 -> 2530, so 1530 more. */
  c = compare(10, 1000, 25, 1000, 0.05, 1.0, CV_V2_WORSE);
  CHECK_REL(c.p_value, 0.015749705522146423, 1e-10);
  c = compare(10, 1000, 25, 1000, 0.01, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_REL(c.effect_points, 1.5, 1e-9);
  CHECK_EQ(c.required_per_version, 2530);
  CHECK_EQ(c.needed_per_version, 1530);

  /* Not enough data: 1% vs 1.2% of 1000, Fisher exact 0.8308794033409614;
   * pooled 1.1%, mpmath Fleiss(0.011, 0.021) = 2470.27598627 -> 2471. */
  c = compare(10, 1000, 12, 1000, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_REL(c.p_value, 0.8308794033409614, 1e-10);
  CHECK_REL(c.effect_points, 1.0, 1e-12);
  CHECK_EQ(c.required_per_version, 2471);
  CHECK_EQ(c.needed_per_version, 1471);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 1471 more instances per version are "
           "needed to detect a difference of 1 point");

  /* The same counts at 20x: 0.5% vs 0.525% of 20000, Fisher exact
   * 0.779488151040736; mpmath Fleiss(0.005125, 0.015125) = 1572.1260382
   * -> 1573 <= 20000: no significant difference. */
  c = compare(100, 20000, 105, 20000, 0.05, 1.0, CV_NO_SIGNIFICANT_DIFFERENCE);
  CHECK_REL(c.p_value, 0.779488151040736, 1e-9);
  CHECK_EQ(c.required_per_version, 1573);
  CHECK_EQ(c.needed_per_version, 0);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf, "no significant difference");
  /* ... but not enough to detect 0.1 points: mpmath Fleiss(0.005125,
   * 0.005225) = 87802.0311447 -> 87803, 67803 more. */
  c = compare(100, 20000, 105, 20000, 0.05, 0.1, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.required_per_version, 87803);
  CHECK_EQ(c.needed_per_version, 67803);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 67803 more instances per version are "
           "needed to detect a difference of 0.1 points");

  /* 0.5% vs 0.56% of 100000, Fisher exact 0.06916850850969929;
   * Fleiss(0.0053, 0.0153) = 1599.03602915 -> 1600. */
  c = compare(500, 100000, 560, 100000, 0.05, 1.0,
              CV_NO_SIGNIFICANT_DIFFERENCE);
  CHECK_EQ(c.method, CV_METHOD_FISHER);
  CHECK_REL(c.p_value, 0.06916850850969929, 1e-8);
  CHECK_EQ(c.required_per_version, 1600);
  /* No significant difference through the z-test: 0.2% vs 0.205% of 1e6,
   * mpmath p = 0.43159165694753826; Fleiss(0.002025, 0.012025) =
   * 1093.84098316 -> 1094. */
  c = compare(2000, 1000000, 2050, 1000000, 0.05, 1.0,
              CV_NO_SIGNIFICANT_DIFFERENCE);
  CHECK_EQ(c.method, CV_METHOD_Z);
  CHECK_REL(c.p_value, 0.43159165694753826, 1e-9);
  CHECK_EQ(c.required_per_version, 1094);

  /* Observed difference larger than the minimum: 10% vs 15% of 100,
   * Fisher exact 0.39282961576017184; the effect is the observed 5 points,
   * Fleiss(0.125, 0.175) = 799.405782863 -> 800, 700 more. */
  c = compare(10, 100, 15, 100, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_REL(c.p_value, 0.39282961576017184, 1e-10);
  CHECK_REL(c.effect_points, 5.0, 1e-9);
  CHECK_EQ(c.needed_per_version, 700);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 700 more instances per version are "
           "needed to detect a difference of 5 points");

  /* Tiny samples: 3 of 10 vs 7 of 10, Fisher exact 0.17889540799757517;
   * effect 40 points, Fleiss(0.5, 0.9) = 19.3808424416 -> 20, 10 more. */
  c = compare(3, 10, 7, 10, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_REL(c.p_value, 0.17889540799757517, 1e-10);
  CHECK_EQ(c.needed_per_version, 10);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 10 more instances per version are "
           "needed to detect a difference of 40 points");

  /* Unequal sizes count by the smaller version: 0.5% of 10000 vs 1% of
   * 200, Fisher exact 0.2715131945620212; Fleiss(52/10200, 52/10200 +
   * 0.01) = 1567.9793865 -> 1568, so 1368 more. */
  c = compare(50, 10000, 2, 200, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_REL(c.p_value, 0.2715131945620212, 1e-10);
  CHECK_EQ(c.required_per_version, 1568);
  CHECK_EQ(c.needed_per_version, 1368);

  /* Zero incidents everywhere: rates 0, ratio undefined (NaN), Fisher 1;
   * Fleiss(0, 0.01) = 779.783558005 -> 780: enough at 1000, 680 short at
   * 100. */
  c = compare(0, 1000, 0, 1000, 0.05, 1.0, CV_NO_SIGNIFICANT_DIFFERENCE);
  CHECK(c.rate_v1 == 0.0 && c.rate_v2 == 0.0 && c.diff_points == 0.0);
  CHECK(isnan(c.ratio));
  CHECK(c.p_value == 1.0 && c.method == CV_METHOD_FISHER);
  CHECK_EQ(c.required_per_version, 780);
  c = compare(0, 100, 0, 100, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.needed_per_version, 680);

  /* All incidents everywhere: ratio 1, Fisher 1; Fleiss(1, 0.99) = 780. */
  c = compare(1000, 1000, 1000, 1000, 0.05, 1.0, CV_NO_SIGNIFICANT_DIFFERENCE);
  CHECK(c.ratio == 1.0 && c.p_value == 1.0);
  CHECK_EQ(c.required_per_version, 780);
  c = compare(100, 100, 100, 100, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.needed_per_version, 680);

  /* V1 has no instances: no test, rates and ratio NaN where undefined;
   * baseline from V2 alone (5%): Fleiss(0.05, 0.06) = 8157.73144785 ->
   * 8158, all of them still needed. */
  c = compare(0, 0, 5, 100, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK(isnan(c.rate_v1) && c.rate_v2 == 0.05);
  CHECK(isnan(c.diff_points) && isnan(c.ratio) && isnan(c.p_value));
  CHECK_EQ(c.method, CV_METHOD_NONE);
  CHECK_EQ(c.needed_per_version, 8158);
  /* No instances at all: baseline 50% (the worst case), Fleiss(0.5, 0.51)
   * = 39239.2952745 -> 39240. */
  c = compare(0, 0, 0, 0, 0.05, 1.0, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.needed_per_version, 39240);
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 39240 more instances per version are "
           "needed to detect a difference of 1 point");
}

static void test_compare_limits(void) {
  /* A minimum too small to tell from the baseline in a double (1e-20
   * points): no sample would do, by the documented convention LONG_MAX. */
  cv_comparison c =
      compare(10, 1000, 10, 1000, 0.05, 1e-20, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.required_per_version, LONG_MAX);
  CHECK_EQ(c.needed_per_version, LONG_MAX - 1000);
  /* Above 50 points from a 50% baseline both b + E and b - E leave [0, 1];
   * the target is then the far end, 0. mpmath Fleiss(0.5, 0) =
   * 10.5110637391707 -> 11, one more than the 10 there are. Fisher on 5 of
   * 10 each is 1. */
  c = compare(5, 10, 5, 10, 0.05, 60.0, CV_NOT_ENOUGH_DATA);
  CHECK_EQ(c.required_per_version, 11);
  CHECK_EQ(c.needed_per_version, 1);
  char buf[160];
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 1 more instance per version is needed "
           "to detect a difference of 60 points");
}

static void test_invalid_and_text(void) {
  cv_comparison c;
  memset(&c, 0, sizeof c);
  c.verdict = CV_V2_WORSE;
  /* Invalid input returns CV_INVALID_INPUT and leaves *out alone. */
  CHECK_EQ(cv_compare(11, 10, 1, 10, 0.05, 1.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(-1, 10, 1, 10, 0.05, 1.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, -10, 0.05, 1.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, 10, 0.0, 1.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, 10, 1.0, 1.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, 10, 0.05, 0.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, 10, 0.05, 101.0, &c), CV_INVALID_INPUT);
  CHECK_EQ(cv_compare(1, 10, 1, 10, 0.05, NAN, &c), CV_INVALID_INPUT);
  CHECK(cv_compare(1, 10, 1, 10, 0.05, 1.0, NULL) == CV_INVALID_INPUT);
  CHECK_EQ(c.verdict, CV_V2_WORSE);

  char buf[128];
  CHECK(cv_verdict_text(NULL, buf, sizeof buf) == 13);
  CHECK_EQ(buf, "invalid input");
  CHECK_EQ(cv_verdict_name(CV_NO_SIGNIFICANT_DIFFERENCE),
           "no significant difference");
  CHECK_EQ(cv_verdict_name(CV_NOT_ENOUGH_DATA), "not enough data yet");
  CHECK_EQ(cv_method_name(CV_METHOD_FISHER), "fisher");
  CHECK_EQ(cv_method_name(CV_METHOD_Z), "z");
  CHECK_EQ(cv_method_name(CV_METHOD_NONE), "none");

  /* Singulars and decimals in the sentence. */
  memset(&c, 0, sizeof c);
  c.verdict = CV_NOT_ENOUGH_DATA;
  c.needed_per_version = 1;
  c.effect_points = 2.5;
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 1 more instance per version is needed "
           "to detect a difference of 2.5 points");
  c.effect_points = 10.0 / 3.0;
  cv_verdict_text(&c, buf, sizeof buf);
  CHECK_EQ(buf,
           "not enough data yet: about 1 more instance per version is needed "
           "to detect a difference of 3.33 points");
  /* Truncation is snprintf's: the full length comes back. */
  char small[8];
  int len = cv_verdict_text(&c, small, sizeof small);
  CHECK(len > (int)sizeof small);
  CHECK_EQ(small, "not eno");
}

/* The guard's mSPRT. Expected values: Python 3.11 floats, the formula of
 * stats.h written out again (math.sqrt, math.exp). */
static void test_msprt_values(void) {
  /* 5% of 1000 against 9% of 1000, margin 1 point, tau 2 points:
   * L = 6.842492244791263. */
  CHECK_REL(cv_msprt_p(50, 1000, 90, 1000, 0.01, 0.02), 0.14614558032728994,
            1e-12);
  /* The same with no margin: L = 52.81617932673859. */
  CHECK_REL(cv_msprt_p(50, 1000, 90, 1000, 0.0, 0.02), 0.01893359218230582,
            1e-12);
  /* Unequal sizes, tau 1 point: 2.5% of 400 against 6% of 500. */
  CHECK_REL(cv_msprt_p(10, 400, 30, 500, 0.0, 0.01), 0.34625618744892395,
            1e-12);
  /* V2 higher (6.7% against 6%) but L < 1: no evidence, p = 1. */
  CHECK_EQ(cv_msprt_p(120, 2000, 100, 1500, 0.0, 0.02), 1.0);
  /* One-sided: V2 better, or worse by no more than the margin, is never
   * evidence that it is worse. */
  CHECK_EQ(cv_msprt_p(90, 1000, 50, 1000, 0.0, 0.02), 1.0);
  CHECK_EQ(cv_msprt_p(50, 1000, 60, 1000, 0.01, 0.02), 1.0);
  /* No instances on a side, no variance: nothing to go on. */
  CHECK_EQ(cv_msprt_p(0, 0, 5, 100, 0.0, 0.02), 1.0);
  CHECK_EQ(cv_msprt_p(0, 100, 0, 100, 0.0, 0.02), 1.0);
  /* Overwhelming evidence underflows to 0, not to NaN or a negative. */
  double p = cv_msprt_p(0, 1000000, 500000, 1000000, 0.0, 0.02);
  CHECK(p >= 0.0 && p < 1e-300);
  /* Bad input. */
  CHECK(isnan(cv_msprt_p(5, 4, 1, 10, 0.0, 0.02)));
  CHECK(isnan(cv_msprt_p(1, 10, 1, 10, -0.01, 0.02)));
  CHECK(isnan(cv_msprt_p(1, 10, 1, 10, 1.0, 0.02)));
  CHECK(isnan(cv_msprt_p(1, 10, 1, 10, 0.0, 0.0)));
  CHECK(isnan(cv_msprt_p(1, 10, 1, 10, 0.0, INFINITY)));
  CHECK(isnan(cv_msprt_p(1, 10, 1, 10, NAN, 0.02)));
}

/* What the guard is for, on 1,000 seeded rollouts of 200 looks each (25
 * instances per version between looks, verdicts from 200 per version):
 * with equal rates the always-valid test rolls back at most about alpha
 * of them, where the fixed-sample test read at every look rolls back
 * several times as many; with V2 twice as bad, it still catches nearly
 * every one. Deterministic (seeded); the figures are in scripts/bench
 * guard. */
/* 1,000 seeded rollouts where the guard must not roll back (g_null or
 * l_null: rates equal, latency at the limit) and 1,000 where it must (V2
 * twice as bad): at most about alpha of the first rolled back, the
 * fixed-sample test read at every look rolling back many times as many,
 * and at least min_caught of the second. */
static void check_guard(const char *name, const guard_sim *g_null,
                        const guard_sim *g_worse, const latency_sim *l_null,
                        const latency_sim *l_worse, int min_caught) {
  int msprt, fixed, caught, unused;
  guard_sim_many(g_null, l_null, 1000, &msprt, &fixed, NULL);
  guard_sim_many(g_worse, l_worse, 1000, &caught, &unused, NULL);
  printf(
      "%s: %d/1000 rolled back (fixed-sample test at every look: %d/1000); "
      "V2 at 2x: %d/1000 caught\n",
      name, msprt, fixed, caught);
  /* alpha is 50/1000; 65 leaves three standard deviations of sampling
   * error over a test whose true rate is at most alpha. */
  CHECK(msprt <= 65);
  CHECK(fixed >= 3 * msprt && fixed >= 150);
  CHECK(caught >= min_caught);
}

static void test_msprt_guard(void) {
  guard_sim null = {.p1 = 0.05,
                    .p2 = 0.05,
                    .per_look = 25,
                    .looks = 200,
                    .min_per_version = 200,
                    .margin = 0.0,
                    .alpha = 0.05,
                    .tau = CV_MSPRT_TAU};
  guard_sim worse = null;
  worse.p2 = 0.10;
  check_guard("guard, equal rates", &null, &worse, NULL, NULL, 950);
}

/* The latency guard the same way (guard-sim.h: V1's p95 so far sets the
 * limit, 25% above it): with V2's latencies at exactly the limit, the
 * hardest case, it rolls back at most about alpha of the rollouts, where
 * the fixed-sample test read at every look rolls back many times as many;
 * with V2's p95 at 2x V1's it catches every one. */
static void test_latency_guard(void) {
  latency_sim at_limit = {.median_ms = 120,
                          .sigma = 0.4,
                          .slower = 1.25,
                          .increase = 0.25,
                          .per_look = 25,
                          .looks = 200,
                          .min_per_version = 200,
                          .alpha = 0.05,
                          .tau = CV_MSPRT_TAU};
  latency_sim slow = at_limit;
  slow.slower = 2.0;
  check_guard("latency guard, V2 at the limit", NULL, NULL, &at_limit, &slow,
              990);
}

int main(void) {
  test_fisher_small();
  test_fisher_large();
  test_z();
  test_p_value_method();
  test_quantile();
  test_sample_size();
  test_wilson();
  test_compare();
  test_compare_limits();
  test_invalid_and_text();
  test_msprt_values();
  test_msprt_guard();
  test_latency_guard();
  printf("test-stats: all checks passed\n");
  return 0;
}
