/* stats.c: the statistics behind the per-version report (see stats.h).
 * Everything is computed from first principles with libm only, so the
 * plugin carries no numerical dependency and every result can be checked
 * against an independent implementation. */
#include "stats.h"

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

/* 1 / sqrt(2); M_SQRT1_2 is not part of C11. */
#define CV_SQRT1_2 0.70710678118654752440

/* R's fisher.test counts a table as "no more likely" than the observed one
 * when its probability is within this relative margin, so that tables that
 * are exactly as likely (mirror images, say) are not lost to rounding. */
#define CV_FISHER_REL_TOL 1e-7

static int count_ok(long x, long n) {
  return n >= 0 && n <= CV_COUNT_MAX && x >= 0 && x <= n;
}

int cv_wilson(long successes, long n, double z, double *lo, double *hi) {
  if (!count_ok(successes, n) || !(z >= 0 && isfinite(z)) || lo == NULL ||
      hi == NULL) {
    return -1;
  }
  if (n == 0) {
    *lo = 0.0;
    *hi = 1.0;
    return 0;
  }
  double nn = (double)n;
  double p = (double)successes / nn;
  double z2 = z * z;
  double denom = 1.0 + z2 / nn;
  double center = (p + z2 / (2.0 * nn)) / denom;
  double half = z / denom * sqrt(p * (1.0 - p) / nn + z2 / (4.0 * nn * nn));
  double l = center - half;
  double h = center + half;
  /* At 0 and n successes the bound is exactly 0 (or 1) in exact arithmetic;
   * rounding must not push it outside [0, 1] or off the exact value. */
  *lo = successes == 0 || l < 0.0 ? 0.0 : l;
  *hi = successes == n || h > 1.0 ? 1.0 : h;
  return 0;
}

/* The part of the log-probability of the table whose top-left cell is x
 * that depends on x: -log(x! (r1-x)! (c1-x)! (r2-c1+x)!). Comparing tables
 * only needs this; the margins' constant is added once at the end. */
static double fisher_lv(long long x, double r1, double r2, double c1) {
  double xd = (double)x;
  return -(lgamma(xd + 1.0) + lgamma(r1 - xd + 1.0) + lgamma(c1 - xd + 1.0) +
           lgamma(r2 - c1 + xd + 1.0));
}

/* Sums the probabilities (relative to the observed table's) of the tables
 * from x = from outwards to x = end, step +1 or -1, the first being t. The
 * hypergeometric distribution is log-concave, so away from its mode each
 * ratio between neighbours is at most the previous one: once the current
 * term over (1 - ratio) is negligible against the sum, so is everything
 * left, and the walk stops long before a wide support is exhausted. */
static double fisher_tail(long long from, long long end, int step, double t,
                          double r1, double r2, double c1) {
  double sum = 0.0;
  for (long long x = from;; x += step) {
    sum += t;
    if (x == end) {
      break;
    }
    double xd = (double)x;
    double ratio;
    if (step > 0) { /* P(x + 1) / P(x) */
      ratio = (r1 - xd) * (c1 - xd) / ((xd + 1.0) * (r2 - c1 + xd + 1.0));
    } else { /* P(x - 1) / P(x) */
      ratio = xd * (r2 - c1 + xd) / ((r1 - xd + 1.0) * (c1 - xd + 1.0));
    }
    t *= ratio;
    if (ratio < 1.0 && t / (1.0 - ratio) <= sum * 1e-17) {
      break;
    }
  }
  return sum;
}

/* The sum (relative to the observed table's probability) over the tables
 * on one side of the mode that are no more likely than the observed one
 * (lv <= thr). Given that the table at the edge of the support is one of
 * them (lv(edge) = lv_edge <= thr), they form one interval from edge to
 * some k no further in than inner, the side's table nearest the mode;
 * bisection finds k, and the tail is summed from k back to edge. */
