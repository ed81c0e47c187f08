-- The park benchmark's workflow: one step that sleeps vars.secs seconds,
-- or until vars.due (seconds since the epoch), then notes when it woke.
local sy = require "switchyard"
return sy.workflow {
  name = "park",
  start = "nap",
  steps = {
    nap = sy.task {
      run = function(ctx)
        local secs = ctx.vars.secs or (ctx.vars.due - ctx.now())
        ctx.sleep(math.max(0, secs))
        ctx.vars.woke = ctx.now()
      end,
    },
  },
}
