/* choose_version's precedence rule (DESIGN.md, "Routing"), row by row:
 * kill switch, missing key, opt-out, eligibility, allow, then the
 * strategy; a flag with no row, or a retired one, routes to V1. */
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "route.h"

static cv_flag flag(uint32_t rate, int killed) {
  cv_flag f;
  memset(&f, 0, sizeof f);
  f.name = "f";
  f.group = "f";
  f.exists = 1;
  f.rate_ppm = rate;
  f.killed = killed;
  f.ramp_id = 7;
  return f;
}

static cv_request req(const char *key, int eligible, cv_strategy s) {
  cv_request r;
  memset(&r, 0, sizeof r);
  r.flag = "f";
  r.key = key;
  r.key_len = key ? strlen(key) : 0;
  r.eligible = eligible;
  r.strategy = s;
  return r;
}

#define EXPECT(f, ov, rq, rnd, nth, want_v, want_r)  \
  do {                                               \
    cv_decision d;                                   \
    cv_flag ff = (f);                                \
    cv_request rr = (rq);                            \
    cv_precedence(&ff, (ov), &rr, (rnd), (nth), &d); \
    CHECK(d.version == (want_v));                    \
    CHECK(strcmp(d.reason, (want_r)) == 0);          \
  } while (0)

int main(void) {
  const cv_strategy S = CV_STRATEGY_STICKY;
  cv_flag none, retired;
  memset(&none, 0, sizeof none);
  none.name = "f";
  retired = flag(1000000, 0);
  retired.retired = 1;
  /* No row: new code ships dark, whatever the inputs. */
  EXPECT(none, CV_OVERRIDE_ALLOW, req("k", 1, S), 0, 0, CV_V1, "no_flag");
  EXPECT(retired, CV_OVERRIDE_ALLOW, req("k", 1, S), 0, 0, CV_V1, "retired");
  /* 1. the kill switch beats everything, an allow override included */
  EXPECT(flag(1000000, 1), CV_OVERRIDE_ALLOW, req("k", 1, S), 0, 0, CV_V1,
         "kill_switch");
  /* 2. opt-out beats the rate (100%) */
  EXPECT(flag(1000000, 0), CV_OVERRIDE_OPT_OUT, req("k", 1, S), 0, 0, CV_V1,
         "opt_out");
  /* 3. not eligible beats allow */
  EXPECT(flag(1000000, 0), CV_OVERRIDE_ALLOW, req("k", 0, S), 0, 0, CV_V1,
         "not_eligible");
  /* 4. allow beats a 0% rate */
  EXPECT(flag(0, 0), CV_OVERRIDE_ALLOW, req("k", 1, S), 0, 0, CV_V2, "allow");
  /* 5. the strategy: sticky at the ends of the range */
  EXPECT(flag(0, 0), CV_OVERRIDE_NONE, req("k", 1, S), 0, 0, CV_V1, "rollout");
  EXPECT(flag(1000000, 0), CV_OVERRIDE_NONE, req("k", 1, S), 0, 0, CV_V2,
         "rollout");
  {
    /* sticky decides by the bucket, recorded with the decision */
    cv_flag f = flag(500000, 0);
    cv_request r = req("user-42", 1, S);
    cv_decision d;
    uint32_t b = cv_bucket("f", 1, "user-42", 7);
    cv_precedence(&f, CV_OVERRIDE_NONE, &r, 0, 0, &d);
    CHECK(d.bucket == b);
    CHECK(d.version == (b < 500000 ? CV_V2 : CV_V1));
    CHECK(d.rate_ppm == 500000 && d.ramp_id == 7);
  }
  /* random: the draw modulo a million against the rate */
  EXPECT(flag(300000, 0), CV_OVERRIDE_NONE, req(NULL, 1, CV_STRATEGY_RANDOM),
         299999, 0, CV_V2, "random");
  EXPECT(flag(300000, 0), CV_OVERRIDE_NONE, req(NULL, 1, CV_STRATEGY_RANDOM),
         300000, 0, CV_V1, "random");
  EXPECT(flag(300000, 0), CV_OVERRIDE_NONE, req(NULL, 1, CV_STRATEGY_RANDOM),
         1000000ULL * 7 + 5, 0, CV_V2, "random");
  {
    /* every_nth at 25%: exactly one in four, evenly spread */
    int v2 = 0;
    for (int64_t n = 0; n < 400; n++) {
      cv_flag f = flag(250000, 0);
      cv_request r = req(NULL, 1, CV_STRATEGY_EVERY_NTH);
      cv_decision d;
      cv_precedence(&f, CV_OVERRIDE_NONE, &r, 0, n, &d);
      CHECK(strcmp(d.reason, "every_nth") == 0);
      CHECK((d.version == CV_V2) == (n % 4 == 3));
      v2 += d.version == CV_V2;
    }
    CHECK(v2 == 100);
  }
  {
    /* missing key, with on_missing_key = "v1", after the kill switch */
    cv_request r = req(NULL, 1, S);
    r.missing_key = 1;
    EXPECT(flag(1000000, 0), CV_OVERRIDE_NONE, r, 0, 0, CV_V1, "missing_key");
    EXPECT(flag(1000000, 1), CV_OVERRIDE_NONE, r, 0, 0, CV_V1, "kill_switch");
  }
  puts("test-precedence: all checks passed");
  return 0;
}