static double fisher_side(long long edge, long long inner, double lv_edge,
                          double thr, double lv_obs, double r1, double r2,
                          double c1) {
  long long k = inner;
  double lvk = fisher_lv(inner, r1, r2, c1);
  if (lvk > thr) {
    long long in = edge; /* lv(in) <= thr < lv(out) */
    long long out = inner;
    lvk = lv_edge;
    while ((out > in ? out - in : in - out) > 1) {
      long long mid = in < out ? in + (out - in) / 2 : out + (in - out) / 2;
      double lvm = fisher_lv(mid, r1, r2, c1);
      if (lvm <= thr) {
        in = mid;
        lvk = lvm;
      } else {
        out = mid;
      }
    }
    k = in;
  }
  return fisher_tail(k, edge, edge < inner ? -1 : +1, exp(lvk - lv_obs), r1, r2,
                     c1);
}

double cv_fisher_exact_two_sided(long a, long b, long c, long d) {
  if (!count_ok(a, CV_COUNT_MAX) || !count_ok(b, CV_COUNT_MAX) ||
      !count_ok(c, CV_COUNT_MAX) || !count_ok(d, CV_COUNT_MAX)) {
    return NAN;
  }
  long long r1 = (long long)a + b;
  long long r2 = (long long)c + d;
  long long c1 = (long long)a + c;
  long long c2 = (long long)b + d;
  long long n = r1 + r2;
  /* The tables with these margins are indexed by their top-left cell. */
  long long lo = c1 - r2 > 0 ? c1 - r2 : 0;
  long long hi = r1 < c1 ? r1 : c1;
  if (lo == hi) {
    return 1.0;
  }
  double dr1 = (double)r1;
  double dr2 = (double)r2;
  double dc1 = (double)c1;
  /* P(x + 1) >= P(x) exactly when x < mode, so the probabilities rise on
   * [lo, mode] and fall on [mode, hi]: the tables no more likely than the
   * observed one form one interval at each end, found by bisection. */
  long long mode =
      (long long)floor((dr1 + 1.0) * (dc1 + 1.0) / ((double)n + 2.0));
  if (mode < lo) {
    mode = lo;
  }
  if (mode > hi) {
    mode = hi;
  }
  double lv_obs = fisher_lv(a, dr1, dr2, dc1);
  double thr = lv_obs + log1p(CV_FISHER_REL_TOL);
  double sum = 0.0;

  double lv = fisher_lv(lo, dr1, dr2, dc1);
  if (lv <= thr) {
    sum += fisher_side(lo, mode, lv, thr, lv_obs, dr1, dr2, dc1);
  }
  lv = fisher_lv(hi, dr1, dr2, dc1);
  if (mode < hi && lv <= thr) {
    sum += fisher_side(hi, mode + 1, lv, thr, lv_obs, dr1, dr2, dc1);
  }

  /* log P(observed) = log(r1! r2! c1! c2! / n!) + lv_obs. Adding it in log
   * space keeps tiny p-values from underflowing before they must. */
  double log_margins = lgamma(dr1 + 1.0) + lgamma(dr2 + 1.0) +
                       lgamma(dc1 + 1.0) + lgamma((double)c2 + 1.0) -
                       lgamma((double)n + 1.0);
  double p = exp(log_margins + lv_obs + log(sum));
  return p > 1.0 ? 1.0 : p;
}

double cv_two_proportion_z_p(long x1, long n1, long x2, long n2, double *z) {
  if (!count_ok(x1, n1) || !count_ok(x2, n2)) {
    return NAN;
  }
  double zz = 0.0;
  double p = 1.0;
  if (n1 > 0 && n2 > 0) {
    double p1 = (double)x1 / (double)n1;
    double p2 = (double)x2 / (double)n2;
    double pool = ((double)x1 + (double)x2) / ((double)n1 + (double)n2);
    double var = pool * (1.0 - pool) * (1.0 / (double)n1 + 1.0 / (double)n2);
    if (var > 0.0) {
      zz = (p2 - p1) / sqrt(var);
      p = erfc(fabs(zz) * CV_SQRT1_2);
    }
  }
  if (z != NULL) {
    *z = zz;
  }
  return p;
}

