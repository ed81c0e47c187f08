-- Fixture of the choose_version specs: per-instance random routing on flag
-- 'coin' (no subject key).
local sy = require "switchyard"

return sy.workflow {
  name = "random",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "coin", strategy = "random", v1 = "old", v2 = "new",
      retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
