-- Fixture of the choose_version specs: a sticky rollout on flag 'checkout'
-- keyed by vars.user_id. Each branch records which one ran.
local sy = require "switchyard"

return sy.workflow {
  name = "sticky",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "checkout", key = "user_id", v1 = "old", v2 = "new",
      retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
