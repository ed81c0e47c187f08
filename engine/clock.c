/* The engine's clocks (clock.h). */
#include "clock.h"

#include <time.h>
#include <uv.h>

int64_t sy_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sy_mono_ns(void) {
  return uv_hrtime(); /* the clock libuv's timers run on */
}
