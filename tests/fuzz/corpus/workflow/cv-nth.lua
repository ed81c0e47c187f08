-- Fixture of the choose_version specs: every_nth routing on flag 'nth'.
local sy = require "switchyard"

return sy.workflow {
  name = "nth",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "nth", strategy = "every_nth", v1 = "old", v2 = "new",
      retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
