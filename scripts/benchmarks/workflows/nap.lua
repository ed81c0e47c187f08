-- Memory benchmark: each instance parks in a long sleep, so every one of
-- them is in flight (a coroutine and a timer) at once.
local sy = require "switchyard"
return sy.workflow {
  name = "nap",
  start = "sleep",
  steps = {
    sleep = sy.task { run = function(ctx) ctx.sleep(ctx.vars.seconds or 3600) end, next = "done" },
    done = sy.task { run = function(ctx) end },
  },
}
