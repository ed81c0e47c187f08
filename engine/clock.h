/* The engine's two clocks. Wall-clock milliseconds since the epoch are
 * what is stored (a step run's start, an instance's due time) and what
 * people and other hosts read; they may jump. Durations, timeouts and
 * intervals are measured on the monotonic clock, which never does. */
#ifndef SY_CLOCK_H
#define SY_CLOCK_H

#include <stdint.h>

/* Wall clock: milliseconds since 1970-01-01 UTC. */
int64_t sy_now_ms(void);
/* Monotonic clock: nanoseconds from an arbitrary origin. */
uint64_t sy_mono_ns(void);

#endif