/* One look of the mSPRT (stats.h): the p-value of an estimate `excess` above
 * the boundary with variance var. */
static double msprt_look(double excess, double var, double tau) {
  double t2 = tau * tau;
  if (!(excess > 0.0) || !(var > 0.0)) {
    return 1.0;
  }
  /* 1/L in logs: L overflows a double long before the evidence is in
   * doubt. */
  double log_l = 0.5 * log(var / (var + t2)) +
                 t2 * excess * excess / (2.0 * var * (var + t2));
  return log_l <= 0.0 ? 1.0 : exp(-log_l);
}

double cv_msprt_p(long x1, long n1, long x2, long n2, double margin,
                  double tau) {
  if (!count_ok(x1, n1) || !count_ok(x2, n2) || !(margin >= 0.0) ||
      !(margin < 1.0) || !(tau > 0.0) || !isfinite(tau)) {
    return NAN;
  }
  if (n1 == 0 || n2 == 0) {
    return 1.0;
  }
  double p1 = (double)x1 / (double)n1;
  double p2 = (double)x2 / (double)n2;
  return msprt_look(p2 - p1 - margin,
                    p1 * (1.0 - p1) / (double)n1 + p2 * (1.0 - p2) / (double)n2,
                    tau);
}

double cv_p_value(long x1, long n1, long x2, long n2, cv_method *method) {
  if (!count_ok(x1, n1) || !count_ok(x2, n2)) {
    return NAN;
  }
  double total = (double)n1 + (double)n2;
  double incidents = (double)x1 + (double)x2;
  double smaller_row = n1 < n2 ? (double)n1 : (double)n2;
  double smaller_col =
      incidents < total - incidents ? incidents : total - incidents;
  /* The smallest expected cell is the smaller row total times the smaller
   * column total over the grand total. */
  double min_expected = total > 0 ? smaller_row * smaller_col / total : 0.0;
  cv_method m;
  double p;
  if (total <= (double)CV_FISHER_MAX_TOTAL ||
      min_expected < CV_FISHER_MIN_EXPECTED) {
    m = CV_METHOD_FISHER;
    p = cv_fisher_exact_two_sided(x1, n1 - x1, x2, n2 - x2);
  } else {
    m = CV_METHOD_Z;
    p = cv_two_proportion_z_p(x1, n1, x2, n2, NULL);
  }
  if (method != NULL) {
    *method = m;
  }
  return p;
}

/* Wichura, "Algorithm AS 241: The Percentage Points of the Normal
 * Distribution", Applied Statistics 37(3), 1988, 477-484: PPND16, rational
 * approximations good to about 1 part in 10^16, with no refinement step. */
