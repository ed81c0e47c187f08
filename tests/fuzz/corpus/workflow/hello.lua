-- The smallest useful workflow: three steps, a durable sleep, a retry
-- policy. Start it with:
--   switchyard start hello --var user_id=u1
local sy = require "switchyard"

return sy.workflow {
  name = "hello",
  start = "greet",
  steps = {
    greet = sy.task {
      run = function(ctx)
        ctx.vars.greeting = "hi " .. ctx.vars.user_id
      end,
      next = "nap",
    },
    nap = sy.task {
      run = function(ctx) ctx.sleep(0.05) end,
      next = "done",
      retries = 3,
    },
    done = sy.task {
      run = function(ctx) ctx.vars.done_at = os.time() end,
    },
  },
}
