/* route.h: the pure routing core of the choose_version plugin - the sticky
 * bucket hash, the precedence rule that turns a flag's row and a request
 * into a decision, and the parsing and printing of rates - kept free of
 * SQLite, Lua, libuv and the engine so it can be unit-tested and
 * benchmarked on its own.
 *
 * Rates are integers in parts per million (0..CV_RATE_MAX_PPM) everywhere;
 * percentages exist only at the edges, as text a user types or reads. */
#ifndef CV_ROUTE_H
#define CV_ROUTE_H

#include <stddef.h>
#include <stdint.h>

/* 100% in ppm. A subject is routed to V2 when cv_bucket(...) < rate, and
 * buckets are at most CV_RATE_MAX_PPM - 1, so this rate routes everyone. */
#define CV_RATE_MAX_PPM 1000000u

/* Enough for cv_rate_format of any uint32_t ("429496.7295%" and the NUL). */
#define CV_RATE_FORMAT_MAX 16

/* MurmurHash3_x86_32 (Austin Appleby, public domain). Blocks are read byte
 * by byte as little-endian, so the result is the same on every platform and
 * key needs no particular alignment. key may be NULL when len is 0. Like the
 * reference, only len modulo 2^32 enters the finalisation. */
uint32_t cv_murmur3_32(const void *key, size_t len, uint32_t seed);

/* Streaming MurmurHash3_x86_32: init, any number of updates, final. The
 * result equals cv_murmur3_32 over the concatenation of all updates, however
 * the input was split. The fields are private; the struct is public only so
 * it can live on the stack. */
typedef struct cv_murmur3 {
  uint32_t h;      /* the hash state after every complete 4-byte block */
  uint32_t carry;  /* bytes of an incomplete block, packed little-endian */
  uint32_t ncarry; /* how many bytes carry holds, 0..3 */
  uint32_t total;  /* bytes fed so far, modulo 2^32 as in the reference */
} cv_murmur3;

void cv_murmur3_init(cv_murmur3 *s, uint32_t seed);
/* data may be NULL when len is 0. */
void cv_murmur3_update(cv_murmur3 *s, const void *data, size_t len);
/* Does not modify s: more input may follow and final be asked again. */
uint32_t cv_murmur3_final(const cv_murmur3 *s);

/* The sticky bucket of a subject, in ppm (0..CV_RATE_MAX_PPM - 1):
 * h = murmur3_x86_32(group ":" key, seed 0);
 * bucket = (h % 100) * 10000 + (h / 100) % 10000.
 * The leading term makes `bucket < P * 10000` at a whole percentage P exactly
 * Unleash's `normalizedValue(key, group) <= P` (that is, h % 100 + 1 <= P), so
 * cohorts match a rollout already run with Unleash; the second term splits
 * each percent into 10000 steps so rates between whole percentages still only
 * ever add subjects as they rise. Never allocates. group or key may be NULL
 * when its length is 0; neither needs to be NUL-terminated. */
uint32_t cv_bucket(const char *group, size_t group_len, const char *key,
                   size_t key_len);

/* Parses a rate as typed on a command line: a non-negative decimal number
 * followed immediately by a unit, either `%` (at most 4 significant decimals,
 * since 0.0001% is 1 ppm; further decimals are accepted only if they are all
 * zero) or `ppm` (any case, whole numbers only). Examples: `5%`, `0.25%`,
 * `100%`, `0%`, `2500ppm`, `1000000ppm`.
 * Rejected: a bare number (is `0.05` a fraction or a percentage?), signs,
 * whitespace anywhere, exponents, hex, `inf`/`nan`, a decimal comma, a lone
 * `.`, values above 100% or 1000000ppm, trailing characters.
 * Returns 0 and sets *ppm, or returns -1 with a one-line message in err (when
 * err is not NULL and errlen > 0) and leaves *ppm untouched. */
int cv_rate_parse(const char *text, uint32_t *ppm, char *err, size_t errlen);

/* A flag (or hash group) name the CLI can manage: 1 to 128 of letters,
 * digits, '_', '-' and '.'. Checked where workflows name flags, too, so a
 * flag no command can ramp is refused at load time. */
int cv_flag_name_valid(const char *name);

/* Formats ppm as the shortest exact percentage: 50000 -> "5%", 2500 ->
 * "0.25%", 1 -> "0.0001%", 1000000 -> "100%". Any uint32_t is printed, even
 * above 100%, so a corrupt value shows as what it is. The output is truncated
 * (and still NUL-terminated when len > 0) if buf is shorter than
 * CV_RATE_FORMAT_MAX. cv_rate_parse reads back every string it writes. */
void cv_rate_format(uint32_t ppm, char *buf, size_t len);

typedef enum { CV_V1 = 1, CV_V2 = 2 } cv_version;

typedef enum {
  CV_STRATEGY_STICKY,
  CV_STRATEGY_RANDOM,
  CV_STRATEGY_EVERY_NTH
} cv_strategy;

typedef enum {
  CV_OVERRIDE_NONE,
  CV_OVERRIDE_ALLOW,  /* force V2 */
  CV_OVERRIDE_OPT_OUT /* force V1 */
} cv_override;

/* A flag's row as routing sees it. exists is 0 when the flag has no row;
 * the other fields are then 0 (name aside). The strings belong to whoever
 * filled the struct in (the router's flag cache). */
typedef struct cv_flag {
  char *name;
  int exists;
  int retired;
  int killed;
  uint32_t rate_ppm;
  char *group;           /* the hash group: the flag's name unless set */
  int64_t ramp_id;       /* audit row that started the current ramp step */
  int64_t overrides;     /* subjects with an override (0: none to look up) */
  uint32_t shadow_ppm;   /* the share of v1's decisions also run in shadow */
  int64_t shadow_budget; /* shadow runs per hour at most (0: no cap) */
} cv_flag;

/* The inputs of one decision, and what it decided. */
typedef struct cv_request {
  const char *flag;
  const char *key; /* subject, NULL when the strategy needs none */
  size_t key_len;
  cv_strategy strategy;
  int eligible;    /* result of the node's predicate (1 when there is none) */
  uint64_t random; /* from the engine's seedable generator */
  int missing_key; /* the key var is absent and the node says "v1" */
  int64_t now_ms;  /* the time of the decision */
  /* The instance's step-run totals at that time (sy_api.totals): the
   * branch's own are what they grow by until the instance ends. */
  int64_t run_ms, reruns;
} cv_request;

typedef struct cv_decision {
  cv_version version;
  const char *reason; /* a static string */
  uint32_t bucket;    /* sticky only; UINT32_MAX when not computed */
  uint32_t rate_ppm;
  int64_t ramp_id;
  int recorded; /* cv_decide: 1 when it recorded it now, 0 for an earlier */
} cv_decision;

/* The precedence rule of DESIGN.md ("Routing"), first match wins: no row
 * or a retired flag, the kill switch, a missing key, an opt-out, not
 * eligible -> V1; an allow override -> V2; then the strategy: sticky
 * (the subject's bucket against the rate), random (the draw `random`
 * against the rate) or every_nth (nth, the flag's durable counter before
 * this decision). Fills every field of *out. */
void cv_precedence(const cv_flag *f, cv_override ov, const cv_request *req,
                   uint64_t random, int64_t nth, cv_decision *out);

#endif