double cv_norm_quantile(double p) {
  static const double a[8] = {
      3.3871328727963666080e0,  1.3314166789178437745e+2,
      1.9715909503065514427e+3, 1.3731693765509461125e+4,
      4.5921953931549871457e+4, 6.7265770927008700853e+4,
      3.3430575583588128105e+4, 2.5090809287301226727e+3};
  static const double b[8] = {
      1.0000000000000000000e0,  4.2313330701600911252e+1,
      6.8718700749205790830e+2, 5.3941960214247511077e+3,
      2.1213794301586595867e+4, 3.9307895800092710610e+4,
      2.8729085735721942674e+4, 5.2264952788528545610e+3};
  static const double c[8] = {
      1.42343711074968357734e0,  4.63033784615654529590e0,
      5.76949722146069140550e0,  3.64784832476320460504e0,
      1.27045825245236838258e0,  2.41780725177450611770e-1,
      2.27238449892691845833e-2, 7.74545014278341407640e-4};
  static const double d[8] = {
      1.0000000000000000000e0,   2.05319162663775882187e0,
      1.67638483018380384940e0,  6.89767334985100004550e-1,
      1.48103976427480074590e-1, 1.51986665636164571966e-2,
      5.47593808499534494600e-4, 1.05075007164441684324e-9};
  static const double e[8] = {
      6.65790464350110377720e0,  5.46378491116411436990e0,
      1.78482653991729133580e0,  2.96560571828504891230e-1,
      2.65321895265761230930e-2, 1.24266094738807843860e-3,
      2.71155556874348757815e-5, 2.01033439929228813265e-7};
  static const double f[8] = {
      1.0000000000000000000e0,   5.99832206555887937690e-1,
      1.36929880922735805310e-1, 1.48753612908506148525e-2,
      7.86869131145613259100e-4, 1.84631831751005468180e-5,
      1.42151175831644588870e-7, 2.04426310338993978564e-15};
  if (isnan(p) || p < 0.0 || p > 1.0) {
    return NAN;
  }
  if (p == 0.0) {
    return -INFINITY;
  }
  if (p == 1.0) {
    return INFINITY;
  }
  const double *num;
  const double *den;
  double q = p - 0.5;
  double r;
  double scale = 1.0;
  if (fabs(q) <= 0.425) {
    r = 0.180625 - q * q;
    num = a;
    den = b;
    scale = q;
  } else {
    /* The tails work from the smaller of p and 1 - p, so no precision is
     * lost to 1 - p near 1 beyond what the caller's p already lost. */
    r = sqrt(-log(q < 0.0 ? p : 1.0 - p));
    if (r <= 5.0) {
      r -= 1.6;
      num = c;
      den = d;
    } else {
      r -= 5.0;
      num = e;
      den = f;
    }
    scale = q < 0.0 ? -1.0 : 1.0;
  }
  double pn = num[7];
  double pd = den[7];
  for (int i = 6; i >= 0; i--) {
    pn = pn * r + num[i];
    pd = pd * r + den[i];
  }
  return scale * pn / pd;
}

long cv_sample_size_per_group(double p1, double p2, double alpha,
                              double power) {
  if (!(p1 >= 0.0 && p1 <= 1.0) || !(p2 >= 0.0 && p2 <= 1.0) || p1 == p2 ||
      !(alpha > 0.0 && alpha < 1.0) || !(power > 0.0 && power < 1.0)) {
    return -1;
  }
  double za = cv_norm_quantile(1.0 - alpha / 2.0);
  double zb = cv_norm_quantile(power);
  double pbar = (p1 + p2) / 2.0;
  double term = za * sqrt(2.0 * pbar * (1.0 - pbar)) +
                zb * sqrt(p1 * (1.0 - p1) + p2 * (1.0 - p2));
  double n = term * term / ((p1 - p2) * (p1 - p2));
  /* A result that is an integer in exact arithmetic must not be rounded up
   * one more because of the last bit of floating point noise. */
  n = ceil(n - 1e-9);
  if (n < 1.0) {
    n = 1.0;
  }
  if (!(n < (double)LONG_MAX)) {
    return LONG_MAX;
  }
  return (long)n;
}

