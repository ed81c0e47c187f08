-- Fixture of the choose_version specs: like sticky.lua, but an instance
-- without a usable user_id goes to v1 (on_missing_key = "v1").
local sy = require "switchyard"

return sy.workflow {
  name = "missing_v1",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "checkout", key = "user_id", v1 = "old", v2 = "new",
      on_missing_key = "v1", retries = 0,
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
