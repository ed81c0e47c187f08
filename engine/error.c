/* Messages for the error codes of error.h. */
#include "error.h"

const char *sy_strerror(int code) {
  switch (code) {
#define X(name, c, msg) \
  case c:               \
    return msg;
    SY_ERRNO_MAP(X)
#undef X
    case 0:
      return "success";
  }
  return "unknown error";
}
