-- `maybe` is only reachable through a next function, which the loader
-- cannot see through: no unreachable warning may be given.
local sy = require "switchyard"

return sy.workflow {
  name = "next_function",
  start = "a",
  steps = {
    a = sy.task {
      run = function(ctx) end,
      next = function(ctx) return ctx.vars.go and "maybe" or "b" end,
    },
    b = sy.task { run = function(ctx) end },
    maybe = sy.task { run = function(ctx) end },
  },
}