cv_verdict cv_compare(long x1, long n1, long x2, long n2, double alpha,
                      double min_detectable_points, cv_comparison *out) {
  if (!count_ok(x1, n1) || !count_ok(x2, n2) || !(alpha > 0.0 && alpha < 1.0) ||
      !(min_detectable_points > 0.0 && min_detectable_points <= 100.0) ||
      out == NULL) {
    return CV_INVALID_INPUT;
  }
  cv_comparison cmp;
  memset(&cmp, 0, sizeof cmp);
  cmp.rate_v1 = n1 > 0 ? (double)x1 / (double)n1 : NAN;
  cmp.rate_v2 = n2 > 0 ? (double)x2 / (double)n2 : NAN;
  cmp.diff_points = (cmp.rate_v2 - cmp.rate_v1) * 100.0;
  if (n1 == 0 || n2 == 0) {
    cmp.ratio = NAN;
  } else if (x1 > 0) {
    cmp.ratio = cmp.rate_v2 / cmp.rate_v1;
  } else {
    cmp.ratio = x2 > 0 ? INFINITY : NAN;
  }
  if (n1 > 0 && n2 > 0) {
    cmp.p_value = cv_p_value(x1, n1, x2, n2, &cmp.method);
  } else {
    cmp.p_value = NAN;
    cmp.method = CV_METHOD_NONE;
  }

  if (cmp.method != CV_METHOD_NONE && cmp.p_value < alpha) {
    /* Compared exactly, as x2/n2 > x1/n1; counts <= 1e9 keep it in range. */
    cmp.verdict =
        (long long)x2 * n1 > (long long)x1 * n2 ? CV_V2_WORSE : CV_V2_BETTER;
  } else {
    double effect = min_detectable_points / 100.0;
    if (!isnan(cmp.diff_points) && fabs(cmp.diff_points) / 100.0 > effect) {
      effect = fabs(cmp.diff_points) / 100.0;
    }
    /* With no instances at all the baseline is unknown; 0.5 has the largest
     * variance, so the estimate is then an upper bound. */
    long long xs = (long long)x1 + x2;
    long long ns = (long long)n1 + n2;
    double base = ns > 0 ? (double)xs / (double)ns : 0.5;
    /* Aim at an increase - what the report watches for, and the side with
     * more variance below 50% - unless that would leave [0, 1]. */
    double target = base + effect;
    if (target > 1.0) {
      target = base - effect;
      if (target < 0.0) {
        target = base >= 0.5 ? 0.0 : 1.0;
      }
    }
    long required =
        cv_sample_size_per_group(base, target, alpha, CV_DEFAULT_POWER);
    if (required < 0) {
      /* base + effect rounded back to base: no sample would do. */
      required = LONG_MAX;
    }
    long have = n1 < n2 ? n1 : n2;
    cmp.effect_points = effect * 100.0;
    cmp.required_per_version = required;
    if (have < required) {
      cmp.verdict = CV_NOT_ENOUGH_DATA;
      cmp.needed_per_version = required - have;
    } else {
      cmp.verdict = CV_NO_SIGNIFICANT_DIFFERENCE;
    }
  }
  *out = cmp;
  return cmp.verdict;
}

const char *cv_verdict_name(cv_verdict v) {
  switch (v) {
    case CV_V2_WORSE:
      return "V2 worse";
    case CV_V2_BETTER:
      return "V2 better";
    case CV_NO_SIGNIFICANT_DIFFERENCE:
      return "no significant difference";
    case CV_NOT_ENOUGH_DATA:
      return "not enough data yet";
    case CV_INVALID_INPUT:
      break;
  }
  return "invalid input";
}

const char *cv_method_name(cv_method m) {
  switch (m) {
    case CV_METHOD_FISHER:
      return "fisher";
    case CV_METHOD_Z:
      return "z";
    case CV_METHOD_NONE:
      break;
  }
  return "none";
}

int cv_verdict_text(const cv_comparison *c, char *buf, size_t size) {
  if (c == NULL) {
    return snprintf(buf, size, "%s", cv_verdict_name(CV_INVALID_INPUT));
  }
  if (c->verdict != CV_NOT_ENOUGH_DATA) {
    return snprintf(buf, size, "%s", cv_verdict_name(c->verdict));
  }
  /* Two decimals at most, trailing zeros dropped: "1", "2.5", "3.33". */
  char points[32];
  snprintf(points, sizeof points, "%.2f", c->effect_points);
  char *dot = strchr(points, '.');
  if (dot != NULL) {
    char *end = points + strlen(points);
    while (end > dot && (end[-1] == '0' || end[-1] == '.')) {
      *--end = '\0';
    }
  }
  int one_more = c->needed_per_version == 1;
  int one_point = strcmp(points, "1") == 0;
  return snprintf(buf, size,
                  "%s: about %ld more instance%s per version %s needed to "
                  "detect a difference of %s point%s",
                  cv_verdict_name(c->verdict), c->needed_per_version,
                  one_more ? "" : "s", one_more ? "is" : "are", points,
                  one_point ? "" : "s");
}
