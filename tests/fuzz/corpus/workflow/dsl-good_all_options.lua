-- A valid workflow that uses every workflow and task option.
local sy = require "switchyard"

return sy.workflow {
  name = "good_all_options",
  description = "every option the DSL accepts",
  start = "first",
  steps = {
    first = sy.task {
      description = "fixed next, integer retries, numeric backoff",
      run = function(ctx) ctx.vars.first = ctx.attempt end,
      next = "second",
      retries = 2,
      backoff = 0.5,
      timeout = 10,
    },
    second = sy.task {
      run = function(ctx) ctx.vars.second = true end,
      next = function(ctx) return ctx.vars.first and "third" or nil end,
      retries = 0,
      backoff = { initial = 0.01, factor = 3, max = 2 },
      timeout = 0.5,
    },
    third = sy.task {
      run = function(ctx) end,
      backoff = { initial = 1 },
    },
  },
}
