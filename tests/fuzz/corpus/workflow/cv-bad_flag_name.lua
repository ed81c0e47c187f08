-- Fixture of the load-time checks: a flag name `switchyard rollout` refuses
-- (spaces, '!'), so no rate could ever be set for it with the CLI.
local sy = require "switchyard"

return sy.workflow {
  name = "bad_flag_name",
  start = "route",
  steps = {
    route = sy.choose_version {
      flag = "Checkout V2!", key = "user_id", v1 = "old", v2 = "new",
    },
    old = sy.task { run = function(ctx) ctx.vars.took = "v1" end },
    new = sy.task { run = function(ctx) ctx.vars.took = "v2" end },
  },
}
