-- Fixture of the choose_version specs: flag 'checkout' for subjects in
-- France only (vars.country == "FR").
local sy = require "switchyard"

return sy.workflow {
  name = "eligible",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "checkout", key = "user_id", v1 = "old", v2 = "new",
      eligible = function(ctx) return ctx.vars.country == "FR" end,
      retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
