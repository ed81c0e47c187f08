-- The throughput benchmark's workflow: a choose_version node (sticky, the
-- rate set to 50% by the benchmark) and three steps after it.
local sy = require "switchyard"
return sy.workflow {
  name = "tp",
  start = "route",
  steps = {
    route = sy.choose_version { flag = "tp", key = "user_id", v1 = "a", v2 = "b" },
    a = sy.task { run = function(ctx) ctx.vars.branch = "v1" end, next = "done" },
    b = sy.task { run = function(ctx) ctx.vars.branch = "v2" end, next = "done" },
    done = sy.task { run = function(ctx) ctx.vars.done = true end },
  },
}
