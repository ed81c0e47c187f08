-- Fixture of the choose_version specs: the eligible predicate raises.
local sy = require "switchyard"

return sy.workflow {
  name = "bad_eligible",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "checkout", key = "user_id", v1 = "old", v2 = "new",
      eligible = function(ctx) error("no country for " .. ctx.vars.user_id) end,
      retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
